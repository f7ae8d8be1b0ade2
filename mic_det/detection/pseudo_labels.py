"""Teacher detections -> pseudo-labels for the masked student view, and their statistics.

The teacher's detections are taken in *network-input* coordinates
(``GeneralizedRCNN.inference(batched_inputs, do_postprocess=False)``): the
student sees the same resized, flipped view, masked, so the boxes line up with
its input as they are; nothing is rescaled here.
"""

from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torchvision.ops import batched_nms

from detectron2.structures import Boxes, Instances, pairwise_iou

__all__ = ["make_pseudo_labels", "split_uncertain", "pseudo_label_stats", "pseudo_label_quality"]

_PRED_FIELDS = ("pred_boxes", "scores", "pred_classes")


def _empty_pseudo_labels(image_size, device: torch.device, with_ignore: bool) -> Instances:
    ret = Instances(
        image_size,
        gt_boxes=Boxes(torch.zeros((0, 4), dtype=torch.float32, device=device)),
        gt_classes=torch.zeros((0,), dtype=torch.int64, device=device),
        gt_scores=torch.zeros((0,), dtype=torch.float32, device=device),
    )
    if with_ignore:
        ret.gt_ignore = torch.zeros((0,), dtype=torch.bool, device=device)
    return ret


def _has_predictions(pred) -> bool:
    """Check ``pred`` is a teacher output; False if it holds no detections at all.

    An Instances without fields (no detections, nothing set) or with zero rows
    counts as "no detections"; one with rows but not the detector's fields is an error.
    """
    if isinstance(pred, dict):
        raise TypeError(
            "make_pseudo_labels expects Instances in network-input coordinates, i.e. "
            "GeneralizedRCNN.inference(batched_inputs, do_postprocess=False); got a dict "
            "(the model's post-processed output, rescaled to the original image size)."
        )
    if not pred.get_fields() or len(pred) == 0:
        return False
    missing = [f for f in _PRED_FIELDS if not pred.has(f)]
    if missing:
        raise KeyError(
            f"Teacher predictions lack {missing} (have {sorted(pred.get_fields())}); "
            f"expected detector outputs with {list(_PRED_FIELDS)}."
        )
    return True


def _pseudo_labels_single(
    pred: Instances, score_thresh: float, nms_thresh: float, ignore_thresh: Optional[float]
) -> Instances:
    with_ignore = ignore_thresh is not None
    if not _has_predictions(pred):
        device = pred.pred_boxes.device if pred.has("pred_boxes") else torch.device("cpu")
        return _empty_pseudo_labels(pred.image_size, device, with_ignore)
    device = pred.pred_boxes.tensor.device
    keep = pred.scores >= (ignore_thresh if with_ignore else score_thresh)
    boxes = Boxes(pred.pred_boxes.tensor[keep].float().clone())
    scores = pred.scores[keep].float()
    classes = pred.pred_classes[keep].long()

    boxes.clip(pred.image_size)
    nonempty = boxes.nonempty(threshold=0.0)
    boxes, scores, classes = boxes[nonempty], scores[nonempty], classes[nonempty]
    if len(boxes) == 0:
        return _empty_pseudo_labels(pred.image_size, device, with_ignore)

    keep = batched_nms(boxes.tensor, scores, classes, nms_thresh)  # sorted by score, high first
    ret = Instances(pred.image_size, gt_boxes=boxes[keep], gt_classes=classes[keep], gt_scores=scores[keep])
    if with_ignore:
        ret.gt_ignore = ret.gt_scores < score_thresh
    return ret


def make_pseudo_labels(
    predictions: Sequence[Instances],
    score_thresh: float,
    nms_thresh: float,
    ignore_thresh: Optional[float] = None,
) -> List[Instances]:
    """Turn the teacher's detections into training targets for the masked view.

    Args:
        predictions: per image, Instances with ``pred_boxes``, ``scores`` and
            ``pred_classes`` in network-input coordinates (``image_size`` = the
            resized input size).
        score_thresh: delta; boxes scoring at least this are kept.
        nms_thresh: IoU of the class-wise NMS.
        ignore_thresh: if given and below ``score_thresh``, boxes scoring in
            ``[ignore_thresh, score_thresh)`` are kept too, flagged
            ``gt_ignore = True``: regions the teacher is unsure of, which the
            weighted heads leave out of the loss rather than call background
            (see :func:`split_uncertain`). None (or >= ``score_thresh``): off.

    Returns:
        Per image, Instances of the same ``image_size`` with ``gt_boxes`` (Boxes),
        ``gt_classes`` (int64) and ``gt_scores`` (float32, the teacher's score,
        for the quality weight), highest score first. Boxes are clipped to the
        image and zero-area ones dropped; an image without any keeps empty but
        well-shaped fields (so the caller decides whether to skip it). With
        ``ignore_thresh`` every Instances also has the bool ``gt_ignore``.

    Thresholding happens before NMS, which keeps exactly the boxes NMS-then-threshold
    would: greedy NMS only lets a box be suppressed by a higher-scoring one, so
    boxes below the threshold never decide the fate of boxes above it. Clipping
    comes before NMS, so NMS sees the boxes the student will be trained on
    (Detectron2's inference has already clipped them anyway).
    """
    if not 0.0 <= float(nms_thresh) <= 1.0:
        raise ValueError(f"nms_thresh must be an IoU in [0, 1], got {nms_thresh}")
    # An ignore threshold at or above delta leaves no box to flag: off.
    ignore = None if ignore_thresh is None or ignore_thresh >= score_thresh else float(ignore_thresh)
    return [_pseudo_labels_single(p, float(score_thresh), float(nms_thresh), ignore) for p in predictions]


def split_uncertain(instances: Instances) -> Tuple[Instances, Boxes]:
    """Split pseudo-labels into the confident ones (the targets) and the uncertain boxes.

    Returns the Instances without its ``gt_ignore`` field, holding only the
    boxes at or above delta, and the Boxes flagged ``gt_ignore``. Labelled
    data and pseudo-labels made without an ignore threshold come back as
    they are, with no uncertain box.
    """
    if not instances.has("gt_ignore"):
        device = instances.gt_boxes.device if instances.has("gt_boxes") else None
        return instances, Boxes(torch.zeros((0, 4), device=device))
    ignore = instances.gt_ignore
    confident = instances[~ignore]
    confident.remove("gt_ignore")
    return confident, instances.gt_boxes[ignore]


def pseudo_label_stats(pseudo: Sequence[Instances], class_names: Sequence[str] = ()) -> Dict[str, float]:
    """Per-step summary for logging: how many pseudo-boxes, how many empty images, how sure.

    Counts the confident boxes; with uncertain ones (``gt_ignore``) present,
    ``uncertain_per_image`` says how many regions were left out of the loss.
    With ``class_names``, ``boxes_per_image/<name>`` counts each class apart:
    self-training can feed one class's confident mistakes back into itself
    while the total hardly moves (BENCHMARKS.md, "the fog trucks"), and a class
    whose count climbs far above where it started shows it without a label.

    Every value is a finite float (0.0 for an empty batch or a batch without
    boxes), so it can go to TensorBoard without NaN checks.
    """
    with_ignore = any(p.has("gt_ignore") for p in pseudo)
    num_uncertain = sum(int(p.gt_ignore.sum()) for p in pseudo if p.has("gt_ignore"))
    pseudo = [split_uncertain(p)[0] for p in pseudo]
    num_images = len(pseudo)
    counts = [len(p) for p in pseudo]
    num_boxes = sum(counts)
    if num_boxes > 0:
        scores = torch.cat([p.gt_scores for p in pseudo if len(p) > 0])
        mean_score = float(scores.float().mean())
    else:
        mean_score = 0.0
    stats = {
        "boxes_per_image": num_boxes / num_images if num_images else 0.0,
        "frac_images_empty": sum(c == 0 for c in counts) / num_images if num_images else 0.0,
        "mean_score": mean_score,
    }
    if with_ignore:
        stats["uncertain_per_image"] = num_uncertain / num_images if num_images else 0.0
    if class_names:
        classes = torch.cat([p.gt_classes.cpu() for p in pseudo]) if pseudo else torch.zeros(0, dtype=torch.int64)
        per_class = torch.bincount(classes, minlength=len(class_names)).tolist()
        for name, n in zip(class_names, per_class):
            stats[f"boxes_per_image/{name}"] = n / num_images if num_images else 0.0
    return stats


def _true_positives(pseudo: Instances, gt: Instances, iou_thresh: float) -> int:
    """Greedy matching by descending score; each gt box matches at most one pseudo-box."""
    if len(pseudo) == 0 or len(gt) == 0:
        return 0
    p_boxes, g_boxes = pseudo.gt_boxes.to("cpu"), gt.gt_boxes.to("cpu")
    iou = pairwise_iou(p_boxes, g_boxes)  # (P, G)
    same_class = pseudo.gt_classes.cpu().view(-1, 1) == gt.gt_classes.cpu().view(1, -1)
    iou = torch.where(same_class, iou, torch.full_like(iou, -1.0))
    if pseudo.has("gt_scores"):
        order = torch.argsort(pseudo.gt_scores.cpu(), descending=True, stable=True).tolist()
    else:
        order = range(len(pseudo))
    taken = torch.zeros(len(gt), dtype=torch.bool)
    tp = 0
    for i in order:
        candidates = iou[i].masked_fill(taken, -1.0)
        best = int(candidates.argmax())
        if candidates[best] >= iou_thresh:
            taken[best] = True
            tp += 1
    return tp


def pseudo_label_quality(
    pseudo: Sequence[Instances], gt: Sequence[Instances], iou_thresh: float = 0.5
) -> Dict[str, float]:
    """Precision and recall of pseudo-boxes against the target's own labels (a measurement only).

    A pseudo-box is a true positive when it matches a not yet matched gt box of the
    same class with IoU >= ``iou_thresh`` (greedy, highest score first, to the
    best-overlapping free gt box). Both lists must be in the same frame (network-input
    coordinates, same ``image_size``). Precision / recall are 0.0 when undefined (no
    pseudo-boxes / no gt boxes); ``tp``, ``num_pseudo`` and ``num_gt`` are returned
    too so a caller can aggregate over steps.
    """
    if len(pseudo) != len(gt):
        raise ValueError(f"Got pseudo-labels for {len(pseudo)} images but labels for {len(gt)}")
    if not 0.0 < float(iou_thresh) <= 1.0:
        raise ValueError(f"iou_thresh must be in (0, 1], got {iou_thresh}")
    tp = num_pseudo = num_gt = 0
    pseudo = [split_uncertain(p)[0] for p in pseudo]  # uncertain boxes are not labels
    for i, (p, g) in enumerate(zip(pseudo, gt)):
        if tuple(p.image_size) != tuple(g.image_size):
            raise ValueError(
                f"Image {i}: pseudo-labels are for size {tuple(p.image_size)} but labels for "
                f"{tuple(g.image_size)}; both must be in network-input coordinates."
            )
        tp += _true_positives(p, g, float(iou_thresh))
        num_pseudo += len(p)
        num_gt += len(g)
    return {
        "precision": tp / num_pseudo if num_pseudo else 0.0,
        "recall": tp / num_gt if num_gt else 0.0,
        "tp": float(tp),
        "num_pseudo": float(num_pseudo),
        "num_gt": float(num_gt),
    }
