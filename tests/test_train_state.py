"""Exact resume: model, optimizer, scheduler and all RNG streams come back as they were."""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from recognizer_core.train.experiment_log import ExperimentLogger
from recognizer_core.train.state import load_training_state, save_training_state


def _setup(seed):
    torch.manual_seed(seed)
    m = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(m.parameters(), lr=1e-2)
    sch = torch.optim.lr_scheduler.StepLR(opt, 2)
    return m, opt, sch


def _steps(m, opt, sch, n):
    for _ in range(n):
        random.random(), np.random.rand()  # a data pipeline draws from these streams too
        loss = m(torch.randn(4, 3)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sch.step()


def test_resume_continues_bit_exactly(tmp_path):
    m, opt, sch = _setup(0)
    _steps(m, opt, sch, 3)
    save_training_state(tmp_path, model=m, optimizer=opt, scheduler=sch, epoch=3, extra={"best": 0.5})
    _steps(m, opt, sch, 4)
    draws = (random.random(), float(np.random.rand()), torch.rand(1).item())

    m2, opt2, sch2 = _setup(1)  # different init: everything must come from the checkpoint
    state = load_training_state(tmp_path, model=m2, optimizer=opt2, scheduler=sch2)
    assert state["epoch"] == 3 and state["extra"] == {"best": 0.5}
    _steps(m2, opt2, sch2, 4)
    assert (random.random(), float(np.random.rand()), torch.rand(1).item()) == draws
    assert torch.equal(m.weight, m2.weight) and sch.last_epoch == sch2.last_epoch


def test_missing_state_names_path(tmp_path):
    m, _, _ = _setup(0)
    with pytest.raises(FileNotFoundError, match="training_state.pt"):
        load_training_state(tmp_path, model=m)


def test_resume_with_loss_scaling_from_a_run_without_it(tmp_path):
    """amp=auto picks bf16 (no scaler) on GPUs that have it, fp16 (scaler) on others: a run checkpointed on one
    and restarted by Ray Train on the other failed to resume ("source state dict is empty")."""
    m = torch.nn.Linear(2, 2)
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    save_training_state(tmp_path, model=m, optimizer=opt, scaler=torch.amp.GradScaler("cpu", enabled=False), epoch=3)
    scaler = torch.amp.GradScaler("cpu", enabled=True, init_scale=1024.0)
    assert load_training_state(tmp_path, model=m, optimizer=opt, scaler=scaler)["epoch"] == 3
    assert scaler.get_scale() == 1024.0  # a fresh scale
    save_training_state(tmp_path, model=m, optimizer=opt, scaler=scaler, epoch=4)  # and back: scaled -> bf16
    assert load_training_state(tmp_path, model=m, optimizer=opt, scaler=torch.amp.GradScaler("cpu", enabled=False),
                               )["epoch"] == 4


def test_logger_writes_tensorboard_and_skips_non_finite(tmp_path, capsys):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    lg = ExperimentLogger(tmp_path / "logs", config={"a": 1})
    lg.log({"train/loss": 0.5, "val/acc_top1": float("nan"), "note": "text"}, step=1)
    lg.log({"train/loss": 0.25}, step=2)
    lg.close()
    assert "train/loss=0.5" in capsys.readouterr().out
    acc = EventAccumulator(str(tmp_path / "logs" / "tensorboard"))
    acc.Reload()
    assert acc.Tags()["scalars"] == ["train/loss"]
    assert [e.value for e in acc.Scalars("train/loss")] == [0.5, 0.25]


def test_logger_disabled_on_other_ranks(tmp_path):
    lg = ExperimentLogger(tmp_path / "rank1", enabled=False)
    lg.log({"x": 1.0}, step=0)
    lg.close()
    assert not (tmp_path / "rank1").exists()


class _SecondDevice:
    """LocalContext on `meta`. Moving to a GPU keeps each Parameter object (the optimizer holds them); a move
    to `meta` would make new ones unless tensors are swapped in place, which is what this does."""

    def __new__(cls, root, device):
        from recognizer_core.train.context import LocalContext

        ctx = LocalContext(root, device=device)
        plain = ctx.prepare_model

        def prepare_model(model):
            keep = torch.__future__.get_swap_module_params_on_conversion()
            torch.__future__.set_swap_module_params_on_conversion(True)
            try:
                return plain(model)
            finally:
                torch.__future__.set_swap_module_params_on_conversion(keep)
        ctx.prepare_model = prepare_model
        return ctx


def test_resume_puts_optimizer_state_on_the_parameters_device(tmp_path):
    """A resumed worker moves the model to its device (a GPU) before the optimizer state is restored: torch moves
    each state tensor to its parameter's device *as it is then*, so the old order left Adam's moments on the CPU
    and the first step on a GPU failed. `meta` stands in for the second device here."""
    from recognizer_core.train.state import place_and_resume

    m, opt, sch = _setup(0)
    _steps(m, opt, sch, 2)
    scaler = torch.amp.GradScaler("cpu", enabled=True)
    save_training_state(tmp_path / "epoch_0001", model=m, optimizer=opt, scheduler=sch, scaler=scaler, epoch=1)

    m2, opt2, sch2 = _setup(1)
    scaler2 = torch.amp.GradScaler("cpu", enabled=True)
    placed, state = place_and_resume(_SecondDevice(tmp_path, device="meta"), m2, optimizer=opt2, scheduler=sch2,
                                     scaler=scaler2)
    assert next(placed.parameters()).device.type == "meta"
    assert state["epoch"] == 1 and sch2.last_epoch == 2
    on = [(p.device, st) for group in opt2.param_groups for p in group["params"] for st in [opt2.state[p]]]
    assert on and all(p_dev.type == "meta" for p_dev, _ in on)
    for p_dev, st in on:
        for name, value in st.items():
            # torch keeps Adam's scalar step counter on the CPU by design (unless fused/capturable)
            if torch.is_tensor(value) and name != "step":
                assert value.device == p_dev, f"optimizer state {name!r} on {value.device}, parameter on {p_dev}"
    for value in scaler2.state_dict().values():
        assert not torch.is_tensor(value) or value.device.type == "meta"


def test_the_test_after_training_uses_the_exported_best_model_on_a_plateau(tmp_path):
    """Ray keeps the latest of tied best scores (it drops the earliest first); the loop exports the first epoch
    that reached the best score, as mmengine does. The test after training took Ray's, so the job printed the
    test score of epoch 6 next to best_epoch 3 and the exported model of epoch 3."""
    import json

    from ray.train import Checkpoint, Result

    from recognizer_core.train.stgcn.job import checkpoint_to_test

    kept = []
    for epoch in range(6, 11):   # epochs 3..10 all scored 0.5; Ray kept 6..10
        (tmp_path / f"checkpoint_epoch_{epoch:04d}").mkdir()
        kept.append((Checkpoint(str(tmp_path / f"checkpoint_epoch_{epoch:04d}")), {"epoch": epoch, "val/acc": 0.5}))
    result = Result(metrics={}, checkpoint=kept[-1][0], error=None, path=str(tmp_path), best_checkpoints=kept)
    ckpt, epoch = checkpoint_to_test(str(tmp_path), result, "val/acc")     # no exported model: Ray's best
    assert isinstance(ckpt, Checkpoint) and epoch == 6
    (tmp_path / "best_acc_epoch_3.pth").write_bytes(b"weights")
    (tmp_path / "summary.json").write_text(json.dumps({"best": {"epoch": 3, "file": "best_acc_epoch_3.pth"}}))
    assert checkpoint_to_test(str(tmp_path), result, "val/acc") == (str(tmp_path / "best_acc_epoch_3.pth"), 3)
