"""Training dynamics against mmengine 0.10.7 / mmaction2 1.2.0 (what docs/training.md declares), in one process.

- The lr schedule moves on every batch (ParamSchedulerHook.after_train_iter), so with gradient accumulation an
  optimizer step uses the lr mmengine has at that iteration: 4 batches an epoch, accumulation 2, warmup 2 epochs
  gave 0.10, 0.40, 0.70 of the lr at the first steps where mmengine gives 0.229, 0.486, 0.743.
- Accumulation groups restart every epoch (a declared difference: mmengine carries them over, so it ran 3 steps
  where we run 4 in 2 epochs x 3 batches at accumulation 2); checkpoints then hold no pending gradient.
- Each clip is trained once an epoch with a short last batch, as mmengine's DataLoader (drop_last=False): the
  last batch was filled with repeated clips (33 clips at batch 32: 64 samples an epoch, 31 of them seen twice).
  Ranks with shards one clip apart still run equal batches (one repeat evens them, as DefaultSampler pads).
The expected lr values are mmengine's (LinearLR converted to iterations: start + (1 - start) * i / (end - 1)),
measured with its own schedulers (/tmp/review_dynamics/acc_out.txt of the review), not computed with ours.
"""
from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from recognizer_core.skeleton.demo_data import make_demo_clips
from recognizer_core.skeleton.store import write_dataset
from recognizer_core.train.context import LocalContext
from recognizer_core.train.stgcn import loop as loop_mod
from recognizer_core.train.stgcn.config import ScheduleConfig
from recognizer_core.train.stgcn.optim import lr_factor
from test_experiment_log_review import _lr_of_each_step
from test_train_inputs import _cfg

pytestmark = pytest.mark.usefixtures("one_torch_thread")
BASE = ["optim.auto_scale_lr=false", "optim.lr=0.01", "optim.type=sgd", "schedule.milestones=[]"]


def _dataset(tmp_path: Path, n: int) -> str:
    """make_demo_clips('fight', 16, seed=1) has 12 train clips, ('fight', 24, seed=1) 17."""
    return str(write_dataset(make_demo_clips("fight", n, seed=1), tmp_path / f"ds{n}",
                             label_names=("NonFight", "Fight"), overwrite=True))


def _train(tmp_path: Path, ds: str, name: str, *extra: str) -> tuple[dict, LocalContext]:
    ctx = LocalContext(tmp_path / f"ckpt_{name}")
    return loop_mod.train_loop(_cfg(*BASE, *extra), ds, str(tmp_path / f"run_{name}"), ctx), ctx


def _state(ctx: LocalContext, epoch: int) -> dict:
    return torch.load(ctx.root / f"epoch_{epoch:04d}" / "training_state.pt", weights_only=True)


def test_accumulated_steps_use_mmengines_per_iteration_warmup_lr(tmp_path):
    ds = _dataset(tmp_path, 16)  # 12 train clips, batch 3: 4 batches an epoch
    with _lr_of_each_step() as used:
        _train(tmp_path, ds, "acc", "train.epochs=3", "train.batch_size=3", "train.accumulative_counts=2",
               "schedule.warmup_epochs=2", "train.val_interval=3")
    # warmup over 8 iterations; the steps run at iterations 1, 3, 5, 7, 9, 11
    mmengine = [0.1 + 0.9 * i / 7 for i in (1, 3, 5)] + [1.0] * 3
    assert used == pytest.approx([0.01 * f for f in mmengine], rel=1e-9)


def test_accumulation_groups_restart_every_epoch_and_the_schedule_counts_batches(tmp_path):
    """The declared difference: 2 epochs x 3 batches at accumulation 2 are 4 optimizer steps here (groups [2, 1]
    per epoch), 3 in mmengine. The schedule still counts the 6 batches, as mmengine's does."""
    ds = _dataset(tmp_path, 16)  # 12 train clips, batch 4: 3 batches an epoch
    with _lr_of_each_step() as used:
        _, ctx = _train(tmp_path, ds, "groups", "train.epochs=2", "train.batch_size=4",
                        "train.accumulative_counts=2", "schedule.warmup_epochs=0", "train.val_interval=2")
    assert len(used) == 4
    state = _state(ctx, 2)
    assert state["scheduler"]["last_epoch"] == state["extra"]["global_step"] == 6


def test_each_clip_once_an_epoch_with_a_short_last_batch_and_samples_counted(tmp_path, monkeypatch):
    ds = _dataset(tmp_path, 24)  # 17 train clips, batch 4: 4 full batches and one of 1
    rows, inputs = [], loop_mod.model_inputs

    def counting(x, *args, **kwargs):
        out = inputs(x, *args, **kwargs)
        rows.append(out.shape[0])
        return out

    monkeypatch.setattr(loop_mod, "model_inputs", counting)
    summary, ctx = _train(tmp_path, ds, "short", "train.epochs=2", "train.batch_size=4", "train.val_interval=2",
                          "schedule.warmup_epochs=0")
    assert rows == [4, 4, 4, 4, 1] * 2  # not [4] * 5: three repeated clips filled the last batch
    for r in ctx.reports:  # samples/s counts each clip once
        assert r["train/samples_per_s"] * r["train/epoch_time_s"] == pytest.approx(17, rel=1e-9)


def test_ranks_one_clip_apart_run_equal_batches_and_see_each_clip_once(tmp_path, monkeypatch):
    """17 train clips on 2 ranks: shards of 9 and 8. Batch 4: both ranks run [4, 4, 1] (rank 1 repeats one clip
    to even the ranks, as DefaultSampler); before, both ran 3 batches of 4 and rank 1's last was all repeats."""
    ds = _dataset(tmp_path, 24)
    cfg = _cfg("train.batch_size=4")
    lengths: list[list[float]] = []  # what each simulated rank passed, in rank order

    def fake_max(values):  # all_reduce_max over the two simulated ranks
        if len(lengths) < 2:
            lengths.append(list(values))
        return [max(v) for v in zip(*lengths)]

    monkeypatch.setattr(loop_mod, "all_reduce_max", fake_max)
    for rank in (0, 1):  # each rank's shard sizes first, then both built with the maxima
        loop_mod.load_data(cfg, ds, SimpleNamespace(rank=rank, world_size=2, device=torch.device("cpu")))
    data = [loop_mod.load_data(cfg, ds, SimpleNamespace(rank=r, world_size=2, device=torch.device("cpu")))
            for r in (0, 1)]
    seen = []
    for d in data:
        sb = d.train_loader.dataset
        assert d.num_batches == 3 and [sb[(0, b)][0].shape[0] for b in range(3)] == [4, 4, 1]
        order, valid = sb.order(0)
        seen.extend(sb.clips.positions[order[valid]].tolist())
        assert len(order) == 9 and int((~valid).sum()) == 9 - len(sb.clips)  # rank 1: one repeat
    assert sorted(seen) == sorted(set(seen)) and len(seen) == 17  # each training clip once across the ranks


def test_a_resumed_run_with_accumulation_and_a_short_batch_is_exact_also_from_an_old_checkpoint(tmp_path, caplog):
    """12 train clips, batch 5: batches [5, 5, 2], accumulation 2: groups [2, 1]; resumed after epoch 2, the lr
    halves at epoch 3. A checkpoint written while the schedule counted optimizer steps (2 an epoch here) continues
    at its batch: read as batch 4 of 6, the schedule ran 2 batches late and epoch 3's first step kept the old lr."""
    ds = _dataset(tmp_path, 16)
    run = ("train.batch_size=5", "train.accumulative_counts=2", "schedule.warmup_epochs=0", "schedule.milestones=[2]",
           "train.val_interval=1")
    _, whole = _train(tmp_path, ds, "whole", "train.epochs=3", *run)
    for name, old in (("resumed", False), ("old", True)):
        _, ctx = _train(tmp_path, ds, name, "train.epochs=2", *run)
        if old:
            path = ctx.root / "epoch_0002" / "training_state.pt"
            state = torch.load(path, weights_only=True)
            state["scheduler"].update(last_epoch=4, _step_count=5)
            torch.save(state, path)
        with caplog.at_level(logging.WARNING, logger="recognizer"):
            _train(tmp_path, ds, name, "train.epochs=3", *run)
        assert ("counted 4 optimizer steps; it continues at batch 6" in caplog.text) == old
        a, b = _state(whole, 3), _state(ctx, 3)
        assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"]), name
        assert b["scheduler"]["last_epoch"] == 9


def test_declared_schedule_edge_cases():
    """docs/training.md declares both: mmengine leaves a one-iteration warmup at start_factor for the whole run
    (LinearLR with total_iters 0) and raises its cosine again after T_max; here the warmup ends at 1.0 and the
    cosine holds eta_min."""
    one = ScheduleConfig(warmup_epochs=1, milestones=[3])
    f = [lr_factor(i, iters_per_epoch=1, cfg=one, base_lr=1.0, cosine_t_max=1) for i in range(6)]
    assert f == pytest.approx([0.1, 1.0, 1.0, 1.0, 0.5, 0.5])  # mmengine: [0.1, 0.1, 0.1, 0.1, 0.05, 0.05]
    cos = ScheduleConfig(type="cosine", warmup_epochs=3, T_max=10, eta_min=1e-3)
    f = [lr_factor(e * 7, iters_per_epoch=7, cfg=cos, base_lr=1.0, cosine_t_max=10) for e in range(30)]
    assert f[13:] == pytest.approx([1e-3] * 17) and f[12] > 1e-3  # mmengine: 0.0254 at epoch 14, rising
    assert np.all(np.diff(f[3:]) <= 0)
