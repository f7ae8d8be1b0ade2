"""User domains: COCO sets, image folders, YAML/CLI registration, and every bad input's message."""

import argparse
import json
import logging
import os

import cv2
import numpy as np
import pytest
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog

from mic_det.config import add_mic_config
from mic_det.data.checks import check_datasets_registered, check_domain_classes
from mic_det.data.cli import add_domain_arguments, register_domains_from_args
from mic_det.data.domains import register_coco_domain, register_image_folder
from mic_det.data.mapper import DomainDatasetMapper


def _img(path, w=40, h=30, value=90):
    os.makedirs(os.path.dirname(str(path)), exist_ok=True)
    cv2.imwrite(str(path), np.full((h, w, 3), value, np.uint8))


def write_coco(root, annotations=None, categories=None, images=("a.jpg", "sub/b.jpg")):
    """A tiny COCO set under ``root``: returns (json path, image root)."""
    image_root = os.path.join(str(root), "images")
    for name in images:
        _img(os.path.join(image_root, name))
    if categories is None:
        categories = [{"id": 3, "name": "fire"}, {"id": 1, "name": "smoke"}]
    if annotations is None:
        annotations = [
            {"id": 10, "image_id": 1, "category_id": 1, "bbox": [1, 2, 10, 8], "iscrowd": 0},
            {
                "id": 11,
                "image_id": 1,
                "category_id": 3,
                "bbox": [5, 5, 4, 4],
                "iscrowd": 0,
                "segmentation": [[5, 5, 9, 5, 9, 9]],
            },
            {
                "id": 12,
                "image_id": 2,
                "category_id": 3,
                "bbox": [0, 0, 20, 20],
                "iscrowd": 0,
                "segmentation": [[1, 2]],
            },  # degenerate polygon: mask dropped, box kept
        ]
    data = {
        "images": [
            {"id": i + 1, "file_name": n, "height": 30, "width": 40} for i, n in enumerate(images)
        ],
        "annotations": annotations,
        "categories": categories,
    }
    json_file = os.path.join(str(root), "train.json")
    with open(json_file, "w") as f:
        json.dump(data, f)
    return json_file, image_root


# ----------------------------------------------------------------------- COCO
def test_coco_domain_loads_lazily(tmp_path):
    register_coco_domain(
        "t_coco", tmp_path / "later.json", tmp_path / "later"
    )  # nothing on disk yet
    json_file, image_root = write_coco(tmp_path)
    register_coco_domain("t_coco", json_file, image_root)  # re-registering is allowed
    recs = DatasetCatalog.get("t_coco")
    meta = MetadataCatalog.get("t_coco")
    assert meta.thing_classes == ["smoke", "fire"]  # sorted by category id
    assert meta.thing_dataset_id_to_contiguous_id == {1: 0, 3: 1}
    assert meta.evaluator_type == "coco" and meta.json_file == json_file
    assert [r["file_name"] for r in recs] == [
        os.path.join(image_root, "a.jpg"),
        os.path.join(image_root, "sub/b.jpg"),
    ]
    assert [a["category_id"] for a in recs[0]["annotations"]] == [0, 1]
    assert recs[0]["annotations"][1]["segmentation"] == [[5, 5, 9, 5, 9, 9]]
    assert "segmentation" not in recs[1]["annotations"][0]
    assert recs[1]["annotations"][0]["bbox"] == [0.0, 0.0, 20.0, 20.0]


def test_coco_thing_classes_match_by_name(tmp_path):
    cats = [{"id": 1, "name": "smoke"}, {"id": 2, "name": "person"}, {"id": 3, "name": "fire"}]
    anns = [{"id": 1, "image_id": 1, "category_id": c, "bbox": [1, 1, 5, 5]} for c in (1, 2, 3)]
    json_file, image_root = write_coco(tmp_path, anns, cats)
    register_coco_domain(
        "t_named", json_file, image_root, metadata={"thing_classes": ["fire", "smoke"]}
    )
    recs = DatasetCatalog.get("t_named")
    assert [a["category_id"] for a in recs[0]["annotations"]] == [1, 0]  # person dropped
    assert MetadataCatalog.get("t_named").get("json_file") is None  # evaluator converts the records
    register_coco_domain(
        "t_same", json_file, image_root, metadata={"thing_classes": ["smoke", "person", "fire"]}
    )
    DatasetCatalog.get("t_same")
    assert MetadataCatalog.get("t_same").json_file == json_file  # the json itself can be scored
    register_coco_domain(
        "t_typo", json_file, image_root, metadata={"thing_classes": ["fire", "smok"]}
    )
    with pytest.raises(ValueError, match=r"\['smok'\].*not among the categories"):
        DatasetCatalog.get("t_typo")


def test_coco_missing_json_and_root(tmp_path):
    json_file, image_root = write_coco(tmp_path)
    register_coco_domain("t_nojson", tmp_path / "missing.json", image_root)
    with pytest.raises(FileNotFoundError, match=r"t_nojson.*missing\.json does not exist"):
        DatasetCatalog.get("t_nojson")
    register_coco_domain("t_noroot", json_file, tmp_path / "no_images")
    with pytest.raises(FileNotFoundError, match=r"image root .*no_images does not exist"):
        DatasetCatalog.get("t_noroot")


def test_coco_invalid_json(tmp_path):
    json_file, image_root = write_coco(tmp_path)
    with open(json_file, "w") as f:
        f.write('{"images": [,]}')
    register_coco_domain("t_badjson", json_file, image_root)
    with pytest.raises(ValueError, match=r"train\.json is not valid JSON .*line 1"):
        DatasetCatalog.get("t_badjson")


def test_coco_unknown_category(tmp_path):
    anns = [{"id": 7, "image_id": 2, "category_id": 5, "bbox": [1, 1, 5, 5]}]
    json_file, image_root = write_coco(tmp_path, anns)
    register_coco_domain("t_badcat", json_file, image_root)
    with pytest.raises(
        ValueError,
        match=r"train\.json.*categories.*\n.*annotation 7 of image sub/b\.jpg.*category_id 5",
    ):
        DatasetCatalog.get("t_badcat")


@pytest.mark.parametrize("bbox", [[1, 1, 0, 5], [1, 1, 5, -2]])
def test_coco_degenerate_box_is_an_error(tmp_path, bbox):
    anns = [
        {"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 5, 5]},
        {"id": 42, "image_id": 1, "category_id": 1, "bbox": bbox},
    ]
    json_file, image_root = write_coco(tmp_path, anns)
    register_coco_domain("t_badbox", json_file, image_root)
    with pytest.raises(
        ValueError, match=r"zero or negative width/height[\s\S]*annotation 42 of image a\.jpg"
    ):
        DatasetCatalog.get("t_badbox")


def test_coco_missing_image_files(tmp_path):
    json_file, image_root = write_coco(tmp_path)
    os.remove(os.path.join(image_root, "sub", "b.jpg"))
    register_coco_domain("t_noimg", json_file, image_root)
    with pytest.raises(FileNotFoundError, match=r"missing[\s\S]*sub/b\.jpg"):
        DatasetCatalog.get("t_noimg")


# --------------------------------------------------------------- image folder
def test_image_folder_recursive_sorted(tmp_path):
    for name in ("z.JPG", "a/b.png", "a/c.Jpeg", "m.webp", "n.TIFF", "x.bmp"):
        _img(tmp_path / "imgs" / name, w=20 + len(name), h=10)
    (tmp_path / "imgs" / "notes.txt").write_text("not an image")
    register_image_folder("t_folder", tmp_path / "imgs")
    recs = DatasetCatalog.get("t_folder")
    assert [r["image_id"] for r in recs] == [
        "a/b.png",
        "a/c.Jpeg",
        "m.webp",
        "n.TIFF",
        "x.bmp",
        "z.JPG",
    ]
    assert all("annotations" not in r for r in recs)
    assert (recs[0]["height"], recs[0]["width"]) == (10, 27)
    assert set(recs[0]) == {"file_name", "image_id", "height", "width"}
    assert MetadataCatalog.get("t_folder").labelled is False


def test_image_folder_empty_and_missing(tmp_path):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    register_image_folder("t_empty", tmp_path / "empty")
    with pytest.raises(ValueError, match=r"t_empty.*empty contains no images"):
        DatasetCatalog.get("t_empty")
    register_image_folder("t_gone", tmp_path / "gone")
    with pytest.raises(FileNotFoundError, match=r"gone does not exist"):
        DatasetCatalog.get("t_gone")


# ----------------------------------------------------------------- YAML / CLI
def _parse(argv):
    parser = argparse.ArgumentParser()
    parser.add_argument("--config-file")
    add_domain_arguments(parser)
    return parser.parse_args(argv)


def test_domains_yaml_and_cli(tmp_path, monkeypatch):
    json_file, image_root = write_coco(tmp_path / "src")
    _img(tmp_path / "tgt" / "frames" / "0001.png")
    _img(tmp_path / "other" / "1.png")
    cfg_dir = tmp_path / "cfg"
    cfg_dir.mkdir()
    (cfg_dir / "domains.yaml").write_text(
        "- name: y_src\n  type: coco\n  json: ../src/train.json\n  image_root: ../src/images\n"
        "  thing_classes: [smoke, fire]\n"
        "- name: y_tgt\n  image_dir: ../tgt/frames\n"
    )
    (cfg_dir / "dict.yaml").write_text("y_dict:\n  type: folder\n  image_dir: ../other\n")
    monkeypatch.chdir(tmp_path)
    args = _parse(
        [
            "--domains",
            str(cfg_dir / "domains.yaml"),
            "--domains",
            str(cfg_dir / "dict.yaml"),
            "--register-coco",
            "c_src",
            "src/train.json",
            "src/images",
            "--register-folder",
            "c_tgt",
            "tgt/frames",
        ]
    )
    names = register_domains_from_args(args)
    assert names == ["y_src", "y_tgt", "y_dict", "c_src", "c_tgt"]
    assert len(DatasetCatalog.get("y_src")) == 2
    assert MetadataCatalog.get("y_src").thing_classes == ["smoke", "fire"]
    assert DatasetCatalog.get("y_tgt")[0]["file_name"] == str(
        tmp_path / "tgt" / "frames" / "0001.png"
    )
    assert len(DatasetCatalog.get("y_dict")) == 1
    assert DatasetCatalog.get("c_src")[0]["file_name"].startswith(str(tmp_path / "src" / "images"))
    assert register_domains_from_args(_parse([])) == []


def test_domains_yaml_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("- name: x\n  type: folder\n  image_dir: .\n  imag_root: typo\n")
    with pytest.raises(ValueError, match=r"domain 'x' in .*bad\.yaml: unknown key 'imag_root'"):
        register_domains_from_args(_parse(["--domains", str(bad)]))
    bad.write_text("- name: x\n  type: folder\n  json: a.json\n  image_dir: .\n")
    with pytest.raises(ValueError, match=r"key 'json' does not apply to type folder"):
        register_domains_from_args(_parse(["--domains", str(bad)]))
    bad.write_text("- name: x\n  type: voc\n  image_dir: .\n")
    with pytest.raises(ValueError, match=r"unknown type 'voc'"):
        register_domains_from_args(_parse(["--domains", str(bad)]))
    bad.write_text("- name: x\n  type: coco\n  json: nope.json\n  image_root: .\n")
    with pytest.raises(FileNotFoundError, match=r"json file .*nope\.json does not exist"):
        register_domains_from_args(_parse(["--domains", str(bad)]))
    bad.write_text("- [unclosed\n")
    with pytest.raises(ValueError, match=r"bad\.yaml is not valid YAML"):
        register_domains_from_args(_parse(["--domains", str(bad)]))


def test_cli_paths_checked_at_once(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"image_dir folder .*nowhere does not exist"):
        register_domains_from_args(_parse(["--register-folder", "c_x", str(tmp_path / "nowhere")]))
    _img(tmp_path / "i" / "1.png")
    with pytest.raises(FileNotFoundError, match=r"json file .*no\.json"):
        register_domains_from_args(
            _parse(["--register-coco", "c_y", str(tmp_path / "no.json"), str(tmp_path / "i")])
        )
    with pytest.raises(ValueError, match=r"'c_z' is given twice"):
        register_domains_from_args(
            _parse(
                [
                    "--register-folder",
                    "c_z",
                    str(tmp_path / "i"),
                    "--register-folder",
                    "c_z",
                    str(tmp_path / "i"),
                ]
            )
        )


# --------------------------------------------------------------------- mapper
def _cfg():
    cfg = add_mic_config(get_cfg())
    cfg.INPUT.MIN_SIZE_TRAIN = (30,)
    cfg.INPUT.MAX_SIZE_TRAIN = 100
    cfg.INPUT.MIN_SIZE_TEST = 30
    cfg.INPUT.MAX_SIZE_TEST = 100
    return cfg


def test_mapper_target_stream_keeps_labels_apart(tmp_path):
    json_file, image_root = write_coco(tmp_path)
    register_coco_domain("t_map", json_file, image_root)
    rec = DatasetCatalog.get("t_map")[0]
    target = DomainDatasetMapper(_cfg(), is_train=True, labelled=False)
    out = target(rec)
    assert "instances" not in out and "annotations" not in out
    assert len(out["instances_for_scoring"]) == 2
    assert tuple(out["image"].shape) == (3, 30, 40)
    source = DomainDatasetMapper(_cfg(), is_train=True)
    assert len(source(rec)["instances"]) == 2
    folder_rec = {"file_name": rec["file_name"], "image_id": "x", "height": 30, "width": 40}
    out = target(folder_rec)
    assert "instances" not in out and "instances_for_scoring" not in out


def test_mapper_corrupt_image(tmp_path, caplog):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff not really a jpeg")
    rec = {"file_name": str(bad), "image_id": 0, "height": 30, "width": 40}
    train = DomainDatasetMapper(_cfg(), is_train=True, labelled=False)
    with caplog.at_level(logging.WARNING):
        assert train(dict(rec)) is None
        assert train(dict(rec)) is None
    assert train.num_skipped == 2
    assert "broken.jpg" in caplog.text and "1 skipped" in caplog.text
    assert (
        caplog.text.count("Skipping unreadable") == 1
    )  # one warning per file, later ones at debug level
    evaluation = DomainDatasetMapper(_cfg(), is_train=False)
    with pytest.raises(OSError, match=r"Cannot read image .*broken\.jpg"):
        evaluation(dict(rec))
    import copy

    assert copy.deepcopy(train).num_skipped == 2  # a copy keeps the count (without sharing it)


def test_mapper_size_mismatch(tmp_path, caplog):
    """A training image of another size than its record is skipped (its boxes would be misplaced); evaluation stops."""
    _img(tmp_path / "a.png", w=40, h=30)
    rec = {"file_name": str(tmp_path / "a.png"), "image_id": 0, "height": 31, "width": 40}
    train = DomainDatasetMapper(_cfg(), is_train=True)
    with caplog.at_level(logging.WARNING):
        assert train(dict(rec)) is None
    assert train.num_skipped == 1 and "a.png: it is 30x40 (h x w) but its record says 31x40" in caplog.text
    with pytest.raises(Exception, match=r"a\.png"):
        DomainDatasetMapper(_cfg(), is_train=False)(dict(rec))
    rec["height"] = 30
    assert tuple(train(rec)["image"].shape[-2:]) == (30, 40)  # the right size maps as before


# --------------------------------------------------------------------- checks
def test_class_checks(tmp_path):
    json_file, image_root = write_coco(tmp_path / "a")
    register_coco_domain("k_src", json_file, image_root)  # [smoke, fire]
    register_coco_domain(
        "k_tgt_val", json_file, image_root, metadata={"thing_classes": ["fire", "smoke"]}
    )
    _img(tmp_path / "f" / "1.png")
    register_image_folder("k_folder", tmp_path / "f")
    cfg = _cfg()
    cfg.DATASETS.TRAIN = ("k_src",)
    cfg.DATASETS.TRAIN_TARGET = ("k_folder",)
    cfg.DATASETS.TEST = ("k_src",)
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 2
    check_domain_classes(cfg)  # the folder target has no classes and passes

    cfg.DATASETS.TEST = ("k_tgt_val",)
    with pytest.raises(ValueError) as e:
        check_domain_classes(cfg)
    msg = str(e.value)
    assert "k_src (DATASETS.TRAIN): ['smoke', 'fire']" in msg
    assert "k_tgt_val (DATASETS.TEST): ['fire', 'smoke']" in msg

    cfg.DATASETS.TEST = ("k_src",)
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 8
    with pytest.raises(
        ValueError, match=r"MODEL.ROI_HEADS.NUM_CLASSES is 8 but the datasets have 2"
    ):
        check_domain_classes(cfg)


def test_unknown_dataset_suggests_close_names():
    cfg = _cfg()
    cfg.DATASETS.TRAIN = ("cityscapes_trian",)
    cfg.DATASETS.TEST = ()
    with pytest.raises(
        ValueError, match=r"DATASETS.TRAIN: 'cityscapes_trian' .*did you mean .*cityscapes_train"
    ):
        import mic_det.data.builtin  # noqa: F401

        check_datasets_registered(cfg)


# ------------------------------------------------------------ worked example
def test_wildfire_example_config(tmp_path):
    """The shipped example's config + domains YAML, on a fake tree where the YAML expects it."""
    import shutil

    repo = os.path.join(os.path.dirname(__file__), os.pardir)
    cfg_dir = tmp_path / "configs" / "custom"
    cfg_dir.mkdir(parents=True)
    shutil.copy(os.path.join(repo, "configs/custom/wildfire_to_indoor_smoke_domains.yaml"), cfg_dir)
    data = tmp_path / "datasets"
    cats = [{"id": 1, "name": "fire"}, {"id": 2, "name": "smoke"}]  # numbered unlike thing_classes
    for split in ("train", "val"):
        (data / "wildfire" / "annotations").mkdir(parents=True, exist_ok=True)
        j, _ = write_coco(
            data / "wildfire",
            categories=cats,
            annotations=[{"id": 1, "image_id": 1, "category_id": 2, "bbox": [1, 1, 5, 5]}],
        )
        os.replace(j, data / "wildfire" / "annotations" / f"{split}.json")
    j, root = write_coco(data / "indoor_smoke", categories=cats, annotations=[])
    os.replace(j, data / "indoor_smoke" / "val.json")
    os.replace(root, data / "indoor_smoke" / "val_images")
    _img(data / "indoor_smoke" / "frames" / "cam1" / "0001.jpg")

    names = register_domains_from_args(
        _parse(["--domains", str(cfg_dir / "wildfire_to_indoor_smoke_domains.yaml")])
    )
    assert names == ["wildfire_train", "wildfire_val", "indoor_smoke_train", "indoor_smoke_val"]
    cfg = add_mic_config(get_cfg())
    cfg.merge_from_file(os.path.join(repo, "configs/custom/wildfire_to_indoor_smoke.yaml"))
    assert cfg.MODEL.ROI_HEADS.NUM_CLASSES == 2
    check_domain_classes(cfg)
    smoke = DatasetCatalog.get("wildfire_train")[0]["annotations"][0]
    assert MetadataCatalog.get("wildfire_train").thing_classes[smoke["category_id"]] == "smoke"


def test_image_folder_exif_and_unreadable(tmp_path, monkeypatch, caplog):
    from PIL import Image

    from mic_det.data import domains

    folder = tmp_path / "phone"
    folder.mkdir()
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways, shown rotated by 90 degrees
    Image.new("RGB", (40, 20), (0, 128, 255)).save(folder / "rotated.jpg", exif=exif)
    _img(folder / "plain.png", w=40, h=20)
    (folder / "truncated.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    monkeypatch.setattr(domains, "_THREADED_HEADER_READS", 0)  # take the thread-pool path
    register_image_folder("t_phone", folder)
    with caplog.at_level(logging.WARNING):
        recs = {r["image_id"]: r for r in DatasetCatalog.get("t_phone")}
    assert sorted(recs) == ["plain.png", "rotated.jpg"]
    assert "skipped 1 unreadable image(s)" in caplog.text and "truncated.jpg" in caplog.text
    assert (recs["rotated.jpg"]["height"], recs["rotated.jpg"]["width"]) == (40, 20)
    out = DomainDatasetMapper(_cfg(), is_train=True, labelled=False)(recs["rotated.jpg"])
    assert out is not None  # the mapper's size check agrees with the header
