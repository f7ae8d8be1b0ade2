"""Segmentation domains: image folder + label-PNG folder + class list, and the real benchmarks.

A labelled segmentation domain is a folder of images and a folder of label
PNGs in the same sub-folder layout, paired by name (``IMAGE_SUFFIX`` of the
image replaced by ``LABEL_SUFFIX``; by default ``x.jpg`` <-> ``x.png``). An
unlabelled target is any image folder
(:func:`mic_det.data.domains.register_image_folder`).

Checked when a set is loaded (at start-up: the class check loads every
labelled set): images without a label and labels without an image are errors
listing them; the first :data:`NUM_PAIRS_CHECKED` pairs are read and checked
for size and values, so a wrong ignore value or class list fails in the first
seconds. The rest are read when used: a bad training pair is skipped and
counted (:class:`~mic_det.segmentation.mapper.SegDatasetMapper`); the pairs
of ``DATASETS.TEST`` are all read at start-up (``check_test_images``).

Registered at import, lazily (nothing is read until used; roots under
``$DETECTRON2_DATASETS``, see ``datasets/README.md``):
``cityscapes_seg_{train,val}``, ``gta5_seg_train``, ``synthia_seg_train``,
``acdc_seg_{fog,night,rain,snow,all}_{train,val}``, ``dark_zurich_seg_train``
(unlabelled), ``dark_zurich_seg_val``.
"""
import logging
import os
from typing import Dict, List, Optional, Sequence

import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog

from ..data.checks import register_label_file_check
from ..data.cli import parse_classes
from ..data.domains import _listed, _replace_registration, image_size, list_images, load_image_folder
from ..data.kinds import DomainFlag, DomainKind, register_domain_kind
from .labels import IGNORE, LabelError, read_dataset_label

__all__ = [
    "CITYSCAPES_CLASSES",
    "CITYSCAPES_LUT",
    "SYNTHIA_LUT",
    "MIOU_SUBSETS",
    "NUM_PAIRS_CHECKED",
    "load_seg_pairs",
    "register_seg_domain",
    "register_seg_benchmarks",
]

logger = logging.getLogger(__name__)

#: Label/image pairs read and checked when a set is loaded.
NUM_PAIRS_CHECKED = 16

CITYSCAPES_CLASSES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
    "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle",
)
# Cityscapes label ids (also GTA5's, ACDC's, Dark Zurich's) of the 19 train ids, in order.
_CITYSCAPES_IDS = (7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33)
# SYNTHIA-RAND-CITYSCAPES ids of the 16 Cityscapes classes it has (no terrain, truck, train).
_SYNTHIA_IDS = {3: 0, 4: 1, 2: 2, 21: 3, 5: 4, 7: 5, 15: 6, 9: 7, 6: 8, 1: 10, 10: 11, 17: 12, 8: 13, 19: 15,
                12: 17, 11: 18}


def _lut(pairs: Dict[int, int], size: int = 256) -> np.ndarray:
    table = np.full(size, IGNORE, np.uint8)
    for raw, train_id in pairs.items():
        table[raw] = train_id
    return table


CITYSCAPES_LUT = _lut({raw: i for i, raw in enumerate(_CITYSCAPES_IDS)})
SYNTHIA_LUT = _lut(_SYNTHIA_IDS)
_SYNTHIA_16 = [CITYSCAPES_CLASSES[i] for i in sorted(set(_SYNTHIA_IDS.values()))]
#: Extra mean IoUs over class subsets the SYNTHIA -> Cityscapes literature reports.
MIOU_SUBSETS = {"mIoU16": _SYNTHIA_16, "mIoU13": [c for c in _SYNTHIA_16 if c not in ("wall", "fence", "pole")]}


def _label_path(image: str, image_dir: str, label_dir: str, image_suffix: str, label_suffix: str) -> str:
    rel = os.path.relpath(image, image_dir)
    stem = rel[: -len(image_suffix)] if image_suffix else os.path.splitext(rel)[0]
    return os.path.join(label_dir, stem + label_suffix)


def load_seg_pairs(
    name: str, image_dir: str, label_dir: str, image_suffix: str = "", label_suffix: str = ".png"
) -> List[dict]:
    """Records ``file_name``, ``sem_seg_file_name``, ``dataset_name`` of every image with its label.

    Errors (naming the folders and up to five files) for: a missing folder,
    no images, images without a label, labels without an image; then the first
    :data:`NUM_PAIRS_CHECKED` pairs are read (:func:`read_dataset_label`).
    """
    for what, folder in (("image", image_dir), ("label", label_dir)):
        if not os.path.isdir(folder):
            raise FileNotFoundError(f"Dataset '{name}': {what} folder {folder} does not exist.")
    images = [p for p in list_images(image_dir) if not image_suffix or p.endswith(image_suffix)]
    if not images:
        pattern = f" *{image_suffix}" if image_suffix else ""
        raise ValueError(f"Dataset '{name}': no images{pattern} in {image_dir}.")
    labels = [_label_path(p, image_dir, label_dir, image_suffix, label_suffix) for p in images]
    missing = [lab for lab in labels if not os.path.isfile(lab)]
    if missing:
        raise FileNotFoundError(
            f"Dataset '{name}': {len(missing)} image(s) in {image_dir} have no label in {label_dir} "
            f"(expected names):" + _listed(missing)
        )
    expected = set(os.path.normpath(lab) for lab in labels)
    orphans = [p for p in list_images(label_dir) if p.endswith(label_suffix) and os.path.normpath(p) not in expected]
    if orphans:
        raise FileNotFoundError(
            f"Dataset '{name}': {len(orphans)} label(s) in {label_dir} have no image in {image_dir}:" + _listed(orphans)
        )
    records = [
        {"file_name": img, "sem_seg_file_name": lab, "image_id": os.path.relpath(img, image_dir), "dataset_name": name}
        for img, lab in zip(images, labels)
    ]
    for r in records[:NUM_PAIRS_CHECKED]:
        try:
            size = image_size(r["file_name"])
        except Exception as e:  # PIL raises several types for broken headers
            reason = f"{type(e).__name__}: {e}"
            raise ValueError(f"Dataset '{name}': cannot read image {r['file_name']} ({reason})") from None
        read_dataset_label(name, r["sem_seg_file_name"], image_size=size)
    logger.info("Loaded %d image/label pairs of dataset '%s' from %s and %s.", len(records), name, image_dir, label_dir)
    return records


def register_seg_domain(
    name: str,
    image_dir: str,
    label_dir: str,
    classes: Sequence[str],
    *,
    ignore_value: int = IGNORE,
    image_suffix: str = "",
    label_suffix: str = ".png",
    lut: Optional[np.ndarray] = None,
    label_format: str = "index",
    metadata: Optional[dict] = None,
) -> None:
    """Register an image folder + label-PNG folder as labelled segmentation dataset ``name`` (lazy).

    Without ``lut``, label value ``i`` is ``classes[i]`` and ``ignore_value``
    means unlabelled (it must not be a class index).
    """
    classes = list(classes)
    if not classes or not all(isinstance(c, str) and c for c in classes):
        raise ValueError(f"Dataset '{name}': the class list must be non-empty names, got {classes!r}")
    if lut is None and 0 <= ignore_value < len(classes):
        raise ValueError(
            f"Dataset '{name}': ignore value {ignore_value} is the index of class '{classes[ignore_value]}'; "
            f"give an ignore value >= {len(classes)} (e.g. 255)"
        )
    image_dir, label_dir = os.fspath(image_dir), os.fspath(label_dir)
    _replace_registration(name)
    DatasetCatalog.register(name, lambda: load_seg_pairs(name, image_dir, label_dir, image_suffix, label_suffix))
    meta = dict(
        stuff_classes=classes, ignore_label=IGNORE, label_ignore_value=ignore_value, label_format=label_format,
        image_root=image_dir, label_root=label_dir, evaluator_type="sem_seg", labelled=True,
    )
    if lut is not None:
        meta["label_lut"] = lut
    meta.update(metadata or {})
    MetadataCatalog.get(name).set(**meta)


def _root() -> str:
    return os.environ.get("DETECTRON2_DATASETS", "datasets")


class _Lazy:
    """A path under ``$DETECTRON2_DATASETS`` resolved when the set is loaded (tests set the variable late)."""

    def __init__(self, *parts: str):
        self.parts = parts

    def __fspath__(self) -> str:
        return os.path.join(_root(), *self.parts)


def _register_benchmark(name, image_parts, label_parts, image_suffix, label_suffix, lut=CITYSCAPES_LUT,
                        label_format="index"):
    images, labels = _Lazy(*image_parts), _Lazy(*label_parts)
    _replace_registration(name)
    DatasetCatalog.register(
        name, lambda: load_seg_pairs(name, os.fspath(images), os.fspath(labels), image_suffix, label_suffix)
    )
    MetadataCatalog.get(name).set(
        stuff_classes=list(CITYSCAPES_CLASSES), ignore_label=IGNORE, label_lut=lut, label_format=label_format,
        evaluator_type="sem_seg", labelled=True, miou_subsets=MIOU_SUBSETS,
    )
    return name


def register_seg_benchmarks() -> List[str]:
    """Register the real benchmarks' names (nothing is read); see the module docstring."""
    names = []
    for split in ("train", "val"):
        names.append(_register_benchmark(
            f"cityscapes_seg_{split}", ("cityscapes", "leftImg8bit", split), ("cityscapes", "gtFine", split),
            "_leftImg8bit.png", "_gtFine_labelIds.png"))
    names.append(_register_benchmark("gta5_seg_train", ("gta5", "images"), ("gta5", "labels"), ".png", ".png"))
    names.append(_register_benchmark("synthia_seg_train", ("synthia", "RGB"), ("synthia", "GT", "LABELS"), ".png",
                                     ".png", lut=SYNTHIA_LUT, label_format="synthia"))
    for condition in ("fog", "night", "rain", "snow", "all"):
        sub = () if condition == "all" else (condition,)
        for split in ("train", "val"):
            # "all": the four conditions together (rgb_anon/<cond>/<split>/...), paired by relative path.
            name = f"acdc_seg_{condition}_{split}"
            if condition == "all":
                names.append(_register_acdc_all(name, split))
                continue
            names.append(_register_benchmark(
                name, ("acdc", "rgb_anon") + sub + (split,), ("acdc", "gt") + sub + (split,),
                "_rgb_anon.png", "_gt_labelIds.png"))
    dz_train = _Lazy("dark_zurich", "rgb_anon", "train", "night")  # unlabelled: the target stream
    _replace_registration("dark_zurich_seg_train")
    DatasetCatalog.register(
        "dark_zurich_seg_train", lambda: load_image_folder(os.fspath(dz_train), "dark_zurich_seg_train"))
    MetadataCatalog.get("dark_zurich_seg_train").set(labelled=False, stuff_classes=list(CITYSCAPES_CLASSES))
    names.append("dark_zurich_seg_train")
    names.append(_register_benchmark(
        "dark_zurich_seg_val", ("dark_zurich", "rgb_anon", "val", "night"), ("dark_zurich", "gt", "val", "night"),
        "_rgb_anon.png", "_gt_labelIds.png"))
    return names


def _register_acdc_all(name: str, split: str) -> str:
    def load():
        records = []
        for condition in ("fog", "night", "rain", "snow"):
            records += load_seg_pairs(
                name, os.path.join(_root(), "acdc", "rgb_anon", condition, split),
                os.path.join(_root(), "acdc", "gt", condition, split), "_rgb_anon.png", "_gt_labelIds.png")
        return records

    _register_benchmark(name, ("acdc",), ("acdc",), "", "")
    DatasetCatalog.pop(name)
    DatasetCatalog.register(name, load)
    return name



def _seg_entry_problem(spec: Dict) -> Optional[str]:
    stuff = spec.get("stuff_classes")
    if not isinstance(stuff, list) or not stuff or not all(isinstance(c, str) for c in stuff):
        return f"type seg needs stuff_classes, a non-empty list of names, got {stuff!r}"
    if not isinstance(spec.get("ignore_value", IGNORE), int):
        return f"ignore_value must be an integer, got {spec['ignore_value']!r}"
    return None


# The user-domain kind of images + label PNGs: ``type: seg`` in a domains YAML (inferred from
# ``label_dir``), ``--register-seg`` (with ``--seg-ignore-value``) on the command line.
register_domain_kind(DomainKind(
    name="seg",
    register=lambda spec: register_seg_domain(spec["name"], spec["image_dir"], spec["label_dir"],
                                              spec["stuff_classes"], ignore_value=spec.get("ignore_value", IGNORE)),
    paths={"image_dir": True, "label_dir": True},
    options=frozenset({"stuff_classes", "ignore_value"}),
    infer_key="label_dir",
    infer_priority=10,
    validate=_seg_entry_problem,
    flag=DomainFlag("--register-seg", ("NAME", "IMAGE_DIR", "LABEL_DIR", "CLASSES"),
                    "register a labelled segmentation set: images, label PNGs of the same names (x.jpg <-> x.png), "
                    "classes as 'a,b,c' or a .txt file with one name per line (repeatable)",
                    lambda v, args: {"name": v[0], "type": "seg", "image_dir": v[1], "label_dir": v[2],
                                     "stuff_classes": parse_classes(v[3]),
                                     "ignore_value": getattr(args, "seg_ignore_value", IGNORE)}),
    extra_options=(("--seg-ignore-value", dict(
        type=int, default=IGNORE, metavar="N",
        help=f"the label value meaning 'unlabelled' in --register-seg label PNGs (default {IGNORE})")),),
    summary="image_dir, label_dir, stuff_classes",
))


def _label_problem(dataset_name: str, label_file: str, image_size) -> Optional[str]:
    try:
        read_dataset_label(dataset_name, label_file, image_size=image_size)  # as the evaluator reads it
    except LabelError as e:
        return str(e)
    return None


register_label_file_check("sem_seg_file_name", _label_problem)
