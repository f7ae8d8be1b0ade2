#!/usr/bin/env python
"""Propose MIC.PSEUDO_SCORE_THRESH (delta) from a teacher's scores on the target training images, label-free.

    python tools/propose_threshold.py --config-file output/synthetic_mic/config.yaml \\
        --weights output/synthetic_mic/model_final.pth [--model teacher] [--num-images 200]

Prints, per candidate delta, the pseudo-boxes per target image, the share of
images with at least one, and their mean score, next to the labelled objects
per source image; then the proposal (see :mod:`mic_det.detection.threshold`)
and the config line to use it. A run's own datasets come from its record
(``OUTPUT_DIR/datasets.yaml``); ``--register-*`` flags are for other configs. A source-only checkpoint works too
(``--model student``): it is the teacher MIC would start from.
"""
import argparse
import itertools
import logging
import sys

import torch
from detectron2.data import DatasetCatalog
from detectron2.utils.logger import setup_logger
from tabulate import tabulate

from mic_det.data.checks import check_datasets_registered
from mic_det.data.cli import add_domain_arguments, parse_args, register_domains_from_args
from mic_det.detection.threshold import DEFAULT_GRID, propose_delta, score_table
from mic_det.engine import build_task
from mic_det.predictor import Predictor
from mic_det.user_errors import exit_on_input_error

logger = logging.getLogger("mic_det")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", required=True, help="the run's config (OUTPUT_DIR/config.yaml)")
    p.add_argument("--weights", required=True, help="checkpoint (model_final.pth, a source-only model, ...)")
    p.add_argument("--model", choices=("student", "teacher"), default="teacher")
    p.add_argument("--num-images", type=int, default=200, help="target training images scored (default 200)")
    p.add_argument("--min-coverage", type=float, default=0.5,
                   help="share of target images that must get a pseudo-box at the proposed delta")
    p.add_argument("--debug", action="store_true", help="show tracebacks of input errors")
    add_domain_arguments(p)
    p.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    return p


def teacher_scores(predictor: Predictor, num_images: int):
    """The model's detection scores (after its NMS, above 0.05) on the first target training images."""
    cfg = predictor.cfg
    if not cfg.DATASETS.TRAIN_TARGET:
        raise ValueError(f"{cfg.DATASETS.TRAIN_TARGET=}: the config names no target training set")
    loader = build_task(cfg).build_test_loader(cfg, cfg.DATASETS.TRAIN_TARGET[0])
    scores = []
    with torch.no_grad():
        for batch in itertools.islice(loader, num_images):
            for out in predictor.model(batch):
                scores.append(out["instances"].scores.cpu())
    return scores


def main(argv=None) -> float:
    args = parse_args(build_parser(), argv)
    setup_logger(name="mic_det")
    register_domains_from_args(args)
    predictor = Predictor(args.config_file, args.weights, args.model, score_thresh=0.05, opts=args.opts)
    cfg = predictor.cfg
    check_datasets_registered(cfg)  # the run's record registered its own; else a clear error
    scores = teacher_scores(predictor, args.num_images)
    source = DatasetCatalog.get(cfg.DATASETS.TRAIN[0]) if cfg.DATASETS.TRAIN else []
    objects = sum(sum(not a.get("iscrowd", 0) for a in d.get("annotations", [])) for d in source) / max(len(source), 1)
    table = score_table(scores, DEFAULT_GRID)
    configured = cfg.MIC.PSEUDO_SCORE_THRESH
    delta = propose_delta(table, configured, args.min_coverage)
    print(f"{args.model} of {args.weights} on {len(scores)} images of {cfg.DATASETS.TRAIN_TARGET[0]}; "
          f"labelled objects per source image: {objects:.2f}")
    print(tabulate([[r["delta"], r["boxes_per_image"], r["images_covered"], r["mean_score"]] for r in table],
                   headers=["delta", "boxes/image", "images with a box", "mean score"], floatfmt=".2f"))
    covered = next(r["images_covered"] for r in table if r["delta"] >= delta)
    if covered < args.min_coverage:
        print(f"\nEven delta {delta:g} leaves {1 - covered:.0%} of target images without a pseudo-box: the "
              "model is too weak on this shift for MIC; train the source model longer first.")
    elif delta == configured:
        print(f"\nKeep MIC.PSEUDO_SCORE_THRESH {configured:g}: it gives a pseudo-box on {covered:.0%} of target images.")
    else:
        print(f"\nProposed: MIC.PSEUDO_SCORE_THRESH {delta:g} (the configured {configured:g} leaves most target "
              f"images without a pseudo-box; {delta:g} covers {covered:.0%}).")
    return delta


if __name__ == "__main__":
    with exit_on_input_error("--debug" in sys.argv):
        main()
