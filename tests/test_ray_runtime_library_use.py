"""recognizer_core/ray_runtime.py used as a library, several jobs in one process (a notebook, a service): what a
job's private Ray sets in the environment goes when that Ray goes; a job given --address never runs silently on a
Ray left from an earlier job; and, for job scripts only (run_job), Ray's driver prints every '[recognizer] ...'
worker line instead of merging those that differ only in numbers. Each scenario runs in a fresh interpreter: the
process-wide state (os.environ, Ray's connection, Ray's log deduplicator) is what is under test."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# What start_ray sets for a private Ray, and what a caller may have set for another Ray: none of it in the child.
UNSET = ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER",
         "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "RECOGNIZER_PRIVATE_RAY", "RAY_DEDUP_LOGS_ALLOW_REGEX",
         "RAY_COLOR_PREFIX")


def _run(code: str, timeout: int = 300) -> dict:
    """Run `code` in a fresh interpreter; its last stdout line is a JSON object of what it found."""
    env = {k: v for k, v in os.environ.items() if k not in UNSET}
    env.update({"PYTHONPATH": str(REPO), "RAY_USAGE_STATS_ENABLED": "0"})
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


# ray.init sets PYTHONBREAKPOINT in every driver (ray/_private/worker.py), a plain ray.init too: Ray's, not ours.
SNAPSHOT = """
def snapshot():
    return {k: v for k, v in os.environ.items() if k != "PYTHONBREAKPOINT"}
"""

ENV_RESTORED = SNAPSHOT + """
import json, os
from recognizer_core.ray_runtime import flush_worker_output, start_ray
from ray.util.state import list_nodes
before = snapshot()
start_ray(None, num_cpus=1, job="first")
flush_worker_output()
now = snapshot()
left = {k: now.get(k) for k in set(before) | set(now) if before.get(k) != now.get(k)}
second = start_ray(None, num_cpus=1, job="second")
try:
    nodes = len(list_nodes())   # the State API goes where RAY_API_SERVER_ADDRESS says: this Ray's dashboard
except Exception as err:
    nodes = f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"
flush_worker_output()
print(json.dumps({"left": left, "nodes": nodes, "after_second": snapshot() == before}))
"""


@pytest.mark.ray
@pytest.mark.timeout(400)
def test_a_private_ray_takes_back_what_it_set_and_a_second_one_reaches_its_own_dashboard():
    found = _run(ENV_RESTORED)
    assert found["left"] == {}, "the first job's private Ray left variables behind"
    assert found["nodes"] == 1, f"the second private Ray's State API failed: {found['nodes']}"
    assert found["after_second"]


ADDRESS_DECISIONS = SNAPSHOT + """
import json, os, ray
from recognizer_core.ray_runtime import RayStartError, flush_worker_output, start_ray
out = {}
def attempt(name, address):
    try:
        info = start_ray(address, job=name)
        out[name] = {"private": info.private, "address": info.address}
    except RayStartError as err:
        out[name] = {"error": str(err)}
    out[name]["running"] = ray.get_runtime_context().gcs_address if ray.is_initialized() else None
before = snapshot()
private = start_ray(None, num_cpus=1, job="train")
out["private"] = private.address
attempt("same", private.address)
attempt("same_by_loopback", "127.0.0.1:" + private.address.rsplit(":", 1)[1])
attempt("cluster", "127.0.0.1:notaport")    # Ray refuses it at once: no minutes of connect retries
out["env_restored"] = snapshot() == before
if ray.is_initialized():   # only where the private Ray was (wrongly) kept: the checks above say so
    ray.shutdown()
ray.init(address="local", num_cpus=1, include_dashboard=False, logging_level="ERROR")   # the caller's own Ray
out["user"] = ray.get_runtime_context().gcs_address
attempt("user_no_address", None)
attempt("user_cluster", "127.0.0.1:notaport")
ray.shutdown()
print(json.dumps(out))
"""


@pytest.mark.ray
@pytest.mark.timeout(400)
def test_an_address_is_not_ignored_when_ray_already_runs_in_the_process():
    found = _run(ADDRESS_DECISIONS)
    private = found["private"]
    assert found["same"] == {"private": True, "address": private, "running": private}
    assert found["same_by_loopback"] == {"private": True, "address": private, "running": private}
    # another address: the earlier job's private Ray is ended and the address tried (Ray refuses this one)
    assert "error" in found["cluster"] and "127.0.0.1:notaport" in found["cluster"]["error"], found["cluster"]
    assert found["cluster"]["running"] is None
    assert found["env_restored"]
    # the caller's Ray: kept for a job without an address, an error naming both for one with another address
    assert found["user_no_address"] == {"private": False, "address": found["user"], "running": found["user"]}
    error = found["user_cluster"].get("error", "")
    assert found["user"] in error and "127.0.0.1:notaport" in error and "ray.shutdown()" in error, found
    assert found["user_cluster"]["running"] == found["user"]


DEDUP = """
import json, os, sys
IMPORT_RAY_FIRST = {import_ray_first}
if IMPORT_RAY_FIRST:
    import ray, torch   # their own effects (Ray sets RAY_CLIENT_MODE) are not ours
before = dict(os.environ)
import recognizer_core.ray_runtime
if IMPORT_RAY_FIRST:   # as rayjobs/tune_fight.py's imports do
    import recognizer_core.tune.cli, recognizer_core.train.stgcn.job
assert ("ray" in sys.modules) == IMPORT_RAY_FIRST
library_env_unchanged = dict(os.environ) == before
recognizer_core.ray_runtime.run_job(lambda: 0)     # what `sys.exit(run_job(main))` in a job script does first
import ray
from ray._private.ray_logging import stdout_deduplicator as dedup
clock = [0.0]
dedup.timesource = lambda: clock[0]
lines = [(101, "[recognizer] epoch 2/10: train/loss 0.6176  lr 0.0008  67.1 samples/s  val/acc_top1 0.6000"),
         (202, "[recognizer] epoch 2/10: train/loss 0.6286  lr 0.000547  60.2 samples/s  val/acc_top1 0.6000"),
         (101, "[recognizer] epoch 3/10: train/loss 0.5693  lr 0.0008  67.7 samples/s  val/acc_top1 0.4667"),
         (202, "[recognizer] epoch 3/10: train/loss 0.5861  lr 0.000547  60.0 samples/s  val/acc_top1 0.6222"),
         (101, "some other library's line 1"), (202, "some other library's line 2")]
shown = []
for i, (pid, line) in enumerate(lines):
    clock[0] = i * 0.5
    shown += [l for b in dedup.deduplicate({{"ip": "x", "pid": pid, "lines": [line]}}) for l in b["lines"]]
print(json.dumps({{"library_env_unchanged": library_env_unchanged, "shown": shown,
                  "color_prefix": os.environ.get("RAY_COLOR_PREFIX")}}))
"""


@pytest.mark.parametrize("import_ray_first", [True, False], ids=["ray-imported-before-run_job", "ray-imported-after"])
def test_a_job_scripts_worker_lines_are_not_merged_by_rays_log_dedup(import_ray_first):
    found = _run(DEDUP.format(import_ray_first=import_ray_first), timeout=120)
    assert found["library_env_unchanged"], "importing recognizer_core changed the environment"
    epochs = [line for line in found["shown"] if line.startswith("[recognizer] epoch")]
    assert len(epochs) == 4, found["shown"]
    assert "some other library's line 2" not in found["shown"]   # Ray still merges everyone else's repeats
    assert found["color_prefix"] == "0"   # output is a pipe here: no colour codes around worker prefixes


def test_a_users_allow_regex_with_global_flags_still_lets_the_job_run():
    """RAY_DEDUP_LOGS_ALLOW_REGEX='(?i)warning' was wrapped as '(?:(?i)warning)|...', which Python 3.11 refuses:
    every job died in re.error before main. Its flags stay in front and still apply to the user's part only."""
    found = _run("""
import json, os, sys
os.environ["RAY_DEDUP_LOGS_ALLOW_REGEX"] = "(?i)warning"
import ray._private.ray_logging as rl
from recognizer_core.ray_runtime import run_job
ran = []
code = run_job(lambda: ran.append(1) or 0)
allow = rl.stdout_deduplicator.allow_re
print(json.dumps({"code": code, "ran": ran, "ours": bool(allow.search("[recognizer] epoch 2/3: loss 0.1")),
                  "users": bool(allow.search("a WARNING from a worker")), "gloo": bool(allow.search("[Gloo] rank 1")),
                  "env": os.environ["RAY_DEDUP_LOGS_ALLOW_REGEX"]}))
""", timeout=120)
    assert found["code"] == 0 and found["ran"] == [1], found
    assert found["ours"] and found["users"] and not found["gloo"], found
    assert found["env"].startswith("(?i)"), found


def test_the_same_cluster_named_by_host_name_is_the_one_running():
    """A second start_ray of the cluster this process joined, by a host name (a Kubernetes service:
    raycluster-head-svc:6379; extract_poses --build-dataset starts Ray twice): Ray keeps the name as typed in its
    GCS address, and comparing the name's IP with it refused the job as 'not the cluster that was asked for'."""
    import socket

    from recognizer_core.ray_runtime import _same_address

    host = socket.gethostname()
    assert _same_address(f"{host}:6379", f"{host}:6379")
    assert not _same_address(f"{host}:6379", f"{host}:6380")
