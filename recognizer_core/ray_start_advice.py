"""What to try when Ray could not be started or joined: the text of ray_runtime.RayStartError, from the error
Ray raised, what it printed (a token mismatch shows only in C++ log lines) and this environment."""
from __future__ import annotations

import os
from pathlib import Path


def advice(err: Exception, address: str | None, captured: str = "") -> str:
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
    same way): a non-ASCII or long temp folder (Ray's socket paths must be ASCII and under 108 bytes), or a path Ray
    cannot write (HOME=/ in an arbitrary-uid container: Ray writes its token to ~/.ray/auth_token). Else None."""
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
