"""Teacher logits -> per-pixel pseudo-labels with DACS's quality weight, and their statistics.

The pseudo-label of a pixel is the teacher's argmax on the *unmasked* target
image; its weight is one number per batch, q = the share of the batch's pixels
whose max softmax probability is >= tau (0.968), as DACS / DAFormer / MIC
compute it (over all pixels of all images of the batch, not per image). Rows
at the top / bottom of the input may be left out (weight 0), as the reference
does for Cityscapes' ego car.
"""
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from .labels import IGNORE
from .modeling import WEIGHT_KEY

__all__ = ["make_pseudo_labels", "quality_weight", "pseudo_label_stats", "classes_present", "pseudo_label_accuracy"]


def quality_weight(max_probs: Sequence[torch.Tensor], threshold: float) -> float:
    """q: confident pixels / all pixels, over every image of the batch."""
    confident = sum(int((p >= threshold).sum()) for p in max_probs)
    total = sum(p.numel() for p in max_probs)
    return confident / total if total else 0.0


def make_pseudo_labels(
    logits: torch.Tensor,
    image_sizes: Sequence[Tuple[int, int]],
    threshold: float,
    ignore_top: int = 0,
    ignore_bottom: int = 0,
) -> List[Dict[str, torch.Tensor]]:
    """One ``{"sem_seg", "sem_seg_weight", "confident", "max_prob"}`` per image, cropped to its size.

    ``logits``: (N, K, H, W) teacher logits at the padded network-input size.
    ``sem_seg_weight`` is q everywhere but the ignored rows (0).
    """
    probs = torch.softmax(logits.float(), dim=1)
    max_prob, labels = probs.max(dim=1)
    crops = [(max_prob[i, :h, :w], labels[i, :h, :w]) for i, (h, w) in enumerate(image_sizes)]
    q = quality_weight([p for p, _ in crops], threshold)
    out = []
    for p, lab in crops:
        weight = torch.full_like(p, q)
        if ignore_top > 0:
            weight[:ignore_top] = 0
        if ignore_bottom > 0:
            weight[max(0, weight.shape[0] - ignore_bottom):] = 0
        out.append({"sem_seg": lab, WEIGHT_KEY: weight, "confident": p >= threshold, "max_prob": p})
    return out


def classes_present(labels: torch.Tensor, min_share: float, mask: Optional[torch.Tensor] = None) -> int:
    """Classes covering at least ``min_share`` of the image's pixels (within ``mask``), ignore excluded."""
    values = labels[mask] if mask is not None else labels.reshape(-1)
    values = values[values != IGNORE]
    if values.numel() == 0:
        return 0
    counts = torch.bincount(values.reshape(-1))
    return int((counts >= max(1.0, min_share * labels.numel())).sum())


def pseudo_label_stats(pseudo: Sequence[Dict[str, torch.Tensor]], min_share: float) -> Dict[str, float]:
    """mic/* scalars: q, mean max probability, confident classes per image (the guard's count)."""
    n = max(len(pseudo), 1)
    q = float(pseudo[0][WEIGHT_KEY].max()) if pseudo else 0.0
    return {
        "quality_weight": q,
        "confident_share": sum(float(p["confident"].float().mean()) for p in pseudo) / n,
        "mean_max_prob": sum(float(p["max_prob"].mean()) for p in pseudo) / n,
        "confident_classes_per_image":
            sum(classes_present(p["sem_seg"], min_share, p["confident"]) for p in pseudo) / n,
    }


def pseudo_label_accuracy(
    pseudo: Sequence[Dict[str, torch.Tensor]], labels: Sequence[torch.Tensor]
) -> Dict[str, float]:
    """Pixel accuracy of the pseudo-labels against the target's own labels (all / confident pixels)."""
    right = total = right_conf = total_conf = 0
    for p, gt in zip(pseudo, labels):
        gt = gt.to(p["sem_seg"].device)
        valid = gt != IGNORE
        hit = (p["sem_seg"] == gt) & valid
        right, total = right + int(hit.sum()), total + int(valid.sum())
        conf = valid & p["confident"]
        right_conf, total_conf = right_conf + int((hit & conf).sum()), total_conf + int(conf.sum())
    return {"accuracy": right / max(total, 1), "confident_accuracy": right_conf / max(total_conf, 1)}
