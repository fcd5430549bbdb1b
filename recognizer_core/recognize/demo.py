"""The embedded default of rayjobs/recognize.py: find the newest local model, and show detections next to the
true events of the synthetic demo sequence."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from recognizer_core.recognize.events import Event
from recognizer_core.recognize.model import BEST_GLOB
from recognizer_core.storage import DEFAULT_JOB_ROOT, is_remote, output_uri, ray_package_root

# The jobs' default run.storage_path (configs/*.yaml; Tune's experiments are under work_dirs/tune)
RUNS_FOLDER = "work_dirs"


def demo_folder(relative: str) -> tuple[str, bool]:
    """(where the demo keeps `relative`, its runs folder or its output; whether that is not where every job puts
    it): output_uri's place (under $RECOGNIZER_STORAGE when set, else here), except under an object-store
    $RECOGNIZER_STORAGE: the demo trains (run.storage_path), searches and writes files, so then the working
    directory (~/recognizer_runs in a `ray job submit` package, which Ray deletes). Before, the job trained the
    demo's run folder into the bucket, where this file-based search never looked: it trained at every run."""
    uri = output_uri(relative)
    if not is_remote(uri):
        return uri, False
    base = Path(DEFAULT_JOB_ROOT).expanduser() if ray_package_root(os.getcwd()) else Path.cwd()
    return str(base / relative), True


def search_roots() -> list[str]:
    """Where newest_local_model looks: the demo's runs folder (demo_folder: where a train job started from this
    working directory writes it, or a local one under an object-store $RECOGNIZER_STORAGE), then ~/ray_results.
    The same rule as the train job's, so the demo model it trains is found from any folder: a bare `work_dirs`
    was the caller's folder while the job, run from the repo root, wrote the repo's."""
    return [demo_folder(RUNS_FOLDER)[0], "~/ray_results"]


def newest_local_model(roots: Sequence[str | Path] | None = None) -> Path | None:
    """The run folder or Tune summary (config.yaml / best_config.yaml beside a best_*_epoch_*.pth) whose best
    model is the newest under `roots` (default: search_roots()); None when there is none."""
    found = []
    roots = search_roots() if roots is None else roots
    for root in roots:
        root = Path(root).expanduser()
        if not root.is_dir():
            continue
        for pth in root.rglob(BEST_GLOB):
            folder = pth.parent
            if (folder / "config.yaml").is_file() or (folder / "best_config.yaml").is_file():
                found.append((pth.stat().st_mtime, folder))
    return max(found)[1] if found else None


def side_by_side(events: Sequence[Event], truth: Sequence[dict], label_names: Sequence[str]) -> str:
    """A text table: every true event with the detections that overlap it, then detections matching nothing."""
    lines = [f"{'true event':<28} {'detected':<40}"]
    used = set()
    for t in truth:
        known = t["label"] in label_names
        hits = [i for i, e in enumerate(events)
                if e.label == t["label"] and e.start_s < t["end_s"] and e.end_s > t["start_s"]]
        used.update(hits)
        det = ", ".join(f"{events[i].start_s:5.1f}-{events[i].end_s:5.1f} s (peak {events[i].peak_score:.2f})"
                        for i in hits) or ("MISSED" if known else "(class not in this model)")
        lines.append(f"{t['label']:<9} {t['start_s']:5.1f}-{t['end_s']:5.1f} s      {det}")
    for i, e in enumerate(events):
        if i not in used:
            lines.append(f"{'(none: false alarm)':<28} {e.label} {e.start_s:5.1f}-{e.end_s:5.1f} s "
                         f"(peak {e.peak_score:.2f}, tracks {e.track_ids})")
    return "\n".join(lines)
