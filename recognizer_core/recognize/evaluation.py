"""Recognition against labels: video-level accuracy, per-class precision / recall, a confusion matrix, and
event-level precision / recall with temporal-IoU matching (tIoU >= 0.5, or recognize's `--event-tiou`) when
true intervals are given.

Labels come from an RWF-2000-style folder (`[split/]<Label>/<video>`: the parent folder is the label) or a
CSV with columns `video,label[,start_s,end_s]` (one row per true interval; a row without times labels the
whole video). Event-level scoring needs true times: it covers the videos with timed rows and the background
videos; a video with neither is listed as `events_unscored`. A class a video is labelled with for the whole
video (an untimed row) and not timed there is not scored at event level in that video, even where other
classes are timed there: its events could match no interval and would count as false.

A video's prediction is the class of its highest-peak event; with none, the background class, or where the
model has no background class (an mmaction2 `.py` model, `--background-class none`) no class at all: the
confusion matrix then has an extra last column, NONE ("(none)"), and such a video is a miss in accuracy and
its true class's recall, not a prediction of any class.

Videos are matched by path (`video_key`: folders and file name without its extension, NFC, and of a URI the
decoded path without its scheme and bucket, so `s3://bkt/videos/Non%20Fight/a.mp4` is `videos/Non Fight/a`):
a label and a result match when the shorter path is the end of the longer one, so a label may name a video by
its path under the input folder (what a labelled folder gives), by a full path, or by its file name alone where
that is unique.
Where a name fits two or more videos (cam1/a.mp4 and cam2/a.mp4 for a label `a.mp4`) evaluation stops with an
error naming them, rather than scoring one video's result against another's label.
"""
from __future__ import annotations

import csv
import io
import re
import urllib.parse
from collections import defaultdict
from pathlib import Path
from typing import Sequence

import numpy as np

from recognizer_core.names import nfc, spelled_as
from recognizer_core.recognize.events import Event

NONE = "(none)"  # the prediction of a video without events where the model has no background class


def video_key(video: str) -> str:
    """The name videos are matched by: the path's parts `/`-joined, the file's extension dropped (a CSV may say
    `a` or `a.mp4`), NFC (a macOS file name is NFD, a typed label NFC). A URI (`s3://bucket/key`) is its key,
    percent-decoded: extraction escapes the keys it lists (`cam 01` -> `cam%2001`), a label names the file. The
    parts are compared as they are: output names' safe_name made every Hangul character `_` (싸움_01 = 낙상_01)."""
    video = video.strip()
    if "://" in video:   # a local path is taken as it is: `%` is a character of its names
        video = urllib.parse.unquote(video.split("://", 1)[1].partition("/")[2])
    parts = [p for p in re.split(r"[/\\]+", nfc(video)) if p not in ("", ".")] or ["video"]
    parts[-1] = Path(parts[-1]).stem or parts[-1]
    return "/".join(parts)


def _suffix_match(a: str, b: str) -> bool:
    pa, pb = a.split("/"), b.split("/")
    n = min(len(pa), len(pb))
    return pa[-n:] == pb[-n:]


def match_videos(videos: Sequence[str], labelled: Sequence[str]) -> dict[str, str]:
    """{video (as results name it): its label key} for every video some label key names (see the module
    docstring); ValueError, one line, where a name fits more than one video."""
    by_name: dict[str, list[str]] = defaultdict(list)
    for key in labelled:
        by_name[key.rsplit("/", 1)[-1]].append(key)
    found: dict[str, str] = {}
    owner: dict[str, str] = {}
    for v in videos:
        vk = video_key(v)
        hits = [k for k in by_name.get(vk.rsplit("/", 1)[-1], []) if _suffix_match(vk, k)]
        if len(hits) > 1:
            raise ValueError(f"labels: video {v!r} fits several labelled names {sorted(hits)}; name the videos "
                             "by their path under the input folder")
        if hits:
            if hits[0] in owner:
                raise ValueError(f"labels: {hits[0]!r} fits several videos ({owner[hits[0]]!r}, {v!r}); name the "
                                 "videos by their path under the input folder")
            owner[hits[0]] = v
            found[v] = hits[0]
    return found


def read_labels(source: str | Path, label_names: Sequence[str],
                background: int | None = 0) -> tuple[dict[str, str], dict[str, list[dict]]]:
    """({video key: label}, {video key: [true intervals {label, start_s, end_s}]}). A video with rows of
    several labels takes the first that is not `background`. A CSV row without times of a class other than
    `background` is kept among the intervals with start_s = end_s = None (the class labels the whole video:
    evaluate does not score that class's events there). Labels are returned spelled as the model's classes,
    compared in NFC: the folder names list_videos gives and typed CSV labels are NFC, and a model trained on a
    Mac's folder by an older extraction has NFD class names, which look the same ("labels ['싸움'] are not among
    the model's classes ['싸움']")."""
    source = Path(source)
    spell = spelled_as(label_names)

    labels: dict[str, str] = {}
    intervals: dict[str, list[dict]] = defaultdict(list)
    if source.is_dir():
        from recognizer_core.extract.config import SourceConfig
        from recognizer_core.extract.sources import list_videos

        for v in list_videos(SourceConfig(input=str(source))):
            key = video_key(v.rel_path)
            if key in labels:  # a.mp4 and a.avi in one folder: one key, two videos
                raise ValueError(f"{source}: two videos share the name {key!r} (file names without extension)")
            labels[key] = spell(v.label_name)
    elif source.is_file():
        rows = list(csv.DictReader(io.StringIO(source.read_text(encoding="utf-8-sig"))))
        if not rows or not {"video", "label"} <= set(rows[0]):
            raise ValueError(f"{source}: labels CSV needs a header with columns video,label[,start_s,end_s]")
        for line, row in enumerate(rows, start=2):
            stem, label = video_key(row["video"]), spell(row["label"].strip())
            if label not in label_names:
                raise ValueError(f"{source}:{line}: label {label!r} is not one of the model's {list(label_names)}")
            if (row.get("start_s") or "").strip():
                try:
                    a, b = float(row["start_s"]), float(row["end_s"])
                except (TypeError, ValueError):
                    raise ValueError(f"{source}:{line}: start_s/end_s must be numbers") from None
                if b <= a:
                    raise ValueError(f"{source}:{line}: end_s {b} <= start_s {a}")
                intervals[stem].append({"label": label, "start_s": a, "end_s": b})
            bg = label_names[background] if background is not None else None
            if not (row.get("start_s") or "").strip() and label != bg:
                intervals[stem].append({"label": label, "start_s": None, "end_s": None})
            labels[stem] = label if labels.get(stem, bg) == bg else labels[stem]
    else:
        raise FileNotFoundError(f"{source}: labels not found (a labelled video folder or a CSV)")
    unknown = sorted({lab for lab in labels.values() if lab not in label_names})
    if unknown:
        raise ValueError(f"{source}: labels {unknown} are not among the model's classes {list(label_names)}")
    return labels, dict(intervals)


def video_prediction(events: Sequence[Event], label_names: Sequence[str], background: int | None) -> str:
    """The highest-peak event's class; without events the background class, or NONE where there is none."""
    if not events:
        return label_names[background] if background is not None else NONE
    return max(events, key=lambda e: e.peak_score).label


def temporal_iou(a: tuple[float, float], b: tuple[float, float]) -> float:
    inter = max(0.0, min(a[1], b[1]) - max(a[0], b[0]))
    union = max(a[1], b[1]) - min(a[0], b[0])
    return inter / union if union > 0 else 0.0


def check_tiou(iou: float) -> float:
    """`iou` when it is in (0, 1] (0 would match an event to any true interval, even one it does not touch);
    ValueError, one line, naming --event-tiou, otherwise."""
    if not 0 < iou <= 1:  # also NaN
        raise ValueError(f"--event-tiou {iou}: must be in (0, 1] (the temporal IoU an event needs with a true "
                         "interval to match it; default 0.5)")
    return float(iou)


def match_events(pred: Sequence[dict], true: Sequence[dict], iou: float = 0.5) -> tuple[int, int, int]:
    """(true positives, false positives, false negatives): one-to-one greedy matching, highest tIoU first,
    same class only; a pair matches at tIoU >= `iou`."""
    pairs = sorted(((temporal_iou((p["start_s"], p["end_s"]), (t["start_s"], t["end_s"])), i, j)
                    for i, p in enumerate(pred) for j, t in enumerate(true) if p["label"] == t["label"]),
                   reverse=True)
    used_p, used_t = set(), set()
    for v, i, j in pairs:
        if v >= iou and i not in used_p and j not in used_t:
            used_p.add(i)
            used_t.add(j)
    return len(used_p), len(pred) - len(used_p), len(true) - len(used_t)


def evaluate(events_by_video: dict[str, list[Event]], labels: dict[str, str], intervals: dict[str, list[dict]],
             label_names: Sequence[str], background: int | None, iou: float = 0.5) -> dict:
    """The report (JSON-able); videos without a label are listed, not scored. `labels` / `intervals` are keyed
    by video_key (read_labels), `events_by_video` by the videos' paths or URIs; they are matched by
    match_videos. Events match true intervals at tIoU >= `iou` (check_tiou), recorded as events.tiou."""
    iou = check_tiou(iou)
    names = list(label_names)
    key_of = match_videos(list(events_by_video), sorted(set(labels) | set(intervals)))
    # the results under their label keys; unmatched ones under their own names
    preds = {key_of.get(v, v): video_prediction(ev, names, background) for v, ev in events_by_video.items()}
    scored = sorted(set(preds) & set(labels))
    # rows true, columns predicted; without a background class a last column NONE counts the videos without
    # events (in each row's total, so a miss lowers accuracy and recall; in no class's precision)
    columns = names + ([NONE] if background is None else [])
    cm = np.zeros((len(names), len(columns)), int)
    for v in scored:
        cm[names.index(labels[v]), columns.index(preds[v])] += 1
    report: dict = {"videos": len(scored), "unlabelled": sorted(v for v in events_by_video if v not in key_of),
                    "missing": sorted(set(labels) - set(preds)), "label_names": names,
                    "accuracy": float(np.trace(cm[:, :len(names)]) / max(cm.sum(), 1)),
                    "confusion_matrix": cm.tolist(), "predicted_names": columns, "precision": {}, "recall": {}}
    for c, n in enumerate(names):
        # None (JSON null), not NaN, where a class was never predicted / never true
        report["precision"][n] = float(cm[c, c] / cm[:, c].sum()) if cm[:, c].sum() else None
        report["recall"][n] = float(cm[c, c] / cm[c].sum()) if cm[c].sum() else None
    true = {v: [t for t in ts if t["start_s"] is not None] for v, ts in intervals.items()}
    if any(true.values()):
        stems = {key_of[v]: ev for v, ev in events_by_video.items() if v in key_of}
        # Event-level scoring needs the true times: videos with intervals, and background videos (every event
        # there is false). A video labelled with an action but no times says nothing about where it happens.
        bg = names[background] if background is not None else None
        timed = {v for v, ts in true.items() if ts} | {v for v, lab in labels.items() if lab == bg}
        # per video, the classes labelled for the whole video only: untimed rows (read_labels) and the video's
        # label (it came from an untimed row, or `labels` was given without times), less the classes with
        # intervals there (those times say where the class happens, so its events can be matched)
        whole = {v: {t["label"] for t in ts if t["start_s"] is None} for v, ts in intervals.items()}
        for v, lab in labels.items():
            if lab != bg:
                whole.setdefault(v, set()).add(lab)
        whole = {v: cls - {t["label"] for t in true.get(v, [])} for v, cls in whole.items()}
        report["events_unscored"] = sorted(set(stems) & (set(labels) | set(intervals)) - timed)
        per: dict = {}
        for n in (names[c] for c in range(len(names)) if c != background):
            tp = fp = fn = 0
            for v in sorted(v for v in set(stems) & timed if n not in whole.get(v, ())):
                a, b, c_ = match_events([e.to_dict() for e in stems[v] if e.label == n],
                                        [t for t in true.get(v, []) if t["label"] == n], iou)
                tp, fp, fn = tp + a, fp + b, fn + c_
            per[n] = {"tp": tp, "fp": fp, "fn": fn, "precision": tp / (tp + fp) if tp + fp else None,
                      "recall": tp / (tp + fn) if tp + fn else None}
        report["events"] = {"tiou": iou, "per_class": per}
    return report


def write_report(report: dict, out_dir: str | Path) -> list[Path]:
    import json

    from recognizer_core.storage import write_text
    from recognizer_core.train.stgcn.plots import plot_confusion_matrix

    out_dir = Path(out_dir)
    write_text(out_dir / "evaluation.json", json.dumps(report, indent=1))
    cm, columns = np.array(report["confusion_matrix"]), report.get("predicted_names", report["label_names"])
    if cm.shape[1] > cm.shape[0]:  # the NONE column: the plot draws square matrices, so an empty NONE row
        cm = np.vstack([cm, np.zeros((cm.shape[1] - cm.shape[0], cm.shape[1]), int)])
    png = plot_confusion_matrix(cm, columns,
                                out_dir / "confusion_matrix.png",
                                title=f"videos: accuracy {report['accuracy']:.3f} ({report['videos']} videos)")
    return [out_dir / "evaluation.json", png]
