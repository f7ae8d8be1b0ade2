#!/usr/bin/env python
"""The demo behind `make demo`: source-only vs MIC on the built-in clear -> foggy pair.

1. Generates the pair (once; reused when its parameters match).
2. Trains source-only for ``--iters`` steps (checkpoint at ``--burn-in``).
3. Trains MIC with the same schedule, sharing the source-only run's first
   ``--burn-in`` steps: it resumes from that checkpoint (iteration, optimizer,
   lr schedule), copies the student into the teacher and runs MIC for the rest.
   Both runs therefore see the same number of steps and the same lr schedule.
4. Prints target-val (foggy) and source-val (clear) AP / AP50 side by side.

Everything goes through ``tools/train_net.py`` and ``tools/make_synthetic.py``.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET_VAL, SOURCE_VAL = "synthetic_foggy_val", "synthetic_clear_val"


def run(cmd):
    print("+", " ".join(cmd), flush=True)
    start = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=REPO)
    return time.perf_counter() - start


def final_results(output_dir):
    """The last evaluation in a run's metrics.json, as {key: value}."""
    path = os.path.join(output_dir, "metrics.json")
    last = {}
    with open(path) as f:
        for line in f:
            rec = json.loads(line)
            if any(k.endswith("/bbox/AP50") for k in rec):
                last = rec
    if not last:
        raise RuntimeError(f"{path} holds no evaluation results")
    return last


def train(config, output_dir, iters, burn_in, extra):
    return run(
        [sys.executable, "tools/train_net.py", "--config-file", config]
        + (["--resume"] if os.path.exists(os.path.join(output_dir, "last_checkpoint")) else [])
        + [
            "OUTPUT_DIR", output_dir,
            "SOLVER.MAX_ITER", str(iters),
            "SOLVER.STEPS", f"({int(iters * 0.85)},)",
            "SOLVER.CHECKPOINT_PERIOD", str(burn_in),
            "TEST.EVAL_PERIOD", str(iters),
        ]
        + extra
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default="output/demo")
    parser.add_argument("--iters", type=int, default=1200, help="training steps of each run")
    parser.add_argument("--burn-in", type=int, default=800, help="source-only steps before MIC starts")
    parser.add_argument("--fresh", action="store_true", help="delete earlier demo outputs first")
    args, extra = parser.parse_known_args()
    if not 0 < args.burn_in < args.iters:
        parser.error("--burn-in must lie between 0 and --iters")
    if args.fresh and os.path.isdir(os.path.join(REPO, args.output)):
        shutil.rmtree(os.path.join(REPO, args.output))

    timings = {"generate": run([sys.executable, "tools/make_synthetic.py"])}
    src_dir = os.path.join(args.output, "source_only")
    mic_dir = os.path.join(args.output, "mic")
    timings["source_only"] = train("configs/synthetic/source_only.yaml", src_dir, args.iters, args.burn_in, extra)

    ckpt = f"model_{args.burn_in - 1:07d}.pth"
    if not os.path.exists(os.path.join(REPO, mic_dir, "last_checkpoint")):
        os.makedirs(os.path.join(REPO, mic_dir), exist_ok=True)
        shutil.copy(os.path.join(REPO, src_dir, ckpt), os.path.join(REPO, mic_dir, ckpt))
        with open(os.path.join(REPO, mic_dir, "last_checkpoint"), "w") as f:
            f.write(ckpt)
    timings["mic"] = train(
        "configs/synthetic/mic.yaml", mic_dir, args.iters, args.burn_in, ["MIC.BURN_IN_ITERS", str(args.burn_in)] + extra
    )

    src, mic = final_results(os.path.join(REPO, src_dir)), final_results(os.path.join(REPO, mic_dir))
    rows = [("source-only (student)", src, "student"), ("MIC (student)", mic, "student"), ("MIC (EMA teacher)", mic, "teacher")]
    print()
    print(f"Built-in pair, {args.iters} steps per run, MIC after {args.burn_in} shared source-only steps")
    print(f"| {'model':<22} | target AP50 | target AP | source AP50 | source AP |")
    print(f"|{'-' * 24}|-------------|-----------|-------------|-----------|")
    summary = {}
    for name, res, tag in rows:
        vals = [res.get(f"{tag}/{d}/bbox/{m}", float("nan")) for d in (TARGET_VAL, SOURCE_VAL) for m in ("AP50", "AP")]
        summary[name] = dict(zip(("target_AP50", "target_AP", "source_AP50", "source_AP"), vals))
        print(f"| {name:<22} | {vals[0]:11.1f} | {vals[1]:9.1f} | {vals[2]:11.1f} | {vals[3]:9.1f} |")
    print()
    print("Wall time (s): " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()))
    with open(os.path.join(REPO, args.output, "demo_results.json"), "w") as f:
        json.dump({"results": summary, "seconds": timings, "iters": args.iters, "burn_in": args.burn_in}, f, indent=2)
    print(f"Per-class tables, PR curves and plots: {args.output}/*/inference/")


if __name__ == "__main__":
    main()
