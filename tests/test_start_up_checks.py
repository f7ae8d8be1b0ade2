"""The start-up checks of tools/train_net.py (mic_det/data/checks.py): each bad input fails before the model is built,
naming the dataset and the file or config key."""
import os

import cv2
import numpy as np
import pytest

from mic_det.config_loading import build_config
from mic_det.data.checks import check_test_images, check_training_sets
from mic_det.data.domains import image_size, register_coco_domain
from mic_det.segmentation.datasets import register_seg_domain

from .conftest import REPO
from .test_domains import write_coco


def _truncate(path):
    """Keep the first 60% of ``path``: its header still reads, its pixels do not decode."""
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(data[: len(data) * 6 // 10])


def _noise(path, h=30, w=40):
    assert cv2.imwrite(str(path), np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8))


def test_a_truncated_test_image_fails_at_start_up_naming_it_and_its_dataset(tmp_path):
    json_file, image_root = write_coco(tmp_path)
    _noise(os.path.join(image_root, "sub", "b.jpg"))
    _truncate(os.path.join(image_root, "sub", "b.jpg"))
    assert image_size(os.path.join(image_root, "sub", "b.jpg")) == (30, 40)  # the header alone passes
    register_coco_domain("val_truncated", json_file, image_root)
    cfg = build_config(None, ["DATASETS.TEST", "('val_truncated',)"])
    with pytest.raises(ValueError, match=r"val_truncated: .*sub/b\.jpg: unreadable \(OSError: image file is truncated"):
        check_test_images(cfg)


def test_every_label_of_a_segmentation_test_set_is_read_at_start_up(tmp_path, monkeypatch):
    import mic_det.segmentation.datasets as seg_datasets

    monkeypatch.setattr(seg_datasets, "NUM_PAIRS_CHECKED", 1)  # loading reads the first pair only
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    for i in range(3):
        _noise(tmp_path / "images" / f"{i}.jpg")
        label = np.random.default_rng(i).integers(0, 3, (30, 40), dtype=np.uint8)
        assert cv2.imwrite(str(tmp_path / "labels" / f"{i}.png"), label if i != 2 else label[:20])
    _truncate(tmp_path / "labels" / "1.png")
    register_seg_domain("val_seg_labels", tmp_path / "images", tmp_path / "labels", ["road", "car", "sky"])
    cfg = build_config(None, ["DATASETS.TEST", "('val_seg_labels',)"])
    with pytest.raises(ValueError) as e:
        check_test_images(cfg)
    assert "2 test image(s) of DATASETS.TEST cannot be evaluated" in str(e.value)
    assert "val_seg_labels: Cannot read label" in str(e.value) and "1.png" in str(e.value)
    assert "2.png is 20x40 (h x w) but its image is 30x40" in str(e.value)


def test_an_empty_target_folder_fails_before_the_model_is_built(tiny_pair, tmp_path):
    from .conftest import run_train_net

    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    proc = run_train_net(
        ["--config-file", "configs/synthetic/mic.yaml", "--register-folder", "empty_target", str(tmp_path / "empty"),
         "DATASETS.TRAIN_TARGET", "('empty_target',)"], tmp_path / "run", tiny_pair, check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "DATASETS.TRAIN_TARGET: Dataset 'empty_target'" in proc.stderr and str(tmp_path / "empty") in proc.stderr
    assert "Model:" not in proc.stdout + proc.stderr  # found before the model is built


def test_a_training_set_without_images_is_named_with_its_key_and_files(tmp_path):
    import json

    (tmp_path / "images").mkdir()
    (tmp_path / "empty.json").write_text(json.dumps({"images": [], "annotations": [], "categories": []}))
    register_coco_domain("no_images", tmp_path / "empty.json", tmp_path / "images")
    cfg = build_config(None, ["DATASETS.TRAIN_TARGET", "('no_images',)"])
    with pytest.raises(ValueError, match=r"DATASETS.TRAIN_TARGET: dataset 'no_images' has no images \(image_root .*images, "
                                         r"json_file .*empty\.json\)"):
        check_training_sets(cfg)


def test_a_task_that_does_not_fit_the_config_and_datasets_is_named_with_the_mismatch(tmp_path):
    from mic_det.data.checks import check_domain_classes

    json_file, image_root = write_coco(tmp_path)
    register_coco_domain("boxes_for_seg", json_file, image_root)
    cfg = build_config(os.path.join(REPO, "configs", "synthetic", "source_only.yaml"), [
        "DATASETS.TRAIN", "('boxes_for_seg',)", "DATASETS.TEST", "()", "MODEL.TASK", "SegmentationTask"])
    with pytest.raises(ValueError) as e:
        check_domain_classes(cfg)
    message = str(e.value)
    assert "MODEL.TASK SegmentationTask does not fit" in message and "no stuff_classes" not in message
    assert "MODEL.META_ARCHITECTURE DomainAdaptiveRCNN is a network of DetectionTask" in message
    assert "DATASETS.TRAIN: 'boxes_for_seg' is a detection dataset" in message and "MODEL.TASK DetectionTask" in message

    (tmp_path / "seg" / "images").mkdir(parents=True)
    (tmp_path / "seg" / "labels").mkdir()
    _noise(tmp_path / "seg" / "images" / "0.jpg")
    assert cv2.imwrite(str(tmp_path / "seg" / "labels" / "0.png"), np.zeros((30, 40), np.uint8))
    register_seg_domain("seg_for_rcnn", tmp_path / "seg" / "images", tmp_path / "seg" / "labels", ["road", "car", "sky"])
    cfg = build_config(os.path.join(REPO, "configs", "synthetic_seg", "source_only.yaml"), [
        "DATASETS.TRAIN", "('seg_for_rcnn',)", "DATASETS.TEST", "()", "MODEL.SEM_SEG_HEAD.NUM_CLASSES", "3",
        "MODEL.META_ARCHITECTURE", "DomainAdaptiveRCNN"])
    with pytest.raises(ValueError, match=r"MODEL.TASK SegmentationTask does not fit .*\n.*MODEL.META_ARCHITECTURE "
                                         r"DomainAdaptiveRCNN is a network of DetectionTask"):
        check_domain_classes(cfg)
