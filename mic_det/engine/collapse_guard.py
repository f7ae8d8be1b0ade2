"""The collapse guard: notices when self-training destroys the model, says so, and rolls back.

Self-training feeds the model its own predictions. When the student drifts
faster than its pseudo-labels can follow (a learning rate meant for training
from scratch, a teacher that is too weak, a shift the source model does not
survive), the loop can run away: the teacher starts to see objects everywhere
(tens of boxes per image at scores near 1), the student learns them, and within
a few dozen steps it no longer recognises even the *labelled* source objects.
Measured on a held-out shift: source foreground accuracy 0.94 -> 0.04 within 40
MIC steps at lr 0.02, then a teacher that gives no box at all. Nothing in the
losses shows it: they keep falling.

The guard watches three per-step signals that the MIC step logs
(``guard/*`` in the event storage), over a window of ``MIC.GUARD.WINDOW`` steps:

* ``guard/source_accuracy``: the student's accuracy on the *labelled* source
  batch (for detection: the RoI head's foreground classification accuracy).
  A collapse when its window mean falls below ``MIN_ACCURACY_RATIO`` times
  its value when adaptation started;
* ``guard/pseudo_per_image`` against ``guard/source_objects_per_image``: a
  teacher giving more than ``MAX_PSEUDO_RATIO`` times as many pseudo-labels
  per image as the source has labelled objects is hallucinating;
* the pseudo-label count dropping to under a tenth of what it was when
  adaptation started (the teacher died);
* the pseudo-label count rising to more than ``MAX_PSEUDO_GROWTH`` times what
  it was when adaptation started (at least ``MIN_PSEUDO_FOR_DEATH`` per image
  counted as the start, so a near-silent start is not judged by noise): the
  teacher is confirming its own false boxes. Measured on the built-in night
  shift (seed 2): the count rose from ~0.5 to ~2 per image over 400 MIC steps
  while the pseudo-labels' precision against the (never trained on) target
  labels fell from 0.40 to 0.14, and MIC ended 3.4 AP50 under its control;
  on fog (3 seeds) and the other night seeds the count stayed under 3x of
  its start. Slow drift, not a cliff: the source accuracy never fell.

A teacher that never gives any pseudo-label is not a collapse (nothing is
being learnt from it) but a waste of compute: the guard warns every
5 x ``WINDOW`` steps while it lasts, with the teacher's top score and the knobs.

On a collapse, ``ACTION`` decides: ``rollback`` (default) restores student,
teacher and optimizer from the last snapshot taken at least one window before
the collapse was seen, halves the learning rate and goes on (after
``MAX_ROLLBACKS`` it stops); ``stop`` raises; ``warn`` only logs. Snapshots
live in host memory; nothing on disk is touched, so every checkpoint written
before the collapse stays as it was.
"""
import copy
import logging
import math
from collections import deque
from typing import Deque, Dict, List, Optional

import torch
from detectron2.config import CfgNode
from detectron2.engine import HookBase
from detectron2.utils import comm

from ..teacher import unwrap_model

__all__ = ["CollapseGuard", "TrainingCollapsed", "GUARD_ACTIONS"]

logger = logging.getLogger(__name__)

GUARD_ACTIONS = ("rollback", "stop", "warn")
# The teacher counts as dead when its pseudo-labels per image fall under this
# fraction of their value at the start of adaptation (and it gave some then).
DEAD_TEACHER_RATIO = 0.1
# Below this many pseudo-labels per image at the start, "the teacher died" is not judged.
MIN_PSEUDO_FOR_DEATH = 0.5


class TrainingCollapsed(RuntimeError):
    """Raised when the guard stops a run (``ACTION stop``, or too many rollbacks)."""


def _to_host(state):
    """A deep copy of a (nested) state dict with every tensor on the CPU."""
    if isinstance(state, torch.Tensor):
        return state.detach().to("cpu", copy=True)
    if isinstance(state, dict):
        return type(state)((k, _to_host(v)) for k, v in state.items())
    if isinstance(state, (list, tuple)):
        return type(state)(_to_host(v) for v in state)
    return copy.deepcopy(state)


def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values) if values else float("nan")


class CollapseGuard(HookBase):
    """Detects a collapse of the adaptation phase; warns, rolls back or stops (``MIC.GUARD.*``).

    Register it after Detectron2's ``LRScheduler`` hook: a rollback lowers the
    scheduler's base learning rates, which the next scheduler step then uses.
    """

    def __init__(
        self,
        *,
        start_iter: int,
        window: int = 20,
        min_accuracy_ratio: float = 0.5,
        max_pseudo_ratio: float = 3.0,
        max_pseudo_growth: float = 3.5,
        action: str = "rollback",
        max_rollbacks: int = 3,
        lr_factor: float = 0.5,
        knobs: str = "",
    ):
        if action not in GUARD_ACTIONS:
            raise ValueError(f"MIC.GUARD.ACTION must be one of {GUARD_ACTIONS}, got {action!r}")
        if window < 2:
            raise ValueError(f"MIC.GUARD.WINDOW must be >= 2, got {window}")
        self.start_iter = start_iter
        self.window = window
        self.min_accuracy_ratio = min_accuracy_ratio
        self.max_pseudo_ratio = max_pseudo_ratio
        self.max_pseudo_growth = max_pseudo_growth
        self.action = action
        self.max_rollbacks = max_rollbacks
        self.lr_factor = lr_factor
        self.knobs = knobs
        self.rollbacks = 0
        self._acc: Deque[float] = deque(maxlen=window)
        self._pseudo: Deque[float] = deque(maxlen=window)
        self._objects: Deque[float] = deque(maxlen=window)
        self._empty_steps = 0
        self._top_score = 0.0
        self.reference_accuracy: Optional[float] = None
        self.reference_pseudo: Optional[float] = None
        self._snapshots: Deque[Dict] = deque(maxlen=2)
        self._quiet_until = -1  # no judgement right after a rollback, until a window is refilled

    @classmethod
    def from_config(cls, cfg: CfgNode) -> "CollapseGuard":
        g = cfg.MIC.GUARD
        knobs = (
            "SOLVER.BASE_LR / SOLVER.STEPS (MIC should fine-tune a converged source model at a lower lr), "
            f"MIC.PSEUDO_SCORE_THRESH (now {cfg.MIC.PSEUDO_SCORE_THRESH}), MIC.EMA_ALPHA (now {cfg.MIC.EMA_ALPHA}), "
            f"MIC.LOSS_WEIGHT (now {cfg.MIC.LOSS_WEIGHT}), MIC.BURN_IN_ITERS (now {cfg.MIC.BURN_IN_ITERS})"
        )
        return cls(
            start_iter=cfg.MIC.BURN_IN_ITERS,
            window=g.WINDOW,
            min_accuracy_ratio=g.MIN_ACCURACY_RATIO,
            max_pseudo_ratio=g.MAX_PSEUDO_RATIO,
            max_pseudo_growth=g.MAX_PSEUDO_GROWTH,
            action=g.ACTION,
            max_rollbacks=g.MAX_ROLLBACKS,
            lr_factor=g.LR_FACTOR,
            knobs=knobs,
        )

    # ----------------------------------------------------------------- signals
    def _latest(self, name: str) -> Optional[float]:
        """This iteration's value of ``name`` in the event storage, or None."""
        found = self.trainer.storage.latest().get(name)
        if found is None or found[1] != self.trainer.iter:
            return None
        return float(found[0])

    def after_step(self):
        it = self.trainer.iter
        acc = self._latest("guard/source_accuracy")
        if acc is not None and math.isfinite(acc):
            self._acc.append(acc)
        if it < self.start_iter:
            return  # burn-in: the accuracy window fills, and is the reference when MIC starts
        if not self._snapshots:
            self._snapshot(it)  # the model as adaptation starts (or as a resumed run restarts)
        if self.reference_accuracy is None and len(self._acc) == self.window:
            self.reference_accuracy = _mean(self._acc)
            logger.info("Collapse guard: source accuracy %.3f when adaptation started (iteration %d); "
                        "action on collapse: %s.", self.reference_accuracy, it, self.action)
        pseudo = self._latest("guard/pseudo_per_image")
        if pseudo is not None:
            self._pseudo.append(pseudo)
            objects = self._latest("guard/source_objects_per_image")
            if objects is not None:
                self._objects.append(objects)
            self._watch_empty(pseudo, it)
        if self.reference_pseudo is None and len(self._pseudo) == self.window:
            self.reference_pseudo = _mean(self._pseudo)
        if it < self._quiet_until or len(self._pseudo) < self.window:
            return
        reason = self._collapse_reason()
        if comm.get_world_size() > 1:  # every rank must take the same branch
            reasons = [r for r in comm.all_gather(reason) if r]
            reason = reasons[0] if reasons else None
        if reason is None:
            if (it - self.start_iter) % self.window == 0:
                self._snapshot(it)
            return
        self._on_collapse(reason, it)

    def _watch_empty(self, pseudo: float, it: int) -> None:
        """Warn every five windows (100 steps by default) while the teacher gives no pseudo-label at all."""
        top = self._latest("guard/teacher_top_score")
        if top is not None:
            self._top_score = top
        self._empty_steps = self._empty_steps + 1 if pseudo == 0 else 0
        if self._empty_steps and self._empty_steps % (5 * self.window) == 0:
            logger.warning(
                "MIC is on, but the teacher gave no pseudo-label on any target image for the last %d steps "
                "(iteration %d; its top score %.3f): the student learns nothing from the target. "
                "Lower MIC.PSEUDO_SCORE_THRESH or train the source model longer (MIC.BURN_IN_ITERS).",
                self._empty_steps, it, self._top_score,
            )

    def _collapse_reason(self) -> Optional[str]:
        acc = _mean(self._acc)
        if self.reference_accuracy and len(self._acc) == self.window:
            if acc < self.min_accuracy_ratio * self.reference_accuracy:
                return (f"source accuracy {acc:.3f} over the last {self.window} steps, "
                        f"against {self.reference_accuracy:.3f} when adaptation started")
        pseudo, objects = _mean(self._pseudo), _mean(self._objects)
        if self._objects and objects > 0 and pseudo > self.max_pseudo_ratio * objects:
            return (f"the teacher gives {pseudo:.1f} pseudo-labels per image, "
                    f"against {objects:.1f} labelled objects per source image")
        if self.reference_pseudo is not None and self.reference_pseudo >= MIN_PSEUDO_FOR_DEATH:
            if pseudo < DEAD_TEACHER_RATIO * self.reference_pseudo:
                return (f"the teacher's pseudo-labels fell to {pseudo:.2f} per image, "
                        f"from {self.reference_pseudo:.2f} when adaptation started")
        if self.reference_pseudo is not None and self.max_pseudo_growth > 0:
            start = max(self.reference_pseudo, MIN_PSEUDO_FOR_DEATH)
            if pseudo > self.max_pseudo_growth * start:
                return (f"the teacher's pseudo-labels rose to {pseudo:.2f} per image over the last "
                        f"{self.window} steps, from {self.reference_pseudo:.2f} when adaptation started: "
                        "it is likely confirming its own false boxes (raise MIC.PSEUDO_SCORE_THRESH, "
                        "check the source model on this target)")
        return None

    # ----------------------------------------------------------------- actions
    def _models(self):
        step = self.trainer._trainer
        return unwrap_model(step.model), step.teacher, step.optimizer

    def _snapshot(self, it: int) -> None:
        if self.action != "rollback":
            return
        student, teacher, optimizer = self._models()
        self._snapshots.append({
            "iter": it,
            "student": _to_host(student.state_dict()),
            "teacher": _to_host(teacher.state_dict()) if teacher is not None else None,
            "optimizer": _to_host(optimizer.state_dict()),
        })

    def _on_collapse(self, reason: str, it: int) -> None:
        message = f"Adaptation collapsed at iteration {it}: {reason}."
        self.trainer.storage.put_scalar("guard/collapses", self.rollbacks + 1, smoothing_hint=False)
        if self.action == "warn":
            logger.warning("%s Knobs: %s.", message, self.knobs)
            self._quiet_until = it + self.window
            return
        if self.action == "stop" or self.rollbacks >= self.max_rollbacks or not self._snapshots:
            why = "" if self.action == "stop" else f" ({self.rollbacks} rollbacks did not help)"
            raise TrainingCollapsed(
                f"{message} Training stopped{why}; the checkpoints written so far are untouched. Knobs: {self.knobs}."
            )
        snap = self._snapshots[0]
        student, teacher, optimizer = self._models()
        device = next(student.parameters()).device
        student.load_state_dict({k: v.to(device) for k, v in snap["student"].items()})
        if teacher is not None and snap["teacher"] is not None:
            teacher.load_state_dict({k: v.to(device) for k, v in snap["teacher"].items()})
        optimizer.load_state_dict(snap["optimizer"])  # moves the state to the parameters' device
        self._lower_lr()
        self.rollbacks += 1
        self.trainer.storage.put_scalar("guard/rollbacks", self.rollbacks, smoothing_hint=False)
        logger.warning(
            "%s Rolled back student, teacher and optimizer to iteration %d and multiplied the learning rate by "
            "%g (rollback %d of at most %d). Knobs: %s.",
            message, snap["iter"], self.lr_factor, self.rollbacks, self.max_rollbacks, self.knobs,
        )
        self._snapshots.clear()
        self._snapshots.append(snap)
        for d in (self._acc, self._pseudo, self._objects):
            d.clear()
        self._quiet_until = it + self.window

    def _lower_lr(self) -> None:
        scheduler = getattr(self.trainer, "scheduler", None)
        if scheduler is not None and hasattr(scheduler, "base_lrs"):
            scheduler.base_lrs = [lr * self.lr_factor for lr in scheduler.base_lrs]
        for group in self.trainer._trainer.optimizer.param_groups:
            group["lr"] *= self.lr_factor
            if "initial_lr" in group:
                group["initial_lr"] *= self.lr_factor

    # The rollbacks done so far change the lr for good: keep them in checkpoints.
    def state_dict(self) -> Dict:
        return {"rollbacks": self.rollbacks, "reference_accuracy": self.reference_accuracy,
                "reference_pseudo": self.reference_pseudo}

    def load_state_dict(self, state: Dict) -> None:
        self.rollbacks = state.get("rollbacks", 0)
        self.reference_accuracy = state.get("reference_accuracy")
        self.reference_pseudo = state.get("reference_pseudo")
