"""Register the real-data benchmarks at import, the way ``detectron2.data.datasets.builtin`` does.

Registration reads nothing from disk, so importing this on a machine without
the datasets costs nothing; the root (``$DETECTRON2_DATASETS``, default
``datasets``) is resolved when a set is first loaded, so tests and tools may
set the variable after import.

Registered here (see ``datasets/README.md`` for layouts and classes):
``cityscapes_{train,val}``, ``cityscapes_foggy_{train,val}_{0.005,0.01,0.02,all}``,
``cityscapes_car_{train,val}``, ``cityscapes7_{train,val}``, ``sim10k_car_train``,
``kitti_car_train``, ``bdd100k_daytime_{train,val}``.
"""

from typing import Any, Callable, List

from detectron2.config import CfgNode

from .daod import register_all_daod
from .synthetic import register_synthetic_pair

__all__ = ["BUILTIN_DAOD_DATASETS", "CONFIG_DATA_HOOKS", "register_config_data", "register_config_data_hook"]

#: Names registered by this module, in registration order.
BUILTIN_DAOD_DATASETS = register_all_daod(None)

#: Functions ``hook(cfg)`` that register the built-in data a config points at (a task's generated
#: sets under the root its config names), in registration order; :func:`register_config_data` runs each.
CONFIG_DATA_HOOKS: List[Callable[[CfgNode], Any]] = []


def register_config_data_hook(hook: Callable[[CfgNode], Any]) -> Callable[[CfgNode], Any]:
    """Have :func:`register_config_data` call ``hook(cfg)``; a decorator, for a task package at import."""
    if hook not in CONFIG_DATA_HOOKS:
        CONFIG_DATA_HOOKS.append(hook)
    return hook


def register_config_data(cfg: CfgNode) -> None:
    """Register the built-in data ``cfg`` names (e.g. the pair under ``DATASETS.SYNTHETIC_ROOT``):
    what ``tools/train_net.py`` and the predictor do before they read the config's datasets."""
    for hook in CONFIG_DATA_HOOKS:
        hook(cfg)


@register_config_data_hook
def register_synthetic_pair_of_config(cfg: CfgNode) -> None:
    """The built-in detection pair under ``DATASETS.SYNTHETIC_ROOT``, if set."""
    if cfg.DATASETS.SYNTHETIC_ROOT:
        register_synthetic_pair(cfg.DATASETS.SYNTHETIC_ROOT)
