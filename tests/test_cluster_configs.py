"""cluster/: every YAML parses; entrypoints exist and their flags parse; resources, versions, images and the
security settings (token auth, no public endpoints, no secrets in files) are consistent."""
from __future__ import annotations

import argparse
import math
import re
import shlex
import tomllib
from pathlib import Path

import pytest
import ray
import yaml

from recognizer_core.tune.cli import add_tune_args

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "cluster"
IMAGE_HOME = "/home/ray/recognizer"  # WORKDIR of cluster/docker/Dockerfile
YAMLS = sorted(CLUSTER.rglob("*.yaml"))


def _docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def _by_kind(kind: str) -> list[tuple[Path, dict]]:
    return [(p, d) for p in YAMLS for d in _docs(p) if d.get("kind") == kind]


def _walk(node, path=""):
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _walk(v, f"{path}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _walk(v, f"{path}[{i}]")
    yield path, node


def _cluster_specs() -> list[tuple[str, dict]]:
    specs = [(f"{p.name}:RayCluster", d["spec"]) for p, d in _by_kind("RayCluster")]
    specs += [(f"{p.name}:RayJob", d["spec"]["rayClusterSpec"]) for p, d in _by_kind("RayJob")]
    return specs


def _pinned(name: str) -> str:
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    return next(re.search(r"==([\w.]+)", d)[1] for d in deps if re.match(rf"{name}(\[|=)", d))


def test_every_yaml_parses_and_kinds_are_present():
    assert {p.relative_to(CLUSTER).as_posix() for p in YAMLS} >= {
        "kuberay/raycluster.yaml", "kuberay/rayjob-tune-fight.yaml", "launcher/aws-gpu.yaml"}
    for p in YAMLS:
        assert _docs(p), f"{p}: empty"
    assert len(_by_kind("RayCluster")) == 1 and len(_by_kind("RayJob")) >= 1


@pytest.mark.parametrize("name, spec", _cluster_specs(), ids=lambda x: x if isinstance(x, str) else "")
def test_kuberay_cluster_spec(name, spec):
    assert spec["rayVersion"] == ray.__version__ == _pinned("ray"), name
    assert spec["authOptions"]["mode"] == "token", f"{name}: token authentication must be on"
    assert spec["enableInTreeAutoscaling"] is True
    head = spec["headGroupSpec"]
    assert head.get("serviceType", "ClusterIP") == "ClusterIP", f"{name}: the head must not be exposed publicly"
    assert head["rayStartParams"]["num-cpus"] == "0", f"{name}: trials must not land on the head"
    images = {c["image"] for c in head["template"]["spec"]["containers"]}
    for group in spec["workerGroupSpecs"]:
        assert 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"], group["groupName"]
        pod = group["template"]["spec"]
        (c,) = pod["containers"]
        images.add(c["image"])
        limits, requests = c["resources"]["limits"], c["resources"]["requests"]
        assert int(limits["nvidia.com/gpu"]) >= 1 and limits == requests, f"{name}: GPU pods need equal limits"
        assert any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"]), f"{name}: GPU taint toleration"
    assert len(images) == 1, f"{name}: head and workers must run the same image, got {images}"
    for pod in [head["template"]["spec"]] + [g["template"]["spec"] for g in spec["workerGroupSpecs"]]:
        volumes = {v["name"] for v in pod["volumes"]}
        for c in pod["containers"]:
            assert {m["name"] for m in c.get("volumeMounts", [])} <= volumes
            for e in c.get("env", []):  # credentials only from Secrets, never literal values
                if re.search(r"KEY|TOKEN|SECRET|PASSWORD", e["name"]):
                    assert "value" not in e and "secretKeyRef" in e["valueFrom"], f"{name}: {e['name']}"


def test_no_public_endpoints_or_literal_secrets():
    for p in YAMLS:
        for doc in _docs(p):
            for path, value in _walk(doc):
                assert value != "LoadBalancer", f"{p}:{path}: a public LoadBalancer exposes the Jobs API"
                assert value != "NodePort", f"{p}:{path}"
    text = "\n".join(p.read_text() for p in CLUSTER.rglob("*") if p.is_file())
    assert not re.search(r"AKIA[0-9A-Z]{16}", text), "AWS access key in cluster/"
    assert not re.search(r"(api_key|auth_token|password)\s*[=:]\s*['\"]?[A-Za-z0-9]{20,}", text)


def _tune_args(entrypoint: str) -> tuple[Path, argparse.Namespace]:
    argv = shlex.split(entrypoint)
    assert argv[0] == "python", entrypoint
    script = argv[1]
    local = REPO / (script[len(IMAGE_HOME) + 1:] if script.startswith(IMAGE_HOME + "/") else script)
    parser = argparse.ArgumentParser()
    add_tune_args(parser, "search_spaces/fight.yaml")
    return local, parser.parse_args(argv[2:])  # an unknown flag exits: the entrypoint would fail the same way


@pytest.mark.parametrize("path, job", _by_kind("RayJob"), ids=lambda x: x.name if isinstance(x, Path) else "")
def test_rayjob_entrypoint_and_resources(path, job):
    spec = job["spec"]
    script, args = _tune_args(spec["entrypoint"])
    assert script.is_file(), f"{path}: entrypoint {script} is not in the repo"
    runtime_env = yaml.safe_load(spec.get("runtimeEnvYAML") or "{}")
    assert "working_dir" not in runtime_env, "the code is in the image (cluster/docker/Dockerfile)"
    assert spec["shutdownAfterJobFinishes"] is True
    cluster = spec["rayClusterSpec"]
    (group,) = cluster["workerGroupSpecs"]
    (c,) = group["template"]["spec"]["containers"]
    pod_gpus, pod_cpus = int(c["resources"]["limits"]["nvidia.com/gpu"]), float(c["resources"]["limits"]["cpu"])
    workers, gpw, cpw = args.workers_per_trial, args.gpus_per_worker, args.cpus_per_worker
    assert workers and gpw and cpw, "resources per trial must be explicit on a cluster"
    # Enough GPUs for the concurrent trials at the autoscaler's maximum...
    assert args.max_concurrent_trials * workers * gpw <= group["maxReplicas"] * pod_gpus
    # ...and the CPUs of one GPU pod hold the trials its GPUs admit (+ each trial's small driver).
    trials_per_pod = math.floor(pod_gpus / (gpw * workers))
    assert trials_per_pod * (workers * cpw + 0.05) <= pod_cpus
    # Data and results live on the volume every pod mounts.
    mounts = [m["mountPath"] for m in c["volumeMounts"]]
    for p in (args.data, args.storage_path):
        assert any(p.startswith(m + "/") for m in mounts), f"{p} is not on a shared mount {mounts}"


def test_launcher_config():
    (cfg,) = _docs(CLUSTER / "launcher" / "aws-gpu.yaml")
    types = cfg["available_node_types"]
    assert types[cfg["head_node_type"]]["resources"] == {"CPU": 0}
    assert sum(t.get("max_workers", 0) for n, t in types.items() if n != cfg["head_node_type"]) <= cfg["max_workers"]
    for name, t in types.items():
        assert t.get("min_workers", 0) <= t.get("max_workers", 0) or name == cfg["head_node_type"]
    head_cmd = " ".join(cfg["head_start_ray_commands"])
    assert "RAY_AUTH_MODE=token" in head_cmd and "--dashboard-host=127.0.0.1" in head_cmd
    assert "RAY_AUTH_MODE=token" in " ".join(cfg["worker_start_ray_commands"])
    assert "--env RAY_AUTH_MODE=token" in cfg["docker"]["run_options"]
    # The token is copied from the user's ~/.ray, never from a file in the repo.
    assert cfg["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"
    kuberay_image = _cluster_specs()[0][1]["headGroupSpec"]["template"]["spec"]["containers"][0]["image"]
    assert cfg["docker"]["image"] == kuberay_image


def test_dockerfile_matches_the_project():
    text = (CLUSTER / "docker" / "Dockerfile").read_text()
    assert f"rayproject/ray:{_pinned('ray')}-" in text
    assert f'"torch=={_pinned("torch")}"' in text
    assert f"WORKDIR {IMAGE_HOME}" in text
    for src in re.findall(r"^COPY (?:--\S+ )*(.+?) \S+$", text, flags=re.M):
        for item in src.split():
            assert (REPO / item).exists() or item == "README.md", f"Dockerfile copies {item}, not in the repo"
    ignore = (CLUSTER / "docker" / "Dockerfile.dockerignore").read_text()
    assert "**" in ignore.splitlines()  # only what the image needs enters the build context (no .venv, data)
