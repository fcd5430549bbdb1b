"""One way for every job to start or join Ray.

- `--address` given, or `RAY_ADDRESS` set (as `ray job submit` does): join that cluster.
- Neither: start a *private* local Ray (`address="local"`), as every job's help promises. A bare `ray.init()`
  would attach to any `ray start` cluster on the host, and hang for minutes when that cluster is stale.

For a private Ray the State API address is pinned in the environment (workers inherit it): Ray Train's
placement-group cleaner otherwise prints a "Found multiple active Ray instances" traceback whenever another Ray
runs on the host. Start-up failures become one `RayStartError` with what to try, not a Ray traceback; a token
mismatch (Ray logs `InvalidAuthToken` from C++ and raises a bare ConnectionError) says what to set.
SIGTERM is turned into KeyboardInterrupt so `kill` and Ctrl-C both stop a job the same way; a second signal
shuts Ray down and exits at once (Ray Train can swallow the first).
"""
from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import socket
import sys
import tempfile
import threading
from dataclasses import dataclass
from typing import Iterator

from recognizer_core.ray_start_advice import advice as _advice


# The driver's `ray` logger (ray.init's logging_level; Tune and Ray Data log under it): its INFO lines ("Started a
# local Ray instance", "Wrote the latest version of all result files ...") repeat what our own lines say. Warnings
# and errors still show, and workers' output still reaches the driver (log_to_driver).
RAY_LOG_LEVEL = logging.WARNING


# Set in the driver's environment while it runs a private local Ray. Ray's processes inherit it, so code running
# in them (Tune's trial actors build the trainers) knows that the workers run on this machine too.
PRIVATE_RAY_ENV = "RECOGNIZER_PRIVATE_RAY"

# Ray's own worker-side warnings that, in a private local Ray, describe what is expected rather than a fault. Ray
# Train's detached PlacementGroupCleaner warns "Detected that the Ray Train controller actor (...) is dead. Cleaning
# up placement group ..." whenever a controller ends without its shutdown hook: that is every trial ASHA stops (Tune
# ends the trial actor, and the controller it owns goes with it), so a demo printed one per stopped trial. The
# cleaner still removes the group; only the line goes. These loggers live in worker processes, which the driver's
# logging does not reach, so the private Ray's `worker_process_setup_hook` sets them as each worker starts.
QUIET_WORKER_LOGGERS = {"ray.train.v2._internal.execution.controller.placement_group_cleaner": logging.ERROR}


def worker_setup_hook():
    """The private Ray's `worker_process_setup_hook`: raises QUIET_WORKER_LOGGERS to their levels in each worker
    process before it takes any task.

    A closure, so cloudpickle ships it by value and a worker runs it with the standard library alone. Named by
    module path instead ("recognizer_core.ray_runtime...") it is imported in the worker before the driver's
    sys.path reaches it: where the repo is not on the worker's path (a job started outside the repo root, the
    path set by the script itself) the import fails, Ray drains the worker as failed to start, and every task,
    actor and trial dies with WorkerCrashedError."""
    levels = dict(QUIET_WORKER_LOGGERS)

    def quiet_worker_logs() -> None:
        import logging as _logging

        for name, level in levels.items():
            _logging.getLogger(name).setLevel(level)

    return quiet_worker_logs


class RayStartError(RuntimeError):
    """Ray could not be started or joined; the message says what happened and what to try."""


@dataclass(frozen=True)
class RayInfo:
    address: str
    dashboard_url: str | None
    private: bool


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def joins_cluster(address: str | None = None) -> bool:
    """Whether start_ray(address) joins a running Ray (`--address` or $RAY_ADDRESS, other than "local") rather
    than starting a private one; known before Ray starts."""
    address = address or os.environ.get("RAY_ADDRESS") or None
    return bool(address) and address != "local"


def runs_on_private_ray(address: str | None = None) -> bool:
    """Whether start_ray(address) will run the job on a private local Ray on this machine: nothing to join, and no
    other Ray already running in this process (start_ray keeps a caller's, e.g. a notebook's ray.init(address=...)
    of a GPU cluster, which a check of this machine's GPUs refused)."""
    if joins_cluster(address):
        return False
    ray = sys.modules.get("ray")
    return not (ray and ray.is_initialized()) or ray.get_runtime_context().gcs_address in _PRIVATE_RAY


def start_ray(address: str | None = None, *, num_cpus: int | None = None, dashboard: bool = True,
              log_to_driver: bool = True, job: str = "job") -> RayInfo:
    """Join `address` / $RAY_ADDRESS, else start a private local Ray; return where it runs. A Ray running in this
    process is kept if it is the one asked for (no address: any); else ours (an earlier job in this notebook) is
    ended to join the cluster asked for, and the caller's is an error: a job never runs silently elsewhere."""
    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    address = address or os.environ.get("RAY_ADDRESS") or None
    joining = joins_cluster(address)
    if ray.is_initialized():
        current = ray.get_runtime_context().gcs_address
        ours = current in _PRIVATE_RAY
        if not joining or (address == "auto" and not ours) or _same_address(address, current):
            return RayInfo(address=current, dashboard_url=None, private=ours)
        if not ours:
            raise RayStartError(f"this process already runs Ray (GCS {current}), not the cluster at {address} that "
                                "was asked for: call ray.shutdown() first, or omit --address and unset RAY_ADDRESS.")
    flush_worker_output()  # ends our private Ray (or what is left of it: its variables)
    captured = ""
    try:
        if joining:
            with _stderr_copy() as copy:
                try:
                    ctx = ray.init(address=address, log_to_driver=log_to_driver, logging_level=RAY_LOG_LEVEL)
                finally:
                    captured = copy()
        else:
            port = _free_port()
            # Where the caller has not set them, for the private Ray (its processes inherit them) until
            # flush_worker_output. PRIVATE_RAY_ENV: scaling.cpu_malloc=auto preloads the tcmalloc found here into the
            # workers (train/cpu_malloc.py). Ray Train's preemption watcher polls for nodes being drained (spot
            # machines): nothing to watch on one machine, and its actor makes Ray 2.60 log a C++ "core_worker.cc:
            # Actor with class name: 'PreemptionWatcher' ... has constructor arguments in the object store" line per
            # run. Ray Train's controller takes one worker report per health check (every 2 s): 0.5 s keeps short
            # epochs (the demo, small searches) from being paced at 2 s each. Clusters keep Ray's defaults.
            for name, value in {"RAY_API_SERVER_ADDRESS": f"http://127.0.0.1:{port}", PRIVATE_RAY_ENV: "1",
                                "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
                                "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5"}.items():
                if name not in os.environ:
                    os.environ[name] = value
                    _ENV_SET_FOR_PRIVATE_RAY.append(name)
            ctx = ray.init(address="local", num_cpus=num_cpus, include_dashboard=dashboard, dashboard_port=port,
                           log_to_driver=log_to_driver, logging_level=RAY_LOG_LEVEL,
                           runtime_env={"worker_process_setup_hook": worker_setup_hook()})
            _PRIVATE_RAY.append(ctx.address_info.get("gcs_address", ""))
    except Exception as err:  # noqa: BLE001 - every start-up failure gets the same advice block
        flush_worker_output()  # a failed private start's variables
        raise RayStartError(_advice(err, address if joining else None, captured)) from None
    install_stop_handlers()
    url = f"http://{ctx.dashboard_url}" if getattr(ctx, "dashboard_url", None) else None
    info = RayInfo(address=ctx.address_info.get("gcs_address", ""), dashboard_url=url, private=not joining)
    where = "a private local Ray" if not joining else f"the Ray cluster at {address}"
    print(f"[{job}] running on {where}", flush=True)
    if url:
        print(f"[{job}] Ray dashboard: {url}{_dashboard_hint()}", flush=True)
    return info


def _same_address(requested: str, current: str) -> bool:
    """Whether `requested` ("host:port") names the GCS at `current`: Ray's own spelling of it first (a host name as
    typed, e.g. a Kubernetes service's; loopback as this node's IP), else both resolved to an IP."""
    import ray.util
    from ray._private.services import canonicalize_bootstrap_address

    with contextlib.suppress(Exception):  # a private function of Ray's: any failure falls back to resolving
        if canonicalize_bootstrap_address(requested) == current:
            return True
    with contextlib.suppress(OSError, ValueError):
        host, port = requested.rsplit(":", 1)
        ip = socket.gethostbyname(host)
        ip = ray.util.get_node_ip_address() if ip.startswith("127.") else ip
        return f"{ip}:{int(port)}" == current
    return requested == current


def _token_auth_on() -> bool:
    return os.environ.get("RAY_AUTH_MODE", "token").lower() == "token"


def _dashboard_hint() -> str:
    if not _token_auth_on():
        return ""
    if os.environ.get("RAY_AUTH_TOKEN"):
        return " (token auth: paste $RAY_AUTH_TOKEN when the page asks for a token)"
    path = os.environ.get("RAY_AUTH_TOKEN_PATH") or "~/.ray/auth_token"
    return (f" (token auth: the page asks for a token; paste the one in {path}, printed by "
            "`ray get-auth-token`)")


@contextlib.contextmanager
def _stderr_copy() -> Iterator:
    """Tee fd 2 into a file while joining a cluster: Ray reports a bad token only in C++ log lines there."""
    with tempfile.TemporaryFile() as buf:
        try:
            saved = os.dup(2)
        except OSError:  # no fd 2 (embedded interpreter): nothing to capture
            yield lambda: ""
            return
        sys.stderr.flush()
        os.dup2(buf.fileno(), 2)
        done = False

        def read() -> str:
            nonlocal done
            if not done:
                sys.stderr.flush()
                os.dup2(saved, 2)
                os.close(saved)
                done = True
                buf.seek(0)
                read.text = buf.read().decode(errors="replace")
                if read.text and "InvalidAuthToken" not in read.text:
                    sys.stderr.write(read.text)  # nothing to explain: show what Ray said, as it would have
            return read.text

        read.text = ""
        try:
            yield read
        finally:
            read()


_PRIVATE_RAY: list[str] = []  # the GCS address of the private Ray this process started, if any
_ENV_SET_FOR_PRIVATE_RAY: list[str] = []  # the variables start_ray set for it (a notebook's next Ray must not see them)


def flush_worker_output() -> None:
    """Before a job's final line: shut down the private Ray this process started, so that the worker lines Ray
    still holds (its log deduplication keeps repeats for up to 5 s and prints what is left when the driver
    disconnects, at exit) come out now, above the final line, not after it. A joined cluster, or a Ray someone else
    started in this process (a test's), is left running. The variables start_ray set for the private Ray go too:
    left, RAY_API_SERVER_ADDRESS sends the State API and JobSubmissionClient of any later Ray to a dead port."""
    ray = sys.modules.get("ray")
    if _PRIVATE_RAY and ray and ray.is_initialized() and ray.get_runtime_context().gcs_address in _PRIVATE_RAY:
        ray.shutdown()
    _PRIVATE_RAY.clear()
    while _ENV_SET_FOR_PRIVATE_RAY:
        os.environ.pop(_ENV_SET_FOR_PRIVATE_RAY.pop(), None)


_STOPPED_BY: list[str] = []  # the signals that stopped this process ("Ctrl-C", "SIGTERM"), for the last line


def install_stop_handlers() -> None:
    """SIGTERM behaves like Ctrl-C (KeyboardInterrupt, its text "SIGTERM" or "Ctrl-C"); a second SIGTERM/SIGINT
    shuts Ray down (if it runs) and exits (130) without waiting. Main thread only; SIGINT only where Python's own
    handler has it (not where the shell that started us ignores it)."""
    if threading.current_thread() is not threading.main_thread():
        return
    hits = {"n": 0}

    def stop(signum, frame):
        hits["n"] += 1
        _STOPPED_BY.append("Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name)
        if hits["n"] > 1:
            print(f"\nstopping now ({_STOPPED_BY[-1]} again)", file=sys.stderr, flush=True)
            ray = sys.modules.get("ray")  # not imported: nothing to shut down (stream mode runs without Ray)
            with contextlib.suppress(Exception):
                if ray is not None:
                    ray.shutdown()
            os._exit(130)
        raise KeyboardInterrupt(_STOPPED_BY[-1])

    def quiet_interrupt(kind, value, tb):  # one line, not a traceback through Ray's internals
        if issubclass(kind, KeyboardInterrupt):
            _print_stopped(value)
            return
        previous_hook(kind, value, tb)

    # Importing ray replaces sys.excepthook with its own (which reports a driver's error to the GCS, then calls the
    # default); ours goes in front of whatever is there, once per process.
    previous_hook = sys.excepthook
    if not getattr(previous_hook, "quiet_interrupt", False):
        quiet_interrupt.quiet_interrupt = True
        sys.excepthook = quiet_interrupt
    with contextlib.suppress(ValueError):
        signal.signal(signal.SIGTERM, stop)
        if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            signal.signal(signal.SIGINT, stop)


def stop_requested() -> str | None:
    """The signal that asked this process to stop ("Ctrl-C", "SIGTERM"), or None: for code after a call that may
    swallow the KeyboardInterrupt (Ray Tune and Ray Train can), so a stopped job publishes no result."""
    return _STOPPED_BY[-1] if _STOPPED_BY else None


def _print_stopped(value: BaseException) -> None:
    by = str(value) or (_STOPPED_BY or ["Ctrl-C"])[-1]  # ray.get raises a KeyboardInterrupt of its own, no text
    print(f"stopped ({by}); finished work is kept (checkpoints, trials, extracted videos), re-run the same "
          "command to continue", file=sys.stderr, flush=True)


def run_job(main, *args, **kwargs) -> int:
    """`sys.exit(run_job(main))` in every job: a stop (Ctrl-C, SIGTERM) exits 130 with one line. Python exits 130 by
    itself on an uncaught KeyboardInterrupt, but not once Ray is imported: code Ray runs at exit clears the
    interpreter's note of it, and the job exited 1, which a scheduler reads as a failure (measured)."""
    job_log_settings()
    try:
        return main(*args, **kwargs)
    except KeyboardInterrupt as stop:
        _print_stopped(stop)
        return 130


JOB_LINE_PATTERN = r"^\[[a-z][a-z_]*\] "  # a job's own lines: "[recognizer] epoch 3/10 ...", "[extract] ..."


def job_log_settings() -> None:
    """A job script's process only (run_job): Ray's driver prints every worker line with a job's tag (its log
    deduplication merged those of concurrent trials that differ only in numbers: 15 of a demo search's 24 epoch
    lines), and no colour codes around worker prefixes when the output is not a terminal (RAY_COLOR_PREFIX, read at
    each line). RAY_DEDUP_LOGS_ALLOW_REGEX is read when `ray` is imported, which most jobs did before main: the
    deduplicators built then get the pattern too."""
    if not (sys.stdout.isatty() and sys.stderr.isatty()):
        os.environ.setdefault("RAY_COLOR_PREFIX", "0")
    allowed = os.environ.get("RAY_DEDUP_LOGS_ALLOW_REGEX")
    if not allowed or JOB_LINE_PATTERN not in allowed:
        os.environ["RAY_DEDUP_LOGS_ALLOW_REGEX"] = _with_job_lines(allowed)
    ray_logging = sys.modules.get("ray._private.ray_logging")
    for dedup in (getattr(ray_logging, "stdout_deduplicator", None), getattr(ray_logging, "stderr_deduplicator", None)):
        pattern = getattr(getattr(dedup, "allow_re", None), "pattern", None)
        if dedup is not None and (not pattern or JOB_LINE_PATTERN not in pattern):
            dedup.allow_re = re.compile(_with_job_lines(pattern))


def _with_job_lines(pattern: str | None) -> str:
    """The user's allow regex or JOB_LINE_PATTERN. Its global flags stay in front ("(?i)warning" inside a group
    is an error in Python 3.11, which stopped every job at start); ours are turned off around our part. A pattern
    that does not compile is left as it is: Ray reports it."""
    if not pattern:
        return JOB_LINE_PATTERN
    flags = re.match(r"\(\?[aiLmsux]+\)", pattern)
    lead, rest = (flags.group(0), pattern[flags.end():]) if flags else ("", pattern)
    combined = f"{lead}(?:{rest})|(?-imsx:{JOB_LINE_PATTERN})" if lead else f"(?:{rest})|{JOB_LINE_PATTERN}"
    try:
        re.compile(combined)
    except re.error:
        return pattern
    return combined


def start_ray_or_exit(job: str, address: str | None = None, **kwargs) -> RayInfo:
    """`start_ray` for a job's main(): on failure print `error: ...` and exit 2 (no traceback)."""
    try:
        return start_ray(address, job=job, **kwargs)
    except RayStartError as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
