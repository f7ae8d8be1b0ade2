"""--resume continues from the last state: best checkpoints do not take "last", SIGTERM saves first."""
import json
import os
import signal
import subprocess
import sys
import time

import torch

from .conftest import REPO, TINY_OVERRIDES, run_train_net


def test_a_best_checkpoint_dataset_that_is_never_evaluated_stops_the_run_before_training(tiny_pair, tmp_path):
    """Selecting on a set outside DATASETS.TEST would train to the end and write no model_best."""
    proc = run_train_net(
        ["--config-file", "configs/synthetic/source_only.yaml", "SOLVER.MAX_ITER", "4", "SOLVER.STEPS", "()",
         "TEST.EVAL_PERIOD", "2", "DATASETS.TEST", "('synthetic_clear_val',)",
         "TEST.BEST_CHECKPOINT.ENABLED", "True", "TEST.BEST_CHECKPOINT.DATASET", "synthetic_foggy_val"],
        tmp_path, tiny_pair, check=False,
    )
    assert proc.returncode != 0
    assert "TEST.BEST_CHECKPOINT.DATASET 'synthetic_foggy_val' is not one of DATASETS.TEST" in proc.stderr, \
        proc.stderr[-3000:]
    assert not list(tmp_path.glob("model_*.pth"))  # stopped before the first step


def test_last_checkpoint_names_the_final_state_not_the_best(tiny_pair, tmp_path):
    """Evaluations with a best-checkpoint hook: a finished run still resumes from model_final."""
    run_train_net(
        ["--config-file", "configs/synthetic/source_only.yaml", "SOLVER.MAX_ITER", "4", "SOLVER.STEPS", "()",
         "SOLVER.CHECKPOINT_PERIOD", "2", "TEST.EVAL_PERIOD", "2", "DATASETS.TEST", "('synthetic_clear_val',)",
         "TEST.BEST_CHECKPOINT.ENABLED", "True"],
        tmp_path, tiny_pair,
    )
    assert os.path.isfile(tmp_path / "model_best.pth")
    assert (tmp_path / "last_checkpoint").read_text().strip() == "model_final.pth"
    metrics = (tmp_path / "metrics.json").read_text()
    assert max(json.loads(line)["iteration"] for line in metrics.splitlines()) == 4  # the final evaluation
    final_iteration = torch.load(tmp_path / "model_final.pth", map_location="cpu")["iteration"]
    # Resuming the finished run (same settings) trains, evaluates and writes nothing more.
    proc = run_train_net(
        ["--config-file", "configs/synthetic/source_only.yaml", "--resume", "SOLVER.MAX_ITER", "4",
         "SOLVER.STEPS", "()", "SOLVER.CHECKPOINT_PERIOD", "2", "TEST.EVAL_PERIOD", "2",
         "DATASETS.TEST", "('synthetic_clear_val',)", "TEST.BEST_CHECKPOINT.ENABLED", "True"],
        tmp_path, tiny_pair,
    )
    log = proc.stdout + proc.stderr
    assert "model_final.pth" in log and "already finished at iteration 4" in log, log[-3000:]
    assert (tmp_path / "metrics.json").read_text() == metrics  # no row at iteration 5
    assert torch.load(tmp_path / "model_final.pth", map_location="cpu")["iteration"] == final_iteration
    assert (tmp_path / "last_checkpoint").read_text().strip() == "model_final.pth"


def test_sigterm_saves_a_resumable_checkpoint_and_says_where(tiny_pair, tmp_path):
    cmd = [sys.executable, os.path.join(REPO, "tools", "train_net.py"), "--config-file", "configs/synthetic/mic.yaml"]
    cmd += TINY_OVERRIDES + ["DATASETS.SYNTHETIC_ROOT", str(tiny_pair), "OUTPUT_DIR", str(tmp_path),
                             "SOLVER.MAX_ITER", "2000", "MIC.BURN_IN_ITERS", "0", "DATASETS.TEST", "()"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    # Output to a file, not a pipe: a pipe nobody reads fills up (the model's printout alone is
    # ~900 lines) and blocks the run before it trains.
    out_file = open(tmp_path / "stdout.txt", "w")
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out_file, stderr=subprocess.STDOUT, text=True)
    log = tmp_path / "log.txt"
    deadline = time.time() + 300
    # The handler is installed when the hook says so (in before_train, after the model and loaders are built).
    while time.time() < deadline and not (log.is_file() and "saves a resumable checkpoint" in log.read_text()):
        time.sleep(0.5)
    time.sleep(2)  # a few steps in
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=300)
    out_file.close()
    out = (tmp_path / "stdout.txt").read_text()
    assert proc.returncode == 128 + signal.SIGTERM, out[-3000:]
    saved = [f for f in os.listdir(tmp_path) if f.startswith("model_") and f.endswith(".pth")]
    assert len(saved) == 1, saved
    assert f"saved {tmp_path / saved[0]}" in out and "--resume" in out
    state = torch.load(tmp_path / saved[0], map_location="cpu")
    assert {"model", "teacher", "trainer", "iteration"} <= set(state)
    assert {"_trainer", "hooks", "rng_states"} <= set(state["trainer"])  # step + optimizer, lr scheduler, RNGs
    assert "optimizer" in state["trainer"]["_trainer"]
    assert (tmp_path / "last_checkpoint").read_text().strip() == saved[0]
    assert 0 <= state["iteration"] < 2000
