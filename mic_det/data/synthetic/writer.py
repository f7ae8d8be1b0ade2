"""Writing the built-in set: PNGs, COCO jsons and the info files (see :mod:`.layout`)."""
import json
import os
from typing import Dict, Iterable, List, Optional, Sequence, Union

import cv2
import numpy as np

from ..low_light import LowLight
from .layout import (
    IMAGE_NAME,
    INFO_FILE,
    NIGHT_INFO_FILE,
    NIGHT_SPLITS,
    SPLIT_DOMAIN,
    SPLITS,
    categories,
    domain_pair_info,
    image_rng,
    json_path,
    night_info,
)
from .scene import generate_scene
from .shifts import DEFAULT_ATMOSPHERIC_LIGHT, DEFAULT_BETA, DEFAULT_NIGHT

__all__ = ["DEFAULT_PARAMS", "write_domain_pair", "write_night_splits"]

# write_domain_pair's defaults (the set generated on first use), in one place.
DEFAULT_PARAMS = dict(
    seed=0, num_source_train=600, num_source_val=100, num_target_train=600, num_target_val=100,
    height=256, width=320, beta=DEFAULT_BETA, atmospheric_light=DEFAULT_ATMOSPHERIC_LIGHT, night=DEFAULT_NIGHT,
)


def _write_image(job: tuple) -> List[dict]:
    """Draw, shift (fog for target splits, night for night splits) and save one image."""
    root, split, index, seed, height, width, beta, atmospheric_light, night = job
    domain = SPLIT_DOMAIN[split]
    img, _, anns = generate_scene(
        image_rng(seed, split, index), height, width,
        beta if domain == "foggy" else 0.0, atmospheric_light, night if domain == "night" else None,
    )
    path = os.path.join(root, split, f"{index:06d}.png")
    if not cv2.imwrite(path, np.ascontiguousarray(img[:, :, ::-1]), [cv2.IMWRITE_PNG_COMPRESSION, 3]):
        raise OSError(f"could not write {path}")
    return anns


def _clear_split(root: str, split: str) -> None:
    """Remove this generator's images from an earlier set (and nothing else)."""
    folder = os.path.join(root, split)
    if os.path.isdir(folder):
        for name in os.listdir(folder):
            if IMAGE_NAME.match(name):
                os.remove(os.path.join(folder, name))
    os.makedirs(folder, exist_ok=True)


def _write_json(path: str, content: dict, **kwargs) -> None:
    """Write through a temporary file and rename, so no reader sees half a file."""
    tmp = os.path.join(os.path.dirname(path), f".tmp.{os.path.basename(path)}.{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(content, f, **kwargs)
        if kwargs.get("indent"):
            f.write("\n")
    os.replace(tmp, path)


def _write_splits(root: str, splits: Iterable[str], sizes: Dict[str, int], job_args: tuple, info: dict,
                  num_workers: int) -> Dict[str, str]:
    """Draw every image of ``splits`` and write one COCO json per split."""
    pool = None
    if num_workers > 0:
        from multiprocessing import get_context

        pool = get_context("spawn" if os.name == "nt" else "fork").Pool(num_workers)
    written = {}
    try:
        for split in splits:
            _clear_split(root, split)
            jobs = [(root, split, i) + job_args for i in range(sizes[split])]
            results = pool.map(_write_image, jobs, chunksize=16) if pool else map(_write_image, jobs)
            images, annotations = [], []
            for i, anns in enumerate(results):
                images.append({"id": i + 1, "file_name": f"{i:06d}.png", "height": info["height"],
                               "width": info["width"]})
                for a in anns:
                    annotations.append({"id": len(annotations) + 1, "image_id": i + 1, **a})
            coco = {
                "info": {"description": f"mic_det synthetic {SPLIT_DOMAIN[split]} {split}", **info},
                "images": images,
                "annotations": annotations,
                "categories": categories(),
            }
            written[split] = json_path(root, split)
            _write_json(written[split], coco, separators=(",", ":"))
    finally:
        if pool is not None:
            pool.close()
            pool.join()
    return written


def write_domain_pair(
    root: str,
    *,
    seed: int = 0,
    num_source_train: int = 600,
    num_source_val: int = 100,
    num_target_train: int = 600,
    num_target_val: int = 100,
    height: int = 256,
    width: int = 320,
    beta: float = DEFAULT_BETA,
    atmospheric_light: Union[float, Sequence[float]] = DEFAULT_ATMOSPHERIC_LIGHT,
    night: Optional[LowLight] = DEFAULT_NIGHT,
    num_workers: int = 0,
) -> Dict[str, str]:
    """Write the clear (source), foggy (target) and night splits as PNGs + COCO jsons.

    Layout: see :mod:`mic_det.data.synthetic.layout`. Target labels are written
    too (foggy and night): they are never trained on in adaptation, but they
    give an oracle and score pseudo-labels.

    Defaults and why (the shifts' numbers are explained, with their measured
    cost in AP50, in :mod:`mic_det.data.synthetic.shifts`):

    * 600/100/600/100 images of 256x320 (~120 MB of PNG), + 600/100 at night
      (~75 MB: the sensor noise compresses less): enough for a ResNet-18-FPN
      from scratch to learn all six classes in 1-1.5k CPU steps of 2 images
      (3-5 epochs); the clear and foggy splits are drawn in ~23 s on a shared
      2-core machine (PNG encoding is half of it), the night ones in ~half that.
    * ``beta = 0.04``, ``atmospheric_light = 0.8``: a third of a source-only
      model's AP50 lost to fog, near objects plainly visible.
    * ``night``: :data:`~mic_det.data.synthetic.shifts.DEFAULT_NIGHT`.

    Args:
        root: output folder (created).
        seed: base seed; image ``i`` of ``split`` uses ``(seed, split, i)``.
        num_*: images per split; the night splits have the target splits' sizes
            (they show the same scenes).
        height, width: image size.
        beta, atmospheric_light: the foggy domain (see ``mic_det.data.fog``).
        night: the night domain (see ``mic_det.data.low_light``); None writes no
            night splits.
        num_workers: processes drawing in parallel (0 = in this process). The
            output does not depend on it.

    Returns:
        ``{split: path of its COCO json}``.
    """
    sizes = {"source_train": num_source_train, "source_val": num_source_val,
             "target_train": num_target_train, "target_val": num_target_val}
    info = domain_pair_info(seed=seed, num_source_train=num_source_train, num_source_val=num_source_val,
                            num_target_train=num_target_train, num_target_val=num_target_val,
                            height=height, width=width, beta=beta, atmospheric_light=atmospheric_light)
    os.makedirs(os.path.join(root, "annotations"), exist_ok=True)
    for name in (INFO_FILE, NIGHT_INFO_FILE):  # the set is incomplete until rewritten below
        if os.path.exists(os.path.join(root, name)):
            os.remove(os.path.join(root, name))
    written = _write_splits(root, SPLITS, sizes, (seed, height, width, beta, atmospheric_light, None), info,
                            num_workers)
    _write_json(os.path.join(root, INFO_FILE), info, indent=2)
    if night is not None:
        written.update(write_night_splits(root, seed=seed, num_train=num_target_train, num_val=num_target_val,
                                          height=height, width=width, night=night, num_workers=num_workers))
    return written


def write_night_splits(
    root: str,
    *,
    seed: int = 0,
    num_train: int = 600,
    num_val: int = 100,
    height: int = 256,
    width: int = 320,
    night: LowLight = DEFAULT_NIGHT,
    num_workers: int = 0,
) -> Dict[str, str]:
    """Write (or rewrite) only the night splits, e.g. next to an existing clear + foggy pair.

    They show the target scenes of a pair made with the same ``seed``,
    ``height`` and ``width``; ``num_train`` / ``num_val`` should be its target
    sizes (``read_night_info(root, pair)`` counts them as part of that pair
    only then). ``night_info.json`` is written last.

    Returns:
        ``{split: path of its COCO json}`` for ``night_train`` and ``night_val``.
    """
    info = night_info(seed=seed, num_train=num_train, num_val=num_val, height=height, width=width, night=night)
    os.makedirs(os.path.join(root, "annotations"), exist_ok=True)
    path = os.path.join(root, NIGHT_INFO_FILE)
    if os.path.exists(path):
        os.remove(path)
    sizes = {"night_train": num_train, "night_val": num_val}
    written = _write_splits(root, NIGHT_SPLITS, sizes, (seed, height, width, 0.0, DEFAULT_ATMOSPHERIC_LIGHT, night),
                            info, num_workers)
    _write_json(path, info, indent=2)
    return written
