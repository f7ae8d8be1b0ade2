"""Command-line registration of user domains, so new data needs no code.

Three ways, combinable, all resolved before the config's dataset names are::

    --register-coco NAME JSON IMAGE_ROOT     a labelled COCO set (repeatable)
    --register-folder NAME IMAGE_DIR         an unlabelled image folder (repeatable)
    --register-class-folder NAME IMAGE_DIR   a labelled classification folder, one subfolder per class (repeatable)
    --register-seg NAME IMAGE_DIR LABEL_DIR CLASSES
                                             a labelled segmentation set: images + label PNGs
                                             paired by name, CLASSES "a,b,c" or a .txt file of
                                             names (value i = class i; --seg-ignore-value, 255)
    --domains FILE                           a YAML file of domains (repeatable)

A domains YAML is a list of mappings, or a mapping from name to mapping::

    - name: wildfire_train
      type: coco                 # optional: inferred from json / image_dir
      json: wildfire/train.json  # relative paths are relative to the YAML's folder
      image_root: wildfire/images
      thing_classes: [smoke, fire]   # optional; matches json categories by name
    - name: indoor_smoke
      type: folder
      image_dir: indoor/frames
    - name: streets_train
      type: seg                  # inferred from label_dir
      image_dir: streets/images
      label_dir: streets/labels
      stuff_classes: [road, car, sky]
      ignore_value: 255          # optional

Any entry may also hold ``metadata``: the class names and json category ids
a run saw (``thing_classes``, ``thing_dataset_id_to_contiguous_id``,
``stuff_classes``), set on the dataset's metadata at registration. A run's
``OUTPUT_DIR/datasets.yaml`` (:mod:`mic_det.data.run_record`) is such a file;
unlike the ``thing_classes`` key above, ``metadata`` never drops categories.

Paths are checked when registering, so a typo fails at start-up naming the
path; a key the format does not know is an error naming the file and the key
(a misspelt ``image_root`` would otherwise be silently ignored).

The flags may stand anywhere on a tool's command line, also after the
``KEY VALUE`` config overrides (:func:`parse_args`).
"""

import argparse
import os
import sys
from typing import Any, Dict, List, Optional, Sequence

from detectron2.data import DatasetCatalog

from .domains import register_coco_domain, register_image_folder, set_metadata

__all__ = [
    "add_domain_arguments",
    "parse_args",
    "register_domains_from_args",
    "load_domains_yaml",
    "register_domain",
    "registered_domains",
    "normalise_domains",
    "parse_classes",
]

#: Metadata keys an entry's ``metadata`` may set.
METADATA_KEYS = ("thing_classes", "thing_dataset_id_to_contiguous_id", "stuff_classes")

# name -> (normalised spec without metadata, the loader it registered): what register_domain registered.
_REGISTERED: Dict[str, Any] = {}

_KEYS = {
    "coco": {"name", "type", "json", "image_root", "thing_classes", "metadata"},
    "folder": {"name", "type", "image_dir", "thing_classes", "metadata"},
    "class_folder": {"name", "type", "image_dir", "thing_classes", "metadata"},  # only with an explicit type
    "seg": {"name", "type", "image_dir", "label_dir", "stuff_classes", "ignore_value", "metadata"},
}
# The flags add_domain_arguments adds, with their number of values.
_FLAG_NARGS = {
    "--register-coco": 3,
    "--register-folder": 2,
    "--register-class-folder": 2,
    "--register-seg": 4,
    "--seg-ignore-value": 1,
    "--domains": 1,
}
# Keys that are not paths (the others are resolved relative to the YAML's folder).
_NOT_PATHS = {"name", "type", "thing_classes", "stuff_classes", "ignore_value", "metadata"}


def add_domain_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--register-coco``, ``--register-folder`` and ``--domains`` to ``parser``."""
    group = parser.add_argument_group(
        "domains", "register your own datasets; the config's DATASETS.* may then name them"
    )
    group.add_argument(
        "--register-coco",
        nargs=3,
        action="append",
        metavar=("NAME", "JSON", "IMAGE_ROOT"),
        help="register a COCO-format json and its image folder as dataset NAME (repeatable)",
    )
    group.add_argument(
        "--register-folder",
        nargs=2,
        action="append",
        metavar=("NAME", "IMAGE_DIR"),
        help="register a folder of unlabelled images (searched recursively) as NAME (repeatable)",
    )
    group.add_argument(
        "--register-class-folder",
        nargs=2,
        action="append",
        metavar=("NAME", "IMAGE_DIR"),
        help="register a labelled classification folder IMAGE_DIR/<class>/<images> as NAME; classes are "
        "the sorted subfolder names (repeatable)",
    )
    group.add_argument(
        "--register-seg",
        nargs=4,
        action="append",
        metavar=("NAME", "IMAGE_DIR", "LABEL_DIR", "CLASSES"),
        help="register a labelled segmentation set: images, label PNGs of the same names (x.jpg <-> x.png), "
        "classes as 'a,b,c' or a .txt file with one name per line (repeatable)",
    )
    group.add_argument(
        "--seg-ignore-value",
        type=int,
        default=255,
        metavar="N",
        help="the label value meaning 'unlabelled' in --register-seg label PNGs (default 255)",
    )
    group.add_argument(
        "--domains",
        action="append",
        metavar="FILE",
        help="YAML file listing domains {name, type: coco|folder, json, image_root | image_dir, "
        "thing_classes}; paths relative to the file (repeatable)",
    )


def _hoist_domain_flags(argv: Sequence[str]) -> List[str]:
    """``argv`` with every domain flag and its values moved to the front, in their order.

    The tools end their command line with the config overrides, an
    ``argparse.REMAINDER`` that swallows whatever follows it; a domain flag
    written after an override would become a config key.
    """
    flags: List[str] = []
    rest: List[str] = []
    i = 0
    while i < len(argv):
        token = argv[i]
        name = token.split("=", 1)[0]
        if name in _FLAG_NARGS and "=" in token and _FLAG_NARGS[name] == 1:
            flags.append(token)
            i += 1
        elif token in _FLAG_NARGS and i + _FLAG_NARGS[token] < len(argv):
            n = _FLAG_NARGS[token]
            flags.extend(argv[i : i + n + 1])
            i += n + 1
        else:
            rest.append(token)
            i += 1
    return flags + rest


def parse_args(parser: argparse.ArgumentParser, argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """``parser.parse_args(argv)`` with the domain flags accepted anywhere (default argv: ``sys.argv[1:]``).

    For parsers given :func:`add_domain_arguments`; ``--register-coco a b c``
    after ``KEY VALUE`` overrides (or after ``--opts``) is then a flag, not
    three more overrides.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    return parser.parse_args(_hoist_domain_flags(argv))


def _resolve(path: Any, base: str) -> str:
    path = os.path.expanduser(os.path.expandvars(str(path)))
    return path if os.path.isabs(path) else os.path.normpath(os.path.join(base, path))


def _spec_error(source: str, name: Optional[str], msg: str) -> ValueError:
    where = f"domain '{name}' in {source}" if name else source
    return ValueError(f"{where}: {msg}")


def _normalise(entry: Any, source: str, base: str, name: Optional[str] = None) -> Dict[str, Any]:
    """Check one YAML entry and return it with a type and absolute paths."""
    if not isinstance(entry, dict):
        raise _spec_error(source, name, f"each domain must be a mapping, got {entry!r}")
    spec = dict(entry)
    if name is not None:
        if "name" in spec and spec["name"] != name:
            raise _spec_error(source, name, f"'name: {spec['name']}' contradicts its key '{name}'")
        spec["name"] = name
    name = spec.get("name")
    if not isinstance(name, str) or not name:
        raise _spec_error(source, None, f"a domain has no 'name' (keys: {sorted(spec)})")
    kind = spec.get("type")
    if kind is None:
        kind = "coco" if "json" in spec else "seg" if "label_dir" in spec else "folder" if "image_dir" in spec else None
        if kind is None:
            raise _spec_error(
                source, name, "give 'type: coco' (json, image_root) or 'type: folder' (image_dir)"
            )
    if kind not in _KEYS:
        raise _spec_error(source, name, f"unknown type '{kind}' (expected coco, folder, class_folder or seg)")
    spec["type"] = kind
    all_keys = set().union(*_KEYS.values())
    for key in spec:
        if key not in all_keys:
            raise _spec_error(
                source,
                name,
                f"unknown key '{key}' (allowed for type {kind}: {sorted(_KEYS[kind])})",
            )
        if key not in _KEYS[kind]:
            raise _spec_error(
                source,
                name,
                f"key '{key}' does not apply to type {kind} " f"(allowed: {sorted(_KEYS[kind])})",
            )
    for key in _KEYS[kind] - _NOT_PATHS:
        if key not in spec:
            raise _spec_error(source, name, f"type {kind} needs '{key}'")
        spec[key] = _resolve(spec[key], base)
    classes = spec.get("thing_classes")
    if classes is not None and (
        not isinstance(classes, list) or not all(isinstance(c, str) for c in classes) or not classes
    ):
        raise _spec_error(
            source, name, f"thing_classes must be a non-empty list of names, got {classes!r}"
        )
    if "metadata" in spec:
        spec["metadata"] = _check_metadata(spec["metadata"], source, name)
    if kind == "seg":
        stuff = spec.get("stuff_classes")
        if not isinstance(stuff, list) or not stuff or not all(isinstance(c, str) for c in stuff):
            raise _spec_error(source, name, f"type seg needs stuff_classes, a non-empty list of names, got {stuff!r}")
        if not isinstance(spec.get("ignore_value", 255), int):
            raise _spec_error(source, name, f"ignore_value must be an integer, got {spec['ignore_value']!r}")
    return spec


def _check_metadata(meta: Any, source: str, name: str) -> Dict[str, Any]:
    """An entry's ``metadata``: known keys only, class lists of names, an int -> int id map."""
    if not isinstance(meta, dict) or not set(meta) <= set(METADATA_KEYS):
        raise _spec_error(source, name, f"metadata must be a mapping with keys among {list(METADATA_KEYS)}, "
                                        f"got {meta!r}")
    out = dict(meta)
    for key in ("thing_classes", "stuff_classes"):
        if key in out and (not isinstance(out[key], list) or not all(isinstance(c, str) for c in out[key])):
            raise _spec_error(source, name, f"metadata {key} must be a list of names, got {out[key]!r}")
    if "thing_dataset_id_to_contiguous_id" in out:
        ids = out["thing_dataset_id_to_contiguous_id"]
        if not isinstance(ids, dict) or not all(isinstance(k, int) and isinstance(v, int) for k, v in ids.items()):
            raise _spec_error(source, name, "metadata thing_dataset_id_to_contiguous_id must map json "
                                            f"category ids to class indices (int: int), got {ids!r}")
    return out


def normalise_domains(data: Any, source: str, base: str) -> List[Dict[str, Any]]:
    """Check a list of domains (or a mapping name -> domain) as read from ``source``; paths relative to ``base``."""
    if isinstance(data, list):
        specs = [_normalise(e, source, base) for e in data]
    elif isinstance(data, dict):
        specs = [_normalise(e, source, base, name=str(n)) for n, e in data.items()]
    else:
        raise ValueError(
            f"Domains file {source} must hold a list of domains or a mapping name -> domain, "
            f"got {type(data).__name__}."
        )
    if not specs:
        raise ValueError(f"Domains file {source} lists no domains.")
    return specs


def parse_classes(text: str, flag: str = "--register-seg") -> List[str]:
    """A class list given on the command line: a .txt file of names (one per line) or "a,b,c"."""
    if text.endswith(".txt"):
        if not os.path.isfile(text):
            raise FileNotFoundError(f"{flag}: class list file {text} does not exist")
        with open(text) as f:
            names = [line.strip() for line in f if line.strip()]
    else:
        names = [c.strip() for c in text.split(",") if c.strip()]
    if not names:
        raise ValueError(f"{flag}: the class list {text!r} names no class")
    return names


def load_domains_yaml(path: str) -> List[Dict[str, Any]]:
    """Read and validate a domains YAML file; paths come back absolute."""
    import yaml

    if not os.path.isfile(path):
        raise FileNotFoundError(f"Domains file {path} does not exist.")
    try:
        with open(path, "r") as f:
            data = yaml.safe_load(f)
    except yaml.YAMLError as e:
        raise ValueError(f"Domains file {path} is not valid YAML:\n{e}") from None
    return normalise_domains(data, path, os.path.dirname(os.path.abspath(path)))


def _check_path(spec: Dict[str, Any], key: str, source: str, want_dir: bool) -> None:
    path = spec[key]
    ok = os.path.isdir(path) if want_dir else os.path.isfile(path)
    if not ok:
        what = "folder" if want_dir else "file"
        state = "is not a folder" if want_dir and os.path.exists(path) else "does not exist"
        raise FileNotFoundError(f"Domain '{spec['name']}' ({source}): {key} {what} {path} {state}.")


def _check_paths(spec: Dict[str, Any], source: str) -> None:
    if spec["type"] == "coco":
        _check_path(spec, "json", source, want_dir=False)
        _check_path(spec, "image_root", source, want_dir=True)
    elif spec["type"] == "seg":
        _check_path(spec, "image_dir", source, want_dir=True)
        _check_path(spec, "label_dir", source, want_dir=True)
    else:
        _check_path(spec, "image_dir", source, want_dir=True)


def register_domain(spec: Dict[str, Any], source: str = "") -> str:
    """Register one normalised domain spec, after checking its paths exist.

    The spec is remembered (:func:`registered_domains`), so a run can record
    what it was trained on.
    """
    _check_paths(spec, source)
    meta = {"thing_classes": spec["thing_classes"]} if spec.get("thing_classes") else None
    if spec["type"] == "coco":
        register_coco_domain(spec["name"], spec["json"], spec["image_root"], metadata=meta)
    elif spec["type"] == "class_folder":
        from ..classification.datasets import register_class_folder  # lazy: data does not need classification

        register_class_folder(spec["name"], spec["image_dir"], spec.get("thing_classes"))
    elif spec["type"] == "seg":
        from ..segmentation.datasets import register_seg_domain  # local: segmentation imports mic_det.data

        register_seg_domain(spec["name"], spec["image_dir"], spec["label_dir"], spec["stuff_classes"],
                            ignore_value=spec.get("ignore_value", 255))
    else:
        register_image_folder(spec["name"], spec["image_dir"], metadata=meta)
    if spec.get("metadata"):
        set_metadata(spec["name"], **spec["metadata"])
    plain = {k: v for k, v in spec.items() if k != "metadata"}
    _REGISTERED[spec["name"]] = (plain, DatasetCatalog[spec["name"]])
    return spec["name"]


def registered_domains() -> Dict[str, Dict[str, Any]]:
    """``name -> spec`` (without ``metadata``) of every domain :func:`register_domain` registered in this
    process and that is still registered that way (not replaced since by other code), in order."""
    return {
        name: dict(spec)
        for name, (spec, loader) in _REGISTERED.items()
        if name in DatasetCatalog.list() and DatasetCatalog[name] is loader
    }


def register_domains_from_args(args: argparse.Namespace) -> List[str]:
    """Register every domain given on the command line; return their names in order.

    Relative command-line paths are relative to the working directory. A name
    given twice is an error: the second would silently replace the first.
    """
    entries = []  # (spec, source)
    for path in getattr(args, "domains", None) or []:
        entries.extend((s, f"--domains {path}") for s in load_domains_yaml(path))
    for name, json_file, image_root in getattr(args, "register_coco", None) or []:
        spec = {
            "name": name,
            "type": "coco",
            "json": _resolve(json_file, os.getcwd()),
            "image_root": _resolve(image_root, os.getcwd()),
        }
        entries.append((spec, "--register-coco"))
    for name, image_dir in getattr(args, "register_folder", None) or []:
        spec = {"name": name, "type": "folder", "image_dir": _resolve(image_dir, os.getcwd())}
        entries.append((spec, "--register-folder"))
    for name, image_dir in getattr(args, "register_class_folder", None) or []:
        spec = {"name": name, "type": "class_folder", "image_dir": _resolve(image_dir, os.getcwd())}
        entries.append((spec, "--register-class-folder"))
    for name, image_dir, label_dir, classes in getattr(args, "register_seg", None) or []:
        spec = {"name": name, "type": "seg", "image_dir": _resolve(image_dir, os.getcwd()),
                "label_dir": _resolve(label_dir, os.getcwd()), "stuff_classes": parse_classes(classes),
                "ignore_value": getattr(args, "seg_ignore_value", 255)}
        entries.append((spec, "--register-seg"))
    seen: Dict[str, str] = {}
    for spec, source in entries:
        if spec["name"] in seen:
            raise ValueError(
                f"Domain '{spec['name']}' is given twice ({seen[spec['name']]} and {source})."
            )
        seen[spec["name"]] = source
        _check_paths(spec, source)  # all paths first: nothing is registered if one is wrong
    return [register_domain(spec, source) for spec, source in entries]
