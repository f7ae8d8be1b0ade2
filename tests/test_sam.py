"""SAM (SDAT's sharpness-aware step, mic_det/engine/sam.py) against hand computations: the perturbation,
the exact restore, the update on a quadratic; inside MICStep (first pass = source losses only, the
weights restored even when the step raises, the gradient average over ranks, DDP with a parameter
the first pass leaves unused);
and a few steps of tools/train_net.py with configs/synthetic_cls/mic_sdat.yaml."""
import itertools
import math
import os
import subprocess
import sys

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.utils.events import EventStorage

from mic_det import add_mic_config
from mic_det.engine import MICStep, MICTask
from mic_det.engine.sam import sam_grad_norm, sam_perturb, sam_restore

from .conftest import REPO, read_metrics
from .test_classification_data import _write_tree


def _params(*values, grads=None):
    ps = [torch.nn.Parameter(torch.tensor(v, dtype=torch.float64)) for v in values]
    for p, g in zip(ps, grads or []):
        p.grad = None if g is None else torch.tensor(g, dtype=torch.float64)
    return ps


def test_the_perturbation_is_rho_g_over_the_norm_of_all_gradients_and_is_undone_exactly():
    a, b, frozen = _params([0.1, 0.7], [1 / 3], [2.0], grads=[[3.0, 0.0], [4.0], None])
    before = [p.detach().clone() for p in (a, b, frozen)]
    pert = sam_perturb([a, b, frozen], rho=0.5)
    assert pert.grad_norm == pytest.approx(5.0) and not pert.skipped
    # e_w = 0.5 * g / 5, the norm over both parameters' gradients together.
    assert torch.allclose(a.detach(), before[0] + torch.tensor([0.3, 0.0], dtype=torch.float64))
    assert torch.allclose(b.detach(), before[1] + 0.4)
    assert torch.equal(frozen.detach(), before[2])  # no gradient: not moved
    sam_restore(pert)
    for p, w in zip((a, b, frozen), before):
        assert torch.equal(p.detach(), w)  # bit for bit, not (w + e_w) - e_w

    # AMP's loss scaling multiplies every gradient alike: the same e_w.
    (a_scaled,) = _params([0.1, 0.7], grads=[[3.0 * 65536, 0.0]])
    sam_perturb([a_scaled], rho=0.5)
    assert torch.allclose(a_scaled.detach(), before[0] + torch.tensor([0.5, 0.0], dtype=torch.float64))
    # An overflowed gradient perturbs nothing; rho 0 moves nothing.
    (c,) = _params([1.0], grads=[[math.inf]])
    assert sam_perturb([c], rho=0.5).skipped and float(c) == 1.0
    (d,) = _params([1.0], grads=[[2.0]])
    sam_perturb([d], rho=0.0)
    assert float(d) == 1.0
    with pytest.raises(ValueError, match="rho"):
        sam_perturb([d], rho=-0.1)


def test_adaptive_sam_scales_by_the_weights():
    a, b = _params([2.0, -1.0], [0.5], grads=[[1.0, 3.0], [4.0]])
    # || |w| g || = ||(2, 3, 2)|| = sqrt(17); e_w = rho w^2 g / sqrt(17)
    assert float(sam_grad_norm([a, b], adaptive=True)) == pytest.approx(math.sqrt(17))
    sam_perturb([a, b], rho=0.1, adaptive=True)
    s = 0.1 / math.sqrt(17)
    assert a.detach().tolist() == pytest.approx([2.0 + s * 4 * 1, -1.0 + s * 1 * 3])
    assert float(b) == pytest.approx(0.5 + s * 0.25 * 4)


def _hand_sam_sgd(w, c, t, rho, lr):
    """One SAM step of plain SGD on L(w) = sum_i c_i (w_i - t_i)^2, in python floats."""
    g = [2 * ci * (wi - ti) for wi, ci, ti in zip(w, c, t)]
    norm = math.sqrt(sum(x * x for x in g))
    perturbed = [wi + rho * gi / norm for wi, gi in zip(w, g)]
    g_at_perturbed = [2 * ci * (wi - ti) for wi, ci, ti in zip(perturbed, c, t)]
    return [wi - lr * gi for wi, gi in zip(w, g_at_perturbed)]


def test_the_update_is_sgd_with_the_gradient_at_the_perturbed_point():
    c, t, rho, lr = [1.0, 3.0, 0.5], [0.2, -0.4, 1.0], 0.05, 0.1
    a, b = _params([0.9, 0.3], [-0.6])
    optimizer = torch.optim.SGD([a, b], lr=lr)

    def loss():
        w = torch.cat([a, b])
        return (torch.tensor(c, dtype=torch.float64) * (w - torch.tensor(t, dtype=torch.float64)) ** 2).sum()

    loss().backward()
    pert = sam_perturb([a, b], rho)
    optimizer.zero_grad()
    loss().backward()
    sam_restore(pert)
    optimizer.step()
    assert torch.cat([a, b]).tolist() == pytest.approx(_hand_sam_sgd([0.9, 0.3, -0.6], c, t, rho, lr), rel=1e-12)


# ----------------------------------------------------------------- in MICStep
class _Quadratic(torch.nn.Module):
    """loss_q = sum c (w - t)^2 on the source batch's mean t; with a target batch also
    loss_disc = (d * sum(w))^2, d standing for a domain discriminator the first pass never reaches."""

    C = (1.0, 3.0)

    def __init__(self, raise_on_call=None):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor([0.9, 0.3], dtype=torch.float64))
        self.d = torch.nn.Parameter(torch.tensor([0.5], dtype=torch.float64))
        self.register_buffer("pixel_mean", torch.zeros(3, 1, 1), False)
        self.register_buffer("pixel_std", torch.ones(3, 1, 1), False)
        self.calls, self.raise_on_call = 0, raise_on_call

    @property
    def device(self):
        return self.pixel_mean.device

    def forward(self, batched_inputs, target_inputs=None):
        self.calls += 1
        if self.calls == self.raise_on_call:
            raise RuntimeError("forward failed")
        t = torch.stack([x["t"] for x in batched_inputs]).mean(0)
        losses = {"loss_q": (torch.tensor(self.C, dtype=torch.float64) * (self.w - t) ** 2).sum()}
        if target_inputs is not None:
            losses["loss_disc"] = ((self.d * self.w.sum()) ** 2).sum()
        return losses


def _step(model, sam=True, rho=0.05, lr=0.1):
    cfg = add_mic_config(get_cfg())
    cfg.merge_from_list(["UDA.ENABLED", "True", "SOLVER.SAM.ENABLED", str(sam), "SOLVER.SAM.RHO", str(rho)])
    source = itertools.repeat([{"t": torch.tensor([0.2, -0.4], dtype=torch.float64)}])
    target = itertools.repeat([{"t": torch.zeros(2, dtype=torch.float64)}])
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    return MICStep(cfg, model, source, target, optimizer, task=MICTask(cfg))


def _hand_mic_sam_step(w, d, t, c, rho, lr):
    """First pass: loss_q alone (d untouched); second: loss_q + loss_disc at (w + e_w, d); SGD from (w, d)."""
    g = [2 * ci * (wi - ti) for wi, ci, ti in zip(w, c, t)]
    norm = math.sqrt(sum(x * x for x in g))
    wp = [wi + rho * gi / norm for wi, gi in zip(w, g)]
    gw = [2 * ci * (wi - ti) + 2 * d * d * sum(wp) for wi, ci, ti in zip(wp, c, t)]
    gd = 2 * d * sum(wp) ** 2
    return [wi - lr * gi for wi, gi in zip(w, gw)], d - lr * gd


def test_mic_step_perturbs_with_the_source_losses_and_steps_from_the_original_weights():
    model = _Quadratic()
    step = _step(model)
    with EventStorage(0) as storage:
        step.storage, step.iter = storage, 0
        step.run_step()
        logged = {k: v.latest() for k, v in storage.histories().items()}
    w, d = _hand_mic_sam_step([0.9, 0.3], 0.5, [0.2, -0.4], _Quadratic.C, 0.05, 0.1)
    assert model.w.tolist() == pytest.approx(w, rel=1e-12) and float(model.d) == pytest.approx(d, rel=1e-12)
    assert model.calls == 2  # one extra forward of the source batch
    g = [2 * 1.0 * 0.7, 2 * 3.0 * 0.7]
    assert logged["sam/grad_norm"] == pytest.approx(math.hypot(*g)) and logged["sam/skipped"] == 0.0
    assert "loss_q" in logged and "loss_disc" in logged

    # Off: one forward, and the plain SGD step differs.
    plain = _Quadratic()
    with EventStorage(0) as storage:
        off = _step(plain, sam=False)
        off.storage, off.iter = storage, 0
        off.run_step()
    assert plain.calls == 1 and not torch.allclose(plain.w, model.w)


def test_the_weights_are_restored_when_the_perturbed_step_raises():
    model = _Quadratic(raise_on_call=2)
    before = [p.detach().clone() for p in model.parameters()]
    step = _step(model)
    with EventStorage(0) as storage, pytest.raises(RuntimeError, match="forward failed"):
        step.storage, step.iter = storage, 0
        step.run_step()
    assert all(torch.equal(p.detach(), w) for p, w in zip(model.parameters(), before))


# ------------------------------------------------------------------------ DDP
def test_all_reduce_gradients_averages_over_ranks_and_keeps_a_gradient_any_rank_has(monkeypatch):
    """Two ranks simulated by two threads around a fake all_reduce (sum, as torch.distributed's)."""
    import threading

    from mic_det.engine import sam

    buffers, barrier, lock = {}, threading.Barrier(2), threading.Lock()

    def fake_all_reduce(buf):
        with lock:
            buffers[threading.get_ident()] = buf.clone()
        barrier.wait()
        buf.copy_(sum(buffers.values()))
        barrier.wait()

    monkeypatch.setattr(sam.dist, "is_initialized", lambda: True)
    monkeypatch.setattr(sam.dist, "get_world_size", lambda: 2)
    monkeypatch.setattr(sam.dist, "all_reduce", fake_all_reduce)
    # Rank 0: a grad (1, 2), b none, c none; rank 1: a grad (3, 4), b grad (2), c none.
    ranks = [_params([0.0, 0.0], [0.0], [0.0], grads=[[1.0, 2.0], None, None]),
             _params([0.0, 0.0], [0.0], [0.0], grads=[[3.0, 4.0], [2.0], None])]
    threads = [threading.Thread(target=sam.all_reduce_gradients, args=(ps,)) for ps in ranks]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for a, b, c in ranks:
        assert a.grad.tolist() == [2.0, 3.0] and b.grad.tolist() == [1.0] and c.grad is None


@pytest.fixture
def one_process_group(tmp_path):
    """A gloo process group of one rank: DDP's reducer (and its unused-parameter check) without spawning."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


def test_mic_step_under_ddp_with_a_parameter_the_first_pass_leaves_unused(one_process_group):
    from torch.nn.parallel import DistributedDataParallel

    # The hazard: a source-only backward under DDP (no find_unused_parameters), then the next forward.
    hazard = DistributedDataParallel(_Quadratic())
    t = [{"t": torch.zeros(2, dtype=torch.float64)}]
    hazard(t)["loss_q"].backward()
    with pytest.raises(RuntimeError, match="finished reduction"):
        hazard(t, target_inputs=t)

    model = DistributedDataParallel(_Quadratic())
    step = _step(model)
    with EventStorage(0) as storage:
        for i in range(2):
            step.storage, step.iter, storage.iter = storage, i, i
            step.run_step()
    w, d = _hand_mic_sam_step([0.9, 0.3], 0.5, [0.2, -0.4], _Quadratic.C, 0.05, 0.1)
    w, d = _hand_mic_sam_step(w, d, [0.2, -0.4], _Quadratic.C, 0.05, 0.1)
    assert model.module.w.tolist() == pytest.approx(w, rel=1e-12) and float(model.module.d) == pytest.approx(d)


# ------------------------------------------------------------------ train_net
@pytest.mark.slow  # a subprocess or a training run
def test_mic_sdat_config_trains_a_few_steps(tmp_path):
    """tools/train_net.py --config-file configs/synthetic_cls/mic_sdat.yaml on a tiny class-folder pair."""
    src = _write_tree(tmp_path / "src", n=4, seed=1)
    tgt = _write_tree(tmp_path / "tgt", n=4, dim=0.6, seed=2, flat=True)
    out = tmp_path / "run"
    cmd = [sys.executable, os.path.join(REPO, "tools", "train_net.py"),
           "--config-file", "configs/synthetic_cls/mic_sdat.yaml",
           "--register-class-folder", "sam_source", str(src), "--register-folder", "sam_target", str(tgt),
           "DATASETS.TRAIN", "('sam_source',)", "DATASETS.TRAIN_TARGET", "('sam_target',)", "DATASETS.TEST", "()",
           "MODEL.CLASSIFIER.NUM_CLASSES", "0", "INPUT.CLS.SIZE", "16", "INPUT.CLS.RESIZE", "18",
           "MIC.MASK_BLOCK_SIZE", "4", "MIC.BURN_IN_ITERS", "0", "SOLVER.MAX_ITER", "3", "SOLVER.STEPS", "()",
           "SOLVER.WARMUP_ITERS", "0", "SOLVER.IMS_PER_BATCH", "4", "TEST.EVAL_PERIOD", "0",
           "DATALOADER.NUM_WORKERS", "0", "SOLVER.CHECKPOINT_PERIOD", "100000", "SEED", "3", "OUTPUT_DIR", str(out)]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    (final,) = [m for m in read_metrics(out) if m.get("iteration") == 2]
    for key in ("loss_cls", "loss_cdan", "loss_mcc", "loss_cls_mic", "sam/grad_norm", "sam/first_pass_loss"):
        assert math.isfinite(final[key]), key
    assert final["sam/grad_norm"] > 0 and final["sam/skipped"] == 0
