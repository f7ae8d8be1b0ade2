#!/usr/bin/env python
"""Training-step time, inference speed and peak memory of each task's methods.

Detection: source-only, MIC and MIC + SADA; segmentation: self-training
(DACS) and MIC on it; classification: CDAN+MCC and MIC on it. Each MIC row
is also given as a ratio to the step it adds to (the targets: a
segmentation MIC step <= 1.5x self-training, a classification MIC step <=
1.6x CDAN+MCC).

Each method runs in its own process (so peak resident memory is its own) on
the same model and image size (``configs/synthetic/*.yaml``, the built-in
pair): ``--warmup`` steps, then the median of ``--steps`` timed steps, the
share of a step spent waiting for data, inference images/s of the trained
architecture, and the evaluation metric time for 500 images x 100
detections (``benchmarks/eval_speed.py``). Prints a table, writes JSON.

The MIC step's compute floor is source forward+backward + teacher forward +
masked forward+backward, about 2.3x a source-only step. To time the full
path, the teacher must give boxes: pass ``--weights`` (a trained checkpoint,
e.g. the demo's source-only model); without it the pseudo-label threshold is
set to 0 so every target image is pseudo-labelled (an upper bound); the
segmentation rows always use threshold 0 for the same reason.

    python -m benchmarks.speed --output benchmarks/results/speed.json \\
        --weights output/demo/source_only/model_final.pth
"""
import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
METHODS = {
    "source_only": "configs/synthetic/source_only.yaml",
    "mic": "configs/synthetic/mic.yaml",
    "mic_sada": "configs/synthetic/mic_sada.yaml",
    "seg_self_training": "configs/synthetic_seg/self_training.yaml",
    "seg_mic": "configs/synthetic_seg/mic.yaml",
    "cls_cdan_mcc": "configs/synthetic_cls/cdan_mcc.yaml",
    "cls_mic": "configs/synthetic_cls/mic.yaml",
}
# The step each row is compared with, and the ratio the issues ask for (None: reported only).
BASELINES = {
    "mic": ("source_only", None), "mic_sada": ("source_only", None),
    "seg_mic": ("seg_self_training", 1.5), "cls_mic": ("cls_cdan_mcc", 1.6),
}


def run_steps(trainer, count: int, sync=None):
    """Run ``count`` training steps of ``trainer`` (a MICTrainer after ``resume_or_load``).

    Only the step (``MICStep.run_step``: data, forwards, backward, optimizer,
    EMA), none of the trainer's hooks (no lr schedule, checkpoints,
    evaluation). Yields ``(iteration, seconds, storage)`` after each step;
    ``sync`` (e.g. ``torch.cuda.synchronize``) is called before the clock is
    read, so asynchronous GPU work is inside the step's time.
    """
    from detectron2.utils.events import EventStorage

    step = trainer._trainer
    with EventStorage(0) as storage:
        step.storage = storage
        for i in range(count):
            step.iter = i
            start = time.perf_counter()
            step.run_step()
            if sync is not None:
                sync()
            yield i, time.perf_counter() - start, storage


def worker(args) -> dict:
    """Time one method in this process."""
    import torch
    from detectron2.config import get_cfg

    import mic_det  # noqa: F401
    from mic_det import add_mic_config
    from mic_det.engine import MICTrainer

    cfg = get_cfg()
    add_mic_config(cfg)
    cfg.merge_from_file(os.path.join(REPO, METHODS[args.worker]))
    opts = ["OUTPUT_DIR", os.path.join(args.tmp, args.worker), "MIC.BURN_IN_ITERS", "0", "SOLVER.WARMUP_ITERS", "0",
            "UDA.START_ITER", "0"]
    detection = cfg.MODEL.TASK == "DetectionTask"
    if args.weights and detection:
        opts += ["MODEL.WEIGHTS", args.weights]
    elif cfg.MIC.ENABLED and detection:
        opts += ["MIC.PSEUDO_SCORE_THRESH", "0.0"]
    elif cfg.MIC.ENABLED and cfg.MODEL.TASK == "SegmentationTask":
        # An untrained teacher is confident nowhere, and a target without confident
        # pixels skips the masked forward: threshold 0 times the full path.
        opts += ["SEG.PSEUDO_THRESHOLD", "0.0"]
    cfg.merge_from_list(opts + args.opts)
    trainer = MICTrainer(cfg)
    trainer.resume_or_load(resume=False)
    step_times, data_times, boxes = [], [], []
    for i, elapsed, storage in run_steps(trainer, args.warmup + args.steps):
        if i >= args.warmup:
            step_times.append(elapsed)
            data_times.append(storage.history("data_time").latest())
            if "mic/boxes_per_image" in storage.histories():
                boxes.append(storage.history("mic/boxes_per_image").latest())

    model = trainer.model.eval()
    dataset = cfg.DATASETS.TEST[0]
    loader = trainer.task.build_test_loader(cfg, dataset)
    times = []
    with torch.no_grad():
        for i, inputs in enumerate(loader):
            if i >= args.infer_images + 3:
                break
            start = time.perf_counter()
            model(inputs)
            if i >= 3:  # images per batch: 1 for detection and segmentation, a batch for classification
                times.append((time.perf_counter() - start) / len(inputs))
    return {
        "method": args.worker,
        "step_s_median": statistics.median(step_times),
        "step_s_mean": statistics.fmean(step_times),
        "data_wait_share": statistics.fmean(d / s for d, s in zip(data_times, step_times)),
        "pseudo_boxes_per_image": statistics.fmean(boxes) if boxes else None,
        "infer_images_per_s": len(times) / sum(times),  # times are per image
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "steps": args.steps,
        "warmup": args.warmup,
        "image_size": [cfg.INPUT.CLS.SIZE] * 2 if cfg.MODEL.TASK == "ClassificationTask"
        else [cfg.INPUT.MIN_SIZE_TRAIN[0], cfg.INPUT.MAX_SIZE_TRAIN],
        "ims_per_batch": cfg.SOLVER.IMS_PER_BATCH,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30, help="timed steps per method")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--infer-images", type=int, default=50)
    parser.add_argument("--weights", default="", help="trained detection checkpoint for the detection rows (recommended)")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--output", default="benchmarks/results/speed.json")
    parser.add_argument("--tmp", default="output/bench_speed")
    parser.add_argument("--worker", choices=list(METHODS), help=argparse.SUPPRESS)
    parser.add_argument("--worker-json", help=argparse.SUPPRESS)
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides for every method")
    args = parser.parse_args()

    if args.worker:
        with open(args.worker_json, "w") as f:
            json.dump(worker(args), f)
        return

    results = []
    for method in args.methods.split(","):
        out = os.path.join(REPO, args.tmp, f"{method}.json")
        os.makedirs(os.path.dirname(out), exist_ok=True)
        cmd = [sys.executable, "-m", "benchmarks.speed", "--worker", method, "--worker-json", out,
               "--steps", str(args.steps), "--warmup", str(args.warmup), "--infer-images", str(args.infer_images),
               "--tmp", args.tmp] + (["--weights", args.weights] if args.weights else []) + args.opts
        print("+", " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True, cwd=REPO, stdout=subprocess.DEVNULL)
        with open(out) as f:
            results.append(json.load(f))

    eval_json = os.path.join(REPO, args.tmp, "eval_speed.json")
    subprocess.run([sys.executable, "-m", "benchmarks.eval_speed", "--output", eval_json],
                   check=True, cwd=REPO, stdout=subprocess.DEVNULL)
    with open(eval_json) as f:
        eval_speed = json.load(f)

    by_name = {r["method"]: r for r in results}
    print()
    print("| method | step s (median) | x the step it adds to | target | data wait | pseudo-boxes/img | infer img/s "
          "| peak RSS MB |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        base, limit = BASELINES.get(r["method"], (None, None))
        ratio = r["step_s_median"] / by_name[base]["step_s_median"] if base in by_name else None
        r.update({"compared_with": base, "ratio": ratio, "ratio_target": limit,
                  "met": (ratio <= limit) if ratio is not None and limit is not None else None})
        boxes = "-" if r["pseudo_boxes_per_image"] is None else f"{r['pseudo_boxes_per_image']:.1f}"
        shown = "-" if ratio is None else f"{ratio:.2f} ({base})"
        target = "-" if r["met"] is None else f"<= {limit} {'met' if r['met'] else 'missed'}"
        print(f"| {r['method']} | {r['step_s_median']:.3f} | {shown} | {target} | {100 * r['data_wait_share']:.1f}% | "
              f"{boxes} | {r['infer_images_per_s']:.1f} | {r['peak_rss_mb']:.0f} |")
    print()
    print(f"evaluation metrics, 500 images x 100 detections: {json.dumps(eval_speed.get('summary', eval_speed))[:300]}")
    import torch

    report = {
        "machine": {"cpu": _cpu_model(), "cores": os.cpu_count(), "python": platform.python_version(),
                    "torch": torch.__version__, "omp_num_threads": os.environ.get("OMP_NUM_THREADS")},
        "weights": args.weights or None,
        "methods": results,
        "eval_speed": eval_speed,
    }
    os.makedirs(os.path.dirname(os.path.join(REPO, args.output)), exist_ok=True)
    with open(os.path.join(REPO, args.output), "w") as f:
        json.dump(report, f, indent=2)
    print(f"wrote {args.output}")


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


if __name__ == "__main__":
    main()
