"""Top-1 and per-class accuracy (the VisDA protocol: their mean), a confusion matrix, reports.

Returned to Detectron2's evaluation loop as ``{"cls": {"top1", "mean_class_acc",
"acc/<class>"...}}`` (percent), so the EvalHook logs
``student/<dataset>/cls/top1`` etc. and the best checkpoint can select on
``cls/top1`` or ``cls/mean_class_acc``. Per evaluation it also writes, under
``OUTPUT_DIR/inference/``, ``report_<model>_<dataset>_iter<N>.{json,md}`` and
``confusion_<model>_<dataset>_iter<N>.png`` (rows: true class, row-normalised).
"""
import json
import logging
import os
from collections import OrderedDict
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from detectron2.data import MetadataCatalog
from detectron2.evaluation import DatasetEvaluator
from detectron2.utils import comm
from tabulate import tabulate

from ..evaluation.reports import report_basename
from ..evaluation.figures import new_figure

__all__ = ["ClassificationEvaluator", "accuracy_summary", "plot_confusion_matrix"]

logger = logging.getLogger(__name__)


def accuracy_summary(labels: Sequence[int], preds: Sequence[int], num_classes: int) -> Dict:
    """Top-1, per-class accuracy (NaN for a class without test images), their mean, the confusion matrix."""
    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(confusion, (np.asarray(labels, dtype=np.int64), np.asarray(preds, dtype=np.int64)), 1)
    total = confusion.sum()
    per_class_n = confusion.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_class = np.where(per_class_n > 0, 100.0 * np.diag(confusion) / per_class_n, np.nan)
    top1 = 100.0 * np.trace(confusion) / total if total else float("nan")
    present = per_class[~np.isnan(per_class)]
    return {
        "top1": float(top1),
        "mean_class_acc": float(present.mean()) if present.size else float("nan"),
        "per_class": [float(v) for v in per_class],
        "num_images": [int(v) for v in per_class_n],
        "confusion": confusion.tolist(),
    }


def plot_confusion_matrix(path: str, confusion: Sequence[Sequence[int]], classes: Sequence[str], title: str) -> str:
    """The row-normalised confusion matrix as a PNG (rows: true class). Returns ``path``."""
    m = np.asarray(confusion, dtype=np.float64)
    m = m / np.maximum(m.sum(axis=1, keepdims=True), 1)
    side = max(4.0, 0.45 * len(classes) + 2.0)
    fig = new_figure(side + 1.0, side)
    ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(m, vmin=0, vmax=1, cmap="Blues")
    ax.set_xticks(range(len(classes)))
    ax.set_yticks(range(len(classes)))
    ax.set_xticklabels(classes, rotation=90, fontsize=7)
    ax.set_yticklabels(classes, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if len(classes) <= 20:
        for i in range(len(classes)):
            for j in range(len(classes)):
                if m[i, j] >= 0.005:
                    ax.text(j, i, f"{m[i, j]:.2f}", ha="center", va="center", fontsize=6,
                            color="white" if m[i, j] > 0.5 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path


def _json_safe(value):
    """NaN (a class without test images) -> null: strict json has no NaN."""
    if isinstance(value, float) and np.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def _markdown(report: Dict) -> str:
    rows = [[c, n, f"{a:.2f}"] for c, n, a in zip(report["classes"], report["num_images"], report["per_class"])]
    rows.append(["mean (per class)", sum(report["num_images"]), f"{report['mean_class_acc']:.2f}"])
    return (
        f"# {report['model']} on {report['dataset']}, iteration {report['iteration']}\n\n"
        f"Config: `{report['config']}`\n\n"
        f"Top-1 accuracy: **{report['top1']:.2f}**; mean per-class accuracy (VisDA): **{report['mean_class_acc']:.2f}**\n\n"
        + tabulate(rows, headers=["class", "#images", "accuracy"], tablefmt="github") + "\n"
    )


class ClassificationEvaluator(DatasetEvaluator):
    """Accuracy of one model on one labelled dataset (labels from the mapped inputs)."""

    def __init__(self, dataset_name: str, output_dir: Optional[str] = None, model_tag: str = "student",
                 iteration: int = -1, config_name: str = ""):
        classes = MetadataCatalog.get(dataset_name).get("thing_classes")
        if not classes:
            raise ValueError(f"Dataset '{dataset_name}' has no thing_classes: it cannot be evaluated for accuracy")
        self.classes = list(classes)
        self.dataset_name, self.output_dir = dataset_name, output_dir
        self.model_tag, self.iteration, self.config_name = model_tag, iteration, config_name
        self.reset()

    def reset(self) -> None:
        self._labels: List[int] = []
        self._preds: List[int] = []

    def process(self, inputs: List[Dict], outputs: List[Dict]) -> None:
        for x, o in zip(inputs, outputs):
            if "label" not in x:
                raise ValueError(f"Dataset '{self.dataset_name}': {x.get('file_name', '?')} has no label to evaluate")
            self._labels.append(int(x["label"]))
            self._preds.append(int(o["pred_class"]))

    def evaluate(self) -> Dict:
        labels = sum(comm.gather(self._labels, dst=0), [])
        preds = sum(comm.gather(self._preds, dst=0), [])
        if not comm.is_main_process():
            return {}
        summary = accuracy_summary(labels, preds, len(self.classes))
        result = OrderedDict([("top1", summary["top1"]), ("mean_class_acc", summary["mean_class_acc"])])
        result.update((f"acc/{c}", a) for c, a in zip(self.classes, summary["per_class"]))
        if self.output_dir:
            self._write(summary)
        return {"cls": result}

    def _write(self, summary: Dict) -> None:
        os.makedirs(self.output_dir, exist_ok=True)
        name = report_basename(self.model_tag, self.dataset_name, self.iteration)
        report = {"model": self.model_tag, "dataset": self.dataset_name, "iteration": self.iteration,
                  "config": self.config_name, "classes": self.classes, **summary}
        base = os.path.join(self.output_dir, name)
        with open(base + ".json", "w") as f:
            json.dump(_json_safe(report), f, indent=1, allow_nan=False)
        with open(base + ".md", "w") as f:
            f.write(_markdown(report))
        png = os.path.join(self.output_dir, name.replace("report_", "confusion_", 1) + ".png")
        plot_confusion_matrix(png, summary["confusion"], self.classes,
                              f"{self.model_tag} on {self.dataset_name} (iter {self.iteration})")
        logger.info("Wrote %s.{json,md} and %s", base, png)
