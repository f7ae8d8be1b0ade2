"""A run folder is enough: a run records its registered datasets (classes, json category ids), and
every tool given its config or weights works with no --register flag repeated."""
import importlib.util
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
import yaml
from detectron2.data import DatasetCatalog, MetadataCatalog

from .conftest import REPO, run_train_net

CLASSES = ["fire", "smoke"]  # json ids 1 and 2: the tiny pair's cars and persons, renamed
ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")


def _tool(name):
    spec = importlib.util.spec_from_file_location(f"{name}_tool", os.path.join(REPO, "tools", f"{name}.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _two_class_json(src, dst, subfolder=""):
    """The tiny pair's json with cars as 'fire' (id 1) and persons as 'smoke' (id 2), other boxes dropped."""
    with open(src) as f:
        data = json.load(f)
    names = {c["id"]: c["name"] for c in data["categories"]}
    new_id = {"car": 1, "person": 2}
    data["annotations"] = [dict(a, category_id=new_id[names[a["category_id"]]]) for a in data["annotations"]
                           if names[a["category_id"]] in new_id]
    data["categories"] = [{"id": 1, "name": "fire"}, {"id": 2, "name": "smoke"}]
    for img in data["images"]:
        img["file_name"] = os.path.join(subfolder, img["file_name"]) if subfolder else img["file_name"]
    with open(dst, "w") as f:
        json.dump(data, f)
    return data


def _run(tool, *args, timeout=600):
    proc = subprocess.run([sys.executable, os.path.join(REPO, "tools", tool)] + [str(a) for a in args],
                          cwd=REPO, env=ENV, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{tool} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc


@pytest.fixture(scope="module")
def custom_run(tiny_pair, tmp_path_factory):
    """A tiny MIC run on user domains given only by flags, placed after the KEY VALUE overrides:
    a COCO source (ids 1/2), an unlabelled image folder target, a COCO val set (ids 1/2)."""
    data = tmp_path_factory.mktemp("custom_data")
    _two_class_json(tiny_pair / "annotations" / "source_train.json", data / "source.json")
    frames = data / "frames"
    shutil.copytree(tiny_pair / "target_train", frames)
    val_root = data / "val_images"
    shutil.copytree(tiny_pair / "target_val", val_root / "cam1")
    _two_class_json(tiny_pair / "annotations" / "target_val.json", data / "val.json", subfolder="cam1")
    run = tmp_path_factory.mktemp("custom_run")
    run_train_net(
        ["--config-file", "configs/synthetic/mic.yaml",
         "SOLVER.MAX_ITER", "4", "SOLVER.STEPS", "()", "SOLVER.WARMUP_ITERS", "0", "MIC.BURN_IN_ITERS", "0",
         "MIC.GUARD.ENABLED", "False", "MODEL.ROI_HEADS.NUM_CLASSES", "2",
         "DATASETS.TRAIN", "('fire_src',)", "DATASETS.TRAIN_TARGET", "('frames',)", "DATASETS.TEST", "('fire_val',)",
         "--register-coco", "fire_src", data / "source.json", tiny_pair / "source_train",
         "--register-folder", "frames", frames,
         "--register-coco", "fire_val", data / "val.json", val_root],
        run, tiny_pair,
    )
    return run, data


def test_the_run_records_its_datasets_in_its_folder_and_checkpoint(custom_run):
    run, data = custom_run
    with open(run / "datasets.yaml") as f:
        record = {e["name"]: e for e in yaml.safe_load(f)}
    assert set(record) == {"fire_src", "frames", "fire_val"}
    assert record["frames"] == {"name": "frames", "type": "folder", "image_dir": str(data / "frames")}
    val = record["fire_val"]
    assert val["type"] == "coco" and val["json"] == str(data / "val.json") and os.path.isabs(val["image_root"])
    assert val["metadata"] == {"thing_classes": CLASSES, "thing_dataset_id_to_contiguous_id": {1: 0, 2: 1}}
    ckpt = torch.load(run / "model_final.pth", map_location="cpu")
    assert {e["name"]: e for e in ckpt["datasets"]} == record
    # The record is a domains YAML: --domains reads it.
    from mic_det.data.cli import load_domains_yaml

    assert [s["name"] for s in load_domains_yaml(str(run / "datasets.yaml"))] == list(record)


def test_predict_from_the_run_folder_writes_json_ids_and_scores_them(custom_run, tmp_path):
    run, data = custom_run
    out = tmp_path / "pred"
    proc = _run("predict.py", "--config-file", run / "config.yaml", "--weights", run / "model_final.pth",
                "--model", "teacher", "--input", data / "val_images", "--output", out,
                "--coco-json", data / "val.json", "--score-thresh", "0.05")
    with open(out / "coco_instances_results.json") as f:
        results = json.load(f)
    with open(data / "val.json") as f:
        ids = {os.path.join(str(data / "val_images"), i["file_name"]): i["id"] for i in json.load(f)["images"]}
    assert results and {r["category_id"] for r in results} <= {1, 2}
    assert all(r["image_id"] == ids[r["file_name"]] for r in results)
    assert "COCO AP of teacher on 8 image(s)" in proc.stdout and "Average Precision" in proc.stdout
    assert "not registered" not in proc.stderr


def test_python_predictor_from_the_run_config_has_names_and_json_ids(custom_run):
    import cv2

    from mic_det import Predictor
    from mic_det.predictor import to_coco_results

    run, data = custom_run
    predictor = Predictor(str(run / "config.yaml"), str(run / "model_final.pth"), score_thresh=0.05)
    assert list(predictor.metadata.thing_classes) == CLASSES
    assert predictor.metadata.thing_dataset_id_to_contiguous_id == {1: 0, 2: 1}
    instances = predictor(cv2.imread(str(data / "val_images" / "cam1" / "000000.png")))["instances"]
    results = to_coco_results(instances, 1, predictor.metadata)
    assert results and {r["category_id"] for r in results} <= {1, 2}


def test_export_with_a_sample_image_writes_the_run_class_names(custom_run, tmp_path):
    run, data = custom_run
    out = tmp_path / "exported"
    _tool("export_model").main(["--config-file", str(run / "config.yaml"), "--weights", str(run / "model_final.pth"),
                                "--model", "teacher", "--format", "torchscript", "--output", str(out),
                                "--sample-image", str(data / "frames" / "000000.png")])
    assert json.loads((out / "export_info.json").read_text())["thing_classes"] == CLASSES


def test_propose_threshold_from_the_run_folder(custom_run, capsys):
    run, _ = custom_run
    _tool("propose_threshold").main(["--config-file", str(run / "config.yaml"),
                                     "--weights", str(run / "model_final.pth"), "--num-images", "3"])
    assert "on 3 images of frames" in capsys.readouterr().out


def test_an_extracted_teacher_alone_names_its_classes(custom_run, tmp_path):
    run, data = custom_run
    elsewhere = tmp_path / "deploy"
    elsewhere.mkdir()
    shutil.copy(run / "config.yaml", elsewhere / "config.yaml")  # no datasets.yaml next to it
    _run("extract_teacher.py", run / "model_final.pth", elsewhere / "teacher.pth")
    code = (
        "from mic_det import Predictor; "
        f"p = Predictor({str(elsewhere / 'config.yaml')!r}, {str(elsewhere / 'teacher.pth')!r}); "
        "print(list(p.metadata.thing_classes), p.metadata.thing_dataset_id_to_contiguous_id)"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=ENV, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "['fire', 'smoke'] {1: 0, 2: 1}" in proc.stdout


def test_eval_only_resume_evaluates_the_last_checkpoint_of_the_run_folder(custom_run):
    run, _ = custom_run
    # Detectron2's habit: the run's config, --eval-only --resume; nothing else.
    _run("train_net.py", "--config-file", run / "config.yaml", "--eval-only", "--resume", "--eval-model", "teacher")
    with open(run / "inference" / "report_teacher_fire_val_iter3.json") as f:
        report = json.load(f)
    assert report["model"] == "teacher" and report["iteration"] == 3
    assert "AP50-fire" in json.dumps(report) and "AP50-smoke" in json.dumps(report)
    assert "Evaluating " + str(run / "model_final.pth") in open(run / "log.txt").read()


# ---------------------------------------------------------------- without training
def _record(tmp_path, entries):
    from mic_det.data.run_record import write_run_record

    return write_run_record(str(tmp_path), entries)


def test_restoring_an_identical_registration_is_a_no_op_and_flags_win(tmp_path, caplog):
    from mic_det.data.cli import register_domain
    from mic_det.data.run_record import restore_run_datasets

    (tmp_path / "imgs").mkdir()
    (tmp_path / "other").mkdir()
    spec = {"name": "rr_folder", "type": "folder", "image_dir": str(tmp_path / "imgs")}
    register_domain(dict(spec))
    loader = DatasetCatalog["rr_folder"]
    _record(tmp_path, [dict(spec, metadata={"thing_classes": ["a", "b"]})])
    assert restore_run_datasets(str(tmp_path / "config.yaml")) == []
    assert DatasetCatalog["rr_folder"] is loader  # untouched
    register_domain(dict(spec, image_dir=str(tmp_path / "other")))  # given anew on the command line
    with caplog.at_level("WARNING", logger="mic_det.data.run_record"):
        assert restore_run_datasets(str(tmp_path / "config.yaml")) == []
    assert "Using the registration given here" in caplog.text
    DatasetCatalog.remove("rr_folder")
    MetadataCatalog.remove("rr_folder")
    assert restore_run_datasets(str(tmp_path / "config.yaml")) == ["rr_folder"]
    assert MetadataCatalog.get("rr_folder").thing_classes == ["a", "b"]


def test_a_recorded_path_that_is_gone_is_named_with_the_record(tmp_path):
    from mic_det.data.run_record import restore_run_datasets

    gone = tmp_path / "moved_away"
    path = _record(tmp_path, [{"name": "rr_gone", "type": "folder", "image_dir": str(gone)}])
    with pytest.raises(FileNotFoundError) as e:
        restore_run_datasets(str(tmp_path / "config.yaml"))
    assert path in str(e.value) and str(gone) in str(e.value) and "rr_gone" in str(e.value)
    assert "rr_gone" not in DatasetCatalog.list()


def test_a_domains_file_named_datasets_yaml_is_not_taken_for_a_record(tmp_path):
    from mic_det.data.run_record import find_run_record

    (tmp_path / "datasets.yaml").write_text("- {name: x, type: folder, image_dir: nowhere}\n")
    assert find_run_record(str(tmp_path / "my_config.yaml")) is None


def test_eval_only_resume_without_a_run_is_a_clear_error(tmp_path):
    from mic_det.config_loading import build_config

    cfg = build_config(os.path.join(REPO, "configs", "synthetic", "mic.yaml"),
                       ["OUTPUT_DIR", str(tmp_path), "MODEL.WEIGHTS", ""])
    with pytest.raises(FileNotFoundError, match="last_checkpoint does not exist"):
        _tool("train_net").eval_only_weights(cfg, resume=True)
    (tmp_path / "last_checkpoint").write_text("model_0000009.pth")
    assert _tool("train_net").eval_only_weights(cfg, resume=True) == str(tmp_path / "model_0000009.pth")


def test_prediction_needs_only_the_recorded_classes_when_the_training_data_has_moved(tmp_path):
    from mic_det.data.run_record import restore_run_datasets
    from mic_det.predictor import class_metadata

    gone = tmp_path / "moved_away"
    _record(tmp_path, [{"name": "rr_moved", "type": "coco", "json": str(gone / "val.json"),
                        "image_root": str(gone), "metadata": {"thing_classes": ["fire", "smoke"],
                                                              "thing_dataset_id_to_contiguous_id": {1: 0, 2: 1}}}])
    with pytest.raises(FileNotFoundError):  # training and evaluation need the data
        restore_run_datasets(str(tmp_path / "config.yaml"))
    assert restore_run_datasets(str(tmp_path / "config.yaml"), classes_only=True) == []
    assert "rr_moved" not in DatasetCatalog.list()
    from detectron2.config import get_cfg

    cfg = get_cfg()
    cfg.DATASETS.TEST, cfg.DATASETS.TRAIN = ("rr_moved",), ()
    meta = class_metadata(cfg)
    assert list(meta.thing_classes) == ["fire", "smoke"]
    assert meta.thing_dataset_id_to_contiguous_id == {1: 0, 2: 1}
