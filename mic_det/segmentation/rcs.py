"""DAFormer's rare-class sampling (RCS) of the labelled source stream (``SEG.RCS.*``).

Synthetic sources are dominated by a few classes (road, building, sky hold
most GTA5 pixels; train, motorcycle, bicycle a fraction of a percent), so a
uniformly sampled source stream shows the rare classes too seldom for them
to be learnt before self-training confirms their confusion with the
frequent ones. RCS (Hoyer et al., DAFormer, CVPR 2022; MIC's segmentation
runs use it) samples classes instead of images:

* f_c = share of all labelled source pixels that are class c (every pixel
  counts: the reference sums every image's count of c);
* P(c) = softmax((1 - f_c) / T) over the classes present, T = ``SEG.RCS.TEMPERATURE``;
* a sample: a class c ~ P, then an image uniformly among the source images
  with more than ``SEG.RCS.MIN_PIXELS`` pixels of c (the reference's strict >).

Two deviations from lhoyer/DAFormer (``mmseg/datasets/uda_dataset.py``):
the reference re-crops up to 10 times until the crop holds enough of c;
here the source mapper crops once (the draw picks the image, not the crop).
The reference asserts that every class has a candidate image; here a class
with none is left out and P renormalised over the rest (a warning names it).

The per-image class counts are read once, from each record's
``sem_seg_file_name`` through the dataset's own label reader
(:func:`~mic_det.segmentation.labels.read_dataset_label`), shared between
ranks, and cached as JSON in ``OUTPUT_DIR`` (GTA5 has 25k labels of 2 Mpx
each; a resumed run should not decode them again): see :func:`source_class_counts`.
"""
import hashlib
import json
import logging
import os
import re
import time
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from detectron2.config import CfgNode
from detectron2.data import MetadataCatalog
from detectron2.data.samplers import RepeatFactorTrainingSampler
from detectron2.utils import comm
from torch.utils.data import DataLoader, Dataset, Sampler

from .labels import IGNORE, read_dataset_label

__all__ = ["RareClassDistribution", "build_rcs_sampler", "image_class_counts", "rare_class_distribution",
           "rcs_cache_path", "source_class_counts"]

logger = logging.getLogger(__name__)

#: Bumped when the cache's content changes meaning; older files are then recomputed.
CACHE_VERSION = 1


# ------------------------------------------------------------ label statistics
class _LabelClassCounts(Dataset):
    """Record i -> {train id: pixels} of its label (ignore excluded), read by its dataset's rules."""

    def __init__(self, dataset_dicts: Sequence[dict]):
        self.dicts = dataset_dicts

    def __len__(self) -> int:
        return len(self.dicts)

    def __getitem__(self, i: int) -> Dict[int, int]:
        d = self.dicts[i]
        label = read_dataset_label(d["dataset_name"], d["sem_seg_file_name"])
        n = np.bincount(label.ravel(), minlength=IGNORE + 1)
        return {int(c): int(n[c]) for c in np.flatnonzero(n) if c != IGNORE}


def _as_is(sample):
    return sample


def image_class_counts(dataset_dicts: Sequence[dict], num_workers: int = 0) -> List[Dict[int, int]]:
    """Per record, the pixels of each class in its label, as ``{train id: pixels}`` (classes with > 0).

    Read through a DataLoader, so ``DATALOADER.NUM_WORKERS`` processes decode in parallel.
    """
    for d in dataset_dicts:
        if not d.get("sem_seg_file_name") or not d.get("dataset_name"):
            raise ValueError(
                f"SEG.RCS.ENABLED needs labelled source records (sem_seg_file_name, dataset_name); "
                f"{d.get('file_name', d)} has none"
            )
    loader = DataLoader(_LabelClassCounts(dataset_dicts), batch_size=None, shuffle=False,
                        num_workers=num_workers, collate_fn=_as_is)
    return list(loader)


def rcs_cache_path(output_dir: str, dataset_names: Sequence[str]) -> str:
    """``OUTPUT_DIR/rcs_class_stats_<names>.json``: one file per set of source datasets.

    ``SEG.RCS.MIN_PIXELS`` is not part of the name: the file holds every
    class count (> 0) of every image, and the threshold is applied on load,
    so changing it does not re-read the labels.
    """
    tag = re.sub(r"[^A-Za-z0-9_.+-]", "_", "+".join(dataset_names))
    if len(tag) > 100:
        tag = tag[:80] + "-" + hashlib.sha1(tag.encode()).hexdigest()[:12]
    return os.path.join(output_dir, f"rcs_class_stats_{tag}.json")


def _read_cache(path: str, files: List[str]) -> Optional[List[Dict[int, int]]]:
    """The cached counts if ``path`` holds them for exactly these label files, in this order."""
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        logger.warning("RCS: ignoring unreadable class-statistics cache %s (%s)", path, e)
        return None
    if data.get("version") != CACHE_VERSION or data.get("files") != files:
        logger.warning("RCS: %s was written for other label files; reading the labels again.", path)
        return None
    return [{int(c): int(n) for c, n in counts.items()} for counts in data["class_counts"]]


def _write_cache(path: str, names: List[str], files: List[str], counts: List[Dict[int, int]]) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump({"version": CACHE_VERSION, "datasets": names, "files": files,
                   "class_counts": [{str(c): n for c, n in sorted(x.items())} for x in counts]}, f)
    os.replace(tmp, path)  # a run stopped mid-write leaves no half file under the real name


def source_class_counts(dataset_dicts: Sequence[dict], output_dir: str, num_workers: int = 0) -> List[Dict[int, int]]:
    """:func:`image_class_counts` of the source records, from the cache in ``output_dir`` when it is valid.

    The cache is valid when it lists the same label files in the same order
    (a name registered again with other folders is read again). Without it,
    each rank reads its share of the labels and the counts are gathered; the
    main process writes the cache. Every rank must call this (collectives).
    """
    names = list(dict.fromkeys(d.get("dataset_name", "") for d in dataset_dicts))
    files = [d.get("sem_seg_file_name", "") for d in dataset_dicts]
    path = rcs_cache_path(output_dir, names)
    cached = _read_cache(path, files)
    if all(comm.all_gather(cached is not None)):  # one decision for all ranks
        logger.info("RCS: class statistics of %d source labels read from %s.", len(files), path)
        return cached
    rank, world = comm.get_rank(), comm.get_world_size()
    logger.info("RCS: reading %d source labels for their class statistics (once; cached in %s) ...",
                len(files), path)
    start = time.perf_counter()
    shards = comm.all_gather(image_class_counts(dataset_dicts[rank::world], num_workers))
    counts: List[Dict[int, int]] = [{}] * len(dataset_dicts)
    for r, shard in enumerate(shards):
        counts[r::world] = shard
    if comm.is_main_process():
        _write_cache(path, names, files, counts)
    comm.synchronize()
    logger.info("RCS: class statistics of %d labels in %.1f s.", len(files), time.perf_counter() - start)
    return counts


# --------------------------------------------------------- the distribution
@dataclass
class RareClassDistribution:
    """P(c) and the candidate images of each class that can be drawn."""

    #: Train ids that can be drawn.
    classes: List[int]
    #: P(c) of each of :attr:`classes` (sums to 1).
    probs: np.ndarray
    #: f_c of each of :attr:`classes` (share of all labelled pixels).
    frequencies: np.ndarray
    #: Per class of :attr:`classes`: indices of the images with more than MIN_PIXELS pixels of it.
    images: List[List[int]]
    #: Classes present but with no candidate image (left out of P).
    dropped: List[int]

    def image_weights(self, num_images: int) -> np.ndarray:
        """w_i = sum over classes c of image i of P(c) / n_c: the chance that one draw is image i."""
        w = np.zeros(num_images, dtype=np.float64)
        for p, idx in zip(self.probs, self.images):
            w[idx] += p / len(idx)
        return w


def rare_class_distribution(counts: Sequence[Dict[int, int]], temperature: float,
                            min_pixels: int) -> RareClassDistribution:
    """RCS's P(c) = softmax((1 - f_c) / T) from per-image class counts, and each class's candidate images."""
    if temperature <= 0:
        raise ValueError(f"SEG.RCS.TEMPERATURE must be > 0, got {temperature}")
    totals: Dict[int, int] = {}
    for image in counts:
        for c, n in image.items():
            totals[c] = totals.get(c, 0) + n
    if not totals:
        raise ValueError("SEG.RCS: the source labels hold no labelled pixel")
    present = sorted(totals)
    freq = np.array([totals[c] for c in present], dtype=np.float64)
    freq /= freq.sum()
    logits = (1.0 - freq) / temperature
    probs = np.exp(logits - logits.max())
    images = [[i for i, image in enumerate(counts) if image.get(c, 0) > min_pixels] for c in present]
    keep = [k for k, idx in enumerate(images) if idx]
    dropped = [present[k] for k, idx in enumerate(images) if not idx]
    if not keep:
        raise ValueError(f"SEG.RCS: no source image has more than SEG.RCS.MIN_PIXELS ({min_pixels}) pixels of "
                         f"any class; lower it (it counts pixels of the label PNG at its stored size)")
    p = probs[keep] / probs[keep].sum()
    return RareClassDistribution([present[k] for k in keep], p, freq[keep], [images[k] for k in keep], dropped)


def _log_distribution(dist: RareClassDistribution, class_names: Sequence[str], num_images: int, weights) -> None:
    name = lambda c: class_names[c] if c < len(class_names) else str(c)  # noqa: E731
    order = np.argsort(-dist.probs)
    logger.info("RCS: P(class) [f = pixel share, n = candidate images] over %d source images: %s", num_images,
                ", ".join(f"{name(dist.classes[k])} {dist.probs[k]:.3f} [f {dist.frequencies[k]:.4f}, "
                          f"n {len(dist.images[k])}]" for k in order))
    if dist.dropped:
        logger.warning("RCS: no source image has more than SEG.RCS.MIN_PIXELS pixels of %s: never drawn for it.",
                       ", ".join(name(c) for c in dist.dropped))
    never = int((weights == 0).sum())
    if never:
        logger.info("RCS: %d of %d source images are never drawn (no class above SEG.RCS.MIN_PIXELS).",
                    never, num_images)


# ------------------------------------------------------------------ sampler
def build_rcs_sampler(cfg: CfgNode, dataset_dicts: Sequence[dict]) -> Sampler:
    """The source stream's sampler under ``SEG.RCS``: Detectron2's ``RepeatFactorTrainingSampler``.

    Repeat factors r_i = N w_i (mean 1), w_i = :meth:`RareClassDistribution.image_weights`:
    drawing c ~ P then an image among the n_c holding c picks image i with
    probability w_i, so an image stream with these frequencies is RCS's
    stream (the class is never needed after the draw, since the crop is not redone).

    Why Detectron2's sampler rather than i.i.d. ``torch.multinomial`` draws: a
    measurement of whether its stochastic rounding distorts small sets. Five
    sets of 2, 3 and 6 images (r_i from 0.003 to 6; T 0.01, 0.1, 1), 40 seeds,
    total variation between the image frequencies of the first K draws and w:
    RepeatFactor 0.002-0.009 at K = 1k and 0.0003-0.0009 at 100k, multinomial
    0.002-0.025 and 0.0002-0.0026 (as close where one image takes 99.6% of
    the draws, else up to 2.8x farther than RepeatFactor, whose per-epoch
    shuffle stratifies); the largest |mean over the seeds - w_i| was 0.0021
    (RepeatFactor) vs 0.0037 (multinomial) at 1k, 0.0002 vs 0.0005 at 100k:
    no bias beyond the seeds' noise. On the built-in 400-image set
    (MIN_PIXELS 30, T 0.01, 5 seeds) the implied class frequencies were
    0.0027 (RepeatFactor) vs 0.0035 (multinomial) from P in total variation
    at 2k draws, 0.0003 vs 0.0005 at 200k. So no distortion, and the stream is the one Detectron2's
    samplers give: seeded (the shared seed, as ``TrainingSampler``), sharded by
    rank, infinite; :class:`~mic_det.data.build.ResumableSampler` skips in it on resume.
    """
    rcs = cfg.SEG.RCS
    counts = source_class_counts(dataset_dicts, cfg.OUTPUT_DIR, cfg.DATALOADER.NUM_WORKERS)
    dist = rare_class_distribution(counts, rcs.TEMPERATURE, rcs.MIN_PIXELS)
    weights = dist.image_weights(len(dataset_dicts))
    meta = MetadataCatalog.get(dataset_dicts[0]["dataset_name"])
    _log_distribution(dist, meta.get("stuff_classes", []), len(dataset_dicts), weights)
    repeat_factors = torch.as_tensor(weights * len(dataset_dicts), dtype=torch.float32)
    return RepeatFactorTrainingSampler(repeat_factors)
