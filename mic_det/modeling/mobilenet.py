"""torchvision's MobileNetV2 as a Detectron2 backbone, with its ImageNet weights.

MIC fine-tunes ImageNet-pretrained networks: its teacher is useful from the
first step only because the backbone already sees. MobileNetV2's ImageNet file
is the one pretrained backbone that installs from the package index here
(:mod:`mic_det.modeling.weights`), and it is small enough to train on a CPU.

The network is torchvision's own (``torchvision.models.mobilenet_v2``), cut into
Detectron2-named stages so any Detectron2 head reads it unchanged:

======  ======  ========  ===========================  =====================
name    stride  channels  torchvision modules          feeds
======  ======  ========  ===========================  =====================
stem    2       16        ``features[0:2]``            (frozen with FREEZE_AT >= 1)
res2    4       24        ``features[2:4]``            FPN, DeepLabV3+ projection
res3    8       32        ``features[4:7]``            FPN
res4    16      96        ``features[7:14]``           FPN
res5    32      1280      ``features[14:19]``          FPN, ASPP, global pooling
======  ======  ========  ===========================  =====================

``res5`` ends with the 1x1 conv to 1280 channels that ImageNet's classifier
pools, as torchvision's own MobileNet detection and DeepLab models do.

BatchNorm follows ``MODEL.MOBILENET.NORM``: ``"FrozenBN"`` (Detectron2's
``FrozenBatchNorm2d``: ImageNet statistics and affine kept fixed) for the
1-2 images per step of detection and segmentation, where batch statistics are
noise; ``"BN"`` trains them (classification's 16+16 images per step);
``"SyncBN"`` for multi-GPU. ``MODEL.BACKBONE.FREEZE_AT`` freezes the stem (1)
and the stages after it (2 = + res2, ...), as for Detectron2's ResNets.
"""
import logging
from typing import Dict, List, Sequence

import torch
from detectron2.config import CfgNode
from detectron2.layers import FrozenBatchNorm2d, ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, Backbone
from detectron2.modeling.backbone.fpn import FPN, LastLevelMaxPool
from torch import nn
from torchvision.models import mobilenet_v2

from .weights import imagenet_mobilenet_v2_state_dict

__all__ = [
    "MobileNetV2Backbone",
    "build_mobilenet_v2_backbone",
    "build_mobilenet_v2_fpn_backbone",
    "IMAGENET_RGB_MEAN",
    "IMAGENET_RGB_STD",
]

logger = logging.getLogger(__name__)

#: torchvision's ImageNet normalisation on Detectron2's 0..255 scale, RGB order.
IMAGENET_RGB_MEAN = (123.675, 116.28, 103.53)
IMAGENET_RGB_STD = (58.395, 57.12, 57.375)

# (name, first and last+1 index in torchvision's ``features``, stride, channels)
_STAGES = (
    ("stem", 0, 2, 2, 16),
    ("res2", 2, 4, 4, 24),
    ("res3", 4, 7, 8, 32),
    ("res4", 7, 14, 16, 96),
    ("res5", 14, 19, 32, 1280),
)
_NORMS = ("FrozenBN", "BN", "SyncBN")


class MobileNetV2Backbone(Backbone):
    """MobileNetV2 (width 1.0) returning the Detectron2-named stages in ``out_features``.

    Args:
        out_features: stage names to return, from "stem", "res2" .. "res5".
        norm: "FrozenBN", "BN" or "SyncBN" (see the module docstring).
        freeze_at: 0 trains everything; k >= 1 freezes the stem and the k - 1 stages after it.
        pretrained: load torchvision's ImageNet weights (``IMAGENET1K_V1``).
    """

    def __init__(self, out_features: Sequence[str], norm: str = "FrozenBN", freeze_at: int = 0,
                 pretrained: bool = True):
        super().__init__()
        names = [s[0] for s in _STAGES]
        unknown = [f for f in out_features if f not in names]
        if not out_features or unknown:
            raise ValueError(f"MODEL.MOBILENET.OUT_FEATURES must name stages of {names}, got {list(out_features)}")
        if norm not in _NORMS:
            raise ValueError(f"MODEL.MOBILENET.NORM must be one of {_NORMS}, got {norm!r}")
        if not 0 <= int(freeze_at) <= len(_STAGES):
            raise ValueError(f"MODEL.BACKBONE.FREEZE_AT must be in [0, {len(_STAGES)}] for MobileNetV2, got {freeze_at}")
        net = mobilenet_v2(weights=None)
        if pretrained:
            net.load_state_dict(imagenet_mobilenet_v2_state_dict())
        last = max(names.index(f) for f in out_features)
        self.stage_names: List[str] = []
        self._out_feature_strides: Dict[str, int] = {}
        self._out_feature_channels: Dict[str, int] = {}
        for name, begin, end, stride, channels in _STAGES[: last + 1]:
            self.add_module(name, nn.Sequential(*net.features[begin:end]))
            self.stage_names.append(name)
            self._out_feature_strides[name] = stride
            self._out_feature_channels[name] = channels
        self._out_features = [n for n in self.stage_names if n in out_features]
        if norm == "FrozenBN":
            FrozenBatchNorm2d.convert_frozen_batchnorm(self)
        elif norm == "SyncBN":
            nn.SyncBatchNorm.convert_sync_batchnorm(self)
        for name in self.stage_names[: int(freeze_at)]:
            stage = getattr(self, name)
            for p in stage.parameters():
                p.requires_grad_(False)
            FrozenBatchNorm2d.convert_frozen_batchnorm(stage)

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        if x.dim() != 4:
            raise ValueError(f"MobileNetV2Backbone takes (N, C, H, W) inputs, got shape {tuple(x.shape)}")
        outputs = {}
        for name in self.stage_names:
            x = getattr(self, name)(x)
            if name in self._out_features:
                outputs[name] = x
        return outputs

    def output_shape(self) -> Dict[str, ShapeSpec]:
        return {
            name: ShapeSpec(channels=self._out_feature_channels[name], stride=self._out_feature_strides[name])
            for name in self._out_features
        }


def _check_input_normalisation(cfg: CfgNode) -> None:
    """ImageNet weights see what ImageNet training saw: RGB, torchvision's mean/std. Warn otherwise."""
    expected = (list(IMAGENET_RGB_MEAN), list(IMAGENET_RGB_STD))
    if cfg.INPUT.FORMAT == "BGR":
        expected = (expected[0][::-1], expected[1][::-1])
    if cfg.INPUT.FORMAT not in ("RGB", "BGR") or not all(
        all(abs(a - b) < 1e-3 for a, b in zip(got, want))
        for got, want in ((cfg.MODEL.PIXEL_MEAN, expected[0]), (cfg.MODEL.PIXEL_STD, expected[1]))
    ):
        logger.warning(
            "MobileNetV2's ImageNet weights expect ImageNet normalisation: for INPUT.FORMAT %s, "
            "MODEL.PIXEL_MEAN %s and MODEL.PIXEL_STD %s; this config has %s and %s.",
            cfg.INPUT.FORMAT, expected[0], expected[1], list(cfg.MODEL.PIXEL_MEAN), list(cfg.MODEL.PIXEL_STD),
        )


@BACKBONE_REGISTRY.register()
def build_mobilenet_v2_backbone(cfg: CfgNode, input_shape: ShapeSpec) -> MobileNetV2Backbone:
    """``MODEL.BACKBONE.NAME "build_mobilenet_v2_backbone"``: the stages of ``MODEL.MOBILENET.OUT_FEATURES``."""
    if input_shape.channels != 3:
        raise ValueError(f"MobileNetV2 takes 3-channel images, got {input_shape.channels} (MODEL.PIXEL_MEAN)")
    m = cfg.MODEL.MOBILENET
    if m.PRETRAINED:
        _check_input_normalisation(cfg)
    # A MODEL.WEIGHTS checkpoint (a trained model: predict, export, evaluate) overwrites every
    # backbone weight, so the ImageNet file is neither read nor needed then.
    return MobileNetV2Backbone(m.OUT_FEATURES, norm=m.NORM, freeze_at=cfg.MODEL.BACKBONE.FREEZE_AT,
                               pretrained=m.PRETRAINED and not cfg.MODEL.WEIGHTS)


@BACKBONE_REGISTRY.register()
def build_mobilenet_v2_fpn_backbone(cfg: CfgNode, input_shape: ShapeSpec) -> FPN:
    """``MODEL.BACKBONE.NAME "build_mobilenet_v2_fpn_backbone"``: Detectron2's FPN (``MODEL.FPN.*``)
    over the MobileNetV2 stages named in ``MODEL.FPN.IN_FEATURES``, with a max-pooled P6."""
    bottom_up = build_mobilenet_v2_backbone(cfg, input_shape)
    return FPN(
        bottom_up=bottom_up,
        in_features=cfg.MODEL.FPN.IN_FEATURES,
        out_channels=cfg.MODEL.FPN.OUT_CHANNELS,
        norm=cfg.MODEL.FPN.NORM,
        top_block=LastLevelMaxPool(),
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
    )


def add_mobilenet_config(cfg: CfgNode) -> CfgNode:
    """``MODEL.MOBILENET.*``: the keys of the MobileNetV2 backbones above."""
    cfg.MODEL.MOBILENET = type(cfg)()
    # Stages the backbone returns ("stem", "res2" .. "res5"); the FPN reads MODEL.FPN.IN_FEATURES of them.
    cfg.MODEL.MOBILENET.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    # "FrozenBN" (small batches), "BN" (batches of 16+), "SyncBN" (multi-GPU).
    cfg.MODEL.MOBILENET.NORM = "FrozenBN"
    # torchvision's ImageNet weights (IMAGENET1K_V1); False trains from scratch.
    cfg.MODEL.MOBILENET.PRETRAINED = True
    return cfg
