"""Checks run before training: fail in the first second, not after the first hour.

Domain adaptation joins datasets from different sources, so the usual way to
get a silently wrong model is two domains that number their classes
differently, or a ``NUM_CLASSES`` left at a base config's value. These checks
turn those into one readable error naming the datasets and config keys.
"""

import difflib
import itertools
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from detectron2.data import DatasetCatalog, MetadataCatalog

from ..task import MIC_TASK_REGISTRY, MICTask
from .domains import image_size, is_labelled

__all__ = [
    "check_datasets_registered",
    "check_domain_classes",
    "check_task_fits",
    "check_test_images",
    "check_training_sets",
    "dataset_kind",
    "dataset_names",
    "register_label_file_check",
]

#: A record key naming a label file -> a function ``(dataset name, file, image (h, w)) -> problem or None``
#: that reads the file as the task's evaluator does; :func:`check_test_images` runs it on every test
#: record holding the key. Task packages register theirs (segmentation: ``sem_seg_file_name``).
LABEL_FILE_CHECKS: Dict[str, Callable[[str, str, Tuple[int, int]], Optional[str]]] = {}


def register_label_file_check(record_key: str, check: Callable[[str, str, Tuple[int, int]], Optional[str]]) -> None:
    """Have :func:`check_test_images` check the file that ``record_key`` of a test record names with ``check``."""
    LABEL_FILE_CHECKS[record_key] = check

_KEYS = ("DATASETS.TRAIN", "DATASETS.TEST", "DATASETS.TRAIN_TARGET")


def dataset_names(cfg) -> List[Tuple[str, str]]:
    """``(config key, dataset name)`` for every dataset the config uses."""
    out = []
    for key in _KEYS:
        node = cfg
        for part in key.split("."):
            node = node.get(part, ()) if hasattr(node, "get") else ()
        if isinstance(node, str):
            node = (node,)
        out.extend((key, n) for n in node)
    return out


def check_datasets_registered(cfg) -> None:
    """Raise a ``ValueError`` naming each unknown dataset and the closest registered names."""
    registered = DatasetCatalog.list()
    problems = []
    for key, name in dataset_names(cfg):
        if name in registered:
            continue
        close = difflib.get_close_matches(name, registered, n=5, cutoff=0.6)
        hint = f"did you mean {', '.join(close)}?" if close else "no registered name is close"
        problems.append(f"{key}: '{name}' is not a registered dataset ({hint})")
    if problems:
        raise ValueError(
            "Unknown dataset name(s) in the config:\n  "
            + "\n  ".join(problems)
            + "\nRegister your own data with --register-coco NAME JSON IMAGE_ROOT, "
            "--register-folder NAME IMAGE_DIR or --domains FILE (see docs/custom_domains.md)."
        )


def _thing_classes(name: str, key: str = "thing_classes") -> Optional[List[str]]:
    """The dataset's classes (metadata ``key``); loads a labelled set whose classes come from its file.

    Loading also validates the labels, so a broken json fails here, before the
    model is built, rather than in the data loader's first worker.
    """
    meta = MetadataCatalog.get(name)
    classes = meta.get(key)
    if classes is None and is_labelled(name):
        DatasetCatalog.get(name)
        classes = MetadataCatalog.get(name).get(key)
    elif is_labelled(name) and key != "thing_classes":
        DatasetCatalog.get(name)  # segmentation sets declare classes up front: load to check their files
    return list(classes) if classes is not None else None


def _task_class(cfg) -> type:
    """The task class of ``MODEL.TASK``, whose attributes name the metadata key of the class list
    (:attr:`~mic_det.task.MICTask.classes_metadata_key`) and the config keys of the model's class
    count (:attr:`~mic_det.task.MICTask.num_classes_keys`); :class:`~mic_det.task.MICTask`'s
    (detection's) for an unregistered name."""
    name = cfg.MODEL.get("TASK", "")
    return MIC_TASK_REGISTRY.get(name) if name in MIC_TASK_REGISTRY else MICTask


def _kind_descriptions() -> Dict[str, str]:
    """What each kind of dataset holds (the registered tasks' ``dataset_description``), for messages."""
    return {cls.dataset_kind: cls.dataset_description for _, cls in MIC_TASK_REGISTRY if cls.dataset_kind}


def dataset_kind(name: str) -> Optional[str]:
    """"detection", "segmentation" or "classification" from dataset ``name``'s metadata; None if it does not say.

    Classification sets carry ``task``; segmentation sets ``stuff_classes`` (and
    evaluator "sem_seg"); detection sets a box evaluator. Unlabelled image
    folders say nothing and fit every task.
    """
    meta = MetadataCatalog.get(name)
    if meta.get("task"):
        return meta.get("task")
    evaluator = meta.get("evaluator_type")
    if evaluator == "sem_seg" or meta.get("stuff_classes") is not None:
        return "segmentation"
    if evaluator in ("coco", "pascal_voc", "lvis"):
        return "detection"
    return None


def check_task_fits(cfg) -> None:
    """``MODEL.TASK`` is registered and fits ``MODEL.META_ARCHITECTURE`` and the datasets' kind.

    A task switched without the rest of its config (``MODEL.TASK SegmentationTask``
    on a detection config) otherwise fails on a symptom (no ``stuff_classes``),
    or later, inside the model. Each task lists the networks it trains and the
    kind of dataset it learns from (:class:`~mic_det.task.MICTask`); one
    ``ValueError`` names every mismatch and the task that fits, if one does.
    """
    name = cfg.MODEL.TASK
    tasks = dict(MIC_TASK_REGISTRY)
    if name not in tasks:
        raise KeyError(f"MODEL.TASK {name!r} is not a registered task; registered: {sorted(tasks)}")
    task, arch = tasks[name], cfg.MODEL.META_ARCHITECTURE
    problems = []
    owners = [t for t, cls in sorted(tasks.items()) if arch in cls.meta_architectures]
    if owners and name not in owners:
        problems.append(
            f"MODEL.META_ARCHITECTURE {arch} is a network of {' / '.join(owners)} "
            f"({name} trains {', '.join(task.meta_architectures) or 'other networks'})"
        )
    kinds = set()
    descriptions = _kind_descriptions()
    for key, dataset in dataset_names(cfg):
        kind = dataset_kind(dataset)
        if kind is not None and task.dataset_kind and kind != task.dataset_kind:
            kinds.add(kind)
            problems.append(
                f"{key}: '{dataset}' is a {kind} dataset ({descriptions.get(kind, kind)}); {name} learns from "
                f"{task.dataset_kind} datasets ({descriptions.get(task.dataset_kind, task.dataset_kind)})"
            )
    if not problems:
        return
    fitting = [
        t for t, cls in sorted(tasks.items())
        if t != name and (not owners or t in owners) and all(k == cls.dataset_kind for k in kinds)
    ]
    hint = (
        f"Set MODEL.TASK {fitting[0]} (the task of this network and these datasets), or start"
        if len(fitting) == 1 else "Start"
    )
    raise ValueError(
        f"MODEL.TASK {name} does not fit this config:\n  " + "\n  ".join(problems)
        + f"\n{hint} from a config made for {name} (configs/ holds one per task) and change its datasets."
    )


def check_domain_classes(cfg) -> None:
    """All labelled domains share one class list, and the model predicts that many classes.

    Unlabelled target sets (image folders) have no classes and pass, unless
    they declare ``thing_classes``, which must then agree too. The dataset
    names are checked first, then that the task fits the network and the
    datasets (:func:`check_task_fits`).
    """
    check_datasets_registered(cfg)
    check_task_fits(cfg)
    task = _task_class(cfg)
    class_key = task.classes_metadata_key
    lists: Dict[str, List[str]] = {}
    for key, name in dataset_names(cfg):
        if key == "DATASETS.TRAIN_TARGET" and not is_labelled(name):
            declared = MetadataCatalog.get(name).get(class_key)
            if declared is None:
                continue
        classes = _thing_classes(name, class_key)
        if classes is None:
            raise ValueError(
                f"{key}: dataset '{name}' is labelled but has no {class_key} in its metadata."
            )
        lists[f"{name} ({key})"] = classes
    if not lists:
        return
    (ref_name, ref), *others = lists.items()
    for other_name, other in others:
        if other != ref:
            hint = (
                "Give both the same categories, or set thing_classes on a COCO domain "
                "(--domains YAML) to match categories by name."
                if class_key == "thing_classes"
                else f"Give every domain the same {class_key} (names and order)."
            )
            raise ValueError(
                "Datasets disagree on their classes (names and order must match, the "
                "class id is the position in the list):\n"
                f"  {ref_name}: {ref}\n"
                f"  {other_name}: {other}\n" + hint
            )
    _check_num_classes(cfg, len(ref), ref_name, ref, task)


def _check_num_classes(cfg, num: int, ref_name: str, ref: Sequence[str], task: type) -> None:
    keys = task.num_classes_keys
    if keys is None:
        keys = ["MODEL.ROI_HEADS.NUM_CLASSES"]
        if "RetinaNet" in cfg.MODEL.META_ARCHITECTURE:
            keys = ["MODEL.RETINANET.NUM_CLASSES"]
    for key in keys:
        node = cfg
        for part in key.split("."):
            node = node[part]
        if node == 0 and task.num_classes_from_data:
            continue  # 0 = taken from the training set
        if node != num:
            raise ValueError(
                f"{key} is {node} but the datasets have {num} classes "
                f"({ref_name}: {list(ref)}); set {key} {num}."
            )


def check_training_sets(cfg) -> None:
    """Every ``DATASETS.TRAIN`` and ``DATASETS.TRAIN_TARGET`` set has images, before the model is built.

    The data loaders load their sets after the model is built (and its
    weights read); an empty target folder would be found only then. Loading
    a set here costs what its loader costs again (image folders: a listing
    and the image headers). Errors name the config key, the dataset and its
    folder (or annotation file).
    """
    for key, name in dataset_names(cfg):
        if key == "DATASETS.TEST":
            continue
        try:
            records = DatasetCatalog.get(name)
        except (FileNotFoundError, ValueError) as e:  # the loaders name the dataset and its folder
            raise type(e)(f"{key}: {e}") from None
        if not records:
            meta = MetadataCatalog.get(name)
            where = [f"{k} {meta.get(k)}" for k in ("image_root", "json_file", "label_root") if meta.get(k)]
            raise ValueError(
                f"{key}: dataset '{name}' has no images ({', '.join(where) or 'its loader returned none'}); "
                "a training set needs at least one."
            )


def _decoded_size(path: str) -> Tuple[int, int]:
    """``(height, width)`` of ``path`` as Detectron2 reads it, after decoding all of its pixels.

    A header can read while the pixels cannot (a truncated copy); Detectron2's
    ``read_image`` (PIL) then fails at the first evaluation. PIL decodes
    lazily, so :meth:`~PIL.Image.Image.load` forces the decode; a JPEG decodes
    at 1/8 scale (PIL's draft mode), which still reads its compressed data to
    the end, so a truncation is found at a fraction of the cost.
    """
    from PIL import Image

    size = image_size(path)  # the EXIF-rotated size, as read_image gives it
    with Image.open(path) as im:
        if im.format == "JPEG":
            im.draft(im.mode, (max(1, im.width // 8), max(1, im.height // 8)))
        im.load()
    return size


def _image_problem(record: dict, dataset_name: str) -> Optional[str]:
    """Why the image (or the segmentation label) of ``record`` cannot be evaluated, or None."""
    path = record["file_name"]
    if not os.path.isfile(path):
        return f"{path}: does not exist"
    try:
        size = _decoded_size(path)
    except Exception as e:  # PIL raises OSError, ValueError, SyntaxError, ... for broken files
        return f"{path}: unreadable ({type(e).__name__}: {e})"
    expected = (record.get("height"), record.get("width"))
    if None not in expected and tuple(size) != tuple(expected):
        return f"{path}: {size[0]}x{size[1]} (h x w) but the dataset says {expected[0]}x{expected[1]}"
    for key, check in LABEL_FILE_CHECKS.items():  # read as the evaluator reads it, size checked
        problem = check(dataset_name, record[key], size) if record.get(key) is not None else None
        if problem:
            return problem
    return None


def check_test_images(cfg) -> None:
    """Every image of every ``DATASETS.TEST`` set decodes and has the size its labels say.

    Evaluation needs every image (the mapper refuses to skip one), but it
    first reads them at the first evaluation, possibly hours into training.
    Val sets are small, so every image is decoded in full (a truncated file
    has a readable header), and every label PNG of a segmentation set is read
    as its evaluator reads it (size and values checked), in a thread pool
    (decoding releases the GIL). All bad files are named, with their dataset,
    in one ``FileNotFoundError`` (missing files) or ``ValueError``.
    """
    problems: List[str] = []
    missing = False
    for name in cfg.DATASETS.TEST:
        records = DatasetCatalog.get(name)
        with ThreadPoolExecutor(max_workers=8) as pool:
            found = [p for p in pool.map(_image_problem, records, itertools.repeat(name)) if p]
        missing |= any(p.endswith("does not exist") for p in found)
        problems += [f"{name}: {p}" for p in found]
    if problems:
        error = FileNotFoundError if missing else ValueError
        raise error(
            f"{len(problems)} test image(s) of DATASETS.TEST cannot be evaluated (fix or remove "
            "them from the dataset; evaluation needs every image):\n  " + "\n  ".join(problems)
        )
