"""The config keys of semantic segmentation under MIC (``SEG.*``) and Detectron2's DeepLab keys.

Registered with :func:`mic_det.config.register_task_config`, so
:func:`~mic_det.config.add_mic_config` adds them to every mic_det config; a detection config simply never reads them. Defaults are
the reference's (lhoyer/MIC ``seg/``, DAFormer's DACS) unless a comment says why not.
"""
from detectron2.config import CfgNode as CN
from detectron2.projects.deeplab import add_deeplab_config

from ..config import register_task_config

__all__ = ["add_segmentation_config"]


@register_task_config
def add_segmentation_config(cfg: CN) -> CN:
    """Add the ``SEG`` node and Detectron2's DeepLab keys to ``cfg`` in place."""
    if "SINGLE_CATEGORY_MAX_AREA" not in cfg.INPUT.CROP:
        add_deeplab_config(cfg)
    _C = cfg
    _C.SEG = CN()
    # tau: a target pixel is "confident" when the teacher's max softmax probability
    # is >= this; the quality weight q of a batch is the share of confident pixels.
    _C.SEG.PSEUDO_THRESHOLD = 0.968
    # Pseudo-label rows ignored at the top / bottom of the network input, in pixels
    # (the reference ignores 15 / 120 rows of Cityscapes' 512-crops: the ego car's
    # bonnet and the rectification border). 0 = none (the built-in pair has neither).
    _C.SEG.PSEUDO_IGNORE_TOP = 0
    _C.SEG.PSEUDO_IGNORE_BOTTOM = 0
    # DACS's ClassMix as the self-training loss (source classes pasted on the target,
    # labels mixed with the pseudo-label). False: plain self-training on the unmixed
    # target view (an ablation).
    _C.SEG.CLASSMIX = True
    # Colour jitter + blur on the mixed image, as DACS does: MIC.MASK_AUG's probabilities
    # and strengths, whether or not MIC.MASK_AUG.ENABLED augments the masked view.
    _C.SEG.MIX_AUGMENT = True
    # Weight of the self-training (ClassMix) loss.
    _C.SEG.SELF_TRAINING_WEIGHT = 1.0
    # Short side of target training images ((-1,) = INPUT.MIN_SIZE_TRAIN): sources and
    # targets come at different resolutions (GTA5 1914x1052, Cityscapes 2048x1024;
    # the reference resizes them to 1280x720 and 1024x512 before cropping).
    _C.SEG.TARGET_MIN_SIZE_TRAIN = (-1,)
    # A class counts as present in a pseudo-label (mic/confident_classes_per_image,
    # the collapse guard's count) when at least this share of the image's pixels
    # are confident pixels of it; the same share counts source classes.
    _C.SEG.MIN_CLASS_SHARE = 0.005
    # Target images shown in the evaluation figure (input, prediction, label).
    _C.SEG.FIGURE_IMAGES = 4
    # Root of the built-in pairs with per-pixel labels, clear -> foggy and -> night
    # ("" = $DETECTRON2_DATASETS/mic_synthetic_seg).
    _C.SEG.SYNTHETIC_ROOT = ""
    # DAFormer's rare-class sampling (RCS) of the *source* stream (mic_det/segmentation/rcs.py):
    # draw a class c with P(c) = softmax((1 - f_c) / T) over the source classes' pixel
    # frequencies f_c, then an image uniformly among those holding enough of c, so that
    # rare classes (train, bus, bicycle in GTA5) are seen often enough to be learnt before
    # self-training forgets them. Off by default (the reference's DACS has none; DAFormer's
    # and MIC's GTA5/SYNTHIA runs turn it on). The target stream is never resampled.
    _C.SEG.RCS = CN()
    _C.SEG.RCS.ENABLED = False
    # T: lower = more weight on the rarest classes; 0.01 is the reference's.
    _C.SEG.RCS.TEMPERATURE = 0.01
    # An image is drawn for class c only if its label has more than this many pixels of c
    # (the reference's strict >), counted on the label PNG at its stored size, before any
    # resize or crop. 3000 is the reference's at GTA5's full resolution (1914x1052, i.e.
    # 0.15% of a label); scale it with the label area for other sizes (~30 for the built-in
    # 128x160 labels). It does not change f_c, which counts every labelled pixel.
    _C.SEG.RCS.MIN_PIXELS = 3000
    return cfg
