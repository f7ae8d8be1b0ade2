"""The built-in classification pairs: object crops of the built-in street scenes, clear -> foggy and -> night.

Each annotated object of a scene drawn by :func:`mic_det.data.synthetic.scene.generate_scene`
(the detection pair's renderer) is cut out as a square crop around its box
(with a little context) and resized to ``crop`` pixels. Six classes in two
confusable groups: person / rider / bicycle and car / truck / bus. Source =
clear scenes; targets = other scenes in fog (the optical model of Foggy
Cityscapes, heavier than the detection pair's: crops keep only objects large
enough to classify, which are the near ones that light fog barely touches),
and the same scenes at night (:data:`~mic_det.data.synthetic.DEFAULT_NIGHT`,
the detection pair's night: the same objects, so the same crops, lit by the
night model instead of fogged).

Generated on first use, like the detection pair: loading any
``synthetic_cls_*`` set whose root has no complete set draws it (a log line
says so and where; ~15 s), under the same file lock, so DDP ranks and
parallel jobs wait for one writer. ``info.json`` is written last and marks a
complete clear + foggy set, which is then always used as it is; the night
splits are drawn next to it when a night set is first loaded
(``night_info.json`` last).

Layout (``$DETECTRON2_DATASETS/mic_synthetic_cls`` or ``DATASETS.SYNTHETIC_CLS_ROOT``)::

    clear_train/<class>/<scene>_<object>.png   labelled source
    clear_val/...                               source validation
    foggy_train/...                             the target stream (labels unused) / the oracle's training set
    foggy_val/...                               target test set
    night_train/..., night_val/...              the foggy splits' scenes at night
    info.json, night_info.json
"""
import json
import logging
import os
from typing import Dict, List, Mapping, Optional

import cv2
import numpy as np

from ..data.builtin import register_config_data_hook
from ..data.low_light import LowLight, describe
from ..data.synthetic import DEFAULT_NIGHT, SYNTHETIC_CLASSES
from ..data.synthetic.registration import generate_once
from ..data.synthetic.scene import generate_scene
from .datasets import load_class_folder, register_classification_set

__all__ = ["CROP_SPLITS", "NIGHT_CROP_SPLITS", "DEFAULT_CROP_PARAMS", "default_crop_root", "ensure_crop_set",
           "ensure_night_crops", "register_synthetic_crops", "write_crop_pair", "write_night_crops"]

logger = logging.getLogger(__name__)

INFO_FILE = "info.json"
NIGHT_INFO_FILE = "night_info.json"
# split -> whether its scenes are foggy
CROP_SPLITS = {"clear_train": False, "clear_val": False, "foggy_train": True, "foggy_val": True}
# night split -> the split whose scenes it shows (at night, without fog)
NIGHT_CROP_SPLITS = {"night_train": "foggy_train", "night_val": "foggy_val"}
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


def _write_split(root: str, split: str, scene_split: str, num_scenes: int, seed: int, crop: int, height: int,
                 width: int, beta: float, night: Optional[LowLight], min_box: int) -> int:
    """Write the crops of ``split``, drawn from the scenes of ``scene_split``; returns how many."""
    for c in SYNTHETIC_CLASSES:
        os.makedirs(os.path.join(root, split, c), exist_ok=True)
    n, per_class, index = 0, dict.fromkeys(SYNTHETIC_CLASSES, 0), 0
    # The split's scenes, then more until every class has a crop (a class folder may not be empty).
    while index < num_scenes or (min(per_class.values()) == 0 and index < 20 * num_scenes + 100):
        rng = np.random.default_rng([seed, _SPLIT_SEED[scene_split], index])
        image, _, anns = generate_scene(rng, height, width, beta, night=night)
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
    return n


def _write_json(root: str, name: str, info: Dict) -> None:
    tmp = os.path.join(root, name + f".tmp.{os.getpid()}")
    with open(tmp, "w") as f:
        json.dump(info, f, indent=1)
    os.replace(tmp, os.path.join(root, name))  # last: marks the splits complete


def write_crop_pair(root: str, seed: int = 0, crop: int = 56, height: int = 192, width: int = 256,
                    beta: float = 0.08, min_box: int = 16, scenes: Optional[Mapping[str, int]] = None) -> Dict:
    """Draw every split's scenes and write their object crops; returns the info written to ``info.json``."""
    scenes = dict(DEFAULT_CROP_PARAMS["scenes"], **(scenes or {}))
    for name in (INFO_FILE, NIGHT_INFO_FILE):  # incomplete until rewritten
        if os.path.exists(os.path.join(root, name)):
            os.remove(os.path.join(root, name))
    counts = {split: _write_split(root, split, split, scenes[split], seed, crop, height, width,
                                  beta if foggy else 0.0, None, min_box)
              for split, foggy in CROP_SPLITS.items()}
    info = {"seed": seed, "crop": crop, "height": height, "width": width, "beta": beta, "min_box": min_box,
            "scenes": scenes, "crops": counts, "classes": list(SYNTHETIC_CLASSES)}
    _write_json(root, INFO_FILE, info)
    return info


def write_night_crops(root: str, pair: Mapping, night: LowLight = DEFAULT_NIGHT) -> Dict:
    """Write the night splits next to the crop pair whose info is ``pair``; returns ``night_info.json``'s content.

    ``night_train`` / ``night_val`` crop the objects of the ``foggy_train`` /
    ``foggy_val`` scenes, drawn at night without fog: the same objects, boxes and
    crop windows, so the same number of crops per class.
    """
    if os.path.exists(os.path.join(root, NIGHT_INFO_FILE)):
        os.remove(os.path.join(root, NIGHT_INFO_FILE))
    counts = {split: _write_split(root, split, scene_split, pair["scenes"][scene_split], pair["seed"], pair["crop"],
                                  pair["height"], pair["width"], 0.0, night, pair["min_box"])
              for split, scene_split in NIGHT_CROP_SPLITS.items()}
    info = {"shift": "night", "night": night.as_dict(), "scenes_of": dict(NIGHT_CROP_SPLITS), "crops": counts,
            **{k: pair[k] for k in ("seed", "crop", "height", "width", "min_box", "scenes", "classes")}}
    _write_json(root, NIGHT_INFO_FILE, info)
    return info


def _read_info(root: str, name: str = INFO_FILE) -> Optional[Dict]:
    try:
        with open(os.path.join(root, name)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _read_night_info(root: str, pair: Mapping) -> Optional[Dict]:
    """night_info.json if it is there and was drawn from ``pair``'s scenes, else None."""
    info = _read_info(root, NIGHT_INFO_FILE)
    keys = ("seed", "crop", "height", "width", "min_box", "scenes")
    if info is None or any(info.get(k) != pair.get(k) for k in keys):
        return None
    return info


def ensure_crop_set(root: str, params: Optional[Mapping] = None) -> Dict:
    """Make sure a complete crop set is in ``root`` (generate it, once, under the root's lock)."""
    root = os.path.abspath(os.fspath(root))
    p = {**DEFAULT_CROP_PARAMS, **dict(params or {})}
    what = (f"The built-in classification crops ({'/'.join(str(v) for v in p['scenes'].values())} scenes of "
            f"{p['height']}x{p['width']}, seed {p['seed']}, fog beta {p['beta']:g}, {p['crop']} px crops)")
    return generate_once(root, _read_info, lambda: write_crop_pair(root, **p), what)


def ensure_night_crops(root: str, params: Optional[Mapping] = None) -> Dict:
    """Make sure the crop pair and its night splits are in ``root`` (each drawn once, under the lock).

    ``params`` may hold ``night`` (a :class:`~mic_det.data.low_light.LowLight`; default
    :data:`~mic_det.data.synthetic.DEFAULT_NIGHT`) next to the pair's parameters.
    """
    root = os.path.abspath(os.fspath(root))
    params = dict(params or {})
    night = params.pop("night", None) or DEFAULT_NIGHT
    pair = ensure_crop_set(root, params)
    what = (f"The night splits of the built-in classification crops (the foggy splits' scenes at night: "
            f"{describe(night)})")
    return generate_once(root, lambda r: _read_night_info(r, pair), lambda: write_night_crops(root, pair, night), what)


def register_synthetic_crops(root: Optional[str] = None, prefix: str = "synthetic_cls",
                             params: Optional[Mapping] = None) -> List[str]:
    """Register ``{prefix}_{clear,foggy,night}_{train,val}`` (generated on first load); returns the names.

    ``root`` None: :func:`default_crop_root`, read when a set is loaded (so
    ``DETECTRON2_DATASETS`` may be set after import). ``params``: :data:`DEFAULT_CROP_PARAMS`
    keys to draw with, and optionally ``night`` (a :class:`~mic_det.data.low_light.LowLight`).
    """
    pair_params = {k: v for k, v in dict(params or {}).items() if k != "night"}
    names = []
    for split in (*CROP_SPLITS, *NIGHT_CROP_SPLITS):
        name = f"{prefix}_{split}"
        night = split in NIGHT_CROP_SPLITS

        def load(split=split, name=name, night=night):
            base = os.fspath(root) if root is not None else default_crop_root()
            if night:
                ensure_night_crops(base, params)
            else:
                ensure_crop_set(base, pair_params)
            return load_class_folder(os.path.join(base, split), name, SYNTHETIC_CLASSES)

        domain = "night" if night else "foggy" if CROP_SPLITS[split] else "clear"
        register_classification_set(name, load, dict(thing_classes=list(SYNTHETIC_CLASSES), domain=domain))
        names.append(name)
    return names


@register_config_data_hook
def register_synthetic_crops_of_config(cfg) -> None:
    """The built-in classification crops under ``DATASETS.SYNTHETIC_CLS_ROOT``, if set."""
    if cfg.DATASETS.SYNTHETIC_CLS_ROOT:
        register_synthetic_crops(cfg.DATASETS.SYNTHETIC_CLS_ROOT)
