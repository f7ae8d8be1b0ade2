"""The MIC quality weight q_T, in one place for the RPN and the RoI head.

A batch is "pseudo-labelled" when its target Instances carry ``gt_scores``
(the teacher's confidences, set by :func:`mic_det.detection.pseudo_labels.make_pseudo_labels`).
Only such batches are weighted; labelled source batches keep Detectron2's
losses bit for bit.
"""
from typing import List, Optional

import torch
from detectron2.structures import Boxes, Instances, pairwise_iou

__all__ = [
    "QUALITY_WEIGHT_MODES",
    "is_pseudo_labelled",
    "image_quality",
    "attach_image_quality",
    "check_mode",
    "ignored_by_overlap",
    "pseudo_loss_config",
]

QUALITY_WEIGHT_MODES = ("teacher_score", "student_prob", "none")


def check_mode(mode: str) -> str:
    if mode not in QUALITY_WEIGHT_MODES:
        raise ValueError(
            f"MIC.QUALITY_WEIGHT must be one of {QUALITY_WEIGHT_MODES}, got {mode!r}"
        )
    return mode


def is_pseudo_labelled(instances: Optional[List[Instances]]) -> bool:
    """True when the targets are teacher pseudo-labels (they carry ``gt_scores``)."""
    return bool(instances) and all(x.has("gt_scores") for x in instances)


def image_quality(instances: List[Instances]) -> torch.Tensor:
    """Per-image teacher confidence: the mean score of its confident pseudo-boxes (0 if none).

    Used where a loss term is not tied to one pseudo-box (background anchors and
    RoIs), so the whole image is trusted as much as its teacher was on average.
    """
    out = []
    for x in instances:
        s = x.gt_scores[~x.gt_ignore] if x.has("gt_ignore") else x.gt_scores
        out.append(s.mean() if s.numel() else s.new_zeros(()))
    return torch.stack(out).detach()


def attach_image_quality(instances: List[Instances]) -> List[Instances]:
    """Copy each image's quality onto its boxes as ``gt_image_quality``.

    Detectron2's RoI sampler copies every ``gt_*`` field onto the proposals it
    samples, so background RoIs then know their image's quality without any
    state passed around the heads.
    """
    for x, q in zip(instances, image_quality(instances)):
        x.gt_image_quality = q.expand(len(x)).clone()
    return instances


def ignored_by_overlap(boxes: Boxes, uncertain: Boxes, iou_thresh: float) -> torch.Tensor:
    """Which of ``boxes`` (anchors or RoIs) overlap an uncertain teacher box by >= ``iou_thresh``."""
    if len(uncertain) == 0 or len(boxes) == 0:
        return torch.zeros(len(boxes), dtype=torch.bool, device=boxes.device)
    return pairwise_iou(uncertain, boxes).max(dim=0).values >= iou_thresh


def pseudo_loss_config(cfg) -> dict:
    """The constructor arguments both weighted heads (RPN and RoI) take from ``MIC.*``."""
    return {
        "quality_weight": cfg.MIC.QUALITY_WEIGHT,
        "pseudo_box_reg_weight": cfg.MIC.PSEUDO_BOX_REG_WEIGHT,
    }
