"""One MIC step in process: empty pseudo-labels, masked source, the teacher's coordinate frame."""
import math

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.utils.events import EventStorage

from mic_det import add_mic_config
from mic_det.data.synthetic import register_synthetic_pair
from mic_det.engine import MICTrainer

from .conftest import REPO, TINY_OVERRIDES


def _trainer(tiny_pair, tmp_path, *opts):
    register_synthetic_pair(str(tiny_pair))
    cfg = get_cfg()
    add_mic_config(cfg)
    cfg.merge_from_file(f"{REPO}/configs/synthetic/mic.yaml")
    cfg.merge_from_list(
        TINY_OVERRIDES
        + ["OUTPUT_DIR", str(tmp_path), "MIC.BURN_IN_ITERS", "0", "DATASETS.TEST", "()"]
        + list(opts)
    )
    trainer = MICTrainer(cfg)
    trainer.resume_or_load(resume=False)
    return trainer


def _one_step(trainer):
    step = trainer._trainer
    with EventStorage(0) as storage:
        step.storage = storage
        step.iter = 0
        step.run_step()
        return {k: v.latest() for k, v in storage.histories().items()}


def test_step_without_pseudo_boxes_has_exactly_zero_mic_loss(tiny_pair, tmp_path):
    trainer = _trainer(tiny_pair, tmp_path, "MIC.PSEUDO_SCORE_THRESH", "1.01")
    before = {k: v.clone() for k, v in trainer.teacher.state_dict().items()}
    logged = _one_step(trainer)
    for name in ("loss_cls_mic", "loss_box_reg_mic", "loss_rpn_cls_mic", "loss_rpn_loc_mic"):
        assert logged[name] == 0.0
    assert math.isfinite(logged["total_loss"]) and logged["total_loss"] > 0
    assert logged["mic/frac_images_empty"] == 1.0 and logged["mic/boxes_per_image"] == 0.0
    assert logged["mic/mean_score"] == 0.0
    # The source step still trained the student, and the teacher followed it by EMA.
    after = trainer.teacher.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_masked_source_adds_its_own_losses(tiny_pair, tmp_path):
    trainer = _trainer(tiny_pair, tmp_path, "MIC.PSEUDO_SCORE_THRESH", "1.01", "MIC.MASK_SOURCE", "True")
    logged = _one_step(trainer)
    for name in ("loss_cls_masked_src", "loss_box_reg_masked_src", "loss_rpn_cls_masked_src"):
        assert name in logged and math.isfinite(logged[name]) and logged[name] > 0
    assert 0.2 < logged["mic/mask_ratio_masked_src"] < 0.8


def test_teacher_boxes_are_in_the_student_input_frame(tiny_pair, tmp_path):
    """Pseudo-boxes come from the teacher on the same resized view, unscaled."""
    trainer = _trainer(tiny_pair, tmp_path, "MIC.PSEUDO_SCORE_THRESH", "0.0", "INPUT.MIN_SIZE_TRAIN", "(192,)")
    step = trainer._trainer
    target = next(iter(step.target_loader))
    with EventStorage(0):
        pseudo = step.pseudo_label(target)
    for x, p in zip(target, pseudo):
        h, w = x["image"].shape[-2:]
        assert (h, w) != (x["height"], x["width"])  # the view is resized
        assert p.image_size == (h, w)
        if len(p):
            boxes = p.gt_boxes.tensor
            assert boxes[:, 2].max() <= w and boxes[:, 3].max() <= h


def test_source_only_step_is_detectron2s(tiny_pair, tmp_path):
    trainer = _trainer(tiny_pair, tmp_path, "MIC.ENABLED", "False", "DATASETS.TRAIN_TARGET", "()")
    assert trainer.teacher is None and trainer._trainer.target_loader is None
    logged = _one_step(trainer)
    assert not any(k.endswith("_mic") or k.startswith("loss_da") for k in logged)
    assert {"loss_cls", "loss_box_reg", "loss_rpn_cls", "loss_rpn_loc"} <= set(logged)


def test_mic_without_target_set_is_a_clear_error(tiny_pair, tmp_path):
    with pytest.raises(ValueError, match="DATASETS.TRAIN_TARGET"):
        _trainer(tiny_pair, tmp_path, "DATASETS.TRAIN_TARGET", "()")


def test_sada_batches_both_domains_through_the_backbone_without_changing_the_losses(tiny_pair, tmp_path):
    trainer = _trainer(tiny_pair, tmp_path, "UDA.ENABLED", "True", "MIC.ENABLED", "False")
    model = trainer.model
    source = next(iter(trainer._trainer.data_loader))
    target = next(iter(trainer._trainer.target_loader))
    calls = []
    backbone_forward = model.backbone.forward

    def counting(x):
        calls.append(x.shape[0])
        return backbone_forward(x)

    def losses(separate: bool):
        torch.manual_seed(0)
        if separate:
            model._backbone_both = lambda s, t: (model.backbone(s.tensor), model.backbone(t.tensor))
        with EventStorage(0):
            return {k: v.item() for k, v in model(source, target_inputs=target).items()}

    model.backbone.forward = counting
    batched = losses(separate=False)
    assert calls == [len(source) + len(target)]  # one pass for both domains
    separate = losses(separate=True)
    assert set(batched) >= {"loss_cls", "loss_da_img", "loss_da_ins", "loss_da_cst"}
    for k in batched:
        assert batched[k] == pytest.approx(separate[k], rel=1e-4, abs=1e-6), k


def test_uncertain_teacher_boxes_are_logged_and_left_out_of_the_loss(tiny_pair, tmp_path):
    """With an ignore threshold, the step runs on confident boxes and reports the uncertain ones."""
    trainer = _trainer(tiny_pair, tmp_path, "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0", "MIC.PSEUDO_SCORE_THRESH", "0.0")
    step = trainer._trainer
    target = next(iter(step.target_loader))
    with EventStorage(0):
        scores = torch.cat([p.gt_scores for p in step.pseudo_label(target)]).sort().values
    assert len(scores) > 4
    # Half of the teacher's boxes confident, the rest uncertain.
    step.score_thresh, step.ignore_thresh = float(scores[len(scores) // 2]), 0.0
    logged = _one_step(trainer)
    assert logged["mic/uncertain_per_image"] > 0 and logged["mic/boxes_per_image"] > 0
    for name in ("loss_cls_mic", "loss_rpn_cls_mic"):
        assert math.isfinite(logged[name]) and logged[name] > 0
