"""SkeletonClip validation, annotation mapping and the COCO-17 constants."""
from __future__ import annotations

import numpy as np
import pytest

from recognizer_core.skeleton.clip import DTYPE_KEY, SkeletonClip, SkeletonDataError, decode_extra, encode_extra
from recognizer_core.skeleton.coco import (BONES, FLIP_INDEX, FLIP_PAIRS, JOINT_NAMES, LEFT_JOINTS, NUM_JOINTS,
                                          RIGHT_JOINTS)


def make_clip(m=2, t=30, v=17, label=1, **kw) -> SkeletonClip:
    rng = np.random.default_rng(0)
    return SkeletonClip(clip_id=kw.pop("clip_id", "c1"), label=label,
                        keypoint=(rng.random((m, t, v, 2)) * 400).astype(np.float32),
                        keypoint_score=rng.random((m, t, v)).astype(np.float32), img_shape=(480, 640),
                        total_frames=t, **kw)


def test_coco_constants_match_mmaction2():
    assert NUM_JOINTS == len(JOINT_NAMES) == 17
    # mmaction2 1.2.0 JointToBone(dataset='coco').pairs
    assert BONES == ((0, 0), (1, 0), (2, 0), (3, 1), (4, 2), (5, 0), (6, 0), (7, 5), (8, 6), (9, 7), (10, 8),
                     (11, 0), (12, 0), (13, 11), (14, 12), (15, 13), (16, 14))
    assert [JOINT_NAMES[i] for i in LEFT_JOINTS] == [n.replace("right", "left") for n in
                                                       (JOINT_NAMES[i] for i in RIGHT_JOINTS)]
    assert all(JOINT_NAMES[l].startswith("left") and JOINT_NAMES[r].startswith("right") for l, r in FLIP_PAIRS)
    assert [FLIP_INDEX[FLIP_INDEX[v]] for v in range(17)] == list(range(17)) and FLIP_INDEX[5] == 6


def test_validate_normalises_dtypes_and_shapes():
    c = make_clip(track_ids=np.array([3, 7], dtype=np.int64), original_shape=[960, 1280])
    c.keypoint = c.keypoint.astype(np.float64)
    c.validate("f.parquet", num_classes=2)
    assert c.keypoint.dtype == np.float32 and c.track_ids.dtype == np.int32
    assert c.original_shape == (960, 1280) and c.img_shape == (480, 640)
    make_clip(v=25).validate(num_joints=None)  # NTU-25 layout is allowed when asked


@pytest.mark.parametrize("change, field", [
    (lambda c: setattr(c, "keypoint", c.keypoint[..., :1]), "keypoint must have shape (M, T, V, 2)"),
    (lambda c: setattr(c, "keypoint", np.zeros((2, 30, 17, 3), np.float32)), "3-D coordinates"),
    (lambda c: setattr(c, "keypoint_score", c.keypoint_score[..., None]), "keypoint_score must have shape"),
    (lambda c: setattr(c, "keypoint_score", c.keypoint_score[:1]), "persons/frames/joints mismatch"),
    (lambda c: setattr(c, "keypoint_score", c.keypoint_score[:, :10]), "persons/frames/joints mismatch"),
    (lambda c: setattr(c, "keypoint_score", None), "keypoint_score is missing"),
    (lambda c: setattr(c, "total_frames", 31), "total_frames=31"),
    (lambda c: setattr(c, "label", -1), "label=-1 out of range"),
    (lambda c: setattr(c, "label", 2), "label=2 out of range [0, 2)"),
    (lambda c: setattr(c, "label", "1"), "label must be an int"),
    (lambda c: setattr(c, "img_shape", (480,)), "img_shape must be (H, W)"),
    (lambda c: setattr(c, "track_ids", np.arange(3)), "track_ids must be integers of shape (2,)"),
    (lambda c: c.keypoint.__setitem__((1, 4, 3, 0), np.nan),
     "keypoint has NaN/inf values (first at index (1, 4, 3, 0))"),
    (lambda c: c.keypoint_score.__setitem__((0, 2, 1), np.inf), "keypoint_score has NaN/inf"),
])
def test_validate_errors_name_source_clip_and_field(change, field):
    c = make_clip(clip_id="clip_7")
    change(c)
    with pytest.raises(SkeletonDataError) as err:
        c.validate("data/part-00003.parquet", num_classes=2)
    msg = str(err.value)
    assert "data/part-00003.parquet" in msg and "'clip_7'" in msg and field in msg


def test_validate_wrong_joint_count():
    with pytest.raises(SkeletonDataError, match="has 25 joints, expected 17"):
        make_clip(v=25).validate("x")


def test_nan_policy_zero_clears_bad_joints():
    c = make_clip()
    c.keypoint[0, 3, 5, 1] = np.nan
    c.keypoint_score[1, 2, 7] = np.inf
    before = c.keypoint.copy()
    c.validate("x", nan_policy="zero")
    assert np.isfinite(c.keypoint).all() and np.isfinite(c.keypoint_score).all()
    assert (c.keypoint[0, 3, 5] == 0).all() and c.keypoint_score[0, 3, 5] == 0
    assert (c.keypoint[1, 2, 7] == 0).all() and c.keypoint_score[1, 2, 7] == 0
    untouched = np.ones(c.keypoint.shape[:3], bool)
    untouched[0, 3, 5] = untouched[1, 2, 7] = False
    np.testing.assert_array_equal(c.keypoint[untouched], before[untouched])


def test_annotation_round_trip_keeps_extra_and_dtypes():
    c = make_clip(source_video="s3://b/v.mp4", fps=25.0, track_ids=np.array([4, 9], np.int32),
                  frame_inds=np.arange(10, 40, dtype=np.int32), original_shape=(960, 1280),
                  extra={"box_score": np.ones((2, 30), np.float16), "modality": "Pose", "start_index": 0})
    ann = c.to_annotation()
    assert ann["frame_dir"] == "c1" and ann["img_shape"] == (480, 640) and ann["total_frames"] == 30
    assert ann["source_video"] == "s3://b/v.mp4" and ann["modality"] == "Pose" and "split" not in ann
    back = SkeletonClip.from_annotation(ann, label_names=["a", "b"])
    assert back.label_name == "b" and back.source_video == c.source_video and back.fps == 25.0
    np.testing.assert_array_equal(back.frame_inds, c.frame_inds)
    np.testing.assert_array_equal(back.keypoint, c.keypoint)
    assert back.extra.keys() == c.extra.keys()
    # pyskl-style float16 keypoints come back as float16
    ann16 = dict(ann, keypoint=ann["keypoint"].astype(np.float16))
    c16 = SkeletonClip.from_annotation(ann16)
    assert c16.keypoint.dtype == np.float32 and c16.extra[DTYPE_KEY] == {"keypoint": "<f2"}
    again = c16.to_annotation()
    assert again["keypoint"].dtype == np.float16 and DTYPE_KEY not in again
    np.testing.assert_array_equal(again["keypoint"], ann16["keypoint"])


def test_from_annotation_errors():
    ann = make_clip().to_annotation()
    with pytest.raises(SkeletonDataError, match=r"x.pkl: clip 'c1': annotation has no 'total_frames'"):
        SkeletonClip.from_annotation({k: v for k, v in ann.items() if k != "total_frames"}, source="x.pkl")
    ntu3d = {k: v for k, v in ann.items() if k != "keypoint_score"}
    ntu3d["keypoint"] = np.zeros((2, 30, 25, 3), np.float32)
    with pytest.raises(SkeletonDataError, match="no 'keypoint_score' \\(3-D"):
        SkeletonClip.from_annotation(ntu3d, source="ntu.pkl")
    with pytest.raises(SkeletonDataError, match="label_name 'x' does not match label 1"):
        SkeletonClip.from_annotation(dict(ann, label_name="x"), label_names=["a", "b"])


def test_extra_json_is_lossless():
    extra = {"a": (1, 2.5, "x"), "b": [np.int64(3), np.float32(0.5), None, True], "c": {"__d": 1, "e": (None,)},
             "arr": np.arange(6, dtype=np.int16).reshape(2, 3), "inf": float("inf")}
    back = decode_extra(encode_extra(extra))
    assert back["a"] == (1, 2.5, "x") and type(back["a"]) is tuple
    assert type(back["b"][0]) is np.int64 and type(back["b"][1]) is np.float32 and back["b"][2:] == [None, True]
    assert back["c"] == {"__d": 1, "e": (None,)} and back["inf"] == float("inf")
    assert back["arr"].dtype == np.int16 and back["arr"].shape == (2, 3)
    assert encode_extra({}) == "" and decode_extra("") == {}
    with pytest.raises(SkeletonDataError, match="clip 'k': extra\\['f'\\]: values of type function"):
        encode_extra({"f": lambda: 0}, "k")


def test_values_ok_agrees_with_the_masks_it_skips():
    # validate() builds the NaN/inf and far-outside masks only where values_ok says no: it must never say yes where
    # a mask has a hit (a no where they are clear only costs time)
    from recognizer_core.skeleton.clip import COORD_MARGIN, far_outside, values_ok

    rng = np.random.default_rng(0)
    h, w = 480, 640
    checked = {True: 0, False: 0}
    for k in range(400):
        kp = (rng.random((2, 8, 17, 2)) * [w, h]).astype(np.float32)
        sc = rng.random((2, 8, 17)).astype(np.float32)
        at = tuple(rng.integers(0, n) for n in (2, 8, 17))
        axis, size = int(rng.integers(0, 2)), (w, h)
        case = k % 8
        if case == 1:
            kp[at + (axis,)] = np.nan
        elif case == 2:
            kp[at + (axis,)] = -np.inf
        elif case == 3:
            sc[at] = np.nan
        elif case == 4:  # the smallest float32 past the bound, then the bound itself (inside)
            kp[at + (axis,)] = np.nextafter(np.float32((1 + COORD_MARGIN) * size[axis]), np.float32(np.inf))
        elif case == 5:
            kp[at + (axis,)] = np.float32((1 + COORD_MARGIN) * size[axis])
        elif case == 6:
            kp[at + (axis,)] = -COORD_MARGIN * size[axis] - 1
        elif case == 7:  # past the shorter side's bound (2h) but inside x's own (2w): the per-axis test decides
            kp[at + (0,)] = 1.9 * w
        masks_clear = (np.isfinite(kp).all() and np.isfinite(sc).all()
                       and not far_outside(kp, (h, w)).any())
        assert values_ok(kp, sc, (h, w)) == masks_clear, (case, at, axis)
        checked[masks_clear] += 1
    assert min(checked.values()) > 100
