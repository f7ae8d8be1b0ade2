"""Statistics of an adaptation benchmark: per-seed numbers -> means, paired gains, verdicts.

Task-agnostic: a run is ``{"models": {tag: {metric: value, ...}}, "pseudo_labels": ...}``
and the metric names come from the caller (detection: target_AP50, ...;
segmentation and classification rows bring their own), so the same code
serves every task's rows.
"""
import math
import statistics
from typing import Dict, List, Optional, Sequence

__all__ = ["mean_std", "paired", "summarize", "verdicts", "SIGNIFICANCE"]

SIGNIFICANCE = 3.0  # a gain counts when it exceeds this many paired stds
GAP_CLOSED = 0.6  # share of the control -> oracle gap that MIC must close


def mean_std(values: Sequence[Optional[float]]) -> Dict:
    """Mean and sample std (None with fewer than two values) of the defined values."""
    vals = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return {
        "mean": statistics.fmean(vals) if vals else None,
        "std": statistics.stdev(vals) if len(vals) > 1 else None,
        "n": len(vals),
        "values": list(values),
    }


def paired(a: Sequence[Optional[float]], b: Sequence[Optional[float]]) -> Dict:
    """Per-seed differences a - b and their mean / std / ratio to the std.

    Every method of a seed starts from the same source model, so the source
    model's own seed-to-seed spread cancels out of the difference: what is
    left is the adaptation's noise, the right yardstick for "MIC gains".
    """
    diffs = [(x - y) if x is not None and y is not None else None for x, y in zip(a, b)]
    stat = mean_std(diffs)
    ratio = None
    if stat["mean"] is not None and stat["std"]:
        ratio = stat["mean"] / stat["std"]
    return {**stat, "in_std": ratio}


def summarize(
    runs: Dict[str, Dict[int, Dict]], methods: Sequence[str], seeds: Sequence[int], metrics: Sequence[str],
    key_metric: str, control: str = "control",
) -> Dict[str, Dict]:
    """Per method and model (student / teacher): mean ± std of each metric, and the paired gain over ``control``."""
    summary = {}
    base = None
    if control in runs:
        base = [runs[control][s]["models"]["student"].get(key_metric) for s in seeds]
    for method in methods:
        per_seed = runs[method]
        for tag in per_seed[seeds[0]]["models"]:
            numbers = [per_seed[s]["models"].get(tag, {}) for s in seeds]
            row = {"method": method, "model": tag}
            for m in metrics:
                row[m] = mean_std([n.get(m) for n in numbers])
            per_class_key = f"{key_metric}_per_class"
            if per_class_key in numbers[0]:
                classes = list(numbers[0][per_class_key])
                row[per_class_key] = {c: mean_std([n.get(per_class_key, {}).get(c) for n in numbers])["mean"]
                                      for c in classes}
            if base is not None and not (method == control and tag == "student"):
                row["gain_over_control"] = paired([n.get(key_metric) for n in numbers], base)
            summary[f"{method}/{tag}"] = row
    oracle = summary.get("oracle/student", {}).get(key_metric, {}).get("mean")
    control_mean = summary.get(f"{control}/student", {}).get(key_metric, {}).get("mean")
    for row in summary.values():
        mean = row[key_metric]["mean"]
        row["fraction_of_oracle"] = mean / oracle if oracle and mean is not None else None
        row["gap_closed"] = None
        if oracle is not None and control_mean is not None and mean is not None and oracle > control_mean:
            row["gap_closed"] = (mean - control_mean) / (oracle - control_mean)
    return summary


def verdicts(summary: Dict[str, Dict], key_metric: str, main: str = "mic", combined: str = "mic_sada",
             sanity: str = "minimal_mic") -> List[Dict]:
    """The benchmark's targets, each with its numbers and met / missed / not run.

    ``sanity`` is a deliberately minimal implementation of ``main`` run from the
    same checkpoints: the full one must match it on every seed, so the check is
    paired per seed (a mean could hide one seed where the full method loses).
    """
    out = []
    mic = summary.get(f"{main}/student")
    if mic is not None and "gain_over_control" in mic:
        g = mic["gain_over_control"]
        met = None
        if g["mean"] is not None and g["std"] is not None:
            met = g["mean"] > SIGNIFICANCE * g["std"]
        elif g["mean"] is not None and g["n"] == 1:
            met = None  # one seed: no std, no verdict
        out.append({
            "target": f"{main} {key_metric} above the matched control by more than {SIGNIFICANCE:g} paired std",
            "numbers": g, "met": met,
        })
    both = summary.get(f"{combined}/student")
    if both is not None and mic is not None:
        a, b = both[key_metric]["mean"], mic[key_metric]["mean"]
        out.append({"target": f"{combined} >= {main} ({key_metric})", "numbers": {"combined": a, "main": b},
                    "met": (a >= b) if a is not None and b is not None else None})
    if mic is not None and mic.get("gap_closed") is not None:
        out.append({"target": f"{main} closes >= {GAP_CLOSED:.0%} of the gap from the control to the oracle "
                              f"({key_metric})",
                    "numbers": {"gap_closed": mic["gap_closed"]}, "met": mic["gap_closed"] >= GAP_CLOSED})
    adapted = {k: v for k, v in summary.items() if k.endswith("/student") and "gain_over_control" in v
               and not k.startswith("oracle/")}
    if adapted:
        worst = {k.split("/")[0]: min((x for x in v["gain_over_control"]["values"] if x is not None), default=None)
                 for k, v in adapted.items()}
        defined = [x for x in worst.values() if x is not None]
        out.append({"target": f"no adaptation method ends below its control on any seed ({key_metric})",
                    "numbers": {"worst_paired_gain": worst}, "met": min(defined) >= 0 if defined else None})
    if mic is not None and mic.get("fraction_of_oracle") is not None:
        out.append({"target": f"{main} >= 90% of the oracle ({key_metric})",
                    "numbers": {"fraction": mic["fraction_of_oracle"]}, "met": mic["fraction_of_oracle"] >= 0.9})
    minimal = summary.get(f"{sanity}/student")
    if minimal is not None and mic is not None:
        d = paired(mic[key_metric]["values"], minimal[key_metric]["values"])
        defined = [v for v in d["values"] if v is not None]
        out.append({"target": f"{main} >= {sanity} on every seed, from the same checkpoint ({key_metric})",
                    "numbers": d, "met": min(defined) >= 0 if defined else None})
    return out
