"""Detectron2 components registered by mic_det (importing this module registers them)."""
from .domain_alignment import DomainAlignment, GradientReversal, grad_reverse
from .meta_arch import DomainAdaptiveRCNN
from .roi_heads import MICFastRCNNOutputLayers, MICROIHeads
from .rpn import MICRPN

__all__ = [
    "DomainAdaptiveRCNN",
    "DomainAlignment",
    "GradientReversal",
    "grad_reverse",
    "MICFastRCNNOutputLayers",
    "MICROIHeads",
    "MICRPN",
]
