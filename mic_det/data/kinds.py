"""The kinds of user domain: how a domains-YAML entry or a ``--register-*`` flag becomes a dataset.

:mod:`mic_det.data.cli` (``--domains`` files, the flags) and
:mod:`mic_det.data.run_record` loop over :data:`DOMAIN_KINDS`; they know no
kind by name. The shared layer registers the kinds every task reads (``coco``,
``folder``); a task package registers its own at import with
:func:`register_domain_kind` (classification: ``class_folder``, segmentation:
``seg``), as Detectron2 projects fill Detectron2's registries. A new kind
needs no edit here or in the CLI.
"""
import argparse
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, FrozenSet, Mapping, Optional, Sequence, Tuple

__all__ = ["COMMON_KEYS", "DOMAIN_KINDS", "DomainFlag", "DomainKind", "register_domain_kind"]

#: Keys every entry may hold, whatever its kind.
COMMON_KEYS: FrozenSet[str] = frozenset({"name", "type", "metadata"})


@dataclass(frozen=True)
class DomainFlag:
    """The command-line flag registering one dataset of a kind (repeatable), e.g. ``--register-seg``."""

    #: The flag, e.g. "--register-seg".
    flag: str
    #: One name per value the flag takes, e.g. ("NAME", "IMAGE_DIR", "LABEL_DIR", "CLASSES").
    metavar: Tuple[str, ...]
    help: str
    #: The flag's values and the parsed arguments (for the kind's options) -> an entry of the kind
    #: (``name``, ``type`` and its keys); its path keys are resolved against the working directory.
    to_spec: Callable[[Sequence[str], argparse.Namespace], Dict[str, Any]]

    @property
    def dest(self) -> str:
        return self.flag.lstrip("-").replace("-", "_")


@dataclass(frozen=True)
class DomainKind:
    """One ``type`` of a domains-YAML entry: its keys, how it registers, its flag."""

    #: The entry's ``type``, e.g. "seg".
    name: str
    #: Registers a checked entry (paths absolute and existing) with Detectron2's catalogs.
    register: Callable[[Dict[str, Any]], None]
    #: The entry's path keys, each required, in the order they are checked -> whether it is a folder
    #: (else a file). Relative paths are relative to the YAML's folder (flags: the working directory).
    paths: Mapping[str, bool]
    #: The optional keys that are not paths (e.g. "thing_classes").
    options: FrozenSet[str] = frozenset()
    #: An entry without ``type`` is of this kind when it holds this key (the kind of lowest
    #: :attr:`infer_priority` among those that match); "" = only with an explicit ``type``.
    infer_key: str = ""
    infer_priority: int = 0
    #: What is wrong with a normalised entry beyond its keys (a message), or None.
    validate: Optional[Callable[[Dict[str, Any]], Optional[str]]] = None
    #: Its ``--register-*`` flag, if it has one.
    flag: Optional[DomainFlag] = None
    #: Further command-line options of the kind: (flag, ``add_argument`` keyword arguments);
    #: each takes one value (e.g. ``--seg-ignore-value``).
    extra_options: Tuple[Tuple[str, Dict[str, Any]], ...] = field(default=())
    #: Help text fragment: what an entry of this kind holds, e.g. "image_dir, label_dir, stuff_classes".
    summary: str = ""

    @property
    def keys(self) -> FrozenSet[str]:
        """Every key an entry of this kind may hold."""
        return COMMON_KEYS | frozenset(self.paths) | self.options


#: ``type`` -> :class:`DomainKind`, in registration order (the order of the flags' datasets).
DOMAIN_KINDS: Dict[str, DomainKind] = {}


def register_domain_kind(kind: DomainKind) -> DomainKind:
    """Add ``kind`` to :data:`DOMAIN_KINDS`; a second kind of the same name is an error."""
    if kind.name in DOMAIN_KINDS:
        raise ValueError(f"A domain kind named {kind.name!r} is already registered ({DOMAIN_KINDS[kind.name]})")
    DOMAIN_KINDS[kind.name] = kind
    return kind
