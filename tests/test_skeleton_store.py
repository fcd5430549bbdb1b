"""The Parquet skeleton store: round trips, streaming index, batch conversion, atomic writes, schema errors."""
from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recognizer_core.skeleton.clip import SkeletonClip, SkeletonDataError
from recognizer_core.skeleton.store import (CLIP_SCHEMA, DATASET_JSON, INDEX_FILE, LIGHT_COLUMNS, SkeletonDataset,
                                            clip_from_row, clips_from_batch, write_dataset)

NAMES = ["walk", "fight", "fall"]


def gen_clips(n: int, seed: int = 0, v: int = 17) -> list[SkeletonClip]:
    rng = np.random.default_rng(seed)
    clips = []
    for i in range(n):
        m, t = int(rng.integers(1, 5)), int(rng.integers(5, 60))
        clips.append(SkeletonClip(
            clip_id=f"clip_{i:04d}", label=i % 3, keypoint=(rng.random((m, t, v, 2)) * 600).astype(np.float32),
            keypoint_score=rng.random((m, t, v)).astype(np.float32), img_shape=(480, 640), total_frames=t,
            label_name=NAMES[i % 3] if i % 2 else "", split=("train", "val", "test")[i % 3],
            source_video=f"s3://bucket/v{i}.mp4", fps=29.97 if i % 4 else 0.0,
            track_ids=np.arange(m, dtype=np.int32) + i if i % 2 else None,
            frame_inds=np.arange(t, dtype=np.int32) * 2 if i % 3 == 0 else None,
            original_shape=(1080, 1920) if i % 5 == 0 else None,
            extra={"box_score": rng.random((m, t)).astype(np.float16), "modality": "Pose"} if i % 4 == 0 else {}))
    return clips


def assert_same(a: SkeletonClip, b: SkeletonClip, label_names=NAMES) -> None:
    np.testing.assert_array_equal(a.keypoint, b.keypoint)
    np.testing.assert_array_equal(a.keypoint_score, b.keypoint_score)
    assert a.keypoint.dtype == b.keypoint.dtype == np.float32
    for f in ("clip_id", "label", "img_shape", "total_frames", "split", "source_video", "fps", "original_shape"):
        assert getattr(a, f) == getattr(b, f), f
    assert b.label_name == label_names[a.label]  # filled from label_names when empty
    for f in ("track_ids", "frame_inds"):
        x, y = getattr(a, f), getattr(b, f)
        assert (x is None) == (y is None), f
        if x is not None:
            np.testing.assert_array_equal(x, y)
            assert y.dtype == np.int32
    assert a.extra.keys() == b.extra.keys()
    for k, v in a.extra.items():
        if isinstance(v, np.ndarray):
            assert b.extra[k].dtype == v.dtype
            np.testing.assert_array_equal(v, b.extra[k])
        else:
            assert b.extra[k] == v


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    clips = gen_clips(120)
    path = write_dataset(clips, tmp_path_factory.mktemp("store") / "ds", NAMES, rows_per_file=50, row_group_size=8)
    return clips, SkeletonDataset(path)


def test_round_trip_all_fields(store):
    clips, ds = store
    assert len(ds) == 120 and len(ds.files) == 3 and ds.label_names == NAMES
    assert [f.split("/")[-1] for f in ds.files] == ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    assert ds.splits() == {"train": 40, "val": 40, "test": 40}
    for a, b in zip(clips, ds.iter_clips(batch_size=7)):
        assert_same(a, b)
    assert not [p for p in ds.path.iterdir() if p.name.startswith(".")]  # no temp files left


def test_part_files_split_the_float_bytes_and_use_lz4(store, tmp_path, monkeypatch):
    # the encoding is named by Parquet leaf path, and pyarrow ignores a name it does not find without a word
    _, ds = store
    meta = pq.ParquetFile(ds.files[0]).metadata
    for g in range(meta.num_row_groups):
        cols = {meta.row_group(g).column(i).path_in_schema: meta.row_group(g).column(i)
                for i in range(meta.num_columns)}
        for leaf in ("keypoint.list.element", "keypoint_score.list.element"):
            assert "BYTE_STREAM_SPLIT" in cols[leaf].encodings, (leaf, cols[leaf].encodings)
            assert cols[leaf].compression.startswith("LZ4"), (leaf, cols[leaf].compression)
    # datasets written before (plain zstd) read the same
    from recognizer_core.skeleton import store_write

    monkeypatch.setattr(store_write, "PART_FILE_OPTIONS", {"compression": "zstd"})
    clips = gen_clips(20, seed=3)
    old = SkeletonDataset(write_dataset(clips, tmp_path / "zstd", NAMES, rows_per_file=50, row_group_size=8))
    first = pq.ParquetFile(old.files[0]).metadata.row_group(0)
    assert {first.column(i).compression for i in range(first.num_columns)} == {"ZSTD"}
    for a, b in zip(clips, old.iter_clips(batch_size=7)):
        assert_same(a, b)


def test_index_reads_only_light_columns(store):
    clips, ds = store
    before = pa.total_allocated_bytes()
    index = ds.index()
    used = pa.total_allocated_bytes() - before
    assert index.column_names == list(LIGHT_COLUMNS) + ["position"]
    assert "keypoint" not in index.column_names and "keypoint_score" not in index.column_names
    keypoint_bytes = sum(c.keypoint.nbytes + c.keypoint_score.nbytes for c in clips)
    assert used < keypoint_bytes / 20, (used, keypoint_bytes)
    assert index["position"].to_pylist() == list(range(120))
    val = ds.index("val")
    assert val.num_rows == 40 and set(val["split"].to_pylist()) == {"val"}
    assert val["num_person"].to_pylist() == [c.num_person for c in clips if c.split == "val"]


def test_read_positions_in_any_order(store):
    clips, ds = store
    positions = [119, 3, 57, 50, 49, 3, 0]
    got = ds.read(np.array(positions))
    for p, c in zip(positions, got):
        assert_same(clips[p], c)
    with pytest.raises(IndexError):
        ds.read([120])
    val = ds.index("val")["position"].to_numpy()
    assert [c.clip_id for c in ds.read(val)] == [c.clip_id for c in ds.iter_clips("val")]


def test_clips_from_batch_formats(store):
    clips, ds = store
    table = pq.read_table(ds.files[1])
    ref = clips[50:100]
    # Arrow table / record batch (zero-copy views) and sliced batches (offsets not starting at 0), the columns in
    # one chunk (taken as they are) or in several (combined)
    assert table.column("keypoint").num_chunks > 1
    for batch in (table, table.to_batches()[0], table.slice(10, 20), table.combine_chunks().slice(10, 20)):
        off = 10 if batch.num_rows == 20 else 0
        got = clips_from_batch(batch)
        for a, b in zip(ref[off:], got):
            assert_same(a, b)
    # Ray Data numpy format: object arrays of arrays, NaN for null ints; and equal-length lists stacked to 2-D
    np_batch = {n: table[n].to_numpy(zero_copy_only=False) for n in CLIP_SCHEMA.names}
    np_batch["orig_h"] = np.where(np.isnan(np_batch["orig_h"].astype(float)), np.nan, np_batch["orig_h"])
    for a, b in zip(ref, clips_from_batch(np_batch, copy=True)):
        assert_same(a, b)
        assert b.keypoint.flags.writeable
    same = [c for c in ref if c.keypoint.shape == ref[0].keypoint.shape][:1] * 2
    t2 = write_and_table(same)
    stacked = {n: t2.column(n).to_numpy(zero_copy_only=False) for n in CLIP_SCHEMA.names}
    stacked["keypoint"] = np.stack(list(stacked["keypoint"]))
    assert clips_from_batch(stacked)[1].keypoint.shape == ref[0].keypoint.shape
    # pandas and single rows
    for a, b in zip(ref, clips_from_batch(table.to_pandas())):
        assert_same(a, b)
    assert_same(ref[7], clip_from_row(table.slice(7, 1).to_pylist()[0]))


def write_and_table(clips):
    from recognizer_core.skeleton.store_rows import clips_to_table
    return clips_to_table(clips, NAMES)


def test_schema_mismatch_names_file_and_column(tmp_path, store):
    _, ds = store
    bad = tmp_path / "bad"
    bad.mkdir()
    t = pq.read_table(ds.files[0]).drop_columns(["keypoint_score"]).append_column("score", pa.array([1.0] * 50))
    pq.write_table(t, bad / "part-00000.parquet")
    with pytest.raises(SkeletonDataError) as err:
        SkeletonDataset(bad)
    msg = str(err.value)
    assert "part-00000.parquet" in msg and "missing column(s) ['keypoint_score']" in msg
    assert "unexpected column(s) ['score']" in msg
    (bad / "part-00000.parquet").write_bytes(b"not parquet")
    with pytest.raises(SkeletonDataError, match="part-00000.parquet: not a readable Parquet file"):
        SkeletonDataset(bad)


def test_dataset_without_json_reads_footer_metadata(tmp_path):
    path = write_dataset(gen_clips(6), tmp_path / "ds", NAMES)
    (path / DATASET_JSON).unlink()
    ds = SkeletonDataset(path)
    assert len(ds) == 6 and ds.label_names == NAMES and ds.splits() == {"train": 2, "val": 2, "test": 2}


def test_overwrite_is_explicit_and_failed_writes_keep_old_data(tmp_path):
    path = write_dataset(gen_clips(10), tmp_path / "ds", NAMES, rows_per_file=4)
    with pytest.raises(FileExistsError):
        write_dataset(gen_clips(3), path, NAMES)
    bad = gen_clips(9, seed=1)
    bad[7].keypoint[0, 0, 0, 0] = np.nan
    with pytest.raises(SkeletonDataError, match="clip 'clip_0007': keypoint has NaN"):
        write_dataset(bad, path, NAMES, rows_per_file=2, overwrite=True)
    ds = SkeletonDataset(path)
    assert len(ds) == 10 and len(ds.files) == 3  # the old dataset is intact
    assert sorted(p.name for p in path.iterdir()) == \
        [DATASET_JSON, INDEX_FILE] + [f"part-0000{i}.parquet" for i in range(3)]
    write_dataset(gen_clips(5, seed=2), path, NAMES, overwrite=True)
    assert len(SkeletonDataset(path)) == 5 and len(list(path.glob("part-*"))) == 1


def test_write_checks_labels_ids_and_can_skip(tmp_path):
    clips = gen_clips(6)
    clips[1].label_name = "dance"
    with pytest.raises(SkeletonDataError, match="label_name 'dance' does not match label 1"):
        write_dataset(clips, tmp_path / "a", NAMES)
    with pytest.raises(SkeletonDataError, match="label=2 out of range \\[0, 2\\)"):
        write_dataset(gen_clips(6), tmp_path / "b", NAMES[:2])
    dup = gen_clips(3)
    dup[2].clip_id = dup[0].clip_id
    with pytest.raises(SkeletonDataError, match="clip_id is not unique"):
        write_dataset(dup, tmp_path / "c", NAMES)
    bad = gen_clips(6)
    bad[4].keypoint_score = bad[4].keypoint_score[:, :2]
    path = write_dataset(bad, tmp_path / "d", NAMES, on_error="skip")
    info = json.loads((path / DATASET_JSON).read_text())
    assert info["num_clips"] == 5 and info["skipped"][0]["clip_id"] == "clip_0004"
    assert "keypoint_score shape" in info["skipped"][0]["error"]


def test_label_names_derived_nan_zero_and_split_map(tmp_path):
    clips = gen_clips(6)
    for c in clips:
        c.label_name = "fight" if c.label == 1 else ""
    clips[0].keypoint[0, 1, 2] = np.inf
    path = write_dataset(clips, tmp_path / "ds", nan_policy="zero", num_joints=17,
                         split_map={"xsub_train": ["clip_0000", "clip_0001"], "xview_train": ["clip_0001"]},
                         metadata={"synthetic": False})
    ds = SkeletonDataset(path)
    assert ds.label_names == ["", "fight", ""]  # only label 1 was named
    assert ds.metadata == {"synthetic": False}
    assert ds.splits() == {"xsub_train": 2, "xview_train": 1}
    assert ds.index("xview_train")["clip_id"].to_pylist() == ["clip_0001"]
    assert [c.clip_id for c in ds.iter_clips(["xsub_train"])] == ["clip_0000", "clip_0001"]
    first = ds.read([0])[0]
    assert (first.keypoint[0, 1, 2] == 0).all() and first.keypoint_score[0, 1, 2] == 0


def _rewrite_row(path, row: int, **columns) -> None:
    """Rewrite one part file as another tool would, with some columns of one row replaced."""
    table = pq.read_table(path)
    for name, value in columns.items():
        values = table[name].to_pylist()
        values[row] = value
        table = table.set_column(table.schema.get_field_index(name), name,
                                 pa.array(values, table.schema.field(name).type))
    pq.write_table(table, path, row_group_size=4)


def test_list_lengths_that_disagree_with_the_shape_name_file_row_and_clip(tmp_path):
    path = write_dataset(gen_clips(9), tmp_path / "ds", NAMES, rows_per_file=5)
    (path / DATASET_JSON).unlink()  # a folder of part files written by another tool
    part = path / "part-00001.parquet"
    kp = pq.read_table(part)["keypoint"][2].as_py()
    _rewrite_row(part, 2, keypoint=kp[:-3])
    ds = SkeletonDataset(path)
    want = rf"part-00001.parquet: row 2: clip 'clip_0007': keypoint has {len(kp) - 3} values, expected " \
           rf"num_person x num_frames x num_joints x 2 = .* = {len(kp)}$"
    with pytest.raises(SkeletonDataError, match=want):
        ds.read([7])
    with pytest.raises(SkeletonDataError, match=want):
        list(ds.iter_clips())
    assert [c.clip_id for c in ds.read([6, 8])] == ["clip_0006", "clip_0008"]  # the other rows still read
    _rewrite_row(part, 0, keypoint_score=None)
    with pytest.raises(SkeletonDataError, match="row 0: clip 'clip_0005': keypoint_score has null, expected"):
        SkeletonDataset(path).read([5])


def test_a_part_file_rewritten_with_other_row_groups_reads_the_same_rows(tmp_path):
    """The same rows rewritten with row groups of 5 instead of 8 (another Parquet tool): every read path returns
    what it did before. Column reads cut their ranges at _dataset.json's row groups and sliced past the end of
    the new, shorter ones."""
    import pyarrow.parquet as pq

    from recognizer_core.skeleton.store_write import PART_FILE_OPTIONS

    path = write_dataset(gen_clips(40), tmp_path / "ds", NAMES, rows_per_file=40, row_group_size=8,
                         group_by_split=True)
    before = SkeletonDataset(path)
    want = {s: before.split_columns(s, ["clip_id", "label"]) for s in ("train", "val", "test")}
    ids = before.clip_ids([3, 17, 30, 9])
    part = path / "part-00000.parquet"
    pq.write_table(pq.read_table(part), part, row_group_size=5, **PART_FILE_OPTIONS)
    for s, table in want.items():
        assert SkeletonDataset(path).split_columns(s, ["clip_id", "label"]).equals(table), s
    assert SkeletonDataset(path).clip_ids([3, 17, 30, 9]) == ids
    ds = SkeletonDataset(path)
    assert [c.clip_id for c in ds.read(ds.split_positions("train"))] == want["train"]["clip_id"].to_pylist()


def test_open_and_index_read_only_the_metadata_files(tmp_path):
    path = write_dataset(gen_clips(30), tmp_path / "ds", NAMES, rows_per_file=7, row_group_size=3)
    info = json.loads((path / DATASET_JSON).read_text())
    assert info["files"][0]["row_groups"] == [3, 3, 1] and info["index_file"] == INDEX_FILE
    ref = SkeletonDataset(path)
    ref_index = ref.index()
    good = (path / "part-00002.parquet").read_bytes()
    (path / "part-00002.parquet").write_bytes(b"garbage: opening and indexing must not read this file")
    ds = SkeletonDataset(path)
    assert len(ds) == 30 and ds.splits() == ref.splits()
    assert ds.index("val").equals(ref.index("val"))
    assert [c.clip_id for c in ds.read([0, 29])] == ["clip_0000", "clip_0029"]
    with pytest.raises(SkeletonDataError, match="part-00002.parquet: not a readable Parquet file"):
        ds.read([15])  # the file is checked when first read
    (path / "part-00002.parquet").write_bytes(good)
    # a dataset written before the row-group counts and the index file: footers, same answers
    for f in info["files"]:
        del f["row_groups"], f["splits"]
    del info["index_file"]
    (path / DATASET_JSON).write_text(json.dumps(info))
    (path / INDEX_FILE).unlink()
    old = SkeletonDataset(path)
    assert old.index().equals(ref_index) and old.row_group_bounds()[1].tolist() == [7, 10, 13, 14]
    for a, b in zip(ref.read(range(30)), old.read(range(30))):
        assert_same(a, b)


def test_dataset_pickles_without_open_files(tmp_path):
    import pickle

    ds = SkeletonDataset(write_dataset(gen_clips(6), tmp_path / "ds", NAMES))
    ds.read([1])
    copy = pickle.loads(pickle.dumps(ds))
    assert copy._pf == {} and [c.clip_id for c in copy.read([5, 0])] == ["clip_0005", "clip_0000"]


def test_open_files_are_bounded(tmp_path):
    from recognizer_core.skeleton import store

    clips = gen_clips(2 * store._OPEN_FILES + 6)
    ds = SkeletonDataset(write_dataset(clips, tmp_path / "ds", NAMES, rows_per_file=2))
    got = [c.clip_id for c in ds.iter_clips()] + [c.clip_id for c in ds.read(range(len(clips)))[::-1]]
    assert got == [c.clip_id for c in clips] + [c.clip_id for c in clips][::-1]
    assert len(ds.files) == store._OPEN_FILES + 3 and len(ds._pf) == store._OPEN_FILES


def test_threads_read_one_dataset_at_once(tmp_path):
    """A training loader's read-ahead thread reads while its main thread reads too (another split of the same
    dataset). pyarrow's ParquetFile is not thread-safe: unlocked, 4 threads x 100 reads here failed 1-3 times a
    run ("ReadRangeCache did not find matching cache entry")."""
    import threading

    clips = gen_clips(60)
    ds = SkeletonDataset(write_dataset(clips, tmp_path / "ds", NAMES))
    want = [c.clip_id for c in clips]
    errors: list[str] = []

    def reader(seed: int) -> None:
        rng = np.random.default_rng(seed)
        for _ in range(100):
            pos = rng.choice(len(ds), 20, replace=False)
            try:
                got = [c.clip_id for c in ds.read(pos)]
            except SkeletonDataError as err:
                errors.append(str(err))
                continue
            if got != [want[p] for p in pos]:
                errors.append(f"wrong clips at {pos.tolist()}")

    threads = [threading.Thread(target=reader, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
