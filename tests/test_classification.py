"""Classification under MIC: the maths of CDAN, MCC and the pseudo-label weight; the meta-architecture's
output format; the evaluator's accuracies against hand-made cases."""
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from detectron2.data import MetadataCatalog
from detectron2.modeling import build_model

from mic_det.classification import (
    ClassificationEvaluator,
    ClassificationTask,
    accuracy_summary,
    cdan_input,
    cdan_loss,
    mcc_loss,
    pseudo_labels_from_scores,
    warm_grl_coefficient,
)
from mic_det.config_loading import build_config

from .conftest import REPO


def _hand_mcc(logits, temperature):
    """MCC written out element by element (Jin et al., ECCV 2020, eqs. 1-6)."""
    n, c = len(logits), len(logits[0])
    probs = []
    for row in logits:
        e = [math.exp(v / temperature) for v in row]
        probs.append([v / sum(e) for v in e])
    entropies = [-sum(p * math.log(p + 1e-5) for p in row) for row in probs]
    w = [1 + math.exp(-h) for h in entropies]
    w = [n * v / sum(w) for v in w]
    conf = [[sum(w[b] * probs[b][i] * probs[b][j] for b in range(n)) for j in range(c)] for i in range(c)]
    conf = [[v / sum(row) for v in row] for row in conf]
    return sum(conf[i][j] for i in range(c) for j in range(c) if i != j) / c


def test_mcc_loss_matches_a_hand_computation():
    logits = [[2.0, 0.5, -1.0], [0.1, 0.2, 0.3], [-1.0, 3.0, 0.0], [1.0, 1.0, -2.0]]
    got = float(mcc_loss(torch.tensor(logits), temperature=2.5))
    assert got == pytest.approx(_hand_mcc(logits, 2.5), rel=1e-5)
    # Confident, distinct predictions confuse nothing; identical uniform ones confuse the most.
    assert float(mcc_loss(torch.tensor([[50.0, 0.0], [0.0, 50.0]]), 1.0)) < 1e-6
    assert float(mcc_loss(torch.zeros(4, 2), 1.0)) == pytest.approx(0.5)


def test_cdan_input_is_the_outer_product_of_softmax_and_features():
    features = torch.tensor([[1.0, 2.0, 3.0], [-1.0, 0.5, 0.0]])
    probs = torch.tensor([[0.25, 0.75], [1.0, 0.0]])
    h = cdan_input(features, probs)
    assert h.shape == (2, 6)
    for i in range(2):
        assert torch.allclose(h[i], torch.outer(probs[i], features[i]).flatten())


def test_cdan_discriminator_learns_while_the_features_get_the_reversed_gradient():
    torch.manual_seed(0)
    disc = torch.nn.Linear(3 * 2, 1)
    features = torch.randn(4, 3, requires_grad=True)
    logits = torch.randn(4, 2, requires_grad=True)
    loss = cdan_loss(lambda x: disc(x).squeeze(1), features, logits, num_source=2, grl_coefficient=0.3)
    loss.backward()
    # The same BCE without the GRL (source = 1, target = 0): the plain gradients.
    f2 = features.detach().clone().requires_grad_(True)
    disc2 = torch.nn.Linear(6, 1)
    disc2.load_state_dict(disc.state_dict())
    d = disc2(cdan_input(f2, F.softmax(logits.detach(), dim=1))).squeeze(1)
    plain = F.binary_cross_entropy_with_logits(d, torch.tensor([1.0, 1.0, 0.0, 0.0]))
    plain.backward()
    assert float(loss) == pytest.approx(float(plain))
    assert torch.allclose(features.grad, -0.3 * f2.grad, atol=1e-7)  # reversed and scaled
    assert torch.allclose(disc.weight.grad, disc2.weight.grad)  # the discriminator itself is not
    assert logits.grad is None or torch.all(logits.grad == 0)  # the conditioning softmax is detached


def test_the_grl_coefficient_follows_tllib_warm_start_gradient_reverse_layer():
    """CDAN's reference: tllib's WarmStartGradientReverseLayer(alpha=1, lo=0, hi=1, max_iters=1000), whose
    coefficient is 2 (hi - lo) / (1 + exp(-alpha i / max_iters)) - (hi - lo) + lo; values computed from it."""
    assert warm_grl_coefficient(0, 1000) == 0.0
    assert warm_grl_coefficient(500, 1000) == pytest.approx(0.2449, abs=1e-4)
    assert warm_grl_coefficient(1000, 1000) == pytest.approx(0.4621, abs=1e-4)
    assert warm_grl_coefficient(3000, 1000) == pytest.approx(0.9051, abs=1e-4)
    # hi = GRL_WEIGHT; alpha = GRL_ALPHA (10 is DANN's faster ramp).
    assert warm_grl_coefficient(500, 1000, 0.5) == pytest.approx(0.5 * 0.2449, abs=1e-4)
    assert warm_grl_coefficient(50, 1000, alpha=10.0) == pytest.approx(0.2449, abs=1e-4)
    assert warm_grl_coefficient(10**6, 1000, 0.5) == pytest.approx(0.5)
    assert warm_grl_coefficient(None, 1000, 0.7) == 0.7


def test_pseudo_label_is_the_teacher_argmax_weighted_by_its_max_probability():
    scores = torch.tensor([[0.1, 0.7, 0.2], [0.5, 0.3, 0.2]])
    prob = pseudo_labels_from_scores(scores, "prob")
    assert [p["label"] for p in prob] == [1, 0]
    assert [p["weight"] for p in prob] == pytest.approx([0.7, 0.5])
    assert [p["weight"] for p in pseudo_labels_from_scores(scores, "none")] == [1.0, 1.0]
    with pytest.raises(ValueError, match="CLS_PSEUDO_WEIGHT"):
        pseudo_labels_from_scores(scores, "entropy")


def _tiny_cfg(*opts):
    return build_config(f"{REPO}/configs/synthetic_cls/mic.yaml",
                        ["MODEL.CLASSIFIER.NUM_CLASSES", "3", "MODEL.CLASSIFIER.BOTTLENECK_DIM", "16",
                         "UDA.CDAN.HIDDEN_DIM", "8"] + list(opts))


def _images(n, labels=None):
    g = torch.Generator().manual_seed(n)
    out = [{"image": torch.randint(0, 256, (3, 32, 32), generator=g, dtype=torch.uint8)} for _ in range(n)]
    for x, y in zip(out, labels or []):
        x["label"] = y
    return out


def test_meta_arch_inference_format_and_training_losses():
    torch.manual_seed(0)
    model = build_model(_tiny_cfg())
    model.eval()
    with torch.no_grad():
        out = model(_images(2))
    assert len(out) == 2 and set(out[0]) == {"scores", "pred_class"}
    assert out[0]["scores"].shape == (3,) and float(out[0]["scores"].sum()) == pytest.approx(1.0, abs=1e-5)
    assert int(out[0]["pred_class"]) == int(out[0]["scores"].argmax())
    model.train()
    losses = model(_images(4, [0, 1, 2, 0]), target_inputs=_images(4))
    assert set(losses) == {"loss_cls", "loss_cdan", "loss_mcc"}
    assert all(torch.isfinite(v) for v in losses.values())
    # Source only without UDA; a pseudo-label weight of 0 cancels an image's loss.
    source_only = build_model(_tiny_cfg("UDA.ENABLED", "False"))
    assert set(source_only(_images(2, [0, 1]))) == {"loss_cls"} and source_only.discriminator is None
    weighted = [dict(x, weight=0.0) for x in _images(2, [0, 1])]
    assert float(source_only(weighted)["loss_cls"]) == 0.0


def test_the_grl_warm_up_counts_from_the_first_aligned_step():
    """Resumed from a source model at UDA.START_ITER 400, the first aligned step reverses nothing yet."""
    from detectron2.utils.events import EventStorage

    def backbone_grad_of_cdan(start_iter, iteration):
        torch.manual_seed(0)
        model = build_model(_tiny_cfg("UDA.START_ITER", str(start_iter), "UDA.CDAN.GRL_WARM_ITERS", "100"))
        model.train()
        with EventStorage(iteration):
            loss = model(_images(4, [0, 1, 2, 0]), target_inputs=_images(4))["loss_cdan"]
        loss.backward()
        return sum(float(p.grad.abs().sum()) for p in model.backbone.parameters() if p.grad is not None)

    assert backbone_grad_of_cdan(400, 400) == 0.0  # coefficient 0 at the first aligned step
    assert backbone_grad_of_cdan(400, 450) > 0.0
    assert backbone_grad_of_cdan(0, 400) > 0.0


def test_the_model_scales_the_reversed_gradient_by_the_reference_warm_up():
    """With the reference's settings (the UDA.CDAN.GRL_* defaults), step 500 reverses 0.245 of the full gradient."""
    from detectron2.utils.events import EventStorage

    def backbone_grad_of_cdan(*opts):
        torch.manual_seed(0)
        model = build_model(_tiny_cfg(*opts))
        model.train()
        with EventStorage(500):
            loss = model(_images(4, [0, 1, 2, 0]), target_inputs=_images(4))["loss_cdan"]
        loss.backward()
        return sum(float(p.grad.abs().sum()) for p in model.backbone.parameters() if p.grad is not None)

    from detectron2.config import get_cfg

    from mic_det import add_mic_config

    defaults = get_cfg()
    add_mic_config(defaults)
    cdan = defaults.UDA.CDAN
    assert (cdan.GRL_WARM_ITERS, cdan.GRL_ALPHA, cdan.GRL_WEIGHT) == (1000, 1.0, 1.0)
    full = backbone_grad_of_cdan("UDA.CDAN.GRL_WARM_ITERS", "0")
    warm = backbone_grad_of_cdan("UDA.CDAN.GRL_WARM_ITERS", "1000", "UDA.CDAN.GRL_ALPHA", "1.0")
    assert warm / full == pytest.approx(0.2449, abs=1e-3)


def test_evaluator_per_class_accuracy_and_mean_against_a_hand_made_case(tmp_path):
    labels, preds = [0, 0, 0, 1, 1, 2], [0, 0, 1, 1, 0, 2]
    s = accuracy_summary(labels, preds, 4)
    assert s["top1"] == pytest.approx(400 / 6)
    assert s["per_class"][:3] == pytest.approx([200 / 3, 50.0, 100.0]) and math.isnan(s["per_class"][3])
    assert s["mean_class_acc"] == pytest.approx((200 / 3 + 50 + 100) / 3)  # classes without images left out
    assert s["confusion"][0] == [2, 1, 0, 0]

    MetadataCatalog.get("cls_eval_case").thing_classes = ["a", "b", "c", "d"]
    ev = ClassificationEvaluator("cls_eval_case", str(tmp_path), "teacher", 7, "cfg.yaml")
    ev.reset()
    ev.process([{"label": y} for y in labels], [{"pred_class": torch.tensor(p)} for p in preds])
    res = ev.evaluate()["cls"]
    assert res["top1"] == pytest.approx(400 / 6) and res["acc/b"] == 50.0
    report = json.load(open(tmp_path / "report_teacher_cls_eval_case_iter7.json"))
    assert report["per_class"][3] is None and report["classes"] == ["a", "b", "c", "d"]
    assert (tmp_path / "report_teacher_cls_eval_case_iter7.md").read_text().count("|") > 10
    assert (tmp_path / "confusion_teacher_cls_eval_case_iter7.png").stat().st_size > 1000


def test_task_pseudo_label_stats_and_masked_inputs():
    task = ClassificationTask(_tiny_cfg("MIC.PSEUDO_SCORE_THRESH", "0.6"))
    pseudo = pseudo_labels_from_scores(torch.tensor([[0.9, 0.1, 0.0], [0.4, 0.35, 0.25]]))
    assert [task.has_pseudo_label(p) for p in pseudo] == [True, False]
    stats = task.pseudo_label_stats(pseudo)
    assert stats[task.pseudo_count_stat] == 0.5 and stats["pseudo_confidence"] == pytest.approx(0.65)
    assert task.pseudo_label_quality([{"label_for_scoring": 0}, {"label_for_scoring": 2}], pseudo) == {"accuracy": 0.5}
    masked = task.masked_inputs(torch.zeros(2, 3, 32, 32), [(32, 32)] * 2, _images(2), pseudo)
    assert masked[0]["label"] == 0 and masked[0]["weight"] == pytest.approx(0.9)
    assert masked[0]["image"].shape == (3, 32, 32)


def test_the_teacher_labels_with_the_target_batchs_batchnorm_statistics_as_the_reference():
    """MIC.TEACHER_BN_MODE "auto" is "train" for classification: the pseudo-labels are the teacher's
    predictions with BatchNorm over the target batch (the reference's teacher is never in eval mode),
    and its running statistics (the EMA of the student's, which its evaluation uses) stay as they were."""
    import copy

    from detectron2.utils.events import EventStorage

    from mic_det.engine import MICStep
    from mic_det.teacher import EMATeacher

    torch.manual_seed(0)
    cfg = _tiny_cfg("MODEL.MOBILENET.PRETRAINED", "False")
    assert cfg.MIC.TEACHER_BN_MODE == "auto"
    model = build_model(cfg)
    model.train()
    model(_images(8, [0, 1, 2, 0, 1, 2, 0, 1]))  # running statistics of other images than the target batch's
    teacher = EMATeacher(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    target = _images(6)
    norms = [m for m in teacher.model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert norms, "the classifier has BatchNorm layers"
    before = {k: v.clone() for k, v in teacher.model.state_dict().items()}

    by_hand = copy.deepcopy(teacher.model).train()  # every layer on batch statistics, as the reference's teacher
    with torch.no_grad():
        _, logits = by_hand.features_and_logits(by_hand.preprocess_image(target).tensor)
        eval_probs = torch.stack([o["scores"] for o in teacher.model(target)])
    train_probs = logits.softmax(dim=1)
    assert not torch.allclose(train_probs, eval_probs, atol=1e-3)  # the two modes differ on this batch
    with EventStorage(0):
        step = MICStep(cfg, model, [], [], optimizer, teacher)
        assert step.teacher_bn_mode == "train"
        pseudo = step.pseudo_label(target)
        assert [p["prob"] for p in pseudo] == pytest.approx(train_probs.max(dim=1).values.tolist(), abs=1e-5)
        assert [p["label"] for p in pseudo] == train_probs.argmax(dim=1).tolist()
        for k, v in teacher.model.state_dict().items():
            assert torch.equal(v, before[k]), f"{k} changed"
        assert not any(m.training for m in teacher.model.modules())

        eval_cfg = _tiny_cfg("MODEL.MOBILENET.PRETRAINED", "False", "MIC.TEACHER_BN_MODE", "eval")
        pseudo = MICStep(eval_cfg, model, [], [], optimizer, teacher).pseudo_label(target)
        assert [p["prob"] for p in pseudo] == pytest.approx(eval_probs.max(dim=1).values.tolist(), abs=1e-5)


def test_teacher_bn_mode_per_task_and_its_checks():
    from mic_det.detection.task import DetectionTask
    from mic_det.engine.mic_step import resolve_teacher_bn_mode
    from mic_det.segmentation import SegmentationTask

    cfg = _tiny_cfg()
    assert resolve_teacher_bn_mode(cfg, ClassificationTask(cfg)) == "train"
    assert ClassificationTask.teacher_bn_mode == SegmentationTask.teacher_bn_mode == "train"
    assert DetectionTask.teacher_bn_mode == "eval"  # the reference's detection teacher runs in eval mode
    assert resolve_teacher_bn_mode(_tiny_cfg("MIC.TEACHER_BN_MODE", "eval"), ClassificationTask(cfg)) == "eval"
    with pytest.raises(ValueError, match="TEACHER_BN_MODE must be"):
        resolve_teacher_bn_mode(_tiny_cfg("MIC.TEACHER_BN_MODE", "batch"), ClassificationTask(cfg))
    one = _tiny_cfg("SOLVER.IMS_PER_BATCH", "1")
    with pytest.raises(ValueError, match="at least 2"):
        resolve_teacher_bn_mode(one, ClassificationTask(one))
    assert resolve_teacher_bn_mode(_tiny_cfg("SOLVER.IMS_PER_BATCH", "1", "MIC.TEACHER_BN_MODE", "eval"),
                                   ClassificationTask(one)) == "eval"


def test_the_task_benchmark_report_pairs_seeds_and_checks_the_targets():
    from benchmarks import task_adaptation as bench

    task = bench.TASKS["cls"]

    def fake(acc, time=None, spread=1.0):
        return {s: {"models": {"student": {"target_mean_class_acc": acc + spread * s, "target_top1": acc,
                                           "source_top1": 80.0}}, "step_time": time} for s in (0, 1, 2)}

    runs = {"control": fake(30.0), "cdan_mcc": fake(50.0, 1.0), "mic": fake(60.0, 1.7, spread=2.0),
            "oracle": fake(64.0)}
    lines, data = bench.report(task, runs, list(runs), [0, 1, 2])
    met = {v["target"]: v["met"] for v in data["verdicts"]}
    # mic - cdan_mcc = 10, 11, 12 (std 1: met); cdan_mcc - control = 20 every seed (std 0: met)
    assert met["mic above cdan_mcc by more than 3 paired std (target_mean_class_acc)"] is True
    assert met["cdan_mcc above control by more than 3 paired std (target_mean_class_acc)"] is True
    assert met["a MIC step <= 1.6x a cdan_mcc step"] is False  # 1.7 s vs 1.0 s
    assert data["summary"]["mic/student"]["gain_over_control"]["values"] == [30.0, 31.0, 32.0]
    assert any("MIC on CDAN+MCC" in line for line in lines)


def test_the_task_benchmark_runs_the_night_shift_from_the_fog_benchmarks_source_model(tmp_path, monkeypatch):
    """--shift night: the night configs and val set, the clear source model of the fog benchmark (one cache)."""
    from benchmarks import run_progress, task_adaptation as bench

    for name, target in (("cls", "synthetic_cls_night_val"), ("seg", "synthetic_seg_night_val")):
        fog, night = bench.task_bench(name, "fog"), bench.task_bench(name, "night")
        assert night.target_val == target and night.source_val == fog.source_val and night.shift == "night"
        assert night.config_dir == f"configs/synthetic_{name}_night" and "clear -> night" in night.title
        assert night.source_config_dir == fog.source_config_dir == fog.config_dir
        for label, config in night.methods.values():  # every method has its night config, on the night target
            cfg = build_config(f"{REPO}/{night.config_dir}/{config}", [])
            assert target in cfg.DATASETS.TEST
            if cfg.DATASETS.TRAIN_TARGET:
                assert cfg.DATASETS.TRAIN_TARGET == (target.replace("_val", "_train"),)
    with pytest.raises(ValueError, match="unknown shift"):
        bench.task_bench("cls", "rain")

    commands = []
    monkeypatch.setattr(run_progress, "execute", lambda cmd, log, threads, **progress: commands.append(cmd) or 0.0)
    for shift in ("fog", "night"):
        bench.source_model(bench.task_bench("cls", shift), 0, 10, [], str(tmp_path), None)
    assert commands[0] == commands[1]  # the same config and output folder: one source model for both shifts
    assert f"{REPO}/configs/synthetic_cls/source_only.yaml" in commands[0]


def test_image_folder_configs_select_the_checkpoint_on_source_val():
    """Model selection on the labelled target val set would be oracle selection in UDA."""
    for name in ("mic.yaml", "mic_cpu.yaml"):
        cfg = build_config(f"{REPO}/configs/image_folder_cls/{name}", [])
        best = cfg.TEST.BEST_CHECKPOINT
        selected = best.DATASET or cfg.DATASETS.TEST[0]
        assert best.ENABLED and selected == "cls_source_val" and selected in cfg.DATASETS.TEST, name
        assert "cls_target_val" in cfg.DATASETS.TEST, name  # still reported
