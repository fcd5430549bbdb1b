"""Per-video outputs of recognize: events (JSON lines + CSV), window scores (CSV), a timeline PNG, an overlay.

Every file is written atomically (storage.atomic_write), so a killed job never leaves half a file that a
resumed one would take as finished. The CSVs are UTF-8, with a BOM (utf-8-sig) where they hold non-ASCII text:
Excel in a Korean (cp949) locale reads a CSV without one as cp949 and shows Korean class and video names as
mojibake; pandas, and Python's csv module on a file opened with encoding="utf-8-sig", skip it. An ASCII-only CSV
has none, as before Korean names were supported: a reader opening it as "utf-8" took the BOM into its first
column's name ('\\ufeffvideo'), and Excel reads ASCII alike in any locale.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import re
import urllib.parse
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np

from recognizer_core.names import nfc
from recognizer_core.recognize.events import Event
from recognizer_core.recognize.spec import ModelSpec
from recognizer_core.storage import atomic_write, write_text

EVENT_FIELDS = ("video", "label", "start_s", "end_s", "peak_score", "track_ids")


def safe_name(video: str) -> str:
    """A file-name stem for a video path or URI: its file name, NFC, with every run of characters other than
    letters and digits of any script, '_', '.' and '-' as '_' (ASCII names as they always were; 싸움 stays 싸움,
    where it was '_' and two Korean names that differed only in Hangul shared the outputs' names). In a URI the
    escaped non-ASCII bytes are decoded (%EC%8B%B8 -> 싸) and ASCII escapes are left (cam%2001 -> cam_2001, the
    name it always had)."""
    stem = Path(video.rstrip("/")).name or "video"
    if "://" in video:
        stem = re.sub(r"(?:%[89A-Fa-f][0-9A-Fa-f])+", lambda m: urllib.parse.unquote(m[0], errors="replace"), stem)
    return re.sub(r"[^\w.-]+", "_", nfc(stem))


# File names are limited to 255 bytes (ext4, XFS, NTFS...): the longest output name is the stem + ".timeline.png"
# (13), and atomic_write's temp file adds 14 more (".<name>.XXXXXXXX.tmp"); 200 leaves room for both.
MAX_STEM = 200


def hashed_stem(stem: str, full: str, variant: int = 0) -> str:
    """`stem` (cut to fit MAX_STEM) + `_` + 8 hex of the sha1 of the full name (`full#variant` for variant > 0):
    the same name in every run, unique per full name."""
    key = f"{full}#{variant}" if variant else full
    # cut by bytes, not characters: a Hangul character is 3 bytes in UTF-8 (191 of them made 573)
    cut = stem.encode()[:MAX_STEM - 9].decode(errors="ignore")
    return f"{cut}_{hashlib.sha1(key.encode()).hexdigest()[:8]}"


def fit_stem(stem: str, full: str) -> str:
    """`stem` as it is, or cut with a hash of `full` where it is longer than MAX_STEM (a deep folder path)."""
    return stem if len(stem.encode()) <= MAX_STEM else hashed_stem(stem, full)


def rel_path_stem(rel_path: str) -> str:
    """A file-name stem for a video's path under the input folder, its folders joined by `__`: CCTV exports
    often repeat file names per camera (cam1/2024-05-01.mp4, cam2/2024-05-01.mp4), which must not share outputs.
    A stem longer than MAX_STEM is cut and ends with a hash of the full rel_path (fit_stem)."""
    parts = [p for p in re.split(r"[/\\]+", rel_path) if p not in ("", ".")]
    return fit_stem("__".join(safe_name(p) for p in parts) or "video", rel_path)


class UniqueStems:
    """Output stems for videos, by full name (a path, URI or rel_path): `name(video)` (the file name by default;
    batch mode passes rel_path_stem), cut to fit MAX_STEM, and where a different video already took it, in this
    run or in `taken` ({stem: video} of an earlier run's outputs in the folder), with a hash of the full name (the
    same name in every run). Without this, the second video's outputs overwrote the first's, silently."""

    def __init__(self, name: Callable[[str], str] = safe_name, taken: Mapping[str, str] | None = None) -> None:
        self.name = name
        self.owner: dict[str, str] = dict(taken or {})

    def __call__(self, video: str) -> str:
        stem = fit_stem(self.name(video), video)
        variant = 0
        while self.owner.setdefault(stem, video) != video:   # a (rare) hashed name that is taken too: next variant
            stem = hashed_stem(self.name(video), video, variant)
            variant += 1
        return stem


def with_bom(text: str) -> str:
    """`text` with a BOM first where it holds non-ASCII text (the module docstring)."""
    return text if text.isascii() else "\ufeff" + text


def events_csv(events: Sequence[Event]) -> str:
    """The text of an events.csv, BOM first where it is not ASCII (with_bom)."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(EVENT_FIELDS)
    for e in events:
        d = e.to_dict()
        w.writerow([d["video"], d["label"], d["start_s"], d["end_s"], d["peak_score"],
                    " ".join(str(t) for t in d["track_ids"])])
    return with_bom(buf.getvalue())


def write_video_outputs(out_dir: str | Path, video: str, windows: Sequence, probs: np.ndarray,
                        events: Sequence[Event], spec: ModelSpec, timeline: bool = True,
                        stem: str | None = None) -> dict[str, str]:
    """<out>/<stem>.events.jsonl / .events.csv / .windows.csv (+ .timeline.png); returns {kind: path}.
    `stem` defaults to the video's file name, cut to fit (callers with many videos pass a unique one)."""
    out_dir = Path(out_dir)
    stem = stem or fit_stem(safe_name(video), video)
    files = {"events_jsonl": out_dir / f"{stem}.events.jsonl", "events_csv": out_dir / f"{stem}.events.csv",
             "windows_csv": out_dir / f"{stem}.windows.csv"}
    write_text(files["events_jsonl"], "".join(json.dumps(e.to_dict()) + "\n" for e in events))
    write_text(files["events_csv"], events_csv(events))
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["sequence", "start_s", "end_s", "track_ids", *spec.label_names])
    for win, p in zip(windows, probs):
        w.writerow([win.key, f"{win.start_s:.3f}", f"{win.end_s:.3f}", " ".join(map(str, win.track_ids)),
                    *[f"{x:.5f}" for x in p]])
    write_text(files["windows_csv"], with_bom(buf.getvalue()))   # utf-8-sig where not ASCII, as events.csv
    if timeline and len(windows):
        files["timeline_png"] = plot_timeline(out_dir / f"{stem}.timeline.png", video, windows, probs, events, spec)
    return {k: str(v) for k, v in files.items()}


def plot_timeline(path: Path, video: str, windows: Sequence, probs: np.ndarray, events: Sequence[Event],
                  spec: ModelSpec, truth: Sequence[dict] = ()) -> Path:
    """Per event class: each sequence's window scores over time (window centres), the thresholds, the detected
    events as bands (and true intervals as bars, when given)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    from recognizer_core.fonts import drawable_names, drawable_text, font_for, fonts_for

    # class names (and the video's name, where a font has them all) in a font with their glyphs: Korean ones
    # were boxes in matplotlib's DejaVu Sans
    names, font = drawable_names(spec.label_names)
    font = font_for([*spec.label_names, video]) or font
    with fonts_for(font):
        classes = spec.event_classes
        fig, axes = plt.subplots(len(classes), 1, figsize=(12, 2.4 * len(classes) + 0.6), squeeze=False,
                                 sharex=True)
        keys = sorted({w.key for w in windows})
        colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
        for ax, c in zip(axes[:, 0], classes):
            name = spec.label_names[c]
            for j, key in enumerate(keys):
                idx = sorted((i for i, w in enumerate(windows) if w.key == key), key=lambda i: windows[i].start_s)
                t = [(windows[i].start_s + windows[i].end_s) / 2 for i in idx]
                ax.plot(t, probs[idx, c], lw=1, color=colours[j % len(colours)],
                        label=key if len(keys) <= 8 else None)
            th = spec.threshold(c)
            ax.axhline(th.on, color="k", ls="--", lw=0.8)
            ax.axhline(th.off_value, color="k", ls=":", lw=0.8)
            for e in events:
                if e.class_index == c:
                    ax.axvspan(e.start_s, e.end_s, color="tab:red", alpha=0.2)
            for tr in truth:
                if tr["label"] == name:
                    ax.plot([tr["start_s"], tr["end_s"]], [1.04, 1.04], color="tab:green", lw=4,
                            solid_capstyle="butt")
            ax.set_ylim(0, 1.08)
            ax.set_ylabel(f"P({names[c]})")
            if len(keys) <= 8:
                ax.legend(loc="upper right", fontsize=7, ncol=min(len(keys), 4))
        axes[-1, 0].set_xlabel("time (s)")
        fig.suptitle(f"{drawable_text(video, font)}: window scores, events (red)"
                     f"{', truth (green)' if truth else ''}", fontsize=10)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=90)
        plt.close(fig)
    with atomic_write(path, "wb") as f:
        f.write(buf.getvalue())
    return path
