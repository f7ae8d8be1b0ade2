"""The dataset mapper of segmentation: labels read by their dataset's rules, per-stream sizes.

Built on :class:`mic_det.data.mapper.DomainDatasetMapper` (unreadable training
images are skipped and counted, never silently in evaluation), with what
segmentation needs on top:

* a training pair whose label cannot be used (unreadable, another size than
  its image, values outside the classes) is skipped and counted like an
  unreadable image; the load-time check reads only the first pairs of a set,
  and the start-up check reads every label of the test sets;
* labels come through :func:`~mic_det.segmentation.labels.read_dataset_label`
  (benchmark ids -> train ids, user labels checked for size and values);
* the target stream never gets ``sem_seg``; with
  ``MIC.LOG_PSEUDO_LABEL_QUALITY`` its labels ride along as
  ``sem_seg_for_scoring`` (measurement only), and its random crop never
  looks at them (a plain crop, not the category-area one);
* target images have their own short side (``SEG.TARGET_MIN_SIZE_TRAIN``);
* test records get their original ``height`` / ``width``, so predictions are
  resized back to the label's size.
"""
import copy
from typing import List, Optional

import numpy as np
import torch
from detectron2.config import CfgNode
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T

from ..data.mapper import DomainDatasetMapper
from .labels import IGNORE, LabelError, read_dataset_label

__all__ = ["SegDatasetMapper", "build_seg_augmentations"]


def build_seg_augmentations(cfg: CfgNode, is_train: bool, labelled: bool = True) -> List[T.Augmentation]:
    """Resize (short side), random crop, flip, as Detectron2's DeepLab project trains."""
    if not is_train:
        return [T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST, "choice")]
    sizes = cfg.INPUT.MIN_SIZE_TRAIN
    if not labelled and tuple(cfg.SEG.TARGET_MIN_SIZE_TRAIN) != (-1,):
        sizes = cfg.SEG.TARGET_MIN_SIZE_TRAIN
    augs: List[T.Augmentation] = [
        T.ResizeShortestEdge(sizes, cfg.INPUT.MAX_SIZE_TRAIN, cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING)
    ]
    if cfg.INPUT.CROP.ENABLED:
        if labelled:
            augs.append(T.RandomCrop_CategoryAreaConstraint(
                cfg.INPUT.CROP.TYPE, cfg.INPUT.CROP.SIZE, cfg.INPUT.CROP.SINGLE_CATEGORY_MAX_AREA, IGNORE))
        else:
            augs.append(T.RandomCrop(cfg.INPUT.CROP.TYPE, cfg.INPUT.CROP.SIZE))
    if cfg.INPUT.RANDOM_FLIP != "none":
        augs.append(T.RandomFlip(horizontal=cfg.INPUT.RANDOM_FLIP == "horizontal",
                                 vertical=cfg.INPUT.RANDOM_FLIP == "vertical"))
    return augs


class SegDatasetMapper(DomainDatasetMapper):
    """Image (+ label) -> ``{"image", "sem_seg" | "sem_seg_for_scoring", "height", "width", ...}``."""

    def __init__(self, cfg: CfgNode, is_train: bool, labelled: bool = True):
        super().__init__(
            is_train, labelled=labelled, augmentations=build_seg_augmentations(cfg, is_train, labelled),
            image_format=cfg.INPUT.FORMAT, use_instance_mask=False, instance_mask_format="polygon",
            use_keypoint=False, recompute_boxes=False,
        )
        self.keep_target_labels = bool(cfg.MIC.LOG_PSEUDO_LABEL_QUALITY)

    def __call__(self, dataset_dict: dict) -> Optional[dict]:
        dataset_dict = copy.deepcopy(dataset_dict)
        image = self._read(dataset_dict)
        if image is None:
            return None
        utils.check_image_size(dataset_dict, image)
        height, width = image.shape[:2]
        label_file = dataset_dict.pop("sem_seg_file_name", None)
        dataset_name = dataset_dict.pop("dataset_name", None)
        want_label = self.is_train and (self.labelled or self.keep_target_labels)
        label = None
        if want_label and label_file is not None and dataset_name is not None:
            try:
                label = read_dataset_label(dataset_name, label_file, image_size=(height, width))
            except LabelError as e:  # past the load-time check: one bad pair must not stop training
                self.skipped.skip(label_file, f"Skipping training pair {dataset_dict['file_name']} ({e})")
                return None
        aug_input = T.AugInput(image, sem_seg=label)
        self.augmentations(aug_input)
        image, label = aug_input.image, aug_input.sem_seg
        dataset_dict["image"] = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
        dataset_dict.setdefault("height", height)
        dataset_dict.setdefault("width", width)
        dataset_dict.pop("annotations", None)
        if label is not None:
            key = "sem_seg" if self.labelled else "sem_seg_for_scoring"
            dataset_dict[key] = torch.as_tensor(label.astype("long"))
        return dataset_dict
