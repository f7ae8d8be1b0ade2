#!/usr/bin/env python
"""Does adaptation help? Every method fine-tunes the same trained source model, next to a matched control.

Protocol
--------
Per seed, one source-only model is trained once with the shift's
``source_only.yaml`` for ``--source-iters`` steps (lr x0.1 at 75% of them) and
cached under ``--cache-dir``, keyed by everything that determines it (config,
overrides, seed, steps, the built-in set's parameters), so every method, both
shifts and later benchmark runs reuse it. Then each method runs the same
``--adapt-iters`` steps *from that checkpoint* (weights, optimizer, schedule:
``tools/train_net.py --resume``) on a restarted schedule. The default budget is
the configs' own (:func:`~benchmarks.protocol.config_budget`: 1000 + 1000 steps):

====================  ===========================================================
control               source-only training continued (the matched control)
mic                   the shift's default ``mic.yaml`` (MIC starts at the checkpoint)
mic_sada              ``mic_sada.yaml``: MIC on SADA alignment
sada                  ``sada.yaml``: SADA alone
oracle                fine-tuning on the *labelled* target (upper bound, not UDA)
minimal_mic           ``benchmarks/minimal_mic.py``: a ~100-line plain-Detectron2
                      MIC loop (no mic_det heads), the sanity row mic must match
====================  ===========================================================

So a method's gain is "what its K steps add over K more source steps", paired
per seed (same source model), and the report gives it with its paired std.
Nothing is selected on target val: every run is evaluated once, at its end.

Commands (from the repository root)
-----------------------------------
    make bench-accuracy                            # 3 seeds, fog then night: control, mic, oracle
    make bench-accuracy BENCH_ARGS=--quick         # seed 0 of each shift
    python -m benchmarks.adaptation --shift night --seeds 0,1,2 --methods control,mic,mic_sada,sada
    python -m benchmarks.adaptation --quick --jobs 2 INPUT.MIN_SIZE_TRAIN "(192,)"   # overrides reach every run

Finished runs are skipped and interrupted ones resume from their last
checkpoint, so re-running a command continues it.
"""
import argparse
import glob
import json
import math
import os
import platform
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, List, Optional, Sequence, Tuple

from .bench_report import (class_table, logged_training_seconds, main_table, pseudo_table, time_table, to_json,
                           verdict_lines)
from .bench_runs import (SOURCE_VAL, check_run_folder, final_record, finished_control_elsewhere, read_run,
                         run_identity, start_run_folder, training_overrides)
from .bench_stats import SIGNIFICANCE, mean_std, summarize, verdicts
from .protocol import METHODS, SHIFTS, Budget, config_budget
from . import run_progress
from .run_progress import execute, say
from .source_models import source_model_dir, source_options, train_source_model

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESERVED_KEYS = {
    "SOLVER.MAX_ITER", "SOLVER.STEPS", "SOLVER.CHECKPOINT_PERIOD", "TEST.EVAL_PERIOD", "DATASETS.TEST", "SEED",
    "OUTPUT_DIR", "MIC.BURN_IN_ITERS", "UDA.START_ITER", "MODEL.WEIGHTS", "SOLVER.RESTART_ITERS",
}
METRICS = ("target_AP50", "target_AP", "source_AP50", "source_AP")
KEY_METRIC = "target_AP50"
LABELS = {k: m.label for k, m in METHODS.items()}
# The default methods: what BENCHMARKS.md records for each shift. MIC+SADA and SADA
# (--methods) add nothing over MIC and the control at the default's budget (BENCHMARKS.md).
FULL = dict(seeds="0,1,2", methods="control,mic,oracle")
# `make demo` and `--quick`: one seed of the full benchmark's own budget, so the 3-seed record of
# `make bench-accuracy` is the spread a one-seed run is read against.
QUICK = dict(seeds="0", methods=FULL["methods"])
DEMO = dict(seeds="0", methods="control,mic")


def parse_args(argv: Optional[Sequence[str]] = None) -> Tuple[argparse.Namespace, Budget]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help=f"seeds {QUICK['seeds']}, methods {QUICK['methods']}, "
                        "runs under output/bench_adaptation_quick/, report adaptation_<shift>_quick.json")
    p.add_argument("--demo", action="store_true",
                   help=f"what `make demo` runs: seeds {DEMO['seeds']}, methods {DEMO['methods']}, --jobs 2")
    p.add_argument("--shift", choices=sorted(SHIFTS), default="fog", help="the built-in domain shift")
    p.add_argument("--source-iters", type=int, default=None,
                   help="steps of the shared source model (default: the shift's mic.yaml MIC.BURN_IN_ITERS)")
    p.add_argument("--adapt-iters", type=int, default=None,
                   help="steps every method runs from it (default: mic.yaml's SOLVER.MAX_ITER after the burn-in)")
    p.add_argument("--seeds", help=f"comma-separated seeds (default {FULL['seeds']})")
    p.add_argument("--methods", help=f"subset of {','.join(METHODS)} (default {FULL['methods']})")
    p.add_argument("--decayed-adaptation", action="store_true",
                   help="adapt at the source schedule's decayed lr instead of restarting it (a comparison run)")
    p.add_argument("--eval-period", type=int, default=0,
                   help="also evaluate every N adaptation steps (learning curves; the report uses the last)")
    p.add_argument("--jobs", type=int, default=1, help="runs trained at once (each with OMP_NUM_THREADS=1 if >1)")
    p.add_argument("--progress-every", type=float, default=run_progress.PROGRESS_SECONDS, metavar="SECONDS",
                   help="print each run's step, ETA, loss and latest AP this often (0: only start and end)")
    p.add_argument("--cache-dir", default="output/bench_cache", help="shared source models")
    p.add_argument("--out-dir", default=None, help="runs (default output/bench_adaptation/<shift>)")
    p.add_argument("--output", default=None, help="JSON report (default benchmarks/results/adaptation_<shift>.json)")
    args, overrides = p.parse_known_args(argv)
    preset = DEMO if args.demo else QUICK if args.quick else FULL
    if args.demo:
        args.jobs = max(args.jobs, 2)
        args.out_dir = args.out_dir or "output/demo"
        args.output = args.output or "output/demo/demo_results.json"
    elif args.quick:
        args.out_dir = args.out_dir or f"output/bench_adaptation_quick/{args.shift}"
        args.output = args.output or f"benchmarks/results/adaptation_{args.shift}_quick.json"
    source_iters, adapt_iters = config_budget(args.shift, REPO)  # the configs' own schedule
    if args.source_iters is not None:
        source_iters = args.source_iters
    if args.adapt_iters is not None:
        adapt_iters = args.adapt_iters
    budget = Budget(
        shift=args.shift, source_iters=source_iters, adapt_iters=adapt_iters,
        seeds=[int(s) for s in (args.seeds or preset["seeds"]).split(",") if s.strip()],
        methods=[m.strip() for m in (args.methods or preset["methods"]).split(",") if m.strip()],
        overrides=overrides, eval_period=args.eval_period, restart=not args.decayed_adaptation,
    )
    unknown = [m for m in budget.methods if m not in METHODS]
    if unknown:
        p.error(f"unknown method(s) {unknown}; choose from {list(METHODS)}")
    if "control" not in budget.methods:
        budget.methods.insert(0, "control")  # every gain is measured against it
    if budget.source_iters < 4 or budget.adapt_iters < 1 or not budget.seeds:
        p.error("--source-iters must be >= 4, --adapt-iters >= 1, --seeds non-empty")
    if len(overrides) % 2:
        p.error(f"trailing config overrides must be KEY VALUE pairs, got {overrides}")
    taken = sorted(set(overrides[::2]) & RESERVED_KEYS)
    if taken:
        p.error(f"{taken} are set by the benchmark itself")
    args.out_dir = os.path.abspath(args.out_dir or f"output/bench_adaptation/{args.shift}")
    args.output = os.path.abspath(args.output or f"benchmarks/results/adaptation_{args.shift}.json")
    args.cache_dir = os.path.abspath(args.cache_dir)
    return args, budget


# --------------------------------------------------------------------------- running
def dataset_info(shift: str = "fog") -> Dict:
    """The built-in set's parameters, drawing the set (and ``shift``'s splits) first if missing.

    The source models' cache key is made of them (:func:`source_data_key`): read
    before the set exists, it would name another folder than every later run's, so
    a fresh clone's ``make demo`` would train a source model no later run finds.
    ``info.json`` describes the clear -> foggy pair; for ``shift`` "night" the
    night splits' own info file is added under "night".
    """
    from mic_det.data.synthetic import default_synthetic_root, ensure_synthetic_set

    root = default_synthetic_root()
    root = root if os.path.isabs(root) else os.path.join(REPO, root)
    pair, nights = ensure_synthetic_set(root, night=shift == "night")
    info = {"root": root, **pair}
    if shift == "night":
        info["night"] = nights
    return info


SOURCE_CONFIG = os.path.join(REPO, "configs/synthetic/source_only.yaml")  # the clear source, shared by every shift


def source_data_key() -> list:
    """What of the built-in set determines a source model: its parameters and the labelled source split.

    Only the clear training images enter (not the target splits), so adding a
    shift to the built-in set keeps every cached source model valid.
    """
    info = dataset_info()
    data = [info.get(k) for k in ("generator", "version", "seed", "height", "width")]
    return data + [(info.get("splits") or {}).get("source_train")]


def source_dir(seed: int, budget: Budget, cache_dir: str) -> str:
    """The seed's source model folder in the cache, named by what determines the model."""
    opts = source_options(seed, budget.source_iters, budget.overrides)
    return source_model_dir(cache_dir, "", seed, budget.source_iters, SOURCE_CONFIG, opts, data=source_data_key())


def source_model(seed: int, budget: Budget, cache_dir: str, threads: Optional[int]) -> Dict:
    """Train (or find) the seed's source model; returns its run dir and wall time."""
    out = source_dir(seed, budget, cache_dir)
    label = f"[seed {seed}] source model"
    wall = train_source_model(SOURCE_CONFIG, source_options(seed, budget.source_iters, budget.overrides), out,
                              label, budget.source_iters, threads, needed=(budget.checkpoint, "model_final.pth"))
    if wall is None:
        return {"dir": out, "wall_seconds": None, "cached": True, "steps_run": budget.source_iters,
                "logged_training_seconds": logged_training_seconds(out)}
    say(f"{label}: {wall:.0f} s")
    return {"dir": out, "wall_seconds": wall, "cached": False, "steps_run": budget.source_iters}


def adapt_command(method: str, seed: int, out: str, budget: Budget, source_dir: str) -> List[str]:
    opts = [
        "OUTPUT_DIR", out, "SEED", str(seed),
        "SOLVER.MAX_ITER", str(budget.total), *budget.adapt_schedule,
        "SOLVER.CHECKPOINT_PERIOD", str(budget.adapt_iters),
        # Every eval_period steps of the adaptation (the period divides the source steps too), else once at the end.
        "TEST.EVAL_PERIOD", str(math.gcd(budget.eval_period, budget.source_iters) if budget.eval_period else budget.total),
        "DATASETS.TEST", f"('{budget.target_val}','{SOURCE_VAL}')", "TEST.BEST_CHECKPOINT.ENABLED", "False",
        "MIC.BURN_IN_ITERS", str(budget.source_iters), "UDA.START_ITER", str(budget.source_iters),
    ]
    if METHODS[method].mic:
        opts += ["MIC.LOG_PSEUDO_LABEL_QUALITY", "True"]
    opts += budget.overrides
    if method == "minimal_mic":
        return [sys.executable, "-m", "benchmarks.minimal_mic", "--config-file", budget.config(method),
                "--weights", os.path.join(source_dir, budget.checkpoint)] + opts
    return [sys.executable, "tools/train_net.py", "--config-file", budget.config(method), "--resume"] + opts


def evaluate_shared_control(seed: int, out: str, budget: Budget, weights: str, threads: Optional[int]) -> float:
    """Evaluate another shift's control model on this shift; write its record as a training run would."""
    os.makedirs(out, exist_ok=True)
    cmd = [sys.executable, "tools/train_net.py", "--config-file", budget.config("control"), "--eval-only",
           "--eval-model", "student", "MODEL.WEIGHTS", weights, "OUTPUT_DIR", out,
           "DATASETS.TEST", f"('{budget.target_val}','{SOURCE_VAL}')"] + budget.overrides
    say(f"[seed {seed}] control: the same run as {os.path.dirname(weights)}, evaluated here: {' '.join(cmd)}")
    wall = execute(cmd, os.path.join(out, "stdout.txt"), threads)
    record = {"iteration": budget.total, "shared_control": weights}
    for dataset in (budget.target_val, SOURCE_VAL):
        reports = sorted(glob.glob(os.path.join(out, "inference", f"report_student_{dataset}_iter*.json")),
                         key=os.path.getmtime)
        if not reports:
            raise RuntimeError(f"{out}: the evaluation of {weights} on {dataset} wrote no report")
        with open(reports[-1]) as f:
            record.update({f"student/{dataset}/bbox/{k}": v for k, v in json.load(f)["bbox"].items()})
    with open(os.path.join(out, "metrics.json"), "w") as f:
        f.write(json.dumps(record) + "\n")
    return wall


def adapt(method: str, seed: int, budget: Budget, out_dir: str, source: Dict, threads: Optional[int]) -> Dict:
    out = os.path.join(out_dir, str(seed), method)
    identity = run_identity(method, source["dir"], budget.adapt_iters, budget.identity_overrides)
    check_run_folder(out, identity)
    if final_record(out, budget.total, budget.target_val) is not None:
        say(f"[seed {seed}] {method}: done before, skipped")
        return {"wall_seconds": None, "skipped": True, "steps_run": budget.adapt_iters,
                "logged_training_seconds": logged_training_seconds(out)}
    shared = finished_control_elsewhere(out, budget, source["dir"]) if method == "control" else None
    # A shared control is only evaluated; minimal_mic loads the weights itself (--weights), afresh each time.
    start_run_folder(out, identity, source["dir"], None if shared or method == "minimal_mic" else budget.checkpoint)
    if shared is not None:
        wall = evaluate_shared_control(seed, out, budget, shared, threads)
        return {"wall_seconds": wall, "skipped": False, "steps_run": 0, "shared_with": shared}
    cmd = adapt_command(method, seed, out, budget, source["dir"])
    say(f"[seed {seed}] {method}: {' '.join(cmd)}")
    wall = execute(cmd, os.path.join(out, "stdout.txt"), threads, label=f"[seed {seed}] {method}",
                   total_iters=budget.total, dataset=budget.target_val)
    say(f"[seed {seed}] {method}: {wall:.0f} s")
    return {"wall_seconds": wall, "skipped": False, "steps_run": budget.adapt_iters, "command": cmd}


# --------------------------------------------------------------------------- reading
def pseudo_summary(runs: Dict, budget: Budget) -> Dict:
    out = {}
    for method in budget.methods:
        qs = [runs[method][s]["pseudo_labels"] for s in budget.seeds if runs[method][s]["pseudo_labels"]]
        if qs:
            out[method] = {
                **{f"{w}_{m}": mean_std([q[w][m] for q in qs])["mean"] for w in ("first", "last")
                   for m in ("precision", "recall")},
                **{k: mean_std([q[k] for q in qs])["mean"]
                   for k in ("pooled_precision", "pooled_recall", "boxes_per_image")},
            }
    return out


def machine_info() -> Dict:
    import torch

    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__}


# --------------------------------------------------------------------------- main
def run_order(budget: Budget) -> List[Tuple[str, int]]:
    """(method, seed) pairs, longest method first and seeds in order within one.

    Longest first keeps the end of a ``--jobs 2`` run from being one long run on one core
    beside an idle one.
    """
    methods = sorted(budget.methods, key=lambda m: -METHODS[m].step_cost)  # stable: ties keep their order
    return [(m, s) for m in methods for s in budget.seeds]


def main(argv: Optional[Sequence[str]] = None) -> Dict:
    args, budget = parse_args(argv)
    run_progress.PROGRESS_SECONDS = args.progress_every
    threads = 1 if args.jobs > 1 else None
    start = time.perf_counter()
    print(f"Adaptation benchmark, shift {budget.shift}: source model {budget.source_iters} steps, then "
          f"{budget.adapt_iters} per method; seeds {budget.seeds}; methods {budget.methods}", flush=True)
    timings: Dict[str, Dict[int, Dict]] = {"source model": {}, **{m: {} for m in budget.methods}}
    try:  # before anything trains: a folder of another run stops the benchmark, not its last run
        dirs = {s: source_dir(s, budget, args.cache_dir) for s in budget.seeds}  # one key (file reads) per seed
        for m, s in run_order(budget):
            check_run_folder(os.path.join(args.out_dir, str(s), m),
                             run_identity(m, dirs[s], budget.adapt_iters, budget.identity_overrides))
    except RuntimeError as e:
        sys.exit(f"error: {e}")
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        # Source models train with the runs' thread count even when workers idle (make demo's one seed):
        # the thread count changes the trained weights (another reduction order) and the cache key does
        # not hold it, so the demo's seed 0 is the benchmark's, whichever of them trains it first.
        sources = {s: pool.submit(source_model, s, budget, args.cache_dir, threads) for s in budget.seeds}
        # Queued behind every source model, so a worker that takes a run waits at most on a source
        # model already in training, and a worker freed early starts adapting the seeds it can.
        jobs = {(m, s): pool.submit(lambda m, s: adapt(m, s, budget, args.out_dir, sources[s].result(), threads), m, s)
                for m, s in run_order(budget)}
        timings["source model"] = {s: job.result() for s, job in sources.items()}
        for (m, s), job in jobs.items():
            timings[m][s] = job.result()
    runs = {m: {s: read_run(os.path.join(args.out_dir, str(s), m), budget, METHODS[m].mic) for s in budget.seeds}
            for m in budget.methods}
    summary = summarize(runs, budget.methods, budget.seeds, METRICS, KEY_METRIC)
    checks = verdicts(summary, KEY_METRIC)
    pseudo = pseudo_summary(runs, budget)
    info = dataset_info(budget.shift)
    columns = [("target AP50", "target_AP50"), ("target AP", "target_AP"), ("source AP50", "source_AP50")]
    lines = [f"## Adaptation benchmark: built-in clear -> {budget.shift}", "",
             f"Source model: {budget.source_iters} steps (lr x0.1 at {budget.lr_step}); every method then "
             f"{budget.adapt_iters} steps from it ("
             f"{f'lr restarted, x0.1 at {budget.adapt_lr_step}' if budget.restart else 'at the decayed lr'}). Seeds {budget.seeds}. Overrides: {' '.join(budget.overrides) or 'none'}.",
             "", *main_table(summary, LABELS, columns), "", "Verdicts:", *verdict_lines(checks), "",
             "Per-class target AP50 (mean over seeds):", "",
             *class_table(summary, LABELS, "target_AP50_per_class", info.get("classes", ()))]
    if pseudo:
        lines += ["", "Pseudo-labels vs target-train labels (a measurement; never trained on):", "",
                  *pseudo_table(pseudo, LABELS)]
    fired = {f"{m}/{s}": runs[m][s]["guard"] for m in budget.methods for s in budget.seeds
             if runs[m][s]["guard"]["collapses"]}
    lines += ["", f"Collapse guard fired: {fired or 'never'}", "", "Wall time:", "",
              *time_table(timings, {**LABELS, "source model": "source model"}, budget.seeds)]
    total = time.perf_counter() - start
    lines += ["", f"Total wall time of this invocation: {total / 60:.1f} min"]
    print("\n" + "\n".join(lines), flush=True)
    result = {"budget": budget.__dict__, "machine": machine_info(), "dataset": info, "summary": summary,
              "verdicts": checks, "pseudo_labels": pseudo, "guard": fired, "runs": runs,
              "timings": timings, "total_wall_seconds": total, "report": "\n".join(lines)}
    os.makedirs(os.path.dirname(args.output), exist_ok=True)
    with open(args.output, "w") as f:
        json.dump(to_json(result), f, indent=2, allow_nan=False)
    print(f"\nJSON: {args.output}")
    if len(budget.seeds) == 1 and "mic" in budget.methods:
        print(recorded_spread(budget))
    return result


def recorded_spread(budget: Budget, paths: Optional[Sequence[str]] = None) -> str:
    """What the benchmark measured over several seeds for the same comparison, to read one seed against.

    ``paths``: the recorded JSON reports to look in (default: the shift's
    ``benchmarks/results/adaptation_<shift>*.json``, the full benchmark's
    first). The first whose budget (steps and overrides) is this run's is
    quoted as "the same budget"; failing that, the first readable one, with
    a line that says its budget differs and so says nothing about this run.
    """
    if paths is None:
        full = os.path.join(REPO, "benchmarks", "results", f"adaptation_{budget.shift}.json")
        paths = [full] + sorted(glob.glob(os.path.join(REPO, "benchmarks", "results", f"adaptation_{budget.shift}_*.json")))
    ours = (budget.source_iters, budget.adapt_iters, training_overrides(budget.overrides), budget.restart)
    fallback = None
    for path in paths:
        rec = _recorded_gain(path, budget.shift)
        if rec is None:
            continue
        theirs, spread = rec
        their_overrides = training_overrides(theirs["overrides"])
        if (theirs["source_iters"], theirs["adapt_iters"], their_overrides, theirs.get("restart", True)) == ours:
            return (f"The benchmark ({path}, seeds {theirs['seeds']}, same budget "
                    f"{theirs['source_iters']}+{theirs['adapt_iters']}, overrides {' '.join(their_overrides) or 'none'}) "
                    f"measured {spread}.")
        if fallback is None:
            fallback = (f"The benchmark ({path}, seeds {theirs['seeds']}) measured {spread}, but with another budget: "
                        f"{theirs['source_iters']}+{theirs['adapt_iters']} steps, overrides "
                        f"{' '.join(their_overrides) or 'none'}, against this run's {budget.source_iters}+"
                        f"{budget.adapt_iters}, overrides {' '.join(budget.overrides) or 'none'}. "
                        "It says nothing about this run's spread.")
    return fallback or (f"No recorded multi-seed benchmark ({', '.join(paths)}) to compare this seed with "
                        "(make bench-accuracy).")


def _recorded_gain(path: str, shift: str) -> Optional[Tuple[Dict, str]]:
    """(budget, "MIC's gain ...") of a recorded report of ``shift`` with MIC on several seeds, else None."""
    try:
        with open(path) as f:
            rec = json.load(f)
        b = rec["budget"]
        theirs = {"source_iters": b["source_iters"], "adapt_iters": b["adapt_iters"], "seeds": b.get("seeds"),
                  "overrides": list(b.get("overrides") or []), "shift": b.get("shift", shift)}
        g = rec["summary"]["mic/student"]["gain_over_control"]
        values = [v for v in g["values"] if v is not None]
    except (OSError, KeyError, TypeError, ValueError):
        return None
    if theirs["shift"] != shift or len(values) < 2:
        return None
    clear = g["std"] is not None and g["mean"] > SIGNIFICANCE * g["std"]
    verdict = ("above the control by more than 3 paired std" if clear else
               "NOT above the control by 3 paired std: MIC does not adapt reliably on this shift at this budget "
               "(BENCHMARKS.md says why)")
    return theirs, (f"MIC's gain over the control at {g['mean']:+.1f} ± {g['std'] or 0:.1f} target AP50 "
                    f"(per seed: {', '.join(f'{v:+.1f}' for v in values)}; {verdict})")


if __name__ == "__main__":
    main()
