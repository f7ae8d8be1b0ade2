"""Sharpness-aware minimisation (SAM), the optimizer step of SDAT, as functions on a parameter list.

Why it is here: MIC's classification results are "MIC on SDAT" (Rangwani et al.,
ICML 2022, "A Closer Look at Smoothness in Domain Adversarial Training"), i.e.
CDAN + MCC whose task loss is minimised with SAM (Foret et al., ICLR 2021):
a flat minimum of the task loss makes the adversarial game more stable. SAM is
an optimizer *step*, not a loss, so it lives in the engine and serves every task.

One SAM step, as :class:`~mic_det.engine.MICStep` runs it::

    g   = grad of the first-pass loss at w            (MICStep._sam_first_pass)
    e_w = rho * g / ||g||_2                           (sam_perturb; one norm over all
          adaptive (ASAM): rho * w^2 * g / || |w| g ||_2    parameters' gradients together)
    w  <- w + e_w
    g'  = grad of the step's full loss at w + e_w     (the normal forward / backward)
    w  <- w                                           (sam_restore: the saved copy, exactly)
    base optimizer step with g'

Neither torch 2.3 nor any installed package has SAM, so the maths is written
out here, following davda54/sam (which SDAT and MIC vendor as
``common/utils/sam.py``). One deliberate difference: the reference goes back
with ``w <- (w + e_w) - e_w``; :func:`sam_restore` copies the saved weights back,
which is exact in floating point and costs the same memory (one tensor per parameter).
"""
import math
from dataclasses import dataclass, field
from typing import Iterable, List

import torch
import torch.distributed as dist

__all__ = ["SAMPerturbation", "all_reduce_gradients", "sam_grad_norm", "sam_perturb", "sam_restore"]

# As the reference: rho / (||g|| + eps), so a zero gradient perturbs nothing instead of dividing by 0.
_EPS = 1e-12


@dataclass
class SAMPerturbation:
    """What :func:`sam_perturb` did, for :func:`sam_restore` to undo.

    ``params``/``saved``: the perturbed parameters and their weights before the
    perturbation. ``grad_norm``: the norm the perturbation was divided by (for
    logging). ``skipped``: the norm was not finite (e.g. an fp16 overflow under
    AMP), so nothing was perturbed: the step is a plain step at w.
    """

    params: List[torch.Tensor] = field(default_factory=list)
    saved: List[torch.Tensor] = field(default_factory=list)
    grad_norm: float = 0.0
    skipped: bool = False


def sam_grad_norm(params: Iterable[torch.Tensor], adaptive: bool = False) -> torch.Tensor:
    """||g||_2 over all parameters with a gradient together (adaptive: || |w| * g ||_2)."""
    norms = [((p.abs() if adaptive else 1.0) * p.grad).norm(p=2).double() for p in params if p.grad is not None]
    if not norms:
        return torch.zeros(())
    device = norms[0].device
    return torch.stack([n.to(device) for n in norms]).norm(p=2)


@torch.no_grad()
def sam_perturb(params: Iterable[torch.Tensor], rho: float, adaptive: bool = False) -> SAMPerturbation:
    """SAM's first step: w <- w + e_w for every parameter with a gradient; returns what to restore.

    e_w = rho * g / ||g||_2 (adaptive: rho * w^2 * g / || |w| g ||_2), the norm
    taken over all these parameters' gradients together. Parameters without a
    gradient (frozen, or not reached by the first-pass loss, e.g. a domain
    discriminator) are neither moved nor saved. The direction is invariant to
    a common scale of the gradients, so AMP's loss-scaled gradients give the
    same e_w as the unscaled ones.
    """
    if rho < 0:
        raise ValueError(f"SAM's rho must be >= 0, got {rho}")
    unique = {id(p): p for p in params if p.grad is not None}  # a parameter listed twice moves once
    params = list(unique.values())
    if not params:
        return SAMPerturbation()
    norm = float(sam_grad_norm(params, adaptive))
    if not math.isfinite(norm):
        return SAMPerturbation(grad_norm=norm, skipped=True)
    scale = rho / (norm + _EPS)
    saved = []
    for p in params:
        saved.append(p.detach().clone())
        e_w = (p * p if adaptive else 1.0) * p.grad * scale
        p.add_(e_w.to(p.dtype))
    return SAMPerturbation(params, saved, norm)


@torch.no_grad()
def sam_restore(perturbation: SAMPerturbation) -> None:
    """SAM's second step, first half: every perturbed parameter back to its saved weights, bit for bit.

    The base optimizer then steps from w with the gradients taken at w + e_w.
    """
    for p, w in zip(perturbation.params, perturbation.saved):
        p.copy_(w)
    perturbation.params, perturbation.saved = [], []


@torch.no_grad()
def all_reduce_gradients(params: List[torch.Tensor]) -> None:
    """Average the gradients of ``params`` over all processes, in one all-reduce.

    Why: under DistributedDataParallel the first SAM pass runs under
    ``no_sync()``, because a source-only forward leaves some parameters (the
    domain discriminators) without a gradient, which DDP without
    ``find_unused_parameters`` rejects at the next forward. Averaging here then
    gives every rank the gradient of the global batch, hence the same e_w.
    A parameter without a gradient on some rank counts as zero there; it gets a
    gradient if any rank has one (one flag per parameter travels with the gradients).
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1 or not params:
        return
    device = params[0].device
    dtype = torch.float64 if any(p.dtype == torch.float64 for p in params) else torch.float32
    flat = [(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).to(device, dtype) for p in params]
    flags = torch.tensor([float(p.grad is not None) for p in params], device=device, dtype=dtype)
    buffer = torch.cat(flat + [flags])
    dist.all_reduce(buffer)
    buffer /= dist.get_world_size()
    offset = 0
    for p in params:
        n = p.numel()
        grad = buffer[offset:offset + n].view_as(p).to(p.dtype)
        offset += n
        p.grad = grad.to(p.device).clone() if p.grad is None else p.grad.copy_(grad)
    keep = buffer[offset:] > 0
    for p, has_grad in zip(params, keep.tolist()):
        if not has_grad:
            p.grad = None
