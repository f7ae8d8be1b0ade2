"""MIC + UDA under DistributedDataParallel: 2 CPU processes, gloo, through Detectron2's launch."""
import os

import torch
from detectron2.engine import launch

from .conftest import REPO, TINY_OVERRIDES


def _train_and_dump(root: str, out: str, weights: str):
    """Runs in each process: train a few MIC steps, then save this rank's teacher and student."""
    from detectron2.config import get_cfg
    from detectron2.utils import comm

    from mic_det import add_mic_config
    from mic_det.data.synthetic import register_synthetic_pair
    from mic_det.engine import MICTrainer

    torch.set_num_threads(1)
    register_synthetic_pair(root)
    cfg = get_cfg()
    add_mic_config(cfg)
    cfg.merge_from_file(os.path.join(REPO, "configs/synthetic/mic_sada.yaml"))
    cfg.merge_from_list(
        TINY_OVERRIDES
        + [
            "OUTPUT_DIR", out, "MODEL.WEIGHTS", weights, "MIC.BURN_IN_ITERS", "0", "UDA.START_ITER", "0",
            "MIC.EMA_ALPHA", "0.9",
            # Every teacher box is a pseudo-label, so each rank's target images have some.
            "MIC.PSEUDO_SCORE_THRESH", "0.0", "DATASETS.TRAIN_TARGET", "('synthetic_clear_train',)",
            "DATASETS.TEST", "()", "SOLVER.MAX_ITER", "6", "SOLVER.IMS_PER_BATCH", "2",
        ]
    )
    trainer = MICTrainer(cfg)
    trainer.resume_or_load(resume=False)
    # This rank's own MIC losses, step by step: Detectron2 logs only their
    # mean over the ranks, and only on rank 0.
    step = trainer._trainer
    mic_losses = step._mic_losses
    recorded = []

    def recording(target, source=None):
        losses = mic_losses(target, source)
        recorded.append({k: float(v.detach()) for k, v in losses.items()})
        return losses

    step._mic_losses = recording
    trainer.train()
    rank = comm.get_rank()
    torch.save(
        {"teacher": trainer.teacher.state_dict(), "student": trainer.model.module.state_dict(),
         "world": comm.get_world_size(), "ddp": type(trainer.model).__name__, "mic_losses": recorded},
        os.path.join(out, f"rank{rank}.pth"),
    )


def test_two_process_gloo_mic_sada_keeps_one_teacher(source_only_run, tiny_pair, tmp_path):
    weights = os.path.join(source_only_run, "model_final.pth")
    launch(_train_and_dump, 2, dist_url="auto", args=(str(tiny_pair), str(tmp_path), weights))
    r0 = torch.load(tmp_path / "rank0.pth")
    r1 = torch.load(tmp_path / "rank1.pth")
    assert r0["world"] == r1["world"] == 2
    assert r0["ddp"] == "DistributedDataParallel"
    # MIC trained on both ranks at every step: a masked target forward with a
    # non-zero classification and objectness loss (box regression weighted 0).
    for rank, r in enumerate((r0, r1)):
        assert len(r["mic_losses"]) == 6, rank
        for losses in r["mic_losses"]:
            assert 0 < losses["loss_cls_mic"] < float("inf"), (rank, losses)
            assert 0 < losses["loss_rpn_cls_mic"] < float("inf"), (rank, losses)
            assert losses["loss_box_reg_mic"] == 0.0
    start = torch.load(weights, map_location="cpu")["model"]
    for key in r0["teacher"]:
        torch.testing.assert_close(r0["teacher"][key], r1["teacher"][key], msg=f"teacher {key} differs across ranks")
    for key in r0["student"]:
        torch.testing.assert_close(r0["student"][key], r1["student"][key], msg=f"student {key} differs across ranks")
    # The teacher followed a student that trained (not a frozen copy).
    assert any(not torch.equal(r0["teacher"]["model." + k], start[k]) for k in start if "model." + k in r0["teacher"])
    final = torch.load(tmp_path / "model_final.pth", map_location="cpu")
    for key in final["teacher"]:
        torch.testing.assert_close(final["teacher"][key], r0["teacher"][key])
