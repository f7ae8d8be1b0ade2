"""``MIC.QUALITY_WEIGHT`` against its formula, value and gradient, on hand-made logits.

The expected losses and gradients are written out from the formula with
torch.nn.functional (and, for gradients, in closed form), never through the
heads' own helpers, so a weight that is detached where the reference's is not
(or the other way round) changes the numbers and fails here.

Reference (lhoyer/MIC, ``det/``, ``PSEUDO_LABEL_WEIGHT 'prob'``):

* RPN (``modeling/rpn/loss.py``): ``w = sigmoid(objectness)`` of every sampled
  anchor, positives and negatives alike, not detached; loss = mean(w * BCE).
* RoI head (``modeling/roi_heads/box_head/loss.py``): ``w = max softmax`` of
  the detached class logits; loss = mean(w * CE) over the sampled RoIs.
"""
import pytest
import torch
import torch.nn.functional as F
from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

from mic_det import add_mic_config
from mic_det.detection.modeling import MICRPN, MICFastRCNNOutputLayers

BATCH_SIZE_PER_IMAGE = 4  # Detectron2's RPN normalizer: BATCH_SIZE_PER_IMAGE x images

# Two images, four anchors each, one feature level: positives, negatives and
# ignored anchors (-1), logits on both sides of 0.
LOGITS = [[2.0, -1.5, 0.3, 4.0], [-0.7, 1.2, -3.0, 0.0]]
LABELS = [[1, 0, -1, 0], [1, 1, 0, -1]]
TEACHER_QUALITY = [0.85, 0.6]


def _cfg(mode: str):
    cfg = add_mic_config(get_cfg())
    cfg.MIC.QUALITY_WEIGHT = mode
    cfg.MIC.PSEUDO_BOX_REG_WEIGHT = 0.0
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 2
    cfg.MODEL.RPN.IN_FEATURES = ["p2"]
    cfg.MODEL.ANCHOR_GENERATOR.SIZES = [[16]]
    cfg.MODEL.RPN.BATCH_SIZE_PER_IMAGE = BATCH_SIZE_PER_IMAGE
    return cfg


def _rpn_loss(mode: str):
    """MICRPN.losses on the hand-made batch, as the RPN's forward calls it on pseudo-labels."""
    rpn = MICRPN(_cfg(mode), {"p2": ShapeSpec(channels=4, stride=4)}).train()
    logits = torch.tensor(LOGITS, requires_grad=True)
    anchors = [Boxes(torch.tensor([[0.0, 0.0, 16.0, 16.0]] * 4))]
    deltas = [torch.zeros(2, 4, 4, requires_grad=True)]
    gt_boxes = [torch.tensor([[0.0, 0.0, 16.0, 16.0]] * 4)] * 2
    labels = [torch.tensor(x) for x in LABELS]
    rpn._pseudo_quality = torch.tensor(TEACHER_QUALITY)  # what forward() hands over
    with EventStorage():
        losses = rpn.losses(anchors, [logits], labels, deltas, gt_boxes)
    return losses, logits


def _rpn_expected(mode: str):
    """Loss and d loss / d logits of sum(w * BCE) / (BATCH_SIZE_PER_IMAGE * 2), from the formula."""
    x, y = torch.tensor(LOGITS), torch.tensor(LABELS, dtype=torch.float32)
    valid = y >= 0
    target = y.clamp(min=0)
    p = torch.sigmoid(x)
    bce = F.binary_cross_entropy_with_logits(x, target, reduction="none")
    dbce = p - target  # d BCE / dx
    if mode == "student_prob":
        w = p
        dw = p * (1 - p)  # the weight is differentiated too
    elif mode == "teacher_score":
        w, dw = torch.tensor(TEACHER_QUALITY)[:, None].expand_as(x), torch.zeros_like(x)
    else:
        w, dw = torch.ones_like(x), torch.zeros_like(x)
    normalizer = BATCH_SIZE_PER_IMAGE * 2
    loss = (w * bce)[valid].sum() / normalizer
    grad = torch.where(valid, (dw * bce + w * dbce) / normalizer, torch.zeros_like(x))
    return loss, grad


@pytest.mark.parametrize("mode", ["student_prob", "teacher_score", "none"])
def test_rpn_objectness_loss_and_gradient_follow_the_formula(mode):
    losses, logits = _rpn_loss(mode)
    expected_loss, expected_grad = _rpn_expected(mode)
    torch.testing.assert_close(losses["loss_rpn_cls"], expected_loss)
    losses["loss_rpn_cls"].backward()
    torch.testing.assert_close(logits.grad, expected_grad)
    assert losses["loss_rpn_loc"].item() == 0.0


def test_rpn_student_prob_is_the_foreground_probability_for_negatives_too():
    """One negative anchor at logit x: loss sigmoid(x) * softplus(x), gradient by hand.

    With the detached max(p, 1 - p) the weight of a confident negative would be
    close to 1 and its gradient sigmoid(x) * max(p, 1 - p) only.
    """
    losses, logits = _rpn_loss("student_prob")
    losses["loss_rpn_cls"].backward()
    x = torch.tensor(LOGITS[0][3])  # label 0, p = 0.982: the student calls it foreground
    p = torch.sigmoid(x)
    softplus = F.softplus(x)  # BCE(x, 0)
    normalizer = BATCH_SIZE_PER_IMAGE * 2
    torch.testing.assert_close(logits.grad[0, 3], (p * (1 - p) * softplus + p * p) / normalizer)
    x = torch.tensor(LOGITS[1][2])  # label 0, p = 0.047: a negative the student already rejects
    p = torch.sigmoid(x)
    torch.testing.assert_close(
        logits.grad[1, 2], (p * (1 - p) * F.softplus(x) + p * p) / normalizer
    )
    # Ignored anchors take no gradient.
    assert logits.grad[0, 2].item() == 0.0 and logits.grad[1, 3].item() == 0.0


def _roi_proposals():
    """Two images, 3 + 2 sampled RoIs; classes 0/1 are foreground, 2 is background."""
    out = []
    for classes, scores in (([0, 2, 1], [0.9, 0.85, 0.8]), ([2, 1], [0.95, 0.95])):
        n = len(classes)
        p = Instances((64, 64))
        p.proposal_boxes = Boxes(torch.tensor([[4.0, 4.0, 20.0, 20.0]] * n))
        p.gt_boxes = Boxes(torch.tensor([[5.0, 5.0, 21.0, 19.0]] * n))
        p.gt_classes = torch.tensor(classes)
        p.gt_scores = torch.tensor(scores)
        p.gt_image_quality = torch.full((n,), sum(scores) / n)
        out.append(p)
    return out


def test_roi_student_prob_is_the_detached_max_softmax():
    head = MICFastRCNNOutputLayers(_cfg("student_prob"), ShapeSpec(channels=8))
    scores = torch.tensor(
        [[2.0, -1.0, 0.5], [0.1, 0.2, 3.0], [-2.0, 1.0, 0.0], [0.0, 0.0, 0.0], [1.5, 2.5, -1.0]],
        requires_grad=True,
    )
    deltas = torch.zeros(5, 8, requires_grad=True)
    labels = torch.tensor([0, 2, 1, 2, 1])
    with EventStorage():
        losses = head.losses((scores, deltas), _roi_proposals())
    losses["loss_cls"].backward()

    x = scores.detach()
    prob = x.softmax(dim=1)
    w = prob.max(dim=1).values
    ce = F.cross_entropy(x, labels, reduction="none")
    torch.testing.assert_close(losses["loss_cls"], (w * ce).mean())
    # Detached weight: d/dx (w * CE) = w * (softmax - onehot), averaged over the RoIs.
    expected_grad = w[:, None] * (prob - F.one_hot(labels, 3).float()) / len(labels)
    torch.testing.assert_close(scores.grad, expected_grad)
    assert losses["loss_box_reg"].item() == 0.0
