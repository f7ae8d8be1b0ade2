"""Image classification under MIC: CDAN + MCC as the base UDA, MIC's masked consistency on top.

Importing this package registers with Detectron2 the ``MICClassifier``
meta-architecture, the ``ClassificationTask`` with
:data:`mic_det.engine.MIC_TASK_REGISTRY`, the real benchmarks (VisDA-2017,
Office-Home, Office-31; read when first loaded) and the built-in crops
``synthetic_cls_{clear,foggy,night}_{train,val}`` (generated on first load).
"""
from .alignment import CDANDiscriminator, cdan_input, cdan_loss, mcc_loss, warm_grl_coefficient
from .config import add_classification_config
from .datasets import register_all_classification_benchmarks, register_class_folder, register_image_list
from .evaluator import ClassificationEvaluator, accuracy_summary
from .meta_arch import MICClassifier
from .synthetic_crops import register_synthetic_crops
from .task import ClassificationTask, pseudo_labels_from_scores

__all__ = [
    "CDANDiscriminator", "ClassificationEvaluator", "add_classification_config", "ClassificationTask", "MICClassifier", "accuracy_summary",
    "cdan_input", "cdan_loss", "mcc_loss", "pseudo_labels_from_scores", "register_all_classification_benchmarks",
    "register_class_folder", "register_image_list", "register_synthetic_crops", "warm_grl_coefficient",
]

BUILTIN_CLASSIFICATION_DATASETS = register_all_classification_benchmarks() + register_synthetic_crops()
