"""Two Ray nodes on one machine that share nothing but what a real cluster shares, and the jobs run through them.

- The head runs here; the second node runs inside its own mount namespace (`unshare -m`) with a private tmpfs
  over the head's Ray temp dir and over $HOME: a file either node writes to a node-local path (its session
  folder, the uploaded job package, ~, the driver's working directory) is invisible to the other, as between
  two machines. The nodes have their own loopback addresses (127.0.0.1 / 127.0.0.2).
- Shared storage is one directory both see (the NFS / ReadWriteMany case): $RECOGNIZER_STORAGE on both nodes,
  as cluster/kuberay sets it.
- Every job goes through `ray job submit` (the Jobs API) with the repository as working_dir.
- STGCN++ trains with 2 workers placed STRICT_SPREAD (one per node), the second node killed mid-run and brought
  back: the run must finish from its last checkpoint with the final weights and metrics of the same run
  uninterrupted (the session's `fight_reference`, tests/fight_reference.py: made once, on the local Ray; 2 DDP
  workers compute the same numbers wherever they are placed).
- A 2-trial Tune search (side by side, one 0.9-CPU worker each, on nodes of 1 CPU: two workers never fit on one
  node) runs trials on both nodes, and writes its summary to the shared storage.
- Extraction (fake RTMO, tests/fakes/fake_rtmo.py) reads videos from the shared storage and writes its clips and
  manifest there; build_dataset then writes the dataset to s3:// on an S3-compatible server (moto) on 127.0.0.1,
  which every node reaches through AWS_ENDPOINT_URL + keys in its environment (pyarrow's S3 filesystem reads them).
- DINO pose trains 1 epoch on the tiny random backbone (tests/dino_tiny.py), 2 workers, one per node.

Skips (with the reason) where mount namespaces are not allowed (not root, or no unshare).
"""
from __future__ import annotations

import contextlib
import json
import os
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch

from recognizer_core.models import cpu_kernels
from recognizer_core.train.faults import FAULT_ENV
from tests import fight_reference as reference
from tests.ray_heads import free_port, stop_head

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
S3_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
          "AWS_EC2_METADATA_DISABLED": "true"}
EXCLUDES = [".venv", ".git", "work_dirs", "outputs", "runs", "**/__pycache__", "*.egg-info", ".pytest_cache",
            "bench/results"]
# The reference's settings (4 epochs, checkpoints at epochs 2 and 4), one worker per node, restarts allowed.
SPREAD = ["scaling.placement_strategy=STRICT_SPREAD", "run.max_failures=4"]


def _namespaces_allowed() -> str | None:
    if not shutil.which("unshare"):
        return "no `unshare` binary"
    probe = subprocess.run(["unshare", "-m", "--propagation", "private", "mount", "-t", "tmpfs", "tmpfs",
                            tempfile.gettempdir()], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"mount namespaces not allowed here ({probe.stderr.strip() or probe.returncode}); CI runs as root"
    return None


class TwoNodeCluster:
    """Head (this namespace) + node2 (private mounts); start/kill/restart node2 at will."""

    def __init__(self, root: Path, s3_endpoint: str):
        self.root = root
        self.shared = root / "shared"
        self.home = root / "home"
        for p in (self.shared, self.home):
            p.mkdir(parents=True)
        # Ray's socket paths must stay < 108 chars: short temp dirs directly under /tmp.
        self.head_tmp = tempfile.mkdtemp(prefix="tnh", dir="/tmp")
        self.node2_tmp = tempfile.mkdtemp(prefix="tn2", dir="/tmp")
        self.gcs_port, self.dash_port = free_port(), free_port()
        self.address = f"127.0.0.1:{self.gcs_port}"
        self.url = f"http://127.0.0.1:{self.dash_port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "RECOGNIZER_"))}
        env.update({
            "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0", "HOME": str(self.home),
            # The fused BatchNorm kernels `make venv` built, as the cluster image carries them: part of the
            # installation (like the shared .venv), not a node-local file; else each node compiles them anew.
            "TORCH_EXTENSIONS_DIR": str(cpu_kernels.build_root()),
            "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}", "RECOGNIZER_STORAGE": str(self.shared / "runs"),
            "RAY_API_SERVER_ADDRESS": self.url,
            # A dead node is noticed in seconds, and a restarted worker group may wait for it to come back.
            "RAY_health_check_period_ms": "500", "RAY_health_check_failure_threshold": "5",
            "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": "180",
            # Ray Train's controller takes one report per poll (see tests/conftest.py): poll as the suite does.
            "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": os.environ.get("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5"),
            # Object storage: pyarrow's S3 filesystem (and boto3) read the endpoint and keys from these.
            **S3_ENV, "AWS_ENDPOINT_URL": s3_endpoint,
        })
        self.env = env
        self.head = self._start("head", [
            "--head", f"--port={self.gcs_port}", "--node-ip-address=127.0.0.1", "--dashboard-host=127.0.0.1",
            f"--dashboard-port={self.dash_port}", "--num-cpus=1", f"--temp-dir={self.head_tmp}",
            '--resources={"head": 1}'])
        self.node2 = None

    def _ports(self) -> list[str]:
        return [f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
                f"--metrics-export-port={free_port()}", f"--runtime-env-agent-port={free_port()}",
                f"--node-manager-port={free_port()}", f"--object-manager-port={free_port()}",
                f"--ray-client-server-port={free_port()}"]

    def _start(self, name: str, args: list[str], prefix: list[str] | None = None) -> subprocess.Popen:
        cmd = [str(BIN / "ray"), "start", "--block", "--disable-usage-stats", *self._ports(), *args]
        if prefix:  # the last prefix item is a `sh -c` script that ends in `exec `: the command completes it
            cmd = prefix[:-1] + [prefix[-1] + " ".join(shlex.quote(c) for c in cmd)]
        log = (self.root / f"{name}.log").open("a")
        return subprocess.Popen(cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def start_node2(self) -> None:
        # Private mounts: node2 sees neither the head's Ray temp dir (sessions, uploaded packages) nor its ~.
        mounts = f"mount -t tmpfs tmpfs {self.head_tmp} && mount -t tmpfs tmpfs {self.home} && exec "
        self.node2 = self._start("node2", [
            f"--address={self.address}", "--node-ip-address=127.0.0.2", "--num-cpus=1",
            f"--temp-dir={self.node2_tmp}", '--resources={"node2": 1}'],
            prefix=["unshare", "-m", "--propagation", "private", "sh", "-c", mounts])
        self.wait_nodes(2)

    def kill_node2(self) -> None:
        """The machine dies: SIGKILL to every process of node2's mount namespace (raylet, agents, workers; Ray
        starts its daemons outside the `ray start` process group, so killing the group is not enough)."""
        for pid in _namespace_pids(self.node2.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.node2.wait(timeout=30)
        self.wait_nodes(1)

    def alive_nodes(self) -> int:
        from ray.util.state import list_nodes

        try:  # a dead node's partial answer must not raise: count the ALIVE ones client-side
            nodes = list_nodes(address=self.url, limit=100, raise_on_missing_output=False, timeout=10)
        except Exception:  # noqa: BLE001 - the dashboard is still starting
            return -1
        return sum(1 for n in nodes if n.state == "ALIVE")

    def wait_nodes(self, n: int, timeout: float = 120) -> None:
        deadline = time.time() + timeout
        while self.alive_nodes() != n:
            # `ray start --block` exits when its node fails to start (a port taken, a bad flag): say so at once.
            exited = [name for name, proc in (("head", self.head), ("node2", self.node2 if n == 2 else None))
                      if proc is not None and proc.poll() is not None]
            if exited:
                raise AssertionError(f"`ray start` ({', '.join(exited)}) exited before {n} node(s) were up\n"
                                     + self.logs())
            if time.time() > deadline:
                raise AssertionError(f"cluster did not reach {n} alive node(s) in {timeout}s\n" + self.logs())
            time.sleep(0.25)

    def worker_nodes(self) -> dict[str, str]:
        """Ray Train worker actors (alive or dead) -> the node each ran on."""
        from ray.util.state import list_actors

        actors = list_actors(address=self.url, filters=[("class_name", "=", "RayTrainWorker")], limit=10000,
                             detail=True, raise_on_missing_output=False)
        return {a.actor_id: a.node_id for a in actors}

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text()[-2000:]}" for p in sorted(self.root.glob("*.log")))

    def client(self):
        from ray.job_submission import JobSubmissionClient

        return JobSubmissionClient(self.url)

    def submit(self, entrypoint: str, name: str, env: dict | None = None):
        client = self.client()
        deadline = time.time() + 90
        while True:  # the dashboard answers before the head's job agent is up
            try:
                return client, client.submit_job(
                    entrypoint=entrypoint, submission_id=f"{name}-{secrets.token_hex(3)}",
                    runtime_env={"working_dir": str(REPO), "excludes": EXCLUDES, "env_vars": env or {}})
            except RuntimeError as err:
                if "No available agent" not in str(err) or time.time() > deadline:
                    raise
                time.sleep(0.5)

    def wait_job(self, client, job_id: str, timeout: float = 420) -> str:
        from ray.job_submission import JobStatus

        deadline = time.time() + timeout
        while client.get_job_status(job_id) not in {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}:
            if time.time() > deadline:
                client.stop_job(job_id)
                break
            time.sleep(0.5)  # a status query is one local HTTP call
        status, logs = client.get_job_status(job_id), client.get_job_logs(job_id)
        assert status == JobStatus.SUCCEEDED, f"{job_id}: {status}\n{logs[-5000:]}\n{self.logs()}"
        return logs

    def stop(self) -> None:
        if self.node2 is not None:  # no graceful stop: everything in its namespace is killed anyway
            stop_head(self.node2, _namespace_pids(self.node2.pid), grace_s=0)
        stop_head(self.head)
        for d in (self.head_tmp, self.node2_tmp):
            shutil.rmtree(d, ignore_errors=True)


def _namespace_pids(pid: int) -> list[int]:
    """Every process in the mount namespace of `pid` (none when it is gone or shares ours)."""
    try:
        ns = os.readlink(f"/proc/{pid}/ns/mnt")
    except OSError:
        return []
    if ns == os.readlink("/proc/self/ns/mnt"):
        return []
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                if os.readlink(f"/proc/{entry}/ns/mnt") == ns:
                    pids.append(int(entry))
    return pids


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    why = _namespaces_allowed()
    if why:
        pytest.skip(f"two-node test skipped: {why}")
    # S3-compatible server: moto's, because it installs from PyPI with the test extras (no binary to fetch, unlike
    # MinIO), runs in this process on 127.0.0.1 and speaks the S3 API pyarrow uses (multipart upload included).
    from moto.server import ThreadedMotoServer

    s3 = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    s3.start()
    host, port = s3.get_host_and_port()
    c = TwoNodeCluster(tmp_path_factory.mktemp("two_node"), f"http://{host}:{port}")
    try:
        c.wait_nodes(1)
        c.start_node2()
        yield c
    finally:
        c.stop()
        s3.stop()


def _train_cmd(name: str) -> str:
    sets = " ".join(f"--set {s}" for s in reference.sets(*SPREAD, f"run.name={name}"))
    return f"python rayjobs/train_stgcn.py --config configs/{reference.PRESET} {sets}"


def _result(logs: str) -> dict:
    return json.loads([line for line in logs.splitlines() if line.startswith("{")][-1])


def _registered_checkpoints(run_dir: Path) -> list[str]:
    try:
        snapshot = json.loads((run_dir / "checkpoint_manager_snapshot.json").read_text())
    except (OSError, ValueError):  # not written yet, or caught mid-write
        return []
    return [c["checkpoint_dir_name"] for c in snapshot.get("checkpoint_results", [])]


def _weights(run_dir: Path) -> dict:
    last = sorted(run_dir.glob("checkpoint_epoch_*"))[-1]
    return torch.load(last / "training_state.pt", map_location="cpu", weights_only=True)["model"]


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_training_across_two_nodes_survives_losing_one(fight_reference, cluster):
    runs = cluster.shared / "runs" / "work_dirs"
    ref_dir, ref = fight_reference  # the same run, uninterrupted

    # 2 DDP workers, one per node; node2 is killed once the first checkpoint (epoch 2 of 4) is registered (in Ray
    # Train's snapshot: a checkpoint folder appears while it is still being written, and one not yet registered
    # is not resumed from) and brought back. Rank 0 holds the run there (faults.py, once) until the kill ends
    # that worker group: an epoch takes about a second here, so without it the kill would race the epochs left.
    held = cluster.shared / "held_after_epoch_2"
    hold = {FAULT_ENV: f"epoch=2,rank=0,marker={held},hold_s=60"}
    client, job = cluster.submit(_train_cmd("two_node_killed"), "train-killed", env=hold)
    run_dir = runs / "two_node_killed"
    deadline = time.time() + 400
    while not held.exists():
        assert time.time() < deadline, client.get_job_logs(job)[-4000:]
        time.sleep(0.1)
    assert _registered_checkpoints(run_dir), "the hold came before the epoch-2 checkpoint was registered"
    cluster.kill_node2()
    time.sleep(3)
    cluster.start_node2()
    logs = cluster.wait_job(client, job)
    out = _result(logs)
    # The run folder and everything the job writes are on the shared storage.
    assert out["error"] is None and out["epochs_run"] == 4 and out["run_dir"] == str(run_dir)
    assert (run_dir / "summary.json").is_file() and out["test_acc_top1"] is not None
    assert out["best_model_mmaction2"] and Path(out["best_model_mmaction2"]).is_file()
    assert list((run_dir / "logs" / "tensorboard").glob("events.out.tfevents.*"))
    resume_log = run_dir / "resume_log.jsonl"
    assert resume_log.is_file(), f"the run did not resume from a checkpoint\n{logs[-4000:]}"
    resumes = [json.loads(x) for x in resume_log.read_text().splitlines()]
    assert resumes and resumes[0]["resumed_from_epoch"] >= 1, "the run did not resume from a checkpoint"
    same = set(ref) - {"run_dir", "best_model_mmaction2", "latest_checkpoint"}  # the metrics, best epoch and score
    assert {"epochs_run", "best_epoch", "test_acc_top1", "test_mean_class_accuracy"} <= same
    for key in sorted(same):
        assert out[key] == ref[key], f"{key}: {out[key]} after losing a node vs {ref[key]} uninterrupted"
    a, b = _weights(ref_dir), _weights(run_dir)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), "final weights differ"
    assert len(set(cluster.worker_nodes().values())) >= 2, "the training workers did not use both nodes"


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_tune_trials_run_on_both_nodes(cluster):
    import pandas as pd

    before = cluster.worker_nodes()
    # 2 trials side by side, each a 0.9-CPU worker on nodes of 1 CPU: while both run, they are on different
    # nodes. FIFO: ASHA could stop one after its first epoch, before the other's worker has started.
    client, job = cluster.submit("python rayjobs/tune_fight.py --smoke --name two_node_tune --num-samples 2 "
                                 "--max-concurrent-trials 2 --scheduler fifo --workers-per-trial 1 "
                                 "--cpus-per-worker 0.9", "tune")
    logs = cluster.wait_job(client, job)
    summary = cluster.shared / "runs" / "work_dirs" / "tune" / "two_node_tune" / "summary"
    assert f"results, best config, best checkpoint and plots: {summary}" in logs
    table = pd.read_parquet(summary / "results.parquet")
    assert len(table) == 2 and set(table["status"]) == {"ok"}, table
    assert (summary / "best_config.yaml").is_file() and (summary / "best_checkpoint").is_dir()
    nodes = {node for actor, node in cluster.worker_nodes().items() if actor not in before}
    assert len(nodes) == 2, f"trial workers ran on {len(nodes)} node(s)"


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_extract_to_shared_storage_then_build_dataset_to_s3(cluster, monkeypatch):
    import boto3
    import numpy as np

    sys.path.insert(0, str(REPO / "tests"))
    from fakes.fake_rtmo import build_fake_rtmo, write_marker_video
    from recognizer_core.skeleton.store import SkeletonDataset

    # Inputs on the shared storage: two marker videos the fake RTMO sees, and two of the project's real videos.
    videos, poses = cluster.shared / "videos", cluster.shared / "poses"
    model = build_fake_rtmo(cluster.shared / "fake_rtmo.onnx")
    for i, label in enumerate(("Fight", "NonFight", "Fight", "NonFight")):
        track = np.stack([np.linspace(40 + 30 * i, 80 + 30 * i, 24), np.linspace(60, 90, 24)], 1).round()
        write_marker_video(videos / label / f"marker{i}.mp4", [track])
    for label, name in (("Fight", "fi001.mp4"), ("NonFight", "nofi001.mp4")):
        src = REPO.parent / "shared" / "data" / "videos" / ("fight" if label == "Fight" else "nofight") / name
        if src.is_file():
            shutil.copy(src, videos / label / name)
    sets = ["ray.num_cpus_per_actor=0.5", "ray.num_cpus_per_decode_task=0.5", "model.batch_size=4",
            "decode.frame_stride=2", "decode.frames_per_block=8", "tracking.min_track_len=2"]
    client, job = cluster.submit(f"python rayjobs/extract_poses.py --input {videos} --output {poses} --onnx {model} "
                                 "--quiet " + " ".join(f"--set {s}" for s in sets), "extract")
    summary = _result(cluster.wait_job(client, job))
    assert summary["done"] >= 4 and summary["failed"] == 0, summary
    done = [json.loads(x) for x in (poses / "done.jsonl").read_text().splitlines()]
    assert all((poses / r["output"]).is_file() for r in done), "a clip file is missing from the shared storage"

    for k, v in {**S3_ENV, "AWS_ENDPOINT_URL": cluster.env["AWS_ENDPOINT_URL"]}.items():
        monkeypatch.setenv(k, v)
    boto3.client("s3").create_bucket(Bucket="recognizer")
    client, job = cluster.submit(f"python rayjobs/build_dataset.py --poses {poses} --output s3://recognizer/ds "
                                 "--set window.clip_len=6 --set window.stride=6 --set num_cpus_per_task=0.5",
                                 "build")
    built = _result(cluster.wait_job(client, job))
    assert built["output"] == "s3://recognizer/ds" and built["clips"] > 0
    ds = SkeletonDataset("s3://recognizer/ds")
    assert len(ds) == built["clips"] and set(ds.label_names) == {"Fight", "NonFight"}
    keys = [o["Key"] for o in boto3.client("s3").list_objects_v2(Bucket="recognizer")["Contents"]]
    assert "ds/build_summary.json" in keys and any(k.endswith(".parquet") for k in keys), keys


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_dino_pose_trains_across_the_cluster(cluster):
    sys.path.insert(0, str(REPO / "tests"))
    from dino_tiny import make_tiny_dino, tiny_job_overrides

    coco = REPO.parent / "shared" / "data" / "coco"
    if not coco.is_dir():
        pytest.skip(f"{coco} not found: the shared COCO sample is needed")
    backbone = make_tiny_dino(cluster.shared / "dino_tiny", "dinov2")
    storage = cluster.shared / "runs" / "dino"
    sets = [o for o in tiny_job_overrides(backbone, coco, storage, epochs=1) if not o.startswith("scaling.")]
    sets += ["scaling.num_workers=2", "scaling.cpus_per_worker=0.5", "scaling.use_gpu=false",
             "scaling.placement_strategy=STRICT_SPREAD"]
    before = cluster.worker_nodes()
    client, job = cluster.submit("python rayjobs/train_dino_pose.py " + " ".join(shlex.quote(f"--set={s}") for s in sets),
                                 "dino")
    out = _result(cluster.wait_job(client, job))
    assert out["epoch"] == 1 and 0.0 <= out["val/AP"] <= 1.0
    run_dir = storage / "tiny"
    assert (run_dir / "best_model.pth").is_file() and (run_dir / "latest_checkpoint.pth").is_file()
    assert (run_dir / "logs" / "vis" / "val_epoch001.png").is_file()
    nodes = {node for actor, node in cluster.worker_nodes().items() if actor not in before}
    assert len(nodes) == 2, f"DINO workers ran on {len(nodes)} node(s)"
