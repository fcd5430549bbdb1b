"""What `tune_fight.py --folds K` leaves to deploy, and where the tuning jobs record their data: the retrained
winner is a model export_model.py / recognize.py load from the summary folder, and the configs the tune jobs
write name the dataset absolutely. No Ray starts: the retrain's trainer runs the training loop in this process
(LocalContext), the final test's trainer is a stub."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from recognizer_core.config import dump_config, load_config
from recognizer_core.skeleton.demo_data import write_demo_dataset
from recognizer_core.train.stgcn.config import TrainJobConfig

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
TINY = ["model.num_stages=2", "model.base_channels=8", "model.inflate_stages=[2]", "model.down_stages=[2]",
        "pipeline.clip_len=16", "train.batch_size=4", "train.val_interval=1", "data.loader_workers=0",
        "schedule.warmup_epochs=0", "train.log_interval=0", "train.test_after_train=false"]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(autouse=True)
def _cache(monkeypatch, tmp_path):
    monkeypatch.setenv("RECOGNIZER_CACHE", str(tmp_path / "cache"))   # the dataset-validation cache


def _in_process_trainers(monkeypatch, tmp_path: Path, seen: dict) -> None:
    """job.build_trainer runs the real training loop here (its run folder where Ray Train would put it); the
    final test writes the metrics a test worker writes."""
    from recognizer_core.storage import join_uri
    from recognizer_core.train.context import LocalContext
    from recognizer_core.train.stgcn import job
    from recognizer_core.train.stgcn.loop import train_loop

    def build_trainer(cfg, *, run_config=None, dataset_path=None):
        seen["cfg"] = cfg
        ctx = LocalContext(tmp_path / "ray_checkpoints")

        def fit():
            train_loop(cfg, cfg.data.path, join_uri(str(run_config.storage_path), run_config.name), ctx)
            latest = sorted((tmp_path / "ray_checkpoints").glob("epoch_*"))[-1]
            return SimpleNamespace(checkpoint=SimpleNamespace(path=str(latest)))
        return SimpleNamespace(fit=fit)

    def test_trainer(cfg, checkpoint, out_uri, split=None, *args, source=None, **kwargs):
        seen["tested"] = source

        def fit():
            Path(out_uri).mkdir(parents=True, exist_ok=True)
            (Path(out_uri) / f"{split}_metrics.json").write_text(json.dumps(
                {"acc_top1": 0.5, "mean_class_accuracy": 0.5, "num_samples": 4}))
        return SimpleNamespace(fit=fit)

    monkeypatch.setattr(job, "build_trainer", build_trainer)
    monkeypatch.setattr(job, "_test_trainer", test_trainer)


def test_a_folds_summary_holds_the_tested_last_epoch_model_that_export_and_recognize_load(
        tmp_path, monkeypatch, capsys):
    """After --folds the summary had best_config.yaml and no .pth, final/final_trainval no config.yaml and one
    best_acc_top1_epoch_1.pth chosen on val = trainval (the training data) while the last epoch was tested:
    export_model.py and recognize.py refused all three folders ("not a run folder ... nor a Tune summary")."""
    from rayjobs import tune_fight
    from recognizer_core.models.checkpoint import load_into
    from recognizer_core.models.recognizer import build_recognizer
    from recognizer_core.recognize.model import load_recognizer, resolve_model_folder
    from recognizer_core.tune.folds import write_fold_store

    ds = write_demo_dataset("fight", tmp_path / "dataset", num_clips=24, seed=0)
    exp = tmp_path / "tune" / "exp"
    summary_dir = exp / "summary"   # a local experiment builds its summary in place (results.scratch_dir)
    summary_dir.mkdir(parents=True)
    # best_config.yaml as write_summary leaves it: the original dataset (absolute, stgcn_job.trial_overrides)
    best = load_config(TrainJobConfig, REPO / "configs/fight_stable.yaml",
                       TINY + [f"data.path={ds}", "train.epochs=3", "train.early_stopping.enabled=true",
                               "train.early_stopping.patience=1"])
    dump_config(best, summary_dir / "best_config.yaml")
    (summary_dir / "results.csv").write_text("trial_id\nt1\n")
    folds = write_fold_store(ds, exp / "datasets" / "folds_k2_seed0", 2)
    seen: dict = {}
    _in_process_trainers(monkeypatch, tmp_path, seen)
    summary = {"files": [str(summary_dir / "results.csv")], "best_trial": "t1", "best_value": 0.5,
               "metric": "val/acc_top1", "errors": {}, "notes": [], "summary_dir": str(summary_dir)}
    tune_fight.final_test(summary, folds, str(exp))

    # the summary is a Tune summary export / recognize take: best_config.yaml + the last epoch's model
    for folder in (summary_dir, exp):
        cfg_file, pth = resolve_model_folder(folder)
        assert (cfg_file, pth.name) == (summary_dir / "best_config.yaml", "best_acc_top1_epoch_3.pth")
    # the retrain: train+val, its whole schedule (no early stopping on its training data)
    assert seen["cfg"].data.train_split == seen["cfg"].data.val_split == "trainval"
    assert not seen["cfg"].train.early_stopping.enabled
    tested = Path(seen["tested"])
    # no "best" epoch chosen on the training data is left beside the retrain's run
    assert not list((summary_dir / "final" / "final_trainval").glob("best_*.pth"))
    published = json.loads((summary_dir / "summary.json").read_text())
    assert published["final_test"]["model"] == str(summary_dir / "best_acc_top1_epoch_3.pth")
    assert any("best_acc_top1_epoch_3.pth" in n for n in published["notes"])
    monkeypatch.chdir(tmp_path / "tune")   # read from another directory, as recognize on a deployment host
    rec = load_recognizer(summary_dir)
    assert rec.spec.label_names == ["NonFight", "Fight"] and rec.spec.source["epoch"] == 3
    # fps / window from the original dataset's training split, not the 30 fps / clip_len fallback
    assert rec.spec.source["training_data"] == str(ds) and rec.spec.window_frames != best.pipeline.clip_len
    # the weights are the tested checkpoint's
    state = torch.load(tested / "training_state.pt", map_location="cpu", weights_only=True)
    assert state["epoch"] == 3
    net = build_recognizer(best.model).eval()
    load_into(net, state["model"], str(tested))
    theirs = net.state_dict()
    assert all(torch.equal(v, theirs[k]) for k, v in rec.net.state_dict().items()) and theirs.keys() == \
        rec.net.state_dict().keys()
    # and the README's next step: export_model.py <experiment>/summary
    from rayjobs.export_model import export

    report = export(str(summary_dir), str(tmp_path / "exports" / "tuned.onnx"))
    assert report["fps"] == rec.spec.fps and report["label_names"] == ["NonFight", "Fight"]
    # calibrating it on val, which it trained on, says so (its precisions there are optimistic)
    assert rec.spec.source["val_in_training"] is True and "--folds" in rec.spec.source["trained_by"]
    export(str(summary_dir), str(tmp_path / "exports" / "calibrated.onnx"), calibrate_precision=0.5)
    assert "[export] warning: calibrating on 'val', which this model (the --folds winner retrained on train+val) " \
        "trained on" in capsys.readouterr().err


def test_trial_overrides_record_the_dataset_absolutely(tmp_path, monkeypatch):
    """A data.path found in the working directory came back as typed (storage.input_path), and every trial's
    config and best_config.yaml recorded it relative: read from elsewhere it missed."""
    from recognizer_core.tune import stgcn_job

    write_demo_dataset("fight", tmp_path / "ds", num_clips=12, seed=0)
    monkeypatch.chdir(tmp_path)
    base = load_config(TrainJobConfig, REPO / "configs/fight_stable.yaml", ["data.path=ds"])
    extra = stgcn_job.trial_overrides({}, base, str(tmp_path / "exp"), "val/acc_top1")
    assert extra["data.path"] == str(tmp_path / "ds")


def test_tune_streams_records_each_streams_dataset_absolutely(tmp_path, monkeypatch):
    """tune_streams.py wrote each stream's config.yaml as typed: a relative data.path (from --config) was looked
    up again from the reader's directory by recognize / export / test_stgcn."""
    from rayjobs import tune_streams
    from recognizer_core.tune import ensemble

    write_demo_dataset("fight", tmp_path / "ds", num_clips=12, seed=0)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(ensemble, "ensemble_from_runs", lambda *a, **k: {"val": {}, "test": {}, "weights": {}})
    cfgs = {s: load_config(TrainJobConfig, None, ["data.path=ds", f"pipeline.feats=[{s}]", f"run.name=st_{s}",
                                                  f"run.storage_path={tmp_path / 'runs'}"]) for s in ("j", "b")}
    runs = {s: tmp_path / "runs" / f"st_{s}" for s in cfgs}
    tune_streams.fuse_streams(cfgs, runs, tmp_path / "ens", "acc_top1")
    for s, run in runs.items():
        assert load_config(TrainJobConfig, run / "config.yaml").data.path == str(tmp_path / "ds"), s


def test_ensemble_finds_prepared_data_where_training_prepared_it(tmp_path, monkeypatch):
    """ensemble_from_runs looked for a run's demo / pkl data under Path(run.storage_path)/datasets (the working
    directory) while training prepared it under storage.output_uri(run.storage_path)/datasets
    ($RECOGNIZER_STORAGE; ~/recognizer_runs inside a `ray job submit` package): it converted it again there."""
    from recognizer_core.export.mmaction import export_best_model
    from recognizer_core.models.recognizer import build_recognizer
    from recognizer_core.train.stgcn.job import dataset_for
    from recognizer_core.tune import ensemble

    monkeypatch.setenv("RECOGNIZER_STORAGE", str(tmp_path / "store"))
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    cfg = load_config(TrainJobConfig, None, TINY + ["data.demo_num_clips=12", "run.storage_path=runs"])
    prepared = dataset_for(cfg)   # what training read
    run = tmp_path / "run"
    dump_config(cfg, run / "config.yaml")
    export_best_model(build_recognizer(cfg.model), str(run), cfg=cfg, epoch=2, label_names=None)
    used = []

    def stream_scores(cfg, model, dataset, split):
        used.append(str(dataset))
        return np.array([[0.9, 0.1]]), np.array([0]), ["c0"]
    monkeypatch.setattr(ensemble, "stream_scores", stream_scores)
    ensemble.ensemble_from_runs({"j": run}, tmp_path / "ens")
    assert used and set(used) == {prepared}
    assert not (tmp_path / "cwd" / "runs").exists()
