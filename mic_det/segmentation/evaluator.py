"""mIoU, per-class IoU and pixel accuracy (Detectron2's SemSegEvaluator), with report files and a figure.

:class:`SegReportEvaluator` is Detectron2's ``SemSegEvaluator`` with labels
read by their dataset's rules (benchmark ids -> train ids) and three outputs
per evaluated model, dataset and iteration in ``OUTPUT_DIR/inference``:

* ``seg_report_<model>_<dataset>_iter<N>.json``: every number, per class too;
* ``seg_report_<model>_<dataset>_iter<N>.md``: the same as tables;
* ``seg_examples_<model>_<dataset>_iter<N>.png``: the first ``SEG.FIGURE_IMAGES``
  images of the set: input, prediction, label (:mod:`mic_det.evaluation.figures`).

The result dict keeps Detectron2's keys (``sem_seg/mIoU``, ``IoU-<class>``,
``pACC``, ``mACC``, ...) minus the boundary-IoU ones, plus the class-subset
means a dataset names in its ``miou_subsets`` metadata (SYNTHIA's 16 / 13 classes).
"""
import json
import math
import os
from collections import OrderedDict
from typing import Dict, List

import numpy as np
from detectron2.data import MetadataCatalog
from detectron2.data import detection_utils as utils
from detectron2.evaluation import SemSegEvaluator
from detectron2.utils import comm

from ..evaluation.figures import new_figure
from ..evaluation.reports import report_basename as shared_report_basename
from .labels import IGNORE, read_dataset_label

__all__ = ["SegReportEvaluator", "report_basename", "colourise"]


def report_basename(model_tag: str, dataset: str, iteration: int) -> str:
    """``seg_report_<model>_<dataset>_iter<iteration>`` (:func:`mic_det.evaluation.reports.report_basename`)."""
    return shared_report_basename(model_tag, dataset, iteration, prefix="seg_report")


def colourise(label: np.ndarray, num_classes: int) -> np.ndarray:
    """A class-index map as RGB (a fixed palette; ignore = black)."""
    rng = np.random.default_rng(3)
    palette = rng.integers(40, 256, size=(max(num_classes, 1), 3), dtype=np.uint8)
    out = np.zeros(label.shape + (3,), np.uint8)
    valid = label < num_classes
    out[valid] = palette[label[valid]]
    return out


class SegReportEvaluator(SemSegEvaluator):
    """SemSegEvaluator + dataset label rules + class-subset mIoUs + json/md reports + example figure."""

    def __init__(self, dataset_name: str, output_dir: str, model_tag: str = "student", iteration: int = -1,
                 config_name: str = "", figure_images: int = 4, image_format: str = "BGR",
                 distributed: bool = True):
        def load(path: str, dtype=int) -> np.ndarray:
            return read_dataset_label(dataset_name, path).astype(dtype)

        super().__init__(dataset_name, distributed=distributed, output_dir=None, sem_seg_loading_fn=load)
        self.report_dir = output_dir
        self.model_tag, self.iteration, self.config_name = model_tag, iteration, config_name
        self.figure_images = figure_images
        self.image_format = image_format

    def reset(self):
        super().reset()
        self._examples: List[tuple] = []

    def process(self, inputs, outputs):
        super().process(inputs, outputs)
        for inp, out in zip(inputs, outputs):
            if len(self._examples) < self.figure_images:
                pred = out["sem_seg"].argmax(dim=0).to("cpu").numpy().astype(np.uint8)
                self._examples.append((inp["file_name"], pred))

    def evaluate(self):
        results = super().evaluate()
        if results is None:  # not the main process
            return None
        res = OrderedDict((k, v) for k, v in results["sem_seg"].items() if "B-Iou" not in k and "Boundary" not in k)
        meta = MetadataCatalog.get(self._dataset_name)
        for name, classes in (meta.get("miou_subsets") or {}).items():
            values = [res.get(f"IoU-{c}", float("nan")) for c in classes]
            values = [v for v in values if not math.isnan(v)]
            res[name] = float(np.mean(values)) if values else float("nan")
        if self.report_dir and comm.is_main_process():
            self._write_reports(res)
        return OrderedDict({"sem_seg": res})

    # ----------------------------------------------------------- reports
    def _write_reports(self, res: Dict[str, float]) -> None:
        os.makedirs(self.report_dir, exist_ok=True)
        base = os.path.join(self.report_dir, report_basename(self.model_tag, self._dataset_name, self.iteration))
        classes = list(self._class_names)
        clean = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in res.items()}
        report = {
            "model": self.model_tag, "dataset": self._dataset_name, "iteration": self.iteration,
            "config": self.config_name, "classes": classes,
            "per_class": {"IoU": [clean.get(f"IoU-{c}") for c in classes],
                          "ACC": [clean.get(f"ACC-{c}") for c in classes]},
            "sem_seg": clean,
        }
        with open(base + ".json", "w") as f:
            json.dump(report, f, indent=1)
        summary = [k for k in ("mIoU", "mIoU16", "mIoU13", "fwIoU", "pACC", "mACC") if k in res]
        lines = [f"# {self.model_tag} on {self._dataset_name}, iteration {self.iteration}", "",
                 "| " + " | ".join(summary) + " |", "|" + "---|" * len(summary),
                 "| " + " | ".join(f"{res[k]:.2f}" for k in summary) + " |", "",
                 "| class | IoU | accuracy |", "|---|---|---|"]
        lines += [f"| {c} | {res.get(f'IoU-{c}', float('nan')):.2f} | {res.get(f'ACC-{c}', float('nan')):.2f} |"
                  for c in classes]
        with open(base + ".md", "w") as f:
            f.write("\n".join(lines) + "\n")
        if self._examples:
            self._write_figure(base.replace("seg_report_", "seg_examples_") + ".png")

    def _write_figure(self, path: str) -> None:
        n = len(self._examples)
        fig = new_figure(9.0, 2.4 * n)
        k = len(self._class_names)
        for row, (file_name, pred) in enumerate(self._examples):
            image = utils.read_image(file_name, format="RGB")
            label = read_dataset_label(self._dataset_name, self.input_file_to_gt_file[file_name])
            label = np.where(label == IGNORE, k, label)
            for col, (title, panel) in enumerate((("input", image), ("prediction", colourise(pred, k)),
                                                  ("label", colourise(label, k)))):
                ax = fig.add_subplot(n, 3, 3 * row + col + 1)
                ax.imshow(panel)
                ax.set_axis_off()
                if row == 0:
                    ax.set_title(title, fontsize=9)
        fig.tight_layout()
        fig.savefig(path, dpi=80)
