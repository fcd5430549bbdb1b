"""End-to-end STGCN++ jobs on a local Ray (2 CPUs, 2 workers, tiny model, demo data).

One run per scenario, several assertions each: the fight preset (train + val + test + the test job + mmaction2
export), which is also the uninterrupted reference, and the same run with its driver killed mid-run, the command
re-run, and a worker killed in that re-run. That must finish with the reference's weights: resume is exact, not
just "it continued". (The falldown preset differs only in its values, checked in tests/test_presets.py.)
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from recognizer_core.config import load_config
from recognizer_core.models import bn_act
from recognizer_core.models.checkpoint import load_mmaction_checkpoint
from recognizer_core.models.recognizer import build_recognizer
from recognizer_core.train.stgcn.config import TrainJobConfig
from recognizer_core.train.cpu_malloc import find_tcmalloc
from recognizer_core.train.faults import FAULT_ENV
from tests import fight_reference as reference

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
pytestmark = pytest.mark.ray  # a local Ray runtime and 2-worker Ray Train runs: minutes, 600 s timeout each

TINY = reference.TINY


def _args(preset: str, storage: Path, name: str, *extra: str) -> list[str]:
    sets = TINY + [f"run.storage_path={storage}", f"run.name={name}", *extra]
    return ["--config", str(REPO / "configs" / preset)] + [a for s in sets for a in ("--set", s)]


def _train(argv: list[str], capsys) -> dict:
    from rayjobs.train_stgcn import main

    assert main(argv) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def _final_state(run_dir: Path) -> dict:
    ckpts = sorted(run_dir.glob("checkpoint_epoch_*"))
    state = torch.load(ckpts[-1] / "training_state.pt", map_location="cpu", weights_only=True)
    return state


def _assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs after resume"


# The fight preset's uninterrupted run is the session fixture `fight_reference` (tests/fight_reference.py): the
# preset test checks it, and the resume tests here and in test_two_node must reproduce its weights exactly.


def test_fight_preset_train_val_test_export(fight_reference, capsys, monkeypatch):
    run, out = fight_reference
    storage = run.parent
    assert out["error"] is None and out["epochs_run"] == 4
    assert not (run / "resume_log.jsonl").exists()  # uninterrupted: nothing resumed
    summary = json.loads((run / "summary.json").read_text())
    hist = summary["history"]
    assert [h["epoch"] for h in hist] == [1, 2, 3, 4]
    # val_interval 2 and the last epoch; val/* only where validation ran, never a placeholder
    assert ["val/acc_top1" in h for h in hist] == [False, True, False, True]
    assert all(h["train/loss"] > 0 for h in hist)
    # warmup over epoch 1 (per iteration), then the base lr auto-scaled by 2 workers * 8 / 128
    assert hist[-1]["lr"] == pytest.approx(1e-4 * 16 / 128)
    # Ray Train checkpoints at the validation epochs, each with the full state + config + metrics
    ckpts = sorted(p.name for p in run.glob("checkpoint_epoch_*"))
    assert ckpts == ["checkpoint_epoch_0002", "checkpoint_epoch_0004"]
    for c in ckpts:
        assert {"training_state.pt", "config.yaml", "metrics.json"} <= {p.name for p in (run / c).iterdir()}
    # the best model in mmaction2 format loads back strictly and equals the best weights kept in the state
    best = summary["best"]
    pth = run / best["file"]
    assert pth.name == f"best_acc_top1_epoch_{best['epoch']}.pth" and out["best_model_mmaction2"] == str(pth)
    cfg = load_config(TrainJobConfig, REPO / "configs/fight_stable.yaml", TINY)
    model = build_recognizer(cfg.model)
    load_mmaction_checkpoint(model, pth)
    raw = torch.load(pth, map_location="cpu", weights_only=True)
    assert raw["meta"]["dataset_meta"]["classes"] == ["NonFight", "Fight"] and raw["meta"]["epoch"] == best["epoch"]
    best_ckpt = run / f"checkpoint_epoch_{best['epoch']:04d}" / "training_state.pt"
    _assert_same_weights(model.state_dict(), torch.load(best_ckpt, weights_only=True)["model"])
    # metrics: validation report in the checkpoint, test after training, plots, TensorBoard
    val = json.loads((run / f"checkpoint_epoch_{best['epoch']:04d}" / "metrics.json").read_text())["val_report"]
    n_val = sum(map(sum, val["confusion_matrix"]))
    assert n_val == val["num_samples"] > 0 and set(val["precision"]) == {"NonFight", "Fight"}
    test = json.loads((run / "test_metrics.json").read_text())
    assert test["acc_top1"] == out["test_acc_top1"] and 0 <= test["acc_top1"] <= 1
    assert test["checkpoint"] == f"best epoch {best['epoch']}"  # the best checkpoint Ray kept, after fit()
    assert sum(map(sum, test["confusion_matrix"])) == test["num_samples"] > 0
    for png in ("curves.png", "confusion_matrix_val.png", "confusion_matrix_test.png"):
        assert (run / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert list((run / "logs" / "tensorboard").glob("events.out.tfevents.*"))

    # The test job with no arguments, from another folder whose work_dirs has no run of the preset's name: the
    # newest run is found, named, and tested with the config it was trained with (its best model, multi-clip:
    # softmax averaged over 3 clips). One Ray test run covers the job, run discovery and the run's own config.
    from rayjobs.test_stgcn import main as test_main

    elsewhere = storage.parent / f"{storage.name}_elsewhere"
    elsewhere.mkdir()
    (elsewhere / "work_dirs").symlink_to(storage)
    monkeypatch.chdir(elsewhere)
    capsys.readouterr()
    assert test_main([]) == 0
    printed = capsys.readouterr().out
    assert f"no --config: testing the newest training run, {run}" in printed
    res = json.loads(printed.strip().splitlines()[-1])
    m = json.loads((run / "test" / "test_metrics.json").read_text())
    assert res["test_num_clips"] == m["test_num_clips"] == 3 and m["checkpoint"].endswith(best["file"])
    assert res["num_samples"] == m["num_samples"] == test["num_samples"] and res["checkpoint"].endswith(best["file"])


def test_stopped_run_then_killed_worker_resume_exactly(fight_reference, ray_local, monkeypatch, capsys, tmp_path):
    """Both ways a run resumes, in one run: its driver is killed mid-run and the command re-run (the run continues
    from its latest checkpoint), and in that re-run a worker dies (Ray Train restarts the worker group from the
    latest checkpoint). It must end with the reference's weights and scheduler state: resume is exact, not just
    "it continued"."""
    storage = tmp_path
    driver_marker, worker_marker = tmp_path / "driver_killed.marker", tmp_path / "killed_worker.marker"
    # No test after training: the resumed run's test score against the reference's is test_two_node's check.
    # The workers run under tcmalloc where the machine has it (`make test` installs it), the reference under the
    # system malloc (auto: the test's Ray is not a job's private one): the allocator must not change the math.
    malloc = "tcmalloc" if find_tcmalloc() else "system"
    args = reference.args(storage, "stopped", "train.test_after_train=false", f"scaling.cpu_malloc={malloc}")
    # A real driver process, SIGKILLed by the rank-0 worker after epoch 3 (the epoch-2 checkpoint is the latest)
    code = ("import os, sys; sys.argv[1:1] = []; from rayjobs.train_stgcn import main; "
            f"os.environ['{FAULT_ENV}'] = f'epoch=3,rank=0,marker={driver_marker},kill_pid={{os.getpid()}}'; "
            f"sys.exit(main(sys.argv[1:]))")
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_ADDRESS": ray_local.get_runtime_context().gcs_address}
    proc = subprocess.run([sys.executable, "-c", code, *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=240)
    assert proc.returncode == -9, proc.stdout[-2000:] + proc.stderr[-3000:]
    run = storage / "stopped"
    assert driver_marker.exists() and not (run / "summary.json").exists()
    # The same command again continues the run from its latest checkpoint; there, rank 1 exits after epoch 3 (a
    # lost worker): the worker group restarts from the epoch-2 checkpoint again.
    monkeypatch.setenv(FAULT_ENV, f"epoch=3,rank=1,marker={worker_marker}")
    out = _train(args, capsys)
    assert worker_marker.exists(), "the worker fault was not injected"
    assert out["error"] is None and out["epochs_run"] == 4
    resumes = [json.loads(line) for line in (run / "resume_log.jsonl").read_text().splitlines()]
    # the re-run after the driver was killed, then the worker-group restart: each from the checkpoint before
    assert [r["resumed_from_epoch"] for r in resumes] == [2, 2]
    summary = json.loads((run / "summary.json").read_text())
    assert [h["epoch"] for h in summary["history"]] == [1, 2, 3, 4]  # epoch 3 redone twice, not duplicated
    assert ("tcmalloc" in summary["malloc"]) == (malloc == "tcmalloc"), summary["malloc"]
    # the workers ran the fused BatchNorm kernels that `make venv` built (or say why not, as this process would)
    assert summary["batch_norm"] == bn_act.describe(torch.device("cpu")), summary["batch_norm"]
    ref, got = _final_state(fight_reference[0]), _final_state(run)
    _assert_same_weights(ref["model"], got["model"])
    assert ref["scheduler"] == got["scheduler"]


def test_a_data_error_in_a_worker_ends_the_run_at_once(ray_local, tmp_path, capsys, monkeypatch):
    """An all-zero clip is caught by the driver's validation before fit() (one line, exit 2). When such an error
    still reaches a worker (here: the driver's check switched off, as for a file changed after validation), it
    ends the run with the data error, in one JSON line and exit status 1: not retried run.max_failures times."""
    import recognizer_core.train.stgcn.job as stgcn_job
    from rayjobs.train_stgcn import main
    from recognizer_core.skeleton.demo_data import make_demo_clips
    from recognizer_core.skeleton.store import write_dataset

    clips = make_demo_clips("fight", 24, seed=1)
    broken = next(c for c in clips if c.split == "train")
    broken.keypoint[...] = 0
    broken.keypoint_score[...] = 0
    ds = write_dataset(clips, tmp_path / "ds", label_names=("NonFight", "Fight"))
    args = _args("fight_stable.yaml", tmp_path, "broken", f"data.path={ds}", "data.skip_empty_clips=false",
                 "run.max_failures=3")
    assert main(args) == 2  # the driver's streamed validation names the clip before any worker starts
    err = capsys.readouterr().err
    assert broken.clip_id in err and "all zero" in err and "skip_empty_clips" in err
    monkeypatch.setattr(stgcn_job, "validate_dataset", lambda *a, **k: None)
    assert main(args) == 1
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    # ended by the controller callback (a non-retryable ControllerError), not a WorkerGroupError after retries
    assert out["error"].startswith("ControllerError") and "(a data error: not retried)" in out["error"]
    assert broken.clip_id in out["error"]
    assert "skip_empty_clips" in out["error"]  # the fix is named
    assert not (tmp_path / "broken" / "summary.json").exists()
