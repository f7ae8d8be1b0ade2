"""Build a mic_det config from a file and ``KEY VALUE`` overrides, with errors that help.

yacs reports a misspelt key as a bare ``AssertionError: Non-existent key``
(from the command line) or ``KeyError`` (from a file), with no hint of the
key that was meant. Here the same mistakes raise a ``ValueError`` naming the
file (or the command line), the key, and the nearest existing keys.
"""
import difflib
import os
import re
from typing import Iterable, List, Optional, Sequence

from detectron2.config import CfgNode, get_cfg

from .config import add_mic_config, check_mic_config

__all__ = ["build_config", "merge_config", "nearest_keys"]

_UNKNOWN_KEY = re.compile(r"Non-existent (?:config )?key: (\S+)")


def _all_keys(node: CfgNode, prefix: str = "") -> List[str]:
    keys = []
    for name, value in node.items():
        full = f"{prefix}{name}"
        keys.append(full)
        if isinstance(value, CfgNode):
            keys.extend(_all_keys(value, full + "."))
    return keys


def nearest_keys(key: str, cfg: CfgNode, n: int = 3) -> List[str]:
    """Existing keys of ``cfg`` closest to ``key``.

    Similar spelling first, then the same last part under another parent
    (``MIC.BASE_LR`` -> ``SOLVER.BASE_LR``); if neither finds one, the closest
    keys under the same parent, so the user sees what that section holds.
    """
    keys = _all_keys(cfg)
    close = difflib.get_close_matches(key, keys, n=n, cutoff=0.6)
    parent, _, leaf = key.rpartition(".")
    close += [k for k in keys if k.rpartition(".")[2] == leaf and k not in close]
    if not close:
        siblings = [k for k in keys if k.rpartition(".")[0] == parent]
        close = difflib.get_close_matches(key, siblings, n=n, cutoff=0.0)
    return close[:n]


def _explain(e: Exception, cfg: CfgNode, where: str) -> ValueError:
    message = e.args[0] if e.args and isinstance(e.args[0], str) else str(e)
    m = _UNKNOWN_KEY.search(message)
    if m is None:
        return ValueError(f"{where}: {message}")
    key = m.group(1)
    close = nearest_keys(key, cfg)
    hint = f"did you mean {', '.join(close)}?" if close else "no existing key is close"
    return ValueError(f"{where}: unknown config key {key} ({hint})")


def merge_config(cfg: CfgNode, config_file: Optional[str] = None, opts: Sequence[str] = ()) -> CfgNode:
    """Merge ``config_file`` and then ``opts`` (``[KEY, VALUE, ...]``) into ``cfg``, in place."""
    if config_file:
        if not os.path.isfile(config_file):
            raise FileNotFoundError(f"--config-file {config_file} does not exist")
        try:
            cfg.merge_from_file(config_file)
        except (KeyError, AssertionError, ValueError) as e:
            raise _explain(e, cfg, f"config file {config_file} (or a _BASE_ it names)") from None
    opts = list(opts or ())
    if len(opts) % 2:
        raise ValueError(
            f"command-line overrides come in KEY VALUE pairs; got an odd number: {opts}"
        )
    try:
        cfg.merge_from_list(opts)
    except (KeyError, AssertionError, ValueError) as e:
        raise _explain(e, cfg, "command-line override") from None
    return cfg


def build_config(config_file: Optional[str] = None, opts: Iterable[str] = ()) -> CfgNode:
    """Detectron2's defaults + mic_det's keys + ``config_file`` + ``opts`` (not frozen), MIC.* ranges checked."""
    cfg = get_cfg()
    add_mic_config(cfg)
    merge_config(cfg, config_file, list(opts))
    check_mic_config(cfg)  # a value out of range fails here, naming its key
    return cfg
