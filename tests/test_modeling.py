"""The maths of mic_det's registered heads: quality weights, ignore regions (SADA: test_domain_alignment.py)."""

import pytest
import torch
import torch.nn.functional as F
from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling.roi_heads import FastRCNNOutputLayers
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

from mic_det import add_mic_config
from mic_det.detection.modeling import MICRPN, MICFastRCNNOutputLayers
from mic_det.detection.modeling.quality_weight import attach_image_quality, image_quality


def _cfg(**mic):
    cfg = get_cfg()
    add_mic_config(cfg)
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 2
    for k, v in mic.items():
        setattr(cfg.MIC, k, v)
    return cfg


def _proposals(pseudo: bool):
    """Two images, 3 + 2 RoIs; classes 0/1 are foreground, 2 is background."""
    out = []
    for classes, scores, q in (([0, 2, 1], [0.9, 0.85, 0.8], 0.85), ([2, 1], [0.95, 0.95], 0.95)):
        n = len(classes)
        p = Instances((64, 64))
        p.proposal_boxes = Boxes(torch.tensor([[4.0, 4.0, 20.0, 20.0]] * n))
        p.gt_boxes = Boxes(torch.tensor([[5.0, 5.0, 21.0, 19.0]] * n))
        p.gt_classes = torch.tensor(classes)
        if pseudo:
            p.gt_scores = torch.tensor(scores)
            p.gt_image_quality = torch.full((n,), q)
        out.append(p)
    return out


def _predictions(seed=0):
    g = torch.Generator().manual_seed(seed)
    scores = torch.randn(5, 3, generator=g, requires_grad=True)
    deltas = torch.randn(5, 8, generator=g, requires_grad=True)
    return scores, deltas


@pytest.mark.parametrize("mode", ["teacher_score", "student_prob", "none"])
def test_roi_quality_weight_modes(mode):
    cfg = _cfg(QUALITY_WEIGHT=mode, PSEUDO_BOX_REG_WEIGHT=0.0)
    head = MICFastRCNNOutputLayers(cfg, ShapeSpec(channels=8))
    scores, deltas = _predictions()
    with EventStorage():
        losses = head.losses((scores, deltas), _proposals(pseudo=True))
    ce = F.cross_entropy(scores, torch.tensor([0, 2, 1, 2, 1]), reduction="none")
    if mode == "teacher_score":
        # foreground RoIs: their pseudo-box's teacher score; background: the image's mean score
        w = torch.tensor([0.9, 0.85, 0.8, 0.95, 0.95])
    elif mode == "student_prob":
        w = scores.detach().softmax(1).max(1).values
    else:
        w = torch.ones(5)
    torch.testing.assert_close(losses["loss_cls"], (ce * w).sum() / 5)
    assert losses["loss_box_reg"].item() == 0.0
    # The weight is a constant: no gradient flows through it.
    losses["loss_cls"].backward()
    expected = torch.autograd.grad((F.cross_entropy(scores, torch.tensor([0, 2, 1, 2, 1]), reduction="none") * w).sum() / 5, scores)[0]
    torch.testing.assert_close(scores.grad, expected)


def test_roi_losses_on_labelled_batches_are_detectron2s():
    cfg = _cfg(QUALITY_WEIGHT="teacher_score", PSEUDO_BOX_REG_WEIGHT=0.0)
    ours = MICFastRCNNOutputLayers(cfg, ShapeSpec(channels=8))
    theirs = FastRCNNOutputLayers(cfg, ShapeSpec(channels=8))
    preds = _predictions()
    with EventStorage():
        a = ours.losses(preds, _proposals(pseudo=False))
        b = theirs.losses(preds, _proposals(pseudo=False))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k])
    assert a["loss_box_reg"].item() > 0


def test_pseudo_box_regression_weight_scales_box_loss():
    preds = _predictions()
    with EventStorage():
        full = MICFastRCNNOutputLayers(_cfg(PSEUDO_BOX_REG_WEIGHT=1.0), ShapeSpec(channels=8)).losses(preds, _proposals(True))
        half = MICFastRCNNOutputLayers(_cfg(PSEUDO_BOX_REG_WEIGHT=0.5), ShapeSpec(channels=8)).losses(preds, _proposals(True))
    assert full["loss_box_reg"].item() > 0
    torch.testing.assert_close(half["loss_box_reg"], 0.5 * full["loss_box_reg"])


def test_bad_quality_weight_mode_names_the_key():
    with pytest.raises(ValueError, match="MIC.QUALITY_WEIGHT"):
        MICFastRCNNOutputLayers(_cfg(QUALITY_WEIGHT="teacher"), ShapeSpec(channels=8))


def test_image_quality_is_the_mean_score_and_zero_when_empty():
    a, b = Instances((8, 8)), Instances((8, 8))
    a.gt_scores = torch.tensor([0.8, 1.0])
    b.gt_scores = torch.zeros(0)
    torch.testing.assert_close(image_quality([a, b]), torch.tensor([0.9, 0.0]))
    attach_image_quality([a])
    torch.testing.assert_close(a.gt_image_quality, torch.tensor([0.9, 0.9]))


def _rpn(mode):
    cfg = _cfg(QUALITY_WEIGHT=mode, PSEUDO_BOX_REG_WEIGHT=0.0)
    cfg.MODEL.RPN.IN_FEATURES = ["p2"]
    cfg.MODEL.ANCHOR_GENERATOR.SIZES = [[16]]
    cfg.MODEL.RPN.BATCH_SIZE_PER_IMAGE = 16
    return MICRPN(cfg, {"p2": ShapeSpec(channels=4, stride=4)})


@pytest.mark.parametrize("mode", ["teacher_score", "student_prob", "none"])
def test_rpn_objectness_quality_weight(mode):
    torch.manual_seed(0)
    rpn = _rpn(mode).train()
    features = {"p2": torch.randn(2, 4, 8, 8)}
    from detectron2.structures import ImageList

    images = ImageList(torch.zeros(2, 3, 32, 32), [(32, 32), (32, 32)])
    gts = []
    for scores in ([0.9, 0.8], [1.0]):
        g = Instances((32, 32))
        g.gt_boxes = Boxes(torch.tensor([[2.0, 2.0, 18.0, 18.0], [14.0, 14.0, 30.0, 30.0]][: len(scores)]))
        g.gt_classes = torch.zeros(len(scores), dtype=torch.long)
        g.gt_scores = torch.tensor(scores)
        gts.append(g)

    captured = {}
    original = MICRPN.losses

    def spy(self, anchors, logits, labels, deltas, boxes):
        captured.update(logits=torch.cat(logits, 1), labels=torch.stack(labels))
        return original(self, anchors, logits, labels, deltas, boxes)

    with EventStorage():
        MICRPN.losses = spy
        try:
            _, losses = rpn(images, features, gts)
        finally:
            MICRPN.losses = original
    logits, labels = captured["logits"], captured["labels"]
    valid = labels >= 0
    bce = F.binary_cross_entropy_with_logits(logits, labels.clamp(min=0).float(), reduction="none")
    if mode == "teacher_score":
        w = torch.tensor([[0.85], [1.0]]).expand_as(logits)
    elif mode == "student_prob":
        w = logits.detach().sigmoid()  # the value; its gradient: tests/test_quality_weight.py
    else:
        w = torch.ones_like(logits)
    expected = (bce * w)[valid].sum() / (16 * 2)
    torch.testing.assert_close(losses["loss_rpn_cls"], expected)
    assert losses["loss_rpn_loc"].item() == 0.0
    assert rpn._pseudo_quality is None  # the per-call state does not leak


# ----------------------------------------------------- uncertain teacher boxes (ignore regions)
def test_image_quality_ignores_uncertain_boxes():
    a = Instances((8, 8))
    a.gt_scores = torch.tensor([0.9, 0.5, 0.7])
    a.gt_ignore = torch.tensor([False, True, False])
    torch.testing.assert_close(image_quality([a]), torch.tensor([0.8]))


def test_roi_background_near_uncertain_boxes_gets_weight_zero():
    cfg = _cfg(QUALITY_WEIGHT="none", PSEUDO_BOX_REG_WEIGHT=0.0)
    head = MICFastRCNNOutputLayers(cfg, ShapeSpec(channels=8))
    scores, deltas = _predictions()
    proposals = _proposals(pseudo=True)
    proposals[0].mic_ignored = torch.tensor([False, True, False])
    proposals[1].mic_ignored = torch.tensor([False, False])
    with EventStorage():
        losses = head.losses((scores, deltas), proposals)
    ce = F.cross_entropy(scores, torch.tensor([0, 2, 1, 2, 1]), reduction="none")
    w = torch.tensor([1.0, 0.0, 1.0, 1.0, 1.0])
    torch.testing.assert_close(losses["loss_cls"], (ce * w).sum() / 5)


def test_roi_sampling_flags_only_background_rois_on_uncertain_boxes():
    from detectron2.modeling.roi_heads import build_roi_heads

    cfg = _cfg()
    cfg.MODEL.ROI_HEADS.NAME = "MICROIHeads"
    cfg.MODEL.ROI_HEADS.IN_FEATURES = ["p2"]
    cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = 64
    cfg.MODEL.ROI_BOX_HEAD.NAME = "FastRCNNConvFCHead"
    cfg.MODEL.ROI_BOX_HEAD.NUM_FC = 1
    cfg.MODEL.ROI_BOX_HEAD.FC_DIM = 8
    cfg.MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION = 2
    heads = build_roi_heads(cfg, {"p2": ShapeSpec(channels=4, stride=4)})
    confident_box, uncertain_box, far = [2.0, 2.0, 20.0, 20.0], [30.0, 30.0, 50.0, 50.0], [52.0, 2.0, 62.0, 12.0]
    target = Instances((64, 64))
    target.gt_boxes = Boxes(torch.tensor([confident_box, uncertain_box]))
    target.gt_classes = torch.tensor([0, 1])
    target.gt_scores = torch.tensor([0.9, 0.6])
    target.gt_ignore = torch.tensor([False, True])
    proposals = Instances((64, 64))
    proposals.proposal_boxes = Boxes(torch.tensor([confident_box, [31.0, 31.0, 50.0, 49.0], far, [30.0, 30.0, 40.0, 40.0]]))
    proposals.objectness_logits = torch.zeros(4)
    with EventStorage():
        (sampled,) = heads.label_and_sample_proposals([proposals], [attach_image_quality([target])[0]])
    boxes = sampled.proposal_boxes.tensor.tolist()
    by_box = {tuple(b): (int(c), bool(i)) for b, c, i in zip(boxes, sampled.gt_classes, sampled.mic_ignored)}
    # The uncertain box is neither a target nor an appended gt proposal: only the confident one is.
    assert by_box[tuple(confident_box)] == (0, False)
    assert tuple(uncertain_box) not in by_box
    assert by_box[(31.0, 31.0, 50.0, 49.0)] == (2, True)  # background, IoU .9 with the uncertain box
    assert by_box[tuple(far)] == (2, False)
    assert by_box[(30.0, 30.0, 40.0, 40.0)] == (2, False)  # IoU .25 < 0.5: still background
    assert not sampled.has("gt_ignore")


def test_rpn_anchors_near_uncertain_boxes_are_ignored_not_negative():
    torch.manual_seed(0)
    rpn = _rpn("none").train()
    anchors = [Boxes(torch.tensor([[2.0, 2.0, 18.0, 18.0], [14.0, 14.0, 30.0, 30.0], [15.0, 15.0, 31.0, 31.0], [0.0, 16.0, 16.0, 32.0]]))]
    g = Instances((32, 32))
    g.gt_boxes = Boxes(torch.tensor([[2.0, 2.0, 18.0, 18.0], [14.0, 14.0, 30.0, 30.0]]))
    g.gt_classes = torch.zeros(2, dtype=torch.long)
    g.gt_scores = torch.tensor([0.9, 0.6])
    g.gt_ignore = torch.tensor([False, True])
    with_ignore, _ = rpn.label_and_sample_anchors(anchors, [g])
    confident = g[~g.gt_ignore]
    confident.remove("gt_ignore")
    without, _ = rpn.label_and_sample_anchors(anchors, [confident])
    # Anchor 0: positive either way; 1 and 2 overlap the uncertain box (IoU 1, .78): ignored, not
    # negative; 3 overlaps neither by >= 0.3: negative either way.
    assert without[0].tolist() == [1, 0, 0, 0]
    assert with_ignore[0].tolist() == [1, -1, -1, 0]
