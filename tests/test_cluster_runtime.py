"""recognizer_core/ray_runtime.py against a real `ray start --head` (token auth on) on this machine: a job with no
address and no RAY_ADDRESS starts a private Ray instead of attaching to it, and a job given the head's address
with the wrong token stops with one `error:` line that says what to set (no Ray traceback)."""
from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.ray_heads import free_port, stop_head

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
HEAD_TOKEN = "a" * 32


def _env(tmpdir: str, **extra: str) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_API_SERVER_ADDRESS")}
    # RAY_TMPDIR: this head's `ray_current_cluster` file (what a bare ray.init() attaches to) lives in a folder of
    # this test, so the test sees the trap without laying it for other Ray users of the machine.
    env.update({"RAY_TMPDIR": tmpdir, "RAY_USAGE_STATS_ENABLED": "0", "PYTHONPATH": str(REPO), **extra})
    return env


@pytest.fixture(scope="module")
def token_head():
    tmpdir = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # short: Ray's socket paths must stay < 108 chars
    port = free_port()
    env = _env(tmpdir, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=HEAD_TOKEN)
    log = open(Path(tmpdir) / "head.log", "w")
    head = subprocess.Popen(
        [str(BIN / "ray"), "start", "--head", "--block", f"--port={port}", "--node-ip-address=127.0.0.1",
         "--num-cpus=1", "--include-dashboard=false", "--disable-usage-stats",
         f"--dashboard-agent-listen-port={free_port()}", f"--ray-client-server-port={free_port()}"],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    marker = Path(tmpdir) / "ray" / "ray_current_cluster"
    deadline = time.time() + 120
    while not marker.exists() and time.time() < deadline and head.poll() is None:
        time.sleep(0.5)
    try:
        assert marker.exists(), (Path(tmpdir) / "head.log").read_text()[-3000:]
        yield {"address": f"127.0.0.1:{port}", "tmpdir": tmpdir}
    finally:
        stop_head(head)  # this head only, in seconds (no 30 s drain)
        log.close()


@pytest.mark.ray
@pytest.mark.timeout(240)
def test_no_address_starts_a_private_ray_beside_a_running_cluster(token_head):
    code = ("from ray._private.services import canonicalize_bootstrap_address as c\n"
            "print('BARE', c(None), flush=True)\n"
            f"import sys; sys.path.insert(0, {str(REPO)!r})\n"  # as rayjobs/ scripts find the repo
            "from recognizer_core.ray_runtime import QUIET_WORKER_LOGGERS, start_ray\n"
            "info = start_ray(num_cpus=1, dashboard=False, job='probe')\n"
            "import ray; print('JOINED', ray.get_runtime_context().gcs_address, info.private, flush=True)\n"
            "import logging; name = next(iter(QUIET_WORKER_LOGGERS))\n"
            "print('WORKER', ray.get(ray.remote(lambda: logging.getLogger(name).level).remote()), flush=True)\n")
    env = _env(token_head["tmpdir"], RAY_AUTH_MODE="disabled")
    # run outside the repo, which only the script's own sys.path names: the workers' setup hook must not import it
    env.pop("PYTHONPATH")
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=token_head["tmpdir"], capture_output=True,
                         text=True, timeout=200)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = dict(line.split(" ", 1) for line in out.stdout.splitlines() if line.startswith(("BARE", "JOINED", "WORKER")))
    # A bare ray.init() would have attached to the running head...
    assert lines["BARE"].endswith(token_head["address"].split(":")[1]), lines
    # ...start_ray started its own.
    gcs, private = lines["JOINED"].split()
    assert gcs.split(":")[1] != token_head["address"].split(":")[1] and private == "True", lines
    assert "[probe] running on a private local Ray" in out.stdout
    assert lines["WORKER"] == str(logging.ERROR), lines  # Ray Train's cleaner warnings are quiet in its workers


@pytest.mark.ray
@pytest.mark.timeout(240)
def test_token_mismatch_gives_one_line_of_advice(token_head):
    # Ray retries a refused GCS connection once a second, 20 times (NUM_REDIS_GET_RETRIES), before it raises:
    # the advice is the same after 2 tries, and this test only checks the advice.
    env = _env(token_head["tmpdir"], RAY_AUTH_MODE="token", RAY_AUTH_TOKEN="b" * 32,
               RAY_gcs_server_port_wait_time_s="2")
    out = subprocess.run([sys.executable, "rayjobs/train_stgcn.py", "--address", token_head["address"]],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=200)
    assert out.returncode == 2, out.stdout[-2000:] + out.stderr[-3000:]
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, out.stderr[-3000:]
    assert "InvalidAuthToken" in errors[0] and "RAY_AUTH_MODE=token" in errors[0] and "RAY_AUTH_TOKEN" in errors[0]
    assert "Traceback" not in out.stderr and "gcs_client.cc" not in out.stderr  # Ray's retry lines are folded in


# Start-up failures that come from the environment: a retry fails the same way, so the advice names what to set
# instead of the busy-machine "run the command again" (which every failure got before).
RETRY = "run the command again"


def test_a_non_ascii_temp_folder_is_named_with_an_ascii_ray_tmpdir_to_set(monkeypatch):
    from recognizer_core.ray_runtime import _advice

    tmp = "/tmp/review dir ü"
    monkeypatch.delenv("RAY_TMPDIR", raising=False)
    monkeypatch.setenv("TMPDIR", tmp)
    try:
        tmp.encode("ascii")  # what Ray does with its socket path under TMPDIR
    except UnicodeEncodeError as err:
        text = _advice(err, None)
    assert text.startswith("could not start a local Ray (UnicodeEncodeError: ") and RETRY not in text, text
    assert f"TMPDIR={tmp!r} is not ASCII" in text and "set RAY_TMPDIR to an ASCII folder" in text, text


@pytest.mark.parametrize("filename", ["/.ray", "/.ray/auth_token"])
def test_an_unwritable_home_names_the_path_and_home(monkeypatch, filename):
    """HOME=/ (an arbitrary-uid pod): Ray cannot write its token to ~/.ray/auth_token. `auth` in the path sent
    this to the refused-token advice ("the Ray cluster at None refused our token")."""
    from recognizer_core.ray_runtime import _advice

    monkeypatch.setenv("HOME", "/")
    text = _advice(PermissionError(13, "Permission denied", filename), None)
    assert text.startswith(f"could not start a local Ray (PermissionError: [Errno 13] Permission denied: "
                           f"'{filename}')") and RETRY not in text and "refused our token" not in text, text
    assert f"Ray could not write {filename} (Permission denied)" in text and "Set HOME to a folder" in text, text


def test_an_unwritable_ray_temp_folder_names_the_path_and_ray_tmpdir(monkeypatch, tmp_path):
    from recognizer_core.ray_runtime import _advice

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path / "rt"))
    text = _advice(PermissionError(13, "Permission denied", str(tmp_path / "rt/ray/session_x")), None)
    assert RETRY not in text and f"({'RAY_TMPDIR'}={tmp_path / 'rt'})" in text and "set RAY_TMPDIR" in text, text
    other = _advice(OSError(30, "Read-only file system", "/srv/x"), None)
    assert RETRY not in other and "Ray could not use /srv/x (Read-only file system)" in other, other


def test_only_a_time_out_gets_the_retry_advice():
    from recognizer_core.ray_runtime import _advice

    slow = Exception("The current node timed out during startup. This could happen because some of the raylet "
                     "failed to startup or the GCS has become overloaded.")   # Ray's words (_private/node.py)
    for err in (slow, TimeoutError("Timed out after 10 seconds while waiting for node to startup.")):
        assert RETRY in _advice(err, None) and "RAY_raylet_start_wait_time_s=120" in _advice(err, None)
    other = _advice(RuntimeError("Failed to start the dashboard"), None)
    assert RETRY not in other and "session_latest" in other, other


@pytest.mark.parametrize("state", ["does not exist", "is a folder", "is empty"])
def test_an_unreadable_token_path_on_a_local_start_is_named_not_a_refused_token(tmp_path, monkeypatch, state):
    """A private Ray with RAY_AUTH_TOKEN_PATH naming no token fails with Ray's AuthenticationError (its words,
    ray 2.60). Before: "the Ray cluster at None refused our token (InvalidAuthToken ...)", though nothing was
    joined and nothing refused a token."""
    from ray.exceptions import AuthenticationError

    from recognizer_core.ray_runtime import _advice

    path = tmp_path / "auth_token"
    if state == "is a folder":
        path.mkdir()
    elif state == "is empty":
        path.write_text("\n")
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(path))
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    err = AuthenticationError(f"RAY_AUTH_TOKEN_PATH is set but file cannot be opened or is empty: {path}")
    text = _advice(err, None)
    assert "cluster at None" not in text and "refused" not in text, text
    assert text.startswith("could not start a local Ray (AuthenticationError: RAY_AUTH_TOKEN_PATH is set but file "
                           f"cannot be opened or is empty: {path}"), text   # (+ Ray's note when the mode is off)
    assert f"RAY_AUTH_TOKEN_PATH={path} {state}: point it at a file holding the token" in text, text
    assert "RAY_AUTH_TOKEN=<token>" in text and "unset RAY_AUTH_TOKEN_PATH" in text, text


@pytest.mark.ray
@pytest.mark.timeout(240)
def test_a_real_start_with_a_non_ascii_or_long_tmpdir_says_what_to_set(tmp_path):
    """The real failures (Ray 2.60 encodes its socket paths as ASCII, and a Unix socket path has at most 107
    bytes), through start_ray_or_exit: one `error:` block with the RAY_TMPDIR fix, exit 2."""
    short = Path(tempfile.mkdtemp(prefix="rt ü", dir="/tmp"))  # short: the path length is not what fails
    try:
        for tmp, fix in ((short, f"TMPDIR={str(short)!r} is not ASCII: set RAY_TMPDIR to an ASCII folder"),
                         (tmp_path / ("x" * 60), "longer than a Unix socket allows (107 bytes): set RAY_TMPDIR")):
            tmp.mkdir(exist_ok=True)
            env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_TMPDIR")}
            env.update({"TMPDIR": str(tmp), "RAY_USAGE_STATS_ENABLED": "0", "PYTHONPATH": str(REPO)})
            code = ("from recognizer_core.ray_runtime import start_ray_or_exit\n"
                    "start_ray_or_exit('probe', num_cpus=1, dashboard=False)\n")
            out = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True,
                                 text=True, timeout=200)
            assert out.returncode == 2, out.stdout[-2000:] + out.stderr[-3000:]
            assert "error: could not start a local Ray (" in out.stderr and fix in out.stderr, out.stderr
            assert RETRY not in out.stderr, out.stderr
    finally:
        shutil.rmtree(short, ignore_errors=True)
