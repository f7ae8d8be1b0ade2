"""RoI heads: Detectron2's StandardROIHeads with a quality-weighted box predictor.

Nothing of the heads is forked: the box predictor is swapped for a subclass
whose ``losses`` weights pseudo-labelled RoIs, and the box head's output can
be captured (through a forward hook held only for one call) for the
instance-level domain discriminator.
"""
import contextlib
from typing import Dict, Iterator, List

import torch
from detectron2.config import configurable
from detectron2.layers import cat, cross_entropy
from detectron2.modeling.roi_heads import ROI_HEADS_REGISTRY, FastRCNNOutputLayers, StandardROIHeads
from detectron2.structures import Instances

from ..pseudo_labels import split_uncertain
from .quality_weight import check_mode, ignored_by_overlap, pseudo_loss_config

__all__ = ["MICFastRCNNOutputLayers", "MICROIHeads"]


class MICFastRCNNOutputLayers(FastRCNNOutputLayers):
    """Box predictor whose losses weight pseudo-labelled RoIs by the MIC quality.

    Per RoI, with ``MIC.QUALITY_WEIGHT``:

    * ``teacher_score``: foreground RoIs take the teacher score of the
      pseudo-box they matched; background RoIs take their image's mean score.
    * ``student_prob``: the student's own max-softmax over all classes
      (background included), detached, for every sampled RoI -- what the
      reference computes (``det/maskrcnn_benchmark/modeling/roi_heads/box_head/loss.py``
      of lhoyer/MIC, ``use_pseudo_labeling_weight == 'prob'``: mean over the
      RoIs of weight x cross-entropy, as here).
    * ``none``: 1.

    The box-regression loss on pseudo-labels is scaled by
    ``MIC.PSEUDO_BOX_REG_WEIGHT``. Labelled batches take Detectron2's path.
    """

    @configurable
    def __init__(self, *args, quality_weight: str = "none", pseudo_box_reg_weight: float = 0.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.quality_weight = check_mode(quality_weight)
        self.pseudo_box_reg_weight = pseudo_box_reg_weight

    @classmethod
    def from_config(cls, cfg, input_shape):
        ret = super().from_config(cfg, input_shape)
        ret.update(pseudo_loss_config(cfg))
        return ret

    def roi_weights(self, scores: torch.Tensor, proposals: List[Instances]) -> torch.Tensor:
        """The quality weight of every RoI, shape (R,), detached."""
        if self.quality_weight == "student_prob":
            return scores.detach().softmax(dim=1).max(dim=1).values
        if self.quality_weight == "none":
            return scores.new_ones(scores.shape[0])
        gt_classes = cat([p.gt_classes for p in proposals], dim=0)
        matched = cat([p.gt_scores for p in proposals], dim=0)
        image_q = cat([p.gt_image_quality for p in proposals], dim=0)
        return torch.where(gt_classes == self.num_classes, image_q, matched).to(scores.dtype)

    def losses(self, predictions, proposals: List[Instances]) -> Dict[str, torch.Tensor]:
        if not proposals or not proposals[0].has("gt_scores"):
            return super().losses(predictions, proposals)
        losses = super().losses(predictions, proposals)
        scores, _ = predictions
        gt_classes = cat([p.gt_classes for p in proposals], dim=0)
        per_roi = cross_entropy(scores, gt_classes, reduction="none")
        weight = self.roi_weights(scores, proposals)
        if proposals[0].has("mic_ignored"):  # background RoIs on uncertain teacher boxes
            weight = weight * ~cat([p.mic_ignored for p in proposals], dim=0)
        loss_cls = (per_roi * weight).sum() / max(gt_classes.numel(), 1)
        losses["loss_cls"] = loss_cls * self.loss_weight.get("loss_cls", 1.0)
        losses["loss_box_reg"] = losses["loss_box_reg"] * self.pseudo_box_reg_weight
        return losses


@ROI_HEADS_REGISTRY.register()
class MICROIHeads(StandardROIHeads):
    """StandardROIHeads with :class:`MICFastRCNNOutputLayers`, whose box features can be captured.

    ``StandardROIHeads._forward_box`` computes the box head's features and
    keeps them to itself; rather than fork it, :meth:`capturing_box_features`
    hooks the box head for the duration of one call.
    """

    @contextlib.contextmanager
    def capturing_box_features(self) -> Iterator[List[torch.Tensor]]:
        """Collect the box head's output of every forward inside the block.

        In training, one forward of the heads appends one tensor: a row per
        sampled RoI, in the order of the proposals it returns.
        """
        captured: List[torch.Tensor] = []
        handle = self.box_head.register_forward_hook(lambda module, inputs, output: captured.append(output))
        try:
            yield captured
        finally:
            handle.remove()

    @classmethod
    def _init_box_head(cls, cfg, input_shape):
        ret = super()._init_box_head(cfg, input_shape)
        ret["box_predictor"] = MICFastRCNNOutputLayers(cfg, ret["box_head"].output_shape)
        return ret

    def label_and_sample_proposals(self, proposals: List[Instances], targets: List[Instances]) -> List[Instances]:
        """Detectron2's sampling on the confident boxes; background RoIs near uncertain ones flagged.

        With pseudo-labels that carry uncertain teacher boxes (``gt_ignore``,
        see ``MIC.PSEUDO_IGNORE_THRESH``), matching and sampling see only the
        confident boxes, exactly as without them; then every sampled
        background RoI that overlaps an uncertain box by at least the IoU at
        which a RoI stops being background gets ``mic_ignored = True``, and
        the box predictor gives it weight 0.
        """
        split = [split_uncertain(t) for t in targets]
        sampled = super().label_and_sample_proposals(proposals, [c for c, _ in split])
        if all(len(u) == 0 for _, u in split):
            return sampled
        background_below = self.proposal_matcher.thresholds[1]
        for p, (_, uncertain) in zip(sampled, split):
            near = ignored_by_overlap(p.proposal_boxes, uncertain, background_below)
            p.mic_ignored = near & (p.gt_classes == self.num_classes)
        return sampled

    def box_features_for(self, features: Dict[str, torch.Tensor], boxes) -> torch.Tensor:
        """Box-head features of arbitrary boxes (used for unlabelled target RoIs)."""
        feats = [features[f] for f in self.box_in_features]
        return self.box_head(self.box_pooler(feats, boxes))
