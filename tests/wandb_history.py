"""Read an offline W&B run's history back (the `.wandb` transaction log: LevelDB log framing of protobuf
records), so tests can check what a run really logged without a W&B server."""
from __future__ import annotations

import json
import struct
import time
from pathlib import Path

_BLOCK, _HEADER = 32768, 7  # leveldb log blocks; a record header is crc32 (4), length (2), type (1)


def _records(path: Path):
    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path}: not a W&B transaction log"
    pos, buf = _HEADER, b""  # the file header is ':W&B', magic (2), version (1)
    while pos + _HEADER <= len(data):
        left = _BLOCK - pos % _BLOCK
        if left < _HEADER:  # a block's tail too short for a header is padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + _HEADER])
        if pos + _HEADER + length > len(data):  # a record still being written
            return
        buf += data[pos + _HEADER:pos + _HEADER + length]
        pos += _HEADER + length
        if kind in (1, 4):  # FULL or LAST fragment
            yield buf
            buf = b""
        elif kind == 0:
            buf = b""


def wandb_history(run_root: Path, wait_s: float = 30.0) -> list[dict]:
    """The history rows of the one offline run under `run_root` (its `wandb/offline-run-*` folder).

    `wandb.finish()` can return before W&B's core process has written the log's tail, so this waits (up to
    `wait_s`) for the run's closing `exit` record."""
    from wandb.proto import wandb_internal_pb2 as pb

    files = sorted(Path(run_root).rglob("offline-run-*/run-*.wandb"))
    assert len(files) == 1, f"expected one offline W&B run under {run_root}, found {files}"
    deadline = time.monotonic() + wait_s
    while True:
        rows, finished = [], False
        for raw in _records(files[0]):
            rec = pb.Record()
            rec.ParseFromString(raw)
            kind = rec.WhichOneof("record_type")
            if kind == "history":
                rows.append({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in rec.history.item})
            finished = finished or kind == "exit"
        if finished:
            return rows
        assert time.monotonic() < deadline, f"{files[0]}: the run's exit record never arrived"
        time.sleep(0.2)
