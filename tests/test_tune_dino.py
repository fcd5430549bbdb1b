"""`rayjobs/tune_dino_pose.py`: the DINO pose search. Its command line, the demo (the DINO job's smoke run) and the
checks before Ray starts; the summary on made-up trials (best config, the guide's best_model.pth, the preset next
to the winner, no mmaction2 export); and one real search of 2 tiny trials on a local Ray."""
from __future__ import annotations

import json
import sys

import pandas as pd
import pytest
import torch
from conftest import REPO

from recognizer_core.config import ConfigError, load_config
from recognizer_core.train.dino_pose.config import DinoPoseJobConfig
from recognizer_core.tune.records import TrialRecord
from recognizer_core.tune.results import write_summary
from recognizer_core.tune.search_space import load_search_space

sys.path.insert(0, str(REPO / "rayjobs"))
import tune_dino_pose  # noqa: E402

SPACE = REPO / "search_spaces" / "dino_pose.yaml"
PRESET = {"optim.lr": 1e-4, "model.decoder_channels": 128, "data.heatmap_sigma": 6.0, "data.occlusion_prob": 0.2}


def _prepare(*argv: str):
    return tune_dino_pose.prepare(tune_dino_pose.build_parser().parse_args(list(argv)))


def _coco(root):
    """Stand-ins for the four COCO paths (prepare checks they exist; nothing reads them before Ray)."""
    for d in ("train2017", "val2017"):
        (root / d).mkdir(parents=True)
    for f in ("train.json", "val.json"):
        (root / f).write_text("{}")
    return ["--train_image_dir", "train2017", "--train_annotation_file", "train.json", "--val_image_dir", "val2017",
            "--val_annotation_file", "val.json"]


def test_without_data_every_trial_is_the_dino_jobs_smoke_run(tmp_path):
    plan = _prepare("--storage-path", str(tmp_path))
    assert plan.demo and plan.options.name == "tune_dino_pose_demo"
    assert (plan.options.num_samples, plan.options.max_concurrent_trials) == (4, 2)
    assert plan.space.metric == "val/AP" and plan.space.mode == "max" and plan.options.scheduler == "asha"
    assert any("DINO pose job's smoke run" in n for n in plan.notes)
    # the tiny random backbone, built beside the experiments (nothing downloaded), and absolute data paths
    backbone = tmp_path / "dino_pose_smoke_assets" / "tiny_dinov2"
    assert plan.extra["model.backbone"] == str(backbone) and (backbone / "config.json").is_file()
    for key in tune_dino_pose.PATH_FIELDS[:4]:
        assert plan.extra[key].startswith("/"), key
    assert plan.extra["train.epochs"] == 2 and plan.extra["data.image_size"] == [64, 48]
    assert plan.extra["scaling.cpus_per_worker"] == 0.5  # the space's demo: 2 trials at a time on 2 CPUs
    # the space's first trial is the guide's preset, at the demo's size
    cfg = plan.space.build_config(DinoPoseJobConfig, plan.space.start_points()[0], plan.extra)
    assert (cfg.optim.lr, cfg.model.decoder_channels, cfg.data.heatmap_sigma) == (1e-4, 128, 6.0)
    assert cfg.data.heatmap_size == (16, 12) and cfg.wandb.enabled is False

    # the command line wins over the demo; --smoke is its 2-trial version
    smoke = _prepare("--storage-path", str(tmp_path), "--smoke", "--set", "train.epochs=1", "--cpus-per-worker",
                     "0.5", "--max-concurrent-trials", "1")
    assert smoke.options.name == "tune_dino_pose_smoke" and smoke.options.num_samples == 2
    assert smoke.options.max_concurrent_trials == 1
    assert smoke.extra["train.epochs"] == 1 and smoke.extra["scaling.cpus_per_worker"] == 0.5


def test_coco_paths_from_the_guides_flags_are_checked_and_made_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    flags = _coco(tmp_path)
    plan = _prepare("--storage-path", str(tmp_path / "tune"), *flags, "--model_name", "facebook/dinov2-small",
                    "--epochs", "3", "--image_size", "256", "192", "--heatmap_size", "64", "48", "--num-samples", "8")
    assert not plan.demo and plan.options.name == "tune_dino_pose" and plan.options.num_samples == 8
    assert plan.extra["data.train_image_dir"] == str(tmp_path / "train2017")  # trials run in their own folders
    assert plan.extra["data.val_annotation_file"] == str(tmp_path / "val.json")
    assert plan.extra["model.backbone"] == "facebook/dinov2-small"  # a Hub name: downloaded by the trials
    assert plan.extra["train.epochs"] == 3 and plan.extra["data.image_size"] == [256, 192]

    with pytest.raises(ConfigError, match=r"^data\.val_annotation_file=.*missing\.json: no such file or folder$"):
        _prepare("--storage-path", str(tmp_path / "tune"), *flags, "--val_annotation_file", "missing.json")
    with pytest.raises(ConfigError, match=r"^set data\.train_annotation_file, data\.val_image_dir"):
        _prepare("--storage-path", str(tmp_path / "tune"), "--train_image_dir", "train2017")
    with pytest.raises(ConfigError, match=r"^model\.backbone=\./no_model: no such folder"):
        _prepare("--storage-path", str(tmp_path / "tune"), *flags, "--model_name", "./no_model")
    with pytest.raises(ConfigError, match=r"^run\.resume_from=.*: no checkpoint file or folder"):
        _prepare("--storage-path", str(tmp_path / "tune"), *flags, "--set", f"run.resume_from={tmp_path / 'x'}")
    with pytest.raises(ConfigError, match="'val/acc_top1' is not reported by the dino_pose trainer"):
        _prepare("--storage-path", str(tmp_path / "tune"), *flags, "--metric", "val/acc_top1")
    with pytest.raises(ConfigError, match=r"model\.decoder_chanels: unknown field"):
        _prepare("--storage-path", str(tmp_path / "tune"), *flags, "--set", "model.decoder_chanels=64")


def test_on_a_cluster_paths_the_driver_cannot_see_are_a_warning(tmp_path, monkeypatch, capsys):
    """As train_dino_pose.py: a cluster's workers may see a mount this driver does not (it was refused here)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")
    flags = _coco(tmp_path)
    plan = _prepare("--storage-path", str(tmp_path / "tune"), *flags, "--val_annotation_file",
                    "/shared/coco/val.json", "--model_name", "/models/dinov2-base")
    err = capsys.readouterr().err
    assert "warning: not visible on this driver" in err and "/shared/coco/val.json" in err and "/models/dino" in err
    assert plan.extra["data.val_annotation_file"] == "/shared/coco/val.json"


@pytest.mark.parametrize("argv, said", [
    (["--folds", "5"], "--folds is STGCN++ only"),
    (["--objective", "latency"], "--objective is STGCN++ only"),
    (["--mo-sampler", "nsga2"], "--mo-sampler is for multi-objective searches"),
    (["--data", "outputs/rwf/dataset"], "--data names an STGCN++ skeleton dataset"),
    (["--space", str(REPO / "search_spaces" / "fight.yaml")], "run rayjobs/tune_fight.py or"),
])
def test_what_the_dino_job_cannot_do_is_refused_in_one_line_before_ray(argv, said, tmp_path, capsys, monkeypatch):
    from recognizer_core import ray_runtime

    started = []   # not ray.is_initialized(): the suite's session-wide Ray may be up already
    monkeypatch.setattr(ray_runtime, "start_ray_or_exit", lambda *a, **k: started.append(a))
    assert tune_dino_pose.main(["--storage-path", str(tmp_path), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and said in err and len(err.splitlines()) == 1, err
    assert started == []


def test_the_stgcn_scripts_name_the_dino_script_for_the_dino_space(tmp_path, capsys):
    """tune_fight.py --space search_spaces/dino_pose.yaml read the DINO preset as an STGCN++ config: 16 problems."""
    sys.path.insert(0, str(REPO))
    from rayjobs.tune_fight import main

    assert main(["--space", str(SPACE), "--storage-path", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "this space is for the 'dino_pose' job" in err and "run rayjobs/tune_dino_pose.py" in err
    assert len(err.splitlines()) == 1, err


def test_help_lists_the_dino_fields_and_flags_not_the_stgcn_only_options(capsys):
    with pytest.raises(SystemExit) as exit_:
        tune_dino_pose.main(["--help"])
    out = capsys.readouterr().out
    assert exit_.value.code == 0
    for shown in ("  data.heatmap_sigma (", "  model.backbone (", "--train_image_dir", "--num-samples", "--smoke"):
        assert shown in out, shown
    for hidden in ("--folds FOLDS", "--objective {", "--mo-sampler {", "--pick-within", "--data DATA"):
        assert hidden not in out, hidden


def _model_file(path, cfg, epoch: int, ap: float) -> None:
    torch.manual_seed(epoch)
    torch.save({"model_state_dict": {"heads.keypoints.w": torch.randn(3)}, "config": cfg.model_dump(mode="json"),
                "epoch": epoch, "metrics": {"val/AP": ap, "epoch": epoch}}, path)


def _trial(root, name, params, cfg, aps, *, own_best: int | None) -> TrialRecord:
    """A trial's reports (one per epoch, val/AP given) and its run folder: Ray's latest kept checkpoint, and the
    loop's best_model.pth of epoch `own_best`."""
    run = root / f"trial_{name}" / "train"
    run.mkdir(parents=True)
    reports = []
    for epoch, ap in enumerate(aps, 1):
        ckpt = run / f"checkpoint_{epoch}"
        ckpt.mkdir()
        _model_file(ckpt / "model.pt", cfg, epoch, ap)
        (ckpt / "training_state.pt").write_bytes(b"state")
        reports.append({"epoch": epoch, "val/AP": ap, "train/loss": 1.0 / epoch, "val_round": epoch,
                        "time_total_s": 10.0 * epoch, "checkpoint_path": str(ckpt)})
    if own_best is not None:
        _model_file(run / "best_model.pth", cfg, own_best, aps[own_best - 1])
    return TrialRecord(name, params, reports, path=str(run.parent), created=int(name[-1]))


def test_summary_on_made_up_trials_is_a_dino_summary(tmp_path):
    space = load_search_space(SPACE, DinoPoseJobConfig, job="dino_pose", metrics=tune_dino_pose.METRICS)
    extra = {"train.epochs": 2, "optim.warmup_epochs": 0.5}
    other = {"optim.lr": 3e-4, "model.decoder_channels": 64, "data.heatmap_sigma": 4.0, "data.occlusion_prob": 0.1}
    cfg = space.build_config(DinoPoseJobConfig, other, extra)
    preset = _trial(tmp_path, "t1", PRESET, cfg, [0.30, 0.40], own_best=2)
    # The winner ties at epochs 1 and 2: Ray kept epoch 2's checkpoint, the loop's best_model.pth is epoch 1's.
    winner = _trial(tmp_path, "t2", other, cfg, [0.50, 0.50], own_best=1)
    failed = TrialRecord("t3", other, [], error="RuntimeError: CUDA out of memory", created=3)
    out = tmp_path / "summary"
    summary = write_summary([failed, winner, preset], space, DinoPoseJobConfig, metric="val/AP", mode="max",
                            extra=extra, out_dir=out, experiment_uri=str(tmp_path), max_t=2,
                            export_best=tune_dino_pose.export_best)
    assert summary["best_trial"] == "t2" and summary["best_value"] == 0.5 and summary["best_at"] == {"epoch": 1}
    assert summary["status_counts"] == {"ok": 2, "error": 1}
    assert summary["preset"]["trial_id"] == "t1" and summary["preset"]["value"] == 0.40
    assert summary["preset"]["winner_minus_preset"] == pytest.approx(0.10)
    assert summary["compute"]["trial_epochs"] == 4 and summary["compute"]["preset_runs_equivalent"] == 2.0

    table = pd.read_csv(out / "results.csv")
    assert list(table["trial_id"]) == ["t2", "t1", "t3"] and list(table["best val/AP"][:2]) == [0.5, 0.4]
    best = load_config(DinoPoseJobConfig, out / "best_config.yaml")  # a ready train_dino_pose.py --config
    assert best == space.build_config(DinoPoseJobConfig, other, extra).model_copy(update={"run": best.run})
    assert best.run.name == "human_pose_tuned" and best.optim.lr == 3e-4
    # The model: the trial's own best_model.pth (epoch 1, the first to reach 0.5), not the kept epoch-2 state;
    # no mmaction2 export.
    assert summary["best_checkpoint"]["source"].endswith("checkpoint_2")
    assert (out / "best_checkpoint" / "model.pt").is_file()
    assert summary["best_checkpoint"]["exported"] == [str(out / "best_model.pth")]
    assert (out / "best_model.pth").read_bytes() == (tmp_path / "trial_t2" / "train" / "best_model.pth").read_bytes()
    assert sorted(p.name for p in out.glob("*.pth")) == ["best_model.pth"]
    assert json.loads((out / "summary.json").read_text())["best_trial"] == "t2"


def test_a_stale_or_missing_best_model_falls_back_to_the_kept_checkpoint(tmp_path):
    """ASHA can stop a trial between its report and the loop's best_model.pth write: that file then holds an
    older, worse epoch, and the kept checkpoint's model.pt is the best model."""
    cfg = DinoPoseJobConfig()
    rec = _trial(tmp_path, "t1", PRESET, cfg, [0.2, 0.6], own_best=1)
    out = tmp_path / "out"
    out.mkdir()
    (path,) = tune_dino_pose.export_best(cfg, tmp_path / "trial_t1" / "train" / "checkpoint_2", out,
                                         trial_path=rec.path)
    assert torch.load(path, weights_only=True)["epoch"] == 2
    (tmp_path / "trial_t1" / "train" / "best_model.pth").unlink()
    (path,) = tune_dino_pose.export_best(cfg, tmp_path / "trial_t1" / "train" / "checkpoint_2", out,
                                         trial_path=rec.path)
    assert torch.load(path, weights_only=True)["epoch"] == 2


@pytest.mark.ray
@pytest.mark.timeout(300)
def test_a_real_search_of_two_tiny_trials_leaves_a_dino_summary(ray_local, tmp_path, capsys):
    """2 trials (the preset, then TPE's), the smoke run's tiny DINOv2 for 1 epoch, one at a time on half a CPU."""
    from recognizer_core.train.dino_pose.loop import load_pose_model

    argv = ["--storage-path", str(tmp_path), "--smoke", "--set", "train.epochs=1", "--cpus-per-worker", "0.5",
            "--max-concurrent-trials", "1", "--progress-interval", "60"]
    assert tune_dino_pose.main(argv) == 0
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    out = tmp_path / "tune_dino_pose_smoke" / "summary"
    summary = json.loads((out / "summary.json").read_text())
    assert last["best_trial"] == summary["best_trial"] and last["metric"] == "val/AP"
    assert summary["trials"] == 2 and summary["status_counts"] == {"ok": 2}, summary["errors"]
    table = pd.read_parquet(out / "results.parquet")
    assert summary["best_value"] == table["best val/AP"].max() and 0.0 <= summary["best_value"] <= 1.0
    assert list(table["epoch at best"]) == [1, 1] and summary["compute"]["trial_epochs"] == 2
    # the first trial ran the guide's values: the preset the winner is compared with
    preset = summary["preset"]
    assert "value" in preset and preset["winner_minus_preset"] == summary["best_value"] - preset["value"]
    assert table.set_index("trial_id").loc[preset["trial_id"], "param: optim.lr"] == PRESET["optim.lr"]

    best = load_config(DinoPoseJobConfig, out / "best_config.yaml")
    assert best.optim.lr == summary["best_params"]["optim.lr"] and best.train.epochs == 1
    assert best.model.decoder_channels == summary["best_params"]["model.decoder_channels"]
    assert {"model.pt", "training_state.pt"} <= {p.name for p in (out / "best_checkpoint").iterdir()}
    assert sorted(p.name for p in out.glob("*.pth")) == ["best_model.pth"]  # no mmaction2 export
    model, cfg = load_pose_model(out / "best_model.pth")
    assert cfg.model.decoder_channels == best.model.decoder_channels
    assert torch.load(out / "best_model.pth", weights_only=True)["epoch"] == 1
    assert (out / "plots" / "optimization_history.png").is_file()
