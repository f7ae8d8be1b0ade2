#!/usr/bin/env python
"""Plot a Detectron2 ``metrics.json``: AP / mIoU / top-1 over iterations (student vs teacher) and losses.

Why: the student/teacher gap and its trend over training is the first thing to
look at in a MIC run (the teacher should lead the student by a little and
both should rise after burn-in), and ``metrics.json`` is what every run leaves
behind, TensorBoard or not.

``metrics.json`` holds one JSON object per line with an ``"iteration"`` key.
Evaluation results arrive as ``<model>/<dataset>/<kind>/<metric>`` (model =
student or teacher; kind = bbox, sem_seg or cls), losses as ``total_loss``,
``loss_cls``, ``loss_cls_mic`` ...

Writes into ``--output``:

* ``eval_<kind>_<metric>.png``: one panel per dataset, one line per model, for
  every evaluation metric selected by ``--keys`` (by default detection's AP50,
  segmentation's mIoU and classification's top-1);
* ``losses.png``: one panel per selected key containing "loss";
* ``scalars.png``: one panel per other selected key (e.g. ``lr``), if any.

Example::

    python tools/plot_metrics.py --metrics output/metrics.json --output output/plots
    python tools/plot_metrics.py --metrics output/metrics.json --keys 'bbox/AP(50)?$|loss_cls'
"""

import argparse
import logging
import os
import sys
from typing import Optional, Sequence

from mic_det.evaluation.plots import DEFAULT_KEYS, plot_metrics


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--metrics", required=True, help="path to a Detectron2 metrics.json")
    parser.add_argument("--output", required=True, help="folder for the PNGs")
    parser.add_argument(
        "--keys",
        default=DEFAULT_KEYS,
        help=f"regex (re.search) selecting the keys to plot; default {DEFAULT_KEYS!r}",
    )
    args = parser.parse_args(argv)
    # plot_metrics says which all-zero series it leaves out.
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if not os.path.isfile(args.metrics):
        print(f"error: --metrics {args.metrics} does not exist (a run writes OUTPUT_DIR/metrics.json)",
              file=sys.stderr)
        return 2
    written = plot_metrics(args.metrics, args.output, args.keys)
    if not written:
        print(f"No key of {args.metrics} matches {args.keys!r}; nothing plotted.", file=sys.stderr)
        return 1
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
