"""Training with its outputs on object storage ($RECOGNIZER_STORAGE=s3://... or run.storage_path=s3://...), against
a real S3-compatible server (moto) on 127.0.0.1.

The demo data and pkl conversions are prepared as local files under output_uri(run.storage_path)/datasets: on
object storage that was Path("s3://...") -> a local folder "s3:" in the working directory and pyarrow's "Missing
bucket name in S3 URI" after it; now one `error:` line before Ray starts. A run on object storage wrote its
config.yaml (which recognize needs beside best_*.pth) to a local "s3:/.../config.yaml" instead of the bucket."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import yaml

from recognizer_core import ray_runtime
from recognizer_core.config import ConfigError, load_config
from recognizer_core.skeleton.demo_data import make_demo_clips
from recognizer_core.skeleton.mmaction_pkl import write_mmaction_pkl
from recognizer_core.skeleton.store import write_dataset
from recognizer_core.storage import STORAGE_ENV
from recognizer_core.train.stgcn.config import TrainJobConfig
from recognizer_core.train.stgcn.dataset_source import datasets_dir, prepare_dataset

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from rayjobs import train_stgcn  # noqa: E402

TINY = ["model.num_stages=2", "model.base_channels=8", "model.inflate_stages=[2]", "model.down_stages=[2]",
        "pipeline.clip_len=16", "train.epochs=1", "train.batch_size=4", "data.loader_workers=0",
        "schedule.warmup_epochs=0", "train.test_after_train=false", "wandb.enabled=false"]


class RayStarted(Exception):
    """Raised by the start_ray_or_exit stub: the job got as far as starting Ray."""


@pytest.fixture
def ray_starts(monkeypatch, tmp_path):
    calls = []

    def stub(job, address=None, **kwargs):
        calls.append(job)
        raise RayStarted(job)
    monkeypatch.setattr(ray_runtime, "start_ray_or_exit", stub)
    monkeypatch.setenv("RECOGNIZER_CACHE", str(tmp_path / "cache"))
    return calls


@pytest.fixture
def bucket(s3) -> str:
    """A new empty bucket on the conftest's S3 server (moto keeps buckets between server starts)."""
    name = f"runs-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=name)
    return name


def _argv(*sets: str) -> list[str]:
    return ["--config", str(REPO / "configs" / "fight_demo.yaml")] + [a for s in sets for a in ("--set", s)]


def _dataset(path: Path) -> str:
    return str(write_dataset(make_demo_clips("fight", 16, seed=1), path, label_names=("NonFight", "Fight")))


def test_demo_or_pkl_data_under_object_storage_is_one_line_before_ray(tmp_path, monkeypatch, capsys, ray_starts,
                                                                       bucket):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(STORAGE_ENV, f"s3://{bucket}/runs")
    pkl = tmp_path / "clips.pkl"
    write_mmaction_pkl(make_demo_clips("fight", 16, seed=1), pkl)
    for data, written in (([], "the built-in demo data"), ([f"data.train_pkl={pkl}"], "the converted data.train_pkl")):
        assert train_stgcn.main(_argv(*TINY, *data)) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        expected = f"error: {written} would be written under s3://{bucket}/runs/work_dirs/datasets, on object storage"
        assert len(lines) == 1 and lines[0].startswith(expected), lines
        assert "set RECOGNIZER_STORAGE (or run.storage_path) to a local folder" in lines[0]
        assert "or set data.path to a built Parquet dataset" in lines[0]
    # an explicit run.storage_path on object storage: the same rule (it was a rule of its own, refusing any run)
    monkeypatch.delenv(STORAGE_ENV)
    assert train_stgcn.main(_argv(*TINY, f"run.storage_path=s3://{bucket}/explicit")) == 2
    assert f"under s3://{bucket}/explicit/datasets, on object storage" in capsys.readouterr().err
    assert ray_starts == [] and os.listdir(tmp_path) == ["clips.pkl"]   # no folder "s3:"

    # recognize's window statistics and the ensemble prepare data the same way: the same refusal
    cfg = load_config(TrainJobConfig, REPO / "configs" / "fight_demo.yaml", [f"run.storage_path=s3://{bucket}/x"])
    with pytest.raises(ConfigError, match="built-in demo data would be written under s3://"):
        prepare_dataset(cfg.data, datasets_dir(cfg.run.storage_path))
    assert os.listdir(tmp_path) == ["clips.pkl"]

    # a built dataset (data.path) needs nothing prepared: a run on object storage goes on to start Ray
    ds = _dataset(tmp_path / "ds")
    with pytest.raises(RayStarted):
        train_stgcn.main(_argv(*TINY, f"data.path={ds}", f"run.storage_path=s3://{bucket}/explicit"))
    assert ray_starts == ["train"]


@pytest.mark.ray
def test_a_run_on_object_storage_has_its_config_in_the_bucket(tmp_path, bucket, s3):
    """A real 1-epoch run (its own local Ray, in a subprocess that gets the S3 variables) with
    RECOGNIZER_STORAGE=s3://...: the run folder in the bucket has config.yaml (data.path the dataset it trained
    on), and nothing is written to the working directory."""
    ds = _dataset(tmp_path / "ds")
    work = tmp_path / "work"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update({STORAGE_ENV: f"s3://{bucket}/runs", "RAY_USAGE_STATS_ENABLED": "0", "PYTHONPATH": str(REPO),
                "RECOGNIZER_CACHE": str(tmp_path / "cache")})
    proc = subprocess.run([sys.executable, str(REPO / "rayjobs" / "train_stgcn.py"),
                           *_argv(*TINY, f"data.path={ds}", "run.name=remote")],
                          cwd=work, env=env, capture_output=True, text=True, timeout=540)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["run_dir"] == f"s3://{bucket}/runs/work_dirs/remote" and out["error"] is None
    # a URI a script can pass on, as run_dir is (it was the path inside the bucket, without s3://)
    assert out["latest_checkpoint"] == f"s3://{bucket}/runs/work_dirs/remote/checkpoint_epoch_0001"
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="runs/work_dirs/remote/")["Contents"]]
    assert "runs/work_dirs/remote/config.yaml" in keys and any(k.endswith("_epoch_1.pth") for k in keys), keys
    body = s3.get_object(Bucket=bucket, Key="runs/work_dirs/remote/config.yaml")["Body"].read()
    assert yaml.safe_load(body)["data"]["path"] == ds
    assert os.listdir(work) == []   # no local "s3:/.../config.yaml"


def _existing_run_cfg(storage: str, ds: str, *extra: str) -> TrainJobConfig:
    return load_config(TrainJobConfig, REPO / "configs" / "fight_demo.yaml",
                       [f"run.storage_path={storage}", "run.name=r1", f"data.path={ds}", *extra])


def test_an_existing_run_on_object_storage_is_seen_before_ray(tmp_path, monkeypatch, s3):
    """run.resume=never and the resume checks look at a run on object storage too: Path("s3://b/r") named a local
    folder that never exists, so a second run with resume=never silently continued the first (the reviewer's
    end-to-end run: rc 0, epochs_run 2), and a changed model went to the workers unchecked."""
    from recognizer_core.train.stgcn.job import prepare_run

    monkeypatch.setenv("RECOGNIZER_CACHE", str(tmp_path / "cache"))
    ds = str(write_dataset(make_demo_clips("fight", 16, seed=1), tmp_path / "ds", label_names=("NonFight", "Fight")))
    bucket = f"existing-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=bucket)
    storage = f"s3://{bucket}/runs"
    prepare_run(_existing_run_cfg(storage, ds, "run.resume=never"))   # nothing there yet: a new run
    s3.put_object(Bucket=bucket, Key="runs/r1/checkpoint_manager_snapshot.json", Body=b"{}")
    with pytest.raises(ConfigError, match=r"run.resume=never but run s3://.*/runs/r1 already exists"):
        prepare_run(_existing_run_cfg(storage, ds, "run.resume=never"))
    # its latest checkpoint was trained with another network: refused before Ray, as for a local run
    saved = _existing_run_cfg(storage, ds, "model.base_channels=32").model_dump(mode="json")
    for epoch in (1, 2):
        s3.put_object(Bucket=bucket, Key=f"runs/r1/checkpoint_epoch_000{epoch}/config.yaml",
                      Body=yaml.safe_dump(saved).encode())
    with pytest.raises(ConfigError, match=r"model.base_channels: checkpoint 32, config 64"):
        prepare_run(_existing_run_cfg(storage, ds))
