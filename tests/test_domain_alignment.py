"""SADA as the reference computes it, pinned by gradients rather than by config values.

Every expected gradient here is computed by hand with torch.nn.functional on
the same discriminator heads, never through DomainAlignment's own helpers:

* each discriminator's parameters get the gradient of its *unweighted* loss;
* the features get ``-GRL weight`` times the gradient that loss alone sends them;
* the consistency term sends ``+0.1 x GRL weight`` (not reversed) of the L1
  gradient between the RoI-pooled image probability and the RoI's own.
"""
import math

import pytest
import torch
import torch.nn.functional as F
from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

from mic_det import add_mic_config
from mic_det.detection.modeling import DomainAlignment, grad_reverse
from mic_det.detection.modeling.domain_alignment import grad_scale

from .conftest import REPO

DOMAINS = (("source", 1.0), ("target", 0.0))  # the reference's labels: source = 1
SHAPES = {  # p4 plays the part of P6: an image-level head, but no RoIs pooled from it
    "p2": ShapeSpec(channels=8, stride=4),
    "p3": ShapeSpec(channels=8, stride=8),
    "p4": ShapeSpec(channels=8, stride=16),
}
# By the FPN rule (224 px boxes on level 4): sqrt(area) < 112 -> p2, 112..223 -> p3.
SMALL, LARGE = [2.0, 2.0, 14.0, 14.0], [0.0, 0.0, 120.0, 120.0]
SIZE = 128  # image side; P2 is 32 x 32


def _cfg(**uda):
    cfg = get_cfg()
    add_mic_config(cfg)
    cfg.MODEL.ROI_HEADS.IN_FEATURES = ["p2", "p3"]
    cfg.UDA.IMG_DA.HIDDEN_DIM = 16
    cfg.UDA.INS_DA.HIDDEN_DIM = 12
    for key, value in uda.items():
        node, attr = key.split("__")
        setattr(getattr(cfg.UDA, node), attr, value)
    return cfg


def _alignment(shapes=SHAPES, box_dim=16, std=0.3, **uda):
    """Heads re-initialised with a large std, so that the gradients compared are far from 0."""
    align = DomainAlignment(_cfg(**uda), shapes, box_feature_dim=box_dim)
    torch.manual_seed(1)
    for p in align.parameters():
        torch.nn.init.normal_(p, std=std)
    return align.eval()  # dropout off: the hand computation must see the same network


def _inputs():
    """Two images per domain; 5 source and 4 target RoIs on both RoI levels, and their levels."""
    torch.manual_seed(0)
    feats = {
        d: {f: torch.randn(2, 8, SIZE // s.stride, SIZE // s.stride, requires_grad=True) for f, s in SHAPES.items()}
        for d, _ in DOMAINS
    }
    rois = {
        "source": [Boxes(torch.tensor([SMALL, LARGE, SMALL])), Boxes(torch.tensor([LARGE, SMALL]))],
        "target": [Boxes(torch.tensor([LARGE])), Boxes(torch.tensor([SMALL, SMALL, LARGE]))],
    }
    box_feats = {"source": torch.randn(5, 16, requires_grad=True), "target": torch.randn(4, 16, requires_grad=True)}
    levels = {"source": ["p2", "p3", "p2", "p3", "p2"], "target": ["p3", "p2", "p2", "p3"]}
    return feats, box_feats, rois, levels


def _detached(t):
    return t.detach().clone().requires_grad_(True)


def _close(actual, expected):
    """Equal up to float error, relative to the gradient's own size (per-pixel gradients are tiny)."""
    scale = expected.abs().max()
    assert scale > 0
    torch.testing.assert_close(actual / scale, expected / scale, rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------- the layers
def test_gradient_scaling_layers():
    x = torch.randn(3, 4, requires_grad=True)
    (grad_reverse(x, 0.3) * torch.arange(4.0)).sum().backward()
    torch.testing.assert_close(x.grad, -0.3 * torch.arange(4.0).expand(3, 4))
    torch.testing.assert_close(grad_reverse(x, 0.3), x)  # identity forward
    x.grad = None
    (grad_scale(x, 0.0025) * torch.arange(4.0)).sum().backward()
    torch.testing.assert_close(x.grad, 0.0025 * torch.arange(4.0).expand(3, 4))  # positive: not reversed


def test_defaults_are_the_reference_heads():
    cfg = get_cfg()
    add_mic_config(cfg)
    cfg.MODEL.ROI_HEADS.IN_FEATURES = ["p2", "p3"]
    align = DomainAlignment(cfg, SHAPES, box_feature_dim=16)
    torch.testing.assert_close(align.roi_levels(_inputs()[2]["source"]), torch.tensor([0, 1, 0, 1, 0]))
    assert list(align.img_heads) == ["p2", "p3", "p4"]  # every backbone output (P2-P6 with FPN)
    assert list(align.ins_heads) == ["p2", "p3"]  # one MLP per RoI level
    assert align.img_heads["p2"].conv1.out_channels == 512 and align.ins_heads["p2"].fc2.out_features == 1024
    assert align.ins_heads["p3"].fc3.weight.std().item() == pytest.approx(0.01, rel=0.5)
    losses = align(*_inputs()[:3])
    # Freshly initialised discriminators are undecided: each BCE is log 2, at weight 1.
    assert losses["loss_da_img"].item() == pytest.approx(math.log(2), rel=1e-3)
    assert losses["loss_da_ins"].item() == pytest.approx(math.log(2), rel=1e-2)


def test_switches():
    inputs = _inputs()[:3]
    assert set(_alignment()(*inputs)) == {"loss_da_img", "loss_da_ins", "loss_da_cst"}
    assert set(_alignment(INS_DA__ENABLED=False)(*inputs)) == {"loss_da_img"}
    assert set(_alignment(IMG_DA__ENABLED=False)(*inputs)) == {"loss_da_ins"}
    assert set(_alignment(CONSISTENCY__ENABLED=False)(*inputs)) == {"loss_da_img", "loss_da_ins"}


# ------------------------------------------------------------------ image level
def _image_bce_by_hand(align, feats, label):
    """The reference's loss: every level's logits upsampled to P2 (align_corners), one BCE mean."""
    logits = [align.img_heads[f](feats[f]) for f in ("p2", "p3", "p4")]
    up = torch.stack([F.interpolate(x, size=(SIZE // 4, SIZE // 4), mode="bilinear", align_corners=True) for x in logits])
    return F.binary_cross_entropy_with_logits(up, torch.full_like(up, label))


def test_image_discriminator_learns_from_the_full_bce_and_the_features_get_minus_0_025_of_it():
    align = _alignment(INS_DA__ENABLED=False)
    feats, box_feats, rois, _ = _inputs()
    params = list(align.img_heads.parameters())
    inputs = [feats[d][f] for d, _ in DOMAINS for f in SHAPES]
    loss = align(feats, box_feats, rois)["loss_da_img"]
    got = torch.autograd.grad(loss, params + inputs)

    plain = {d: {f: _detached(t) for f, t in feats[d].items()} for d, _ in DOMAINS}
    by_hand = sum(_image_bce_by_hand(align, plain[d], label) for d, label in DOMAINS) / 2
    plain_inputs = [plain[d][f] for d, _ in DOMAINS for f in SHAPES]
    want = torch.autograd.grad(by_hand, params + plain_inputs)

    torch.testing.assert_close(loss, by_hand)
    for g, w in zip(got[: len(params)], want[: len(params)]):
        _close(g, w)  # the discriminator: the unweighted BCE's gradient
    for g, w in zip(got[len(params):], want[len(params):]):
        _close(g, -0.025 * w)  # the features: reversed and scaled by the GRL weight only


# --------------------------------------------------------------- instance level
def test_instance_discriminator_learns_from_the_full_bce_and_the_box_features_get_minus_0_1_of_it():
    align = _alignment(IMG_DA__ENABLED=False)
    feats, box_feats, rois, levels = _inputs()
    params = list(align.ins_heads.parameters())
    loss = align(feats, box_feats, rois)["loss_da_ins"]
    got = torch.autograd.grad(loss, params + [box_feats["source"], box_feats["target"]])

    plain = {d: _detached(box_feats[d]) for d, _ in DOMAINS}
    bces = []
    for d, label in DOMAINS:
        # Each RoI through the head of the level the FPN rule gives its box.
        logits = torch.cat([align.ins_heads[f](plain[d][i : i + 1]) for i, f in enumerate(levels[d])]).squeeze(1)
        bces.append(F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, label)))
    by_hand = sum(bces) / 2
    want = torch.autograd.grad(by_hand, params + [plain["source"], plain["target"]])

    torch.testing.assert_close(loss, by_hand)
    for g, w in zip(got[: len(params)], want[: len(params)]):
        _close(g, w)
    for g, w in zip(got[len(params):], want[len(params):]):
        _close(g, -0.1 * w)


def test_finest_level_only_reproduces_the_reference_code():
    """Its instance head scores only RoIs of the finest level; the rest: logit 0, no gradient."""
    align = _alignment(IMG_DA__ENABLED=False, INS_DA__FINEST_LEVEL_ONLY=True)
    feats, box_feats, rois, levels = _inputs()
    loss = align(feats, box_feats, rois)["loss_da_ins"]
    loss.backward()
    assert all(p.grad.abs().sum() == 0 for p in align.ins_heads["p3"].parameters())
    for d, label in DOMAINS:
        coarse = torch.tensor([f == "p3" for f in levels[d]])
        assert box_feats[d].grad[coarse].abs().sum() == 0 and box_feats[d].grad[~coarse].abs().sum() > 0
    bces = []
    for d, label in DOMAINS:
        logits = torch.stack(
            [align.ins_heads["p2"](box_feats[d][i]).squeeze() if f == "p2" else torch.tensor(0.0) for i, f in enumerate(levels[d])]
        )
        bces.append(F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, label)))
    torch.testing.assert_close(loss, sum(bces) / 2)


def test_every_discriminator_parameter_gets_a_gradient_when_a_level_has_no_rois():
    """DistributedDataParallel (without find_unused_parameters) needs a gradient for every parameter."""
    align = _alignment()
    feats, box_feats, rois, _ = _inputs()
    small = {d: [Boxes(torch.tensor([SMALL])), Boxes(torch.tensor([SMALL, SMALL]))] for d in rois}  # all on p2
    box_feats = {d: torch.randn(3, 16) for d in rois}
    sum(align(feats, box_feats, small).values()).backward()
    assert all(p.grad is not None for p in align.parameters())
    assert all(p.grad.abs().sum() == 0 for p in align.ins_heads["p3"].parameters())


# ------------------------------------------------------------------ consistency
def _unit_heads(align):
    """1-wide heads with weights 1 and biases 0: image logit = feature value, RoI logit = RoI feature."""
    for p in align.parameters():
        torch.nn.init.constant_(p, 0.0)
    for head in list(align.img_heads.values()) + list(align.ins_heads.values()):
        for m in head.modules():
            if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
                torch.nn.init.constant_(m.weight, 1.0)
    return align


def test_consistency_gradient_by_hand():
    """One 1-channel map and one RoI per domain, with known probabilities.

    Source: image map 1.0 everywhere -> p_img = s(1.0) = 0.73; RoI feature 0.2 -> p_ins = 0.55.
    Target: map 0.5 -> p_img = 0.62; RoI feature 2.0 -> p_ins = 0.88.
    L = (|p_img - p_ins|_source + |p_img - p_ins|_target) / 2. The features get
    +0.1 x 0.025 (image) and +0.1 x 0.1 (RoI) of dL: the same sign as dL, so
    gradient descent pulls the two probabilities together. The heads get dL itself.
    """
    cfg = _cfg(IMG_DA__HIDDEN_DIM=1, INS_DA__HIDDEN_DIM=1)
    cfg.MODEL.ROI_HEADS.IN_FEATURES = ["p2"]
    align = _unit_heads(DomainAlignment(cfg, {"p2": ShapeSpec(channels=1, stride=4)}, box_feature_dim=1).eval())
    v = {"source": 1.0, "target": 0.5}
    u = {"source": 0.2, "target": 2.0}
    feats = {d: {"p2": torch.full((1, 1, 8, 8), v[d], requires_grad=True)} for d in v}
    box_feats = {d: torch.tensor([[u[d]]], requires_grad=True) for d in u}
    rois = {d: [Boxes(torch.tensor([[8.0, 8.0, 24.0, 24.0]]))] for d in v}  # inside the 32x32 image
    loss = align(feats, box_feats, rois)["loss_da_cst"]

    s = torch.sigmoid
    ds = lambda z: s(torch.tensor(z)) * (1 - s(torch.tensor(z)))  # noqa: E731
    sign = {d: torch.sign(s(torch.tensor(v[d])) - s(torch.tensor(u[d]))) for d in v}
    assert sign["source"] == 1 and sign["target"] == -1
    want_loss = sum(abs(s(torch.tensor(v[d])) - s(torch.tensor(u[d]))) for d in v) / 2
    torch.testing.assert_close(loss, want_loss)

    img_bias, ins_bias = align.img_heads["p2"].conv2.bias, align.ins_heads["p2"].fc3.bias
    grads = torch.autograd.grad(
        loss, [feats["source"]["p2"], feats["target"]["p2"], box_feats["source"], box_feats["target"], img_bias, ins_bias]
    )
    for d, g_map, g_roi in (("source", grads[0], grads[2]), ("target", grads[1], grads[3])):
        # The pooled probability is a mean over the RoI: its weights over the map sum to 1.
        torch.testing.assert_close(g_map.sum(), 0.1 * 0.025 * 0.5 * sign[d] * ds(v[d]))
        assert (g_map * sign[d] >= 0).all()
        torch.testing.assert_close(g_roi.sum(), 0.1 * 0.1 * 0.5 * -sign[d] * ds(u[d]))
    # The heads themselves learn from the consistency loss at weight 1.
    torch.testing.assert_close(grads[4].sum(), 0.5 * sum(sign[d] * ds(v[d]) for d in v))
    torch.testing.assert_close(grads[5].sum(), 0.5 * sum(-sign[d] * ds(u[d]) for d in u))


def test_consistency_pools_each_roi_on_its_level_map():
    """A RoI's image probability is its level's map averaged over the box, not the image mean."""
    cfg = _cfg(IMG_DA__HIDDEN_DIM=1, INS_DA__HIDDEN_DIM=1)
    shapes = {"p2": ShapeSpec(channels=1, stride=4), "p3": ShapeSpec(channels=1, stride=8)}
    align = _unit_heads(DomainAlignment(cfg, shapes, box_feature_dim=1).eval())
    p2 = torch.zeros(1, 1, SIZE // 4, SIZE // 4)
    p2[..., :6, :6] = 3.0  # a bright corner on P2, a little larger than the small box
    p3 = torch.full((1, 1, SIZE // 8, SIZE // 8), 1.0)
    feats = {d: {"p2": p2, "p3": p3} for d in ("source", "target")}
    box_feats = {d: torch.zeros(2, 1) for d in ("source", "target")}  # p_ins = 0.5
    boxes = [Boxes(torch.tensor([[0.0, 0.0, 16.0, 16.0], LARGE]))]  # on P2: the corner; on P3: all ones
    rois = {d: boxes for d in ("source", "target")}
    loss = align(feats, box_feats, rois)["loss_da_cst"]
    s = lambda z: 1 / (1 + math.exp(-z))  # noqa: E731
    want = (abs(s(3.0) - 0.5) + abs(s(1.0) - 0.5)) / 2
    assert loss.item() == pytest.approx(want, rel=1e-5)


# ------------------------------------------------------------------ whole model
def test_domain_adaptive_rcnn_forward_gives_three_finite_losses_that_backprop():
    cfg = get_cfg()
    add_mic_config(cfg)
    cfg.merge_from_file(f"{REPO}/configs/synthetic/mic_sada.yaml")
    cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = 32
    cfg.MODEL.RPN.POST_NMS_TOPK_TRAIN = 50
    cfg.MODEL.RPN.POST_NMS_TOPK_TEST = 50
    cfg.UDA.INS_DA.TARGET_ROIS_PER_IMAGE = 16
    torch.manual_seed(0)
    model = build_model(cfg).train()

    def image(h, w, boxes=None):
        d = {"image": torch.rand(3, h, w) * 255, "height": h, "width": w}
        if boxes is not None:
            inst = Instances((h, w))
            inst.gt_boxes = Boxes(torch.tensor(boxes))
            inst.gt_classes = torch.zeros(len(boxes), dtype=torch.long)
            d["instances"] = inst
        return d

    source = [image(64, 96, [[8.0, 8.0, 40.0, 40.0]]), image(64, 96, [[30.0, 10.0, 90.0, 60.0]])]
    target = [image(64, 96), image(64, 96)]
    with EventStorage(0):
        losses = model(source, target_inputs=target)
    da = {k: v for k, v in losses.items() if k.startswith("loss_da")}
    assert set(da) == {"loss_da_img", "loss_da_ins", "loss_da_cst"}
    assert all(torch.isfinite(v) for v in da.values())
    sum(da.values()).backward()
    heads = model.domain_alignment
    for part in (heads.img_heads, heads.ins_heads, model.backbone, model.roi_heads.box_head):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in part.parameters()), part
