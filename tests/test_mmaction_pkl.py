"""mmaction2 PoseDataset pickle <-> Parquet store: lossless both ways, clear errors, trusted-file warning."""
from __future__ import annotations

import logging
import pickle

import numpy as np
import pytest

from conftest import shared_path
from recognizer_core.skeleton.clip import SkeletonClip, SkeletonDataError
from recognizer_core.skeleton.mmaction_pkl import (parquet_to_pkl, pkl_to_parquet, read_label_map,
                                                   read_mmaction_pkl, write_mmaction_pkl)
from recognizer_core.skeleton.store import SkeletonDataset, write_dataset


def assert_identical(a, b, path="root"):
    """Equal values AND equal types/dtypes, recursively (a stricter `==` for annotation dicts)."""
    assert type(a) is type(b), f"{path}: {type(a).__name__} != {type(b).__name__}"
    if isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and a.shape == b.shape, path
        np.testing.assert_array_equal(a, b, err_msg=path)
    elif isinstance(a, dict):
        assert sorted(a) == sorted(b), f"{path}: keys {sorted(a)} != {sorted(b)}"
        for k in a:
            assert_identical(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_identical(x, y, f"{path}[{i}]")
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


def golden_annotations():
    with open(shared_path("golden", "pipeline_shared.pkl"), "rb") as f:
        return [r["annotation"] for r in pickle.load(f)["records"]]


def test_golden_pkl_parquet_pkl_is_identical(tmp_path, caplog):
    anns = golden_annotations()
    # a pyskl-style clip: float16 keypoints, extra per-frame arrays and nested metadata
    anns[1] = dict(anns[1], keypoint=anns[1]["keypoint"].astype(np.float16), box_score=np.ones((3, 150), np.float16),
                   raw_file="k400/abc.mp4", meta={"fps": (30000, 1001), "ids": [np.int64(4)]})
    names = [a["frame_dir"] for a in anns]
    src = {"split": {"xsub_train": names[:2], "xview_train": names[1:], "xsub_val": [names[2]]}, "annotations": anns}
    pkl = tmp_path / "ntu_like.pkl"
    pkl.write_bytes(pickle.dumps(src))
    with caplog.at_level(logging.WARNING, logger="recognizer_core.skeleton.mmaction_pkl"):
        ds_path = pkl_to_parquet(pkl, tmp_path / "ds", label_names=["a", "b"], rows_per_file=2)
    assert "only read files you trust" in caplog.text and str(pkl) in caplog.text
    ds = SkeletonDataset(ds_path)
    assert len(ds) == 3 and len(ds.files) == 2 and ds.label_names == ["a", "b"]
    assert ds.splits() == {"xsub_train": 2, "xsub_val": 1, "xview_train": 2}
    assert ds.index("xview_train")["clip_id"].to_pylist() == names[1:]  # a clip in two splits
    assert [c.split for c in ds.iter_clips()] == ["xsub_train", "xsub_train", "xview_train"]
    out = parquet_to_pkl(ds_path, tmp_path / "back.pkl")
    back = pickle.loads(out.read_bytes())
    assert_identical(src["split"], back["split"])
    assert len(back["annotations"]) == 3
    for a, b in zip(src["annotations"], back["annotations"]):
        assert_identical(a, b, a["frame_dir"])
    assert read_label_map(tmp_path / "back.label_map.txt") == ["a", "b"]
    # one split only
    sub = pickle.loads(parquet_to_pkl(ds_path, tmp_path / "val.pkl", split="xsub_val").read_bytes())
    assert sub["split"] == {"xsub_val": [names[2]]} and [a["frame_dir"] for a in sub["annotations"]] == [names[2]]


def make_clips(n=4):
    rng = np.random.default_rng(1)
    return [SkeletonClip(f"v{i}", i % 2, rng.random((2, 20, 17, 2), np.float32) * 100,
                         rng.random((2, 20, 17), np.float32), (720, 1280), 20, split="train" if i < 3 else "test",
                         source_video=f"gs://b/v{i}.mp4", fps=25.0, track_ids=np.array([i, i + 10], np.int32),
                         frame_inds=np.arange(20, dtype=np.int32) + 5 * i) for i in range(n)]


def test_parquet_pkl_parquet_keeps_clip_fields(tmp_path):
    clips = make_clips()
    ds = write_dataset(clips, tmp_path / "ds", ["no", "yes"])
    parquet_to_pkl(ds, tmp_path / "x.pkl")
    raw = pickle.loads((tmp_path / "x.pkl").read_bytes())
    assert raw["split"] == {"train": ["v0", "v1", "v2"], "test": ["v3"]}
    assert raw["annotations"][0]["img_shape"] == (720, 1280) and raw["annotations"][0]["keypoint"].dtype == np.float32
    ds2 = pkl_to_parquet(tmp_path / "x.pkl", tmp_path / "ds2", label_names=tmp_path / "x.label_map.txt")
    for a, b in zip(clips, SkeletonDataset(ds2).iter_clips()):
        np.testing.assert_array_equal(a.keypoint, b.keypoint)
        np.testing.assert_array_equal(a.track_ids, b.track_ids)
        np.testing.assert_array_equal(a.frame_inds, b.frame_inds)
        assert (a.clip_id, a.split, a.source_video, a.fps, a.extra) == (b.clip_id, b.split, b.source_video, b.fps,
                                                                         b.extra)
        assert b.label_name == ["no", "yes"][a.label]


def test_list_layout_round_trip(tmp_path):
    anns = [c.to_annotation() for c in make_clips(2)]
    (tmp_path / "l.pkl").write_bytes(pickle.dumps(anns))
    pose = read_mmaction_pkl(tmp_path / "l.pkl")
    assert pose.layout == "list" and pose.split_map is None and len(pose) == 2 and pose[0].clip_id == "v0"
    pkl_to_parquet(tmp_path / "l.pkl", tmp_path / "ds")
    back = pickle.loads(parquet_to_pkl(tmp_path / "ds", tmp_path / "l2.pkl").read_bytes())
    assert isinstance(back, list)
    for a, b in zip(anns, back):
        assert_identical(a, b)


def write_pkl(path, anns):
    path.write_bytes(pickle.dumps({"split": {"train": [a["frame_dir"] for a in anns]}, "annotations": anns}))
    return path


def test_bad_pickles_give_clear_errors(tmp_path):
    good = make_clips(1)[0].to_annotation()
    ntu3d = {k: v for k, v in good.items() if k != "keypoint_score"}
    ntu3d["keypoint"] = np.zeros((2, 20, 25, 3), np.float32)
    with pytest.raises(SkeletonDataError, match=r"ntu.pkl: clip 'v0': annotation has no 'keypoint_score' \(3-D"):
        read_mmaction_pkl(write_pkl(tmp_path / "ntu.pkl", [ntu3d]))
    nan = dict(good, keypoint=good["keypoint"].copy())
    nan["keypoint"][1, 3, 4, 0] = np.nan
    with pytest.raises(SkeletonDataError, match=r"nan.pkl: clip 'v0': keypoint has NaN/inf values"):
        read_mmaction_pkl(write_pkl(tmp_path / "nan.pkl", [nan]))
    fixed = read_mmaction_pkl(tmp_path / "nan.pkl", nan_policy="zero")[0]
    assert fixed.keypoint_score[1, 3, 4] == 0 and (fixed.keypoint[1, 3, 4] == 0).all()
    with pytest.raises(SkeletonDataError, match=r"lab.pkl: clip 'v0': label=0 out of range"):
        read_mmaction_pkl(write_pkl(tmp_path / "lab.pkl", [dict(good, label=0)]), label_names=[])
    shape = dict(good, keypoint_score=good["keypoint_score"][:, :5])
    with pytest.raises(SkeletonDataError, match=r"shape.pkl: clip 'v0': keypoint_score shape \(2, 5, 17\)"):
        read_mmaction_pkl(write_pkl(tmp_path / "shape.pkl", [shape]))
    (tmp_path / "other.pkl").write_bytes(pickle.dumps({"records": []}))
    with pytest.raises(SkeletonDataError, match=r"other.pkl: not an mmaction2 pose pickle.*\['records'\]"):
        read_mmaction_pkl(tmp_path / "other.pkl")
    (tmp_path / "junk.pkl").write_bytes(b"\x00not a pickle")
    with pytest.raises(SkeletonDataError, match="junk.pkl: not a readable pickle"):
        read_mmaction_pkl(tmp_path / "junk.pkl")
    with pytest.raises(SkeletonDataError, match="layout must be"):
        write_mmaction_pkl(make_clips(1), tmp_path / "y.pkl", layout="tuple")


def pose_decode(results):
    """mmaction2 1.2.0 PoseDecode.transform (mmaction/datasets/transforms/pose_transforms.py), verbatim body."""
    if 'total_frames' not in results:
        results['total_frames'] = results['keypoint'].shape[1]
    if 'frame_inds' not in results:
        results['frame_inds'] = np.arange(results['total_frames'])
    if results['frame_inds'].ndim != 1:
        results['frame_inds'] = np.squeeze(results['frame_inds'])
    offset = results.get('offset', 0)
    frame_inds = results['frame_inds'] + offset
    results['keypoint'] = results['keypoint'][:, frame_inds].astype(np.float32)
    if 'keypoint_score' in results:
        kpscore = results['keypoint_score']
        results['keypoint_score'] = kpscore[:, frame_inds].astype(np.float32)
    return results


def test_source_frame_numbers_are_not_mmaction2_frame_inds(tmp_path):
    """Windows of a source video carry its frame numbers (v3's start at 15); written as `frame_inds` they were
    PoseDecode's indices into the T frames: out of bounds. They travel as `source_frame_inds`, and come back."""
    clips = make_clips()
    ds = write_dataset(clips, tmp_path / "ds", ["no", "yes"])
    raw = pickle.loads(parquet_to_pkl(ds, tmp_path / "x.pkl").read_bytes())
    for clip, ann in zip(clips, raw["annotations"]):
        assert "frame_inds" not in ann and ann["source_frame_inds"].tolist() == clip.frame_inds.tolist()
        decoded = pose_decode(dict(ann))
        np.testing.assert_array_equal(decoded["keypoint"], clip.keypoint)
    back = list(SkeletonDataset(pkl_to_parquet(tmp_path / "x.pkl", tmp_path / "ds2")).iter_clips())
    assert [c.frame_inds.tolist() for c in back] == [c.frame_inds.tolist() for c in clips]
    assert all("source_frame_inds" not in c.extra and "frame_inds" not in c.extra for c in back)
    # another tool's own frame_inds (indices into T) stay what they were, in the annotation's own key
    ann = dict(raw["annotations"][0], frame_inds=np.arange(0, 20, 2, dtype=np.int32))
    del ann["source_frame_inds"]
    write_pkl(tmp_path / "y.pkl", [ann])
    again = pickle.loads(parquet_to_pkl(pkl_to_parquet(tmp_path / "y.pkl", tmp_path / "ds3"),
                                        tmp_path / "y2.pkl").read_bytes())["annotations"][0]
    assert_identical(ann, again)


def test_what_a_pkl_round_trip_changes(tmp_path):
    """The documented exceptions to an identical pkl -> parquet -> pkl: float64 keypoints come back float32 (the
    store's dtype, values rounded), numpy-int labels / total_frames as int, list shapes as tuples."""
    good = make_clips(1)[0].to_annotation()
    ann = dict(good, keypoint=good["keypoint"].astype(np.float64) + 1e-9, label=np.int64(1),
               total_frames=np.int64(20), img_shape=[720, 1280])
    write_pkl(tmp_path / "f64.pkl", [ann])
    back = pickle.loads(parquet_to_pkl(pkl_to_parquet(tmp_path / "f64.pkl", tmp_path / "ds"),
                                       tmp_path / "b.pkl").read_bytes())["annotations"][0]
    assert back["keypoint"].dtype == np.float32
    np.testing.assert_array_equal(back["keypoint"], ann["keypoint"].astype(np.float32))
    assert type(back["label"]) is int and type(back["total_frames"]) is int and back["img_shape"] == (720, 1280)
    rest = {k for k in ann if k not in ("keypoint", "label", "total_frames", "img_shape")}
    for k in rest:
        assert_identical(ann[k], back[k], k)
    import recognizer_core.skeleton.mmaction_pkl as mod
    assert "lossless both ways" not in mod.__doc__ and "float64" in mod.__doc__


def test_annotation_without_img_shape_is_a_1080p_frame_like_mmaction2(tmp_path, caplog):
    """mmaction2's PreNormalize2D reads `results.get('img_shape', (1080, 1920))`: a pkl without img_shape trains
    there. It loads here with that frame (and a warning), the features equal a 1080x1920 clip's, and the key stays
    absent when the clip is written back (it was refused with an error line before)."""
    from recognizer_core.skeleton.transforms import PipelineConfig, prepare_batch
    good = make_clips(2)
    anns = [c.to_annotation() for c in good]
    for ann in anns:
        ann["keypoint"] = ann["keypoint"] * 15  # pixels of a 1080p frame
        del ann["img_shape"]
    with caplog.at_level(logging.WARNING):
        clips = read_mmaction_pkl(write_pkl(tmp_path / "noshape.pkl", anns))
    assert [c.img_shape for c in clips] == [(1080, 1920)] * 2
    assert "noshape.pkl: 2 of 2 annotation(s) have no 'img_shape'" in caplog.text
    cfg = PipelineConfig(feats=["j"], clip_len=20)
    as_1080 = [dict(a, img_shape=(1080, 1920)) for a in anns]
    for batch in (clips, anns):  # clips loaded from the pkl, and the annotation dicts themselves
        np.testing.assert_array_equal(prepare_batch(batch, cfg, train=False)[0],
                                      prepare_batch(as_1080, cfg, train=False)[0])
    ds = pkl_to_parquet(tmp_path / "noshape.pkl", tmp_path / "ds")
    back = pickle.loads(parquet_to_pkl(ds, tmp_path / "back.pkl").read_bytes())["annotations"]
    for ann, again in zip(anns, back):
        assert_identical(ann, again)
