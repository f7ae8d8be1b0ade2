"""Task-agnostic evaluation helpers: figures and the training-curve plots of ``metrics.json``.

Each task's evaluator lives in its own package (detection:
:mod:`mic_det.detection.evaluator`); what they share is drawn here.
"""
from .figures import new_figure, plot_panels
from .plots import plot_metrics, read_metrics

__all__ = ["new_figure", "plot_panels", "plot_metrics", "read_metrics"]
