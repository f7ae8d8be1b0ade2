"""Adversarial feature alignment of SADA / DA-Faster R-CNN, the base UDA under MIC.

Three terms, each a switch in ``UDA.*``, computed as the reference code
(sa-da-faster's ``da_heads.py``, which the MIC detection code uses) computes
them:

* image level: one per-pixel domain classifier (1x1 convs C -> 512 -> 1) per
  backbone feature map. The reference runs one head on each of the five FPN
  outputs P2-P6; each level's logit map is upsampled bilinearly
  (``align_corners=True``) to the finest level's size and the BCE is averaged
  over levels and pixels, so every level weighs the same.
* instance level: one MLP domain classifier (D -> 1024 -> 1024 -> 1, dropout
  0.5) per RoI level; each RoI goes to the head of the FPN level the box
  pooler maps it to (the FPN rule, Detectron2's ``assign_boxes_to_levels``,
  which is the reference's ``LevelMapper``).
* consistency: L1 between each RoI's instance-level domain probability and
  the image-level probability map of its level pooled over the RoI (the box
  pooler's RoIAlign, then the mean over the bins), as the reference pools
  with the box head's ``Pooler`` and a 7x7 average.

Gradient scaling, the part the numbers are about. Each discriminator learns
from its own loss at ``LOSS_WEIGHT`` (1 in the reference); only the gradient
that leaves the discriminator *into the features* is scaled, by a gradient
scaling layer in front of the head:

* adversarial terms: ``-IMG_DA.GRL_WEIGHT`` (-0.025) and
  ``-INS_DA.GRL_WEIGHT`` (-0.1): reversed, the features learn to confuse;
* consistency: ``+CONSISTENCY.GRL_WEIGHT * GRL_WEIGHT`` of each branch
  (+0.1 x 0.025 image, +0.1 x 0.1 instance): not reversed, the features
  learn to make the two levels agree.

The reference gets those two different feature gradients by running each
discriminator head twice on the same features, once behind each layer
(``img_grl_fea`` / ``img_grl_consist_fea``): forward values are the same,
but one backward through a shared head cannot send two different scales to
its input. This module does the same: the consistency term has its own
forward of the heads (and its own dropout draw in the instance heads).

Domain label as the reference: source = 1, target = 0. Losses are averaged
per domain and then over the two domains (the reference averages over one
source and one target image of equal size, which is the same mean). The
terms run on the normal source and target forward only, never on masked
images.

Where this differs from the reference code, and why:

* The reference's instance head returns inside its loop over levels (an
  indentation slip), so only RoIs mapped to the finest level reach a
  discriminator; the others get a constant logit 0 (BCE log 2, no gradient,
  probability 0.5 in the consistency term). Every level's RoIs reach their
  head here, as SA-DA describes; ``UDA.INS_DA.FINEST_LEVEL_ONLY True``
  reproduces the reference code exactly.
* RoIs: the reference draws 256 random RPN proposals per image of either
  domain (a second sampling with every label set to background). Here the
  source RoIs are the detector's own sampled RoIs (their box features are
  already computed) and the target RoIs the top ``TARGET_ROIS_PER_IMAGE``
  RPN proposals (see ``DomainAdaptiveRCNN``).
"""
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling.poolers import ROIPooler, assign_boxes_to_levels
from detectron2.structures import Boxes
from torch import nn

from ...modeling.grl import SOURCE_LABEL, TARGET_LABEL, GradientReversal, grad_reverse, grad_scale

__all__ = [
    "GradientReversal",
    "grad_reverse",
    "grad_scale",
    "ImageDomainDiscriminator",
    "InstanceDomainDiscriminator",
    "DomainAlignment",
    "SOURCE_LABEL",
    "TARGET_LABEL",
]

class ImageDomainDiscriminator(nn.Module):
    """1x1-conv per-pixel domain classifier: C -> hidden -> 1 logit per pixel.

    The reference's ``DAImgHead`` level: hidden 512, weights N(0, 0.001), biases 0.
    """

    def __init__(self, in_channels: int, hidden: int = 512):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, hidden, kernel_size=1)
        self.conv2 = nn.Conv2d(hidden, 1, kernel_size=1)
        for layer in (self.conv1, self.conv2):
            nn.init.normal_(layer.weight, std=0.001)
            nn.init.constant_(layer.bias, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(F.relu(self.conv1(x)))


class InstanceDomainDiscriminator(nn.Module):
    """Three-layer MLP domain classifier on RoI features: D -> hidden -> hidden -> 1.

    The reference's ``DAInsHead`` level: hidden 1024, dropout 0.5 after both
    hidden layers, every weight N(0, 0.01), biases 0.
    """

    def __init__(self, in_dim: int, hidden: int = 1024):
        super().__init__()
        self.fc1 = nn.Linear(in_dim, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.fc3 = nn.Linear(hidden, 1)
        for layer in (self.fc1, self.fc2, self.fc3):
            nn.init.normal_(layer.weight, std=0.01)
            nn.init.constant_(layer.bias, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.dropout(F.relu(self.fc1(x)), p=0.5, training=self.training)
        x = F.dropout(F.relu(self.fc2(x)), p=0.5, training=self.training)
        return self.fc3(x)


class DomainAlignment(nn.Module):
    """The three SADA losses from the features of a source and a target batch."""

    @configurable
    def __init__(
        self,
        *,
        img_in_channels: Dict[str, int],
        roi_in_features: List[str],
        roi_pooler: ROIPooler,
        box_feature_dim: int,
        img_enabled: bool = True,
        img_weight: float = 1.0,
        img_grl: float = 0.025,
        img_hidden: int = 512,
        ins_enabled: bool = True,
        ins_weight: float = 1.0,
        ins_grl: float = 0.1,
        ins_hidden: int = 1024,
        ins_finest_level_only: bool = False,
        cst_enabled: bool = True,
        cst_weight: float = 1.0,
        cst_grl: float = 0.1,
    ):
        """
        Args:
            img_in_channels: channels of each feature map with an image-level head,
                finest first.
            roi_in_features: the feature maps the RoI heads pool from, finest first;
                one instance head per map, and the maps the consistency term pools.
            roi_pooler: a pooler over ``roi_in_features`` (the box head's settings);
                used on the 1-channel probability maps and to map RoIs to levels.
            box_feature_dim: width of the box head's output.
            img_weight / ins_weight / cst_weight: loss weights, i.e. what scales each
                discriminator's own learning (1 in the reference).
            img_grl / ins_grl: positive numbers; the features receive
                ``-grl`` times the discriminator's input gradient.
            cst_grl: the consistency term's features receive ``+cst_grl * grl``
                of each branch times its input gradient.
            ins_finest_level_only: reproduce the reference code's instance head,
                which scores only RoIs of the finest level (see the module docstring).
        """
        super().__init__()
        self.img_in_features = list(img_in_channels)
        self.roi_in_features = list(roi_in_features)
        self.roi_pooler = roi_pooler
        self.img_enabled, self.img_weight, self.img_grl = img_enabled, img_weight, img_grl
        self.ins_enabled, self.ins_weight, self.ins_grl = ins_enabled, ins_weight, ins_grl
        self.ins_finest_level_only = ins_finest_level_only
        self.cst_enabled = cst_enabled and img_enabled and ins_enabled
        self.cst_weight, self.cst_grl = cst_weight, cst_grl
        if self.cst_enabled and not set(self.roi_in_features) <= set(self.img_in_features):
            raise ValueError(
                f"UDA.CONSISTENCY pools the image-level maps of the RoI levels {self.roi_in_features}, "
                f"but UDA.IMG_DA.IN_FEATURES is {self.img_in_features}"
            )
        if img_enabled:
            self.img_heads = nn.ModuleDict(
                {f: ImageDomainDiscriminator(c, hidden=img_hidden) for f, c in img_in_channels.items()}
            )
        if ins_enabled:
            self.ins_heads = nn.ModuleDict(
                {f: InstanceDomainDiscriminator(box_feature_dim, hidden=ins_hidden) for f in self.roi_in_features}
            )

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec], box_feature_dim: int):
        by_stride = lambda names: sorted(names, key=lambda f: input_shape[f].stride)  # noqa: E731
        img_features = by_stride(cfg.UDA.IMG_DA.IN_FEATURES or input_shape.keys())
        missing = [f for f in img_features if f not in input_shape]
        if missing:
            raise ValueError(f"UDA.IMG_DA.IN_FEATURES {missing} are not backbone outputs {list(input_shape)}")
        roi_features = by_stride(cfg.MODEL.ROI_HEADS.IN_FEATURES)
        box_head = cfg.MODEL.ROI_BOX_HEAD
        pooler = ROIPooler(
            output_size=box_head.POOLER_RESOLUTION,
            scales=tuple(1.0 / input_shape[f].stride for f in roi_features),
            sampling_ratio=box_head.POOLER_SAMPLING_RATIO,
            pooler_type=box_head.POOLER_TYPE,
        )
        return {
            "img_in_channels": {f: input_shape[f].channels for f in img_features},
            "roi_in_features": roi_features,
            "roi_pooler": pooler,
            "box_feature_dim": box_feature_dim,
            "img_enabled": cfg.UDA.IMG_DA.ENABLED,
            "img_weight": cfg.UDA.IMG_DA.LOSS_WEIGHT,
            "img_grl": cfg.UDA.IMG_DA.GRL_WEIGHT,
            "img_hidden": cfg.UDA.IMG_DA.HIDDEN_DIM,
            "ins_enabled": cfg.UDA.INS_DA.ENABLED,
            "ins_weight": cfg.UDA.INS_DA.LOSS_WEIGHT,
            "ins_grl": cfg.UDA.INS_DA.GRL_WEIGHT,
            "ins_hidden": cfg.UDA.INS_DA.HIDDEN_DIM,
            "ins_finest_level_only": cfg.UDA.INS_DA.FINEST_LEVEL_ONLY,
            "cst_enabled": cfg.UDA.CONSISTENCY.ENABLED,
            "cst_weight": cfg.UDA.CONSISTENCY.LOSS_WEIGHT,
            "cst_grl": cfg.UDA.CONSISTENCY.GRL_WEIGHT,
        }

    # ------------------------------------------------------------------ pieces
    def image_logits(
        self, features: Dict[str, torch.Tensor], grad_weight: float, levels: Optional[Sequence[str]] = None
    ) -> List[torch.Tensor]:
        """Per-level logit maps (N, 1, H_l, W_l); the features' gradient is scaled by ``grad_weight``."""
        levels = self.img_in_features if levels is None else levels
        return [self.img_heads[f](grad_scale(features[f], grad_weight)) for f in levels]

    @staticmethod
    def image_bce(logits: List[torch.Tensor], label: float) -> torch.Tensor:
        """The reference's image-level loss: each level's logits upsampled to the finest, BCE averaged."""
        size = logits[0].shape[-2:]
        up = [x if x.shape[-2:] == size else F.interpolate(x, size=size, mode="bilinear", align_corners=True) for x in logits]
        stacked = torch.stack(up)
        return F.binary_cross_entropy_with_logits(stacked, torch.full_like(stacked, label))

    def roi_levels(self, rois: List[Boxes]) -> torch.Tensor:
        """Index into ``roi_in_features`` of every RoI, as the box pooler assigns it."""
        p = self.roi_pooler
        if len(self.roi_in_features) == 1:
            return torch.zeros(sum(len(b) for b in rois), dtype=torch.int64, device=rois[0].device)
        return assign_boxes_to_levels(rois, p.min_level, p.max_level, p.canonical_box_size, p.canonical_level)

    def instance_logits(self, box_features: torch.Tensor, levels: torch.Tensor, grad_weight: float) -> torch.Tensor:
        """One logit per RoI, (R,), from its level's head; the features' gradient scaled by ``grad_weight``."""
        x = grad_scale(box_features, grad_weight)
        out = x.new_zeros(x.shape[0])
        for level, f in enumerate(self.roi_in_features):
            idx = torch.nonzero(levels == level).squeeze(1)
            if self.ins_finest_level_only and level > 0:
                idx = idx[:0]  # the reference code scores none of these: logit 0
            # Every head runs, on no rows if no RoI maps to its level, so that each
            # of its parameters gets a (zero) gradient every step, as
            # DistributedDataParallel requires of a model without unused parameters.
            out = out.index_copy(0, idx, self.ins_heads[f](x[idx]).squeeze(1))
        return out

    def pooled_image_probs(self, prob_maps: List[torch.Tensor], rois: List[Boxes]) -> torch.Tensor:
        """Each RoI's mean image-level probability over its box, on its level's map: (R,)."""
        return self.roi_pooler(prob_maps, rois).mean(dim=(1, 2, 3))

    # ----------------------------------------------------------------- forward
    def forward(
        self,
        features: Dict[str, Dict[str, torch.Tensor]],
        box_features: Dict[str, torch.Tensor],
        rois: Dict[str, List[Boxes]],
    ) -> Dict[str, torch.Tensor]:
        """
        Args:
            features: {"source": backbone features, "target": backbone features}.
            box_features: {"source": (R_s, D), "target": (R_t, D)} box-head outputs.
            rois: {"source": [Boxes per image], "target": [...]}, the boxes of
                ``box_features`` in the same order, in network-input coordinates.
        Returns:
            ``loss_da_img``, ``loss_da_ins``, ``loss_da_cst`` (those switched on), weighted.
        """
        img_loss, ins_loss, cst_loss = [], [], []
        for domain, label in (("source", SOURCE_LABEL), ("target", TARGET_LABEL)):
            feats, x = features[domain], box_features[domain]
            if self.img_enabled:
                img_loss.append(self.image_bce(self.image_logits(feats, -self.img_grl), label))
            if not self.ins_enabled or x.numel() == 0:
                continue
            levels = self.roi_levels(rois[domain])
            logits = self.instance_logits(x, levels, -self.ins_grl)
            ins_loss.append(F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, label)))
            if self.cst_enabled:
                img_p = [p.sigmoid() for p in self.image_logits(feats, self.cst_grl * self.img_grl, self.roi_in_features)]
                ins_p = self.instance_logits(x, levels, self.cst_grl * self.ins_grl).sigmoid()
                cst_loss.append(F.l1_loss(self.pooled_image_probs(img_p, rois[domain]), ins_p))
        losses: Dict[str, torch.Tensor] = {}
        if img_loss:
            losses["loss_da_img"] = torch.stack(img_loss).mean() * self.img_weight
        if ins_loss:
            losses["loss_da_ins"] = torch.stack(ins_loss).mean() * self.ins_weight
        if cst_loss:
            losses["loss_da_cst"] = torch.stack(cst_loss).mean() * self.cst_weight
        return losses
