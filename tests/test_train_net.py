"""tools/train_net.py end to end on a tiny generated pair: learning, MIC, eval-only, resume, best checkpoint."""
import glob
import json
import os
import shutil

import pytest
import torch

from .conftest import read_metrics, run_train_net


def _evals(records):
    return [r for r in records if any(k.endswith("/bbox/AP50") for k in r)]


def test_source_only_learns(source_only_run):
    records = read_metrics(source_only_run)
    losses = [r["total_loss"] for r in records if "total_loss" in r]
    assert len(losses) >= 5
    assert losses[-1] < 0.8 * losses[0], losses
    final = _evals(records)[-1]
    # Evaluation ran on both sets, for the student, and the images it trained
    # on are learnt far beyond chance (an untrained detector scores ~0 AP50).
    assert final["student/synthetic_clear_train/bbox/AP50"] > 10.0
    assert "student/synthetic_foggy_val/bbox/AP50" in final
    assert "student/synthetic_clear_train/bbox/AP50-car" in final
    reports = glob.glob(os.path.join(source_only_run, "inference", "report_student_synthetic_clear_train_iter*.md"))
    assert reports and "| car" in open(reports[0]).read()


def _mic_args(source_only_run, *extra):
    # The target stream is the clear train set here: these tests check the
    # MIC machinery, which needs a teacher with confident boxes after a
    # one-minute source-only run (adaptation itself is measured by benchmarks).
    return [
        "--config-file", "configs/synthetic/mic.yaml",
        "MODEL.WEIGHTS", os.path.join(source_only_run, "model_final.pth"),
        "MIC.BURN_IN_ITERS", "0",
        "MIC.PSEUDO_SCORE_THRESH", "0.3",
        "SOLVER.WARMUP_ITERS", "0",
        "DATASETS.TRAIN_TARGET", "('synthetic_clear_train',)",
        "DATASETS.TEST", "('synthetic_foggy_val',)",
    ] + list(extra)


def test_mic_run_learns_pseudo_labels_and_evaluates_teacher(source_only_run, tiny_pair, tmp_path):
    # Two unlabelled target images (an image folder registered on the command
    # line) and a frozen teacher (alpha 1): the pseudo-labels are a fixed
    # target, so the student's MIC losses on the masked views must fall.
    folder = tmp_path / "target_images"
    folder.mkdir()
    for name in ("000000.png", "000001.png"):
        shutil.copy(tiny_pair / "source_train" / name, folder / name)
    out = tmp_path / "run"
    run_train_net(
        ["--register-folder", "two_images", str(folder)]
        + _mic_args(source_only_run, "DATASETS.TRAIN_TARGET", "('two_images',)", "SOLVER.MAX_ITER", "100",
                    "SOLVER.STEPS", "()", "MIC.EMA_ALPHA", "1.0", "SOLVER.BASE_LR", "0.01"),
        out, tiny_pair,
    )
    records = read_metrics(out)
    steps = [r for r in records if "loss_cls_mic" in r]
    assert all(r["mic/boxes_per_image"] > 0 for r in steps), "the teacher gave no pseudo-boxes"
    # Every class of the training set has its own count (TensorBoard: mic/boxes_per_image/<class>).
    names = ("person", "rider", "car", "truck", "bus", "bicycle")
    assert all(f"mic/boxes_per_image/{n}" in r for r in steps for n in names), sorted(steps[-1])
    assert all(r["mic/mean_score"] >= 0.3 for r in steps)
    assert 0.3 < steps[-1]["mic/mask_ratio_mic"] < 0.7
    mic = [r["loss_cls_mic"] + r["loss_rpn_cls_mic"] for r in steps]
    assert mic[-1] < 0.85 * mic[0], mic
    # Box regression from pseudo-labels is weighted 0 (the reference).
    assert steps[-1]["loss_box_reg_mic"] == 0.0 and steps[-1]["loss_rpn_loc_mic"] == 0.0
    final = _evals(records)[-1]
    assert "teacher/synthetic_foggy_val/bbox/AP50" in final
    assert "student/synthetic_foggy_val/bbox/AP50" in final
    # What a person looks at: per-class tables for both models, PR curves, AP50 over iterations.
    for tag in ("student", "teacher"):
        assert glob.glob(os.path.join(out, "inference", f"report_{tag}_synthetic_foggy_val_iter*.md"))
        assert glob.glob(os.path.join(out, "inference", f"report_{tag}_synthetic_foggy_val_iter*.png"))
    assert os.path.getsize(os.path.join(out, "plots", "eval_bbox_AP50.png")) > 1000
    assert os.path.getsize(os.path.join(out, "plots", "losses.png")) > 1000
    ckpt = torch.load(os.path.join(out, "model_final.pth"), map_location="cpu")
    assert "teacher" in ckpt and "model" in ckpt


def test_eval_only_student_and_teacher_differ(source_only_run, tiny_pair, tmp_path):
    train_dir = tmp_path / "train"
    run_train_net(_mic_args(source_only_run, "SOLVER.MAX_ITER", "20", "MIC.EMA_ALPHA", "0.9"), train_dir, tiny_pair)
    weights = os.path.join(train_dir, "model_final.pth")
    out = tmp_path / "eval"
    run_train_net(
        ["--config-file", "configs/synthetic/mic.yaml", "--eval-only", "--eval-model", "both",
         "MODEL.WEIGHTS", weights, "DATASETS.TEST", "('synthetic_foggy_val',)"],
        out, tiny_pair,
    )
    reports = {}
    for tag in ("student", "teacher"):
        (path,) = glob.glob(os.path.join(out, "inference", f"report_{tag}_synthetic_foggy_val_iter*.json"))
        with open(path) as f:
            reports[tag] = json.load(f)
    ckpt = torch.load(weights, map_location="cpu")
    s, t = ckpt["model"], {k[len("model."):]: v for k, v in ckpt["teacher"].items()}
    assert any(not torch.equal(s[k], t[k]) for k in s if k in t), "student and teacher weights are equal"
    assert reports["student"] != reports["teacher"]
    for tag, report in reports.items():  # each result says what produced it
        assert report["model"] == tag and report["dataset"] == "synthetic_foggy_val"
        assert report["config"].endswith("config.yaml") and report["config_sha1"]


def test_eval_only_teacher_of_a_source_only_checkpoint_is_a_clear_error(source_only_run, tiny_pair, tmp_path):
    proc = run_train_net(
        ["--config-file", "configs/synthetic/source_only.yaml", "--eval-only", "--eval-model", "teacher",
         "MODEL.WEIGHTS", os.path.join(source_only_run, "model_final.pth")],
        tmp_path, tiny_pair, check=False,
    )
    assert proc.returncode != 0
    assert "teacher" in proc.stderr


def test_resume_continues_exactly(source_only_run, tiny_pair, tmp_path):
    """N steps straight == N/2 steps, stop, --resume: same student and teacher.

    The resumed run restores the teacher, the optimizer, the data streams'
    positions and the RNG states. Source-only resumes bit for bit; with MIC
    and UDA, last-bit differences (~1e-8) appear in the first resumed step and
    grow through the discrete choices (top-k proposals, RoI sampling), so the
    run is kept short and the check is tight: a resume that lost the teacher,
    the momentum or the stream position misses it by orders of magnitude.
    """
    common = _mic_args(
        source_only_run, "SOLVER.MAX_ITER", "4", "SOLVER.CHECKPOINT_PERIOD", "2", "MIC.EMA_ALPHA", "0.9",
        "UDA.ENABLED", "True",
    )
    straight = tmp_path / "straight"
    run_train_net(common, straight, tiny_pair)
    resumed = tmp_path / "resumed"
    os.makedirs(resumed)
    shutil.copy(os.path.join(straight, "model_0000001.pth"), resumed)
    (resumed / "last_checkpoint").write_text("model_0000001.pth")
    run_train_net(["--resume"] + common, resumed, tiny_pair)

    a = torch.load(os.path.join(straight, "model_final.pth"), map_location="cpu")
    b = torch.load(os.path.join(resumed, "model_final.pth"), map_location="cpu")
    half = torch.load(os.path.join(straight, "model_0000001.pth"), map_location="cpu")
    assert a["iteration"] == b["iteration"] == 3
    for part in ("model", "teacher"):
        moved = max((a[part][k].float() - half[part][k].float()).abs().max().item() for k in a[part])
        differ = max((a[part][k].float() - b[part][k].float()).abs().max().item() for k in a[part])
        assert moved > 1e-4, f"{part} did not train in the resumed half"
        # Last-bit differences grow to ~1e-5 (Intel Xeon) or ~3e-5 (AMD EPYC) of the 8e-3 the half
        # moved; a lost teacher, momentum or stream position differs by a sizeable part of it.
        assert differ < 0.01 * moved, f"{part}: resumed differs by {differ} (the resumed half moved it by {moved})"
    # The teacher is not the student: it was restored, not re-copied.
    assert any(not torch.equal(a["model"][k], a["teacher"]["model." + k]) for k in a["model"])


def test_evaluating_during_training_does_not_change_the_trained_model(source_only_run, tiny_pair, tmp_path):
    """A run evaluated every 2 steps trains the same student and teacher as one evaluated at its end only.

    Iterating a test loader draws its base seed from torch's RNG, which the next steps' RoI
    sampling and masks draw from; the trainer puts the RNGs back after each evaluation.
    """
    finals = {}
    for period in (2, 4):
        out = tmp_path / f"eval_every_{period}"
        run_train_net(_mic_args(source_only_run, "SOLVER.MAX_ITER", "4", "TEST.EVAL_PERIOD", str(period),
                                "MIC.EMA_ALPHA", "0.9"), out, tiny_pair)
        assert len(_evals(read_metrics(out))) == 4 // period
        finals[period] = torch.load(os.path.join(out, "model_final.pth"), map_location="cpu")
    start = torch.load(os.path.join(source_only_run, "model_final.pth"), map_location="cpu")["model"]
    a, b = finals[2], finals[4]
    assert any(not torch.equal(a["model"][k], start[k]) for k in start), "the student did not train"
    for part in ("model", "teacher"):
        assert a[part].keys() == b[part].keys()
        changed = [k for k in a[part] if not torch.equal(a[part][k], b[part][k])]
        assert not changed, f"{part}: evaluating at step 2 changed {len(changed)} tensors, e.g. {changed[:3]}"


def test_best_checkpoint_keeps_the_best_evaluation(source_only_run, tiny_pair, tmp_path):
    run_train_net(
        ["--config-file", "configs/synthetic/source_only.yaml", "MODEL.WEIGHTS",
         os.path.join(source_only_run, "model_final.pth"), "SOLVER.MAX_ITER", "30", "TEST.EVAL_PERIOD", "10",
         "SOLVER.BASE_LR", "0.02", "SOLVER.WARMUP_ITERS", "0", "DATASETS.TEST", "('synthetic_clear_train',)",
         "TEST.BEST_CHECKPOINT.DATASET", "synthetic_clear_train"],
        tmp_path, tiny_pair,
    )
    key = "student/synthetic_clear_train/bbox/AP50"
    evals = [(r["iteration"], r[key]) for r in read_metrics(tmp_path) if key in r]
    assert len(evals) == 3 and len({v for _, v in evals}) > 1, evals
    best = torch.load(os.path.join(tmp_path, "model_best.pth"), map_location="cpu")
    best_value = max(v for _, v in evals)
    first_best_iter = next(i for i, v in evals if v == best_value)  # ties keep the earlier
    assert best["iteration"] == first_best_iter, evals


def test_bad_config_key_is_named(tiny_pair, tmp_path):
    proc = run_train_net(
        ["--config-file", "configs/synthetic/mic.yaml", "MIC.NOT_A_KEY", "1"], tmp_path, tiny_pair, check=False
    )
    assert proc.returncode != 0 and "MIC.NOT_A_KEY" in proc.stderr


def test_unknown_dataset_is_named(tiny_pair, tmp_path):
    proc = run_train_net(
        ["--config-file", "configs/synthetic/mic.yaml", "DATASETS.TRAIN_TARGET", "('synthetic_fogy_train',)"],
        tmp_path, tiny_pair, check=False,
    )
    assert proc.returncode != 0 and "synthetic_fogy_train" in proc.stderr


def test_user_domains_from_flags_alone(tiny_pair, tmp_path):
    """A COCO json source, an image-folder target, a COCO val set: flags only, no code."""
    out = tmp_path / "run"
    run_train_net(
        ["--config-file", "configs/synthetic/mic.yaml",
         "--register-coco", "my_source", str(tiny_pair / "annotations" / "source_train.json"),
         str(tiny_pair / "source_train"),
         "--register-folder", "my_target", str(tiny_pair / "target_train"),
         "--register-coco", "my_target_val", str(tiny_pair / "annotations" / "target_val.json"),
         str(tiny_pair / "target_val"),
         "DATASETS.TRAIN", "('my_source',)", "DATASETS.TRAIN_TARGET", "('my_target',)",
         "DATASETS.TEST", "('my_target_val',)", "SOLVER.MAX_ITER", "4", "MIC.BURN_IN_ITERS", "2"],
        out, tiny_pair,
    )
    final = _evals(read_metrics(out))[-1]
    assert "student/my_target_val/bbox/AP50" in final and "teacher/my_target_val/bbox/AP50" in final


def test_unreadable_training_images_are_skipped_and_counted(tiny_pair, tmp_path):
    images = tmp_path / "images"
    shutil.copytree(tiny_pair / "source_train", images)
    broken = sorted(os.listdir(images))[:12]
    for name in broken:
        (images / name).write_bytes(b"not a png")
    out = tmp_path / "run"
    proc = run_train_net(
        ["--config-file", "configs/synthetic/source_only.yaml",
         "--register-coco", "half_broken", str(tiny_pair / "annotations" / "source_train.json"), str(images),
         "DATASETS.TRAIN", "('half_broken',)", "DATASETS.TEST", "()", "SOLVER.MAX_ITER", "8"],
        out, tiny_pair,
    )
    assert "Skipping unreadable training image" in proc.stdout + proc.stderr
    last = read_metrics(out)[-1]
    assert last["data/skipped_images_source"] >= 1
    assert os.path.exists(out / "model_final.pth")


def test_a_new_run_does_not_overwrite_an_earlier_one(source_only_run, tiny_pair):
    before = os.path.getmtime(os.path.join(source_only_run, "model_final.pth"))
    proc = run_train_net(
        ["--config-file", "configs/synthetic/source_only.yaml", "SOLVER.MAX_ITER", "2"],
        source_only_run, tiny_pair, check=False,
    )
    assert proc.returncode != 0
    assert "already holds a run" in proc.stderr and "--resume" in proc.stderr
    assert os.path.getmtime(os.path.join(source_only_run, "model_final.pth")) == before


def test_sada_continues_a_source_only_checkpoint_with_its_momentum(source_only_run, tiny_pair, tmp_path):
    """A source-only checkpoint resumed as MIC+SADA (as the benchmark and demo do): the
    discriminators are new parameters, so the optimizer state is carried over by name."""
    out = tmp_path / "mic_sada"
    out.mkdir()
    shutil.copy(source_only_run / "model_final.pth", out / "model_final.pth")
    (out / "last_checkpoint").write_text("model_final.pth")
    proc = run_train_net(
        ["--config-file", "configs/synthetic/mic_sada.yaml", "--resume",
         "SOLVER.MAX_ITER", "203", "SOLVER.STEPS", "(180,)", "MIC.BURN_IN_ITERS", "200", "UDA.START_ITER", "200",
         "MIC.PSEUDO_SCORE_THRESH", "0.3", "DATASETS.TRAIN_TARGET", "('synthetic_clear_train',)",
         "DATASETS.TEST", "()"],
        out, tiny_pair,
    )
    log = proc.stdout + proc.stderr
    assert "Starting training from iteration 200" in log
    # Every source-only parameter keeps its momentum; only the discriminators start fresh.
    assert "Optimizer state restored by name for" in log
    restored, total = map(int, log.split("Optimizer state restored by name for ")[1].split(" parameters")[0].split(" of "))
    assert 0 < restored < total
    last = [r for r in read_metrics(out) if "loss_da_img" in r][-1]
    assert last["iteration"] == 202 and last["loss_cls_mic"] >= 0.0


def test_burn_in_evaluates_the_student_only_and_warns_about_a_full_lr_start(tiny_pair, tmp_path):
    """During a burn-in the teacher is not a model yet: no teacher AP is reported until MIC starts.

    This run also starts MIC with the lr still at SOLVER.BASE_LR (no step before
    the burn-in ends), which the trainer must say at start-up.
    """
    out = tmp_path / "burn_in"
    proc = run_train_net(
        ["--config-file", "configs/synthetic/mic.yaml", "SOLVER.MAX_ITER", "6", "SOLVER.STEPS", "()",
         "SOLVER.WARMUP_ITERS", "0", "MIC.BURN_IN_ITERS", "3", "TEST.EVAL_PERIOD", "2",
         "DATASETS.TEST", "('synthetic_foggy_val',)"],
        out, tiny_pair,
    )
    assert "MIC starts at iteration 3 (MIC.BURN_IN_ITERS) from a source model trained to the end at 100%" in (
        proc.stdout + proc.stderr)
    evals = {r["iteration"]: r for r in _evals(read_metrics(out))}
    assert "student/synthetic_foggy_val/bbox/AP50" in evals[1]
    assert not any(k.startswith("teacher/") for k in evals[1])  # iteration 2 < burn-in 3
    assert "teacher/synthetic_foggy_val/bbox/AP50" in evals[max(evals)]


def test_the_shipped_schedule_finishes_the_source_model_then_adapts_at_the_full_lr():
    from detectron2.config import get_cfg

    from mic_det import add_mic_config
    from mic_det.engine.lr_schedule import build_lr_scheduler

    for path in ("configs/synthetic/mic.yaml", "configs/synthetic/mic_sada.yaml", "configs/synthetic/sada.yaml"):
        cfg = add_mic_config(get_cfg())
        cfg.merge_from_file(os.path.join(os.path.dirname(os.path.dirname(__file__)), path))
        start = cfg.MIC.BURN_IN_ITERS if cfg.MIC.ENABLED else cfg.UDA.START_ITER
        sched = build_lr_scheduler(cfg, torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=cfg.SOLVER.BASE_LR))
        lr = lambda it: sched._multiplier(it / cfg.SOLVER.MAX_ITER)  # noqa: E731
        assert lr(start - 1) == pytest.approx(0.1), path  # the source model: its schedule finished
        assert lr(start) < 0.01, path  # adaptation warms up again ...
        assert lr(start + cfg.SOLVER.WARMUP_ITERS) == pytest.approx(1.0), path  # ... to the full lr
        assert lr(cfg.SOLVER.MAX_ITER - 1) == pytest.approx(0.1), path


def test_divergence_names_the_knobs_and_keeps_earlier_checkpoints(tiny_pair, tmp_path):
    """A run driven to NaN (lr 50, no warm-up, an FPN without norm) stops with Detectron2's
    error followed by mic_det's hint; the checkpoint written before it is still there."""
    out = tmp_path / "diverged"
    proc = run_train_net(
        ["--config-file", "configs/synthetic/source_only.yaml", "SOLVER.BASE_LR", "50.0", "SOLVER.WARMUP_ITERS", "0",
         "MODEL.FPN.NORM", "", "SOLVER.MAX_ITER", "40", "SOLVER.CHECKPOINT_PERIOD", "1", "DATASETS.TEST", "()"],
        out, tiny_pair, check=False,
    )
    assert proc.returncode != 0
    err = proc.stderr
    assert "FloatingPointError" in err and "mic_det: training diverged at iteration" in err, err[-3000:]
    hint = err.split("mic_det: training diverged at iteration")[1]
    for knob in ("SOLVER.BASE_LR (now 50", "SOLVER.CLIP_GRADIENTS.ENABLED True", 'MODEL.FPN.NORM "GN"'):
        assert knob in hint, hint
    iteration = int(hint.split(",")[0])
    assert iteration >= 1 and os.path.exists(out / f"model_{iteration - 1:07d}.pth")
