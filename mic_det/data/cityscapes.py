"""Cityscapes -> Foggy Cityscapes, the standard detection-adaptation benchmark.

Boxes come from the gtFine polygons (``*_gtFine_polygons.json``) of the 8
classes with instances, in the order the DAOD literature reports them:
person, rider, car, truck, bus, train, motorcycle, bicycle. Objects labelled
``<class>group`` (crowds that the annotators could not split) are ignored, as
in DAOD practice; a box is the extent of its polygon, clipped to the image.

Foggy Cityscapes renders fog over the *same* frames, so each foggy image takes
the labels of its clear image. Its three fog densities ``beta`` (0.005, 0.01,
0.02 per metre) are separate datasets, plus ``_all`` with the three together.

Layout, under ``$DETECTRON2_DATASETS`` (default ``datasets``), resolved when a
set is first loaded so the variable may be set after import::

    cityscapes/leftImg8bit/{train,val}/<city>/<frame>_leftImg8bit.png
    cityscapes/leftImg8bit_foggy/{train,val}/<city>/<frame>_leftImg8bit_foggy_beta_<b>.png
    cityscapes/gtFine/{train,val}/<city>/<frame>_gtFine_polygons.json

Parsing ~3k polygon jsons takes tens of seconds, so the converted boxes are
cached (see :func:`cached_conversion`) and later starts read one file.
"""

import hashlib
import json
import logging
import multiprocessing as mp
import os
import tempfile
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode

from .domains import _replace_registration

__all__ = [
    "CITYSCAPES_CLASSES",
    "FOG_BETAS",
    "dataset_root",
    "cached_conversion",
    "parallel_map",
    "load_gtfine_boxes",
    "load_cityscapes_boxes",
    "register_cityscapes_set",
    "register_all_cityscapes_foggy",
]

logger = logging.getLogger(__name__)

#: The 8 Cityscapes classes with instances, in DAOD reporting order.
CITYSCAPES_CLASSES = ("person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle")
#: Fog densities (attenuation per metre) of Foggy Cityscapes, as in its file names.
FOG_BETAS = ("0.005", "0.01", "0.02")
SPLITS = ("train", "val")

# Bump when the cached content changes meaning, so old caches are not read.
_CACHE_VERSION = 1
# Below this many files a process pool costs more than it saves.
_POOL_MIN_FILES = 64

_CLEAR = ("leftImg8bit", "_leftImg8bit.png")
_GT_SUFFIX = "_gtFine_polygons.json"


def _foggy(beta: str) -> Tuple[str, str]:
    return ("leftImg8bit_foggy", f"_leftImg8bit_foggy_beta_{beta}.png")


def dataset_root(root: Optional[str] = None) -> str:
    """``root``, or ``$DETECTRON2_DATASETS`` (default ``datasets``) read *now*."""
    if root is None:
        root = os.getenv("DETECTRON2_DATASETS", "datasets")
    return os.path.expanduser(os.fspath(root))


# --------------------------------------------------------------------- cache
def _cache_dirs(root: str) -> List[str]:
    xdg = os.getenv("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return [os.path.join(root, ".mic_det_cache"), os.path.join(xdg, "mic_det")]


def _fingerprint(kind: str, files: Sequence[str], base: str) -> str:
    """Hash of the source files' relative paths, sizes and mtimes.

    Any added, removed, or edited label file changes it, so a stale cache is
    never read; re-reading 3k ``stat`` results is milliseconds.
    """
    h = hashlib.sha1(f"{_CACHE_VERSION}|{kind}".encode())
    for f in sorted(files):
        st = os.stat(f)
        h.update(f"|{os.path.relpath(f, base)}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:20]


def cached_conversion(
    kind: str, files: Sequence[str], base: str, root: str, build: Callable[[], Any]
) -> Any:
    """Return ``build()``, reusing an earlier result for the same source files.

    The result (JSON-serialisable) is stored as
    ``<root>/.mic_det_cache/<kind>-<fingerprint>.json`` or, when the dataset
    root cannot be written (a shared read-only mount), under
    ``$XDG_CACHE_HOME/mic_det`` (default ``~/.cache/mic_det``). The key covers
    the file list, sizes and mtimes of ``files`` (paths taken relative to
    ``base``), so moving a dataset as a whole keeps its cache valid.
    """
    name = f"{kind}-{_fingerprint(kind, files, base)}.json"
    dirs = _cache_dirs(root)
    for d in dirs:
        path = os.path.join(d, name)
        if os.path.isfile(path):
            try:
                with open(path, "r") as f:
                    value = json.load(f)
                logger.info(f"Read converted {kind} labels from cache {path}.")
                return value
            except (OSError, ValueError):
                logger.warning(f"Ignoring unreadable cache {path}; converting again.")
    value = build()
    for d in dirs:
        try:
            os.makedirs(d, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=d, suffix=".tmp")
            with os.fdopen(fd, "w") as f:
                json.dump(value, f)
            os.replace(tmp, os.path.join(d, name))  # atomic: readers never see half a file
            logger.info(f"Cached converted {kind} labels in {os.path.join(d, name)}.")
            break
        except OSError:
            continue
    else:
        logger.warning(f"Could not write a cache for {kind} in any of {dirs}.")
    return value


def parallel_map(fn: Callable, items: Sequence, min_items: Optional[int] = None) -> List:
    """``[fn(x) for x in items]``, in a process pool when there are many items.

    Label conversion is per-file and CPU-bound (json/xml parsing), so a pool
    scales with cores; for a handful of files the pool start-up dominates.
    """
    items = list(items)
    if len(items) < (_POOL_MIN_FILES if min_items is None else min_items):
        return [fn(x) for x in items]
    processes = max(1, min(os.cpu_count() or 1, 8))
    with mp.Pool(processes=processes) as pool:
        return pool.map(fn, items, chunksize=max(1, len(items) // (processes * 8)))


# ------------------------------------------------------------------- parsing
_CLASS_INDEX = {c: i for i, c in enumerate(CITYSCAPES_CLASSES)}


def _parse_gtfine_json(json_file: str) -> Tuple[int, int, List[List[float]], int]:
    """One gtFine polygon file -> (height, width, [[class, x0, y0, x1, y1]], #dropped).

    Polygon vertices are integer pixel indices and the rasterised polygon
    covers the pixel *at* its maximum vertex, so the box's far edge is
    ``max + 1`` (the tight box of the instance mask). Boxes are clipped to the
    image; ones left empty are dropped and counted.
    """
    try:
        with open(json_file, "r") as f:
            obj = json.load(f)
        height, width = int(obj["imgHeight"]), int(obj["imgWidth"])
        objects = obj["objects"]
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(
            f"{json_file} is not a Cityscapes gtFine polygon file ({type(e).__name__}: {e})."
        ) from None
    boxes, dropped = [], 0
    for o in objects:
        cls = _CLASS_INDEX.get(o.get("label"))  # "persongroup" etc. are not keys: ignored
        if cls is None or o.get("deleted"):
            continue
        xs = [p[0] for p in o["polygon"]]
        ys = [p[1] for p in o["polygon"]]
        if not xs:
            dropped += 1
            continue
        x0, y0 = max(0.0, float(min(xs))), max(0.0, float(min(ys)))
        x1, y1 = min(float(width), max(xs) + 1.0), min(float(height), max(ys) + 1.0)
        if x1 <= x0 or y1 <= y0:
            dropped += 1
            continue
        boxes.append([cls, x0, y0, x1, y1])
    return height, width, boxes, dropped


def _list_files(folder: str, suffix: str) -> List[str]:
    """Files ending in ``suffix`` in the city sub-folders of ``folder``, sorted."""
    out = []
    for city in sorted(os.listdir(folder)):
        city_dir = os.path.join(folder, city)
        if os.path.isdir(city_dir):
            out.extend(
                os.path.join(city_dir, f)
                for f in sorted(os.listdir(city_dir))
                if f.endswith(suffix)
            )
    return out


def _layout_error(name: str, missing: str, root: str) -> FileNotFoundError:
    return FileNotFoundError(
        f"Dataset '{name}': {missing} does not exist. Expected the Cityscapes layout "
        f"<root>/cityscapes/{{leftImg8bit,leftImg8bit_foggy,gtFine}}/<split>/<city>/ with "
        f"<root> = {root} (set DETECTRON2_DATASETS to the folder holding cityscapes/; "
        f"see datasets/README.md)."
    )


def _required_files(name: str, folder: str, suffix: str, root: str) -> List[str]:
    """The ``*suffix`` files in ``folder``'s city folders; a clear error if there are none."""
    if not os.path.isdir(folder):
        raise _layout_error(name, folder, root)
    files = _list_files(folder, suffix)
    if not files:
        raise FileNotFoundError(f"Dataset '{name}': no *{suffix} files in the city folders of {folder}.")
    return files


def load_gtfine_boxes(gt_dir: str, root: str, name: str = "cityscapes") -> Dict[str, list]:
    """``{"<city>/<frame>": [height, width, [[class, x0, y0, x1, y1], ...]]}`` of a split.

    Cached per split; the first parse runs in a process pool.
    """
    files = _required_files(name, gt_dir, _GT_SUFFIX, root)

    def build() -> Dict[str, list]:
        logger.info(f"Converting {len(files)} Cityscapes polygon files in {gt_dir} ...")
        parsed = parallel_map(_parse_gtfine_json, files)
        out, dropped = {}, 0
        for f, (h, w, boxes, n) in zip(files, parsed):
            key = os.path.relpath(f, gt_dir)[: -len(_GT_SUFFIX)].replace(os.sep, "/")
            out[key] = [h, w, boxes]
            dropped += n
        if dropped:
            logger.warning(f"{gt_dir}: dropped {dropped} objects whose clipped box is empty.")
        return out

    kind = "cityscapes-gtfine-" + os.path.basename(os.path.normpath(gt_dir))
    return cached_conversion(kind, files, gt_dir, root, build)


def load_cityscapes_boxes(
    name: str,
    split: str,
    images: Sequence[Tuple[str, str]],
    classes: Sequence[str] = CITYSCAPES_CLASSES,
    root: Optional[str] = None,
) -> List[dict]:
    """Detectron2 records of one split, for one or more image variants.

    Args:
        name: dataset name, for messages.
        split: "train" or "val".
        images: ``(folder, suffix)`` pairs, e.g. ``("leftImg8bit", "_leftImg8bit.png")``;
            several pairs concatenate (the ``_all`` foggy set).
        classes: the subset of :data:`CITYSCAPES_CLASSES` to keep, in the
            order that defines the contiguous ids (``("car",)`` for Sim10k/KITTI).
        root: dataset root; None = ``$DETECTRON2_DATASETS``.
    """
    root = dataset_root(root)
    base = os.path.join(root, "cityscapes")
    gt = load_gtfine_boxes(os.path.join(base, "gtFine", split), root, name)
    remap = {CITYSCAPES_CLASSES.index(c): i for i, c in enumerate(classes)}
    records, unlabelled = [], []
    for folder, suffix in images:
        image_dir = os.path.join(base, folder, split)
        files = _required_files(name, image_dir, suffix, root)
        for path in files:
            key = os.path.relpath(path, image_dir)[: -len(suffix)].replace(os.sep, "/")
            if key not in gt:
                unlabelled.append(path)
                continue
            height, width, boxes = gt[key]
            records.append(
                {
                    "file_name": path,
                    "image_id": os.path.basename(path)[: -len(".png")],
                    "height": height,
                    "width": width,
                    "annotations": [
                        {
                            "bbox": b[1:],
                            "bbox_mode": BoxMode.XYXY_ABS,
                            "category_id": remap[b[0]],
                            "iscrowd": 0,
                        }
                        for b in boxes
                        if b[0] in remap
                    ],
                }
            )
    if unlabelled:
        shown = "\n  ".join(unlabelled[:5])
        raise FileNotFoundError(
            f"Dataset '{name}': {len(unlabelled)} image(s) have no *{_GT_SUFFIX} in "
            f"{os.path.join(base, 'gtFine', split)}, e.g.\n  {shown}"
        )
    logger.info(f"Loaded {len(records)} images of dataset '{name}'.")
    return records


def register_cityscapes_set(
    name: str,
    split: str,
    images: Sequence[Tuple[str, str]],
    classes: Sequence[str] = CITYSCAPES_CLASSES,
    root: Optional[str] = None,
    **metadata: Any,
) -> None:
    """Register one Cityscapes-derived set lazily (see :func:`load_cityscapes_boxes`)."""
    images, classes = list(images), tuple(classes)
    _replace_registration(name)
    DatasetCatalog.register(name, lambda: load_cityscapes_boxes(name, split, images, classes, root))
    MetadataCatalog.get(name).set(
        thing_classes=list(classes), evaluator_type="coco", labelled=True, split=split, **metadata
    )


def register_all_cityscapes_foggy(root: Optional[str] = None) -> List[str]:
    """Register ``cityscapes_{train,val}`` and every Foggy Cityscapes set; return the names.

    ``root`` None means ``$DETECTRON2_DATASETS`` read at load time.
    """
    names = []
    for split in SPLITS:
        name = f"cityscapes_{split}"
        register_cityscapes_set(name, split, [_CLEAR], root=root, domain="cityscapes")
        names.append(name)
        for beta in FOG_BETAS:
            name = f"cityscapes_foggy_{split}_{beta}"
            register_cityscapes_set(
                name,
                split,
                [_foggy(beta)],
                root=root,
                domain="foggy_cityscapes",
                fog_beta=float(beta),
            )
            names.append(name)
        name = f"cityscapes_foggy_{split}_all"
        register_cityscapes_set(
            name,
            split,
            [_foggy(b) for b in FOG_BETAS],
            root=root,
            domain="foggy_cityscapes",
            fog_beta="all",
        )
        names.append(name)
    return names
