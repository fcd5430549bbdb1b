"""Every job's --help: exits 0 without starting Ray, lists every config field the job accepts, and prints the
examples of its docstring as written (backslash continuations intact, no `--set` naming a field the job lacks).
"""
from __future__ import annotations

import ast
import importlib
import json
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from recognizer_core.config import field_names
from recognizer_core.config_args import describe_fields

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = sorted((REPO / "rayjobs").glob("*.py"))
# The tune jobs apply --set to every trial's training config; the others name their class in add_config_args.
CONFIG_OF_TUNE_JOBS = {"tune_dino_pose.py": "recognizer_core.train.dino_pose.config:DinoPoseJobConfig",
                       "*": "recognizer_core.train.stgcn.config:TrainJobConfig"}

# One interpreter runs every --help (the imports are shared), from a foreign working directory, and reports
# whether Ray got started.
_RUNNER = r"""
import contextlib, io, json, runpy, sys
out = {}
for path in sys.argv[1:]:
    buf, code = io.StringIO(), None
    sys.argv = [path, "--help"]
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
        try:
            runpy.run_path(path, run_name="__main__")
        except SystemExit as exc:
            code = exc.code
    out[path] = {"code": code, "text": buf.getvalue()}
ray = sys.modules.get("ray")
out["_ray_started"] = bool(ray is not None and ray.is_initialized())
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def helps(tmp_path_factory) -> dict:
    cwd = tmp_path_factory.mktemp("elsewhere")
    proc = subprocess.run([sys.executable, "-c", _RUNNER, *map(str, SCRIPTS)], cwd=cwd, capture_output=True,
                          text=True, timeout=240, env={**__import__("os").environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _config_class(script: Path):
    src = script.read_text()
    m = re.search(r"add_config_args\(\s*\w+,\s*(\w+)", src)
    if m is None:
        if script.name.startswith("tune_"):
            module, name = CONFIG_OF_TUNE_JOBS.get(script.name, CONFIG_OF_TUNE_JOBS["*"]).split(":")
            return getattr(importlib.import_module(module), name)
        return None
    imp = re.search(rf"^from\s+(\S+)\s+import\s+[^\n]*\b{m[1]}\b", src, re.M)
    assert imp, f"{script.name}: cannot find where {m[1]} is imported"
    return getattr(importlib.import_module(imp[1]), m[1])


def _docstring(script: Path) -> tuple[str, str]:
    """(the module docstring as Python reads it, its text as it stands in the file)."""
    src = script.read_text()
    m = re.match(r'\s*(r?)"""(.*?)"""', src, re.S)
    if not m:
        return "", ""
    return ast.get_docstring(ast.parse(src), clean=False) or "", ("r" if m[1] else "") + m[2]


def test_help_runs_without_ray(helps):
    assert not helps["_ray_started"], "a --help started Ray"
    for script in SCRIPTS:
        res = helps[str(script)]
        assert res["code"] in (0, None), f"{script.name} --help exited {res['code']}: {res['text'][-500:]}"
        assert "usage:" in res["text"], script.name


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_help_lists_every_config_field(helps, script):
    cls = _config_class(script)
    if cls is None:
        assert "--set" not in helps[str(script)]["text"], f"{script.name} takes --set but lists no config fields"
        return
    text = helps[str(script)]["text"]
    listed = {line.split()[0] for line in text.splitlines() if line.startswith("  ") and line.strip()}
    missing = [line.split()[0] for line in describe_fields(cls) if line.startswith("  ")
               and line.split()[0] not in listed]
    assert not missing, f"{script.name} --help does not list {len(missing)} config field(s): {missing[:8]}"


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_help_examples_intact(helps, script):
    text = helps[str(script)]["text"]
    help_lines = {line.strip() for line in text.splitlines()}
    doc, source = _docstring(script)
    if not source.startswith("r"):  # a lone backslash ending a line of a plain string joins the lines
        joined = [line.strip() for line in source.splitlines() if re.search(r"(?<!\\)(\\\\)*\\$", line)]
        assert not joined, f"{script.name}: docstring continuation lines collapse (use r\"\"\" or \\\\): {joined[:2]}"
    examples = [line.strip() for line in doc.splitlines()
                if line.strip().startswith(("python ", "ray job submit")) or line.rstrip().endswith("\\")]
    lost = [line for line in examples if line not in help_lines]
    assert not lost, f"{script.name} --help does not show these example lines as written: {lost[:3]}"
    collapsed = [line for line in text.splitlines() if re.search(r"\S {3,}--\w", line)]
    assert not collapsed, f"{script.name} --help has collapsed continuation lines: {collapsed[:2]}"
    cls = _config_class(script)
    if cls is not None:
        known = set(field_names(cls))
        named = re.findall(r"--set\s+([a-z_][\w.]*)(?:\[\d+\])?=", text)
        wrong = sorted({n for n in named if n not in known})
        assert not wrong, f"{script.name} --help shows --set examples for fields it does not have: {wrong}"


@pytest.mark.parametrize("script", ["tune_fight.py", "tune_falldown.py"])
def test_tune_jobs_show_their_own_examples(helps, script):
    out = helps[str(REPO / "rayjobs" / script)]["text"]
    for field in ("model.base_channels", "optim.lr", "train.val_interval", "data.path", "scaling.cpus_per_worker"):
        assert f"  {field} (" in out, field
    # Backslash continuations come out as written (RawDescriptionHelpFormatter), not run into one line.
    assert "\\\n      --" in out and "--folds 5" in out and "--objective latency" in out
    task = "falldown" if "falldown" in script else "fight"
    assert f"python rayjobs/{script} --data outputs/{task}" in out.replace("rwf2000", task)


def test_ray_sigint_handler_does_not_swallow_ctrl_c():
    """conftest keeps Ctrl-C a KeyboardInterrupt even after Ray Train / Tune code installs its handler."""
    # Python's own handler, as under an interactive shell: a suite started as a background job of a shell without
    # job control inherits SIGINT ignored, and then no signal reaches Python at all.
    started_with = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        exec("import signal\nsignal.signal(signal.SIGINT, lambda *a: None)", {"__name__": "ray.train.fake"})
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)
    finally:
        signal.signal(signal.SIGINT, started_with)


def test_default_configs_resolve_from_any_directory(tmp_path, monkeypatch):
    from recognizer_core.config import resolve_repo_path

    monkeypatch.chdir(tmp_path)
    assert Path(resolve_repo_path("configs/fight_stable.yaml")).is_file()
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "fight_stable.yaml").write_text("{}\n")
    assert resolve_repo_path("configs/fight_stable.yaml") == "configs/fight_stable.yaml"  # the user's own first
