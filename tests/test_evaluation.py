"""Evaluation: COCO numbers equal pycocotools', VOC AP50 equals a hand computation, reports exist.

The fixture is a hand-made 4-image COCO json whose category ids are not
contiguous and not in alphabetical order (so thing_classes order is tested),
with a crowd box, a class without ground truth and an image without
detections.
"""

import contextlib
import importlib.util
import io
import json
import math
import os

import numpy as np
import pytest
import torch
from detectron2.structures import Boxes, Instances
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from mic_det.data import register_coco_domain
from mic_det.detection import DomainDetectionEvaluator, build_evaluator
from mic_det.detection.reports import per_class_table
from mic_det.detection.voc import mean_ap, voc_ap, voc_ap50_per_class

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# json category id -> name. load_coco_json orders classes by id: zebra, apple, kiwi.
CATEGORIES = {1: "zebra", 3: "apple", 7: "kiwi"}  # kiwi has no ground truth
THING_CLASSES = ["zebra", "apple", "kiwi"]
# image id -> [(category id, xywh, iscrowd)]
GT = {
    1: [(1, [10, 10, 30, 30], 0), (1, [50, 50, 20, 20], 0), (3, [60, 10, 30, 20], 0)],
    2: [(3, [5, 5, 40, 40], 0), (1, [50, 50, 40, 40], 1), (1, [10, 60, 20, 30], 0)],
    3: [(1, [20, 20, 50, 50], 0), (3, [0, 0, 15, 15], 0)],
    4: [(3, [30, 30, 30, 30], 0), (1, [5, 5, 10, 10], 0)],
}
# image id -> [(contiguous class, xyxy, score)]; image 4 gets no detection.
DETS = {
    1: [
        (0, [11, 11, 40, 41], 0.9),
        (0, [50, 50, 70, 70], 0.6),
        (0, [12, 10, 40, 40], 0.5),  # duplicate of the 0.9 box
        (1, [60, 12, 90, 30], 0.8),
        (2, [0, 0, 20, 20], 0.3),  # kiwi: a class without ground truth
    ],
    2: [
        (1, [6, 6, 44, 46], 0.7),
        (0, [52, 52, 88, 90], 0.85),  # on the crowd box
        (0, [10, 60, 30, 85], 0.4),
        (1, [50, 50, 90, 90], 0.65),
    ],
    3: [(0, [20, 20, 60, 70], 0.75), (1, [70, 70, 90, 90], 0.55), (1, [0, 0, 14, 16], 0.2)],
    4: [],
}
CONTIGUOUS_TO_JSON = {0: 1, 1: 3, 2: 7}


@pytest.fixture
def dataset(tmp_path):
    images, anns = [], []
    for image_id, objs in GT.items():
        images.append({"id": image_id, "file_name": f"{image_id}.jpg", "height": 100, "width": 100})
        for cat, (x, y, w, h), crowd in objs:
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": image_id,
                    "category_id": cat,
                    "bbox": [x, y, w, h],
                    "area": float(w * h),
                    "iscrowd": crowd,
                }
            )
    cats = [{"id": i, "name": n} for i, n in CATEGORIES.items()]
    json_file = tmp_path / "gt.json"
    json_file.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    (tmp_path / "images").mkdir()
    for image_id in GT:  # the loader checks that the images exist; their content is never read
        (tmp_path / "images" / f"{image_id}.jpg").write_bytes(b"")
    name = f"mic_eval_test_{tmp_path.name}"
    register_coco_domain(name, str(json_file), str(tmp_path / "images"))
    return name, str(json_file)


def _outputs(dets=DETS):
    inputs, outputs = [], []
    for image_id, objs in dets.items():
        inst = Instances((100, 100))
        inst.pred_boxes = Boxes(
            torch.tensor([b for _, b, _ in objs], dtype=torch.float32).reshape(-1, 4)
        )
        inst.scores = torch.tensor([s for _, _, s in objs], dtype=torch.float32)
        inst.pred_classes = torch.tensor([c for c, _, _ in objs], dtype=torch.int64)
        inputs.append({"image_id": image_id, "height": 100, "width": 100})
        outputs.append({"instances": inst})
    return inputs, outputs


def _run(evaluator, dets=DETS):
    evaluator.reset()
    inputs, outputs = _outputs(dets)
    evaluator.process(inputs[:2], outputs[:2])  # two batches, as inference_on_dataset does
    evaluator.process(inputs[2:], outputs[2:])
    with contextlib.redirect_stdout(io.StringIO()):
        return evaluator.evaluate()["bbox"]


def _pycocotools(json_file):
    """Official COCOeval on the same ground truth and detections, straight from pycocotools."""
    results = [
        {
            "image_id": image_id,
            "category_id": CONTIGUOUS_TO_JSON[c],
            "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]],
            "score": s,
        }
        for image_id, objs in DETS.items()
        for c, b, s in objs
    ]
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(json_file)
        ev = COCOeval(gt, gt.loadRes(results), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev


def _same(a, b, tol=1e-4):
    return (math.isnan(a) and math.isnan(b)) or abs(a - b) < tol


@pytest.mark.parametrize("use_fast_impl", [True, False])
def test_coco_numbers_equal_pycocotools(dataset, tmp_path, use_fast_impl):
    name, json_file = dataset
    ev = DomainDetectionEvaluator(
        name, distributed=False, output_dir=str(tmp_path / "out"), use_fast_impl=use_fast_impl
    )
    res = _run(ev)
    ref = _pycocotools(json_file)
    for i, key in enumerate(["AP", "AP50", "AP75", "APs", "APm", "APl"]):
        expected = ref.stats[i] * 100 if ref.stats[i] >= 0 else float("nan")
        assert _same(res[key], expected), (key, res[key], expected)
    # per-class AP50 = the IoU-0.5 slice of pycocotools' precision array
    precision = ref.eval["precision"]
    for k, cat_id in enumerate(ref.params.catIds):
        p = precision[0, :, k, 0, -1]
        expected = float(np.mean(p[p > -1]) * 100) if (p > -1).any() else float("nan")
        assert _same(res["AP50-" + CATEGORIES[cat_id]], expected), CATEGORIES[cat_id]
    assert math.isnan(res["AP50-kiwi"]) and math.isnan(res["AP-kiwi"])
    assert res["AP50-zebra"] > 0 and res["AP50-apple"] > 0


def test_classes_fixed_by_name(dataset, tmp_path):
    """thing_classes in another order than the json ids: per-class numbers follow the names."""
    base, json_file = dataset
    name = base + "_byname"
    register_coco_domain(
        name,
        json_file,
        str(tmp_path / "images"),
        metadata={"thing_classes": ["apple", "kiwi", "zebra"]},
    )
    ref = _run(DomainDetectionEvaluator(base, distributed=False, output_dir=str(tmp_path / "a")))
    # same detections, class ids renumbered to the new order
    remap = {0: 2, 1: 0, 2: 1}
    dets = {i: [(remap[c], b, s) for c, b, s in objs] for i, objs in DETS.items()}
    ev = DomainDetectionEvaluator(name, distributed=False, output_dir=str(tmp_path / "b"))
    res = _run(ev, dets)
    for key in ("AP", "AP50", "VOC-AP50"):
        assert _same(res[key], ref[key])
        for cls in THING_CLASSES:
            assert _same(res[f"{key}-{cls}"], ref[f"{key}-{cls}"]), (key, cls)
    with open(ev.report_paths["json"]) as f:
        assert json.load(f)["classes"] == ["apple", "kiwi", "zebra"]


def test_voc_ap_hand_computed():
    # ranked: TP, FP, TP, FP(duplicate), TP with 3 positives
    recall = np.array([1, 1, 2, 2, 3]) / 3
    precision = np.array([1 / 1, 1 / 2, 2 / 3, 2 / 4, 3 / 5])
    # envelope from the right: 1, 2/3, 2/3, 3/5, 3/5 -> 1/3 * (1 + 2/3 + 3/5)
    assert voc_ap(recall, precision) == pytest.approx((1 + 2 / 3 + 3 / 5) / 3)
    assert voc_ap(np.zeros(0), np.zeros(0)) == 0.0
    # VOC2007 11-point: best precision at recall >= 0, .1, .2, .3 is 1; at .4 ... .6 it is 2/3;
    # at .7 ... 1 it is 3/5 -> (4 * 1 + 3 * 2/3 + 4 * 3/5) / 11
    assert voc_ap(recall, precision, eleven_point=True) == pytest.approx((4 + 2 + 2.4) / 11)

    gt = {
        "a": {
            "boxes": [[0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50]],
            "classes": [0, 0, 0],
            "ignore": [False, False, True],
        },
        "b": {"boxes": [[0, 0, 10, 10]], "classes": [0]},
    }
    dets = {
        "a": {
            "boxes": [
                [0, 0, 10, 10],
                [60, 60, 70, 70],
                [20, 20, 30, 30],
                [0, 1, 10, 10],
                [40, 40, 50, 50],
            ],
            "scores": [0.9, 0.8, 0.7, 0.6, 0.95],
            "classes": [0, 0, 0, 0, 0],
        },
        "b": {"boxes": [[0, 0, 10, 9]], "scores": [0.5], "classes": [0]},
    }
    per_class, curves = voc_ap50_per_class(dets, gt, num_classes=2)
    # 0.95 on the ignored box: neither TP nor FP. Then TP, FP, TP, FP(dup), TP; 3 positives.
    assert per_class[0] == pytest.approx((1 + 2 / 3 + 3 / 5) / 3)
    np.testing.assert_allclose(curves[0][0], [1 / 3, 1 / 3, 2 / 3, 2 / 3, 1])
    np.testing.assert_allclose(curves[0][1], [1, 1 / 2, 2 / 3, 2 / 4, 3 / 5])
    assert math.isnan(per_class[1])  # no ground truth
    assert mean_ap(per_class) == pytest.approx(per_class[0])  # NaN left out


def test_voc_ap_is_detectron2s_on_a_hand_made_curve():
    """mic_det's voc_ap is Detectron2's (the devkit's formula), all-point and 11-point."""
    from detectron2.evaluation.pascal_voc_evaluation import voc_ap as detectron2_voc_ap

    # 4 positives; ranked TP, TP, FP, FP, TP, FP, TP: precision dips and recovers,
    # so the envelope (best precision to the right) differs from the raw curve.
    hits = np.array([1, 1, 0, 0, 1, 0, 1], dtype=np.float64)
    tp = np.cumsum(hits)
    recall = tp / 4
    precision = tp / np.arange(1, len(hits) + 1)
    # Envelope at the four recall steps 1/4, 2/4, 3/4, 4/4: 1, 1, 3/5, 4/7.
    hand = (1 + 1 + 3 / 5 + 4 / 7) / 4
    assert voc_ap(recall, precision) == pytest.approx(hand)
    assert voc_ap(recall, precision) == pytest.approx(float(detectron2_voc_ap(recall, precision)))
    assert voc_ap(list(recall), list(precision), eleven_point=True) == pytest.approx(
        float(detectron2_voc_ap(recall, precision, use_07_metric=True))
    )
    assert isinstance(voc_ap(recall, precision), float)


def test_voc_in_evaluator_matches_hand_computation(dataset, tmp_path):
    name, _ = dataset
    res = _run(DomainDetectionEvaluator(name, distributed=False, output_dir=str(tmp_path / "o")))
    # zebra, 5 positives (the crowd box is ignored, and so is the 0.85 detection on it):
    # TP .9, TP .75, TP .6, FP .5 (duplicate), TP .4
    # recall .2 .4 .6 .6 .8, precision 1 1 1 .75 .8 -> .6 * 1 + .2 * .8
    assert res["VOC-AP50-zebra"] == pytest.approx(76.0)
    # apple, 4 positives: TP .8, TP .7, FP .65, FP .55, TP .2
    # recall .25 .5 .5 .5 .75, precision 1 1 2/3 1/2 3/5 -> .5 * 1 + .25 * .6
    assert res["VOC-AP50-apple"] == pytest.approx(65.0)
    assert math.isnan(res["VOC-AP50-kiwi"])
    assert res["VOC-AP50"] == pytest.approx((76.0 + 65.0) / 2)
    # COCO's 101-point AP50 differs from VOC's all-point one on the same detections
    assert res["AP50-zebra"] == pytest.approx(100 * (61 + 20 * 0.8) / 101)


def test_reports_written_and_table_order(dataset, tmp_path):
    name, _ = dataset
    out = tmp_path / "reports"
    ev = build_evaluator(_cfg(), name, str(out), model_tag="teacher", iteration=123)
    # distributed=True (the default) gathers over a world of one process
    res = _run(ev)
    base = out / f"report_teacher_{name}_iter123"
    for ext in ("json", "md", "png"):
        path = str(base) + "." + ext
        assert os.path.getsize(path) > 0, path
    with open(str(base) + ".json") as f:
        report = json.load(f)
    assert report["model"] == "teacher" and report["dataset"] == name
    assert report["iteration"] == 123 and "config" in report and report["config_sha1"]
    assert report["classes"] == THING_CLASSES
    assert report["bbox"]["VOC-AP50-kiwi"] is None  # NaN -> null
    assert report["per_class"]["num_gt"] == [5, 4, 0]

    headers, rows = per_class_table(report)
    assert [r[0] for r in rows] == THING_CLASSES + ["mean"]
    for col in range(3, len(headers)):
        values = [r[col] for r in rows[:-1] if r[col] is not None and math.isfinite(r[col])]
        assert rows[-1][col] == pytest.approx(np.mean(values))
    assert rows[-1][headers.index("AP50 (COCO)")] == pytest.approx(res["AP50"], abs=1e-6)
    assert rows[-1][headers.index("AP50 (VOC)")] == pytest.approx(res["VOC-AP50"])

    md = open(str(base) + ".md").read()
    positions = [md.index(f"| {n} ") for n in THING_CLASSES + ["mean"]]
    assert positions == sorted(positions)
    assert "VOC-AP50" in md and "APs" in md and "nan" in md


def test_two_model_tags_two_reports(dataset, tmp_path):
    name, _ = dataset
    out = tmp_path / "r"
    for tag in ("student", "teacher"):
        _run(
            DomainDetectionEvaluator(
                name, distributed=False, output_dir=str(out), model_tag=tag, iteration=7
            )
        )
    files = sorted(f for f in os.listdir(out) if f.endswith(".json"))
    assert files == [f"report_student_{name}_iter7.json", f"report_teacher_{name}_iter7.json"]
    # Detectron2's raw dumps are kept apart too (or not written at all)
    assert sorted(os.listdir(out / "predictions")) == [f"student_{name}", f"teacher_{name}"]
    out2 = tmp_path / "r2"
    _run(
        DomainDetectionEvaluator(
            name, distributed=False, output_dir=str(out2), dump_predictions=False
        )
    )
    assert not (out2 / "predictions").exists() and len(os.listdir(out2)) == 3


def test_no_detections_does_not_crash(dataset, tmp_path):
    name, _ = dataset
    ev = DomainDetectionEvaluator(name, distributed=False, output_dir=str(tmp_path / "e"))
    res = _run(ev, {i: [] for i in GT})
    assert res["AP50"] == 0.0 and res["AP50-zebra"] == 0.0 and res["VOC-AP50-apple"] == 0.0
    assert math.isnan(res["AP50-kiwi"]) and math.isnan(res["VOC-AP50-kiwi"])
    assert all(os.path.getsize(p) > 0 for p in ev.report_paths.values())


def test_plot_metrics(tmp_path):
    spec = importlib.util.spec_from_file_location(
        "plot_metrics", os.path.join(REPO, "tools", "plot_metrics.py")
    )
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    lines = []
    for it in range(19, 200, 20):
        lines.append(
            {
                "iteration": it,
                "total_loss": 2.0 - it / 200,
                "loss_cls": 1.0 - it / 400,
                "loss_cls_mic": 0.5,
                "lr": 0.01,
            }
        )
        if (it + 1) % 100 == 0:
            for tag, ap in (("student", it / 10), ("teacher", it / 9)):
                lines.append(
                    {
                        "iteration": it,
                        f"{tag}/foggy_val/bbox/AP50": ap,
                        f"{tag}/foggy_val/bbox/AP": ap / 2,
                        f"{tag}/clear_val/bbox/AP50": ap + 5,
                    }
                )
    metrics = tmp_path / "metrics.json"
    metrics.write_text("\n".join(json.dumps(x) for x in lines) + "\n{not json\n")
    out = tmp_path / "plots"
    assert tool.main(["--metrics", str(metrics), "--output", str(out)]) == 0
    assert sorted(os.listdir(out)) == ["eval_bbox_AP50.png", "losses.png"]
    assert all(os.path.getsize(out / f) > 1000 for f in os.listdir(out))
    from mic_det.evaluation.plots import group_series, read_metrics

    evals, losses, _ = group_series(read_metrics(str(metrics)), tool.DEFAULT_KEYS)
    assert set(evals["AP50"]) == {"foggy_val", "clear_val"}
    assert set(evals["AP50"]["foggy_val"]) == {"student", "teacher"}
    assert list(losses)[0] == "total_loss"
    out2 = tmp_path / "plots2"
    assert (
        tool.main(["--metrics", str(metrics), "--output", str(out2), "--keys", r"bbox/AP$|^lr$"])
        == 0
    )
    assert sorted(os.listdir(out2)) == ["eval_bbox_AP.png", "scalars.png"]


def _cfg():
    from detectron2.config import get_cfg

    from mic_det import add_mic_config

    return add_mic_config(get_cfg())
