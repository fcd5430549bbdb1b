"""A checkpoint folder whose copy was cut short (the disk filled while Ray copied epoch 2's checkpoint: config.yaml
0 bytes, training_state.pt truncated; Ray's checkpoint_manager_snapshot.json lists only epoch 1) does not block the
resume. The driver's check took the newest checkpoint_epoch_* folder and refused the run as 'the model or pipeline
changed (model.num_classes: checkpoint None, ...)'; it now checks the checkpoint Ray resumes from, the snapshot's
latest, and says the partial folder is incomplete. The run is one epoch trained in one process (LocalContext, no
Ray) with a tiny model, laid out as a Ray Train run folder; the snapshot is written by Ray's own state model."""
from __future__ import annotations

import pickle
import shutil
import uuid
from pathlib import Path

import pytest
from ray.train.v2._internal.execution.checkpoint.checkpoint_manager import _CheckpointManagerState, \
    _TrainingResultState

from recognizer_core.config import ConfigError
from recognizer_core.train.state import STATE_FILE
from recognizer_core.train.stgcn.job import _SNAPSHOT, _check_existing, _run_on_disk, default_run_config, \
    prepare_run
from recognizer_core.train.stgcn.run_state import check_resumable

from test_resume_dataset_identity import trained  # noqa: F401  (fixture: one epoch on the store `ds`)
from test_train_inputs import _cfg  # the tiny fight_stable config those tests train

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _snapshot(*names: str) -> str:
    """checkpoint_manager_snapshot.json as Ray Train 2.60 writes it, listing `names` (the last is the latest)."""
    results = [_TrainingResultState(checkpoint_dir_name=n, metrics={"epoch": int(n[-4:])}) for n in names]
    return _CheckpointManagerState(checkpoint_results=results, checkpoint_report_indices=list(range(len(names))),
                                   latest_checkpoint_result=results[-1] if results else None,
                                   pending_training_results=[], pending_validation_specs=[],
                                   current_report_index=len(names), validated_checkpoint_dir_names=list(names),
                                   timed_out_validation_checkpoint_dir_names=[],
                                   failed_validation_checkpoint_dir_names=[]).model_dump_json()


def _cut_short_copy(complete: Path, partial: Path) -> None:
    """What a full disk leaves of a checkpoint copy: config.yaml 0 bytes, training_state.pt cut to its first part."""
    partial.mkdir()
    (partial / "config.yaml").write_bytes(b"")
    state = (complete / STATE_FILE).read_bytes()
    (partial / STATE_FILE).write_bytes(state[: len(state) // 3])


def _run_folder(trained: Path, root: Path, snapshot: str) -> Path:
    run_dir = root / "runs" / "r"
    shutil.copytree(trained, run_dir / "checkpoint_epoch_0001")
    _cut_short_copy(trained, run_dir / "checkpoint_epoch_0002")
    (run_dir / _SNAPSHOT).write_text(snapshot)
    return run_dir


def _run_cfg(root: Path, *extra: str):
    return _cfg("data.path=ds", f"run.storage_path={root / 'runs'}", "run.name=r", *extra)


def test_a_checkpoint_cut_short_by_a_full_disk_is_passed_over_for_rays_latest(trained, tmp_path, capsys):
    """The reviewer's repro: the same command after freeing the disk exited 2 with 'the model or pipeline
    changed'; the good epoch-1 checkpoint (Ray's latest) is the one checked, and a line names the partial one."""
    run_dir = _run_folder(trained, tmp_path, _snapshot("checkpoint_epoch_0001"))
    cfg = _run_cfg(tmp_path)
    prepare_run(cfg)   # the driver's whole pre-Ray check, before and after the dataset is prepared
    out = capsys.readouterr().out
    with _run_on_disk(str(run_dir)) as (found, latest, _):
        assert found and latest == run_dir / "checkpoint_epoch_0001"
    assert out.count(f"checkpoint {run_dir / 'checkpoint_epoch_0002'} is incomplete") == 1
    assert "resumes from checkpoint_epoch_0001" in out
    # the check still runs on Ray's latest: a changed model is refused, naming epoch 1
    with pytest.raises(ConfigError, match=r"checkpoint_epoch_0001: the model or pipeline changed \(model."
                                          r"base_channels: checkpoint 8, config 16"):
        _check_existing(_run_cfg(tmp_path, "model.base_channels=16"), default_run_config(cfg))


def test_without_a_snapshot_listing_the_newest_complete_checkpoint_is_checked(trained, tmp_path, capsys):
    """A snapshot that lists nothing ('{}': older layouts, the tests' runs) leaves the folders to decide: the
    newest complete one, with a line that the partial newer one is incomplete."""
    run_dir = _run_folder(trained, tmp_path, "{}")
    with _run_on_disk(str(run_dir)) as (_, latest, notes):
        assert latest == run_dir / "checkpoint_epoch_0001"
    assert len(notes) == 1 and "checkpoint_epoch_0002 is incomplete (its config.yaml is empty" in notes[0]
    _check_existing(_run_cfg(tmp_path), default_run_config(_run_cfg(tmp_path)))
    with pytest.raises(ConfigError, match=r"checkpoint_epoch_0001: the model or pipeline changed"):
        _check_existing(_run_cfg(tmp_path, "model.base_channels=16"), default_run_config(_run_cfg(tmp_path)))


def test_a_truncated_training_state_alone_makes_a_checkpoint_incomplete(trained, tmp_path):
    run_dir = _run_folder(trained, tmp_path, "{}")
    shutil.copy(trained / "config.yaml", run_dir / "checkpoint_epoch_0002" / "config.yaml")
    with _run_on_disk(str(run_dir)) as (_, latest, notes):
        assert latest == run_dir / "checkpoint_epoch_0001"
    assert f"{STATE_FILE} is cut short" in notes[0]


def test_rays_latest_checkpoint_incomplete_is_one_line_not_a_model_change(trained, tmp_path):
    """The checkpoint Ray would restore is itself cut short (damaged after Ray listed it): the run cannot resume
    from it, and the line says so instead of listing every field as changed."""
    _run_folder(trained, tmp_path, _snapshot("checkpoint_epoch_0001", "checkpoint_epoch_0002"))
    cfg = _run_cfg(tmp_path)
    with pytest.raises(ConfigError) as err:
        _check_existing(cfg, default_run_config(cfg))
    assert "checkpoint_epoch_0002" in str(err.value) and "is incomplete (its config.yaml is empty)" in str(err.value)
    assert "changed" not in str(err.value)


def test_check_resumable_calls_an_empty_config_incomplete(trained, tmp_path):
    """The workers' check (run_state.check_resumable on the checkpoint Ray hands them) says the same; the error
    pickles (Ray sends a worker's exception to the driver)."""
    from recognizer_core.train.stgcn.run_state import IncompleteCheckpoint

    partial = tmp_path / "partial"
    _cut_short_copy(trained, partial)
    with pytest.raises(IncompleteCheckpoint, match=r"is incomplete \(its config.yaml is empty") as err:
        check_resumable(_run_cfg(tmp_path), partial)
    assert str(pickle.loads(pickle.dumps(err.value))) == str(err.value)
    (partial / "config.yaml").write_text("data:\n  path: ds\n")   # cut before the model section
    with pytest.raises(IncompleteCheckpoint, match=r"config.yaml is cut short"):
        check_resumable(_run_cfg(tmp_path), partial)


def test_a_run_on_object_storage_passes_over_a_partial_checkpoint(trained, tmp_path, s3):
    """The same run folder in a bucket (its checkpoints listed through its filesystem): Ray's latest is checked."""
    bucket = f"partial-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=bucket)
    local = _run_folder(trained, tmp_path / "local", _snapshot("checkpoint_epoch_0001"))
    for path in local.rglob("*"):
        if path.is_file():
            s3.put_object(Bucket=bucket, Key=f"runs/r/{path.relative_to(local)}", Body=path.read_bytes())
    storage = f"s3://{bucket}/runs"
    cfg = _cfg("data.path=ds", f"run.storage_path={storage}", "run.name=r")
    with _run_on_disk(f"{storage}/r") as (found, latest, notes):
        assert found and latest.name == "checkpoint_epoch_0001" and (latest / "config.yaml").stat().st_size > 0
    assert notes == [f"checkpoint {storage}/r/checkpoint_epoch_0002 is incomplete (not in Ray's {_SNAPSHOT}: its "
                     "copy did not finish, e.g. the disk was full); the run resumes from checkpoint_epoch_0001 "
                     "instead"]
    _check_existing(cfg, default_run_config(cfg))
    with pytest.raises(ConfigError, match=r"checkpoint_epoch_0001: the model or pipeline changed"):
        _check_existing(_cfg("data.path=ds", f"run.storage_path={storage}", "run.name=r", "model.base_channels=16"),
                        default_run_config(cfg))
