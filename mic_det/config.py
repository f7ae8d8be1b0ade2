"""Every config key mic_det adds to Detectron2, each with its default.

Defaults follow the MIC paper and its detection code (Hoyer et al., CVPR 2023)
unless a comment says otherwise. Detectron2's own keys keep their meaning:
``DATASETS.TRAIN`` is the labelled *source* stream, ``DATASETS.TEST`` the
evaluation sets.
"""
import numbers
from typing import Any, Callable, List, Tuple

from detectron2.config import CfgNode as CN

from .modeling.mobilenet import add_mobilenet_config

__all__ = ["TASK_CONFIG_HOOKS", "add_mic_config", "check_mic_config", "register_task_config"]

#: The ``add_<task>_config`` functions of the task packages, in registration order;
#: :func:`add_mic_config` calls each on the config it builds.
TASK_CONFIG_HOOKS: List[Callable[[CN], Any]] = []


def register_task_config(add_config: Callable[[CN], Any]) -> Callable[[CN], Any]:
    """Have :func:`add_mic_config` call ``add_config(cfg)`` (a task's ``add_<task>_config``, which adds
    its keys in place); a decorator, as a task package registers its config at import."""
    if add_config not in TASK_CONFIG_HOOKS:
        TASK_CONFIG_HOOKS.append(add_config)
    return add_config


def add_mic_config(cfg: CN) -> CN:
    """Add mic_det's keys to ``cfg`` in place (and return it for chaining)."""
    _C = cfg

    # The task the MIC engine trains: the class name of a task registered in
    # mic_det.engine.MIC_TASK_REGISTRY (each task package registers its own).
    # It picks the dataset mappers, the pseudo-labels and the evaluator;
    # MODEL.META_ARCHITECTURE still picks the network.
    _C.MODEL.TASK = "DetectionTask"

    # ---------------------------------------------------------------- datasets
    # Unlabelled target-domain stream(s). Annotations, if the set has any, are
    # never read for training.
    _C.DATASETS.TRAIN_TARGET = ()
    # Target images per step; -1 means the same as SOLVER.IMS_PER_BATCH.
    _C.DATALOADER.TARGET_IMS_PER_BATCH = -1
    # Root of the built-in procedural domain pair ("" = $DETECTRON2_DATASETS/mic_synthetic).
    _C.DATASETS.SYNTHETIC_ROOT = ""

    # --------------------------------------------------------------------- MIC
    _C.MIC = CN()
    # Master switch for the masked-image-consistency loss.
    _C.MIC.ENABLED = False
    # lambda_M: weight of the MIC loss in the total. 0 skips the masked forward: the
    # teacher and the task's own self-training losses remain (self-training without masking).
    _C.MIC.LOSS_WEIGHT = 1.0
    # Whether the student's forward of the masked view may update BatchNorm running
    # statistics (the reference: yes). A masked batch (70% of blocks at the mean
    # colour) is not what the model sees at test time: measured on the built-in
    # crops (BatchNorm ResNet-18, seed 0, docs/benchmarks_archive.md), letting it update
    # them cost MIC 12.6 points of target and 5.8 of source accuracy. False keeps the
    # statistics to the source and target batches. No effect on GN / FrozenBN models
    # (the detection and segmentation configs).
    _C.MIC.MASKED_VIEW_UPDATES_NORM_STATS = False
    # b: mask block size, in network-input pixels.
    _C.MIC.MASK_BLOCK_SIZE = 32
    # r: fraction of blocks hidden (a block is kept where v > r, v ~ U[0, 1]).
    _C.MIC.MASK_RATIO = 0.5
    # alpha: teacher <- alpha * teacher + (1 - alpha) * student after each step.
    _C.MIC.EMA_ALPHA = 0.9
    # Ramp the EMA weight as DACS / DAFormer do: alpha_t = min(1 - 1/(t+1), EMA_ALPHA)
    # at the t-th MIC step (MIC's segmentation and classification code); off for detection.
    _C.MIC.EMA_RAMP = False
    # BatchNorm of the teacher's forward that makes the pseudo-labels:
    #   "eval":  running statistics (the EMA of the student's), as at test time;
    #   "train": the target batch's own statistics; the running ones stay untouched
    #            (mic_det/teacher.py, batch_norm_on_batch_statistics). MIC's classification
    #            and segmentation code does this: its teachers are never put in eval mode;
    #   "auto":  the task's choice: "train" for classification and segmentation (the
    #            reference), "eval" for detection (its reference teacher runs in eval mode).
    # No effect on models without BatchNorm layers (GN, FrozenBN). "train" needs at least
    # 2 target images per step and process.
    _C.MIC.TEACHER_BN_MODE = "auto"
    # delta: teacher boxes scoring below this are not pseudo-labels.
    _C.MIC.PSEUDO_SCORE_THRESH = 0.8
    # IoU of the class-wise NMS applied to the teacher's boxes before thresholding.
    _C.MIC.PSEUDO_NMS_THRESH = 0.5
    # Teacher boxes scored in [PSEUDO_IGNORE_THRESH, PSEUDO_SCORE_THRESH) are
    # "uncertain": anchors and RoIs that overlap one (by the RPN's and RoI
    # head's own IoU thresholds) are left out of the MIC loss instead of being
    # taught as background. Off when >= PSEUDO_SCORE_THRESH (the reference).
    _C.MIC.PSEUDO_IGNORE_THRESH = 1.0
    # Weight of the box-regression losses (RPN and RoI) learned from pseudo-boxes.
    # 0.0 = the reference code: pseudo-boxes teach classification and objectness only.
    _C.MIC.PSEUDO_BOX_REG_WEIGHT = 0.0
    # q_T, the per-RoI / per-anchor quality weight of the MIC loss:
    #   "teacher_score": the teacher's score of the matched pseudo-box (the paper's formula),
    #   "student_prob":  the reference code's weight (lhoyer/MIC det/, PSEUDO_LABEL_WEIGHT 'prob'):
    #                    RoI head: the student's own max-softmax per RoI, detached;
    #                    RPN: sigmoid(objectness) of every sampled anchor, positive or
    #                    negative, NOT detached (the weight is differentiated too),
    #   "none":          every pseudo-labelled RoI weighs 1.
    _C.MIC.QUALITY_WEIGHT = "teacher_score"
    # Also learn the labelled source image from a masked copy (paper's ablation
    # for small domain gaps); its losses are logged with the "_masked_src" suffix.
    _C.MIC.MASK_SOURCE = False
    # Iterations of plain source training before the teacher is copied from the
    # student and MIC starts. 0 = the reference (MIC from the first step).
    _C.MIC.BURN_IN_ITERS = 0
    # Evaluate the EMA teacher next to the student at every evaluation (not
    # during a burn-in: the teacher is only a copy of the student from its end).
    _C.MIC.EVAL_TEACHER = True
    # The collapse guard (mic_det/engine/collapse_guard.py) watches the
    # adaptation phase: source accuracy of the student, pseudo-labels per image.
    _C.MIC.GUARD = CN()
    _C.MIC.GUARD.ENABLED = True
    # Steps each signal is averaged over (and the spacing of rollback snapshots).
    _C.MIC.GUARD.WINDOW = 20
    # Collapse when the source accuracy falls below this fraction of its value
    # as adaptation starts (the student forgets the labels it is given) ...
    _C.MIC.GUARD.MIN_ACCURACY_RATIO = 0.5
    # ... or the teacher gives more than this many pseudo-labels per image per
    # labelled source object (it hallucinates; the only bound on a count that
    # starts from zero), or its count falls under a tenth of the highest level
    # it reached, once that was at least 0.5 per image (it died) ...
    _C.MIC.GUARD.MAX_PSEUDO_RATIO = 3.0
    # ... or its pseudo-labels per image grow past this many times their count
    # over the first window (at least 0.5 counted; 0 turns it off): a slow drift
    # into confirming its own false boxes while under the source's objects per
    # image (BENCHMARKS.md). Judged only when that start is a level (>= 0.25
    # per image, the next window within 2x): a count climbing from ~0 is a
    # teacher learning to detect (MIC from step 0), not a drift.
    _C.MIC.GUARD.MAX_PSEUDO_GROWTH = 3.5
    # "rollback": restore student, teacher and optimizer from before the
    # collapse, multiply the lr by LR_FACTOR and go on; "stop": raise; "warn": log only.
    # A run that rolled back logs guard/rollbacks at every later step and a warning at its end.
    _C.MIC.GUARD.ACTION = "rollback"
    _C.MIC.GUARD.MAX_ROLLBACKS = 3
    _C.MIC.GUARD.LR_FACTOR = 0.5
    # Log pseudo-label precision/recall against the target stream's own labels
    # when it has them (a measurement only: the labels never reach a loss).
    _C.MIC.LOG_PSEUDO_LABEL_QUALITY = False
    # Colour jitter and blur on the masked view (mic_det/augment.py), drawn afresh
    # per image and step. The reference draws each on/off once per *run*.
    _C.MIC.MASK_AUG = CN()
    _C.MIC.MASK_AUG.ENABLED = True
    # Probability that colour jitter IS applied to an image at a step. The
    # reference's p = 0.2 is the probability of NOT applying it (it jitters when
    # U > p), so its rate is 1 - 0.2 = 0.8.
    _C.MIC.MASK_AUG.COLOR_JITTER_PROB = 0.8
    # Strength s: brightness, contrast, saturation factors ~ U[1-s, 1+s] and a hue
    # shift ~ U[-s, s] of a turn (the reference's s = 0.2 for all four), <= 0.5.
    _C.MIC.MASK_AUG.COLOR_JITTER_STRENGTH = 0.2
    # Probability that a Gaussian blur (sigma ~ U[0.15, 1.15], kernel the largest
    # odd size <= 0.1 x the side) IS applied; the reference blurs when U > 0.5,
    # the same rate 0.5.
    _C.MIC.MASK_AUG.BLUR_PROB = 0.5

    # ------------------------------------------------------------------ solver
    # Iterations where the lr schedule starts over (warm-up, then BASE_LR); each of
    # SOLVER.STEPS decays the phase it falls in (mic_det/engine/lr_schedule.py). A burn-in
    # config restarts at MIC.BURN_IN_ITERS so that adaptation runs at the full lr, as
    # the reference's does, rather than at the source schedule's decayed tail.
    _C.SOLVER.RESTART_ITERS = ()
    # Sharpness-aware minimisation (SAM, Foret et al. 2021), the optimizer step of SDAT
    # (Rangwani et al., ICML 2022), which MIC's classification results build on ("MIC on
    # SDAT" = CDAN + MCC + SAM). An engine option (mic_det/engine/sam.py, MICStep), so
    # any task can use it. Each step: a first pass with the *source* batch's supervised
    # losses alone (model(source): classification loss_cls; detection all of Detectron2's
    # supervised losses; segmentation loss_sem_seg), backward, w <- w + rho * g / ||g||_2
    # (one norm over all parameters' gradients); then the normal step (every loss: source,
    # domain alignment, MIC) at the perturbed weights, backward, w restored, and the
    # optimizer steps with those gradients. Costs one more source forward + backward per
    # step. The reference's first pass differs (see docs/classification.md): SDAT's
    # cdan_mcc_sdat.py uses source CE + MCC on the joint source + target batch, MIC's
    # cdan_mcc_sdat_masking.py also adds the masked loss; CDAN never enters it.
    _C.SOLVER.SAM = CN()
    _C.SOLVER.SAM.ENABLED = False
    # rho, the radius of the perturbation. 0.05 is the default of SAM and of SDAT's
    # scripts (--rho); SDAT's and MIC's published runs pass 0.02 (cls_benchmarks configs).
    _C.SOLVER.SAM.RHO = 0.05
    # Adaptive SAM (ASAM, Kwon et al. 2021): e_w = rho * w^2 * g / || |w| g ||. The
    # reference has the switch and leaves it off.
    _C.SOLVER.SAM.ADAPTIVE = False

    # --------------------------------------------------- base UDA (SADA / DA-Faster)
    # Defaults are the reference (sa-da-faster's da_heads.py, as MIC uses it).
    # Two kinds of weight, per discriminator:
    #   LOSS_WEIGHT scales the discriminator's own loss, i.e. how fast the
    #     discriminator itself learns (1.0 in the reference: its full BCE);
    #   GRL_WEIGHT scales only the reversed gradient that the discriminator
    #     sends back into the features: the backbone / box head receive
    #     -GRL_WEIGHT x LOSS_WEIGHT x the discriminator's input gradient.
    _C.UDA = CN()
    # Master switch; the pieces below only act when it is on.
    _C.UDA.ENABLED = False
    # First iteration with the alignment losses (0 = from the start, as the
    # reference with a pretrained backbone); the CPU configs align only once
    # the source model is trained, like MIC's burn-in.
    _C.UDA.START_ITER = 0
    # Image-level domain discriminator: one head per backbone feature map.
    _C.UDA.IMG_DA = CN()
    _C.UDA.IMG_DA.ENABLED = True
    # Backbone maps with a head ([] = every backbone output: P2-P6 with FPN, as the reference).
    _C.UDA.IMG_DA.IN_FEATURES = []
    # Scales the image discriminator's own BCE (its learning).
    _C.UDA.IMG_DA.LOSS_WEIGHT = 1.0
    # Scales only the reversed gradient into the features (backbone gets -0.025 x).
    _C.UDA.IMG_DA.GRL_WEIGHT = 0.025
    # Hidden width of the 1x1-conv head (C -> HIDDEN_DIM -> 1).
    _C.UDA.IMG_DA.HIDDEN_DIM = 512
    # Instance-level domain discriminator on RoI box-head features, one MLP per RoI level.
    _C.UDA.INS_DA = CN()
    _C.UDA.INS_DA.ENABLED = True
    # Scales the instance discriminator's own BCE (its learning).
    _C.UDA.INS_DA.LOSS_WEIGHT = 1.0
    # Scales only the reversed gradient into the box features (box head gets -0.1 x).
    _C.UDA.INS_DA.GRL_WEIGHT = 0.1
    # Hidden width of the instance discriminator MLP (D -> HIDDEN_DIM -> HIDDEN_DIM -> 1).
    _C.UDA.INS_DA.HIDDEN_DIM = 1024
    # True reproduces the reference code exactly: its instance head returns after
    # its first level, so only RoIs of the finest level are scored (the rest get
    # logit 0, no gradient). False: every RoI reaches its level's head.
    _C.UDA.INS_DA.FINEST_LEVEL_ONLY = False
    # RoIs per target image fed to the instance discriminator (top RPN proposals).
    _C.UDA.INS_DA.TARGET_ROIS_PER_IMAGE = 64
    # Consistency: L1 between each RoI's instance-level domain probability and
    # the image-level probability map pooled over the RoI.
    _C.UDA.CONSISTENCY = CN()
    _C.UDA.CONSISTENCY.ENABLED = True
    # Scales the consistency loss itself (what the discriminator heads learn from it).
    _C.UDA.CONSISTENCY.LOSS_WEIGHT = 1.0
    # Positive (not reversed): the features receive +GRL_WEIGHT x the branch's own
    # GRL_WEIGHT of the consistency gradient (0.1 x 0.025 image, 0.1 x 0.1 instance).
    _C.UDA.CONSISTENCY.GRL_WEIGHT = 0.1

    # -------------------------------------------------------------- evaluation
    # Which weights `--eval-only` and evaluation hooks evaluate: "student", "teacher" or "both".
    _C.TEST.EVAL_MODEL = "both"
    _C.TEST.BEST_CHECKPOINT = CN()
    _C.TEST.BEST_CHECKPOINT.ENABLED = True
    # Metric key inside the evaluation results, e.g. "bbox/AP50".
    _C.TEST.BEST_CHECKPOINT.METRIC = "bbox/AP50"
    # Dataset to select on ("" = the first of DATASETS.TEST). Pointing it at a
    # labelled *source* val set keeps target labels out of model selection.
    _C.TEST.BEST_CHECKPOINT.DATASET = ""
    # "student" or "teacher": whose result selects the checkpoint.
    _C.TEST.BEST_CHECKPOINT.MODEL = "student"
    # "max" or "min".
    _C.TEST.BEST_CHECKPOINT.MODE = "max"
    add_mobilenet_config(_C)  # MODEL.MOBILENET.* (mic_det/modeling/mobilenet.py)
    for add_task_config in TASK_CONFIG_HOOKS:  # e.g. SEG.* (mic_det/segmentation/config.py)
        add_task_config(_C)
    return cfg


def _integer(low: int) -> Tuple[Callable[[object], bool], str]:
    return (lambda v: isinstance(v, numbers.Integral) and not isinstance(v, bool) and v >= low), f"an integer >= {low}"


def _number(low: float, high: float = float("inf"), high_open: bool = False) -> Tuple[Callable[[object], bool], str]:
    def ok(v) -> bool:
        if not isinstance(v, numbers.Real) or isinstance(v, bool):
            return False
        return low <= v and (v < high if high_open else v <= high)

    text = f">= {low:g}" if high == float("inf") else f"in [{low:g}, {high:g}{')' if high_open else ']'}"
    return ok, text


#: The range of every numeric MIC.* key: (key, (test, what it must be), why).
_MIC_RANGES = (
    ("MIC.LOSS_WEIGHT", _number(0), "the weight of the masked loss"),
    ("MIC.MASK_BLOCK_SIZE", _integer(1), "the side of a mask block in network-input pixels"),
    ("MIC.MASK_RATIO", _number(0, 1, high_open=True), "the expected fraction of hidden blocks; 1 would hide all"),
    ("MIC.EMA_ALPHA", _number(0, 1), "the teacher's EMA weight"),
    ("MIC.PSEUDO_SCORE_THRESH", _number(0), "a score or probability threshold; above 1 keeps no pseudo-label"),
    ("MIC.PSEUDO_NMS_THRESH", _number(0, 1), "an IoU"),
    ("MIC.PSEUDO_IGNORE_THRESH", _number(0), "a score threshold; >= MIC.PSEUDO_SCORE_THRESH turns it off"),
    ("MIC.PSEUDO_BOX_REG_WEIGHT", _number(0), "a loss weight"),
    ("MIC.BURN_IN_ITERS", _integer(0), "iterations"),
    ("MIC.GUARD.WINDOW", _integer(2), "steps each signal is averaged over"),
    ("MIC.GUARD.MIN_ACCURACY_RATIO", _number(0, 1), "a fraction of the starting source accuracy"),
    ("MIC.GUARD.MAX_PSEUDO_RATIO", _number(0), "pseudo-labels per labelled source object"),
    ("MIC.GUARD.MAX_PSEUDO_GROWTH", _number(0), "a growth factor; 0 turns the check off"),
    ("MIC.GUARD.MAX_ROLLBACKS", _integer(0), "a count"),
    ("MIC.GUARD.LR_FACTOR", _number(0, 1), "the factor a rollback multiplies the lr by"),
    ("MIC.MASK_AUG.COLOR_JITTER_PROB", _number(0, 1), "a probability"),
    ("MIC.MASK_AUG.COLOR_JITTER_STRENGTH", _number(0, 0.5), "hue shifts are U[-s, s] turns"),
    ("MIC.MASK_AUG.BLUR_PROB", _number(0, 1), "a probability"),
)


def check_mic_config(cfg: CN) -> None:
    """Raise a ``ValueError`` naming every ``MIC.*`` key whose value is out of its range.

    The classes that use these values check their arguments too, but only
    when training builds them (after the model, or at the first MIC step),
    and without the key's name; ``build_config`` runs this check on every
    config it builds.
    """
    problems = []
    for key, (ok, must), why in _MIC_RANGES:
        node = cfg
        for part in key.split("."):
            node = node[part]
        if not ok(node):
            problems.append(f"{key} must be {must} ({why}), got {node!r}")
    if problems:
        raise ValueError("; ".join(problems))
