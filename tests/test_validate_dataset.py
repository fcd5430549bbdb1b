"""validate_dataset: every bad row found on the driver in one line naming file, row, clip and field; the result
cached per dataset version so a re-run or a Tune trial does not read the data again."""
from __future__ import annotations

import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recognizer_core.skeleton.clip import SkeletonClip, SkeletonDataError
from recognizer_core.skeleton.store import DATASET_JSON, INDEX_FILE, SkeletonDataset, write_dataset
from recognizer_core.skeleton.validate import REPORT_DIR, empty_positions_for, validate_dataset


def _clips(n: int = 12) -> list[SkeletonClip]:
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        m, t = 1 + i % 2, 6 + i % 5
        out.append(SkeletonClip(clip_id=f"c{i:02d}", label=i % 3, split=("train", "val", "test")[i % 3],
                                keypoint=(rng.random((m, t, 17, 2)) * [640, 480]).astype(np.float32),
                                keypoint_score=rng.random((m, t, 17)).astype(np.float32) + 0.1,
                                img_shape=(480, 640), total_frames=t))
    return out


def _foreign(tmp_path, edit) -> str:
    """A folder of part files as another tool writes them: no _dataset.json, one row edited by `edit(table)`."""
    path = write_dataset(_clips(), tmp_path / "ds", ["a", "b", "c"], rows_per_file=5)
    (path / DATASET_JSON).unlink()
    (path / INDEX_FILE).unlink()
    part = path / "part-00001.parquet"
    rows = pq.read_table(part).to_pylist()
    edit(rows[2])  # clip c07, a val clip
    pq.write_table(pa.Table.from_pylist(rows, schema=pq.read_schema(part)), part)
    return str(path)


def _one_line_error(path, *args, **kw) -> str:
    with pytest.raises(SkeletonDataError) as err:
        validate_dataset(path, ["train", "val"], 3, *args, use_cache=False, **kw)
    msg = str(err.value)
    assert "\n" not in msg and "part-00001.parquet: row 2: clip 'c07': " in msg, msg
    return msg.split("clip 'c07': ")[1]


def _nan(row):
    row["keypoint"][5] = float("nan")


def test_nan_is_one_line_or_counted_under_the_zero_policy(tmp_path):
    path = _foreign(tmp_path, _nan)
    assert _one_line_error(path).startswith("keypoint has NaN/inf values; use data.nan_policy=zero")
    report = validate_dataset(path, ["train", "val"], 3, "zero", use_cache=False)
    assert report["nonfinite_clips"] == 1 and report["num_clips"] == 8


def test_zero_frames_bad_label_and_wrong_lengths(tmp_path):
    def no_frames(row):
        row.update(num_frames=0, total_frames=0, keypoint=[], keypoint_score=[])
    assert _one_line_error(_foreign(tmp_path / "t0", no_frames)) == "num_frames: keypoint has 0 frames"

    def bad_label(row):
        row["label"] = 7
    assert _one_line_error(_foreign(tmp_path / "label", bad_label)) == \
        "label: label=7 outside [0, 3) (model.num_classes)"

    def short(row):
        row["keypoint"] = row["keypoint"][:-4]
    n = 2 * 17 * 8 * 2  # c07: 2 persons, 8 frames
    assert _one_line_error(_foreign(tmp_path / "len", short)) == \
        f"keypoint has {n - 4} values, expected num_person x num_frames x num_joints x 2 = {n}"


def test_far_coordinates_are_rejected_or_counted(tmp_path):
    def far(row):
        row["keypoint"][7] = 1e30  # a y coordinate
    path = _foreign(tmp_path, far)
    msg = _one_line_error(path)
    assert msg.startswith("keypoint (") and ", 1e+30) is far outside img_shape (480, 640)" in msg
    assert validate_dataset(path, ["train", "val"], 3, "zero", use_cache=False)["far_coordinate_clips"] == 1
    # ... and under 'zero' the training loader zeroes that joint, as it does NaN joints
    from recognizer_core.train.stgcn.config import DataConfig
    from recognizer_core.train.stgcn.data import load_shard

    shard, _ = load_shard(SkeletonDataset(path), np.array([7]), DataConfig(nan_policy="zero"), 3, 17, "t")
    clip = shard[0]
    assert clip.clip_id == "c07" and np.abs(clip.keypoint).max() < 1000
    assert clip.keypoint.reshape(-1, 2)[3].tolist() == [0, 0] and clip.keypoint_score.reshape(-1)[3] == 0
    # a bad clip outside the requested splits does not stop the run
    assert validate_dataset(path, ["train"], 3, use_cache=False)["num_clips"] == 4


def test_all_zero_clips_are_listed_or_rejected(tmp_path):
    def zero(row):
        row["keypoint"] = [0.0] * len(row["keypoint"])
        row["keypoint_score"] = [0.0] * len(row["keypoint_score"])
    path = _foreign(tmp_path, zero)
    assert _one_line_error(path, skip_empty=False).startswith("keypoint and keypoint_score are all zero")
    report = validate_dataset(path, ["train", "val"], 3)
    assert report["empty_positions"] == [7]
    assert empty_positions_for(SkeletonDataset(path)).tolist() == [7]


def test_clips_empty_once_nan_and_far_joints_are_zeroed_are_skipped_not_fatal(tmp_path, monkeypatch):
    """A tool writing NaN for undetected joints (or off-screen junk): under nan_policy zero the loader zeroes
    those joints, leaving nobody. Validation and the loader's own scan counted NaN as a non-zero value, so such a
    clip was not skipped and killed the run mid-epoch despite skip_empty_clips."""
    from recognizer_core.train.stgcn.config import DataConfig
    from recognizer_core.train.stgcn.data import load_shard

    def nobody(row):
        n = len(row["keypoint"])
        row["keypoint"] = [float("nan")] * (n // 2) + [1e6] * (n - n // 2)  # NaN, then far outside the image
        row["keypoint_score"] = [0.9] * len(row["keypoint_score"])
    monkeypatch.setenv("RECOGNIZER_CACHE", str(tmp_path / "cache"))
    path = _foreign(tmp_path, nobody)
    cfg = DataConfig(path=path, nan_policy="zero", skip_empty_clips=True)
    ds = SkeletonDataset(path)
    # no report yet: the loader's scan of the keypoint columns finds it
    shard, skipped = load_shard(ds, np.arange(len(ds)), cfg, 3, 17, "train")
    assert skipped == ["c07"] and len(shard) == 11
    assert len(shard.load(np.arange(len(shard)))) == 11
    report = validate_dataset(path, ["train", "val"], 3, "zero")
    assert report["empty_positions"] == [7] and report["nonfinite_clips"] == 1 and report["far_coordinate_clips"] == 1
    assert empty_positions_for(ds).tolist() == [7]


def test_second_call_reads_the_cached_report_not_the_data(tmp_path):
    path = write_dataset(_clips(), tmp_path / "ds", ["a", "b", "c"], rows_per_file=5)
    first = validate_dataset(path, ["train", "val"], 3)
    assert not first["cached"] and first["num_clips"] == 8 and first["empty_positions"] == []
    reports = sorted((path / REPORT_DIR).iterdir())
    assert len(reports) == 2  # the report and the all-zero clip list
    # Same size and mtime, unreadable content: only a call that reads the data can notice.
    part = path / "part-00001.parquet"
    st = part.stat()
    part.write_bytes(b"\0" * st.st_size)
    os.utime(part, ns=(st.st_atime_ns, st.st_mtime_ns))
    second = validate_dataset(path, ["train", "val"], 3)
    assert second["cached"] and {k: v for k, v in second.items() if k != "cached"} == \
        {k: v for k, v in first.items() if k != "cached"}
    # other parameters or a changed dataset are validated again
    with pytest.raises(SkeletonDataError, match="part-00001.parquet: not a readable Parquet file"):
        validate_dataset(path, ["train", "val"], 3, "zero")
    os.utime(part)
    with pytest.raises(SkeletonDataError, match="part-00001.parquet: not a readable Parquet file"):
        validate_dataset(path, ["train", "val"], 3)
    assert json.loads(reports[0].read_text())["fingerprint"] == first["fingerprint"]


def test_a_read_only_dataset_caches_in_the_user_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("RECOGNIZER_CACHE", str(tmp_path / "cache"))
    path = write_dataset(_clips(), tmp_path / "ds", ["a", "b", "c"], rows_per_file=5)
    (path / REPORT_DIR).write_text("a file where the report folder would go")  # cannot write inside
    assert not validate_dataset(path, ["train"], 3)["cached"]
    assert validate_dataset(path, ["train"], 3)["cached"]
    assert len(list((tmp_path / "cache" / "validated").iterdir())) == 2
