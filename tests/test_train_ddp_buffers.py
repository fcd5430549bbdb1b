"""With 2 workers, every rank validates the model its checkpoint saves.

DDP's default (broadcast_buffers=True) copies rank 0's BatchNorm running statistics to the other ranks before each
forward, and nothing does after an epoch's last one: rank 1 scored its validation shard with statistics its own
last batch had moved, which no checkpoint holds, so the reported val metrics (best model, early stopping, Tune)
mixed two models. As mmengine, the workers keep their own statistics during an epoch and average them after it
(collectives.sync_buffers). A real 2-worker Ray Train run of the real STGCN++ loop and RayTrainContext (its DDP
wrapping included); each rank also saves the model it holds when it reports an epoch, which is after validation
with nothing trained in between.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import ray.cloudpickle
import torch
from ray.train.torch import TorchConfig, TorchTrainer

from recognizer_core.config import load_config
from recognizer_core.train.ray_run import RayTrainContext, backend, run_config, run_uri, scaling_config
from recognizer_core.train.state import STATE_FILE, unwrap
from recognizer_core.train.stgcn.config import TrainJobConfig
from recognizer_core.train.stgcn.job import prepare_run
from recognizer_core.train.stgcn.loop import train_loop
from tests import fight_reference as reference

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.ray  # a local Ray runtime and a 2-worker Ray Train run


class ModelSavingContext(RayTrainContext):
    """Ray Train's worker context that also saves, at each report, the model this rank holds."""

    def __init__(self, use_gpu: bool, out: str):
        super().__init__(use_gpu)
        self.out, self.model = Path(out), None

    def prepare_model(self, model):
        self.model = super().prepare_model(model)
        return self.model

    def report(self, metrics, checkpoint_dir=None):
        torch.save(unwrap(self.model).state_dict(), self.out / f"rank{self.rank}_epoch{int(metrics['epoch'])}.pt")
        super().report(metrics, checkpoint_dir)


def _train_saving_models(config: dict) -> None:
    cfg = TrainJobConfig.model_validate(config["cfg"])
    train_loop(cfg, config["dataset_path"], config["run_uri"], ModelSavingContext(cfg.scaling.use_gpu, config["out"]))


def test_every_rank_validates_the_model_its_checkpoint_saves(ray_local, tmp_path):
    name = "bn_stats"
    # the fight reference's tiny 2-worker run, one epoch (validated: the last one)
    cfg = load_config(TrainJobConfig, REPO / "configs" / reference.PRESET,
                      reference.sets("train.epochs=1", f"run.storage_path={tmp_path}", f"run.name={name}"))
    assert cfg.scaling.num_workers == 2
    rc = run_config(name=name, storage_path=str(tmp_path), max_failures=0, num_to_keep=2,
                    score_attribute=cfg.checkpoint.score_attribute)
    out = tmp_path / "held_models"
    out.mkdir()
    # the workers cannot import this test module by name (pytest's rootdir import): ship its functions by value
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    try:
        TorchTrainer(
            _train_saving_models,
            train_loop_config={"cfg": cfg.model_dump(mode="json"), "dataset_path": prepare_run(cfg, rc),
                               "run_uri": run_uri(rc), "out": str(out)},
            torch_config=TorchConfig(backend=backend(cfg.scaling)), scaling_config=scaling_config(cfg.scaling),
            run_config=rc).fit()
    finally:
        ray.cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    saved = torch.load(tmp_path / name / "checkpoint_epoch_0001" / STATE_FILE, map_location="cpu",
                       weights_only=True)["model"]
    assert any(k.endswith("running_var") for k in saved)  # the model has BatchNorm statistics to compare
    for rank in (0, 1):
        held = torch.load(out / f"rank{rank}_epoch1.pt", map_location="cpu", weights_only=True)
        assert held.keys() == saved.keys()
        differ = [k for k in saved if not torch.equal(held[k], saved[k])]
        assert not differ, f"rank {rank} validated with other values than the checkpoint's in {differ[:4]}"
