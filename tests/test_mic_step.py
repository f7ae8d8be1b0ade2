"""One MIC step in process: empty pseudo-labels, masked source, the teacher's coordinate frame,
pseudo-boxes on some images only, and what the masked student really receives."""
import math

import numpy as np

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.structures import Boxes, Instances
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
    """Pseudo-boxes are the teacher's boxes on the same resized view, unscaled: scaled to the original
    image (the view is half its size) they are Detectron2's post-processed detections."""
    trainer = _trainer(tiny_pair, tmp_path, "MIC.PSEUDO_SCORE_THRESH", "0.0", "INPUT.MIN_SIZE_TRAIN", "(64,)",
                       "INPUT.MAX_SIZE_TRAIN", "128")
    step = trainer._trainer
    target = next(iter(step.target_loader))
    with EventStorage(0):
        pseudo = step.pseudo_label(target)
    with torch.no_grad():
        original_frame = step.teacher.model(target)  # eval mode: detections rescaled to (height, width)
    compared = 0
    for x, p, post in zip(target, pseudo, original_frame):
        h, w = x["image"].shape[-2:]
        sy, sx = x["height"] / h, x["width"] / w
        assert (sy, sx) == (2.0, 2.0)  # the view is resized
        assert p.image_size == (h, w)
        boxes, post_boxes = p.gt_boxes.tensor, post["instances"].pred_boxes.tensor
        scale = boxes.new_tensor([sx, sy, sx, sy])
        for box in boxes:
            # Scaled by 2 it is one of the post-processed detections; a box already in the original
            # frame would be scaled to twice its size and match none of them.
            assert (post_boxes - box * scale).abs().max(dim=1).values.min() < 1e-3, box
            compared += 1
    assert compared > 0  # some teacher boxes were checked


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
    step.task.score_thresh, step.task.ignore_thresh = float(scores[len(scores) // 2]), 0.0
    logged = _one_step(trainer)
    assert logged["mic/uncertain_per_image"] > 0 and logged["mic/boxes_per_image"] > 0
    for name in ("loss_cls_mic", "loss_rpn_cls_mic"):
        assert math.isfinite(logged[name]) and logged[name] > 0


# ------------------------------------------------- what reaches the masked student
def _stub_teacher(step, boxes_for):
    """Replace the teacher's pseudo-labels: one confident box on the images in ``boxes_for``.

    The box goes through the detection task's own thresholding and quality, so the stub gives the real format.
    """

    def pseudo_label(target):
        predictions = []
        for i, x in enumerate(target):
            h, w = x["image"].shape[-2:]
            n = 1 if i in boxes_for else 0
            predictions.append(
                Instances(
                    (h, w),
                    pred_boxes=Boxes(torch.tensor([[10.0, 12.0, 70.0, 90.0]])[:n]),
                    scores=torch.tensor([0.95])[:n],
                    pred_classes=torch.tensor([1])[:n],
                )
            )
        out = step.task.to_pseudo_labels(predictions)
        calls.append(out)
        return out

    calls = []
    step.pseudo_label = pseudo_label
    return calls


def _spy_student(step):
    """Record every student forward's inputs and every ImageList its preprocess_image makes."""
    model = step.model
    forwards, preprocessed = [], []
    forward, preprocess = model.forward, model.preprocess_image

    def spy_forward(batched_inputs, *args, **kwargs):
        forwards.append(batched_inputs)
        return forward(batched_inputs, *args, **kwargs)

    def spy_preprocess(batched_inputs, *args, **kwargs):
        images = preprocess(batched_inputs, *args, **kwargs)
        preprocessed.append((batched_inputs, images))
        return images

    model.forward, model.preprocess_image = spy_forward, spy_preprocess
    return forwards, preprocessed


def _is_masked(inputs):
    return all(x["instances"].has("gt_scores") for x in inputs if "instances" in x)


def test_only_images_with_pseudo_boxes_reach_the_masked_student(tiny_pair, tmp_path):
    """Teacher boxes on image 0 only: the masked forward sees image 0 and its boxes, nothing of image 1."""
    trainer = _trainer(tiny_pair, tmp_path, "MIC.MASK_AUG.ENABLED", "False")
    step = trainer._trainer
    target = next(iter(step.target_loader))
    assert len(target) == 2
    pseudo_calls = _stub_teacher(step, boxes_for={0})
    forwards, _ = _spy_student(step)
    with EventStorage(0) as storage:
        losses = step._mic_losses(target)
        logged = {k: v.latest() for k, v in storage.histories().items()}

    assert len(forwards) == 1
    (masked,) = forwards
    assert len(masked) == 1
    pseudo = pseudo_calls[0]
    assert len(pseudo[0]) == 1 and len(pseudo[1]) == 0
    assert masked[0]["instances"] is pseudo[0]
    torch.testing.assert_close(masked[0]["instances"].gt_image_quality, torch.tensor([0.95]))
    # It is image 0 (masked): about half its pixels are image 0's (ratio 0.5 of the 4 x 5 blocks of
    # 32 px, so 10-90% kept), none need be image 1's.
    image = masked[0]["image"]
    assert image.shape == target[0]["image"].shape
    same_as = [(image - x["image"].float()).abs().amax(dim=0).lt(1e-3).float().mean().item() for x in target]
    assert 0.1 < same_as[0] < 0.9 and same_as[1] < same_as[0] - 0.1
    assert logged["mic/frac_images_empty"] == 0.5
    for name in ("loss_cls_mic", "loss_rpn_cls_mic"):
        assert math.isfinite(losses[name].item()) and losses[name].item() > 0, name
        assert losses[name].requires_grad
    for name in ("loss_box_reg_mic", "loss_rpn_loc_mic"):
        assert losses[name].item() == 0.0  # MIC.PSEUDO_BOX_REG_WEIGHT 0


def test_hidden_blocks_reach_the_student_as_the_mean_colour(tiny_pair, tmp_path):
    """End to end through a MIC step (no mask augmentation): hidden = PIXEL_MEAN, visible = input, padding kept.

    Images of 120 x 150 in batches padded to 128 x 160 (FPN's size
    divisibility 32), so the masked batch has padding to compare.
    """
    trainer = _trainer(tiny_pair, tmp_path, "MIC.MASK_AUG.ENABLED", "False", "INPUT.MIN_SIZE_TRAIN", "(120,)")
    step = trainer._trainer
    _stub_teacher(step, boxes_for={0, 1})
    masks = []
    generator = step.mask_generator

    def recording_mask(*args, **kwargs):
        masks.append(generator(*args, **kwargs))
        return masks[-1]

    step.mask_generator = recording_mask
    forwards, preprocessed = _spy_student(step)
    logged = _one_step(trainer)
    assert math.isfinite(logged["loss_cls_mic"]) and logged["loss_cls_mic"] > 0

    (mask,) = masks
    masked_inputs = [f for f in forwards if _is_masked(f)]
    assert len(masked_inputs) == 1 and len(masked_inputs[0]) == 2
    masked_inputs = masked_inputs[0]
    # preprocess_image calls: ..., the target view MIC masks, then the student's masked forward.
    at = next(k for k, (inputs, _) in enumerate(preprocessed) if inputs is masked_inputs)
    (target_in, unmasked), (_, masked) = preprocessed[at - 1], preprocessed[at]
    assert unmasked.tensor.shape == masked.tensor.shape
    mean = step.pixel_mean.view(3, 1, 1)
    padded_h, padded_w = masked.tensor.shape[-2:]
    for i, (h, w) in enumerate(masked.image_sizes):
        assert (h, w) == tuple(unmasked.image_sizes[i]) and (h, w) != (padded_h, padded_w)
        hidden = mask[i, 0, :h, :w] == 0
        # Both kinds of pixel are there to compare. The hidden share of these 4 x 5 blocks of 32 px
        # varies by +-0.11 around the ratio; its statistics are pinned in tests/test_masking.py.
        assert 0 < hidden.float().mean().item() < 1
        # What the student is given, in pixel space.
        pixels = masked_inputs[i]["image"]
        original = target_in[i]["image"].float()
        assert pixels.shape == original.shape == (3, h, w)
        torch.testing.assert_close(pixels[:, hidden], mean.expand(3, h, w)[:, hidden], atol=1e-4, rtol=0)
        torch.testing.assert_close(pixels[:, ~hidden], original[:, ~hidden], atol=1e-3, rtol=0)
        # What its backbone gets: normalized 0 where hidden, the unmasked batch elsewhere.
        assert bool((masked.tensor[i, :, :h, :w][:, hidden] == 0).all())
        torch.testing.assert_close(
            masked.tensor[i, :, :h, :w][:, ~hidden], unmasked.tensor[i, :, :h, :w][:, ~hidden], atol=1e-4, rtol=0
        )
        # Padding as in the unmasked batch, whatever the mask drew there.
        assert torch.equal(masked.tensor[i, :, h:, :], unmasked.tensor[i, :, h:, :])
        assert torch.equal(masked.tensor[i, :, :h, w:], unmasked.tensor[i, :, :h, w:])


def test_tensorboard_gets_the_pseudo_label_panels_and_teacher_scores(tiny_pair, tmp_path):
    """VIS_PERIOD steps: teacher boxes | masked view | student on it, side by side; score plot with delta."""
    from mic_det.detection.visualize import PANELS_NAME, SCORES_NAME

    trainer = _trainer(tiny_pair, tmp_path, "VIS_PERIOD", "1", "MIC.MASK_AUG.ENABLED", "False")
    step = trainer._trainer
    target = next(iter(step.target_loader))
    with EventStorage(0) as storage:
        step.storage = storage
        step.iter = 0
        step.task.pseudo_label(step.teacher.model, target)  # the real teacher's scores
        _stub_teacher(step, boxes_for={0})  # a pseudo-box for sure, to draw
        step.run_step()
        images = {name: img for name, img, _ in storage._vis_data}
    panels = images[PANELS_NAME]
    h, w = target[0]["image"].shape[-2:]
    assert panels.shape == (3, h, 3 * w) and panels.dtype == np.uint8
    assert panels[:, :, :w].std() > 0 and panels[:, :, w : 2 * w].std() > 0
    scores = images[SCORES_NAME]
    assert scores.shape[0] == 3 and scores.shape[1] > 100
    assert step.model.training  # the student is back in training mode after drawing


def test_frozen_norm_statistics_keeps_running_stats_but_not_the_batch_normalisation():
    """The masked view may be kept out of BatchNorm's running statistics; its forward and gradient stay the same."""
    from mic_det.engine.mic_step import frozen_norm_statistics

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU())
    x = torch.randn(2, 3, 8, 8) * 3 + 1
    reference = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU())
    reference.load_state_dict(net.state_dict())
    before = net[1].running_mean.clone(), net[1].running_var.clone()
    with frozen_norm_statistics(net):
        out = net(x)
    out.sum().backward()
    ref_out = reference(x)
    ref_out.sum().backward()
    assert torch.equal(net[1].running_mean, before[0]) and torch.equal(net[1].running_var, before[1])
    assert not torch.equal(reference[1].running_mean, before[0])  # a normal training forward moves them
    assert torch.allclose(out, ref_out) and torch.allclose(net[0].weight.grad, reference[0].weight.grad)
    assert net[1].momentum == 0.1  # restored
    assert int(net[1].num_batches_tracked) == 0 and int(reference[1].num_batches_tracked) == 1
    net(x)
    assert not torch.equal(net[1].running_mean, before[0])


def test_frozen_norm_statistics_leaves_a_cumulative_average_batchnorm_as_it_found_it():
    """momentum=None BatchNorm averages with 1/num_batches_tracked: the masked forward must not count as a batch."""
    from mic_det.engine.mic_step import frozen_norm_statistics

    torch.manual_seed(0)
    net, reference = torch.nn.BatchNorm1d(3, momentum=None), torch.nn.BatchNorm1d(3, momentum=None)
    first, masked, second = torch.randn(8, 3), torch.randn(8, 3) * 5 + 2, torch.randn(8, 3) - 1
    net(first)
    reference(first)
    with frozen_norm_statistics(net):
        net(masked)
    net(second)
    reference(second)
    assert net.momentum is None
    # the cumulative mean of the two counted batches, as if the masked one never happened
    assert torch.allclose(net.running_mean, (first.mean(0) + second.mean(0)) / 2, atol=1e-6)
    assert torch.equal(net.running_mean, reference.running_mean) and torch.equal(net.running_var, reference.running_var)


# ------------------------------------------------------- non-finite masked views and losses
def test_non_finite_masked_loss_is_an_error_naming_the_loss_the_iteration_and_the_images(tiny_pair, tmp_path):
    trainer = _trainer(tiny_pair, tmp_path, "MIC.MASK_AUG.ENABLED", "False")
    step = trainer._trainer
    target = next(iter(step.target_loader))
    _stub_teacher(step, boxes_for={0, 1})
    forward = step.model.forward

    def nan_on_the_masked_view(batched_inputs, *args, **kwargs):
        losses = forward(batched_inputs, *args, **kwargs)
        if _is_masked(batched_inputs):
            losses["loss_cls"] = losses["loss_cls"] * float("nan")
        return losses

    step.model.forward = nan_on_the_masked_view
    step.iter = 7
    with EventStorage(7), pytest.raises(FloatingPointError) as err:
        step._mic_losses(target)
    message = str(err.value)
    assert "loss_cls_mic" in message and "loss_rpn_cls_mic" not in message
    assert "iteration 7" in message
    for x in target:
        assert x["file_name"] in message and f"image_id={x['image_id']!r}" in message
    assert "masked input was finite" in message


def test_non_finite_mask_augmentation_is_an_error_before_the_student_forward(tiny_pair, tmp_path):
    trainer = _trainer(tiny_pair, tmp_path)
    step = trainer._trainer
    assert step.mask_augmentation is not None
    target = next(iter(step.target_loader))
    _stub_teacher(step, boxes_for={0, 1})
    augmentation = step.mask_augmentation

    def nan_in_image_1(images, image_sizes, generator=None):
        out = augmentation(images, image_sizes, generator)
        out[1] = float("nan")  # hidden blocks become the mean, the visible ones stay NaN
        return out

    step.mask_augmentation = nan_in_image_1
    forwards, _ = _spy_student(step)
    step.iter = 3
    with EventStorage(3), pytest.raises(FloatingPointError, match="mask augmentation") as err:
        step._mic_losses(target)
    message = str(err.value)
    assert "iteration 3" in message and "_mic" in message
    bad_images = message.split("(of")[0]
    assert target[1]["file_name"] in bad_images and target[0]["file_name"] not in bad_images
    assert not any(_is_masked(f) for f in forwards)  # raised before the masked forward
