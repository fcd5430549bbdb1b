"""Where a run's own files go (logs, TensorBoard events, plots, exported models, summary): the run folder in the
run's storage, never one node's local disk.

On local or shared (NFS) storage the files are written in place. On object storage (s3://, gs://) rank 0 writes
them to a local staging folder and `sync()` copies it into the run folder (at every checkpoint and at the end),
so a run on a cluster leaves everything next to its checkpoints.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

from recognizer_core.storage import copy_tree, is_remote, join_uri, to_uri


class RunFiles:
    def __init__(self, run_uri: str):
        self.uri = to_uri(run_uri)
        self.remote = is_remote(self.uri)
        self.local = Path(tempfile.mkdtemp(prefix="recognizer_run_")) if self.remote else Path(self.uri)

    def path(self, *parts: str) -> Path:
        """A local path to write `parts` at (its folder is created)."""
        p = self.local.joinpath(*parts)
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    def uri_of(self, *parts: str) -> str:
        """Where `parts` ends up (after sync() on remote storage)."""
        return join_uri(self.uri, *parts)

    def sync(self) -> None:
        if self.remote and any(self.local.iterdir()):
            copy_tree(str(self.local), self.uri)
