"""Where a run's own files go (logs, TensorBoard events, plots, exported models, summary): the run folder in the
run's storage, never one node's local disk.

On local or shared (NFS) storage the files are written in place. On object storage (s3://, gs://) rank 0 writes
them to a local staging folder and `sync()` uploads into the run folder what changed since its last call (at
every checkpoint and at the end), so a run on a cluster leaves everything next to its checkpoints; `close()` makes
the last upload and removes the staging folder.
"""
from __future__ import annotations

import hashlib
import logging
import posixpath
import shutil
import tempfile
import time
from pathlib import Path

import pyarrow.fs as pafs

from recognizer_core.storage import filesystem, is_remote, join_uri, read_text, to_uri

log = logging.getLogger(__name__)
_RACY_NS = 1_000_000_000  # files modified less than this before a sync are also compared by content


def _digest(path: Path) -> str:
    h = hashlib.blake2b()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class RunFiles:
    def __init__(self, run_uri: str):
        self.uri = to_uri(run_uri)
        self.remote = is_remote(self.uri)
        self.local = Path(tempfile.mkdtemp(prefix="recognizer_run_")) if self.remote else Path(self.uri)
        # relative path -> ((size, mtime_ns, inode), content hash or None) as uploaded: copying the whole folder
        # at every sync sent every TensorBoard event file and DINO validation image again, so the bytes per run
        # grew with the square of the epochs. An appended file (events) changes size and mtime; a replaced one
        # (atomic write) its inode too.
        self._uploaded: dict[str, tuple[tuple[int, int, int], str | None]] = {}

    def path(self, *parts: str) -> Path:
        """A local path to write `parts` at (its folder is created)."""
        p = self.local.joinpath(*parts)
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    def append_line(self, name: str, line: str) -> None:
        """Append `line` to the run's file `name` (a log across the run's processes, e.g. resume_log.jsonl). On
        remote storage each process stages in a new folder and the sync uploads the whole file: its earlier lines
        are fetched first (the run folder's resume_log.jsonl held only the last resume)."""
        path = self.path(name)
        if self.remote and not path.exists():
            path.write_text(read_text(self.uri_of(name)) or "")
        with open(path, "a") as f:
            f.write(line + "\n")

    def uri_of(self, *parts: str) -> str:
        """Where `parts` ends up (after sync() on remote storage)."""
        return join_uri(self.uri, *parts)

    def sync(self) -> None:
        """On remote storage, upload the staged files that are new or changed since the last sync."""
        if not self.remote or not self.local.is_dir():
            return
        changed = self._changed()
        if not changed:
            return
        fs, root = filesystem(self.uri)
        made: set[str] = set()
        for p, key, seen in changed:
            target = posixpath.join(root, key)
            parent = posixpath.dirname(target)
            # a one-file copy creates no parents; S3 needs none (as storage.put_object), GCS and HDFS do
            if fs.type_name != "s3" and parent not in made:
                fs.create_dir(parent, recursive=True)
                made.add(parent)
            pafs.copy_files(str(p), target, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)
            self._uploaded[key] = seen

    def _changed(self) -> list[tuple[Path, str, tuple]]:
        now = time.time_ns()
        out = []
        for p in sorted(self.local.rglob("*")):
            if not p.is_file():
                continue
            st = p.stat()  # read before the upload: a write during it shows as a change at the next sync
            key, sig = p.relative_to(self.local).as_posix(), (st.st_size, st.st_mtime_ns, st.st_ino)
            # File times tick per jiffy (~4 ms): a file written just before this look can be rewritten with the
            # same size and mtime. Such a "racily clean" file (git's term) is also compared by content next time.
            racy = st.st_mtime_ns > now - _RACY_NS
            old = self._uploaded.get(key)
            if old is not None and old[0] == sig and (old[1] is None or old[1] == _digest(p)):
                if old[1] is not None and not racy:
                    self._uploaded[key] = (sig, None)  # settled: size and mtime tell from now on
                continue
            out.append((p, key, (sig, _digest(p) if racy else None)))
        return out

    def close(self, upload: bool = True) -> None:
        """The run's last sync (`upload`: rank 0; other ranks stage nothing), then the staging folder is removed.
        Each RunFiles stages in a new temp folder, so one left behind (every run, trial and worker restart) was
        never read again. If the upload fails the folder stays, named in a warning, as the only copy."""
        if not self.remote:
            return
        try:
            if upload:
                self.sync()
        except BaseException:
            log.warning("run files of %s not uploaded; their local copy stays in %s", self.uri, self.local)
            raise
        shutil.rmtree(self.local, ignore_errors=True)
