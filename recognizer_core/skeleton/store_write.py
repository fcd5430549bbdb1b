"""Writing a skeleton store: validated clips -> `part-NNNNN.parquet` files, `_index.parquet` and `_dataset.json`.

`_dataset.json` holds everything opening a dataset and starting training need (per file: rows, row-group sizes,
split counts and each split's row ranges; per split: clips per label), and `_index.parquet` the light columns of
every clip in one small file (read only by the tools that need per-clip rows: validation, folds, ids), so
opening a 500k-clip dataset and taking a split's rows read one small json instead of every part file's footer
and columns. Both are optional for readers: a dataset written before they existed (or a plain folder of part
files) is opened from the footers, and one without split ranges takes its split rows from the index.
Each write has an id (WRITE_ID) in `_dataset.json` and in every part file's and the index's footer, so a reader
that opened the dataset before a rewrite errors when it (re)opens a file of the new write instead of reading other
clips at its old positions. From the moment the old `_dataset.json` goes until the new one lands, the folder holds
WRITING_MARKER (and the new files sit beside the old ones as `.<name>.<token>.staged`): a reader finding either
without a json refuses the folder (being written, or a write was interrupted) rather than open whatever part files
are there as a smaller dataset.
The format's contract is checked here too (`check_file_schema`), for readers of any part file.
"""
from __future__ import annotations

import json
import logging
import os
import uuid
from collections import Counter
from pathlib import Path
from typing import Any, Iterable, Literal, Mapping, Sequence

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from recognizer_core.storage import atomic_write

from .clip import NanPolicy, SkeletonClip, SkeletonDataError
from .store_rows import CLIP_SCHEMA, LIGHT_COLUMNS, clips_to_table

SCHEMA_VERSION = 1
DATASET_JSON = "_dataset.json"
INDEX_FILE = "_index.parquet"
META_PREFIX = b"recognizer."
_STRING_COLUMNS = ["clip_id", "label_name", "split", "source_video"]
# A file whose splits form more row ranges than this (clips of several splits interleaved) gets none: its json
# entry would grow with its rows. Readers then take split rows from the index; group_by_split=True avoids it.
MAX_RANGES_PER_FILE = 64
# `_dataset.json` flag: its split_rows / split_labels are those of its split_map's splits (a folds view), so the
# map's splits can be read as row ranges (without it a split_map overrides any ranges)
SPLIT_MAP_AS_ROWS = "split_map_as_rows"
# `_dataset.json` key, and (under META_PREFIX) footer key of each file of the write: readers compare the two
WRITE_ID = "write_id"
WRITE_ID_KEY = META_PREFIX + WRITE_ID.encode()
# suffix of the files a write stages beside the dataset (`.<final name>.<token>.staged`) until its commit
STAGED_SUFFIX = ".staged"
# present while a dataset has no valid `_dataset.json` because it is being (re)written, here or by an upload
# (dataset/build.py); left behind by an interrupted commit. '_': Parquet readers skip it
WRITING_MARKER = "_dataset.writing"

log = logging.getLogger(__name__)


# How part files are written (and rewritten by store_regroup). A training loader decodes every clip every epoch,
# so decoding speed counts as much as size: the float lists byte-stream-split (the bytes of each float grouped by
# position, so exponents and high bytes sit together and compress) and LZ4. On the demo data (noisy pixel floats)
# that is 40.5 kB a clip against 43.8 with plain zstd, and decodes 1.6x faster (0.061 against 0.096 ms a clip, one
# thread); zstd with the split is 38.7 kB but decodes only 1.15x faster. The keys name Parquet leaf columns: a name
# pyarrow does not find is ignored silently, so a test checks the written encodings.
PART_FILE_OPTIONS = {"compression": "lz4", "use_dictionary": _STRING_COLUMNS,
                     "column_encoding": {"keypoint.list.element": "BYTE_STREAM_SPLIT",
                                         "keypoint_score.list.element": "BYTE_STREAM_SPLIT"}}


def _write_parquet(table: pa.Table, path: Path, row_group_size: int) -> None:
    with atomic_write(path, "wb") as f:
        pq.write_table(table, f, row_group_size=row_group_size, **PART_FILE_OPTIONS)


def write_dataset(clips: Iterable[SkeletonClip], out_dir: str | Path, label_names: Sequence[str] | None = None,
                  rows_per_file: int = 1024, *, row_group_size: int = 64,
                  split_map: Mapping[str, Sequence[str]] | None = None, metadata: Mapping[str, Any] | None = None,
                  overwrite: bool = False, nan_policy: NanPolicy = "reject", num_joints: int | None = None,
                  on_error: Literal["raise", "skip"] = "raise", group_by_split: bool = False) -> Path:
    """Validate and write clips (any iterable, consumed in `rows_per_file` chunks) as a Parquet dataset.

    label_names: class names by label; every clip's label must index it and a set label_name must match.
    split_map: optional {split: [clip_id, ...]} for clips in several splits (mmaction2's xsub/xview
    lists); kept verbatim in `_dataset.json` and used by `index(split)`. metadata: free-form JSON dict kept
    in `_dataset.json` (e.g. {'synthetic': True}). on_error='skip' records bad clips instead of raising.
    group_by_split: order each file's rows by split (stable), so a split is one row range per file and
    `_dataset.json` can list the ranges (training then never reads the index); rows otherwise keep their order.
    The previous dataset in out_dir is replaced only once the new one is complete (needs overwrite=True).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    old = sorted(out.glob("part-*.parquet")) + [out / n for n in (DATASET_JSON, INDEX_FILE) if (out / n).exists()]
    if old and not overwrite:
        raise FileExistsError(f"{out}: already holds a skeleton dataset (pass overwrite=True to replace it)")
    label_names = list(label_names) if label_names is not None else None
    write_id = uuid.uuid4().hex
    file_meta = {META_PREFIX + b"schema_version": str(SCHEMA_VERSION).encode(),
                 META_PREFIX + b"label_names": json.dumps(label_names).encode(), WRITE_ID_KEY: write_id.encode()}
    seen: set[str] = set()
    names_by_label: dict[int, str] = {}
    split_counts: Counter = Counter()
    split_labels: dict[str, Counter] = {}
    joints: set[int] = set()
    skipped: list[dict] = []
    max_label = -1
    staged: list[tuple[Path, Path, dict]] = []  # (tmp, final, file entry of _dataset.json)
    token = write_id[:8]
    index_tmp = out / f".{INDEX_FILE}.{token}{STAGED_SUFFIX}"
    index_writer: pq.ParquetWriter | None = None

    def check(clip: SkeletonClip) -> SkeletonClip:
        clip.validate(str(out), nan_policy=nan_policy, num_joints=num_joints,
                      num_classes=len(label_names) if label_names is not None else None)
        if clip.clip_id in seen:
            raise SkeletonDataError(f"{out}: clip {clip.clip_id!r}: clip_id is not unique")
        if label_names is not None and clip.label_name and clip.label_name != label_names[clip.label]:
            raise SkeletonDataError(f"{out}: clip {clip.clip_id!r}: label_name {clip.label_name!r} does not match "
                                    f"label {clip.label} ({label_names[clip.label]!r}); label names: {label_names}")
        if label_names is None and clip.label_name:
            if names_by_label.setdefault(clip.label, clip.label_name) != clip.label_name:
                raise SkeletonDataError(f"{out}: clip {clip.clip_id!r}: label {clip.label} is named "
                                        f"{clip.label_name!r} here but {names_by_label[clip.label]!r} before")
        return clip

    def flush(chunk: list[SkeletonClip]) -> None:
        nonlocal index_writer
        final = out / f"part-{len(staged):05d}.parquet"
        tmp = out / f".{final.name}.{token}{STAGED_SUFFIX}"
        if group_by_split:
            chunk = sorted(chunk, key=lambda c: c.split)
        table = clips_to_table(chunk, label_names)
        _write_parquet(table.replace_schema_metadata(file_meta), tmp, row_group_size)
        groups = [min(row_group_size, len(chunk) - s) for s in range(0, len(chunk), row_group_size)] or [0]
        entry = {"name": final.name, "num_rows": len(chunk), "row_groups": groups,
                 "splits": dict(sorted(Counter(c.split for c in chunk).items()))}
        ranges = _split_ranges([c.split for c in chunk])
        if split_map is None and sum(len(r) for r in ranges.values()) <= MAX_RANGES_PER_FILE:
            entry["split_rows"] = ranges
        staged.append((tmp, final, entry))
        light = table.select(list(LIGHT_COLUMNS))
        if index_writer is None:
            index_writer = pq.ParquetWriter(index_tmp, light.schema.with_metadata({WRITE_ID_KEY: write_id.encode()}),
                                            compression="zstd")
        index_writer.write_table(light, row_group_size=1 << 16)

    try:
        chunk: list[SkeletonClip] = []
        for clip in clips:
            try:
                check(clip)
            except SkeletonDataError as err:
                if on_error != "skip":
                    raise
                skipped.append({"clip_id": str(getattr(clip, "clip_id", "")), "error": str(err)})
                log.warning("skipping clip: %s", err)
                continue
            seen.add(clip.clip_id)
            split_counts[clip.split] += 1
            split_labels.setdefault(clip.split, Counter())[clip.label] += 1
            joints.add(clip.num_joints)
            max_label = max(max_label, clip.label)
            chunk.append(clip)
            if len(chunk) >= rows_per_file:
                flush(chunk)
                chunk = []
        if chunk or not staged:
            flush(chunk)
        index_writer.close()
    except BaseException:
        if index_writer is not None:
            index_writer.close()
        index_tmp.unlink(missing_ok=True)
        for tmp, _, _ in staged:
            tmp.unlink(missing_ok=True)
        raise
    if label_names is None and names_by_label:
        label_names = [names_by_label.get(i, "") for i in range(max_label + 1)]
    if split_map is not None:
        split_map = {str(k): [str(x) for x in v] for k, v in split_map.items()}
        split_counts = Counter({k: sum(x in seen for x in v) for k, v in split_map.items()})
    info = {
        "format": "recognizer.skeleton", "schema_version": SCHEMA_VERSION, WRITE_ID: write_id,
        "label_names": label_names or [],
        "num_clips": len(seen), "num_joints": sorted(joints),
        "files": [entry for _, _, entry in staged], "index_file": INDEX_FILE,
        "splits": dict(sorted(split_counts.items())), "metadata": dict(metadata or {}), "skipped": skipped,
    }
    if split_map is not None:
        info["split_map"] = split_map
    else:  # clips per label of each split: what the training start checks, without the index
        info["split_labels"] = {k: {str(lb): n for lb, n in sorted(v.items())} for k, v in sorted(split_labels.items())}
    # The dataset is invalid until the new json lands. Readers that open it meanwhile see no json but the marker
    # and refuse the folder; readers that opened it before find this write's id in the parts they reopen. An
    # interrupted commit leaves the marker (and staged files).
    (out / WRITING_MARKER).write_text(write_id)
    (out / DATASET_JSON).unlink(missing_ok=True)
    for path in old:
        path.unlink(missing_ok=True)
    for tmp, final, _ in staged:
        os.replace(tmp, final)
    os.replace(index_tmp, out / INDEX_FILE)
    with atomic_write(out / DATASET_JSON, "w") as f:
        f.write(json.dumps(info, indent=1))
    (out / WRITING_MARKER).unlink(missing_ok=True)
    for path in _staged_files(out):  # left by an interrupted earlier write (ours are all renamed): garbage now
        path.unlink(missing_ok=True)
    return out


def _staged_files(out: Path) -> list[Path]:
    """The files write_dataset stages in `out` (its own, or an interrupted write's)."""
    return [p for n in (f".part-*.parquet.*{STAGED_SUFFIX}", f".{INDEX_FILE}.*{STAGED_SUFFIX}")
            for p in out.glob(n) if p.is_file()]


def _split_ranges(splits: Sequence[str]) -> dict[str, list[list[int]]]:
    """{split: [[first row, end row), ...]} of a file's rows, consecutive rows of one split merged."""
    out: dict[str, list[list[int]]] = {}
    for row, name in enumerate(splits):
        runs = out.setdefault(name, [])
        if runs and runs[-1][1] == row:
            runs[-1][1] = row + 1
        else:
            runs.append([row, row + 1])
    return dict(sorted(out.items()))


def write_id_of(schema: pa.Schema) -> str | None:
    """The id of the write that made a file, from its footer (None: written before write ids, or by another tool)."""
    found = (schema.metadata or {}).get(WRITE_ID_KEY)
    return found.decode() if found is not None else None


def refuse_write_in_progress(dataset: Any, names: Iterable[str]) -> None:
    """A json-less folder whose file names include a write's marker or staged files: it is mid-rewrite (json
    removed, parts being renamed or uploaded) or that write was interrupted, so its part files are not one
    dataset."""
    names = list(names)
    busy = [n for n in names if n == WRITING_MARKER] + \
        [n for n in names if n.startswith(".") and n.endswith(STAGED_SUFFIX)]
    if busy:
        raise SkeletonDataError(f"{dataset}: no {DATASET_JSON} but {busy[0]} of a write: the dataset is being "
                                "written, or a write was interrupted (write it again)")


def write_error(dataset: Any, what: str, found: str | None, expected: str | None,
                json_now: str | None) -> SkeletonDataError:
    """`what` is of write `found`, the dataset was opened at `expected`: rewritten since (or being rewritten: no
    json now), unless the json still names the write opened (then that file alone was replaced)."""
    try:
        rewritten = json_now is None or json.loads(json_now).get(WRITE_ID) != expected
    except (ValueError, AttributeError):
        rewritten = True
    if rewritten:
        return SkeletonDataError(f"{dataset}: rewritten since it was opened ({os.path.basename(what)} is of another "
                                 "write): open it again")
    return SkeletonDataError(f"{what}: of write {found} but {DATASET_JSON} lists write {expected}: the file was "
                             "replaced after the dataset was written (rewrite it with write_dataset)")


def check_file_schema(path: str | Path, fs: pafs.FileSystem | None = None, schema: pa.Schema | None = None) -> pa.Schema:
    """Read a Parquet file's footer schema (or check the one given, already read from that footer);
    SkeletonDataError names the file and the missing/extra/odd columns."""
    try:
        schema = pq.read_schema(str(path), filesystem=fs) if schema is None else schema
    except (OSError, pa.ArrowInvalid) as err:
        raise SkeletonDataError(f"{path}: not a readable Parquet file ({err})") from None
    missing = [n for n in CLIP_SCHEMA.names if n not in schema.names]
    extra = [n for n in schema.names if n not in CLIP_SCHEMA.names]
    wrong = [f"{f.name} is {schema.field(f.name).type}, expected {f.type}" for f in CLIP_SCHEMA
             if f.name in schema.names and not schema.field(f.name).type.equals(f.type)]
    if missing or extra or wrong:
        parts = ([f"missing column(s) {missing}"] if missing else []) + \
                ([f"unexpected column(s) {extra}"] if extra else []) + wrong
        raise SkeletonDataError(f"{path}: not a skeleton-store file (schema v{SCHEMA_VERSION}): " + "; ".join(parts))
    version = (schema.metadata or {}).get(META_PREFIX + b"schema_version")
    if version is not None and int(version) > SCHEMA_VERSION:
        raise SkeletonDataError(f"{path}: schema version {int(version)} is newer than this code ({SCHEMA_VERSION})")
    return schema
