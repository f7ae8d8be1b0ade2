"""Detection as a MIC task: teacher boxes -> pseudo-Instances, weighted heads, COCO/VOC evaluation.

The teacher's detections are taken in network-input coordinates
(``inference(..., do_postprocess=False)``), NMS-filtered and thresholded at
delta (:func:`make_pseudo_labels`); each image's quality is copied onto its
boxes (:func:`attach_image_quality`) so the weighted RPN and RoI heads read it
from the Instances Detectron2 hands them.
"""
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from detectron2.config import CfgNode
from detectron2.data import MetadataCatalog, build_detection_test_loader
from detectron2.structures import Instances
from detectron2.utils.events import EventStorage, get_event_storage

from ..data.mapper import DomainDatasetMapper
from ..task import MIC_TASK_REGISTRY, MICTask
from .evaluator import build_evaluator
from .modeling.quality_weight import attach_image_quality
from .pseudo_labels import make_pseudo_labels, pseudo_label_quality, pseudo_label_stats, split_uncertain
from .visualize import first_with_pseudo_boxes, log_pseudo_label_panels, log_teacher_scores

__all__ = ["DetectionTask"]


@MIC_TASK_REGISTRY.register()
class DetectionTask(MICTask):
    """Faster R-CNN (``DomainAdaptiveRCNN`` with ``MICRPN`` and ``MICROIHeads``) under MIC."""

    loss_names = ("loss_cls", "loss_box_reg", "loss_rpn_cls", "loss_rpn_loc")
    pseudo_count_stat = "boxes_per_image"
    dataset_kind = "detection"
    dataset_description = "boxes, thing_classes"
    meta_architectures = ("DomainAdaptiveRCNN", "GeneralizedRCNN", "RetinaNet", "ProposalNetwork")

    def __init__(self, cfg: CfgNode):
        super().__init__(cfg)
        self.score_thresh = cfg.MIC.PSEUDO_SCORE_THRESH
        self.nms_thresh = cfg.MIC.PSEUDO_NMS_THRESH
        self.ignore_thresh = cfg.MIC.PSEUDO_IGNORE_THRESH  # off when >= delta (make_pseudo_labels)
        self._class_names: Optional[List[str]] = None

    # ------------------------------------------------------------------ data
    def build_train_mapper(self, cfg: CfgNode, labelled: bool) -> DomainDatasetMapper:
        return DomainDatasetMapper(cfg, is_train=True, labelled=labelled)

    def build_test_loader(self, cfg: CfgNode, dataset_name: str):
        return build_detection_test_loader(cfg, dataset_name, mapper=DomainDatasetMapper(cfg, is_train=False))

    def build_evaluator(self, cfg, dataset_name, output_dir, model_tag, iteration, config_name):
        return build_evaluator(
            cfg, dataset_name, output_dir, model_tag=model_tag, iteration=iteration, config_name=config_name
        )

    # ---------------------------------------------------------- pseudo-labels
    @torch.no_grad()
    def pseudo_label(self, teacher: torch.nn.Module, inputs: List[Dict]) -> List[Instances]:
        """Teacher boxes on the unmasked view, thresholded, with each image's quality attached.

        Also logs the teacher's top score before any threshold
        (``guard/teacher_top_score``): when no box passes, it says how far the
        teacher is from giving one.
        """
        predictions = teacher.inference(inputs, do_postprocess=False)
        top = max((float(p.scores.max()) for p in predictions if p.has("scores") and len(p)), default=0.0)
        storage = get_event_storage()
        storage.put_scalar("guard/teacher_top_score", top, smoothing_hint=False)
        if self.visualizing(storage):
            log_teacher_scores(storage, predictions, self.score_thresh)
        return self.to_pseudo_labels(predictions)

    def to_pseudo_labels(self, predictions: Sequence[Instances]) -> List[Instances]:
        """Detections in network-input coordinates -> pseudo-Instances carrying their quality."""
        pseudo = make_pseudo_labels(predictions, self.score_thresh, self.nms_thresh, self.ignore_thresh)
        return attach_image_quality(pseudo)

    def has_pseudo_label(self, target: Instances) -> bool:
        # An image counts when the teacher is sure of at least one box in it.
        return len(split_uncertain(target)[0]) > 0

    def pseudo_label_stats(self, targets: Sequence[Instances]) -> Dict[str, float]:
        return pseudo_label_stats(targets, self.class_names)

    @property
    def class_names(self) -> List[str]:
        """The labelled training set's classes (the model's class ids), read when first asked for.

        The start-up checks load the training sets (and so their metadata)
        before the first step; a set without ``thing_classes`` gives none.
        """
        if self._class_names is None:
            train = self.cfg.DATASETS.TRAIN
            names = MetadataCatalog.get(train[0]).get("thing_classes") if train else None
            self._class_names = list(names or [])
        return self._class_names

    def pseudo_label_quality(self, inputs: List[Dict], targets: Sequence[Instances]) -> Optional[Dict[str, float]]:
        gt = [x.get("instances_for_scoring") for x in inputs]
        if any(g is None for g in gt):
            return None
        return pseudo_label_quality(targets, [g.to(p.gt_boxes.device) for g, p in zip(gt, targets)])

    def source_targets(self, inputs: List[Dict]) -> List[Instances]:
        return [x["instances"] for x in inputs]

    # --------------------------------------------------------- student input
    def masked_inputs(self, pixels, image_sizes: Sequence[Tuple[int, int]], inputs, targets) -> List[Dict]:
        return [
            {"image": pixels[i, :, :h, :w], "instances": t, "height": x.get("height", h), "width": x.get("width", w)}
            for i, ((h, w), t, x) in enumerate(zip(image_sizes, targets, inputs))
        ]

    def visualize(self, storage: EventStorage, student, inputs: List[Dict], masked: List[Dict]) -> None:
        i = first_with_pseudo_boxes(masked)
        dataset = self.cfg.DATASETS.TRAIN_TARGET[0] if self.cfg.DATASETS.TRAIN_TARGET else ""
        log_pseudo_label_panels(storage, student, inputs[i], masked[i], self.cfg.INPUT.FORMAT, dataset)

    # ------------------------------------------------------------ the guard
    def log_source_signals(self, inputs: List[Dict], storage: EventStorage) -> None:
        """The RoI head's foreground accuracy of the source forward, and labelled boxes per image.

        The source forward has just logged ``fast_rcnn/fg_cls_accuracy``; the
        masked forward would overwrite it, so it is copied under its own name.
        """
        acc = storage.latest().get("fast_rcnn/fg_cls_accuracy")
        if acc is not None and acc[1] == storage.iter:
            storage.put_scalar("guard/source_accuracy", acc[0])
        objects = sum(len(x["instances"]) for x in inputs if "instances" in x) / max(len(inputs), 1)
        storage.put_scalar("guard/source_objects_per_image", objects)
