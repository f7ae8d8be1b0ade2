"""Report writers: json, markdown and PNG, and the table formatting they share.

One module owns the formatting so that the log, the markdown file and the
plots never disagree on order, rounding or how a missing value looks. Plots
draw on a bare Agg canvas (no ``pyplot``), so they work headless and never
switch the backend of a user's interactive session.

A *report* is a plain dict, built by
:class:`~mic_det.detection.evaluator.DomainDetectionEvaluator`::

    {
      "model": "student", "dataset": "foggy_val", "iteration": 5000, "config": "...",
      "coco_impl": "...",                     # which COCOeval computed the COCO numbers
      "classes": [...],                      # thing_classes order
      "per_class": {"AP50": [...], "VOC-AP50": [...], "AP": [...],
                    "num_gt": [...], "num_det": [...]},  # aligned with "classes"
      "bbox": {...},                          # exactly what evaluate() returned
    }

All AP values are in percent; NaN means "undefined" (no ground truth for the
class, or nothing to evaluate). NaN is written as ``null`` in json (strict
json has no NaN) and as ``nan`` in tables.
"""

import json
import math
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
from tabulate import tabulate

from ..evaluation.figures import new_figure
from ..evaluation.reports import report_basename

__all__ = [
    "PER_CLASS_COLUMNS",
    "COCO_SUMMARY_KEYS",
    "report_basename",
    "per_class_table",
    "format_table",
    "markdown_report",
    "write_json_report",
    "write_markdown_report",
    "plot_pr_curves",
]

# (report key, column header) of the per-class table, in display order.
PER_CLASS_COLUMNS: Tuple[Tuple[str, str], ...] = (
    ("AP50", "AP50 (COCO)"),
    ("VOC-AP50", "AP50 (VOC)"),
    ("AP", "AP (COCO)"),
)
COCO_SUMMARY_KEYS: Tuple[str, ...] = ("AP", "AP50", "AP75", "APs", "APm", "APl")
FLOAT_FORMAT = ".2f"
Series = Tuple[Sequence[float], Sequence[float]]


def _num(value: Optional[float]) -> float:
    """A float, with None (NaN as read back from a json report) as NaN."""
    return float("nan") if value is None else float(value)


def _nanmean(values: Sequence[Optional[float]]) -> float:
    finite = [v for v in map(_num, values) if math.isfinite(v)]
    return float(np.mean(finite)) if finite else float("nan")


def per_class_table(report: Mapping[str, Any]) -> Tuple[List[str], List[List[Any]]]:
    """Rows ``[class, #GT, #det, AP50 (COCO), AP50 (VOC), AP (COCO)]`` in class order, then "mean".

    Accepts a report as built or as read back from its json (None = NaN).
    The mean row averages each AP column over the classes where it is defined
    (a class without ground truth is NaN and left out) and sums the counts, so
    it equals the COCO summary AP50/AP and the VOC-AP50 of the report.
    """
    per_class = report["per_class"]
    headers = ["class", "#GT", "#det"] + [header for _, header in PER_CLASS_COLUMNS]
    rows = []
    for i, name in enumerate(report["classes"]):
        row = [name, int(per_class["num_gt"][i]), int(per_class["num_det"][i])]
        row += [_num(per_class[key][i]) for key, _ in PER_CLASS_COLUMNS]
        rows.append(row)
    mean = ["mean", int(sum(per_class["num_gt"])), int(sum(per_class["num_det"]))]
    mean += [_nanmean(per_class[key]) for key, _ in PER_CLASS_COLUMNS]
    rows.append(mean)
    return headers, rows


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub/pipe table (valid markdown, readable in a log); NaN prints as ``nan``."""
    return tabulate(rows, headers=headers, tablefmt="pipe", floatfmt=FLOAT_FORMAT, numalign="right")


def markdown_report(report: Mapping[str, Any]) -> str:
    """The markdown text of a report: per-class table, COCO summary row, VOC AP50 row."""
    bbox = report["bbox"]
    lines = [
        f"# {report['model']} on `{report['dataset']}`, iteration {report['iteration']}",
        "",
        f"- model: {report['model']}",
        f"- dataset: {report['dataset']}",
        f"- iteration: {report['iteration']}",
        f"- config: {report.get('config') or '-'}",
        f"- COCO evaluation: {report.get('coco_impl', '-')}",
        "",
        "## AP50 per class (IoU 0.5)",
        "",
        "COCO = 101-point interpolated (pycocotools); VOC = all-point interpolated "
        "(VOC2010+). `nan` = no ground truth for the class, left out of the mean.",
        "",
        format_table(*per_class_table(report)),
        "",
        "## COCO summary (bbox)",
        "",
        format_table(list(COCO_SUMMARY_KEYS), [[_num(bbox.get(k)) for k in COCO_SUMMARY_KEYS]]),
        "",
        "## VOC summary",
        "",
        format_table(["VOC-AP50"], [[_num(bbox.get("VOC-AP50"))]]),
        "",
    ]
    return "\n".join(lines)


def _json_safe(obj: Any) -> Any:
    """Replace NaN/inf with None and numpy scalars/arrays with Python ones, recursively."""
    if isinstance(obj, Mapping):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, np.ndarray)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    return obj


def write_json_report(path: str, report: Mapping[str, Any]) -> str:
    """Write ``report`` as strict json (NaN -> null). Returns ``path``."""
    with open(path, "w") as f:
        json.dump(_json_safe(report), f, indent=2, allow_nan=False)
    return path


def write_markdown_report(path: str, report: Mapping[str, Any]) -> str:
    """Write :func:`markdown_report` to ``path``. Returns ``path``."""
    with open(path, "w") as f:
        f.write(markdown_report(report))
    return path


def plot_pr_curves(
    path: str,
    curves: Mapping[str, Series],
    aps: Mapping[str, float],
    title: str = "",
) -> str:
    """One axes, one precision-recall line per class (legend carries its AP). Returns ``path``.

    Classes without a curve (no ground truth) are listed in the legend as such,
    so a missing line is never mistaken for a plotting bug.
    """
    fig = new_figure(7.5, 5.0)
    ax = fig.add_subplot(1, 1, 1)
    for name, (recall, precision) in curves.items():
        ap = aps.get(name, float("nan"))
        if len(recall) == 0:
            ax.plot([], [], linestyle="none", label=f"{name} (no GT)")
            continue
        label = f"{name} ({ap:.1f})" if math.isfinite(ap) else f"{name} (nan)"
        # Start at recall 0 with the first precision so short curves stay visible.
        ax.plot(np.r_[0.0, recall], np.r_[precision[0], precision], label=label, linewidth=1.2)
    ax.set_xlim(0.0, 1.0)
    ax.set_ylim(0.0, 1.02)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.grid(True, alpha=0.3)
    ax.set_title(title, fontsize=9)
    if curves:
        ax.legend(loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize=8, title="AP50 (VOC)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path
