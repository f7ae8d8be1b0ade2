"""mic_det: Masked Image Consistency (MIC) for domain adaptation on Detectron2.

Importing the package registers its meta-architecture, heads and built-in
datasets with Detectron2's registries, the way Detectron2 projects do. The
names a notebook needs come from this one import::

    from mic_det import Predictor, MICTrainer, add_mic_config, register_coco_domain, register_image_folder
"""
from .config import add_mic_config
from . import data  # noqa: F401  (registers datasets)
from . import detection  # noqa: F401  (registers DetectionTask, DomainAdaptiveRCNN, MICRPN, MICROIHeads)
from . import classification  # noqa: F401  (registers ClassificationTask, MICClassifier, the classification sets)
from . import segmentation  # noqa: F401  (registers SegmentationTask, MICSemanticSegmentor, the segmentation sets)
from .data import register_coco_domain, register_image_folder
from .engine import MICTrainer
from .predictor import Predictor

__version__ = "0.1.0"
__all__ = ["add_mic_config", "register_coco_domain", "register_image_folder", "MICTrainer", "Predictor"]
