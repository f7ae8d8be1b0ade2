"""Using a trained model: tools/predict.py and mic_det.Predictor on a checkpoint with a teacher."""
import importlib.util
import json
import os
import shutil
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch

from .conftest import REPO


@pytest.fixture(scope="module")
def predict_tool():
    spec = importlib.util.spec_from_file_location("predict_tool", os.path.join(REPO, "tools", "predict.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _category_ids(tiny_pair):
    with open(tiny_pair / "annotations" / "target_val.json") as f:
        return {c["name"]: c["id"] for c in json.load(f)["categories"]}


def test_predict_cli_draws_and_writes_coco_results_of_the_teacher(mic_checkpoint, tiny_pair, tmp_path):
    config, weights = mic_checkpoint
    images = tmp_path / "images"
    (images / "sub").mkdir(parents=True)
    shutil.copy(tiny_pair / "target_val" / "000000.png", images / "a.png")
    shutil.copy(tiny_pair / "target_val" / "000001.png", images / "sub" / "b.png")
    out = tmp_path / "out"
    cmd = [sys.executable, os.path.join(REPO, "tools", "predict.py"), "--config-file", config, "--weights", weights,
           "--model", "teacher", "--input", str(images), "--output", str(out)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "images: 100%" in proc.stderr  # the progress bar, on a folder
    for rel in ("a.png", "sub/b.png"):
        drawn, original = cv2.imread(str(out / rel)), cv2.imread(str(images / rel))
        assert drawn.shape == original.shape and not np.array_equal(drawn, original)  # boxes were drawn
    with open(out / "coco_instances_results.json") as f:
        results = json.load(f)
    assert {r["file_name"] for r in results} == {str(images / "a.png"), str(images / "sub" / "b.png")}
    ids = {r["file_name"]: r["image_id"] for r in results}  # integers, one per image, as COCO's loadRes needs
    assert sorted(ids.values()) == [1, 2] and len({r["image_id"] for r in results}) == 2
    # The teacher's raised "car" logit: every kept detection is a car, under the json's id for car.
    assert {r["category_id"] for r in results} == {_category_ids(tiny_pair)["car"]}
    assert min(r["score"] for r in results) >= 0.5
    h, w = cv2.imread(str(images / "a.png")).shape[:2]
    for r in results:
        x, y, bw, bh = r["bbox"]  # XYWH in the original image
        assert bw > 0 and bh > 0 and -1 <= x and x + bw <= w + 1 and -1 <= y and y + bh <= h + 1

    # The same numbers as the Python API gives.
    from mic_det import Predictor

    teacher = Predictor(config, weights, model="teacher", score_thresh=0.5)
    instances = teacher(cv2.imread(str(images / "a.png")))["instances"]
    boxes = instances.pred_boxes.tensor.numpy()
    from_json = np.array([r["bbox"] for r in results if r["file_name"] == str(images / "a.png")])
    assert len(from_json) == len(boxes) > 0
    np.testing.assert_allclose(from_json[:, :2], boxes[:, :2], atol=1e-3)
    np.testing.assert_allclose(from_json[:, 2:], boxes[:, 2:] - boxes[:, :2], atol=1e-3)


def test_predictor_student_and_teacher_are_the_two_detectors_of_the_checkpoint(mic_checkpoint, tiny_pair):
    import mic_det

    config, weights = mic_checkpoint
    image = cv2.imread(str(tiny_pair / "target_val" / "000002.png"))
    student = mic_det.Predictor(config, weights, score_thresh=0.5)
    teacher = mic_det.Predictor(config, weights, model="teacher", score_thresh=0.5)
    car = list(teacher.metadata.thing_classes).index("car")
    s, t = student(image)["instances"], teacher(image)["instances"]
    assert len(s) == 0  # an untrained student scores every class near 1/7
    assert len(t) > 0 and torch.all(t.pred_classes == car) and t.image_size == image.shape[:2]
    ckpt = torch.load(weights, map_location="cpu")
    bias = "roi_heads.box_predictor.cls_score.bias"
    assert torch.equal(student.model.state_dict()[bias], ckpt["model"][bias])
    assert torch.equal(teacher.model.state_dict()[bias], ckpt["teacher"]["model." + bias])


def test_predict_video_and_glob(predict_tool, mic_checkpoint, tiny_pair, tmp_path):
    config, weights = mic_checkpoint
    video = tmp_path / "in" / "clip.mp4"
    video.parent.mkdir()
    frames = [cv2.imread(str(tiny_pair / "target_val" / f"00000{i}.png")) for i in range(3)]
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 5, (w, h))
    for frame in frames:
        writer.write(frame)
    writer.release()
    shutil.copy(tiny_pair / "target_val" / "000000.png", tmp_path / "in" / "x.png")
    out = tmp_path / "out"
    assert predict_tool.main(["--config-file", config, "--weights", weights, "--model", "teacher",
                              "--input", str(tmp_path / "in" / "*"), "--output", str(out)]) == 0
    drawn = cv2.VideoCapture(str(out / "clip.mp4"))
    count = 0
    while drawn.read()[0]:
        count += 1
    drawn.release()
    assert count == 3 and (out / "x.png").is_file()
    with open(out / "coco_instances_results.json") as f:
        results = json.load(f)
    frames = {r["frame"]: r["image_id"] for r in results if r["file_name"] == str(video)}
    assert set(frames) == {0, 1, 2} and len(set(frames.values())) == 3  # an id per frame
    assert any(r["file_name"] == str(tmp_path / "in" / "x.png") for r in results)


def test_equal_file_names_in_two_inputs_keep_their_drawings_and_ids(predict_tool, mic_checkpoint, tiny_pair,
                                                                    tmp_path):
    config, weights = mic_checkpoint
    image = cv2.imread(str(tiny_pair / "target_val" / "000000.png"))
    for cam, size in (("cam1", (160, 128)), ("cam2", (120, 96))):  # told apart by their sizes
        (tmp_path / cam).mkdir()
        cv2.imwrite(str(tmp_path / cam / "a.png"), cv2.resize(image, size))
    out = tmp_path / "out"
    assert predict_tool.main(["--config-file", config, "--weights", weights, "--model", "teacher", "--input",
                              str(tmp_path / "cam1"), str(tmp_path / "cam2"), "--output", str(out)]) == 0
    for cam in ("cam1", "cam2"):  # each drawn on its own image
        assert cv2.imread(str(out / cam / "a.png")).shape == cv2.imread(str(tmp_path / cam / "a.png")).shape
    with open(out / "coco_instances_results.json") as f:
        results = json.load(f)
    ids = {r["file_name"]: r["image_id"] for r in results}
    assert set(ids) == {str(tmp_path / "cam1" / "a.png"), str(tmp_path / "cam2" / "a.png")}
    assert len(set(ids.values())) == 2


def test_coco_json_ids_are_matched_by_path_then_base_name(predict_tool, tmp_path):
    images = [{"id": 7, "file_name": "cam1/a.png"}, {"id": 9, "file_name": "cam2/a.png"},
              {"id": 11, "file_name": "b.png"}]
    root = tmp_path / "root"
    paths = [str(root / "cam1" / "a.png"), str(root / "cam2" / "a.png"), str(tmp_path / "copy" / "b.png"),
             str(tmp_path / "flat" / "c.png")]
    assert predict_tool.match_coco_images(paths, images, "gt.json") == {paths[0]: 7, paths[1]: 9, paths[2]: 11}
    with pytest.raises(ValueError, match="could be any of its images cam1/a.png, cam2/a.png"):
        predict_tool.match_coco_images([str(tmp_path / "flat" / "a.png")], images, "gt.json")
    with pytest.raises(ValueError, match="both match its image b.png"):
        predict_tool.match_coco_images([str(tmp_path / "x" / "b.png"), str(tmp_path / "y" / "b.png")], images,
                                       "gt.json")


def test_coco_ap_of_the_labels_themselves_is_100(predict_tool, tiny_pair):
    data = predict_tool.load_coco_json(str(tiny_pair / "annotations" / "target_val.json"))
    perfect = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0}
               for a in data["annotations"]]
    ap = predict_tool.coco_ap(data, perfect, [img["id"] for img in data["images"]])
    assert ap["AP"] == pytest.approx(100.0) and ap["AP50"] == pytest.approx(100.0)


def test_predict_errors_are_one_clear_line(predict_tool, mic_checkpoint, tiny_pair, tmp_path):
    config, weights = mic_checkpoint
    empty = tmp_path / "empty"
    empty.mkdir()
    student_only = tmp_path / "student_only.pth"
    ckpt = torch.load(weights, map_location="cpu")
    torch.save({"model": ckpt["model"], "iteration": 41}, student_only)

    def run(*args):
        with pytest.raises(SystemExit) as e:
            predict_tool.main(["--config-file", config, "--output", str(tmp_path / "out")] + list(args))
        return str(e.value.code)

    msg = run("--weights", str(tmp_path / "nope.pth"), "--input", str(tiny_pair / "target_val" / "000000.png"))
    assert msg.startswith("error: --weights") and "nope.pth does not exist" in msg
    msg = run("--weights", str(student_only), "--model", "teacher", "--input", str(empty))
    assert "no images or videos found" in msg and str(empty) in msg
    (empty / "a.png").write_bytes(cv2.imencode(".png", np.zeros((20, 30, 3), np.uint8))[1].tobytes())
    msg = run("--weights", str(student_only), "--model", "teacher", "--input", str(empty))
    assert "student_only.pth" in msg and "no 'teacher' entry" in msg
    msg = run("--weights", weights, "--input", str(empty), "--output", str(empty / "drawn"))
    assert "inside --input" in msg


@pytest.mark.slow  # a subprocess or a training run
def test_one_import_for_a_notebook():
    code = (
        "import mic_det; "
        "from mic_det import add_mic_config, MICTrainer, register_coco_domain, register_image_folder, Predictor; "
        "from detectron2.engine import DefaultPredictor, DefaultTrainer; "
        "assert issubclass(Predictor, DefaultPredictor) and issubclass(MICTrainer, DefaultTrainer); "
        "assert set(mic_det.__all__) <= set(dir(mic_det))"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
