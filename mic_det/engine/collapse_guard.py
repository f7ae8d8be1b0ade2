"""The collapse guard: notices when self-training destroys the model, says so, and rolls back.

Self-training feeds the model its own predictions. When the student drifts
faster than its pseudo-labels can follow (a learning rate meant for training
from scratch, a teacher that is too weak, a shift the source model does not
survive), the loop can run away: the teacher sees objects everywhere, the
student learns them, and soon it no longer recognises even the *labelled*
source objects, or the teacher falls silent. The losses do not show it: they
keep falling. docs/benchmarks_archive.md has the measured collapses and drifts the checks
below are set on.

The MIC step logs per-step signals (``guard/*`` in the event storage); the
guard averages each over a window of ``MIC.GUARD.WINDOW`` steps and judges the
window means once adaptation has started (``MIC.BURN_IN_ITERS``):

* **Source accuracy falls** (``guard/source_accuracy``, the student's accuracy
  on the *labelled* source batch; for detection the RoI head's foreground
  classification accuracy): a collapse when its window mean falls below
  ``MIN_ACCURACY_RATIO`` times the highest it has reached since adaptation
  started (its mean over the window as adaptation starts included). Judged only
  once that highest mean is at least ``MIN_ACCURACY_TO_JUDGE``: with MIC from
  step 0 the heads start untrained, and an accuracy near 0 has nothing to fall from.
  The source labels are the one supervision self-training cannot corrupt, so
  forgetting them is the clearest sign the loop has run away.
* **The teacher hallucinates** (``guard/pseudo_per_image`` against
  ``guard/source_objects_per_image``): a collapse when it gives more than
  ``MAX_PSEUDO_RATIO`` times as many pseudo-labels per image as the source has
  labelled objects. Target images may hold more objects than source images,
  hence a factor, not a match. This is the only bound on a count that starts
  from zero (below).
* **The teacher dies**: a collapse when its pseudo-labels per image fall under
  ``DEAD_TEACHER_RATIO`` (a tenth) of the highest window mean it has reached
  in a window judged healthy. The check is armed only once that level is at
  least ``MIN_PSEUDO_FOR_DEATH`` per image: a teacher that has never given
  boxes (MIC from step 0 on a model whose detection head is still untrained)
  has nothing to die from, and a tenth of a near-zero count is noise. The
  highest level, not the start, is the reference because a teacher that
  learns to detect during adaptation starts near zero.
* **The teacher's count drifts up** (``MAX_PSEUDO_GROWTH``; 0 turns it off): a
  collapse when its pseudo-labels per image grow past ``MAX_PSEUDO_GROWTH``
  times their mean over the first window of adaptation (at least
  ``MIN_PSEUDO_FOR_DEATH`` counted as that start). This is a teacher
  confirming its own false boxes: its count creeps up while staying well
  under the source's objects per image, so the ratio check does not see it,
  and the source accuracy holds (docs/benchmarks_archive.md, the night shift). The check
  is armed only when the start is a *level*: the first window's mean is at
  least ``MIN_PSEUDO_FOR_GROWTH`` per image and the next window's mean is at
  most ``START_SETTLED_RATIO`` times it. A count that starts near zero or
  climbs from the first step is a teacher still learning to detect (MIC from
  step 0 on a backbone-only pretrained model): any point on that climb taken
  as the reference would make the learning itself a "growth" (0 -> 4 boxes
  per image against ~4 labelled source objects is healthy), and no count
  alone tells learning from drift there. Such a run is bounded by the ratio
  check only. Measuring growth against the source's objects per image
  instead would only repeat the ratio check: the drift it is meant for stays
  under them. The other way round, a teacher that starts at a settled low
  count and then slowly learns to find more objects looks like that drift,
  and is judged as one.

A teacher that never gives any pseudo-label is not a collapse (nothing is
being learnt from it) but a waste of compute: the guard warns every
5 x ``WINDOW`` steps while it lasts, with the teacher's top score and the knobs.

Which of these checks mean something depends on the task: a task names the
ones its signals cannot trigger (:meth:`MICTask.guard_checks_off`, e.g.
classification's one label per image bounds the count checks), and the guard
says at the start of training which checks it judges and why the others not.

On a collapse, ``ACTION`` decides: ``rollback`` (default) restores student,
teacher and optimizer from the last snapshot taken at least one window before
the collapse was seen, multiplies the learning rate by ``LR_FACTOR`` and goes
on (after ``MAX_ROLLBACKS`` it stops); ``stop`` raises; ``warn`` only logs.
Snapshots live in host memory; nothing on disk is touched, so every checkpoint
written before the collapse stays as it was. A run that rolled back says so:
``guard/rollbacks`` (the count so far) is in the event storage at every step
from the first rollback on, so it reaches ``metrics.json`` and TensorBoard (the
final evaluation's row included), the end of training logs a warning with the
rollbacks and the learning-rate factor they applied, and the trainer's closing
summary (:func:`~mic_det.engine.trainer.run_summary`) repeats it under the final results.
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

__all__ = ["CollapseGuard", "TrainingCollapsed", "GUARD_ACTIONS", "GUARD_CHECKS"]

logger = logging.getLogger(__name__)

GUARD_ACTIONS = ("rollback", "stop", "warn")
#: The checks, by the name a task uses in :meth:`MICTask.guard_checks_off`, and what each judges.
GUARD_CHECKS = {
    "source_accuracy": "the student's accuracy on the labelled source batch falling",
    "pseudo_ratio": "more pseudo-labels per image than MAX_PSEUDO_RATIO x the source's labelled objects",
    "teacher_death": "the pseudo-labels per image falling under a tenth of their highest level",
    "pseudo_growth": "the pseudo-labels per image growing past MAX_PSEUDO_GROWTH x their settled start",
}
# The teacher counts as dead when its pseudo-labels per image fall under this
# fraction of the highest window mean they reached in a healthy window.
DEAD_TEACHER_RATIO = 0.1
# "The teacher died" is judged only once that highest level is at least this
# many pseudo-labels per image; it is also the least start the growth check divides by.
MIN_PSEUDO_FOR_DEATH = 0.5
# The growth check is armed only when the first window of adaptation gives at
# least this many pseudo-labels per image (below, the teacher is still learning to detect) ...
MIN_PSEUDO_FOR_GROWTH = 0.25
# ... and the next window at most this many times as many (more: it is climbing, not settled).
START_SETTLED_RATIO = 2.0
# The source-accuracy check is judged only once the highest window mean of the accuracy
# is at least this: with MIC from step 0 the heads start untrained (accuracy near 0), and
# a dip from 0.03 to 0.01 is noise of a model still learning the source, not a collapse.
MIN_ACCURACY_TO_JUDGE = 0.2


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
        checks_off: Optional[Dict[str, str]] = None,
        task_name: str = "",
    ):
        if action not in GUARD_ACTIONS:
            raise ValueError(f"MIC.GUARD.ACTION must be one of {GUARD_ACTIONS}, got {action!r}")
        if window < 2:
            raise ValueError(f"MIC.GUARD.WINDOW must be >= 2, got {window}")
        self.checks_off = dict(checks_off or {})
        unknown = sorted(set(self.checks_off) - set(GUARD_CHECKS))
        if unknown:
            raise ValueError(f"Unknown collapse-guard checks {unknown}; known: {sorted(GUARD_CHECKS)}")
        #: The checks judged in this run.
        self.checks = tuple(c for c in GUARD_CHECKS if c not in self.checks_off)
        self.task_name = task_name
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
        self.reference_pseudo: Optional[float] = None  # the count over the first window of adaptation
        self._reference_pseudo_iter: Optional[int] = None
        self.growth_armed: Optional[bool] = None  # decided one window after reference_pseudo
        self.peak_pseudo = 0.0  # the highest window mean of the count in a window judged healthy
        self.peak_accuracy = 0.0  # the highest window mean of the source accuracy in a healthy window
        self.lr_scale = 1.0  # the product of the lr factors the rollbacks applied
        self.rollback_iters: List[int] = []
        self._snapshots: Deque[Dict] = deque(maxlen=2)
        self._quiet_until = -1  # no judgement right after a rollback, until a window is refilled

    @classmethod
    def from_config(cls, cfg: CfgNode, task=None) -> "CollapseGuard":
        """The guard of ``MIC.GUARD.*``, judging the checks that apply to ``task`` (default: ``MODEL.TASK``'s)."""
        if task is None:
            from ..task import build_task

            task = build_task(cfg)
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
            checks_off=task.guard_checks_off(),
            task_name=type(task).__name__,
        )

    def before_train(self):
        """Say which checks this run's guard judges, and why the others do not apply to the task."""
        judged = "; ".join(f"{GUARD_CHECKS[c]} ({c})" for c in self.checks) or "nothing"
        message = (f"Collapse guard (MIC.GUARD, action {self.action}, from iteration {self.start_iter}) "
                   f"judges: {judged}.")
        if self.checks_off:
            message += f" Not judged for {self.task_name or 'this task'}: " + "; ".join(
                f"{c} ({why})" for c, why in self.checks_off.items()) + "."
        logger.info(message)

    # ----------------------------------------------------------------- signals
    def _latest(self, name: str) -> Optional[float]:
        """This iteration's value of ``name`` in the event storage, or None."""
        found = self.trainer.storage.latest().get(name)
        if found is None or found[1] != self.trainer.iter:
            return None
        return float(found[0])

    def after_step(self):
        self._judge(self.trainer.iter)
        self._put_rollbacks()

    def _put_rollbacks(self) -> None:
        if self.rollbacks:  # at every step from the first rollback on, so metrics.json says so
            self.trainer.storage.put_scalar("guard/rollbacks", self.rollbacks, smoothing_hint=False)

    def _judge(self, it: int) -> None:
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
        if len(self._pseudo) == self.window:
            self._set_pseudo_references(it)
        if it < self._quiet_until or len(self._pseudo) < self.window:
            return
        reason = self._collapse_reason()
        if comm.get_world_size() > 1:  # every rank must take the same branch
            reasons = [r for r in comm.all_gather(reason) if r]
            reason = reasons[0] if reasons else None
        if reason is None:
            self.peak_pseudo = max(self.peak_pseudo, _mean(self._pseudo))
            if len(self._acc) == self.window:
                self.peak_accuracy = max(self.peak_accuracy, _mean(self._acc))
            if (it - self.start_iter) % self.window == 0:
                self._snapshot(it)
            return
        self._on_collapse(reason, it)

    def _set_pseudo_references(self, it: int) -> None:
        """The start of the count (first full window), then whether it is a level the growth check can use."""
        if self.reference_pseudo is None:
            self.reference_pseudo, self._reference_pseudo_iter = _mean(self._pseudo), it
            return
        if self.growth_armed is not None:
            return
        if self._reference_pseudo_iter is not None and it < self._reference_pseudo_iter + self.window:
            return  # the next, non-overlapping window is not complete yet
        following = _mean(self._pseudo)
        self.growth_armed = (self.reference_pseudo >= MIN_PSEUDO_FOR_GROWTH
                             and following <= START_SETTLED_RATIO * self.reference_pseudo)
        if self.max_pseudo_growth > 0:
            if self.growth_armed:
                logger.info("Collapse guard: %.2f pseudo-labels per image when adaptation started; a collapse "
                            "if they grow past %.2f (iteration %d).", self.reference_pseudo,
                            self.max_pseudo_growth * max(self.reference_pseudo, MIN_PSEUDO_FOR_DEATH), it)
            else:
                logger.info("Collapse guard: the teacher's pseudo-labels per image start at %.2f, then %.2f: it is "
                            "still learning to detect, so their growth is not judged (only their ratio to the "
                            "source's objects per image).", self.reference_pseudo, following)

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
        best = max(self.reference_accuracy or 0.0, self.peak_accuracy)
        checks = self.checks
        if "source_accuracy" in checks and best >= MIN_ACCURACY_TO_JUDGE and len(self._acc) == self.window:
            if acc < self.min_accuracy_ratio * best:
                return (f"source accuracy {acc:.3f} over the last {self.window} steps, against {best:.3f} "
                        "at its highest since adaptation started")
        pseudo, objects = _mean(self._pseudo), _mean(self._objects)
        if "pseudo_ratio" in checks and self._objects and objects > 0 and pseudo > self.max_pseudo_ratio * objects:
            return (f"the teacher gives {pseudo:.1f} pseudo-labels per image, "
                    f"against {objects:.1f} labelled objects per source image")
        if ("teacher_death" in checks and self.peak_pseudo >= MIN_PSEUDO_FOR_DEATH
                and pseudo < DEAD_TEACHER_RATIO * self.peak_pseudo):
            return (f"the teacher's pseudo-labels fell to {pseudo:.2f} per image, "
                    f"from {self.peak_pseudo:.2f} at their highest")
        if "pseudo_growth" in checks and self.growth_armed and self.max_pseudo_growth > 0:
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
        # The snapshot's param groups carry the lr of its time (before any later rollback):
        # keep the lr in force now, which the factor below then lowers.
        lrs = [(g["lr"], g.get("initial_lr")) for g in optimizer.param_groups]
        optimizer.load_state_dict(snap["optimizer"])  # moves the state to the parameters' device
        for group, (lr, initial_lr) in zip(optimizer.param_groups, lrs):
            group["lr"] = lr
            if initial_lr is not None:
                group["initial_lr"] = initial_lr
        self._lower_lr()
        self.rollbacks += 1
        self.rollback_iters.append(it)
        logger.warning(
            "%s Rolled back student, teacher and optimizer to iteration %d and multiplied the learning rate by "
            "%g (rollback %d of at most %d). Knobs: %s.",
            message, snap["iter"], self.lr_factor, self.rollbacks, self.max_rollbacks, self.knobs,
        )
        self._snapshots.clear()
        self._snapshots.append(snap)
        for d in (self._acc, self._pseudo, self._objects):
            d.clear()
        self.peak_pseudo = 0.0  # may hold the run-up to the collapse: relearnt from the restored model
        self._quiet_until = it + self.window

    def _lower_lr(self) -> None:
        self.lr_scale *= self.lr_factor
        scheduler = getattr(self.trainer, "scheduler", None)
        if scheduler is not None and hasattr(scheduler, "base_lrs"):
            scheduler.base_lrs = [lr * self.lr_factor for lr in scheduler.base_lrs]
        for group in self.trainer._trainer.optimizer.param_groups:
            group["lr"] *= self.lr_factor
            if "initial_lr" in group:
                group["initial_lr"] *= self.lr_factor

    def after_train(self):
        """A run that rolled back says so at its end (also when the guard stopped it), and in the
        final evaluation's metrics row (the storage is at the last iteration + 1 by now)."""
        if not self.rollbacks:
            return
        self._put_rollbacks()
        logger.warning("%s Knobs: %s.", self.rollback_summary(), self.knobs)

    def rollback_summary(self) -> str:
        """One sentence on the rollbacks of this run ("" when there were none)."""
        if not self.rollbacks:
            return ""
        where = f" at iteration(s) {', '.join(map(str, self.rollback_iters))}" if self.rollback_iters else ""
        return (f"The collapse guard rolled back this run {self.rollbacks} time(s){where}: student, teacher and "
                f"optimizer were restored from before each collapse and the learning rate was multiplied by "
                f"{self.lr_scale:g} in all. The results are those of a rolled-back run at a lower lr "
                f"(guard/rollbacks in metrics.json).")

    # The rollbacks done so far change the lr for good: keep them in checkpoints.
    def state_dict(self) -> Dict:
        return {"rollbacks": self.rollbacks, "reference_accuracy": self.reference_accuracy,
                "reference_pseudo": self.reference_pseudo, "growth_armed": self.growth_armed,
                "peak_pseudo": self.peak_pseudo, "peak_accuracy": self.peak_accuracy, "lr_scale": self.lr_scale,
                "rollback_iters": list(self.rollback_iters)}

    def load_state_dict(self, state: Dict) -> None:
        self.rollbacks = state.get("rollbacks", 0)
        self.reference_accuracy = state.get("reference_accuracy")
        self.reference_pseudo = state.get("reference_pseudo")
        # A checkpoint from before these keys: the growth check as it was (armed), the death check relearnt.
        self.growth_armed = state.get("growth_armed", None if self.reference_pseudo is None else True)
        self.peak_pseudo = state.get("peak_pseudo", 0.0)
        self.peak_accuracy = state.get("peak_accuracy", 0.0)
        self.lr_scale = state.get("lr_scale", self.lr_factor ** self.rollbacks)
        self.rollback_iters = list(state.get("rollback_iters", []))
