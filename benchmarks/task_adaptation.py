#!/usr/bin/env python
"""Does MIC help segmentation and classification? The detection protocol, for the other two tasks.

Protocol (as ``adaptation.py``): per seed, one source-only model is trained
once with the task's ``source_only.yaml`` for ``--source-iters`` steps (lr
x0.1 at 75% of them) and cached under ``--cache-dir``, keyed by its config
text, overrides, seed and steps. Every method then runs the same
``--adapt-iters`` steps *from that checkpoint* (``tools/train_net.py
--resume``: weights, optimizer, schedule), so each gain is paired per seed
with the matched control, which simply continues source-only training.
Every run is evaluated once, at its end; nothing is selected on target val.

=========  ==========================================  ==========================================
task       methods                                     targets
=========  ==========================================  ==========================================
seg        control, self_training (DACS, no masking),  MIC > self-training > control on target
           mic, oracle                                 mIoU, each gap > 3 paired std; MIC >= 90%
                                                       of the oracle; a MIC step <= 1.5x a
                                                       self-training step
cls        control, cdan_mcc, mic (on CDAN+MCC),       MIC > CDAN+MCC > control on target mean
           oracle                                      class accuracy, each > 3 paired std; MIC
                                                       >= 90% of the oracle; a MIC step <= 1.6x
                                                       a CDAN+MCC step
=========  ==========================================  ==========================================

Step times are the median ``time`` of ``metrics.json`` over each run's
adaptation phase; they are comparable only between runs that shared the
machine alike (``--jobs 2`` runs two at once, one thread each).

    python -m benchmarks.task_adaptation --task cls --jobs 2       # from the repository root
    python -m benchmarks.task_adaptation --task cls --shift night --jobs 2
    python -m benchmarks.task_adaptation --task seg --seeds 0 --methods control,mic --source-iters 200 --adapt-iters 50

``--shift`` picks the built-in target: ``fog`` (``configs/synthetic_<task>/``) or
``night`` (``configs/synthetic_<task>_night/``, the same scenes at night). Both share
the clear source, so one cached source model per seed serves both shifts.

Finished runs are skipped and interrupted ones resume, so re-running continues.
"""
import argparse
import json
import os
import statistics
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Dict, List, Optional, Sequence, Tuple

from .adaptation import machine_info
from .bench_report import main_table, to_json, verdict_lines
from .bench_runs import check_run_folder, run_identity, start_run_folder
from .bench_stats import SIGNIFICANCE, paired, summarize, verdicts
from .protocol import adaptation_schedule
from .run_progress import execute, say
from .source_models import source_model_dir, source_options, train_source_model

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclass(frozen=True)
class TaskBench:
    title: str
    config_dir: str
    methods: Dict[str, Tuple[str, str]]  # name -> (label, config file)
    baseline: str  # the method MIC adds to
    target_val: str
    source_val: str
    metrics: Dict[str, Tuple[str, str]]  # our name -> (split "target"/"source", key after "<model>/<dataset>/")
    key_metric: str
    speed_target: float
    source_iters: int
    adapt_iters: int
    shift: str = "fog"
    # Adaptation restarts the lr schedule (SOLVER.RESTART_ITERS; --restart-adaptation) instead of going
    # on at the source schedule's decayed lr as the segmentation and classification configs do.
    restart: bool = False
    # The control's config folder the source model is trained with (the clear source, shared by the shifts).
    source_config_dir: str = ""


TASKS: Dict[str, TaskBench] = {
    "seg": TaskBench(
        title="Segmentation: built-in scenes, clear -> foggy",
        config_dir="configs/synthetic_seg",
        methods={"control": ("source only (control)", "source_only.yaml"),
                 "self_training": ("self-training (DACS, no masking)", "self_training.yaml"),
                 "mic": ("MIC (on self-training)", "mic.yaml"),
                 "oracle": ("oracle (target labels)", "oracle.yaml")},
        baseline="self_training", target_val="synthetic_seg_foggy_val", source_val="synthetic_seg_clear_val",
        metrics={"target_mIoU": ("target", "sem_seg/mIoU"), "target_pACC": ("target", "sem_seg/pACC"),
                 "source_mIoU": ("source", "sem_seg/mIoU")},
        key_metric="target_mIoU", speed_target=1.5,
        # 1000 adaptation steps: at 150, neither DACS nor MIC moved beyond the seed spread (BENCHMARKS.md).
        source_iters=400, adapt_iters=1000,
    ),
    "cls": TaskBench(
        title="Classification: built-in crops, clear -> foggy",
        config_dir="configs/synthetic_cls",
        methods={"control": ("source only (control)", "source_only.yaml"),
                 "cdan_mcc": ("CDAN+MCC", "cdan_mcc.yaml"),
                 "mic": ("MIC on CDAN+MCC", "mic.yaml"),
                 "oracle": ("oracle (target labels)", "oracle.yaml")},
        baseline="cdan_mcc", target_val="synthetic_cls_foggy_val", source_val="synthetic_cls_clear_val",
        metrics={"target_mean_class_acc": ("target", "cls/mean_class_acc"), "target_top1": ("target", "cls/top1"),
                 "source_top1": ("source", "cls/top1")},
        key_metric="target_mean_class_acc", speed_target=1.6,
        source_iters=400, adapt_iters=200,
    ),
}


#: The built-in shifts: what the fog benchmark's names become for each.
SHIFTS = ("fog", "night")


def task_bench(task: str, shift: str = "fog") -> TaskBench:
    """The benchmark of ``task`` on the built-in ``shift``: the fog one with the night folder and sets for "night"."""
    if shift not in SHIFTS:
        raise ValueError(f"unknown shift {shift!r}; known: {SHIFTS}")
    bench = replace(TASKS[task], source_config_dir=TASKS[task].config_dir)
    if shift == "fog":
        return bench
    return replace(bench, shift=shift, title=bench.title.replace("-> foggy", f"-> {shift}"),
                   config_dir=f"{bench.config_dir}_{shift}",
                   target_val=bench.target_val.replace("_foggy_", f"_{shift}_"))


def source_model(task: TaskBench, seed: int, iters: int, overrides: List[str], cache_dir: str,
                 threads: Optional[int]) -> str:
    """Train (or find) the seed's source model; returns its folder."""
    config = os.path.join(REPO, task.source_config_dir or task.config_dir, task.methods["control"][1])
    opts = source_options(seed, iters, overrides)
    folder = os.path.basename(task.source_config_dir or task.config_dir)
    out = source_model_dir(cache_dir, f"{folder}_", seed, iters, config, opts)
    train_source_model(config, opts, out, f"[seed {seed}] source model", iters, threads)
    return out


def _records(out: str) -> List[Dict]:
    """The lines of a run's ``metrics.json`` ([] before its first write)."""
    path = os.path.join(out, "metrics.json")
    if not os.path.isfile(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f]


def _final_record(records: List[Dict], total: int, task: TaskBench) -> Optional[Dict]:
    key = f"student/{task.target_val}/{task.metrics[task.key_metric][1]}"
    finals = [r for r in records if key in r and r.get("iteration", -1) >= total - 1]
    return finals[-1] if finals else None


def adapt(task: TaskBench, method: str, seed: int, source_dir: str, source_iters: int, adapt_iters: int,
          overrides: List[str], out_dir: str, threads: Optional[int]) -> str:
    """Run ``method`` for ``adapt_iters`` steps from the seed's source model (skipped when finished)."""
    out = os.path.join(out_dir, str(seed), method)
    total = source_iters + adapt_iters
    identity = run_identity(method, source_dir, adapt_iters, overrides + (["--restart-adaptation"] if task.restart else []))
    check_run_folder(out, identity)
    if _final_record(_records(out), total, task) is not None:
        say(f"[seed {seed}] {method}: done before, skipped")
        return out
    start_run_folder(out, identity, source_dir, f"model_{source_iters - 1:07d}.pth")
    cmd = [sys.executable, "tools/train_net.py", "--config-file",
           os.path.join(REPO, task.config_dir, task.methods[method][1]), "--resume",
           "OUTPUT_DIR", out, "SEED", str(seed), "SOLVER.MAX_ITER", str(total),
           *adaptation_schedule(source_iters, adapt_iters, task.restart), "SOLVER.CHECKPOINT_PERIOD", str(adapt_iters),
           "TEST.EVAL_PERIOD", str(total), "DATASETS.TEST", f"('{task.target_val}','{task.source_val}')",
           "TEST.BEST_CHECKPOINT.ENABLED", "False", "MIC.BURN_IN_ITERS", str(source_iters),
           "UDA.START_ITER", str(source_iters)] + overrides
    say(f"[seed {seed}] {method}: {' '.join(cmd)}")
    wall = execute(cmd, os.path.join(out, "stdout.txt"), threads, label=f"[seed {seed}] {method}",
                   total_iters=total, dataset=task.target_val)
    say(f"[seed {seed}] {method}: {wall:.0f} s")
    return out


def read_run(task: TaskBench, out: str, source_iters: int, total: int) -> Dict:
    """Student / teacher metrics of the final evaluation and the median step time of the adaptation phase."""
    records = _records(out)
    final = _final_record(records, total, task)
    if final is None:
        raise RuntimeError(f"{out}: no final evaluation in metrics.json")
    models = {}
    for tag in ("student", "teacher"):
        row = {}
        for name, (split, key) in task.metrics.items():
            dataset = task.target_val if split == "target" else task.source_val
            row[name] = final.get(f"{tag}/{dataset}/{key}")
        if row[task.key_metric] is not None:
            models[tag] = row
    times = [r["time"] for r in records if "time" in r and r.get("iteration", 0) >= source_iters]
    return {"models": models, "step_time": statistics.median(times) if times else None}


def report(task: TaskBench, runs: Dict[str, Dict[int, Dict]], methods: List[str],
           seeds: List[int]) -> Tuple[List[str], Dict]:
    """The markdown lines and the JSON data (summary, verdicts) of the runs."""
    key = task.key_metric
    summary = summarize(runs, methods, seeds, list(task.metrics), key)
    checks = verdicts(summary, key, main="mic", combined="")
    for better, worse in (("mic", task.baseline), (task.baseline, "control")):
        if better in runs and worse in runs and better != worse:
            g = paired([runs[better][s]["models"]["student"][key] for s in seeds],
                       [runs[worse][s]["models"]["student"][key] for s in seeds])
            met = g["mean"] > SIGNIFICANCE * g["std"] if g["std"] is not None else None
            checks.append({"target": f"{better} above {worse} by more than {SIGNIFICANCE:g} paired std ({key})",
                           "numbers": g, "met": met})
    if "mic" in runs and task.baseline in runs:
        times = {m: [runs[m][s]["step_time"] for s in seeds] for m in ("mic", task.baseline)}
        if None not in times["mic"] + times[task.baseline]:
            ratio = statistics.fmean(times["mic"]) / statistics.fmean(times[task.baseline])
            checks.append({"target": f"a MIC step <= {task.speed_target:g}x a {task.baseline} step",
                           "numbers": {"ratio": ratio, "seconds": times}, "met": ratio <= task.speed_target})
    labels = {m: task.methods[m][0] for m in methods}
    columns = [(name.replace("_", " "), name) for name in task.metrics]
    lines = [f"# {task.title}", "", *main_table(summary, labels, columns), "", *verdict_lines(checks)]
    return lines, {"summary": summary, "verdicts": checks}


def main(argv: Optional[Sequence[str]] = None) -> Dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", choices=sorted(TASKS), required=True)
    parser.add_argument("--shift", choices=SHIFTS, default="fog", help="the built-in domain shift")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--methods", default=None, help="default: every method of the task")
    parser.add_argument("--source-iters", type=int, default=None, help="steps of the shared source model")
    parser.add_argument("--adapt-iters", type=int, default=None, help="steps every method runs from it")
    parser.add_argument("--jobs", type=int, default=1, help="runs trained at once (each with OMP_NUM_THREADS=1 if >1)")
    parser.add_argument("--restart-adaptation", action="store_true",
                        help="adapt on a restarted lr schedule (SOLVER.RESTART_ITERS), as detection's configs do")
    parser.add_argument("--cache-dir", default=os.path.join(REPO, "output", "bench_cache"))
    parser.add_argument("--out-dir", default=None,
                        help="runs (default output/bench_<task>, _night for --shift night)")
    parser.add_argument("--output", default=None,
                        help="JSON report (default benchmarks/results/<task>.json; <task>_night.json for night)")
    args, overrides = parser.parse_known_args(argv)
    task = replace(task_bench(args.task, args.shift), restart=args.restart_adaptation)
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    methods = [m for m in (args.methods or ",".join(task.methods)).split(",") if m]
    unknown = sorted(set(methods) - set(task.methods))
    if unknown:
        parser.error(f"--methods: unknown {unknown} (known for --task {args.task}: {', '.join(task.methods)})")
    if "control" not in methods:
        methods.insert(0, "control")  # every gain is paired with it
    if len(overrides) % 2:
        parser.error(f"trailing config overrides must be KEY VALUE pairs, got {overrides}")
    source_iters = args.source_iters or task.source_iters
    adapt_iters = args.adapt_iters or task.adapt_iters
    suffix = "" if args.shift == "fog" else f"_{args.shift}"
    out_dir = os.path.abspath(args.out_dir or os.path.join(REPO, "output", f"bench_{args.task}{suffix}"))
    output = os.path.abspath(args.output or os.path.join(REPO, "benchmarks", "results", f"{args.task}{suffix}.json"))
    threads = 1 if args.jobs > 1 else None
    print(f"Task benchmark {args.task}, shift {args.shift}: source model {source_iters} steps, "
          f"then {adapt_iters} per method; "
          f"seeds {seeds}; methods {methods}", flush=True)

    with ThreadPoolExecutor(max_workers=max(args.jobs, 1)) as pool:
        sources = dict(zip(seeds, pool.map(
            lambda s: source_model(task, s, source_iters, overrides, args.cache_dir, threads), seeds)))
        jobs = [(m, s) for s in seeds for m in methods]
        outs = list(pool.map(lambda ms: adapt(task, ms[0], ms[1], sources[ms[1]], source_iters, adapt_iters,
                                              overrides, out_dir, threads), jobs))
    total = source_iters + adapt_iters
    runs: Dict[str, Dict[int, Dict]] = {m: {} for m in methods}
    for (m, s), out in zip(jobs, outs):
        runs[m][s] = read_run(task, out, source_iters, total)
    lines, data = report(task, runs, methods, seeds)
    result = {"task": args.task, "shift": args.shift, "source_iters": source_iters, "adapt_iters": adapt_iters,
              "restart": task.restart,
              "seeds": seeds, "overrides": overrides, "machine": machine_info(), "runs": runs, **data}
    os.makedirs(os.path.dirname(output), exist_ok=True)
    with open(output, "w") as f:
        json.dump(to_json(result), f, indent=1)
    print("\n".join(lines))
    print(f"JSON: {output}")
    return result


if __name__ == "__main__":
    main()
