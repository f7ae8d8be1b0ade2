"""The file names of evaluation reports, one scheme for every task."""
import os

__all__ = ["report_basename"]


def report_basename(model_tag: str, dataset: str, iteration: int, prefix: str = "report") -> str:
    """``<prefix>_<model>_<dataset>_iter<iteration>``; path separators in names become ``_``.

    ``prefix``: "report" (detection, classification), "seg_report" (segmentation).
    """
    safe = [str(x).replace(os.sep, "_").replace("/", "_") for x in (model_tag, dataset)]
    return f"{prefix}_{safe[0]}_{safe[1]}_iter{int(iteration)}"
