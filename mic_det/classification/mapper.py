"""Dataset dict -> network input for classification: read, resize, crop, flip.

As the reference's transforms: every image is resized to a square
``INPUT.CLS.RESIZE``, then cropped to ``INPUT.CLS.SIZE`` at random (training,
with a random horizontal flip) or in the centre (test). A square, fixed-size
input lets source, target and the masked view share one batch tensor.

An image that cannot be decoded is skipped in training, with a warning naming
it and a count (:class:`mic_det.data.mapper.SkippedFiles`, logged as
``data/skipped_images_<stream>``), as detection and segmentation skip theirs:
one bad file must not stop a long run. In evaluation it is an error naming the
file (a skip would change the metric).
"""
from typing import Dict, Optional

import numpy as np
import torch
from detectron2.config import CfgNode
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T

from ..data.mapper import SkippedFiles

__all__ = ["ClassificationMapper"]


class ClassificationMapper:
    """Maps ``{"file_name", "label"?}`` to ``{"image", "label"?, "height", "width"}``.

    Args:
        is_train: random crop and flip (else centre crop).
        labelled: False for the target stream: a label in the record is kept
            only as ``label_for_scoring`` (pseudo-label accuracy), never as ``label``.
    """

    def __init__(self, cfg: CfgNode, is_train: bool, labelled: bool = True):
        size, resize = cfg.INPUT.CLS.SIZE, cfg.INPUT.CLS.RESIZE
        if resize < size:
            raise ValueError(f"INPUT.CLS.RESIZE ({resize}) must be >= INPUT.CLS.SIZE ({size})")
        augs = [T.Resize((resize, resize))]
        if is_train:
            augs.append(T.RandomCrop("absolute", (size, size)))
            if cfg.INPUT.CLS.RANDOM_FLIP:
                augs.append(T.RandomFlip(horizontal=True))
        elif resize > size:
            offset = (resize - size) // 2
            augs.append(_CentreCrop(offset, size))
        self.augmentations = T.AugmentationList(augs)
        self.image_format = cfg.INPUT.FORMAT
        self.is_train = is_train
        self.labelled = labelled
        self.skipped = SkippedFiles()

    @property
    def num_skipped(self) -> int:
        """Training images skipped as unreadable so far (over all data loader workers)."""
        return self.skipped.count

    def __call__(self, record: Dict) -> Optional[Dict]:
        """Map one record; None (training only) when its image cannot be read."""
        path = record["file_name"]
        try:
            image = utils.read_image(path, format=self.image_format)
        except Exception as e:  # PIL raises several types for a broken file
            reason = f"{type(e).__name__}: {e}"
            if self.is_train:
                self.skipped.skip(path, f"Skipping unreadable training image {path} ({reason})")
                return None
            raise ValueError(f"{path}: unreadable image ({reason})") from None
        aug = T.AugInput(image)
        self.augmentations(aug)
        image = np.ascontiguousarray(aug.image.transpose(2, 0, 1))
        out = {"image": torch.as_tensor(image), "height": image.shape[1], "width": image.shape[2],
               "file_name": path}
        if "label" in record:
            out["label" if self.labelled else "label_for_scoring"] = int(record["label"])
        return out


class _CentreCrop(T.Augmentation):
    """A fixed crop of ``size`` x ``size`` at (``offset``, ``offset``)."""

    def __init__(self, offset: int, size: int):
        super().__init__()
        self.offset, self.size = offset, size

    def get_transform(self, image):
        return T.CropTransform(self.offset, self.offset, self.size, self.size)
