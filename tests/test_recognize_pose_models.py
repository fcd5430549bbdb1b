"""RTMO by name: download from a local HTTP server (127.0.0.1), sha256 checks, corrupt zips, atomic cache."""
from __future__ import annotations

import functools
import hashlib
import http.server
import threading
import zipfile

import pytest

from recognizer_core.recognize.pose_models import POSE_MODELS, PoseModelError, default_pose_cache, resolve_pose_model
from tests.fakes.fake_rtmo import build_fake_rtmo


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("www")
    onnx = build_fake_rtmo(root / "src" / "end2end.onnx")
    with zipfile.ZipFile(root / "rtmo-fake.zip", "w") as z:  # the SDK zip layout: <name>/end2end.onnx + extras
        z.write(onnx, "rtmo-fake_body7-640x640/end2end.onnx")
        z.writestr("rtmo-fake_body7-640x640/pipeline.json", "{}")
    data = (root / "rtmo-fake.zip").read_bytes()
    (root / "corrupt.zip").write_bytes(data[: len(data) // 2])
    with zipfile.ZipFile(root / "no_model.zip", "w") as z:
        z.writestr("x/readme.txt", "nothing")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", hashlib.sha256(data).hexdigest(), onnx.read_bytes(), root
    server.shutdown()


def _files(folder):
    return sorted(p.name for p in folder.rglob("*")) if folder.exists() else []


def test_names_point_at_the_official_sdk_zips():
    assert set(POSE_MODELS) == {"rtmo-s", "rtmo-m", "rtmo-l"}
    assert all(u.startswith("https://download.openmmlab.com/mmpose/v1/projects/rtmo/onnx_sdk/rtmo-")
               and "640x640" in u and u.endswith(".zip") for u in POSE_MODELS.values())


def test_download_verify_unpack_and_reuse(served, tmp_path):
    base, sha, onnx_bytes, _ = served
    url = f"{base}/rtmo-fake.zip"
    path = resolve_pose_model("rtmo-s", tmp_path, url=url, sha256=sha)
    assert path == tmp_path / "rtmo-s" / "end2end.onnx" and path.read_bytes() == onnx_bytes
    assert _files(tmp_path) == ["end2end.onnx", "rtmo-s", "source.json"]  # no temp zip left
    mtime = path.stat().st_mtime_ns
    assert resolve_pose_model("rtmo-s", tmp_path, url=url) == path and path.stat().st_mtime_ns == mtime  # cached
    assert resolve_pose_model(str(path), tmp_path) == path  # a local path works as is
    with pytest.raises(PoseModelError, match="not one of"):
        resolve_pose_model(str(tmp_path / "missing.onnx"), tmp_path)


def test_checksum_mismatch_corrupt_zip_and_missing_model_leave_nothing(served, tmp_path):
    base, sha, _, root = served
    with pytest.raises(PoseModelError, match=f"sha256 mismatch .* expected {'0' * 64}, got {sha}"):
        resolve_pose_model("rtmo-m", tmp_path, url=f"{base}/rtmo-fake.zip", sha256="0" * 64)
    with pytest.raises(PoseModelError, match="corrupt.zip is not a valid zip"):
        resolve_pose_model("rtmo-m", tmp_path, url=f"{base}/corrupt.zip")
    with pytest.raises(PoseModelError, match="holds no end2end.onnx"):
        resolve_pose_model("rtmo-m", tmp_path, url=f"{base}/no_model.zip")
    with pytest.raises(PoseModelError, match="download of .*/absent.zip failed: HTTP Error 404"):
        resolve_pose_model("rtmo-m", tmp_path, url=f"{base}/absent.zip")
    assert _files(tmp_path) == []  # nothing half-written in the cache
    # a good download, then the server's file changes: the recorded checksum catches it, the good copy stays
    (root / "changing.zip").write_bytes((root / "rtmo-fake.zip").read_bytes())
    good = resolve_pose_model("rtmo-l", tmp_path, url=f"{base}/changing.zip")
    good.unlink()  # force a new download of the same address, whose file has changed
    (root / "changing.zip").write_bytes((root / "no_model.zip").read_bytes())
    with pytest.raises(PoseModelError, match=f"sha256 mismatch .* expected {sha}"):
        resolve_pose_model("rtmo-l", tmp_path, url=f"{base}/changing.zip")
    assert _files(tmp_path) == ["rtmo-l", "source.json"]


def test_extract_poses_takes_a_pose_model_name_or_path_before_ray_starts(tmp_path, capsys):
    """--pose-model on the extraction job: a cached name and a local path both set model.onnx.model_path;
    an unknown one is one `error:` line, exit 2, nothing created (empty input: Ray never starts)."""
    import json as _json

    import yaml

    from rayjobs.extract_poses import main

    cache = tmp_path / "cache"
    cached = build_fake_rtmo(cache / "rtmo-s" / "end2end.onnx")  # as a first download leaves it
    (cache / "rtmo-s" / "source.json").write_text(_json.dumps({"url": POSE_MODELS["rtmo-s"], "sha256": "x"}))
    (tmp_path / "videos").mkdir()
    for i, model in enumerate(("rtmo-s", str(cached))):
        out = tmp_path / f"out{i}"
        assert main(["--input", str(tmp_path / "videos"), "--pose-model", model, "--pose-cache", str(cache),
                     "--output", str(out), "--quiet"]) == 0
        used = yaml.safe_load((out / "extraction_config.yaml").read_text())["model"]["onnx"]["model_path"]
        assert used == str(cached)
    capsys.readouterr()
    assert main(["--input", str(tmp_path / "videos"), "--pose-model", "rtmo-xl", "--pose-cache", str(cache),
                 "--output", str(tmp_path / "bad"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --pose-model 'rtmo-xl'") and not (tmp_path / "bad").exists()


def test_an_unusable_cache_folder_is_a_pose_model_error_naming_it_and_the_option(served, tmp_path):
    """Before: the cache's mkdir / mkstemp raised a bare OSError (PermissionError on '/.cache' with HOME=/ as an
    arbitrary uid), a traceback past every caller's `except PoseModelError`. A regular file as the cache folder
    fails the same way, as root too."""
    base, sha, _, _ = served
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("")
    with pytest.raises(PoseModelError, match=f"rtmo-s: cannot use the pose-model cache {blocker / 'rtmo-s'} "
                                             r"\(NotADirectoryError: .*\); give a writable folder with --pose-cache"):
        resolve_pose_model("rtmo-s", blocker, url=f"{base}/rtmo-fake.zip", sha256=sha)


def test_the_default_cache_is_under_xdg_cache_home_else_home(served, tmp_path, monkeypatch):
    base, sha, onnx_bytes, _ = served
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_pose_cache() == tmp_path / "xdg" / "recognizer" / "pose_models"
    path = resolve_pose_model("rtmo-s", url=f"{base}/rtmo-fake.zip", sha256=sha)
    assert path == tmp_path / "xdg/recognizer/pose_models/rtmo-s/end2end.onnx" and path.read_bytes() == onnx_bytes
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/cache")  # the XDG rule: a relative value is ignored
    assert default_pose_cache() == tmp_path / "home" / ".cache" / "recognizer" / "pose_models"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert default_pose_cache() == tmp_path / "home" / ".cache" / "recognizer" / "pose_models"


def test_recognize_with_an_unusable_default_cache_is_one_error_line_and_exit_2(tmp_path, monkeypatch, capsys):
    """No --pose-cache: the default follows $XDG_CACHE_HOME (here a regular file, as an unwritable HOME is for a
    non-root user), and the failure is one `error:` line naming the folder and --pose-cache, exit 2."""
    from rayjobs.recognize import main
    from tests.recognize_helpers import make_run_folder

    run, _ = make_run_folder(tmp_path / "model")
    (tmp_path / "videos").mkdir()
    (tmp_path / "videos" / "a.mp4").write_bytes(b"not a video")
    (tmp_path / "xdg").write_text("")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    capsys.readouterr()
    assert main(["--model", str(run), "--input", str(tmp_path / "videos"), "--pose-model", "rtmo-s",
                 "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: rtmo-s: cannot use the pose-model cache "
                                               f"{tmp_path / 'xdg/recognizer/pose_models/rtmo-s'} ("), err
    assert "--pose-cache" in err[0] and not (tmp_path / "home").exists()
