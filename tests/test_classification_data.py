"""Classification data: class folders, VisDA image lists, Office-Home / Office-31 layouts, the built-in
crops, clear errors, and one short tools/train_net.py run on an image-folder pair given by flags alone."""
import json
import logging
import os

import cv2
import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog

from mic_det.classification import register_all_classification_benchmarks, register_class_folder
from mic_det.classification.mapper import ClassificationMapper
from mic_det.classification.synthetic_crops import register_synthetic_crops
from mic_det.config_loading import build_config
from mic_det.data.checks import check_domain_classes

from .conftest import REPO, read_metrics

COLOURS = {"red": (40, 40, 210), "green": (40, 190, 40), "blue": (210, 60, 40)}  # BGR


def _write_tree(root, n=4, classes=COLOURS, dim=1.0, seed=0, flat=False):
    """``root/<class>/<i>.png``: 36 px images of a noisy coloured disc on grey (``flat``: no class folders)."""
    rng = np.random.default_rng(seed)
    for c, colour in classes.items():
        folder = root if flat else root / c
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            img = np.full((36, 36, 3), 110, np.float32)
            cv2.circle(img, (int(rng.integers(12, 24)), int(rng.integers(12, 24))), int(rng.integers(8, 14)),
                       colour, -1)
            img = np.clip(img * dim + rng.normal(0, 12, img.shape), 0, 255).astype(np.uint8)
            cv2.imwrite(str(folder / f"{c}_{i}.png"), img)
    return root


def test_class_folder_labels_and_clear_errors(tmp_path):
    root = _write_tree(tmp_path / "src", n=2)
    register_class_folder("cls_t_src", str(root))
    assert MetadataCatalog.get("cls_t_src").thing_classes == ["blue", "green", "red"]  # known before loading
    records = DatasetCatalog.get("cls_t_src")
    assert len(records) == 6 and {(os.path.basename(os.path.dirname(r["file_name"])), r["label"]) for r in records} \
        == {("blue", 0), ("green", 1), ("red", 2)}
    (root / "yellow").mkdir()
    register_class_folder("cls_t_empty", str(root))
    with pytest.raises(ValueError, match=r"class folder .*yellow holds no images"):
        DatasetCatalog.get("cls_t_empty")
    register_class_folder("cls_t_missing", str(tmp_path / "nowhere"), ["a"])
    with pytest.raises(FileNotFoundError, match="nowhere does not exist"):
        DatasetCatalog.get("cls_t_missing")


def test_class_folders_from_the_command_line_and_a_domains_yaml(tmp_path):
    import argparse

    from mic_det.data.cli import add_domain_arguments, register_domains_from_args

    def build_parser():
        parser = argparse.ArgumentParser()
        add_domain_arguments(parser)
        return parser

    root = _write_tree(tmp_path / "src", n=1)
    (tmp_path / "d.yaml").write_text("cls_t_yaml: {type: class_folder, image_dir: src}\n")
    args = build_parser().parse_args(["--register-class-folder", "cls_t_flag", str(root),
                                      "--domains", str(tmp_path / "d.yaml")])
    assert register_domains_from_args(args) == ["cls_t_yaml", "cls_t_flag"]
    assert len(DatasetCatalog.get("cls_t_yaml")) == 3 and MetadataCatalog.get("cls_t_flag").labelled
    with pytest.raises(FileNotFoundError, match="nowhere"):
        register_domains_from_args(build_parser().parse_args(["--register-class-folder", "x", str(tmp_path / "nowhere")]))


def test_unreadable_image_is_skipped_in_training_and_an_error_naming_it_in_evaluation(tmp_path, caplog):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a png")
    cfg = build_config(f"{REPO}/configs/synthetic_cls/source_only.yaml", [])
    with pytest.raises(ValueError, match=r"broken\.png: unreadable image"):
        ClassificationMapper(cfg, is_train=False)({"file_name": str(bad), "label": 0})
    train = ClassificationMapper(cfg, is_train=True)
    with caplog.at_level(logging.WARNING):
        assert train({"file_name": str(bad), "label": 0}) is None and train({"file_name": str(bad), "label": 0}) is None
    assert train.num_skipped == 2 and caplog.text.count("Skipping unreadable training image") == 1
    assert "broken.png" in caplog.text
    good = _write_tree(tmp_path / "t", n=1, classes={"red": COLOURS["red"]}) / "red" / "red_0.png"
    out = ClassificationMapper(cfg, is_train=False, labelled=False)({"file_name": str(good), "label": 1})
    size = cfg.INPUT.CLS.SIZE
    assert out["image"].shape == (3, size, size) and "label" not in out and out["label_for_scoring"] == 1


def test_source_and_target_val_class_lists_are_checked(tmp_path):
    register_class_folder("cls_t_a", str(_write_tree(tmp_path / "a", n=1)))
    register_class_folder("cls_t_b", str(_write_tree(tmp_path / "b", n=1, classes={"red": (0, 0, 255), "cyan": (255, 255, 0)})))
    cfg = build_config(f"{REPO}/configs/image_folder_cls/mic_cpu.yaml",
                       ["DATASETS.TRAIN", "('cls_t_a',)", "DATASETS.TRAIN_TARGET", "('cls_t_a',)",
                        "DATASETS.TEST", "('cls_t_b',)"])
    with pytest.raises(ValueError, match="disagree on their classes"):
        check_domain_classes(cfg)


def test_standard_benchmark_layouts(tmp_path, monkeypatch):
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path))
    visda = tmp_path / "visda2017" / "train"
    (visda / "aeroplane").mkdir(parents=True)
    cv2.imwrite(str(visda / "aeroplane" / "a.png"), np.zeros((8, 8, 3), np.uint8))
    (visda / "image_list.txt").write_text("".join(f"aeroplane/a.png {i}\n" for i in range(12)))
    _write_tree(tmp_path / "OfficeHome" / "Real World", n=1)  # the archive's folder name, with a space
    _write_tree(tmp_path / "office31" / "dslr" / "images", n=1)
    names = register_all_classification_benchmarks()
    assert {"visda2017_synthetic", "visda2017_real", "officehome_real_world", "office31_dslr"} <= set(names)
    records = DatasetCatalog.get("visda2017_synthetic")
    assert [r["label"] for r in records] == list(range(12)) and os.path.isfile(records[0]["file_name"])
    assert len(DatasetCatalog.get("officehome_real_world")) == 3
    assert len(DatasetCatalog.get("office31_dslr")) == 3  # under images/; the classes are set on load
    assert MetadataCatalog.get("office31_dslr").thing_classes == ["blue", "green", "red"]
    (visda / "image_list.txt").write_text("aeroplane/a.png zero\n")
    with pytest.raises(ValueError, match=r"image_list\.txt:1: expected '<path> <label>'"):
        DatasetCatalog.get("visda2017_synthetic")
    (visda / "image_list.txt").write_text("aeroplane/a.png 0\n")
    with pytest.raises(ValueError, match=r"no image of class\(es\) \['bicycle'"):
        DatasetCatalog.get("visda2017_synthetic")


def test_builtin_crops_are_generated_on_first_use(tmp_path, caplog):
    params = dict(scenes={"clear_train": 3, "clear_val": 2, "foggy_train": 3, "foggy_val": 2}, height=96, width=128,
                  min_box=10, crop=24)
    names = register_synthetic_crops(str(tmp_path), prefix="cls_t_crops", params=params)
    with caplog.at_level(logging.INFO, logger="mic_det"):
        records = DatasetCatalog.get("cls_t_crops_foggy_train")
    assert "generating it now" in caplog.text and str(tmp_path) in caplog.text
    info = json.load(open(tmp_path / "info.json"))
    assert info["crops"]["foggy_train"] == len(records) > 0 and len(names) == 6  # clear, foggy, night
    assert MetadataCatalog.get("cls_t_crops_clear_val").thing_classes == info["classes"]
    assert len(info["classes"]) >= 6
    assert cv2.imread(records[0]["file_name"]).shape == (24, 24, 3)


def test_builtin_night_crops_are_the_foggy_crops_objects_at_night(tmp_path, caplog):
    params = dict(scenes={"clear_train": 2, "clear_val": 2, "foggy_train": 3, "foggy_val": 2}, height=96, width=128,
                  min_box=10, crop=24)
    names = register_synthetic_crops(str(tmp_path), prefix="cls_t_night", params=params)
    assert names[4:] == ["cls_t_night_night_train", "cls_t_night_night_val"]
    foggy = DatasetCatalog.get("cls_t_night_foggy_train")
    assert not (tmp_path / "night_info.json").exists()  # drawn only when a night set is first loaded
    with caplog.at_level(logging.INFO, logger="mic_det"):
        night = DatasetCatalog.get("cls_t_night_night_train")
    assert "night splits" in caplog.text
    assert MetadataCatalog.get("cls_t_night_night_val").domain == "night"
    assert MetadataCatalog.get("cls_t_night_night_val").thing_classes == MetadataCatalog.get(names[0]).thing_classes
    # The same objects (file names = scene and object index) with the same labels, at night instead of in fog.
    rel = lambda records, split: sorted((os.path.relpath(r["file_name"], tmp_path / split), r["label"])  # noqa: E731
                                        for r in records)
    assert rel(night, "night_train") == rel(foggy, "foggy_train") and len(night) > 0
    info = json.load(open(tmp_path / "night_info.json"))
    assert info["crops"]["night_train"] == len(night) and info["scenes_of"]["night_val"] == "foggy_val"
    assert len(DatasetCatalog.get("cls_t_night_night_val")) == info["crops"]["night_val"]
    dark = np.mean([cv2.imread(r["file_name"]).mean() for r in night])
    fog = np.mean([cv2.imread(r["file_name"]).mean() for r in foggy])
    assert dark < 0.8 * fog
    assert json.load(open(tmp_path / "info.json"))["crops"]["foggy_train"] == len(foggy)  # the pair is unchanged


@pytest.mark.slow  # a subprocess or a training run
def test_an_image_folder_pair_trains_with_flags_alone(tmp_path):
    """tools/train_net.py + --register-class-folder / --register-folder on a tiny colour pair: MIC steps, learning."""
    import subprocess
    import sys

    src = _write_tree(tmp_path / "src", n=12, seed=1)
    tgt = _write_tree(tmp_path / "tgt", n=8, dim=0.6, seed=2, flat=True)  # unlabelled, darker, no class folders
    val = _write_tree(tmp_path / "val", n=5, dim=0.6, seed=3)
    src_val = _write_tree(tmp_path / "src_val", n=3, seed=4)
    out = tmp_path / "run"
    cmd = [sys.executable, os.path.join(REPO, "tools", "train_net.py"),
           "--config-file", "configs/image_folder_cls/mic_cpu.yaml",
           "--register-class-folder", "cls_source", str(src), "--register-folder", "cls_target", str(tgt),
           "--register-class-folder", "cls_target_val", str(val),
           "--register-class-folder", "cls_source_val", str(src_val),  # model_best is selected on it
           # 16 px inputs (4 px mask blocks), batches of 8: 40 source + 10 MIC steps (20 source steps
           # left the target at chance on one CPU and not on another).
           "INPUT.CLS.SIZE", "16", "INPUT.CLS.RESIZE", "18", "MIC.MASK_BLOCK_SIZE", "4",
           "SOLVER.MAX_ITER", "50", "SOLVER.STEPS", "(32,)", "SOLVER.WARMUP_ITERS", "0", "SOLVER.IMS_PER_BATCH", "8",
           "MIC.BURN_IN_ITERS", "40", "TEST.EVAL_PERIOD", "50", "DATALOADER.NUM_WORKERS", "0",
           "SOLVER.CHECKPOINT_PERIOD", "100000", "UDA.CDAN.GRL_WARM_ITERS", "50", "SEED", "3", "OUTPUT_DIR", str(out)]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert "Pseudo-labels at iteration 40: 100% of the target batch kept" in proc.stdout + proc.stderr  # console
    metrics = read_metrics(out)
    assert any(m.get("loss_cls_mic", 0) > 0 for m in metrics) and any("mic/pseudo_confidence" in m for m in metrics)
    assert any("loss_cdan" in m and "loss_mcc" in m for m in metrics)
    final = [m for m in metrics if "student/cls_target_val/cls/top1" in m][-1]
    for tag in ("student", "teacher"):
        assert final[f"{tag}/cls_target_val/cls/top1"] > 55.0, final  # 3 classes: chance is 33
    assert (out / "inference" / "report_teacher_cls_target_val_iter50.md").exists()
