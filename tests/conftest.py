"""Shared test fixtures: the ../shared folder, and one local Ray runtime per test session."""
from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import pytest

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# Keep the in-process Ray runtime from writing ~/.ray/auth_token-dependent state that would turn on token
# auth for the job-submission test's `ray start` (see tests/test_job_submit.py).
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Ray Train's controller polls its workers every RAY_TRAIN_HEALTH_CHECK_INTERVAL_S (2 s) and takes ONE report per
# poll (a worker's result queue holds one), so a test run whose epochs take under 2 s is paced at 2 s per epoch,
# and every run start, end and restart waits for a poll. The same code at a 0.5 s pace: Ray's processes (local
# runtime, `ray start` heads, job subprocesses) inherit this environment.
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")

# Ctrl-C must stop the suite. Ray Train's fit() (TrainController) installs a SIGINT handler that turns Ctrl-C
# into a "graceful abort" of the current run and is never removed, and Ray Tune installs one for the duration of
# a search; either way pytest never sees KeyboardInterrupt and carries on with the next test. Refuse SIGINT
# handlers from Ray's own modules so Ctrl-C raises KeyboardInterrupt; the session fixture then shuts Ray down.
_install_signal_handler = signal.signal


def _signal_keeping_ctrl_c(signum, handler):
    if signum == signal.SIGINT and str(sys._getframe(1).f_globals.get("__name__", "")).startswith("ray."):
        return signal.getsignal(signal.SIGINT)
    return _install_signal_handler(signum, handler)


signal.signal = _signal_keeping_ctrl_c

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("RECOGNIZER_SHARED", REPO.parent / "shared"))


def shared_path(*parts: str) -> Path:
    """Path under ../shared, or skip the test with a message saying it is missing."""
    p = SHARED.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"{p} not found: this test needs the project's shared/ folder beside the repo")
    return p


@pytest.fixture
def one_torch_thread():
    """One torch thread for the test: the suite shares 2 cores with other processes, and oversubscribed OpenMP
    threads spin and run ~2x slower."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    return shared_path()


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray runtime (2 CPUs) for all tests that need Ray; shut down at the end of the session."""
    import ray

    if not ray.is_initialized():
        # address="local": a private runtime even while a `ray start` cluster runs on this machine (a test's own
        # head, e.g. tests/test_two_node.py's), which a bare ray.init() would join instead.
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": {"RAY_USAGE_STATS_ENABLED": "0"}})
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def fight_reference(ray_local, tmp_path_factory):
    """The fight preset's uninterrupted tiny run (tests/fight_reference.py): (run folder, its JSON line). Made
    once per session: the resume tests of test_train_ray and test_two_node must reproduce its weights."""
    sys.path.insert(0, str(REPO))
    from tests.fight_reference import run_reference

    return run_reference(tmp_path_factory.mktemp("fight_reference"))


def pytest_collection_modifyitems(config, items):
    """Ray tests start a runtime and train: give them 600 s unless they set their own timeout (the default in
    pyproject, 300 s, is for everything else)."""
    for item in items:
        if item.get_closest_marker("ray") and not item.get_closest_marker("timeout"):
            item.add_marker(pytest.mark.timeout(600))


@pytest.fixture
def s3(monkeypatch):
    """A real S3-compatible server (moto) on 127.0.0.1, the AWS variables pointing at it; yields a boto3 client."""
    pytest.importorskip("moto")
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                     "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": f"http://{host}:{port}"}.items():
            monkeypatch.setenv(k, v)
        yield boto3.client("s3", endpoint_url=f"http://{host}:{port}")
    finally:
        server.stop()


@pytest.fixture
def quiet_wandb(monkeypatch):
    """W&B offline and silent, torch on one thread (the in-process training loops of the logging tests)."""
    import torch

    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_MODE", "offline")
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
