"""Label-free delta proposal: the score table, the rule, and tools/propose_threshold.py on a checkpoint."""
import os
import subprocess
import sys

import pytest
import torch

from mic_det.detection.threshold import propose_delta, score_table

from .conftest import REPO


def test_score_table_counts_boxes_and_covered_images():
    scores = [torch.tensor([0.95, 0.85, 0.6]), torch.tensor([0.7]), torch.tensor([])]
    rows = {r["delta"]: r for r in score_table(scores, (0.5, 0.8, 0.9))}
    assert rows[0.5]["boxes_per_image"] == pytest.approx(4 / 3) and rows[0.5]["images_covered"] == pytest.approx(2 / 3)
    assert rows[0.8]["boxes_per_image"] == pytest.approx(2 / 3) and rows[0.8]["images_covered"] == pytest.approx(1 / 3)
    assert rows[0.8]["mean_score"] == pytest.approx(0.9)
    assert rows[0.9] == {"delta": 0.9, "boxes_per_image": 1 / 3, "images_covered": 1 / 3, "mean_score": pytest.approx(0.95)}


def test_the_configured_delta_is_kept_when_it_covers_enough_images_else_lowered():
    table = [{"delta": d, "images_covered": c} for d, c in ((0.5, 0.9), (0.6, 0.7), (0.7, 0.55), (0.8, 0.3), (0.9, 0.1))]
    assert propose_delta(table, configured=0.8, min_coverage=0.25) == 0.8
    assert propose_delta(table, configured=0.8, min_coverage=0.5) == 0.7
    assert propose_delta(table, configured=0.8, min_coverage=0.95) == 0.5  # the floor: too weak a teacher
    assert propose_delta(table, configured=0.6, min_coverage=0.5) == 0.6  # never raised above the configured


@pytest.mark.parametrize("model,expected", [("teacher", "Keep MIC.PSEUDO_SCORE_THRESH 0.8"), ("student", "too weak")])
def test_propose_threshold_tool_reads_the_checkpoint(mic_checkpoint, model, expected):
    """The fixture's teacher scores cars ~0.9 (delta 0.8 kept); its student scores every class ~1/7."""
    config, weights = mic_checkpoint
    proc = subprocess.run(
        [sys.executable, os.path.join(REPO, "tools", "propose_threshold.py"), "--config-file", str(config),
         "--weights", str(weights), "--model", model, "--num-images", "8"],
        cwd=REPO, capture_output=True, text=True, timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "boxes/image" in proc.stdout and expected in proc.stdout, proc.stdout
