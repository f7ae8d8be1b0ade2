"""The config keys of image classification under MIC, each with its default.

Defaults follow MIC's classification code (lhoyer/MIC ``cls/``, which is SDAT =
CDAN + MCC + SAM from the Transfer-Learning-Library) unless a comment says
otherwise. Added to every mic_det config by :func:`mic_det.add_mic_config`,
so a detection config never sees a difference.
"""
from detectron2.config import CfgNode as CN

from ..config import register_task_config

__all__ = ["add_classification_config"]


@register_task_config
def add_classification_config(cfg: CN) -> CN:
    """Add the classification keys to ``cfg`` in place (and return it)."""
    _C = cfg

    # ------------------------------------------------------------ the network
    # MICClassifier: any Detectron2 backbone (build_backbone; MODEL.BACKBONE.NAME),
    # global average pooling of one of its maps, a bottleneck, a linear classifier.
    _C.MODEL.CLASSIFIER = CN()
    # Classes; 0 = as many as the first DATASETS.TRAIN set names (its thing_classes).
    _C.MODEL.CLASSIFIER.NUM_CLASSES = 0
    # The backbone output that is pooled ("res5" for ResNets).
    _C.MODEL.CLASSIFIER.IN_FEATURE = "res5"
    # Bottleneck width (Linear -> BatchNorm1d -> ReLU), as the reference's ImageClassifier (256).
    # 0 = no bottleneck: the pooled features go straight to the classifier.
    _C.MODEL.CLASSIFIER.BOTTLENECK_DIM = 256

    # -------------------------------------------------------------- the input
    # Square network input: training images are resized to RESIZE and randomly
    # cropped to SIZE (+ a horizontal flip); test images are resized to RESIZE and
    # centre-cropped (the reference: 256 -> 224). The MIC block size b is in these pixels.
    _C.INPUT.CLS = CN()
    _C.INPUT.CLS.SIZE = 224
    _C.INPUT.CLS.RESIZE = 256
    _C.INPUT.CLS.RANDOM_FLIP = True
    # Test images per batch of the evaluation loader.
    _C.INPUT.CLS.TEST_IMS_PER_BATCH = 32

    # ---------------------------------------------------- CDAN + MCC (base UDA)
    # Both act when UDA.ENABLED is on and the model gets target_inputs.
    _C.UDA.CDAN = CN()
    _C.UDA.CDAN.ENABLED = True
    # Weight of the discriminator's BCE (tllib trade-off, 1.0).
    _C.UDA.CDAN.LOSS_WEIGHT = 1.0
    # Hidden width of the discriminator MLP (in -> H -> H -> 1, BatchNorm + ReLU; reference 1024).
    _C.UDA.CDAN.HIDDEN_DIM = 1024
    # The reversed gradient's coefficient ramps from 0 to GRL_WEIGHT as
    # GRL_WEIGHT * (2 / (1 + exp(-GRL_ALPHA t / GRL_WARM_ITERS)) - 1) at aligned step t:
    # tllib's WarmStartGradientReverseLayer (hi = GRL_WEIGHT, alpha, max_iters), with the
    # reference CDAN's alpha 1 and max_iters 1000 by default (0.245 at step 500, 0.462 at
    # 1000, 0.905 at 3000). GRL_ALPHA 10 is DANN's faster ramp (~1 at GRL_WARM_ITERS / 2).
    _C.UDA.CDAN.GRL_WEIGHT = 1.0
    _C.UDA.CDAN.GRL_WARM_ITERS = 1000
    _C.UDA.CDAN.GRL_ALPHA = 1.0
    # Minimum Class Confusion on target predictions.
    _C.UDA.MCC = CN()
    _C.UDA.MCC.ENABLED = True
    _C.UDA.MCC.LOSS_WEIGHT = 1.0
    # Softmax temperature T (reference: 2.0 by default, 3.0 for ResNet-101 on VisDA).
    _C.UDA.MCC.TEMPERATURE = 2.0

    # -------------------------------------------------------- MIC pseudo-labels
    # The per-image weight of the masked cross-entropy: "prob" = the teacher's max
    # probability (the reference's --pseudo_label_weight prob), "none" = 1.
    # MIC.PSEUDO_SCORE_THRESH still drops images whose teacher max-probability is
    # below it (0.0 in the classification configs: the reference keeps all).
    _C.MIC.CLS_PSEUDO_WEIGHT = "prob"

    # ------------------------------------------------------- built-in crops
    # Root of the built-in classification pairs (object crops of the built-in scenes,
    # clear -> foggy and -> night); "" = $DETECTRON2_DATASETS/mic_synthetic_cls.
    _C.DATASETS.SYNTHETIC_CLS_ROOT = ""
    return cfg
