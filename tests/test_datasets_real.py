"""Loaders of the real DAOD benchmarks, on small fake trees in their real layouts.

No dataset can be downloaded here, so each test writes a few tiny images and
label files exactly where the real releases put them.
"""

import json
import os

import cv2
import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode

import mic_det.data.builtin  # noqa: F401  (registers the benchmark names)
from mic_det.data import cityscapes, daod
from mic_det.data.builtin import BUILTIN_DAOD_DATASETS

W, H = 64, 32
CLASSES8 = ["person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle"]


def _png(path, w=W, h=H, value=100):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    cv2.imwrite(path, np.full((h, w, 3), value, np.uint8))


def _poly(x0, y0, x1, y1):
    return [[x0, y0], [x1, y0], [x1, y1], [x0, y1]]


# Per frame: objects in the polygon json. The first frame covers every rule.
FRAMES = {
    ("train", "aachen", "aachen_000000_000019"): [
        {"label": "person", "polygon": _poly(2, 3, 10, 20)},
        {"label": "person", "polygon": _poly(12, 3, 14, 9)},
        {"label": "persongroup", "polygon": _poly(20, 3, 30, 20)},  # ignored
        {"label": "car", "polygon": _poly(40, 10, 80, 40)},  # clipped to the image
        {"label": "car", "polygon": _poly(70, 0, 90, 10)},  # fully outside: dropped
        {"label": "road", "polygon": _poly(0, 20, 63, 31)},  # not a thing
        {"label": "rider", "polygon": _poly(5, 5, 8, 8), "deleted": 1},  # deleted
        {"label": "bicycle", "polygon": [[30, 12], [35, 25], [28, 20]]},
        {"label": "train", "polygon": _poly(0, 0, 5, 5)},
    ],
    ("train", "bochum", "bochum_000000_000313"): [
        {"label": "rider", "polygon": _poly(1, 1, 9, 9)},
        {"label": "cargroup", "polygon": _poly(1, 1, 9, 9)},
    ],
    ("val", "frankfurt", "frankfurt_000000_000294"): [
        {"label": "bus", "polygon": _poly(10, 10, 20, 20)},
        {"label": "motorcycle", "polygon": _poly(30, 10, 40, 20)},
        {"label": "truck", "polygon": _poly(41, 10, 50, 20)},
    ],
}


def write_cityscapes(root):
    base = os.path.join(root, "cityscapes")
    for (split, city, frame), objects in FRAMES.items():
        gt = os.path.join(base, "gtFine", split, city, frame + "_gtFine_polygons.json")
        os.makedirs(os.path.dirname(gt), exist_ok=True)
        with open(gt, "w") as f:
            json.dump({"imgHeight": H, "imgWidth": W, "objects": objects}, f)
        _png(os.path.join(base, "leftImg8bit", split, city, frame + "_leftImg8bit.png"))
        for beta in ("0.005", "0.01", "0.02"):
            _png(
                os.path.join(
                    base,
                    "leftImg8bit_foggy",
                    split,
                    city,
                    f"{frame}_leftImg8bit_foggy_beta_{beta}.png",
                ),
                value=200,
            )
    return root


@pytest.fixture
def cs_root(tmp_path, monkeypatch):
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    return write_cityscapes(str(tmp_path))


def _by_frame(records):
    return {os.path.basename(r["file_name"]).split("_leftImg8bit")[0]: r for r in records}


def test_builtin_names_registered():
    expected = {
        "cityscapes_train",
        "cityscapes_val",
        "cityscapes_car_train",
        "cityscapes7_val",
        "sim10k_car_train",
        "kitti_car_train",
        "bdd100k_daytime_train",
        "bdd100k_daytime_val",
    }
    for split in ("train", "val"):
        for beta in ("0.005", "0.01", "0.02", "all"):
            expected.add(f"cityscapes_foggy_{split}_{beta}")
    assert expected <= set(BUILTIN_DAOD_DATASETS)
    assert expected <= set(DatasetCatalog.list())
    meta = MetadataCatalog.get("cityscapes_foggy_val_0.02")
    assert meta.thing_classes == CLASSES8
    assert meta.evaluator_type == "coco" and meta.domain == "foggy_cityscapes"
    assert meta.fog_beta == 0.02


def test_cityscapes_classes_and_boxes(cs_root):
    recs = _by_frame(DatasetCatalog.get("cityscapes_train"))  # root from the env, at load time
    assert sorted(recs) == ["aachen_000000_000019", "bochum_000000_000313"]
    r = recs["aachen_000000_000019"]
    assert (r["height"], r["width"]) == (H, W)
    names = sorted(CLASSES8[a["category_id"]] for a in r["annotations"])
    assert names == ["bicycle", "car", "person", "person", "train"]
    assert all(a["bbox_mode"] == BoxMode.XYXY_ABS and a["iscrowd"] == 0 for a in r["annotations"])
    boxes = {CLASSES8[a["category_id"]]: a["bbox"] for a in r["annotations"]}
    assert boxes["car"] == [40.0, 10.0, float(W), float(H)]  # clipped
    assert boxes["bicycle"] == [28.0, 12.0, 36.0, 26.0]  # polygon extent, far edge + 1
    assert [a["category_id"] for a in recs["bochum_000000_000313"]["annotations"]] == [1]
    val = DatasetCatalog.get("cityscapes_val")
    assert sorted(CLASSES8[a["category_id"]] for a in val[0]["annotations"]) == [
        "bus",
        "motorcycle",
        "truck",
    ]


def test_foggy_pairs_and_all(cs_root):
    clear = _by_frame(DatasetCatalog.get("cityscapes_train"))
    for beta in ("0.005", "0.01", "0.02"):
        foggy = DatasetCatalog.get(f"cityscapes_foggy_train_{beta}")
        assert len(foggy) == len(clear)
        for r in foggy:
            assert r["file_name"].endswith(f"_leftImg8bit_foggy_beta_{beta}.png")
            assert "leftImg8bit_foggy" + os.sep + "train" in r["file_name"]
            assert r["annotations"] == clear[_by_frame([r]).popitem()[0]]["annotations"]
    every = DatasetCatalog.get("cityscapes_foggy_train_all")
    assert len(every) == 3 * len(clear)
    assert len({r["image_id"] for r in every}) == len(every)
    assert len(DatasetCatalog.get("cityscapes_foggy_val_all")) == 3


def test_cityscapes_subsets_remap_ids(cs_root):
    car = DatasetCatalog.get("cityscapes_car_train")
    assert MetadataCatalog.get("cityscapes_car_train").thing_classes == ["car"]
    assert sum(len(r["annotations"]) for r in car) == 1
    assert all(a["category_id"] == 0 for r in car for a in r["annotations"])
    seven = _by_frame(DatasetCatalog.get("cityscapes7_train"))
    classes7 = MetadataCatalog.get("cityscapes7_train").thing_classes
    assert classes7 == ["person", "rider", "car", "truck", "bus", "motorcycle", "bicycle"]
    names = sorted(classes7[a["category_id"]] for a in seven["aachen_000000_000019"]["annotations"])
    assert names == ["bicycle", "car", "person", "person"]  # train is not a shared class


def test_cityscapes_cache_is_used(cs_root, monkeypatch):
    first = DatasetCatalog.get("cityscapes_train")
    cache_dir = os.path.join(cs_root, ".mic_det_cache")
    assert any(f.startswith("cityscapes-gtfine-train") for f in os.listdir(cache_dir))

    def fail(*_):
        raise AssertionError("the polygon jsons were parsed again")

    monkeypatch.setattr(cityscapes, "_parse_gtfine_json", fail)
    assert DatasetCatalog.get("cityscapes_train") == first
    # Editing a label file changes the key: the cache is not used.
    gt = os.path.join(
        cs_root, "cityscapes/gtFine/train/bochum/bochum_000000_000313_gtFine_polygons.json"
    )
    os.utime(gt, ns=(1, 1))
    with pytest.raises(AssertionError, match="parsed again"):
        DatasetCatalog.get("cityscapes_train")


def test_cityscapes_cache_falls_back_and_pool(cs_root, monkeypatch, tmp_path):
    # The dataset root cannot hold the cache (a file is in the way): ~/.cache is used.
    open(os.path.join(cs_root, ".mic_det_cache"), "w").close()
    monkeypatch.setattr(cityscapes, "_POOL_MIN_FILES", 1)  # take the process-pool path
    recs = DatasetCatalog.get("cityscapes_val")
    assert len(recs) == 1
    assert any(
        f.startswith("cityscapes-gtfine-val") for f in os.listdir(tmp_path / "xdg" / "mic_det")
    )


def test_cityscapes_missing_tree(tmp_path, monkeypatch):
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match=r"cityscapes_val.*gtFine.*DETECTRON2_DATASETS"):
        DatasetCatalog.get("cityscapes_val")


def test_cityscapes_image_without_labels(cs_root):
    _png(
        os.path.join(
            cs_root, "cityscapes/leftImg8bit/val/lindau/lindau_000000_000019_leftImg8bit.png"
        )
    )
    with pytest.raises(FileNotFoundError, match="lindau_000000_000019_leftImg8bit.png"):
        DatasetCatalog.get("cityscapes_val")


# --------------------------------------------------------------------- Sim10k
def _voc_xml(objects, w=W, h=H):
    objs = "".join(
        f"<object><name>{n}</name><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin>"
        f"<xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>"
        for n, b in objects
    )
    size = f"<size><width>{w}</width><height>{h}</height><depth>3</depth></size>"
    return f"<annotation>{size}{objs}</annotation>"


def test_sim10k(tmp_path):
    base = tmp_path / "sim10k" / "VOC2012"
    (base / "Annotations").mkdir(parents=True)
    frames = {
        "3384645": [
            ("car", (11, 6, 30, 20)),
            ("person", (1, 1, 5, 9)),
            ("motorbike", (1, 1, 4, 4)),
            ("car", (40, 10, 70, 40)),
        ],
        "3384646": [("car", (1, 1, 1, 5))],  # 1-based corners: becomes [0, 0, 1, 5]
        "3384647": [],
    }
    for stem, objs in frames.items():
        (base / "Annotations" / f"{stem}.xml").write_text(_voc_xml(objs))
        _png(str(base / "JPEGImages" / f"{stem}.jpg"))
    recs = {r["image_id"]: r for r in daod.load_sim10k(root=str(tmp_path))}
    assert sorted(recs) == sorted(frames)
    boxes = [a["bbox"] for a in recs["3384645"]["annotations"]]
    assert boxes == [[10.0, 5.0, 30.0, 20.0], [39.0, 9.0, float(W), float(H)]]
    assert recs["3384646"]["annotations"][0]["bbox"] == [0.0, 0.0, 1.0, 5.0]
    assert recs["3384647"]["annotations"] == []
    assert recs["3384645"]["file_name"].endswith(os.path.join("JPEGImages", "3384645.jpg"))
    assert MetadataCatalog.get("sim10k_car_train").thing_classes == ["car"]


# ---------------------------------------------------------------------- KITTI
def test_kitti_car_only(tmp_path):
    base = tmp_path / "kitti" / "training"
    (base / "label_2").mkdir(parents=True)
    lines = [
        "Car 0.00 0 -1.58 5.5 6.0 20.25 18.0 1.6 1.7 3.9 -0.6 1.9 47.6 -1.6",
        "Van 0.00 0 -1.58 25 6 40 18 1.6 1.7 3.9 -0.6 1.9 47.6 -1.6",
        "Pedestrian 0.00 0 -1.58 2 2 4 10 1.6 1.7 3.9 -0.6 1.9 47.6 -1.6",
        "DontCare -1 -1 -10 50 1 60 10 -1 -1 -1 -1000 -1000 -1000 -10",
        "Car 0.50 1 1.2 55 20 90 31 1.6 1.7 3.9 -0.6 1.9 47.6 -1.6",
    ]
    (base / "label_2" / "000000.txt").write_text("\n".join(lines) + "\n")
    (base / "label_2" / "000001.txt").write_text("")
    _png(str(base / "image_2" / "000000.png"), w=70, h=30)
    _png(str(base / "image_2" / "000001.png"))
    recs = {r["image_id"]: r for r in daod.load_kitti(root=str(tmp_path))}
    r = recs["000000"]
    assert (r["height"], r["width"]) == (30, 70)  # from the PNG header
    assert [a["bbox"] for a in r["annotations"]] == [
        [5.5, 6.0, 20.25, 18.0],
        [55.0, 20.0, 70.0, 30.0],
    ]
    assert recs["000001"]["annotations"] == []


def test_kitti_missing_image(tmp_path):
    base = tmp_path / "kitti" / "training"
    (base / "label_2").mkdir(parents=True)
    (base / "image_2").mkdir(parents=True)
    (base / "label_2" / "000007.txt").write_text("")
    with pytest.raises(FileNotFoundError, match="000007.png"):
        daod.load_kitti(root=str(tmp_path))


# -------------------------------------------------------------------- BDD100k
def test_bdd100k_daytime(tmp_path, monkeypatch):
    base = tmp_path / "bdd100k"
    (base / "labels").mkdir(parents=True)

    def frame(name, tod, labels):
        _png(str(base / "images" / "100k" / "val" / name), w=128, h=72)
        return {
            "name": name,
            "attributes": {"weather": "clear", "scene": "city street", "timeofday": tod},
            "labels": labels,
        }

    def box(cat, x1, y1, x2, y2):
        return {"category": cat, "box2d": {"x1": x1, "y1": y1, "x2": x2, "y2": y2}}

    frames = [
        frame(
            "a.jpg",
            "daytime",
            [
                box("pedestrian", 1, 2, 10, 20),
                box("person", 3, 3, 9, 9),
                box("motor", 20, 20, 30, 30),
                box("bike", 40, 40, 50, 50),
                box("train", 1, 1, 5, 5),
                box("traffic light", 1, 1, 5, 5),
                box("car", 100, 10, 140, 50),
                {"category": "lane", "poly2d": [{"vertices": [[0, 0], [5, 5]]}]},
            ],
        ),
        frame("b.jpg", "night", [box("car", 1, 1, 5, 5)]),
        frame("c.jpg", "dawn/dusk", []),
        frame(
            "d.jpg",
            "daytime",
            [
                box("motorcycle", 1, 1, 5, 5),
                box("bicycle", 6, 6, 9, 9),
                box("rider", 1, 1, 4, 4),
                box("bus", 1, 1, 9, 9),
                box("truck", 2, 2, 9, 9),
            ],
        ),
    ]
    (base / "labels" / "bdd100k_labels_images_val.json").write_text(json.dumps(frames))
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path))
    recs = {r["image_id"]: r for r in DatasetCatalog.get("bdd100k_daytime_val")}
    classes = MetadataCatalog.get("bdd100k_daytime_val").thing_classes
    assert classes == ["person", "rider", "car", "truck", "bus", "motorcycle", "bicycle"]
    assert sorted(recs) == ["a.jpg", "d.jpg"]
    a = recs["a.jpg"]
    assert (a["height"], a["width"]) == (72, 128)
    assert [classes[x["category_id"]] for x in a["annotations"]] == [
        "person",
        "person",
        "motorcycle",
        "bicycle",
        "car",
    ]
    assert a["annotations"][-1]["bbox"] == [100.0, 10.0, 128.0, 50.0]
    assert sorted(classes[x["category_id"]] for x in recs["d.jpg"]["annotations"]) == [
        "bicycle",
        "bus",
        "motorcycle",
        "rider",
        "truck",
    ]
    assert (
        MetadataCatalog.get("cityscapes7_val").thing_classes == classes
    )  # source and target agree
