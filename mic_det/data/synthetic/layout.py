"""The built-in set on disk: splits, file names, per-image seeds and the info files.

::

    root/
      info.json          clear + fog: every parameter that fixes their bytes (written last)
      night_info.json    night: its parameters (written after its splits)
      annotations/<split>.json
      source_train/ source_val/   clear scenes        (SPLITS)
      target_train/ target_val/   other scenes, fog   (SPLITS)
      night_train/ night_val/     the target scenes at night (NIGHT_SPLITS)

The night splits show the *same scenes* as the target splits (image ``i`` of
``night_train`` is image ``i`` of ``target_train`` at night), so fog and night
are compared on equal scenes, and both share the clear source. Each info file
is written last and checked against the images on disk, so an interrupted or
damaged set is never taken for a complete one.
"""
import json
import os
import re
from typing import List, Optional, Sequence, Union

import numpy as np

from ..low_light import LowLight
from .shapes import SYNTHETIC_CLASSES
from .shifts import DEFAULT_NIGHT

__all__ = [
    "GENERATOR_VERSION", "SPLITS", "NIGHT_SPLITS", "SPLIT_DOMAIN", "NIGHT_SCENES",
    "domain_pair_info", "night_info", "read_domain_pair_info", "read_night_info",
]

# Bump when a change to the drawing code changes the images, so that an old set
# on disk is recognised as different (tools/make_synthetic.py then refuses to
# reuse it silently).
GENERATOR_VERSION = 1

# Clear splits first, then foggy ones; the position is part of each image's seed.
SPLITS = ("source_train", "source_val", "target_train", "target_val")
NIGHT_SPLITS = ("night_train", "night_val")
# Which scenes each night split shows (and so which seeds it uses).
NIGHT_SCENES = {"night_train": "target_train", "night_val": "target_val"}
_PAIR_DOMAIN = {"source_train": "clear", "source_val": "clear", "target_train": "foggy", "target_val": "foggy"}
SPLIT_DOMAIN = {**_PAIR_DOMAIN, "night_train": "night", "night_val": "night"}

INFO_FILE = "info.json"
NIGHT_INFO_FILE = "night_info.json"
LOCK_FILE = ".generate.lock"
IMAGE_NAME = re.compile(r"^\d{6}\.png$")


def image_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """Each image's own stream: independent of every other image and of split sizes.

    A night image uses the stream of the target scene it shows.
    """
    return np.random.default_rng([seed, SPLITS.index(NIGHT_SCENES.get(split, split)), index])


def json_path(root: str, split: str) -> str:
    return os.path.join(root, "annotations", f"{split}.json")


def categories() -> List[dict]:
    supercategory = {"person": "human", "rider": "human"}
    return [{"id": i + 1, "name": n, "supercategory": supercategory.get(n, "vehicle")}
            for i, n in enumerate(SYNTHETIC_CLASSES)]


def _atmospheric_list(atmospheric_light) -> List[float]:
    a = np.asarray(atmospheric_light, dtype=np.float64).reshape(-1)
    return [float(v) for v in (np.repeat(a, 3) if a.size == 1 else a)]


def domain_pair_info(
    *,
    seed: int,
    num_source_train: int,
    num_source_val: int,
    num_target_train: int,
    num_target_val: int,
    height: int,
    width: int,
    beta: float,
    atmospheric_light: Union[float, Sequence[float]],
) -> dict:
    """Everything that determines the clear and foggy splits' bytes; stored as ``root/info.json``.

    Two sets with equal info are identical, which lets ``tools/make_synthetic.py``
    skip regeneration safely.
    """
    return {
        "generator": "mic_det.data.synthetic",
        "version": GENERATOR_VERSION,
        "seed": int(seed),
        "splits": {
            "source_train": int(num_source_train),
            "source_val": int(num_source_val),
            "target_train": int(num_target_train),
            "target_val": int(num_target_val),
        },
        "domains": dict(_PAIR_DOMAIN),
        "height": int(height),
        "width": int(width),
        "beta": float(beta),
        "atmospheric_light": _atmospheric_list(atmospheric_light),
        "classes": list(SYNTHETIC_CLASSES),
    }


def night_info(*, seed: int, num_train: int, num_val: int, height: int, width: int, night: LowLight) -> dict:
    """Everything that determines the night splits' bytes; stored as ``root/night_info.json``."""
    return {
        "generator": "mic_det.data.synthetic",
        "version": GENERATOR_VERSION,
        "shift": "night",
        "seed": int(seed),
        "splits": {"night_train": int(num_train), "night_val": int(num_val)},
        "scenes": dict(NIGHT_SCENES),
        "height": int(height),
        "width": int(width),
        "night": night.as_dict(),
        "classes": list(SYNTHETIC_CLASSES),
    }


def _read_complete(root: str, name: str, splits: Sequence[str]) -> Optional[dict]:
    """``root/name`` if it and the images and jsons of ``splits`` it lists are all there."""
    path = os.path.join(root, name)
    if not os.path.isfile(path) or not all(os.path.isfile(json_path(root, s)) for s in splits):
        return None
    try:
        with open(path, "r", encoding="utf-8") as f:
            info = json.load(f)
        for split in splits:
            folder = os.path.join(root, split)
            found = sum(1 for n in os.listdir(folder) if IMAGE_NAME.match(n)) if os.path.isdir(folder) else 0
            if found != info["splits"][split]:
                return None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return info


def read_domain_pair_info(root: str) -> Optional[dict]:
    """``root/info.json`` if a *complete* clear + foggy set is there, else None.

    Complete: info.json, the four jsons and as many images per split as info
    says. info.json is written last, so an interrupted run is never mistaken
    for a set, and deleted images are noticed.
    """
    return _read_complete(root, INFO_FILE, SPLITS)


def read_night_info(root: str, pair: Optional[dict] = None) -> Optional[dict]:
    """``root/night_info.json`` if complete night splits are there (and match ``pair``), else None.

    With ``pair`` (the set's info.json), night splits drawn from other scenes
    (another seed, size, generator version or target split size) do not count.
    """
    info = _read_complete(root, NIGHT_INFO_FILE, NIGHT_SPLITS)
    if info is None or pair is None:
        return info
    same = all(info.get(k) == pair.get(k) for k in ("version", "seed", "height", "width"))
    sizes = all(info["splits"].get(n) == pair["splits"].get(s) for n, s in NIGHT_SCENES.items())
    return info if same and sizes else None


def read_info_file(root: str, name: str) -> Optional[dict]:
    """An info file's content even if its set is incomplete (None if unreadable)."""
    try:
        with open(os.path.join(root, name), "r", encoding="utf-8") as f:
            info = json.load(f)
        return info if isinstance(info, dict) else None
    except (OSError, ValueError):
        return None


def pair_params(info: dict) -> dict:
    """``write_domain_pair`` keyword arguments that reproduce an info.json."""
    return dict(
        seed=info["seed"], height=info["height"], width=info["width"], beta=info["beta"],
        atmospheric_light=tuple(info["atmospheric_light"]),
        **{f"num_{split}": n for split, n in info["splits"].items()},
    )


def night_params(info: Optional[dict]) -> LowLight:
    """The night model of a night_info.json (the default if None)."""
    return DEFAULT_NIGHT if info is None else LowLight.from_dict(info["night"])


def foreign_entries(root: str) -> List[str]:
    """Names in ``root`` that no synthetic set writes (a wrong root, or the user's files)."""
    if not os.path.isdir(root):
        return []
    known = set(SPLITS) | set(NIGHT_SPLITS) | {"annotations", INFO_FILE, NIGHT_INFO_FILE, LOCK_FILE}
    return sorted(n for n in os.listdir(root) if n not in known and not n.startswith(".tmp"))
