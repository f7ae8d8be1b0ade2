#!/usr/bin/env python
"""How long evaluation's metric computation takes, without a model.

Why: the trainer evaluates student *and* teacher at every evaluation period,
so the metrics must cost little next to inference. This times the whole
``DomainDetectionEvaluator.evaluate()`` (COCO + per-class AP50 + VOC AP50 +
json/markdown/PNG reports) on synthetic ground truth and detections, and each
part on its own, for the size of a Foggy Cityscapes val run
(500 images x 100 detections, 8 classes).

Example::

    OMP_NUM_THREADS=1 python -m benchmarks.eval_speed --output eval_speed.json
"""

import argparse
import contextlib
import io
import json
import os
import platform
import sys
import tempfile
import time
from typing import Callable, Dict, List, Tuple

import numpy as np
import torch


def synthetic_set(
    root: str,
    num_images: int,
    dets_per_image: int,
    gt_per_image: int,
    num_classes: int,
    seed: int = 0,
):
    """Write a COCO json + empty image files; return (json path, per-image detections)."""
    rng = np.random.default_rng(seed)
    W, H = 1024, 512
    images, anns, dets = [], [], {}
    for image_id in range(1, num_images + 1):
        images.append({"id": image_id, "file_name": f"{image_id}.jpg", "height": H, "width": W})
        xy = rng.uniform(0, [W - 150, H - 150], (gt_per_image, 2))
        wh = rng.uniform(8, 150, (gt_per_image, 2))
        cls = rng.integers(0, num_classes, gt_per_image)
        crowd = rng.random(gt_per_image) < 0.02
        for (x, y), (w, h), c, cr in zip(xy, wh, cls, crowd):
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": image_id,
                    "category_id": int(c) + 1,
                    "bbox": [float(x), float(y), float(w), float(h)],
                    "area": float(w * h),
                    "iscrowd": int(cr),
                }
            )
        # half the detections near ground truth (hits and duplicates), half anywhere
        n_hit = dets_per_image // 2
        src = rng.integers(0, gt_per_image, n_hit)
        gt_xyxy = np.concatenate([xy, xy + wh], 1)
        hit = gt_xyxy[src] + rng.normal(0, 6, (n_hit, 4))
        n_bg = dets_per_image - n_hit
        bxy = rng.uniform(0, [W - 150, H - 150], (n_bg, 2))
        bg = np.concatenate([bxy, bxy + rng.uniform(8, 150, (n_bg, 2))], 1)
        boxes = np.concatenate([hit, bg])
        boxes[:, 2:] = np.maximum(boxes[:, 2:], boxes[:, :2] + 1)
        classes = np.concatenate(
            [
                np.where(rng.random(n_hit) < 0.9, cls[src], rng.integers(0, num_classes, n_hit)),
                rng.integers(0, num_classes, n_bg),
            ]
        )
        scores = np.concatenate([rng.uniform(0.3, 1.0, n_hit), rng.uniform(0.05, 0.7, n_bg)])
        dets[image_id] = (boxes, scores, classes)
    cats = [{"id": c + 1, "name": f"class{c}"} for c in range(num_classes)]
    os.makedirs(os.path.join(root, "images"), exist_ok=True)
    for im in images:
        open(os.path.join(root, "images", im["file_name"]), "wb").close()
    json_file = os.path.join(root, "gt.json")
    with open(json_file, "w") as f:
        json.dump({"images": images, "annotations": anns, "categories": cats}, f)
    return json_file, dets


def timed(fn: Callable[[], object]) -> Tuple[float, float]:
    """(wall, CPU) seconds of one call. CPU time is this process's only, so it
    stays meaningful when other jobs share the cores and stretch the wall time."""
    w0, c0 = time.perf_counter(), time.process_time()
    with contextlib.redirect_stdout(io.StringIO()):
        fn()
    return time.perf_counter() - w0, time.process_time() - c0


def best_of(fn: Callable[[], object], repeats: int) -> Tuple[float, float]:
    return min((timed(fn) for _ in range(repeats)), key=lambda t: t[0])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--dets-per-image", type=int, default=100)
    parser.add_argument("--gt-per-image", type=int, default=20)
    parser.add_argument("--classes", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3, help="best of N")
    parser.add_argument(
        "--skip-official",
        action="store_true",
        help="skip the (slow) pure-pycocotools end-to-end run",
    )
    parser.add_argument("--output", default="", help="write the timings here as json")
    args = parser.parse_args(argv)

    import logging

    from detectron2.structures import Boxes, Instances
    from detectron2.evaluation.coco_evaluation import COCOeval_opt
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    from mic_det.data import register_coco_domain
    from mic_det.detection.evaluator import DomainDetectionEvaluator
    from mic_det.detection.voc import voc_ap50_per_class
    from mic_det.detection import reports

    logging.getLogger("detectron2").setLevel(logging.WARNING)
    fast_built = COCOeval_opt is not COCOeval
    tmp = tempfile.mkdtemp(prefix="mic_eval_speed_")
    json_file, dets = synthetic_set(
        tmp, args.images, args.dets_per_image, args.gt_per_image, args.classes
    )
    name = "mic_eval_speed"
    register_coco_domain(name, json_file, os.path.join(tmp, "images"))

    inputs, outputs = [], []
    for image_id, (boxes, scores, classes) in dets.items():
        inst = Instances((512, 1024))
        inst.pred_boxes = Boxes(torch.as_tensor(boxes, dtype=torch.float32))
        inst.scores = torch.as_tensor(scores, dtype=torch.float32)
        inst.pred_classes = torch.as_tensor(classes, dtype=torch.int64)
        inputs.append({"image_id": image_id})
        outputs.append({"instances": inst})

    timings: Dict[str, Tuple[float, float]] = {}

    def run_evaluator(fast: bool, dump: bool = True):
        ev = DomainDetectionEvaluator(
            name,
            distributed=False,
            output_dir=os.path.join(tmp, "out"),
            use_fast_impl=fast,
            dump_predictions=dump,
            iteration=0,
        )
        ev.reset()
        for i in range(0, len(inputs), 8):  # batches, as inference_on_dataset feeds them
            ev.process(inputs[i : i + 8], outputs[i : i + 8])
        return timed(ev.evaluate)

    # --- end to end: evaluate() after process() (what the trainer pays per model and set)
    run_evaluator(True)  # first call pays one-time imports (matplotlib); not what an eval costs
    timings["evaluate_total_fast"] = min(
        (run_evaluator(True) for _ in range(args.repeats)), key=lambda t: t[0]
    )
    timings["evaluate_total_fast_no_dump"] = min(
        (run_evaluator(True, dump=False) for _ in range(args.repeats)), key=lambda t: t[0]
    )
    if not args.skip_official:
        timings["evaluate_total_official"] = run_evaluator(False)

    # --- the parts
    coco_results = [
        {
            "image_id": i,
            "category_id": int(c) + 1,
            "bbox": [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])],
            "score": float(s),
        }
        for i, (boxes, scores, classes) in dets.items()
        for b, s, c in zip(boxes, scores, classes)
    ]
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO(json_file)

    def coco(fn):
        coco_dt = coco_gt.loadRes(coco_results)
        ev = fn(coco_gt, coco_dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
        return ev

    if fast_built:
        timings["coco_fast_cpp"] = best_of(lambda: coco(COCOeval_opt), args.repeats)
    with contextlib.redirect_stdout(io.StringIO()):
        ev_ref = coco(COCOeval_opt if fast_built else COCOeval)

    def per_class():
        p = ev_ref.eval["precision"]
        return [np.mean(p[0, :, k, 0, -1][p[0, :, k, 0, -1] > -1]) for k in range(p.shape[2])]

    timings["per_class_ap50_from_coco"] = best_of(per_class, args.repeats)

    det_in = {i: {"boxes": b, "scores": s, "classes": c} for i, (b, s, c) in dets.items()}
    gt_in = {}
    for i in coco_gt.getImgIds():
        anns = coco_gt.imgToAnns[i]
        b = np.array([a["bbox"] for a in anns], dtype=np.float64).reshape(-1, 4)
        b[:, 2:] += b[:, :2]
        gt_in[i] = {
            "boxes": b,
            "classes": np.array([a["category_id"] - 1 for a in anns]),
            "ignore": np.array([bool(a["iscrowd"]) for a in anns]),
        }
    timings["voc_ap50"] = best_of(
        lambda: voc_ap50_per_class(det_in, gt_in, args.classes), args.repeats
    )

    per_class_voc, curves = voc_ap50_per_class(det_in, gt_in, args.classes)
    names = [f"class{c}" for c in range(args.classes)]
    report = {
        "model": "student",
        "dataset": name,
        "iteration": 0,
        "config": "",
        "classes": names,
        "per_class": {
            "AP50": [0.0] * len(names),
            "VOC-AP50": [100 * per_class_voc[c] for c in range(len(names))],
            "AP": [0.0] * len(names),
            "num_gt": [0] * len(names),
            "num_det": [0] * len(names),
        },
        "bbox": {"AP": 0.0, "AP50": 0.0},
    }
    base = os.path.join(tmp, "bench_report")
    timings["report_json_md"] = best_of(
        lambda: (
            reports.write_json_report(base + ".json", report),
            reports.write_markdown_report(base + ".md", report),
        ),
        args.repeats,
    )
    timings["report_png"] = best_of(
        lambda: reports.plot_pr_curves(
            base + ".png",
            {n: curves[c] for c, n in enumerate(names)},
            dict(zip(names, report["per_class"]["VOC-AP50"])),
        ),
        args.repeats,
    )

    descriptions = {
        "evaluate_total_fast": "evaluate() end to end, C++ COCOeval (target < 2 s)",
        "evaluate_total_fast_no_dump": "the same, dump_predictions=False",
        "evaluate_total_official": "evaluate() end to end, pure pycocotools",
        "coco_fast_cpp": "COCO loadRes + evaluate + accumulate + summarize (C++)",
        "per_class_ap50_from_coco": "per-class AP50 from the precision array",
        "voc_ap50": "VOC AP50, all classes (voc_ap50_per_class)",
        "report_json_md": "json + markdown report",
        "report_png": "precision-recall PNG",
    }
    print(
        f"{args.images} images x {args.dets_per_image} detections, {args.gt_per_image} GT/image, "
        f"{args.classes} classes; best of {args.repeats}; "
        f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, "
        f"torch threads {torch.get_num_threads()}"
    )
    from tabulate import tabulate

    rows = [[k, f"{w:.3f}", f"{c:.3f}", descriptions[k]] for k, (w, c) in timings.items()]
    print(tabulate(rows, headers=["stage", "wall s", "CPU s", "what"], tablefmt="pipe"))
    if args.output:
        with open(args.output, "w") as f:
            json.dump(
                {
                    "setup": {
                        "images": args.images,
                        "dets_per_image": args.dets_per_image,
                        "gt_per_image": args.gt_per_image,
                        "classes": args.classes,
                        "repeats": args.repeats,
                        "fast_coco_built": fast_built,
                        "cpu_count": os.cpu_count(),
                        "python": platform.python_version(),
                        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
                    },
                    "seconds": {k: {"wall": w, "cpu": c} for k, (w, c) in timings.items()},
                },
                f,
                indent=2,
            )
        print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
