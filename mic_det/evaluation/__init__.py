"""Detection metrics for domain adaptation: COCO AP, per-class AP50 and VOC AP50, tagged reports.

Use :func:`build_evaluator` once per model (student / teacher) and dataset;
see ``docs/evaluation.md`` for what each number means.
"""

from .detection_evaluator import DomainDetectionEvaluator, build_evaluator
from .reports import markdown_report, per_class_table, plot_panels, plot_pr_curves
from .voc import mean_ap, voc_ap, voc_ap50_per_class

__all__ = [
    "build_evaluator",
    "DomainDetectionEvaluator",
    "voc_ap",
    "voc_ap50_per_class",
    "mean_ap",
    "per_class_table",
    "markdown_report",
    "plot_pr_curves",
    "plot_panels",
]
