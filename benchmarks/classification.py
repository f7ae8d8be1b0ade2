#!/usr/bin/env python
"""Does MIC help image classification? control, CDAN+MCC, MIC on CDAN+MCC and the oracle, paired per seed.

Each method trains from scratch with its ``configs/synthetic_cls/*.yaml`` (the
same seed, schedule and data order per seed; MIC from ``MIC.BURN_IN_ITERS``),
is evaluated once at its end on the foggy target val and the clear source val,
and the statistics and report come from the detection benchmark's
``bench_stats`` / ``bench_report`` (paired gains over the control, % of the
oracle). Targets: MIC > CDAN+MCC > control by more than 3 paired std, MIC >=
90% of the oracle, a MIC step <= 1.6x a CDAN+MCC step (median ``time`` of
``metrics.json`` over each run's MIC phase).

    python benchmarks/classification.py                      # 3 seeds, every method
    python benchmarks/classification.py --seeds 0 --methods control,mic SOLVER.MAX_ITER 600

Finished runs (a ``model_final.pth``) are skipped, so re-running continues.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
from typing import Dict, List, Optional, Tuple

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_report import main_table, to_json, verdict_lines  # noqa: E402
from bench_stats import SIGNIFICANCE, paired, summarize, verdicts  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET_VAL, SOURCE_VAL = "synthetic_cls_foggy_val", "synthetic_cls_clear_val"
METHODS = {"control": "source_only.yaml", "cdan_mcc": "cdan_mcc.yaml", "mic": "mic.yaml", "oracle": "oracle.yaml"}
LABELS = {"control": "source only (control)", "cdan_mcc": "CDAN+MCC", "mic": "MIC on CDAN+MCC", "oracle": "oracle"}
METRICS = ("target_top1", "target_mean_class_acc", "source_top1")
KEY_METRIC = "target_top1"


def run(method: str, seed: int, out_root: str, opts: List[str]) -> str:
    """Train one method for one seed (skipped when already finished); returns its output folder."""
    out = os.path.join(out_root, f"{method}_seed{seed}")
    if os.path.isfile(os.path.join(out, "model_final.pth")):
        return out
    cmd = [sys.executable, os.path.join(REPO, "tools", "train_net.py"), "--config-file",
           os.path.join(REPO, "configs", "synthetic_cls", METHODS[method]),
           "--resume", "SEED", str(seed), "OUTPUT_DIR", out, "DATASETS.TEST", f"('{TARGET_VAL}', '{SOURCE_VAL}')",
           "TEST.EVAL_PERIOD", "0"] + opts
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "bench.log"), "w") as log:
        subprocess.run(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, check=True)
    return out


def read_run(out: str) -> Dict:
    """The final evaluation of student and teacher, and the median step time of the MIC/UDA phase."""
    with open(os.path.join(out, "metrics.json")) as f:
        records = [json.loads(line) for line in f]
    final = [r for r in records if f"student/{TARGET_VAL}/cls/top1" in r][-1]
    models = {}
    for tag in ("student", "teacher"):
        if f"{tag}/{TARGET_VAL}/cls/top1" in final:
            models[tag] = {"target_top1": final[f"{tag}/{TARGET_VAL}/cls/top1"],
                           "target_mean_class_acc": final[f"{tag}/{TARGET_VAL}/cls/mean_class_acc"],
                           "source_top1": final.get(f"{tag}/{SOURCE_VAL}/cls/top1")}
    mic_steps = [r["time"] for r in records if "time" in r and "loss_cls_mic" in r]
    steps = mic_steps or [r["time"] for r in records if "time" in r and "loss_cdan" in r]
    return {"models": models, "step_time": statistics.median(steps) if steps else None}


def report(runs: Dict[str, Dict[int, Dict]], methods: List[str], seeds: List[int]) -> Tuple[List[str], Dict]:
    """The markdown lines and the json data (summary, verdicts) of the runs."""
    summary = summarize(runs, methods, seeds, METRICS, KEY_METRIC)
    checks = verdicts(summary, KEY_METRIC, main="mic", combined="")
    if "mic" in runs and "cdan_mcc" in runs:
        g = paired([runs["mic"][s]["models"]["student"][KEY_METRIC] for s in seeds],
                   [runs["cdan_mcc"][s]["models"]["student"][KEY_METRIC] for s in seeds])
        met = g["mean"] > SIGNIFICANCE * g["std"] if g["std"] is not None else None
        checks.append({"target": f"mic above cdan_mcc by more than {SIGNIFICANCE:g} paired std", "numbers": g,
                       "met": met})
        times = [runs[m][s]["step_time"] for m in ("mic", "cdan_mcc") for s in seeds]
        if None not in times:
            ratio = statistics.fmean(times[:len(seeds)]) / statistics.fmean(times[len(seeds):])
            checks.append({"target": "a MIC step <= 1.6x a CDAN+MCC step", "numbers": {"ratio": ratio},
                           "met": ratio <= 1.6})
    lines = ["# Classification: built-in crops, clear -> foggy", "",
             *main_table(summary, LABELS, [("target top-1", "target_top1"), ("target mean class acc",
                                                                               "target_mean_class_acc"),
                                          ("source top-1", "source_top1")]), "", *verdict_lines(checks)]
    return lines, {"summary": summary, "verdicts": checks}


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--output", default=os.path.join(REPO, "output", "bench_classification"))
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE overrides for every run")
    args = parser.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    methods = [m for m in args.methods.split(",") if m]
    unknown = set(methods) - set(METHODS)
    if unknown:
        raise SystemExit(f"--methods: unknown {sorted(unknown)} (known: {', '.join(METHODS)})")
    runs = {m: {s: read_run(run(m, s, args.output, args.opts)) for s in seeds} for m in methods}
    lines, data = report(runs, methods, seeds)
    with open(os.path.join(args.output, "report.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    with open(os.path.join(args.output, "report.json"), "w") as f:
        json.dump(to_json({"runs": runs, **data}), f, indent=1)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
