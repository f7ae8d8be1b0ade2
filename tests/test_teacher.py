"""EMA teacher: the update formula, DDP safety, eval mode and checkpointing."""

import os

import pytest
import torch
import torch.distributed as dist
from torch import nn

from detectron2.checkpoint import DetectionCheckpointer

from mic_det.teacher import EMATeacher, batch_norm_on_batch_statistics, teacher_weights_from_checkpoint, unwrap_model


def _tiny(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 2))


def _train_steps(model: nn.Module, steps: int = 2, seed: int = 1) -> None:
    """A few SGD steps in train mode: moves weights and BatchNorm statistics."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    model.train()
    for _ in range(steps):
        x = torch.randn(8, 3, generator=g)
        opt.zero_grad()
        model(x).pow(2).mean().backward()
        opt.step()


def _state(module: nn.Module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _assert_states_equal(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


# ------------------------------------------------------------------------------ EMA
def test_ema_formula_on_params_and_batchnorm_buffers():
    student = _tiny()
    teacher = EMATeacher(student)
    _train_steps(student)
    t_old, s = _state(teacher.model), _state(student)
    assert not torch.equal(t_old["1.running_mean"], s["1.running_mean"])  # the test has teeth
    assert int(s["1.num_batches_tracked"]) == 2 and int(t_old["1.num_batches_tracked"]) == 0

    alpha = 0.7
    teacher.update(student, alpha)
    t_new = _state(teacher.model)
    for k in [
        "0.weight",
        "0.bias",
        "1.weight",
        "1.bias",
        "1.running_mean",
        "1.running_var",
        "3.weight",
    ]:
        expected = alpha * t_old[k] + (1 - alpha) * s[k]
        torch.testing.assert_close(t_new[k], expected, rtol=1e-6, atol=1e-7)
    assert torch.equal(t_new["1.num_batches_tracked"], s["1.num_batches_tracked"])

    # A second step compounds: t2 = a * t1 + (1 - a) * s2.
    _train_steps(student, seed=2)
    s2 = _state(student)
    teacher.update(student, 0.9)
    torch.testing.assert_close(
        teacher.model.state_dict()["0.weight"],
        0.9 * t_new["0.weight"] + 0.1 * s2["0.weight"],
        rtol=1e-6,
        atol=1e-7,
    )


def test_alpha_one_keeps_teacher_and_alpha_zero_copies_student():
    student = _tiny()
    teacher = EMATeacher(student)
    before = _state(teacher.model)
    _train_steps(student)

    teacher.update(student, 1.0)
    after = _state(teacher.model)
    for k in before:
        if k.endswith("num_batches_tracked"):  # not averaged: always the student's
            assert torch.equal(after[k], student.state_dict()[k])
        else:
            assert torch.equal(after[k], before[k]), k

    teacher.update(student, 0.0)
    _assert_states_equal(_state(teacher.model), _state(student))


def test_update_is_the_ema_of_every_floating_tensor_across_steps_and_dtypes():
    """Every floating parameter and buffer (float32, float64, BatchNorm statistics) follows
    t <- a t + (1 - a) s over several steps with changing alpha, against a float64 reference."""
    student = _tiny()
    student.register_buffer("scale64", torch.linspace(-1.0, 1.0, 5, dtype=torch.float64))
    student.register_parameter("bias64", nn.Parameter(torch.zeros(3, dtype=torch.float64)))
    teacher = EMATeacher(student)
    expected = {k: v.double().clone() for k, v in teacher.model.state_dict().items() if v.is_floating_point()}
    assert len(expected) == 10  # 6 Linear/BN params, 2 BN statistics, 2 float64 tensors
    for step, alpha in enumerate((0.9, 0.5, 0.99, 0.7)):
        _train_steps(student, steps=1, seed=step)
        with torch.no_grad():  # the float64 tensors move too
            student.scale64.add_(0.25 * (step + 1))
            student.bias64.sub_(0.5)
        teacher.update(student, alpha)
        s = student.state_dict()
        for k in expected:
            expected[k] = alpha * expected[k] + (1 - alpha) * s[k].double()
        t = teacher.model.state_dict()
        for k, v in expected.items():
            assert t[k].dtype == s[k].dtype, k
            torch.testing.assert_close(t[k].double(), v, rtol=1e-5, atol=1e-6, msg=f"{k} at step {step}")
        assert torch.equal(t["1.num_batches_tracked"], s["1.num_batches_tracked"])  # copied, not averaged
    # The teacher is neither the student nor its start: it averaged.
    assert not torch.equal(teacher.model.state_dict()["bias64"], student.bias64.detach())


def test_reset_copies_student_exactly():
    student = _tiny()
    teacher = EMATeacher(student)
    _train_steps(student)
    teacher.update(student, 0.9)
    teacher.reset(student)
    _assert_states_equal(_state(teacher.model), _state(student))


def test_update_rejects_bad_alpha_and_other_architectures():
    student = _tiny()
    teacher = EMATeacher(student)
    for alpha in (-0.1, 1.5):
        with pytest.raises(ValueError):
            teacher.update(student, alpha)
    other = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    with pytest.raises(KeyError, match="do not match"):
        teacher.update(other, 0.9)
    wider = nn.Sequential(nn.Linear(3, 5), nn.BatchNorm1d(5), nn.ReLU(), nn.Linear(5, 2))
    with pytest.raises(ValueError, match="shape"):
        teacher.update(wider, 0.9)


# ------------------------------------------------------------------------------ DDP
@pytest.fixture
def gloo_group(tmp_path):
    if dist.is_initialized():
        pytest.skip("a process group already exists in this process")
    dist.init_process_group(
        "gloo", init_method=f"file://{os.fspath(tmp_path / 'pg')}", rank=0, world_size=1
    )
    try:
        yield
    finally:
        dist.destroy_process_group()


def test_update_under_distributed_data_parallel(gloo_group):
    plain, wrapped = _tiny(), nn.parallel.DistributedDataParallel(_tiny())
    assert unwrap_model(wrapped) is wrapped.module
    assert all(k.startswith("module.") for k in wrapped.state_dict())

    teacher_plain, teacher_ddp = EMATeacher(plain), EMATeacher(wrapped)
    assert not any(k.startswith("model.module.") for k in teacher_ddp.state_dict())
    _assert_states_equal(_state(teacher_ddp), _state(teacher_plain))

    _train_steps(plain)
    _train_steps(wrapped)
    teacher_plain.update(plain, 0.8)
    teacher_ddp.update(wrapped, 0.8)
    # DDP averages gradients over one process: the same numbers as the plain run.
    for k, v in _state(teacher_plain).items():
        torch.testing.assert_close(_state(teacher_ddp)[k], v, rtol=1e-6, atol=1e-7)
    assert not torch.equal(_state(teacher_ddp)["model.0.weight"], _state(_tiny())["0.weight"])
    # A teacher built from the plain model also takes updates from the wrapped one.
    teacher_plain.reset(wrapped)
    _assert_states_equal(_state(teacher_plain.model), _state(wrapped.module))


def test_unwrap_model_strips_data_parallel():
    inner = _tiny()
    assert unwrap_model(nn.DataParallel(inner)) is inner
    assert unwrap_model(inner) is inner


# ------------------------------------------------------------------ mode and grads
def test_teacher_stays_in_eval_mode_and_predicts_like_the_student():
    student = _tiny()
    _train_steps(student)
    teacher = EMATeacher(student)
    assert teacher.train() is teacher
    assert not any(m.training for m in teacher.modules())
    teacher.train(True)
    assert not any(m.training for m in teacher.modules())
    assert student.training, "building the teacher must not change the student's mode"

    x = torch.randn(5, 3)
    with torch.no_grad():
        expected = student.eval()(x)
    torch.testing.assert_close(teacher(x), expected)


def test_batch_statistics_mode_normalises_with_the_batch_and_leaves_running_stats_and_modes_as_they_were():
    """MIC.TEACHER_BN_MODE "train": BatchNorm on the batch's own statistics, nothing of the teacher changed."""
    from detectron2.layers import FrozenBatchNorm2d

    torch.manual_seed(0)
    student = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), FrozenBatchNorm2d(4), nn.Dropout(0.5),
                            nn.Flatten(), nn.Linear(4 * 2 * 2, 3), nn.BatchNorm1d(3, momentum=None))
    _ = student(torch.randn(6, 3, 2, 2))  # running statistics that differ from the test batch's
    teacher = EMATeacher(student)
    before = _state(teacher.model)
    x = torch.randn(5, 3, 2, 2) * 3 + 2
    with torch.no_grad():
        eval_out = teacher(x)
        with batch_norm_on_batch_statistics(teacher.model) as switched:
            out = teacher(x)
            again = teacher(x)  # no running update in between: the same output
        after_out = teacher(x)
    assert switched == 2  # BatchNorm2d and BatchNorm1d; FrozenBatchNorm2d keeps its fixed statistics
    # By hand: each BatchNorm normalised over this batch (biased variance), dropout still off.
    conv, bn2, frozen, _, flat, lin, bn1 = teacher.model
    h = conv(x)
    h = (h - h.mean((0, 2, 3), keepdim=True)) / torch.sqrt(h.var((0, 2, 3), unbiased=False, keepdim=True) + bn2.eps)
    h = lin(flat(frozen(h * bn2.weight.view(1, -1, 1, 1) + bn2.bias.view(1, -1, 1, 1))))
    expected = (h - h.mean(0)) / torch.sqrt(h.var(0, unbiased=False) + bn1.eps) * bn1.weight + bn1.bias
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(again, out)
    assert not torch.allclose(out, eval_out, atol=1e-3)  # the test has teeth: running statistics differ
    _assert_states_equal(_state(teacher.model), before)  # running means, variances and counters untouched
    torch.testing.assert_close(after_out, eval_out)
    assert not any(m.training for m in teacher.modules())
    assert all(m.track_running_stats for m in teacher.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm))


def test_batch_statistics_mode_restores_the_teacher_when_the_forward_raises():
    teacher = EMATeacher(_tiny())
    before = _state(teacher.model)
    with pytest.raises(ValueError, match="Expected more than 1 value per channel"):
        with torch.no_grad(), batch_norm_on_batch_statistics(teacher.model):
            teacher(torch.randn(1, 3))  # one image: a batch statistic of BatchNorm1d is undefined
    _assert_states_equal(_state(teacher.model), before)
    assert not teacher.model[1].training and teacher.model[1].track_running_stats


def test_teacher_params_need_no_grad():
    student = _tiny()
    student(torch.randn(4, 3)).sum().backward()  # student now holds .grad tensors
    teacher = EMATeacher(student)
    assert all(not p.requires_grad and p.grad is None for p in teacher.parameters())
    assert all(p.requires_grad and p.grad is not None for p in student.parameters())
    teacher.update(student, 0.5)
    assert all(not p.requires_grad for p in teacher.parameters())
    assert not teacher(torch.randn(2, 3)).requires_grad


# ------------------------------------------------------------------- checkpointing
def test_checkpoint_round_trip_through_detection_checkpointer(tmp_path):
    student = _tiny()
    teacher = EMATeacher(student)
    _train_steps(student)
    teacher.update(student, 0.6)  # teacher now differs from both old and new student
    assert all(k.startswith("model.") for k in teacher.state_dict())
    DetectionCheckpointer(student, str(tmp_path), teacher=teacher).save("x")
    path = tmp_path / "x.pth"
    assert path.is_file()

    for how in ("resume", "load"):
        fresh = _tiny(seed=5)
        fresh_teacher = EMATeacher(fresh)
        checkpointer = DetectionCheckpointer(fresh, str(tmp_path), teacher=fresh_teacher)
        if how == "resume":
            checkpointer.resume_or_load(str(path), resume=True)
        else:
            checkpointer.load(str(path))
        _assert_states_equal(_state(fresh), _state(student))
        _assert_states_equal(_state(fresh_teacher), _state(teacher))
        assert not any(m.training for m in fresh_teacher.modules())

    checkpoint = torch.load(path, map_location="cpu")
    weights = teacher_weights_from_checkpoint(checkpoint)
    bare = _tiny(seed=6)
    bare.load_state_dict(weights)  # strict: exactly the detector's keys
    _assert_states_equal(_state(bare), _state(teacher.model))


def test_teacher_weights_from_checkpoint_without_teacher():
    with pytest.raises(KeyError, match="no 'teacher' entry; was it trained with MIC"):
        teacher_weights_from_checkpoint({"model": {}, "iteration": 3})
    with pytest.raises(KeyError, match="not an EMATeacher state dict"):
        teacher_weights_from_checkpoint({"teacher": {"0.weight": torch.zeros(1)}})


def test_ramped_alpha_is_dacs_mean_teacher_ramp():
    from mic_det.teacher import ramped_alpha

    assert [ramped_alpha(0.99, t) for t in range(4)] == [0.0, 0.5, 1 - 1 / 3, 0.75]
    assert ramped_alpha(0.99, 10_000) == 0.99 and ramped_alpha(0.9, 9) == 0.9


def test_teacher_student_gap_is_teacher_minus_student_per_evaluated_set():
    from mic_det.engine.trainer import teacher_student_gap

    results = {
        "student": {"night_val": {"bbox": {"AP50": 65.0, "AP": 30.0}}, "clear_val": {"bbox": {"AP50": 80.0}}},
        "teacher": {"night_val": {"bbox": {"AP50": 53.8, "AP": 28.0}}, "clear_val": {"bbox": {"AP50": float("nan")}}},
    }
    gaps = teacher_student_gap(results, "bbox/AP50")
    assert gaps == {"teacher_minus_student/night_val/bbox/AP50": pytest.approx(-11.2)}
    assert teacher_student_gap(results, "sem_seg/mIoU") == {}
    assert teacher_student_gap({"student": results["student"]}, "bbox/AP50") == {}
