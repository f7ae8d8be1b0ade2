"""The source-only model each benchmark seed starts from, trained once and cached.

Every method of a seed fine-tunes the same source-only checkpoint (the protocol of
``benchmarks/README.md``). Detection (``adaptation.py``) and the segmentation and
classification benchmark (``task_adaptation.py``) train and cache it alike: the
options of :func:`source_options`, a cache folder named by everything that
determines the model (:func:`source_model_dir`), and a run that resumes where an
interrupted one stopped (:func:`train_source_model`).
"""
import hashlib
import json
import os
import sys
from typing import List, Optional, Sequence

from . import run_progress
from .bench_runs import source_overrides
from .protocol import config_chain_values, source_lr_step

__all__ = ["source_model_dir", "source_options", "train_source_model"]


def source_options(seed: int, iters: int, overrides: Sequence[str]) -> List[str]:
    """The options of the seed's source model: ``iters`` steps, lr x0.1 at 75% of them, one checkpoint.

    No evaluation (the methods evaluate from it), and of the benchmark's trailing
    ``overrides`` only those that can change source-only training
    (:func:`~benchmarks.bench_runs.source_overrides`).
    """
    return ["SEED", str(seed), "SOLVER.MAX_ITER", str(iters), "SOLVER.STEPS", f"({source_lr_step(iters)},)",
            "SOLVER.RESTART_ITERS", "()", "SOLVER.CHECKPOINT_PERIOD", str(iters), "TEST.EVAL_PERIOD", "0",
            "DATASETS.TEST", "()"] + source_overrides(list(overrides))


def source_model_dir(cache_dir: str, prefix: str, seed: int, iters: int, config: str, opts: List[str],
                     data: Optional[list] = None) -> str:
    """The seed's folder in ``cache_dir``, keyed by what determines the model.

    The key hashes the config chain's values (those ``opts`` do not set), ``opts``
    and ``data`` (detection: the built-in set's parameters and its labelled split;
    ``None`` leaves it out), so an edit that changes the model makes a new folder and
    one that does not (a schedule key the options set) keeps the cached model.
    """
    parts = [config_chain_values(config, overridden=opts[::2]), opts] + ([data] if data is not None else [])
    key = hashlib.sha1(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:12]
    return os.path.join(cache_dir, f"{prefix}source_seed{seed}_{iters}_{key}")


def train_source_model(config: str, opts: List[str], out: str, label: str, iters: int, threads: Optional[int],
                       needed: Sequence[str] = ("model_final.pth",)) -> Optional[float]:
    """Train ``config`` with ``opts`` into ``out`` unless its ``needed`` files are there.

    Returns the wall time in seconds, or None when the model was cached. An
    interrupted run (``last_checkpoint`` and no final model) resumes.
    """
    if all(os.path.isfile(os.path.join(out, name)) for name in needed):
        run_progress.say(f"{label}: cached at {out}")
        return None
    resume = ["--resume"] if os.path.isfile(os.path.join(out, "last_checkpoint")) else []
    os.makedirs(out, exist_ok=True)
    cmd = [sys.executable, "tools/train_net.py", "--config-file", config] + resume + opts + ["OUTPUT_DIR", out]
    run_progress.say(f"{label}: {' '.join(cmd)}")
    return run_progress.execute(cmd, os.path.join(out, "stdout.txt"), threads, label=label, total_iters=iters)
