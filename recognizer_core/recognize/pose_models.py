"""RTMO pose models by name: `rtmo-s | rtmo-m | rtmo-l` -> the official ONNX SDK zip that mmpose publishes (the
addresses rtmlib uses), downloaded once into a cache folder, checked, and unpacked to `<cache>/<name>/end2end.onnx`.

Integrity: the zip's sha256 is checked against `sha256=` when given, else against the value recorded at the
first download (`<cache>/<name>/source.json`; trust on first use: OpenMMLab publishes no zip checksums, the
hash in the file name is the .pth's). Nothing half-written is ever left in the cache: the zip goes to a temp
file removed on any error, and end2end.onnx is renamed into place only when complete. A local .onnx path is
used as is.

The cache folder: `--pose-cache`, else $XDG_CACHE_HOME/recognizer/pose_models, else
~/.cache/recognizer/pose_models (default_pose_cache). One that cannot be created or written (HOME=/ in an
arbitrary-uid container) is a PoseModelError naming it and --pose-cache, as every other failure here.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import urllib.request
import zipfile
from pathlib import Path

from recognizer_core.storage import atomic_write

BASE = "https://download.openmmlab.com/mmpose/v1/projects/rtmo/onnx_sdk/"
POSE_MODELS = {
    "rtmo-s": BASE + "rtmo-s_8xb32-600e_body7-640x640-dac2bf74_20231211.zip",
    "rtmo-m": BASE + "rtmo-m_16xb16-600e_body7-640x640-39e78cc4_20231211.zip",
    "rtmo-l": BASE + "rtmo-l_16xb16-600e_body7-640x640-b37118ce_20231211.zip",
}
MODEL_FILE = "end2end.onnx"


class PoseModelError(ValueError):
    """A pose model that cannot be found, downloaded or verified; the message says which and why."""


def default_pose_cache() -> Path:
    """$XDG_CACHE_HOME/recognizer/pose_models, else ~/.cache/recognizer/pose_models (the XDG base directory rule:
    a relative $XDG_CACHE_HOME is ignored)."""
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    base = Path(xdg) if xdg and Path(xdg).is_absolute() else Path("~/.cache").expanduser()
    return base / "recognizer" / "pose_models"


def resolve_pose_model(name_or_path: str, cache_dir: str | Path | None = None, *,
                       url: str | None = None, sha256: str | None = None, timeout: float = 60.0) -> Path:
    """Path of an RTMO end2end ONNX file: a known name (downloaded on first use into `cache_dir`, default
    default_pose_cache()) or a local file."""
    if name_or_path in POSE_MODELS or url:
        cache_dir = default_pose_cache() if cache_dir is None else cache_dir
        return download_pose_model(name_or_path, cache_dir, url=url or POSE_MODELS[name_or_path], sha256=sha256,
                                   timeout=timeout)
    path = Path(name_or_path).expanduser()
    if not path.is_file():
        raise PoseModelError(f"--pose-model {name_or_path!r}: not one of {sorted(POSE_MODELS)} and no such file")
    return path


def download_pose_model(name: str, cache_dir: str | Path, *, url: str, sha256: str | None = None,
                        timeout: float = 60.0) -> Path:
    folder = Path(cache_dir).expanduser() / name
    try:
        return _download(name, folder, url=url, sha256=sha256, timeout=timeout)
    except OSError as err:  # the download's own errors are PoseModelError already: this is the cache folder
        raise PoseModelError(f"{name}: cannot use the pose-model cache {folder} ({type(err).__name__}: {err}); "
                             "give a writable folder with --pose-cache DIR (or set XDG_CACHE_HOME)") from None


def _download(name: str, folder: Path, *, url: str, sha256: str | None, timeout: float) -> Path:
    target, record_path = folder / MODEL_FILE, folder / "source.json"
    record = json.loads(record_path.read_text()) if record_path.is_file() else {}
    if target.is_file() and record.get("url") == url and (sha256 is None or record.get("sha256") == sha256):
        return target
    expected = sha256 or (record.get("sha256") if record.get("url") == url else None)
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".download.", suffix=".zip", dir=folder)
    try:
        digest = hashlib.sha256()
        try:
            with os.fdopen(fd, "wb") as f, urllib.request.urlopen(url, timeout=timeout) as resp:
                while chunk := resp.read(1 << 20):
                    digest.update(chunk)
                    f.write(chunk)
        except OSError as err:
            raise PoseModelError(f"{name}: download of {url} failed: {err}") from None
        got = digest.hexdigest()
        if expected and got != expected:
            raise PoseModelError(f"{name}: sha256 mismatch for {url}: expected {expected}, got {got} "
                                 "(download corrupted or the file changed); nothing was written to the cache")
        try:
            with zipfile.ZipFile(tmp) as z:
                members = [m for m in z.namelist() if m.endswith(MODEL_FILE)]
                if not members:
                    raise PoseModelError(f"{name}: {url} holds no {MODEL_FILE} (files: {z.namelist()[:10]})")
                with z.open(members[0]) as src, atomic_write(target, "wb") as dst:
                    shutil.copyfileobj(src, dst)
        except (zipfile.BadZipFile, EOFError, zlib_error()) as err:
            raise PoseModelError(f"{name}: {url} is not a valid zip ({err}); nothing was written to the cache") \
                from None
        with atomic_write(record_path, "w") as f:
            f.write(json.dumps({"url": url, "sha256": got, "member": members[0]}, indent=1))
        return target
    finally:
        Path(tmp).unlink(missing_ok=True)
        if not any(folder.iterdir()):
            folder.rmdir()  # a failed first download leaves no trace


def zlib_error():
    import zlib

    return zlib.error
