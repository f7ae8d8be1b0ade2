"""What a task plugs into the MIC engine, and the registry that finds it by ``MODEL.TASK``.

MIC is one idea for detection, segmentation and classification: an EMA
teacher labels the unmasked target view, the student learns those labels from
a block-masked view, weighted by the teacher's confidence. The engine
(:class:`~mic_det.engine.MICStep`, :class:`~mic_det.engine.MICTrainer`) does
that much for any task; a task says only what differs:

* data: the dataset mapper of each stream, the source stream's sampler (optional),
  the test loader, the evaluator;
* pseudo-labels: teacher output -> per-image targets with their quality
  weight, whether an image has any, and the statistics to log;
* the student's input: where a target goes in the input dict;
* the signals the collapse guard watches on the labelled stream.

Adding a task = a package with a :class:`MICTask` subclass registered in
:data:`MIC_TASK_REGISTRY` under the name a config puts in ``MODEL.TASK``; no
engine file changes. The detection task (:mod:`mic_det.detection.task`) is the
worked example.
"""
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from detectron2.config import CfgNode
from detectron2.evaluation import DatasetEvaluator
from detectron2.structures import ImageList
from detectron2.utils.events import EventStorage
from detectron2.utils.registry import Registry
from torch.utils.data import Sampler

__all__ = ["MIC_TASK_REGISTRY", "MICTask", "build_task"]

MIC_TASK_REGISTRY = Registry("MIC_TASK")
MIC_TASK_REGISTRY.__doc__ = """
Tasks the MIC engine can train, by class name in ``MODEL.TASK`` (e.g. "DetectionTask").
A registered class is called with the config and returns a :class:`MICTask`.
"""


class MICTask:
    """The per-task half of a MIC training step; subclass it and register the subclass.

    The engine calls, per step: :meth:`log_source_signals` after the source
    forward; :meth:`pseudo_label` on the target batch (teacher in eval mode,
    under ``no_grad``, its BatchNorm as ``MIC.TEACHER_BN_MODE`` / :attr:`teacher_bn_mode` say); :meth:`pseudo_label_stats`, :meth:`has_pseudo_label`
    and :meth:`pseudo_label_quality` on its result; then, for the images that
    have pseudo-labels, :meth:`preprocess` and :meth:`masked_inputs` to build
    the student's masked forward, whose loss dict it suffixes with ``_mic``.
    """

    #: The losses of one plain student forward, in the order the model returns them.
    #: A step whose target batch has no pseudo-label logs each as ``<name>_mic`` = 0.
    loss_names: Tuple[str, ...] = ()
    #: The key of :meth:`pseudo_label_stats` the collapse guard compares with the
    #: labelled objects per source image (``guard/pseudo_per_image``).
    pseudo_count_stat: str = ""
    #: The teacher's BatchNorm mode for pseudo-labels when ``MIC.TEACHER_BN_MODE`` is "auto":
    #: "eval" (running statistics) or "train" (the target batch's statistics).
    teacher_bn_mode: str = "eval"
    #: The kind of labelled dataset the task learns from, as :func:`mic_det.data.checks.dataset_kind`
    #: names it ("detection", "segmentation", "classification"); "" leaves it unchecked.
    dataset_kind: str = ""
    #: What a dataset of :attr:`dataset_kind` holds, for the start-up checks' messages
    #: (e.g. "label PNGs, stuff_classes").
    dataset_description: str = ""
    #: The metadata key of a dataset's class list ("thing_classes"; segmentation: "stuff_classes"),
    #: which the start-up check (:func:`mic_det.data.checks.check_domain_classes`) compares across domains.
    classes_metadata_key: str = "thing_classes"
    #: The config keys of the model's class count that must equal the datasets' number of classes;
    #: None = Detectron2's box heads (``MODEL.ROI_HEADS.NUM_CLASSES`` / ``MODEL.RETINANET.NUM_CLASSES``).
    num_classes_keys: Optional[Tuple[str, ...]] = None
    #: Whether 0 at :attr:`num_classes_keys` means "the training set's number of classes" (the model
    #: reads it from the data), which the start-up check then accepts.
    num_classes_from_data: bool = False
    #: ``MODEL.META_ARCHITECTURE`` names of the networks the task trains. The start-up check
    #: (:func:`mic_det.data.checks.check_task_fits`) refuses a network another task lists and this
    #: one does not; a network no task lists (a user's own) passes.
    meta_architectures: Tuple[str, ...] = ()

    def __init__(self, cfg: CfgNode):
        self.cfg = cfg

    # ------------------------------------------------------------------ data
    def build_train_mapper(self, cfg: CfgNode, labelled: bool) -> Callable[[Dict], Optional[Dict]]:
        """The mapper of the labelled source stream (``labelled``) or of the unlabelled target stream."""
        raise NotImplementedError

    def build_source_sampler(self, cfg: CfgNode, dataset_dicts: List[Dict]) -> Optional[Sampler]:
        """The sampler of the labelled source stream over ``dataset_dicts`` (the loader's records,
        in order), or None for Detectron2's ``DATALOADER.SAMPLER_TRAIN``. Must be infinite and
        per-rank like Detectron2's ``TrainingSampler`` (the loader wraps it in a ``ResumableSampler``).
        The target stream always samples uniformly."""
        return None

    def build_test_loader(self, cfg: CfgNode, dataset_name: str):
        raise NotImplementedError

    def build_evaluator(
        self, cfg: CfgNode, dataset_name: str, output_dir: str, model_tag: str, iteration: int, config_name: str
    ) -> DatasetEvaluator:
        """The evaluator of one model (``model_tag``: "student" / "teacher") on one dataset."""
        raise NotImplementedError

    # ---------------------------------------------------------- pseudo-labels
    def pseudo_label(self, teacher: torch.nn.Module, inputs: List[Dict]) -> List[Any]:
        """Teacher output on the unmasked ``inputs`` -> one pseudo-target per image, in the
        network-input frame (the masked view is the same resized, flipped image), carrying
        its quality weight."""
        raise NotImplementedError

    def has_pseudo_label(self, target: Any) -> bool:
        """Whether an image's pseudo-target teaches anything (else it is left out of the MIC forward)."""
        raise NotImplementedError

    def pseudo_label_stats(self, targets: Sequence[Any]) -> Dict[str, float]:
        """Scalars logged as ``mic/<key>``; must include :attr:`pseudo_count_stat`."""
        raise NotImplementedError

    def pseudo_label_quality(self, inputs: List[Dict], targets: Sequence[Any]) -> Optional[Dict[str, float]]:
        """Pseudo-label precision/recall against the target stream's own labels, when it has
        them (``MIC.LOG_PSEUDO_LABEL_QUALITY``; a measurement only). None when it cannot."""
        return None

    def source_targets(self, inputs: List[Dict]) -> List[Any]:
        """The ground truth of labelled inputs, as :meth:`masked_inputs` takes it (``MIC.MASK_SOURCE``)."""
        raise NotImplementedError

    def self_training_losses(
        self, model: torch.nn.Module, source: List[Dict], target: List[Dict], pseudo: Sequence[Any]
    ) -> Dict[str, torch.Tensor]:
        """Losses of the task's own self-training on the pseudo-labels, next to the masked term
        (segmentation: DACS's ClassMix of source and target). Called at every MIC step with the
        unwrapped student (under DDP too: its gradients reach DDP's all-reduce through the
        parameters); ``{}`` by default. With ``MIC.LOSS_WEIGHT`` 0 these are
        the only target losses (self-training without masking)."""
        return {}

    # --------------------------------------------------------- student input
    def preprocess(self, model: torch.nn.Module, inputs: List[Dict]) -> ImageList:
        """The batch as the student normalises and pads it (Detectron2 meta-architectures:
        ``model.preprocess_image``)."""
        return model.preprocess_image(inputs)

    def masked_inputs(
        self,
        pixels: torch.Tensor,
        image_sizes: Sequence[Tuple[int, int]],
        inputs: List[Dict],
        targets: Sequence[Any],
    ) -> List[Dict]:
        """The student's input dicts for the masked view: ``pixels`` (N, C, H, W) is the padded
        batch in pixel space, masked; crop each image to ``image_sizes`` and put its target where
        the model's training forward reads it."""
        raise NotImplementedError

    # ---------------------------------------------------------- TensorBoard
    def visualizing(self, storage: EventStorage) -> bool:
        """True at the steps where images go to TensorBoard (Detectron2's ``VIS_PERIOD``; 0 = never)."""
        period = self.cfg.VIS_PERIOD
        return period > 0 and storage.iter % period == 0

    def visualize(self, storage: EventStorage, student: torch.nn.Module, inputs: List[Dict], masked: List[Dict]) -> None:
        """At :meth:`visualizing` steps: put images of the MIC step in ``storage`` (``inputs``: the
        unmasked target dicts that have pseudo-labels; ``masked``: the student's masked input dicts
        for them). Nothing by default."""

    # ------------------------------------------------------------ the guard
    def log_source_signals(self, inputs: List[Dict], storage: EventStorage) -> None:
        """Right after the source forward: put ``guard/source_accuracy`` (the student's accuracy
        on the labelled batch) and ``guard/source_objects_per_image`` in ``storage``, the
        collapse guard's signals. A task without them leaves the guard those checks off."""

    def guard_checks_off(self) -> Dict[str, str]:
        """The collapse guard's checks (:data:`~mic_det.engine.collapse_guard.GUARD_CHECKS`) this task's
        signals cannot trigger, each with the reason; the guard skips them and says so at start-up.
        None by default."""
        return {}


def build_task(cfg: CfgNode) -> MICTask:
    """The task named by ``MODEL.TASK``, with a clear error listing the registered ones."""
    name = cfg.MODEL.TASK
    if name not in MIC_TASK_REGISTRY:
        known = sorted(k for k, _ in MIC_TASK_REGISTRY)
        raise KeyError(f"MODEL.TASK {name!r} is not a registered task; registered: {known}")
    return MIC_TASK_REGISTRY.get(name)(cfg)
