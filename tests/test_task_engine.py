"""The engine is task-agnostic: detection runs behind the task interface exactly as before.

``tests/data/mic_sada_reference_losses.json`` holds every loss of a fixed-seed
MIC + SADA run of 4 steps, recorded with the detection code *before* it moved
behind :class:`mic_det.engine.MICTask`; the same run must give the same numbers.
Re-record (only for an intended change of the numbers) with
``python -m tests.test_task_engine record``.
"""
import json
import math
import os
import sys

import torch
from detectron2.config import get_cfg
from detectron2.utils.env import seed_all_rng
from detectron2.utils.events import EventStorage

from mic_det import add_mic_config
from mic_det.data.synthetic import register_synthetic_pair, write_domain_pair
from mic_det.engine import MICTrainer

from .conftest import REPO, TINY_OVERRIDES

REFERENCE = os.path.join(REPO, "tests", "data", "mic_sada_reference_losses.json")
STEPS = 4


def _mic_sada_losses(root: str, output_dir: str):
    """Every loss of the first STEPS steps of the tiny MIC + SADA run (no burn-in, delta 0.1)."""
    register_synthetic_pair(root)
    cfg = get_cfg()
    add_mic_config(cfg)
    cfg.merge_from_file(f"{REPO}/configs/synthetic/mic_sada.yaml")
    cfg.merge_from_list(
        TINY_OVERRIDES
        + ["OUTPUT_DIR", output_dir, "DATASETS.TEST", "()", "MIC.BURN_IN_ITERS", "0", "UDA.START_ITER", "0",
           "MIC.PSEUDO_SCORE_THRESH", "0.1", "MIC.GUARD.ENABLED", "False"]
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        seed_all_rng(7)
        trainer = MICTrainer(cfg)
        trainer.resume_or_load(resume=False)
        step = trainer._trainer
        out = []
        with EventStorage(0) as storage:
            step.storage = storage
            for i in range(STEPS):
                storage.iter = step.iter = i
                step.run_step()
                out.append({k: v.latest() for k, v in storage.histories().items() if k.startswith("loss_")})
        return out
    finally:
        torch.set_num_threads(threads)


def _pair(tmp_path) -> str:
    root = str(tmp_path / "pair")
    write_domain_pair(root, seed=3, num_source_train=8, num_source_val=2, num_target_train=8, num_target_val=2,
                      height=128, width=160)
    return root


def test_detection_behind_the_task_interface_gives_the_recorded_losses(tmp_path):
    with open(REFERENCE) as f:
        reference = json.load(f)
    got = _mic_sada_losses(_pair(tmp_path), str(tmp_path / "run"))
    assert len(got) == len(reference) == STEPS
    for i, (g, r) in enumerate(zip(got, reference)):
        assert sorted(g) == sorted(r), f"step {i}: loss names {sorted(g)} != {sorted(r)}"
        for name, value in r.items():
            assert math.isclose(g[name], value, rel_tol=1e-4, abs_tol=1e-6), (i, name, g[name], value)
    # The run exercised every part: MIC from pseudo-boxes and each SADA loss.
    assert any(s["loss_cls_mic"] > 0 for s in reference)
    assert all(any(k.startswith(p) for k in reference[0]) for p in ("loss_da_img", "loss_da_ins", "loss_da_cst"))


if __name__ == "__main__" and sys.argv[1:] == ["record"]:
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        losses = _mic_sada_losses(_pair(Path(tmp)), os.path.join(tmp, "run"))
    with open(REFERENCE, "w") as f:
        json.dump(losses, f, indent=1, sort_keys=True)
    print(f"wrote {REFERENCE}: {len(losses)} steps, {sorted(losses[0])}")
