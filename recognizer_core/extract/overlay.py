"""Skeleton overlay renderer: draw a clip's tracked persons on its source video, to check extraction by eye.

    python -m recognizer_core.extract.overlay outputs/poses/clips/<video_id>.parquet out.mp4 [--video URI]

Writes an mp4 (PyAV, h264) or, for an output folder, one PNG per frame. Each person has a fixed colour
(its index in the clip) and is labelled with its track id; joints with score 0 are not drawn.
"""
from __future__ import annotations

import argparse
from fractions import Fraction
from pathlib import Path

import numpy as np

from recognizer_core.skeleton.clip import SkeletonClip
from recognizer_core.skeleton.coco import LIMBS

PALETTE = [(230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240),
           (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128)]


def draw_skeletons(image_bgr: np.ndarray, keypoint: np.ndarray, keypoint_score: np.ndarray,
                   track_ids=None, min_score: float = 0.0, radius: int = 3, width: int = 2) -> np.ndarray:
    """A copy of `image_bgr` with persons drawn: keypoint (M, V, 2), keypoint_score (M, V) of one frame."""
    from PIL import Image, ImageDraw

    img = Image.fromarray(np.ascontiguousarray(image_bgr[..., ::-1]))
    draw = ImageDraw.Draw(img)
    for m in range(keypoint.shape[0]):
        colour = PALETTE[m % len(PALETTE)]
        vis = keypoint_score[m] > min_score
        if not vis.any():
            continue
        pts = keypoint[m]
        for a, b in LIMBS:
            if vis[a] and vis[b]:
                draw.line([tuple(pts[a]), tuple(pts[b])], fill=colour, width=width)
        for v in np.nonzero(vis)[0]:
            x, y = pts[v]
            draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=colour)
        if track_ids is not None:
            top = pts[vis].min(0)
            draw.text((float(top[0]), float(top[1]) - 12), f"id {int(track_ids[m])}", fill=colour)
    return np.asarray(img)[..., ::-1].copy()


def stream_rate(fps: float | Fraction | None) -> Fraction:
    """The output stream's frame rate as an exact fraction: events are in the source's true seconds, and a rate
    rounded to whole frames drifted the overlay off them (12.5 fps CCTV written at 12 fps ran 4 % long, 29.97 at
    30 0.1 % short). A float rate is taken to the nearest fraction over at most 1001 (29.97003 -> 30000/1001)."""
    if isinstance(fps, Fraction) and fps > 0:
        return fps
    if not fps or not fps > 0:  # unknown (0, None, NaN): the common camera rate
        return Fraction(25)
    return Fraction(float(fps)).limit_denominator(1001)


class H264Writer:
    """An mp4 (h264, yuv420p) opened at the first frame, whose size it takes (cropped to even sides); `close`
    flushes the encoder. Both overlays (extraction check, recognize) write through it, at the frame rate of the
    frames they are given (`stream_rate`: exact, so the video lasts as long as its source)."""

    def __init__(self, path: str | Path, fps: float | Fraction | None):
        self.path, self.fps = Path(path), stream_rate(fps)
        self.container = self.stream = None
        self.frames = 0

    def write(self, frame_bgr: np.ndarray) -> None:
        import av

        if self.container is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.container = av.open(str(self.path), "w")
            self.stream = self.container.add_stream("libx264", rate=self.fps)
            self.stream.width, self.stream.height = frame_bgr.shape[1] // 2 * 2, frame_bgr.shape[0] // 2 * 2
            self.stream.pix_fmt = "yuv420p"
        crop = np.ascontiguousarray(frame_bgr[: self.stream.height, : self.stream.width])
        for packet in self.stream.encode(av.VideoFrame.from_ndarray(crop, format="bgr24")):
            self.container.mux(packet)
        self.frames += 1

    def close(self) -> None:
        if self.container is None:
            return
        try:
            for packet in self.stream.encode():
                self.container.mux(packet)
        finally:
            self.container.close()


def render_overlay(clip: SkeletonClip, video_uri: str, out_path: str | Path, max_frames: int = 0,
                   fps: float | None = None) -> Path:
    """Render `clip` over the frames of `video_uri` it was extracted from (matched by frame_inds)."""
    from recognizer_core.extract.video import iter_frames

    out_path = Path(out_path)
    frame_inds = clip.frame_inds if clip.frame_inds is not None else np.arange(clip.num_frames)
    pos = {int(f): t for t, f in enumerate(frame_inds)}
    last = int(frame_inds[-1]) + 1
    by_time = clip.extra.get("decoded_by_time", False)
    as_png = out_path.suffix.lower() != ".mp4"
    if as_png:
        out_path.mkdir(parents=True, exist_ok=True)
    writer = None if as_png else H264Writer(out_path, fps or clip.fps)
    written = 0
    try:
        for idx, image in iter_frames(video_uri, 0, last if by_time else None, by_time=by_time):
            if idx >= last:
                break
            t = pos.get(idx)
            if t is None:
                continue
            ids = clip.extra.get("frame_track_ids")   # whose each row is at this frame (rows are reused)
            ids = ids[:, t] if isinstance(ids, np.ndarray) and ids.ndim == 2 else clip.track_ids
            drawn = draw_skeletons(image, clip.keypoint[:, t], clip.keypoint_score[:, t], ids)
            if writer is None:
                from PIL import Image

                Image.fromarray(drawn[..., ::-1]).save(out_path / f"frame_{idx:06d}.png")
            else:
                writer.write(drawn)
            written += 1
            if max_frames and written >= max_frames:
                break
    finally:
        if writer is not None:
            writer.close()
    if written == 0:
        raise ValueError(f"{video_uri}: no frame of clip {clip.clip_id!r} found in the video")
    return out_path


def main(argv: list[str] | None = None) -> int:
    from recognizer_core.extract.clip_files import read_clip_file

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("clip_file", help="a per-video Parquet file written by rayjobs/extract_poses.py")
    parser.add_argument("out", help="output .mp4, or a folder for PNG frames")
    parser.add_argument("--video", help="source video (default: the clip's source_video)")
    parser.add_argument("--max-frames", type=int, default=0)
    args = parser.parse_args(argv)
    clip = read_clip_file(args.clip_file)
    print(render_overlay(clip, args.video or clip.source_video, args.out, args.max_frames))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
