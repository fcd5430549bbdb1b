"""Requests the extraction bookkeeping sends to an object store, counted on the moto S3 server of conftest's `s3`.

A run records each video from the driver, one at a time, and at ~20 ms per real S3 request the count per video is
the driver's time: 8 requests per record (a new filesystem, create_dir's folder markers, a multipart upload) were
~53 min of a 20k-video run. These tests bound the requests per video (records, resume, compact, a CSV source)
and check that the cheaper paths keep what the old ones gave.
"""
from __future__ import annotations

import re
import threading
import time
from types import SimpleNamespace

import pyarrow as pa
import pyarrow.fs as pafs
import pytest

from recognizer_core import storage
from recognizer_core.extract.config import SourceConfig
from recognizer_core.extract.manifest import DONE, EMPTY, FAILED, ExtractionManifest
from recognizer_core.extract.sources import SourceError, list_videos

_DENIED = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>AccessDenied</Code>'
           b'<Message>Access Denied</Message></Error>')


class RequestLog:
    """What the server was asked ('METHOD /path?query'), the most requests in flight at once, and knobs: a delay
    per request (real S3's latency, which makes one-at-a-time reads slow) and a ListBucket refusal (an IAM policy
    that allows GetObject only)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.requests: list[str] = []
        self.in_flight = self.max_in_flight = 0
        self.delay_s = 0.0
        self.deny_listing = False
        self.bucket = ""

    def take(self) -> list[str]:
        with self.lock:
            out, self.requests, self.max_in_flight = self.requests, [], 0
        return out


@pytest.fixture
def s3_log(s3, monkeypatch, request):
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication

    log, original = RequestLog(), DomainDispatcherApplication.__call__

    def call(app, environ, start_response):
        query = environ.get("QUERY_STRING", "")
        with log.lock:
            log.requests.append(f"{environ['REQUEST_METHOD']} {environ['PATH_INFO']}" + (f"?{query}" if query else ""))
            log.in_flight += 1
            log.max_in_flight = max(log.max_in_flight, log.in_flight)
        try:
            time.sleep(log.delay_s)
            if log.deny_listing and environ["REQUEST_METHOD"] == "GET" and "list-type" in query:
                start_response("403 Forbidden", [("Content-Type", "application/xml")])
                return [_DENIED]
            return original(app, environ, start_response)
        finally:
            with log.lock:
                log.in_flight -= 1

    monkeypatch.setattr(DomainDispatcherApplication, "__call__", call)
    # moto keeps its buckets for the whole session (the other tests' too): one bucket per test, named after it
    log.bucket = "req-" + re.sub(r"[^a-z0-9]+", "-", request.node.name.lower())[:50].strip("-")
    s3.create_bucket(Bucket=log.bucket)
    log.take()
    return log


def _record(m: ExtractionManifest, i: int) -> None:
    kind = FAILED if i % 10 == 3 else EMPTY if i % 10 == 7 else DONE
    fields = {FAILED: {"reason": "decode error"}, EMPTY: {}, DONE: {"output": f"clips/v{i:03d}.parquet"}}[kind]
    m.record(kind, f"s3://bkt/videos/v{i:03d}.mp4|1|{i}", video_id=f"v{i:03d}", rel_path=f"v{i:03d}.mp4", **fields)


def test_a_record_is_one_put_and_a_killed_run_resumes_and_compacts_in_few_requests(s3_log):
    b = s3_log.bucket
    n = 30
    m = ExtractionManifest(f"s3://{b}/poses")
    s3_log.take()
    for i in range(n):
        _record(m, i)
    puts = s3_log.take()
    # was 8 per record: 2 HEADs and 3 folder-marker PUTs of create_dir, then a 3-request multipart upload
    assert len(puts) <= n and all(re.fullmatch(rf"PUT /{b}/poses/manifest/\w+/v\d{{3}}\.json", r) for r in puts), puts

    # the run is killed before compact(): the next one reads the record objects, several at once
    s3_log.delay_s = 0.02
    again = ExtractionManifest(f"s3://{b}/poses")
    peak, reads = s3_log.max_in_flight, s3_log.take()
    s3_log.delay_s = 0.0
    assert again.records == m.records
    assert len(reads) <= 2 * n + 16, reads   # HEAD + GET per object, a listing per kind, the JSONL files' checks
    assert peak >= 4, "record objects were read one at a time"

    again.compact()
    compact = s3_log.take()
    # was 2 per record: every object read again only to see that some exist; now one listing, then per kind
    # written to its JSONL file and its objects deleted (a batch delete)
    assert len(compact) <= 20, compact
    assert sum(r.startswith(f"GET /{b}/poses/manifest") for r in compact) == 0, compact
    after = ExtractionManifest(f"s3://{b}/poses")
    assert after.records == m.records
    fs, root = storage.filesystem(f"s3://{b}/poses/manifest")
    assert not [i for i in fs.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True))
                if i.type == pafs.FileType.File]
    # a resumed run's records after compact() go on as objects, read back over the JSONL files
    _record(after, 0)
    assert ExtractionManifest(f"s3://{b}/poses").records == after.records


def test_object_writes_are_one_put_without_folder_markers(s3_log, monkeypatch):
    b = s3_log.bucket
    storage.write_text(f"s3://{b}/runs/a/b/summary.json", "{}")
    assert s3_log.take() == [f"PUT /{b}/runs/a/b/summary.json"]
    # S3 has no folders: the prefix is one all the same for readers
    assert storage.exists(f"s3://{b}/runs/a/b") and storage.read_text(f"s3://{b}/runs/a/b/summary.json") == "{}"
    big = bytes(range(256)) * (11 * 4096)   # 11.5 MB: more than one upload part still goes up whole
    storage.write_bytes(f"s3://{b}/runs/big.bin", big)
    assert storage.read_bytes(f"s3://{b}/runs/big.bin") == big

    real = pafs.FileSystem.from_uri

    def old_pyarrow(uri):   # pyarrow before 15 refuses the option: the default (multipart) upload is used
        if "allow_delayed_open" in uri:
            raise pa.ArrowInvalid("Unexpected query parameter in S3 URI: 'allow_delayed_open'")
        return real(uri)

    class OldPafs:   # pyarrow's classes cannot be patched: storage gets a module that answers like the old one
        FileSystem = SimpleNamespace(from_uri=old_pyarrow)

        def __getattr__(self, name):
            return getattr(pafs, name)

    monkeypatch.setattr(storage, "pafs", OldPafs())
    s3_log.take()
    storage.write_text(f"s3://{b}/runs/old.json", "[]")
    assert any(r.endswith("?uploads") for r in s3_log.take())   # the option was refused: a multipart upload
    assert storage.read_text(f"s3://{b}/runs/old.json") == "[]"


def test_a_csv_source_on_s3_lists_its_folders_instead_of_one_head_per_row(s3, s3_log, tmp_path):
    b = s3_log.bucket
    names = [f"{split}/{label}/v{i:03d}.mp4" for i in range(30)
             for split, label in [(("train", "val")[i % 2], ("Fight", "NonFight")[i % 3 == 0])]]
    for i, name in enumerate(names + ["lone/one.mp4"]):
        s3.put_object(Bucket=b, Key=f"videos/{name}", Body=b"v" * (i + 1))
    rows = "".join(f"{n},{n.split('/')[1]}\n" for n in names) + "lone/one.mp4,Fight\n"
    s3.put_object(Bucket=b, Key="videos/list.csv", Body=("path,label\n" + rows).encode())
    by_folder = {v.rel_path: v for v in list_videos(SourceConfig(input=f"s3://{b}/videos"))}
    s3_log.take()

    videos = list_videos(SourceConfig(manifest_csv=f"s3://{b}/videos/list.csv"))
    asked = s3_log.take()
    # was one HEAD per row (31): now the CSV (HEAD + GET), one listing per folder with 2+ rows, a HEAD for the lone one
    assert len(asked) <= 2 + 4 + 1, asked
    assert [v.rel_path for v in videos] == names + ["lone/one.mp4"]
    # the same sizes and mtimes as the folder listing and a HEAD give: the manifest keys do not change
    assert all((v.size, v.mtime_ns) == (by_folder[v.rel_path].size, by_folder[v.rel_path].mtime_ns) for v in videos)
    fs, _ = storage.filesystem(f"s3://{b}/videos")
    assert all(v.mtime_ns == fs.get_file_info(f"{b}/videos/{v.rel_path}").mtime_ns for v in videos[:3])

    # a policy without ListBucket: every row asked for by itself, as before
    s3_log.deny_listing = True
    assert [(v.key, v.label_name) for v in list_videos(SourceConfig(manifest_csv=f"s3://{b}/videos/list.csv"))] \
        == [(v.key, v.label_name) for v in videos]
    s3_log.deny_listing = False
    s3.put_object(Bucket=b, Key="videos/gone.csv", Body=b"path,label\ntrain/Fight/v002.mp4,Fight\n"
                                                          b"train/Fight/nothere.mp4,Fight\n")
    with pytest.raises(SourceError, match=f"{b}/videos/train/Fight/nothere.mp4: video not found"):
        list_videos(SourceConfig(manifest_csv=f"s3://{b}/videos/gone.csv"))


def test_listings_and_current_done_on_s3_without_folder_markers(s3_log):
    """Nothing on S3 relied on the folder markers create_dir wrote: the listings and the clip files are found by
    listing their prefixes, before and after compact()."""
    b = s3_log.bucket
    from recognizer_core.extract.sources import VideoSource

    videos = [VideoSource(f"s3://{b}/videos/Fight/v{i}.mp4", f"Fight/v{i}.mp4", "Fight", "", 1, i) for i in range(3)]
    m = ExtractionManifest(f"s3://{b}/poses")
    for v in videos:
        storage.write_bytes(f"s3://{b}/poses/clips/{v.video_id}.parquet", b"clip")
        m.record(DONE, v.key, video_id=v.video_id, rel_path=v.rel_path, label_name="Fight",
                 output=f"clips/{v.video_id}.parquet")
    m.write_listing(videos, f"s3://{b}/videos")
    assert not [r for r in s3_log.take() if r.startswith("PUT") and r.endswith("/")]
    for opened in (ExtractionManifest(f"s3://{b}/poses"), m):
        done, stale = opened.current_done()
        assert sorted(r["video_id"] for r in done) == sorted(v.video_id for v in videos) and stale == 0
    m.compact()
    assert sorted(r["key"] for r in ExtractionManifest(f"s3://{b}/poses").current_done()[0]) \
        == sorted(v.key for v in videos)
