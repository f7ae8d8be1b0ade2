"""Shared fixtures: a tiny built-in domain pair and a way to run tools/train_net.py on it."""
import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A tiny, fast version of configs/synthetic/*.yaml: 128x160 images, few RoIs.
TINY_OVERRIDES = [
    "INPUT.MIN_SIZE_TRAIN", "(128,)",
    "INPUT.MAX_SIZE_TRAIN", "256",
    "INPUT.MIN_SIZE_TEST", "128",
    "INPUT.MAX_SIZE_TEST", "256",
    "MODEL.RPN.BATCH_SIZE_PER_IMAGE", "64",
    "MODEL.RPN.PRE_NMS_TOPK_TRAIN", "300",
    "MODEL.RPN.POST_NMS_TOPK_TRAIN", "150",
    "MODEL.RPN.PRE_NMS_TOPK_TEST", "300",
    "MODEL.RPN.POST_NMS_TOPK_TEST", "150",
    "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "64",
    "DATALOADER.NUM_WORKERS", "0",
    "SOLVER.CHECKPOINT_PERIOD", "100000",
    "TEST.EVAL_PERIOD", "0",
    "SEED", "7",
]


def run_train_net(args, output_dir, root, check=True, timeout=900):
    """Run tools/train_net.py in a subprocess on the tiny pair under ``root``.

    ``args``: flags first, then ``KEY VALUE`` overrides, which win over the tiny defaults.
    """
    args = list(args)
    first_opt = next((i for i, a in enumerate(args) if a[:1].isupper()), len(args))
    cmd = [sys.executable, os.path.join(REPO, "tools", "train_net.py")] + args[:first_opt]
    cmd += TINY_OVERRIDES + ["DATASETS.SYNTHETIC_ROOT", str(root), "OUTPUT_DIR", str(output_dir)]
    cmd += args[first_opt:]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"train_net failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}")
    return proc


def read_metrics(output_dir):
    with open(os.path.join(output_dir, "metrics.json")) as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="session")
def tiny_pair(tmp_path_factory):
    """A small clear -> foggy pair written once per test session."""
    from mic_det.data.synthetic import write_domain_pair

    root = tmp_path_factory.mktemp("tiny_pair")
    write_domain_pair(
        str(root), seed=3, num_source_train=24, num_source_val=8, num_target_train=16, num_target_val=8,
        height=128, width=160,
    )
    return root


@pytest.fixture(scope="session")
def source_only_run(tiny_pair, tmp_path_factory):
    """A source-only run long enough to learn its training images (~1 min); later tests start from it."""
    out = tmp_path_factory.mktemp("source_only")
    run_train_net(
        ["--config-file", "configs/synthetic/source_only.yaml", "SOLVER.MAX_ITER", "200", "SOLVER.STEPS", "(180,)",
         "SOLVER.BASE_LR", "0.01", "SOLVER.WARMUP_ITERS", "50",
         "DATASETS.TEST", "('synthetic_clear_train', 'synthetic_foggy_val')"],
        out, tiny_pair,
    )
    return out


def tiny_cfg(root, *opts):
    """The tiny MIC config (configs/synthetic/mic.yaml + TINY_OVERRIDES) on the pair under ``root``."""
    from mic_det.config_loading import build_config

    return build_config(
        os.path.join(REPO, "configs", "synthetic", "mic.yaml"),
        TINY_OVERRIDES + ["DATASETS.SYNTHETIC_ROOT", str(root)] + list(opts),
    )


@pytest.fixture(scope="session")
def mic_checkpoint(tiny_pair, tmp_path_factory):
    """A checkpoint as MICTrainer writes it (student, EMA teacher, iteration 41) and its config.yaml,
    without training: the student is freshly initialised, and the teacher is the
    student with its "car" logit raised, so the two predict recognisably differently
    (the teacher: cars scored ~0.9; the student: every class near 1/7).

    Returns ``(config path, checkpoint path)``.
    """
    import torch
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.modeling import build_model

    from mic_det.data.synthetic import SYNTHETIC_CLASSES
    from mic_det.teacher import EMATeacher

    out = tmp_path_factory.mktemp("mic_checkpoint")
    cfg = tiny_cfg(tiny_pair, "OUTPUT_DIR", str(out))
    torch.manual_seed(0)
    model = build_model(cfg)
    teacher = EMATeacher(model)
    car = list(SYNTHETIC_CLASSES).index("car")
    with torch.no_grad():
        teacher.model.roi_heads.box_predictor.cls_score.bias[car] += 4.0
    DetectionCheckpointer(model, str(out), teacher=teacher).save("model_final", iteration=41)
    config = out / "config.yaml"
    config.write_text(cfg.dump())
    return str(config), str(out / "model_final.pth")


# Fixtures that write a dataset or train a model: a test that uses one is in the slow tier.
SLOW_FIXTURES = {"tiny_pair", "source_only_run", "mic_checkpoint"}


def pytest_collection_modifyitems(config, items):
    """Mark every test that uses a slow fixture ``slow`` (the fast tier is ``pytest -m "not slow"``)."""
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
