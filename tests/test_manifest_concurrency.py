"""Several extraction runs on one poses folder at once (two inputs into one output, a resume started while a run
still finishes, build_dataset opening it meanwhile), and a JSONL file left with a torn last line.

Each test forces the interleaving the reviewers found: a clip temp file of a live run seen by another run's start,
a compact() between a reader's listing and its reads, objects written during another run's compact(), a short
write (a full disk) before the next run's first record. Local folders and the moto S3 server of conftest's `s3`.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow.fs as pafs
import pytest

from recognizer_core import storage
from recognizer_core.extract.manifest import DONE, FAILED, ExtractionManifest

ROOT = Path(__file__).resolve().parents[1]


def test_a_starting_run_keeps_the_clip_temp_files_another_live_run_is_writing(tmp_path):
    out = tmp_path / "poses"
    (out / "clips").mkdir(parents=True)
    # a run killed long ago left a temp file; a run killed a minute ago too (kept: it cannot be told from a live one)
    for name, age in ((".old.parquet.abc.tmp", 2 * 3600), (".recent.parquet.def.tmp", 60)):
        (out / "clips" / name).write_bytes(b"PAR1")
        os.utime(out / "clips" / name, (time.time() - age,) * 2)
    writing, go_on, result = threading.Event(), threading.Event(), {}

    def run_a():   # writes a clip as write_clip_file does: the encoding takes a while between blocks
        try:
            with storage.atomic_write(out / "clips" / "video-a.parquet", "wb") as f:
                f.write(b"PAR1" + b"x" * 1000)
                writing.set()
                go_on.wait(10)
                f.write(b"PAR1")
            result["a"] = "ok"
        except Exception as e:   # noqa: BLE001 - reported below
            result["a"] = f"{type(e).__name__}: {e}"

    t = threading.Thread(target=run_a)
    t.start()
    assert writing.wait(10)
    ExtractionManifest(str(out)).remove_partial_files()   # run B starts meanwhile
    go_on.set()
    t.join(10)
    assert result.get("a") == "ok", result
    assert (out / "clips" / "video-a.parquet").read_bytes() == b"PAR1" + b"x" * 1000 + b"PAR1"
    assert sorted(os.listdir(out / "clips")) == [".recent.parquet.def.tmp", "video-a.parquet"]


def test_the_record_after_a_torn_line_of_a_full_disk_is_kept(tmp_path):
    out = tmp_path / "poses"
    # run 1 in a child process: the disk fills (RLIMIT_FSIZE stops write() as ENOSPC does) in its second record
    child = f"""
import resource, signal
from recognizer_core.extract.manifest import ExtractionManifest, DONE
m = ExtractionManifest({str(out)!r})
m.record(DONE, "k0", video_id="v0", output="clips/v0.parquet")
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (150, resource.RLIM_INFINITY))
try:
    m.record(DONE, "k1", video_id="v1", output="clips/v1.parquet")
except OSError as e:
    print("short write:", e)
"""
    r = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=60,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert "short write" in r.stdout, r.stdout + r.stderr
    text = (out / "done.jsonl").read_text()
    assert not text.endswith("\n") and text.count("\n") == 1, repr(text)   # the torn line is there

    run2 = ExtractionManifest(str(out))   # space freed: the resumed run redoes v1, then v2
    assert sorted(run2.records[DONE]) == ["k0"]
    run2.record(DONE, "k1", video_id="v1", output="clips/v1.parquet")
    run2.record(FAILED, "k2", video_id="v2", reason="decode error")
    run2.record(DONE, "k3", video_id="v3", output="clips/v3.parquet")
    again = ExtractionManifest(str(out))
    assert sorted(again.records[DONE]) == ["k0", "k1", "k3"] and list(again.records[FAILED]) == ["k2"]
    assert (out / "done.jsonl").read_text().startswith(text + "\n")   # the torn line is left, ended


class _Hooked:
    """A pyarrow filesystem that runs `hook` once, before or after its first listing (the interleaving of two runs
    that the test forces); everything else is the filesystem's own."""

    def __init__(self, fs, hook, when: str):
        self._fs, self._hook, self._when = fs, hook, when

    def get_file_info(self, arg):
        hook = self._hook if isinstance(arg, pafs.FileSelector) else None
        if hook is not None:
            self._hook = None
        if hook and self._when == "before":
            hook()
        out = self._fs.get_file_info(arg)
        if hook and self._when == "after":
            hook()
        return out

    def __getattr__(self, name):
        return getattr(self._fs, name)


def _bucket(s3, request) -> str:
    # moto keeps its buckets for the whole session: one per test, named after it
    name = "conc-" + re.sub(r"[^a-z0-9]+", "-", request.node.name.lower())[:50].strip("-")
    s3.create_bucket(Bucket=name)
    return name


def _done(m: ExtractionManifest, k: str) -> None:
    m.record(DONE, k, video_id=k, output=f"clips/{k}.parquet")


def _record_objects(out: str) -> list[str]:
    """Names of the record objects left under `out`/manifest."""
    fs, root = storage.filesystem(f"{out}/manifest")
    infos = fs.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True))
    return sorted(i.base_name for i in infos if i.type == pafs.FileType.File)


def test_two_runs_compacting_into_one_s3_folder_keep_each_others_records(s3, request):
    out = f"s3://{_bucket(s3, request)}/poses"
    a, b = ExtractionManifest(out), ExtractionManifest(out)   # both runs start
    _done(a, "a1"), _done(b, "b1"), _done(a, "a2"), _done(b, "b2")
    # run B records b4 while run A compacts (after A's listing): A must not delete what it did not fold in
    a._fs = _Hooked(a._fs, lambda: _done(b, "b4"), "after")
    a.compact()   # A finishes first
    assert _record_objects(out) == ["b4.json"]
    # B is killed before its compact(): its b4 is still an object, b1 b2 were folded in by A
    assert sorted(ExtractionManifest(out).records[DONE]) == ["a1", "a2", "b1", "b2", "b4"]
    _done(b, "b3")
    b.compact()   # B finishes: the JSONL A wrote is merged, not replaced by B's view
    assert sorted(ExtractionManifest(out).records[DONE]) == ["a1", "a2", "b1", "b2", "b3", "b4"]
    assert _record_objects(out) == []


class _HookSecondListing(_Hooked):
    """The hook runs right after the filesystem's second listing (compact's re-listing before its delete)."""

    def get_file_info(self, arg):
        out = self._fs.get_file_info(arg)
        if isinstance(arg, pafs.FileSelector):
            self._n = getattr(self, "_n", 0) + 1
            if self._n == 2:
                self._hook()
        return out


def test_a_record_put_between_anothers_relisting_and_delete_is_written_by_its_own_compact(s3, request):
    """Run B's record lands after run A's re-listing and before A's batch delete: A deletes it unfolded. B's own
    compact() listed no object then and returned, so the record was lost; B writes what it recorded now."""
    out = f"s3://{_bucket(s3, request)}/poses"
    a, b = ExtractionManifest(out), ExtractionManifest(out)
    _done(a, "a1"), _done(b, "b1")
    a._fs = _HookSecondListing(a._fs, lambda: _done(b, "b9"), "after")
    a.compact()
    b.compact()
    assert sorted(ExtractionManifest(out).records[DONE]) == ["a1", "b1", "b9"]


@pytest.mark.parametrize("when", ["before", "after"])
def test_a_reader_opening_an_s3_folder_while_a_run_compacts_sees_every_record(s3, request, monkeypatch, when):
    out = f"s3://{_bucket(s3, request)}/poses"
    run = ExtractionManifest(out)
    _done(run, "v0")
    run.compact()   # an earlier run's records are in the JSONL already
    for k in ("v1", "v2", "v3"):
        _done(run, k)
    # the run's compact() lands just before, or just after, the reader's listing of the record objects
    real = storage.object_filesystem

    def hooked(uri):
        fs, root = real(uri)
        return _Hooked(fs, run.compact, when), root

    monkeypatch.setattr(storage, "object_filesystem", hooked)
    reader = ExtractionManifest(out)
    monkeypatch.setattr(storage, "object_filesystem", real)
    assert sorted(reader.records[DONE]) == ["v0", "v1", "v2", "v3"]
    assert sorted(ExtractionManifest(out).records[DONE]) == ["v0", "v1", "v2", "v3"]
    assert _record_objects(out) == []
