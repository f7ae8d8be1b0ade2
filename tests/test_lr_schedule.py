"""SOLVER.RESTART_ITERS: the lr schedule starts over at a restart, and each step decays its own phase."""
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.solver import build_lr_scheduler as build_d2_lr_scheduler

from mic_det.config import add_mic_config
from mic_det.engine.lr_schedule import build_lr_scheduler


def _cfg(**solver):
    cfg = get_cfg()
    add_mic_config(cfg)
    cfg.SOLVER.BASE_LR = 0.02
    cfg.SOLVER.GAMMA = 0.1
    cfg.SOLVER.WARMUP_ITERS = 10
    cfg.SOLVER.WARMUP_FACTOR = 0.001
    for k, v in solver.items():
        setattr(cfg.SOLVER, k, v)
    return cfg


def _lrs(cfg):
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=cfg.SOLVER.BASE_LR)
    sched = build_lr_scheduler(cfg, opt)
    lrs = []
    for _ in range(cfg.SOLVER.MAX_ITER):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return lrs


def test_without_restarts_it_is_detectron2s_schedule():
    cfg = _cfg(MAX_ITER=60, STEPS=(30, 45))
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.02)
    ref = build_d2_lr_scheduler(cfg, opt)
    expected = []
    for _ in range(60):
        expected.append(opt.param_groups[0]["lr"])
        opt.step()
        ref.step()
    assert _lrs(cfg) == pytest.approx(expected)


def test_restart_warms_up_again_to_base_lr_and_each_step_decays_its_phase():
    lrs = _lrs(_cfg(MAX_ITER=150, STEPS=(75, 137), RESTART_ITERS=(100,)))
    # Source phase: warm-up from 0.02 * 0.001, full lr, x0.1 at 75.
    assert lrs[0] == pytest.approx(0.02 * 0.001)
    assert lrs[50] == pytest.approx(0.02)
    assert lrs[80] == pytest.approx(0.002)
    assert lrs[99] == pytest.approx(0.002)
    # Adaptation phase: warm-up again from iteration 100, full lr, x0.1 at 137 (not x0.01).
    assert lrs[100] == pytest.approx(0.02 * 0.001)
    assert lrs[105] == pytest.approx(0.02 * (0.001 + 0.999 * 0.5))
    assert lrs[120] == pytest.approx(0.02)
    assert lrs[136] == pytest.approx(0.02)
    assert lrs[137] == pytest.approx(0.002)
    assert lrs[149] == pytest.approx(0.002)


def test_resumed_scheduler_continues_the_restarted_schedule():
    """Detectron2 restores ``last_epoch`` on resume; the multiplier is rebuilt from the config."""
    cfg = _cfg(MAX_ITER=150, STEPS=(75, 137), RESTART_ITERS=(100,))
    full = _lrs(cfg)
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.02)
    sched = build_lr_scheduler(cfg, opt)
    for _ in range(110):
        opt.step()
        sched.step()
    state = sched.state_dict()
    opt2 = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.02)
    resumed = build_lr_scheduler(cfg, opt2)
    resumed.load_state_dict(state)
    opt2.step()
    resumed.step()  # Detectron2's LRScheduler hook steps after each iteration; here: to iteration 111
    assert opt2.param_groups[0]["lr"] == pytest.approx(full[111])


def test_restart_at_or_after_max_iter_is_ignored():
    """A source model cut from a restarting config (its MAX_ITER at the restart) trains its source phase."""
    cut = _cfg(MAX_ITER=100, STEPS=(75, 137), RESTART_ITERS=(100,))
    plain = _cfg(MAX_ITER=100, STEPS=(75,))
    assert _lrs(cut) == pytest.approx(_lrs(plain))


@pytest.mark.parametrize("restarts", [(0,), (-5,), (120, 100), (100, 100)])
def test_bad_restarts_name_the_key(restarts):
    cfg = _cfg(MAX_ITER=150, STEPS=(75,), RESTART_ITERS=restarts)
    with pytest.raises(ValueError, match="SOLVER.RESTART_ITERS"):
        build_lr_scheduler(cfg, torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.02))


@pytest.mark.parametrize("steps, restarts, warned", [
    ((1200,), (), True),          # the source phase never decays before MIC starts
    ((750,), (), False),          # decayed, then MIC at the decayed lr
    ((750, 1375), (1000,), False),  # decayed, then restarted for adaptation (as the shipped detection configs)
])
def test_full_lr_warning_looks_at_the_source_model_mic_starts_from(caplog, steps, restarts, warned):
    from mic_det.engine.trainer import warn_if_adaptation_starts_at_full_lr

    cfg = _cfg(MAX_ITER=1500, STEPS=steps, RESTART_ITERS=restarts)
    cfg.MIC.ENABLED = True
    cfg.MIC.BURN_IN_ITERS = 1000
    sched = build_lr_scheduler(cfg, torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.02))
    with caplog.at_level("WARNING", logger="mic_det.engine.trainer"):
        warn_if_adaptation_starts_at_full_lr(cfg, sched)
    assert ("still at its training lr" in caplog.text) == warned
