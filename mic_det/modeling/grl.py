"""Gradient scaling and reversal, and the domain labels of adversarial alignment.

Detection's SADA discriminators (:mod:`mic_det.detection.modeling.domain_alignment`)
and classification's CDAN (:mod:`mic_det.classification.alignment`) put a
discriminator behind :func:`grad_reverse`: it minimises its loss while the
features upstream receive the opposite gradient, i.e. learn to make the domains
indistinguishable.
"""
import torch
from torch import nn

__all__ = ["GradientReversal", "SOURCE_LABEL", "TARGET_LABEL", "grad_reverse", "grad_scale"]

# The domain labels of every discriminator (the SADA reference's masks are ``is_source``).
SOURCE_LABEL, TARGET_LABEL = 1.0, 0.0


class _GradientScale(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight: float):
        ctx.weight = weight
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad * ctx.weight, None


def grad_scale(x: torch.Tensor, weight: float) -> torch.Tensor:
    """Identity forward; multiplies the gradient by ``weight`` (any sign) backward.

    The SADA reference's ``GradientScalarLayer``: a negative weight is a gradient
    reversal layer, a positive one (the consistency term's) only scales.
    """
    return _GradientScale.apply(x, weight)


def grad_reverse(x: torch.Tensor, weight: float = 1.0) -> torch.Tensor:
    """Identity forward; multiplies the gradient by ``-weight`` backward."""
    return grad_scale(x, -weight)


class GradientReversal(nn.Module):
    """:func:`grad_reverse` as a module."""

    def __init__(self, weight: float = 1.0):
        super().__init__()
        self.weight = weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return grad_reverse(x, self.weight)

    def extra_repr(self) -> str:
        return f"weight={self.weight}"
