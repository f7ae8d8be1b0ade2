"""Markdown tables of an adaptation benchmark (summary rows from :mod:`bench_stats`)."""
import math
import os
import re
from typing import Dict, List, Optional, Sequence

__all__ = ["fmt", "fmt_ms", "main_table", "class_table", "pseudo_table", "time_table", "verdict_lines", "to_json",
           "logged_training_seconds"]


def fmt(x: Optional[float], spec: str = ".1f") -> str:
    return "–" if x is None else format(x, spec)


def fmt_ms(stat: Optional[Dict], spec: str = ".1f") -> str:
    if not stat or stat.get("mean") is None:
        return "–"
    return fmt(stat["mean"], spec) + (f" ± {format(stat['std'], spec)}" if stat.get("std") is not None else "")


def _label(row: Dict, labels: Dict[str, str]) -> str:
    label = labels.get(row["method"], row["method"])
    return f"{label} (teacher)" if row["model"] == "teacher" else label


def main_table(summary: Dict[str, Dict], labels: Dict[str, str], columns: Sequence[tuple]) -> List[str]:
    """One row per method/model: ``columns`` = (header, metric key), then gain, std ratio, % of oracle."""
    head = " | ".join(h for h, _ in columns)
    lines = [f"| method | {head} | paired gain over control | gain / paired std | per seed | % of oracle |",
             "|---|" + "---|" * (len(columns) + 4)]
    for row in summary.values():
        g = row.get("gain_over_control")
        cells = " | ".join(fmt_ms(row.get(k)) for _, k in columns)
        frac = row.get("fraction_of_oracle")
        per_seed = ", ".join(fmt(v, "+.1f") for v in g["values"]) if g else "–"
        lines.append(
            f"| {_label(row, labels)} | {cells} | {fmt_ms(g) if g else '–'} | "
            f"{fmt(g.get('in_std'), '+.1f') if g else '–'} | {per_seed} | "
            f"{fmt(frac * 100 if frac is not None else None, '.0f')} |"
        )
    return lines


def class_table(summary: Dict[str, Dict], labels: Dict[str, str], key: str, order: Sequence[str] = ()) -> List[str]:
    """Per-class values (mean over seeds); columns in the dataset's class order."""
    rows = [r for r in summary.values() if r.get(key)]
    if not rows:
        return []
    present = list(rows[0][key])
    classes = [c for c in order if c in present] + [c for c in present if c not in order]
    lines = ["| method | " + " | ".join(classes) + " |", "|---|" + "---|" * len(classes)]
    for row in rows:
        lines.append(f"| {_label(row, labels)} | " + " | ".join(fmt(row[key].get(c)) for c in classes) + " |")
    return lines


def pseudo_table(pseudo: Dict[str, Dict], labels: Dict[str, str]) -> List[str]:
    lines = ["| method | precision first → last | recall first → last | pooled P / R | boxes/img |",
             "|---|---|---|---|---|"]
    for method, p in pseudo.items():
        lines.append(
            f"| {labels.get(method, method)} | {fmt(p['first_precision'], '.2f')} → {fmt(p['last_precision'], '.2f')} | "
            f"{fmt(p['first_recall'], '.2f')} → {fmt(p['last_recall'], '.2f')} | "
            f"{fmt(p['pooled_precision'], '.2f')} / {fmt(p['pooled_recall'], '.2f')} | "
            f"{fmt(p.get('boxes_per_image'), '.2f')} |"
        )
    return lines


_TRAINING_TIME = re.compile(r"Total training time: (?:(\d+) days?, )?(\d+):(\d\d):(\d\d)")


def logged_training_seconds(run_dir: str) -> Optional[float]:
    """The training time Detectron2's timer logged for the run (``log.txt``), summed over its launches, or None.

    A run found finished by a later invocation has no wall time of that
    invocation; its own log still says how long it trained, so a re-run
    report keeps the timings of every run. A run lengthened by resuming it
    (benchmarks/README.md) logs one "Total training time" per launch, each
    for its own steps: their sum is the time of all the steps the report
    counts. Evaluation is not included; a launch killed before its end logged
    no line and is missing from the sum.
    """
    found = None
    path = os.path.join(run_dir, "log.txt")
    if os.path.isfile(path):
        with open(path, errors="replace") as f:
            for line in f:
                m = _TRAINING_TIME.search(line)
                if m:
                    days, h, mnt, sec = (int(g or 0) for g in m.groups())
                    found = (found or 0.0) + float(((days * 24 + h) * 60 + mnt) * 60 + sec)
    return found


def time_table(timings: Dict[str, Dict[int, Dict]], labels: Dict[str, str], seeds: Sequence[int]) -> List[str]:
    """Wall seconds per run; a run that this invocation found finished shows its logged training time, marked *."""
    def cell(t: Dict) -> str:
        if t.get("wall_seconds") is not None or t.get("logged_training_seconds") is None:
            return fmt(t.get("wall_seconds"), ".0f")
        return fmt(t["logged_training_seconds"], ".0f") + "*"

    lines = ["| run | steps | " + " | ".join(f"seed {s} (s)" for s in seeds) + " |",
             "|---|---|" + "---|" * len(seeds)]
    starred = False
    for name, per_seed in timings.items():
        steps = next((t.get("steps_run") for t in per_seed.values() if t.get("steps_run")), "–")
        cells = [cell(per_seed.get(s, {})) for s in seeds]
        starred |= any(c.endswith("*") for c in cells)
        lines.append(f"| {labels.get(name, name)} | {steps} | " + " | ".join(cells) + " |")
    if starred:
        lines += ["", "\\* found finished: the training time its own `log.txt` recorded (summed over its "
                      "launches, without evaluation), measured under whatever load the machine had then."]
    return lines


def verdict_lines(verdicts: List[Dict]) -> List[str]:
    word = {True: "**met**", False: "**missed**", None: "no verdict (one seed)"}
    return [f"- {v['target']}: {word[v['met']]}" for v in verdicts]


def to_json(x):
    """NaN -> null, so the report is strict JSON."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {str(k): to_json(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [to_json(v) for v in x]
    return x
