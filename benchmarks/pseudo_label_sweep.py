#!/usr/bin/env python
"""Pseudo-label precision / recall / F1 of a checkpoint against a labelled target-train set.

Why: the pseudo-label threshold delta (``MIC.PSEUDO_SCORE_THRESH``) trades
precision for recall. Every object the teacher misses is taught to the
masked student as background, every false box as an object. The paper's
0.8 was set for an ImageNet-pretrained R50; a weaker teacher (a CPU model
from scratch, a harder domain) may want another value. This measures, for a
given teacher (a source-only checkpoint at the end of a burn-in, or a MIC
checkpoint's EMA teacher), how many of its boxes on the *training* target
images are right, for a range of thresholds, so delta can be picked on
target-train labels without ever looking at target val.

Boxes are compared in original image coordinates, after the same class-wise
NMS as training (``MIC.PSEUDO_NMS_THRESH``); a box is right when it matches a
free label box of its class with IoU >= 0.5 (see
:func:`mic_det.detection.pseudo_labels.pseudo_label_quality`).

Example::

    python -m benchmarks.pseudo_label_sweep --config-file configs/synthetic/mic.yaml \\
        --weights output/demo/source_only/model_0000799.pth --dataset synthetic_foggy_train
"""
import argparse
import json
import os
from typing import Dict, List, Sequence

DEFAULT_THRESHOLDS = "0.3,0.4,0.5,0.6,0.7,0.8,0.9"


def sweep(predictions: Sequence, labels: Sequence, thresholds: Sequence[float], nms_thresh: float) -> List[Dict]:
    """Pooled precision / recall / F1 / boxes per image of ``predictions`` at each threshold."""
    from mic_det.detection.pseudo_labels import make_pseudo_labels, pseudo_label_quality

    rows = []
    for t in thresholds:
        pseudo = make_pseudo_labels(predictions, t, nms_thresh)
        q = pseudo_label_quality(pseudo, labels)
        p, r = q["precision"], q["recall"]
        rows.append(
            {
                "threshold": t,
                "precision": p,
                "recall": r,
                "f1": 2 * p * r / (p + r) if p + r > 0 else 0.0,
                "boxes_per_image": q["num_pseudo"] / max(len(labels), 1),
                "labels_per_image": q["num_gt"] / max(len(labels), 1),
            }
        )
    return rows


def main(argv=None) -> List[Dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--weights", required=True, help="checkpoint to score")
    parser.add_argument("--model", choices=("student", "teacher"), default="student",
                        help="which weights of the checkpoint to use (teacher: the EMA teacher of a MIC run)")
    parser.add_argument("--dataset", required=True, help="a labelled registered *training* target set")
    parser.add_argument("--thresholds", default=DEFAULT_THRESHOLDS)
    parser.add_argument("--max-images", type=int, default=0, help="score only the first N images (0: all)")
    parser.add_argument("--output", default="", help="write the rows as JSON here")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides")
    args = parser.parse_args(argv)

    import torch
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.config import get_cfg
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.data import detection_utils as utils
    from detectron2.data.build import build_detection_test_loader

    import mic_det  # noqa: F401
    from mic_det import add_mic_config
    from mic_det.data.mapper import DomainDatasetMapper
    from mic_det.data.builtin import register_config_data
    from mic_det.engine import MICTrainer
    from mic_det.teacher import teacher_weights_from_checkpoint

    cfg = get_cfg()
    add_mic_config(cfg)
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    register_config_data(cfg)
    thresholds = [float(t) for t in args.thresholds.split(",")]

    dicts = DatasetCatalog.get(args.dataset)
    if not dicts or "annotations" not in dicts[0]:
        raise SystemExit(f"--dataset {args.dataset} has no box labels: the sweep needs a labelled set")
    if args.max_images:
        dicts = dicts[: args.max_images]
    model = MICTrainer.build_model(cfg).eval()
    checkpoint = DetectionCheckpointer(model).resume_or_load(args.weights, resume=False)
    if args.model == "teacher":
        if "teacher" not in checkpoint:
            raise SystemExit(f"--weights {args.weights} holds no EMA teacher (not a MIC checkpoint)")
        model.load_state_dict(teacher_weights_from_checkpoint(checkpoint))

    loader = build_detection_test_loader(dicts, mapper=DomainDatasetMapper(cfg, is_train=False), num_workers=1)
    predictions, labels = [], []
    with torch.no_grad():
        for inputs, record in zip(loader, dicts):
            out = model(inputs)[0]["instances"].to("cpu")
            predictions.append(out)
            anns = [a for a in record["annotations"] if not a.get("iscrowd", 0)]
            labels.append(utils.annotations_to_instances(anns, out.image_size))
    rows = sweep(predictions, labels, thresholds, cfg.MIC.PSEUDO_NMS_THRESH)

    names = MetadataCatalog.get(args.dataset).get("thing_classes", [])
    print(f"{args.weights} ({args.model}) on {args.dataset}: {len(dicts)} images, {len(names)} classes")
    print("| delta | precision | recall | F1 | boxes / image | labels / image |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['threshold']:.2f} | {r['precision']:.3f} | {r['recall']:.3f} | {r['f1']:.3f} "
              f"| {r['boxes_per_image']:.2f} | {r['labels_per_image']:.2f} |")
    best = max(rows, key=lambda r: r["f1"])
    print(f"best F1 {best['f1']:.3f} at delta {best['threshold']:.2f}")
    if args.output:
        os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
        with open(args.output, "w") as f:
            json.dump({"weights": args.weights, "model": args.model, "dataset": args.dataset,
                       "images": len(dicts), "rows": rows, "best": best}, f, indent=2)
    return rows


if __name__ == "__main__":
    main()
