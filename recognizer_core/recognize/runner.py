"""Recognize on skeletons: whole-video clips -> windows -> batched test-mode pipeline + model -> events.

Pure logic (no Ray): the job script, the Ray Data batch mode and the stream mode all call `recognize_clip`.
"""
from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Callable, Iterator, Literal, Sequence

import numpy as np
from annotated_types import Ge, Le
from pydantic import Field

from recognizer_core.config import StrictModel
from recognizer_core.names import spelled_as
from recognizer_core.recognize.events import Event, detect_events
from recognizer_core.recognize.spec import ClassThreshold, ModelSpec
from recognizer_core.recognize.windows import Window, iter_video_windows, resample
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
    event_span: Literal["centre", "shared"] = Field(
        "centre", description="an event's extent from its run of firing windows: centre = their centres +- half "
                              "a hop (actions about half a window or longer: fights); shared = what every firing "
                              "window shares, where narrower (actions much shorter than a window: falls)")
    shared_span_classes: list[str] = Field(
        default_factory=list, description="classes whose events take the shared span whatever event_span says "
                                          "(a model with fights and falls: [Falldown])")
    # bounded here, not only in the spec's ClassThreshold: a bad value is then a --set error naming
    # `thresholds.<Class>`, before the model loads
    thresholds: dict[str, Annotated[float, Ge(0), Le(1)]] = Field(
        default_factory=dict, description="class name -> on threshold in [0, 1] (overrides the model's)")
    hysteresis: float | None = Field(None, ge=0, le=1, description="off = on - hysteresis (default: the model's)")
    min_duration_s: float | None = Field(None, ge=0, description="drop events whose windows fired for less than this "
                                                                 "(default: the model's)")
    calibrate_precision: float | None = Field(
        None, gt=0, le=1, description="set thresholds to the lowest reaching this precision on the validation "
                                      "split of the model's training data (run folders; exports store theirs)")
    nan_policy: Literal["reject", "zero"] = Field(
        "reject", description="skeleton input with NaN/inf or far-outside keypoints: 'reject' fails that file "
                              "(named, the run goes on), 'zero' zeroes those joints (training's data.nan_policy)")
    timeline: bool = Field(True, description="write a timeline PNG per video")
    overlay: bool = Field(False, description="write an overlay mp4 per video (video input only)")


def as_model_spells(spec: ModelSpec, cfg: RecognizeConfig) -> RecognizeConfig:
    """`cfg` with the class names it gives (thresholds, shared_span_classes, track_classes) spelled as the model's
    own, compared in NFC: a name typed on Linux (NFC) names the class of a model trained from a Mac's (NFD) folder
    names, which look the same and were "unknown class(es) ['싸움']; the model's classes are [..., '싸움']"."""
    spell = spelled_as(spec.label_names)

    track = None if cfg.track_classes is None else [spell(n) for n in cfg.track_classes]
    return cfg.model_copy(update={"thresholds": {spell(n): v for n, v in cfg.thresholds.items()},
                                  "shared_span_classes": [spell(n) for n in cfg.shared_span_classes],
                                  "track_classes": track})


def shared_span(spec: ModelSpec, cfg: RecognizeConfig) -> frozenset[int]:
    """The classes (indices) whose events span what their firing windows share (event_runs.run_extent)."""
    if cfg.event_span == "shared":
        return frozenset(range(len(spec.label_names)))
    cfg = as_model_spells(spec, cfg)
    return frozenset(spec.label_names.index(n) for n in cfg.shared_span_classes if n in spec.label_names)


def effective_spec(spec: ModelSpec, cfg: RecognizeConfig) -> ModelSpec:
    """The model's spec with the user's overrides (thresholds, window); unknown class names are an error."""
    cfg = as_model_spells(spec, cfg)
    for field, names in (("thresholds", cfg.thresholds), ("shared_span_classes", cfg.shared_span_classes)):
        bad = [n for n in names if n not in spec.label_names]
        if bad:
            raise ValueError(f"{field}: unknown class(es) {bad}; the model's classes are {spec.label_names}")
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


def iter_windows_for(clip: SkeletonClip, spec: ModelSpec, stride_s: float, cover_end: bool = True
                     ) -> Iterator[Window]:
    """The windows `spec`'s model scores on `clip` (its fps, window length, persons and window mode)."""
    return iter_video_windows(clip, fps=spec.fps, window_frames=spec.window_frames,
                              num_person=spec.pipeline.num_person, mode=spec.window_mode, stride_s=stride_s,
                              cover_end=cover_end)


def make_windows_for(clip: SkeletonClip, spec: ModelSpec, stride_s: float, cover_end: bool = True) -> list[Window]:
    return list(iter_windows_for(clip, spec, stride_s, cover_end))


def score_windows(recognizer, windows: Sequence[Window], batch_size: int = 64) -> np.ndarray:
    """(num_windows, K) class probabilities, the model run on batches of windows."""
    k = len(recognizer.spec.label_names)
    out = np.zeros((len(windows), k), np.float32)
    for i in range(0, len(windows), batch_size):
        chunk = [w.clip for w in windows[i:i + batch_size]]
        out[i:i + len(chunk)] = recognizer.predict(recognizer.prepare(chunk))
    return out


def recognize_clip(recognizer, clip: SkeletonClip, spec: ModelSpec, cfg: RecognizeConfig) -> VideoResult:
    """Windows, their scores and the events of one whole-video clip, `cfg`'s overrides (thresholds, hysteresis,
    min_duration_s, window_mode, window_s, track_classes) applied to `spec` here: a library caller passing
    rec.spec got the model's events, not the configured ones (the CLI's). effective_spec is idempotent, so a
    spec already made by effective_spec(spec, cfg), as the CLI and batch mode pass, is unchanged."""
    import time

    t0 = time.perf_counter()
    spec = effective_spec(spec, cfg)
    # made and scored a batch at a time, only each window's metadata kept: the whole video's windows at once,
    # each a copy of its frames, held several times the video's own arrays (11-16 GB for a 24 h recording)
    windows: list[Window] = []
    scored: list[np.ndarray] = []
    made = iter_windows_for(clip, spec, cfg.stride_s)
    while batch := list(itertools.islice(made, cfg.batch_size)):
        scored.append(score_windows(recognizer, batch, cfg.batch_size))
        windows += [Window(w.video, w.kind, w.start_s, w.end_s, w.track_ids, None) for w in batch]
    probs = np.concatenate(scored) if scored else np.zeros((0, len(spec.label_names)), np.float32)
    # the video's first frame and last frame end, on the windows' own time base (the clip resampled to the model's
    # fps, as video_windows cuts it): a run there reaches the video's edge; and the windows' real step
    _, times = resample(clip, spec.fps)
    extent = (float(times[0]), float(times[-1]) + 1.0 / spec.fps) if len(times) else None
    hop_s = max(1, round(cfg.stride_s * spec.fps)) / spec.fps
    events = detect_events(windows, probs, spec, cfg.merge_gap_s, extent, shared_span(spec, cfg), hop_s)
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


def check_clip(clip: SkeletonClip, spec: ModelSpec, nan_policy: str, source: str = "") -> SkeletonClip:
    """A skeleton input clip checked as training checks its clips (SkeletonClip.validate with the nan policy, then
    far-outside joints zeroed under 'zero'): a NaN keypoint gave NaN scores and no message. Raises
    SkeletonDataError naming `source`, the clip and the field."""
    from recognizer_core.models.graph import LAYOUTS   # numpy only: the ONNX path stays torch-free
    from recognizer_core.skeleton.validate import zero_far_joints

    layout = LAYOUTS.get(spec.model.get("layout", spec.pipeline.dataset))
    clip.validate(source, nan_policy=nan_policy, num_joints=layout[0] if layout else None)
    if nan_policy == "zero":
        zero_far_joints(clip)
    return clip


def failure_reason(err: BaseException, name: str) -> str:
    """One line: the error's message without a leading `<name>: ` (the failure line names the file already);
    the exception type too where it is not one of ours (a pyarrow or numpy error says little alone)."""
    text = (str(err).strip().splitlines() or [""])[0]
    text = text[len(name) + 2:] if text.startswith(f"{name}: ") else text
    return text if isinstance(err, (ValueError, OSError)) else f"{type(err).__name__}: {text}"


def iter_skeleton_inputs(path: str | Path, failed: Callable[[str, str], None] | None = None
                         ) -> Iterator[tuple[str, SkeletonClip]]:
    """(file, whole-video clip) from a skeleton Parquet input: one file of extract_poses.py, its `clips/` folder
    or its output folder, or a skeleton dataset folder (every row a clip).

    failed(file, reason): a file that cannot be read (truncated, not Parquet, list lengths that disagree with
    the shape columns) is reported there and skipped, the others still read; without it the error is raised.
    An input with no Parquet file at all, or a dataset whose _dataset.json cannot be read, always raises."""
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
        ds = SkeletonDataset(path)
        for i, f in enumerate(ds.files):
            yield from _guarded(f, _dataset_file_clips(ds, i), failed)
        return
    for f in files:
        yield from _guarded(str(f), _file_clips(f), failed)


def iter_skeleton_clips(path: str | Path, failed: Callable[[str, str], None] | None = None) -> Iterator[SkeletonClip]:
    """The clips of iter_skeleton_inputs without their file names."""
    for _, clip in iter_skeleton_inputs(path, failed):
        yield clip


def _guarded(name: str, clips: Iterator[SkeletonClip], failed: Callable[[str, str], None] | None
             ) -> Iterator[tuple[str, SkeletonClip]]:
    try:
        for clip in clips:
            yield name, clip
    except Exception as err:  # noqa: BLE001 - one file's failure never ends the run (batch mode's rule)
        if failed is None:
            raise
        failed(name, failure_reason(err, name))


def _dataset_file_clips(ds, i: int) -> Iterator[SkeletonClip]:
    from recognizer_core.skeleton.store_rows import clips_from_batch

    for _, row0, batch in ds.iter_batches(files=[i]):
        for clip in clips_from_batch(batch, source=ds.files[i], rows=range(row0, row0 + batch.num_rows)):
            clip.source_video = clip.clip_id
            yield clip


def _file_clips(f: Path) -> Iterator[SkeletonClip]:
    import pyarrow.parquet as pq

    from recognizer_core.skeleton.store_rows import clips_from_batch

    try:
        table = pq.read_table(f)
    except Exception as err:  # noqa: BLE001 - name the file
        raise ValueError(f"{f}: not a skeleton Parquet file ({err})") from None
    for clip in clips_from_batch(table, copy=True, source=str(f)):
        clip.source_video = clip.source_video or str(f)
        yield clip
