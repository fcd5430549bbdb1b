"""train.class_weight reaches the training loss: one fixed batch through the loop's own step (train_epoch), and
its reported loss is the class-weighted cross entropy of the logits the model produced, not the plain one.

A mutation that passed `weight=None` in loop.py left the whole suite green: nothing compared the loss to a
weighted reference. No Ray, one process (LocalContext), a tiny model."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from recognizer_core.config import load_config
from recognizer_core.train.context import LocalContext
from recognizer_core.train.experiment_log import ExperimentLogger
from recognizer_core.train.stgcn.config import TrainJobConfig
from recognizer_core.train.stgcn.loop import Data, build_trainer_parts, train_epoch

REPO = Path(__file__).resolve().parents[1]
WEIGHT = [1.2, 1.0]  # the fight presets' NonFight:Fight weights
# dropout 0: the step's logits are then a function of the batch alone (the hook below still reads the real ones)
TINY = ["model.num_stages=2", "model.base_channels=8", "model.inflate_stages=[2]", "model.down_stages=[2]",
        "model.dropout=0", "pipeline.clip_len=16", "pipeline.num_clips=2", "train.batch_size=6",
        "data.loader_workers=0", "schedule.warmup_epochs=0", "train.log_interval=0",
        f"train.class_weight=[{WEIGHT[0]}, {WEIGHT[1]}]"]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class _NoSampler:
    def set_epoch(self, epoch: int) -> None:
        pass


def test_training_loss_is_the_class_weighted_cross_entropy(tmp_path):
    cfg = load_config(TrainJobConfig, REPO / "configs/fight_stable.yaml", TINY)
    ctx = LocalContext(tmp_path / "ckpt")
    tr, state = build_trainer_parts(cfg, ctx, num_batches=1)
    assert tr.class_weight is not None and tr.class_weight.tolist() == pytest.approx(WEIGHT)
    # a fresh head predicts ~50/50, where every clip's loss is ~log 2 and any weighting gives the same mean:
    # lean it towards class 0 so the two classes' losses, and hence weighted and plain means, differ
    with torch.no_grad():
        tr.model.cls_head.fc.bias.copy_(torch.tensor([1.5, -1.5]))
    g = torch.Generator().manual_seed(0)
    # (N, num_clips, M, T, V, C) model inputs (pipeline.device=cpu: the loader's tensor goes to the model as is);
    # an unbalanced batch, so the weighted mean differs from the plain one
    x = torch.randn(6, 2, 4, 16, 17, 3, generator=g)
    y = torch.tensor([0, 0, 0, 0, 1, 1])
    data = Data(train_loader=[(x, y, None)], train_sampler=_NoSampler(), val_loader=[], val_sampler=_NoSampler(),
                num_batches=1, names=["NonFight", "Fight"], counts=(6, 0, 0, 0))
    seen = []
    hook = tr.step_model.register_forward_hook(lambda mod, inp, out: seen.append(out.detach().clone()))
    try:
        metrics = train_epoch(tr, data, cfg, ctx, state, ExperimentLogger(tmp_path / "logs", enabled=False), ep=1)
    finally:
        hook.remove()
    assert len(seen) == 1 and seen[0].shape == (12, 2)  # every clip of every sample is one loss row
    target = y.repeat_interleave(2)  # each sample's label for each of its clips (mmaction2's loss)
    weighted = F.cross_entropy(seen[0].float(), target, weight=torch.tensor(WEIGHT)).item()
    plain = F.cross_entropy(seen[0].float(), target).item()
    assert metrics["train/loss"] == pytest.approx(weighted, rel=1e-5, abs=1e-6)
    # the check above can tell the two apart: with this batch they are far from equal
    assert abs(weighted - plain) > 1e-3 and metrics["train/loss"] != pytest.approx(plain, rel=1e-5, abs=1e-6)
