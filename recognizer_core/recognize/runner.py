"""Recognize on skeletons: whole-video clips -> windows -> batched test-mode pipeline + model -> events.

Pure logic (no Ray): the job script, the Ray Data batch mode and the stream mode all call `recognize_clip`.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Literal, Sequence

import numpy as np
from pydantic import Field

from recognizer_core.config import StrictModel
from recognizer_core.recognize.events import Event, detect_events
from recognizer_core.recognize.spec import ClassThreshold, ModelSpec
from recognizer_core.recognize.windows import Window, video_windows
from recognizer_core.skeleton.clip import SkeletonClip

log = logging.getLogger(__name__)


class RecognizeConfig(StrictModel):
    """Settings of rayjobs/recognize.py that are not the model's (those come from the model)."""

    stride_s: float = Field(0.5, gt=0, description="seconds between window starts")
    window_mode: Literal["auto", "scene", "track", "both"] = Field(
        "auto", description="auto = the model's (scene for interactions, track for per-person classes, both for "
                            "a model with both kinds)")
    track_classes: list[str] | None = Field(None, description="per-person classes for window_mode both "
                                                              "(default: the model's)")
    window_s: float | None = Field(None, gt=0, description="override the model's window length (seconds)")
    # CPU, STGCN++ base 64: batch 4-8 ran 1.5-2x faster than 32-64 (activations leave the cache); a GPU wants more
    batch_size: int = Field(8, ge=1, description="windows per model call")
    merge_gap_s: float = Field(1.0, ge=0, description="events of one class closer than this are merged")
    thresholds: dict[str, float] = Field(default_factory=dict, description="class name -> on threshold "
                                                                         "(overrides the model's)")
    hysteresis: float | None = Field(None, ge=0, le=1, description="off = on - hysteresis (default: the model's)")
    min_duration_s: float | None = Field(None, ge=0, description="drop shorter events (default: the model's)")
    calibrate_precision: float | None = Field(
        None, gt=0, le=1, description="set thresholds to the lowest reaching this precision on the validation "
                                      "split of the model's training data (run folders; exports store theirs)")
    timeline: bool = Field(True, description="write a timeline PNG per video")
    overlay: bool = Field(False, description="write an overlay mp4 per video (video input only)")


def effective_spec(spec: ModelSpec, cfg: RecognizeConfig) -> ModelSpec:
    """The model's spec with the user's overrides (thresholds, window); unknown class names are an error."""
    bad = [n for n in cfg.thresholds if n not in spec.label_names]
    if bad:
        raise ValueError(f"thresholds: unknown class(es) {bad}; the model's classes are {spec.label_names}")
    th = {}
    for c in spec.event_classes:
        name = spec.label_names[c]
        t = spec.threshold(c).model_copy()
        if name in cfg.thresholds:
            t.on, t.source = float(cfg.thresholds[name]), "config"
        if cfg.hysteresis is not None:
            t.off = max(0.0, t.on - cfg.hysteresis)
        if cfg.min_duration_s is not None:
            t.min_duration_s = cfg.min_duration_s
        th[name] = ClassThreshold(**t.model_dump())
    update: dict = {"thresholds": th}
    if cfg.window_mode != "auto":
        update["window_mode"] = cfg.window_mode
    if cfg.track_classes is not None:
        update["track_classes"] = list(cfg.track_classes)
    if cfg.window_s:
        update["window_frames"] = max(1, int(round(cfg.window_s * spec.fps)))
    return ModelSpec.model_validate({**spec.model_dump(), **update})  # validated: unknown class names fail


@dataclass
class VideoResult:
    video: str
    windows: list[Window]
    probs: np.ndarray           # (num_windows, K)
    events: list[Event]
    seconds: float = 0.0


def make_windows_for(clip: SkeletonClip, spec: ModelSpec, stride_s: float, cover_end: bool = True) -> list[Window]:
    return video_windows(clip, fps=spec.fps, window_frames=spec.window_frames, num_person=spec.pipeline.num_person,
                         mode=spec.window_mode, stride_s=stride_s, cover_end=cover_end)


def score_windows(recognizer, windows: Sequence[Window], batch_size: int = 64) -> np.ndarray:
    """(num_windows, K) class probabilities, the model run on batches of windows."""
    k = len(recognizer.spec.label_names)
    out = np.zeros((len(windows), k), np.float32)
    for i in range(0, len(windows), batch_size):
        chunk = [w.clip for w in windows[i:i + batch_size]]
        out[i:i + len(chunk)] = recognizer.predict(recognizer.prepare(chunk))
    return out


def recognize_clip(recognizer, clip: SkeletonClip, spec: ModelSpec, cfg: RecognizeConfig) -> VideoResult:
    import time

    t0 = time.perf_counter()
    windows = make_windows_for(clip, spec, cfg.stride_s)
    probs = score_windows(recognizer, windows, cfg.batch_size)
    events = detect_events(windows, probs, spec, cfg.merge_gap_s)
    return VideoResult(clip.source_video or clip.clip_id, windows, probs, events, time.perf_counter() - t0)


def _current_clip_files(folder: Path) -> list[Path]:
    """The clip files of an extraction's `clips/` folder that hold a current video, as build_dataset takes them:
    an edited video's earlier version, a moved or deleted video's old file, a video whose new version failed
    stay on disk but are not scored. Any other folder: its Parquet files."""
    from recognizer_core.extract.manifest import _FILES, DONE, CLIPS_DIR, ExtractionManifest

    root = folder.parent
    if folder.name != CLIPS_DIR or not (root / _FILES[DONE]).is_file():
        return sorted(folder.glob("*.parquet"))
    records, stale = ExtractionManifest(str(root)).current_done()
    if stale:
        log.info("%s: %d clip file(s) left out: earlier versions of edited videos or videos no longer listed",
                 root, stale)
    return sorted(root / r["output"] for r in records)


def iter_skeleton_clips(path: str | Path) -> Iterator[SkeletonClip]:
    """Whole-video clips from a skeleton Parquet input: one file of extract_poses.py, its `clips/` folder or
    its output folder, or a skeleton dataset folder (every row a clip)."""
    from recognizer_core.skeleton.store import SkeletonDataset

    path = Path(path)
    if path.is_dir() and (path / "clips").is_dir():
        path = path / "clips"
    files = [path] if path.is_file() else _current_clip_files(path)
    if not files:
        raise FileNotFoundError(f"{path}: no skeleton Parquet file(s)")
    if path.is_dir() and (path / "_dataset.json").exists():
        # A dataset's rows are windows of source videos, several per video: each is recognized and named on its
        # own (its clip id, `<video id>@<start frame>`), its times still the source video's seconds.
        for clip in SkeletonDataset(path).iter_clips():
            clip.source_video = clip.clip_id
            yield clip
        return
    import pyarrow.parquet as pq

    from recognizer_core.skeleton.store_rows import clips_from_batch

    for f in files:
        try:
            table = pq.read_table(f)
        except Exception as err:  # noqa: BLE001 - name the file
            raise ValueError(f"{f}: not a skeleton Parquet file ({err})") from None
        for clip in clips_from_batch(table, copy=True):
            clip.source_video = clip.source_video or str(f)
            yield clip
