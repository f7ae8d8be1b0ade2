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

Paths are checked when registering, so a typo fails at start-up naming the
path; a key the format does not know is an error naming the file and the key
(a misspelt ``image_root`` would otherwise be silently ignored).
"""

import argparse
import os
from typing import Any, Dict, List, Optional

from .domains import register_coco_domain, register_image_folder

__all__ = [
    "add_domain_arguments",
    "register_domains_from_args",
    "load_domains_yaml",
    "register_domain",
    "parse_classes",
]

_KEYS = {
    "coco": {"name", "type", "json", "image_root", "thing_classes"},
    "folder": {"name", "type", "image_dir", "thing_classes"},
    "class_folder": {"name", "type", "image_dir", "thing_classes"},  # only with an explicit type
    "seg": {"name", "type", "image_dir", "label_dir", "stuff_classes", "ignore_value"},
}
# Keys that are not paths (the others are resolved relative to the YAML's folder).
_NOT_PATHS = {"name", "type", "thing_classes", "stuff_classes", "ignore_value"}


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
    if kind == "seg":
        stuff = spec.get("stuff_classes")
        if not isinstance(stuff, list) or not stuff or not all(isinstance(c, str) for c in stuff):
            raise _spec_error(source, name, f"type seg needs stuff_classes, a non-empty list of names, got {stuff!r}")
        if not isinstance(spec.get("ignore_value", 255), int):
            raise _spec_error(source, name, f"ignore_value must be an integer, got {spec['ignore_value']!r}")
    return spec


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
    base = os.path.dirname(os.path.abspath(path))
    if isinstance(data, list):
        specs = [_normalise(e, path, base) for e in data]
    elif isinstance(data, dict):
        specs = [_normalise(e, path, base, name=str(n)) for n, e in data.items()]
    else:
        raise ValueError(
            f"Domains file {path} must hold a list of domains or a mapping name -> domain, "
            f"got {type(data).__name__}."
        )
    if not specs:
        raise ValueError(f"Domains file {path} lists no domains.")
    return specs


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
    """Register one normalised domain spec, after checking its paths exist."""
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
    return spec["name"]


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
