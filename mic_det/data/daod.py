"""The other standard DAOD benchmarks: Sim10k/KITTI -> Cityscapes (car), Cityscapes -> BDD100k.

Each benchmark fixes the classes the two domains share, so the Cityscapes
side is registered again restricted to them (``cityscapes_car_*``,
``cityscapes7_*``); contiguous ids then agree between source and target.

* **Sim10k -> Cityscapes**, class ``car``. Sim10k ships in Pascal VOC layout
  ``sim10k/VOC2012/{JPEGImages,Annotations}``; all 10k annotated frames are the
  training set (as in the literature), only objects named ``car`` are kept
  (``motorbike`` and ``person`` are not). VOC's 1-based corners are made
  0-based as Detectron2's VOC loader does.
* **KITTI -> Cityscapes**, class ``car``. KITTI object layout
  ``kitti/training/{image_2,label_2}``; only the ``Car`` type is kept. ``Van``
  is *not* included: DAOD papers (DA-Faster onwards) use ``Car`` only, and
  Cityscapes' ``car`` does not contain vans consistently either.
  ``DontCare`` regions and other types are ignored.
* **Cityscapes -> BDD100k daytime**, the 7 shared classes (Cityscapes' ``train``
  has no BDD counterpart). Layout ``bdd100k/images/100k/{train,val}/*.jpg`` and
  ``bdd100k/labels/bdd100k_labels_images_{train,val}.json``; frames with
  ``attributes.timeofday == "daytime"``. Both BDD naming schemes are read
  (2018: ``person``, ``motor``, ``bike``; 2020: ``pedestrian``, ``motorcycle``,
  ``bicycle``).

Converted labels are cached like Cityscapes' (:func:`.cityscapes.cached_conversion`).
Boxes that are empty after clipping to the image are dropped and counted, as
for Cityscapes: these are the benchmarks' own labels, which users cannot fix.
"""

import logging
import os
import xml.etree.ElementTree as ET
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode

from .cityscapes import (
    CITYSCAPES_CLASSES,
    SPLITS,
    _CLEAR,
    cached_conversion,
    dataset_root,
    parallel_map,
    register_all_cityscapes_foggy,
    register_cityscapes_set,
)
from .domains import _replace_registration, image_size

__all__ = [
    "CAR_CLASSES",
    "BDD_CLASSES",
    "KITTI_TYPES",
    "BDD_CATEGORY_MAP",
    "load_sim10k",
    "load_kitti",
    "load_bdd100k",
    "register_all_daod",
]

logger = logging.getLogger(__name__)

CAR_CLASSES = ("car",)
#: Cityscapes' classes that BDD100k also has, in the same (DAOD) order.
BDD_CLASSES = tuple(c for c in CITYSCAPES_CLASSES if c != "train")
#: KITTI object types counted as "car".
KITTI_TYPES = ("Car",)
#: BDD100k category name (either release) -> class name.
BDD_CATEGORY_MAP = {
    "person": "person",
    "pedestrian": "person",
    "rider": "rider",
    "car": "car",
    "truck": "truck",
    "bus": "bus",
    "motor": "motorcycle",
    "motorcycle": "motorcycle",
    "bike": "bicycle",
    "bicycle": "bicycle",
}
BDD_TIME_OF_DAY = "daytime"

# One image header per this many files is checked at load time when sizes
# come from labels (cheap); the mapper finds the rest at read time.
_NUM_IMAGES_CHECKED = 16

Box = List[float]  # [class, x0, y0, x1, y1]


def _clip(box: Sequence[float], height: int, width: int) -> Optional[List[float]]:
    x0, y0 = max(0.0, float(box[0])), max(0.0, float(box[1]))
    x1, y1 = min(float(width), float(box[2])), min(float(height), float(box[3]))
    return [x0, y0, x1, y1] if x1 > x0 and y1 > y0 else None


def _require_dir(name: str, path: str, layout: str, root: str) -> None:
    if not os.path.isdir(path):
        raise FileNotFoundError(
            f"Dataset '{name}': {path} does not exist. Expected {layout} under "
            f"<root> = {root} (set DETECTRON2_DATASETS; see datasets/README.md)."
        )


def _to_records(
    name: str, entries: Dict[str, list], image_path: Callable[[str], str], classes: Sequence[str]
) -> List[dict]:
    """Cached ``{id: [h, w, [[cls, x0, y0, x1, y1]]]}`` -> Detectron2 records."""
    records = []
    for image_id in sorted(entries):
        height, width, boxes = entries[image_id]
        records.append(
            {
                "file_name": image_path(image_id),
                "image_id": image_id,
                "height": height,
                "width": width,
                "annotations": [
                    {
                        "bbox": b[1:],
                        "bbox_mode": BoxMode.XYXY_ABS,
                        "category_id": int(b[0]),
                        "iscrowd": 0,
                    }
                    for b in boxes
                ],
            }
        )
    if not records:
        raise ValueError(f"Dataset '{name}': no images found.")
    missing = [
        r["file_name"] for r in records[:_NUM_IMAGES_CHECKED] if not os.path.isfile(r["file_name"])
    ]
    if missing:
        raise FileNotFoundError(
            f"Dataset '{name}': labelled images are missing (of the first "
            f"{_NUM_IMAGES_CHECKED} checked), e.g. {missing[0]}."
        )
    logger.info(
        f"Loaded {len(records)} images, {sum(len(r['annotations']) for r in records)} boxes "
        f"of {list(classes)} for dataset '{name}'."
    )
    return records


def _log_dropped(source: str, dropped: int) -> None:
    if dropped:
        logger.warning(
            f"{source}: dropped {dropped} boxes that are empty after clipping to the image."
        )


# -------------------------------------------------------------------- Sim10k
def _add_car_box(boxes: List[Box], corners: List[float], height: int, width: int) -> int:
    """Append the clipped box (class 0, car) to ``boxes``; 1 if it was empty after clipping, else 0."""
    box = _clip(corners, height, width)
    if box is None:
        return 1
    boxes.append([0] + box)
    return 0


def _parse_voc_xml(args: Tuple[str, str]) -> Tuple[int, int, List[Box], int]:
    """One VOC xml -> (height, width, car boxes, #dropped); size from the image if absent."""
    xml_file, image_file = args
    try:
        tree = ET.parse(xml_file)
    except ET.ParseError as e:
        raise ValueError(f"{xml_file} is not a valid Pascal VOC xml ({e}).") from None
    size = tree.find("size")
    try:
        width, height = int(size.find("width").text), int(size.find("height").text)
    except (AttributeError, TypeError, ValueError):
        width = height = 0
    if width <= 0 or height <= 0:  # some VOC exports write 0 or omit <size>
        height, width = image_size(image_file)
    boxes, dropped = [], 0
    for obj in tree.findall("object"):
        if (obj.findtext("name") or "").strip().lower() not in CAR_CLASSES:
            continue
        bb = obj.find("bndbox")
        try:
            corners = [float(bb.find(k).text) for k in ("xmin", "ymin", "xmax", "ymax")]
        except (AttributeError, TypeError, ValueError):
            raise ValueError(f"{xml_file}: an object lacks a numeric <bndbox>.") from None
        corners[0] -= 1.0  # VOC pixel indices are 1-based (as detectron2's VOC loader)
        corners[1] -= 1.0
        dropped += _add_car_box(boxes, corners, height, width)
    return height, width, boxes, dropped


def _load_per_image_labels(
    name: str,
    root: Optional[str],
    label_dir: str,
    image_dir: str,
    layout: str,
    label_ext: str,
    image_ext: str,
    parse: Callable[[Tuple[str, str]], Tuple[int, int, List[Box], int]],
    cache_key: str,
) -> List[dict]:
    """Records of a layout with one label file per image (Sim10k's VOC xml, KITTI's txt).

    ``parse((label_file, image_file))`` -> (height, width, boxes, #dropped); the
    conversion is cached like Cityscapes' (see :func:`cached_conversion`).
    """
    root = dataset_root(root)
    label_dir, image_dir = os.path.join(root, label_dir), os.path.join(root, image_dir)
    _require_dir(name, label_dir, layout, root)
    _require_dir(name, image_dir, layout, root)
    labels = sorted(os.path.join(label_dir, f) for f in os.listdir(label_dir) if f.endswith(label_ext))
    if not labels:
        raise FileNotFoundError(f"Dataset '{name}': no {label_ext} files in {label_dir}.")

    def image_path(stem: str) -> str:
        return os.path.join(image_dir, stem + image_ext)

    def build() -> Dict[str, list]:
        stems = [os.path.basename(x)[: -len(label_ext)] for x in labels]
        parsed = parallel_map(parse, [(x, image_path(s)) for x, s in zip(labels, stems)])
        _log_dropped(label_dir, sum(p[3] for p in parsed))
        return {s: [h, w, b] for s, (h, w, b, _) in zip(stems, parsed)}

    entries = cached_conversion(cache_key, labels, label_dir, root, build)
    return _to_records(name, entries, image_path, CAR_CLASSES)


def load_sim10k(name: str = "sim10k_car_train", root: Optional[str] = None) -> List[dict]:
    """All annotated Sim10k frames with their ``car`` boxes."""
    return _load_per_image_labels(
        name, root, "sim10k/VOC2012/Annotations", "sim10k/VOC2012/JPEGImages",
        "sim10k/VOC2012/{JPEGImages,Annotations}", ".xml", ".jpg", _parse_voc_xml, "sim10k-car",
    )


# --------------------------------------------------------------------- KITTI
def _parse_kitti_label(args: Tuple[str, str]) -> Tuple[int, int, List[Box], int]:
    """One KITTI ``label_2`` txt -> (height, width, car boxes, #dropped).

    KITTI labels have no image size, so it is read from the PNG header.
    Columns: type, truncated, occluded, alpha, left, top, right, bottom, ...
    """
    txt_file, image_file = args
    if not os.path.isfile(image_file):
        raise FileNotFoundError(f"{txt_file} has no image: {image_file} does not exist.")
    height, width = image_size(image_file)
    boxes, dropped = [], 0
    with open(txt_file, "r") as f:
        for lineno, line in enumerate(f, 1):
            parts = line.split()
            if not parts or parts[0] not in KITTI_TYPES:
                continue
            try:
                corners = [float(v) for v in parts[4:8]]
            except ValueError:
                corners = []
            if len(corners) != 4:
                raise ValueError(
                    f"{txt_file}:{lineno}: not a KITTI object label line: {line.strip()!r}"
                )
            dropped += _add_car_box(boxes, corners, height, width)
    return height, width, boxes, dropped


def load_kitti(name: str = "kitti_car_train", root: Optional[str] = None) -> List[dict]:
    """KITTI object ``training`` frames with their ``Car`` boxes."""
    return _load_per_image_labels(
        name, root, "kitti/training/label_2", "kitti/training/image_2",
        "kitti/training/{image_2,label_2}", ".txt", ".png", _parse_kitti_label, "kitti-car",
    )


# ------------------------------------------------------------------- BDD100k
def _image_hw(path: str) -> Tuple[int, int]:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"BDD100k image {path} (named in the labels json) does not exist.")
    return image_size(path)


def load_bdd100k(name: str, split: str, root: Optional[str] = None) -> List[dict]:
    """BDD100k daytime frames of ``split`` with boxes of the 7 shared classes."""
    import json

    root = dataset_root(root)
    base = os.path.join(root, "bdd100k")
    img_dir = os.path.join(base, "images", "100k", split)
    label_file = os.path.join(base, "labels", f"bdd100k_labels_images_{split}.json")
    _require_dir(name, img_dir, "bdd100k/images/100k/<split>", root)
    if not os.path.isfile(label_file):
        raise FileNotFoundError(
            f"Dataset '{name}': label file {label_file} does not exist (expected "
            f"bdd100k/labels/bdd100k_labels_images_<split>.json under {root})."
        )
    index = {c: i for i, c in enumerate(BDD_CLASSES)}

    def image_path(image_id: str) -> str:
        return os.path.join(img_dir, image_id)

    def build() -> Dict[str, list]:
        logger.info(f"Converting BDD100k labels {label_file} ...")
        try:
            with open(label_file, "r") as f:
                frames = json.load(f)
        except ValueError as e:
            raise ValueError(f"Dataset '{name}': {label_file} is not valid JSON ({e}).") from None
        if not isinstance(frames, list):
            raise ValueError(f"Dataset '{name}': {label_file} should hold a list of frames.")
        day = [
            fr for fr in frames if (fr.get("attributes") or {}).get("timeofday") == BDD_TIME_OF_DAY
        ]
        sizes = parallel_map(_image_hw, [image_path(fr["name"]) for fr in day])
        out, dropped = {}, 0
        for fr, (height, width) in zip(day, sizes):
            boxes = []
            for lab in fr.get("labels") or []:
                cls = BDD_CATEGORY_MAP.get(lab.get("category"))
                b2d = lab.get("box2d")
                if cls not in index or not b2d:
                    continue
                box = _clip([b2d["x1"], b2d["y1"], b2d["x2"], b2d["y2"]], height, width)
                if box is None:
                    dropped += 1
                else:
                    boxes.append([index[cls]] + box)
            out[fr["name"]] = [height, width, boxes]
        _log_dropped(label_file, dropped)
        return out

    # The image folder's own mtime changes when images are added or removed.
    entries = cached_conversion(
        f"bdd100k-daytime-{split}", [label_file, img_dir], base, root, build
    )
    return _to_records(name, entries, image_path, BDD_CLASSES)


# -------------------------------------------------------------- registration
def _register(
    name: str, loader: Callable[[], List[dict]], classes: Sequence[str], **meta: Any
) -> None:
    _replace_registration(name)
    DatasetCatalog.register(name, loader)
    MetadataCatalog.get(name).set(
        thing_classes=list(classes), evaluator_type="coco", labelled=True, **meta
    )


def register_all_daod(root: Optional[str] = None) -> List[str]:
    """Register Cityscapes/Foggy Cityscapes and the Sim10k, KITTI, BDD100k benchmarks.

    Args:
        root: the datasets folder; None (what ``builtin`` passes) reads
            ``$DETECTRON2_DATASETS`` (default ``datasets``) when a set is
            loaded, so the variable may be set after import.

    Returns:
        the registered names.
    """
    names = register_all_cityscapes_foggy(root)
    for split in SPLITS:
        for prefix, classes in (("cityscapes_car", CAR_CLASSES), ("cityscapes7", BDD_CLASSES)):
            name = f"{prefix}_{split}"
            register_cityscapes_set(name, split, [_CLEAR], classes, root, domain="cityscapes")
            names.append(name)
    _register(
        "sim10k_car_train",
        lambda: load_sim10k("sim10k_car_train", root),
        CAR_CLASSES,
        domain="sim10k",
        split="train",
    )
    _register(
        "kitti_car_train",
        lambda: load_kitti("kitti_car_train", root),
        CAR_CLASSES,
        domain="kitti",
        split="train",
    )
    names += ["sim10k_car_train", "kitti_car_train"]
    for split in SPLITS:
        name = f"bdd100k_daytime_{split}"
        _register(
            name,
            (lambda n, s: lambda: load_bdd100k(n, s, root))(name, split),
            BDD_CLASSES,
            domain="bdd100k_daytime",
            split=split,
        )
        names.append(name)
    return names
