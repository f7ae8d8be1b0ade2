"""tools/export_model.py and tools/extract_teacher.py: the teacher outside mic_det."""
import importlib.util
import json
import os
import subprocess
import sys

import cv2
import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.engine import DefaultPredictor
from detectron2.modeling import build_model

from .conftest import REPO


def _tool(name):
    spec = importlib.util.spec_from_file_location(f"{name}_tool", os.path.join(REPO, "tools", f"{name}.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def export_tool():
    return _tool("export_model")


def _onnx_available():
    return importlib.util.find_spec("onnx") is not None


def test_torchscript_export_gives_the_eager_boxes(export_tool, mic_checkpoint, tiny_pair, tmp_path):
    config, weights = mic_checkpoint
    out = tmp_path / "exported"
    sample = str(tiny_pair / "target_val" / "000003.png")
    export_tool.main(["--config-file", config, "--weights", weights, "--model", "teacher",
                      "--output", str(out), "--sample-image", sample])
    info = json.loads((out / "export_info.json").read_text())
    assert info["outputs"] == ["boxes", "classes", "scores", "image_size"] and info["model"] == "teacher"
    if not _onnx_available():  # said, not silently dropped
        assert not (out / "model.onnx").exists()
        assert "the 'onnx' package is not installed" in info["skipped"]["onnx"]

    # Independently of the tool: the eager teacher on a built-in image vs the saved TorchScript file.
    from mic_det.predictor import load_detector, predictor_config

    cfg = predictor_config(config, weights)
    model = build_model(cfg).eval()
    load_detector(model, weights, "teacher")
    image = export_tool.sample_input(cfg, str(tiny_pair / "target_val" / "000003.png"))
    with torch.no_grad():
        eager = model.inference([{"image": image}], do_postprocess=False)[0]
        boxes, classes, scores, size = torch.jit.load(str(out / "model.ts"))(image)
    assert len(eager) > 0
    torch.testing.assert_close(boxes, eager.pred_boxes.tensor, atol=1e-4, rtol=0)
    assert torch.equal(classes, eager.pred_classes)
    torch.testing.assert_close(scores, eager.scores, atol=1e-4, rtol=0)
    assert tuple(size.tolist()) == tuple(image.shape[1:])


@pytest.mark.skipif(not _onnx_available() or importlib.util.find_spec("onnxruntime") is None,
                    reason="ONNX export needs the onnx and onnxruntime packages, which mic_det does not install")
def test_onnx_export_gives_the_eager_boxes(export_tool, mic_checkpoint, tiny_pair, tmp_path):
    import onnxruntime

    config, weights = mic_checkpoint
    out = tmp_path / "exported"
    export_tool.main(["--config-file", config, "--weights", weights, "--model", "teacher", "--format", "onnx",
                      "--output", str(out), "--sample-image", str(tiny_pair / "target_val" / "000003.png")])
    cfg = export_tool.predictor_config(config, weights)
    model = build_model(cfg).eval()
    export_tool.load_detector(model, weights, "teacher")
    image = export_tool.sample_input(cfg, str(tiny_pair / "target_val" / "000003.png"))
    with torch.no_grad():
        eager = model.inference([{"image": image}], do_postprocess=False)[0]
    session = onnxruntime.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    boxes = session.run(None, {"image": image.numpy()})[0]
    torch.testing.assert_close(torch.as_tensor(boxes), eager.pred_boxes.tensor, atol=1e-4, rtol=0)


def test_extract_teacher_gives_a_plain_detectron2_checkpoint(mic_checkpoint, tiny_pair, tmp_path):
    config, weights = mic_checkpoint
    out = tmp_path / "teacher.pth"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, os.path.join(REPO, "tools", "extract_teacher.py")]
    proc = subprocess.run(cmd + [weights, str(out)], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    saved = torch.load(out, map_location="cpu")
    assert set(saved) == {"model", "iteration"} and saved["iteration"] == 41

    # Plain Detectron2 loads it as the model: the teacher's weights, and the teacher's detections.
    from mic_det import Predictor
    from mic_det.predictor import predictor_config

    cfg = predictor_config(config, str(out), score_thresh=0.5)
    plain = build_model(cfg)
    DetectionCheckpointer(plain).load(str(out))
    teacher = torch.load(weights, map_location="cpu")["teacher"]
    for k, v in plain.state_dict().items():
        assert torch.equal(v, teacher["model." + k]), k
    image = cv2.imread(str(tiny_pair / "target_val" / "000004.png"))
    a = DefaultPredictor(cfg)(image)["instances"]
    b = Predictor(config, weights, "teacher", score_thresh=0.5)(image)["instances"]
    assert len(a) == len(b) > 0 and torch.equal(a.pred_boxes.tensor, b.pred_boxes.tensor)

    # Its output has no teacher: a clear one-line error, no traceback, nothing written.
    again = tmp_path / "again.pth"
    proc = subprocess.run(cmd + [str(out), str(again)], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and not again.exists()
    assert "teacher.pth: checkpoint has no 'teacher' entry" in proc.stderr and "Traceback" not in proc.stderr
