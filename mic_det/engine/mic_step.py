"""One MIC training step, for any task: source losses, teacher pseudo-labels, masked target losses, EMA.

::

    source batch --> student --> supervised losses (+ domain losses with the target batch)
    target batch --> teacher (eval*, no_grad) --> task.pseudo_label --> pseudo-targets + quality
                \\--> task.preprocess --> augment --> block mask --> task.masked_inputs
                     --> student(masked view, pseudo-targets) --> *_mic losses
    sum --> backward --> optimizer step --> EMA update of the teacher

(*) with ``MIC.TEACHER_BN_MODE`` "train" the teacher's BatchNorm layers use the
target batch's statistics (:func:`~mic_det.teacher.batch_norm_on_batch_statistics`).

With ``SOLVER.SAM.ENABLED`` (SDAT's sharpness-aware step, :mod:`.sam`) a first
pass comes before all this: the source batch's supervised losses, backward,
w <- w + e_w; the step above then runs at the perturbed weights, which are
restored before the optimizer steps with its gradients.

What is task-specific (pseudo-targets, where they go in the input, the
guard's source signals) is asked of the :class:`~mic_det.task.MICTask`.
"""
import contextlib
import logging
import time
from typing import Any, Dict, Iterable, List, Optional

import torch
from detectron2.config import CfgNode
from detectron2.engine import SimpleTrainer, TrainerBase
from detectron2.utils import comm
from detectron2.utils.events import get_event_storage
from torch.nn.parallel import DistributedDataParallel

from ..augment import MaskAugmentation
from ..data.build import target_batch_size
from ..masking import BlockMaskGenerator, apply_block_mask, mask_ratio_drawn
from ..teacher import TEACHER_BN_MODES, EMATeacher, batch_norm_on_batch_statistics, ramped_alpha, unwrap_model
from ..utils import set_torch_rng_states
from .optimizer_state import optimizer_param_names, remap_optimizer_state
from .sam import SAMPerturbation, all_reduce_gradients, sam_perturb, sam_restore
from ..task import MICTask, build_task

__all__ = ["MICStep", "resolve_teacher_bn_mode"]

logger = logging.getLogger(__name__)


@contextlib.contextmanager
def frozen_norm_statistics(model: torch.nn.Module):
    """BatchNorm layers normalise with their batch's statistics but leave their running ones untouched.

    momentum 0 makes the running update ``(1 - 0) * running + 0 * batch``, a no-op,
    while training-mode normalisation and gradients are unchanged. The batch counter
    is restored too: a ``momentum=None`` layer averages with weight
    ``1 / num_batches_tracked``, so a forward that counted would shift its later updates.
    """
    layers = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
              and m.track_running_stats and m.training]
    saved = [(m.momentum, m.num_batches_tracked.clone()) for m in layers]
    for m in layers:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, (momentum, tracked) in zip(layers, saved):
            m.momentum = momentum
            m.num_batches_tracked.copy_(tracked)


class MICStep(SimpleTrainer):
    """The training step of mic_det; with MIC and UDA off it is Detectron2's SimpleTrainer step.

    Args:
        cfg: the full config (reads ``MIC.*``, ``UDA.ENABLED``, ``SOLVER.AMP``, ``SOLVER.SAM``).
        model: the student (possibly DistributedDataParallel-wrapped).
        source_loader, target_loader: infinite loaders of mapped dataset dicts;
            ``target_loader`` may be None when neither MIC nor UDA is on.
        optimizer: the student's optimizer.
        teacher: the EMA teacher (None when MIC is off).
        task: what is task-specific (default: the task ``MODEL.TASK`` names).
    """

    def __init__(
        self,
        cfg: CfgNode,
        model: torch.nn.Module,
        source_loader: Iterable,
        target_loader: Optional[Iterable],
        optimizer: torch.optim.Optimizer,
        teacher: Optional[EMATeacher] = None,
        task: Optional[MICTask] = None,
    ):
        super().__init__(model, source_loader, optimizer)
        self.cfg = cfg
        self.task = task if task is not None else build_task(cfg)
        self.target_loader = target_loader
        self._target_iter = None
        self.teacher = teacher
        self.mic_enabled = cfg.MIC.ENABLED
        self.uda_enabled = cfg.UDA.ENABLED
        self.uda_start_iter = cfg.UDA.START_ITER
        if (self.mic_enabled or self.uda_enabled) and target_loader is None:
            raise ValueError("MIC/UDA training needs a target loader (DATASETS.TRAIN_TARGET)")
        if self.mic_enabled and teacher is None:
            raise ValueError("MIC.ENABLED needs an EMA teacher")
        mic = cfg.MIC
        self.burn_in_iters = mic.BURN_IN_ITERS
        self.ema_alpha = mic.EMA_ALPHA
        self.loss_weight = mic.LOSS_WEIGHT
        self.masked_updates_norm_stats = mic.MASKED_VIEW_UPDATES_NORM_STATS
        self.mask_source = mic.MASK_SOURCE
        self.log_quality = mic.LOG_PSEUDO_LABEL_QUALITY
        self.mask_generator = BlockMaskGenerator(mic.MASK_BLOCK_SIZE, mic.MASK_RATIO)
        self.teacher_bn_mode = resolve_teacher_bn_mode(cfg, self.task)
        if self.mic_enabled:
            logger.info("MIC teacher: pseudo-labels with BatchNorm on %s (MIC.TEACHER_BN_MODE %s).",
                        "the target batch's statistics" if self.teacher_bn_mode == "train" else "running statistics",
                        cfg.MIC.TEACHER_BN_MODE)
        student = unwrap_model(model)
        self.pixel_mean = student.pixel_mean
        self.pixel_std = student.pixel_std
        self.mask_augmentation = None
        if mic.MASK_AUG.ENABLED:
            self.mask_augmentation = MaskAugmentation.from_config(cfg)  # the student normalises with these
        self.amp = cfg.SOLVER.AMP.ENABLED and student.device.type == "cuda"
        if cfg.SOLVER.AMP.ENABLED and not self.amp:
            logger.warning("SOLVER.AMP.ENABLED is set but the model is on %s: training in fp32.", student.device)
        self.grad_scaler = torch.cuda.amp.GradScaler() if self.amp else None
        sam = cfg.SOLVER.SAM
        self.sam_enabled = sam.ENABLED
        self.sam_rho = sam.RHO
        self.sam_adaptive = sam.ADAPTIVE
        if self.sam_enabled and self.sam_rho < 0:
            raise ValueError(f"SOLVER.SAM.RHO must be >= 0, got {self.sam_rho}")
        # Set on resume: torch's RNG as the checkpoint saved it, restored after
        # the first batch is fetched (see MICTrainer.resume_or_load).
        self.torch_rng_states_to_restore = None

    # ------------------------------------------------------------------ state
    def state_dict(self):
        ret = super().state_dict()
        ret["optimizer_param_names"] = optimizer_param_names(self.model, self.optimizer)
        if self.grad_scaler is not None:
            ret["grad_scaler"] = self.grad_scaler.state_dict()
        return ret

    def load_state_dict(self, state_dict):
        names = optimizer_param_names(self.model, self.optimizer)
        saved_names = state_dict.get("optimizer_param_names")
        if saved_names is None or saved_names == names:
            # Same parameters (or a checkpoint without names): Detectron2's exact load.
            try:
                super().load_state_dict(state_dict)
            except ValueError as e:  # a checkpoint of another parameter set, without names
                TrainerBase.load_state_dict(self, state_dict)
                logger.warning("The checkpoint's optimizer state does not fit this model (%s): "
                               "the optimizer starts fresh (momentum 0).", e)
        else:
            # Another parameter set (e.g. a source-only checkpoint continued with SADA).
            TrainerBase.load_state_dict(self, state_dict)
            remapped, restored = remap_optimizer_state(state_dict["optimizer"], saved_names, self.optimizer, names)
            self.optimizer.load_state_dict(remapped)
            logger.info(
                "Optimizer state restored by name for %d of %d parameters; the others "
                "(not in the checkpoint: %s) start fresh.",
                restored, len(names), ", ".join(sorted(set(names) - set(saved_names))[:5]) or "none",
            )
        if self.grad_scaler is not None and "grad_scaler" in state_dict:
            self.grad_scaler.load_state_dict(state_dict["grad_scaler"])

    @property
    def mic_active(self) -> bool:
        """MIC acts from the first iteration after the burn-in."""
        return self.mic_enabled and self.iter >= self.burn_in_iters

    @property
    def uda_active(self) -> bool:
        """Domain alignment acts from ``UDA.START_ITER`` on."""
        return self.uda_enabled and self.iter >= self.uda_start_iter

    def start_streams(self, start_iter: int) -> None:
        """Start both data streams at the batch that iteration ``start_iter`` consumes.

        The source stream gives one batch per step; the target stream one per
        step that uses it (from ``UDA.START_ITER`` with UDA, from the end of
        the burn-in with MIC, whichever comes first). Loaders without a resumable sampler restart instead.
        """
        per_rank = {"source": self.cfg.SOLVER.IMS_PER_BATCH, "target": target_batch_size(self.cfg)}
        world = comm.get_world_size()
        first_target_step = min(
            self.uda_start_iter if self.uda_enabled else start_iter,
            self.burn_in_iters if self.mic_enabled else start_iter,
        )
        target_steps = max(0, start_iter - first_target_step)
        for name, loader, steps in (
            ("source", self.data_loader, start_iter),
            ("target", self.target_loader, target_steps),
        ):
            sampler = getattr(loader, "resumable_sampler", None)
            if sampler is not None:
                sampler.skip = steps * per_rank[name] // world
            elif steps:
                logger.warning("The %s loader cannot skip batches: its stream restarts on resume.", name)
        self._data_loader_iter_obj = iter(self.data_loader)
        if self.target_loader is not None:
            self._target_iter = iter(self.target_loader)

    def _next_target(self) -> List[Dict]:
        if self._target_iter is None:
            self._target_iter = iter(self.target_loader)
        return next(self._target_iter)

    # ------------------------------------------------------------------- step
    def run_step(self):
        assert self.model.training, "[MICStep] model was changed to eval mode!"
        start = time.perf_counter()
        source = next(self._data_loader_iter)
        target = self._next_target() if (self.uda_active or self.mic_active) else None
        data_time = time.perf_counter() - start
        if self.torch_rng_states_to_restore is not None:
            set_torch_rng_states(self.torch_rng_states_to_restore)
            self.torch_rng_states_to_restore = None

        if self.mic_enabled and self.burn_in_iters > 0 and self.iter == self.burn_in_iters:
            logger.info("Burn-in over at iteration %d: teacher <- student, MIC on.", self.iter)
            self.teacher.reset(self.model)

        perturbation = self._sam_first_pass(source) if self.sam_enabled else None
        try:
            loss_dict = self._forward_backward(source, target)
        finally:
            # Back to w before anything else sees the weights (hooks, the optimizer, a checkpoint
            # written because the forward raised); the gradients stay those taken at w + e_w.
            if perturbation is not None:
                sam_restore(perturbation)
        self.after_backward()
        self._write_metrics(loss_dict, data_time)
        self._log_skipped_images()
        if self.grad_scaler is not None:
            self.grad_scaler.step(self.optimizer)
            self.grad_scaler.update()
        else:
            self.optimizer.step()
        if self.mic_active:
            alpha = self.ema_alpha
            if self.cfg.MIC.EMA_RAMP:
                alpha = ramped_alpha(alpha, self.iter - self.burn_in_iters)
            self.teacher.update(self.model, alpha)

    def _autocast(self):
        return torch.autocast("cuda", dtype=torch.float16) if self.amp else contextlib.nullcontext()

    def _backward(self, losses: torch.Tensor) -> None:
        self.optimizer.zero_grad()
        if self.grad_scaler is not None:
            self.grad_scaler.scale(losses).backward()
        else:
            losses.backward()

    def _forward_backward(self, source: List[Dict], target: Optional[List[Dict]]) -> Dict[str, torch.Tensor]:
        """Every loss of the step (source, domain alignment, MIC), summed and back-propagated."""
        with self._autocast():
            if self.uda_active:
                loss_dict = self.model(source, target_inputs=target)
            else:
                loss_dict = self.model(source)
            if self.mic_enabled:
                self.task.log_source_signals(source, get_event_storage())
            if self.mask_source and self.mic_active:
                loss_dict.update(self._masked_losses(source, self.task.source_targets(source), "_masked_src"))
            if self.mic_active:
                loss_dict.update(self._mic_losses(target, source))
            losses = sum(loss_dict.values())
        self._backward(losses)
        return loss_dict

    def _sam_first_pass(self, source: List[Dict]) -> SAMPerturbation:
        """SAM's first pass: the gradient of the source batch's supervised losses at w, then w <- w + e_w.

        The loss is ``model(source)``'s loss dict, the source batch alone (no target
        batch, no teacher, no masking): classification ``loss_cls``; detection all of
        Detectron2's supervised losses (RPN objectness and box regression, RoI
        classification and box regression); segmentation ``loss_sem_seg``. SDAT
        sharpens the task loss only, never the adversarial one. In train mode this
        forward also updates BatchNorm running statistics, as the reference's does.

        Under DistributedDataParallel the pass runs under ``no_sync()`` (a source-only
        forward leaves the domain discriminators without gradients, which DDP would
        reject at the next forward) and the gradients are averaged explicitly, so all
        ranks perturb by the e_w of the global batch. Under AMP the loss-scaled
        gradients give the same direction; an overflow (non-finite norm) skips the
        perturbation for that step, logged as ``sam/skipped``.
        """
        params = list({id(p): p for group in self.optimizer.param_groups for p in group["params"]}.values())
        ddp = isinstance(self.model, DistributedDataParallel)
        with self.model.no_sync() if ddp else contextlib.nullcontext():
            with self._autocast():
                loss_dict = self.model(source)
                losses = sum(loss_dict.values())
            self._backward(losses)
        if ddp:
            all_reduce_gradients(params)
        perturbation = sam_perturb(params, self.sam_rho, self.sam_adaptive)
        self.optimizer.zero_grad()
        storage = get_event_storage()
        norm = perturbation.grad_norm
        if self.grad_scaler is not None:
            norm /= self.grad_scaler.get_scale()
        storage.put_scalar("sam/grad_norm", norm)
        storage.put_scalar("sam/first_pass_loss", float(losses.detach()))
        storage.put_scalar("sam/skipped", float(perturbation.skipped), smoothing_hint=False)
        if perturbation.skipped:
            logger.warning("SAM: the first pass's gradient norm is %s at iteration %d: no perturbation this step.",
                           perturbation.grad_norm, self.iter)
        return perturbation

    def _log_skipped_images(self) -> None:
        """Unreadable training images skipped so far, per stream (logged once any is)."""
        for name, loader in (("source", self.data_loader), ("target", self.target_loader)):
            mapper = getattr(loader, "mapper", None)
            skipped = getattr(mapper, "num_skipped", 0)
            if skipped:
                get_event_storage().put_scalar(f"data/skipped_images_{name}", skipped, smoothing_hint=False)

    # -------------------------------------------------------------------- MIC
    def pseudo_label(self, target: List[Dict]) -> List[Any]:
        """The teacher's pseudo-targets for the unmasked target batch (see :meth:`MICTask.pseudo_label`).

        The teacher is in eval mode; with ``MIC.TEACHER_BN_MODE`` "train" its BatchNorm
        layers normalise with the target batch's own statistics (running ones untouched).
        """
        norm = batch_norm_on_batch_statistics(self.teacher.model) if self.teacher_bn_mode == "train" \
            else contextlib.nullcontext()
        with torch.no_grad(), norm:
            return self.task.pseudo_label(self.teacher.model, target)

    def _mic_losses(self, target: List[Dict], source: Optional[List[Dict]] = None) -> Dict[str, torch.Tensor]:
        """The teacher's pseudo-labels, the task's own self-training losses on them, the masked losses."""
        pseudo = self.pseudo_label(target)
        storage = get_event_storage()
        stats = self.task.pseudo_label_stats(pseudo)
        storage.put_scalars(**{f"mic/{k}": v for k, v in stats.items()})
        storage.put_scalar("guard/pseudo_per_image", stats[self.task.pseudo_count_stat], smoothing_hint=False)
        if self.log_quality:
            quality = self.task.pseudo_label_quality(target, pseudo)
            if quality is not None:
                storage.put_scalars(**{f"mic/pseudo_{k}": v for k, v in quality.items()}, smoothing_hint=False)
        # The unwrapped student, as for the masked view (see _masked_losses).
        losses = self.task.self_training_losses(unwrap_model(self.model), source or [], target, pseudo)
        if self.loss_weight == 0:  # self-training alone (e.g. DACS without masking): no masked forward
            return losses
        keep = [i for i, p in enumerate(pseudo) if self.task.has_pseudo_label(p)]
        if not keep:
            # Images without pseudo-labels are left out; with none left the MIC
            # loss is exactly zero (never NaN) and the step is a source step.
            zero = self.pixel_mean.new_zeros(())
            losses.update({f"{k}_mic": zero for k in self.task.loss_names})
            return losses
        losses.update(self._masked_losses([target[i] for i in keep], [pseudo[i] for i in keep], "_mic"))
        return losses

    def _masked_losses(self, inputs: List[Dict], targets: List[Any], suffix: str) -> Dict[str, torch.Tensor]:
        """Student losses on block-masked copies of ``inputs`` against ``targets``.

        A masked view with non-finite pixels, or a non-finite loss on it, raises
        FloatingPointError naming the loss, the iteration and the images.
        """
        student = unwrap_model(self.model)
        with torch.no_grad():
            images = self.task.preprocess(student, inputs)
            tensor = images.tensor
            if self.mask_augmentation is not None:
                tensor = self.mask_augmentation(tensor, images.image_sizes)
            mask = self.mask_generator(tensor.shape[0], tensor.shape[-2], tensor.shape[-1], device=tensor.device)
            tensor = apply_block_mask(tensor, mask, images.image_sizes)
            # Back to pixel space: the student normalises its inputs itself, so
            # the masked view enters through its usual forward.
            pixels = tensor * self.pixel_std + self.pixel_mean
            if not bool(torch.isfinite(pixels).all()):
                self._raise_non_finite_view(pixels, images.tensor, inputs, suffix)
        storage = get_event_storage()
        storage.put_scalar(f"mic/mask_ratio{suffix}", mask_ratio_drawn(mask, images.image_sizes))
        masked = self.task.masked_inputs(pixels, images.image_sizes, inputs, targets)
        if suffix == "_mic" and self.task.visualizing(storage):
            self.task.visualize(storage, student, inputs, masked)
        # The unwrapped student: DDP sees one forward per step, the supervised one, whose graph
        # already reaches every parameter this one uses. Its gradients still reach DDP's
        # all-reduce (hooked on the parameters), and a rank without pseudo-labels, which
        # skips this forward, leaves DDP's bookkeeping the same as a rank that runs it.
        with contextlib.nullcontext() if self.masked_updates_norm_stats else frozen_norm_statistics(student):
            losses = student(masked)
        losses = {f"{k}{suffix}": v * self.loss_weight for k, v in losses.items()}
        self._check_masked_losses(losses, inputs)
        return losses

    def _check_masked_losses(self, losses: Dict[str, torch.Tensor], inputs: List[Dict]) -> None:
        """Raise FloatingPointError naming the loss, the iteration and the images if a masked loss is not finite.

        One host read for all the losses; the names are looked up only when one is bad.
        """
        if not losses:
            return
        values = torch.cat([v.detach().float().reshape(-1) for v in losses.values()])
        if bool(torch.isfinite(values).all()):
            return
        bad = [k for k, v in losses.items() if not bool(torch.isfinite(v.detach()).all())]
        raise FloatingPointError(
            f"The masked view's loss {', '.join(bad)} is not finite "
            f"({', '.join(f'{k} = {float(losses[k].detach().float().reshape(-1)[0])}' for k in bad)}) "
            f"at iteration {self.iter}, on the images {_describe_inputs(inputs)}. The masked input "
            f"was finite: the student's forward on it produced the non-finite value."
        )

    def _raise_non_finite_view(self, pixels: torch.Tensor, normalized: torch.Tensor, inputs: List[Dict],
                               suffix: str) -> None:
        """Raise FloatingPointError for a masked view with non-finite pixels, saying which step made them."""
        per_image = ~torch.isfinite(pixels).flatten(1).all(dim=1)
        bad = [x for x, b in zip(inputs, per_image.tolist()) if b]
        if not bool(torch.isfinite(normalized).all()):
            cause = "the input images themselves (before augmentation and masking) are not finite"
        elif self.mask_augmentation is not None:
            cause = f"the mask augmentation (MIC.MASK_AUG, {self.mask_augmentation!r}) produced it"
        else:
            cause = "the block mask produced it"
        raise FloatingPointError(
            f"The masked input (loss suffix {suffix}) has non-finite pixels at iteration {self.iter}, "
            f"on the images {_describe_inputs(bad)} (of {_describe_inputs(inputs)}): {cause}."
        )


def resolve_teacher_bn_mode(cfg: CfgNode, task: MICTask) -> str:
    """``MIC.TEACHER_BN_MODE``, with "auto" resolved to the task's :attr:`MICTask.teacher_bn_mode`.

    "train" normalises the teacher's BatchNorm over the target images of one step and
    process, so it needs at least two of them (a BatchNorm1d on one image is undefined).
    """
    mode = cfg.MIC.TEACHER_BN_MODE
    if mode == "auto":
        mode = task.teacher_bn_mode
    if mode not in TEACHER_BN_MODES:
        raise ValueError(f"MIC.TEACHER_BN_MODE must be 'auto' or one of {TEACHER_BN_MODES}, got {mode!r}")
    if mode == "train" and cfg.MIC.ENABLED:
        per_process = target_batch_size(cfg) // max(comm.get_world_size(), 1)
        if per_process < 2:
            raise ValueError(
                f"MIC.TEACHER_BN_MODE 'train' normalises the teacher's BatchNorm over the target batch, which "
                f"has {per_process} image per process here (DATALOADER.TARGET_IMS_PER_BATCH / SOLVER.IMS_PER_BATCH): "
                "give it at least 2, or set MIC.TEACHER_BN_MODE 'eval'.")
    return mode


def _describe_inputs(inputs: List[Dict]) -> str:
    """The images of a batch, by file name and image id where the dicts have them."""
    names = []
    for i, x in enumerate(inputs):
        parts = [f"{k}={x[k]!r}" for k in ("file_name", "image_id") if k in x]
        names.append(f"({', '.join(parts)})" if parts else f"(image {i} of the batch, unnamed)")
    return "[" + ", ".join(names) + "]"
