"""The student: Detectron2's SemanticSegmentor with the DeepLabV3+ head, taught per-pixel weights.

Self-training needs one thing Detectron2's segmentor lacks: a per-pixel weight
on the cross-entropy (the teacher's quality weight q on pseudo-labelled
pixels, 1 on source pixels pasted by ClassMix). Both classes below subclass
Detectron2's and override only that path, so the network, its config keys and
its checkpoints are Detectron2's own:

* :class:`MICDeepLabV3PlusHead` (``MODEL.SEM_SEG_HEAD.NAME``): ``DeepLabV3PlusHead``
  whose loss takes an optional weight map;
* :class:`MICSemanticSegmentor` (``MODEL.META_ARCHITECTURE``): reads an input's
  ``"sem_seg_weight"`` (HxW, or absent = 1), logs the source pixel accuracy for
  the collapse guard, and gives the teacher's logits in the network-input frame
  (:meth:`~MICSemanticSegmentor.input_frame_logits`) for pseudo-labels.

A MiT / SegFormer backbone (DAFormer's) would plug in as a Detectron2 backbone
registered in ``BACKBONE_REGISTRY`` returning ``res2``..``res5``-named features
(strides 4..32); the head and everything here stay as they are.
"""
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from detectron2.modeling import META_ARCH_REGISTRY, SEM_SEG_HEADS_REGISTRY, SemanticSegmentor
from detectron2.projects.deeplab import DeepLabV3PlusHead
from detectron2.structures import ImageList
from detectron2.utils.events import get_event_storage

__all__ = ["MICDeepLabV3PlusHead", "MICSemanticSegmentor", "weighted_cross_entropy", "PIXEL_ACCURACY", "WEIGHT_KEY"]

WEIGHT_KEY = "sem_seg_weight"
#: Event-storage key of the last unweighted (labelled) training forward's pixel accuracy.
PIXEL_ACCURACY = "sem_seg/pixel_accuracy"


def weighted_cross_entropy(
    logits: torch.Tensor, targets: torch.Tensor, weights: Optional[torch.Tensor], ignore_value: int
) -> torch.Tensor:
    """Per-pixel cross-entropy x weight, averaged over the pixels that are not ``ignore_value``.

    With ``weights`` None (or all 1) it equals ``F.cross_entropy(..., ignore_index)``.
    The reference (mmseg) divides by all pixels, ignored ones included; dividing by
    the labelled ones keeps a weighted loss on the scale of the source loss for any
    share of ignored pixels.
    """
    loss = F.cross_entropy(logits, targets, reduction="none", ignore_index=ignore_value)
    if weights is not None:
        loss = loss * weights
    valid = (targets != ignore_value).sum()
    return loss.sum() / valid.clamp(min=1)


@SEM_SEG_HEADS_REGISTRY.register()
class MICDeepLabV3PlusHead(DeepLabV3PlusHead):
    """Detectron2's DeepLabV3+ head; its training loss takes a per-pixel weight map.

    The weighted loss is plain cross-entropy (``MODEL.SEM_SEG_HEAD.LOSS_TYPE
    "cross_entropy"``, as DAFormer/MIC train); DeepLab's hard-pixel mining would
    pick pixels by loss, which a quality weight then distorts.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.loss_type != "cross_entropy":
            raise ValueError(
                f"MODEL.SEM_SEG_HEAD.LOSS_TYPE must be 'cross_entropy' for MICDeepLabV3PlusHead, got {self.loss_type!r}"
            )

    def forward(self, features, targets=None, weights: Optional[torch.Tensor] = None):
        if self.training:
            return None, self.losses(self.layers(features), targets, weights)
        return super().forward(features, targets)

    def losses(self, predictions, targets, weights: Optional[torch.Tensor] = None):
        predictions = F.interpolate(predictions, size=targets.shape[-2:], mode="bilinear", align_corners=False)
        loss = weighted_cross_entropy(predictions, targets, weights, self.ignore_value)
        if weights is None:  # a labelled forward (the source batch): its accuracy is the guard's signal
            log_pixel_accuracy(predictions.detach().argmax(dim=1), targets, self.ignore_value, PIXEL_ACCURACY)
        return {"loss_sem_seg": loss * self.loss_weight}


@META_ARCH_REGISTRY.register()
class MICSemanticSegmentor(SemanticSegmentor):
    """SemanticSegmentor + per-pixel loss weights, the source pixel accuracy, input-frame logits."""

    def preprocess_image(self, batched_inputs: List[Dict]) -> ImageList:
        """Normalised, padded batch, as the forward builds it (the MIC step masks this)."""
        images = [(x["image"].to(self.device) - self.pixel_mean) / self.pixel_std for x in batched_inputs]
        return ImageList.from_tensors(
            images, self.backbone.size_divisibility, padding_constraints=self.backbone.padding_constraints
        )

    def _padded(self, tensors: Sequence[torch.Tensor], pad_value: float) -> torch.Tensor:
        return ImageList.from_tensors(
            list(tensors), self.backbone.size_divisibility, pad_value, self.backbone.padding_constraints
        ).tensor

    def forward(self, batched_inputs: List[Dict]):
        if not self.training:
            return super().forward(batched_inputs)
        images = self.preprocess_image(batched_inputs)
        features = self.backbone(images.tensor)
        ignore = self.sem_seg_head.ignore_value
        targets = self._padded([x["sem_seg"].to(self.device) for x in batched_inputs], ignore)
        weights = None
        if any(WEIGHT_KEY in x for x in batched_inputs):
            per_image = [
                x[WEIGHT_KEY].to(self.device) if WEIGHT_KEY in x
                else torch.ones(x["sem_seg"].shape, dtype=torch.float32, device=self.device)  # labelled: weight 1
                for x in batched_inputs
            ]
            weights = self._padded(per_image, 0.0)
            _, losses = self.sem_seg_head(features, targets, weights)
        else:
            _, losses = self.sem_seg_head(features, targets)
        return losses

    @torch.no_grad()
    def input_frame_logits(self, batched_inputs: List[Dict]) -> Tuple[torch.Tensor, List[Tuple[int, int]]]:
        """(N, K, H, W) logits at the padded network-input size, and each image's size in it.

        Pseudo-labels must line up with the masked view, which is the same
        resized and flipped image: so no resizing back to the original ``height`` / ``width``.
        """
        images = self.preprocess_image(batched_inputs)
        features = self.backbone(images.tensor)
        was_training = self.sem_seg_head.training
        self.sem_seg_head.eval()  # the head's inference path (logits, no loss)
        try:
            logits, _ = self.sem_seg_head(features)
        finally:
            self.sem_seg_head.train(was_training)
        if logits.shape[-2:] != images.tensor.shape[-2:]:
            logits = F.interpolate(logits, size=images.tensor.shape[-2:], mode="bilinear", align_corners=False)
        return logits, list(images.image_sizes)


def log_pixel_accuracy(logits_argmax: torch.Tensor, targets: torch.Tensor, ignore_value: int, name: str) -> None:
    """Put the share of labelled pixels predicted right in the event storage (if one is open)."""
    valid = targets != ignore_value
    acc = float((logits_argmax[valid] == targets[valid]).float().mean()) if valid.any() else float("nan")
    try:
        get_event_storage().put_scalar(name, acc, smoothing_hint=False)
    except AssertionError:  # no storage outside training
        pass
