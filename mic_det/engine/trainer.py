"""MICTrainer: Detectron2's DefaultTrainer with a target stream, an EMA teacher and MIC, for any task."""
import logging
import math
import os
import weakref
from collections import OrderedDict
from typing import Dict, Optional

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import CfgNode
from detectron2.engine import DefaultTrainer, TrainerBase, create_ddp_model, hooks
from detectron2.evaluation import inference_on_dataset, print_csv_format
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from ..data.build import build_source_loader, build_target_loader
from ..evaluation.plots import plot_metrics
from ..teacher import EMATeacher
from ..utils import get_rng_states, rng_states_kept, set_host_rng_states
from .checkpoint_hooks import LastStateBestCheckpointer, SaveOnInterrupt, check_best_checkpoint
from .collapse_guard import CollapseGuard
from .lr_schedule import build_lr_scheduler
from .mic_step import MICStep
from ..task import MICTask, build_task

__all__ = [
    "MICTrainer", "ddp_find_unused_parameters", "divergence_hint", "evaluate_models", "models_to_evaluate",
    "run_summary", "teacher_student_gap",
]

logger = logging.getLogger(__name__)


class _TeacherCheckpointable:
    """Checkpoints the teacher and remembers whether a checkpoint restored it.

    A run started from ``MODEL.WEIGHTS`` (or resumed from a source-only run)
    has no teacher state: the teacher must then start as a copy of the
    loaded student, not of the random initialisation.
    """

    def __init__(self, teacher: EMATeacher):
        self.teacher = teacher
        self.restored = False

    def state_dict(self):
        return self.teacher.state_dict()

    def load_state_dict(self, state_dict):
        self.teacher.load_state_dict(state_dict)
        self.restored = True


class MetricsPlotter(hooks.HookBase):
    """Plots AP50 over iterations (student vs teacher) and the losses when training ends."""

    def __init__(self, output_dir: str):
        self.output_dir = output_dir

    def after_train(self):
        metrics = os.path.join(self.output_dir, "metrics.json")
        if os.path.isfile(metrics):
            for path in plot_metrics(metrics, os.path.join(self.output_dir, "plots")):
                logger.info("Wrote %s", path)


class MICTrainer(DefaultTrainer):
    """Source-only, UDA, MIC and MIC+UDA training, chosen by config alone, for the task ``MODEL.TASK``.

    On top of DefaultTrainer: a second (target) data loader, the EMA teacher
    (checkpointed with the model so ``--resume`` continues exactly),
    :class:`MICStep` as the step, and evaluation of student and teacher with
    a best-checkpoint hook. Mappers, test loaders and evaluators come from
    the task (:class:`~mic_det.task.MICTask`).
    """

    def __init__(self, cfg: CfgNode):
        # DefaultTrainer.__init__, with the MIC step, the target stream and the
        # teacher built in, and DDP that also wraps CPU models (gloo).
        TrainerBase.__init__(self)
        if not logging.getLogger("detectron2").isEnabledFor(logging.INFO):
            setup_logger()
        cfg = self.auto_scale_workers(cfg, comm.get_world_size())
        self.task = build_task(cfg)
        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        source_loader = self.build_train_loader(cfg, self.task)
        target_loader = None
        if cfg.MIC.ENABLED or cfg.UDA.ENABLED:
            target_loader = build_target_loader(cfg, self.task.build_train_mapper(cfg, labelled=False))
        device_ids = [comm.get_local_rank()] if model.device.type == "cuda" else None
        model = create_ddp_model(model, broadcast_buffers=False, device_ids=device_ids,
                                 find_unused_parameters=ddp_find_unused_parameters(cfg))
        # Copied after DDP has broadcast rank 0's weights: one teacher on every rank.
        self.teacher: Optional[EMATeacher] = EMATeacher(model) if cfg.MIC.ENABLED else None
        self._trainer = MICStep(cfg, model, source_loader, target_loader, optimizer, self.teacher, self.task)
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = DetectionCheckpointer(model, cfg.OUTPUT_DIR, trainer=weakref.proxy(self))
        self._teacher_ckpt: Optional[_TeacherCheckpointable] = None
        if self.teacher is not None:
            self._teacher_ckpt = _TeacherCheckpointable(self.teacher)
            self.checkpointer.add_checkpointable("teacher", self._teacher_ckpt)
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.register_hooks(self.build_hooks())
        warn_if_adaptation_starts_at_full_lr(cfg, self.scheduler)

    def train(self):
        """DefaultTrainer.train, with what to change when the loss or the boxes became NaN/inf.

        Detectron2 stops with "Loss became infinite or NaN" or "Training has
        diverged" and nothing else; the knobs that fix it (the lr, the
        warm-up, gradient clipping, a norm in the FPN) are named here, with
        the values this run used.

        A run resumed after its last step (``--resume`` of a finished run) trains,
        evaluates and writes nothing: Detectron2 would run the hooks' ``after_train``
        again one step past the end (a repeated final evaluation, a metrics row and a
        best checkpoint at iteration ``MAX_ITER + 1``).
        """
        if self.start_iter >= self.max_iter:
            logger.info(
                "This run already finished at iteration %d (SOLVER.MAX_ITER %d): nothing to train. To evaluate "
                "it: tools/train_net.py --eval-only MODEL.WEIGHTS %s; to train on, raise SOLVER.MAX_ITER.",
                self.start_iter, self.max_iter, os.path.join(self.cfg.OUTPUT_DIR, "model_final.pth"),
            )
            return None
        try:
            ret = super().train()
        except FloatingPointError as e:
            lr = max((g["lr"] for g in self.optimizer.param_groups), default=float("nan"))
            raise FloatingPointError(f"{e}\n{divergence_hint(self.cfg, self.iter, lr)}") from e
        results = getattr(self, "_last_eval_results", None)  # DefaultTrainer returns them only to verify them
        guard = next((h for h in self._hooks if isinstance(h, CollapseGuard)), None)
        if comm.is_main_process():
            rolled_back = guard is not None and guard.rollbacks > 0
            (logger.warning if rolled_back else logger.info)(
                "%s", run_summary(self.cfg, results, guard, self.max_iter))
        return ret

    @staticmethod
    def auto_scale_workers(cfg: CfgNode, num_workers: int) -> CfgNode:
        """Detectron2's linear scaling (``SOLVER.REFERENCE_WORLD_SIZE``), extended to mic_det's keys.

        Where the adaptation starts (``MIC.BURN_IN_ITERS``, ``UDA.START_ITER``)
        is a point of the schedule like ``SOLVER.STEPS``, so it moves with it;
        an explicit ``DATALOADER.TARGET_IMS_PER_BATCH`` grows with the source
        batch (-1 follows it anyway).
        """
        scaled = DefaultTrainer.auto_scale_workers(cfg, num_workers)
        if scaled is cfg:
            return cfg
        scale = num_workers / cfg.SOLVER.REFERENCE_WORLD_SIZE
        frozen = scaled.is_frozen()
        scaled.defrost()
        scaled.MIC.BURN_IN_ITERS = int(round(cfg.MIC.BURN_IN_ITERS / scale))
        scaled.UDA.START_ITER = int(round(cfg.UDA.START_ITER / scale))
        scaled.SOLVER.RESTART_ITERS = tuple(int(round(r / scale)) for r in cfg.SOLVER.RESTART_ITERS)
        if cfg.DATALOADER.TARGET_IMS_PER_BATCH > 0:
            scaled.DATALOADER.TARGET_IMS_PER_BATCH = int(round(cfg.DATALOADER.TARGET_IMS_PER_BATCH * scale))
        logger.info(
            "Auto-scaling mic_det's keys too: MIC.BURN_IN_ITERS %d, UDA.START_ITER %d, SOLVER.RESTART_ITERS %s, "
            "TARGET_IMS_PER_BATCH %d.", scaled.MIC.BURN_IN_ITERS, scaled.UDA.START_ITER,
            scaled.SOLVER.RESTART_ITERS, scaled.DATALOADER.TARGET_IMS_PER_BATCH,
        )
        if frozen:
            scaled.freeze()
        return scaled

    # -------------------------------------------------------------- builders
    @classmethod
    def build_train_loader(cls, cfg, task: Optional[MICTask] = None):
        """The labelled source stream, with the mapper and sampler of ``task`` (default: ``MODEL.TASK``'s)."""
        task = task if task is not None else build_task(cfg)
        return build_source_loader(cfg, task.build_train_mapper(cfg, labelled=True),
                                   sampler_for=lambda dicts: task.build_source_sampler(cfg, dicts))

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        return build_task(cfg).build_test_loader(cfg, dataset_name)

    @classmethod
    def build_lr_scheduler(cls, cfg, optimizer):
        """Detectron2's schedule, started over at each of ``SOLVER.RESTART_ITERS`` (:mod:`.lr_schedule`)."""
        return build_lr_scheduler(cfg, optimizer)

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference")
        return build_task(cfg).build_evaluator(
            cfg, dataset_name, output_folder, model_tag="student", iteration=-1, config_name=_config_path(cfg)
        )

    # ------------------------------------------------------------ checkpoints
    def resume_or_load(self, resume: bool = True):
        """Load weights (or resume), then line up the data streams and RNGs.

        Resuming continues exactly: the teacher comes from the checkpoint, each
        data stream skips the batches already consumed, and the RNG states
        saved with the checkpoint are restored: python's and numpy's (the
        augmentations) now, torch's by the step once the first batch is in,
        since starting a data loader draws from torch's RNG. (Exact with
        ``DATALOADER.NUM_WORKERS 0``; with workers, the random flips of the
        resumed part are drawn afresh.)
        """
        self._rng_states = None
        super().resume_or_load(resume=resume)
        if self.teacher is not None and not self._teacher_ckpt.restored:
            logger.info("No teacher state in the checkpoint: teacher <- student.")
            self.teacher.reset(self.model)
        self._trainer.start_streams(self.start_iter)
        if self._rng_states is not None:
            set_host_rng_states(self._rng_states)
            self._trainer.torch_rng_states_to_restore = self._rng_states

    def state_dict(self):
        ret = super().state_dict()
        ret["rng_states"] = get_rng_states()
        return ret

    def load_state_dict(self, state_dict):
        super().load_state_dict(state_dict)
        # Restored once the streams are set up (see resume_or_load).
        self._rng_states = state_dict.get("rng_states")

    # ------------------------------------------------------------------ hooks
    def build_hooks(self):
        cfg = self.cfg
        ret = [hooks.IterationTimer(), hooks.LRScheduler()]
        if cfg.MIC.ENABLED and cfg.MIC.GUARD.ENABLED:
            ret.append(CollapseGuard.from_config(cfg, self.task))  # after LRScheduler: a rollback lowers its lr
        if comm.is_main_process():
            ret.append(hooks.PeriodicCheckpointer(self.checkpointer, cfg.SOLVER.CHECKPOINT_PERIOD))
        ret.append(SaveOnInterrupt(self.checkpointer))  # every rank: they agree on when to stop

        def test_and_save_results():
            # During a burn-in the teacher is not a model yet (it is copied from the student when MIC starts).
            teacher = self.teacher if self.iter >= cfg.MIC.BURN_IN_ITERS else None
            if teacher is None and cfg.TEST.EVAL_MODEL == "teacher":
                return {}
            with rng_states_kept():  # the trained model does not depend on TEST.EVAL_PERIOD
                self._last_eval_results = evaluate_models(cfg, models_to_evaluate(cfg, self.model, teacher),
                                                          self.iter, self.task)
            log_teacher_student_gap(self._last_eval_results, cfg.TEST.BEST_CHECKPOINT.METRIC, self.storage)
            return self._last_eval_results

        ret.append(hooks.EvalHook(cfg.TEST.EVAL_PERIOD, test_and_save_results))
        best = cfg.TEST.BEST_CHECKPOINT
        keeps_best = best.ENABLED and cfg.TEST.EVAL_PERIOD > 0 and bool(cfg.DATASETS.TEST)
        if keeps_best:
            check_best_checkpoint(cfg)  # on every rank, so all of them stop
        if keeps_best and comm.is_main_process():
            dataset = best.DATASET or cfg.DATASETS.TEST[0]
            ret.append(
                LastStateBestCheckpointer(
                    cfg.TEST.EVAL_PERIOD,
                    self.checkpointer,
                    f"{best.MODEL}/{dataset}/{best.METRIC}",
                    mode=best.MODE,
                )
            )
        if comm.is_main_process():
            # Write at least as often as evaluations happen, so metrics.json and
            # TensorBoard keep every evaluation (writers only see the latest value).
            period = math.gcd(20, cfg.TEST.EVAL_PERIOD) if cfg.TEST.EVAL_PERIOD > 0 else 20
            ret.append(hooks.PeriodicWriter(self.build_writers(), period=period))
            # After the writers, so the plots see the final metrics.
            ret.append(MetricsPlotter(cfg.OUTPUT_DIR))
        return ret


def ddp_find_unused_parameters(cfg: CfgNode) -> bool:
    """Whether DistributedDataParallel must look for parameters without a gradient in a step.

    DDP's one forward per step is the supervised one (with the target batch once
    domain alignment is on); MIC's masked view and a task's self-training pass run
    the unwrapped student (see :class:`~mic_det.engine.mic_step.MICStep`), on
    parameters that forward uses, so a rank without pseudo-labels needs nothing
    here. With ``UDA.START_ITER`` > 0 the domain discriminators get no gradient
    before that step: DDP must then find them (a graph walk per step), or the
    next step fails with "Expected to have finished reduction in the prior iteration".
    """
    return bool(cfg.UDA.ENABLED and cfg.UDA.START_ITER > 0)


def warn_if_adaptation_starts_at_full_lr(cfg: CfgNode, scheduler) -> None:
    """Say loudly when MIC would start from a source model that never left the lr of training from scratch.

    Self-training needs a finished source model: started from one still at its
    training lr it can collapse within tens of steps (measured on the
    from-scratch ResNet-18: source foreground accuracy 0.94 -> 0.04 in 40 steps
    at lr 0.02). The shipped configs decay the source phase (a ``SOLVER.STEPS``
    entry before ``MIC.BURN_IN_ITERS``); the detection ones then restart the
    schedule for adaptation (``SOLVER.RESTART_ITERS``), which is not warned of.
    """
    burn_in = cfg.MIC.BURN_IN_ITERS
    if not cfg.MIC.ENABLED or burn_in <= 0 or burn_in >= cfg.SOLVER.MAX_ITER:
        return
    multiplier = getattr(scheduler, "_multiplier", None)
    if multiplier is None:
        return
    source_end = float(multiplier((burn_in - 1) / cfg.SOLVER.MAX_ITER))
    if source_end >= 0.5:
        logger.warning(
            "MIC starts at iteration %d (MIC.BURN_IN_ITERS) from a source model trained to the end at %.0f%% of "
            "SOLVER.BASE_LR: self-training from a source model still at its training lr can collapse. Put a "
            "SOLVER.STEPS entry before the burn-in ends (the shipped configs: lr x0.1 at 75%% of the burn-in).",
            burn_in, 100 * source_end,
        )


def run_summary(cfg: CfgNode, results: Optional[Dict], guard: Optional[CollapseGuard], iteration: int) -> str:
    """The closing lines of a run: the final ``TEST.BEST_CHECKPOINT.METRIC`` of each evaluated
    model and set, and what the collapse guard did (rollbacks lower the lr for the rest of the run,
    so results after one are not those of the configured schedule)."""
    metric = cfg.TEST.BEST_CHECKPOINT.METRIC
    group, _, name = metric.partition("/")
    finals = []
    for tag, per_dataset in (results or {}).items():
        for dataset, res in (per_dataset or {}).items():
            value = ((res or {}).get(group) or {}).get(name)
            if isinstance(value, (int, float)):
                finals.append(f"{tag} {value:.2f} on {dataset}")
    lines = [f"Run summary ({cfg.OUTPUT_DIR}): finished at iteration {iteration}."]
    if finals:
        lines.append(f"Final {metric}: " + ", ".join(finals) + ".")
    if guard is not None:
        lines.append(guard.rollback_summary() or
                     f"Collapse guard: no collapse (judged: {', '.join(guard.checks) or 'nothing'}).")
    return "\n".join(lines)


def divergence_hint(cfg: CfgNode, iteration: int, lr: float) -> str:
    """What to change after training produced NaN/inf at ``iteration`` (lr ``lr``), from the run's config."""
    if cfg.MIC.ENABLED and iteration >= cfg.MIC.BURN_IN_ITERS:
        phase = f"in the MIC phase (MIC.BURN_IN_ITERS {cfg.MIC.BURN_IN_ITERS})"
    else:
        phase = "in source training" if cfg.MIC.ENABLED else "in training"
    knobs = [f"a lower SOLVER.BASE_LR (now {cfg.SOLVER.BASE_LR:g}; the lr at this step was {lr:g})"]
    if iteration < 5 * max(cfg.SOLVER.WARMUP_ITERS, 1):
        knobs.append(f"a longer SOLVER.WARMUP_ITERS (now {cfg.SOLVER.WARMUP_ITERS})")
    if not cfg.SOLVER.CLIP_GRADIENTS.ENABLED:
        knobs.append("SOLVER.CLIP_GRADIENTS.ENABLED True (e.g. CLIP_TYPE norm, CLIP_VALUE 10.0)")
    fpn = cfg.MODEL.get("FPN")
    if fpn is not None and "fpn" in cfg.MODEL.BACKBONE.NAME.lower() and not fpn.NORM and not cfg.MODEL.WEIGHTS:
        knobs.append('MODEL.FPN.NORM "GN" (an FPN without norm, trained from scratch, diverged at lr 0.02 '
                     "in docs/benchmarks_archive.md)")
    return (f"mic_det: training diverged at iteration {iteration}, {phase}. Checkpoints saved before it are kept "
            f"({cfg.OUTPUT_DIR}). Try, one at a time: " + "; ".join(knobs) + ".")


def models_to_evaluate(cfg: CfgNode, student: torch.nn.Module, teacher: Optional[EMATeacher]) -> Dict[str, torch.nn.Module]:
    """{"student": ..., "teacher": ...} as ``TEST.EVAL_MODEL`` and ``MIC.EVAL_TEACHER`` ask."""
    which = cfg.TEST.EVAL_MODEL
    if which not in ("student", "teacher", "both"):
        raise ValueError(f"TEST.EVAL_MODEL must be 'student', 'teacher' or 'both', got {which!r}")
    models = OrderedDict()
    if which in ("student", "both"):
        models["student"] = student
    if teacher is not None and which in ("teacher", "both") and (cfg.MIC.EVAL_TEACHER or which == "teacher"):
        models["teacher"] = teacher.model
    if not models:
        raise ValueError("TEST.EVAL_MODEL asks for the teacher, but this run has none (MIC.ENABLED is off)")
    return models


def teacher_student_gap(results: Dict, metric: str) -> Dict[str, float]:
    """``{"teacher_minus_student/<dataset>/<metric>": teacher - student}`` for each evaluated set.

    The teacher's pseudo-labels are all the student learns on the target: a teacher
    far below its student (an EMA too slow for the run's length) teaches it little
    new, one far above it is what the EMA is for. ``metric`` is a flattened key of
    the results, e.g. "bbox/AP50"; sets without it in both models are left out.
    """
    teacher, student = results.get("teacher"), results.get("student")
    if not teacher or not student:
        return {}
    group, _, name = metric.partition("/")
    gaps = {}
    for dataset, res in teacher.items():
        t = (res or {}).get(group, {}).get(name)
        s = ((student.get(dataset) or {}).get(group) or {}).get(name)
        if isinstance(t, (int, float)) and isinstance(s, (int, float)) and math.isfinite(t) and math.isfinite(s):
            gaps[f"teacher_minus_student/{dataset}/{metric}"] = float(t) - float(s)
    return gaps


def log_teacher_student_gap(results: Dict, metric: str, storage) -> None:
    """Put :func:`teacher_student_gap` in the event storage (TensorBoard, metrics.json) and the log."""
    gaps = teacher_student_gap(results, metric)
    if gaps and comm.is_main_process():
        storage.put_scalars(**gaps, smoothing_hint=False)
        logger.info("Teacher - student: %s", ", ".join(f"{k.split('/', 1)[1]} {v:+.2f}" for k, v in gaps.items()))


def _config_path(cfg: CfgNode) -> str:
    """The full config of the run, as ``tools/train_net.py`` (default_setup) saved it."""
    return os.path.join(cfg.OUTPUT_DIR, "config.yaml")


def evaluate_models(cfg: CfgNode, models: Dict[str, torch.nn.Module], iteration: int = -1,
                    task: Optional[MICTask] = None) -> Dict:
    """Evaluate each model on every ``DATASETS.TEST`` set, with the test loaders and evaluators of
    ``task`` (default: ``MODEL.TASK``'s).

    Returns ``{tag: {dataset: {<task>: {...}}}}`` (detection: ``"bbox"``);
    Detectron2's EvalHook flattens it to ``<tag>/<dataset>/bbox/AP50`` in the
    event storage, so TensorBoard and ``metrics.json`` keep student and teacher apart.
    """
    task = task if task is not None else build_task(cfg)
    results = OrderedDict((tag, OrderedDict()) for tag in models)
    output_dir = os.path.join(cfg.OUTPUT_DIR, "inference")
    for dataset_name in cfg.DATASETS.TEST:
        loader = task.build_test_loader(cfg, dataset_name)  # one loader serves every model
        for tag, model in models.items():
            evaluator = task.build_evaluator(cfg, dataset_name, output_dir, tag, iteration, _config_path(cfg))
            res = inference_on_dataset(model, loader, evaluator)
            results[tag][dataset_name] = res
            if comm.is_main_process():
                logger.info("Evaluation of the %s on %s:", tag, dataset_name)
                print_csv_format(res)
    return results
