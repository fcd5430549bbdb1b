"""Overlay video of a recognition: skeletons and track ids (extract/overlay.py's renderer) plus, per frame, the
label and score of the window centred nearest that frame: at the top for scene windows, above each person
for track windows; red while the score is over the class's threshold. PyAV (h264) encode. A skeleton frame is
drawn on the video frame its `frame_inds` names, numbered as extraction numbered it (by timestamp if sharded).
Class names that are not ASCII (Korean ones) are drawn in an installed font that has their glyphs
(recognizer_core/fonts.py: drawable_names, $RECOGNIZER_FONT), or as the class index (#2) where there is none."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from recognizer_core.recognize.spec import ModelSpec
from recognizer_core.recognize.windows import frame_times
from recognizer_core.skeleton.clip import SkeletonClip


def _labels_at(t: float, windows: Sequence, probs: np.ndarray, spec: ModelSpec) -> dict[str, tuple[str, float, bool]]:
    """{sequence key: (class, score, over threshold)} of the window centred nearest t among those covering t."""
    best: dict[str, tuple[float, int]] = {}
    for i, w in enumerate(windows):
        if w.start_s <= t <= w.end_s:
            d = abs((w.start_s + w.end_s) / 2 - t)
            if w.key not in best or d < best[w.key][0]:
                best[w.key] = (d, i)
    out = {}
    for key, (_, i) in best.items():
        c = max(spec.event_classes, key=lambda k: probs[i, k])
        out[key] = (spec.label_names[c], float(probs[i, c]), bool(probs[i, c] >= spec.threshold(c).on))
    return out


# Pillow's default font is 10 px: Hangul at that size is unreadable
LABEL_FONT_PX = 16


def overlay_font(label_names: Sequence[str]):
    """({class name: the text drawn for it}, the font to draw with): Pillow's default font for ASCII names (the
    look they always had; it has no Hangul, so 싸움 and 낙상 were the same boxes), else one font with the names'
    and the scores' glyphs, or DejaVu Sans with each name it lacks as its index (drawable_names warns once)."""
    from PIL import ImageFont

    from recognizer_core.fonts import default_font, drawable_names

    if all(name.isascii() for name in label_names):
        return {n: n for n in label_names}, ImageFont.load_default()
    shown, path = drawable_names(label_names, alone=True)
    return dict(zip(label_names, shown)), ImageFont.truetype(path or default_font(), LABEL_FONT_PX)


def row_owners(clip: SkeletonClip) -> np.ndarray:
    """(M, T) person id of each row at each frame: `frame_track_ids` where tracking stored it (it reuses a row for
    a later person), else each row's track id (or its index) on every frame."""
    owner = clip.extra.get("frame_track_ids")
    if isinstance(owner, np.ndarray) and owner.shape == clip.keypoint_score.shape[:2]:
        return owner
    row_ids = np.asarray(clip.track_ids if clip.track_ids is not None else range(clip.num_person), np.int32)
    return np.repeat(row_ids[:, None], clip.num_frames, axis=1)


def label_placements(clip: SkeletonClip, t: int, ids: np.ndarray,
                     labels: dict[str, tuple[str, float, bool]]) -> list[tuple[str, tuple[float, float], bool]]:
    """(text, top-left, over threshold) of each label drawn on frame t: a scene label at the top, a track's above
    the row that holds that person at t (`ids`: each row's person at t; a reused row holds others elsewhere)."""
    out = []
    for key, (name, score, on) in labels.items():
        if key == "scene":
            out.append((f"{name} {score:.2f}", (8.0, 8.0), on))
            continue
        rows = np.nonzero(ids == int(key[len("track"):]))[0]
        vis = clip.keypoint_score[int(rows[0]), t] > 0 if len(rows) else None
        if vis is not None and vis.any():
            x, y = clip.keypoint[int(rows[0]), t][vis].min(0)
            out.append((f"{name} {score:.2f}", (float(x), float(y) - 24), on))
    return out


def render_recognition_overlay(clip: SkeletonClip, video_uri: str, windows: Sequence, probs: np.ndarray,
                               spec: ModelSpec, out_path: str | Path) -> Path:
    from PIL import Image, ImageDraw

    from recognizer_core.extract.overlay import H264Writer, draw_skeletons
    from recognizer_core.extract.video import iter_frames

    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    inds = clip.frame_inds if clip.frame_inds is not None else np.arange(clip.num_frames)
    pos = {int(f): t for t, f in enumerate(inds)}
    last = int(inds[-1]) + 1 if len(inds) else 0
    # a sharded extraction indexed frames by timestamp: counted, the frames after a gap in the timestamps (or of a
    # variable rate) got other numbers, and skeletons were drawn seconds away from their frames
    by_time = bool(clip.extra.get("decoded_by_time", False))
    times = frame_times(clip)
    owner = row_owners(clip)
    shown, font = overlay_font(spec.label_names)
    writer = H264Writer(out_path, clip.fps)
    try:
        for idx, image in iter_frames(video_uri, 0, last if by_time else None, by_time=by_time):
            if idx >= last:
                break
            t = pos.get(idx)
            if t is None:
                continue
            ids = owner[:, t]
            img = Image.fromarray(draw_skeletons(image, clip.keypoint[:, t], clip.keypoint_score[:, t],
                                                 ids)[..., ::-1])
            draw = ImageDraw.Draw(img)
            labels = {k: (shown[name], score, on)
                      for k, (name, score, on) in _labels_at(float(times[t]), windows, probs, spec).items()}
            for text, xy, on in label_placements(clip, t, ids, labels):
                draw.text(xy, text, fill=(255, 40, 40) if on else (255, 255, 255), font=font)
            writer.write(np.asarray(img)[..., ::-1])
    finally:
        writer.close()
    if writer.frames == 0:
        raise ValueError(f"{video_uri}: no frame of {clip.clip_id!r} found in the video")
    return out_path
