"""Extraction bookkeeping: which videos are finished, empty or failed, on local/NFS storage or an object store.

Local or shared (NFS) folders: append-only JSONL files, each record one O_APPEND write(), fsynced before the
next video is taken as done, so a job killed at any point loses at most the videos in flight; a torn last line
(a kill or a full disk cut the write short) is ignored on read, and the next record after it starts a new line.
Several runs may record into one folder at once from ONE host: the kernel does not interleave O_APPEND writes of
one client. From several NFS clients it is not safe: NFS has no atomic append (each client computes the end of the
file, open(2)), so records of two hosts can overwrite each other; extract into one folder from one host at a time.
Object stores cannot append: each record is one small object (`manifest/<kind>/<video_id>.json`, visible only
when complete), folded into the JSONL files by `compact()` at the end of a run. The driver records thousands of
videos one at a time, so each record is one PUT through one filesystem held for the run (no folder markers, no
multipart upload: storage.put_object); a resumed run reads the record objects 16 at a time.
Several runs on one object-store folder: a reader lists and reads the objects before the JSONL files, and
compact() writes the JSONL before it deletes objects, so a record is always in one of the two; compact() merges
the JSONL as it is now, this run's records and other runs' objects (reading only objects this run has not seen),
and deletes only objects it folded in. Left: two compact()s at the same moment can drop one's records from the
JSONL (S3 has no compare-and-swap here); those videos are then extracted again, never taken as wrong.
Records are keyed by `VideoSource.key` (path + size + mtime): an edited file is redone. Each record's `time` is
UTC with its offset (ISO 8601): compact() orders the records of several runs by that instant, and drivers in other
time zones (a laptop in Seoul, a pod in UTC) or a DST fall-back must not file a newer record as older. Records
written before it (local time, no offset) are older than any with one and keep their file order among themselves.
Nothing is created until the first record is written, so a job stopped by a bad input leaves no folder behind.

Old records are never rewritten: an edited video leaves its old DONE record pointing at the same
`clips/<video_id>.parquet`, a moved one leaves its old record and clip file, a label fixed in a CSV keeps its key.
So each run also writes its source's current listing (`listings/<source id>.jsonl`: video_id, rel_path,
label_name, split, key of every video the source lists now; one file per source, so several sources extracted into
one folder are all kept), and `current_done()` gives build_dataset one record per listed video, its current
version's. A folder written while listings were one root `videos.jsonl` (commit 3ba4158) is read through that file
until its first run here writes `listings/` (then its videos move into listings, as below).
"""
from __future__ import annotations

import hashlib
import json
import os
import posixpath
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from typing import Iterable

import pyarrow.fs as pafs
import yaml

from recognizer_core import storage

DONE, EMPTY, FAILED = "done", "empty", "failed"
_FILES = {DONE: "done.jsonl", EMPTY: "empty_clips.jsonl", FAILED: "failures.jsonl"}
CLIPS_DIR = "clips"
LISTINGS_DIR = "listings"   # one <source id>.jsonl per source (input folder or CSV) extracted into this folder
LEGACY_LISTING = "before-listings.jsonl"   # the videos of a folder extracted before listings existed
ROOT_LISTING = "videos.jsonl"   # the one listing of folders written at commit 3ba4158, before listings/
_LISTING_FIELDS = ("video_id", "rel_path", "label_name", "split", "key")
_RECORD_DIR = "manifest"   # object stores: manifest/<kind>/<video_id>.json, one object per record
_READ_THREADS = 16   # record objects read at once on resume: HEAD + GET at ~20 ms each, one at a time: 13 min/20k
# a clip temp file untouched this long belongs to no live writer (each block written moves its mtime); one of a
# killed run stays hidden (dot name) until a run starts that much later
PARTIAL_FILE_AGE_S = 3600.0


def _instant(rec: dict) -> tuple[int, float]:
    """Sort key of a record's time: (1, seconds since the epoch) with an offset; (0, 0.0) without one (local time
    of an unknown zone, written before times were UTC: older than any record with an offset)."""
    try:
        when = datetime.fromisoformat(str(rec.get("time", "")))
    except ValueError:
        return 0, 0.0
    return (0, 0.0) if when.tzinfo is None else (1, when.timestamp())


def _newest_last(recs: Iterable[dict]) -> list[dict]:
    """Records of several writers in the order _put needs (newest last): by the instant of their time, ties (and
    records without an offset, among themselves) in the given order."""
    return sorted(recs, key=_instant)


def _parse_lines(text: str | None) -> list[dict]:
    out = []
    for line in (text or "").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # torn line of a killed job
        if isinstance(rec, dict) and "key" in rec:
            out.append(rec)
    return out


class ExtractionManifest:
    def __init__(self, output_uri: str):
        self.uri = storage.to_uri(output_uri)
        self.remote = storage.is_remote(self.uri)
        # object stores: one filesystem for the run's reads and record PUTs (pyarrow's from_uri per record parsed
        # the URI and set up an S3 client for a 300-byte write)
        self._fs, self._root = storage.object_filesystem(self.uri) if self.remote else (None, "")
        self.records: dict[str, dict[str, dict]] = {kind: {} for kind in _FILES}
        # object stores: record objects this run wrote or read, {path: (size, mtime_ns or None for its own PUTs)};
        # compact() reads only the others (a resumed run's compact() then reads none: 2 requests per video)
        self._known: dict[str, tuple[int, int | None]] = {}
        self._recorded: set[str] = set()   # kinds this run put record objects of (compact writes them)
        self._line_start: set[str] = set()   # local JSONL files whose end this run has seen to be a line start
        # objects first, then the JSONL: a compact() by another run in between writes the JSONL before deleting
        # them, so each record is in one of the two reads (JSONL first lost those folded in between)
        objects = self._read_record_objects() if self.remote else []
        for kind in _FILES:
            for rec in _parse_lines(storage.read_text(self.path(kind))):
                self._put(kind, rec)
        for kind, rec in objects:   # newer than the JSONL files, which they are folded into
            self._put(kind, rec)
        self.clip_files = self._list_clips()

    def _put(self, kind: str, rec: dict) -> None:
        # re-inserted, not updated in place: the dicts' order is the order of the last write (newest last), which
        # current_done() relies on when no listing exists
        self.records[kind].pop(rec["key"], None)
        self.records[kind][rec["key"]] = rec

    def path(self, kind: str) -> str:
        return storage.join_uri(self.uri, _FILES[kind])

    def output_uri(self, rel: str) -> str:
        return storage.join_uri(self.uri, rel)

    def _record_dir(self, kind: str | None = None) -> str:
        return posixpath.join(self._root, _RECORD_DIR, *([kind] if kind else []))

    def _list_record_objects(self) -> dict[str, tuple[str, int, int | None]]:
        """{path: (kind, size, mtime_ns)} of every record object, in listing order (one listing)."""
        infos = self._fs.get_file_info(pafs.FileSelector(self._record_dir(), recursive=True, allow_not_found=True))
        out = {}
        for i in infos:
            kind = posixpath.basename(posixpath.dirname(i.path))
            if (i.type == pafs.FileType.File and i.path.endswith(".json") and kind in _FILES
                    and posixpath.dirname(i.path) == self._record_dir(kind)):
                out[i.path] = (kind, i.size, i.mtime_ns)
        return out

    def _read_objects(self, paths: list[str]) -> list[str | None]:
        """The texts of record objects, 16 at a time, in the given order; None for one deleted since its listing."""
        def read(path: str) -> str | None:
            try:
                with self._fs.open_input_stream(path) as f:
                    return f.read().decode()
            except FileNotFoundError:   # another run's compact() folded it into the JSONL since the listing
                return None

        if len(paths) <= 1:
            return [read(p) for p in paths]
        with ThreadPoolExecutor(min(_READ_THREADS, len(paths))) as pool:   # pyarrow releases the GIL while it waits
            return list(pool.map(read, paths))

    def _read_record_objects(self, listed: dict | None = None) -> list[tuple[str, dict]]:
        """(kind, record) of the record objects (`listed`, or all), in listing order; remembered as known."""
        listed = self._list_record_objects() if listed is None else listed
        out = []
        for path, text in zip(listed, self._read_objects(list(listed))):
            if text is not None:
                kind, size, mtime = listed[path]
                self._known[path] = (size, mtime)
                out += [(kind, rec) for rec in _parse_lines(text)]
        return out

    def _list_clips(self) -> set[str]:
        """Finished clip files, listed once (not one existence check per video: slow on an object store)."""
        fs, root = storage.filesystem(storage.join_uri(self.uri, CLIPS_DIR))
        infos = fs.get_file_info(pafs.FileSelector(root, allow_not_found=True))
        return {f"{CLIPS_DIR}/{posixpath.basename(i.path)}" for i in infos
                if i.type == pafs.FileType.File and not posixpath.basename(i.path).startswith(".")}

    def remove_partial_files(self, min_age_s: float = PARTIAL_FILE_AGE_S) -> None:
        """Temp files of clip writes cut off by a kill (the atomic write's `.<name>.*.tmp`): never results. Only
        those untouched for `min_age_s`: another run writing into this folder now has its temp files here too
        (their names carry no owner), and removing one failed that run's video."""
        if self.remote:
            return   # object-store writes are one PUT: nothing partial is ever visible
        clips = os.path.join(self.uri, CLIPS_DIR)
        for name in os.listdir(clips) if os.path.isdir(clips) else []:
            if name.startswith(".") and name.endswith(".tmp"):
                path = os.path.join(clips, name)
                try:
                    if time.time() - os.stat(path).st_mtime >= min_age_s:
                        os.unlink(path)
                except FileNotFoundError:   # renamed by its writer, or removed by another run starting now
                    pass

    def status(self, key: str) -> str | None:
        done = self.records[DONE].get(key)
        if done is not None and done.get("output", "") in self.clip_files:
            return DONE
        for kind in (EMPTY, FAILED):
            if key in self.records[kind]:
                return kind
        return None

    def failures(self, keys) -> list[dict]:
        """{rel_path, reason} of the videos among `keys` whose status is failed: a failure record stays in the file
        after a retry succeeds, and one of an edited video's old version (another key) is not this video's."""
        return [{"rel_path": self.records[FAILED][k].get("rel_path"), "reason": self.records[FAILED][k].get("reason")}
                for k in keys if self.status(k) == FAILED]

    def record(self, kind: str, key: str, **fields) -> dict:
        rec = {"key": key, **fields, "time": datetime.now(timezone.utc).isoformat()}
        line = (json.dumps(rec) + "\n").encode()
        if self.remote:   # hash() is salted per process (PYTHONHASHSEED): one key, a new object name per run
            name = fields.get("video_id") or hashlib.sha1(key.encode()).hexdigest()[:20]
            path = posixpath.join(self._record_dir(kind), f"{name}.json")
            storage.put_object(self._fs, path, line)
            self._known[path] = (len(line), None)
            self._recorded.add(kind)
        else:
            self._append(kind, line)
        self._put(kind, rec)
        if kind == DONE and fields.get("output"):
            self.clip_files.add(fields["output"])
        return rec

    def _append(self, kind: str, line: bytes) -> None:
        """Append one record line to a local JSONL file in one write() (O_APPEND: whole, after other writers')."""
        os.makedirs(self.uri, exist_ok=True)
        fd = os.open(self.path(kind), os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o666)
        try:
            if kind not in self._line_start:
                end = os.fstat(fd).st_size
                if end and os.pread(fd, 1, end - 1) != b"\n":
                    line = b"\n" + line   # after a torn last line (killed, disk full): glued to it, unreadable
            data = memoryview(line)
            while data:   # short only when the disk is full: the next write raises
                data = data[os.write(fd, data):]
            os.fsync(fd)
            self._line_start.add(kind)
        except BaseException:
            self._line_start.discard(kind)   # maybe torn now: the next record checks again
            raise
        finally:
            os.close(fd)

    def compact(self) -> None:
        """Object stores: fold the record objects into the JSONL files (one read per kind on resume), merged with
        what other runs wrote there meanwhile (module docstring); deletes only the objects folded in."""
        if not self.remote:
            return
        listed = self._list_record_objects()
        # a kind this run recorded is written from memory even with no object left: another run's compaction may
        # have deleted this run's objects before folding them in (PUT after its second listing)
        if not listed and not self._recorded:
            return
        # objects of other runs (or replaced since this run read them): read, folded in with this run's records
        theirs = self._read_record_objects({p: v for p, v in listed.items() if not self._knows(p, v[1], v[2])})
        for kind in _FILES:
            if not any(v[0] == kind for v in listed.values()) and kind not in self._recorded:
                continue
            try:
                with self._fs.open_input_stream(posixpath.join(self._root, _FILES[kind])) as f:
                    now = _parse_lines(f.read().decode())
            except FileNotFoundError:
                now = []
            merged = _newest_last([*now, *self.records[kind].values(), *(r for k, r in theirs if k == kind)])
            self.records[kind] = {}
            for rec in merged:
                self._put(kind, rec)
            # first: a kill before the delete leaves both (same records)
            storage.put_object(self._fs, posixpath.join(self._root, _FILES[kind]),
                               "".join(json.dumps(r) + "\n" for r in self.records[kind].values()).encode())
        self._delete_folded(listed)

    def _knows(self, path: str, size: int, mtime_ns: int | None) -> bool:
        """Whether this run wrote or read the object as it is listed now (its own PUTs: by size, the server's
        mtime is not known; a same-size record of the same video by another run at once is taken as this one)."""
        known = self._known.get(path)
        return known is not None and known[0] == size and known[1] in (None, mtime_ns)

    def _delete_folded(self, listed: dict[str, tuple[str, int, int | None]]) -> None:
        """Delete the record objects `listed` (now in the JSONL files), not one written or replaced since."""
        again = self._list_record_objects()
        if again == listed:   # nothing new: one batch delete (per object: 3 requests each)
            # left: an object PUT in the ms between that listing and this delete's own is lost unless its run
            # reaches its compact(), which writes it again from memory
            self._fs.delete_dir_contents(self._record_dir(), missing_dir_ok=True)
            return
        folded = [p for p, v in listed.items() if again.get(p) == v]

        def delete(path: str) -> None:
            try:
                self._fs.delete_file(path)
            except FileNotFoundError:   # another run's compact() deleted it
                pass

        with ThreadPoolExecutor(max(1, min(_READ_THREADS, len(folded)))) as pool:
            list(pool.map(delete, folded))

    def done_records(self) -> list[dict]:
        """Finished videos whose output file still exists (a deleted output means: extract again)."""
        return [r for r in self.records[DONE].values() if r.get("output", "") in self.clip_files]

    def write_listing(self, videos: Iterable, source: str) -> None:
        """Write the run's current videos (VideoSource objects) as `source`'s listing (its input folder or CSV),
        replacing that source's last one; other sources' listings stay."""
        videos = list(videos)
        legacy_uri = storage.join_uri(self.uri, LISTINGS_DIR, LEGACY_LISTING)
        if not self._listing_files() and self.done_records():
            self._write_legacy_listings(legacy_uri)
        old = storage.read_text(legacy_uri)
        if old is not None:   # what a source lists now is in its own file
            now = {v.key for v in videos} | {v.video_id for v in videos}
            keep = [ln for ln in old.splitlines() if ln and not ((r := json.loads(ln))["key"] in now
                                                                 or r["video_id"] in now)]
            storage.write_text(legacy_uri, "".join(ln + "\n" for ln in keep))
        lines = [json.dumps({"video_id": v.video_id, "rel_path": v.rel_path, "label_name": v.label_name,
                             "split": v.split, "key": v.key}) + "\n" for v in videos]
        storage.write_text(self._listing_uri(source), "".join(lines))

    def _write_legacy_listings(self, legacy_uri: str) -> None:
        """A folder extracted before listings existed: its videos (as they were built until now: those of its root
        videos.jsonl where it has one, else the newest record per video_id) keep listings, or the first new run's
        listing would drop them all. Those under the source its extraction_config.yaml names (the last run's)
        become that source's listing, which its next run replaces (videos deleted there go); the rest stay in
        LEGACY_LISTING until a source lists them again."""
        legacy = [{k: str(r.get(k) or "") for k in _LISTING_FIELDS} for r in self.current_done()[0]]
        try:
            src = (yaml.safe_load(storage.read_text(storage.join_uri(self.uri, "extraction_config.yaml")) or "")
                   or {}).get("source") or {}
        except (yaml.YAMLError, AttributeError):
            src = {}
        last = src.get("manifest_csv") or src.get("input") or ""
        base = (src.get("input") or posixpath.dirname(src.get("manifest_csv") or "")).rstrip("/") + "/"
        mine = [r for r in legacy if last and r["key"].startswith(base)]
        if mine:
            storage.write_text(self._listing_uri(last), "".join(json.dumps(r) + "\n" for r in mine))
        taken = {r["key"] for r in mine}
        storage.write_text(legacy_uri, "".join(json.dumps(r) + "\n" for r in legacy if r["key"] not in taken))

    def _listing_uri(self, source: str) -> str:
        sid = hashlib.sha1(source.encode()).hexdigest()[:12]
        return storage.join_uri(self.uri, LISTINGS_DIR, f"{sid}.jsonl")

    def _listing_files(self) -> list[pafs.FileInfo]:
        """The files of listings/, oldest listing first (the legacy one, then by time written)."""
        fs, root = storage.filesystem(storage.join_uri(self.uri, LISTINGS_DIR))
        infos = [i for i in fs.get_file_info(pafs.FileSelector(root, allow_not_found=True))
                 if i.type == pafs.FileType.File and i.path.endswith(".jsonl")]
        return sorted(infos, key=lambda i: (posixpath.basename(i.path) != LEGACY_LISTING, i.mtime_ns or 0, i.path))

    def listing(self, skip: str | None = None) -> list[dict] | None:
        """Every source's listing, in one list, oldest listing first (the legacy one, then by time written: where
        two name one video, current_done takes the later); without listings/, a root videos.jsonl (commit 3ba4158:
        it names no source, so `skip` leaves it whole), or None for outputs written before listings."""
        infos = self._listing_files()
        if not infos:   # ignored until 2026-12-05: every video ever extracted there, deleted ones too, was built
            root = storage.join_uri(self.uri, ROOT_LISTING)
            text = storage.read_text(root)
            return None if text is None else self._parse_listing(root, text)
        # `skip`: a source's own listing (with only that one, the others' are empty: not "no listings")
        skipped = posixpath.basename(self._listing_uri(skip)) if skip else None
        names = [posixpath.basename(i.path) for i in infos if posixpath.basename(i.path) != skipped]
        uris = [storage.join_uri(self.uri, LISTINGS_DIR, name) for name in names]
        return [rec for uri in uris for rec in self._parse_listing(uri, storage.read_text(uri) or "")]

    @staticmethod
    def _parse_listing(uri: str, text: str) -> list[dict]:
        out = []
        for n, line in enumerate(text.splitlines(), start=1):
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                rec = None
            if not isinstance(rec, dict) or any(not isinstance(rec.get(k), str) for k in _LISTING_FIELDS):
                raise ValueError(f"{uri}:{n}: not a listing record with string fields {list(_LISTING_FIELDS)}")
            out.append(rec)
        return out

    def current_done(self, skip: str | None = None) -> tuple[list[dict], int]:
        """(one DONE record per current video, number of finished records left out as not current).

        With a listing: for each listed video the DONE record of its current version (same key), with the
        listing's label_name and split (a label fixed in a CSV keeps the key, so the record's label is stale);
        a video whose current version failed, is empty or is not extracted yet is left out, as are videos no
        longer listed (moved, renamed, deleted). Without one: the newest DONE record per video_id.
        """
        done = self.done_records()
        listing = self.listing(skip)
        if listing is None:
            newest = {r.get("video_id") or r["key"]: r for r in done}   # done is oldest first: the last one wins
            return list(newest.values()), len(done) - len(newest)
        order = {r["key"]: i for i, r in enumerate(done)}   # write order: the newest record wrote the clip file
        current: dict[str, dict] = {}
        for v in listing:
            rec = done[order[v["key"]]] if v["key"] in order else None
            if rec is None or rec.get("video_id", v["video_id"]) != v["video_id"]:
                continue
            # one video_id in two listings (the same file under two sources: a folder and a CSV over it, a
            # symlinked folder; other files get their own ids, job.assign_video_ids) is one clip file: the newest
            # record's, built once
            old = current.get(v["video_id"])   # a later listing wins a tie (the same record named twice)
            if old is None or order[v["key"]] >= order[old["key"]]:
                current[v["video_id"]] = {**rec, **{k: v[k] for k in ("video_id", "rel_path", "label_name", "split")}}
        return list(current.values()), len(done) - len(current)
