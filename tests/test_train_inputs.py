"""Bad inputs to the STGCN++ training job: a clear error naming what is wrong, or a logged skip; never a silent
wrong result. The loop runs in one process (LocalContext, no Ray) with a tiny model, so these are fast."""
from __future__ import annotations

import contextlib
import json
import logging
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from recognizer_core.config import ConfigError, load_config
from recognizer_core.skeleton.clip import SkeletonDataError
from recognizer_core.skeleton.demo_data import make_demo_clips
from recognizer_core.skeleton.store import write_dataset
from recognizer_core.train.stgcn import loop as loop_mod
from recognizer_core.train.stgcn.config import TrainJobConfig
from recognizer_core.train.stgcn.loop import train_loop
from recognizer_core.train.context import LocalContext

REPO = Path(__file__).resolve().parents[1]
TINY = ["model.num_stages=2", "model.base_channels=8", "model.inflate_stages=[2]", "model.down_stages=[2]",
        "pipeline.clip_len=16", "train.epochs=1", "train.batch_size=4", "train.val_interval=1",
        "data.loader_workers=0", "schedule.warmup_epochs=0", "train.log_interval=0", "train.test_after_train=false"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _cfg(*extra: str) -> TrainJobConfig:
    return load_config(TrainJobConfig, REPO / "configs/fight_stable.yaml", TINY + list(extra))


def _dataset(tmp_path: Path, edit=None, n: int = 24, label_names=("NonFight", "Fight")) -> str:
    clips = make_demo_clips("fight", n, seed=1)
    if edit:
        edit(clips)
    return str(write_dataset(clips, tmp_path / "ds", label_names=label_names, overwrite=True))


def _run(cfg, ds, tmp_path):
    ctx = LocalContext(tmp_path / "ckpt")
    return train_loop(cfg, ds, str(tmp_path / "run"), ctx), ctx


def test_a_preset_class_order_other_than_the_datasets_is_an_error(tmp_path):
    """Extraction's default class order is the sorted folder names (RWF-2000: Fight=0, NonFight=1); the fight
    presets say [NonFight, Fight]. The preset's names were used as they were: reports, class weights and the
    exported model's background class swapped, silently."""
    from recognizer_core.config import ConfigError
    from recognizer_core.train.stgcn.job import build_trainer

    def sorted_names(clips):  # as extraction stores them by default
        for c in clips:
            c.label = 1 - c.label
    ds = _dataset(tmp_path, sorted_names, label_names=("Fight", "NonFight"))
    with pytest.raises(ConfigError, match=r"stores its labels as \['Fight', 'NonFight'\] \(the same classes in "
                                          r"another order\).*data.label_names=\['Fight', 'NonFight'\]"):
        build_trainer(_cfg(f"data.path={ds}", f"run.storage_path={tmp_path}"))  # on the driver, before workers
    with pytest.raises(ConfigError, match="the same classes in another order"):
        _run(_cfg(), ds, tmp_path)
    summary, _ = _run(_cfg("data.label_names=[Fight, NonFight]"), ds, tmp_path)  # the dataset's order trains
    assert summary["epochs_run"] == 1


def test_empty_split_is_an_error_naming_it(tmp_path):
    def no_val(clips):
        for c in clips:
            c.split = "train" if c.split == "val" else c.split
    ds = _dataset(tmp_path, no_val)
    with pytest.raises(SkeletonDataError, match="split 'val' is empty"):
        _run(_cfg(), ds, tmp_path)
    # the driver checks it too, before any Ray worker starts (no retries of a deterministic error)
    from recognizer_core.train.stgcn.job import build_trainer

    with pytest.raises(SkeletonDataError, match="split 'val' is empty"):
        build_trainer(_cfg(f"data.path={ds}", f"run.storage_path={tmp_path}"))


def test_labels_outside_num_classes_name_the_clips(tmp_path):
    def bad_label(clips):
        clips[2].label, clips[2].label_name = 5, ""
        clips[2].split = "train"
    ds = _dataset(tmp_path, bad_label, label_names=None)
    with pytest.raises(SkeletonDataError, match=r"labels outside \[0, 2\).*" + "fight_"):
        _run(_cfg(), ds, tmp_path)


def test_all_zero_skeletons_are_skipped_and_counted_or_rejected(tmp_path, capsys):
    zero_ids = []

    def zero(clips):
        for c in [c for c in clips if c.split == "train"][:3] + [c for c in clips if c.split == "test"][:1]:
            c.keypoint[:] = 0
            c.keypoint_score[:] = 0
            zero_ids.append(c.clip_id)
    ds = _dataset(tmp_path, zero)
    summary, _ = _run(_cfg(), ds, tmp_path)
    assert summary["epochs_run"] == 1
    assert "skipped all-zero clips: 3 train, 0 val (not scored)" in capsys.readouterr().out
    # the test job says how many it did not score (mmaction2 scores every clip: its numbers count them)
    from recognizer_core.skeleton.store import SkeletonDataset
    from recognizer_core.train.stgcn.evaluate import test_loop

    test = test_loop(_cfg(), ds, str(tmp_path / "run"), str(tmp_path / "test"), LocalContext(tmp_path / "t"),
                     "test")
    n_test = SkeletonDataset(ds).splits()["test"]
    assert test["skipped_empty_clips"] == 1 and test["num_samples"] == n_test - 1
    assert json.loads((tmp_path / "test" / "test_metrics.json").read_text())["skipped_empty_clips"] == 1
    assert "1 all-zero clip(s) skipped, not scored" in capsys.readouterr().out
    with pytest.raises(SkeletonDataError, match=f"{zero_ids[0]}.*all zero"):
        _run(_cfg("data.skip_empty_clips=false", "run.name=strict"), ds, tmp_path / "strict")


def test_single_class_validation_warns_and_still_reports(tmp_path, caplog):
    def one_class(clips):
        for c in clips:
            if c.split == "val" and c.label == 1:
                c.split = "train"
    ds = _dataset(tmp_path, one_class)
    with caplog.at_level(logging.WARNING, logger="recognizer"):
        summary, ctx = _run(_cfg(), ds, tmp_path)
    assert "single class" in caplog.text and "only 1 class" in caplog.text
    assert ctx.reports[-1]["val/recall_Fight"] == 0.0  # no Fight clips: reported as 0, with the warning above
    report = json.loads((tmp_path / "ckpt" / "epoch_0001" / "metrics.json").read_text())["val_report"]
    assert report["num_classes_present"] == 1 and report["warnings"]


class _NaNModel(torch.nn.Module):
    """Wraps the real model; its logits are NaN on the calls listed in `bad` (counted from 0)."""

    def __init__(self, inner, bad):
        super().__init__()
        self.inner, self.bad, self.calls = inner, set(bad), 0

    def forward(self, x):
        out = self.inner(x)
        self.calls += 1
        return out * float("nan") if self.calls - 1 in self.bad else out

    def predict(self, x):
        return self.inner.predict(x)


def test_nan_losses_are_skipped_then_stop_the_run(tmp_path, monkeypatch):
    ds = _dataset(tmp_path)
    real_build = loop_mod.build_recognizer
    made = []

    def build(cfg, bad=(0, 1)):
        m = _NaNModel(real_build(cfg), bad)
        made.append(m)
        return m
    monkeypatch.setattr(loop_mod, "build_recognizer", build)
    summary, ctx = _run(_cfg("train.epochs=2"), ds, tmp_path)
    assert ctx.reports[0]["train/skipped_steps"] == 2 and ctx.reports[1]["train/skipped_steps"] == 0
    assert np.isfinite(ctx.reports[0]["train/loss"]) and summary["epochs_run"] == 2
    # every step NaN: after train.max_nonfinite_steps in a row, a clear error instead of a silent no-op run
    monkeypatch.setattr(loop_mod, "build_recognizer", lambda cfg: build(cfg, bad=range(10_000)))
    with pytest.raises(FloatingPointError, match="non-finite losses in a row"):
        _run(_cfg("train.max_nonfinite_steps=3", "run.name=nan"), ds, tmp_path / "nan")


def test_bad_config_names_the_field(tmp_path, capsys):
    sys.path.insert(0, str(REPO))
    from rayjobs.train_stgcn import main

    assert main(["--config", str(REPO / "configs/fight_stable.yaml"), "--set", "train.class_weight=[1.0]"]) == 2
    err = capsys.readouterr().err
    assert "train.class_weight has 1 entries but model.num_classes=2" in err
    with pytest.raises(ConfigError, match="model.base_channels"):
        _cfg("model.base_channels=-1")
    with pytest.raises(ConfigError, match="train.amp=fp16 needs scaling.use_gpu"):
        _cfg("train.amp=fp16")
    with pytest.raises(ConfigError, match="optim.lr_typo: unknown field"):
        _cfg("optim.lr_typo=1")


def test_recipe_options_bf16_accumulation_checkpointing_sgd_cosine_early_stop(tmp_path):
    ds = _dataset(tmp_path)
    cfg = _cfg("train.epochs=4", "train.amp=bf16", "train.accumulative_counts=2", "model.with_cp=true",
               "optim.type=sgd", "optim.lr=0.01", "optim.nesterov=true", "schedule.type=cosine",
               "train.early_stopping.enabled=true", "train.early_stopping.patience=1",
               "train.early_stopping.min_delta=1.0")
    summary, ctx = _run(cfg, ds, tmp_path)
    # the first validation improves on nothing, the second cannot improve by min_delta=1.0: stop after it
    assert summary["stopped_early"] and summary["epochs_run"] == 2 and len(ctx.reports) == 2
    assert all(np.isfinite(r["train/loss"]) for r in ctx.reports)
    state = torch.load(tmp_path / "ckpt" / "epoch_0002" / "training_state.pt", weights_only=True)
    n_train = sum(1 for c in make_demo_clips("fight", 24, seed=1) if c.split == "train")
    # the schedule counts batches (ceil(n / batch) an epoch), accumulation or not, as mmengine's does
    assert state["scheduler"]["last_epoch"] == 2 * -(-n_train // 4) == state["extra"]["global_step"]
    assert "momentum_buffer" in next(iter(state["optimizer"]["state"].values()))  # SGD really used
    # started again, the stopped run stays stopped: it trained more epochs past the stop before
    again, ctx2 = _run(cfg, ds, tmp_path)
    assert again["stopped_early"] and again["epochs_run"] == 2 and ctx2.reports == []


def test_a_short_last_accumulation_group_takes_its_mean_gradient(tmp_path):
    """Accumulating over more batches than an epoch has: the one group is short, and its gradient was divided by
    accumulative_counts instead of its own size (a smaller step). It must equal accumulating exactly the epoch."""
    ds = _dataset(tmp_path)
    n_batches = -(-sum(1 for c in make_demo_clips("fight", 24, seed=1) if c.split == "train") // 4)
    weights = []
    for i, k in enumerate((n_batches, n_batches + 3)):
        ctx = LocalContext(tmp_path / f"ckpt{i}")
        train_loop(_cfg("train.epochs=1", f"train.accumulative_counts={k}", "optim.type=sgd", "optim.lr=0.1",
                        "optim.momentum=0"), ds, str(tmp_path / f"run{i}"), ctx)
        weights.append(torch.load(tmp_path / f"ckpt{i}" / "epoch_0001" / "training_state.pt", weights_only=True))
    assert all(torch.allclose(weights[0]["model"][k], weights[1]["model"][k], atol=1e-6) for k in weights[0]["model"])


def test_deterministic_kernels_during_the_run_only_and_same_weights(tmp_path):
    """train.deterministic (for GPU runs) holds during the run, is undone after it, and does not change CPU math."""
    seen = []

    class Watching(LocalContext):
        def report(self, metrics, checkpoint_dir):
            seen.append((torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark))
            return super().report(metrics, checkpoint_dir)

    ds = _dataset(tmp_path)
    weights = []
    for i, det in enumerate(("false", "true")):
        ctx = Watching(tmp_path / f"ckpt{i}")
        train_loop(_cfg("train.epochs=2", f"train.deterministic={det}"), ds, str(tmp_path / f"run{i}"), ctx)
        weights.append(torch.load(tmp_path / f"ckpt{i}" / "epoch_0002" / "training_state.pt", weights_only=True))
    assert seen == [(False, False)] * 2 + [(True, False)] * 2
    assert not torch.are_deterministic_algorithms_enabled()
    assert all(torch.equal(weights[0]["model"][k], weights[1]["model"][k]) for k in weights[0]["model"])


def test_resuming_with_a_different_model_is_refused(tmp_path):
    ds = _dataset(tmp_path)
    _run(_cfg(), ds, tmp_path)
    with pytest.raises(ValueError, match=r"model or pipeline changed.*model.base_channels: checkpoint 8, config 16"):
        _run(_cfg("model.base_channels=16"), ds, tmp_path)
    # another batch size (or worker count): the restored schedule counted other steps per epoch
    with pytest.raises(ValueError, match=r"steps per epoch changed \(train.batch_size: checkpoint 4, config 8\)"):
        _run(_cfg("train.batch_size=8"), ds, tmp_path)
    # other data under the same run.name (the demo preset, then real data): a finished demo run was 'resumed'
    # (the checkpoint's dataset.json decides: the run folder's config.yaml names a demo run's store as data.path)
    other = str(write_dataset(make_demo_clips("fight", 24, seed=2), tmp_path / "other",
                              label_names=("NonFight", "Fight")))
    with pytest.raises(ValueError, match=r"trained on other data \(dataset: checkpoint '.*/ds', config '.*/other'"):
        _run(_cfg(f"data.path={other}"), other, tmp_path)
    with pytest.raises(ValueError, match=r"other data \(data.demo_num_clips: checkpoint 96, config 48\)"):
        _run(_cfg("data.demo_num_clips=48"), ds, tmp_path)
    # the checkpoint's optimizer and schedule are restored over the config: a new lr was printed and not used,
    # and SGD loading AdamW's state failed at its first step (KeyError: 'momentum')
    with pytest.raises(ValueError, match=r"optimizer or schedule changed \(optim.type: checkpoint 'adamw', "
                                         r"config 'sgd'\)"):
        _run(_cfg("optim.type=sgd"), ds, tmp_path)
    with pytest.raises(ValueError, match=r"optimizer or schedule changed \(optim.lr: checkpoint 0.0001, config 0.01\)"):
        _run(_cfg("optim.lr=0.01"), ds, tmp_path)


def test_resuming_on_the_same_data_written_another_way_continues(tmp_path):
    ds = _dataset(tmp_path)
    _run(_cfg(f"data.path={ds}"), ds, tmp_path)
    summary, _ = _run(_cfg(f"data.path={ds}/", "train.epochs=2"), ds, tmp_path)
    assert summary["epochs_run"] == 2
    assert '"resumed_from_epoch": 1' in (tmp_path / "run" / "resume_log.jsonl").read_text()


def test_mmaction_pkl_inputs_become_one_store(tmp_path):
    from recognizer_core.skeleton.mmaction_pkl import write_mmaction_pkl
    from recognizer_core.skeleton.store import SkeletonDataset
    from recognizer_core.train.stgcn.data import prepare_dataset

    clips = make_demo_clips("falldown", 24, seed=2)
    want = {s: sorted(c.clip_id for c in clips if c.split == s) for s in ("train", "val", "test")}
    # one pickle with mmaction2's split mapping
    one = write_mmaction_pkl(clips, tmp_path / "all.pkl")
    cfg = _cfg(f"data.train_pkl={one}")
    store = SkeletonDataset(prepare_dataset(cfg.data, tmp_path / "datasets"))
    for split, ids in want.items():
        assert sorted(store.index(split, columns=["clip_id"])["clip_id"].to_pylist()) == ids
    summary, _ = _run(cfg, str(store.path), tmp_path)
    assert summary["epochs_run"] == 1
    # the guide's layout: one bare pickle per split (no split mapping), each serving one role
    paths = {s: write_mmaction_pkl([c for c in clips if c.split == s], tmp_path / f"{s}.pkl", layout="list")
             for s in want}
    cfg = _cfg(f"data.train_pkl={paths['train']}", f"data.val_pkl={paths['val']}",
               f"data.test_pkl={paths['test']}")
    store = SkeletonDataset(prepare_dataset(cfg.data, tmp_path / "datasets"))
    assert store.splits() == {s: len(ids) for s, ids in want.items()}
    # without test_pkl the test job uses val.pkl (its default), which still serves validation whole
    cfg = _cfg(f"data.train_pkl={paths['train']}", f"data.val_pkl={paths['val']}")
    store = SkeletonDataset(prepare_dataset(cfg.data, tmp_path / "datasets"))
    assert store.splits() == {"train": len(want["train"]), "val": len(want["val"]), "test": len(want["val"])}
    # a shared pickle without the requested split is an error naming the split and the file
    with pytest.raises(SkeletonDataError, match="all.pkl: no split 'validation'"):
        prepare_dataset(_cfg(f"data.train_pkl={one}", "data.val_split=validation").data, tmp_path / "d2")


def test_a_rank_with_nothing_to_evaluate_pads_instead_of_failing(tmp_path):
    from recognizer_core.skeleton.store import SkeletonDataset
    from recognizer_core.train.stgcn import data as tdata

    def one_test_clip(clips):
        tests = [c for c in clips if c.split == "test"]
        for c in tests[1:]:
            c.split = "train"
    ds = SkeletonDataset(_dataset(tmp_path, one_test_clip))
    cfg = _cfg()
    info = tdata.split_info(ds, "test", 2)
    assert len(info) == 1
    got = [tdata.eval_shard(ds, info, rank, 2, cfg.data, 2, 17, "test") for rank in (0, 1)]
    assert [valid for _, valid, _ in got] == [1, 0] and got[1][0][0].clip_id == info.clip_ids[0]
    batches = tdata.ShardBatches(got[1][0], 1, 4, cfg.pipeline, train=False, seed=0, rank=1, num_valid=0)
    x, y, valid = batches[(0, 0)]
    assert x.shape[0] == 4 and not valid.any()  # evaluated for the gather, dropped from the metrics


def test_test_job_checks_the_split_and_the_run_before_ray(tmp_path, monkeypatch, capsys):
    import ray

    sys.path.insert(0, str(REPO))
    from rayjobs.test_stgcn import main as test_main

    monkeypatch.chdir(tmp_path)  # work_dirs here holds no run at all
    ray_before = ray.is_initialized()
    assert test_main([]) == 2
    assert "checkpoint not found (train first" in capsys.readouterr().err
    ds = _dataset(tmp_path)
    pth = tmp_path / "model.pth"
    pth.write_bytes(b"")  # never read: the split check comes first
    assert test_main(["--set", f"data.path={ds}", "--checkpoint", str(pth), "--split", "tset"]) == 2
    err = capsys.readouterr().err
    assert "no clips in split 'tset' (splits: test, train, val)" in err and ds in err
    assert ray.is_initialized() == ray_before  # this job started no Ray (the session's own may be up)


def test_features_on_the_worker_train_exactly_as_in_the_loader(tmp_path):
    """pipeline.device=worker (the loader gathers frames, the loop computes the features on its device) trains
    and validates bit for bit as pipeline.device=cpu on CPU: same losses, metrics and weights, augmentation,
    motion streams and multi-clip validation included."""
    ds = _dataset(tmp_path)
    common = ["train.epochs=2", "pipeline.feats=[j,b,jm,bm]", "pipeline.random_rotate=15",
              "pipeline.random_rescale=[0.8,1.2]", "pipeline.random_shift=0.1", "pipeline.test_num_clips=2"]
    runs = {}
    for device in ("cpu", "worker"):
        summary, ctx = _run(_cfg(*common, f"pipeline.device={device}"), ds, tmp_path / device)
        state = torch.load(tmp_path / device / "ckpt" / "epoch_0002" / "training_state.pt", weights_only=True)
        runs[device] = (ctx.reports, state["model"])
    (rep_cpu, w_cpu), (rep_worker, w_worker) = runs["cpu"], runs["worker"]
    keys = ("train/loss", "val/acc_top1", "val/mean_class_accuracy")
    assert [[r[k] for k in keys] for r in rep_worker] == [[r[k] for k in keys] for r in rep_cpu]
    assert len(rep_cpu) == 2 and all(np.isfinite(r["train/loss"]) for r in rep_cpu)
    assert w_cpu.keys() == w_worker.keys() and all(torch.equal(w_cpu[k], w_worker[k]) for k in w_cpu)


def test_resume_is_exact_with_loader_processes_and_dropout(tmp_path):
    """The loop seeds torch's generator per epoch for dropout; a DataLoader iterator drew its base seed from it,
    and persistent loader processes draw once per process: the resumed run's first epoch had other dropout
    masks than the uninterrupted run's (max |dw| 4e-4 after 4 epochs). The loaders have their own generator."""
    class Stop(Exception):
        pass

    class StopAfter(LocalContext):
        def __init__(self, path, stop):
            super().__init__(path)
            self.stop = stop

        def report(self, metrics, checkpoint_dir):
            super().report(metrics, checkpoint_dir)
            if metrics["epoch"] == self.stop:
                raise Stop

    ds = _dataset(tmp_path)
    cfg = _cfg("train.epochs=4", "train.val_interval=2", "data.loader_workers=2", "model.dropout=0.5")
    weights = []
    for name, stops in (("whole", [0]), ("resumed", [2, 0])):
        for stop in stops:
            with contextlib.suppress(Stop):
                train_loop(cfg, ds, str(tmp_path / name), StopAfter(tmp_path / f"ckpt_{name}", stop))
        weights.append(torch.load(tmp_path / f"ckpt_{name}" / "epoch_0004" / "training_state.pt",
                                  weights_only=True)["model"])
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
