"""The statistics of the benchmark scripts (they are run by hand, not by make test)."""
import importlib.util
import os

import pytest
import torch
from detectron2.structures import Boxes, Instances

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "benchmarks", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(target_ap50):
    numbers = {"target_AP50": target_ap50, "target_AP": 1.0, "source_AP50": 2.0, "source_AP": 1.0,
               "target_AP50_per_class": {"car": target_ap50}}
    return {"models": {"student": numbers}, "pseudo_labels": None}


def test_adaptation_comparisons_pooled_and_paired():
    adaptation = _load("adaptation")
    budget = adaptation.Budget(iters=10, burn_in=5, seeds=[0, 1, 2], methods=["source_only", "mic", "oracle"])
    runs = {
        "source_only": {0: _run(30.0), 1: _run(34.0), 2: _run(38.0)},
        "mic": {0: _run(32.0), 1: _run(35.0), 2: _run(41.0)},
        "oracle": {0: _run(50.0), 1: _run(50.0), 2: _run(50.0)},
    }
    summary = adaptation.summarize(runs, budget)
    mic = summary["mic/student"]
    assert mic["target_AP50"]["mean"] == pytest.approx(36.0)
    assert mic["fraction_of_oracle_AP50"] == pytest.approx(36.0 / 50.0)
    vs = mic["vs_source_only"]
    assert vs["AP50_diff"] == pytest.approx(2.0)
    # stds 4.58 and 4.0: pooled sqrt((21 + 16) / 2)
    assert vs["pooled_std"] == pytest.approx(((21.0 + 16.0) / 2) ** 0.5)
    assert vs["exceeds_3_pooled_std"] is False
    # Paired differences 2, 1, 3: mean 2, std 1 (the burn-in's spread cancels out).
    assert vs["paired_diff_per_seed"] == pytest.approx([2.0, 1.0, 3.0])
    assert vs["paired_diff"]["mean"] == pytest.approx(2.0) and vs["paired_diff"]["std"] == pytest.approx(1.0)
    table = "\n".join(adaptation.main_table(summary))
    assert "| MIC | 36.0 ± 4.6 |" in table and "2.0 ± 1.0 |" in table


def test_pseudo_label_sweep_precision_recall_f1():
    sweep = _load("pseudo_label_sweep").sweep
    pred = Instances(
        (100, 100),
        pred_boxes=Boxes(torch.tensor([[0.0, 0, 10, 10], [20, 20, 30, 30], [50, 50, 60, 60]])),
        scores=torch.tensor([0.9, 0.6, 0.4]),
        pred_classes=torch.tensor([0, 0, 0]),
    )
    gt = Instances((100, 100), gt_boxes=Boxes(torch.tensor([[0.0, 0, 10, 10], [20, 20, 30, 30], [70, 70, 80, 80]])),
                   gt_classes=torch.tensor([0, 0, 0]))
    rows = sweep([pred], [gt], [0.3, 0.5, 0.8], nms_thresh=0.5)
    # 0.3: 3 boxes, 2 right; 0.5: 2 of 2; 0.8: 1 of 1; always 3 labels
    assert [r["precision"] for r in rows] == pytest.approx([2 / 3, 1.0, 1.0])
    assert [r["recall"] for r in rows] == pytest.approx([2 / 3, 2 / 3, 1 / 3])
    assert rows[1]["f1"] == pytest.approx(0.8)
    assert [r["boxes_per_image"] for r in rows] == [3.0, 2.0, 1.0]
