"""Checkpoint hooks that keep ``--resume`` honest: best checkpoints that are not "last", and a save on SIGTERM.

Detectron2's ``BestCheckpointer`` saves ``model_best.pth`` through the same
checkpointer as the periodic saves, so ``last_checkpoint`` then names the
*best* state (saved with the iteration of its evaluation) and ``--resume``
of a finished or interrupted run continues from there, skipping or repeating
steps. And a job killed by its scheduler (SIGTERM) or by Ctrl-C loses every
step since the last periodic checkpoint without a word. And a best checkpoint
chosen on a dataset or a model the run never evaluates is never written, also
without a word (:func:`check_best_checkpoint`).
"""
import logging
import os
import signal
from typing import Optional

from detectron2.config import CfgNode
from detectron2.engine import HookBase, hooks
from detectron2.utils import comm

__all__ = ["LastStateBestCheckpointer", "SaveOnInterrupt", "TrainingInterrupted", "check_best_checkpoint"]

logger = logging.getLogger(__name__)


class LastStateBestCheckpointer(hooks.BestCheckpointer):
    """Detectron2's BestCheckpointer, except that ``last_checkpoint`` keeps naming the latest state.

    ``--resume`` must continue from where training stopped, never from the
    best evaluation; ``model_best.pth`` stays a file to load by name.
    """

    def _best_checking(self):
        checkpointer = self._checkpointer
        tag = os.path.join(checkpointer.save_dir, "last_checkpoint")
        previous = checkpointer.get_checkpoint_file() if checkpointer.has_checkpoint() else None
        super()._best_checking()
        if not comm.is_main_process():
            return
        if previous is not None:
            checkpointer.tag_last_checkpoint(os.path.basename(previous))
        elif os.path.isfile(tag) and open(tag).read().strip() == f"{self._file_prefix}.pth":
            os.remove(tag)  # no state was saved yet: nothing to resume from


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped on a signal after saving a checkpoint (``signum``, ``path``)."""

    def __init__(self, signum: int, path: Optional[str]):
        super().__init__(f"{signal.Signals(signum).name}: checkpoint {path}")
        self.signum = signum
        self.path = path


class SaveOnInterrupt(HookBase):
    """On SIGTERM or SIGINT, finish the current step, save a checkpoint, say where, and stop.

    The checkpoint is the trainer's full state (student, teacher, optimizer,
    scheduler, data-stream positions, RNGs) under the name a periodic save of
    that iteration would have, so ``--resume`` continues exactly. Under DDP the
    request is all-gathered every step, so every rank stops after the same one.
    A second signal while saving is not caught again: it interrupts at once.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self, checkpointer):
        self.checkpointer = checkpointer
        self.requested: Optional[int] = None
        self._previous = {}

    def _request(self, signum, frame):
        self.requested = signum
        logger.warning("%s received: saving a checkpoint after this step.", signal.Signals(signum).name)
        for sig, handler in self._previous.items():  # the next signal acts at once
            signal.signal(sig, handler)

    def before_train(self):
        try:
            self._previous = {sig: signal.signal(sig, self._request) for sig in self.SIGNALS}
        except ValueError:  # not the main thread: leave the signals to whoever owns them
            self._previous = {}
        else:
            logger.info("SIGTERM or SIGINT (Ctrl-C) from here on saves a resumable checkpoint after the current step.")

    def after_step(self):
        requested = self.requested
        if comm.get_world_size() > 1:
            requested = next((s for s in comm.all_gather(self.requested) if s is not None), None)
        if requested is None:
            return
        iteration = self.trainer.iter
        name = f"model_{iteration:07d}"
        self.checkpointer.save(name, iteration=iteration)
        path = os.path.join(self.checkpointer.save_dir, f"{name}.pth")
        comm.synchronize()
        logger.warning(
            "Training interrupted by %s after iteration %d: saved %s. Continue with the same command and --resume.",
            signal.Signals(requested).name, iteration, path,
        )
        raise TrainingInterrupted(requested, path)

    def after_train(self):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}


def check_best_checkpoint(cfg: CfgNode) -> None:
    """Raise a ``ValueError`` naming the ``TEST.BEST_CHECKPOINT`` key that could never select a checkpoint.

    Called by the trainer when it keeps a best checkpoint (``ENABLED``, with
    periodic evaluation on ``DATASETS.TEST``), before the first step: the best
    checkpoint is chosen on an evaluation the run makes. A dataset
    outside ``DATASETS.TEST``, or the teacher's result when only the student
    is evaluated, is never in the results: without this check the run would
    train to its end and write no ``model_best.pth``, silently.
    """
    best = cfg.TEST.BEST_CHECKPOINT
    problems = []
    if best.MODE not in ("max", "min"):
        problems.append(f"TEST.BEST_CHECKPOINT.MODE must be 'max' or 'min', got {best.MODE!r}")
    if best.MODEL not in ("student", "teacher"):
        problems.append(f"TEST.BEST_CHECKPOINT.MODEL must be 'student' or 'teacher', got {best.MODEL!r}")
    elif best.MODEL == "teacher" and (cfg.TEST.EVAL_MODEL == "student" or not cfg.MIC.ENABLED):
        problems.append("TEST.BEST_CHECKPOINT.MODEL is 'teacher', but the teacher is never evaluated "
                        f"(TEST.EVAL_MODEL {cfg.TEST.EVAL_MODEL!r}, MIC.ENABLED {cfg.MIC.ENABLED})")
    elif best.MODEL == "student" and cfg.TEST.EVAL_MODEL == "teacher":
        problems.append("TEST.BEST_CHECKPOINT.MODEL is 'student', but TEST.EVAL_MODEL 'teacher' evaluates "
                        "the teacher only")
    if best.DATASET and best.DATASET not in cfg.DATASETS.TEST:
        problems.append(f"TEST.BEST_CHECKPOINT.DATASET {best.DATASET!r} is not one of DATASETS.TEST "
                        f"{tuple(cfg.DATASETS.TEST)}: only evaluated sets can select a checkpoint "
                        "(add it there, or set TEST.BEST_CHECKPOINT.ENABLED False)")
    if problems:
        raise ValueError("; ".join(problems))
