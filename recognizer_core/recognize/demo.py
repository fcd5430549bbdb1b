"""The embedded default of rayjobs/recognize.py: find the newest local model, and show detections next to the
true events of the synthetic demo sequence."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from recognizer_core.recognize.events import Event
from recognizer_core.recognize.model import BEST_GLOB
from recognizer_core.storage import is_remote, output_uri

# The jobs' default run.storage_path (configs/*.yaml; Tune's experiments are under work_dirs/tune)
RUNS_FOLDER = "work_dirs"


def search_roots() -> list[str]:
    """Where newest_local_model looks: the runs folder where a train job started from this working directory
    writes it (`output_uri`: under $RECOGNIZER_STORAGE when set, else here; not searched when that is remote),
    then ~/ray_results. The same rule as the train job's, so the demo model it trains is found from any folder:
    a bare `work_dirs` was the caller's folder while the job, run from the repo root, wrote the repo's."""
    runs = output_uri(RUNS_FOLDER)
    return ([] if is_remote(runs) else [runs]) + ["~/ray_results"]


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
