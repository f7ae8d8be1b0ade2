"""CDAN + MCC: the base domain alignment that MIC builds on for classification.

* CDAN (Long et al., NeurIPS 2018): a domain discriminator sees, per image, the
  outer product of the bottleneck features f and the class probabilities g
  (``g f^T``, flattened), so it can align the feature distributions *per
  class* rather than as one blob. The probabilities are detached (they only
  condition); the features get the reversed gradient of the discriminator's
  BCE through a gradient-reversal layer whose coefficient warms up from 0
  (early predictions are noise, so conditioning on them would align the wrong
  modes). Domain labels: source 1, target 0.
* MCC (Jin et al., ECCV 2020): on the target batch, the class-confusion matrix
  of temperature-scaled probabilities, images weighted by their certainty
  (1 + exp(-entropy)), rows normalised; the loss is its off-diagonal mass / C.
  Minimising it makes target predictions confident and keeps classes apart
  without any label.

The gradient-reversal layer is the one detection's SADA uses (:func:`mic_det.modeling.grl.grad_reverse`).
"""
import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..modeling.grl import SOURCE_LABEL, TARGET_LABEL, grad_reverse

__all__ = ["mcc_loss", "cdan_input", "cdan_loss", "warm_grl_coefficient", "CDANDiscriminator"]


def mcc_loss(logits: torch.Tensor, temperature: float = 2.0) -> torch.Tensor:
    """Minimum Class Confusion of a batch of target ``logits`` (N, C)."""
    n, c = logits.shape
    probs = F.softmax(logits / temperature, dim=1)
    entropy = -(probs * torch.log(probs + 1e-5)).sum(dim=1).detach()
    weight = 1.0 + torch.exp(-entropy)
    weight = (n * weight / weight.sum()).unsqueeze(1)  # certainty weights, mean 1
    confusion = (probs * weight).t() @ probs  # (C, C), symmetric
    confusion = confusion / confusion.sum(dim=1, keepdim=True)
    return (confusion.sum() - confusion.trace()) / c


def cdan_input(features: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
    """The discriminator's input: per image the flattened outer product ``probs ⊗ features``, (N, C*D)."""
    return torch.bmm(probs.unsqueeze(2), features.unsqueeze(1)).flatten(1)


def warm_grl_coefficient(iteration: Optional[int], warm_iters: int, weight: float = 1.0, alpha: float = 1.0) -> float:
    """``weight * (2 / (1 + exp(-alpha t / warm_iters)) - 1)`` at iteration ``t``.

    tllib's ``WarmStartGradientReverseLayer(alpha, lo=0, hi=weight, max_iters=warm_iters)``,
    the reference CDAN's (alpha 1, max_iters 1000): 0 at t = 0, 0.245 x weight at
    warm_iters / 2, 0.462 at warm_iters, 0.905 at 3 warm_iters. ``iteration`` None (no
    training loop, e.g. a unit test) or ``warm_iters`` <= 0 gives ``weight``.
    """
    if iteration is None or warm_iters <= 0:
        return weight
    return weight * (2.0 / (1.0 + math.exp(-alpha * iteration / warm_iters)) - 1.0)


class CDANDiscriminator(nn.Module):
    """MLP domain discriminator on CDAN's conditioned features: in -> H -> H -> 1 logit.

    BatchNorm + ReLU after both hidden layers, as the reference's ``DomainDiscriminator``.
    """

    def __init__(self, in_dim: int, hidden: int = 1024):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(in_dim, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
            nn.Linear(hidden, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
            nn.Linear(hidden, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(1)


def cdan_loss(
    discriminator: nn.Module,
    features: torch.Tensor,
    logits: torch.Tensor,
    num_source: int,
    grl_coefficient: float,
) -> torch.Tensor:
    """The discriminator's BCE on a batch whose first ``num_source`` rows are source images.

    The features reach the discriminator through the gradient-reversal layer
    (they learn to confuse it), the discriminator itself learns to separate.
    """
    probs = F.softmax(logits, dim=1).detach()
    h = grad_reverse(cdan_input(features, probs), grl_coefficient)
    domain = discriminator(h)
    labels = torch.full_like(domain, TARGET_LABEL)
    labels[:num_source] = SOURCE_LABEL
    return F.binary_cross_entropy_with_logits(domain, labels)
