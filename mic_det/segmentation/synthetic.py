"""The built-in pairs with per-pixel labels: clear street scenes -> foggy and -> night, generated on first use.

The scenes of :mod:`mic_det.data.synthetic` (same camera, objects, clutter,
fog and night) with their label maps
(:func:`~mic_det.data.synthetic.generate_labelled_scene`, classes
:data:`~mic_det.data.synthetic.SEMANTIC_CLASSES`), in a folder of their own
(default ``$DETECTRON2_DATASETS/mic_synthetic_seg``; the detection set is not
touched)::

    root/info.json                         clear + fog: every parameter, written last (= complete)
    root/night_info.json                   night: its parameters, written after its splits
    root/<split>/images/000000.png         RGB
    root/<split>/labels/000000.png         uint8 class index per pixel

Splits: ``source_train``, ``source_val`` (clear), ``target_train``,
``target_val`` (foggy), ``night_train``, ``night_val`` (the foggy splits'
scenes at night, :data:`~mic_det.data.synthetic.DEFAULT_NIGHT`, as the
detection set's night splits; their labels are the same maps); registered as
``synthetic_seg_{clear,foggy,night}_{train,val}``. Loading one whose files are
missing draws them under the root's file lock (one process draws, the others
wait), with a log line saying so; the night splits are drawn only when a
night set is first loaded, next to an existing clear + foggy pair.
"""
import json
import logging
import os
from typing import List, Mapping, Optional

import cv2
import numpy as np

from ..data.builtin import register_config_data_hook
from ..data.low_light import LowLight, describe
from ..data.synthetic import DEFAULT_ATMOSPHERIC_LIGHT, DEFAULT_BETA, DEFAULT_NIGHT, GENERATOR_VERSION
from ..data.synthetic import SEMANTIC_CLASSES, generate_labelled_scene, generate_once
from ..data.synthetic.layout import NIGHT_SCENES, image_rng
from .datasets import register_seg_domain

__all__ = ["DEFAULT_SEG_PARAMS", "default_synthetic_seg_root", "write_seg_pair", "write_seg_night_splits",
           "ensure_seg_pair", "ensure_seg_night", "register_synthetic_seg_pair"]

logger = logging.getLogger(__name__)

#: Defaults of the set generated on first use: small images, so the CPU config
#: trains a segmentation network from scratch in minutes per thousand steps.
DEFAULT_SEG_PARAMS = dict(seed=0, num_source_train=400, num_source_val=50, num_target_train=400, num_target_val=50,
                          height=128, width=160, beta=DEFAULT_BETA, atmospheric_light=DEFAULT_ATMOSPHERIC_LIGHT)
_SPLITS = {"source_train": "clear_train", "source_val": "clear_val",
           "target_train": "foggy_train", "target_val": "foggy_val"}
# The night splits, registered as night_{train,val}; each shows the scenes of NIGHT_SCENES[split].
_NIGHT_SPLITS = {"night_train": "night_train", "night_val": "night_val"}
INFO_FILE = "info.json"
NIGHT_INFO_FILE = "night_info.json"


def default_synthetic_seg_root() -> str:
    """``$DETECTRON2_DATASETS/mic_synthetic_seg``."""
    return os.path.join(os.environ.get("DETECTRON2_DATASETS", "datasets"), "mic_synthetic_seg")


def _info(p: Mapping) -> dict:
    a = np.asarray(p["atmospheric_light"], dtype=np.float64).reshape(-1)
    return {"generator_version": GENERATOR_VERSION, "classes": list(SEMANTIC_CLASSES), "seed": int(p["seed"]),
            "height": int(p["height"]), "width": int(p["width"]), "beta": float(p["beta"]),
            "atmospheric_light": [float(v) for v in a],
            "splits": {s: int(p[f"num_{s}"]) for s in _SPLITS}}


def _write_split(root: str, split: str, n: int, seed: int, height: int, width: int, beta: float,
                 atmospheric_light, night: Optional[LowLight]) -> None:
    for sub in ("images", "labels"):
        os.makedirs(os.path.join(root, split, sub), exist_ok=True)
    for i in range(n):
        img, _, _, labels = generate_labelled_scene(
            image_rng(seed, split, i), height, width, beta, atmospheric_light, night)
        for sub, array in (("images", np.ascontiguousarray(img[:, :, ::-1])), ("labels", labels)):
            path = os.path.join(root, split, sub, f"{i:06d}.png")
            if not cv2.imwrite(path, array, [cv2.IMWRITE_PNG_COMPRESSION, 3]):
                raise OSError(f"could not write {path}")


def _write_json(path: str, content: dict) -> None:
    tmp = path + f".tmp.{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(content, f, indent=2)
    os.replace(tmp, path)


def write_seg_pair(root: str, **params) -> dict:
    """Draw every split of the pair into ``root`` (``params``: :data:`DEFAULT_SEG_PARAMS` keys); info.json last."""
    p = {**DEFAULT_SEG_PARAMS, **params}
    info_path = os.path.join(root, INFO_FILE)
    for path in (info_path, os.path.join(root, NIGHT_INFO_FILE)):  # incomplete until rewritten
        if os.path.exists(path):
            os.remove(path)
    for split in _SPLITS:
        beta = p["beta"] if split.startswith("target") else 0.0
        _write_split(root, split, p[f"num_{split}"], p["seed"], p["height"], p["width"], beta,
                     p["atmospheric_light"], None)
    info = _info(p)
    _write_json(info_path, info)
    return info


def _night_info(pair: Mapping, night: LowLight) -> dict:
    return {"generator_version": pair["generator_version"], "shift": "night", "seed": pair["seed"],
            "height": pair["height"], "width": pair["width"], "scenes": dict(NIGHT_SCENES),
            "night": night.as_dict(),
            "splits": {n: pair["splits"][s] for n, s in NIGHT_SCENES.items()}}


def write_seg_night_splits(root: str, pair: Mapping, night: LowLight = DEFAULT_NIGHT) -> dict:
    """Draw the night splits next to the clear + foggy pair whose info is ``pair``; night_info.json last.

    Image ``i`` of ``night_train`` / ``night_val`` is the scene of image ``i`` of
    ``target_train`` / ``target_val`` at night (no fog), with the same label map.
    """
    path = os.path.join(root, NIGHT_INFO_FILE)
    if os.path.exists(path):
        os.remove(path)
    info = _night_info(pair, night)
    for split, n in info["splits"].items():
        _write_split(root, split, n, pair["seed"], pair["height"], pair["width"], 0.0, DEFAULT_ATMOSPHERIC_LIGHT,
                     night)
    _write_json(path, info)
    return info


def _read_info(root: str, name: str = INFO_FILE) -> Optional[dict]:
    """The info file ``name`` if its splits are complete (it is readable, every image and label there)."""
    try:
        with open(os.path.join(root, name)) as f:
            info = json.load(f)
        for split, n in info["splits"].items():
            for sub in ("images", "labels"):
                if not os.path.isfile(os.path.join(root, split, sub, f"{n - 1:06d}.png")) and n > 0:
                    return None
        return info
    except (OSError, ValueError, KeyError, TypeError):
        return None


def ensure_seg_pair(root: str, params: Optional[Mapping] = None) -> dict:
    """Make sure a complete set is in ``root`` (drawing it once, under the lock); return its info."""
    root = os.path.abspath(os.fspath(root))
    p = {**DEFAULT_SEG_PARAMS, **dict(params or {})}
    count = sum(v for k, v in p.items() if k.startswith("num_"))
    what = (f"The built-in segmentation pair ({count} images + labels of {p['height']}x{p['width']}, "
            f"seed {p['seed']}, fog beta {p['beta']:g})")
    return generate_once(root, _read_info, lambda: write_seg_pair(root, **p), what)


def _read_night_info(root: str, pair: Mapping) -> Optional[dict]:
    """night_info.json if the night splits are complete and show ``pair``'s target scenes, else None."""
    info = _read_info(root, NIGHT_INFO_FILE)
    if info is None:
        return None
    same = all(info.get(k) == pair.get(k) for k in ("generator_version", "seed", "height", "width"))
    sizes = all(info["splits"].get(n) == pair["splits"].get(s) for n, s in NIGHT_SCENES.items())
    return info if same and sizes else None


def ensure_seg_night(root: str, params: Optional[Mapping] = None) -> dict:
    """Make sure the pair and its night splits are in ``root`` (each drawn once, under the lock); the night info.

    ``params`` may hold ``night`` (a :class:`~mic_det.data.low_light.LowLight`; default
    :data:`~mic_det.data.synthetic.DEFAULT_NIGHT`) next to the pair's parameters.
    """
    root = os.path.abspath(os.fspath(root))
    params = dict(params or {})
    night = params.pop("night", None) or DEFAULT_NIGHT
    pair = ensure_seg_pair(root, params)
    what = (f"The night splits of the built-in segmentation pair ({pair['splits']['target_train']}/"
            f"{pair['splits']['target_val']} of its foggy scenes at night: {describe(night)})")
    return generate_once(root, lambda r: _read_night_info(r, pair), lambda: write_seg_night_splits(root, pair, night),
                         what)


def register_synthetic_seg_pair(root: str, prefix: str = "synthetic_seg", generate: bool = True,
                                params: Optional[Mapping] = None) -> List[str]:
    """Register ``{prefix}_{clear,foggy,night}_{train,val}`` for the pairs under ``root`` (lazy; drawn on first load).

    ``params``: :data:`DEFAULT_SEG_PARAMS` keys to draw with (e.g. small sets in tests), and
    optionally ``night`` (a :class:`~mic_det.data.low_light.LowLight`) for the night splits.
    """
    from detectron2.data import DatasetCatalog

    root = os.fspath(root)
    pair_params = {k: v for k, v in dict(params or {}).items() if k != "night"}
    names = []
    for split, suffix in {**_SPLITS, **_NIGHT_SPLITS}.items():
        name = f"{prefix}_{suffix}"
        domain = "night" if split in _NIGHT_SPLITS else "foggy" if split.startswith("target") else "clear"
        register_seg_domain(name, os.path.join(root, split, "images"), os.path.join(root, split, "labels"),
                            SEMANTIC_CLASSES, metadata={"domain": domain})
        loader = DatasetCatalog.pop(name)

        def load(loader=loader, night=domain == "night"):
            if generate:
                if night:
                    ensure_seg_night(root, params)
                else:
                    ensure_seg_pair(root, pair_params)
            return loader()

        DatasetCatalog.register(name, load)
        names.append(name)
    return names


@register_config_data_hook
def register_synthetic_seg_pair_of_config(cfg) -> None:
    """The built-in segmentation pair under ``SEG.SYNTHETIC_ROOT``, if set."""
    if cfg.SEG.SYNTHETIC_ROOT:
        register_synthetic_seg_pair(cfg.SEG.SYNTHETIC_ROOT)
