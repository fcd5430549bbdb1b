"""scaling.cpu_malloc: which library the training workers' LD_PRELOAD gets, the errors before any worker starts,
and what tcmalloc does for a training process (freed tensors' pages are reused instead of faulted in afresh).
The Ray Train run under tcmalloc is tests/test_train_ray.py's resume test."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from ray.train import RunConfig

from recognizer_core.config import ConfigError
from recognizer_core.ray_runtime import PRIVATE_RAY_ENV
from recognizer_core.train import cpu_malloc
from recognizer_core.train.cpu_malloc import find_tcmalloc, worker_env
from recognizer_core.train.ray_run import StopOnDataError, for_workers
from recognizer_core.train.sections import ScalingSection

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def fake_libs(tmp_path, monkeypatch):
    """Two lib folders searched in order; tests put (empty) library files into them."""
    if not cpu_malloc.preloadable(str(tmp_path)):
        pytest.skip(f"pytest's tmp_path {str(tmp_path)!r} holds a space or ':': LD_PRELOAD cannot name files there")
    first, second = tmp_path / "conda_lib", tmp_path / "usr_lib"
    first.mkdir()
    second.mkdir()
    monkeypatch.setattr(cpu_malloc, "search_dirs", lambda: [first, second])
    monkeypatch.delenv("LD_PRELOAD", raising=False)
    monkeypatch.delenv(cpu_malloc.HUGE_PAGES_ENV, raising=False)
    return first, second


def test_find_tcmalloc_takes_the_first_folder_and_the_minimal_library_first(fake_libs):
    first, second = fake_libs
    assert find_tcmalloc() is None
    (second / "libtcmalloc.so.4").write_bytes(b"")
    assert find_tcmalloc() == str(second / "libtcmalloc.so.4")
    (second / "libtcmalloc_minimal.so.4").write_bytes(b"")
    assert find_tcmalloc() == str(second / "libtcmalloc_minimal.so.4")
    (first / "libtcmalloc.so").write_bytes(b"")  # an environment's own lib folder (conda) comes first
    assert find_tcmalloc() == str(first / "libtcmalloc.so")


def test_auto_preloads_tcmalloc_only_for_cpu_workers_of_a_private_ray(fake_libs, monkeypatch):
    lib = fake_libs[1] / "libtcmalloc_minimal.so.4"
    lib.write_bytes(b"")
    monkeypatch.delenv(PRIVATE_RAY_ENV, raising=False)
    assert worker_env("auto", None, use_gpu=False) == {}  # a cluster: its nodes may not have the library
    monkeypatch.setenv(PRIVATE_RAY_ENV, "1")
    assert worker_env("auto", None, use_gpu=False) == {"LD_PRELOAD": str(lib), "THP_MEM_ALLOC_ENABLE": "1"}
    assert worker_env("auto", None, use_gpu=True) == {}
    assert worker_env("system", None, use_gpu=False) == {}
    # an LD_PRELOAD the user set is kept, after ours
    monkeypatch.setenv("LD_PRELOAD", "/opt/libfoo.so")
    assert worker_env("tcmalloc", None, use_gpu=True)["LD_PRELOAD"] == f"{lib} /opt/libfoo.so"
    # and so is the user's own huge-page switch
    monkeypatch.setenv("THP_MEM_ALLOC_ENABLE", "0")
    assert worker_env("tcmalloc", None, use_gpu=True)["THP_MEM_ALLOC_ENABLE"] == "0"


def test_missing_tcmalloc_is_one_config_error_naming_the_field(fake_libs, monkeypatch, tmp_path):
    monkeypatch.setenv(PRIVATE_RAY_ENV, "1")
    assert worker_env("auto", None, use_gpu=False) == {}  # auto: nothing found, the system malloc
    with pytest.raises(ConfigError, match=r"scaling.cpu_malloc=tcmalloc but no libtcmalloc_minimal.so.4.*apt-get "
                                          r"install libtcmalloc-minimal4.*scaling.tcmalloc_path"):
        worker_env("tcmalloc", None, use_gpu=False)
    with pytest.raises(ConfigError, match=r"scaling.tcmalloc_path='/nowhere/libtcmalloc.so.4': no such file"):
        worker_env("tcmalloc", "/nowhere/libtcmalloc.so.4", use_gpu=False)
    own = tmp_path / "libtcmalloc.so.4"
    own.write_bytes(b"")
    assert worker_env("tcmalloc", str(own), use_gpu=False)["LD_PRELOAD"] == str(own)


def _malloc_of_a_worker(env: dict) -> tuple[str, str]:
    """The malloc a process started with `env` runs under, and its stderr (where ld.so reports a failed preload)."""
    code = "from recognizer_core.train.cpu_malloc import malloc_in_use; print(malloc_in_use())"
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(REPO), **env},
                         capture_output=True, text=True, timeout=120, check=True)
    return out.stdout.strip(), out.stderr


@pytest.mark.parametrize("folder", ["my env", "my:env"])
def test_auto_skips_a_tcmalloc_whose_path_ld_preload_would_split(folder, tmp_path, monkeypatch):
    # A conda env (searched first) under a folder with a space: ld.so splits LD_PRELOAD at spaces and ':', so
    # preloading this copy gave the workers glibc malloc. The next library found (the system's) is taken instead.
    monkeypatch.delenv("LD_PRELOAD", raising=False)
    monkeypatch.delenv(cpu_malloc.HUGE_PAGES_ENV, raising=False)
    monkeypatch.setenv(PRIVATE_RAY_ENV, "1")
    monkeypatch.delenv("CONDA_PREFIX", raising=False)
    system = find_tcmalloc()  # None where this machine has none
    env_lib = tmp_path / folder / "lib"
    env_lib.mkdir(parents=True)
    copy = env_lib / "libtcmalloc_minimal.so.4"
    copy.write_bytes(Path(system).read_bytes() if system else b"")
    monkeypatch.setenv("CONDA_PREFIX", str(tmp_path / folder))
    assert Path(cpu_malloc.search_dirs()[0]) == env_lib and copy.is_file()
    assert find_tcmalloc() == system
    env = worker_env("auto", None, use_gpu=False)
    assert env.get("LD_PRELOAD") == system
    if system is None:
        return
    malloc, stderr = _malloc_of_a_worker(env)
    assert malloc == Path(system).name and "cannot be preloaded" not in stderr, stderr


def test_tcmalloc_at_a_path_ld_preload_would_split_is_one_config_error(fake_libs, monkeypatch, tmp_path):
    monkeypatch.setenv(PRIVATE_RAY_ENV, "1")
    for folder in ("my env", "my:env", "tab\tthere"):
        own = tmp_path / folder / "libtcmalloc.so.4"
        own.parent.mkdir()
        own.write_bytes(b"")
        for how in ("tcmalloc", "auto"):  # a path the user gave is never dropped silently
            with pytest.raises(ConfigError, match=r"^scaling.tcmalloc_path='.*libtcmalloc.so.4': LD_PRELOAD splits "
                                                  r"paths at spaces and ':' .* symlink to it at a path without "
                                                  r"either$"):
                worker_env(how, str(own), use_gpu=False)
    # tcmalloc asked for, and the only library found sits under a space: the error names it and the way out
    monkeypatch.setattr(cpu_malloc, "search_dirs", lambda: [tmp_path / "my env"])
    with pytest.raises(ConfigError, match=r"scaling.cpu_malloc=tcmalloc but no .*my env/libtcmalloc.so.4' is there, "
                                          r"but LD_PRELOAD splits paths at spaces and ':': set scaling.tcmalloc_path"):
        worker_env("tcmalloc", None, use_gpu=False)
    assert worker_env("auto", None, use_gpu=False) == {}


def test_for_workers_adds_the_allocator_to_the_run_config(fake_libs, monkeypatch):
    lib = fake_libs[0] / "libtcmalloc_minimal.so.4"
    lib.write_bytes(b"")
    monkeypatch.setenv(PRIVATE_RAY_ENV, "1")
    rc = RunConfig(name="r", worker_runtime_env={"env_vars": {"FAULT": "x"}})
    rc = for_workers(rc, ScalingSection())
    assert rc.worker_runtime_env["env_vars"] == {"FAULT": "x", "LD_PRELOAD": str(lib), "THP_MEM_ALLOC_ENABLE": "1"}
    assert sum(isinstance(c, StopOnDataError) for c in rc.callbacks) == 1
    rc = for_workers(rc, ScalingSection(cpu_malloc="system"))  # a second pass adds nothing twice
    assert sum(isinstance(c, StopOnDataError) for c in rc.callbacks) == 1
    assert ScalingSection().cpu_malloc == "auto"
    with pytest.raises(ValueError, match="cpu_malloc"):
        ScalingSection(cpu_malloc="jemalloc")


# A training step's pattern: a 64 MB activation allocated, written and freed, again and again. Prints the
# allocator in use, the minor page faults of the last 5 rounds and the process's anonymous huge pages (kB) while the
# activation is alive.
_CHILD = """
import json, sys
sys.path.insert(0, sys.argv[1])
import torch
from bench.common import minor_faults
from recognizer_core.train.cpu_malloc import malloc_in_use
for i in range(8):
    if i == 3:
        f0 = minor_faults()
    x = torch.ones(16 << 20)
    rollup = open("/proc/self/smaps_rollup").read()
    del x
huge = int(rollup.split("AnonHugePages:")[1].split()[0])
print(json.dumps({"malloc": malloc_in_use(), "faults_per_round": (minor_faults() - f0) / 5, "huge_kb": huge}))
"""


def _child(env: dict) -> dict:
    out = subprocess.run([sys.executable, "-c", _CHILD, str(REPO)], env={**os.environ, **env}, capture_output=True,
                         text=True, timeout=120, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_tcmalloc_reuses_freed_pages_where_glibc_faults_them_in_again(monkeypatch):
    path = find_tcmalloc()
    if path is None:
        pytest.skip("no tcmalloc on this machine (make test installs libtcmalloc-minimal4 where it can)")
    monkeypatch.delenv("LD_PRELOAD", raising=False)
    monkeypatch.delenv(cpu_malloc.HUGE_PAGES_ENV, raising=False)
    monkeypatch.setenv(PRIVATE_RAY_ENV, "1")
    glibc = _child({})
    tcmalloc = _child(worker_env("auto", None, use_gpu=False))
    assert glibc["malloc"] == "libc.so.6"
    assert tcmalloc["malloc"] == Path(path).name and "tcmalloc" in tcmalloc["malloc"]
    # glibc mmaps the 64 MB afresh each round: one fault per 4 kB page (fewer with transparent huge pages)
    assert glibc["faults_per_round"] > 1000, glibc
    assert tcmalloc["faults_per_round"] < glibc["faults_per_round"] / 10, (glibc, tcmalloc)
    # the workers' PyTorch asks for huge pages (where the kernel's THP mode allows it): the 64 MB block sits on them
    thp = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    mode = thp.read_text() if thp.exists() else "[never]"
    if "[madvise]" in mode:  # only what asks for them gets them (this VM's mode)
        assert glibc["huge_kb"] < 32 << 10, glibc
    if "[never]" not in mode:
        assert tcmalloc["huge_kb"] >= 32 << 10, tcmalloc
