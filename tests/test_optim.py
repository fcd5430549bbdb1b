"""Optimizers, auto_scale_lr and the guide's schedules with mmengine's semantics, step by step."""
from __future__ import annotations

import math

import pytest
import torch

from recognizer_core.train.stgcn.config import OptimConfig, ScheduleConfig
from recognizer_core.train.stgcn.optim import build_optimizer, build_scheduler, lr_factor, scaled_lr


def _lrs(sched_cfg: ScheduleConfig, iters: int, epochs: int, base_lr=1.0, t_max=25) -> list[float]:
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=base_lr)
    sched = build_scheduler(opt, sched_cfg, iters_per_epoch=iters, cosine_t_max=t_max)
    out = []
    for _ in range(iters * epochs):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_linear_warmup_per_iteration_then_multistep_from_warmup_end():
    # LinearLR(start_factor=0.1, end=3 epochs, convert_to_iter_based) with 4 iterations per epoch: 12 warmup
    # steps from 0.1 to 1.0 (mmengine: total_iters = end - begin - 1 = 11); then MultiStepLR(begin=3,
    # milestones=[15, 25]) counts from its begin, so lr halves at epochs 18 and 28.
    lrs = _lrs(ScheduleConfig(), iters=4, epochs=30)
    assert lrs[0] == pytest.approx(0.1)
    assert lrs[1] == pytest.approx(0.1 + 0.9 / 11)
    assert lrs[11] == pytest.approx(1.0) and lrs[12] == pytest.approx(1.0)
    per_epoch = lrs[::4]
    assert per_epoch[3:18] == pytest.approx([1.0] * 15)
    assert per_epoch[18:28] == pytest.approx([0.5] * 10)
    assert per_epoch[28:] == pytest.approx([0.25] * 2)


def test_a_fractional_warmup_ends_where_mmengine_ends_it():
    # LinearLR(end=2.5 epochs, convert_to_iter_based) at 7 iterations per epoch: mmengine truncates to end=17
    # iterations (build_iter_from_epoch: int(2.5 * 7)), so lr reaches 1.0 at step 16; rounding made it 18 steps.
    lrs = _lrs(ScheduleConfig(warmup_epochs=2.5), iters=7, epochs=4)
    assert lrs[15] < 1.0 and lrs[16] == pytest.approx(1.0)
    assert lrs[1] == pytest.approx(0.1 + 0.9 / 16)


def test_cosine_after_warmup_reaches_eta_min():
    cfg = ScheduleConfig(type="cosine", warmup_epochs=5, eta_min=1e-6)
    base = 1e-3
    per_epoch = _lrs(cfg, iters=2, epochs=30, base_lr=base, t_max=25)[::2]
    assert per_epoch[5] == pytest.approx(base)
    assert per_epoch[5 + 10] == pytest.approx(1e-6 + (base - 1e-6) * (1 + math.cos(math.pi * 10 / 25)) / 2)
    assert lr_factor(10_000, iters_per_epoch=2, cfg=cfg, base_lr=base, cosine_t_max=25) * base == \
        pytest.approx(1e-6)


def test_scheduler_state_resumes_exactly():
    cfg = ScheduleConfig(warmup_epochs=1, milestones=[2])
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([p], lr=0.1)
    sched = build_scheduler(opt, cfg, iters_per_epoch=3, cosine_t_max=10)
    for _ in range(7):
        opt.step()
        sched.step()
    state = (opt.state_dict(), sched.state_dict())
    p2 = torch.nn.Parameter(torch.zeros(1))
    opt2 = torch.optim.AdamW([p2], lr=0.1)
    sched2 = build_scheduler(opt2, cfg, iters_per_epoch=3, cosine_t_max=10)
    opt2.load_state_dict(state[0])
    sched2.load_state_dict(state[1])
    for _ in range(5):
        opt.step(), sched.step(), opt2.step(), sched2.step()
        assert opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"]


def test_auto_scale_lr_and_optimizer_choice():
    cfg = OptimConfig()
    assert scaled_lr(cfg, world_size=4, batch_size=32) == pytest.approx(1e-4)  # 128 = base_batch_size
    assert scaled_lr(cfg, world_size=2, batch_size=16) == pytest.approx(1e-4 * 32 / 128)
    assert scaled_lr(OptimConfig(auto_scale_lr=False), 8, 64) == 1e-4
    params = [torch.nn.Parameter(torch.zeros(2))]
    adamw = build_optimizer(params, cfg, 1e-4)
    assert isinstance(adamw, torch.optim.AdamW)
    assert adamw.defaults["betas"] == (0.9, 0.999) and adamw.defaults["weight_decay"] == 1e-3
    sgd = build_optimizer(params, OptimConfig(type="sgd", lr=0.01, weight_decay=5e-4, nesterov=True), 0.01)
    assert isinstance(sgd, torch.optim.SGD) and sgd.defaults["nesterov"] and sgd.defaults["momentum"] == 0.9


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "cpu"])
@pytest.mark.parametrize("kind", ["adamw", "sgd"])
def test_a_nonfinite_step_leaves_weights_and_optimizer_state_alone(kind, fused):
    # On a GPU the job builds fused optimizers and tells a non-finite step to skip itself (found_inf, GradScaler's
    # protocol). The fused kernels run on a CPU too, so that path is tested here. On a CPU (not fused) the step is
    # left out after a host check: it zeroed the gradients until 2026-12-05, and momentum / Adam's moments still
    # moved the weights by most of a step.
    from types import SimpleNamespace

    from recognizer_core.train.nonfinite import NonFiniteGuard
    from recognizer_core.train.stgcn.loop import _optimizer_step

    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    cfg = SimpleNamespace(optim=OptimConfig(type=kind, momentum=0.9))
    opt = build_optimizer(model.parameters(), cfg.optim, 0.1, fused=fused)
    assert all(bool(g["fused"]) == fused for g in opt.param_groups)
    tr = SimpleNamespace(model=model, optimizer=opt, scheduler=torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0),
                         scaler=torch.amp.GradScaler("cpu", enabled=False), amp=SimpleNamespace(scaler=False),
                         guard=NonFiniteGuard(torch.device("cpu"), 5))

    def step(nan: bool) -> tuple[list[torch.Tensor], list[torch.Tensor], dict, dict]:
        before = [p.detach().clone() for p in model.parameters()]
        model(torch.randn(2, 4)).sum().backward()
        if nan:
            model.weight.grad[0, 0] = float("nan")
        state = {(i, k): v.clone() for i, s in enumerate(opt.state.values()) for k, v in s.items()
                 if torch.is_tensor(v)}
        _optimizer_step(tr, cfg)
        after = {(i, k): v for i, s in enumerate(opt.state.values()) for k, v in s.items() if torch.is_tensor(v)}
        return before, [p.detach() for p in model.parameters()], state, after

    before, after, _, _ = step(nan=False)
    assert all(not torch.equal(a, b) for a, b in zip(before, after))  # a finite step moves every parameter
    before, after, state, state_after = step(nan=True)
    assert all(torch.equal(a, b) for a, b in zip(before, after)), "a non-finite step moved the weights"
    assert state.keys() == state_after.keys() and all(torch.equal(state[k], state_after[k]) for k in state)
    assert all(torch.isfinite(p).all() for p in model.parameters()) and not hasattr(opt, "found_inf")
    before, after, _, _ = step(nan=False)  # and the next finite step trains again
    assert all(not torch.equal(a, b) for a, b in zip(before, after))
