"""Datasets, domain registration and data loading for mic_det."""
from .domains import register_coco_domain

__all__ = ["register_coco_domain"]
