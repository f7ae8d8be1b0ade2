"""MICClassifier: a Detectron2 backbone + global pooling + bottleneck + linear classifier.

The meta-architecture follows Detectron2's conventions, so the MIC engine,
the checkpointer and ``inference_on_dataset`` use it unchanged:

* input: a list of dicts with ``image`` (C, H, W, pixel space, ``INPUT.FORMAT``)
  and, to train, ``label`` (int) and optionally ``weight`` (the MIC
  pseudo-label's confidence; 1 if absent);
* training: a dict of losses (``loss_cls``; with ``target_inputs`` and
  ``UDA.ENABLED`` also ``loss_cdan`` and ``loss_mcc``);
* inference: per image ``{"scores": class probabilities (C,), "pred_class": int tensor}``.

Source and target go through the backbone as one batch, as in the reference
(BatchNorm then sees both domains in every step).
"""
from typing import Dict, List, Optional

import torch
import torch.nn.functional as F
from detectron2.config import CfgNode, configurable
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.modeling import META_ARCH_REGISTRY, Backbone, build_backbone
from detectron2.structures import ImageList
from detectron2.utils.events import get_event_storage
from torch import nn

from .alignment import CDANDiscriminator, cdan_loss, mcc_loss, warm_grl_coefficient

__all__ = ["MICClassifier", "num_classes_from_config"]


def num_classes_from_config(cfg: CfgNode) -> int:
    """``MODEL.CLASSIFIER.NUM_CLASSES``, or (when 0) the class count of the first ``DATASETS.TRAIN`` set."""
    n = cfg.MODEL.CLASSIFIER.NUM_CLASSES
    if n > 0:
        return n
    if not cfg.DATASETS.TRAIN:
        raise ValueError("MODEL.CLASSIFIER.NUM_CLASSES is 0 (infer) but DATASETS.TRAIN is empty: set it")
    name = cfg.DATASETS.TRAIN[0]
    classes = MetadataCatalog.get(name).get("thing_classes")
    if not classes and name in DatasetCatalog:
        DatasetCatalog.get(name)  # class-folder trees set their classes when loaded
        classes = MetadataCatalog.get(name).get("thing_classes")
    if not classes:
        raise ValueError(
            f"MODEL.CLASSIFIER.NUM_CLASSES is 0 (infer) but dataset '{cfg.DATASETS.TRAIN[0]}' has no "
            "thing_classes in its metadata: set MODEL.CLASSIFIER.NUM_CLASSES"
        )
    return len(classes)


def _current_iter() -> Optional[int]:
    try:
        return get_event_storage().iter
    except AssertionError:  # no EventStorage: not inside a training loop
        return None


@META_ARCH_REGISTRY.register()
class MICClassifier(nn.Module):
    """Image classifier for UDA: backbone -> pooled map -> bottleneck -> logits (+ CDAN/MCC heads)."""

    @configurable
    def __init__(
        self,
        *,
        backbone: Backbone,
        in_feature: str,
        num_classes: int,
        bottleneck_dim: int,
        pixel_mean,
        pixel_std,
        uda_enabled: bool = False,
        cdan_enabled: bool = True,
        cdan_weight: float = 1.0,
        cdan_hidden: int = 1024,
        grl_weight: float = 1.0,
        grl_warm_iters: int = 1000,
        grl_alpha: float = 1.0,
        uda_start_iter: int = 0,
        mcc_enabled: bool = True,
        mcc_weight: float = 1.0,
        mcc_temperature: float = 2.0,
    ):
        super().__init__()
        self.backbone = backbone
        if in_feature not in backbone.output_shape():
            raise ValueError(
                f"MODEL.CLASSIFIER.IN_FEATURE {in_feature!r} is not a backbone output "
                f"({sorted(backbone.output_shape())}; set MODEL.RESNETS.OUT_FEATURES)"
            )
        self.in_feature = in_feature
        channels = backbone.output_shape()[in_feature].channels
        if bottleneck_dim > 0:
            self.bottleneck = nn.Sequential(
                nn.Linear(channels, bottleneck_dim), nn.BatchNorm1d(bottleneck_dim), nn.ReLU(inplace=True)
            )
            feat_dim = bottleneck_dim
        else:
            self.bottleneck = nn.Identity()
            feat_dim = channels
        self.classifier = nn.Linear(feat_dim, num_classes)
        self.num_classes = num_classes
        self.uda_enabled = uda_enabled
        self.cdan_enabled = uda_enabled and cdan_enabled
        self.discriminator = CDANDiscriminator(feat_dim * num_classes, cdan_hidden) if self.cdan_enabled else None
        self.cdan_weight, self.grl_weight, self.grl_warm_iters = cdan_weight, grl_weight, grl_warm_iters
        self.grl_alpha = grl_alpha
        self.uda_start_iter = uda_start_iter
        self.mcc_enabled = uda_enabled and mcc_enabled
        self.mcc_weight, self.mcc_temperature = mcc_weight, mcc_temperature
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)

    @classmethod
    def from_config(cls, cfg: CfgNode) -> dict:
        uda = cfg.UDA
        return {
            "backbone": build_backbone(cfg),
            "in_feature": cfg.MODEL.CLASSIFIER.IN_FEATURE,
            "num_classes": num_classes_from_config(cfg),
            "bottleneck_dim": cfg.MODEL.CLASSIFIER.BOTTLENECK_DIM,
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "uda_enabled": uda.ENABLED,
            "cdan_enabled": uda.CDAN.ENABLED,
            "cdan_weight": uda.CDAN.LOSS_WEIGHT,
            "cdan_hidden": uda.CDAN.HIDDEN_DIM,
            "grl_weight": uda.CDAN.GRL_WEIGHT,
            "grl_warm_iters": uda.CDAN.GRL_WARM_ITERS,
            "grl_alpha": uda.CDAN.GRL_ALPHA,
            "uda_start_iter": uda.START_ITER,
            "mcc_enabled": uda.MCC.ENABLED,
            "mcc_weight": uda.MCC.LOSS_WEIGHT,
            "mcc_temperature": uda.MCC.TEMPERATURE,
        }

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def preprocess_image(self, batched_inputs: List[Dict]) -> ImageList:
        """Normalise and batch the images (what the MIC step masks)."""
        images = [(x["image"].to(self.device).float() - self.pixel_mean) / self.pixel_std for x in batched_inputs]
        return ImageList.from_tensors(images, self.backbone.size_divisibility)

    def features_and_logits(self, images: torch.Tensor):
        """(bottleneck features (N, D), logits (N, C)) of a normalised batch."""
        pooled = self.backbone(images)[self.in_feature].mean(dim=(2, 3))
        features = self.bottleneck(pooled)
        return features, self.classifier(features)

    def forward(self, batched_inputs: List[Dict], target_inputs: Optional[List[Dict]] = None):
        if not self.training:
            return self.inference(batched_inputs)
        align = self.uda_enabled and target_inputs is not None and (self.cdan_enabled or self.mcc_enabled)
        inputs = list(batched_inputs) + (list(target_inputs) if align else [])
        features, logits = self.features_and_logits(self.preprocess_image(inputs).tensor)
        n = len(batched_inputs)
        labels = torch.tensor([int(x["label"]) for x in batched_inputs], device=self.device)
        weights = torch.tensor([float(x.get("weight", 1.0)) for x in batched_inputs], device=self.device)
        losses = {"loss_cls": (F.cross_entropy(logits[:n], labels, reduction="none") * weights).mean()}
        storage_iter = _current_iter()
        if storage_iter is not None and not any("weight" in x for x in batched_inputs):
            # The labelled batch's accuracy (the collapse guard's signal); a masked
            # pseudo-labelled batch (inputs with a "weight") must not overwrite it.
            accuracy = (logits[:n].argmax(dim=1) == labels).float().mean()
            get_event_storage().put_scalar("cls/accuracy", float(accuracy))
        if align:
            if self.cdan_enabled:
                # The warm-up counts from the first aligned step, as the reference's
                # (which aligns from step 0): a run resumed from a source model at
                # UDA.START_ITER must not start at full strength.
                since = None if storage_iter is None else max(storage_iter - self.uda_start_iter, 0)
                coefficient = warm_grl_coefficient(since, self.grl_warm_iters, self.grl_weight, self.grl_alpha)
                losses["loss_cdan"] = self.cdan_weight * cdan_loss(self.discriminator, features, logits, n, coefficient)
            if self.mcc_enabled:
                losses["loss_mcc"] = self.mcc_weight * mcc_loss(logits[n:], self.mcc_temperature)
        return losses

    def inference(self, batched_inputs: List[Dict]) -> List[Dict[str, torch.Tensor]]:
        """Per image ``{"scores": softmax (C,), "pred_class": argmax}``."""
        _, logits = self.features_and_logits(self.preprocess_image(batched_inputs).tensor)
        probs = logits.softmax(dim=1)
        return [{"scores": p, "pred_class": p.argmax()} for p in probs]
