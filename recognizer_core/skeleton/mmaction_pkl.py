"""mmaction2 PoseDataset pickles <-> the Parquet skeleton store.

pkl -> Parquet -> pkl gives back the same annotations (keys and values), splits, layout and top-level keys, not
always the same types: `label` / `total_frames` come back as int (numpy ints were), `img_shape` /
`original_shape` as tuples (lists were), and float64 `keypoint` / `keypoint_score` as float32, values rounded to
float32 (the store holds float32; float16 and float32 come back exact, in their own dtype). Other keys keep their
exact types. Parquet -> pkl -> Parquet keeps every clip field. The source video's frame numbers are written as
`source_frame_inds` (mmaction2's PoseDecode reads `frame_inds` as indices into the clip's frames); an annotation's
own `frame_inds` is kept as it came.

The pickle layout (mmaction2 1.x / PYSKL): `{'split': {name: [frame_dir, ...]}, 'annotations': [dict(
frame_dir, label, img_shape, original_shape, total_frames, keypoint (M,T,V,2), keypoint_score (M,T,V),
...)]}`; older files are a bare list of annotations. A clip may be listed in several splits (NTU's xsub_train
and xview_train): the whole split mapping is kept verbatim in the store's `_dataset.json`, and each clip's
`split` field holds the first split that lists it.

Security: unpickling runs code from the file. Only read pickles you made or trust; Parquet is the format we
exchange.
"""
from __future__ import annotations

import logging
import os
import pickle
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Sequence

from tqdm.auto import tqdm

from .clip import (MMACTION_DEFAULT_IMG_SHAPE, SHAPE_ASSUMED_KEY, NanPolicy, SkeletonClip, SkeletonDataError,
                   decode_extra, encode_extra)
from .store import SkeletonDataset, write_dataset

log = logging.getLogger(__name__)

_META_KEY = "mmaction_pkl"  # dataset metadata: pickle layout and unknown top-level keys


@dataclass
class PosePickle:
    """The contents of an mmaction2 pose pickle: clips (in annotation order), the split mapping, names."""

    clips: list[SkeletonClip]
    split_map: dict[str, list[str]] | None = None
    label_names: list[str] | None = None
    layout: str = "dict"  # 'dict' ({'split', 'annotations'}) or 'list' (bare list of annotations)
    other: dict = field(default_factory=dict)  # other top-level keys of a dict pickle

    def __iter__(self) -> Iterator[SkeletonClip]:
        return iter(self.clips)

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, i: int) -> SkeletonClip:
        return self.clips[i]


def read_label_map(path: str | Path) -> list[str]:
    """An mmaction2 label-map text file: one class name per line, line i = label i."""
    return [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]


def read_mmaction_pkl(path: str | Path, label_names: Sequence[str] | str | Path | None = None,
                      nan_policy: NanPolicy = "reject", num_joints: int | None = None) -> PosePickle:
    """Read an mmaction2 PoseDataset pickle into validated SkeletonClips. TRUSTED FILES ONLY: unpickling
    runs arbitrary code from the file (we log a warning on every call). label_names: a list or a label-map
    file. Errors name the file, the clip (frame_dir) and the field."""
    path = Path(path)
    log.warning("loading pickle %s: pickle runs code from the file, so only read files you trust "
                "(exchange skeleton data as Parquet instead)", path)
    if isinstance(label_names, (str, Path)):
        label_names = read_label_map(label_names)
    label_names = list(label_names) if label_names is not None else None
    try:
        with path.open("rb") as f:
            data = pickle.load(f)  # noqa: S301 - documented as trusted-only
    except FileNotFoundError:
        raise SkeletonDataError(f"{path}: file not found") from None
    except (pickle.UnpicklingError, EOFError, ValueError) as err:
        raise SkeletonDataError(f"{path}: not a readable pickle ({err})") from None
    if isinstance(data, list):
        layout, anns, split_map, other = "list", data, None, {}
    elif isinstance(data, dict) and "annotations" in data:
        layout, anns = "dict", data["annotations"]
        split_map = data.get("split")
        other = {k: v for k, v in data.items() if k not in ("split", "annotations")}
        if split_map is not None and (not isinstance(split_map, dict) or
                                      not all(isinstance(v, (list, tuple)) for v in split_map.values())):
            raise SkeletonDataError(f"{path}: 'split' must map split names to lists of frame_dir")
    else:
        keys = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise SkeletonDataError(f"{path}: not an mmaction2 pose pickle: expected a dict with 'annotations' "
                                f"(and 'split') or a list of annotations, got {keys}")
    first_split: dict[str, str] = {}
    for name, ids in (split_map or {}).items():
        for frame_dir in ids:
            first_split.setdefault(frame_dir, name)
    clips = []
    # tqdm shows itself only on a terminal (disable=None), so logs and tests stay quiet.
    for i, ann in enumerate(tqdm(anns, desc=f"reading {path.name}", unit="clip", disable=None)):
        if not isinstance(ann, dict):
            raise SkeletonDataError(f"{path}: annotations[{i}] is a {type(ann).__name__}, not a dict")
        clips.append(SkeletonClip.from_annotation(
            ann, split=first_split.get(ann.get("frame_dir"), ""), label_names=label_names, source=str(path),
            nan_policy=nan_policy, num_joints=num_joints))
    _warn_unannotated(path, split_map, {c.clip_id for c in clips})
    assumed = [c.clip_id for c in clips if c.extra.get(SHAPE_ASSUMED_KEY)]
    if assumed:
        log.warning("%s: %d of %d annotation(s) have no 'img_shape' (first: %r); taken as %dx%d pixels (H x W), "
                    "as mmaction2's PreNormalize2D does", path, len(assumed), len(clips), assumed[0],
                    *MMACTION_DEFAULT_IMG_SHAPE)
    split_map = {str(k): list(v) for k, v in split_map.items()} if split_map is not None else None
    return PosePickle(clips, split_map, label_names, layout, other)


def _warn_unannotated(path: Path, split_map: dict | None, clip_ids: set[str]) -> list[str]:
    """Warn once, with the count and the first names, about split entries that have no annotation (mmaction2
    would fail on them at training time, far from the file); returns those names."""
    missing = [str(name) for ids in (split_map or {}).values() for name in ids if str(name) not in clip_ids]
    missing = list(dict.fromkeys(missing))
    if missing:
        first = ", ".join(repr(n) for n in missing[:5]) + (", ..." if len(missing) > 5 else "")
        log.warning("%s: 'split' lists %d clip(s) that have no annotation (first: %s); they are ignored",
                    path, len(missing), first)
    return missing


def write_mmaction_pkl(clips: Iterable[SkeletonClip], path: str | Path,
                       split_map: dict[str, list[str]] | None = None, layout: str = "dict",
                       other: dict | None = None, label_names: Sequence[str] | None = None) -> Path:
    """Write clips as an mmaction2 PoseDataset pickle (atomic: temp file + rename).

    split_map defaults to {clip.split: [clip_id, ...]} in clip order. With label_names, an mmaction2
    label-map file `<name>.label_map.txt` (one class per line) is written beside the pickle. `clips` is consumed
    once and no clip is kept: each becomes its annotation (a copy of its arrays) as it comes, so a streamed
    dataset's peak memory is the annotations plus one batch, not twice the keypoints.
    """
    path = Path(path)
    if layout not in ("dict", "list"):
        raise SkeletonDataError(f"{path}: layout must be 'dict' or 'list', got {layout!r}")
    anns: list[dict] = []
    default_map: dict[str, list[str]] = {}  # the same str objects as the annotations' frame_dir, as before
    for c in clips:
        anns.append(c.to_annotation())
        if c.split:
            default_map.setdefault(c.split, []).append(c.clip_id)
    if layout == "list":
        data: object = anns
    else:
        data = {"split": split_map if split_map is not None else default_map, "annotations": anns, **(other or {})}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        with tmp.open("wb") as f:
            pickle.dump(data, f, protocol=pickle.HIGHEST_PROTOCOL)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    if label_names:
        label_map = path.with_name(path.stem + ".label_map.txt")
        label_map.write_text("".join(f"{n}\n" for n in label_names))
    return path


def pkl_to_parquet(pkl_path: str | Path, out_dir: str | Path, label_names: Sequence[str] | str | Path | None = None,
                   rows_per_file: int = 1024, overwrite: bool = False, nan_policy: NanPolicy = "reject",
                   num_joints: int | None = None) -> Path:
    """Convert a (trusted) mmaction2 pose pickle into a Parquet skeleton dataset; returns out_dir."""
    pose = read_mmaction_pkl(pkl_path, label_names, nan_policy=nan_policy, num_joints=num_joints)
    meta = {"layout": pose.layout, "source": str(pkl_path)}
    if pose.other:
        meta["other"] = encode_extra(pose.other, "<top level>")
    clips = tqdm(pose.clips, desc=f"writing {Path(out_dir).name}", unit="clip", disable=None)
    return write_dataset(clips, out_dir, pose.label_names, rows_per_file=rows_per_file,
                         split_map=pose.split_map, metadata={_META_KEY: meta}, overwrite=overwrite,
                         nan_policy=nan_policy, num_joints=num_joints)


def parquet_to_pkl(dataset_dir: str | Path, pkl_path: str | Path,
                   split: str | Sequence[str] | None = None, layout: str | None = None) -> Path:
    """Write a Parquet skeleton dataset (or some of its splits) as an mmaction2 pose pickle.

    The split mapping, pickle layout and extra top-level keys saved by pkl_to_parquet are restored, so
    pkl -> parquet -> pkl gives the same annotations and splits (with the type changes above). `layout`
    overrides the layout: 'list' is a bare list of annotations, what PoseDataset reads without `split=`.
    """
    ds = SkeletonDataset(dataset_dir)
    meta = ds.metadata.get(_META_KEY, {})
    split_map = ds.split_map
    if split_map is not None and split is not None:
        keep = [split] if isinstance(split, str) else list(split)
        split_map = {k: v for k, v in split_map.items() if k in keep}
    # streamed: holding every clip while their annotations were copied doubled the peak memory (13 GB for 6.5)
    return write_mmaction_pkl(ds.iter_clips(split), pkl_path, split_map=split_map,
                              layout=layout or meta.get("layout", "dict"), other=decode_extra(meta.get("other")),
                              label_names=ds.label_names or None)
