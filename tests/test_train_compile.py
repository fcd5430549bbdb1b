"""train.compile: the training steps run under torch.compile (inductor) and are the same steps as eager ones.

Real short trainings in one process (LocalContext, no Ray) with a tiny model on the CPU, where inductor generates
C++ (the GPU is where compiling pays; bench_train_step.py --compile times it). The CPU kernels step aside while
dynamo traces, so the compiled graph is built from the eager ops and must give the eager run's weights up to float
rounding; the run compiles once per batch shape, keeps eager-compatible checkpoints and resumes exactly."""
from __future__ import annotations

import pytest
import torch
from torch._dynamo.utils import counters

from recognizer_core.config import ConfigError
from recognizer_core.models.recognizer import build_recognizer
from recognizer_core.skeleton.demo_data import make_demo_clips
from recognizer_core.skeleton.store import write_dataset
from recognizer_core.train.context import LocalContext
from recognizer_core.train.stgcn.config import TrainJobConfig
from recognizer_core.train.stgcn.loop import train_loop
from test_train_inputs import _cfg as tiny_cfg

# Dropout off: inductor draws its random numbers with its own generator, so masks differ from eager's. The features
# on the training worker (pipeline.device=worker), so the compiled run compiles them too.
SETTINGS = ["model.dropout=0", "pipeline.device=worker"]
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _cfg(*extra: str) -> TrainJobConfig:
    return tiny_cfg(*SETTINGS, *extra)


def _weights(ckpt_dir, epoch: int) -> dict[str, torch.Tensor]:
    return torch.load(ckpt_dir / f"epoch_{epoch:04d}" / "training_state.pt", weights_only=True)["model"]


def test_cuda_graph_modes_need_a_gpu():
    with pytest.raises(ConfigError, match=r"train.compile=reduce-overhead captures CUDA graphs.*scaling.use_gpu"):
        _cfg("train.compile=reduce-overhead")
    with pytest.raises(ConfigError, match=r"wrong accumulated gradients with train.accumulative_counts=2"):
        _cfg("train.compile=reduce-overhead", "scaling.use_gpu=true", "train.accumulative_counts=2")
    with pytest.raises(ConfigError, match=r"is for one worker; with scaling.num_workers=2 use train.compile=default"):
        _cfg("train.compile=max-autotune", "scaling.use_gpu=true", "scaling.num_workers=2")
    assert _cfg("train.compile=reduce-overhead", "scaling.use_gpu=true").train.compile == "reduce-overhead"
    with pytest.raises(ConfigError, match="train.compile"):
        _cfg("train.compile=fast")
    assert _cfg("train.compile=off").train.compile == "none"  # YAML's `off` is false


def test_compiled_training_equals_eager_compiles_once_and_resumes_exactly(tmp_path, capsys):
    ds = str(write_dataset(make_demo_clips("fight", 24, seed=1), tmp_path / "ds",
                           label_names=("NonFight", "Fight")))
    runs = {}
    for name, extra in (("eager", []), ("compiled", ["train.compile=default"])):
        counters.clear()
        ctx = LocalContext(tmp_path / f"ckpt_{name}")
        summary = train_loop(_cfg("train.epochs=2", *extra), ds, str(tmp_path / name), ctx)
        runs[name] = summary, _weights(tmp_path / f"ckpt_{name}", 2), counters["stats"]["unique_graphs"]
    (eager, w_eager, eager_graphs), (compiled, w_comp, graphs) = runs["eager"], runs["compiled"]
    out = capsys.readouterr().out
    assert eager_graphs == 0 and "torch.compile" not in eager["batch_norm"] and eager["compile"]["first_step_s"] is None
    # four graphs for the whole run, the model's and the features' for full batches and again for an epoch's short
    # last one (17 train clips at batch 4: a batch of 1): no recompiles after validation's eval() or at the next epoch
    assert graphs == 4, graphs
    assert compiled["batch_norm"] == "inductor (torch.compile)" and compiled["compile"]["mode"] == "default"
    assert compiled["compile"]["first_step_s"] > 0 and "torch.compile (mode default): first step" in out
    assert "train/compile_s" in compiled["history"][0] and "train/compile_s" not in compiled["history"][1]
    # The checkpoint is the eager model's (same keys, no `_orig_mod.`) and the same model up to float rounding.
    # Not bias for bias: the compiled graph, like mmaction2, gives the conv biases before a BatchNorm rounding-noise
    # gradients where our eager path gives exact zeros, and AdamW scales noise up to lr-sized steps. A BatchNorm's
    # batch statistics cancel those biases and its running mean follows them, so the outputs agree.
    assert w_comp.keys() == w_eager.keys()
    for k in (k for k in w_eager if k.endswith("weight") or k == "backbone.data_bn.running_mean"):
        torch.testing.assert_close(w_comp[k], w_eager[k], rtol=1e-3, atol=1e-5, msg=lambda m: f"{k}: {m}")
    x = torch.randn(6, 2, 16, 17, 3, generator=torch.Generator().manual_seed(0))
    logits = []
    for w in (w_eager, w_comp):
        model = build_recognizer(_cfg().model).eval()
        model.load_state_dict(w)
        with torch.no_grad():
            logits.append(model(x))
    torch.testing.assert_close(logits[1], logits[0], rtol=1e-4, atol=1e-5)
    for a, b in zip(eager["history"], compiled["history"]):
        assert b["train/loss"] == pytest.approx(a["train/loss"], rel=1e-5)
        assert b["val/acc_top1"] == a["val/acc_top1"]

    # resumed from epoch 1 with a fresh compile: epoch 2 ends on the uninterrupted compiled run's weights
    ckpt = tmp_path / "ckpt_resume"
    train_loop(_cfg("train.epochs=1", "train.compile=default"), ds, str(tmp_path / "resume"), LocalContext(ckpt))
    train_loop(_cfg("train.epochs=2", "train.compile=default"), ds, str(tmp_path / "resume"), LocalContext(ckpt))
    resumed = _weights(ckpt, 2)
    assert all(torch.equal(resumed[k], w_comp[k]) for k in w_comp), "resumed compiled run drifted"
