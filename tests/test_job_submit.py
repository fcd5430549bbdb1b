"""The README's cluster path end to end: a real Ray head on loopback (token authentication on, dashboard and
Jobs API on 127.0.0.1), a training job (`rayjobs/train_stgcn.py`, tiny model) submitted through the Jobs API with
the repo as working_dir, waited for, its logs read and its results checked; then the head is stopped. No storage
path is given, as a user following the docs would: the results must land in the documented default outside Ray's
job package (~/recognizer_runs, HOME pointed at the test's folder), never under `runtime_resources/.../_ray_pkg_*`.
(A Tune search submitted the same way, with its summary on shared storage, is tests/test_two_node.py's.)"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from recognizer_core.models import cpu_kernels
from tests.ray_heads import free_port, stop_head

REPO = Path(__file__).resolve().parents[1]
# What the working_dir upload leaves out (Ray also honours .gitignore): environments, outputs, caches.
# A tiny STGCN++ on 48 demo clips, 2 epochs, 1 worker: the job, not the model, is under test here.
TINY = ["model.num_stages=2", "model.base_channels=8", "model.inflate_stages=[2]", "model.down_stages=[2]",
        "pipeline.clip_len=24", "train.epochs=2", "train.val_interval=1", "train.batch_size=8",
        "train.test_after_train=false", "train.log_interval=0", "data.loader_workers=0", "data.demo_num_clips=48",
        "schedule.warmup_epochs=1", "scaling.num_workers=1", "scaling.cpus_per_worker=1", "run.name=job"]
EXCLUDES = [".venv", ".git", "work_dirs", "outputs", "runs", "**/__pycache__", "*.egg-info", ".pytest_cache",
            "bench/results"]


def _wait_http(url: str, timeout: float) -> None:
    import urllib.error
    import urllib.request

    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            urllib.request.urlopen(url + "/api/version", timeout=2)
            return
        except urllib.error.HTTPError:
            return  # up (and asking for a token)
        except OSError:
            time.sleep(0.25)
    raise AssertionError(f"no dashboard at {url} after {timeout}s")


def _submit(client, timeout: float = 150, **job) -> str:
    # The dashboard answers before the node's job agent is up ("No available agent"): retry until it is (60 s
    # were not enough once in a full suite run on 2 loaded cores; alone it takes a few seconds).
    deadline = time.time() + timeout
    while True:
        try:
            return client.submit_job(**job)
        except RuntimeError as err:
            if "No available agent" not in str(err) or time.time() > deadline:
                raise
            time.sleep(0.5)


@pytest.mark.ray
@pytest.mark.timeout(400)
def test_training_job_submitted_to_a_local_head(tmp_path):
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobStatus, JobSubmissionClient

    # Every port of this head is free-picked: the defaults (e.g. the dashboard agent's 52365) may be held by
    # another Ray on this machine, and a job can only be submitted through this head's own agent.
    gcs_port, dash_port, agent_port = free_port(), free_port(), free_port()
    url = f"http://127.0.0.1:{dash_port}"
    token = secrets.token_hex(24)
    venv_bin = str(Path(sys.executable).parent)
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN_PATH")}
    env.update({
        # Token authentication on, as on a real cluster; the token lives only in this environment.
        "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token, "RAY_USAGE_STATS_ENABLED": "0",
        # Submitted entrypoints run `python` from the head's PATH: this venv's.
        "PATH": venv_bin + os.pathsep + env.get("PATH", ""),
        # Other Ray instances may run on this machine (the test session's own): pin this cluster's State API
        # for every process of it (Ray Train's placement-group cleaner looks the cluster up there).
        "RAY_API_SERVER_ADDRESS": url,
        # The job's ~ (where results go when the job runs from the uploaded package): this test's folder.
        "HOME": str(tmp_path / "home"),
        # ... but the fused BatchNorm kernels `make venv` built (part of the installation, as in the cluster image)
        "TORCH_EXTENSIONS_DIR": str(cpu_kernels.build_root()),
    })
    env.pop("RECOGNIZER_STORAGE", None)
    env.pop("RECOGNIZER_TUNE_STORAGE", None)
    temp_dir = tempfile.mkdtemp(prefix="rh", dir="/tmp")  # short: Ray's socket paths must stay < 108 chars
    head = subprocess.Popen(
        [str(Path(venv_bin) / "ray"), "start", "--head", "--block", f"--port={gcs_port}",
         "--node-ip-address=127.0.0.1", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash_port}",
         f"--dashboard-agent-listen-port={agent_port}", "--num-cpus=2", "--disable-usage-stats",
         f"--temp-dir={temp_dir}"],
        env=env, stdout=(tmp_path / "head.log").open("w"), stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_http(url, timeout=90)
        # Without the token the Jobs API refuses to talk.
        with pytest.raises(AuthenticationError):
            JobSubmissionClient(url).list_jobs()
        client = JobSubmissionClient(url, headers={"Authorization": f"Bearer {token}"})
        storage = tmp_path / "home" / "recognizer_runs" / "work_dirs"
        sets = " ".join(f"--set {o}" for o in TINY)
        job_id = _submit(client, entrypoint=f"python rayjobs/train_stgcn.py {sets}",
                         runtime_env={"working_dir": str(REPO), "excludes": EXCLUDES},
                         submission_id=f"train-{secrets.token_hex(3)}")
        deadline = time.time() + 330
        status = client.get_job_status(job_id)
        while status not in {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED} and time.time() < deadline:
            time.sleep(0.5)  # one local HTTP call: the job's end is seen within 0.5 s
            status = client.get_job_status(job_id)
        logs = client.get_job_logs(job_id)
        assert status == JobStatus.SUCCEEDED, f"{status}\n{logs[-6000:]}"
        # The job ran on this cluster (not a local Ray of its own) and says where its results are.
        assert "[train] running on the Ray cluster at" in logs and "a private local Ray" not in logs
        assert "runs from a package uploaded by `ray job submit`" in logs  # and it says where results go
        out = json.loads([line for line in logs.splitlines() if line.startswith("{")][-1])
        run_dir = storage / "job"
        assert out["error"] is None and out["epochs_run"] == 2 and out["run_dir"] == str(run_dir), out
        assert (run_dir / "summary.json").is_file()
        assert (run_dir / "checkpoint_epoch_0002" / "training_state.pt").is_file()
        assert Path(out["best_model_mmaction2"]).is_file() and Path(out["best_model_mmaction2"]).parent == run_dir
        info = client.get_job_info(job_id)
        assert info.runtime_env["working_dir"].startswith("gcs://")  # the repo was uploaded, not read in place

        leaked = [p for p in Path(temp_dir).rglob("work_dirs") if "_ray_pkg_" in str(p)]
        assert not leaked, f"results written inside Ray's job package: {leaked}"

        # `ray job stop` (and the dashboard's Stop) sends the driver SIGTERM and SIGKILLs it 3 s later: the run
        # stops with one line, not a traceback through Ray, and keeps its finished checkpoints.
        longer = [o for o in TINY if not o.startswith(("train.epochs=", "run.name="))]
        sets = " ".join(f"--set {o}" for o in longer + ["train.epochs=100", "run.name=stopped"])
        job_id = _submit(client, entrypoint=f"python rayjobs/train_stgcn.py {sets}",
                         runtime_env={"working_dir": str(REPO), "excludes": EXCLUDES},
                         submission_id=f"stop-{secrets.token_hex(3)}")
        first = storage / "stopped" / "checkpoint_epoch_0001" / "training_state.pt"
        ended = {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}
        deadline = time.time() + 240
        while not first.is_file() and time.time() < deadline:
            assert client.get_job_status(job_id) not in ended, client.get_job_logs(job_id)[-4000:]
            time.sleep(0.5)
        assert first.is_file(), client.get_job_logs(job_id)[-4000:]
        assert client.stop_job(job_id)
        deadline = time.time() + 60
        while (status := client.get_job_status(job_id)) not in ended and time.time() < deadline:
            time.sleep(0.5)
        logs = client.get_job_logs(job_id)
        assert status == JobStatus.STOPPED, f"{status}\n{logs[-4000:]}"
        assert "stopped (SIGTERM); finished work is kept" in logs, logs[-4000:]
        assert "Traceback" not in logs, logs[-4000:]
        assert first.is_file() and not (storage / "stopped" / "summary.json").exists()
    finally:
        stop_head(head)  # this head only (never `ray stop`), in seconds (no 30 s drain)
        shutil.rmtree(temp_dir, ignore_errors=True)
