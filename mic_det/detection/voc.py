"""PASCAL-VOC style AP50, computed in memory and vectorized.

Why a second AP50 next to COCO's: domain-adaptive detection papers report
"AP50" with either the COCO protocol (101-point interpolated precision, greedy
matching to the best *unmatched* ground truth) or the PASCAL VOC protocol
(all-point interpolation, matching to the best-overlapping ground truth,
duplicates are false positives). The two differ by a fraction of a point to a
few points, which is as large as many reported gains, so mic_det reports both.

The protocol implemented here is the VOC2010+ devkit's, with these choices:

* **Matching.** Detections of a class are ranked by score over the whole
  dataset. Each detection is assigned the ground-truth box of the same class
  and image with the highest IoU (ties: the first box), *whether or not that
  box is already taken*. If that IoU is ``>= iou_thresh`` the detection is a
  true positive when it is the highest-ranked detection assigned to the box,
  and a false positive (duplicate) otherwise; below the threshold it is a
  false positive. Because the assignment does not depend on earlier matches,
  the whole computation needs no per-detection loop.
* **Ignored ground truth** (``"ignore"`` in the ground truth: VOC's
  ``difficult`` flag, COCO's ``iscrowd``): such a box does not count as a
  positive, and a detection whose best box is an ignored one is neither a
  true nor a false positive (VOC's rule for ``difficult``). Crowd regions are
  matched by IoU like any box, not by COCO's intersection-over-detection.
* **Coordinates** are continuous ``XYXY`` (areas are ``(x2-x1)*(y2-y1)``) as
  in Detectron2 and COCO, not the devkit's pixel-inclusive ``+1`` areas; the
  two differ only for boxes a few pixels wide.
* **No detection limit per image** (COCO keeps the top 100); Detectron2 caps
  detections at ``TEST.DETECTIONS_PER_IMAGE`` (100) upstream anyway.
* **A class with no (non-ignored) ground truth** has an undefined recall: its
  AP is NaN and :func:`mean_ap` leaves it out of the mean. A class with ground
  truth and no detections has AP 0.

APs are returned as fractions in [0, 1]; the evaluator scales them to
percent like every other Detectron2 metric.
"""

from typing import Any, Dict, Hashable, Mapping, Tuple

import numpy as np
from detectron2.evaluation.pascal_voc_evaluation import voc_ap as _detectron2_voc_ap

__all__ = ["voc_ap", "voc_ap50_per_class", "mean_ap"]

PRCurve = Tuple[np.ndarray, np.ndarray]


def voc_ap(recall: np.ndarray, precision: np.ndarray, *, eleven_point: bool = False) -> float:
    """Area under the precision envelope, all-point interpolation (VOC2010+).

    Detectron2's :func:`detectron2.evaluation.pascal_voc_evaluation.voc_ap`
    (the devkit's formula, as py-faster-rcnn ships it), with arrays of any
    sequence type and a Python float back. ``recall`` and ``precision`` are the
    cumulative values along the ranked detections (recall non-decreasing);
    empty curves give 0.

    ``eleven_point=True`` gives VOC2007's metric instead (mean of the best
    precision at recall >= 0, 0.1, ..., 1), which py-faster-rcnn-derived code
    selects for "2007"-style datasets; it exists to compare with such papers.
    """
    recall = np.asarray(recall, dtype=np.float64)
    precision = np.asarray(precision, dtype=np.float64)
    return float(_detectron2_voc_ap(recall, precision, use_07_metric=eleven_point))


def mean_ap(per_class: Mapping[Any, float]) -> float:
    """Mean over the classes whose AP is defined (NaN = no ground truth); NaN if none is."""
    values = np.array([v for v in per_class.values() if np.isfinite(v)], dtype=np.float64)
    return float(values.mean()) if values.size else float("nan")


def _flatten(per_image: Mapping[Hashable, Mapping[str, Any]], image_index: Dict[Hashable, int]):
    """Concatenate per-image arrays into flat arrays plus an image index per box."""
    boxes, classes, images, extra = [], [], [], []
    for image_id, entry in per_image.items():
        b = np.asarray(entry["boxes"], dtype=np.float64).reshape(-1, 4)
        if len(b) == 0:
            continue
        idx = image_index.setdefault(image_id, len(image_index))
        boxes.append(b)
        classes.append(np.asarray(entry["classes"], dtype=np.int64).reshape(-1))
        images.append(np.full(len(b), idx, dtype=np.int64))
        # scores for detections, ignore flags for ground truth
        if "scores" in entry:
            extra.append(np.asarray(entry["scores"], dtype=np.float64).reshape(-1))
        else:
            ign = entry.get("ignore")
            ign = np.zeros(len(b), bool) if ign is None else np.asarray(ign, bool).reshape(-1)
            extra.append(ign)
    if not boxes:
        return np.zeros((0, 4)), np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0)
    return (
        np.concatenate(boxes),
        np.concatenate(classes),
        np.concatenate(images),
        np.concatenate(extra),
    )


def _best_gt_per_detection(det_boxes, det_keys, gt_boxes, gt_keys):
    """For each detection, the index and IoU of the best ground-truth box with the same key.

    ``key`` = (image, class) folded into one integer. Pairs are formed only
    within a key (via a sort + searchsorted), so the cost is proportional to
    the number of same-image same-class pairs, not detections x ground truth.
    Returns ``(best_iou, best_gt)``; detections with no candidate get IoU -1.
    """
    num_dets = len(det_boxes)
    best_iou = np.full(num_dets, -1.0)
    best_gt = np.full(num_dets, -1, dtype=np.int64)
    if num_dets == 0 or len(gt_boxes) == 0:
        return best_iou, best_gt

    gt_order = np.argsort(gt_keys, kind="stable")
    sorted_keys = gt_keys[gt_order]
    start = np.searchsorted(sorted_keys, det_keys, side="left")
    count = np.searchsorted(sorted_keys, det_keys, side="right") - start
    if count.sum() == 0:
        return best_iou, best_gt

    pair_det = np.repeat(np.arange(num_dets), count)
    # position of each pair inside its detection's run of candidates
    offsets = np.arange(len(pair_det)) - np.repeat(np.cumsum(count) - count, count)
    pair_gt = gt_order[np.repeat(start, count) + offsets]

    d, g = det_boxes[pair_det], gt_boxes[pair_gt]
    iw = np.clip(np.minimum(d[:, 2], g[:, 2]) - np.maximum(d[:, 0], g[:, 0]), 0, None)
    ih = np.clip(np.minimum(d[:, 3], g[:, 3]) - np.maximum(d[:, 1], g[:, 1]), 0, None)
    inter = iw * ih
    area_d = (d[:, 2] - d[:, 0]) * (d[:, 3] - d[:, 1])
    area_g = (g[:, 2] - g[:, 0]) * (g[:, 3] - g[:, 1])
    union = area_d + area_g - inter
    iou = np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)

    # Per detection, keep the max IoU; ties go to the lowest ground-truth index.
    order = np.lexsort((pair_gt, -iou, pair_det))
    first = np.ones(len(order), dtype=bool)
    first[1:] = pair_det[order][1:] != pair_det[order][:-1]
    winners = order[first]
    best_iou[pair_det[winners]] = iou[winners]
    best_gt[pair_det[winners]] = pair_gt[winners]
    return best_iou, best_gt


def voc_ap50_per_class(
    detections: Mapping[Hashable, Mapping[str, Any]],
    ground_truth: Mapping[Hashable, Mapping[str, Any]],
    num_classes: int,
    iou_thresh: float = 0.5,
    *,
    eleven_point: bool = False,
) -> Tuple[Dict[int, float], Dict[int, PRCurve]]:
    """VOC AP at ``iou_thresh`` for every class, from in-memory boxes.

    Args:
        detections: image id -> ``{"boxes": (N, 4) XYXY, "scores": (N,),
            "classes": (N,) int in [0, num_classes)}``. Images may be missing
            (no detections).
        ground_truth: image id -> ``{"boxes": (M, 4) XYXY, "classes": (M,),
            "ignore": optional (M,) bool}`` (``ignore`` = difficult or crowd).
            Images missing here have no ground truth, so all their detections
            are false positives.
        num_classes: classes are ``0 .. num_classes - 1``.
        iou_thresh: minimum IoU (inclusive, as in the devkit and COCO) for a match.
        eleven_point: VOC2007's 11-point AP instead of all-point (see :func:`voc_ap`).

    Returns:
        ``(per_class, pr_curves)``: ``per_class[c]`` is AP in [0, 1], or NaN for
        a class without ground truth; ``pr_curves[c] = (recall, precision)``
        along the ranked, non-ignored detections of class ``c``.

    See the module docstring for the exact protocol.
    """
    image_index: Dict[Hashable, int] = {}
    gt_boxes, gt_classes, gt_images, gt_ignore = _flatten(ground_truth, image_index)
    gt_ignore = gt_ignore.astype(bool)
    det_boxes, det_classes, det_images, det_scores = _flatten(detections, image_index)
    for name, cls in (("ground truth", gt_classes), ("detection", det_classes)):
        if cls.size and (cls.min() < 0 or cls.max() >= num_classes):
            raise ValueError(f"A {name} class id is outside [0, {num_classes}).")

    # Rank all detections once by score (stable: ties keep input order); the
    # per-class rankings below are subsequences of this one.
    rank = np.argsort(-det_scores, kind="stable")
    det_boxes, det_classes = det_boxes[rank], det_classes[rank]
    det_images, det_scores = det_images[rank], det_scores[rank]

    best_iou, best_gt = _best_gt_per_detection(
        det_boxes,
        det_images * num_classes + det_classes,
        gt_boxes,
        gt_images * num_classes + gt_classes,
    )
    matched = best_iou >= iou_thresh
    ignored = np.zeros_like(matched)
    ignored[matched] = gt_ignore[best_gt[matched]]
    candidate = matched & ~ignored
    # A ground-truth box is won by the first (highest-ranked) detection assigned to it.
    tp = np.zeros(len(det_scores), dtype=bool)
    cand_idx = np.flatnonzero(candidate)
    _, first = np.unique(best_gt[cand_idx], return_index=True)
    tp[cand_idx[first]] = True
    fp = ~tp & ~ignored

    npos = np.bincount(gt_classes[~gt_ignore], minlength=num_classes)
    per_class: Dict[int, float] = {}
    pr_curves: Dict[int, PRCurve] = {}
    counted = ~ignored
    for c in range(num_classes):
        sel = (det_classes == c) & counted
        tp_c = np.cumsum(tp[sel], dtype=np.float64)
        fp_c = np.cumsum(fp[sel], dtype=np.float64)
        if npos[c] == 0:
            per_class[c] = float("nan")
            pr_curves[c] = (np.zeros(0), np.zeros(0))
            continue
        recall = tp_c / npos[c]
        precision = tp_c / np.maximum(tp_c + fp_c, np.finfo(np.float64).eps)
        per_class[c] = voc_ap(recall, precision, eleven_point=eleven_point)
        pr_curves[c] = (recall, precision)
    return per_class, pr_curves
