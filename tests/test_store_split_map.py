"""Datasets with a split_map (pkl_to_parquet imports such as NTU's xsub lists, fold views) stream a split with its id
set hashed once per pass, not once per batch (that was quadratic: 76 s for iter_clips at 160k clips), giving the
same clips in the same order; parquet_to_pkl streams its clips (it held them all while copying each into its
annotation: twice the keypoints' memory) and writes the same pickle bytes as before."""
from __future__ import annotations

import pickle
import weakref

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from recognizer_core.skeleton.clip import SkeletonClip, decode_extra
from recognizer_core.skeleton.mmaction_pkl import parquet_to_pkl, pkl_to_parquet
from recognizer_core.skeleton.store import SkeletonDataset, write_dataset
from recognizer_core.skeleton.validate import validate_dataset

N = 90


def _clips(n: int = N) -> list[SkeletonClip]:
    rng = np.random.default_rng(3)
    out = []
    for i in range(n):
        m, t = 1 + i % 2, 4 + i % 3
        out.append(SkeletonClip(
            clip_id=f"S{i:04d}", label=i % 3, split=("train", "val", "")[i % 3],
            keypoint=(rng.random((m, t, 17, 2)) * [640, 480]).astype(np.float32),
            keypoint_score=rng.random((m, t, 17)).astype(np.float32) + 0.1, img_shape=(480, 640), total_frames=t,
            source_video=f"v{i // 4}" if i % 5 else "", original_shape=(960, 1280) if i % 4 == 0 else None,
            track_ids=np.arange(m, dtype=np.int64) if i % 6 == 0 else None,
            extra={"note": f"n{i}", "meta": {"fps": (30000, 1001)}} if i % 7 == 0 else {}))
    return out


def _split_map() -> dict[str, list[str]]:
    ids = [f"S{i:04d}" for i in range(N)]
    order = np.random.default_rng(5).permutation(N)  # map order is not store order
    return {"xsub_train": [ids[j] for j in order[:60]] + ["S9999"],  # an id with no clip
            "xsub_val": [ids[j] for j in order[60:]],
            "xview_train": ids[::2]}  # overlaps xsub_train and xsub_val


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    root = tmp_path_factory.mktemp("split_map")
    mapped = write_dataset(_clips(), root / "mapped", ["a", "b", "c"], rows_per_file=40, row_group_size=8,
                           split_map=_split_map())
    plain = write_dataset(_clips(), root / "plain", ["a", "b", "c"], rows_per_file=40, row_group_size=8)
    return mapped, plain


def _per_batch_reference(ds: SkeletonDataset, split) -> list[tuple[int, int]]:
    """(file, row) of each clip of `split` as the per-batch is_in selected them before (store order)."""
    names = [split] if isinstance(split, str) else list(split)
    if ds.split_map is not None:
        col, values = "clip_id", [x for s in names for x in ds.split_map.get(s, [])]
    else:
        col, values = "split", names
    out = []
    for fi, row0, batch in ds.iter_batches(256):
        mask = pc.is_in(batch[col], value_set=pa.array(values, pa.string())).to_numpy(zero_copy_only=False)
        out += [(fi, row0 + int(r)) for r in np.flatnonzero(mask)]
    return out


@pytest.mark.parametrize("split", ["xsub_train", "xsub_val", ["xsub_train", "xview_train"], "nope", "train", "val"])
def test_iter_clips_and_index_select_what_the_per_batch_is_in_did(stores, split):
    for path in stores:
        ds = SkeletonDataset(path)
        want = _per_batch_reference(ds, split)
        every = {c.clip_id: c for c in ds.iter_clips()}
        got = list(ds.iter_clips(split, batch_size=5))
        positions = [int(ds._file_start[fi]) + r for fi, r in want]
        assert [c.clip_id for c in got] == ds.clip_ids(positions)  # same clips, same (store) order, once each
        assert ds.index(split)["position"].to_pylist() == positions
        for c in got:
            ref = every[c.clip_id]
            assert c.label == ref.label and c.split == ref.split and np.array_equal(c.keypoint, ref.keypoint)
        if ds.split_map is not None and split == "nope":
            assert got == []


def _count_is_in(monkeypatch) -> list[int]:
    calls: list[int] = []
    real = pc.is_in

    def counting(*args, **kw):
        calls.append(1)
        return real(*args, **kw)
    monkeypatch.setattr(pc, "is_in", counting)
    return calls


def test_iter_clips_hashes_a_split_maps_ids_once(stores, monkeypatch):
    ds = SkeletonDataset(stores[0])
    assert sum(1 for _ in ds.iter_batches(4)) > 20  # many batches: per-batch hashing would show
    calls = _count_is_in(monkeypatch)
    assert len(list(ds.iter_clips("xsub_train", batch_size=4))) == 60
    assert len(calls) <= 1, f"pc.is_in called {len(calls)} times for one pass (once per batch: quadratic)"


def test_validate_dataset_hashes_a_split_maps_ids_once(stores, monkeypatch):
    calls = _count_is_in(monkeypatch)
    report = validate_dataset(stores[0], ["xsub_train", "xview_train"], 3, batch_rows=4, use_cache=False)
    assert report["num_clips"] == len(set(_split_map()["xsub_train"][:60]) | set(_split_map()["xview_train"]))
    assert len(calls) <= 1, f"pc.is_in called {len(calls)} times for one pass (once per batch: quadratic)"


def _old_parquet_to_pkl_bytes(path, split=None, layout=None) -> bytes:
    """The pickle parquet_to_pkl wrote before it streamed (every clip held, then copied into its annotation)."""
    ds = SkeletonDataset(path)
    clips = list(ds.iter_clips(split))
    anns = [c.to_annotation() for c in clips]
    meta = ds.metadata.get("mmaction_pkl", {})
    layout = layout or meta.get("layout", "dict")
    if layout == "list":
        return pickle.dumps(anns, protocol=pickle.HIGHEST_PROTOCOL)
    split_map = ds.split_map
    if split_map is not None and split is not None:
        keep = [split] if isinstance(split, str) else list(split)
        split_map = {k: v for k, v in split_map.items() if k in keep}
    if split_map is None:
        split_map = {}
        for c in clips:
            if c.split:
                split_map.setdefault(c.split, []).append(c.clip_id)
    data = {"split": split_map, "annotations": anns, **(decode_extra(meta.get("other")) or {})}
    return pickle.dumps(data, protocol=pickle.HIGHEST_PROTOCOL)


def test_parquet_to_pkl_writes_the_same_bytes_as_before(stores, tmp_path):
    mapped, plain = stores
    src = tmp_path / "src.pkl"  # an import with a split_map and other top-level keys
    parquet_to_pkl(mapped, src)
    data = pickle.loads(src.read_bytes())
    data["version"] = "1.0"
    src.write_bytes(pickle.dumps(data))
    imported = pkl_to_parquet(src, tmp_path / "imported", rows_per_file=32)
    cases = [(plain, None, None), (plain, "train", None), (plain, ["train", "val"], None), (plain, "val", "list"),
             (mapped, None, None), (mapped, "xsub_val", None), (imported, None, None),
             (imported, ["xsub_train", "xview_train"], None), (imported, "xsub_train", "list")]
    for i, (path, split, layout) in enumerate(cases):
        out = parquet_to_pkl(path, tmp_path / f"out{i}.pkl", split, layout=layout)
        assert out.read_bytes() == _old_parquet_to_pkl_bytes(path, split, layout), (path.name, split, layout)
    assert pickle.loads((tmp_path / "out6.pkl").read_bytes())["version"] == "1.0"


def test_parquet_to_pkl_does_not_hold_every_clip(stores, tmp_path, monkeypatch):
    _, plain = stores
    alive: list[weakref.ref] = []
    most = [0]
    real = SkeletonDataset.iter_clips

    def tracking(self, *args, **kw):
        for clip in real(self, *args, **kw):
            alive.append(weakref.ref(clip))  # refcounting frees a dropped clip at once (no cycles)
            most[0] = max(most[0], sum(r() is not None for r in alive))
            yield clip
            del clip
    monkeypatch.setattr(SkeletonDataset, "iter_clips", tracking)
    parquet_to_pkl(plain, tmp_path / "all.pkl")
    assert len(alive) == N
    # a row group (8 rows) of clips is decoded at a time; holding them all kept every row group's buffers alive
    assert most[0] <= 2 * 8 + 1, f"{most[0]} of {N} clips alive at once"
