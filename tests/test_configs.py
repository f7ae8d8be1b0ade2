"""Every shipped YAML merges into a config, and the reference schedule is what it claims."""
import glob
import os

import pytest
from detectron2.config import get_cfg

from mic_det import add_mic_config

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
    assert cfg.MODEL.META_ARCHITECTURE == "DomainAdaptiveRCNN"
    assert cfg.MODEL.ROI_HEADS.NAME == "MICROIHeads" and cfg.MODEL.PROPOSAL_GENERATOR.NAME == "MICRPN"


def test_configs_found():
    names = {os.path.relpath(p, REPO) for p in CONFIGS}
    for method in ("source_only", "sada", "mic", "mic_sada", "oracle"):
        assert f"configs/cityscapes_foggy/{method}_R50_FPN.yaml" in names
    for method in ("source_only", "mic", "mic_sada", "oracle"):
        assert f"configs/synthetic/{method}.yaml" in names


def test_cityscapes_foggy_reference_schedule():
    cfg = _load(os.path.join(REPO, "configs/cityscapes_foggy/mic_sada_R50_FPN.yaml"))
    assert cfg.MODEL.RESNETS.DEPTH == 50 and cfg.MODEL.ROI_HEADS.NUM_CLASSES == 8
    assert cfg.SOLVER.IMS_PER_BATCH == 1 and cfg.DATALOADER.TARGET_IMS_PER_BATCH == 1
    assert cfg.SOLVER.BASE_LR == 0.0025 and cfg.SOLVER.MAX_ITER == 60000
    assert tuple(cfg.SOLVER.STEPS) == (30000, 40000)
    assert cfg.INPUT.MIN_SIZE_TRAIN == (800,) and cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE == 256
    m = cfg.MIC
    assert (m.ENABLED, m.MASK_BLOCK_SIZE, m.MASK_RATIO, m.EMA_ALPHA, m.PSEUDO_SCORE_THRESH, m.LOSS_WEIGHT) == (
        True, 32, 0.5, 0.9, 0.8, 1.0
    )
    assert m.PSEUDO_BOX_REG_WEIGHT == 0.0 and m.BURN_IN_ITERS == 0
    u = cfg.UDA
    assert u.ENABLED and (u.IMG_DA.LOSS_WEIGHT, u.INS_DA.LOSS_WEIGHT, u.CONSISTENCY.LOSS_WEIGHT) == (0.025, 0.1, 0.1)
    assert cfg.DATASETS.TRAIN == ("cityscapes_train",) and cfg.DATASETS.TEST == ("cityscapes_foggy_val_0.02",)
