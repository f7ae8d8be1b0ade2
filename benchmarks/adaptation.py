#!/usr/bin/env python
"""Adaptation accuracy on the built-in clear -> foggy pair, under one fixed CPU budget.

What it measures
----------------
For each seed, six detectors are trained with ``tools/train_net.py`` and
evaluated once, at their last iteration, on the foggy target val set (the
number that matters) and on the clear source val set (what adaptation must not
break):

==================  ==========================================================
source_only         labelled clear images only (the baseline)
mic                 MIC, ``configs/synthetic/mic.yaml`` (teacher-score weight)
mic_student_prob    MIC with ``MIC.QUALITY_WEIGHT student_prob`` (reference code)
mic_sada            MIC on top of SADA alignment (the paper's detection setting)
sada                SADA alignment alone
oracle              labelled *foggy* images (the upper bound; not a UDA setting)
==================  ==========================================================

Reported per method: target AP50 and AP as mean +- sample std over seeds
(student, and the EMA teacher for MIC methods), source AP50, per-class target
AP50, AP50 as a fraction of the oracle's, the difference to source-only in
units of the pooled std (and whether it exceeds 3), and for MIC methods the
pseudo-label precision / recall against the target-train labels, first and
last logged value (a measurement only; the labels never reach a loss).

Why the adaptation runs share a burn-in
---------------------------------------
A detector trained from scratch gives no box above the pseudo-label threshold
at first, so MIC and SADA start from the source-only run's checkpoint at
``--burn-in``: the checkpoint (weights, optimizer, iteration, lr schedule) is
copied into the run's OUTPUT_DIR and the run continues with ``--resume`` (as
``tools/demo.py`` does). Every method therefore sees the same first
``--burn-in`` steps, the same lr schedule and the same total number of steps,
and the difference to source-only is the adaptation alone. The oracle trains
from scratch for the same number of steps.

No model selection on the target
--------------------------------
Every run is evaluated once, at its final iteration (``TEST.EVAL_PERIOD`` =
``--iters``), and the best-checkpoint hook is off. No choice (checkpoint,
threshold, method setting) looks at ``synthetic_foggy_val``; it is a test set.

Commands
--------
    make bench-accuracy                                     # full: 800 iters, burn-in 550, seeds 0,1,2
    make bench-accuracy BENCH_ARGS=--quick                  # 600 / 400, seed 0, source_only,mic,oracle
    make bench-accuracy BENCH_ARGS=--long                   # 3000 / 2000, seed 0, source_only,mic (~35 min)
    python benchmarks/adaptation.py --seeds 0 --methods source_only,mic,oracle \\
        --iters 900 --burn-in 600 INPUT.MIN_SIZE_TRAIN "(192,)"   # trailing overrides reach every run

A run whose metrics.json already holds its final evaluation is skipped, so an
interrupted benchmark continues where it stopped; a run interrupted half-way
resumes from its last checkpoint. Each run's command is kept in
``<out-dir>/<seed>/<method>/bench_run.json``; re-running with a different
budget into the same ``--out-dir`` is refused rather than mixed.
"""
import argparse
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET_VAL, SOURCE_VAL = "synthetic_foggy_val", "synthetic_clear_val"
# Keys the benchmark sets itself: an override of one would silently change the budget.
RESERVED_KEYS = {
    "SOLVER.MAX_ITER", "SOLVER.STEPS", "SOLVER.CHECKPOINT_PERIOD", "TEST.EVAL_PERIOD",
    "DATASETS.TEST", "SEED", "OUTPUT_DIR", "MIC.BURN_IN_ITERS", "MIC.LOG_PSEUDO_LABEL_QUALITY",
}
SIGNIFICANCE = 3.0  # a difference counts when it exceeds this many pooled stds


@dataclass(frozen=True)
class Method:
    """One row of the benchmark: a config, extra keys, and how it starts."""

    label: str
    config: str
    resumes_burn_in: bool  # starts from source-only's burn-in checkpoint
    mic: bool  # has an EMA teacher and pseudo-labels
    opts: Tuple[str, ...] = ()


METHODS: Dict[str, Method] = {
    "source_only": Method("source-only", "configs/synthetic/source_only.yaml", False, False),
    "mic": Method("MIC", "configs/synthetic/mic.yaml", True, True),
    "mic_student_prob": Method(
        "MIC (student_prob)", "configs/synthetic/mic.yaml", True, True, ("MIC.QUALITY_WEIGHT", "student_prob")
    ),
    "mic_sada": Method("MIC+SADA", "configs/synthetic/mic_sada.yaml", True, True),
    "sada": Method("SADA", "configs/synthetic/sada.yaml", True, False),
    "oracle": Method("oracle", "configs/synthetic/oracle.yaml", False, False),
}
# Sized from the step times of benchmarks/speed.py on 2 cores (source-only 0.38 s,
# MIC 0.84 s, MIC+SADA 1.04 s, SADA ~0.6 s per step) plus ~25 s per evaluation:
# about 27 minutes per seed for the six methods, 81 for three seeds (limit 90).
FULL = dict(iters=800, burn_in=550, seeds="0,1,2", methods=",".join(METHODS))
QUICK = dict(iters=600, burn_in=400, seeds="0", methods="source_only,mic,oracle")
# The design note's MIC schedule (2000 source steps, then 1000 with MIC), one seed, ~35 minutes:
# what MIC does once the teacher is trained, outside the 90-minute budget of FULL.
LONG = dict(iters=3000, burn_in=2000, seeds="0", methods="source_only,mic")


@dataclass
class Budget:
    """The fixed training budget every method gets."""

    iters: int
    burn_in: int
    seeds: List[int]
    methods: List[str]
    overrides: List[str] = field(default_factory=list)

    @property
    def lr_step(self) -> int:
        return int(0.85 * self.iters)

    @property
    def checkpoint(self) -> str:
        """File name of the source-only checkpoint taken after ``burn_in`` steps."""
        return f"model_{self.burn_in - 1:07d}.pth"


# --------------------------------------------------------------------------- arguments
def parse_args(argv: Optional[Sequence[str]] = None) -> Tuple[argparse.Namespace, Budget]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help=f"small budget: {QUICK['iters']} iters, burn-in {QUICK['burn_in']}, "
                             f"seeds {QUICK['seeds']}, methods {QUICK['methods']}")
    parser.add_argument("--long", action="store_true",
                        help=f"the design note's schedule: {LONG['iters']} iters, burn-in {LONG['burn_in']}, "
                             f"seeds {LONG['seeds']}, methods {LONG['methods']}")
    parser.add_argument("--iters", type=int, help=f"training steps of every run (default {FULL['iters']})")
    parser.add_argument("--burn-in", type=int, help=f"shared source-only steps (default {FULL['burn_in']})")
    parser.add_argument("--seeds", help=f"comma-separated SEED values (default {FULL['seeds']})")
    parser.add_argument("--methods", help=f"comma-separated subset of {','.join(METHODS)} (default: all)")
    parser.add_argument("--out-dir", default="output/bench_adaptation", help="runs go to <out-dir>/<seed>/<method>")
    parser.add_argument("--output", default="benchmarks/results/adaptation.json", help="the JSON report")
    args, overrides = parser.parse_known_args(argv)

    if args.quick and args.long:
        parser.error("--quick and --long are two different presets; give one")
    preset = QUICK if args.quick else LONG if args.long else FULL
    budget = Budget(
        iters=args.iters if args.iters is not None else preset["iters"],
        burn_in=args.burn_in if args.burn_in is not None else preset["burn_in"],
        seeds=[int(s) for s in (args.seeds or preset["seeds"]).split(",") if s.strip()],
        methods=[m.strip() for m in (args.methods or preset["methods"]).split(",") if m.strip()],
        overrides=overrides,
    )
    check_budget(parser, budget)
    args.out_dir, args.output = os.path.abspath(args.out_dir), os.path.abspath(args.output)
    return args, budget


def check_budget(parser: argparse.ArgumentParser, budget: Budget) -> None:
    """Refuse budgets and overrides that would make the comparison unfair or impossible."""
    if not 0 < budget.burn_in < budget.iters:
        parser.error("--burn-in must lie strictly between 0 and --iters")
    if not budget.seeds:
        parser.error("--seeds is empty")
    unknown = [m for m in budget.methods if m not in METHODS]
    if unknown:
        parser.error(f"unknown method(s) {unknown}; choose from {list(METHODS)}")
    if any(METHODS[m].resumes_burn_in for m in budget.methods) and "source_only" not in budget.methods:
        # The adaptation runs start from its checkpoint, so it is trained anyway: report it too.
        budget.methods.insert(0, "source_only")
    budget.methods.sort(key=list(METHODS).index)  # source-only first: the others resume from it
    if len(budget.overrides) % 2:
        parser.error(f"trailing config overrides must be KEY VALUE pairs, got {budget.overrides}")
    taken = sorted(set(budget.overrides[::2]) & RESERVED_KEYS)
    if taken:
        parser.error(f"{taken} are set by the benchmark itself; use --iters/--burn-in/--seeds/--out-dir")


# --------------------------------------------------------------------------- description
def resolved_config(budget: Budget):
    """source_only.yaml + the overrides, as every run will see them (the model and image size)."""
    from detectron2.config import get_cfg

    from mic_det import add_mic_config

    cfg = get_cfg()
    add_mic_config(cfg)
    cfg.merge_from_file(os.path.join(REPO, METHODS["source_only"].config))
    cfg.merge_from_list(list(budget.overrides))
    return cfg


def describe_budget(cfg, budget: Budget) -> Dict:
    """The budget as numbers, and as one line per item for the top of the report."""
    m = cfg.MODEL
    model = (
        f"{m.META_ARCHITECTURE}, ResNet-{m.RESNETS.DEPTH}-FPN ({m.RESNETS.NORM or 'no norm'}), "
        f"FPN {m.FPN.OUT_CHANNELS} ch, box head FC {m.ROI_BOX_HEAD.FC_DIM}, "
        f"{m.ROI_HEADS.BATCH_SIZE_PER_IMAGE} RoIs/img, RPN top-k {m.RPN.PRE_NMS_TOPK_TRAIN}/{m.RPN.POST_NMS_TOPK_TRAIN}, "
        f"weights: {m.WEIGHTS or 'from scratch'}"
    )
    images = (
        f"train min side {tuple(cfg.INPUT.MIN_SIZE_TRAIN)} (max {cfg.INPUT.MAX_SIZE_TRAIN}), "
        f"test min side {cfg.INPUT.MIN_SIZE_TEST} (max {cfg.INPUT.MAX_SIZE_TEST}), "
        f"{cfg.SOLVER.IMS_PER_BATCH} source images/step"
    )
    return {
        "iters": budget.iters,
        "burn_in": budget.burn_in,
        "lr_steps": [budget.lr_step],
        "base_lr": cfg.SOLVER.BASE_LR,
        "seeds": budget.seeds,
        "methods": budget.methods,
        "model": model,
        "image_size": images,
        "overrides": budget.overrides,
    }


def machine_info() -> Dict:
    """CPU model and cores, library versions: what the wall times and numbers depend on."""
    import detectron2
    import torch

    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "detectron2": detectron2.__version__,
        "platform": platform.platform(),
    }


def dataset_root(cfg) -> str:
    from mic_det.data.synthetic import default_synthetic_root

    root = cfg.DATASETS.SYNTHETIC_ROOT or default_synthetic_root()
    return root if os.path.isabs(root) else os.path.join(REPO, root)


def ensure_dataset(cfg) -> Dict:
    """Generate the default pair (a no-op when present); a user-given root must already exist.

    A root passed with ``DATASETS.SYNTHETIC_ROOT`` may hold a pair made with
    other parameters, which ``make_synthetic.py`` would refuse to overwrite, so
    it is only checked, not generated.
    """
    root = dataset_root(cfg)
    if not cfg.DATASETS.SYNTHETIC_ROOT:
        subprocess.run([sys.executable, "tools/make_synthetic.py"], check=True, cwd=REPO)
    info = os.path.join(root, "info.json")
    if not os.path.isfile(info):
        raise FileNotFoundError(f"no built-in pair at {root}: run tools/make_synthetic.py --root {root}")
    with open(info) as f:
        return {"root": root, **json.load(f)}


# --------------------------------------------------------------------------- running
def run_dir(out_dir: str, seed: int, method: str) -> str:
    return os.path.join(out_dir, str(seed), method)


def train_command(method: str, seed: int, out: str, budget: Budget) -> List[str]:
    """The exact ``tools/train_net.py`` call of one run (without ``--resume``)."""
    spec = METHODS[method]
    opts = [
        "OUTPUT_DIR", out,
        "SEED", str(seed),
        "SOLVER.MAX_ITER", str(budget.iters),
        "SOLVER.STEPS", f"({budget.lr_step},)",
        "SOLVER.CHECKPOINT_PERIOD", str(budget.burn_in),
        "TEST.EVAL_PERIOD", str(budget.iters),
        "DATASETS.TEST", f"('{TARGET_VAL}','{SOURCE_VAL}')",
        # One evaluation, at the end: a best checkpoint would only be the final one.
        "TEST.BEST_CHECKPOINT.ENABLED", "False",
    ]
    if spec.resumes_burn_in:
        opts += ["MIC.BURN_IN_ITERS", str(budget.burn_in)]
    if spec.mic:
        opts += ["MIC.LOG_PSEUDO_LABEL_QUALITY", "True"]
    opts += list(spec.opts) + list(budget.overrides)
    return [sys.executable, "tools/train_net.py", "--config-file", spec.config] + opts


def final_record(out: str, iters: int) -> Optional[Dict]:
    """The run's evaluation at its last iteration from metrics.json, or None if it has none yet."""
    path = os.path.join(out, "metrics.json")
    if not os.path.isfile(path):
        return None
    found = None
    with open(path) as f:
        for line in f:
            rec = json.loads(line)
            # The final evaluation runs after the last step and is logged at iteration `iters`
            # (iters - 1 if it ran inside the last step): an earlier one is not the final model.
            if f"student/{TARGET_VAL}/bbox/AP50" in rec and rec.get("iteration", -1) >= iters - 1:
                found = rec
    return found


def seed_from_burn_in(out: str, source_out: str, budget: Budget) -> None:
    """Start an adaptation run from source-only's burn-in checkpoint, as tools/demo.py does."""
    if os.path.exists(os.path.join(out, "last_checkpoint")):
        return  # already seeded (an interrupted run resumes from its own last checkpoint)
    src = os.path.join(source_out, budget.checkpoint)
    if not os.path.isfile(src):
        raise FileNotFoundError(f"{src} missing: source-only must checkpoint at the burn-in")
    os.makedirs(out, exist_ok=True)
    shutil.copy(src, os.path.join(out, budget.checkpoint))
    with open(os.path.join(out, "last_checkpoint"), "w") as f:
        f.write(budget.checkpoint)


def check_same_command(out: str, cmd: List[str]) -> None:
    """Refuse to continue a run directory that was started with another budget."""
    path = os.path.join(out, "bench_run.json")
    if os.path.isfile(path):
        with open(path) as f:
            old = json.load(f).get("command")
        if old is not None and old[1:] != cmd[1:]:  # the interpreter's path may differ
            raise SystemExit(
                f"{out} was run with a different command:\n  {' '.join(old)}\nnow:\n  {' '.join(cmd)}\n"
                "use another --out-dir (or delete it)"
            )


def run_one(method: str, seed: int, budget: Budget, out_dir: str) -> Dict:
    """Train (or skip, or resume) one run; returns its command and wall time."""
    out = run_dir(out_dir, seed, method)
    cmd = train_command(method, seed, out, budget)
    check_same_command(out, cmd)
    record_path = os.path.join(out, "bench_run.json")
    if final_record(out, budget.iters) is not None and os.path.isfile(record_path):
        with open(record_path) as f:
            info = json.load(f)
        print(f"[seed {seed}] {method}: done before, skipped", flush=True)
        return {**info, "skipped": True}

    if METHODS[method].resumes_burn_in:
        seed_from_burn_in(out, run_dir(out_dir, seed, "source_only"), budget)
    resumed = os.path.exists(os.path.join(out, "last_checkpoint"))
    os.makedirs(out, exist_ok=True)
    with open(record_path, "w") as f:
        json.dump({"command": cmd}, f)  # written first, so a later budget change is caught
    full_cmd = cmd[:4] + (["--resume"] if resumed else []) + cmd[4:]  # after "--config-file FILE"
    print(f"[seed {seed}] {method}: {' '.join(full_cmd)}", flush=True)
    wall = execute(full_cmd, os.path.join(out, "stdout.txt"))
    steps = budget.iters - budget.burn_in if METHODS[method].resumes_burn_in else budget.iters
    info = {"command": cmd, "wall_seconds": wall, "steps_run": steps, "resumed": resumed}
    with open(record_path, "w") as f:
        json.dump(info, f, indent=2)
    print(f"[seed {seed}] {method}: {wall:.0f} s", flush=True)
    return {**info, "skipped": False}


def execute(cmd: List[str], log_path: str) -> float:
    """Run a command with its output in ``log_path``; show the log's tail if it fails."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    start = time.perf_counter()
    with open(log_path, "a") as log:
        proc = subprocess.run(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        with open(log_path) as f:
            tail = f.read()[-4000:]
        raise SystemExit(f"run failed ({proc.returncode}), log {log_path}:\n{tail}")
    return time.perf_counter() - start


# --------------------------------------------------------------------------- reading results
def nan_to_none(x: Optional[float]) -> Optional[float]:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else x


def read_run(out: str, budget: Budget, has_teacher: bool) -> Dict:
    """Final AP numbers of one run (student, teacher) and its pseudo-label quality over training."""
    rec = final_record(out, budget.iters)
    if rec is None:
        raise RuntimeError(f"{out}/metrics.json holds no final evaluation (iteration {budget.iters})")
    models = {tag: ap_numbers(rec, tag) for tag in (("student", "teacher") if has_teacher else ("student",))}
    return {"models": models, "pseudo_labels": pseudo_label_quality(out) if has_teacher else None}


def ap_numbers(rec: Dict, tag: str) -> Dict:
    def get(key: str) -> Optional[float]:
        return nan_to_none(rec.get(key))

    prefix = f"{tag}/{TARGET_VAL}/bbox/AP50-"
    return {
        "target_AP50": get(f"{tag}/{TARGET_VAL}/bbox/AP50"),
        "target_AP": get(f"{tag}/{TARGET_VAL}/bbox/AP"),
        "source_AP50": get(f"{tag}/{SOURCE_VAL}/bbox/AP50"),
        "source_AP": get(f"{tag}/{SOURCE_VAL}/bbox/AP"),
        "target_AP50_per_class": {k[len(prefix):]: get(k) for k in rec if k.startswith(prefix)},
    }


def pseudo_label_quality(out: str) -> Optional[Dict]:
    """First and last logged pseudo-label precision / recall of a MIC run.

    Precision is recomputed as tp / num_pseudo so that a step without any
    pseudo-box counts as undefined rather than as precision 0.
    """
    logged = []
    with open(os.path.join(out, "metrics.json")) as f:
        for line in f:
            rec = json.loads(line)
            if "mic/pseudo_precision" in rec:
                logged.append(rec)
    if not logged:
        return None

    def point(rec: Dict) -> Dict:
        tp, n_pseudo, n_gt = rec.get("mic/pseudo_tp"), rec.get("mic/pseudo_num_pseudo"), rec.get("mic/pseudo_num_gt")
        precision = (tp / n_pseudo if n_pseudo else None) if tp is not None else rec["mic/pseudo_precision"]
        recall = (tp / n_gt if n_gt else None) if tp is not None else rec["mic/pseudo_recall"]
        return {"iteration": rec["iteration"], "precision": precision, "recall": recall, "num_pseudo": n_pseudo}

    tp = sum(r.get("mic/pseudo_tp", 0) for r in logged)
    n_pseudo = sum(r.get("mic/pseudo_num_pseudo", 0) for r in logged)
    n_gt = sum(r.get("mic/pseudo_num_gt", 0) for r in logged)
    return {
        "first": point(logged[0]),
        "last": point(logged[-1]),
        "num_logged": len(logged),
        # Pooled over the logged steps (one target batch each): steadier than one step.
        "pooled_precision": tp / n_pseudo if n_pseudo else None,
        "pooled_recall": tp / n_gt if n_gt else None,
    }


# --------------------------------------------------------------------------- statistics
def mean_std(values: Sequence[Optional[float]]) -> Dict:
    """Mean and sample std (None with fewer than two values) of the defined values."""
    vals = [v for v in values if v is not None]
    return {
        "mean": statistics.fmean(vals) if vals else None,
        "std": statistics.stdev(vals) if len(vals) > 1 else None,
        "n": len(vals),
        "values": list(values),
    }


def pooled_std(a: Dict, b: Dict) -> Optional[float]:
    """sqrt of the mean of the two variances (equal seed counts); None if either is unknown."""
    if a["std"] is None or b["std"] is None:
        return None
    return math.sqrt((a["std"] ** 2 + b["std"] ** 2) / 2)


def summarize(runs: Dict[str, Dict[int, Dict]], budget: Budget) -> Dict[str, Dict]:
    """Per method and model (student / teacher): the statistics the tables show."""
    summary = {}
    for method in budget.methods:
        per_seed = runs[method]
        for tag in per_seed[budget.seeds[0]]["models"]:
            numbers = [per_seed[s]["models"][tag] for s in budget.seeds]
            classes = list(numbers[0]["target_AP50_per_class"])
            summary[f"{method}/{tag}"] = {
                "method": method,
                "model": tag,
                **{k: mean_std([n[k] for n in numbers]) for k in ("target_AP50", "target_AP", "source_AP50", "source_AP")},
                "target_AP50_per_class": {
                    c: mean_std([n["target_AP50_per_class"].get(c) for n in numbers])["mean"] for c in classes
                },
            }
    add_comparisons(summary, runs, budget)
    return summary


def add_comparisons(summary: Dict[str, Dict], runs: Dict[str, Dict[int, Dict]], budget: Budget) -> None:
    """Fraction of the oracle's AP50 and difference to source-only, for every row."""
    oracle = summary.get("oracle/student", {}).get("target_AP50", {}).get("mean")
    base = summary.get("source_only/student", {}).get("target_AP50")
    for key, row in summary.items():
        ap50 = row["target_AP50"]
        row["fraction_of_oracle_AP50"] = ap50["mean"] / oracle if oracle and ap50["mean"] is not None else None
        if base is None or key == "source_only/student":
            continue
        diff = ap50["mean"] - base["mean"] if ap50["mean"] is not None and base["mean"] is not None else None
        sigma = pooled_std(ap50, base)
        in_sigma = diff / sigma if diff is not None and sigma else None
        # Same seed = same burn-in for the resumed methods: the per-seed differences are paired.
        paired = [
            (a - b) if a is not None and b is not None else None
            for a, b in zip(ap50["values"], base["values"])
        ]
        row["vs_source_only"] = {
            "AP50_diff": diff,
            "pooled_std": sigma,
            "diff_in_pooled_std": in_sigma,
            f"exceeds_{SIGNIFICANCE:g}_pooled_std": (abs(in_sigma) > SIGNIFICANCE) if in_sigma is not None else None,
            "paired_diff_per_seed": paired,
            # The same burn-in cancels out of a paired difference: its spread is the
            # adaptation's own seed-to-seed noise, not the burn-in's.
            "paired_diff": mean_std(paired),
        }


def pseudo_summary(runs: Dict[str, Dict[int, Dict]], budget: Budget) -> Dict[str, Dict]:
    """Per MIC method: first / last / pooled pseudo-label precision and recall, mean over seeds."""
    out = {}
    for method in budget.methods:
        qs = [runs[method][s]["pseudo_labels"] for s in budget.seeds]
        qs = [q for q in qs if q]
        if not qs:
            continue
        out[method] = {
            "first_iteration": [q["first"]["iteration"] for q in qs],
            "last_iteration": [q["last"]["iteration"] for q in qs],
            **{
                f"{when}_{what}": mean_std([q[when][what] for q in qs])["mean"]
                for when in ("first", "last") for what in ("precision", "recall")
            },
            "pooled_precision": mean_std([q["pooled_precision"] for q in qs])["mean"],
            "pooled_recall": mean_std([q["pooled_recall"] for q in qs])["mean"],
        }
    return out


# --------------------------------------------------------------------------- tables
def fmt(x: Optional[float], spec: str = ".1f") -> str:
    return "–" if x is None else format(x, spec)


def fmt_ms(stat: Dict) -> str:
    if stat["mean"] is None:
        return "–"
    return fmt(stat["mean"]) + (f" ± {stat['std']:.1f}" if stat["std"] is not None else "")


def row_label(row: Dict) -> str:
    label = METHODS[row["method"]].label
    return f"{label} (teacher)" if row["model"] == "teacher" else label


def header_lines(desc: Dict, machine: Dict, dataset: Dict) -> List[str]:
    splits = dataset.get("splits", {})
    return [
        "## Adaptation benchmark: built-in clear -> foggy pair",
        "",
        f"- Budget: {desc['iters']} iterations per run (lr x0.1 at {desc['lr_steps'][0]}, base lr {desc['base_lr']}); "
        f"adaptation methods resume from source-only at {desc['burn_in']} (shared burn-in)",
        f"- Images: {desc['image_size']}",
        f"- Model: {desc['model']}",
        f"- Seeds: {', '.join(map(str, desc['seeds']))}; overrides: {' '.join(desc['overrides']) or 'none'}",
        f"- Data: {dataset['root']} ({', '.join(f'{k} {v}' for k, v in splits.items())}; "
        f"{dataset.get('height')}x{dataset.get('width')}, fog beta {dataset.get('beta')})",
        f"- Machine: {machine['cpu']}, {machine['cores']} cores, OMP_NUM_THREADS={machine['omp_num_threads']}; "
        f"torch {machine['torch']}, detectron2 {machine['detectron2']}",
        "- Evaluated once, at the final iteration (no selection on target val); mean ± sample std over seeds",
    ]


def main_table(summary: Dict[str, Dict]) -> List[str]:
    key = f"exceeds_{SIGNIFICANCE:g}_pooled_std"
    lines = [
        "| method | target AP50 | target AP | source AP50 | % of oracle AP50 | Δ AP50 vs source-only "
        "| Δ / pooled std | > 3 std | paired Δ per seed |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in summary.values():
        vs = row.get("vs_source_only") or {}
        exceeds = vs.get(key)
        lines.append(
            f"| {row_label(row)} | {fmt_ms(row['target_AP50'])} | {fmt_ms(row['target_AP'])} | "
            f"{fmt_ms(row['source_AP50'])} | "
            f"{fmt(row['fraction_of_oracle_AP50'] * 100 if row['fraction_of_oracle_AP50'] is not None else None, '.0f')} | "
            f"{fmt(vs.get('AP50_diff'), '+.1f')} | {fmt(vs.get('diff_in_pooled_std'), '+.1f')} | "
            f"{'–' if exceeds is None else ('yes' if exceeds else 'no')} | "
            f"{fmt_ms(vs['paired_diff']) if vs else '–'} |"
        )
    return lines


def class_table(summary: Dict[str, Dict], order: Sequence[str] = ()) -> List[str]:
    """Per-class target AP50; columns in the dataset's class order (metrics.json sorts them)."""
    present = list(next(iter(summary.values()))["target_AP50_per_class"])
    classes = [c for c in order if c in present] + [c for c in present if c not in order]
    lines = ["| method | " + " | ".join(classes) + " |", "|---|" + "---|" * len(classes)]
    for row in summary.values():
        per = row["target_AP50_per_class"]
        lines.append(f"| {row_label(row)} | " + " | ".join(fmt(per.get(c)) for c in classes) + " |")
    return lines


def pseudo_table(pseudo: Dict[str, Dict]) -> List[str]:
    lines = [
        "| method | iters logged | precision first → last | recall first → last | precision / recall pooled |",
        "|---|---|---|---|---|",
    ]
    for method, p in pseudo.items():
        lines.append(
            f"| {METHODS[method].label} | {p['first_iteration'][0]}–{p['last_iteration'][0]} | "
            f"{fmt(p['first_precision'], '.2f')} → {fmt(p['last_precision'], '.2f')} | "
            f"{fmt(p['first_recall'], '.2f')} → {fmt(p['last_recall'], '.2f')} | "
            f"{fmt(p['pooled_precision'], '.2f')} / {fmt(p['pooled_recall'], '.2f')} |"
        )
    return lines


def time_table(timings: Dict[str, Dict[int, Dict]], budget: Budget) -> List[str]:
    lines = ["| method | steps run | " + " | ".join(f"seed {s} (s)" for s in budget.seeds) + " |",
             "|---|---|" + "---|" * len(budget.seeds)]
    for method in budget.methods:
        t = timings[method]
        steps = t[budget.seeds[0]].get("steps_run", "–")
        lines.append(f"| {METHODS[method].label} | {steps} | "
                     + " | ".join(fmt(t[s].get("wall_seconds"), ".0f") for s in budget.seeds) + " |")
    return lines


def report(desc: Dict, machine: Dict, dataset: Dict, summary: Dict, pseudo: Dict, timings: Dict, budget: Budget) -> str:
    lines = header_lines(desc, machine, dataset)
    lines += ["", "### Target (foggy val) and source (clear val) AP, student unless marked", ""] + main_table(summary)
    lines += ["", "### Per-class target AP50 (mean over seeds)", ""] + class_table(summary, dataset.get("classes", ()))
    if pseudo:
        lines += ["", "### Pseudo-labels vs target-train labels (measurement only; mean over seeds)", ""]
        lines += pseudo_table(pseudo)
    lines += ["", "### Wall time per run (resumed methods run only the steps after the burn-in)", ""]
    lines += time_table(timings, budget)
    return "\n".join(lines)


def to_json(x):
    """NaN -> null, so the report is strict JSON."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {str(k): to_json(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [to_json(v) for v in x]
    return x


# --------------------------------------------------------------------------- main
def main(argv: Optional[Sequence[str]] = None) -> None:
    args, budget = parse_args(argv)
    cfg = resolved_config(budget)  # also validates the overrides before anything trains
    desc = describe_budget(cfg, budget)
    machine = machine_info()
    dataset = ensure_dataset(cfg)
    print("\n".join(header_lines(desc, machine, dataset)), flush=True)

    start = time.perf_counter()
    timings: Dict[str, Dict[int, Dict]] = {m: {} for m in budget.methods}
    runs: Dict[str, Dict[int, Dict]] = {m: {} for m in budget.methods}
    for seed in budget.seeds:
        for method in budget.methods:
            timings[method][seed] = run_one(method, seed, budget, args.out_dir)
            out = run_dir(args.out_dir, seed, method)
            runs[method][seed] = read_run(out, budget, has_teacher=METHODS[method].mic)

    summary = summarize(runs, budget)
    pseudo = pseudo_summary(runs, budget)
    print()
    print(report(desc, machine, dataset, summary, pseudo, timings, budget))

    result = {
        "budget": desc,
        "machine": machine,
        "dataset": dataset,
        "summary": summary,
        "pseudo_labels": pseudo,
        "runs": {m: {str(s): {**runs[m][s], **timings[m][s]} for s in budget.seeds} for m in budget.methods},
        "out_dir": args.out_dir,
        "total_wall_seconds": time.perf_counter() - start,
    }
    os.makedirs(os.path.dirname(args.output), exist_ok=True)
    with open(args.output, "w") as f:
        json.dump(to_json(result), f, indent=2, allow_nan=False)
    print(f"\nJSON: {args.output}")


if __name__ == "__main__":
    main()
