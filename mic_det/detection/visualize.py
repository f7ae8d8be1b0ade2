"""TensorBoard views of a detection MIC step: what the teacher said, what the student saw, what it made of it.

Every ``VIS_PERIOD`` steps (Detectron2's own key) one target image goes to the
event storage as three panels side by side: the unmasked view with the
teacher's pseudo-boxes and scores, the masked view the student is trained
on, and the student's own detections on that masked view. The teacher's
scores on the whole target batch (before delta) go in as a histogram and as
a small plot with delta drawn, the first thing to look at when the teacher
gives no pseudo-box.
"""
from typing import Dict, List, Sequence

import numpy as np
import torch
from detectron2.data import MetadataCatalog
from detectron2.data.detection_utils import convert_image_to_rgb
from detectron2.structures import Instances
from detectron2.utils.events import EventStorage
from detectron2.utils.visualizer import Visualizer

from ..evaluation.figures import new_figure

__all__ = ["PANELS_NAME", "SCORES_NAME", "log_pseudo_label_panels", "log_teacher_scores"]

PANELS_NAME = "mic/left: teacher pseudo-boxes; middle: masked view; right: student on the masked view"
SCORES_NAME = "mic/teacher_scores"
MAX_STUDENT_BOXES = 20  # its top-scoring ones (inference sorts by score); an early student has hundreds


def _rgb(image: torch.Tensor, input_format: str) -> np.ndarray:
    """A (C, H, W) input tensor in ``INPUT.FORMAT`` -> an (H, W, 3) uint8 RGB array."""
    image = image.detach().float().clamp(0, 255).permute(1, 2, 0).cpu().numpy()
    return np.ascontiguousarray(convert_image_to_rgb(image, input_format).astype(np.uint8))


def _draw(image: np.ndarray, instances: Instances, boxes: str, classes: str, scores: str, names) -> np.ndarray:
    instances = instances.to("cpu")
    labels = [
        f"{names[int(c)] if c < len(names) else int(c)} {float(s):.2f}"
        for c, s in zip(instances.get(classes), instances.get(scores))
    ]
    return Visualizer(image, None).overlay_instances(boxes=instances.get(boxes).tensor.numpy(), labels=labels).get_image()


@torch.no_grad()
def log_pseudo_label_panels(
    storage: EventStorage,
    student: torch.nn.Module,
    unmasked: Dict,
    masked: Dict,
    input_format: str,
    dataset_name: str,
) -> None:
    """Put one image's three panels (see the module docstring) in ``storage``.

    ``unmasked`` is the target input dict, ``masked`` the student's input dict
    for it (masked pixels + pseudo-Instances); the student is run in eval mode
    on the masked view and put back in training mode.
    """
    names = MetadataCatalog.get(dataset_name).get("thing_classes", []) if dataset_name else []
    pseudo = masked["instances"]
    h, w = masked["image"].shape[-2:]
    left = _draw(_rgb(unmasked["image"][:, :h, :w], input_format), pseudo, "gt_boxes", "gt_classes", "gt_scores", names)
    view = _rgb(masked["image"], input_format)
    was_training = student.training
    student.train(False)
    try:
        (pred,) = student.inference([{"image": masked["image"], "height": h, "width": w}], do_postprocess=False)
    finally:
        student.train(was_training)
    right = _draw(view, pred[:MAX_STUDENT_BOXES], "pred_boxes", "pred_classes", "scores", names)
    storage.put_image(PANELS_NAME, np.concatenate([left, view, right], axis=1).transpose(2, 0, 1))


def log_teacher_scores(storage: EventStorage, predictions: Sequence[Instances], delta: float) -> None:
    """The teacher's detection scores on a target batch, before delta: a histogram and a plot marking delta."""
    scores = [p.scores.detach().float().cpu() for p in predictions if p.has("scores") and len(p)]
    scores = torch.cat(scores) if scores else torch.zeros(0)
    if scores.numel():
        storage.put_histogram(SCORES_NAME, scores, bins=20)
    fig = new_figure(4.0, 2.6)
    ax = fig.add_subplot(1, 1, 1)
    ax.hist(scores.numpy(), bins=20, range=(0.0, 1.0), color="tab:blue")
    ax.axvline(delta, color="tab:red", linestyle="--", label=f"delta = MIC.PSEUDO_SCORE_THRESH = {delta:g}")
    ax.set_xlabel("teacher score (after its own NMS, before delta)")
    ax.set_ylabel("boxes")
    ax.set_title(f"{len(scores)} boxes on {len(predictions)} target images", fontsize=8)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.canvas.draw()
    image = np.asarray(fig.canvas.buffer_rgba())[..., :3]
    storage.put_image(SCORES_NAME, image.transpose(2, 0, 1).copy())


def first_with_pseudo_boxes(masked_inputs: List[Dict]) -> int:
    """Index of the first masked input that carries a pseudo-box (0 if none does)."""
    return next((i for i, x in enumerate(masked_inputs) if len(x["instances"]) > 0), 0)
