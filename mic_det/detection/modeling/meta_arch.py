"""GeneralizedRCNN that also takes an unlabelled target batch for domain alignment."""
from typing import Dict, List, Optional

import torch
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, GeneralizedRCNN
from detectron2.structures import Boxes, ImageList

from .domain_alignment import DomainAlignment
from .roi_heads import MICROIHeads

__all__ = ["DomainAdaptiveRCNN"]


@META_ARCH_REGISTRY.register()
class DomainAdaptiveRCNN(GeneralizedRCNN):
    """Faster R-CNN plus SADA / DA-Faster alignment (``UDA.*``).

    ``model(source_inputs)`` is plain Detectron2 (so source-only training,
    inference, the EMA teacher and the masked MIC forward all use it);
    ``model(source_inputs, target_inputs=...)`` adds the domain losses from
    the same source forward and one plain forward of the target batch.
    """

    @configurable
    def __init__(self, *, domain_alignment: Optional[DomainAlignment] = None, target_rois_per_image: int = 64, **kwargs):
        super().__init__(**kwargs)
        self.domain_alignment = domain_alignment
        self.target_rois_per_image = target_rois_per_image
        if domain_alignment is not None and not isinstance(self.roi_heads, MICROIHeads):
            raise ValueError(
                "UDA.ENABLED needs MODEL.ROI_HEADS.NAME: MICROIHeads (it exposes RoI features), "
                f"got {type(self.roi_heads).__name__}"
            )

    @classmethod
    def from_config(cls, cfg):
        ret = super().from_config(cfg)
        if cfg.UDA.ENABLED:
            box_dim = ret["roi_heads"].box_head.output_shape.channels
            ret["domain_alignment"] = DomainAlignment(cfg, ret["backbone"].output_shape(), box_feature_dim=box_dim)
            ret["target_rois_per_image"] = cfg.UDA.INS_DA.TARGET_ROIS_PER_IMAGE
        return ret

    def forward(self, batched_inputs: List[Dict], target_inputs: Optional[List[Dict]] = None):
        if not self.training or target_inputs is None or self.domain_alignment is None:
            return super().forward(batched_inputs)

        images = self.preprocess_image(batched_inputs)
        target_images = self.preprocess_image(target_inputs)
        features, target_features = self._backbone_both(images, target_images)
        gt_instances = [x["instances"].to(self.device) for x in batched_inputs]
        proposals, proposal_losses = self.proposal_generator(images, features, gt_instances)
        with self.roi_heads.capturing_box_features() as box_features:
            sampled, detector_losses = self.roi_heads(images, features, proposals, gt_instances)
        (source_box_features,) = box_features

        target_box_features, target_boxes = self._target_rois(target_images, target_features)
        da_losses = self.domain_alignment(
            {"source": features, "target": target_features},
            {"source": source_box_features, "target": target_box_features},
            {"source": [p.proposal_boxes for p in sampled], "target": target_boxes},
        )
        losses = {}
        losses.update(detector_losses)
        losses.update(proposal_losses)
        losses.update(da_losses)
        return losses

    def _backbone_both(self, source: ImageList, target: ImageList):
        """Backbone features of both batches, in one pass when their padded sizes agree.

        One batch of 2N images keeps the hardware busier than two of N (the
        reference SADA code batches the domains too). With per-image norms (GN,
        frozen BN: every shipped config) this changes no number; with trainable
        BN the batch statistics pool both domains, as in the reference.
        """
        if source.tensor.shape[1:] != target.tensor.shape[1:]:
            return self.backbone(source.tensor), self.backbone(target.tensor)
        n = len(source)
        both = self.backbone(torch.cat([source.tensor, target.tensor]))
        return {k: v[:n] for k, v in both.items()}, {k: v[n:] for k, v in both.items()}

    def _target_rois(self, images: ImageList, features: Dict[str, torch.Tensor]):
        """Box-head features of the target batch's top RPN proposals, and those boxes per image."""
        rpn = self.proposal_generator
        # Detectron2's RPN proposes without ground truth only in eval mode (in
        # training its forward requires and logs gt); it has no train-only
        # layers, so only its top-k setting changes, for this call alone.
        rpn.train(False)
        try:
            proposals, _ = rpn(images, features)
        finally:
            rpn.train(True)
        boxes = [Boxes(p.proposal_boxes.tensor[: self.target_rois_per_image].detach()) for p in proposals]
        box_features = self.roi_heads.box_features_for(features, boxes)
        return box_features, boxes
