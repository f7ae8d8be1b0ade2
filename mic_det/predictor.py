"""Use a trained mic_det model: the student or the EMA teacher of a checkpoint.

MIC checkpoints hold two detectors, the student ("model") and the EMA
teacher ("teacher"), and the teacher is usually the better one on the target
domain. Detectron2's ``DefaultPredictor`` only knows "model"; :class:`Predictor`
is that predictor with a choice of the two, built from the training config::

    from mic_det import Predictor
    predictor = Predictor("output/synthetic/mic/config.yaml", "output/synthetic/mic/model_final.pth",
                          model="teacher")
    outputs = predictor(cv2.imread("image.png"))  # BGR; outputs["instances"] as Detectron2's

The datasets a run registered with ``--register-*`` / ``--domains`` are
registered again from the run's record (``OUTPUT_DIR/datasets.yaml``, or the
checkpoint; :mod:`mic_det.data.run_record`), so the class names and json
category ids are the run's without repeating any flag.

The helpers below are shared by ``tools/predict.py``, ``tools/export_model.py``
and ``tools/extract_teacher.py``.
"""
import logging
import os
from typing import Dict, List, Optional, Sequence, Union

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.catalog import Metadata
from detectron2.engine import DefaultPredictor
from detectron2.evaluation.coco_evaluation import instances_to_coco_json
from detectron2.structures import Instances

from . import data as _data  # noqa: F401  (registers the built-in datasets)
from . import detection as _detection  # noqa: F401  (registers DomainAdaptiveRCNN and its heads)
from .config_loading import build_config
from .data.builtin import register_config_data
from .data.checks import dataset_names
from .data.run_record import restore_run_datasets
from .detection.evaluator import ensure_class_metadata
from .teacher import teacher_weights_from_checkpoint

__all__ = [
    "Predictor",
    "TeacherCheckpointer",
    "check_weights_file",
    "load_detector",
    "predictor_config",
    "class_metadata",
    "to_coco_results",
]

logger = logging.getLogger(__name__)

MODELS = ("student", "teacher")


def check_weights_file(path: str, flag: str = "--weights") -> None:
    """A local checkpoint path must exist (URLs such as ``detectron2://`` are left to the loader)."""
    if not path:
        raise ValueError(f"{flag} is empty: give the checkpoint to load (e.g. OUTPUT_DIR/model_final.pth)")
    if "://" not in path and not os.path.isfile(path):
        raise FileNotFoundError(f"{flag} {path} does not exist")


class TeacherCheckpointer(DetectionCheckpointer):
    """A ``DetectionCheckpointer`` that loads a MIC checkpoint's *teacher* as the model.

    Everything else (shape checks, the report of missing/unexpected keys) is
    Detectron2's; only the file's "teacher" entry takes the place of "model".
    """

    def _load_file(self, filename: str) -> dict:
        checkpoint = super()._load_file(filename)
        try:
            teacher = teacher_weights_from_checkpoint(checkpoint)
        except KeyError as e:
            raise KeyError(f"{filename}: {e.args[0]}") from None
        checkpoint.pop("teacher")
        checkpoint["model"] = teacher
        return checkpoint


def load_detector(model, weights: str, which: str = "student") -> dict:
    """Load the ``which`` ("student" / "teacher") weights of checkpoint ``weights`` into ``model``.

    Returns what the checkpointer left unread (e.g. ``"iteration"``).
    """
    if which not in MODELS:
        raise ValueError(f"model must be one of {MODELS}, got {which!r}")
    check_weights_file(weights)
    checkpointer = (TeacherCheckpointer if which == "teacher" else DetectionCheckpointer)(model)
    return checkpointer.load(weights)


def predictor_config(
    config: Union[str, CfgNode],
    weights: str,
    *,
    score_thresh: Optional[float] = None,
    opts: Sequence[str] = (),
) -> CfgNode:
    """The config to predict with: a config file (or a CfgNode) + overrides + weights + threshold.

    Registers the datasets of the run the config or the weights belong to (its record), unless
    registered already.
    """
    if isinstance(config, CfgNode):
        from .config_loading import merge_config

        cfg = merge_config(config.clone(), None, list(opts))
    else:
        cfg = build_config(config, list(opts))
    register_config_data(cfg)  # each task's built-in sets under the roots the config names
    restore_run_datasets(None if isinstance(config, CfgNode) else config, weights,
                         needed=[name for _, name in dataset_names(cfg)], classes_only=True)
    cfg.MODEL.WEIGHTS = weights
    if score_thresh is not None:
        # Detectron2's demo sets every head's threshold the same way.
        cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = score_thresh
        cfg.MODEL.RETINANET.SCORE_THRESH_TEST = score_thresh
        cfg.MODEL.PANOPTIC_FPN.COMBINE.INSTANCES_CONFIDENCE_THRESH = score_thresh
    cfg.freeze()
    return cfg


def class_metadata(cfg: CfgNode) -> Metadata:
    """Metadata with the class names: ``DATASETS.TEST[0]``'s, else ``DATASETS.TRAIN[0]``'s.

    A run's record (:func:`predictor_config` registers it) holds the names
    and json category ids. Without one, the dataset is loaded (once) when that
    is the only way to learn its json category ids, so that results carry them
    as Detectron2's evaluator writes them; if it is not registered or cannot
    be loaded, results keep the contiguous ids 0..K-1 and a warning says so.
    """
    names = list(cfg.DATASETS.TEST) + list(cfg.DATASETS.TRAIN)
    if not names:
        return MetadataCatalog.get("__unused")
    name = names[0]
    if name not in DatasetCatalog.list():
        if MetadataCatalog.get(name).get("thing_classes"):  # from a run record whose data has moved
            return MetadataCatalog.get(name)
        logger.warning(
            "Dataset '%s' is not registered and no run record names it (OUTPUT_DIR/datasets.yaml, written by "
            "tools/train_net.py): class names are unknown and category_id in the results are the model's "
            "contiguous ids 0..K-1. Register it (--register-coco / --domains) for the json's ids.", name,
        )
        return MetadataCatalog.get(name)
    try:
        ensure_class_metadata(name)
    except (OSError, ValueError, KeyError) as e:
        logger.warning(
            "Could not load dataset '%s' for its category ids (%s); category_id in the results "
            "are the model's contiguous ids 0..K-1.", name, e,
        )
    return MetadataCatalog.get(name)


def to_coco_results(instances: Instances, image_id, metadata: Metadata, **extra) -> List[Dict]:
    """COCO-format results of one image, category ids mapped back as Detectron2's COCOEvaluator does.

    ``extra`` keys (e.g. ``file_name``) are added to every entry.
    """
    results = instances_to_coco_json(instances.to("cpu"), image_id)
    mapping = metadata.get("thing_dataset_id_to_contiguous_id")
    if mapping:
        reverse = {v: k for k, v in mapping.items()}
        for r in results:
            r["category_id"] = reverse[r["category_id"]]
    for r in results:
        r.update(extra)
    return results


class Predictor(DefaultPredictor):
    """Detectron2's ``DefaultPredictor`` for a mic_det checkpoint, student or teacher.

    Call it on a BGR ``np.ndarray`` (H, W, 3) to get ``{"instances": Instances}``
    in the image's own coordinates, as ``DefaultPredictor`` does.

    Attributes:
        which: "student" or "teacher".
        metadata: class names (and json category ids) of the config's datasets.
    """

    def __init__(
        self,
        config: Union[str, CfgNode],
        weights: str,
        model: str = "student",
        *,
        score_thresh: Optional[float] = None,
        opts: Sequence[str] = (),
    ):
        """
        Args:
            config: a config file (the run's ``OUTPUT_DIR/config.yaml`` is the surest) or a CfgNode.
            weights: a checkpoint written by mic_det (or any Detectron2 checkpoint, for "student").
            model: "student" or "teacher" (the EMA teacher saved by MIC runs).
            score_thresh: keep detections scoring at least this (default: the config's).
            opts: ``[KEY, VALUE, ...]`` overrides.
        """
        if model not in MODELS:
            raise ValueError(f"model must be one of {MODELS}, got {model!r}")
        check_weights_file(weights)
        cfg = predictor_config(config, weights, score_thresh=score_thresh, opts=opts)
        super().__init__(cfg)  # builds the model and loads the student
        if model == "teacher":
            load_detector(self.model, weights, "teacher")
        self.which = model
        self.metadata = class_metadata(cfg)
