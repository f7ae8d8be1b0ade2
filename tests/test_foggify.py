"""tools/foggify.py: foggy copies of image folders and COCO sets."""

import importlib.util
import json
import os
import sys

import cv2
import numpy as np
import pytest
from detectron2.data import DatasetCatalog

from mic_det.data.domains import register_coco_domain

_TOOL = os.path.join(os.path.dirname(__file__), os.pardir, "tools", "foggify.py")


@pytest.fixture(scope="module")
def foggify():
    spec = importlib.util.spec_from_file_location("foggify_tool", _TOOL)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["foggify_tool"] = mod  # so that its worker function pickles for the process pool
    spec.loader.exec_module(mod)
    yield mod
    sys.modules.pop("foggify_tool", None)


def _img(path, w=32, h=24, bgr=(10, 60, 120)):
    os.makedirs(os.path.dirname(str(path)), exist_ok=True)
    img = np.zeros((h, w, 3), np.uint8)
    img[:] = bgr
    cv2.imwrite(str(path), img)
    return img


def test_folder_recursive_same_paths(foggify, tmp_path):
    src, out = tmp_path / "clear", tmp_path / "foggy"
    clear = _img(src / "a.png")
    _img(src / "city" / "b.PNG")
    _img(src / "city" / "deeper" / "c.jpg")
    (src / "readme.txt").write_text("skip me")
    assert (
        foggify.main(
            ["--input", str(src), "--output", str(out), "--beta", "0.02", "--workers", "1"]
        )
        == 0
    )
    written = sorted(
        os.path.relpath(os.path.join(d, f), out) for d, _, fs in os.walk(out) for f in fs
    )
    assert written == ["a.png", "city/b.PNG", "city/deeper/c.jpg"]
    foggy = cv2.imread(str(out / "a.png"))
    assert foggy.shape == clear.shape
    # Fog pulls every pixel towards the grey light (0.8 * 255), more at the (far) top
    # than at the (near) bottom.
    light = 0.8 * 255
    assert np.all(np.abs(foggy.astype(float) - light) <= np.abs(clear.astype(float) - light))
    assert abs(float(foggy[0, 0, 0]) - light) < abs(float(foggy[-1, 0, 0]) - light)


def test_refuses_to_write_into_input(foggify, tmp_path):
    _img(tmp_path / "clear" / "a.png")
    for out in (tmp_path / "clear", tmp_path / "clear" / "foggy"):
        with pytest.raises(SystemExit, match="refusing to write into the input folder"):
            foggify.main(["--input", str(tmp_path / "clear"), "--output", str(out)])


def test_coco_set(foggify, tmp_path):
    root = tmp_path / "images"
    _img(root / "x" / "1.jpg")
    _img(root / "2.jpg")
    _img(root / "unlisted.jpg")
    data = {
        "images": [
            {"id": 1, "file_name": "x/1.jpg", "height": 24, "width": 32},
            {"id": 2, "file_name": "2.jpg", "height": 24, "width": 32},
        ],
        "annotations": [
            {"id": 5, "image_id": 1, "category_id": 1, "bbox": [1, 1, 5, 5], "iscrowd": 0}
        ],
        "categories": [{"id": 1, "name": "smoke"}],
    }
    json_file = tmp_path / "train.json"
    json_file.write_text(json.dumps(data))
    out = tmp_path / "foggy"
    foggify.main(
        [
            "--coco-json",
            str(json_file),
            "--input",
            str(root),
            "--output",
            str(out),
            "--beta",
            "0.01",
            "--atmospheric-light",
            "0.9",
            "0.8",
            "0.7",
            "--workers",
            "2",
        ]
    )
    new = json.loads((out / "train.json").read_text())
    assert new["images"] == data["images"] and new["annotations"] == data["annotations"]
    assert new["info"]["foggify"]["beta"] == 0.01
    assert (out / "x" / "1.jpg").is_file() and (out / "2.jpg").is_file()
    assert not (out / "unlisted.jpg").exists()
    register_coco_domain("foggy_coco", out / "train.json", out)
    recs = DatasetCatalog.get("foggy_coco")
    assert (
        recs[0]["file_name"] == os.path.join(str(out), "x/1.jpg")
        and len(recs[0]["annotations"]) == 1
    )
    with pytest.raises(SystemExit, match="overwrite the input json"):
        foggify.main(
            [
                "--coco-json",
                str(json_file),
                "--input",
                str(root),
                "--output",
                str(out),
                "--output-json",
                str(json_file),
            ]
        )


def test_depth_maps(foggify, tmp_path):
    src = tmp_path / "clear"
    clear = _img(src / "f_leftImg8bit.png")
    depth_dir = tmp_path / "depth"
    depth_dir.mkdir()
    np.save(depth_dir / "f.npy", np.zeros((24, 32), np.float32))  # at the camera: no fog
    foggify.main(
        [
            "--input",
            str(src),
            "--output",
            str(tmp_path / "o1"),
            "--depth-dir",
            str(depth_dir),
            "--workers",
            "1",
        ]
    )
    assert np.array_equal(cv2.imread(str(tmp_path / "o1" / "f_leftImg8bit.png")), clear)

    # Cityscapes disparity (16 bit, half resolution): 0 = invalid = far = fully fogged.
    disp_dir = tmp_path / "disp"
    disp_dir.mkdir()
    cv2.imwrite(str(disp_dir / "f_disparity.png"), np.zeros((12, 16), np.uint16))
    foggify.main(
        [
            "--input",
            str(src),
            "--output",
            str(tmp_path / "o2"),
            "--depth-dir",
            str(disp_dir),
            "--depth-format",
            "cityscapes_disparity",
            "--atmospheric-light",
            "1.0",
            "--workers",
            "1",
        ]
    )
    assert np.all(cv2.imread(str(tmp_path / "o2" / "f_leftImg8bit.png")) == 255)

    os.remove(disp_dir / "f_disparity.png")
    with pytest.raises(SystemExit, match=r"1 image\(s\) have no depth map"):
        foggify.main(
            ["--input", str(src), "--output", str(tmp_path / "o3"), "--depth-dir", str(disp_dir)]
        )
