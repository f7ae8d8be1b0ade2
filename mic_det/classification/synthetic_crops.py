"""The built-in classification pair: object crops of the built-in street scenes, clear -> foggy.

Each annotated object of a scene drawn by :func:`mic_det.data.synthetic.scene.generate_scene`
(the detection pair's renderer) is cut out as a square crop around its box
(with a little context) and resized to ``crop`` pixels. Six classes in two
confusable groups: person / rider / bicycle and car / truck / bus. Source =
clear scenes, target = other scenes in fog (the optical model of Foggy
Cityscapes, heavier than the detection pair's: crops keep only objects large
enough to classify, which are the near ones that light fog barely touches).

Generated on first use, like the detection pair: loading any
``synthetic_cls_*`` set whose root has no complete set draws it (a log line
says so and where; ~15 s), under the same file lock, so DDP ranks and
parallel jobs wait for one writer. ``info.json`` is written last and marks a
complete set, which is then always used as it is.

Layout (``$DETECTRON2_DATASETS/mic_synthetic_cls`` or ``DATASETS.SYNTHETIC_CLS_ROOT``)::

    clear_train/<class>/<scene>_<object>.png   labelled source
    clear_val/...                               source validation
    foggy_train/...                             the target stream (labels unused) / the oracle's training set
    foggy_val/...                               target test set
    info.json
"""
import json
import logging
import os
from typing import Dict, List, Mapping, Optional

import cv2
import numpy as np

from ..data.synthetic import SYNTHETIC_CLASSES
from ..data.synthetic.registration import generate_once
from ..data.synthetic.scene import generate_scene
from .datasets import load_class_folder, register_classification_set

__all__ = ["CROP_SPLITS", "DEFAULT_CROP_PARAMS", "default_crop_root", "ensure_crop_set", "register_synthetic_crops",
           "write_crop_pair"]

logger = logging.getLogger(__name__)

INFO_FILE = "info.json"
# split -> whether its scenes are foggy
CROP_SPLITS = {"clear_train": False, "clear_val": False, "foggy_train": True, "foggy_val": True}
DEFAULT_CROP_PARAMS = dict(seed=0, crop=56, height=192, width=256, beta=0.08, min_box=16,
                           scenes={"clear_train": 300, "clear_val": 100, "foggy_train": 300, "foggy_val": 100})
_SPLIT_SEED = {name: i for i, name in enumerate(CROP_SPLITS)}
CONTEXT = 1.15  # crop side = CONTEXT x the box's longer side


def default_crop_root() -> str:
    """``$DETECTRON2_DATASETS/mic_synthetic_cls``: the built-in crops' default root."""
    return os.path.join(os.environ.get("DETECTRON2_DATASETS", "datasets"), "mic_synthetic_cls")


def _crop(image: np.ndarray, bbox, side_px: int) -> np.ndarray:
    """A square around the XYWH box (edge-replicated past the border), resized to ``side_px``."""
    x, y, w, h = bbox
    side = int(round(CONTEXT * max(w, h)))
    x0, y0 = int(round(x + w / 2 - side / 2)), int(round(y + h / 2 - side / 2))
    pad = side
    padded = cv2.copyMakeBorder(image, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
    patch = padded[y0 + pad: y0 + pad + side, x0 + pad: x0 + pad + side]
    return cv2.resize(patch, (side_px, side_px), interpolation=cv2.INTER_AREA)


def write_crop_pair(root: str, seed: int = 0, crop: int = 56, height: int = 192, width: int = 256,
                    beta: float = 0.08, min_box: int = 16, scenes: Optional[Mapping[str, int]] = None) -> Dict:
    """Draw every split's scenes and write their object crops; returns the info written to ``info.json``."""
    scenes = dict(DEFAULT_CROP_PARAMS["scenes"], **(scenes or {}))
    counts = {}
    for split, foggy in CROP_SPLITS.items():
        for c in SYNTHETIC_CLASSES:
            os.makedirs(os.path.join(root, split, c), exist_ok=True)
        n, per_class, index = 0, dict.fromkeys(SYNTHETIC_CLASSES, 0), 0
        # The split's scenes, then more until every class has a crop (a class folder may not be empty).
        while index < scenes[split] or (min(per_class.values()) == 0 and index < 20 * scenes[split] + 100):
            rng = np.random.default_rng([seed, _SPLIT_SEED[split], index])
            image, _, anns = generate_scene(rng, height, width, beta if foggy else 0.0)
            for k, ann in enumerate(anns):
                if ann["bbox"][3] < min_box:  # too small to tell a rider from a person
                    continue
                name = SYNTHETIC_CLASSES[ann["category_id"] - 1]
                path = os.path.join(root, split, name, f"{index:05d}_{k:02d}.png")
                if not cv2.imwrite(path, np.ascontiguousarray(_crop(image, ann["bbox"], crop)[:, :, ::-1])):
                    raise OSError(f"could not write {path}")
                n += 1
                per_class[name] += 1
            index += 1
        counts[split] = n
    info = {"seed": seed, "crop": crop, "height": height, "width": width, "beta": beta, "min_box": min_box,
            "scenes": scenes, "crops": counts, "classes": list(SYNTHETIC_CLASSES)}
    tmp = os.path.join(root, INFO_FILE + ".tmp")
    with open(tmp, "w") as f:
        json.dump(info, f, indent=1)
    os.replace(tmp, os.path.join(root, INFO_FILE))  # last: marks the set complete
    return info


def _read_info(root: str) -> Optional[Dict]:
    try:
        with open(os.path.join(root, INFO_FILE)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def ensure_crop_set(root: str, params: Optional[Mapping] = None) -> Dict:
    """Make sure a complete crop set is in ``root`` (generate it, once, under the root's lock)."""
    root = os.path.abspath(os.fspath(root))
    p = {**DEFAULT_CROP_PARAMS, **dict(params or {})}
    what = (f"The built-in classification crops ({'/'.join(str(v) for v in p['scenes'].values())} scenes of "
            f"{p['height']}x{p['width']}, seed {p['seed']}, fog beta {p['beta']:g}, {p['crop']} px crops)")
    return generate_once(root, _read_info, lambda: write_crop_pair(root, **p), what)


def register_synthetic_crops(root: Optional[str] = None, prefix: str = "synthetic_cls",
                             params: Optional[Mapping] = None) -> List[str]:
    """Register ``{prefix}_{clear,foggy}_{train,val}`` (generated on first load); returns the names.

    ``root`` None: :func:`default_crop_root`, read when a set is loaded (so
    ``DETECTRON2_DATASETS`` may be set after import).
    """
    names = []
    for split in CROP_SPLITS:
        name = f"{prefix}_{split}"

        def load(split=split, name=name):
            base = os.fspath(root) if root is not None else default_crop_root()
            ensure_crop_set(base, params)
            return load_class_folder(os.path.join(base, split), name, SYNTHETIC_CLASSES)

        register_classification_set(name, load, dict(thing_classes=list(SYNTHETIC_CLASSES),
                                                     domain="foggy" if CROP_SPLITS[split] else "clear"))
        names.append(name)
    return names
