"""Register user domains with Detectron2's catalogs, without code changes elsewhere.

Every dataset mic_det uses, the built-in synthetic pair included, goes through
these functions, so user data and built-in data take the same path.

Two kinds of domain exist:

* a **COCO** domain (:func:`register_coco_domain`): a COCO-format json plus the
  folder its ``file_name`` entries are relative to. This is the labelled kind
  (source sets, evaluation sets, or a target set whose labels are only used to
  *measure* pseudo-labels).
* an **image folder** (:func:`register_image_folder`): unlabelled target images,
  found recursively. Records have no ``annotations`` key at all.

Both are lazy: registering reads nothing; the first
``DatasetCatalog.get(name)`` parses and validates.

Validation policy for labels a user wrote (COCO jsons): strict. A json that
does not parse, an annotation whose ``category_id`` is not in ``categories``,
or a box with zero or negative width/height or wholly outside its image is an
error naming the json, the image and the annotation id. Such labels are wrong
and silently dropping them would bias both training and evaluation; the user
can fix them. (Labels
*converted* from public benchmarks, see ``cityscapes.py``/``daod.py``, follow
the literature instead: boxes that become empty after clipping are dropped and
counted, because nobody can fix Cityscapes.)
"""

import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode

__all__ = [
    "IMAGE_EXTENSIONS",
    "register_coco_domain",
    "register_image_folder",
    "load_coco_domain",
    "load_image_folder",
    "list_images",
    "image_size",
    "is_labelled",
    "set_metadata",
]

logger = logging.getLogger(__name__)

#: File extensions (lower case) an image folder is searched for.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")

#: How many image files of a COCO set are checked for existence at load time.
#: Checking all of them costs one ``stat`` per image on possibly slow network
#: storage; the rest are found at read time by the mapper.
NUM_IMAGES_CHECKED = 16

_EXIF_ORIENTATION = 0x0112

# Folders with more images than this read their headers in a thread pool.
_THREADED_HEADER_READS = 256

# How many offending entries an error message lists before "... and N more".
_MAX_LISTED = 5


def _replace_registration(name: str) -> None:
    """Drop an earlier registration of ``name`` so re-registering is allowed.

    Users re-run notebooks and tools register from several places (config,
    command line); Detectron2's catalogs refuse duplicates outright.
    """
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
    if name in MetadataCatalog.list():
        MetadataCatalog.remove(name)


def set_metadata(name: str, **kwargs: Any) -> None:
    """Set metadata keys, replacing values that changed.

    Detectron2's ``Metadata`` refuses to change a key; a json edited between
    two loads in one process (a notebook) legitimately changes its classes.
    """
    meta = MetadataCatalog.get(name)
    for key, value in kwargs.items():
        if key in meta.as_dict() and meta.get(key) != value:
            delattr(meta, key)
        setattr(meta, key, value)


def is_labelled(name: str) -> bool:
    """Whether dataset ``name`` carries box labels (image folders do not)."""
    return bool(MetadataCatalog.get(name).get("labelled", True))


# ---------------------------------------------------------------------- COCO
def _listed(items: Sequence[str]) -> str:
    shown = "\n  ".join(items[:_MAX_LISTED])
    more = f"\n  ... and {len(items) - _MAX_LISTED} more" if len(items) > _MAX_LISTED else ""
    return "\n  " + shown + more


def _read_json(name: str, json_file: str) -> Any:
    try:
        with open(json_file, "r", encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(
            f"Dataset '{name}': annotation file {json_file} is not valid JSON "
            f"({e.msg} at line {e.lineno}, column {e.colno})."
        ) from None
    except UnicodeDecodeError as e:
        raise ValueError(
            f"Dataset '{name}': annotation file {json_file} is not UTF-8 text ({e.reason})."
        ) from None


def _category_map(
    name: str, json_file: str, categories: Any, thing_classes: Optional[Sequence[str]]
) -> Dict[int, Optional[int]]:
    """Map the json's category ids to contiguous ids 0..K-1.

    Without ``thing_classes`` the order is the json's ids, sorted (Detectron2's
    rule). With ``thing_classes`` the json's categories are matched *by name*,
    so two jsons that number the same classes differently still line up;
    categories not listed map to ``None`` (their annotations are dropped).
    """
    if not isinstance(categories, list) or not all(
        isinstance(c, dict) and "id" in c and "name" in c for c in categories
    ):
        raise ValueError(
            f"Dataset '{name}': 'categories' in {json_file} must be a list of "
            f"{{'id': int, 'name': str}} entries."
        )
    ids = [c["id"] for c in categories]
    if len(set(ids)) != len(ids):
        dup = sorted({str(i) for i in ids if ids.count(i) > 1})
        raise ValueError(f"Dataset '{name}': category ids {dup} repeat in {json_file}.")
    cats = sorted(categories, key=lambda c: c["id"])
    if thing_classes is None:
        return {c["id"]: i for i, c in enumerate(cats)}
    names = [c["name"] for c in cats]
    missing = [t for t in thing_classes if t not in names]
    if missing:
        raise ValueError(
            f"Dataset '{name}': thing_classes {list(thing_classes)} name {missing}, "
            f"which are not among the categories of {json_file}: {names}."
        )
    index = {t: i for i, t in enumerate(thing_classes)}
    return {c["id"]: index.get(c["name"]) for c in cats}


def _image_table(name: str, json_file: str, images: Any) -> Dict[Any, dict]:
    if not isinstance(images, list):
        raise ValueError(f"Dataset '{name}': 'images' in {json_file} must be a list.")
    table: Dict[Any, dict] = {}
    for i, img in enumerate(images):
        missing = [k for k in ("id", "file_name", "height", "width") if k not in img]
        if missing:
            raise ValueError(
                f"Dataset '{name}': image entry #{i} in {json_file} lacks {missing} "
                f"(every image needs id, file_name, height and width)."
            )
        if img["id"] in table:
            raise ValueError(
                f"Dataset '{name}': image id {img['id']} appears twice in {json_file} "
                f"({table[img['id']]['file_name']} and {img['file_name']})."
            )
        table[img["id"]] = img
    return table


def _valid_segmentation(segm: Any) -> Any:
    """A polygon list without degenerate polygons, an RLE, or None.

    Detectron2 drops a whole instance whose polygons are all degenerate; for a
    box detector that would lose a valid box, so only the mask is dropped.
    """
    if isinstance(segm, dict):
        if isinstance(segm.get("counts"), list):
            import pycocotools.mask as mask_util

            return mask_util.frPyObjects(segm, *segm["size"])
        return segm
    if isinstance(segm, list):
        polys = [p for p in segm if len(p) % 2 == 0 and len(p) >= 6]
        return polys or None
    return None


def load_coco_domain(
    json_file: str, image_root: str, name: str, thing_classes: Optional[Sequence[str]] = None
) -> List[dict]:
    """Parse and validate a COCO json into Detectron2 dataset dicts.

    Produces the same records as :func:`detectron2.data.datasets.load_coco_json`
    (``file_name``, ``height``, ``width``, ``image_id``, ``annotations`` with
    ``bbox`` in ``XYWH_ABS``, contiguous ``category_id``, ``iscrowd``,
    ``segmentation``), but every bad input is reported with the file, image and
    annotation it concerns instead of an assertion deep inside pycocotools.
    Sets ``thing_classes`` and ``thing_dataset_id_to_contiguous_id`` on the
    dataset's metadata, as Detectron2 does.
    """
    if not os.path.isfile(json_file):
        raise FileNotFoundError(
            f"Dataset '{name}': annotation file {json_file} does not exist "
            f"(expected a COCO-format json)."
        )
    if not os.path.isdir(image_root):
        raise FileNotFoundError(
            f"Dataset '{name}': image root {image_root} does not exist "
            f"(expected the folder that the json's file_name entries are relative to)."
        )
    data = _read_json(name, json_file)
    if not isinstance(data, dict) or "images" not in data:
        raise ValueError(
            f"Dataset '{name}': {json_file} is not a COCO json (a dict with 'images', "
            f"'annotations' and 'categories' is expected)."
        )
    images = _image_table(name, json_file, data["images"])
    annotations = data.get("annotations", [])
    if annotations and "categories" not in data:
        raise ValueError(f"Dataset '{name}': {json_file} has annotations but no 'categories'.")
    id_map = _category_map(name, json_file, data.get("categories", []), thing_classes)
    cats = sorted(data.get("categories", []), key=lambda c: c["id"])
    classes = list(thing_classes) if thing_classes is not None else [c["name"] for c in cats]

    per_image: Dict[Any, List[dict]] = {i: [] for i in images}
    unknown_cat: List[str] = []
    bad_box: List[str] = []
    num_dropped = 0
    for k, anno in enumerate(annotations):
        ann_id = anno.get("id", f"#{k}")
        img = images.get(anno.get("image_id"))
        if img is None:
            raise ValueError(
                f"Dataset '{name}': annotation {ann_id} in {json_file} refers to "
                f"image_id {anno.get('image_id')!r}, which is not in 'images'."
            )
        where = f"annotation {ann_id} of image {img['file_name']} (id {img['id']})"
        cat = anno.get("category_id")
        if cat not in id_map:
            unknown_cat.append(f"{where}: category_id {cat!r}")
            continue
        bbox = anno.get("bbox")
        if not isinstance(bbox, (list, tuple)) or len(bbox) != 4:
            raise ValueError(
                f"Dataset '{name}': {where} in {json_file} has bbox {bbox!r}; "
                f"COCO boxes are [x, y, width, height]."
            )
        if not (bbox[2] > 0 and bbox[3] > 0):
            bad_box.append(f"{where}: bbox {list(bbox)} has zero or negative width/height")
            continue
        x, y, w, h = bbox
        if x >= img["width"] or y >= img["height"] or x + w <= 0 or y + h <= 0:
            # Clipping to the image would make it a zero-size box: the same mistake
            # (often x/y swapped, or the boxes of another image size).
            bad_box.append(
                f"{where}: bbox {list(bbox)} lies wholly outside the "
                f"{img['width']}x{img['height']} (w x h) image"
            )
            continue
        if id_map[cat] is None:  # a category the user's thing_classes leave out
            num_dropped += 1
            continue
        obj = {
            "bbox": [float(v) for v in bbox],
            "bbox_mode": BoxMode.XYWH_ABS,
            "category_id": id_map[cat],
            "iscrowd": int(anno.get("iscrowd", 0)),
        }
        segm = _valid_segmentation(anno.get("segmentation"))
        if segm is not None:
            obj["segmentation"] = segm
        per_image[img["id"]].append(obj)

    if unknown_cat:
        raise ValueError(
            f"Dataset '{name}': {len(unknown_cat)} annotation(s) in {json_file} use a "
            f"category_id that is not in its 'categories' (ids {sorted(id_map)}):"
            + _listed(unknown_cat)
        )
    if bad_box:
        raise ValueError(
            f"Dataset '{name}': {len(bad_box)} annotation(s) in {json_file} have a box "
            f"with zero or negative width/height or wholly outside its image (COCO boxes "
            f"are [x, y, width, height]; fix or remove them):" + _listed(bad_box)
        )
    if num_dropped:
        logger.info(
            f"Dataset '{name}': dropped {num_dropped} annotations of categories not in "
            f"thing_classes {classes}."
        )

    records = []
    for img_id, img in images.items():
        records.append(
            {
                "file_name": os.path.join(image_root, img["file_name"]),
                "height": int(img["height"]),
                "width": int(img["width"]),
                "image_id": img_id,
                "annotations": per_image[img_id],
            }
        )
    missing = [
        r["file_name"] for r in records[:NUM_IMAGES_CHECKED] if not os.path.isfile(r["file_name"])
    ]
    if missing:
        raise FileNotFoundError(
            f"Dataset '{name}': images named in {json_file} are missing under "
            f"{image_root} (of the first {NUM_IMAGES_CHECKED} checked):" + _listed(missing)
        )

    set_metadata(
        name,
        thing_classes=classes,
        thing_dataset_id_to_contiguous_id={k: v for k, v in id_map.items() if v is not None},
    )
    if [c["name"] for c in cats] == classes:
        # The json's own categories are exactly the classes: the evaluator may
        # score against the original json (else it converts the records).
        set_metadata(name, json_file=json_file)
    logger.info(f"Loaded {len(records)} images of dataset '{name}' from {json_file}.")
    return records


def register_coco_domain(
    name: str, json_file: str, image_root: str, metadata: Optional[dict] = None
) -> None:
    """Register a COCO-format json + image folder as dataset ``name``.

    Loading is lazy (on first use), as with Detectron2's built-in datasets, so
    registering a set that is not on disk costs nothing until it is asked for.

    ``metadata`` may hold ``thing_classes``: the json's categories are then
    matched to it by name (fixing the class order across domains whose jsons
    number classes differently) and annotations of other categories are dropped.
    """
    json_file, image_root = os.fspath(json_file), os.fspath(image_root)
    metadata = dict(metadata or {})
    thing_classes = metadata.get("thing_classes")
    if thing_classes is not None:
        thing_classes = list(thing_classes)
        metadata["thing_classes"] = thing_classes
    _replace_registration(name)
    DatasetCatalog.register(
        name, lambda: load_coco_domain(json_file, image_root, name, thing_classes)
    )
    meta = dict(json_file=json_file, image_root=image_root, evaluator_type="coco", labelled=True)
    if thing_classes is not None:
        # The json may hold classes this domain drops, and the evaluator would
        # score against all of them; ``json_file`` is set at load time only if
        # the json's categories are exactly ``thing_classes``. Without it
        # Detectron2's evaluator converts the (filtered) records instead.
        del meta["json_file"]
    meta.update(metadata)
    MetadataCatalog.get(name).set(**meta)


# -------------------------------------------------------------- image folder
def list_images(image_dir: str) -> List[str]:
    """All image files under ``image_dir``, recursively, sorted by relative path.

    Sorting makes image ids (and so sampling with a fixed seed) the same on
    every machine, whatever order the file system lists.
    """
    found = []
    for dirpath, dirnames, filenames in os.walk(image_dir, followlinks=True):
        dirnames.sort()
        for f in filenames:
            if f.lower().endswith(IMAGE_EXTENSIONS) and not f.startswith("."):
                found.append(os.path.join(dirpath, f))
    return sorted(found, key=lambda p: os.path.relpath(p, image_dir))


def image_size(path: str) -> Tuple[int, int]:
    """``(height, width)`` of an image as Detectron2 will read it, from the header only.

    Detectron2's ``read_image`` applies the EXIF orientation (phone photos are
    often stored sideways), so a rotated orientation swaps the header's size;
    otherwise the mapper's size check would reject every such photo.
    """
    from PIL import Image

    with Image.open(path) as im:
        width, height = im.size
        try:
            orientation = im.getexif().get(_EXIF_ORIENTATION, 1)
        except Exception:  # a broken EXIF block: Detectron2 ignores it too
            orientation = 1
    if orientation in (5, 6, 7, 8):  # transposed / rotated by 90 or 270 degrees
        width, height = height, width
    return height, width


def _try_image_size(path: str) -> Union[Tuple[int, int], str]:
    """``(height, width)``, or the exception's type name if the header is unreadable."""
    try:
        return image_size(path)
    except Exception as e:  # PIL raises several types for broken headers
        return type(e).__name__


def load_image_folder(image_dir: str, name: str) -> List[dict]:
    """Records for every image under ``image_dir``: file_name, image_id, height, width.

    Sizes come from the file headers (PIL opens lazily), so listing a folder of
    thousands of images takes seconds, not a decode of each. A file whose
    header cannot be read is left out with a warning: a target stream is
    unlabelled, losing one image changes nothing but a crash would stop training.
    """
    if not os.path.isdir(image_dir):
        raise FileNotFoundError(f"Dataset '{name}': image folder {image_dir} does not exist.")
    files = list_images(image_dir)
    if not files:
        raise ValueError(
            f"Dataset '{name}': image folder {image_dir} contains no images "
            f"(searched recursively for {', '.join(IMAGE_EXTENSIONS)}, any case)."
        )
    if len(files) > _THREADED_HEADER_READS:
        # Header reads wait on storage, not the CPU: threads overlap the waits
        # (a large difference on network file systems).
        with ThreadPoolExecutor(max_workers=8) as pool:
            sizes = list(pool.map(_try_image_size, files))
    else:
        sizes = [_try_image_size(f) for f in files]
    records, unreadable = [], []
    for path, size in zip(files, sizes):
        if isinstance(size, str):
            unreadable.append(f"{path} ({size})")
            continue
        height, width = size
        records.append(
            {
                "file_name": path,
                "image_id": os.path.relpath(path, image_dir),
                "height": height,
                "width": width,
            }
        )
    if unreadable:
        logger.warning(
            f"Dataset '{name}': skipped {len(unreadable)} unreadable image(s) in "
            f"{image_dir}:" + _listed(unreadable)
        )
    if not records:
        raise ValueError(f"Dataset '{name}': no image in {image_dir} could be read.")
    logger.info(f"Found {len(records)} images for dataset '{name}' in {image_dir}.")
    return records


def register_image_folder(name: str, image_dir: str, metadata: Optional[dict] = None) -> None:
    """Register a folder of unlabelled images (recursive) as dataset ``name``.

    Meant for target domains: the records carry no annotations, the metadata
    says ``labelled=False`` so class checks and evaluators leave it alone.
    ``metadata`` may still name ``thing_classes`` (e.g. for visualising
    pseudo-labels); if given it must agree with the other domains.
    """
    image_dir = os.fspath(image_dir)
    _replace_registration(name)
    DatasetCatalog.register(name, lambda: load_image_folder(image_dir, name))
    meta = dict(image_root=image_dir, labelled=False)
    meta.update(metadata or {})
    MetadataCatalog.get(name).set(**meta)
