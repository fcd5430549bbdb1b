"""A resumed STGCN++ run continues only on the dataset its checkpoint trained on: the checkpoint saves the dataset's
identity (resolved location, the store's write id, train / val split sizes; run_state.DatasetIdentity) and a resume
on a dataset rebuilt in place is refused, naming what differs. Data locations compare by what they resolve to, so
the run folder's config.yaml (absolute data.path) resumes a run started with a relative one. The loop runs in one
process (LocalContext, no Ray) with a tiny model."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from recognizer_core.config import dump_config
from recognizer_core.skeleton.clip import SkeletonDataError
from recognizer_core.skeleton.demo_data import make_demo_clips
from recognizer_core.skeleton.store import SkeletonDataset, write_dataset
from recognizer_core.storage import to_uri
from recognizer_core.train.context import LocalContext
from recognizer_core.train.stgcn.config import TrainJobConfig
from recognizer_core.train.stgcn.dataset_source import dataset_location
from recognizer_core.train.stgcn.loop import train_loop
from recognizer_core.train.stgcn.run_state import DATASET_FILE, DatasetIdentity, check_resumable

from test_train_inputs import _cfg  # the tiny fight_stable config those tests train

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _write(folder: Path, n: int) -> None:
    """The store at `folder`, (re)written in place as build_dataset does: a new write id every time."""
    write_dataset(make_demo_clips("fight", n, seed=1), folder, label_names=("NonFight", "Fight"), overwrite=True)


def _train(cfg: TrainJobConfig, tmp_path: Path) -> dict:
    """train_loop on the dataset build_trainer would pass it (prepare_dataset's location, made absolute)."""
    dataset_path = to_uri(dataset_location(cfg.data.path))
    return train_loop(cfg, dataset_path, str(tmp_path / "run"), LocalContext(tmp_path / "ckpt"))


@pytest.fixture
def trained(tmp_path, monkeypatch) -> Path:
    """One epoch trained on the store `ds` given as a relative data.path (as typed at the prompt); returns the
    checkpoint folder."""
    monkeypatch.chdir(tmp_path)
    _write(tmp_path / "ds", 24)
    _train(_cfg("data.path=ds"), tmp_path)
    ckpt = tmp_path / "ckpt" / "epoch_0001"
    assert (ckpt / DATASET_FILE).is_file()
    return ckpt


def test_a_dataset_rebuilt_in_place_with_more_videos_is_not_resumed(trained, tmp_path):
    """The e2e review's repro: the same extract + --build-dataset after adding videos rewrote the store at the same
    path (train 8 -> 12 clips, another val split) and the run resumed at epoch 4 on it, exit 0."""
    saved = json.loads((trained / DATASET_FILE).read_text())
    assert saved["location"] == str(tmp_path / "ds") and saved["train_clips"] > 0 and saved["write_id"]
    _write(tmp_path / "ds", 40)
    now = SkeletonDataset(tmp_path / "ds")
    train, val = (len(now.split_positions(s)) for s in ("train", "val"))
    assert train != saved["train_clips"] and val != saved["val_clips"]
    with pytest.raises(SkeletonDataError, match=rf"the dataset at {tmp_path / 'ds'} was rebuilt since this run's "
                       rf"checkpoint \(write id {saved['write_id']} -> {now.info['write_id']}; train "
                       rf"{saved['train_clips']} -> {train} clips; val {saved['val_clips']} -> {val} clips\).*Use a "
                       r"new run.name"):
        _train(_cfg("data.path=ds", "train.epochs=2"), tmp_path)
    assert not (tmp_path / "ckpt" / "epoch_0002").exists()


def test_the_same_clips_written_again_are_another_dataset_version(trained, tmp_path):
    """A rewrite with the same split sizes is still refused by its write id (the clips in a split may differ)."""
    old_id = json.loads((trained / DATASET_FILE).read_text())["write_id"]
    _write(tmp_path / "ds", 24)
    now = SkeletonDataset(tmp_path / "ds")
    dataset = DatasetIdentity.of(now, str(tmp_path / "ds"), len(now.split_positions("train")),
                                 len(now.split_positions("val")))
    with pytest.raises(SkeletonDataError, match=rf"was rebuilt since this run's checkpoint \(write id {old_id} -> "
                       rf"{now.info['write_id']}\)"):
        check_resumable(_cfg("data.path=ds"), trained, dataset)


def test_the_run_folders_config_with_the_absolute_path_resumes(trained, tmp_path):
    """rayjobs/train_stgcn.py saves the run folder's config.yaml with the absolute dataset path; the checkpoint's
    config.yaml holds data.path as typed ('ds'). Re-running with --config <run>/config.yaml was refused as
    'trained on other data' although it is the same folder."""
    absolute = _cfg(f"data.path={tmp_path / 'ds'}", "train.epochs=2")
    check_resumable(absolute, trained)  # the driver's check (job._check_existing), before the data is opened
    summary = _train(absolute, tmp_path)
    assert summary["epochs_run"] == 2
    assert '"resumed_from_epoch": 1' in (tmp_path / "run" / "resume_log.jsonl").read_text()


def test_another_folder_is_other_data_by_its_resolved_location(trained, tmp_path):
    shutil.copytree(tmp_path / "ds", tmp_path / "ds2")  # the same write id and sizes, another folder
    with pytest.raises(SkeletonDataError, match=rf"trained on other data \(dataset: checkpoint "
                       rf"'{tmp_path / 'ds'}', config '{tmp_path / 'ds2'}'\)"):
        check_resumable(_cfg(f"data.path={tmp_path / 'ds2'}"), trained)


def test_a_checkpoint_without_the_identity_is_judged_by_the_config_fields(trained, tmp_path):
    """Checkpoints written before the identity was saved: the data fields, data.path as it resolves (the run
    folder's config.yaml names it absolutely since 2026-12-05; the old checkpoint as typed)."""
    (trained / DATASET_FILE).unlink()
    check_resumable(_cfg("data.path=./ds/"), trained)
    check_resumable(_cfg(f"data.path={tmp_path / 'ds'}"), trained)
    _write(tmp_path / "other", 24)
    with pytest.raises(ValueError, match=r"trained on other data \(data.path: checkpoint '/.*/ds', config '/.*/other'"):
        check_resumable(_cfg(f"data.path={tmp_path / 'other'}"), trained)


def test_a_prepared_store_rewritten_with_the_same_inputs_is_the_same_data(tmp_path):
    """pkl / demo stores are written once per content (their folder name hashes the inputs): a store written again
    there (its folder deleted) holds the same clips, so its new write id alone does not refuse; other split
    sizes do."""
    cfg, ckpt = _cfg(), tmp_path / "ckpt"  # the built-in demo data: no data.path
    ckpt.mkdir()
    dump_config(cfg, ckpt / "config.yaml")
    DatasetIdentity("/w/datasets/demo_fight_96_seed0", "aaaa", 64, 16).save(ckpt)
    check_resumable(cfg, ckpt, DatasetIdentity("/w/datasets/demo_fight_96_seed0", "bbbb", 64, 16))
    with pytest.raises(SkeletonDataError, match=r"the dataset at /w/datasets/demo_fight_96_seed0 was changed since "
                       r"this run's checkpoint \(val 16 -> 20 clips\)"):
        check_resumable(cfg, ckpt, DatasetIdentity("/w/datasets/demo_fight_96_seed0", "bbbb", 64, 20))
    with pytest.raises(SkeletonDataError, match=r"other data \(dataset: checkpoint '/w/datasets/demo_fight_96_seed0', "
                       r"config '/w/datasets/demo_fight_48_seed0'\)"):
        check_resumable(cfg, ckpt, DatasetIdentity("/w/datasets/demo_fight_48_seed0", "aaaa", 64, 16))


def test_an_unreadable_identity_is_one_line_naming_the_file(tmp_path):
    cfg, ckpt = _cfg(), tmp_path / "ckpt"
    ckpt.mkdir()
    dump_config(cfg, ckpt / "config.yaml")
    (ckpt / DATASET_FILE).write_text('{"location": "/x"}')
    with pytest.raises(ValueError, match=rf"{ckpt / DATASET_FILE}: not a dataset identity \(KeyError"):
        check_resumable(cfg, ckpt)


def test_the_driver_refuses_a_rebuilt_dataset_before_ray_starts(trained, tmp_path):
    """prepare_run (what train_stgcn.py runs before Ray) checks the latest checkpoint against the prepared dataset:
    before, a rebuilt dataset was found only by the workers, after Ray's start-up."""
    from recognizer_core.train.stgcn.job import _SNAPSHOT, prepare_run

    run_dir = tmp_path / "runs" / "r"
    shutil.copytree(trained, run_dir / "checkpoint_epoch_0001")
    (run_dir / _SNAPSHOT).write_text("{}")   # what marks a folder as a Ray Train run (job.existing_run)
    cfg = _cfg("data.path=ds", f"run.storage_path={tmp_path / 'runs'}", "run.name=r")
    assert prepare_run(cfg) == to_uri(str(tmp_path / "ds"))   # the same dataset: resumable
    _write(tmp_path / "ds", 40)
    with pytest.raises(ValueError, match=r"was rebuilt since this run's checkpoint"):
        prepare_run(cfg)


def test_a_demo_run_resumes_from_its_run_folders_config(tmp_path, monkeypatch):
    """The run folder's config.yaml names the demo store training prepared (data.path; recorded_config) where the
    checkpoint's has none: '--config <run>/config.yaml' was refused as other data (data.path: checkpoint None)."""
    from recognizer_core.train.stgcn.job import dataset_for, recorded_config

    monkeypatch.chdir(tmp_path)
    cfg = _cfg(f"run.storage_path={tmp_path / 'runs'}", "data.demo_num_clips=24")
    dataset = dataset_for(cfg)
    train_loop(cfg, dataset, str(tmp_path / "run"), LocalContext(tmp_path / "ckpt"))
    ckpt = tmp_path / "ckpt" / "epoch_0001"
    again = recorded_config(cfg, dataset)
    assert again.data.path and not cfg.data.path
    check_resumable(again, ckpt)                                       # the driver's check
    check_resumable(again, ckpt, DatasetIdentity.saved_in(ckpt))       # the workers', on the same store


def test_a_pkl_run_resumes_from_its_run_folders_config(tmp_path, monkeypatch):
    """As the demo run above, for a run on an mmaction pkl: the run folder's config.yaml names the store the pkl
    was converted into (data.path, the pkl fields dropped) where the checkpoint's names the pkl (data.train_pkl):
    the stored location decides, so '--config <run>/config.yaml' resumes it."""
    from recognizer_core.skeleton.mmaction_pkl import write_mmaction_pkl
    from recognizer_core.train.stgcn.job import dataset_for, recorded_config

    monkeypatch.chdir(tmp_path)
    pkl = write_mmaction_pkl(make_demo_clips("fight", 24, seed=2), tmp_path / "all.pkl")
    cfg = _cfg(f"run.storage_path={tmp_path / 'runs'}", f"data.train_pkl={pkl}")
    dataset = dataset_for(cfg)
    train_loop(cfg, dataset, str(tmp_path / "run"), LocalContext(tmp_path / "ckpt"))
    ckpt = tmp_path / "ckpt" / "epoch_0001"
    again = recorded_config(cfg, dataset)
    assert again.data.path and again.data.train_pkl is None and cfg.data.train_pkl
    check_resumable(again, ckpt)                                       # the driver's check
    check_resumable(again, ckpt, DatasetIdentity.saved_in(ckpt))       # the workers', on the same store


def test_a_run_resumes_with_another_gradient_accumulation(trained, tmp_path):
    """train.accumulative_counts changes neither the batches per epoch nor the schedule they step (its groups
    restart every epoch): a resume with another value continues the run where the number of workers or the batch
    size would not."""
    summary = _train(_cfg("data.path=ds", "train.epochs=2", "train.accumulative_counts=2"), tmp_path)
    assert summary["epochs_run"] == 2 and (tmp_path / "ckpt" / "epoch_0002").is_dir()
    with pytest.raises(ValueError, match=r"the steps per epoch changed \(train.batch_size: checkpoint 4, config 8\)"):
        check_resumable(_cfg("data.path=ds", "train.epochs=2", "train.batch_size=8"), trained)
