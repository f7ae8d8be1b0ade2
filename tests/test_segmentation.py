"""Segmentation under MIC: the maths pinned by hand, the meta-architecture's outputs, one training run.

The run trains tools/train_net.py with configs/synthetic_seg/mic.yaml on a tiny
labelled pair written to a temp folder (64x80 images): source steps, then DACS
self-training (ClassMix) + the masked term, then --eval-only of the result.
"""
import json
import math
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from detectron2.modeling import build_model

from mic_det.config_loading import build_config
from mic_det.data.synthetic import SEMANTIC_CLASSES
from mic_det.segmentation.classmix import class_mix, class_mix_mask
from mic_det.segmentation.modeling import WEIGHT_KEY, weighted_cross_entropy
from mic_det.segmentation.pseudo_labels import make_pseudo_labels, pseudo_label_stats, quality_weight
from mic_det.segmentation.synthetic import write_seg_pair

from .conftest import REPO, read_metrics, run_train_net

IGNORE = 255


def _logits_from_probs(probs):
    """Logits whose softmax is ``probs`` (N, K, H, W)."""
    return torch.log(torch.as_tensor(probs, dtype=torch.float32))


def test_quality_weight_is_the_share_of_confident_pixels_over_the_batch():
    # Two 2x2 images, 2 classes; max probabilities: image 0 {0.99, 0.97, 0.6, 0.5}, image 1 {0.99, 0.7, 0.7, 0.7}.
    p0 = np.array([[0.99, 0.03], [0.6, 0.5]])
    p1 = np.array([[0.01, 0.3], [0.3, 0.7]])
    probs = np.stack([np.stack([p0, 1 - p0]), np.stack([p1, 1 - p1])])
    pseudo = make_pseudo_labels(_logits_from_probs(probs), [(2, 2), (2, 2)], threshold=0.968)
    # Confident (>= 0.968): 0.99 and 0.97 in image 0, 0.99 in image 1 -> 3 of 8 pixels, for both images.
    assert quality_weight([p["max_prob"] for p in pseudo], 0.968) == pytest.approx(3 / 8)
    for p in pseudo:
        assert torch.allclose(p[WEIGHT_KEY], torch.full((2, 2), 3 / 8))
    stats = pseudo_label_stats(pseudo, min_share=0.0)
    assert stats["quality_weight"] == pytest.approx(3 / 8)
    assert stats["confident_share"] == pytest.approx((2 / 4 + 1 / 4) / 2)


def test_pseudo_label_is_the_teacher_argmax_cropped_to_the_image_with_ignored_rows():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 6, 7)
    pseudo = make_pseudo_labels(logits, [(6, 7), (4, 5)], threshold=0.5, ignore_top=1, ignore_bottom=2)
    assert torch.equal(pseudo[0]["sem_seg"], logits[0].argmax(0))
    assert torch.equal(pseudo[1]["sem_seg"], logits[1, :, :4, :5].argmax(0))  # padding left out
    w = pseudo[0][WEIGHT_KEY]
    assert (w[0] == 0).all() and (w[-2:] == 0).all() and (w[1:-2] > 0).all()


def test_pseudo_label_accuracy_against_the_targets_own_labels():
    from mic_det.segmentation.pseudo_labels import pseudo_label_accuracy

    pseudo = [{"sem_seg": torch.tensor([[0, 1], [2, 2]]), "confident": torch.tensor([[True, True], [False, False]])}]
    gt = [torch.tensor([[0, 2], [2, IGNORE]])]  # 3 labelled pixels, 2 right; confident: 2 labelled, 1 right
    assert pseudo_label_accuracy(pseudo, gt) == {"accuracy": pytest.approx(2 / 3), "confident_accuracy": 0.5}


def test_classmix_pastes_the_chosen_source_classes_with_weight_one():
    source = {"image": torch.full((3, 2, 3), 200.0), "sem_seg": torch.tensor([[0, 1, 2], [2, IGNORE, 1]])}
    target = {"image": torch.full((3, 2, 3), 10.0, dtype=torch.float32)}
    pseudo = {"sem_seg": torch.tensor([[5, 5, 6], [6, 6, 6]]), WEIGHT_KEY: torch.full((2, 3), 0.25)}
    mask = torch.tensor([[False, False, True], [True, False, False]])  # source class 2 chosen
    mixed, _ = class_mix(source, target, pseudo, mask=mask)
    assert mixed["sem_seg"].tolist() == [[5, 5, 2], [2, 6, 6]]
    assert mixed[WEIGHT_KEY].tolist() == [[0.25, 0.25, 1.0], [1.0, 0.25, 0.25]]
    assert mixed["image"][0].tolist() == [[10, 10, 200], [200, 10, 10]]
    # The drawn mask covers ceil(n/2) of the n source classes, never the ignore value.
    label = torch.tensor([[0, 1, 2], [3, 4, IGNORE]])
    for seed in range(5):
        m = class_mix_mask(label, torch.Generator().manual_seed(seed))
        chosen = set(label[m].tolist())
        assert len(chosen) == 3 and IGNORE not in chosen


def _seg_task(*opts):
    from mic_det.segmentation.task import SegmentationTask

    return SegmentationTask(build_config(os.path.join(REPO, "configs", "synthetic_seg", "mic.yaml"), list(opts)))


def _flat_pair(n_source, n_target):
    """Source images of value 200 (classes 1 and 2, half each), target images of value 10 + i (pseudo-label 5)."""
    source = [{"image": torch.full((3, 4, 6), 200.0), "sem_seg": torch.tensor([[1, 1, 1, 2, 2, 2]] * 4)}
              for _ in range(n_source)]
    target = [{"image": torch.full((3, 4, 6), 10.0 + i)} for i in range(n_target)]
    pseudo = [{"sem_seg": torch.full((4, 6), 5), WEIGHT_KEY: torch.full((4, 6), 0.5)} for _ in range(n_target)]
    return source, target, pseudo


def test_classmix_keeps_every_target_image_when_the_batches_differ():
    """Two source images, four target images: each target image is mixed (sources reused in turn)."""
    task = _seg_task("SEG.MIX_AUGMENT", "False")
    source, target, pseudo = _flat_pair(2, 4)
    mixed = task.mixed_inputs(source, target, pseudo)
    assert len(mixed) == 4
    for i, m in enumerate(mixed):
        # One of the source's two classes is pasted; target image i shows, with its pseudo-label, elsewhere.
        target_pixels = m["image"][0][m["sem_seg"] == 5]
        assert target_pixels.numel() == 12 and bool((target_pixels == 10.0 + i).all()), i
        assert bool((m["image"][0][m["sem_seg"] != 5] == 200.0).all()) and m[WEIGHT_KEY].max() == 1.0


def test_dacs_mix_augmentation_does_not_depend_on_the_masked_views():
    """SEG.MIX_AUGMENT jitters and blurs the mixed image whether or not MIC.MASK_AUG.ENABLED
    augments the masked view (its probabilities and strengths are shared)."""
    always = ["MIC.MASK_AUG.COLOR_JITTER_PROB", "1.0", "MIC.MASK_AUG.BLUR_PROB", "1.0"]
    source, target, pseudo = _flat_pair(2, 2)
    for enabled in ("True", "False"):
        task = _seg_task("MIC.MASK_AUG.ENABLED", enabled, "SEG.CLASSMIX", "False", *always)
        torch.manual_seed(0)
        mixed = task.mixed_inputs(source, target, pseudo)
        assert task.mix_augmentation is not None, enabled
        assert not torch.equal(mixed[0]["image"], target[0]["image"]), enabled  # jittered
    task = _seg_task("SEG.MIX_AUGMENT", "False", "SEG.CLASSMIX", "False", *always)
    assert task.mix_augmentation is None
    assert torch.equal(task.mixed_inputs(source, target, pseudo)[0]["image"], target[0]["image"])


def test_weighted_cross_entropy_against_a_hand_computation():
    torch.manual_seed(1)
    logits = torch.randn(1, 3, 2, 2)
    targets = torch.tensor([[[0, 2], [IGNORE, 1]]])
    assert torch.allclose(weighted_cross_entropy(logits, targets, None, IGNORE),
                          F.cross_entropy(logits, targets, ignore_index=IGNORE))
    weights = torch.tensor([[[0.5, 1.0], [3.0, 0.0]]])
    logp = logits.log_softmax(1)[0]
    by_hand = (-0.5 * logp[0, 0, 0] - 1.0 * logp[2, 0, 1] - 0.0 * logp[1, 1, 1]) / 3  # 3 labelled pixels
    assert torch.allclose(weighted_cross_entropy(logits, targets, weights, IGNORE), by_hand)


def _tiny_model_cfg(*opts):
    return build_config(os.path.join(REPO, "configs", "synthetic_seg", "source_only.yaml"), list(opts))


def test_meta_arch_outputs_and_weighted_training_forward():
    torch.manual_seed(0)
    model = build_model(_tiny_model_cfg())
    inputs = [{"image": torch.randint(0, 255, (3, 64, 80), dtype=torch.uint8), "height": 128, "width": 160},
              {"image": torch.randint(0, 255, (3, 60, 72), dtype=torch.uint8), "height": 60, "width": 72}]
    model.eval()
    with torch.no_grad():
        out = model(inputs)
        logits, sizes = model.input_frame_logits(inputs)
    assert [tuple(o["sem_seg"].shape) for o in out] == [(12, 128, 160), (12, 60, 72)]  # original resolution
    assert sizes == [(64, 80), (60, 72)]
    assert logits.shape == (2, 12, 64, 80)  # padded to the batch, network-input frame
    model.train()
    labels = [torch.randint(0, 12, x["image"].shape[1:]) for x in inputs]
    losses = model([dict(x, sem_seg=y) for x, y in zip(inputs, labels)])
    assert set(losses) == {"loss_sem_seg"} and losses["loss_sem_seg"] > 0
    zero = model([dict(x, sem_seg=y, **{WEIGHT_KEY: torch.zeros(y.shape)}) for x, y in zip(inputs, labels)])
    assert float(zero["loss_sem_seg"]) == 0.0


@pytest.fixture(scope="module")
def seg_pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("seg_pair")
    write_seg_pair(str(root), num_source_train=24, num_source_val=4, num_target_train=24, num_target_val=8,
                   height=64, width=80)
    return root


SEG_TINY = ["INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MIN_SIZE_TEST", "64", "MIC.MASK_BLOCK_SIZE", "4",
            "SOLVER.WARMUP_ITERS", "10"]


@pytest.mark.slow  # a subprocess or a training run
def test_mic_config_trains_on_flag_domains_and_learns_then_evaluates(seg_pair, tmp_path):
    """configs/synthetic_seg/mic.yaml through tools/train_net.py on domains given by flags alone
    (the tiny pair's folders): source steps, then ClassMix + masked steps; then --eval-only."""
    out = tmp_path / "run"
    classes = ",".join(SEMANTIC_CLASSES)
    split = lambda s, sub: str(seg_pair / s / sub)  # noqa: E731
    proc = run_train_net(["--config-file", "configs/synthetic_seg/mic.yaml",
                   "--register-seg", "my_src", split("source_train", "images"), split("source_train", "labels"),
                   classes,
                   "--register-folder", "my_tgt", split("target_train", "images"),
                   "--register-seg", "my_val", split("target_val", "images"), split("target_val", "labels"), classes,
                   "DATASETS.TRAIN", "('my_src',)", "DATASETS.TRAIN_TARGET", "('my_tgt',)",
                   "DATASETS.TEST", "('my_val',)", "SOLVER.MAX_ITER", "60", "SOLVER.STEPS", "(40,)",
                   "MIC.BURN_IN_ITERS", "40", "SOLVER.BASE_LR", "0.02",
                   "TEST.EVAL_PERIOD", "60", "VIS_PERIOD", "50"] + SEG_TINY, out, seg_pair)
    metrics = read_metrics(out)
    # One loss during the burn-in: Detectron2 then logs it as total_loss only.
    src = [m["total_loss"] for m in metrics if "total_loss" in m and m["iteration"] < 40]
    assert src[-1] < 0.8 * src[0], src  # the source loss falls
    assert any(m.get("loss_sem_seg_mix", 0) > 0 for m in metrics)  # DACS's ClassMix term
    assert any("loss_sem_seg_mic" in m for m in metrics) and any("mic/quality_weight" in m for m in metrics)
    assert any("guard/source_accuracy" in m for m in metrics)
    assert "iter 40 pseudo-labels: q " in proc.stdout + proc.stderr  # the console line
    final = metrics[-1]
    assert final["student/my_val/sem_seg/mIoU"] > 100 / len(SEMANTIC_CLASSES)  # above chance
    assert "teacher/my_val/sem_seg/mIoU" in final
    inference = out / "inference"
    for kind in ("seg_report_student_my_val_iter60.json", "seg_report_teacher_my_val_iter60.md",
                 "seg_examples_student_my_val_iter60.png"):
        assert (inference / kind).is_file(), kind
    report = json.loads((inference / "seg_report_student_my_val_iter60.json").read_text())
    assert len(report["per_class"]["IoU"]) == len(SEMANTIC_CLASSES) and not math.isnan(report["sem_seg"]["pACC"])

    # --eval-only of the result on the built-in names of the same pair (SEG.SYNTHETIC_ROOT).
    ev = tmp_path / "eval"
    proc = run_train_net(["--config-file", "configs/synthetic_seg/mic.yaml", "--eval-only", "SEG.SYNTHETIC_ROOT",
                          str(seg_pair), "MODEL.WEIGHTS", str(out / "model_final.pth")] + SEG_TINY, ev, seg_pair)
    assert "Evaluation of the teacher on synthetic_seg_foggy_val" in proc.stdout + proc.stderr
    teacher = json.loads((ev / "inference" / "seg_report_teacher_synthetic_seg_foggy_val_iter59.json").read_text())
    assert teacher["sem_seg"]["mIoU"] == pytest.approx(final["teacher/my_val/sem_seg/mIoU"], abs=1e-6)
