"""One skeleton clip: the record every stage shares (extraction writes it, training reads it, pkl maps it).

Coordinates are pixels in the frame of `img_shape` (H, W), like mmaction2's PoseDataset annotations:
`keypoint` float32 (M persons, T frames, V joints, 2), `keypoint_score` float32 (M, T, V). A missing joint
has score 0 (and, by convention, coordinates 0).
"""
from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from typing import Any, Literal, Sequence

import numpy as np


class SkeletonDataError(ValueError):
    """Skeleton data that cannot be used; the message names the file/clip and the field."""


NanPolicy = Literal["reject", "zero"]

# Joints may lie outside the frame (a pose model extrapolates limbs cut by the border), but not by more than
# this many image sizes on any side: beyond that a coordinate is garbage (1e30 from a broken writer) and
# would reach the model as huge joint/bone features. Treated like NaN (rejected, or zeroed with 'zero').
COORD_MARGIN = 1.0


def far_outside(keypoint: np.ndarray, img_shape: tuple[int, int], margin: float = COORD_MARGIN) -> np.ndarray:
    """Bool mask (..., V, 2) of finite coordinates more than `margin` image sizes outside (H, W)."""
    h, w = img_shape
    size = np.array([w, h], dtype=np.float64)
    with np.errstate(invalid="ignore"):
        return np.isfinite(keypoint) & ((keypoint < -margin * size) | (keypoint > (1 + margin) * size))


def values_ok(keypoint: np.ndarray, keypoint_score: np.ndarray, img_shape: tuple[int, int],
              margin: float = COORD_MARGIN) -> bool:
    """True when every score is finite and every coordinate finite and at most `margin` image sizes outside (H, W):
    a few reductions, where the masks (isfinite, far_outside) cost several times that. Every clip is
    validated at every read, so this is a training loader's cost per clip. False may be a false alarm (a sum of
    finite scores that overflows): the caller then builds the masks, which decide."""
    if keypoint.size == 0:
        return True
    h, w = img_shape
    if not np.isfinite(keypoint_score.sum(dtype=np.float64)):
        return False
    # Compared as Python floats (float64), as far_outside compares. NaN makes a min and a max NaN, which no
    # comparison holds for. First the whole array against the shorter side's bounds (inside both axes' bounds;
    # contiguous reductions), then, where that fails, each axis against its own.
    lo, hi, short = float(keypoint.min()), float(keypoint.max()), min(h, w)
    if lo >= -margin * short and hi <= (1 + margin) * short:
        return True
    x, y = keypoint[..., 0], keypoint[..., 1]
    return (float(x.min()) >= -margin * w and float(y.min()) >= -margin * h and float(x.max()) <= (1 + margin) * w
            and float(y.max()) <= (1 + margin) * h)


# mmaction2 PoseDataset keys that map onto SkeletonClip fields; every other key is kept in `extra`.
_MMACTION_KEYS = ("frame_dir", "label", "img_shape", "original_shape", "total_frames", "keypoint",
                  "keypoint_score")
# Our own per-clip metadata, written into annotation dicts only where set. label_name and split are not:
# mmaction2 keeps class names in a label-map file and splits in the pkl's `split` mapping.
_META_KEYS = ("source_video", "fps", "track_ids", "frame_inds")
# The annotation key of each: `frame_inds` means something else in mmaction2 (PoseDecode indexes keypoint's T axis
# with it), so the source video's frame numbers travel under their own name; an annotation's `frame_inds` stays in
# `extra`, round-tripped as it came.
_ANN_KEY = {"frame_inds": "source_frame_inds"}
# extra key remembering non-float32 keypoint dtypes of a pkl (pyskl stores float16) for lossless export.
DTYPE_KEY = "_mmaction_dtypes"
# An annotation without `img_shape` is normalised by mmaction2's PreNormalize2D as a 1080x1920 frame (its default
# `img_shape` argument); we take the same frame and mark the clip, so that export leaves the key out again.
MMACTION_DEFAULT_IMG_SHAPE = (1080, 1920)
SHAPE_ASSUMED_KEY = "_mmaction_img_shape_assumed"


def _shape2(value: Any, what: str, source: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in value)
    except (TypeError, ValueError):
        raise SkeletonDataError(f"{source}: {what} must be (H, W), got {value!r}") from None
    if h <= 0 or w <= 0:
        raise SkeletonDataError(f"{source}: {what} must be positive (H, W), got {value!r}")
    return h, w


@dataclass(eq=False)
class SkeletonClip:
    clip_id: str
    label: int
    keypoint: np.ndarray  # float32 (M, T, V, 2), pixels
    keypoint_score: np.ndarray  # float32 (M, T, V)
    img_shape: tuple[int, int]  # (H, W)
    total_frames: int  # == T
    label_name: str = ""
    split: str = ""
    source_video: str = ""
    fps: float = 0.0
    track_ids: np.ndarray | None = None  # int32 (M,)
    frame_inds: np.ndarray | None = None  # int32 (T,): frame numbers in the source video
    original_shape: tuple[int, int] | None = None
    extra: dict = field(default_factory=dict)  # other mmaction2 annotation keys, round-tripped

    @property
    def num_person(self) -> int:
        return int(self.keypoint.shape[0])

    @property
    def num_frames(self) -> int:
        return int(self.keypoint.shape[1])

    @property
    def num_joints(self) -> int:
        return int(self.keypoint.shape[2])

    def validate(self, source: str = "", nan_policy: NanPolicy = "reject", num_classes: int | None = None,
                 num_joints: int | None = 17) -> "SkeletonClip":
        """Check shapes, dtypes, values and label; normalise dtypes in place; return self.

        nan_policy='reject' raises on NaN/inf and on coordinates more than COORD_MARGIN image sizes outside
        img_shape; 'zero' sets those joints' coordinates and score to 0.
        num_joints=None accepts any V (NTU-25, hand-21 files). Errors name `source`, the clip and the field.
        """
        where = f"{source}: clip {self.clip_id!r}" if source else f"clip {self.clip_id!r}"
        if not isinstance(self.clip_id, str) or not self.clip_id:
            raise SkeletonDataError(f"{source or '<clip>'}: clip_id must be a non-empty string, got {self.clip_id!r}")
        kp, sc = self.keypoint, self.keypoint_score
        if not isinstance(kp, np.ndarray) or not np.issubdtype(kp.dtype, np.number):
            raise SkeletonDataError(f"{where}: keypoint must be a numeric numpy array, got {type(kp).__name__}")
        if kp.ndim == 4 and kp.shape[-1] == 3:
            raise SkeletonDataError(f"{where}: keypoint has shape {kp.shape}: 3-D coordinates (e.g. NTU 3D) are "
                                    "not supported, expected 2-D pixels (M, T, V, 2)")
        if kp.ndim != 4 or kp.shape[-1] != 2:
            raise SkeletonDataError(f"{where}: keypoint must have shape (M, T, V, 2), got {kp.shape}")
        if sc is None:
            raise SkeletonDataError(f"{where}: keypoint_score is missing (2-D keypoints need a score per joint)")
        if not isinstance(sc, np.ndarray) or not np.issubdtype(sc.dtype, np.number):
            raise SkeletonDataError(f"{where}: keypoint_score must be a numeric numpy array, got {type(sc).__name__}")
        if sc.ndim != 3:
            raise SkeletonDataError(f"{where}: keypoint_score must have shape (M, T, V), got {sc.shape}")
        if sc.shape != kp.shape[:3]:
            raise SkeletonDataError(f"{where}: keypoint_score shape {sc.shape} does not match keypoint (M, T, V) = "
                                    f"{kp.shape[:3]} (persons/frames/joints mismatch)")
        m, t, v = kp.shape[:3]
        if t == 0:
            raise SkeletonDataError(f"{where}: keypoint has 0 frames")
        if num_joints is not None and v != num_joints:
            raise SkeletonDataError(f"{where}: keypoint has {v} joints, expected {num_joints}")
        if int(self.total_frames) != t:
            raise SkeletonDataError(f"{where}: total_frames={self.total_frames} but keypoint has T={t} frames")
        self.total_frames = int(self.total_frames)
        self.img_shape = _shape2(self.img_shape, "img_shape", where)
        if self.original_shape is not None:
            self.original_shape = _shape2(self.original_shape, "original_shape", where)
        if isinstance(self.label, (bool, np.bool_)) or not isinstance(self.label, (int, np.integer)):
            raise SkeletonDataError(f"{where}: label must be an int, got {self.label!r}")
        self.label = int(self.label)
        if self.label < 0 or (num_classes is not None and self.label >= num_classes):
            bound = f"[0, {num_classes})" if num_classes is not None else ">= 0"
            raise SkeletonDataError(f"{where}: label={self.label} out of range {bound}")
        for name, arr, n in (("track_ids", self.track_ids, m), ("frame_inds", self.frame_inds, t)):
            if arr is None:
                continue
            arr = np.asarray(arr)
            if arr.shape != (n,) or not np.issubdtype(arr.dtype, np.integer):
                raise SkeletonDataError(f"{where}: {name} must be integers of shape ({n},), "
                                        f"got {arr.dtype} {arr.shape}")
            setattr(self, name, arr.astype(np.int32, copy=False))
        kp = kp.astype(np.float32, copy=False)
        sc = sc.astype(np.float32, copy=False)
        if not values_ok(kp, sc, self.img_shape):
            bad_xy = ~np.isfinite(kp)
            bad_sc = ~np.isfinite(sc)
            far = far_outside(kp, self.img_shape)
            if bad_xy.any() or bad_sc.any() or far.any():
                if nan_policy != "zero":
                    for field_, mask, what in (("keypoint", bad_xy, "NaN/inf values"), ("keypoint_score", bad_sc,
                                               "NaN/inf values"), ("keypoint", far, "coordinates far outside "
                                               f"img_shape (H, W) = {self.img_shape}")):
                        if mask.any():
                            bad = tuple(np.argwhere(mask)[0].tolist())
                            value = f" ({float(kp[bad]):g})" if mask is far else ""
                            raise SkeletonDataError(f"{where}: {field_} has {what} (first at index {bad}{value}); "
                                                    "use nan_policy='zero' to zero those joints")
                bad_joint = bad_xy.any(-1) | bad_sc | far.any(-1)
                kp, sc = kp.copy(), sc.copy()
                kp[bad_joint] = 0.0
                sc[bad_joint] = 0.0
        self.keypoint, self.keypoint_score = kp, sc
        self.fps = float(self.fps)
        if not isinstance(self.extra, dict):
            raise SkeletonDataError(f"{where}: extra must be a dict, got {type(self.extra).__name__}")
        return self

    def to_annotation(self) -> dict:
        """The mmaction2 PoseDataset annotation dict (frame_dir = clip_id) plus extra keys.

        Our metadata (source_video, fps, track_ids, and frame_inds as `source_frame_inds`) is added only where
        set; mmaction2 passes unknown keys through its pipeline untouched. (Written as `frame_inds`, the source
        frame numbers were read by PoseDecode as indices into the T frames: out of bounds after frame T.)
        """
        extra = dict(self.extra)
        dtypes = extra.pop(DTYPE_KEY, {})
        ann = {"frame_dir": self.clip_id, "label": int(self.label)}
        if not extra.pop(SHAPE_ASSUMED_KEY, False):
            ann["img_shape"] = tuple(self.img_shape)
        if self.original_shape is not None:
            ann["original_shape"] = tuple(self.original_shape)
        ann["total_frames"] = int(self.total_frames)
        ann["keypoint"] = self.keypoint.astype(dtypes.get("keypoint", np.float32), copy=True)
        ann["keypoint_score"] = self.keypoint_score.astype(dtypes.get("keypoint_score", np.float32), copy=True)
        for key in _META_KEYS:
            value = getattr(self, key)
            if value is None or (isinstance(value, (str, float)) and not value):
                continue
            ann[_ANN_KEY.get(key, key)] = value.copy() if isinstance(value, np.ndarray) else value
        ann.update(extra)
        return ann

    @classmethod
    def from_annotation(cls, ann: dict, split: str = "", label_names: Sequence[str] | None = None,
                        source: str = "<annotation>", nan_policy: NanPolicy = "reject",
                        num_joints: int | None = None) -> "SkeletonClip":
        """Build a validated clip from an mmaction2 PoseDataset annotation dict (inverse of to_annotation)."""
        if not isinstance(ann, dict):
            raise SkeletonDataError(f"{source}: annotation must be a dict, got {type(ann).__name__}")
        name = ann.get("frame_dir", "<no frame_dir>")
        where = f"{source}: clip {name!r}"
        for key in ("frame_dir", "label", "keypoint", "total_frames"):
            if key not in ann:
                raise SkeletonDataError(f"{where}: annotation has no {key!r}")
        if "keypoint_score" not in ann:
            kp = np.asarray(ann["keypoint"])
            kind = "3-D (e.g. NTU 3D) " if kp.shape[-1:] == (3,) else ""
            raise SkeletonDataError(f"{where}: annotation has no 'keypoint_score' ({kind}keypoint shape "
                                    f"{kp.shape}); only 2-D keypoints with scores are supported")
        extra = {k: v for k, v in ann.items() if k not in _MMACTION_KEYS}
        meta: dict[str, Any] = {}
        # A metadata key becomes a field only if to_annotation would write it back identically.
        for key, ok in (("source_video", lambda x: isinstance(x, str) and x),
                        ("fps", lambda x: type(x) is float and x),
                        ("track_ids", lambda x: isinstance(x, np.ndarray) and x.dtype == np.int32),
                        ("frame_inds", lambda x: isinstance(x, np.ndarray) and x.dtype == np.int32)):
            if _ANN_KEY.get(key, key) in extra and ok(extra[_ANN_KEY.get(key, key)]):
                meta[key] = extra.pop(_ANN_KEY.get(key, key))
        dtypes = {}
        kp, sc = ann["keypoint"], ann["keypoint_score"]
        for key, arr in (("keypoint", kp), ("keypoint_score", sc)):
            if isinstance(arr, np.ndarray) and arr.dtype != np.float32 and np.issubdtype(arr.dtype, np.floating):
                if np.dtype(arr.dtype).itemsize <= 4:  # float16 -> float32 -> float16 is exact
                    dtypes[key] = arr.dtype.str
        if dtypes:
            extra[DTYPE_KEY] = dtypes
        if "img_shape" not in ann:
            extra[SHAPE_ASSUMED_KEY] = True
        label = ann["label"]
        # A 'label_name' key stays in extra (so it round-trips) and also names the class.
        label_name = extra.get("label_name") if isinstance(extra.get("label_name"), str) else ""
        if label_names is not None and isinstance(label, (int, np.integer)) and 0 <= label < len(label_names):
            if label_name and label_name != label_names[int(label)]:
                raise SkeletonDataError(f"{where}: label_name {label_name!r} does not match label {label} "
                                        f"({label_names[int(label)]!r})")
            label_name = label_names[int(label)]
        meta["label_name"] = label_name
        clip = cls(clip_id=str(name), label=label, keypoint=np.asarray(kp), keypoint_score=np.asarray(sc),
                   img_shape=ann.get("img_shape", MMACTION_DEFAULT_IMG_SHAPE), total_frames=ann["total_frames"],
                   split=split,
                   original_shape=ann.get("original_shape"), extra=extra, **meta)
        return clip.validate(source, nan_policy=nan_policy,
                             num_classes=len(label_names) if label_names is not None else None,
                             num_joints=num_joints)


# ---- lossless JSON for `extra` (numpy arrays, tuples and numpy scalars keep their exact type) ----

def _encode(value: Any, path: str) -> Any:
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, (int, float)) and type(value) in (int, float):
        if isinstance(value, float) and not np.isfinite(value):
            return {"__float__": repr(value)}
        return value
    if isinstance(value, np.ndarray):
        if value.dtype.hasobject:
            raise SkeletonDataError(f"extra[{path}]: object arrays cannot be stored")
        arr = np.ascontiguousarray(value)
        return {"__ndarray__": base64.b64encode(arr.tobytes()).decode("ascii"), "dtype": arr.dtype.str,
                "shape": list(arr.shape)}
    if isinstance(value, np.generic):
        return {"__npscalar__": _encode(value.item(), path), "dtype": value.dtype.str}
    if isinstance(value, tuple):
        return {"__tuple__": [_encode(v, f"{path}[{i}]") for i, v in enumerate(value)]}
    if isinstance(value, list):
        return [_encode(v, f"{path}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            raise SkeletonDataError(f"extra[{path}]: dict keys must be strings to be stored")
        if any(k.startswith("__") for k in value):
            return {"__dict__": {k: _encode(v, f"{path}.{k}") for k, v in value.items()}}
        return {k: _encode(v, f"{path}.{k}") for k, v in value.items()}
    raise SkeletonDataError(f"extra[{path}]: values of type {type(value).__name__} cannot be stored "
                            "(supported: numbers, str, bool, None, list, tuple, dict, numpy arrays/scalars)")


def _decode(value: Any) -> Any:
    if isinstance(value, list):
        return [_decode(v) for v in value]
    if not isinstance(value, dict):
        return value
    if "__ndarray__" in value:
        raw = base64.b64decode(value["__ndarray__"])
        return np.frombuffer(raw, dtype=np.dtype(value["dtype"])).reshape(value["shape"]).copy()
    if "__npscalar__" in value:
        return np.dtype(value["dtype"]).type(_decode(value["__npscalar__"]))
    if "__tuple__" in value:
        return tuple(_decode(v) for v in value["__tuple__"])
    if "__float__" in value:
        return float(value["__float__"])
    if "__dict__" in value:
        return {k: _decode(v) for k, v in value["__dict__"].items()}
    return {k: _decode(v) for k, v in value.items()}


def encode_extra(extra: dict, clip_id: str = "") -> str:
    """JSON text for a clip's `extra` dict; raises SkeletonDataError naming the clip and key it cannot store."""
    if not extra:
        return ""
    try:
        return json.dumps({k: _encode(v, repr(k)) for k, v in extra.items()}, separators=(",", ":"))
    except SkeletonDataError as err:
        raise SkeletonDataError(f"clip {clip_id!r}: {err}") from None


def decode_extra(text: str | None) -> dict:
    if not text:
        return {}
    value = json.loads(text)
    if not isinstance(value, dict):   # a file another tool wrote: one clear error, not an AttributeError
        raise SkeletonDataError(f"column 'extra' must hold a JSON object, got {type(value).__name__}")
    return {k: _decode(v) for k, v in value.items()}
