"""cluster/: every YAML parses; entrypoints exist and their flags parse; resources, versions, images and the
security settings (token auth, no public endpoints, no secrets in files) are consistent."""
from __future__ import annotations

import argparse
import functools
import math
import re
import shlex
import tomllib
from pathlib import Path

import pytest
import ray
import yaml

from recognizer_core.train.cpu_malloc import TCMALLOC_NAMES
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
    # the package whose library scaling.cpu_malloc=tcmalloc finds on the nodes
    assert "apt-get install -y --no-install-recommends libtcmalloc-minimal4 g++" in text
    # the CPU training kernels (fused BatchNorm, GCN aggregation) are built (and must build) in the image, not in a
    # first job
    assert "from recognizer_core.models import cpu_kernels; assert cpu_kernels.load()" in text
    assert "libtcmalloc_minimal.so.4" in TCMALLOC_NAMES


# --- offline validation against the KubeRay CRDs (../shared/kuberay-crds) -------------------------------------

def _strict(schema: dict) -> dict:
    """The CRD's OpenAPI schema with unknown fields forbidden: Kubernetes would silently prune a misspelt field
    (`rayStartParam`, `workerGroupSpec`), so the test treats one as an error."""
    if isinstance(schema, dict):
        schema = {k: _strict(v) for k, v in schema.items()}
        if ("properties" in schema and "additionalProperties" not in schema
                and not schema.get("x-kubernetes-preserve-unknown-fields")):
            schema["additionalProperties"] = False
    elif isinstance(schema, list):
        schema = [_strict(v) for v in schema]
    return schema


@functools.lru_cache(maxsize=None)
def _crd_validator(kind: str):
    import jsonschema

    from conftest import shared_path

    crd_file = shared_path("kuberay-crds", f"ray.io_{kind.lower()}s.yaml")
    crd = yaml.load(crd_file.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))  # 1 MB each
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    return jsonschema.Draft7Validator(_strict(version["schema"]["openAPIV3Schema"]))


@pytest.mark.parametrize("kind", ["RayCluster", "RayJob"])
def test_manifests_validate_against_the_kuberay_crds(kind):
    validator = _crd_validator(kind)
    docs = _by_kind(kind)
    assert docs
    for path, doc in docs:
        assert doc["apiVersion"] == "ray.io/v1", path
        errors = sorted(validator.iter_errors(doc), key=lambda e: list(e.absolute_path))
        assert not errors, f"{path.name}: " + "; ".join(
            f"{'.'.join(map(str, e.absolute_path))}: {e.message[:200]}" for e in errors[:5])


def test_crd_validation_catches_a_misspelt_field():  # the check above can fail
    (path, doc), *_ = _by_kind("RayCluster")
    doc["spec"]["headGroupSpec"]["rayStartParam"] = doc["spec"]["headGroupSpec"].pop("rayStartParams")
    assert any("rayStartParam" in e.message for e in _crd_validator("RayCluster").iter_errors(doc))


def _pod_templates() -> list[tuple[str, dict]]:
    out = []
    for name, spec in _cluster_specs():
        out.append((f"{name}:head", spec["headGroupSpec"]["template"]))
        out += [(f"{name}:{g['groupName']}", g["template"]) for g in spec["workerGroupSpecs"]]
    return out


def test_network_policy_limits_ray_ports_to_the_pods_that_need_them():
    policies = {d["metadata"]["name"]: d["spec"] for _, d in _by_kind("NetworkPolicy")}
    assert set(policies) == {"recognizer-ray-internal", "recognizer-ray-head-api"}
    label = {"app.kubernetes.io/name": "recognizer"}
    for name, template in _pod_templates():  # every Ray pod is covered by the policies
        assert template["metadata"]["labels"].items() >= label.items(), name
    for name, spec in policies.items():
        assert spec["policyTypes"] == ["Ingress"] and spec["podSelector"]["matchLabels"].items() >= label.items()
        for rule in spec["ingress"]:
            assert rule.get("from"), f"{name}: an ingress rule without `from` admits every pod"
    internal = policies["recognizer-ray-internal"]["ingress"]
    assert internal == [{"from": [{"podSelector": {"matchLabels": label}}]}]
    (api,) = policies["recognizer-ray-head-api"]["ingress"]
    assert policies["recognizer-ray-head-api"]["podSelector"]["matchLabels"]["ray.io/node-type"] == "head"
    assert api["ports"] == [{"protocol": "TCP", "port": 8265}], "only the dashboard/Jobs API, never GCS 6379"
    submitters = [p["podSelector"]["matchLabels"].get("batch.kubernetes.io/job-name") for p in api["from"]]
    assert {d["metadata"]["name"] for _, d in _by_kind("RayJob")} <= set(submitters), "RayJob submitter blocked"


def test_every_path_is_on_shared_storage():
    for name, template in _pod_templates():
        (c,) = template["spec"]["containers"]
        mounts = [m["mountPath"] for m in c["volumeMounts"]]
        env = {e["name"]: e.get("value") for e in c["env"]}
        for var in ("RECOGNIZER_STORAGE", "RECOGNIZER_TUNE_STORAGE"):
            assert any(env[var].startswith(m + "/") for m in mounts), f"{name}: {var}={env[var]} not shared"
    for p, doc in _by_kind("PersistentVolumeClaim"):
        assert doc["spec"]["accessModes"] == ["ReadWriteMany"], f"{p}: every pod must see the same files"
    (cfg,) = _docs(CLUSTER / "launcher" / "aws-gpu.yaml")
    opts = " ".join(cfg["docker"]["run_options"])
    assert "-v /mnt/shared:/mnt/shared" in opts and "RECOGNIZER_STORAGE=/mnt/shared/" in opts
    assert "RECOGNIZER_TUNE_STORAGE=/mnt/shared/" in opts
    assert "/mnt/shared" in " ".join(cfg["initialization_commands"])
    # Only credentials are copied to the nodes: no data synced to node-local disks.
    assert set(cfg["file_mounts"]) == {"~/.ray/auth_token", "~/.ray/recognizer.env"}


def test_secrets_never_travel_in_the_runtime_env():
    text = "\n".join(p.read_text() for p in CLUSTER.rglob("*") if p.is_file())
    assert not re.search(r"runtime-env-json[^\n]*(KEY|TOKEN|SECRET)", text), "the dashboard shows runtime_env"
    (cfg,) = _docs(CLUSTER / "launcher" / "aws-gpu.yaml")
    for cmd in cfg["head_start_ray_commands"][1:] + cfg["worker_start_ray_commands"][1:]:
        assert ". ~/.ray/recognizer.env" in cmd  # the W&B key from the user's secret file, like the token


# --- the image and the dependencies ---------------------------------------------------------------------------

def _project() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def test_one_onnx_runtime_build_and_bounded_dependencies():
    project = _project()
    base, extras = project["dependencies"], project["optional-dependencies"]
    assert not [d for d in base if d.startswith(("onnxruntime", "onnx"))], "ORT comes from one extra; onnx is dev"
    assert extras["cpu"] == [d for d in extras["cpu"] if d.startswith("onnxruntime>")] and extras["cpu"]
    assert len(extras["gpu"]) == 1 and extras["gpu"][0].startswith("onnxruntime-gpu")
    assert extras["tensorrt"] == ["tensorrt>=10,<11"], "the tested TensorRT major; no pycuda"
    assert any(d.startswith("onnx>") for d in extras["dev"]) and any(d.startswith("onnx>") for d in extras["export"])
    for dep in base + [d for e in extras.values() for d in e]:
        assert "==" in dep or "<" in dep, f"{dep}: heavy dependencies get an upper bound at the next major"


def test_dockerfile_is_pinned_locked_and_not_root():
    text = (CLUSTER / "docker" / "Dockerfile").read_text()
    assert re.search(r"^FROM \$\{RAY_BASE\}@\$\{RAY_BASE_DIGEST\}$", text, flags=re.M), "base image by digest"
    assert "imagetools inspect" in text  # how to update the digest
    users = re.findall(r"^USER (\S+)$", text, flags=re.M)
    assert users and users[-1] not in ("root", "0"), "an explicit non-root USER"
    installs = re.findall(r"pip install ([^\n&]+)", text)
    assert installs and all("-c cluster/docker/constraints.txt" in i for i in installs), installs
    assert '".[gpu,wandb,export]"' in text and "onnxruntime" not in " ".join(installs)
    pins = dict(line.split("==") for line in (CLUSTER / "docker" / "constraints.txt").read_text().splitlines()
                if "==" in line)
    assert pins["ray"] == _pinned("ray") and pins["torch"] == _pinned("torch")
    assert "onnxruntime-gpu" in pins and "onnxruntime" not in pins and "pytest" not in pins
    for name, images in (("manifests", [t["spec"]["containers"][0]["image"] for _, t in _pod_templates()]),
                         ("launcher", [_docs(CLUSTER / "launcher" / "aws-gpu.yaml")[0]["docker"]["image"]])):
        assert all("@sha256:" in i for i in images), f"{name}: app image pinned by digest: {images}"


def test_two_onnx_runtime_builds_fail_with_the_fix(tmp_path):
    """A second ORT distribution (its dist-info on sys.path, as pip would leave it) makes the import refuse."""
    import subprocess
    import sys

    for dist in ("onnxruntime_gpu-1.32.0.dist-info", "onnxruntime-1.32.0.dist-info"):
        meta = tmp_path / dist
        meta.mkdir()
        name = dist.split("-")[0].replace("_", "-")
        (meta / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.32.0\n")
    code = "from recognizer_core.onnx_runtime import import_onnxruntime; import_onnxruntime()"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={"PYTHONPATH": f"{tmp_path}:{REPO}", "PATH": "/usr/bin:/bin"})
    assert out.returncode == 1
    assert "OnnxRuntimeConflict" in out.stderr and "pip uninstall -y onnxruntime onnxruntime-gpu" in out.stderr
    assert "pip install onnxruntime-gpu" in out.stderr
    ok = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert ok.returncode == 0, ok.stderr  # this environment has one build


# --- Pod Security "restricted" and the pods' Kubernetes identities ------------------------------------------

IMAGE_UID, IMAGE_GID = 1000, 100  # the `ray` user and `users` group of the image (cluster/docker/Dockerfile)
RESTRICTED_VOLUMES = set("configMap csi downwardAPI emptyDir ephemeral persistentVolumeClaim projected secret".split())


def _every_pod() -> list[tuple[str, dict]]:
    """Every pod spec the manifests make, with what KubeRay adds (ray-operator common/pod.go): the head's autoscaler
    sidecar gets autoscalerOptions.securityContext, a worker's wait-gcs-ready init container a copy of its Ray
    container's. KubeRay's default RayJob submitter pod has none: the manifest must give its own (K8sJobMode)."""
    out = []
    for name, spec in _cluster_specs():
        head = dict(spec["headGroupSpec"]["template"]["spec"])
        if spec.get("enableInTreeAutoscaling"):
            sc = (spec.get("autoscalerOptions") or {}).get("securityContext")
            head["containers"] = head["containers"] + [{"name": "autoscaler", "securityContext": sc}]
        out.append((f"{name}:head", head))
        for g in spec["workerGroupSpecs"]:
            pod = dict(g["template"]["spec"])
            pod["initContainers"] = pod.get("initContainers", []) + [
                {"name": "wait-gcs-ready", "securityContext": pod["containers"][0].get("securityContext")}]
            out.append((f"{name}:{g['groupName']}", pod))
    for p, job in _by_kind("RayJob"):
        if job["spec"].get("submissionMode", "K8sJobMode") == "K8sJobMode":
            template = job["spec"].get("submitterPodTemplate") or {"spec": {"containers": [{"name": "default"}]}}
            out.append((f"{p.name}:RayJob:submitter", template["spec"]))
    return out


def _restricted_violations(pod: dict) -> list[str]:
    """What the Pod Security "restricted" profile (Kubernetes >= 1.25) would reject in a pod spec."""
    bad = [k for k in ("hostNetwork", "hostPID", "hostIPC") if pod.get(k)]
    bad += [f"volume {v['name']}" for v in pod.get("volumes", []) if not set(v) - {"name"} <= RESTRICTED_VOLUMES]
    psc = pod.get("securityContext") or {}
    for c in pod["containers"] + pod.get("initContainers", []):
        sc = c.get("securityContext") or {}
        caps = sc.get("capabilities") or {}
        seccomp = (sc.get("seccompProfile") or psc.get("seccompProfile") or {}).get("type")
        bad += [f"{c['name']}: {why}" for why, failed in (
            ("privileged", sc.get("privileged")),
            ("allowPrivilegeEscalation must be false", sc.get("allowPrivilegeEscalation") is not False),
            ("capabilities.drop must hold ALL", "ALL" not in caps.get("drop", [])),
            ("capabilities.add beyond NET_BIND_SERVICE", set(caps.get("add", [])) - {"NET_BIND_SERVICE"}),
            ("runAsNonRoot must be true", sc.get("runAsNonRoot", psc.get("runAsNonRoot")) is not True),
            ("runAsUser 0", sc.get("runAsUser", psc.get("runAsUser")) == 0),
            ("seccompProfile must be RuntimeDefault or Localhost", seccomp not in ("RuntimeDefault", "Localhost")),
            ("hostPort", any(port.get("hostPort") for port in c.get("ports", [])))) if failed]
    return bad


@pytest.mark.parametrize("name, pod", _every_pod(), ids=lambda x: x if isinstance(x, str) else "")
def test_every_pod_meets_pod_security_restricted(name, pod):
    assert not _restricted_violations(pod), f"{name}: {_restricted_violations(pod)}"
    psc = pod["securityContext"]
    # A numeric uid: with only the image's named USER the kubelet cannot verify runAsNonRoot and refuses to start.
    assert (psc["runAsUser"], psc["runAsGroup"], psc["fsGroup"]) == (IMAGE_UID, IMAGE_GID, IMAGE_GID), name
    assert f"`ray` (uid {IMAGE_UID})" in (CLUSTER / "docker" / "Dockerfile").read_text()
    head_image = _cluster_specs()[0][1]["headGroupSpec"]["template"]["spec"]["containers"][0]["image"]
    assert {c.get("image", head_image) for c in pod["containers"]} == {head_image}, name


def test_the_restricted_check_can_fail():  # the old manifests (no securityContext) fail it, as the cluster would
    for name, pod in _every_pod():
        bare = {k: [{"name": c["name"]} for c in v] if k.endswith("ontainers") else v
                for k, v in pod.items() if k != "securityContext"}
        n = len(bare["containers"]) + len(bare.get("initContainers", []))  # 4 each: escalation, caps, root, seccomp
        assert len(_restricted_violations(bare)) == 4 * n, (name, _restricted_violations(bare))
    add = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"], "add": ["SYS_PTRACE"]}}
    assert _restricted_violations({"securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "Unconfined"}},
                                   "containers": [{"name": "c", "securityContext": add}]}) == [
        "c: capabilities.add beyond NET_BIND_SERVICE", "c: seccompProfile must be RuntimeDefault or Localhost"]


def test_worker_pods_get_neither_the_autoscalers_account_nor_a_token():
    """KubeRay binds its autoscaler Role (pods get/list/watch, rayclusters get/patch) to the head's service account;
    workers run trial code, so they get an account of their own, with the same cloud identity and no API token."""
    accounts = {d["metadata"]["name"]: d for _, d in _by_kind("ServiceAccount")}
    bound = {s["name"] for k in ("RoleBinding", "ClusterRoleBinding") for _, b in _by_kind(k) for s in b["subjects"]}
    for name, spec in _cluster_specs():
        head_sa = spec["headGroupSpec"]["template"]["spec"]["serviceAccountName"]
        assert head_sa in accounts, f"{name}: KubeRay expects the head's account {head_sa} to exist"
        for g in spec["workerGroupSpecs"]:
            pod, where = g["template"]["spec"], f"{name}:{g['groupName']}"
            sa = pod.get("serviceAccountName", "default")
            assert sa != head_sa, f"{where}: workers must not share the autoscaler's account {head_sa}"
            assert pod.get("automountServiceAccountToken") is False, f"{where}: trial code needs no API token"
            assert sa in accounts and sa not in bound, f"{where}: {sa} must be defined here and bound to no Role"
            assert accounts[sa]["automountServiceAccountToken"] is False
            # the head's cloud identity (IRSA / workload identity annotation): trials write s3:// and gs:// paths
            assert accounts[sa]["metadata"].get("annotations") == accounts[head_sa]["metadata"].get("annotations")
    for p, job in _by_kind("RayJob"):  # the submitter only calls the Jobs API (port 8265, networkpolicy.yaml)
        submitter = job["spec"]["submitterPodTemplate"]
        assert submitter["spec"]["automountServiceAccountToken"] is False and "labels" not in submitter.get(
            "metadata", {}), f"{p}: no API token, and not the Ray pods' label (it would open every Ray port)"
