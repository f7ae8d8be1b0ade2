"""mic_det: Masked Image Consistency (MIC) for domain adaptation on Detectron2.

Importing the package registers its meta-architecture, heads and built-in
datasets with Detectron2's registries, the way Detectron2 projects do. The
names a notebook needs come from this one import::

    from mic_det import Predictor, MICTrainer, add_mic_config, register_coco_domain, register_image_folder

``MICTrainer`` and ``Predictor`` are imported on first use: the trainer pulls
in the whole training engine, which a script that only predicts (or the
engine's own modules, importing ``mic_det``) should not pay for or depend on.
"""
import importlib

from .config import add_mic_config
from . import data  # noqa: F401  (registers datasets)
from . import modeling  # noqa: F401  (registers DomainAdaptiveRCNN, MICRPN, MICROIHeads)
from .data import register_coco_domain, register_image_folder

__version__ = "0.1.0"
__all__ = ["add_mic_config", "register_coco_domain", "register_image_folder", "MICTrainer", "Predictor"]

_LAZY = {"MICTrainer": ".engine", "Predictor": ".predictor"}


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
