"""Plots of a run's ``metrics.json``: AP over iterations (student vs teacher) and losses.

Why: the student/teacher gap and its trend over training is the first thing to
look at in a MIC run (the teacher should lead the student by a little and
both should rise after burn-in), and ``metrics.json`` is what every run leaves
behind, TensorBoard or not. The trainer writes these plots into
``OUTPUT_DIR/plots`` when training ends; ``tools/plot_metrics.py`` does it for
any run, also while it trains.

``metrics.json`` holds one JSON object per line with an ``"iteration"`` key.
Evaluation results arrive as ``<model>/<dataset>/<kind>/<metric>`` (model =
student or teacher; kind = ``bbox`` for detection, ``sem_seg`` for
segmentation, ``cls`` for classification), losses as ``total_loss``,
``loss_cls``, ``loss_cls_mic`` ... By default each task's headline metric is
plotted: ``bbox/AP50``, ``sem_seg/mIoU``, ``cls/top1``.
"""
import json
import logging
import math
import os
import re
from collections import OrderedDict, defaultdict
from typing import Dict, List, Tuple

from .figures import plot_panels

# <model>/<dataset>/<kind>/<metric>; the dataset name may itself contain "/".
EVAL_KEY = re.compile(r"^(?P<model>student|teacher)/(?P<dataset>.+)/(?P<kind>bbox|sem_seg|cls)/(?P<metric>[^/]+)$")
# The metric each task's evaluator reports first (detection, segmentation, classification), and the losses.
DEFAULT_KEYS = r"bbox/AP50$|sem_seg/mIoU$|cls/top1$|loss"

Series = Dict[str, Tuple[List[float], List[float]]]

# A child of the "mic_det" logger, which tools/train_net.py sends to the console and log.txt.
logger = logging.getLogger(__name__)


def read_metrics(path: str) -> Dict[str, Tuple[List[int], List[float]]]:
    """``key -> (iterations, values)``, sorted by iteration; unreadable lines are skipped.

    A line written by a run that was resumed repeats earlier iterations; the
    last value written for an iteration wins.
    """
    by_key: Dict[str, Dict[int, float]] = defaultdict(dict)
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a partially written last line of a running job
            if not isinstance(record, dict) or "iteration" not in record:
                continue
            it = int(record["iteration"])
            for key, value in record.items():
                if key == "iteration" or not isinstance(value, (int, float)):
                    continue
                by_key[key][it] = float(value)
    out = OrderedDict()
    for key in sorted(by_key):
        its = sorted(by_key[key])
        out[key] = ([i for i in its], [by_key[key][i] for i in its])
    return out


def group_series(metrics: Dict[str, Tuple[List[int], List[float]]], keys: str):
    """Split the selected keys into evaluation panels (``metric -> dataset -> model -> series``) and the rest."""
    pattern = re.compile(keys)
    evals: Dict[str, Dict[str, Series]] = defaultdict(lambda: defaultdict(dict))
    losses: Dict[str, Series] = OrderedDict()
    others: Dict[str, Series] = OrderedDict()
    for key, (its, values) in metrics.items():
        if not pattern.search(key):
            continue
        # NaN points (e.g. an evaluation that could not be computed) are dropped from lines.
        pts = [(i, v) for i, v in zip(its, values) if math.isfinite(v)]
        series = ([i for i, _ in pts], [v for _, v in pts])
        m = EVAL_KEY.match(key)
        if m:
            evals[m["metric"]][m["dataset"]][m["model"]] = series
        elif "loss" in key:
            losses[key] = {key: series}
        else:
            others[key] = {key: series}
    # total_loss first, then the rest alphabetically
    losses = OrderedDict(sorted(losses.items(), key=lambda kv: (kv[0] != "total_loss", kv[0])))
    return evals, losses, others


def drop_all_zero(series: Dict[str, Series]) -> Tuple[Dict[str, Series], List[str]]:
    """Leave out loss and scalar panels whose every value is 0; returns (kept, left-out keys).

    A loss that is 0 throughout is a term switched off by the config (e.g.
    ``loss_box_reg_mic`` with ``MIC.PSEUDO_BOX_REG_WEIGHT 0``): its empty
    panel only pushes the real curves apart. Evaluation curves are never left
    out: an AP of 0 at every evaluation is a result.
    """
    kept, dropped = OrderedDict(), []
    for key, panel in series.items():
        values = [v for _, vs in panel.values() for v in vs]
        if values and all(v == 0 for v in values):
            dropped.append(key)
        else:
            kept[key] = panel
    return kept, dropped


def plot_metrics(metrics_path: str, output_dir: str, keys: str = DEFAULT_KEYS) -> List[str]:
    """Write the PNGs for ``metrics_path`` into ``output_dir``; returns their paths.

    Loss and scalar series that are 0 throughout are not plotted, and a log
    line names them (see :func:`drop_all_zero`). A missing ``metrics_path``
    raises ``FileNotFoundError`` naming it, before anything is written.
    """
    if not os.path.isfile(metrics_path):
        raise FileNotFoundError(f"{metrics_path} does not exist (a run writes OUTPUT_DIR/metrics.json)")
    metrics = read_metrics(metrics_path)
    evals, losses, others = group_series(metrics, keys)
    losses, zero_losses = drop_all_zero(losses)
    others, zero_others = drop_all_zero(others)
    if zero_losses or zero_others:
        logger.info(
            "Not plotted, 0 at every iteration of %s: %s", metrics_path, ", ".join(zero_losses + zero_others)
        )
    kinds = {m["metric"]: m["kind"] for m in map(EVAL_KEY.match, metrics) if m}
    os.makedirs(output_dir, exist_ok=True)
    written = []
    for metric, panels in sorted(evals.items()):
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", metric)
        kind = kinds[metric]
        path = os.path.join(output_dir, f"eval_{kind}_{safe}.png")
        written.append(plot_panels(path, panels, ylabel=metric, title=f"{kind}/{metric}"))
    if losses:
        written.append(plot_panels(os.path.join(output_dir, "losses.png"), losses, ylabel="loss"))
    if others:
        written.append(plot_panels(os.path.join(output_dir, "scalars.png"), others))
    return written
