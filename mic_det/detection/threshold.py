"""Proposing delta (``MIC.PSEUDO_SCORE_THRESH``) from the teacher's scores on target images, without labels.

Why: the failure a user meets first on a new shift is a teacher that gives no
pseudo-box at delta = 0.8 (the paper's value), so MIC never acts. Target
labels are not there to choose delta by precision/recall
(``benchmarks/pseudo_label_sweep.py`` does that where they are). What can be
seen without labels is how many boxes each delta leaves and on how many
images; the rule here keeps the configured delta unless it would leave most
target images without a pseudo-box, and then proposes the highest delta that
does not, never below a floor (low deltas teach the student its own noise).
The table is printed so the user sees the trade-off, with the labelled
objects per source image as a yardstick for hallucination.
"""
from typing import Dict, List, Sequence

import torch

__all__ = ["DEFAULT_GRID", "score_table", "propose_delta"]

DEFAULT_GRID = (0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95)


def score_table(scores_per_image: Sequence[torch.Tensor], thresholds: Sequence[float] = DEFAULT_GRID) -> List[Dict]:
    """Per threshold: pseudo-boxes per image, share of images with at least one, their mean score.

    ``scores_per_image``: the teacher's detection scores per target image, after
    its own NMS (what :func:`make_pseudo_labels` thresholds).
    """
    n = max(len(scores_per_image), 1)
    rows = []
    for t in thresholds:
        kept = [s[s >= t] for s in scores_per_image]
        count = sum(len(k) for k in kept)
        rows.append({
            "delta": float(t),
            "boxes_per_image": count / n,
            "images_covered": sum(len(k) > 0 for k in kept) / n,
            "mean_score": float(torch.cat(kept).mean()) if count else 0.0,
        })
    return rows


def propose_delta(table: Sequence[Dict], configured: float, min_coverage: float = 0.5) -> float:
    """The configured delta if it covers ``min_coverage`` of the images, else the highest delta that does.

    When no delta of the table covers that many images, the lowest one in the
    table is proposed (the floor); the caller says that the teacher is too weak.
    """
    rows = sorted(table, key=lambda r: r["delta"])
    if not rows:
        raise ValueError("propose_delta needs a non-empty score table")
    at_configured = [r for r in rows if r["delta"] >= configured]
    if at_configured and at_configured[0]["images_covered"] >= min_coverage:
        return float(configured)
    covering = [r["delta"] for r in rows if r["delta"] <= configured and r["images_covered"] >= min_coverage]
    return float(max(covering)) if covering else float(rows[0]["delta"])
