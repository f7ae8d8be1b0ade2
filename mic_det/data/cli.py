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

Each ``type`` is a :class:`~mic_det.data.kinds.DomainKind` in
:data:`~mic_det.data.kinds.DOMAIN_KINDS`: ``coco`` and ``folder`` are
registered here, ``class_folder`` and ``seg`` by their task packages; this
module loops over the registered kinds for the keys, the flags and the
registration.
"""

import argparse
import os
import sys
from typing import Any, Dict, List, Optional, Sequence

from detectron2.data import DatasetCatalog

from .domains import register_coco_domain, register_image_folder, set_metadata
from .kinds import DOMAIN_KINDS, DomainFlag, DomainKind, register_domain_kind

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



def _class_metadata(spec: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    return {"thing_classes": spec["thing_classes"]} if spec.get("thing_classes") else None


register_domain_kind(DomainKind(
    name="coco",
    register=lambda spec: register_coco_domain(spec["name"], spec["json"], spec["image_root"],
                                               metadata=_class_metadata(spec)),
    paths={"json": False, "image_root": True},
    options=frozenset({"thing_classes"}),
    infer_key="json",
    infer_priority=0,
    flag=DomainFlag("--register-coco", ("NAME", "JSON", "IMAGE_ROOT"),
                    "register a COCO-format json and its image folder as dataset NAME (repeatable)",
                    lambda v, args: {"name": v[0], "type": "coco", "json": v[1], "image_root": v[2]}),
    summary="json, image_root",
))
register_domain_kind(DomainKind(
    name="folder",
    register=lambda spec: register_image_folder(spec["name"], spec["image_dir"], metadata=_class_metadata(spec)),
    paths={"image_dir": True},
    options=frozenset({"thing_classes"}),
    infer_key="image_dir",
    infer_priority=100,  # the fallback: other kinds with an image_dir say so by a key of their own
    flag=DomainFlag("--register-folder", ("NAME", "IMAGE_DIR"),
                    "register a folder of unlabelled images (searched recursively) as NAME (repeatable)",
                    lambda v, args: {"name": v[0], "type": "folder", "image_dir": v[1]}),
    summary="image_dir",
))


def _flag_nargs() -> Dict[str, int]:
    """The flags :func:`add_domain_arguments` adds, with their number of values."""
    out = {"--domains": 1}
    for kind in DOMAIN_KINDS.values():
        if kind.flag is not None:
            out[kind.flag.flag] = len(kind.flag.metavar)
        out.update((flag, 1) for flag, _ in kind.extra_options)
    return out


def add_domain_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--domains`` and every registered kind's ``--register-*`` flag and options to ``parser``."""
    group = parser.add_argument_group(
        "domains", "register your own datasets; the config's DATASETS.* may then name them"
    )
    for kind in DOMAIN_KINDS.values():
        if kind.flag is not None:
            group.add_argument(kind.flag.flag, nargs=len(kind.flag.metavar), action="append",
                               metavar=kind.flag.metavar, help=kind.flag.help)
        for flag, kwargs in kind.extra_options:
            group.add_argument(flag, **kwargs)
    types = "; ".join(f"type {k.name}: {k.summary}" for k in DOMAIN_KINDS.values() if k.summary)
    group.add_argument(
        "--domains",
        action="append",
        metavar="FILE",
        help=f"YAML file listing domains {{name, type, ...}} ({types}); paths relative to the file (repeatable)",
    )


def _hoist_domain_flags(argv: Sequence[str]) -> List[str]:
    """``argv`` with every domain flag and its values moved to the front, in their order.

    The tools end their command line with the config overrides, an
    ``argparse.REMAINDER`` that swallows whatever follows it; a domain flag
    written after an override would become a config key.
    """
    nargs = _flag_nargs()
    flags: List[str] = []
    rest: List[str] = []
    i = 0
    while i < len(argv):
        token = argv[i]
        name = token.split("=", 1)[0]
        if name in nargs and "=" in token and nargs[name] == 1:
            flags.append(token)
            i += 1
        elif token in nargs and i + nargs[token] < len(argv):
            n = nargs[token]
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
        matching = [k for k in DOMAIN_KINDS.values() if k.infer_key and k.infer_key in spec]
        if not matching:
            raise _spec_error(
                source, name, "give 'type: coco' (json, image_root) or 'type: folder' (image_dir)"
            )
        kind = min(matching, key=lambda k: k.infer_priority).name
    if kind not in DOMAIN_KINDS:
        raise _spec_error(source, name, f"unknown type '{kind}' (expected {' or '.join(DOMAIN_KINDS)})")
    spec["type"] = kind
    allowed = DOMAIN_KINDS[kind].keys
    all_keys = set().union(*(k.keys for k in DOMAIN_KINDS.values()))
    for key in spec:
        if key not in all_keys:
            raise _spec_error(
                source,
                name,
                f"unknown key '{key}' (allowed for type {kind}: {sorted(allowed)})",
            )
        if key not in allowed:
            raise _spec_error(
                source,
                name,
                f"key '{key}' does not apply to type {kind} " f"(allowed: {sorted(allowed)})",
            )
    for key in DOMAIN_KINDS[kind].paths:
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
    validate = DOMAIN_KINDS[kind].validate
    problem = validate(spec) if validate is not None else None
    if problem:
        raise _spec_error(source, name, problem)
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
    for key, is_dir in DOMAIN_KINDS[spec["type"]].paths.items():
        _check_path(spec, key, source, want_dir=is_dir)


def register_domain(spec: Dict[str, Any], source: str = "") -> str:
    """Register one normalised domain spec, after checking its paths exist.

    The spec is remembered (:func:`registered_domains`), so a run can record
    what it was trained on.
    """
    _check_paths(spec, source)
    DOMAIN_KINDS[spec["type"]].register(spec)
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
    for kind in DOMAIN_KINDS.values():
        if kind.flag is None:
            continue
        for values in getattr(args, kind.flag.dest, None) or []:
            spec = kind.flag.to_spec(values, args)
            spec.update((key, _resolve(spec[key], os.getcwd())) for key in kind.paths if key in spec)
            entries.append((spec, kind.flag.flag))
    seen: Dict[str, str] = {}
    for spec, source in entries:
        if spec["name"] in seen:
            raise ValueError(
                f"Domain '{spec['name']}' is given twice ({seen[spec['name']]} and {source})."
            )
        seen[spec["name"]] = source
        _check_paths(spec, source)  # all paths first: nothing is registered if one is wrong
    return [register_domain(spec, source) for spec, source in entries]
