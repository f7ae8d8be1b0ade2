"""Adversarial feature alignment of SADA / DA-Faster R-CNN, the base UDA under MIC.

Three terms, each a switch in ``UDA.*``:

* image level: a per-pixel domain classifier on every backbone feature map
  (one head per FPN level, as in scale-aware DA), behind gradient reversal;
* instance level: a domain classifier on RoI box-head features, behind
  gradient reversal;
* consistency: each RoI's domain probability should agree with the mean
  image-level probability of its image.

Domain label: source = 0, target = 1. They run on the normal source and
target forward only, never on masked images.
"""
from typing import Dict, List

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from torch import nn

__all__ = ["GradientReversal", "grad_reverse", "ImageDomainDiscriminator", "InstanceDomainDiscriminator", "DomainAlignment"]


class _GradReverse(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight: float):
        ctx.weight = weight
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad.neg() * ctx.weight, None


def grad_reverse(x: torch.Tensor, weight: float = 1.0) -> torch.Tensor:
    """Identity forward; multiplies the gradient by ``-weight`` backward.

    The discriminator minimises its loss while the features upstream receive the
    opposite gradient, i.e. learn to make the domains indistinguishable.
    """
    return _GradReverse.apply(x, weight)


class GradientReversal(nn.Module):
    def __init__(self, weight: float = 1.0):
        super().__init__()
        self.weight = weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return grad_reverse(x, self.weight)

    def extra_repr(self) -> str:
        return f"weight={self.weight}"


class ImageDomainDiscriminator(nn.Module):
    """1x1-conv per-pixel domain classifier (DA-Faster's image-level head)."""

    def __init__(self, in_channels: int, hidden: int = 256):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, hidden, kernel_size=1)
        self.conv2 = nn.Conv2d(hidden, 1, kernel_size=1)
        for layer in (self.conv1, self.conv2):
            nn.init.normal_(layer.weight, std=0.001)
            nn.init.constant_(layer.bias, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(F.relu(self.conv1(x)))


class InstanceDomainDiscriminator(nn.Module):
    """Three-layer MLP domain classifier on RoI features (DA-Faster's instance head)."""

    def __init__(self, in_dim: int, hidden: int = 256):
        super().__init__()
        self.fc1 = nn.Linear(in_dim, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.fc3 = nn.Linear(hidden, 1)
        for layer, std in ((self.fc1, 0.01), (self.fc2, 0.01), (self.fc3, 0.05)):
            nn.init.normal_(layer.weight, std=std)
            nn.init.constant_(layer.bias, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.dropout(F.relu(self.fc1(x)), p=0.5, training=self.training)
        x = F.dropout(F.relu(self.fc2(x)), p=0.5, training=self.training)
        return self.fc3(x)


class DomainAlignment(nn.Module):
    """All three alignment losses from features of a source and a target batch."""

    @configurable
    def __init__(
        self,
        *,
        in_features: List[str],
        in_channels: int,
        box_feature_dim: int,
        img_enabled: bool,
        img_weight: float,
        img_grl: float,
        ins_enabled: bool,
        ins_weight: float,
        ins_grl: float,
        ins_hidden: int,
        cst_enabled: bool,
        cst_weight: float,
    ):
        super().__init__()
        self.in_features = in_features
        self.img_enabled, self.img_weight = img_enabled, img_weight
        self.ins_enabled, self.ins_weight = ins_enabled, ins_weight
        self.cst_enabled, self.cst_weight = cst_enabled and img_enabled and ins_enabled, cst_weight
        self.img_grl, self.ins_grl = img_grl, ins_grl
        if img_enabled:
            self.img_heads = nn.ModuleDict(
                {f: ImageDomainDiscriminator(in_channels, hidden=max(in_channels, 64)) for f in in_features}
            )
        if ins_enabled:
            self.ins_head = InstanceDomainDiscriminator(box_feature_dim, hidden=ins_hidden)

    @classmethod
    def from_config(cls, cfg, input_shape, box_feature_dim: int):
        in_features = list(cfg.MODEL.ROI_HEADS.IN_FEATURES)
        channels = {input_shape[f].channels for f in in_features}
        if len(channels) != 1:
            raise ValueError(f"UDA.IMG_DA needs equal channels on {in_features}, got {channels}")
        return {
            "in_features": in_features,
            "in_channels": channels.pop(),
            "box_feature_dim": box_feature_dim,
            "img_enabled": cfg.UDA.IMG_DA.ENABLED,
            "img_weight": cfg.UDA.IMG_DA.LOSS_WEIGHT,
            "img_grl": cfg.UDA.IMG_DA.GRL_WEIGHT,
            "ins_enabled": cfg.UDA.INS_DA.ENABLED,
            "ins_weight": cfg.UDA.INS_DA.LOSS_WEIGHT,
            "ins_grl": cfg.UDA.INS_DA.GRL_WEIGHT,
            "ins_hidden": cfg.UDA.INS_DA.HIDDEN_DIM,
            "cst_enabled": cfg.UDA.CONSISTENCY.ENABLED,
            "cst_weight": cfg.UDA.CONSISTENCY.LOSS_WEIGHT,
        }

    def _image_terms(self, features: Dict[str, torch.Tensor], domain: float):
        """BCE averaged over levels, and each image's mean domain probability."""
        losses, probs = [], []
        for f in self.in_features:
            logits = self.img_heads[f](grad_reverse(features[f], self.img_grl))
            losses.append(F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, domain)))
            probs.append(logits.sigmoid().flatten(1).mean(dim=1))
        return torch.stack(losses).mean(), torch.stack(probs, dim=1).mean(dim=1)

    def _instance_terms(self, box_features: torch.Tensor, domain: float):
        logits = self.ins_head(grad_reverse(box_features, self.ins_grl)).squeeze(1)
        loss = F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, domain))
        return loss, logits.sigmoid()

    def forward(
        self,
        features: Dict[str, Dict[str, torch.Tensor]],
        box_features: Dict[str, torch.Tensor],
        rois_per_image: Dict[str, List[int]],
    ) -> Dict[str, torch.Tensor]:
        """
        Args:
            features: {"source": backbone features, "target": backbone features}.
            box_features: {"source": (R_s, D), "target": (R_t, D)} box-head outputs.
            rois_per_image: RoI counts per image of each domain, in box_features order.
        Returns:
            ``loss_da_img``, ``loss_da_ins``, ``loss_da_cst`` (those switched on), weighted.
        """
        losses: Dict[str, torch.Tensor] = {}
        img_loss, ins_loss, cst_loss = [], [], []
        for domain_name, label in (("source", 0.0), ("target", 1.0)):
            img_p = ins_p = None
            if self.img_enabled:
                loss, img_p = self._image_terms(features[domain_name], label)
                img_loss.append(loss)
            if self.ins_enabled and box_features[domain_name].numel():
                loss, ins_p = self._instance_terms(box_features[domain_name], label)
                ins_loss.append(loss)
            if self.cst_enabled and img_p is not None and ins_p is not None:
                counts = torch.as_tensor(rois_per_image[domain_name], device=img_p.device)
                per_roi_img_p = img_p.repeat_interleave(counts)
                cst_loss.append(F.mse_loss(ins_p, per_roi_img_p))
        if img_loss:
            losses["loss_da_img"] = torch.stack(img_loss).mean() * self.img_weight
        if ins_loss:
            losses["loss_da_ins"] = torch.stack(ins_loss).mean() * self.ins_weight
        if cst_loss:
            losses["loss_da_cst"] = torch.stack(cst_loss).mean() * self.cst_weight
        return losses
