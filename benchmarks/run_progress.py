"""Running a benchmark's training run in the background, with progress lines.

A benchmark run writes its own output to ``OUTPUT_DIR/stdout.txt``; without these
lines the terminal shows nothing for the minutes a run takes. Every ``period``
seconds :func:`progress_line` reads the run's ``metrics.json`` (Detectron2's
``JSONWriter`` appends one row per logging period and one per evaluation) and
says where the run is: step, ETA, the latest total loss and the latest
evaluation metric of the target set.
"""
import json
import os
import subprocess
import sys
import threading
import time
from typing import Dict, List, Optional

__all__ = ["execute", "latest_rows", "progress_line", "say", "where_line"]

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROGRESS_SECONDS = 30.0  # between progress lines of a run (the benchmarks' --progress-every; 0: none)

_SAY_LOCK = threading.Lock()


def say(line: str) -> None:
    """Print ``line`` whole: the runs of ``--jobs 2`` report from two threads, and ``print``
    writes a line and its newline apart, so two lines could run into one."""
    with _SAY_LOCK:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


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


def execute(cmd: List[str], log_path: str, threads: Optional[int], label: str = "",
            total_iters: int = 0, dataset: Optional[str] = None) -> float:
    """Run ``cmd`` with its output in ``log_path``; return its wall time.

    With a ``label``, say where the run's log and TensorBoard files are, and every
    ``PROGRESS_SECONDS`` print one progress line from the run's ``metrics.json``
    (step, ETA, loss, the latest ``dataset`` metric).
    """
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    run_dir = os.path.dirname(log_path)
    start = time.perf_counter()
    with open(log_path, "a") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        if label:
            say(where_line(label, run_dir))
        while True:
            try:
                proc.wait(timeout=PROGRESS_SECONDS if label and PROGRESS_SECONDS > 0 else None)
                break
            except subprocess.TimeoutExpired:
                say(progress_line(label, run_dir, total_iters, dataset))
    if proc.returncode != 0:
        with open(log_path) as f:
            tail = f.read()[-4000:]
        raise RuntimeError(f"run failed ({proc.returncode}), log {log_path}:\n{tail}")
    return time.perf_counter() - start
