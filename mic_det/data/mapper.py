"""Detectron2's ``DatasetMapper`` for two-domain training.

Two additions, both about data that is not the clean labelled source set:

* ``labelled=False`` marks the *target* stream. Its annotations, if the set
  has any (Foggy Cityscapes does), must never reach a loss in unsupervised
  adaptation; they are kept apart as ``instances_for_scoring``, transformed
  like real labels so they line up with the network input, for measuring
  pseudo-label precision/recall only.
* Real folders hold the odd unreadable file (an interrupted copy, a zero-byte
  download). In a *training* stream one such file should not stop a run of
  many hours: it is skipped with a warning and counted
  (:class:`SkippedFiles`), and Detectron2's ``MapDataset`` draws another
  image. So is an image whose size is not the one its record says: its boxes
  would land in the wrong place. In evaluation a skip would silently change
  the metric, so it is an error naming the file. Task mappers (segmentation
  labels, classification images) skip their own unusable files through the
  same counter.
"""

import contextlib
import copy
import logging
import multiprocessing as mp
from multiprocessing.context import get_spawning_popen
from typing import Optional

import numpy as np
import torch
from detectron2.config import configurable
from detectron2.data import DatasetMapper
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T

__all__ = ["DomainDatasetMapper", "SkippedFiles", "UnreadableImageError"]

logger = logging.getLogger(__name__)


class UnreadableImageError(OSError):
    """An image file that exists in a dataset but cannot be decoded."""


class _LocalCounter:
    """Stand-in for ``mp.Value`` in copies of a counter made outside process start-up."""

    def __init__(self, value: int = 0):
        self.value = value

    def get_lock(self):
        return contextlib.nullcontext()


class SkippedFiles:
    """Training files skipped as unusable: counted across DataLoader workers, one warning per file.

    The count lives in shared memory, so increments in the data loader's
    worker processes reach the trainer (which logs it as
    ``data/skipped_images_<stream>``). A bad file is drawn again every epoch;
    its first skip is a warning naming it, later ones are debug messages.
    """

    def __init__(self):
        self._count = mp.Value("q", 0)
        self._warned = set()

    @property
    def count(self) -> int:
        return int(self._count.value)

    def skip(self, file_name: str, message: str) -> None:
        """Count one skip of ``file_name`` and log ``message`` (which names the file and the reason)."""
        with self._count.get_lock():
            self._count.value += 1
            count = self._count.value
        log = logger.debug if file_name in self._warned else logger.warning
        self._warned.add(file_name)
        log(f"{message}; {count} skipped so far.")

    def __getstate__(self):
        # A shared counter may only travel to a process being started (worker
        # start-up); any other copy (deepcopy, cloudpickle) counts on its own.
        state = self.__dict__.copy()
        if get_spawning_popen() is None:
            state["_count"] = _LocalCounter(self.count)
        return state


class DomainDatasetMapper(DatasetMapper):
    """``DatasetMapper`` + an unlabelled (target) mode + skipping unreadable training images.

    Attributes:
        labelled: False for the target stream (labels never become ``instances``).
        num_skipped: images (or image/label pairs) skipped as unusable so far,
            summed over the data loader's worker processes (they share the
            counter, :attr:`skipped`), so the trainer can log it.
    """

    @configurable
    def __init__(self, is_train: bool, *, labelled: bool = True, **kwargs):
        """
        Args:
            is_train, **kwargs: as :class:`detectron2.data.DatasetMapper`.
            labelled: False for an unlabelled target stream.
        """
        super().__init__(is_train, **kwargs)
        self.labelled = labelled
        self.skipped = SkippedFiles()

    @classmethod
    def from_config(cls, cfg, is_train: bool = True, *, labelled: bool = True):
        ret = super().from_config(cfg, is_train)
        ret["labelled"] = labelled
        return ret

    @property
    def num_skipped(self) -> int:
        return self.skipped.count

    def _read(self, dataset_dict: dict) -> Optional[np.ndarray]:
        file_name = dataset_dict["file_name"]
        try:
            return utils.read_image(file_name, format=self.image_format)
        except Exception as e:  # PIL raises OSError, ValueError, SyntaxError, ... for bad files
            reason = f"{type(e).__name__}: {e}"
            if not self.is_train:
                raise UnreadableImageError(
                    f"Cannot read image {file_name} ({reason}); evaluation needs every "
                    f"image of the set: fix or remove it from the dataset."
                ) from e
            self.skipped.skip(file_name, f"Skipping unreadable training image {file_name} ({reason})")
            return None

    def __call__(self, dataset_dict: dict) -> Optional[dict]:
        """Map one record; None (training only) when its image cannot be read."""
        dataset_dict = copy.deepcopy(dataset_dict)
        image = self._read(dataset_dict)
        if image is None:
            return None
        try:
            utils.check_image_size(dataset_dict, image)
        except utils.SizeMismatchError:
            if not self.is_train:
                raise
            h, w = image.shape[:2]
            self.skipped.skip(
                dataset_dict["file_name"],
                f"Skipping training image {dataset_dict['file_name']}: it is {h}x{w} (h x w) but its record "
                f"says {dataset_dict.get('height')}x{dataset_dict.get('width')}, so its labels would be misplaced",
            )
            return None

        if "sem_seg_file_name" in dataset_dict:
            sem_seg_gt = utils.read_image(dataset_dict.pop("sem_seg_file_name"), "L").squeeze(2)
        else:
            sem_seg_gt = None

        aug_input = T.AugInput(image, sem_seg=sem_seg_gt)
        transforms = self.augmentations(aug_input)
        image, sem_seg_gt = aug_input.image, aug_input.sem_seg
        image_shape = image.shape[:2]  # h, w
        dataset_dict["image"] = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
        if sem_seg_gt is not None:
            dataset_dict["sem_seg"] = torch.as_tensor(sem_seg_gt.astype("long"))

        if self.proposal_topk is not None:
            utils.transform_proposals(
                dataset_dict, image_shape, transforms, proposal_topk=self.proposal_topk
            )

        if not self.is_train:
            dataset_dict.pop("annotations", None)
            dataset_dict.pop("sem_seg_file_name", None)
            return dataset_dict

        if "annotations" in dataset_dict:
            self._transform_annotations(dataset_dict, transforms, image_shape)
            if not self.labelled:
                dataset_dict["instances_for_scoring"] = dataset_dict.pop("instances")
        if not self.labelled:
            dataset_dict.pop("sem_seg", None)  # labels of any kind stay out of the target stream
        return dataset_dict
