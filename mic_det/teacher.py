"""The EMA teacher: phi <- alpha * phi + (1 - alpha) * theta after every student step.

Kept as an ``nn.Module`` that owns a copy of the (unwrapped) student, so that

* it is a Detectron2 checkpointable: ``DetectionCheckpointer(model, dir, teacher=teacher)``
  saves it under the "teacher" key and restores it on resume (the reference code
  lost the teacher on resume);
* the EMA pairs student and teacher tensors by *name* on the unwrapped student, so
  a DistributedDataParallel student ("module." prefix) updates the same teacher as
  a plain one (the reference's EMA broke under DDP);
* it always predicts in eval mode, whatever ``.train()`` the trainer calls on it;
  :func:`batch_norm_on_batch_statistics` lets its BatchNorm layers normalise a
  batch with that batch's own statistics instead (``MIC.TEACHER_BN_MODE "train"``,
  as MIC's classification and segmentation code), without touching the running
  statistics the EMA keeps.
"""

import contextlib
import copy
from typing import Dict, Iterator, List, Tuple

import torch
from torch import nn
from torch.nn.parallel import DataParallel, DistributedDataParallel

__all__ = ["ramped_alpha", "unwrap_model", "EMATeacher", "teacher_weights_from_checkpoint",
           "batch_norm_on_batch_statistics", "TEACHER_BN_MODES"]

#: ``MIC.TEACHER_BN_MODE`` values: the BatchNorm mode of the teacher's pseudo-labelling forward.
TEACHER_BN_MODES = ("eval", "train")

_PREFIX = "model."


def unwrap_model(model: nn.Module) -> nn.Module:
    """Return the module inside any (nested) DistributedDataParallel / DataParallel."""
    while isinstance(model, (DistributedDataParallel, DataParallel)):
        model = model.module
    return model


def _check_same_names(
    kind: str, teacher: Dict[str, torch.Tensor], student: Dict[str, torch.Tensor]
) -> None:
    if teacher.keys() == student.keys():
        return
    missing = sorted(teacher.keys() - student.keys())
    extra = sorted(student.keys() - teacher.keys())
    raise KeyError(
        f"EMATeacher: the student's {kind} do not match the teacher's (was the student "
        f"changed after the teacher was built?). In the teacher only: {missing[:10]}; "
        f"in the student only: {extra[:10]}."
    )


TensorPairs = List[Tuple[torch.Tensor, torch.Tensor]]


def _paired(teacher: nn.Module, student: nn.Module) -> Tuple[TensorPairs, TensorPairs]:
    """Pair teacher and student tensors by name.

    Returns (floating-point pairs, other pairs): parameters and float buffers get
    averaged, integer buffers such as BatchNorm's ``num_batches_tracked`` copied.
    """
    student = unwrap_model(student)
    pairs: List[Tuple[str, torch.Tensor, torch.Tensor]] = []
    for kind, t_named, s_named in (
        ("parameters", teacher.named_parameters(), student.named_parameters()),
        ("buffers", teacher.named_buffers(), student.named_buffers()),
    ):
        t_named, s_named = dict(t_named), dict(s_named)
        _check_same_names(kind, t_named, s_named)
        pairs += [(name, t, s_named[name]) for name, t in t_named.items()]
    floats, others = [], []
    for name, t, s in pairs:
        if t.shape != s.shape:
            raise ValueError(
                f"EMATeacher: '{name}' has shape {tuple(t.shape)} in the teacher "
                f"but {tuple(s.shape)} in the student"
            )
        (floats if t.is_floating_point() else others).append((t, s.detach()))
    return floats, others


def _foreach_copy_(dst: List[torch.Tensor], src: List[torch.Tensor]) -> None:
    if hasattr(torch, "_foreach_copy_"):
        torch._foreach_copy_(dst, src)
    else:  # torch < 2.1
        for d, s in zip(dst, src):
            d.copy_(s)


class EMATeacher(nn.Module):
    """An exponential moving average of a student model, used as the MIC teacher.

    Attributes:
        model: the averaged copy of the student; its parameters never require grad.
    """

    def __init__(self, student: nn.Module):
        super().__init__()
        self.model = copy.deepcopy(unwrap_model(student))
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.train(False)

    def train(self, mode: bool = True) -> "EMATeacher":
        """Stay in eval mode whatever ``mode`` is.

        Trainers call ``.train()`` on everything they hold; the teacher must still
        predict as at test time (no dropout, BatchNorm on running statistics, and
        Detectron2's models return detections instead of losses).
        """
        return super().train(False)

    @torch.no_grad()
    def update(self, student: nn.Module, alpha: float) -> None:
        """teacher <- alpha * teacher + (1 - alpha) * student, tensor by tensor.

        Floating-point parameters and buffers (BatchNorm running statistics) are
        averaged; other buffers (``num_batches_tracked``) are copied. Tensors are
        paired by name on the unwrapped student, so DDP's "module." prefix is moot.
        """
        alpha = float(alpha)
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"EMA alpha must be in [0, 1], got {alpha}")
        floats, others = _paired(self.model, student)
        t_list, s_list = [t for t, _ in floats], [s for _, s in floats]
        if t_list and alpha == 0.0:
            _foreach_copy_(t_list, s_list)  # exact, even where the teacher was not finite
        elif t_list and alpha != 1.0:
            torch._foreach_mul_(t_list, alpha)
            torch._foreach_add_(t_list, s_list, alpha=1.0 - alpha)
        if others:
            _foreach_copy_([t for t, _ in others], [s for _, s in others])

    @torch.no_grad()
    def reset(self, student: nn.Module) -> None:
        """Make the teacher an exact copy of the student (e.g. when a burn-in ends)."""
        floats, others = _paired(self.model, student)
        pairs = floats + others
        if pairs:
            _foreach_copy_([t for t, _ in pairs], [s for _, s in pairs])

    def forward(self, *args, **kwargs):
        return self.model(*args, **kwargs)


@contextlib.contextmanager
def batch_norm_on_batch_statistics(model: nn.Module) -> Iterator[int]:
    """Inside: every BatchNorm layer of ``model`` normalises with its input batch's statistics.

    The rest of the model keeps its mode (an eval-mode Detectron2 model still returns
    predictions; dropout stays off). The layers' running statistics and batch counters
    are left exactly as they were: the forward does not update them (and any layer
    that updates them anyway, like Detectron2's ``NaiveSyncBatchNorm`` across
    processes, gets them restored). Detectron2's ``FrozenBatchNorm2d`` is not a
    BatchNorm layer here: its statistics are fixed by design. Yields how many
    layers it switched (0: the context changes nothing).

    MIC's classification and segmentation code does this for its EMA teacher
    (lhoyer/MIC ``cls/dalib/modules/teacher.py``, ``seg/mmseg/models/uda/dacs.py``:
    the teacher module is never put in eval mode, only its dropout is switched
    off), so the pseudo-labels come from BatchNorm on the target batch alone.
    Its teacher's running statistics are updated by those forwards but never read
    (it always predicts in train mode and is never evaluated); here they stay the
    EMA of the student's, which an evaluation of the teacher uses.
    """
    layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = []
    for m in layers:
        buffers = {k: b.detach().clone() for k, b in m.named_buffers(recurse=False) if b is not None}
        saved.append((m, m.training, m.track_running_stats, buffers))
        m.training = True
        m.track_running_stats = False  # batch statistics, no running update
    try:
        yield len(layers)
    finally:
        with torch.no_grad():
            for m, training, track, buffers in saved:
                m.training = training
                m.track_running_stats = track
                for k, b in buffers.items():
                    getattr(m, k).copy_(b)


def ramped_alpha(alpha: float, step: int) -> float:
    """The EMA weight at the ``step``-th teacher update (from 0): ``min(1 - 1 / (step + 1), alpha)``.

    The mean-teacher ramp DACS and DAFormer use (and MIC's segmentation and
    classification code with them): the first updates follow the student
    closely, so a teacher copied from an early student is not stuck with it.
    """
    return min(1.0 - 1.0 / (step + 1), float(alpha))


def teacher_weights_from_checkpoint(checkpoint: dict) -> Dict[str, torch.Tensor]:
    """The teacher's model weights from a checkpoint dict saved with ``teacher=EMATeacher``.

    ``DetectionCheckpointer(model, dir, teacher=teacher)`` stores
    ``teacher.state_dict()`` (keys "model.<name>") under "teacher"; this strips the
    prefix so the result loads straight into a bare detector, e.g. to evaluate
    the teacher alone.
    """
    if "teacher" not in checkpoint:
        raise KeyError(
            "checkpoint has no 'teacher' entry; was it trained with MIC? "
            f"(its entries: {sorted(checkpoint.keys())})"
        )
    state = checkpoint["teacher"]
    bad = [k for k in state if not k.startswith(_PREFIX)]
    if bad:
        raise KeyError(
            "checkpoint['teacher'] is not an EMATeacher state dict: "
            f"keys without '{_PREFIX}': {bad[:5]}"
        )
    return {k[len(_PREFIX) :]: v for k, v in state.items()}
