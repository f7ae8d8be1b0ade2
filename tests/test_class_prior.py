"""The class-prior cap on pseudo-boxes: rates, allowances, thresholds, and the wiring into a MIC run."""
import pytest
import torch
from detectron2.structures import Boxes, Instances

from mic_det.detection.class_prior import ClassPriorCap, source_class_rates


def _pseudo(classes, scores, ignore=None):
    n = len(classes)
    x = Instances((100, 100), gt_boxes=Boxes(torch.tensor([[0.0, 0.0, 10.0, 10.0]] * n).reshape(n, 4)),
                  gt_classes=torch.tensor(classes, dtype=torch.int64),
                  gt_scores=torch.tensor(scores, dtype=torch.float32))
    if ignore is not None:
        x.gt_ignore = torch.tensor(ignore, dtype=torch.bool)
    return x


def test_source_rates_are_labelled_boxes_per_image_without_crowds():
    records = [
        {"annotations": [{"category_id": 0}, {"category_id": 0}, {"category_id": 2, "iscrowd": 1}]},
        {"annotations": [{"category_id": 1}]},
        {"annotations": []},
        {},
    ]
    assert source_class_rates(records, 3).tolist() == pytest.approx([0.5, 0.25, 0.0])
    with pytest.raises(ValueError, match="MIC.PSEUDO_CLASS_PRIOR_CAP needs labelled boxes"):
        source_class_rates([{"annotations": []}], 3)


def test_a_class_within_its_allowance_keeps_every_box():
    cap = ClassPriorCap(torch.tensor([2.0, 1.0]), cap=1.0)
    out = cap([_pseudo([0, 0, 1], [0.9, 0.85, 0.95]), _pseudo([1], [0.99])])
    assert [len(x) for x in out] == [3, 1] and cap.dropped == 0
    assert cap.thresholds.tolist() == [0.0, 0.0]


def test_an_over_produced_class_keeps_only_its_allowed_best_boxes():
    # Class 1 occurs 0.5 times per source image: over 2 images, 1 box is allowed; the teacher gives 4.
    cap = ClassPriorCap(torch.tensor([3.0, 0.5]), cap=1.0)
    out = cap([_pseudo([1, 1, 0], [0.95, 0.82, 0.9]), _pseudo([1, 1], [0.97, 0.85])])
    assert cap.thresholds[1] == pytest.approx(0.97) and cap.thresholds[0] == 0.0
    assert out[0].gt_classes.tolist() == [0] and out[1].gt_scores.tolist() == pytest.approx([0.97])
    assert cap.dropped == 3
    # A cap of 2 allows twice as many: the two best of the four.
    cap2 = ClassPriorCap(torch.tensor([3.0, 0.5]), cap=2.0)
    out = cap2([_pseudo([1, 1, 0], [0.95, 0.82, 0.9]), _pseudo([1, 1], [0.97, 0.85])])
    assert sorted(s for x in out for s, c in zip(x.gt_scores.tolist(), x.gt_classes.tolist()) if c == 1) == \
        pytest.approx([0.95, 0.97])


def test_the_allowance_is_counted_over_the_window_of_recent_images():
    cap = ClassPriorCap(torch.tensor([1.0]), cap=1.0, window=4)
    for _ in range(4):  # 4 images of one box each: within 1 per image
        assert len(cap([_pseudo([0], [0.9])])[0]) == 1
    # 3 boxes in one image: the window (the last 4 images) holds 6 boxes for an allowance of 4;
    # the 4 best are 0.99, 0.95, 0.91 and a 0.9 of an older image, so this image keeps all three.
    out = cap([_pseudo([0, 0, 0], [0.99, 0.95, 0.91])])[0]
    assert len(out) == 3 and cap.thresholds[0] == pytest.approx(0.9)
    # Two more: the window (0.9, 0.9, the three above, these two) has 7; the best 4 end at 0.91.
    out = cap([_pseudo([0, 0], [0.93, 0.88])])[0]
    assert out.gt_scores.tolist() == pytest.approx([0.93]) and cap.thresholds[0] == pytest.approx(0.91)


def test_a_class_the_source_never_labels_gets_no_pseudo_box():
    cap = ClassPriorCap(torch.tensor([1.0, 0.0]), cap=1.0)
    out = cap([_pseudo([1, 0], [0.99, 0.9])])
    assert out[0].gt_classes.tolist() == [0] and cap.thresholds[1] == float("inf")


def test_uncertain_boxes_are_neither_counted_nor_dropped_and_empty_images_pass():
    cap = ClassPriorCap(torch.tensor([0.5]), cap=1.0)
    out = cap([_pseudo([0, 0], [0.9, 0.6], ignore=[False, True]), _pseudo([], [], ignore=[])])
    assert len(out[0]) == 2 and len(out[1]) == 0 and cap.dropped == 0
    with pytest.raises(ValueError, match="PSEUDO_CLASS_PRIOR_CAP must be > 0"):
        ClassPriorCap(torch.tensor([1.0]), cap=0.0)
