"""Input mistakes (config keys, eval-only weights, test images, COCO boxes, output folders) fail at once with one clear line."""
import glob
import importlib.util
import json
import logging
import os
import shutil

import cv2
import numpy as np
import pytest
from detectron2.data import DatasetCatalog

from .conftest import REPO, run_train_net


def test_eval_only_without_weights_is_an_error(tiny_pair, tmp_path):
    proc = run_train_net(["--config-file", "configs/synthetic/source_only.yaml", "--eval-only"], tmp_path, tiny_pair,
                         check=False)
    assert proc.returncode != 0
    assert "--eval-only needs the checkpoint to evaluate: MODEL.WEIGHTS is empty" in proc.stderr
    assert "Traceback" not in proc.stderr and not os.path.isdir(tmp_path / "inference")


def test_eval_only_reports_carry_the_checkpoint_iteration(mic_checkpoint, tiny_pair, tmp_path):
    _, weights = mic_checkpoint
    run_train_net(["--config-file", "configs/synthetic/mic.yaml", "--eval-only", "MODEL.WEIGHTS", weights,
                   "DATASETS.TEST", "('synthetic_foggy_val',)"], tmp_path, tiny_pair)
    (report,) = glob.glob(os.path.join(tmp_path, "inference", "report_student_synthetic_foggy_val_iter*.json"))
    assert report.endswith("_iter41.json")
    assert json.load(open(report))["iteration"] == 41


def test_every_test_image_is_checked_at_start_up(tiny_pair, tmp_path):
    images = tmp_path / "val"
    shutil.copytree(tiny_pair / "target_val", images)
    cv2.imwrite(str(images / "000001.png"), np.zeros((50, 60, 3), np.uint8))  # not the json's size
    (images / "000005.png").write_bytes(b"not a png")
    out = tmp_path / "run"
    proc = run_train_net(
        ["--config-file", "configs/synthetic/source_only.yaml",
         "--register-coco", "broken_val", str(tiny_pair / "annotations" / "target_val.json"), str(images),
         "DATASETS.TEST", "('broken_val',)", "SOLVER.MAX_ITER", "2"],
        out, tiny_pair, check=False,
    )
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "2 test image(s) of DATASETS.TEST cannot be evaluated" in proc.stderr
    assert "000001.png: 50x60 (h x w) but the dataset says 128x160" in proc.stderr
    assert "000005.png: unreadable" in proc.stderr
    assert "Starting training" not in proc.stdout + proc.stderr and not (out / "model_final.pth").exists()


def test_unknown_config_key_names_the_nearest_and_debug_shows_the_traceback(tiny_pair, tmp_path):
    args = ["--config-file", "configs/synthetic/mic.yaml", "MIC.EMA_ALFA", "0.9"]
    proc = run_train_net(args, tmp_path, tiny_pair, check=False)
    assert proc.returncode != 0
    assert "unknown config key MIC.EMA_ALFA (did you mean MIC.EMA_ALPHA" in proc.stderr
    assert "Traceback" not in proc.stderr and proc.stderr.strip().count("\n") == 0
    proc = run_train_net(["--debug"] + args, tmp_path, tiny_pair, check=False)
    assert proc.returncode != 0 and "Traceback" in proc.stderr and "MIC.EMA_ALPHA" in proc.stderr


def test_unknown_key_in_a_config_file_is_named_with_the_file(tmp_path):
    from mic_det.config_loading import build_config

    config = tmp_path / "my.yaml"
    config.write_text(f'_BASE_: "{REPO}/configs/synthetic/mic.yaml"\nSOLVER:\n  MAXITER: 10\n')
    with pytest.raises(ValueError, match=r"my\.yaml .*unknown config key SOLVER\.MAXITER \(did you mean SOLVER\.MAX_ITER"):
        build_config(str(config))


def _coco(tmp_path, bbox):
    image_root = tmp_path / "images"
    image_root.mkdir(exist_ok=True)
    cv2.imwrite(str(image_root / "a.png"), np.zeros((30, 40, 3), np.uint8))
    data = {
        "images": [{"id": 1, "file_name": "a.png", "height": 30, "width": 40}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [35, 25, 10, 10]},  # partly outside: kept
                        {"id": 7, "image_id": 1, "category_id": 1, "bbox": bbox}],
        "categories": [{"id": 1, "name": "smoke"}],
    }
    json_file = tmp_path / "a.json"
    json_file.write_text(json.dumps(data))
    return str(json_file), str(image_root)


@pytest.mark.parametrize("bbox", [[50, 5, 10, 10], [5, 30, 4, 4], [-20, 5, 10, 10], [5, -12, 4, 12]])
def test_coco_box_wholly_outside_its_image_is_rejected(tmp_path, bbox):
    from mic_det import register_coco_domain

    register_coco_domain("t_outside", *_coco(tmp_path, bbox))
    with pytest.raises(ValueError, match=r"annotation 7 of image a\.png \(id 1\): bbox .* lies wholly outside the 40x30"):
        DatasetCatalog.get("t_outside")


def test_coco_box_partly_outside_is_kept(tmp_path):
    from mic_det import register_coco_domain

    register_coco_domain("t_partly", *_coco(tmp_path, [-5, -5, 10, 10]))
    assert len(DatasetCatalog.get("t_partly")[0]["annotations"]) == 2


def test_foggify_refuses_an_output_that_holds_output(tmp_path):
    spec = importlib.util.spec_from_file_location("foggify_tool", os.path.join(REPO, "tools", "foggify.py"))
    foggify = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(foggify)
    src, out = tmp_path / "clear", tmp_path / "foggy"
    src.mkdir()
    cv2.imwrite(str(src / "a.png"), np.full((24, 32, 3), 40, np.uint8))
    foggify.main(["--input", str(src), "--output", str(out), "--beta", "0.01", "--workers", "1"])
    thin = cv2.imread(str(out / "a.png"))
    with pytest.raises(SystemExit, match=r"already holds 1 image/json file\(s\).*--overwrite"):
        foggify.main(["--input", str(src), "--output", str(out), "--beta", "0.08", "--workers", "1"])
    assert np.array_equal(cv2.imread(str(out / "a.png")), thin)  # untouched
    foggify.main(["--input", str(src), "--output", str(out), "--beta", "0.08", "--workers", "1", "--overwrite"])
    assert cv2.imread(str(out / "a.png")).mean() > thin.mean()  # denser fog: closer to the light grey


def test_plots_leave_out_all_zero_series_and_say_so(tmp_path, monkeypatch, caplog):
    from mic_det.evaluation import plots

    with open(tmp_path / "metrics.json", "w") as f:
        for it in (19, 39):
            f.write(json.dumps({"iteration": it, "total_loss": 1.0 / it, "loss_cls": 0.5 / it,
                                "loss_box_reg_mic": 0.0, "loss_rpn_loc_mic": 0.0}) + "\n")
        f.write(json.dumps({"iteration": 39, "student/val/bbox/AP50": 0.0, "teacher/val/bbox/AP50": 0.0}) + "\n")
    plotted = {}
    real = plots.plot_panels
    monkeypatch.setattr(plots, "plot_panels", lambda path, panels, **kw: plotted.setdefault(
        os.path.basename(path), sorted(panels)) and real(path, panels, **kw))
    with caplog.at_level(logging.INFO, logger="mic_det.evaluation.plots"):
        written = plots.plot_metrics(str(tmp_path / "metrics.json"), str(tmp_path / "plots"))
    assert plotted["losses.png"] == ["loss_cls", "total_loss"]
    assert "eval_bbox_AP50.png" in plotted  # an AP of 0 is a result: still drawn
    assert all(os.path.getsize(p) > 1000 for p in written)
    assert "Not plotted, 0 at every iteration" in caplog.text
    assert "loss_box_reg_mic, loss_rpn_loc_mic" in caplog.text
