"""Pseudo-labels from teacher detections, their statistics and their quality."""

import math
import subprocess
import sys
import textwrap

import pytest
import torch

from detectron2.structures import Boxes, Instances

from mic_det.detection.pseudo_labels import make_pseudo_labels, pseudo_label_quality, pseudo_label_stats, split_uncertain

IMAGE_SIZE = (100, 200)  # (height, width) of the network input


def _pred(boxes, scores, classes, image_size=IMAGE_SIZE) -> Instances:
    return Instances(
        image_size,
        pred_boxes=Boxes(torch.tensor(boxes, dtype=torch.float32).view(-1, 4)),
        scores=torch.tensor(scores, dtype=torch.float32),
        pred_classes=torch.tensor(classes, dtype=torch.int64),
    )


def _gt(boxes, classes, image_size=IMAGE_SIZE) -> Instances:
    return Instances(
        image_size,
        gt_boxes=Boxes(torch.tensor(boxes, dtype=torch.float32).view(-1, 4)),
        gt_classes=torch.tensor(classes, dtype=torch.int64),
    )


def _pseudo(boxes, classes, scores, image_size=IMAGE_SIZE) -> Instances:
    inst = _gt(boxes, classes, image_size)
    inst.gt_scores = torch.tensor(scores, dtype=torch.float32)
    return inst


def _assert_empty(inst: Instances, image_size=IMAGE_SIZE):
    assert len(inst) == 0 and inst.image_size == image_size
    assert isinstance(inst.gt_boxes, Boxes) and inst.gt_boxes.tensor.shape == (0, 4)
    assert inst.gt_classes.shape == (0,) and inst.gt_classes.dtype == torch.int64
    assert inst.gt_scores.shape == (0,) and inst.gt_scores.dtype == torch.float32


# -------------------------------------------------------------- make_pseudo_labels
def test_score_threshold_is_inclusive():
    pred = _pred(
        [[0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50], [60, 60, 70, 70]],
        [0.8, 0.7999, 0.95, 0.2],
        [0, 0, 0, 0],
    )
    (out,) = make_pseudo_labels([pred], score_thresh=0.8, nms_thresh=0.5)
    assert out.gt_scores.tolist() == pytest.approx([0.95, 0.8])
    assert out.gt_boxes.tensor.tolist() == [[40, 40, 50, 50], [0, 0, 10, 10]]


def test_uncertain_boxes_are_flagged_between_the_two_thresholds():
    pred = _pred(
        [[0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50], [60, 60, 70, 70], [1, 1, 11, 11]],
        [0.9, 0.6, 0.5, 0.49, 0.7],
        [0, 1, 0, 0, 0],
    )
    (out,) = make_pseudo_labels([pred], score_thresh=0.8, nms_thresh=0.5, ignore_thresh=0.5)
    # 0.49 is below the ignore threshold; the 0.7 box is suppressed by the 0.9 box (same class, IoU .68)
    assert out.gt_scores.tolist() == pytest.approx([0.9, 0.6, 0.5])
    assert out.gt_ignore.tolist() == [False, True, True]
    confident, uncertain = split_uncertain(out)
    assert not confident.has("gt_ignore") and confident.gt_scores.tolist() == pytest.approx([0.9])
    assert uncertain.tensor.tolist() == [[20, 20, 30, 30], [40, 40, 50, 50]]
    # Stats and quality count confident boxes only; the uncertain ones are reported apart.
    stats = pseudo_label_stats([out])
    assert stats["boxes_per_image"] == 1.0 and stats["uncertain_per_image"] == 2.0
    q = pseudo_label_quality([out], [_gt([[20, 20, 30, 30]], [1])])
    assert q["num_pseudo"] == 1.0 and q["tp"] == 0.0


def test_ignore_threshold_at_or_above_delta_is_off():
    pred = _pred([[0, 0, 10, 10], [20, 20, 30, 30]], [0.9, 0.6], [0, 0])
    for ignore in (None, 0.8, 0.95):
        (out,) = make_pseudo_labels([pred], 0.8, 0.5, ignore_thresh=ignore)
        assert not out.has("gt_ignore") and len(out) == 1
        confident, uncertain = split_uncertain(out)
        assert confident is out and len(uncertain) == 0
    (empty,) = make_pseudo_labels([_pred([], [], [])], 0.8, 0.5, ignore_thresh=0.5)
    _assert_empty(empty)
    assert empty.gt_ignore.shape == (0,) and empty.gt_ignore.dtype == torch.bool


def test_nms_is_class_wise():
    overlapping = [[10, 10, 50, 50], [12, 10, 52, 50]]  # IoU ~0.9
    (same,) = make_pseudo_labels([_pred(overlapping, [0.9, 0.95], [3, 3])], 0.5, 0.5)
    assert same.gt_scores.tolist() == pytest.approx([0.95])
    assert same.gt_boxes.tensor.tolist() == [[12, 10, 52, 50]]

    (different,) = make_pseudo_labels([_pred(overlapping, [0.9, 0.95], [3, 4])], 0.5, 0.5)
    assert sorted(different.gt_classes.tolist()) == [3, 4]

    # Same class but overlapping less than the NMS IoU: both stay.
    apart = [[10, 10, 50, 50], [40, 10, 80, 50]]  # IoU 1/7
    (both,) = make_pseudo_labels([_pred(apart, [0.9, 0.95], [3, 3])], 0.5, 0.5)
    assert len(both) == 2


def test_coordinates_fields_and_order():
    boxes = [[10.5, 20.25, 50.75, 60.125], [100.0, 5.5, 180.25, 95.0], [1.0, 2.0, 3.0, 4.0]]
    pred = _pred(boxes, [0.85, 0.99, 0.9], [2, 0, 1], image_size=(97, 191))
    before = pred.pred_boxes.tensor.clone()
    (out,) = make_pseudo_labels([pred], 0.8, 0.5)
    assert out.image_size == (97, 191)
    assert out.gt_boxes.tensor.tolist() == [boxes[1], boxes[2], boxes[0]]  # by score, unscaled
    assert out.gt_classes.tolist() == [0, 1, 2] and out.gt_classes.dtype == torch.int64
    assert out.gt_scores.dtype == torch.float32
    assert sorted(out.get_fields()) == ["gt_boxes", "gt_classes", "gt_scores"]
    assert torch.equal(pred.pred_boxes.tensor, before), "the teacher's output was modified"


def test_boxes_are_clipped_and_degenerate_ones_dropped():
    pred = _pred(
        [
            [-5, -3, 40, 500],  # sticks out: clipped to the 100 x 200 image
            [250, 10, 300, 50],  # right of the image: zero width once clipped
            [10, 10, 10, 30],  # zero width
            [20, 30, 60, 30],  # zero height
        ],
        [0.9, 0.9, 0.9, 0.9],
        [0, 1, 2, 3],
    )
    (out,) = make_pseudo_labels([pred], 0.5, 0.5)
    assert out.gt_boxes.tensor.tolist() == [[0, 0, 40, 100]]
    assert out.gt_classes.tolist() == [0]


def test_empty_inputs_give_well_shaped_empty_outputs():
    assert make_pseudo_labels([], 0.8, 0.5) == []
    no_boxes = _pred(torch.zeros(0, 4).tolist(), [], [])
    no_fields = Instances(IMAGE_SIZE)
    all_low = _pred([[0, 0, 10, 10]], [0.3], [1])
    for inst in make_pseudo_labels([no_boxes, no_fields, all_low], 0.8, 0.5):
        _assert_empty(inst)


def test_rejects_postprocessed_outputs_and_bad_thresholds():
    with pytest.raises(TypeError, match="do_postprocess=False"):
        make_pseudo_labels([{"instances": _pred([[0, 0, 1, 1]], [0.9], [0])}], 0.8, 0.5)
    proposals = Instances(IMAGE_SIZE, proposal_boxes=Boxes(torch.zeros(1, 4)))
    with pytest.raises(KeyError, match="pred_boxes"):
        make_pseudo_labels([proposals], 0.8, 0.5)
    with pytest.raises(ValueError):
        make_pseudo_labels([], 0.8, 1.5)


# -------------------------------------------------------------- pseudo_label_stats
def test_stats_of_empty_batches_are_zero_not_nan():
    for batch in ([], make_pseudo_labels([Instances(IMAGE_SIZE)] * 3, 0.8, 0.5)):
        stats = pseudo_label_stats(batch)
        assert all(math.isfinite(v) for v in stats.values())
        assert stats["boxes_per_image"] == 0.0 and stats["mean_score"] == 0.0
    assert pseudo_label_stats(batch)["frac_images_empty"] == 1.0
    assert pseudo_label_stats([])["frac_images_empty"] == 0.0


def test_stats_values():
    batch = [
        _pseudo([[0, 0, 5, 5], [10, 10, 20, 20], [30, 30, 40, 40]], [0, 1, 0], [0.8, 0.9, 1.0]),
        _pseudo(torch.zeros(0, 4).tolist(), [], []),
        _pseudo([[0, 0, 5, 5]], [2], [0.9]),
        _pseudo(torch.zeros(0, 4).tolist(), [], []),
    ]
    stats = pseudo_label_stats(batch)
    assert stats == pytest.approx(
        {"boxes_per_image": 1.0, "frac_images_empty": 0.5, "mean_score": 0.9}
    )
    # Per class: boxes per image of each class, every class named (a class without boxes at 0).
    per_class = pseudo_label_stats(batch, ["car", "truck", "bus", "person"])
    assert {k: v for k, v in per_class.items() if k.startswith("boxes_per_image/")} == pytest.approx(
        {"boxes_per_image/car": 0.5, "boxes_per_image/truck": 0.25, "boxes_per_image/bus": 0.25,
         "boxes_per_image/person": 0.0}
    )
    empty = pseudo_label_stats([], ["car"])
    assert empty["boxes_per_image/car"] == 0.0


# ------------------------------------------------------------ pseudo_label_quality
def test_quality_on_a_hand_made_case():
    gt = [
        _gt([[0, 0, 20, 20], [50, 50, 90, 90], [100, 0, 140, 40]], [0, 1, 0]),
        _gt([[10, 10, 30, 30]], [2]),
        _gt(torch.zeros(0, 4).tolist(), []),
    ]
    pseudo = [
        _pseudo(
            [
                [1, 1, 20, 20],  # matches gt 0 (class 0), IoU 0.9
                [0, 0, 19, 21],  # duplicate of gt 0: it is taken -> false positive
                [50, 50, 90, 90],  # perfect box, wrong class -> false positive
                [100, 0, 140, 40],  # matches gt 2
            ],
            [0, 0, 0, 0],
            [0.95, 0.9, 0.99, 0.7],
        ),
        _pseudo(torch.zeros(0, 4).tolist(), [], []),  # misses the only gt of image 1
        _pseudo([[0, 0, 10, 10]], [1], [0.9]),  # no gt at all -> false positive
    ]
    q = pseudo_label_quality(pseudo, gt)
    assert q == pytest.approx(
        {"precision": 2 / 5, "recall": 2 / 4, "tp": 2.0, "num_pseudo": 5.0, "num_gt": 4.0}
    )


def test_quality_matches_greedily_by_score():
    gt = [_gt([[0, 0, 10, 10], [6, 0, 16, 10]], [0, 0])]
    # Listed first but scored lower: it overlaps gt 0 best (0.82) and gt 1 a little
    # (0.33). The higher-scored box only overlaps gt 0 (0.54). Taking boxes by score
    # matches both; taking them in list order would leave the higher one unmatched.
    pseudo = [_pseudo([[1, 0, 11, 10], [-3, 0, 7, 10]], [0, 0], [0.5, 0.9])]
    q = pseudo_label_quality(pseudo, gt, iou_thresh=0.3)
    assert q["tp"] == 2.0 and q["precision"] == 1.0 and q["recall"] == 1.0
    assert pseudo_label_quality(pseudo, gt, iou_thresh=0.6)["tp"] == 1.0


def test_quality_edge_cases_and_frame_check():
    empty = pseudo_label_quality([], [])
    assert empty == {"precision": 0.0, "recall": 0.0, "tp": 0.0, "num_pseudo": 0.0, "num_gt": 0.0}
    with pytest.raises(ValueError, match="2 images"):
        pseudo_label_quality([_pseudo([], [], [])] * 2, [])
    with pytest.raises(ValueError, match="network-input"):
        pseudo_label_quality([_pseudo([], [], [])], [_gt([], [], image_size=(50, 100))])


# ------------------------------------------------------------------- no compiled ops
@pytest.mark.slow  # a subprocess or a training run
def test_core_modules_do_not_need_detectron2_compiled_ops():
    """masking, teacher and pseudo_labels import and run with detectron2._C unavailable."""
    code = textwrap.dedent("""
        import sys
        sys.modules["detectron2._C"] = None  # any import of it now raises ImportError
        import torch
        from detectron2.structures import Boxes, Instances
        from mic_det.augment import MaskAugmentation
        from mic_det.masking import BlockMaskGenerator, apply_block_mask
        from mic_det.detection.pseudo_labels import make_pseudo_labels, pseudo_label_stats
        from mic_det.teacher import EMATeacher
        mask = BlockMaskGenerator(4, 0.5)(1, 8, 8, "cpu")
        aug = MaskAugmentation([100.0] * 3, [50.0] * 3, 1.0, 0.2, 1.0)
        images = aug(torch.zeros(1, 3, 8, 8), [(8, 8)])
        apply_block_mask(images, mask, [(8, 8)])
        pred = Instances((8, 8), pred_boxes=Boxes(torch.tensor([[0.0, 0, 4, 4]])),
                         scores=torch.tensor([0.9]), pred_classes=torch.tensor([0]))
        pseudo_label_stats(make_pseudo_labels([pred], 0.8, 0.5))
        EMATeacher(torch.nn.Linear(2, 2)).update(torch.nn.Linear(2, 2), 0.9)
        print("ok")
        """)
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-2000:]
