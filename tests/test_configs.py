"""Every shipped YAML merges into a config, and the reference schedule is what it claims."""
import glob
import importlib.util
import os
import shlex

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.data import build as d2_data_build
from detectron2.engine import DefaultTrainer
from detectron2.solver import build_optimizer
from torch.utils.data import SequentialSampler

from mic_det import add_mic_config
from mic_det.data.build import target_batch_size

from .conftest import REPO

CONFIGS = sorted(
    p for p in glob.glob(os.path.join(REPO, "configs", "**", "*.yaml"), recursive=True)
    if not p.endswith("_domains.yaml")  # a domains file for --domains, not a config
)


def _load(path):
    cfg = get_cfg()
    add_mic_config(cfg)
    cfg.merge_from_file(path)
    return cfg


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: os.path.relpath(p, REPO))
def test_config_merges(path):
    cfg = _load(path)
    if os.path.basename(path).startswith("Base-"):
        return
    assert cfg.DATASETS.TRAIN, "a runnable config names its source set"
    if cfg.MIC.ENABLED or cfg.UDA.ENABLED:
        assert cfg.DATASETS.TRAIN_TARGET, "MIC/UDA configs name their target set"
    if cfg.MODEL.TASK == "ClassificationTask":
        assert cfg.MODEL.META_ARCHITECTURE == "MICClassifier"
        assert cfg.TEST.BEST_CHECKPOINT.METRIC.startswith("cls/")
        return
    if cfg.MODEL.TASK == "SegmentationTask":
        assert cfg.MODEL.META_ARCHITECTURE == "MICSemanticSegmentor"
        assert cfg.MODEL.SEM_SEG_HEAD.NAME == "MICDeepLabV3PlusHead"
        assert cfg.MODEL.SEM_SEG_HEAD.LOSS_TYPE == "cross_entropy"
        assert cfg.TEST.BEST_CHECKPOINT.METRIC == "sem_seg/mIoU"
        return
    assert cfg.MODEL.META_ARCHITECTURE == "DomainAdaptiveRCNN"
    assert cfg.MODEL.ROI_HEADS.NAME == "MICROIHeads" and cfg.MODEL.PROPOSAL_GENERATOR.NAME == "MICRPN"


def test_configs_found():
    names = {os.path.relpath(p, REPO) for p in CONFIGS}
    for method in ("source_only", "sada", "mic", "mic_sada", "oracle"):
        assert f"configs/cityscapes_foggy/{method}_R50_FPN.yaml" in names
    for method in ("source_only", "mic", "mic_sada", "oracle"):
        assert f"configs/synthetic/{method}.yaml" in names
    for method in ("source_only", "cdan_mcc", "mic", "mic_sdat", "oracle"):
        assert f"configs/synthetic_cls/{method}.yaml" in names
        assert f"configs/synthetic_cls_night/{method}.yaml" in names
    for pair in ("synthetic_seg", "synthetic_seg_night", "gta_to_cityscapes", "synthia_to_cityscapes",
                 "cityscapes_to_acdc", "cityscapes_to_dark_zurich"):
        for method in ("source_only", "self_training", "mic", "oracle"):
            assert f"configs/{pair}/{method}.yaml" in names


def test_cityscapes_foggy_reference_schedule():
    cfg = _load(os.path.join(REPO, "configs/cityscapes_foggy/mic_sada_R50_FPN.yaml"))
    assert cfg.MODEL.RESNETS.DEPTH == 50 and cfg.MODEL.ROI_HEADS.NUM_CLASSES == 8
    # 1 source + 1 target image per step, on one GPU (the schedule is stated for one).
    assert cfg.SOLVER.IMS_PER_BATCH == 1 and target_batch_size(cfg) == 1 and cfg.SOLVER.REFERENCE_WORLD_SIZE == 1
    assert cfg.SOLVER.BASE_LR == 0.0025 and cfg.SOLVER.MAX_ITER == 60000
    assert tuple(cfg.SOLVER.STEPS) == (30000, 40000)
    # The reference solver (maskrcnn-benchmark's defaults): biases lr x2 and no
    # weight decay, linear warmup from 1/3 over 500 iterations.
    s = cfg.SOLVER
    assert (s.MOMENTUM, s.WEIGHT_DECAY, s.BIAS_LR_FACTOR, s.WEIGHT_DECAY_BIAS) == (0.9, 0.0001, 2.0, 0.0)
    assert (s.WARMUP_METHOD, s.WARMUP_ITERS) == ("linear", 500) and s.WARMUP_FACTOR == pytest.approx(1 / 3)
    assert cfg.INPUT.MIN_SIZE_TRAIN == (800,) and cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE == 256
    m = cfg.MIC
    assert (m.ENABLED, m.MASK_BLOCK_SIZE, m.MASK_RATIO, m.EMA_ALPHA, m.PSEUDO_SCORE_THRESH, m.LOSS_WEIGHT) == (
        True, 32, 0.5, 0.9, 0.8, 1.0
    )
    assert m.PSEUDO_BOX_REG_WEIGHT == 0.0 and m.BURN_IN_ITERS == 0
    u = cfg.UDA
    assert u.ENABLED and u.IMG_DA.IN_FEATURES == [] and not u.INS_DA.FINEST_LEVEL_ONLY
    # Discriminators learn from their full losses; 0.025 / 0.1 scale only the reversed gradient.
    assert (u.IMG_DA.LOSS_WEIGHT, u.INS_DA.LOSS_WEIGHT, u.CONSISTENCY.LOSS_WEIGHT) == (1.0, 1.0, 1.0)
    assert (u.IMG_DA.GRL_WEIGHT, u.INS_DA.GRL_WEIGHT, u.CONSISTENCY.GRL_WEIGHT) == (0.025, 0.1, 0.1)
    assert (u.IMG_DA.HIDDEN_DIM, u.INS_DA.HIDDEN_DIM) == (512, 1024)
    assert cfg.DATASETS.TRAIN == ("cityscapes_train",) and cfg.DATASETS.TEST == ("cityscapes_foggy_val_0.02",)


def test_cityscapes_optimizer_doubles_the_bias_lr_without_weight_decay():
    cfg = _load(os.path.join(REPO, "configs/cityscapes_foggy/mic_sada_R50_FPN.yaml"))
    groups = build_optimizer(cfg, torch.nn.Linear(2, 2)).param_groups
    by_size = {tuple(g["params"][0].shape): g for g in groups}
    assert (by_size[(2, 2)]["lr"], by_size[(2, 2)]["weight_decay"]) == (0.0025, 0.0001)
    assert (by_size[(2,)]["lr"], by_size[(2,)]["weight_decay"]) == (0.005, 0.0)


def _readme_multi_gpu_command():
    with open(os.path.join(REPO, "README.md")) as f:
        lines = [line for line in f if line.startswith("python tools/train_net.py") and "--num-gpus" in line]
    assert len(lines) == 1, lines
    return shlex.split(lines[0])[2:]


def test_readme_multi_gpu_command_passes_detectron2_batch_checks(monkeypatch):
    """The README's --num-gpus command, configured as train_net does, splits both batches over the workers.

    Detectron2's loader asserts that the total batch divides by the world size;
    the check is run here with the world size patched, without 8 processes.
    """
    spec = importlib.util.spec_from_file_location("train_net_tool", os.path.join(REPO, "tools", "train_net.py"))
    train_net = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train_net)
    args = train_net.build_parser().parse_args(_readme_multi_gpu_command())
    workers = args.num_gpus * args.num_machines
    assert workers == 8
    cfg = _load(os.path.join(REPO, args.config_file))
    cfg.merge_from_list(args.opts)
    cfg = DefaultTrainer.auto_scale_workers(cfg, workers)  # as MICTrainer.__init__ does
    # The reference's per-GPU step (1 source + 1 target image) with the linear scaling rule.
    assert cfg.SOLVER.IMS_PER_BATCH == 8 and target_batch_size(cfg) == 8
    assert cfg.SOLVER.BASE_LR == pytest.approx(0.0025 * 8) and cfg.SOLVER.MAX_ITER == 60000 // 8
    assert tuple(cfg.SOLVER.STEPS) == (30000 // 8, 40000 // 8)

    monkeypatch.setattr(d2_data_build, "get_world_size", lambda: workers)
    for total in (cfg.SOLVER.IMS_PER_BATCH, target_batch_size(cfg)):
        loader = d2_data_build.build_batch_data_loader(list(range(16)), SequentialSampler(range(16)), total)
        assert loader.batch_size == 1
    with pytest.raises(AssertionError, match="divisible"):  # the check itself is live: 1 image over 8 fails
        d2_data_build.build_batch_data_loader(list(range(16)), SequentialSampler(range(16)), 1)


def test_auto_scaling_moves_where_adaptation_starts_and_the_target_batch():
    from mic_det.engine import MICTrainer

    cfg = get_cfg()
    add_mic_config(cfg)
    cfg.merge_from_list(["SOLVER.REFERENCE_WORLD_SIZE", "1", "SOLVER.IMS_PER_BATCH", "1", "SOLVER.MAX_ITER", "8000",
                         "MIC.BURN_IN_ITERS", "4000", "UDA.START_ITER", "2000", "DATALOADER.TARGET_IMS_PER_BATCH", "2",
                         "SOLVER.RESTART_ITERS", "(4000,)"])
    scaled = MICTrainer.auto_scale_workers(cfg, 4)
    assert (scaled.SOLVER.MAX_ITER, scaled.MIC.BURN_IN_ITERS, scaled.UDA.START_ITER) == (2000, 1000, 500)
    assert tuple(scaled.SOLVER.RESTART_ITERS) == (1000,)  # still where adaptation starts
    assert (scaled.SOLVER.IMS_PER_BATCH, scaled.DATALOADER.TARGET_IMS_PER_BATCH) == (4, 8)
    assert MICTrainer.auto_scale_workers(cfg, 1) is cfg  # the reference world size: untouched


@pytest.mark.parametrize("folder", ["synthetic", "synthetic_night"])
def test_built_in_burn_in_configs_finish_the_source_schedule_then_restart_it_where_adaptation_starts(folder):
    mic = _load(os.path.join(REPO, "configs", folder, "mic.yaml"))
    burn_in = mic.MIC.BURN_IN_ITERS
    assert tuple(mic.SOLVER.RESTART_ITERS) == (burn_in,)
    assert any(s < burn_in for s in mic.SOLVER.STEPS) and any(burn_in < s < mic.SOLVER.MAX_ITER for s in mic.SOLVER.STEPS)
    # Every method of the folder (the matched control, the oracle, SADA) runs MIC's schedule.
    schedule = (mic.SOLVER.MAX_ITER, tuple(mic.SOLVER.STEPS), tuple(mic.SOLVER.RESTART_ITERS))
    for path in glob.glob(os.path.join(REPO, "configs", folder, "*.yaml")):
        if os.path.basename(path).startswith("Base-"):
            continue
        cfg = _load(path)
        assert (cfg.SOLVER.MAX_ITER, tuple(cfg.SOLVER.STEPS), tuple(cfg.SOLVER.RESTART_ITERS)) == schedule, path
        if cfg.UDA.ENABLED:
            assert cfg.UDA.START_ITER == burn_in, path


@pytest.mark.parametrize("shift", ["fog", "night"])
def test_the_detection_benchmark_budget_is_the_configs_schedule(shift):
    """``make bench-accuracy`` measures what ``train_net.py --config-file <shift>/mic.yaml`` runs."""
    from benchmarks.protocol import SHIFTS, adaptation_schedule, config_budget

    mic = _load(os.path.join(REPO, SHIFTS[shift][0], "mic.yaml"))
    source_iters, adapt_iters = config_budget(shift, REPO)
    assert (source_iters, source_iters + adapt_iters) == (mic.MIC.BURN_IN_ITERS, mic.SOLVER.MAX_ITER)
    opts = dict(zip(*[iter(adaptation_schedule(source_iters, adapt_iters))] * 2))
    assert opts["SOLVER.STEPS"] == str(tuple(mic.SOLVER.STEPS)).replace(" ", "")
    assert opts["SOLVER.RESTART_ITERS"] == f"({mic.SOLVER.RESTART_ITERS[0]},)"


def test_the_cpu_detection_configs_ignore_unsure_teacher_boxes_and_the_reference_configs_do_not():
    """The CPU default leaves teacher boxes in [0.2, delta) out of the background (BENCHMARKS.md, "Detection");
    the Cityscapes configs stay the paper's (no band)."""
    for rel in ("synthetic/mic.yaml", "synthetic_night/mic.yaml", "synthetic/mic_sada.yaml",
                "custom/wildfire_to_indoor_smoke.yaml"):
        m = _load(os.path.join(REPO, "configs", rel)).MIC
        assert (m.PSEUDO_IGNORE_THRESH, m.PSEUDO_SCORE_THRESH) == (0.2, 0.8), rel
    reference = _load(os.path.join(REPO, "configs", "cityscapes_foggy", "mic_R50_FPN.yaml")).MIC
    assert reference.PSEUDO_IGNORE_THRESH >= reference.PSEUDO_SCORE_THRESH  # off


@pytest.mark.parametrize("task", ["seg", "cls"])
def test_the_built_in_seg_and_cls_configs_start_pretrained_and_switch_to_resnet18_by_one_line(task, tmp_path):
    """Base-*-CPU.yaml's _BASE_ line picks the backbone: MobileNetV2 with ImageNet weights (default) or ResNet-18."""
    folder = os.path.join(REPO, "configs", f"synthetic_{task}")
    base = os.path.join(folder, "Base-SEG-CPU.yaml" if task == "seg" else "Base-CLS-CPU.yaml")
    cfg = _load(os.path.join(folder, "mic.yaml"))
    assert cfg.MODEL.BACKBONE.NAME == "build_mobilenet_v2_backbone" and cfg.MODEL.MOBILENET.PRETRAINED
    assert cfg.INPUT.FORMAT == "RGB" and list(cfg.MODEL.PIXEL_MEAN) == [123.675, 116.28, 103.53]
    assert list(cfg.MODEL.PIXEL_STD) == [58.395, 57.12, 57.375]
    assert cfg.MODEL.MOBILENET.NORM == ("FrozenBN" if task == "seg" else "BN")
    if task == "cls":
        assert cfg.INPUT.CLS.SIZE == 64 and cfg.MIC.MASK_BLOCK_SIZE == 16 and cfg.MIC.BURN_IN_ITERS == 0
        assert _load(os.path.join(REPO, "configs", "image_folder_cls", "mic_cpu.yaml")).MODEL.MOBILENET.PRETRAINED
    else:
        assert cfg.MODEL.MOBILENET.OUT_FEATURES == ["res2", "res5"] == list(cfg.MODEL.SEM_SEG_HEAD.IN_FEATURES)
    # The one-line switch: a copy of the folder whose Base-*-CPU.yaml names the -R18 file.
    copy = tmp_path / task
    copy.mkdir()
    for name in os.listdir(folder):
        text = open(os.path.join(folder, name)).read()
        if os.path.join(folder, name) == base:
            lines = [line for line in text.splitlines() if line.startswith("_BASE_:")]
            assert len(lines) == 1 and "-MNV2.yaml" in lines[0]
            text = text.replace(lines[0], lines[0].replace("-MNV2.yaml", "-R18.yaml"))
        (copy / name).write_text(text)
    r18 = _load(str(copy / "mic.yaml"))
    assert r18.MODEL.BACKBONE.NAME == "build_resnet_backbone" and r18.MODEL.RESNETS.DEPTH == 18
    assert r18.INPUT.FORMAT == "BGR" and r18.MIC.ENABLED and r18.MIC.BURN_IN_ITERS > 0
    if task == "cls":
        assert r18.INPUT.CLS.SIZE == 32 and r18.MIC.MASK_BLOCK_SIZE == 8 and r18.MODEL.RESNETS.NORM == "BN"
    else:
        assert r18.MODEL.RESNETS.NORM == "GN" and r18.SOLVER.MAX_ITER == 3000


@pytest.mark.parametrize("key, value, expected", [
    ("MIC.MASK_RATIO", "1.5", r"MIC.MASK_RATIO must be in \[0, 1\) .*got 1.5"),
    ("MIC.MASK_BLOCK_SIZE", "0", r"MIC.MASK_BLOCK_SIZE must be an integer >= 1.*got 0"),
    ("MIC.EMA_ALPHA", "1.2", r"MIC.EMA_ALPHA must be in \[0, 1\].*got 1.2"),
    ("MIC.MASK_AUG.BLUR_PROB", "-0.1", r"MIC.MASK_AUG.BLUR_PROB must be in \[0, 1\].*got -0.1"),
    ("MIC.MASK_AUG.COLOR_JITTER_STRENGTH", "0.7", r"MIC.MASK_AUG.COLOR_JITTER_STRENGTH must be in \[0, 0.5\]"),
    ("MIC.GUARD.WINDOW", "1", r"MIC.GUARD.WINDOW must be an integer >= 2"),
])
def test_an_out_of_range_mic_value_is_an_error_naming_its_key(key, value, expected):
    from mic_det.config_loading import build_config

    with pytest.raises(ValueError, match=expected):
        build_config(os.path.join(REPO, "configs", "synthetic", "mic.yaml"), [key, value])


@pytest.mark.parametrize("overrides, expected", [
    (["TEST.BEST_CHECKPOINT.DATASET", "synthetic_clear_train"],
     r"TEST.BEST_CHECKPOINT.DATASET 'synthetic_clear_train' is not one of DATASETS.TEST"),
    (["TEST.BEST_CHECKPOINT.MODE", "largest"], r"TEST.BEST_CHECKPOINT.MODE must be 'max' or 'min'"),
    (["TEST.BEST_CHECKPOINT.MODEL", "teacher", "TEST.EVAL_MODEL", "student"],
     r"TEST.BEST_CHECKPOINT.MODEL is 'teacher', but the teacher is never evaluated"),
    (["TEST.BEST_CHECKPOINT.MODEL", "student", "TEST.EVAL_MODEL", "teacher"],
     r"TEST.BEST_CHECKPOINT.MODEL is 'student', but TEST.EVAL_MODEL 'teacher'"),
])
def test_a_best_checkpoint_no_evaluation_can_select_is_an_error_naming_its_key(overrides, expected):
    from mic_det.engine.checkpoint_hooks import check_best_checkpoint
    from mic_det.config_loading import build_config

    cfg = build_config(os.path.join(REPO, "configs", "synthetic", "mic.yaml"), overrides)
    with pytest.raises(ValueError, match=expected):
        check_best_checkpoint(cfg)


def test_every_shipped_config_can_select_its_best_checkpoint():
    from mic_det.engine.checkpoint_hooks import check_best_checkpoint

    for path in CONFIGS:
        cfg = _load(path)
        if cfg.TEST.BEST_CHECKPOINT.ENABLED and cfg.TEST.EVAL_PERIOD > 0 and cfg.DATASETS.TEST:
            check_best_checkpoint(cfg)


def test_every_shipped_config_has_mic_values_in_range():
    from mic_det.config import check_mic_config

    for path in CONFIGS:
        check_mic_config(_load(path))


def test_the_mask_generator_names_the_config_keys_of_its_arguments():
    from mic_det.masking import BlockMaskGenerator

    with pytest.raises(ValueError, match=r"MIC.MASK_RATIO"):
        BlockMaskGenerator(32, 1.5)
    with pytest.raises(ValueError, match=r"MIC.MASK_BLOCK_SIZE"):
        BlockMaskGenerator(0, 0.5)
