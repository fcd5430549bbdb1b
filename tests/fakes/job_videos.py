"""Generated video folders for the extraction-job tests: marker videos with known tracks, and bad files."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .fake_rtmo import write_marker_video

SIDE = 12


def linear_track(start, end, num_frames: int, first: int = 0) -> np.ndarray:
    """(T, 2) integer-pixel positions from start to end over frames first..T-1 (NaN before first)."""
    tr = np.full((num_frames, 2), np.nan)
    n = num_frames - first
    tr[first:] = np.round(np.linspace(start, end, n))
    return tr


def write_truncated_mkv(path: Path, tracks: list[np.ndarray], fraction: float = 0.6) -> Path:
    """An MKV cut at `fraction` of its bytes: the header (at the front) still declares every frame, but only
    the frames before the cut decode, as after an interrupted copy or recording."""
    path = Path(path)
    full = write_marker_video(path.with_name(f"full_{path.name}"), tracks, side=SIDE)
    data = full.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])
    os.remove(full)
    return path


def make_job_folder(root: Path, shared_videos: dict[str, Path] | None = None) -> dict:
    """RWF-2000 style folder (train|val / Fight|NonFight) with marker videos, bad files and real videos.

    Returns the ground truth: {'tracks': {rel_path: [track (T, 2), ...] in expected rank order},
    'failed': set of rel_paths, 'empty': set of rel_paths, 'real': set of rel_paths,
    'truncated': {rel_path: declared frames}}.
    """
    root = Path(root)
    truth = {"tracks": {}, "failed": set(), "empty": set(), "real": set(), "truncated": {}}
    a = linear_track((30, 35), (50, 35), 40)
    b = linear_track((190, 110), (210, 130), 40, first=12)
    write_marker_video(root / "train/Fight/two_people.mp4", [a, b], side=SIDE)
    truth["tracks"]["train/Fight/two_people.mp4"] = [a, b]
    c = linear_track((120, 200), (100, 190), 32)
    write_marker_video(root / "train/NonFight/one_person.avi", [c], side=SIDE, codec="mpeg4")
    truth["tracks"]["train/NonFight/one_person.avi"] = [c]
    d = linear_track((95, 40), (145, 60), 240)
    write_marker_video(root / "val/Fight/long_hevc.mkv", [d], side=SIDE, codec="libx265")
    truth["tracks"]["val/Fight/long_hevc.mkv"] = [d]
    e = linear_track((60, 100), (90, 120), 100)
    write_truncated_mkv(root / "val/Fight/cut_at_60.mkv", [e])     # 100 declared, 39 decode
    truth["tracks"]["val/Fight/cut_at_60.mkv"] = [e]
    truth["truncated"]["val/Fight/cut_at_60.mkv"] = 100
    write_marker_video(root / "val/NonFight/nobody.mp4", [np.full((20, 2), np.nan)], side=SIDE)
    truth["empty"].add("val/NonFight/nobody.mp4")

    (root / "train/Fight/corrupt.mp4").write_bytes(np.random.default_rng(0).bytes(20000))
    (root / "train/NonFight/empty.mp4").write_bytes(b"")
    full = write_marker_video(root / "tmp_full.mp4", [a], side=SIDE)
    data = full.read_bytes()
    (root / "train/NonFight/truncated.mp4").write_bytes(data[: len(data) // 2])  # moov at the end: unreadable
    os.remove(full)
    truth["failed"] |= {"train/Fight/corrupt.mp4", "train/NonFight/empty.mp4", "train/NonFight/truncated.mp4"}
    for rel, src in (shared_videos or {}).items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        os.symlink(src, root / rel)
        truth["real"].add(rel)
    return truth
