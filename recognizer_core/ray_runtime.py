"""One way for every job to start or join Ray.

- `--address` given, or `RAY_ADDRESS` set (as `ray job submit` does): join that cluster.
- Neither: start a *private* local Ray (`address="local"`), as every job's help promises. A bare `ray.init()`
  would attach to any `ray start` cluster on the host, and hang for minutes when that cluster is stale.

For a private Ray the State API address is pinned in the environment (workers inherit it): Ray Train's
placement-group cleaner otherwise prints a "Found multiple active Ray instances" traceback whenever another Ray
runs on the host. Start-up failures become one `RayStartError` with what to try, not a Ray traceback.
"""
from __future__ import annotations

import os
import socket
from dataclasses import dataclass


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


def start_ray(address: str | None = None, *, num_cpus: int | None = None, dashboard: bool = True,
              log_to_driver: bool = True, job: str = "job") -> RayInfo:
    """Join `address` / $RAY_ADDRESS, else start a private local Ray; return where it runs. Idempotent."""
    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if ray.is_initialized():
        ctx = ray.get_runtime_context()
        return RayInfo(address=ctx.gcs_address, dashboard_url=None, private=False)
    address = address or os.environ.get("RAY_ADDRESS") or None
    try:
        if address and address != "local":
            ctx = ray.init(address=address, log_to_driver=log_to_driver)
            private = False
        else:
            port = _free_port()
            os.environ.setdefault("RAY_API_SERVER_ADDRESS", f"http://127.0.0.1:{port}")
            ctx = ray.init(address="local", num_cpus=num_cpus, include_dashboard=dashboard, dashboard_port=port,
                           log_to_driver=log_to_driver)
            private = True
    except Exception as err:  # noqa: BLE001 - every start-up failure gets the same advice block
        raise RayStartError(_advice(err, address)) from err
    url = f"http://{ctx.dashboard_url}" if getattr(ctx, "dashboard_url", None) else None
    info = RayInfo(address=ctx.address_info.get("gcs_address", ""), dashboard_url=url, private=private)
    where = "a private local Ray" if private else f"the Ray cluster at {address}"
    print(f"[{job}] running on {where}", flush=True)
    if url:
        print(f"[{job}] Ray dashboard: {url} (token auth: paste the token from ~/.ray/auth_token when asked)",
              flush=True)
    return info


def _advice(err: Exception, address: str | None) -> str:
    text = f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}"
    if "auth" in text.lower() or "token" in text.lower():
        return (f"could not join the Ray cluster at {address}: its token does not match ({text}). Use the "
                "cluster's token: set RAY_AUTH_TOKEN (or copy it to ~/.ray/auth_token) and the same "
                "RAY_AUTH_MODE as the cluster.")
    if address and address != "local":
        return (f"could not join the Ray cluster at {address} ({text}). Check that it is running "
                "(`ray status --address ...`), or omit --address and unset RAY_ADDRESS for a private local Ray.")
    return (f"could not start a local Ray ({text}). On a busy or small machine start-up can time out: retry, "
            "free memory, or give it longer with RAY_raylet_start_wait_time_s=120.")
