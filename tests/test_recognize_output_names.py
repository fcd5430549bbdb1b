"""Batch recognize's output names (no Ray): ordinary paths keep `cam1__2024-05-01.mp4.*`, a deep path's name is
cut with a hash, two videos of one output folder never share a name, and a failed write is one video's recorded
failure. Before, a deep path ended the whole run (ENAMETOOLONG) and a second video overwrote the first's outputs."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from recognizer_core.extract.manifest import DONE, FAILED, ExtractionManifest
from recognizer_core.extract.sources import VideoSource
from recognizer_core.recognize.events import Event
from recognizer_core.recognize.outputs import UniqueStems, rel_path_stem, write_video_outputs
from recognizer_core.recognize.spec import ModelSpec
from recognizer_core.recognize.windows import Window
from recognizer_core.skeleton.transforms import PipelineConfig

# the reviewer's path: valid on disk (each part is short), 246 characters under the input folder
DEEP = "/".join(["site_north_campus_building_A_parking_level_2"] * 4 + ["2024-05-01"] * 2
                + ["camera_entrance_left_2024-05-01T10-00-00.mp4"])
NAME_MAX = 255
TEMP_EXTRA = len(".") + len(".XXXXXXXX.tmp")   # atomic_write's temp file: .<name>.XXXXXXXX.tmp


def _spec() -> ModelSpec:
    return ModelSpec(label_names=["Normal", "Fight"], pipeline=PipelineConfig(), fps=30, window_frames=90)


def _result(video: str):
    windows = [Window(video, "scene", 0.0, 3.0, [0, 1], None), Window(video, "scene", 0.5, 3.5, [0, 1], None)]
    events = [Event(video, "Fight", 1.5, 2.0, 0.9, [0, 1], 1)]
    return SimpleNamespace(windows=windows, probs=np.array([[0.2, 0.8], [0.1, 0.9]]), events=events)


def _video(rel_path: str) -> VideoSource:
    return VideoSource(f"/in/{rel_path}", rel_path, "", "", 10, 1)


def test_a_deep_path_is_cut_with_a_hash_and_every_output_file_is_written(tmp_path):
    stem = rel_path_stem(DEEP)
    assert len(stem) + len(".timeline.png") + TEMP_EXTRA <= NAME_MAX, len(stem)
    assert stem.startswith("site_north_campus_building_A_parking_level_2__")   # still readable
    assert stem.endswith("_" + hashlib.sha1(DEEP.encode()).hexdigest()[:8]) and rel_path_stem(DEEP) == stem
    assert rel_path_stem(DEEP.replace("left", "right")) != stem   # the cut part differs: the hash tells them apart
    res = _result(DEEP)
    files = write_video_outputs(tmp_path, DEEP, res.windows, res.probs, res.events, _spec(), timeline=True, stem=stem)
    assert sorted(files) == ["events_csv", "events_jsonl", "timeline_png", "windows_csv"]
    assert json.loads(Path(files["events_jsonl"]).read_text())["video"] == DEEP


def test_ordinary_paths_keep_their_names_and_colliding_ones_get_a_hash(tmp_path):
    # documented names (docs/recognize.md): outputs and resume records of earlier runs must keep working
    assert rel_path_stem("cam1/2024-05-01.mp4") == "cam1__2024-05-01.mp4" and rel_path_stem("x.mp4") == "x.mp4"
    from recognizer_core.recognize.batch import output_stems

    rels = ["Camera 1/x.mp4", "Camera_1/x.mp4", "cam1/2024-05-01.mp4", "cam1/night__01.mp4", "cam1__night/01.mp4"]
    stems, redo = output_stems(ExtractionManifest(str(tmp_path / "out")), [_video(r) for r in rels])
    assert len(set(stems.values())) == len(rels) and redo == set(), stems
    h = {r: hashlib.sha1(f"{r}\n/in/{r}".encode()).hexdigest()[:8] for r in rels}   # path and file
    assert stems == {"Camera 1/x.mp4": "Camera_1__x.mp4", "Camera_1/x.mp4": f"Camera_1__x.mp4_{h['Camera_1/x.mp4']}",
                     "cam1/2024-05-01.mp4": "cam1__2024-05-01.mp4", "cam1/night__01.mp4": "cam1__night__01.mp4",
                     "cam1__night/01.mp4": f"cam1__night__01.mp4_{h['cam1__night/01.mp4']}"}
    # the skeleton path's names are unchanged: the file name, with a hash of the full path for a second video
    names = UniqueStems()
    assert names("/nvr/cam1/x.mp4") == "x.mp4" and names("/nvr/cam1/x.mp4") == "x.mp4"
    assert names("/nvr/cam2/x.mp4") == f"x.mp4_{hashlib.sha1(b'/nvr/cam2/x.mp4').hexdigest()[:8]}"


def test_an_earlier_runs_outputs_keep_their_name_and_a_shared_events_file_is_redone(tmp_path):
    from recognizer_core.recognize.batch import output_stems

    out = tmp_path / "out"
    m = ExtractionManifest(str(out))
    late, early = _video("cam1__night/01.mp4"), _video("cam1/night__01.mp4")   # `early` sorts first
    m.record(DONE, late.key, rel_path=late.rel_path, output="cam1__night__01.mp4.events.jsonl")
    stems, redo = output_stems(ExtractionManifest(str(out)), [early, late])
    assert stems[late.rel_path] == "cam1__night__01.mp4" and stems[early.rel_path] != "cam1__night__01.mp4"
    assert redo == set()
    # an older version's run wrote both into one file (the newer record's video wrote it last): the other is redone
    m.record(DONE, early.key, rel_path=early.rel_path, output="cam1__night__01.mp4.events.jsonl")
    stems, redo = output_stems(ExtractionManifest(str(out)), [early, late])
    assert stems[early.rel_path] == "cam1__night__01.mp4" and stems[late.rel_path] != stems[early.rel_path]
    assert redo == {late.key}


def test_two_files_with_one_path_in_one_output_folder_get_two_names(tmp_path):
    """day1/cam1.mp4 then day2/cam1.mp4, each given alone (one path, cam1.mp4), into one --output: the second run
    overwrote the first's outputs, and a later day1 run read day2's events back as done."""
    from recognizer_core.recognize.batch import output_stems

    out = tmp_path / "out"
    day1, day2 = VideoSource("/data/day1/cam1.mp4", "cam1.mp4", "", "", 10, 1), \
        VideoSource("/data/day2/cam1.mp4", "cam1.mp4", "", "", 12, 2)
    m = ExtractionManifest(str(out))
    m.record(DONE, day1.key, rel_path=day1.rel_path, output="cam1.mp4.events.jsonl")
    stems, redo = output_stems(ExtractionManifest(str(out)), [day2])
    assert stems["cam1.mp4"] != "cam1.mp4" and redo == set()
    stems, redo = output_stems(ExtractionManifest(str(out)), [day1])   # day1 again: its own name, nothing redone
    assert stems["cam1.mp4"] == "cam1.mp4" and redo == set()


def test_a_failed_write_is_a_recorded_failure_and_a_good_one_names_its_events_file(tmp_path):
    from recognizer_core.recognize.batch import write_recorded_outputs

    v = _video("cam1/2024-05-01.mp4")
    blocked = tmp_path / "out"
    blocked.write_text("a file where the output folder should be")
    rec = {"status": DONE, "rel_path": v.rel_path}
    assert not write_recorded_outputs(blocked, v, "cam1__2024-05-01.mp4", rec, _result(v.rel_path), _spec(), False)
    assert rec["status"] == FAILED and rec["reason"].startswith(f"writing outputs into {blocked} failed: "), rec
    rec = {"status": DONE, "rel_path": v.rel_path}
    assert write_recorded_outputs(tmp_path / "ok", v, "cam1__2024-05-01.mp4", rec, _result(v.rel_path), _spec(), False)
    assert rec == {"status": DONE, "rel_path": v.rel_path, "output": "cam1__2024-05-01.mp4.events.jsonl",
                   "events": 1, "windows": 2}
