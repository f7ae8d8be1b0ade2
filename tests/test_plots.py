"""tools/plot_metrics.py: the evaluation metric of every task by default, and a missing file in one line."""
import importlib.util
import json
import os
import subprocess
import sys

import pytest

from .conftest import REPO


def _tool():
    spec = importlib.util.spec_from_file_location("plot_metrics", os.path.join(REPO, "tools", "plot_metrics.py"))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    return tool


def _write(path, evals):
    with open(path, "w") as f:
        for it in (19, 39):
            f.write(json.dumps({"iteration": it, "total_loss": 1.0 / it}) + "\n")
            f.write(json.dumps({"iteration": it, **{k: v * it for k, v in evals.items()}}) + "\n")


def test_segmentation_and_classification_runs_plot_their_metric_by_default(tmp_path):
    tool = _tool()
    seg = tmp_path / "seg.json"
    _write(seg, {"student/seg_val/sem_seg/mIoU": 1.0, "teacher/seg_val/sem_seg/mIoU": 1.1,
                 "student/seg_val/sem_seg/pACC": 2.0})
    assert tool.main(["--metrics", str(seg), "--output", str(tmp_path / "seg")]) == 0
    assert sorted(os.listdir(tmp_path / "seg")) == ["eval_sem_seg_mIoU.png", "losses.png"]
    cls = tmp_path / "cls.json"
    _write(cls, {"student/cls_val/cls/top1": 1.0, "teacher/cls_val/cls/top1": 1.2,
                 "student/cls_val/cls/mean_class_acc": 0.5})
    assert tool.main(["--metrics", str(cls), "--output", str(tmp_path / "cls")]) == 0
    assert sorted(os.listdir(tmp_path / "cls")) == ["eval_cls_top1.png", "losses.png"]
    assert all(os.path.getsize(tmp_path / "cls" / f) > 1000 for f in os.listdir(tmp_path / "cls"))

    from mic_det.evaluation.plots import group_series, read_metrics

    evals, _, others = group_series(read_metrics(str(cls)), r"cls/")
    assert set(evals) == {"top1", "mean_class_acc"} and not others
    assert set(evals["top1"]["cls_val"]) == {"student", "teacher"}


@pytest.mark.slow  # a subprocess or a training run
def test_missing_metrics_file_is_one_line(tmp_path):
    missing = tmp_path / "run" / "metrics.json"
    proc = subprocess.run(
        [sys.executable, os.path.join(REPO, "tools", "plot_metrics.py"), "--metrics", str(missing),
         "--output", str(tmp_path / "plots")],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and str(missing) in proc.stderr, proc.stderr
    assert not (tmp_path / "plots").exists()
