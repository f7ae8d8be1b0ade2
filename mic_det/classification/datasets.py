"""Classification domains: class-folder trees, VisDA image lists, and the standard benchmarks.

A classification record is ``{"file_name", "image_id", "label"}`` (``label``:
the index in the dataset's ``thing_classes``); an unlabelled target folder is
mic_det's image folder (:func:`mic_det.data.register_image_folder`), records
without ``label``. Class lists live in ``thing_classes``, so the start-up
check of ``tools/train_net.py`` (``check_domain_classes``) compares source,
target and test sets and fails naming both when they disagree.

Standard layouts under ``$DETECTRON2_DATASETS`` (read when a set is first
loaded; see ``datasets/README.md``):

* VisDA-2017: ``visda2017/{train,validation}/image_list.txt`` (lines
  ``<relative path> <label>``), images beside it; ``visda2017_synthetic`` (train)
  and ``visda2017_real`` (validation).
* Office-Home: ``OfficeHome/{Art,Clipart,Product,Real_World}/<class>/*`` ("Real World"
  with a space, as the archive unpacks, works too); ``officehome_<domain>``.
* Office-31: ``office31/{amazon,dslr,webcam}/images/<class>/*`` (or without ``images/``);
  ``office31_<domain>``.
"""
import logging
import os
from typing import Callable, Dict, List, Optional, Sequence

from detectron2.data import DatasetCatalog, MetadataCatalog

from ..data.domains import IMAGE_EXTENSIONS, list_images
from ..data.kinds import DomainFlag, DomainKind, register_domain_kind

__all__ = [
    "VISDA_CLASSES",
    "load_class_folder",
    "load_image_list",
    "register_class_folder",
    "register_classification_set",
    "register_image_list",
    "register_all_classification_benchmarks",
]

logger = logging.getLogger(__name__)

VISDA_CLASSES = ("aeroplane", "bicycle", "bus", "car", "horse", "knife", "motorcycle", "person", "plant",
                 "skateboard", "train", "truck")
OFFICE_HOME_DOMAINS = {"art": ("Art",), "clipart": ("Clipart",), "product": ("Product",),
                       "real_world": ("Real_World", "Real World")}
OFFICE31_DOMAINS = ("amazon", "dslr", "webcam")


def _root(root: Optional[str]) -> str:
    return root if root is not None else os.environ.get("DETECTRON2_DATASETS", "datasets")


def class_names(root: str, name: str) -> List[str]:
    """The sorted subfolder names of ``root``: the classes of a class-folder tree."""
    if not os.path.isdir(root):
        raise FileNotFoundError(f"Dataset '{name}': class folder tree {root} does not exist (see datasets/README.md)")
    classes = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)) and not d.startswith("."))
    if not classes:
        raise ValueError(f"Dataset '{name}': {root} has no class subfolders (expected {root}/<class>/<images>)")
    return classes


def load_class_folder(root: str, name: str, classes: Optional[Sequence[str]] = None) -> List[Dict]:
    """Records of a labelled tree ``root/<class>/**/<image>``; the label is the class's index.

    ``classes`` fixes the order (every one must have a folder); None = the sorted
    subfolders. A class folder without images is an error naming it: a class
    the model never sees would silently score 0.
    """
    found = class_names(root, name)
    if classes is None:
        classes = found
    missing = [c for c in classes if c not in found]
    if missing:
        raise FileNotFoundError(f"Dataset '{name}': no folder for class(es) {missing} in {root}")
    records = []
    for label, c in enumerate(classes):
        files = list_images(os.path.join(root, c))
        if not files:
            raise ValueError(
                f"Dataset '{name}': class folder {os.path.join(root, c)} holds no images "
                f"({', '.join(IMAGE_EXTENSIONS)}); remove it or add images"
            )
        records += [{"file_name": f, "image_id": os.path.relpath(f, root), "label": label} for f in files]
    MetadataCatalog.get(name).set(thing_classes=list(classes))
    logger.info("Dataset '%s': %d images of %d classes in %s.", name, len(records), len(classes), root)
    return records


def load_image_list(list_file: str, image_root: str, name: str, classes: Sequence[str]) -> List[Dict]:
    """Records of a VisDA-style ``image_list.txt``: one ``<path relative to image_root> <label>`` per line."""
    if not os.path.isfile(list_file):
        raise FileNotFoundError(f"Dataset '{name}': image list {list_file} does not exist (see datasets/README.md)")
    records = []
    with open(list_file) as f:
        for number, line in enumerate(f, 1):
            parts = line.split()
            if not parts:
                continue
            try:
                path, label = " ".join(parts[:-1]), int(parts[-1])
            except ValueError:
                raise ValueError(f"{list_file}:{number}: expected '<path> <label>', got {line.strip()!r}") from None
            if not path or not 0 <= label < len(classes):
                raise ValueError(f"{list_file}:{number}: label {label} outside 0..{len(classes) - 1} or no path")
            records.append({"file_name": os.path.join(image_root, path), "image_id": path, "label": label})
    if not records:
        raise ValueError(f"Dataset '{name}': image list {list_file} lists no images")
    counts = [0] * len(classes)
    for r in records:
        counts[r["label"]] += 1
    empty = [classes[i] for i, n in enumerate(counts) if n == 0]
    if empty:
        raise ValueError(f"Dataset '{name}': image list {list_file} has no image of class(es) {empty}")
    return records


def register_classification_set(name: str, loader: Callable[[], List[Dict]], metadata: Dict) -> None:
    """Register ``loader`` as labelled classification set ``name`` (replacing an earlier registration)."""
    if name in DatasetCatalog:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    DatasetCatalog.register(name, loader)
    MetadataCatalog.get(name).set(labelled=True, task="classification", **metadata)


def register_class_folder(name: str, root: str, classes: Optional[Sequence[str]] = None, **metadata) -> None:
    """Register the labelled class-folder tree ``root`` as ``name``.

    With ``classes`` None and ``root`` present, the class list is read now (a
    directory listing), so the start-up checks and ``MODEL.CLASSIFIER.NUM_CLASSES 0``
    know it before anything is loaded.
    """
    root = os.fspath(root)
    if classes is None and os.path.isdir(root):
        classes = class_names(root, name)
    if classes is not None:
        metadata["thing_classes"] = list(classes)
    register_classification_set(name, lambda: load_class_folder(root, name, classes), dict(image_root=root, **metadata))


def register_image_list(name: str, list_file: str, image_root: str, classes: Sequence[str], **metadata) -> None:
    """Register a VisDA-style image list with the given class names."""
    register_classification_set(name, lambda: load_image_list(list_file, image_root, name, classes),
              dict(image_root=image_root, thing_classes=list(classes), **metadata))


def _first_existing(root: str, candidates: Sequence[str]) -> str:
    for c in candidates:
        if os.path.isdir(os.path.join(root, c)):
            return os.path.join(root, c)
    return os.path.join(root, candidates[0])


def register_all_classification_benchmarks(root: Optional[str] = None) -> List[str]:
    """Register VisDA-2017, Office-Home and Office-31 (nothing is read until a set is loaded)."""
    names = []
    for split, domain in (("train", "synthetic"), ("validation", "real")):
        name = f"visda2017_{domain}"

        def load(split=split, name=name):
            folder = os.path.join(_root(root), "visda2017", split)
            return load_image_list(os.path.join(folder, "image_list.txt"), folder, name, VISDA_CLASSES)

        register_classification_set(name, load, dict(thing_classes=list(VISDA_CLASSES), domain=domain))
        names.append(name)
    for domain, folders in OFFICE_HOME_DOMAINS.items():
        name = f"officehome_{domain}"
        register_classification_set(name, lambda n=name, f=folders: load_class_folder(_first_existing(
            os.path.join(_root(root), "OfficeHome"), f), n), dict(domain=domain))
        names.append(name)
    for domain in OFFICE31_DOMAINS:
        name = f"office31_{domain}"
        register_classification_set(name, lambda n=name, d=domain: load_class_folder(_first_existing(
            os.path.join(_root(root), "office31", d), ("images", ".")), n), dict(domain=domain))
        names.append(name)
    return names


# The user-domain kind of a labelled class-folder tree: ``type: class_folder`` in a domains YAML
# (only with an explicit type: its keys are a folder's), ``--register-class-folder`` on the command line.
register_domain_kind(DomainKind(
    name="class_folder",
    register=lambda spec: register_class_folder(spec["name"], spec["image_dir"], spec.get("thing_classes")),
    paths={"image_dir": True},
    options=frozenset({"thing_classes"}),
    flag=DomainFlag("--register-class-folder", ("NAME", "IMAGE_DIR"),
                    "register a labelled classification folder IMAGE_DIR/<class>/<images> as NAME; classes are "
                    "the sorted subfolder names (repeatable)",
                    lambda v, args: {"name": v[0], "type": "class_folder", "image_dir": v[1]}),
    summary="image_dir, one subfolder per class",
))
