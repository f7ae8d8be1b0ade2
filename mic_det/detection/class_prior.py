"""A class-prior cap on pseudo-boxes: no class may be pseudo-labelled more often than the source says it occurs.

Why: self-training amplifies a class the teacher gets confidently wrong. On the
built-in fog shift the source model's truck boxes are partly mislocalised (the
cab alone, once fog hides a pale cargo box) or on background; the masked student
learns them, the EMA teacher follows, and within 500 steps the teacher gives
2.3x as many truck boxes as at the start, 11% of them right, while every other
class keeps or gains precision (BENCHMARKS.md, "The fog truck"). A count far
above how often the class occurs at all is the signature of that loop, and the
one signal that needs no target label.

The cap is class-balanced self-training's prior (Zou et al., ECCV 2018: per-class
thresholds that keep each class's share of pseudo-labels at its expected share)
for boxes: class ``c`` may have at most ``cap x r_c`` pseudo-boxes per target image,
with ``r_c`` its labelled boxes per source image (labels per image are assumed to
shift less between domains than appearance does). Over a window of the teacher's
most recent confident boxes, a class above its allowance gets its own threshold:
the score of its ``allowed``-th best box, so its lowest-scoring boxes are dropped
(and taught as background, which turns the loop around). A class within its
allowance keeps delta. With the cap at 1 it binds only where the teacher finds
more boxes of a class than there are objects of it.
"""
import collections
from typing import Deque, Dict, List, Sequence, Tuple

import torch
from detectron2.structures import Instances

__all__ = ["ClassPriorCap", "source_class_rates"]


def source_class_rates(dataset_dicts: Sequence[Dict], num_classes: int) -> torch.Tensor:
    """Labelled boxes per image of each class (``category_id`` as mapped by Detectron2's loaders), crowd boxes left out.

    Raises a ``ValueError`` when there is no image, or no box at all: no prior can be taken from that.
    """
    counts = torch.zeros(num_classes, dtype=torch.float64)
    for record in dataset_dicts:
        for ann in record.get("annotations", ()):
            if not ann.get("iscrowd", 0) and 0 <= ann["category_id"] < num_classes:
                counts[ann["category_id"]] += 1
    if not dataset_dicts or counts.sum() == 0:
        raise ValueError("MIC.PSEUDO_CLASS_PRIOR_CAP needs labelled boxes in DATASETS.TRAIN to take the class "
                         f"prior from; found {len(dataset_dicts)} images and no box")
    return (counts / len(dataset_dicts)).float()


class ClassPriorCap:
    """Per-class thresholds that keep each class's pseudo-boxes per image within ``cap`` x its source rate.

    Args:
        source_rates: labelled boxes per source image, per class (:func:`source_class_rates`).
        cap: the factor on the source rate; > 0.
        window: how many recent target images the allowance is counted over.
            Boxes are counted on each rank's own images (no communication):
            the window is statistics, and every rank's is large enough.

    The window is not checkpointed: after ``--resume`` it fills again within
    ``window`` images, and until then the allowance is counted on the images
    seen so far.
    """

    def __init__(self, source_rates: torch.Tensor, cap: float, window: int = 128):
        if cap <= 0:
            raise ValueError(f"MIC.PSEUDO_CLASS_PRIOR_CAP must be > 0 to cap anything, got {cap}")
        if window < 1:
            raise ValueError(f"the class-prior window must hold at least one image, got {window}")
        self.rates = source_rates.detach().float().cpu()
        self.cap = float(cap)
        self._recent: Deque[Tuple[torch.Tensor, torch.Tensor]] = collections.deque(maxlen=window)
        self.thresholds = torch.zeros_like(self.rates)  # the last thresholds used; 0 = not capped
        self.dropped = 0  # boxes the last call dropped

    def _thresholds(self) -> torch.Tensor:
        """The score a box of each class needs, over the window (0 where the class is within its allowance)."""
        scores = torch.cat([s for s, _ in self._recent])
        classes = torch.cat([c for _, c in self._recent])
        allowed = torch.floor(self.cap * self.rates * len(self._recent)).long()
        out = torch.zeros_like(self.rates)
        for c in torch.unique(classes).tolist():
            if c >= len(self.rates):
                continue
            mine = scores[classes == c]
            if len(mine) > allowed[c]:
                # Keep the allowed best; with none allowed, a threshold above every score keeps nothing.
                out[c] = torch.sort(mine, descending=True).values[allowed[c] - 1] if allowed[c] > 0 else float("inf")
        return out

    def __call__(self, pseudo: List[Instances]) -> List[Instances]:
        """Add the batch's confident boxes to the window, then drop every box below its class's threshold.

        Uncertain boxes (``gt_ignore``, see ``MIC.PSEUDO_IGNORE_THRESH``) are
        neither counted nor dropped: they are no pseudo-label.
        """
        for x in pseudo:
            sure = ~x.gt_ignore if x.has("gt_ignore") else torch.ones(len(x), dtype=torch.bool)
            sure = sure.cpu()
            self._recent.append((x.gt_scores.detach().cpu()[sure], x.gt_classes.detach().cpu()[sure]))
        self.thresholds = self._thresholds()
        out, self.dropped = [], 0
        for x in pseudo:
            need = self.thresholds.to(x.gt_scores.device)[x.gt_classes.clamp(max=len(self.rates) - 1)]
            keep = x.gt_scores >= need
            if x.has("gt_ignore"):
                keep |= x.gt_ignore
            self.dropped += int((~keep).sum())
            out.append(x[keep])
        return out
