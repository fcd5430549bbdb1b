"""Where the jobs put what other nodes must read, on a cluster: the --folds winner's final retrain (the experiment's
storage, never a driver temp folder), an s3:// experiment's prepared data (refused on a cluster without
$RECOGNIZER_STORAGE), exported models and engines (storage.output_uri, never the `ray job submit` package),
test_stgcn's relative --checkpoint, the models .gitignore keeps out of the package, and the class order the
tuned class weight refers to. No Ray starts: trainers and start_ray_or_exit are replaced by stubs."""
from __future__ import annotations

import json
import re
import sys
import types
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from recognizer_core import ray_runtime, storage
from recognizer_core.config import ConfigError, dump_config, validate_config
from recognizer_core.skeleton.clip import SkeletonClip
from recognizer_core.skeleton.store import SkeletonDataset, write_dataset
from recognizer_core.train.stgcn.config import TrainJobConfig
from recognizer_core.tune import stgcn_job

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "rayjobs"))


class RayStarted(Exception):
    """Raised by the start_ray_or_exit stub: the job got as far as starting Ray."""


@pytest.fixture
def no_ray(monkeypatch, tmp_path):
    def stub(job, address=None, **kwargs):
        raise RayStarted(job)
    monkeypatch.setattr(ray_runtime, "start_ray_or_exit", stub)
    monkeypatch.setenv("RECOGNIZER_CACHE", str(tmp_path / "cache"))


def _ray_package(tmp_path: Path) -> Path:
    """The working directory of a `ray job submit --working-dir .` job: Ray's uploaded package."""
    pkg = tmp_path / "session" / "runtime_resources" / "working_dir_files" / "_ray_pkg_0123abcd"
    pkg.mkdir(parents=True)
    return pkg


def _dataset(path: Path, names: list[str], n: int = 24) -> str:
    rng = np.random.default_rng(0)
    clips = [SkeletonClip(f"c{i}", i % 2, rng.uniform(100, 600, (1, 20, 17, 2)).astype(np.float32),
                          np.full((1, 20, 17), .9, np.float32), (720, 1280), 20, label_name=names[i % 2],
                          split=["train", "val", "test"][i % 3], source_video=f"v{i // 2}", fps=30.0)
             for i in range(n)]
    return str(write_dataset(clips, path, names))


# --- 1. the --folds winner is retrained on the experiment's storage --------------------------------------------
def test_folds_final_retrain_of_an_s3_experiment_goes_to_the_experiment_and_reads_metrics_from_it(
        tmp_path, monkeypatch, s3):
    """--folds K --storage-path s3://...: the winner was retrained into `<driver temp>/final` (Ray Train's storage
    check refuses a head-local path once the workers are on GPU pods) and its test_metrics.json was read from the
    driver's disk, where a worker on another node never wrote it."""
    from recognizer_core.train.stgcn import job
    from rayjobs import tune_fight

    s3.create_bucket(Bucket="bucket")
    experiment = "s3://bucket/tune/exp"
    local = tmp_path / "recognizer_tune_summary_x"   # what results.scratch_dir gives a remote experiment
    local.mkdir()
    dump_config(validate_config(TrainJobConfig, {}, "test"), local / "best_config.yaml")
    (local / "results.csv").write_text("trial_id\nt1\n")
    seen = {}

    class Trainer:
        def __init__(self, fit):
            self.fit = fit

    def build_trainer(cfg, *, run_config=None, dataset_path=None):
        seen["storage_path"] = str(run_config.storage_path)
        ckpt = f"bucket/tune/exp/summary/final/{run_config.name}/checkpoint_epoch_3"  # pyarrow's path, no scheme
        return Trainer(lambda: SimpleNamespace(checkpoint=SimpleNamespace(path=ckpt)))

    def test_trainer(cfg, checkpoint, out_uri, split=None, *args, **kwargs):
        seen["test_out"] = str(out_uri)
        # a test worker on a GPU pod writes its metrics where it was told: the experiment's storage
        return Trainer(lambda: storage.write_text(storage.join_uri(str(out_uri), f"{split}_metrics.json"), json.dumps(
            {"acc_top1": 0.75, "mean_class_accuracy": 0.7, "num_samples": 8})))

    monkeypatch.setattr(job, "build_trainer", build_trainer)
    monkeypatch.setattr(job, "_test_trainer", test_trainer)
    monkeypatch.setattr(job, "build_test_trainer", test_trainer)
    summary = {"files": [str(local / "results.csv")], "best_trial": "t1", "best_value": 0.8,
               "metric": "val/acc_top1", "errors": {}, "notes": [], "summary_dir": f"{experiment}/summary"}
    tune_fight.final_test(summary, {"path": str(tmp_path / "folds"), "test": 8}, experiment)

    assert seen["storage_path"] == "s3://bucket/tune/exp/summary/final"
    assert seen["test_out"] == "s3://bucket/tune/exp/summary/final/final_test"
    final = summary["final_test"]
    assert final["acc_top1"] == 0.75 and final["num_samples"] == 8
    assert final["metrics_file"] == "s3://bucket/tune/exp/summary/final/final_test/test_metrics.json"
    assert final["checkpoint"] == "s3://bucket/tune/exp/summary/final/final_trainval/checkpoint_epoch_3"
    assert not (local / "final").exists()
    published = json.loads(storage.read_text(f"{experiment}/summary/summary.json"))
    assert published["final_test"]["acc_top1"] == 0.75
    # a local experiment keeps its summary folder (what final_test used before)
    assert stgcn_job.final_dir(str(tmp_path / "exp")) == str(tmp_path / "exp" / "summary" / "final")


# --- 3. an s3:// experiment's prepared data on a cluster ------------------------------------------------------
def test_s3_experiment_with_folds_on_a_cluster_without_recognizer_storage_stops_before_ray(
        tmp_path, monkeypatch, capsys, no_ray, s3):
    """The fold view (and converted / demo data) of an s3:// experiment went to output_uri(...): the head's home
    under `ray job submit` without $RECOGNIZER_STORAGE, where no trial on a GPU pod can read it."""
    from rayjobs import tune_fight

    ds = _dataset(tmp_path / "ds", ["NonFight", "Fight"])
    home = tmp_path / "home"
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv(storage.STORAGE_ENV, raising=False)
    monkeypatch.setenv("RAY_ADDRESS", "http://127.0.0.1:8265")   # as `ray job submit` sets it
    monkeypatch.chdir(_ray_package(tmp_path))
    argv = ["--data", ds, "--folds", "2", "--storage-path", "s3://bucket/tune", "--num-samples", "2"]
    assert tune_fight.main(argv) == 2
    errors = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1 and "RECOGNIZER_STORAGE" in errors[0] and "--folds" in errors[0], errors
    assert not home.exists() or not any(home.rglob("_dataset.json"))   # nothing written on the head

    base = validate_config(TrainJobConfig, {"data": {"path": ds}}, "test")
    demo = validate_config(TrainJobConfig, {}, "test")
    with pytest.raises(ConfigError, match="the demo data"):
        stgcn_job.check_datasets_reachable("s3://bucket/tune/x", demo, 1, None)
    stgcn_job.check_datasets_reachable("s3://bucket/tune/x", base, 1, None)   # data.path given, no folds: nothing
    stgcn_job.check_datasets_reachable(str(tmp_path / "tune"), base, 2, None)  # local experiment: shared folder
    monkeypatch.setenv(storage.STORAGE_ENV, str(tmp_path / "shared"))
    stgcn_job.check_datasets_reachable("s3://bucket/tune/x", base, 2, None)    # written to the shared folder
    monkeypatch.delenv(storage.STORAGE_ENV)
    monkeypatch.delenv("RAY_ADDRESS")
    monkeypatch.chdir(tmp_path)
    stgcn_job.check_datasets_reachable("s3://bucket/tune/x", base, 2, None)    # a private local Ray: one node
    stgcn_job.check_datasets_reachable("s3://bucket/tune/x", base, 2, "local")
    with pytest.raises(ConfigError, match="RECOGNIZER_STORAGE"):
        stgcn_job.check_datasets_reachable("s3://bucket/tune/x", base, 2, "ray://head:10001")


# --- 2. exported models and engines go where every job's outputs go ------------------------------------------
def test_export_under_ray_job_submit_writes_under_recognizer_storage(tmp_path, monkeypatch, capsys):
    """export_model.py --out exports/fight.onnx under `ray job submit`: Path(out) wrote it into the uploaded
    package, which Ray deletes with the session."""
    from rayjobs.export_model import export
    from tests.recognize_helpers import make_run_folder

    run, _ = make_run_folder(tmp_path)
    shared = tmp_path / "shared"
    monkeypatch.setenv(storage.STORAGE_ENV, str(shared))
    pkg = _ray_package(tmp_path)
    monkeypatch.chdir(pkg)
    report = export(str(run), "exports/fight.onnx")
    assert report["onnx"] == str(shared / "exports" / "fight.onnx")
    assert (shared / "exports" / "fight.onnx").is_file() and (shared / "exports" / "fight.json").is_file()
    assert not (pkg / "exports").exists()
    assert str(shared / "exports" / "fight.onnx") in capsys.readouterr().err   # the resolved path is printed
    with pytest.raises(ValueError, match="--out s3://b/fight.onnx"):
        export(str(run), "s3://b/fight.onnx")


def _fake_tensorrt() -> types.ModuleType:
    """Just enough of TensorRT 10's builder API for build_engine to run without a GPU."""
    trt = types.ModuleType("tensorrt")
    trt.__version__ = "10.0.0"
    trt.MemoryPoolType = SimpleNamespace(WORKSPACE=0)
    trt.BuilderFlag = SimpleNamespace(FP16=0)
    trt.Logger = type("Logger", (), {"WARNING": 0, "__init__": lambda self, level: None})
    network = SimpleNamespace(get_input=lambda i: SimpleNamespace(shape=(-1, 3, 640, 640), name="input"))
    config = SimpleNamespace(set_memory_pool_limit=lambda *a: None, set_flag=lambda *a: None,
                             add_optimization_profile=lambda *a: None)
    trt.Builder = lambda logger: SimpleNamespace(
        create_network=lambda flags: network, create_builder_config=lambda: config,
        create_optimization_profile=lambda: SimpleNamespace(set_shape=lambda *a: None),
        build_serialized_network=lambda n, c: b"engine", platform_has_fast_fp16=True)
    trt.OnnxParser = lambda net, logger: SimpleNamespace(parse=lambda data: True, num_errors=0)
    return trt


def test_trt_engine_under_ray_job_submit_goes_under_recognizer_storage(tmp_path, monkeypatch, capsys):
    """build_trt_engine.py --output checkpoints/rtmo.trt under `ray job submit`: the engine went into the
    package (deleted with the session) although RECOGNIZER_STORAGE takes every relative output path."""
    from rayjobs.build_trt_engine import build_engine

    monkeypatch.setitem(sys.modules, "tensorrt", _fake_tensorrt())
    shared = tmp_path / "shared"
    monkeypatch.setenv(storage.STORAGE_ENV, str(shared))
    onnx = tmp_path / "end2end.onnx"
    onnx.write_bytes(b"onnx")
    pkg = _ray_package(tmp_path)
    monkeypatch.chdir(pkg)
    out = build_engine(str(onnx), "checkpoints/rtmo.trt")
    assert out == shared / "checkpoints" / "rtmo.trt" and out.read_bytes() == b"engine"
    assert not (pkg / "checkpoints").exists()
    assert f"wrote {out}" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="--output s3://b/rtmo.trt"):
        build_engine(str(onnx), "s3://b/rtmo.trt")


# --- 4. test_stgcn --checkpoint relative to where the training job wrote it -----------------------------------
def test_relative_checkpoint_is_found_under_recognizer_storage(tmp_path, monkeypatch):
    """train_stgcn on the cluster wrote $RECOGNIZER_STORAGE/work_dirs/fight_stable/...; test_stgcn's own example
    `--checkpoint work_dirs/fight_stable/best_acc_top1_epoch_30.pth` was looked for in the package only."""
    from rayjobs import test_stgcn

    shared = tmp_path / "shared"
    ckpt = shared / "work_dirs" / "fight_stable" / "best_acc_top1_epoch_30.pth"
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"x")
    monkeypatch.setenv(storage.STORAGE_ENV, str(shared))
    monkeypatch.chdir(_ray_package(tmp_path))
    cfg = validate_config(TrainJobConfig, {"run": {"name": "fight_stable"}}, "test")
    args = SimpleNamespace(checkpoint="work_dirs/fight_stable/best_acc_top1_epoch_30.pth", overrides=[],
                           config=test_stgcn.DEFAULT_CONFIG)
    assert test_stgcn._pick_run(cfg, args)[1] == ckpt
    # a file name in the run folder (run.storage_path/run.name) is still found there first
    args.checkpoint = "best_acc_top1_epoch_30.pth"
    assert test_stgcn._pick_run(cfg, args)[1] == ckpt
    args.checkpoint = "work_dirs/missing.pth"   # nowhere: reported as given
    assert test_stgcn._pick_run(cfg, args)[1] == Path("work_dirs/missing.pth")


# --- 5. models in the repository root stay out of the uploaded package ----------------------------------------
@pytest.mark.parametrize("rel, excluded", [("checkpoints/end2end_l.onnx", True), ("checkpoints/rtmo.trt", True),
                                           ("rtmo-l/end2end.onnx", True), ("end2end.onnx", True),
                                           ("rtmo.engine", True), ("rtmo.trt", True),
                                           ("recognizer_core/storage.py", False), ("configs/x.onnx", False)])
def test_gitignore_keeps_root_models_out_of_the_ray_package(rel, excluded):
    """`ray job submit --working-dir .` (Ray 2.60 honours .gitignore) uploaded the RTMO models the docs have users
    put in the repository root, with every job."""
    from ray._private import ray_constants
    from ray._private.runtime_env.packaging import _get_excludes, get_excludes_from_ignore_files

    rules = get_excludes_from_ignore_files(REPO, include_gitignore=True) + [
        _get_excludes(REPO, ray_constants.get_runtime_env_default_excludes())]
    assert any(rule(REPO / rel) for rule in rules) == excluded


# --- 6. the tuned class weight is the positive class's ----------------------------------------------------------
def _space(tmp_path: Path) -> str:
    path = tmp_path / "falldown_space.yaml"
    path.write_text(f"job: stgcn\nbase_config: {REPO / 'configs' / 'falldown_stable.yaml'}\n"
                    "metric: val/mean_class_accuracy\nparams:\n"
                    "  # weight of the positive class (Falldown)\n"
                    "  train.class_weight[1]: {type: uniform, low: 1.0, high: 3.0}\n"
                    "  model.dropout: {type: uniform, low: 0.0, high: 0.5}\n")
    return str(path)


def test_class_weight_parameter_of_the_background_class_is_refused_before_ray(tmp_path, capsys, no_ray):
    """A falldown dataset in extraction's default order (sorted folders: Falldown, Normal), data.label_names set
    to it as the error said: the space's train.class_weight[1] ("the positive class") tuned Normal's weight."""
    from rayjobs import tune_fight

    ds = _dataset(tmp_path / "ds_sorted", ["Falldown", "Normal"])
    argv = ["--space", _space(tmp_path), "--data", ds, "--storage-path", str(tmp_path / "tune"),
            "--set", "data.label_names=[Falldown,Normal]", "--set", "train.class_weight=[1.5,1.0]"]
    assert tune_fight.main(argv) == 2
    errors = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1 and "train.class_weight[1]" in errors[0] and "falldown_space.yaml" in errors[0], errors
    assert "build_dataset.py --poses" in errors[0] and "--set 'label_names=[Normal,Falldown]'" in errors[0]
    assert "extract_poses" not in errors[0]   # re-extraction needs the videos and only rewrote labels.json


def test_class_weight_check_passes_the_presets_order_and_the_order_error_says_to_rebuild(tmp_path):
    from recognizer_core.tune.search_space import load_search_space
    from recognizer_core.train.stgcn.evaluate import label_names

    space = load_search_space(_space(tmp_path), TrainJobConfig)
    stgcn_job.check_class_weight_params(space, ["Normal", "Falldown"])   # background first: the weight is Falldown's
    stgcn_job.check_class_weight_params(space, ["0", "1"])               # no class named like background
    with pytest.raises(ConfigError, match=r"train\.class_weight\[1\]"):
        stgcn_job.check_class_weight_params(space, ["Fight", "NonFight"])
    # the order error recommends the rebuild a search needs, not only retyping the names
    ds = SkeletonDataset(_dataset(tmp_path / "ds_sorted", ["Falldown", "Normal"]))
    cfg = validate_config(TrainJobConfig, {"data": {"label_names": ["Normal", "Falldown"]}}, "test")
    with pytest.raises(ConfigError, match=r"build_dataset\.py .*--set 'label_names=\[Normal,Falldown\]'") as err:
        label_names(cfg, ds)
    assert "\n" not in str(err.value) and "extract_poses" not in str(err.value)


def test_class_weight_check_refuses_only_a_background_class_that_is_not_class_0(tmp_path):
    """Review rdA: [NonFight, Fight] (the background already first) with train.class_weight[0] was refused and
    told to rebuild in the order already in place; `train.class_weight[1]@sgd` on [Fight, NonFight] passed."""
    from recognizer_core.tune.search_space import load_search_space

    path = tmp_path / "space.yaml"
    path.write_text(f"job: stgcn\nbase_config: {REPO / 'configs' / 'fight_stable.yaml'}\n"
                    "metric: val/mean_class_accuracy\nparams:\n"
                    "  train.class_weight[0]: {type: uniform, low: 0.5, high: 1.5}\n"
                    "  train.class_weight[1]: {type: uniform, low: 0.8, high: 2.0}\n")
    both = load_search_space(str(path), TrainJobConfig)
    stgcn_job.check_class_weight_params(both, ["NonFight", "Fight"])   # the presets' order: any weight passes
    path.write_text(f"job: stgcn\nbase_config: {REPO / 'configs' / 'fight_stable.yaml'}\n"
                    "metric: val/mean_class_accuracy\nparams:\n"
                    "  optim.type: {type: choice, values: [adamw, sgd]}\n"
                    "  model.dropout: {type: uniform, low: 0.1, high: 0.5, when: {optim.type: adamw}}\n"
                    "  train.class_weight[1]@sgd: {type: uniform, low: 0.8, high: 2.0, when: {optim.type: sgd}}\n")
    second = load_search_space(str(path), TrainJobConfig)
    with pytest.raises(ConfigError, match=r"train\.class_weight\[1\]@sgd .*label_names=\[NonFight,Fight\]"):
        stgcn_job.check_class_weight_params(second, ["Fight", "NonFight"])
    with pytest.raises(ConfigError, match=r"train\.class_weight\[0\]"):   # class 0 is Fight here: refused too
        stgcn_job.check_class_weight_params(both, ["Fight", "NonFight"])
    path.write_text(f"job: stgcn\nbase_config: {REPO / 'configs' / 'fight_stable.yaml'}\n"
                    "metric: val/mean_class_accuracy\nparams:\n"
                    "  train.class_weight: {type: choice, values: [[1.0, 1.0], [1.0, 2.0]]}\n")
    whole = load_search_space(str(path), TrainJobConfig)   # a whole list assumes the order too
    stgcn_job.check_class_weight_params(whole, ["NonFight", "Fight"])
    with pytest.raises(ConfigError, match=r"parameter train\.class_weight tunes"):
        stgcn_job.check_class_weight_params(whole, ["Fight", "NonFight"])
    # a dataset build_dataset.py wrote: the rebuild command names its own poses, a new folder beside it (the
    # builder overwrites its output) and the window / split settings it recorded (the defaults made whole-video
    # clips and other splits in place of the user's dataset)
    built = SkeletonDataset(write_dataset([], tmp_path / "built", ["Fight", "NonFight"], metadata={
        "source": "rayjobs/build_dataset.py", "poses": "/data/rwf_poses",
        "window": {"clip_len": 100, "stride": 50, "min_frames": 1}, "split": {"seed": 7, "ratios": [0.8, 0.1, 0.1]}}))
    with pytest.raises(ConfigError, match=re.escape(
            f"build_dataset.py --poses /data/rwf_poses --output {built.path}_ordered --set window.clip_len=100 "
            "--set window.stride=50 --set split.seed=7 --set 'label_names=[NonFight,Fight]'")):
        stgcn_job.check_class_weight_params(both, built.label_names, built)


# --- review rdA: a re-run's final retrain, an s3:// RECOGNIZER_STORAGE, one machine ----------------------------
def test_rerun_of_an_s3_folds_experiment_retrains_in_a_fresh_final_run(tmp_path, monkeypatch, s3):
    """final_dir() and the run name are the same in every invocation and Ray Train V2 resumes a run whose name and
    storage match: a re-run tested the previous winner's weights (its finished run) as the new winner's."""
    from recognizer_core.train.stgcn import job
    from rayjobs import tune_fight

    s3.create_bucket(Bucket="bucket")
    experiment = "s3://bucket/tune/exp"
    seen = []

    def build_trainer(cfg, *, run_config=None, dataset_path=None):
        run = storage.join_uri(str(run_config.storage_path), run_config.name)
        snapshot = storage.join_uri(run, "checkpoint_manager_snapshot.json")   # what Ray Train V2 resumes from
        seen.append(storage.exists(snapshot))

        def fit():
            storage.write_text(snapshot, "{}")
            return SimpleNamespace(checkpoint=SimpleNamespace(path=run.split("://")[1] + "/checkpoint_epoch_3"))
        return SimpleNamespace(fit=fit)

    writes = [True, False]   # the second test writes no metrics: the first's must not be read instead

    def test_trainer(cfg, checkpoint, out_uri, split=None, *args, **kwargs):
        write = writes.pop(0)
        return SimpleNamespace(fit=lambda: write and storage.write_text(storage.join_uri(out_uri, "test_metrics.json"),
                               json.dumps({"acc_top1": .5, "mean_class_accuracy": .5})))

    monkeypatch.setattr(job, "build_trainer", build_trainer)
    monkeypatch.setattr(job, "_test_trainer", test_trainer)
    errors = []
    for i in range(2):
        local = tmp_path / f"recognizer_tune_summary_{i}"   # results.scratch_dir: a fresh temp folder each time
        local.mkdir()
        dump_config(validate_config(TrainJobConfig, {}, "t"), local / "best_config.yaml")
        (local / "results.csv").write_text("trial_id\nt\n")
        summary = {"files": [str(local / "results.csv")], "best_trial": f"t{i}", "best_value": .8,
                   "metric": "val/acc_top1", "errors": {}, "notes": [], "summary_dir": f"{experiment}/summary"}
        try:
            tune_fight.final_test(summary, {"path": str(tmp_path / "folds"), "test": 8}, experiment)
            errors.append(None)
        except FileNotFoundError as err:
            errors.append(str(err))
    assert seen == [False, False]   # the re-run found no earlier run to resume
    assert errors[0] is None and "wrote no metrics" in errors[1]


def test_an_object_store_recognizer_storage_is_refused_for_local_files(tmp_path, monkeypatch, capsys):
    """RECOGNIZER_STORAGE=s3://...: export and build_engine wrote a local folder "s3:" (Path of the resolved URI);
    the tune check let an s3:// RECOGNIZER_STORAGE take the fold view, which is written as local files."""
    from rayjobs.build_trt_engine import build_engine
    from rayjobs.export_model import export
    from tests.recognize_helpers import make_run_folder

    run, _ = make_run_folder(tmp_path)
    monkeypatch.setenv(storage.STORAGE_ENV, "s3://bucket/runs")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    with pytest.raises(ValueError, match=r"--out exports/fight\.onnx resolves under RECOGNIZER_STORAGE=s3://"):
        export(str(run), "exports/fight.onnx")
    monkeypatch.setitem(sys.modules, "tensorrt", _fake_tensorrt())
    onnx = tmp_path / "end2end.onnx"
    onnx.write_bytes(b"onnx")
    with pytest.raises(SystemExit, match=r"--output checkpoints/rtmo\.trt resolves under RECOGNIZER_STORAGE"):
        build_engine(str(onnx), "checkpoints/rtmo.trt")
    assert not any(work.iterdir())   # no "s3:" folder
    base = validate_config(TrainJobConfig, {"data": {"path": "/mnt/shared/skeletons"}}, "test")
    monkeypatch.setenv("RAY_ADDRESS", "http://head:8265")
    for address in (None, "local"):   # on a cluster and on one machine: the files are local either way
        with pytest.raises(ConfigError, match="RECOGNIZER_STORAGE=s3://bucket/runs: .*must therefore be a local"):
            stgcn_job.check_datasets_reachable("s3://bucket/tune/exp", base, 5, address)


def test_one_machine_ray_job_submit_error_names_the_home_folder_workaround(tmp_path, monkeypatch):
    """cluster/README.md's one-machine setup (`ray start --head`, then `ray job submit`) with s3:// results and
    --folds is refused (a cluster cannot be told from one node before Ray starts): the error names the fix."""
    monkeypatch.delenv(storage.STORAGE_ENV, raising=False)
    monkeypatch.setenv("RAY_ADDRESS", "http://127.0.0.1:8265")
    monkeypatch.chdir(_ray_package(tmp_path))
    base = validate_config(TrainJobConfig, {"data": {"path": "/data/skeletons"}}, "test")
    with pytest.raises(ConfigError, match=r"one-machine Ray .*RECOGNIZER_STORAGE=~/recognizer_runs") as err:
        stgcn_job.check_datasets_reachable("s3://bucket/tune/exp", base, 5, None)
    assert '"env_vars": {"RECOGNIZER_STORAGE": "~/recognizer_runs"}' in str(err.value)
    assert "\n" not in str(err.value)
    monkeypatch.setenv(storage.STORAGE_ENV, "~/recognizer_runs")   # the workaround passes
    stgcn_job.check_datasets_reachable("s3://bucket/tune/exp", base, 5, None)


def test_the_rebuild_command_is_one_shell_command_for_paths_with_spaces(tmp_path):
    """The advised command is pasted into a shell: a dataset at '/data/my ds' split into words."""
    import shlex

    from recognizer_core.skeleton.store import SkeletonDataset
    from recognizer_core.skeleton.store_write import write_dataset
    from recognizer_core.train.stgcn.evaluate import rebuild_command

    built = SkeletonDataset(write_dataset([], tmp_path / "my ds", ["Fall down", "Normal"], metadata={
        "source": "rayjobs/build_dataset.py", "poses": "/data/my poses", "window": {"clip_len": 100}}))
    words = shlex.split(rebuild_command(["Normal", "Fall down"], built))
    assert words[:5] == ["rayjobs/build_dataset.py", "--poses", "/data/my poses", "--output",
                         f"{built.path}_ordered"]
    assert words[5:] == ["--set", "window.clip_len=100", "--set", "label_names=[Normal,Fall down]"]
