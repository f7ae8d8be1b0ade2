#!/usr/bin/env python
"""A GPU check in one short script: the Cityscapes -> Foggy MIC model trains on one GPU, with AMP.

The model of ``configs/cityscapes_foggy/mic_R50_FPN.yaml`` (R50-FPN, Detectron2's
full heads, EMA teacher, pseudo-boxes >= the config's threshold, 32-px masks)
trains on the built-in clear -> foggy pair (``synthetic_clear_train`` ->
``synthetic_foggy_train``, drawn on first use; its 256x320 images are resized
to a min side of ``--size``, default 512) for ``--iters`` steps (default 300)
with ``SOLVER.AMP.ENABLED True`` and MIC from step 0 (``MIC.BURN_IN_ITERS
0``). The config is built by ``tools/train_net.py``'s ``setup`` and trained
by ``MICTrainer``'s step (``MICStep.run_step``, timed as
``benchmarks/speed.py`` does: no hooks, so the lr stays at the warm-up's
start). ``MODEL.WEIGHTS`` is empty unless ``--weights`` names a file, e.g.
Detectron2's ImageNet ``R-50.pkl``; from random init the backbone and FPN
use GroupNorm instead of the config's frozen BN (``FROM_SCRATCH``: frozen BN
diverges from random weights within 2 steps).

Prints a table (median step time after ``--warmup`` steps, peak GPU memory
as ``torch.cuda.max_memory_allocated``, the mean of each ``loss_*_mic`` and
the pseudo-boxes per image over the last 50 steps) and writes it as JSON to
``--out``. Exits 1 if a MIC loss is not finite. Meant to take under 5
minutes on one GPU (an estimate: it was written on a machine without one).
Without CUDA it prints one line and exits 0.

    python -m benchmarks.gpu_check                                   # one GPU, ~300 steps (from the repository root)
    python -m benchmarks.gpu_check --weights /data/R-50.pkl --size 600
    python -m benchmarks.gpu_check --device cpu --iters 3 --size 128 \\
        --out /tmp/gpu_check.json DATALOADER.NUM_WORKERS 0           # the CPU path (tests)

Trailing ``KEY VALUE`` pairs override the config last. From random weights
the teacher gives no box scored >= 0.8 in a few hundred steps, so the masked
forward would never run: without ``--weights`` the check sets
``MIC.PSEUDO_SCORE_THRESH 0.0`` (every teacher box is a pseudo-box, as
``speed.py`` does), so the step it times is the whole MIC step, an upper bound.
"""
import argparse
import contextlib
import importlib.util
import json
import logging
import math
import os
import platform
import resource
import statistics
import sys
import time

from .speed import REPO, _cpu_model, run_steps

CONFIG = "configs/cityscapes_foggy/mic_R50_FPN.yaml"
LAST = 50  # the MIC losses and pseudo-boxes are averaged over this many final steps
# Without pretrained weights the config's frozen BatchNorm is the identity and the stem and res2
# stay at their random init (FREEZE_AT 2): features reach ~1e3-1e4 and the step-0 losses ~200,
# and the weights are inf/NaN by step 2 (measured at 128 px, fp32). From scratch the R50-FPN is
# trained as the repo's CPU model is (configs/Base-CPU-R18-FPN.yaml): GroupNorm in the backbone
# and the FPN, nothing frozen. With --weights the config's model is used as it is.
FROM_SCRATCH = ["MODEL.RESNETS.NORM", "GN", "MODEL.FPN.NORM", "GN", "MODEL.BACKBONE.FREEZE_AT", "0",
                "MIC.PSEUDO_SCORE_THRESH", "0.0"]
SKIP_MESSAGE = "CUDA is not available: GPU check skipped (--device cpu runs it on the CPU)."


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--iters", type=int, default=300, help="training steps")
    p.add_argument("--warmup", type=int, default=20,
                   help="steps left out of the step time (at most half of --iters)")
    p.add_argument("--size", type=int, default=512, help="min side of the training images (max side: 2x)")
    p.add_argument("--device", default="cuda", help="MODEL.DEVICE (cuda, cuda:1, cpu)")
    p.add_argument("--weights", default="", help="MODEL.WEIGHTS (default: none, random init)")
    p.add_argument("--out", default="benchmarks/results/gpu_check.json", help="JSON report")
    p.add_argument("--tmp", default="output/gpu_check", help="OUTPUT_DIR (config.yaml, log.txt)")
    p.add_argument("--verbose", action="store_true", help="show Detectron2's log on the terminal too")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides, applied last")
    args = p.parse_args(argv)
    if args.iters < 1:
        p.error("--iters must be >= 1")
    return args


def config_overrides(args) -> list:
    """The overrides that turn the Cityscapes -> Foggy MIC config into this check (user's opts last)."""
    from mic_det.data.synthetic import SYNTHETIC_CLASSES

    return [
        "DATASETS.TRAIN", "('synthetic_clear_train',)",
        "DATASETS.TRAIN_TARGET", "('synthetic_foggy_train',)",
        "DATASETS.TEST", "()",
        "MODEL.ROI_HEADS.NUM_CLASSES", str(len(SYNTHETIC_CLASSES)),
        "MODEL.WEIGHTS", args.weights,
        "MODEL.DEVICE", args.device,
        "INPUT.MIN_SIZE_TRAIN", f"({args.size},)",
        "INPUT.MAX_SIZE_TRAIN", str(2 * args.size),
        "INPUT.MIN_SIZE_TEST", str(args.size),
        "INPUT.MAX_SIZE_TEST", str(2 * args.size),
        "SOLVER.AMP.ENABLED", "True",
        "MIC.BURN_IN_ITERS", "0",
        "TEST.EVAL_PERIOD", "0",
        "OUTPUT_DIR", os.path.join(REPO, args.tmp),  # an absolute --tmp stays as it is
    ] + ([] if args.weights else FROM_SCRATCH) + list(args.opts)


def _train_net():
    spec = importlib.util.spec_from_file_location("train_net", os.path.join(REPO, "tools", "train_net.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _quiet_terminal(devnull):
    """The log handlers ``setup`` made while stdout was ``devnull``: back to stdout, warnings only.

    Everything (environment, full config, model) is still in ``OUTPUT_DIR/log.txt``.
    """
    for name in ("detectron2", "mic_det", "d2", "fvcore"):
        for handler in logging.getLogger(name).handlers:
            if isinstance(handler, logging.StreamHandler) and handler.stream is devnull:
                handler.setStream(sys.stdout)
                handler.setLevel(logging.WARNING)


def run(args) -> dict:
    import torch

    from mic_det.engine import MICTrainer

    train_net = _train_net()
    argv = ["--config-file", os.path.join(REPO, CONFIG)] + config_overrides(args)
    if args.verbose:
        cfg = train_net.setup(train_net.build_parser().parse_args(argv))
    else:
        with open(os.devnull, "w") as devnull:
            with contextlib.redirect_stdout(devnull):
                cfg = train_net.setup(train_net.build_parser().parse_args(argv))
            _quiet_terminal(devnull)
    cuda = cfg.MODEL.DEVICE.startswith("cuda")
    device = torch.device(cfg.MODEL.DEVICE)
    started = time.perf_counter()
    trainer = MICTrainer(cfg)
    trainer.resume_or_load(resume=False)
    built = time.perf_counter() - started
    warmup = min(args.warmup, args.iters // 2)
    every = max(1, min(LAST, args.iters // 6))
    step_times, data_times, boxes, mic = [], [], [], {}
    sync = (lambda: torch.cuda.synchronize(device)) if cuda else None
    for i, elapsed, storage in run_steps(trainer, args.iters, sync=sync):
        step_times.append(elapsed)
        data_times.append(storage.history("data_time").latest())
        boxes.append(storage.history("mic/boxes_per_image").latest())
        for key in storage.histories():
            if key.startswith("loss_") and key.endswith("_mic"):
                mic.setdefault(key, []).append(storage.history(key).latest())
        if (i + 1) % every == 0 or i + 1 == args.iters:
            losses = "  ".join(f"{k} {v[-1]:.3f}" for k, v in sorted(mic.items()))
            print(f"step {i + 1}/{args.iters}  {elapsed:.3f} s  pseudo-boxes/img {boxes[-1]:.1f}  {losses}",
                  flush=True)
    timed = step_times[warmup:]
    masked = [t for t, b in zip(timed, boxes[warmup:]) if b > 0]  # steps whose masked forward ran
    mic_losses = {k: statistics.fmean(v[-LAST:]) for k, v in sorted(mic.items())}
    return {
        "config": CONFIG,
        "device": cfg.MODEL.DEVICE,
        "gpu": torch.cuda.get_device_name(device) if cuda else None,
        "amp": bool(trainer._trainer.amp),
        "weights": cfg.MODEL.WEIGHTS or None,
        "model": {"depth": cfg.MODEL.RESNETS.DEPTH, "norm": cfg.MODEL.RESNETS.NORM,
                  "fpn_channels": cfg.MODEL.FPN.OUT_CHANNELS, "box_head_fc": cfg.MODEL.ROI_BOX_HEAD.FC_DIM},
        "image_size": [cfg.INPUT.MIN_SIZE_TRAIN[0], cfg.INPUT.MAX_SIZE_TRAIN],
        "ims_per_batch": cfg.SOLVER.IMS_PER_BATCH,
        "pseudo_score_thresh": cfg.MIC.PSEUDO_SCORE_THRESH,
        "iters": args.iters,
        "warmup": warmup,
        "step_s_median": statistics.median(timed),
        "step_s_mean": statistics.fmean(timed),
        "step_s_median_with_pseudo_boxes": statistics.median(masked) if masked else None,
        "data_s_median": statistics.median(data_times[warmup:]),
        "peak_gpu_memory_mb": torch.cuda.max_memory_allocated(device) / 2**20 if cuda else None,
        "peak_gpu_memory_reserved_mb": torch.cuda.max_memory_reserved(device) / 2**20 if cuda else None,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "last_steps": min(LAST, args.iters),
        "mic_losses": mic_losses,
        "mic_losses_finite": bool(mic_losses) and all(math.isfinite(v) for v in mic_losses.values()),
        "pseudo_boxes_per_image": statistics.fmean(boxes[-LAST:]),
        "steps_with_pseudo_boxes": sum(b > 0 for b in boxes) / len(boxes),
        "build_s": built,
        "wall_s": time.perf_counter() - started,
        "overrides": list(args.opts),
        "machine": {"cpu": _cpu_model(), "cores": os.cpu_count(), "python": platform.python_version(),
                    "torch": torch.__version__, "cuda": torch.version.cuda,
                    "omp_num_threads": os.environ.get("OMP_NUM_THREADS")},
    }


def print_table(r: dict) -> None:
    gpu = f"{r['gpu']}, " if r["gpu"] else ""
    print()
    print(f"GPU check: {r['config']} on the built-in clear -> foggy pair, {gpu}{r['device']}, "
          f"AMP {'on' if r['amp'] else 'off'}, {r['image_size'][0]} px, {r['iters']} steps")
    print()
    print("| measure | value |")
    print("|---|---|")
    print(f"| step s (median of {r['iters'] - r['warmup']}, after {r['warmup']} warm-up) | {r['step_s_median']:.3f} |")
    if r["step_s_median_with_pseudo_boxes"] is not None and r["steps_with_pseudo_boxes"] < 1:
        print(f"| step s (median of the steps with pseudo-boxes) | {r['step_s_median_with_pseudo_boxes']:.3f} |")
    print(f"| data wait s (median) | {r['data_s_median']:.3f} |")
    if r["peak_gpu_memory_mb"] is not None:
        print(f"| peak GPU memory MB (max_memory_allocated) | {r['peak_gpu_memory_mb']:.0f} |")
        print(f"| peak GPU memory MB (max_memory_reserved) | {r['peak_gpu_memory_reserved_mb']:.0f} |")
    else:
        print(f"| peak RSS MB (no GPU) | {r['peak_rss_mb']:.0f} |")
    for key, value in r["mic_losses"].items():
        print(f"| {key} (mean, last {r['last_steps']} steps) | {value:.4f} |")
    print(f"| pseudo-boxes / image (mean, last {r['last_steps']} steps) | {r['pseudo_boxes_per_image']:.2f} |")
    print(f"| steps with pseudo-boxes | {100 * r['steps_with_pseudo_boxes']:.0f}% |")
    print(f"| wall s (build + steps) | {r['wall_s']:.1f} |")
    print()
    if r["steps_with_pseudo_boxes"] == 0:
        print(f"The teacher gave no box scored >= {r['pseudo_score_thresh']:g}: the masked forward never ran, "
              "and the step time misses it (pass --weights, or MIC.PSEUDO_SCORE_THRESH 0.0).")
    if not r["mic_losses_finite"]:
        print("FAILED: a MIC loss is not finite (or none was logged).")


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(SKIP_MESSAGE)
        return 0
    report = run(args)
    print_table(report)
    out = os.path.join(REPO, args.out)  # an absolute --out stays as it is
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        json.dump(report, f, indent=2)
    print(f"wrote {args.out}")
    return 0 if report["mic_losses_finite"] else 1


if __name__ == "__main__":
    sys.exit(main())
