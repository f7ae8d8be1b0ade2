"""Progress lines for a training run that a benchmark starts in the background.

A benchmark run writes its own output to ``OUTPUT_DIR/stdout.txt``; without these
lines the terminal shows nothing for the minutes a run takes. Every ``period``
seconds :func:`progress_line` reads the run's ``metrics.json`` (Detectron2's
``JSONWriter`` appends one row per logging period and one per evaluation) and
says where the run is: step, ETA, the latest total loss and the latest
evaluation metric of the target set.
"""
import json
import os
from typing import Dict, Optional

__all__ = ["latest_rows", "progress_line", "where_line"]

_TAIL_BYTES = 64 * 1024  # enough for the last training row and the last evaluation row
# Evaluation metrics shown, first found wins: detection, segmentation, classification.
_EVAL_SUFFIXES = ("bbox/AP50", "sem_seg/mIoU", "cls/mean_class_acc")


def latest_rows(metrics_path: str) -> Dict[str, Dict]:
    """The last training row ("train") and the last row with an evaluation metric ("eval")."""
    try:
        with open(metrics_path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - _TAIL_BYTES))
            lines = f.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return {}
    rows: Dict[str, Dict] = {}
    for line in reversed(lines):
        try:
            row = json.loads(line)
        except ValueError:  # a partly written last line, or the cut-off first one
            continue
        if "train" not in rows and "total_loss" in row:
            rows["train"] = row
        if "eval" not in rows and any(k.endswith(_EVAL_SUFFIXES) for k in row):
            rows["eval"] = row
        if len(rows) == 2:
            break
    return rows


def _eval_text(row: Dict, dataset: Optional[str]) -> str:
    keys = sorted(k for k in row if k.endswith(_EVAL_SUFFIXES) and (dataset is None or f"/{dataset}/" in k))
    if not keys:
        return ""
    # One metric per model (student, teacher): the first suffix in _EVAL_SUFFIXES order that is there.
    suffix = next(s for s in _EVAL_SUFFIXES if any(k.endswith(s) for k in keys))
    shown = [f"{k.split('/')[0]} {row[k]:.1f}" for k in keys if k.endswith(suffix)]
    return f", {suffix} ({dataset or 'val'}) at step {row.get('iteration', '?')}: {', '.join(shown)}"


def progress_line(label: str, run_dir: str, total_iters: int, dataset: Optional[str] = None) -> str:
    """One line on where the run in ``run_dir`` is, e.g. ``[seed 0] mic: step 1120/1500, ...``."""
    rows = latest_rows(os.path.join(run_dir, "metrics.json"))
    train = rows.get("train")
    if train is None:
        return f"{label}: starting (building the model and data)"
    step = int(train.get("iteration", 0)) + 1
    text = f"{label}: step {step}/{total_iters}, total_loss {train['total_loss']:.3f}"
    if "eta_seconds" in train:
        text += f", ETA {int(train['eta_seconds']) // 60} min {int(train['eta_seconds']) % 60:02d} s"
    if "eval" in rows:
        text += _eval_text(rows["eval"], dataset)
    return text


def where_line(label: str, run_dir: str) -> str:
    """Where a run's log and TensorBoard files are."""
    return f"{label}: log {os.path.join(run_dir, 'log.txt')}; TensorBoard: tensorboard --logdir {run_dir}"
