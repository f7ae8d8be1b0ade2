"""Semantic segmentation under MIC: DACS self-training + masked image consistency, mIoU.

Importing registers the task (``MODEL.TASK "SegmentationTask"``), the
meta-architecture (``MICSemanticSegmentor``), the head
(``MICDeepLabV3PlusHead``), the real benchmarks (``cityscapes_seg_*``,
``gta5_seg_train``, ``synthia_seg_train``, ``acdc_seg_*``, ``dark_zurich_seg_*``)
and the built-in pairs with per-pixel labels (``synthetic_seg_{clear,foggy,night}_{train,val}``,
drawn on first use). See docs/segmentation.md.

=================  =============================================================
``config``         ``SEG.*`` keys (+ Detectron2's DeepLab keys)
``modeling``       the weighted-loss head and meta-architecture
``labels``         reading label PNGs by their dataset's rules, with checks
``datasets``       image + label folders as domains; the real benchmarks
``synthetic``      the built-in pair with labels
``mapper``         the dataset mapper of both streams and of evaluation
``rcs``            rare-class sampling of the source stream (``SEG.RCS``)
``pseudo_labels``  teacher logits -> pseudo-labels, quality weight q, statistics
``classmix``       DACS's ClassMix
``evaluator``      SemSegEvaluator + reports + example figure
``task``           :class:`SegmentationTask`
=================  =============================================================
"""
from .config import add_segmentation_config
from .datasets import register_seg_benchmarks, register_seg_domain
from .modeling import MICDeepLabV3PlusHead, MICSemanticSegmentor
from .synthetic import default_synthetic_seg_root, register_synthetic_seg_pair
from .task import SegmentationTask

__all__ = ["add_segmentation_config", "register_seg_domain", "register_synthetic_seg_pair", "SegmentationTask",
           "MICSemanticSegmentor", "MICDeepLabV3PlusHead"]

BUILTIN_SEG_DATASETS = register_seg_benchmarks()
register_synthetic_seg_pair(default_synthetic_seg_root())
