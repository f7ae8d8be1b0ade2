"""Rare-class sampling (SEG.RCS): P(c) by hand, the MIN_PIXELS filter, the sampler's frequencies,
the class-statistics cache, and a short tools/train_net.py run with it on.

The sets are tiny label PNGs (10x10: every count below is a pixel count a reader can check)
written to tmp_path and registered as a user domain.
"""
import itertools
import json
import logging
import math
import os

import cv2
import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog
from detectron2.data.samplers import RepeatFactorTrainingSampler

from mic_det.config_loading import build_config
from mic_det.data.build import ResumableSampler
from mic_det.segmentation import rcs
from mic_det.segmentation.datasets import register_seg_domain
from mic_det.segmentation.rcs import build_rcs_sampler, image_class_counts, rare_class_distribution, rcs_cache_path
from mic_det.segmentation.synthetic import write_seg_pair
from mic_det.segmentation.task import SegmentationTask

from .conftest import REPO, read_metrics, run_train_net

CLASSES = ["road", "car", "sky"]
ROAD, CAR, SKY, IGNORE = 0, 1, 2, 255

# Per image: (class, pixels) runs filling a 10x10 label in row-major order.
HAND_SET = [
    [(ROAD, 90), (CAR, 10)],
    [(ROAD, 100)],
    [(ROAD, 60), (SKY, 40)],
    [(ROAD, 50), (SKY, 45), (IGNORE, 5)],  # ignored pixels count for no class
]


def _write_set(root, images, name):
    """10x10 images + labels (value i = CLASSES[i], 255 = unlabelled) registered as seg domain ``name``."""
    rng = np.random.default_rng(0)
    for folder in ("images", "labels"):
        os.makedirs(os.path.join(root, folder), exist_ok=True)
    for i, runs in enumerate(images):
        label = np.concatenate([np.full(n, c, np.uint8) for c, n in runs]).reshape(10, 10)
        assert cv2.imwrite(os.path.join(root, "labels", f"{i}.png"), label)
        assert cv2.imwrite(os.path.join(root, "images", f"{i}.png"), rng.integers(0, 255, (10, 10, 3), np.uint8))
    register_seg_domain(name, os.path.join(root, "images"), os.path.join(root, "labels"), CLASSES)
    return DatasetCatalog.get(name)


def _cfg(output_dir, *opts):
    return build_config(os.path.join(REPO, "configs", "synthetic_seg", "source_only.yaml"),
                        ["OUTPUT_DIR", str(output_dir), "DATALOADER.NUM_WORKERS", "0", "SEG.RCS.ENABLED", "True",
                         "SEG.RCS.MIN_PIXELS", "8", *opts])


def test_rcs_probabilities_and_image_weights_match_a_hand_computation(tmp_path):
    dicts = _write_set(tmp_path, HAND_SET, "rcs_hand")
    counts = image_class_counts(dicts)
    assert counts == [{ROAD: 90, CAR: 10}, {ROAD: 100}, {ROAD: 60, SKY: 40}, {ROAD: 50, SKY: 45}]
    dist = rare_class_distribution(counts, temperature=0.1, min_pixels=8)
    # f = 300/395, 10/395, 85/395; P(c) = exp((1 - f_c) / 0.1) / sum over the three.
    e_road, e_car, e_sky = math.exp(950 / 395), math.exp(3850 / 395), math.exp(3100 / 395)
    z = e_road + e_car + e_sky
    assert dist.classes == [ROAD, CAR, SKY]
    assert dist.frequencies == pytest.approx([300 / 395, 10 / 395, 85 / 395])
    assert dist.probs == pytest.approx([e_road / z, e_car / z, e_sky / z])
    assert dist.images == [[0, 1, 2, 3], [0], [2, 3]]
    # w_i = sum over i's classes of P(c) / n_c: road is in 4 images, car in 1, sky in 2.
    p_road, p_car, p_sky = e_road / z, e_car / z, e_sky / z
    w = dist.image_weights(4)
    assert w == pytest.approx([p_road / 4 + p_car, p_road / 4, p_road / 4 + p_sky / 2, p_road / 4 + p_sky / 2])
    assert w.sum() == pytest.approx(1.0)
    # The reference's temperature: the rarest class takes nearly everything.
    assert rare_class_distribution(counts, 0.01, 8).probs[1] > 0.999


def test_rcs_min_pixels_filters_candidate_images_not_frequencies(tmp_path, caplog):
    counts = image_class_counts(_write_set(tmp_path, HAND_SET, "rcs_min"))
    full = rare_class_distribution(counts, 0.1, 8)
    # More than 40 pixels, strictly (the reference's >): car (10) is never a candidate, nor image 2's sky (40).
    dist = rare_class_distribution(counts, 0.1, 40)
    assert dist.classes == [ROAD, SKY] and dist.dropped == [CAR]
    assert dist.images == [[0, 1, 2, 3], [3]]
    assert dist.frequencies == pytest.approx([300 / 395, 85 / 395])  # car's pixels still count in f
    assert dist.probs == pytest.approx(full.probs[[0, 2]] / full.probs[[0, 2]].sum())  # P renormalised
    assert rare_class_distribution(counts, 0.1, 10).dropped == [CAR]  # exactly MIN_PIXELS is not enough
    with pytest.raises(ValueError, match="MIN_PIXELS"):
        rare_class_distribution(counts, 0.1, 100)
    with caplog.at_level(logging.WARNING, logger="mic_det.segmentation.rcs"):
        build_rcs_sampler(_cfg(tmp_path / "out", "SEG.RCS.MIN_PIXELS", "40"),
                          DatasetCatalog.get("rcs_min"))
    assert "more than SEG.RCS.MIN_PIXELS pixels of car" in caplog.text


def test_rcs_sampler_class_frequencies_approach_p(tmp_path):
    """Each image holds one class above MIN_PIXELS (20), so every draw names its class."""
    one_class = [[(ROAD, 100)], [(ROAD, 100)], [(ROAD, 100)],
                 [(CAR, 90), (ROAD, 10)], [(SKY, 85), (ROAD, 15)], [(SKY, 95), (CAR, 5)]]
    dicts = _write_set(tmp_path, one_class, "rcs_one_class")
    cfg = _cfg(tmp_path / "out", "SEG.RCS.MIN_PIXELS", "20", "SEG.RCS.TEMPERATURE", "0.1")
    np.random.seed(0)  # Detectron2's shared seed of the sampler
    sampler = SegmentationTask(cfg).build_source_sampler(cfg, dicts)
    assert isinstance(sampler, RepeatFactorTrainingSampler)
    dist = rare_class_distribution(image_class_counts(dicts), 0.1, 20)
    e = [math.exp((1 - n / 600) / 0.1) for n in (325, 95, 180)]  # road, car, sky pixels of 600
    assert dist.probs == pytest.approx([x / sum(e) for x in e])  # ~0.017, 0.791, 0.192
    k = 20000
    draws = np.fromiter(itertools.islice(iter(sampler), k), dtype=np.int64, count=k)
    image_class = np.array([ROAD, ROAD, ROAD, CAR, SKY, SKY])
    freq = np.bincount(image_class[draws], minlength=3) / k
    sigma = np.sqrt(dist.probs * (1 - dist.probs) / k)  # binomial standard error of each share
    assert np.all(np.abs(freq - dist.probs) < 5 * sigma + 1e-3), (freq, dist.probs)
    images = np.bincount(draws, minlength=6) / k
    assert images[3] == pytest.approx(dist.probs[1], abs=0.015)  # the only car image
    assert images[:3] == pytest.approx([dist.probs[0] / 3] * 3, abs=0.01)  # road split evenly
    off = _cfg(tmp_path / "out", "SEG.RCS.ENABLED", "False")
    assert SegmentationTask(off).build_source_sampler(off, dicts) is None  # Detectron2's own sampler
    clash = _cfg(tmp_path / "out", "DATALOADER.SAMPLER_TRAIN", "RepeatFactorTrainingSampler")
    with pytest.raises(ValueError, match="SAMPLER_TRAIN"):
        SegmentationTask(clash).build_source_sampler(clash, dicts)
    # Resumable: skipping n indices continues the same stream.
    resumable = ResumableSampler(sampler)
    resumable.skip = 7
    assert list(itertools.islice(iter(resumable), 5)) == draws[7:12].tolist()


def test_rcs_class_statistics_are_cached_and_reused_without_reading_labels(tmp_path, monkeypatch, caplog):
    dicts = _write_set(tmp_path / "set", HAND_SET, "rcs_cached")
    out = tmp_path / "out"
    first = build_rcs_sampler(_cfg(out), dicts)
    path = rcs_cache_path(str(out), ["rcs_cached"])
    assert os.path.basename(path) == "rcs_class_stats_rcs_cached.json"
    data = json.loads(open(path).read())
    assert data["class_counts"][0] == {"0": 90, "1": 10} and data["files"][1].endswith("1.png")

    def no_reading(*args, **kwargs):
        raise AssertionError("a label was read although the cache holds its counts")

    monkeypatch.setattr(rcs, "read_dataset_label", no_reading)
    with caplog.at_level(logging.INFO, logger="mic_det.segmentation.rcs"):
        again = build_rcs_sampler(_cfg(out), dicts)
        other_threshold = build_rcs_sampler(_cfg(out, "SEG.RCS.MIN_PIXELS", "40"), dicts)  # no re-read either
    assert "read from" in caplog.text
    assert torch.equal(again._frac_part, first._frac_part) and torch.equal(again._int_part, first._int_part)
    assert not torch.equal(other_threshold._frac_part, first._frac_part)
    # The same name over other label files: the cache is stale and the labels are read again.
    stale = _write_set(tmp_path / "other", HAND_SET[:2], "rcs_cached")
    with pytest.raises(AssertionError, match="a label was read"):
        build_rcs_sampler(_cfg(out), stale)


@pytest.mark.slow  # a subprocess or a training run
def test_rcs_source_only_config_trains_with_train_net(tmp_path):
    """configs/synthetic_seg/source_only.yaml with SEG.RCS.ENABLED True: 3 steps, the log line, the cache."""
    root = tmp_path / "pair"
    write_seg_pair(str(root), num_source_train=6, num_source_val=2, num_target_train=2, num_target_val=2,
                   height=64, width=80)
    out = tmp_path / "run"
    proc = run_train_net(["--config-file", "configs/synthetic_seg/source_only.yaml", "SEG.RCS.ENABLED", "True",
                          "SEG.RCS.MIN_PIXELS", "10", "SEG.SYNTHETIC_ROOT", str(root), "SOLVER.MAX_ITER", "3",
                          "INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MIN_SIZE_TEST", "64", "DATASETS.TEST", "()"],
                         out, root)
    log = proc.stdout + proc.stderr
    assert "RCS: P(class)" in log and "RCS: reading 6 source labels" in log
    assert (out / "rcs_class_stats_synthetic_seg_clear_train.json").is_file()
    assert [m["iteration"] for m in read_metrics(out) if "total_loss" in m][-1] == 2
