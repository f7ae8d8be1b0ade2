"""Object detection under MIC: the task, its heads, SADA alignment, pseudo-boxes, evaluation.

Importing this package registers with Detectron2's registries
``DomainAdaptiveRCNN`` (meta-architecture), ``MICRPN`` and ``MICROIHeads``,
and the ``DetectionTask`` with :data:`mic_det.engine.MIC_TASK_REGISTRY`.
"""
from . import modeling  # noqa: F401  (registers the meta-architecture and heads)
from .evaluator import DomainDetectionEvaluator, build_evaluator
from .pseudo_labels import make_pseudo_labels, pseudo_label_quality, pseudo_label_stats, split_uncertain
from .task import DetectionTask

__all__ = [
    "DetectionTask",
    "DomainDetectionEvaluator",
    "build_evaluator",
    "make_pseudo_labels",
    "pseudo_label_quality",
    "pseudo_label_stats",
    "split_uncertain",
]
