"""What a run was trained on, kept in its output folder and checkpoints, so its tools need no flag repeated.

A config names its datasets (``DATASETS.TRAIN`` ...), but datasets given by
``--register-*`` / ``--domains`` (:mod:`mic_det.data.cli`) exist only in the
process that registered them. ``tools/train_net.py`` therefore records them:

* ``OUTPUT_DIR/datasets.yaml`` (:data:`RECORD_FILE`), next to ``config.yaml``:
  a domains YAML (the format ``--domains`` reads) with absolute paths, each
  entry with the ``metadata`` the run saw: ``thing_classes``,
  ``thing_dataset_id_to_contiguous_id`` (json category ids -> class indices),
  ``stuff_classes``;
* the same list under the key ``"datasets"`` (:data:`CHECKPOINT_KEY`) of every
  checkpoint, so weights copied alone still name their classes and ids.

:func:`restore_run_datasets` registers a run's recorded datasets again: from
the record next to the config file, else next to the weights, else from the
checkpoint. Names already registered in the process (by flags given again,
the built-in synthetic sets a config re-registers, Python code) are left as
they are; a recorded path that no longer exists is an error naming the record
and the path.
"""
import logging
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

from detectron2.data import DatasetCatalog, MetadataCatalog

from .cli import METADATA_KEYS, normalise_domains, register_domain, registered_domains
from .kinds import DOMAIN_KINDS

__all__ = [
    "RECORD_FILE",
    "CHECKPOINT_KEY",
    "RecordCheckpointable",
    "recorded_domains",
    "write_run_record",
    "find_run_record",
    "restore_run_datasets",
]

logger = logging.getLogger(__name__)

#: The record's file name in OUTPUT_DIR.
RECORD_FILE = "datasets.yaml"
#: The record's key in a checkpoint.
CHECKPOINT_KEY = "datasets"
# First line of a record file: a datasets.yaml a user wrote for other purposes is not taken for one.
_HEADER = "# mic_det run record: the datasets this run was registered with (written by tools/train_net.py)."


def _plain(key: str, value: Any) -> Any:
    """Metadata as plain YAML/pickle types (lists of str, an int -> int dict)."""
    if key == "thing_dataset_id_to_contiguous_id":
        return {int(k): int(v) for k, v in value.items()}
    return [str(c) for c in value]


def recorded_domains() -> List[Dict[str, Any]]:
    """The domains registered in this process through :mod:`mic_det.data.cli`, as record entries.

    Each entry is its normalised spec (``name``, ``type``, absolute paths, ...)
    and, where the dataset's metadata holds them, the class names and ids
    under ``metadata``.
    """
    entries = []
    for name, spec in registered_domains().items():
        entry = {"name": name, "type": spec["type"]}
        entry.update((k, v) for k, v in spec.items() if k not in entry)
        meta = MetadataCatalog.get(name)
        known = {k: _plain(k, meta.get(k)) for k in METADATA_KEYS if meta.get(k) is not None}
        if known:
            entry["metadata"] = known
        entries.append(entry)
    return entries


def write_run_record(output_dir: str, entries: Optional[List[Dict[str, Any]]] = None) -> Optional[str]:
    """Write ``output_dir/datasets.yaml`` (default entries: :func:`recorded_domains`); None if there are none."""
    import yaml

    entries = recorded_domains() if entries is None else entries
    if not entries:
        return None
    path = os.path.join(output_dir, RECORD_FILE)
    os.makedirs(output_dir, exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(_HEADER + "\n# Tools given this folder's config.yaml read it; so does --domains.\n")
        yaml.safe_dump(entries, f, sort_keys=False, default_flow_style=None, allow_unicode=True)
    os.replace(tmp, path)
    return path


class RecordCheckpointable:
    """A checkpointable that puts the record into every checkpoint; loading a checkpoint ignores it.

    ``checkpointer.add_checkpointable(CHECKPOINT_KEY, RecordCheckpointable(entries))``.
    """

    def __init__(self, entries: List[Dict[str, Any]]):
        self.entries = entries

    def state_dict(self) -> List[Dict[str, Any]]:
        return self.entries

    def load_state_dict(self, state: Any) -> None:
        pass  # this process's registrations hold; the record is only read by tools (restore_run_datasets)


def _record_file(folder: str) -> Optional[str]:
    path = os.path.join(folder, RECORD_FILE)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return path if f.readline().rstrip("\n") == _HEADER else None


def _from_checkpoint(weights: str) -> Optional[List[Dict[str, Any]]]:
    import torch

    try:
        checkpoint = torch.load(weights, map_location="cpu")
    except Exception as e:  # not a torch file (a Detectron2 .pkl, say): no record in it
        logger.debug("No run record read from %s (%s)", weights, e)
        return None
    entries = checkpoint.get(CHECKPOINT_KEY) if isinstance(checkpoint, dict) else None
    return entries or None


def find_run_record(
    config_file: Optional[str] = None, weights: Optional[str] = None, read_checkpoint: bool = True
) -> Optional[Tuple[str, List[Dict[str, Any]]]]:
    """``(where, entries)`` of the run record for a config file and/or weights, or None.

    Looked for in order: ``datasets.yaml`` next to ``config_file``, next to
    ``weights``, then (if ``read_checkpoint``) the ``"datasets"`` key of the
    ``weights`` checkpoint.
    """
    import yaml

    folders = [os.path.dirname(os.path.abspath(p)) for p in (config_file, weights) if p and "://" not in p]
    for folder in folders:
        path = _record_file(folder)
        if path is not None:
            with open(path) as f:
                data = yaml.safe_load(f)
            return path, normalise_domains(data, path, folder)
    if read_checkpoint and weights and "://" not in weights and os.path.isfile(weights):
        entries = _from_checkpoint(weights)
        if entries:
            where = f"the '{CHECKPOINT_KEY}' entry of checkpoint {weights}"
            return where, normalise_domains(entries, where, os.path.dirname(os.path.abspath(weights)))
    return None


def _same(a: Dict[str, Any], b: Dict[str, Any]) -> bool:
    strip = lambda d: {k: v for k, v in d.items() if k != "metadata"}  # noqa: E731
    return strip(a) == strip(b)


def _check_recorded_paths(spec: Dict[str, Any], where: str) -> None:
    kind = DOMAIN_KINDS.get(spec.get("type"))
    for key in kind.paths if kind is not None else ():
        path = spec.get(key)
        if path is not None and not os.path.exists(path):
            raise FileNotFoundError(
                f"{where} records dataset '{spec['name']}' with {key} {path}, which does not exist any more. "
                f"Move it back, or register '{spec['name']}' with its new path (--register-* / --domains), "
                "which takes the place of the record."
            )


def restore_run_datasets(
    config_file: Optional[str] = None,
    weights: Optional[str] = None,
    needed: Optional[Sequence[str]] = None,
    classes_only: bool = False,
) -> List[str]:
    """Register the datasets a run recorded (see :func:`find_run_record`); returns the names registered.

    A recorded name that is already registered is left alone: registered
    identically, it is a no-op; otherwise the registration of this process
    wins and a warning says so. Every recorded path is checked before
    anything is registered. With ``needed`` (the config's dataset names), the
    checkpoint is only read when one of them is not registered yet.

    ``classes_only`` is for tools that read no dataset (prediction, export): a
    dataset whose recorded files are gone then gets only its recorded class
    names and ids (``MetadataCatalog``), with a warning, instead of an error.
    """
    registered = set(DatasetCatalog.list())
    read_checkpoint = needed is None or not set(needed) <= registered
    found = find_run_record(config_file, weights, read_checkpoint=read_checkpoint)
    if found is None:
        return []
    where, entries = found
    known = registered_domains()
    todo = []
    for spec in entries:
        name = spec["name"]
        if name in registered:
            if name in known and not _same(known[name], spec):
                logger.warning(
                    "Dataset '%s' is registered here as %s; %s has %s. Using the registration given here.",
                    name, known[name], where, {k: v for k, v in spec.items() if k != "metadata"},
                )
            continue
        try:
            _check_recorded_paths(spec, where)
        except FileNotFoundError as e:
            if not (classes_only and spec.get("metadata")):
                raise
            MetadataCatalog.get(name).set(**spec["metadata"])
            logger.warning("%s Only its recorded class names and ids are used.", e)
            continue
        todo.append(spec)
    names = [register_domain(spec, where) for spec in todo]
    if names:
        logger.info("Registered %s from %s", ", ".join(names), where)
    return names
