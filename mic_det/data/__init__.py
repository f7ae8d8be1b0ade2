"""Datasets, domain registration and data loading for mic_det.

Importing this package registers, without reading the disk: the real DAOD
benchmarks (Cityscapes, Foggy Cityscapes, Sim10k, KITTI, BDD100k; see
``datasets/README.md``) and the built-in synthetic domains under
``$DETECTRON2_DATASETS/mic_synthetic`` (``synthetic_{clear,foggy,night}_{train,val}``:
a clear source and two shifts, drawn on first use).
"""
from . import builtin  # noqa: F401  (registers the real benchmarks)
from .domains import register_coco_domain, register_image_folder
from .synthetic import SYNTHETIC_CLASSES, default_synthetic_root, register_synthetic_pair

__all__ = [
    "register_coco_domain",
    "register_image_folder",
    "register_synthetic_pair",
    "default_synthetic_root",
    "SYNTHETIC_CLASSES",
]


register_synthetic_pair(default_synthetic_root())
