"""Shared test fixtures: the ../shared folder, and one local Ray runtime per test session."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# Keep the in-process Ray runtime from writing ~/.ray/auth_token-dependent state that would turn on token
# auth for the job-submission test's `ray start` (see tests/test_job_submit.py).
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("RECOGNIZER_SHARED", REPO.parent / "shared"))


def shared_path(*parts: str) -> Path:
    """Path under ../shared, or skip the test with a message saying it is missing."""
    p = SHARED.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"{p} not found: this test needs the project's shared/ folder beside the repo")
    return p


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    return shared_path()


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray runtime (2 CPUs) for all tests that need Ray; shut down at the end of the session."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": {"RAY_USAGE_STATS_ENABLED": "0"}})
    yield ray
    ray.shutdown()
