"""The built-in procedural domains: clear -> foggy and clear -> night, generated on first use."""
import filecmp
import importlib.util
import json
import logging
import multiprocessing
import os

import cv2
import numpy as np
import pytest

from mic_det.data.low_light import LowLight
from mic_det.data.synthetic import (
    DEFAULT_NIGHT,
    NIGHT_SPLITS,
    SPLITS,
    SYNTHETIC_CLASSES,
    ensure_synthetic_set,
    generate_scene,
    read_domain_pair_info,
    read_night_info,
    register_synthetic_pair,
    write_domain_pair,
)

H, W = 64, 96
TINY = dict(num_source_train=3, num_source_val=2, num_target_train=3, num_target_val=2, height=H, width=W)
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _scenes(n, height=H, width=W, beta=0.0, seed=0):
    return [generate_scene(np.random.default_rng([seed, i]), height, width, beta=beta) for i in range(n)]


@pytest.fixture(scope="module")
def scenes():
    return _scenes(30)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("pair"))
    return root, write_domain_pair(root, seed=0, **TINY)


def test_classes_are_fixed():
    assert SYNTHETIC_CLASSES == ("person", "rider", "car", "truck", "bus", "bicycle")


def test_scene_outputs(scenes):
    for image, depth, anns in scenes:
        assert image.shape == (H, W, 3) and image.dtype == np.uint8
        assert depth.shape == (H, W) and depth.dtype == np.float32
        assert np.all(depth > 0)
        assert 2 <= len(anns) <= 10
        for a in anns:
            x, y, w, h = a["bbox"]
            assert w > 0 and h > 0
            assert x >= 0 and y >= 0 and x + w <= W and y + h <= H
            assert 1 <= a["category_id"] <= len(SYNTHETIC_CLASSES)
            assert a["iscrowd"] == 0 and a["area"] == w * h
            assert h >= 6 and w * h >= 36
            assert a["visible_fraction"] >= 0.3 - 1e-6


def test_boxes_are_the_visible_extent_of_their_object(scenes):
    """Each object's pixels carry its own depth: their bounding box is the annotation."""
    checked = 0
    for image, depth, anns in scenes:
        for a in anns:
            ys, xs = np.nonzero(depth == np.float32(a["depth"]))
            assert len(xs) > 0, "annotated object has no pixel in the image"
            box = [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
            assert box == a["bbox"]
            checked += 1
    assert checked > 50


def test_objects_are_painted_not_background(scenes):
    """Inside a box, the object's pixels look different from the ground/sky around them."""
    diffs = []
    for image, depth, anns in scenes:
        img = image.astype(np.float32)
        for a in anns:
            x, y, w, h = map(int, a["bbox"])
            obj = depth[y:y + h, x:x + w] == np.float32(a["depth"])
            if obj.all() or obj.sum() < 20:
                continue
            patch = img[y:y + h, x:x + w]
            diffs.append(np.abs(patch[obj].mean(0) - patch[~obj].mean(0)).max())
    assert len(diffs) > 30
    assert np.median(diffs) > 15


def test_all_classes_appear(scenes):
    seen = {a["category_id"] for _, _, anns in scenes for a in anns}
    assert seen == set(range(1, len(SYNTHETIC_CLASSES) + 1))


def test_scale_decreases_with_depth():
    anns = [a for _, _, s in _scenes(40, 128, 160) for a in s if a["visible_fraction"] > 0.98]
    per_class = {}
    for a in anns:
        per_class.setdefault(a["category_id"], []).append((a["depth"], a["bbox"][3]))
    for cat, pts in per_class.items():
        if len(pts) < 6:
            continue
        d, h = np.array(pts).T
        rank = lambda v: np.argsort(np.argsort(v))  # noqa: E731
        rho = np.corrcoef(rank(d), rank(h))[0, 1]
        assert rho < -0.5, f"{SYNTHETIC_CLASSES[cat - 1]}: box height does not shrink with depth"
    heights = np.array([a["bbox"][3] for a in anns])
    assert heights.min() < 20 and heights.max() > 0.4 * 128  # near = big, far = small


def test_same_rng_same_scene_and_fog_only_changes_appearance():
    clear, d0, a0 = generate_scene(np.random.default_rng(5), H, W)
    again, d1, a1 = generate_scene(np.random.default_rng(5), H, W)
    foggy, d2, a2 = generate_scene(np.random.default_rng(5), H, W, beta=0.05)
    np.testing.assert_array_equal(clear, again)
    np.testing.assert_array_equal(d0, d2)
    assert a0 == a1 == a2
    assert not np.array_equal(clear, foggy)


def _contrast(image):
    """Mean edge strength (Sobel of the lightly blurred grey image); fog scales edges by t."""
    grey = cv2.GaussianBlur(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(np.float32), (5, 5), 1.0)
    return float(np.hypot(cv2.Sobel(grey, cv2.CV_32F, 1, 0), cv2.Sobel(grey, cv2.CV_32F, 0, 1)).mean())


def _rms(patch):
    return float(cv2.cvtColor(patch, cv2.COLOR_RGB2GRAY).std())


def test_fog_lowers_contrast_most_for_far_objects():
    near_ratio, far_ratio = [], []
    for i in range(15):
        clear, depth, anns = generate_scene(np.random.default_rng([1, i]), 128, 160)
        foggy, _, _ = generate_scene(np.random.default_rng([1, i]), 128, 160, beta=0.04)
        assert _contrast(foggy) < 0.8 * _contrast(clear)
        for a in anns:
            x, y, w, h = map(int, a["bbox"])
            c0, c1 = _rms(clear[y:y + h, x:x + w]), _rms(foggy[y:y + h, x:x + w])
            if c0 > 5:
                (near_ratio if a["depth"] < 15 else far_ratio if a["depth"] > 40 else []).append(c1 / c0)
    assert near_ratio and far_ratio
    assert np.median(near_ratio) > 0.5  # near objects stay visible ...
    assert np.median(far_ratio) < np.median(near_ratio) - 0.2  # ... far ones fade


def test_written_pair_layout(pair):
    root, jsons = pair
    assert set(jsons) == set(SPLITS) | set(NIGHT_SPLITS)
    info = read_domain_pair_info(root)
    assert info is not None and info["splits"]["source_train"] == 3 and info["beta"] > 0
    night = read_night_info(root, info)
    assert night is not None and night["splits"] == {"night_train": 3, "night_val": 2}
    assert night["night"] == DEFAULT_NIGHT.as_dict()
    for split in SPLITS + NIGHT_SPLITS:
        with open(jsons[split]) as f:
            coco = json.load(f)
        assert [c["id"] for c in coco["categories"]] == [1, 2, 3, 4, 5, 6]
        assert [c["name"] for c in coco["categories"]] == list(SYNTHETIC_CLASSES)
        assert len(coco["images"]) == TINY["num_" + split.replace("night", "target")]
        assert len(coco["annotations"]) >= 2 * len(coco["images"])
        for im in coco["images"]:
            assert os.path.isfile(os.path.join(root, split, im["file_name"]))
        ids = [a["id"] for a in coco["annotations"]]
        assert len(set(ids)) == len(ids)


def test_foggy_splits_have_lower_contrast(tmp_path):
    root = str(tmp_path)
    write_domain_pair(root, seed=3, **dict(TINY, num_source_train=6, num_target_train=6))

    def mean_contrast(split):
        folder = os.path.join(root, split)
        images = [cv2.imread(os.path.join(folder, n))[:, :, ::-1] for n in os.listdir(folder)]
        return np.mean([_contrast(im) for im in images])

    assert mean_contrast("target_train") < 0.8 * mean_contrast("source_train")


def _same_file(a, b):
    return filecmp.cmp(a, b, shallow=False)


def test_writing_is_deterministic_and_seeded_per_image(pair, tmp_path):
    root, _ = pair
    same = str(tmp_path / "same")
    write_domain_pair(same, seed=0, num_workers=2, **TINY)  # parallel drawing changes nothing
    cmp = filecmp.dircmp(root, same)
    assert not cmp.left_only and not cmp.right_only
    assert _same_file(os.path.join(root, "info.json"), os.path.join(same, "info.json"))
    for sub in ["annotations"] + list(SPLITS):
        for name in sorted(os.listdir(os.path.join(root, sub))):
            assert _same_file(os.path.join(root, sub, name), os.path.join(same, sub, name)), name

    other = str(tmp_path / "other")
    write_domain_pair(other, seed=1, **TINY)
    for split in ("source_train", "target_val"):
        first = os.path.join(split, "000000.png")
        assert not _same_file(os.path.join(root, first), os.path.join(other, first))

    bigger = str(tmp_path / "bigger")  # a split's size changes no other image
    write_domain_pair(bigger, seed=0, **dict(TINY, num_source_train=5))
    for split, n in (("source_train", 3), ("source_val", 2), ("target_train", 3)):
        for i in range(n):
            name = f"{i:06d}.png"
            assert _same_file(os.path.join(root, split, name), os.path.join(bigger, split, name))


def test_registration_round_trips_through_the_catalog(pair):
    from detectron2.data import DatasetCatalog, MetadataCatalog

    root, _ = pair
    names = register_synthetic_pair(root, prefix="t_synth")
    assert names == ["t_synth_clear_train", "t_synth_clear_val", "t_synth_foggy_train", "t_synth_foggy_val",
                     "t_synth_night_train", "t_synth_night_val"]
    counts = dict(zip(names, [3, 2, 3, 2, 3, 2]))
    for name in names:
        records = DatasetCatalog.get(name)
        assert len(records) == counts[name]
        meta = MetadataCatalog.get(name)
        assert list(meta.thing_classes) == list(SYNTHETIC_CLASSES)
        assert meta.domain == name.split("_")[2]
        for r in records:
            assert os.path.isfile(r["file_name"]) and (r["height"], r["width"]) == (H, W)
            assert r["annotations"]
            assert all(0 <= a["category_id"] < 6 for a in r["annotations"])


def test_night_scenes_are_the_target_scenes_at_night(pair):
    """Image i of night_train is image i of target_train: same boxes, darker pixels."""
    root, jsons = pair
    for night_split, target_split in (("night_train", "target_train"), ("night_val", "target_val")):
        with open(jsons[night_split]) as f, open(jsons[target_split]) as g:
            night, target = json.load(f), json.load(g)
        assert night["annotations"] == target["annotations"]
        clear = [generate_scene(np.random.default_rng([0, SPLITS.index(target_split), i]), H, W)[0]
                 for i in range(len(night["images"]))]
        dark = [cv2.imread(os.path.join(root, night_split, im["file_name"]))[:, :, ::-1] for im in night["images"]]
        assert np.mean([d.mean() for d in dark]) < 0.6 * np.mean([c.mean() for c in clear])


def test_without_generation_a_missing_set_says_how_to_make_it(tmp_path):
    from detectron2.data import DatasetCatalog

    names = register_synthetic_pair(str(tmp_path / "nothing"), prefix="t_missing", generate=False)
    with pytest.raises(FileNotFoundError, match="make_synthetic.py --root"):
        DatasetCatalog.get(names[0])
    assert not os.path.exists(tmp_path / "nothing")


SMALL = dict(num_source_train=2, num_source_val=1, num_target_train=2, num_target_val=1, height=48, width=64)


@pytest.fixture
def log_lines(caplog):
    caplog.set_level(logging.INFO, logger="mic_det.data.synthetic")
    return lambda: [r.getMessage() for r in caplog.records]


def test_loading_a_missing_set_generates_it_once(tmp_path, log_lines):
    from detectron2.data import DatasetCatalog

    root = tmp_path / "fresh"
    names = register_synthetic_pair(str(root), prefix="t_fresh", params=SMALL)
    records = DatasetCatalog.get("t_fresh_clear_train")
    assert len(records) == 2 and all(os.path.isfile(r["file_name"]) for r in records)
    generated = [m for m in log_lines() if "generating it now" in m]
    assert len(generated) == 1 and str(root) in generated[0]
    assert read_domain_pair_info(str(root))["splits"]["source_train"] == 2
    assert read_night_info(str(root)) is not None  # the whole set, night included
    stamp = os.path.getmtime(root / "info.json")
    for name in names:
        assert DatasetCatalog.get(name)
    assert os.path.getmtime(root / "info.json") == stamp
    assert len([m for m in log_lines() if "generating" in m]) == 1
    assert any("Using the built-in synthetic set" in m and "[not the defaults]" in m for m in log_lines())


def test_a_complete_set_is_used_whatever_its_parameters(tmp_path, log_lines):
    root = str(tmp_path / "other")
    write_domain_pair(root, seed=4, beta=0.07, night=None, **SMALL)
    stamp = os.path.getmtime(os.path.join(root, "info.json"))
    pair, night = ensure_synthetic_set(root, params=dict(SMALL, beta=0.01))
    assert pair["beta"] == 0.07 and pair["seed"] == 4 and night is None
    assert os.path.getmtime(os.path.join(root, "info.json")) == stamp
    assert not any("generating" in m for m in log_lines())
    assert any("beta 0.07" in m for m in log_lines())


def test_missing_night_splits_are_added_for_the_sets_own_scenes(tmp_path, log_lines):
    root = str(tmp_path / "no_night")
    write_domain_pair(root, seed=4, night=None, **SMALL)
    before = {s: sorted(os.listdir(os.path.join(root, s))) for s in SPLITS}
    stamps = {(s, n): os.path.getmtime(os.path.join(root, s, n)) for s in SPLITS for n in before[s]}
    pair, night = ensure_synthetic_set(root, night=True)
    assert night is not None and night["seed"] == 4 and night["splits"] == {"night_train": 2, "night_val": 1}
    assert any("no night splits: generating them now" in m for m in log_lines())
    assert not any("not in" in m for m in log_lines())
    for s in SPLITS:  # the clear and foggy images were not touched
        for n in before[s]:
            assert os.path.getmtime(os.path.join(root, s, n)) == stamps[s, n]
    reference = str(tmp_path / "reference")
    write_domain_pair(reference, seed=4, **SMALL)
    assert _same_file(os.path.join(root, "night_val", "000000.png"), os.path.join(reference, "night_val", "000000.png"))


def test_a_damaged_set_is_redrawn_with_its_own_parameters(tmp_path, log_lines):
    root = str(tmp_path / "damaged")
    write_domain_pair(root, seed=5, beta=0.06, night=LowLight(exposure=0.3), **SMALL)
    os.remove(os.path.join(root, "source_val", "000000.png"))
    os.remove(os.path.join(root, "night_val", "000000.png"))
    pair, night = ensure_synthetic_set(root, night=True)
    assert (pair["seed"], pair["beta"], night["night"]["exposure"]) == (5, 0.06, 0.3)
    assert os.path.isfile(os.path.join(root, "source_val", "000000.png"))
    assert any("generating it now" in m for m in log_lines())


def test_generation_refuses_a_folder_with_other_files(tmp_path):
    root = tmp_path / "mine"
    root.mkdir()
    (root / "holiday.jpg").write_bytes(b"x")
    with pytest.raises(FileExistsError, match="holiday.jpg"):
        ensure_synthetic_set(str(root), params=SMALL)
    assert sorted(os.listdir(root)) == [".generate.lock", "holiday.jpg"]


def _load_in_child(root, queue):
    records = []
    handler = logging.Handler()
    handler.emit = lambda r: records.append(r.getMessage())
    log = logging.getLogger("mic_det.data.synthetic")
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    ensure_synthetic_set(root, night=True, params=SMALL)
    queue.put(sum("generating it now" in m for m in records))


def test_two_processes_loading_at_once_generate_once(tmp_path):
    root = str(tmp_path / "race")
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_load_in_child, args=(root, queue)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert all(p.exitcode == 0 for p in procs)
    assert sorted(queue.get(timeout=5) for _ in procs) == [0, 1]
    assert read_night_info(root, read_domain_pair_info(root)) is not None


def _cli():
    path = os.path.join(REPO, "tools", "make_synthetic.py")
    spec = importlib.util.spec_from_file_location("make_synthetic", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cli_reuses_refuses_and_overwrites(tmp_path, capsys):
    main = _cli().main
    root = str(tmp_path / "cli")
    args = ["--root", root, "--height", "48", "--width", "64", "--workers", "0", "--num-source-train", "2",
            "--num-source-val", "1", "--num-target-train", "2", "--num-target-val", "1"]
    assert main(args) == 0
    assert "Wrote" in capsys.readouterr().out
    stamp = os.path.getmtime(os.path.join(root, "info.json"))
    assert main(args) == 0
    assert "already" in capsys.readouterr().out
    assert os.path.getmtime(os.path.join(root, "info.json")) == stamp
    assert main(args + ["--beta", "0.07"]) == 1
    assert "--overwrite" in capsys.readouterr().err
    assert main(args + ["--beta", "0.07", "--overwrite"]) == 0
    assert read_domain_pair_info(root)["beta"] == 0.07
    os.remove(os.path.join(root, "source_train", "000001.png"))  # a damaged set is not reused
    assert read_domain_pair_info(root) is None


def test_cli_night_options(tmp_path, capsys):
    main = _cli().main
    root = str(tmp_path / "cli_night")
    args = ["--root", root, "--height", "48", "--width", "64", "--workers", "0", "--num-source-train", "1",
            "--num-source-val", "1", "--num-target-train", "1", "--num-target-val", "1"]
    assert main(args + ["--no-night"]) == 0
    assert read_night_info(root) is None
    assert main(args + ["--night-exposure", "0.1"]) == 0  # the same pair: night splits added
    assert "Added night splits" in capsys.readouterr().out
    assert read_night_info(root)["night"]["exposure"] == 0.1
    assert main(args + ["--night-exposure", "0.1"]) == 0
    assert "nothing to do" in capsys.readouterr().out
    assert main(args) == 1  # other night parameters
    assert "--overwrite" in capsys.readouterr().err
    assert main(args + ["--overwrite", "--night-read-noise", "6"]) == 0
    assert read_night_info(root)["night"]["read_noise"] == 6.0
    with pytest.raises(SystemExit):
        main(args + ["--night-lamp-distance", "0"])
