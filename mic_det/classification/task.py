"""Image classification as a MIC task: teacher argmax pseudo-labels weighted by its confidence.

Per MIC step (the engine's :class:`~mic_det.engine.MICStep` does the rest):
the EMA teacher classifies the unmasked target image; its argmax is the
pseudo-label and its max probability the weight (``MIC.CLS_PSEUDO_WEIGHT
"prob"``, the reference's ``--pseudo_label_weight prob``; ``"none"``: 1);
the student learns it from the colour-jittered, blurred, block-masked view by
weighted cross-entropy (``loss_cls_mic``). Images whose teacher confidence is
below ``MIC.PSEUDO_SCORE_THRESH`` are left out (0 in the shipped configs, as
the reference).
"""
import logging
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog, build_detection_test_loader
from detectron2.utils.events import EventStorage, get_event_storage

from ..task import MIC_TASK_REGISTRY, MICTask
from .evaluator import ClassificationEvaluator
from .mapper import ClassificationMapper

__all__ = ["ClassificationTask", "pseudo_labels_from_scores"]

PSEUDO_WEIGHTS = ("prob", "none")
# Steps between console lines on the pseudo-labels (Detectron2's console writer prints losses only).
CONSOLE_PERIOD = 20

logger = logging.getLogger(__name__)


def pseudo_labels_from_scores(scores: torch.Tensor, weighting: str = "prob") -> List[Dict[str, Any]]:
    """Teacher class probabilities (N, C) -> per image ``{"label": argmax, "weight": max prob or 1, "prob"}``."""
    if weighting not in PSEUDO_WEIGHTS:
        raise ValueError(f"MIC.CLS_PSEUDO_WEIGHT must be one of {PSEUDO_WEIGHTS}, got {weighting!r}")
    prob, label = scores.max(dim=1)
    return [{"label": int(c), "prob": float(p), "weight": float(p) if weighting == "prob" else 1.0}
            for c, p in zip(label, prob)]


@MIC_TASK_REGISTRY.register()
class ClassificationTask(MICTask):
    """``MICClassifier`` under MIC (with CDAN + MCC when ``UDA.ENABLED``)."""

    loss_names = ("loss_cls",)
    pseudo_count_stat = "pseudo_per_image"
    # MIC.TEACHER_BN_MODE "auto": BatchNorm on the target batch's statistics, as the
    # reference's classification teacher (never put in eval mode).
    teacher_bn_mode = "train"
    num_classes_keys = ("MODEL.CLASSIFIER.NUM_CLASSES",)
    num_classes_from_data = True  # MODEL.CLASSIFIER.NUM_CLASSES 0: from the training set
    dataset_kind = "classification"
    dataset_description = "one class per image, thing_classes"
    meta_architectures = ("MICClassifier",)

    def __init__(self, cfg: CfgNode):
        super().__init__(cfg)
        self.weighting = cfg.MIC.CLS_PSEUDO_WEIGHT
        if self.weighting not in PSEUDO_WEIGHTS:
            raise ValueError(f"MIC.CLS_PSEUDO_WEIGHT must be one of {PSEUDO_WEIGHTS}, got {self.weighting!r}")
        self.threshold = cfg.MIC.PSEUDO_SCORE_THRESH
        self._console_iter: Optional[int] = None

    # ------------------------------------------------------------------ data
    def build_train_mapper(self, cfg: CfgNode, labelled: bool) -> ClassificationMapper:
        return ClassificationMapper(cfg, is_train=True, labelled=labelled)

    def build_test_loader(self, cfg: CfgNode, dataset_name: str):
        return build_detection_test_loader(
            DatasetCatalog.get(dataset_name), mapper=ClassificationMapper(cfg, is_train=False),
            batch_size=cfg.INPUT.CLS.TEST_IMS_PER_BATCH, num_workers=cfg.DATALOADER.NUM_WORKERS,
        )

    def build_evaluator(self, cfg, dataset_name, output_dir, model_tag, iteration, config_name):
        return ClassificationEvaluator(dataset_name, output_dir, model_tag, iteration, config_name)

    # ---------------------------------------------------------- pseudo-labels
    @torch.no_grad()
    def pseudo_label(self, teacher: torch.nn.Module, inputs: List[Dict]) -> List[Dict[str, Any]]:
        scores = torch.stack([o["scores"] for o in teacher(inputs)])
        pseudo = pseudo_labels_from_scores(scores, self.weighting)
        storage = get_event_storage()
        if self._console_iter is None or storage.iter - self._console_iter >= CONSOLE_PERIOD:
            self._console_iter = storage.iter  # the first MIC step, then every CONSOLE_PERIOD steps
            stats = self.pseudo_label_stats(pseudo)
            logger.info(
                "Pseudo-labels at iteration %d: %.0f%% of the target batch kept (teacher max prob >= %g), "
                "mean confidence %.3f, mean weight %.3f, %d classes in the batch.", storage.iter,
                100 * stats["pseudo_per_image"], self.threshold, stats["pseudo_confidence"], stats["pseudo_weight"],
                stats["pseudo_classes_in_batch"],
            )
        return pseudo

    def has_pseudo_label(self, target: Dict[str, Any]) -> bool:
        return target["prob"] >= self.threshold

    def pseudo_label_stats(self, targets: Sequence[Dict[str, Any]]) -> Dict[str, float]:
        """Share of images kept, mean teacher confidence, and how many classes the batch's labels use."""
        n = max(len(targets), 1)
        return {
            "pseudo_per_image": sum(map(self.has_pseudo_label, targets)) / n,
            "pseudo_confidence": sum(t["prob"] for t in targets) / n,
            "pseudo_weight": sum(t["weight"] for t in targets) / n,
            "pseudo_classes_in_batch": float(len({t["label"] for t in targets})),
        }

    def pseudo_label_quality(self, inputs: List[Dict], targets: Sequence[Dict[str, Any]]) -> Optional[Dict[str, float]]:
        if any("label_for_scoring" not in x for x in inputs):
            return None
        right = sum(int(x["label_for_scoring"] == t["label"]) for x, t in zip(inputs, targets))
        return {"accuracy": right / max(len(targets), 1)}

    def source_targets(self, inputs: List[Dict]) -> List[Dict[str, Any]]:
        return [{"label": x["label"], "weight": 1.0} for x in inputs]

    # --------------------------------------------------------- student input
    def masked_inputs(self, pixels, image_sizes: Sequence[Tuple[int, int]], inputs, targets) -> List[Dict]:
        return [
            {"image": pixels[i, :, :h, :w], "label": t["label"], "weight": t["weight"], "height": h, "width": w}
            for i, ((h, w), t) in enumerate(zip(image_sizes, targets))
        ]

    # ------------------------------------------------------------ the guard
    def log_source_signals(self, inputs: List[Dict], storage: EventStorage) -> None:
        """The source batch's top-1 accuracy (logged by the source forward) and 1 object per image."""
        acc = storage.latest().get("cls/accuracy")
        if acc is not None and acc[1] == storage.iter:
            storage.put_scalar("guard/source_accuracy", acc[0])
        storage.put_scalar("guard/source_objects_per_image", 1.0)

    def guard_checks_off(self) -> Dict[str, str]:
        """The guard's "pseudo-labels per image" is here the share of target images kept (teacher
        confidence >= ``MIC.PSEUDO_SCORE_THRESH``), at most 1 against 1 label per source image: it can
        never exceed 3x the source nor grow 3.5x. It can fall (the teacher losing its confidence) only
        when the threshold leaves images out."""
        bounded = "one pseudo-label per image at most, against one label per source image"
        off = {"pseudo_ratio": bounded, "pseudo_growth": bounded}
        if self.threshold <= 0:
            off["teacher_death"] = (f"MIC.PSEUDO_SCORE_THRESH {self.threshold:g} keeps every target image; "
                                    "above 0 it is judged on the share of confident images")
        return off
