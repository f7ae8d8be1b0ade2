"""Segmentation data: the built-in labels, user domains from flags, benchmark layouts, and each data error.

Training on domains given by flags alone is tested end to end in tests/test_segmentation.py.
"""
import argparse
import json
import logging
import os

import cv2
import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog

from mic_det.config_loading import build_config
from mic_det.data.checks import check_domain_classes
from mic_det.data.cli import add_domain_arguments, register_domains_from_args
from mic_det.data.mapper import UnreadableImageError
from mic_det.data.synthetic import SEMANTIC_CLASSES, generate_labelled_scene, generate_scene
from mic_det.segmentation.datasets import register_seg_domain
from mic_det.segmentation.evaluator import SegReportEvaluator
from mic_det.segmentation.labels import LabelError
from mic_det.segmentation.mapper import SegDatasetMapper
from mic_det.segmentation.synthetic import register_synthetic_seg_pair

from .conftest import REPO

CLASSES = ["road", "car", "sky"]


def _write(path, array):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    assert cv2.imwrite(str(path), array)


def _domain(root, n=2, size=(12, 16), label=None):
    """n images + labels (values 0..2) under root/images, root/labels."""
    rng = np.random.default_rng(0)
    for i in range(n):
        _write(os.path.join(root, "images", f"{i}.jpg"), rng.integers(0, 255, size + (3,), dtype=np.uint8))
        lab = rng.integers(0, 3, size, dtype=np.uint8) if label is None else label
        _write(os.path.join(root, "labels", f"{i}.png"), lab)
    return os.path.join(root, "images"), os.path.join(root, "labels")


def _load(name, images, labels, **kw):
    register_seg_domain(name, images, labels, CLASSES, **kw)
    return DatasetCatalog.get(name)


# ------------------------------------------------------------ built-in labels
def test_labelled_scene_is_the_detection_scene_with_a_consistent_label_map():
    for i in range(4):
        img, depth, anns = generate_scene(np.random.default_rng([2, i]), 64, 80, beta=0.04)
        img2, depth2, anns2, labels = generate_labelled_scene(np.random.default_rng([2, i]), 64, 80, beta=0.04)
        assert np.array_equal(img, img2) and np.array_equal(depth, depth2) and anns == anns2
        assert labels.dtype == np.uint8 and labels.max() < len(SEMANTIC_CLASSES)
        assert (labels[0] == SEMANTIC_CLASSES.index("sky")).mean() > 0.5 or labels[0].max() >= 5  # sky unless occluded
        for a in anns:  # each box holds pixels of its own class
            x, y, w, h = (int(v) for v in a["bbox"])
            assert (labels[y:y + h, x:x + w] == 4 + a["category_id"]).any()


def test_the_builtin_pair_is_generated_on_first_use_with_a_log_line(tmp_path, caplog):
    root = tmp_path / "pair"
    names = register_synthetic_seg_pair(str(root), prefix="t_seg", params=dict(
        num_source_train=2, num_source_val=1, num_target_train=2, num_target_val=1, height=32, width=40))
    with caplog.at_level(logging.INFO, logger="mic_det"):
        records = DatasetCatalog.get(names[0])
    assert "generating it now" in caplog.text and len(records) == 2
    assert (root / "info.json").is_file() and (root / "target_val" / "labels" / "000000.png").is_file()
    assert MetadataCatalog.get(names[2]).stuff_classes == list(SEMANTIC_CLASSES)


def test_the_night_splits_are_the_foggy_scenes_at_night_drawn_next_to_the_pair_on_first_use(tmp_path, caplog):
    root = tmp_path / "pair"
    names = register_synthetic_seg_pair(str(root), prefix="t_seg_n", params=dict(
        num_source_train=1, num_source_val=1, num_target_train=2, num_target_val=1, height=32, width=40))
    assert names[4:] == ["t_seg_n_night_train", "t_seg_n_night_val"]
    DatasetCatalog.get("t_seg_n_foggy_train")
    assert not (root / "night_info.json").exists()  # drawn only when a night set is first loaded
    with caplog.at_level(logging.INFO, logger="mic_det"):
        night = DatasetCatalog.get("t_seg_n_night_train")
    assert "night splits" in caplog.text and "generating it now" in caplog.text
    assert len(night) == 2 and len(DatasetCatalog.get("t_seg_n_night_val")) == 1
    assert MetadataCatalog.get("t_seg_n_night_val").domain == "night"
    assert MetadataCatalog.get("t_seg_n_night_val").stuff_classes == list(SEMANTIC_CLASSES)
    info = json.loads((root / "night_info.json").read_text())
    assert info["splits"] == {"night_train": 2, "night_val": 1} and info["scenes"]["night_val"] == "target_val"
    for i in range(2):  # the foggy scene's label map; its image dimmer than the clear-sky foggy one
        foggy = cv2.imread(str(root / "target_train" / "images" / f"{i:06d}.png"))
        dark = cv2.imread(str(root / "night_train" / "images" / f"{i:06d}.png"))
        assert np.array_equal(cv2.imread(str(root / "night_train" / "labels" / f"{i:06d}.png"), cv2.IMREAD_UNCHANGED),
                              cv2.imread(str(root / "target_train" / "labels" / f"{i:06d}.png"), cv2.IMREAD_UNCHANGED))
        assert dark.shape == foggy.shape and dark.mean() < 0.8 * foggy.mean()
    # Drawn once: a second registration of the same root reads them as they are.
    stamp = (root / "night_info.json").stat().st_mtime_ns
    register_synthetic_seg_pair(str(root), prefix="t_seg_n2")
    assert len(DatasetCatalog.get("t_seg_n2_night_train")) == 2
    assert (root / "night_info.json").stat().st_mtime_ns == stamp


# ---------------------------------------------------------------- data errors
def test_label_of_another_size_than_its_image_is_an_error_naming_it(tmp_path):
    images, labels = _domain(str(tmp_path), label=np.zeros((10, 16), np.uint8))
    with pytest.raises(LabelError, match=r"0\.png is 10x16 \(h x w\) but its image is 12x16"):
        _load("err_size", images, labels)


def test_label_values_outside_the_class_list_are_an_error(tmp_path):
    images, labels = _domain(str(tmp_path), label=np.full((12, 16), 7, np.uint8))
    with pytest.raises(LabelError, match=r"0\.png has values 7 outside the class list"):
        _load("err_values", images, labels)


def test_a_custom_ignore_value_becomes_255_and_may_not_be_a_class(tmp_path):
    images, labels = _domain(str(tmp_path), label=np.full((12, 16), 9, np.uint8))
    records = _load("ignore9", images, labels, ignore_value=9)
    from mic_det.segmentation.labels import read_dataset_label

    assert (read_dataset_label("ignore9", records[0]["sem_seg_file_name"]) == 255).all()
    with pytest.raises(ValueError, match="ignore value 1 is the index of class 'car'"):
        register_seg_domain("bad_ignore", images, labels, CLASSES, ignore_value=1)


def test_missing_pairs_are_errors_listing_the_files(tmp_path):
    images, labels = _domain(str(tmp_path), n=3)
    os.remove(os.path.join(labels, "1.png"))
    with pytest.raises(FileNotFoundError, match=r"(?s)1 image\(s\) .* have no label .*1\.png"):
        _load("err_missing_label", images, labels)
    images, labels = _domain(str(tmp_path / "b"), n=2)
    _write(os.path.join(labels, "extra.png"), np.zeros((12, 16), np.uint8))
    with pytest.raises(FileNotFoundError, match=r"(?s)1 label\(s\) .* have no image .*extra\.png"):
        _load("err_orphan", images, labels)


def test_unreadable_files_are_errors_naming_them(tmp_path):
    images, labels = _domain(str(tmp_path))
    with open(os.path.join(labels, "0.png"), "wb") as f:
        f.write(b"not a png")
    with pytest.raises(LabelError, match=r"Cannot read label .*0\.png"):
        _load("err_unreadable_label", images, labels)
    colour = os.path.join(labels, "0.png")
    _write(colour, np.zeros((12, 16, 3), np.uint8))
    with pytest.raises(LabelError, match="colour channels"):
        _load("err_colour_label", images, labels)
    # An unreadable image: an error in evaluation (a skip would change the metric), skipped in training.
    _write(colour, np.zeros((12, 16), np.uint8))
    records = _load("err_image", images, labels)
    with open(records[1]["file_name"], "wb") as f:
        f.write(b"broken")
    cfg = build_config(os.path.join(REPO, "configs", "synthetic_seg", "source_only.yaml"))
    with pytest.raises(UnreadableImageError, match=r"Cannot read image .*1\.jpg"):
        SegDatasetMapper(cfg, is_train=False)(records[1])
    assert SegDatasetMapper(cfg, is_train=True)(records[1]) is None
    mapped = SegDatasetMapper(cfg, is_train=True)(records[0])
    assert mapped["sem_seg"].dtype == torch.long and mapped["image"].shape[0] == 3
    assert "sem_seg" not in SegDatasetMapper(cfg, is_train=True, labelled=False)(records[0])  # target: no labels
    cfg.MIC.LOG_PSEUDO_LABEL_QUALITY = True  # ... but kept apart for scoring pseudo-labels, when asked
    scored = SegDatasetMapper(cfg, is_train=True, labelled=False)(records[0])
    assert "sem_seg" not in scored and scored["sem_seg_for_scoring"].shape == mapped["sem_seg"].shape


def test_bad_training_labels_past_the_load_check_are_skipped_and_counted(tmp_path, monkeypatch, caplog):
    import mic_det.segmentation.datasets as seg_datasets

    monkeypatch.setattr(seg_datasets, "NUM_PAIRS_CHECKED", 1)  # pairs after the first are read in training only
    images, labels = _domain(str(tmp_path), n=3)
    with open(os.path.join(labels, "1.png"), "wb") as f:
        data = cv2.imencode(".png", np.random.default_rng(1).integers(0, 3, (12, 16), dtype=np.uint8))[1].tobytes()
        f.write(data[: len(data) // 2])  # truncated: the header reads, the pixels do not
    _write(os.path.join(labels, "2.png"), np.zeros((10, 16), np.uint8))  # another size than its image
    records = _load("skip_labels", images, labels)
    cfg = build_config(os.path.join(REPO, "configs", "synthetic_seg", "source_only.yaml"))
    mapper = SegDatasetMapper(cfg, is_train=True)
    with caplog.at_level(logging.WARNING):
        assert mapper(records[1]) is None and mapper(records[2]) is None and mapper(records[1]) is None
    assert mapper.num_skipped == 3 and mapper(records[0])["sem_seg"].shape[-2:] == mapper(records[0])["image"].shape[-2:]
    assert caplog.text.count("Skipping training pair") == 2  # one warning per file
    assert "1.png" in caplog.text and "2.png is 10x16 (h x w) but its image is 12x16" in caplog.text


def test_domains_must_share_classes_and_the_head_must_match(tmp_path):
    images, labels = _domain(str(tmp_path))
    register_seg_domain("cls_a", images, labels, CLASSES)
    register_seg_domain("cls_b", images, labels, ["road", "car", "sky", "bus"])
    base = os.path.join(REPO, "configs", "synthetic_seg", "source_only.yaml")
    cfg = build_config(base, ["DATASETS.TRAIN", "('cls_a',)", "DATASETS.TEST", "('cls_b',)"])
    with pytest.raises(ValueError, match="disagree on their classes"):
        check_domain_classes(cfg)
    cfg = build_config(base, ["DATASETS.TRAIN", "('cls_a',)", "DATASETS.TEST", "()"])
    with pytest.raises(ValueError, match="MODEL.SEM_SEG_HEAD.NUM_CLASSES is 12 but the datasets have 3"):
        check_domain_classes(cfg)


# ------------------------------------------------------------ flags and YAML
def test_register_seg_flag_and_domains_yaml(tmp_path):
    images, labels = _domain(str(tmp_path / "d"))
    (tmp_path / "classes.txt").write_text("road\ncar\nsky\n")
    (tmp_path / "domains.yaml").write_text(
        "- name: yaml_seg\n  image_dir: d/images\n  label_dir: d/labels\n  stuff_classes: [road, car, sky]\n")
    parser = argparse.ArgumentParser()
    add_domain_arguments(parser)
    args = parser.parse_args(["--register-seg", "flag_seg", images, labels, str(tmp_path / "classes.txt"),
                              "--register-seg", "flag_seg2", images, labels, "road,car,sky",
                              "--domains", str(tmp_path / "domains.yaml")])
    assert register_domains_from_args(args) == ["yaml_seg", "flag_seg", "flag_seg2"]
    for name in ("yaml_seg", "flag_seg", "flag_seg2"):
        assert MetadataCatalog.get(name).stuff_classes == CLASSES and len(DatasetCatalog.get(name)) == 2
    with pytest.raises(FileNotFoundError, match="label_dir folder .* does not exist"):
        register_domains_from_args(parser.parse_args(["--register-seg", "x", images, str(tmp_path / "nope"), "a,b"]))


# -------------------------------------------------------------- benchmarks
def test_benchmark_layouts_map_their_ids_to_cityscapes_train_ids(tmp_path, monkeypatch):
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path))
    ids = np.array([[7, 26, 0], [33, 24, 255]], np.uint8)  # road, car, unlabelled / bicycle, person, ?
    train_ids = [[0, 13, 255], [18, 11, 255]]
    img = np.zeros((2, 3, 3), np.uint8)
    _write(tmp_path / "cityscapes/leftImg8bit/val/aachen/a_000_leftImg8bit.png", img)
    _write(tmp_path / "cityscapes/gtFine/val/aachen/a_000_gtFine_labelIds.png", ids)
    from PIL import Image

    os.makedirs(tmp_path / "gta5/labels")
    _write(tmp_path / "gta5/images/00001.png", img)
    pal = Image.fromarray(ids, mode="P")
    pal.putpalette([v for i in range(256) for v in (i, 255 - i, 7)])
    pal.save(tmp_path / "gta5/labels/00001.png")  # palettised, as GTA5 ships: indices, not colours
    _write(tmp_path / "synthia/RGB/0000000.png", img)
    synthia = np.zeros((2, 3, 3), np.uint16)
    synthia[:, :, 2] = [[3, 8, 0], [11, 10, 99]]  # road, car, void / bicycle, person, unknown (red channel)
    _write(tmp_path / "synthia/GT/LABELS/0000000.png", synthia)
    for cond in ("fog", "night", "rain", "snow"):
        _write(tmp_path / f"acdc/rgb_anon/{cond}/val/GOPR0475/x_{cond}_rgb_anon.png", img)
        _write(tmp_path / f"acdc/gt/{cond}/val/GOPR0475/x_{cond}_gt_labelIds.png", ids)
    _write(tmp_path / "dark_zurich/rgb_anon/val/night/GOPR0356/d_rgb_anon.png", img)
    _write(tmp_path / "dark_zurich/gt/val/night/GOPR0356/d_gt_labelIds.png", ids)
    _write(tmp_path / "dark_zurich/rgb_anon/train/night/GOPR0351/t_rgb_anon.png", img)
    from mic_det.segmentation.labels import read_dataset_label

    expect = {"cityscapes_seg_val": train_ids, "gta5_seg_train": train_ids, "acdc_seg_fog_val": train_ids,
              "acdc_seg_all_val": train_ids, "dark_zurich_seg_val": train_ids,
              "synthia_seg_train": [[0, 13, 255], [18, 11, 255]]}
    for name, want in expect.items():
        records = DatasetCatalog.get(name)
        assert read_dataset_label(name, records[0]["sem_seg_file_name"]).tolist() == want, name
    assert len(DatasetCatalog.get("acdc_seg_all_val")) == 4
    assert "sem_seg_file_name" not in DatasetCatalog.get("dark_zurich_seg_train")[0]

    # Detectron2's SemSegEvaluator through the dataset's rules: a perfect prediction scores 100,
    # and the SYNTHIA subsets (16 / 13 classes) are reported next to the 19-class mIoU.
    ev = SegReportEvaluator("cityscapes_seg_val", str(tmp_path / "out"), figure_images=1, distributed=False)
    ev.reset()
    record = DatasetCatalog.get("cityscapes_seg_val")[0]
    pred = torch.zeros(19, 2, 3)
    for (r, c), k in np.ndenumerate(np.array(train_ids)):
        pred[k if k < 19 else 0, r, c] = 1
    ev.process([record], [{"sem_seg": pred}])
    res = ev.evaluate()["sem_seg"]
    assert res["mIoU"] == pytest.approx(100) and res["mIoU16"] == pytest.approx(100) and "mIoU13" in res
    assert os.path.isfile(tmp_path / "out" / "seg_examples_student_cityscapes_seg_val_iter-1.png")
