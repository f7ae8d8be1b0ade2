"""Semantic segmentation as a MIC task: DACS self-training (ClassMix) + the masked term, mIoU.

Per MIC step (the engine's :class:`~mic_det.engine.MICStep` calls these):

1. source forward (``loss_sem_seg``); :meth:`log_source_signals` copies its pixel
   accuracy and the classes per source image to the collapse guard;
2. :meth:`pseudo_label`: teacher (EMA, ramped alpha with ``MIC.EMA_RAMP``) argmax on
   the unmasked target, quality weight q = share of pixels with max probability
   >= ``SEG.PSEUDO_THRESHOLD`` over the batch;
3. :meth:`self_training_losses`: DACS's ClassMix of source and target (one mixed image
   per target image), colour-jittered and blurred (``SEG.MIX_AUGMENT``), learnt with
   weight 1 on source pixels and q on target pixels (``loss_sem_seg_mix``);
4. the engine's masked view (jitter, blur, block mask) learnt against the same
   pseudo-label with the same q (``loss_sem_seg_mic`` x ``MIC.LOSS_WEIGHT``).

``MIC.LOSS_WEIGHT 0`` is DACS alone (self-training without masking).
"""
import logging
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from detectron2.config import CfgNode
from detectron2.data import build_detection_test_loader
from detectron2.utils.events import EventStorage, get_event_storage
from torch.utils.data import Sampler

from ..augment import MaskAugmentation
from ..task import MIC_TASK_REGISTRY, MICTask
from ..teacher import unwrap_model
from .classmix import class_mix
from .evaluator import SegReportEvaluator, colourise
from .mapper import SegDatasetMapper
from .modeling import PIXEL_ACCURACY, WEIGHT_KEY
from .pseudo_labels import classes_present, make_pseudo_labels, pseudo_label_accuracy, pseudo_label_stats
from .rcs import build_rcs_sampler

__all__ = ["SegmentationTask"]

logger = logging.getLogger(__name__)
#: Steps between console lines of pseudo-label statistics (Detectron2's writers print losses only).
CONSOLE_PERIOD = 20


@MIC_TASK_REGISTRY.register()
class SegmentationTask(MICTask):
    """``MICSemanticSegmentor`` (DeepLabV3+ head) under DACS + MIC."""

    loss_names = ("loss_sem_seg",)
    pseudo_count_stat = "confident_classes_per_image"
    # MIC.TEACHER_BN_MODE "auto": BatchNorm on the target batch's statistics, as the
    # reference's DACS teacher (never put in eval mode). No effect on the CPU configs
    # (FrozenBN backbone, GroupNorm head).
    teacher_bn_mode = "train"
    #: What the start-up class check (mic_det/data/checks.py) compares across domains and with the model.
    classes_metadata_key = "stuff_classes"
    num_classes_keys = ("MODEL.SEM_SEG_HEAD.NUM_CLASSES",)
    dataset_kind = "segmentation"
    dataset_description = "label PNGs, stuff_classes"
    meta_architectures = ("MICSemanticSegmentor", "SemanticSegmentor")

    def __init__(self, cfg: CfgNode):
        super().__init__(cfg)
        seg = cfg.SEG
        self.threshold = seg.PSEUDO_THRESHOLD
        self.ignore_top, self.ignore_bottom = seg.PSEUDO_IGNORE_TOP, seg.PSEUDO_IGNORE_BOTTOM
        self.min_share = seg.MIN_CLASS_SHARE
        # DACS's own augmentation of the mixed image: with MIC.MASK_AUG's probabilities and
        # strengths, whether or not MIC.MASK_AUG.ENABLED augments the masked view too.
        self.mix_augmentation = MaskAugmentation.from_config(cfg) if seg.MIX_AUGMENT else None

    # ------------------------------------------------------------------ data
    def build_train_mapper(self, cfg: CfgNode, labelled: bool) -> SegDatasetMapper:
        return SegDatasetMapper(cfg, is_train=True, labelled=labelled)

    def build_source_sampler(self, cfg: CfgNode, dataset_dicts: List[Dict]) -> Optional[Sampler]:
        """Rare-class sampling with ``SEG.RCS.ENABLED`` (:mod:`~mic_det.segmentation.rcs`), else Detectron2's."""
        if not cfg.SEG.RCS.ENABLED:
            return None
        if cfg.DATALOADER.SAMPLER_TRAIN != "TrainingSampler":
            raise ValueError(f"SEG.RCS.ENABLED replaces the source sampler; DATALOADER.SAMPLER_TRAIN "
                             f"{cfg.DATALOADER.SAMPLER_TRAIN!r} would be ignored: leave it 'TrainingSampler'")
        return build_rcs_sampler(cfg, dataset_dicts)

    def build_test_loader(self, cfg: CfgNode, dataset_name: str):
        return build_detection_test_loader(cfg, dataset_name, mapper=SegDatasetMapper(cfg, is_train=False))

    def build_evaluator(self, cfg, dataset_name, output_dir, model_tag, iteration, config_name):
        return SegReportEvaluator(dataset_name, output_dir, model_tag, iteration, config_name,
                                  figure_images=cfg.SEG.FIGURE_IMAGES, image_format=cfg.INPUT.FORMAT)

    # ---------------------------------------------------------- pseudo-labels
    @torch.no_grad()
    def pseudo_label(self, teacher: torch.nn.Module, inputs: List[Dict]) -> List[Dict[str, torch.Tensor]]:
        logits, sizes = unwrap_model(teacher).input_frame_logits(inputs)
        return make_pseudo_labels(logits, sizes, self.threshold, self.ignore_top, self.ignore_bottom)

    def has_pseudo_label(self, target: Dict[str, torch.Tensor]) -> bool:
        return bool(target[WEIGHT_KEY].sum() > 0)

    def pseudo_label_stats(self, targets: Sequence[Dict[str, torch.Tensor]]) -> Dict[str, float]:
        """The mic/* scalars; every CONSOLE_PERIOD steps also one console line."""
        stats = pseudo_label_stats(targets, self.min_share)
        it = get_event_storage().iter
        if it % CONSOLE_PERIOD == 0:
            logger.info("iter %d pseudo-labels: q %.3f (confident share %.3f), mean max prob %.3f, "
                        "confident classes/image %.1f", it, stats["quality_weight"], stats["confident_share"],
                        stats["mean_max_prob"], stats["confident_classes_per_image"])
        return stats

    def pseudo_label_quality(self, inputs: List[Dict], targets) -> Optional[Dict[str, float]]:
        labels = [x.get("sem_seg_for_scoring") for x in inputs]
        if any(lab is None for lab in labels):
            return None
        return pseudo_label_accuracy(targets, labels)

    def source_targets(self, inputs: List[Dict]) -> List[Dict[str, torch.Tensor]]:
        return [{"sem_seg": x["sem_seg"]} for x in inputs]

    # ---------------------------------------------------- DACS self-training
    def mixed_inputs(self, source: List[Dict], target: List[Dict], pseudo: Sequence[Dict]) -> List[Dict]:
        """ClassMix pairs (or, with ``SEG.CLASSMIX`` off, the plain target view) in pixel space.

        One mixed image per target image: target image i takes its pasted classes from source
        image i modulo the source batch, so a target batch larger than the source batch
        (``DATALOADER.TARGET_IMS_PER_BATCH``) loses none of its images.
        """
        if self.cfg.SEG.CLASSMIX:
            if not source:
                raise ValueError("SEG.CLASSMIX mixes source classes into the target images: no source batch given")
            mixed = [class_mix(source[i % len(source)], t, p)[0] for i, (t, p) in enumerate(zip(target, pseudo))]
        else:
            mixed = [{"image": t["image"].float(), "sem_seg": p["sem_seg"], WEIGHT_KEY: p[WEIGHT_KEY]}
                     for t, p in zip(target, pseudo)]
        if self.mix_augmentation is not None and mixed:
            for m in mixed:  # per image: the augmentation works on a normalised batch
                aug = self.mix_augmentation
                mean, std = aug.pixel_mean.view(-1, 1, 1), aug.pixel_std.view(-1, 1, 1)
                norm = ((m["image"] - mean) / std)[None]
                m["image"] = aug(norm, [tuple(norm.shape[-2:])])[0] * std + mean
        return mixed

    def self_training_losses(self, model, source, target, pseudo) -> Dict[str, torch.Tensor]:
        weight = self.cfg.SEG.SELF_TRAINING_WEIGHT
        if weight == 0 or not target:
            return {}
        mixed = self.mixed_inputs(source, target, pseudo)
        losses = model(mixed)
        return {f"{k}_mix": v * weight for k, v in losses.items()}

    # --------------------------------------------------------- student input
    def masked_inputs(self, pixels, image_sizes: Sequence[Tuple[int, int]], inputs, targets) -> List[Dict]:
        return [
            {"image": pixels[i, :, :h, :w], "sem_seg": t["sem_seg"], WEIGHT_KEY: t[WEIGHT_KEY], "height": h, "width": w}
            for i, ((h, w), t) in enumerate(zip(image_sizes, targets))
        ]

    def visualize(self, storage: EventStorage, student, inputs: List[Dict], masked: List[Dict]) -> None:
        """One panel: target input | pseudo-label (confident pixels) | masked view."""
        k = student.sem_seg_head.predictor.out_channels if hasattr(student.sem_seg_head, "predictor") else 256
        label = masked[0]["sem_seg"].cpu().numpy().astype("uint8")
        colour = torch.from_numpy(colourise(label, k)).permute(2, 0, 1).float()
        to_rgb = [2, 1, 0] if self.cfg.INPUT.FORMAT == "BGR" else [0, 1, 2]
        image = inputs[0]["image"].float()[to_rgb]
        view = masked[0]["image"].detach().float().cpu()[to_rgb].clamp(0, 255)
        h, w = label.shape
        panel = torch.cat([image[:, :h, :w].cpu(), colour, view], dim=2) / 255.0
        storage.put_image("mic/target_pseudo_label_masked", panel)

    # ------------------------------------------------------------ the guard
    def log_source_signals(self, inputs: List[Dict], storage: EventStorage) -> None:
        """The source forward's pixel accuracy, and classes per source image (>= ``SEG.MIN_CLASS_SHARE``)."""
        acc = storage.latest().get(PIXEL_ACCURACY)
        if acc is not None and acc[1] == storage.iter:
            storage.put_scalar("guard/source_accuracy", acc[0])
        labelled = [x["sem_seg"] for x in inputs if "sem_seg" in x]
        classes = sum(classes_present(s, self.min_share) for s in labelled) / max(len(labelled), 1)
        storage.put_scalar("guard/source_objects_per_image", classes)
