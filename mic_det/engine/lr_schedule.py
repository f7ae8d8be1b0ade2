"""A learning-rate schedule that starts over at given iterations (``SOLVER.RESTART_ITERS``).

A burn-in config trains the source model and then adapts it in one run
(``MIC.BURN_IN_ITERS``, ``UDA.START_ITER``). Under one step schedule the
adaptation phase inherits the source phase's decayed tail and fine-tunes at a
tenth of the lr, where the reference adapts at its full lr: the student then
barely moves towards its pseudo-labels. With ``SOLVER.RESTART_ITERS: (1000,)``
the schedule restarts at step 1000 (warm-up again, then ``BASE_LR``), and each
``SOLVER.STEPS`` entry decays the phase it falls in. Each phase is Detectron2's
own scheduler (``LR_SCHEDULER_NAME``, warm-up, steps) built for that phase's
length; fvcore's ``CompositeParamScheduler`` joins them.
"""
import logging
from typing import List

import torch
from detectron2.config import CfgNode
from detectron2.solver import LRMultiplier
from detectron2.solver import build_lr_scheduler as build_d2_lr_scheduler
from fvcore.common.param_scheduler import CompositeParamScheduler

__all__ = ["build_lr_scheduler", "schedule_phases"]

logger = logging.getLogger(__name__)


def schedule_phases(cfg: CfgNode) -> List[int]:
    """The iterations where a phase starts: 0 and each restart before ``SOLVER.MAX_ITER``.

    A restart at or after ``MAX_ITER`` is ignored with a warning, as Detectron2
    ignores such a step: ``SOLVER.MAX_ITER 1000`` on a config that restarts at
    1000 trains its source phase alone.
    """
    restarts = list(cfg.SOLVER.RESTART_ITERS)
    max_iter = cfg.SOLVER.MAX_ITER
    if restarts != sorted(set(restarts)) or any(r <= 0 for r in restarts):
        raise ValueError(f"SOLVER.RESTART_ITERS must be increasing positive iterations, got {tuple(restarts)}")
    if any(r >= max_iter for r in restarts):
        logger.warning("SOLVER.RESTART_ITERS %s reach SOLVER.MAX_ITER %d: those restarts are ignored.",
                       tuple(restarts), max_iter)
    return [0] + [r for r in restarts if r < max_iter]


def build_lr_scheduler(cfg: CfgNode, optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler._LRScheduler:
    """Detectron2's scheduler, or one Detectron2 scheduler per phase when ``SOLVER.RESTART_ITERS`` is set."""
    starts = schedule_phases(cfg)
    if len(starts) == 1:
        return build_d2_lr_scheduler(cfg, optimizer)
    ends = starts[1:] + [cfg.SOLVER.MAX_ITER]
    steps = sorted(cfg.SOLVER.STEPS)
    unused = [s for s in steps if s in starts or s >= cfg.SOLVER.MAX_ITER]
    if unused:
        logger.warning("SOLVER.STEPS %s fall on a restart or after SOLVER.MAX_ITER and decay nothing.", unused)
    # Each phase's multiplier comes from Detectron2's builder on a throwaway optimizer:
    # building a scheduler sets its optimizer's lr, which only the joined one may do.
    scratch = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=cfg.SOLVER.BASE_LR)
    phases = []
    for start, end in zip(starts, ends):
        phase = cfg.clone()
        phase.defrost()
        phase.SOLVER.MAX_ITER = end - start
        phase.SOLVER.STEPS = tuple(s - start for s in steps if start < s < end)
        phase.SOLVER.RESTART_ITERS = ()
        phases.append(build_d2_lr_scheduler(phase, scratch)._multiplier)
    max_iter = cfg.SOLVER.MAX_ITER
    multiplier = CompositeParamScheduler(
        phases, lengths=[(e - s) / max_iter for s, e in zip(starts, ends)], interval_scaling=["rescaled"] * len(phases)
    )
    return LRMultiplier(optimizer, multiplier=multiplier, max_iter=max_iter)
