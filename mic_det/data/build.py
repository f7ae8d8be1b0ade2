"""Train loaders for the two streams: labelled source and unlabelled target.

Both loaders sample through :class:`ResumableSampler`, so a resumed run
continues each stream where the interrupted run stopped instead of replaying
it from the start (Detectron2's own loaders restart their streams).
"""
import itertools
from typing import Callable, Iterator, Optional

from detectron2.config import CfgNode
from detectron2.data import build_detection_train_loader, get_detection_dataset_dicts
from detectron2.data.build import _train_loader_from_config
from detectron2.data.samplers import TrainingSampler
from torch.utils.data import Sampler

__all__ = ["ResumableSampler", "build_source_loader", "build_target_loader", "target_batch_size"]


class ResumableSampler(Sampler):
    """Wraps an infinite (per-rank) sampler and skips its first ``skip`` indices.

    The skip is set by the trainer after it has read the checkpoint and before
    the loader's iterator is created (the sampler is copied into the workers
    then), so skipping costs index generation only, never image decoding.
    """

    def __init__(self, sampler: Sampler):
        self.sampler = sampler
        self.skip = 0

    def __iter__(self) -> Iterator[int]:
        return itertools.islice(iter(self.sampler), self.skip, None)


#: Any non-None sampler makes Detectron2's ``_train_loader_from_config`` skip building its own.
_CHOSEN_LATER = object()


def target_batch_size(cfg: CfgNode) -> int:
    """Target images per step across all workers (-1 = as many as source images)."""
    n = cfg.DATALOADER.TARGET_IMS_PER_BATCH
    return cfg.SOLVER.IMS_PER_BATCH if n < 0 else n


def _loader(kwargs: dict):
    """Detectron2's train loader with its sampler made resumable.

    The sampler and the mapper are kept on the loader, for the trainer to set
    the resume position and to log how many unreadable images were skipped.
    """
    sampler = ResumableSampler(kwargs["sampler"])
    kwargs["sampler"] = sampler
    loader = build_detection_train_loader(**kwargs)
    loader.resumable_sampler = sampler
    loader.mapper = kwargs["mapper"]
    return loader


def build_source_loader(
    cfg: CfgNode,
    mapper: Callable,
    dataset: Optional[list] = None,
    sampler_for: Optional[Callable[[list], Optional[Sampler]]] = None,
):
    """Detectron2's train loader over ``DATASETS.TRAIN`` through the task's labelled ``mapper``.

    ``sampler_for(dataset_dicts)`` may return the stream's sampler (the task's
    :meth:`~mic_det.task.MICTask.build_source_sampler`, e.g. segmentation's
    rare-class sampling); None keeps Detectron2's ``DATALOADER.SAMPLER_TRAIN``.
    Either way the sampler is wrapped in :class:`ResumableSampler`.
    """
    sampler = None
    if sampler_for is not None:
        # Detectron2 loads the dicts (with its filters) without building a sampler; then the task chooses.
        dataset = _train_loader_from_config(cfg, mapper=mapper, dataset=dataset, sampler=_CHOSEN_LATER)["dataset"]
        sampler = sampler_for(dataset)
    return _loader(_train_loader_from_config(cfg, mapper=mapper, dataset=dataset, sampler=sampler))


def build_target_loader(cfg: CfgNode, mapper: Callable):
    """Loader over ``DATASETS.TRAIN_TARGET`` through the task's unlabelled ``mapper`` (no labels).

    Images are never dropped for having no annotations (the target is
    unlabelled by assumption), unlike Detectron2's FILTER_EMPTY_ANNOTATIONS.
    """
    if not cfg.DATASETS.TRAIN_TARGET:
        raise ValueError("MIC.ENABLED / UDA.ENABLED need DATASETS.TRAIN_TARGET (the unlabelled target set)")
    dicts = get_detection_dataset_dicts(cfg.DATASETS.TRAIN_TARGET, filter_empty=False)
    kwargs = _train_loader_from_config(cfg, mapper=mapper, dataset=dicts, sampler=TrainingSampler(len(dicts)))
    kwargs["total_batch_size"] = target_batch_size(cfg)
    return _loader(kwargs)
