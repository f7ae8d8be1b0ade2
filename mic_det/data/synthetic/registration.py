"""Dataset names for the built-in set, generated on first use.

Loading any ``synthetic_*`` dataset whose files are missing (or incomplete)
generates them into the registered root, with a log line that says so and
where, as torchvision's datasets do with ``download=True``: a fresh clone
trains with ``tools/train_net.py`` alone. A file lock in the root makes this
safe when DDP ranks or separate jobs load at once: one draws, the others wait
and then read. A *complete* set is always used as it is, whatever its
parameters (the log line names them); only ``tools/make_synthetic.py
--overwrite`` replaces one.
"""
import contextlib
import logging
import multiprocessing
import os
from typing import Callable, Iterator, List, Mapping, Optional, Tuple

from ..low_light import LowLight, describe
from .layout import (
    INFO_FILE,
    LOCK_FILE,
    NIGHT_INFO_FILE,
    SPLIT_DOMAIN,
    domain_pair_info,
    foreign_entries,
    json_path,
    night_params,
    pair_params,
    read_domain_pair_info,
    read_info_file,
    read_night_info,
)
from .shapes import SYNTHETIC_CLASSES
from .writer import DEFAULT_PARAMS, write_domain_pair, write_night_splits

__all__ = ["default_synthetic_root", "register_synthetic_pair", "ensure_synthetic_set", "generation_lock",
           "generate_once"]

logger = logging.getLogger(__name__)

# Registered name suffix -> split on disk.
_DATASET_SPLITS = {"clear_train": "source_train", "clear_val": "source_val",
                   "foggy_train": "target_train", "foggy_val": "target_val",
                   "night_train": "night_train", "night_val": "night_val"}
# How long a process waits for another one's generation before giving up (s).
LOCK_TIMEOUT = 3600.0
_announced = set()  # roots whose parameters this process has logged


def default_synthetic_root() -> str:
    """Where the built-in set lives by default: ``$DETECTRON2_DATASETS/mic_synthetic``."""
    return os.path.join(os.environ.get("DETECTRON2_DATASETS", "datasets"), "mic_synthetic")


@contextlib.contextmanager
def generation_lock(root: str, timeout: float = LOCK_TIMEOUT) -> Iterator[None]:
    """Hold ``root/.generate.lock`` (created with ``root``): one writer at a time, across processes."""
    import portalocker  # a dependency of iopath, which Detectron2 needs

    os.makedirs(root, exist_ok=True)
    path = os.path.join(root, LOCK_FILE)
    lock = portalocker.Lock(path, mode="a", timeout=0, fail_when_locked=True)
    try:
        lock.acquire()
    except portalocker.exceptions.LockException:
        logger.info("Another process is generating the synthetic set in %s; waiting for it.", root)
        lock = portalocker.Lock(path, mode="a", timeout=timeout, check_interval=0.5)
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


def _night_model(root: str, fallback) -> LowLight:
    """The night model of damaged night splits (their night_info.json), else ``fallback``."""
    found = read_info_file(root, NIGHT_INFO_FILE)
    try:
        return night_params(found) if found is not None else fallback
    except (KeyError, TypeError, ValueError):
        return fallback


def _params_for(root: str, overrides: Optional[Mapping]) -> dict:
    """Parameters to (re)generate with: a damaged set's own (its info.json), else the defaults."""
    params = {**DEFAULT_PARAMS, **dict(overrides or {})}
    found = read_info_file(root, INFO_FILE)
    if found is not None:
        try:
            params = {**pair_params(found), "night": DEFAULT_PARAMS["night"]}
        except (KeyError, TypeError, ValueError):
            pass
    if params["night"] is not None:
        params["night"] = _night_model(root, params["night"])
    return params


def _workers() -> int:
    # A daemonic process (a data-loader worker) may not start a pool.
    return 0 if multiprocessing.current_process().daemon else min(2, os.cpu_count() or 1)


def describe_set(pair: dict, night: Optional[dict]) -> str:
    """One line for logs: what a set on disk holds, and whether it is the default one."""
    s, a = pair["splits"], pair["atmospheric_light"]
    text = (f"seed {pair['seed']}, {pair['height']}x{pair['width']}, clear {s['source_train']}/{s['source_val']}, "
            f"foggy {s['target_train']}/{s['target_val']} (beta {pair['beta']:g}, A {'/'.join(f'{v:g}' for v in a)})")
    text += f", night ({describe(LowLight.from_dict(night['night']))})" if night else ", no night splits yet"
    defaults = {k: v for k, v in DEFAULT_PARAMS.items() if k != "night"}
    default = pair == domain_pair_info(**defaults) and (
        night is None or night["night"] == DEFAULT_PARAMS["night"].as_dict())
    return text + ("" if default else "  [not the defaults]")


def generate_once(root: str, read: Callable[[str], Optional[dict]], write: Callable[[], dict], what: str) -> dict:
    """The info of the complete set in ``root``, drawing it with ``write()`` if ``read(root)`` finds none.

    Checked again under the root's lock, so processes started together (DDP
    ranks, benchmark jobs) draw a set once and the others wait for it.
    ``what`` (e.g. "The built-in segmentation pair (400/50 images of 128x160)")
    is logged before drawing.
    """
    info = read(root)
    if info is None:
        with generation_lock(root):
            info = read(root)  # another process may have made it meanwhile
            if info is None:
                logger.info("%s is not in %s: generating it now. This happens once.", what, root)
                info = write()
    return info


def ensure_synthetic_set(root: str, night: bool = False, params: Optional[Mapping] = None,
                         num_workers: Optional[int] = None) -> Tuple[dict, Optional[dict]]:
    """Make sure a complete set (and, with ``night``, its night splits) is in ``root``.

    Nothing is generated when one is there, whatever its parameters. Otherwise,
    under the root's lock: an incomplete set with a readable info.json is
    redrawn with its own parameters, anything else with the defaults (or
    ``params``, ``write_domain_pair`` keyword arguments); a complete clear +
    foggy pair without night splits only gets those, for its own scenes.

    Returns:
        the info of the clear + foggy pair and of the night splits (None if
        ``night`` is False and there are none).
    """
    root = os.path.abspath(os.fspath(root))
    pair = read_domain_pair_info(root)
    nights = read_night_info(root, pair) if pair is not None else None
    if pair is None or (night and nights is None):
        with generation_lock(root):
            pair = read_domain_pair_info(root)  # another process may have made it meanwhile
            workers = _workers() if num_workers is None else num_workers
            if pair is None:
                foreign = foreign_entries(root)
                if foreign:
                    raise FileExistsError(
                        f"{root} holds no complete synthetic set but other files ({', '.join(foreign[:5])}), "
                        f"so nothing is generated there: point DATASETS.SYNTHETIC_ROOT at another folder, or "
                        f"run `python tools/make_synthetic.py --root {root} --overwrite`.")
                p = _params_for(root, params)
                count = sum(v for k, v in p.items() if k.startswith("num_"))
                count += (p["num_target_train"] + p["num_target_val"]) * (p["night"] is not None)
                logger.info("The built-in synthetic set is not in %s: generating it now (%d images of %dx%d, "
                            "seed %d; fog beta %g; night: %s). This happens once.", root, count,
                            p["height"], p["width"], p["seed"], p["beta"], describe(p["night"]))
                write_domain_pair(root, num_workers=workers, **p)
                pair = read_domain_pair_info(root)
            nights = read_night_info(root, pair)
            if night and nights is None:
                model = _night_model(root, (params or {}).get("night") or DEFAULT_PARAMS["night"])
                logger.info("The synthetic set in %s has no night splits: generating them now (%s).",
                            root, describe(model))
                s = pair["splits"]
                write_night_splits(root, seed=pair["seed"], num_train=s["target_train"], num_val=s["target_val"],
                                   height=pair["height"], width=pair["width"], night=model, num_workers=workers)
                nights = read_night_info(root, pair)
            if pair is None or (night and nights is None):
                raise RuntimeError(f"generating the synthetic set in {root} left it incomplete")
    if (root, nights is not None) not in _announced:
        _announced.add((root, nights is not None))
        logger.info("Using the built-in synthetic set in %s: %s.", root, describe_set(pair, nights))
    return pair, nights


def _generate_then(loader, root: str, night: bool, generate: bool, params: Optional[Mapping]):
    """A loader that first makes sure its files exist (or says how to make them)."""

    def load():
        if generate:
            ensure_synthetic_set(root, night=night, params=params)
        try:
            return loader()
        except FileNotFoundError as e:
            raise FileNotFoundError(
                f"{e}\nThe built-in synthetic set is generated, not downloaded: run "
                f"`python tools/make_synthetic.py --root {root}` first."
            ) from e

    return load


def register_synthetic_pair(root: str, prefix: str = "synthetic", generate: bool = True,
                            params: Optional[Mapping] = None) -> List[str]:
    """Register ``{prefix}_{clear,foggy,night}_{train,val}`` for the set under ``root``.

    Lazy like every mic_det domain: nothing is read until a set is loaded.
    Loading one then generates the set if it is missing or incomplete
    (``generate``; ``params`` overrides ``write_domain_pair``'s defaults for
    that, e.g. small sizes in tests), or, with ``generate=False``, says how to.

    Returns:
        the six dataset names: clear train/val, foggy train/val, night train/val.
    """
    from detectron2.data import DatasetCatalog

    from ..domains import register_coco_domain

    root = os.fspath(root)
    names = []
    for suffix, split in _DATASET_SPLITS.items():
        name = f"{prefix}_{suffix}"
        register_coco_domain(
            name,
            json_path(root, split),
            os.path.join(root, split),
            metadata={"thing_classes": list(SYNTHETIC_CLASSES), "domain": SPLIT_DOMAIN[split]},
        )
        loader = DatasetCatalog.pop(name)
        DatasetCatalog.register(name, _generate_then(loader, root, SPLIT_DOMAIN[split] == "night", generate, params))
        names.append(name)
    return names
