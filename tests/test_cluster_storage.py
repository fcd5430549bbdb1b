"""storage.output_uri: where a job's outputs go (never inside the package `ray job submit` uploads, which Ray
deletes with the session), resolved once on the driver."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from recognizer_core import storage

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def ray_package(tmp_path, monkeypatch):
    """The working directory of a submitted job, as Ray lays it out on the head."""
    pkg = tmp_path / "session_x" / "runtime_resources" / "working_dir_files" / "_ray_pkg_0123abcd"
    pkg.mkdir(parents=True)
    monkeypatch.chdir(pkg)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv(storage.STORAGE_ENV, raising=False)
    storage._announced.clear()
    return pkg


def test_outside_a_package_relative_paths_stay_under_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(storage.STORAGE_ENV, raising=False)
    assert storage.output_uri("work_dirs/x") == str(tmp_path / "work_dirs" / "x")
    assert storage.output_uri("s3://bucket/runs/") == "s3://bucket/runs"
    assert storage.output_uri(tmp_path / "abs") == str(tmp_path / "abs")


def test_inside_a_ray_package_outputs_go_to_the_documented_default(ray_package, tmp_path, capsys):
    home_runs = tmp_path / "home" / "recognizer_runs"
    assert storage.output_uri("work_dirs/tune") == str(home_runs / "work_dirs" / "tune")
    # already resolved into the package (e.g. Path("work_dirs").resolve() in a default): moved out as well
    assert storage.output_uri(ray_package / "work_dirs") == str(home_runs / "work_dirs")
    assert storage.output_uri("/elsewhere/runs") == "/elsewhere/runs"  # an explicit absolute path is kept
    out = capsys.readouterr().out
    assert out.count("[storage]") == 1 and str(home_runs) in out  # said once, with the folder


def test_recognizer_storage_is_the_root_of_relative_outputs(ray_package, monkeypatch):
    monkeypatch.setenv(storage.STORAGE_ENV, "s3://bucket/runs")
    assert storage.output_uri("work_dirs/tune") == "s3://bucket/runs/work_dirs/tune"
    monkeypatch.setenv(storage.STORAGE_ENV, "/mnt/shared/runs")
    assert storage.output_uri("work_dirs") == "/mnt/shared/runs/work_dirs"
    assert not any("_ray_pkg_" in storage.output_uri(p) for p in (".", "a/b", str(Path.cwd() / "c")))


def test_every_job_output_leaves_the_package(ray_package, monkeypatch, tmp_path):
    """Only training and tuning went through output_uri: extraction, dataset building, recognize's and the test
    job's outputs and tune_streams' ensemble were written inside the package, which Ray deletes with the
    session (on a cluster, into each pod's own copy of it)."""
    from recognizer_core.dataset.build import resolve_paths as build_paths
    from recognizer_core.dataset.config import DatasetBuildConfig
    from recognizer_core.extract.config import ExtractionConfig
    from recognizer_core.extract.job import resolve_paths as extract_paths

    monkeypatch.setenv(storage.STORAGE_ENV, str(tmp_path / "shared"))
    shared = str(tmp_path / "shared")
    ecfg = extract_paths(ExtractionConfig.model_validate({"source": {"input": str(tmp_path)}, "output": "outputs/poses"}))
    assert ecfg.output == f"{shared}/outputs/poses"
    bcfg = build_paths(DatasetBuildConfig(poses="outputs/poses", output="outputs/ds", pkl_dir="outputs/pkl"))
    assert (bcfg.poses, bcfg.output, bcfg.pkl_dir) == (ecfg.output, f"{shared}/outputs/ds", f"{shared}/outputs/pkl")
    (ray_package / "uploaded_poses").mkdir()  # an input that came with the package is read where it is
    assert build_paths(DatasetBuildConfig(poses="uploaded_poses")).poses == str(ray_package / "uploaded_poses")


def test_extraction_finds_a_model_the_export_jobs_wrote_to_the_shared_storage(ray_package, monkeypatch, tmp_path):
    """build_trt_engine / export_model write a relative output under $RECOGNIZER_STORAGE on a cluster; extraction
    looked for the same relative model path only in the job's package and did not find it."""
    from recognizer_core.extract.config import ExtractionConfig
    from recognizer_core.extract.job import resolve_paths as extract_paths

    monkeypatch.setenv(storage.STORAGE_ENV, str(tmp_path / "shared"))
    (tmp_path / "shared" / "exports").mkdir(parents=True)
    (tmp_path / "shared" / "exports" / "rtmo.trt").write_bytes(b"engine")
    (ray_package / "checkpoints").mkdir()
    (ray_package / "checkpoints" / "rtmo.onnx").write_bytes(b"model")  # one that came with the package stays
    cfg = extract_paths(ExtractionConfig.model_validate({
        "source": {"input": str(tmp_path)},
        "model": {"onnx": {"model_path": "checkpoints/rtmo.onnx"}, "tensorrt": {"model_path": "exports/rtmo.trt"}}}))
    assert cfg.model.tensorrt.model_path == str(tmp_path / "shared" / "exports" / "rtmo.trt")
    assert cfg.model.onnx.model_path == str(ray_package / "checkpoints" / "rtmo.onnx")


def test_package_detection_needs_the_runtime_resources_layout(tmp_path):
    assert storage.ray_package_root(tmp_path / "_ray_pkg_1" / "x") is None  # a folder merely named so
    pkg = tmp_path / "runtime_resources" / "working_dir_files" / "_ray_pkg_1"
    assert storage.ray_package_root(pkg / "a" / "b") == str(pkg)


def test_atomic_writes_keep_the_old_object_on_s3_when_the_body_fails(s3):
    """On object storage, pyarrow completes an upload when its stream closes, also when leaving on an exception:
    a job stopped mid-write (SIGTERM becomes KeyboardInterrupt) replaced a whole model or dataset file by a part.
    A real S3-compatible server (moto) on 127.0.0.1."""
    s3.create_bucket(Bucket="models")
    uri = "s3://models/fight/model.onnx"
    storage.write_bytes(uri, b"the whole old model")
    with pytest.raises(KeyboardInterrupt):
        with storage.atomic_write(uri, "wb") as f:
            f.write(b"half of a new")
            raise KeyboardInterrupt
    assert storage.read_bytes(uri) == b"the whole old model"
    with storage.atomic_write(uri, "w") as f:
        f.write("new, whole")
    assert storage.read_bytes(uri) == b"new, whole"


def test_atomic_writes_get_the_mode_a_plain_open_gives(tmp_path):
    """mkstemp makes 0600 files: an exported model or a dataset written by one user could not be read by the
    service (another uid) that serves it."""
    import os

    old = os.umask(0o022)
    try:
        storage.write_text(tmp_path / "model.json", "{}")
        with open(tmp_path / "plain.json", "w") as f:
            f.write("{}")
    finally:
        os.umask(old)
    assert (tmp_path / "model.json").stat().st_mode & 0o777 == (tmp_path / "plain.json").stat().st_mode & 0o777 == 0o644


def test_a_dataset_rebuilt_on_s3_hides_the_old_description_while_uploading(tmp_path, monkeypatch, s3):
    """build_dataset onto object storage: the old _dataset.json stayed while the new part files were uploaded
    over the old ones, so a reader (or any reader after an interrupted upload) mapped the old row counts and
    split ranges onto new files. And a pkl_dir on s3:// was written to a local folder named 's3:'."""
    from recognizer_core.dataset.build import run_build
    from recognizer_core.dataset.config import DatasetBuildConfig
    from recognizer_core.extract.clip_files import write_clip_file
    from recognizer_core.extract.manifest import DONE, ExtractionManifest
    from recognizer_core.skeleton.demo_data import make_demo_clips
    from recognizer_core.skeleton.clip import SkeletonDataError
    from recognizer_core.skeleton.store import SkeletonDataset

    poses = tmp_path / "poses"
    manifest = ExtractionManifest(str(poses))
    for c in make_demo_clips("fight", 6, seed=1):
        write_clip_file(c, poses / "clips" / f"{c.clip_id}.parquet")
        manifest.record(DONE, c.clip_id, video_id=c.clip_id, output=f"clips/{c.clip_id}.parquet",
                        label_name=["NonFight", "Fight"][c.label], split=c.split)
    (poses / "labels.json").write_text('{"label_names": ["NonFight", "Fight"]}')
    s3.create_bucket(Bucket="data")
    monkeypatch.chdir(tmp_path)
    cfg = DatasetBuildConfig.model_validate({"poses": str(poses), "output": "s3://data/ds", "use_ray": False,
                                             "write_pkl": True, "pkl_dir": "s3://data/pkl",
                                             "window": {"clip_len": 20, "stride": 20}})
    first = run_build(cfg)
    seen = []
    real_copy = storage.copy_tree

    def copy_and_look(src, dst):  # the real upload; what a reader would find when it starts
        seen.append(storage.exists("s3://data/ds/_dataset.json"))
        real_copy(src, dst)
        if dst == "s3://data/ds":  # uploaded, the json not yet: a reader (or any, after a crash here) refuses the
            # folder; it opened the part files there as a plain folder of them
            with pytest.raises(SkeletonDataError, match="_dataset.writing of a write: the dataset is being written"):
                SkeletonDataset(dst)
    monkeypatch.setattr(storage, "copy_tree", copy_and_look)
    again = run_build(cfg.model_copy(update={"window": cfg.window.model_copy(update={"clip_len": 10,
                                                                                     "stride": 10})}))
    assert seen == [True, False]  # the pkl upload (elsewhere), then the dataset's, with no stale description
    assert again["clips"] > first["clips"] and len(SkeletonDataset("s3://data/ds")) == again["clips"]
    assert not storage.exists("s3://data/ds/_dataset.writing")
    assert sorted(again["pkl"]) == sorted(f"s3://data/pkl/{s}.pkl" for s in again["splits"])
    assert all(storage.exists(p) for p in again["pkl"]) and not (tmp_path / "s3:").exists()


def test_training_reads_a_dataset_on_object_storage(s3, tmp_path, monkeypatch):
    """docs/cluster.md: on a cluster, data.path / --data may be an s3:// URI (build_dataset writes there). The
    driver refused it ('folder not found': a Path of the URI), and a relative dataset that build_dataset had
    written under RECOGNIZER_STORAGE was not found by the training job either."""
    from recognizer_core.config import load_config
    from recognizer_core.skeleton.demo_data import write_demo_dataset
    from recognizer_core.skeleton.clip import SkeletonDataError
    from recognizer_core.train.stgcn import data as tdata
    from recognizer_core.train.stgcn.config import TrainJobConfig
    from recognizer_core.train.stgcn.job import dataset_for, preflight

    local = write_demo_dataset("fight", tmp_path / "demo", num_clips=24, seed=0)
    s3.create_bucket(Bucket="data")
    storage.copy_tree(str(local), "s3://data/ds")
    cfg = load_config(TrainJobConfig, REPO / "configs/fight_stable.yaml",
                      ["data.path=s3://data/ds", f"run.storage_path={tmp_path / 'runs'}"])
    assert dataset_for(cfg) == "s3://data/ds"
    preflight(cfg, "s3://data/ds")   # the driver's checks read it through pyarrow
    ds = tdata.SkeletonDataset("s3://data/ds")
    shard, _ = tdata.load_shard(ds, tdata.split_info(ds, "train", 2).ranges, cfg.data, 2, 17, "s3")
    assert shard[0].keypoint.shape[-2:] == (17, 2)
    with pytest.raises(SkeletonDataError, match="s3://data/nothing.*no skeleton dataset"):
        tdata.prepare_dataset(cfg.data.model_copy(update={"path": "s3://data/nothing"}), tmp_path)

    monkeypatch.setenv(storage.STORAGE_ENV, str(tmp_path / "shared"))
    storage.copy_tree(str(local), str(tmp_path / "shared" / "outputs" / "ds"))
    monkeypatch.chdir(tmp_path)   # no outputs/ds here
    found = tdata.prepare_dataset(cfg.data.model_copy(update={"path": "outputs/ds"}), tmp_path)
    assert Path(found) == tmp_path / "shared" / "outputs" / "ds"


def test_test_job_finds_the_newest_run_where_training_wrote_it(tmp_path, monkeypatch):
    """test_stgcn with no arguments looked for runs under run.storage_path as given, while train_stgcn writes
    under storage.output_uri (RECOGNIZER_STORAGE on every cluster manifest): it picked a stale local run."""
    import argparse
    import sys

    sys.path.insert(0, str(REPO))
    from rayjobs.test_stgcn import DEFAULT_CONFIG, _pick_run
    from recognizer_core.config import load_config
    from recognizer_core.train.stgcn.config import TrainJobConfig

    monkeypatch.setenv(storage.STORAGE_ENV, str(tmp_path / "shared"))
    monkeypatch.chdir(tmp_path)
    for run in (tmp_path / "work_dirs" / "stale", tmp_path / "shared" / "work_dirs" / "fresh"):
        run.mkdir(parents=True)
        (run / "summary.json").write_text("{}")
    cfg = load_config(TrainJobConfig, DEFAULT_CONFIG)
    args = argparse.Namespace(checkpoint=None, config=DEFAULT_CONFIG, overrides=[])
    assert _pick_run(cfg, args)[1] == tmp_path / "shared" / "work_dirs" / "fresh"
    # the preset's own run folder, older than the newest run, is not what "no arguments" tests (it was)
    stable = tmp_path / "shared" / "work_dirs" / "fight_stable"
    stable.mkdir()
    (stable / "summary.json").write_text("{}")
    (stable / "best_acc_top1_epoch_30.pth").write_bytes(b"")
    os.utime(stable / "summary.json", (1, 1))
    os.utime(stable / "best_acc_top1_epoch_30.pth", (1, 1))
    assert _pick_run(cfg, args)[1] == tmp_path / "shared" / "work_dirs" / "fresh"
    # --set without --config still tests the newest run, its own config with the override on top (the advice of the
    # GPU check, scaling.use_gpu=false, switched to the preset's older run folder)
    fresh = tmp_path / "shared" / "work_dirs" / "fresh"
    (fresh / "config.yaml").write_text("run:\n  name: fresh\nscaling:\n  use_gpu: true\n")
    picked_cfg, picked = _pick_run(cfg, argparse.Namespace(checkpoint=None, config=DEFAULT_CONFIG,
                                                          overrides=["scaling.use_gpu=false"]))
    assert picked == fresh and picked_cfg.run.name == "fresh" and not picked_cfg.scaling.use_gpu
    named = argparse.Namespace(checkpoint=None, config=DEFAULT_CONFIG, overrides=["run.name=fight_stable"])
    assert _pick_run(cfg, named)[1] == stable   # naming a run picks that run
    # --checkpoint with a file name (docs/training.md's example) is looked up in the config's run folder
    args = argparse.Namespace(checkpoint="best_acc_top1_epoch_30.pth", config=DEFAULT_CONFIG, overrides=[])
    assert _pick_run(cfg, args)[1] == stable / "best_acc_top1_epoch_30.pth"
