"""The built-in pair with per-pixel labels: clear street scenes -> foggy, generated on first use.

The scenes of :mod:`mic_det.data.synthetic` (same camera, objects, clutter
and fog) with their label maps
(:func:`~mic_det.data.synthetic.generate_labelled_scene`, classes
:data:`~mic_det.data.synthetic.SEMANTIC_CLASSES`), in a folder of their own
(default ``$DETECTRON2_DATASETS/mic_synthetic_seg``; the detection set is not
touched)::

    root/info.json                         every parameter, written last (= complete)
    root/<split>/images/000000.png         RGB
    root/<split>/labels/000000.png         uint8 class index per pixel

Splits: ``source_train``, ``source_val`` (clear), ``target_train``,
``target_val`` (foggy); registered as ``synthetic_seg_{clear,foggy}_{train,val}``.
Loading one whose set is missing draws it under the root's file lock (one
process draws, the others wait), with a log line saying so.
"""
import json
import logging
import os
from typing import List, Mapping, Optional

import cv2
import numpy as np

from ..data.synthetic import DEFAULT_ATMOSPHERIC_LIGHT, DEFAULT_BETA, GENERATOR_VERSION, SEMANTIC_CLASSES
from ..data.synthetic import generate_labelled_scene, generate_once
from ..data.synthetic.layout import image_rng
from .datasets import register_seg_domain

__all__ = ["DEFAULT_SEG_PARAMS", "default_synthetic_seg_root", "write_seg_pair", "ensure_seg_pair",
           "register_synthetic_seg_pair"]

logger = logging.getLogger(__name__)

#: Defaults of the set generated on first use: small images, so the CPU config
#: trains a segmentation network from scratch in minutes per thousand steps.
DEFAULT_SEG_PARAMS = dict(seed=0, num_source_train=400, num_source_val=50, num_target_train=400, num_target_val=50,
                          height=128, width=160, beta=DEFAULT_BETA, atmospheric_light=DEFAULT_ATMOSPHERIC_LIGHT)
_SPLITS = {"source_train": "clear_train", "source_val": "clear_val",
           "target_train": "foggy_train", "target_val": "foggy_val"}
INFO_FILE = "info.json"


def default_synthetic_seg_root() -> str:
    """``$DETECTRON2_DATASETS/mic_synthetic_seg``."""
    return os.path.join(os.environ.get("DETECTRON2_DATASETS", "datasets"), "mic_synthetic_seg")


def _info(p: Mapping) -> dict:
    a = np.asarray(p["atmospheric_light"], dtype=np.float64).reshape(-1)
    return {"generator_version": GENERATOR_VERSION, "classes": list(SEMANTIC_CLASSES), "seed": int(p["seed"]),
            "height": int(p["height"]), "width": int(p["width"]), "beta": float(p["beta"]),
            "atmospheric_light": [float(v) for v in a],
            "splits": {s: int(p[f"num_{s}"]) for s in _SPLITS}}


def write_seg_pair(root: str, **params) -> dict:
    """Draw every split of the pair into ``root`` (``params``: :data:`DEFAULT_SEG_PARAMS` keys); info.json last."""
    p = {**DEFAULT_SEG_PARAMS, **params}
    info_path = os.path.join(root, INFO_FILE)
    if os.path.exists(info_path):
        os.remove(info_path)
    for split in _SPLITS:
        beta = p["beta"] if split.startswith("target") else 0.0
        for sub in ("images", "labels"):
            os.makedirs(os.path.join(root, split, sub), exist_ok=True)
        for i in range(p[f"num_{split}"]):
            img, _, _, labels = generate_labelled_scene(
                image_rng(p["seed"], split, i), p["height"], p["width"], beta, p["atmospheric_light"])
            for sub, array in (("images", np.ascontiguousarray(img[:, :, ::-1])), ("labels", labels)):
                path = os.path.join(root, split, sub, f"{i:06d}.png")
                if not cv2.imwrite(path, array, [cv2.IMWRITE_PNG_COMPRESSION, 3]):
                    raise OSError(f"could not write {path}")
    info = _info(p)
    tmp = info_path + f".tmp.{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(info, f, indent=2)
    os.replace(tmp, info_path)
    return info


def _read_info(root: str) -> Optional[dict]:
    """The set's info if it is complete (info.json readable, every image and label there)."""
    try:
        with open(os.path.join(root, INFO_FILE)) as f:
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


def register_synthetic_seg_pair(root: str, prefix: str = "synthetic_seg", generate: bool = True,
                                params: Optional[Mapping] = None) -> List[str]:
    """Register ``{prefix}_{clear,foggy}_{train,val}`` for the pair under ``root`` (lazy; drawn on first load)."""
    from detectron2.data import DatasetCatalog

    root = os.fspath(root)
    names = []
    for split, suffix in _SPLITS.items():
        name = f"{prefix}_{suffix}"
        register_seg_domain(name, os.path.join(root, split, "images"), os.path.join(root, split, "labels"),
                            SEMANTIC_CLASSES, metadata={"domain": "foggy" if split.startswith("target") else "clear"})
        loader = DatasetCatalog.pop(name)

        def load(loader=loader):
            if generate:
                ensure_seg_pair(root, params)
            return loader()

        DatasetCatalog.register(name, load)
        names.append(name)
    return names
