"""RPN whose objectness loss can be quality-weighted on pseudo-labelled batches."""
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.layers import cat
from detectron2.modeling.proposal_generator import PROPOSAL_GENERATOR_REGISTRY, RPN
from detectron2.structures import Boxes, ImageList, Instances

from ..pseudo_labels import split_uncertain
from .quality_weight import check_mode, ignored_by_overlap, image_quality, is_pseudo_labelled, pseudo_loss_config

__all__ = ["MICRPN"]


@PROPOSAL_GENERATOR_REGISTRY.register()
class MICRPN(RPN):
    """Detectron2's RPN, unchanged on labelled data.

    On pseudo-labelled targets (teacher boxes carrying ``gt_scores``) the
    objectness loss of every sampled anchor is multiplied by the quality weight
    (``MIC.QUALITY_WEIGHT``) and the localisation loss by
    ``MIC.PSEUDO_BOX_REG_WEIGHT`` (0 in the reference: pseudo-boxes are not
    precise enough to regress to). Per sampled anchor with objectness logit x
    and label y, the loss term is ``w * BCE(x, y)`` with

    * ``teacher_score``: w = the image's mean teacher score (an anchor is not
      tied to one pseudo-box);
    * ``student_prob``: w = sigmoid(x), the student's foreground probability,
      for positive and negative anchors alike and *not* detached, so the
      gradient is ``sigmoid'(x) * BCE + sigmoid(x) * (sigmoid(x) - y)``. This
      is what the reference computes (``det/maskrcnn_benchmark/modeling/rpn/loss.py``
      of lhoyer/MIC, ``use_pseudo_labeling_weight == 'prob'``): it down-weights
      negatives the student already rejects rather than measuring confidence;
    * ``none``: w = 1.

    The sum is divided by Detectron2's normalizer (``BATCH_SIZE_PER_IMAGE`` x
    images), as for labelled batches; the reference takes the mean over the
    sampled anchors, the same number whenever the sampler fills its quota.
    """

    @configurable
    def __init__(self, *, quality_weight: str = "none", pseudo_box_reg_weight: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.quality_weight = check_mode(quality_weight)
        self.pseudo_box_reg_weight = pseudo_box_reg_weight
        self._pseudo_quality: Optional[torch.Tensor] = None

    @classmethod
    def from_config(cls, cfg, input_shape):
        ret = super().from_config(cfg, input_shape)
        ret.update(pseudo_loss_config(cfg))
        return ret

    def forward(
        self,
        images: ImageList,
        features: Dict[str, torch.Tensor],
        gt_instances: Optional[List[Instances]] = None,
    ):
        # Detectron2's RPN.forward hands losses() the anchor labels but not the
        # Instances they came from; rather than fork forward, the per-image
        # quality is handed over for the duration of this call only.
        if self.training and is_pseudo_labelled(gt_instances):
            self._pseudo_quality = image_quality(gt_instances)
        try:
            return super().forward(images, features, gt_instances)
        finally:
            self._pseudo_quality = None

    def label_and_sample_anchors(
        self, anchors: List[Boxes], gt_instances: List[Instances]
    ) -> Tuple[List[torch.Tensor], List[torch.Tensor]]:
        """Detectron2's labels from the confident boxes; anchors near uncertain ones ignored.

        An anchor that would be a negative but overlaps an uncertain teacher box
        (``gt_ignore``, see ``MIC.PSEUDO_IGNORE_THRESH``) by at least the RPN's
        own negative threshold is set to -1: the teacher could not say whether
        an object is there, so it is not taught as background.
        """
        split = [split_uncertain(x) for x in gt_instances]
        gt_labels, matched = super().label_and_sample_anchors(anchors, [c for c, _ in split])
        if all(len(u) == 0 for _, u in split):
            return gt_labels, matched
        all_anchors = Boxes.cat(anchors)
        negative_below = self.anchor_matcher.thresholds[1]  # IoU under which an anchor is background
        for labels, (_, uncertain) in zip(gt_labels, split):
            near = ignored_by_overlap(all_anchors, uncertain, negative_below)
            labels[near & (labels == 0)] = -1
        return gt_labels, matched

    def losses(
        self,
        anchors: List[Boxes],
        pred_objectness_logits: List[torch.Tensor],
        gt_labels: List[torch.Tensor],
        pred_anchor_deltas: List[torch.Tensor],
        gt_boxes: List[torch.Tensor],
    ) -> Dict[str, torch.Tensor]:
        losses = super().losses(anchors, pred_objectness_logits, gt_labels, pred_anchor_deltas, gt_boxes)
        if self._pseudo_quality is None:
            return losses
        labels = torch.stack(gt_labels)
        logits = cat(pred_objectness_logits, dim=1)
        valid = labels >= 0
        if self.quality_weight == "teacher_score":
            weight = self._pseudo_quality.to(logits.dtype)[:, None].expand_as(logits)
        elif self.quality_weight == "student_prob":
            # The reference's foreground probability, for positives and negatives
            # alike and *not* detached: the weight is part of the loss's gradient.
            weight = logits.sigmoid()
        else:
            weight = torch.ones_like(logits)
        per_anchor = F.binary_cross_entropy_with_logits(
            logits[valid], labels[valid].to(logits.dtype), reduction="none"
        )
        normalizer = self.batch_size_per_image * labels.shape[0]
        losses["loss_rpn_cls"] = (per_anchor * weight[valid]).sum() / normalizer * self.loss_weight.get(
            "loss_rpn_cls", 1.0
        )
        losses["loss_rpn_loc"] = losses["loss_rpn_loc"] * self.pseudo_box_reg_weight
        return losses
