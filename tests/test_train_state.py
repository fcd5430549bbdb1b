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
