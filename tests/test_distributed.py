"""MIC + UDA under DistributedDataParallel: 2 CPU processes, gloo, through Detectron2's launch."""
import os

import torch
from detectron2.engine import launch

from .conftest import REPO, TINY_OVERRIDES


def _train_and_dump(root: str, out: str, weights: str, config: str = "configs/synthetic/mic_sada.yaml",
                    opts: tuple = (), rank_opts: tuple = ((), ())):
    """Runs in each process: train a few steps, then save this rank's teacher, student and MIC losses.

    ``opts`` override the 6-step MIC + SADA run on both ranks, ``rank_opts[rank]`` on one rank only
    (e.g. a score threshold that leaves one rank without pseudo-labels).
    """
    from detectron2.config import get_cfg
    from detectron2.utils import comm

    from mic_det import add_mic_config
    from mic_det.data.synthetic import register_synthetic_pair
    from mic_det.engine import MICTrainer

    torch.set_num_threads(1)
    register_synthetic_pair(root)
    cfg = get_cfg()
    add_mic_config(cfg)
    cfg.merge_from_file(os.path.join(REPO, config))
    cfg.merge_from_list(
        TINY_OVERRIDES
        + [
            "OUTPUT_DIR", out, "MODEL.WEIGHTS", weights, "MIC.BURN_IN_ITERS", "0", "UDA.START_ITER", "0",
            "MIC.EMA_ALPHA", "0.9",
            # Every teacher box is a pseudo-label, so each rank's target images have some.
            "MIC.PSEUDO_SCORE_THRESH", "0.0", "DATASETS.TRAIN_TARGET", "('synthetic_clear_train',)",
            "DATASETS.TEST", "()", "SOLVER.MAX_ITER", "6", "SOLVER.IMS_PER_BATCH", "2",
        ]
        + list(opts)
        + list(rank_opts[comm.get_rank()])
    )
    trainer = MICTrainer(cfg)
    trainer.resume_or_load(resume=False)
    # This rank's own MIC losses, step by step: Detectron2 logs only their
    # mean over the ranks, and only on rank 0.
    step = trainer._trainer
    recorded = []
    if cfg.MIC.ENABLED:
        mic_losses = step._mic_losses

        def recording(target, source=None):
            losses = mic_losses(target, source)
            recorded.append({k: float(v.detach()) for k, v in losses.items()})
            return losses

        step._mic_losses = recording
    trainer.train()
    rank = comm.get_rank()
    torch.save(
        {"teacher": trainer.teacher.state_dict() if trainer.teacher is not None else None,
         "student": trainer.model.module.state_dict(),
         "world": comm.get_world_size(), "ddp": type(trainer.model).__name__, "mic_losses": recorded},
        os.path.join(out, f"rank{rank}.pth"),
    )


def _load_ranks(out):
    r0, r1 = torch.load(out / "rank0.pth"), torch.load(out / "rank1.pth")
    assert r0["world"] == r1["world"] == 2
    assert r0["ddp"] == "DistributedDataParallel"
    return r0, r1


def _assert_same_weights(r0, r1, *parts):
    for part in parts:
        for key in r0[part]:
            torch.testing.assert_close(r0[part][key], r1[part][key], msg=f"{part} {key} differs across ranks")


def _discriminator_keys(state):
    keys = [k for k in state if "discriminator" in k or "domain" in k]
    assert keys, sorted(state)[:20]
    return keys


def test_two_process_gloo_mic_sada_keeps_one_teacher(source_only_run, tiny_pair, tmp_path):
    weights = os.path.join(source_only_run, "model_final.pth")
    launch(_train_and_dump, 2, dist_url="auto", args=(str(tiny_pair), str(tmp_path), weights))
    r0, r1 = _load_ranks(tmp_path)
    # MIC trained on both ranks at every step: a masked target forward with a
    # non-zero classification and objectness loss (box regression weighted 0).
    for rank, r in enumerate((r0, r1)):
        assert len(r["mic_losses"]) == 6, rank
        for losses in r["mic_losses"]:
            assert 0 < losses["loss_cls_mic"] < float("inf"), (rank, losses)
            assert 0 < losses["loss_rpn_cls_mic"] < float("inf"), (rank, losses)
            assert losses["loss_box_reg_mic"] == 0.0
    start = torch.load(weights, map_location="cpu")["model"]
    _assert_same_weights(r0, r1, "teacher", "student")
    # The teacher followed a student that trained (not a frozen copy).
    assert any(not torch.equal(r0["teacher"]["model." + k], start[k]) for k in start if "model." + k in r0["teacher"])
    final = torch.load(tmp_path / "model_final.pth", map_location="cpu")
    for key in final["teacher"]:
        torch.testing.assert_close(final["teacher"][key], r0["teacher"][key])


def test_two_process_gloo_alignment_starting_after_step_zero(source_only_run, tiny_pair, tmp_path):
    """UDA.START_ITER > 0: the discriminators get no gradient before it, on every rank."""
    weights = os.path.join(source_only_run, "model_final.pth")
    for name, config in (("sada", "configs/synthetic/sada.yaml"), ("mic_sada", "configs/synthetic/mic_sada.yaml")):
        out = tmp_path / name
        launch(_train_and_dump, 2, dist_url="auto",
               args=(str(tiny_pair), str(out), weights, config, ("UDA.START_ITER", "3", "SOLVER.MAX_ITER", "5")))
        r0, r1 = _load_ranks(out)
        _assert_same_weights(r0, r1, "student")
        # The discriminators trained from step 3 on (they start at their initialisation).
        start = torch.load(weights, map_location="cpu")["model"]
        keys = _discriminator_keys(r0["student"])
        assert not all(k in start and torch.equal(r0["student"][k], start[k]) for k in keys), name
        if name == "mic_sada":
            _assert_same_weights(r0, r1, "teacher")
            assert len(r0["mic_losses"]) == len(r1["mic_losses"]) == 5


def test_two_process_gloo_ranks_disagree_on_pseudo_labels(source_only_run, tiny_pair, tmp_path):
    """Rank 1's threshold keeps no teacher box: it skips the masked forward that rank 0 runs."""
    weights = os.path.join(source_only_run, "model_final.pth")
    launch(_train_and_dump, 2, dist_url="auto",
           args=(str(tiny_pair), str(tmp_path), weights, "configs/synthetic/mic_sada.yaml",
                 ("UDA.START_ITER", "2", "SOLVER.MAX_ITER", "4"), ((), ("MIC.PSEUDO_SCORE_THRESH", "1.0"))))
    r0, r1 = _load_ranks(tmp_path)
    assert len(r0["mic_losses"]) == len(r1["mic_losses"]) == 4
    assert all(losses["loss_cls_mic"] > 0 for losses in r0["mic_losses"]), r0["mic_losses"]
    assert all(losses["loss_cls_mic"] == 0 for losses in r1["mic_losses"]), r1["mic_losses"]
    _assert_same_weights(r0, r1, "teacher", "student")
