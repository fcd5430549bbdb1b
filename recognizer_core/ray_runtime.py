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
import signal
import socket
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator


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


def start_ray(address: str | None = None, *, num_cpus: int | None = None, dashboard: bool = True,
              log_to_driver: bool = True, job: str = "job") -> RayInfo:
    """Join `address` / $RAY_ADDRESS, else start a private local Ray; return where it runs. Idempotent."""
    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if ray.is_initialized():
        ctx = ray.get_runtime_context()
        return RayInfo(address=ctx.gcs_address, dashboard_url=None, private=False)
    address = address or os.environ.get("RAY_ADDRESS") or None
    joining = joins_cluster(address)
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
            os.environ.setdefault("RAY_API_SERVER_ADDRESS", f"http://127.0.0.1:{port}")
            # Ray Train's preemption watcher (one actor per Train run) polls whether a node is being drained
            # (spot / preemptible machines). A private Ray is this one machine: nothing to watch, and creating
            # the actor makes Ray 2.60 log a C++ "E ... core_worker.cc: Actor with class name: 'PreemptionWatcher'
            # ... has constructor arguments in the object store" line for every run. Off here only (the
            # controller reads it from the environment, which Ray's processes inherit); clusters keep it.
            os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
            # Ray Train's controller polls its workers every RAY_TRAIN_HEALTH_CHECK_INTERVAL_S (2 s) and takes one
            # report per poll (a worker's result queue holds one), so every report, run start and run end waits
            # for a poll. On one machine a poll is a local call: 0.5 s keeps short epochs (the demo, small
            # searches) from being paced at 2 s each. Clusters keep Ray's default.
            os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
            # scaling.cpu_malloc=auto preloads the tcmalloc found here into the workers (train/cpu_malloc.py)
            os.environ[PRIVATE_RAY_ENV] = "1"
            ctx = ray.init(address="local", num_cpus=num_cpus, include_dashboard=dashboard, dashboard_port=port,
                           log_to_driver=log_to_driver, logging_level=RAY_LOG_LEVEL,
                           runtime_env={"worker_process_setup_hook": worker_setup_hook()})
            _PRIVATE_RAY.append(ctx)
    except Exception as err:  # noqa: BLE001 - every start-up failure gets the same advice block
        raise RayStartError(_advice(err, address if joining else None, captured)) from None
    install_stop_handlers()
    url = f"http://{ctx.dashboard_url}" if getattr(ctx, "dashboard_url", None) else None
    info = RayInfo(address=ctx.address_info.get("gcs_address", ""), dashboard_url=url, private=not joining)
    where = "a private local Ray" if not joining else f"the Ray cluster at {address}"
    print(f"[{job}] running on {where}", flush=True)
    if url:
        print(f"[{job}] Ray dashboard: {url}{_dashboard_hint()}", flush=True)
    return info


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


def _advice(err: Exception, address: str | None, captured: str = "") -> str:
    first = str(err).strip().splitlines()[0] if str(err).strip() else ""
    text = f"{type(err).__name__}: {first}"
    fix = _environment_fix(err)
    if fix:  # before the token check: a PermissionError on ~/.ray/auth_token is the folder's, not the token's
        what = f"join the Ray cluster at {address}" if address else "start a local Ray"
        return f"could not {what} ({text}).\n  {fix}"
    if "InvalidAuthToken" in captured or "AuthenticationError" in text or "auth" in first.lower():
        unreadable = _unreadable_token_file()
        if not address or unreadable:  # nothing refused a token: Ray could not read ours ("cluster at None" was)
            what = f"join the Ray cluster at {address}" if address else "start a local Ray"
            said = first.split(". Ensure ")[0]   # Ray's line, without its generic help (the advice below is ours)
            return f"could not {what} ({type(err).__name__}: {said}).\n  {unreadable or _token_sources()}"
        mode = os.environ.get("RAY_AUTH_MODE", "unset")
        source = ("$RAY_AUTH_TOKEN" if os.environ.get("RAY_AUTH_TOKEN") else
                  os.environ.get("RAY_AUTH_TOKEN_PATH") or str(Path("~/.ray/auth_token")))
        return (f"the Ray cluster at {address} refused our token (InvalidAuthToken; RAY_AUTH_MODE={mode}, token "
                f"from {source}). Set RAY_AUTH_MODE=token and give the cluster's token: RAY_AUTH_TOKEN=<token>, "
                "or RAY_AUTH_TOKEN_PATH=<file>, or copy it to ~/.ray/auth_token (on the head: "
                "`ray get-auth-token`).")
    if address:
        return (f"could not join the Ray cluster at {address} ({text}). Check that it is running "
                "(`ray status --address ...`), or omit --address and unset RAY_ADDRESS for a private local Ray.")
    if isinstance(err, TimeoutError) or "timed out" in text.lower() or "timeout" in text.lower():
        return (f"could not start a local Ray ({text}).\n"
                "  On a busy or small machine Ray's start-up can time out. Try:\n"
                "  - run the command again;\n"
                "  - give Ray longer: RAY_raylet_start_wait_time_s=120 (and RAY_gcs_rpc_server_connect_timeout_s=60);\n"
                "  - free memory / stop other Ray instances you own (`ray status` lists them).")
    var, tmp = _ray_temp_base()
    return (f"could not start a local Ray ({text}).\n"
            f"  Ray's own messages above say more; its logs are in {os.path.join(tmp, 'ray', 'session_latest')}"
            f" (the temp folder from {var}). Other Ray instances you own: `ray status` lists them.")


def _unreadable_token_file() -> str | None:
    """The advice when RAY_AUTH_TOKEN_PATH, which Ray reads when RAY_AUTH_TOKEN is not set, names no readable
    token (missing, a folder, empty): Ray then fails before it starts or contacts anything. None otherwise."""
    path = os.environ.get("RAY_AUTH_TOKEN_PATH")
    if not path or os.environ.get("RAY_AUTH_TOKEN"):
        return None
    if os.path.isdir(path):
        state = "is a folder"
    elif not os.path.exists(path):
        state = "does not exist"
    else:
        try:
            with open(path, "rb") as f:
                if f.read().strip():
                    return None
            state = "is empty"
        except OSError as err:
            state = f"cannot be read ({err.strerror})"
    return (f"RAY_AUTH_TOKEN_PATH={path} {state}: point it at a file holding the token, or give the token itself as "
            "RAY_AUTH_TOKEN=<token>, or unset RAY_AUTH_TOKEN_PATH (a private Ray then uses ~/.ray/auth_token, "
            "written when missing; for a cluster, copy its token there: `ray get-auth-token` on the head).")


def _token_sources() -> str:
    return ("With RAY_AUTH_MODE=token Ray reads its token from RAY_AUTH_TOKEN, else the file RAY_AUTH_TOKEN_PATH "
            "names, else ~/.ray/auth_token (a private Ray writes that one when missing): fix or unset the one that "
            "failed.")


def _ray_temp_base() -> tuple[str, str]:
    """(variable, folder) Ray puts its session files under: Ray's own rule (get_default_system_temp_dir)."""
    for var in ("RAY_TMPDIR", "TMPDIR"):
        if var in os.environ:
            return var, os.environ[var]
    return "Ray's default", "/tmp"


def _inside(path: str, folder: str) -> bool:
    path, folder = os.path.abspath(path), os.path.abspath(folder)
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _environment_fix(err: Exception) -> str | None:
    """What to set when Ray's start-up failed on this environment rather than on a busy machine (a retry fails the
    same way): a non-ASCII or long temp folder (Ray's socket paths must be ASCII and under 108 bytes), or a path
    Ray cannot write (HOME=/
    in an arbitrary-uid container: Ray writes its token to ~/.ray/auth_token). None for anything else."""
    var, tmp = _ray_temp_base()
    if isinstance(err, UnicodeError):
        if not tmp.isascii():
            return (f"Ray needs an ASCII path for its temp folder, and {var}={tmp!r} is not ASCII: set RAY_TMPDIR "
                    "to an ASCII folder you can write (e.g. RAY_TMPDIR=/tmp); TMPDIR may stay as it is.")
        return (f"a path Ray uses is not ASCII (its temp folder from {var}: {tmp!r}, HOME={os.path.expanduser('~')!r},"
                f" working directory {os.getcwd()!r}): use ASCII paths, e.g. RAY_TMPDIR=/tmp for the temp folder.")
    if "AF_UNIX path length" in str(err):  # Ray's sockets live under <temp folder>/ray/session_<date>/sockets
        return (f"Ray's socket paths under its temp folder ({var}={tmp}) are longer than a Unix socket allows "
                "(107 bytes): set RAY_TMPDIR to a short folder you can write (e.g. RAY_TMPDIR=/tmp).")
    if not isinstance(err, OSError) or not err.filename:
        return None
    path, why = str(err.filename), err.strerror or type(err).__name__
    ray_home = os.path.join(os.path.expanduser("~"), ".ray")
    if _inside(path, ray_home):
        return (f"Ray could not write {path} ({why}): it keeps its auth token in ~/.ray/auth_token, and "
                f"HOME={os.path.expanduser('~')} is not writable here. Set HOME to a folder you can write, or give "
                "the token yourself: RAY_AUTH_TOKEN=<a secret string>.")
    if _inside(path, tmp):
        return (f"Ray could not write {path} ({why}) in its temp folder ({var}={tmp}): set RAY_TMPDIR to a folder "
                "you can write (e.g. RAY_TMPDIR=/tmp).")
    return (f"Ray could not use {path} ({why}): make it writable for this user, or point Ray elsewhere "
            "(RAY_TMPDIR for its temp folder, HOME for ~/.ray).")


_PRIVATE_RAY: list = []  # the private Ray this process started, if any (flush_worker_output ends only that one)


def flush_worker_output() -> None:
    """Before a job's final line: shut down the private Ray this process started, so that the worker lines Ray
    still holds (its log deduplication keeps repeats for up to 5 s and prints what is left when the driver
    disconnects, at exit) come out now, above the final line, not after it. A joined cluster, or a Ray someone else
    started in this process (a test's), is left running."""
    if _PRIVATE_RAY:
        import ray

        _PRIVATE_RAY.clear()
        os.environ.pop(PRIVATE_RAY_ENV, None)
        if ray.is_initialized():
            ray.shutdown()


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
    try:
        return main(*args, **kwargs)
    except KeyboardInterrupt as stop:
        _print_stopped(stop)
        return 130


def start_ray_or_exit(job: str, address: str | None = None, **kwargs) -> RayInfo:
    """`start_ray` for a job's main(): on failure print `error: ...` and exit 2 (no traceback)."""
    try:
        return start_ray(address, job=job, **kwargs)
    except RayStartError as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
