"""Extraction bookkeeping: append-only JSONL manifests of finished, empty and failed videos.

Each record is one line, flushed and fsynced before the next video is taken as done, so a job killed at
any point loses at most the videos in flight; a torn last line (killed mid-write) is ignored on read.
Records are keyed by `VideoSource.key` (path + size + mtime): an edited file is extracted again.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

DONE, EMPTY, FAILED = "done", "empty", "failed"
_FILES = {DONE: "done.jsonl", EMPTY: "empty_clips.jsonl", FAILED: "failures.jsonl"}


class ExtractionManifest:
    def __init__(self, output_dir: str | Path):
        self.dir = Path(output_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.records: dict[str, dict[str, dict]] = {kind: {} for kind in _FILES}
        for kind, name in _FILES.items():
            path = self.dir / name
            if not path.exists():
                continue
            for line in path.read_text().splitlines():
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue  # torn line of a killed job
                if isinstance(rec, dict) and "key" in rec:
                    self.records[kind][rec["key"]] = rec

    def path(self, kind: str) -> Path:
        return self.dir / _FILES[kind]

    def status(self, key: str) -> str | None:
        done = self.records[DONE].get(key)
        if done is not None and (self.dir / done.get("output", "")).is_file():
            return DONE
        for kind in (EMPTY, FAILED):
            if key in self.records[kind]:
                return kind
        return None

    def record(self, kind: str, key: str, **fields) -> dict:
        rec = {"key": key, **fields, "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
        with open(self.path(kind), "a", encoding="utf-8") as f:
            f.write(json.dumps(rec) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.records[kind][key] = rec
        return rec

    def done_records(self) -> list[dict]:
        """Finished videos whose output file still exists (a deleted output means: extract again)."""
        return [r for r in self.records[DONE].values() if (self.dir / r.get("output", "")).is_file()]
