"""The training jobs check what needs no Ray before Ray starts: a bad dataset, a GPU this machine lacks, a corrupt
or other-task checkpoint, missing COCO inputs, a non-finite config value. Each is one `error:` line and exit status
2, with Ray never started (start_ray_or_exit is replaced by a stub that records the call). No real Ray runs."""
from __future__ import annotations

import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from recognizer_core import ray_runtime
from recognizer_core.config import ConfigError, load_config
from recognizer_core.models.checkpoint import export_mmaction_checkpoint
from recognizer_core.models.recognizer import build_recognizer
from recognizer_core.skeleton.demo_data import make_demo_clips
from recognizer_core.skeleton.store import write_dataset
from recognizer_core.train.sections import ScalingSection
from recognizer_core.train.state import save_training_state
from recognizer_core.train.stgcn.config import TrainJobConfig

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "rayjobs"))

import train_dino_pose  # noqa: E402
from rayjobs import test_stgcn as stgcn_tester  # noqa: E402
from rayjobs import train_stgcn  # noqa: E402

TINY = ["model.num_stages=2", "model.base_channels=8", "model.inflate_stages=[2]", "model.down_stages=[2]",
        "pipeline.clip_len=16", "train.epochs=1", "train.batch_size=4", "data.loader_workers=0",
        "schedule.warmup_epochs=0"]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class RayStarted(Exception):
    """Raised by the start_ray_or_exit stub: the job got as far as starting Ray."""


@pytest.fixture
def ray_starts(monkeypatch, tmp_path):
    """Every start_ray_or_exit call, recorded; the stub raises RayStarted so nothing after it runs."""
    calls = []

    def stub(job, address=None, **kwargs):
        calls.append((job, address))
        raise RayStarted(job)
    monkeypatch.setattr(ray_runtime, "start_ray_or_exit", stub)
    monkeypatch.setenv("RECOGNIZER_CACHE", str(tmp_path / "cache"))  # validation reports of these datasets
    return calls


def _sets(*items: str) -> list[str]:
    return [a for item in items for a in ("--set", item)]


def _dataset(path: Path, task: str = "fight", edit=None) -> str:
    clips = make_demo_clips(task, 24, seed=1)
    if edit:
        edit(clips)
    names = ("NonFight", "Fight") if task == "fight" else ("Normal", "Falldown")
    return str(write_dataset(clips, path, label_names=names, overwrite=True))


def _one_error(capsys, *expected: str) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    for text in expected:
        assert text in lines[0], lines[0]
    return lines[0]


def _rewrite_part(ds: str, edit) -> None:
    part = Path(ds) / "part-00000.parquet"
    table = pq.read_table(part)
    pq.write_table(edit(table), part)


def _set_column(table: pa.Table, name: str, array) -> pa.Table:
    return table.set_column(table.schema.get_field_index(name), name, array)


def test_train_dataset_errors_come_before_ray(tmp_path, ray_starts, capsys):
    """A missing data.path, NaN keypoints, a label outside the classes and a wrong keypoint dtype were reported
    after a private Ray and its dashboard had started (8.6 s for the missing folder)."""
    def nan(t: pa.Table) -> pa.Table:
        kp = t.column("keypoint").to_pylist()
        kp[0][0] = float("nan")
        return _set_column(t, "keypoint", pa.array(kp, pa.list_(pa.float32())))

    def big_label(t: pa.Table) -> pa.Table:
        return _set_column(t, "label", pa.array([7] + t.column("label").to_pylist()[1:], pa.int32()))

    def double(t: pa.Table) -> pa.Table:
        return _set_column(t, "keypoint", t.column("keypoint").cast(pa.list_(pa.float64())))
    cases = [(str(tmp_path / "nope"), ["skeleton dataset folder not found", "nope"])]
    for name, edit, expected in (("nan", nan, ["keypoint has NaN/inf values", "data.nan_policy=zero"]),
                                 ("label", big_label, ["label=7 outside [0, 2)"]),
                                 ("double", double, ["keypoint is list<element: double>, expected list<item: "
                                                     "float>"])):
        ds = _dataset(tmp_path / name)
        _rewrite_part(ds, edit)
        cases.append((ds, expected))
    for path, expected in cases:
        argv = _sets(*TINY, f"data.path={path}", f"run.storage_path={tmp_path / 'runs'}")
        assert train_stgcn.main(argv) == 2, path
        _one_error(capsys, *expected)
    assert ray_starts == []
    # the tune job too: every trial failed with the same message (20 tracebacks at the default --num-samples)
    from rayjobs import tune_fight
    for path, expected in cases[1:]:
        assert tune_fight.main(["--data", path, "--storage-path", str(tmp_path / "tune")]) == 2, path
        lines = [ln for ln in capsys.readouterr().err.strip().splitlines() if ln.startswith("error: ")]
        assert len(lines) == 1 and all(text in lines[0] for text in expected), lines
    assert ray_starts == []


def test_train_validates_the_dataset_once_and_before_ray(tmp_path, monkeypatch, capsys):
    """prepare_run (before Ray) hands the validated dataset to build_trainer, which does not check it again."""
    from recognizer_core.train.stgcn import job

    seen = {"validations": 0, "at_start": None, "trainer": None}
    real = job.validate_dataset

    def counting(*args, **kwargs):
        seen["validations"] += 1
        return real(*args, **kwargs)

    class FakeTrainer:
        def __init__(self, fn, train_loop_config, **kwargs):
            seen["trainer"] = train_loop_config

        def fit(self):
            raise RuntimeError("no Ray in this test")

    monkeypatch.setattr(job, "validate_dataset", counting)
    monkeypatch.setattr(job, "TorchTrainer", FakeTrainer)
    monkeypatch.setattr(ray_runtime, "start_ray_or_exit", lambda *a, **k: seen.update(at_start=seen["validations"]))
    monkeypatch.setenv("RECOGNIZER_CACHE", str(tmp_path / "cache"))
    ds = _dataset(tmp_path / "ds")
    assert train_stgcn.main(_sets(*TINY, f"data.path={ds}", f"run.storage_path={tmp_path / 'runs'}")) == 1
    assert "no Ray in this test" in capsys.readouterr().out
    assert seen["at_start"] == 1 and seen["validations"] == 1
    assert seen["trainer"]["dataset_path"] == str(Path(ds).resolve())


def test_gpus_a_private_ray_cannot_have_are_one_line_before_ray(tmp_path, monkeypatch, ray_starts, capsys):
    """scaling.use_gpu=true on a machine without the GPUs and a private local Ray: a warning, then a
    WorkerGroupStartupTimeoutError traceback every 60 s, forever. With an address (a cluster that may autoscale)
    the job still goes on to Ray and waits."""
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    ds = _dataset(tmp_path / "ds")
    argv = _sets(*TINY, f"data.path={ds}", f"run.storage_path={tmp_path / 'runs'}", "scaling.use_gpu=true")
    assert train_stgcn.main(argv) == 2
    _one_error(capsys, "scaling.use_gpu=true", "asks for 1 GPU", "this machine has 0 CUDA device(s)",
               "set scaling.use_gpu=false")
    assert ray_starts == []
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:1")
    with pytest.raises(RayStarted):
        train_stgcn.main(argv)
    with pytest.raises(RayStarted):
        train_stgcn.main(argv + ["--address", "127.0.0.1:1"])
    assert len(ray_starts) == 2


def test_scaling_config_refuses_what_a_started_private_ray_lacks(monkeypatch, caplog):
    """After start (the Ray's own count): a private Ray is refused, a cluster is warned about (an autoscaler may
    add the GPUs)."""
    import ray

    from recognizer_core.train.ray_run import scaling_config

    monkeypatch.setattr(ray, "is_initialized", lambda: True)
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 2.0})
    gpus = ScalingSection(use_gpu=True, num_workers=2)
    monkeypatch.setenv(ray_runtime.PRIVATE_RAY_ENV, "1")
    with pytest.raises(ConfigError, match=r"asks for 2 GPU, but the private local Ray has 0"):
        scaling_config(gpus)
    with pytest.raises(ConfigError, match=r"asks for 4 CPU, but the private local Ray has 2"):
        scaling_config(ScalingSection(num_workers=2, cpus_per_worker=2))
    assert scaling_config(ScalingSection(num_workers=2)).num_workers == 2
    monkeypatch.delenv(ray_runtime.PRIVATE_RAY_ENV)
    assert scaling_config(gpus).use_gpu
    assert "the run waits for an autoscaler" in caplog.text


def _tiny_cfg(preset: str, *extra: str) -> TrainJobConfig:
    return load_config(TrainJobConfig, REPO / "configs" / preset, TINY + list(extra))


def test_test_job_loads_the_checkpoint_before_ray(tmp_path, ray_starts, capsys):
    """A corrupt --checkpoint was three tracebacks inside Ray; a fight model tested with falldown_stable.yaml was
    scored under the falldown class names without a word."""
    fight_ds, fall_ds = _dataset(tmp_path / "fight"), _dataset(tmp_path / "fall", "falldown")
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint at all" * 10)
    base = TINY + [f"run.storage_path={tmp_path / 'runs'}"]
    assert stgcn_tester.main(_sets(*base, f"data.path={fight_ds}") + ["--checkpoint", str(junk)]) == 2
    _one_error(capsys, str(junk), "cannot read checkpoint")

    model = build_recognizer(_tiny_cfg("fight_stable.yaml").model)
    pth = export_mmaction_checkpoint(model, tmp_path / "fight.pth", classes=["NonFight", "Fight"])
    ray_dir = tmp_path / "checkpoint_epoch_0001"
    save_training_state(ray_dir, model=model, epoch=1, extra={"label_names": ["NonFight", "Fight"]})
    for ckpt in (pth, ray_dir):
        argv = ["--config", str(REPO / "configs/falldown_stable.yaml"), "--checkpoint", str(ckpt)]
        assert stgcn_tester.main(argv + _sets(*base, f"data.path={fall_ds}")) == 2
        _one_error(capsys, "trained on classes ['NonFight', 'Fight']", "data.label_names names them "
                   "['Normal', 'Falldown']")
    assert ray_starts == []
    # the same model with its own task's config goes on to Ray
    with pytest.raises(RayStarted):
        stgcn_tester.main(["--checkpoint", str(pth)] + _sets(*base, f"data.path={fight_ds}"))
    assert ray_starts == [("test", None)]


def _coco(tmp_path: Path) -> dict[str, Path]:
    paths = {"train_image_dir": tmp_path / "train2017", "val_image_dir": tmp_path / "val2017",
             "train_annotation_file": tmp_path / "train.json", "val_annotation_file": tmp_path / "val.json"}
    for name, path in paths.items():
        path.mkdir() if name.endswith("_dir") else path.write_text("{}")
    return paths


def _dino_argv(paths: dict[str, Path], tmp_path: Path) -> list[str]:
    argv = [a for name, path in paths.items() for a in (f"--{name}", str(path))]
    return argv + ["--checkpoint_dir", str(tmp_path / "runs"), "--set", "scaling.cpu_malloc=system"]


def test_dino_job_checks_the_coco_inputs_before_ray(tmp_path, monkeypatch, ray_starts, capsys):
    """A missing --train_image_dir was a FileNotFoundError traceback in a Ray worker, exit status 1."""
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    paths = _coco(tmp_path)
    for name, broken in (("train_image_dir", tmp_path / "nope"), ("val_annotation_file", tmp_path / "none.json"),
                         ("train_annotation_file", paths["train_image_dir"])):
        assert train_dino_pose.main(_dino_argv({**paths, name: broken}, tmp_path)) == 2
        kind = "not a file" if broken.exists() else ("folder" if name.endswith("_dir") else "file") + " not found"
        _one_error(capsys, f"data.{name}={broken}: {kind}")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    assert train_dino_pose.main(_dino_argv(paths, tmp_path) + ["--set", "scaling.use_gpu=true"]) == 2
    _one_error(capsys, "scaling.use_gpu=true", "this machine has 0 CUDA device(s)")
    assert ray_starts == []
    # a cluster's workers may see storage the driver does not: a warning, and on to Ray
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:1")
    with pytest.raises(RayStarted):
        train_dino_pose.main(_dino_argv({**paths, "train_image_dir": tmp_path / "nope"}, tmp_path))
    assert "warning: not visible on this driver" in capsys.readouterr().err


def test_non_finite_config_floats_are_refused_with_the_field(tmp_path, ray_starts, capsys):
    """train.class_weight=[nan, 1.0] and optim.lr=inf loaded (bounds like gt=0 let inf through, NaN passes
    `w <= 0`) and trained into NaN losses."""
    for override, expected in (("optim.lr=inf", "optim.lr: must be a finite number, got inf"),
                               ("train.class_weight=[nan, 1.0]",
                                "train.class_weight: must be finite numbers, got [nan, 1.0]"),
                               ("train.loss_scale=-.inf", "train.loss_scale: must be a finite number"),
                               ("schedule.gamma=.nan", "schedule.gamma")):
        with pytest.raises(ConfigError, match=expected.replace("[", r"\[").replace("]", r"\]")):
            _tiny_cfg("fight_stable.yaml", override)
    assert train_stgcn.main(_sets(*TINY, "optim.lr=inf", f"run.storage_path={tmp_path}")) == 2
    assert "optim.lr: must be a finite number, got inf" in capsys.readouterr().err
    assert _tiny_cfg("fight_stable.yaml", "train.loss_scale=dynamic", "train.class_weight=[1.0, 2.5]")
    assert ray_starts == []


def test_tune_folds_need_no_val_split_and_check_the_fold_view(tmp_path, ray_starts, capsys):
    """With --folds, train and val are pooled into cv<k> splits: a dataset without a val split is valid (the
    early dataset check refused it: "split 'val' is empty"); the fold view is what is checked before Ray."""
    from rayjobs import tune_fight

    def train_and_test(clips):
        for i, c in enumerate(clips):
            c.split = "test" if i % 5 == 4 else "train"
            c.source_video = f"video{i // 3}"
    ds = _dataset(tmp_path / "train_test", edit=train_and_test)
    with pytest.raises(RayStarted):
        tune_fight.main(["--data", ds, "--folds", "3", "--storage-path", str(tmp_path / "tune"), "--num-samples", "2"])
    assert "3-fold cross-validation" in capsys.readouterr().out and len(ray_starts) == 1
