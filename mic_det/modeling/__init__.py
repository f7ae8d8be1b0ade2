"""Models every task shares: backbones registered in Detectron2's ``BACKBONE_REGISTRY``."""
from .mobilenet import (
    IMAGENET_RGB_MEAN,
    IMAGENET_RGB_STD,
    MobileNetV2Backbone,
    add_mobilenet_config,
    build_mobilenet_v2_backbone,
    build_mobilenet_v2_fpn_backbone,
)
from .weights import imagenet_mobilenet_v2_state_dict, mobilenet_v2_weights_file

__all__ = [
    "IMAGENET_RGB_MEAN",
    "IMAGENET_RGB_STD",
    "MobileNetV2Backbone",
    "add_mobilenet_config",
    "build_mobilenet_v2_backbone",
    "build_mobilenet_v2_fpn_backbone",
    "imagenet_mobilenet_v2_state_dict",
    "mobilenet_v2_weights_file",
]
