"""Two sources, or two runs at once, extracting into one poses folder: labels.json keeps every listed source's
classes, and one relative path under two input folders gives two clip files, not one overwritten. No Ray: each
run's planning (prepare_extraction) and the start of run_prepared (listing, labels.json), stopped where extraction
would begin, then the DONE records its tasks would return."""
from __future__ import annotations

import json
import os

import pytest

from recognizer_core.dataset.build import plan_videos
from recognizer_core.dataset.config import DatasetBuildConfig
from recognizer_core.extract import job
from recognizer_core.extract.config import ExtractionConfig
from recognizer_core.extract.manifest import DONE, ExtractionManifest
from recognizer_core.extract.sources import SourceError


class _Stop(Exception):
    """Raised where run_prepared would start extracting (after its listing and labels.json)."""


@pytest.fixture(autouse=True)
def _no_model(monkeypatch):
    # the bookkeeping is this file's subject: no model file, no local CUDA check (a cluster address skips it)
    monkeypatch.setattr(job, "check_model_file", lambda model: None)
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:1")


def _videos(root, rels: dict[str, bytes]) -> None:
    for rel, data in rels.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)


def _plan(source, out, csv: str = ""):
    src = {"manifest_csv": str(csv)} if csv else {"input": str(source)}
    return job.prepare_extraction(ExtractionConfig.model_validate({"source": src, "output": str(out)}))


def _start(plan, monkeypatch) -> None:
    """run_prepared up to where it would start Ray work: listing, id re-check, labels.json written."""
    _stop_before_extracting(plan, monkeypatch)
    with pytest.raises(_Stop):
        job.run_prepared(plan, verbose=False)


def _stop_before_extracting(plan, monkeypatch) -> None:
    def stop(*args, **kwargs):
        raise _Stop
    monkeypatch.setattr(plan.manifest, "remove_partial_files", stop)


def _finish(plan) -> None:
    """What the driver records as each video's task returns: its clip file, then its DONE record."""
    for v in plan.todo:
        rel = f"clips/{v.video_id}.parquet"
        path = os.path.join(plan.cfg.output, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(v.uri.encode())   # which video's skeleton the file holds
        plan.manifest.record(DONE, v.key, uri=v.uri, video_id=v.video_id, rel_path=v.rel_path,
                             label_name=v.label_name, split=v.split, output=rel)


def _labels(out) -> list[str]:
    return json.loads((out / "labels.json").read_text())["label_names"]


@pytest.mark.parametrize("order", ["planned_and_started_in_turn", "both_planned_then_a_starts_first",
                                   "both_planned_then_b_starts_first"])
def test_two_runs_at_once_keep_both_sources_classes(tmp_path, monkeypatch, order):
    """Run B started while run A was still extracting (A had no finished video yet) replaced A's classes in
    labels.json by its own: build_dataset refused A's videos until A was run again."""
    _videos(tmp_path / "srcA", {"Fight/f.mp4": b"f", "Walk/w.mp4": b"w"})
    _videos(tmp_path / "srcB", {"Fall/a.mp4": b"a", "Sit/s.mp4": b"s"})
    out = tmp_path / "poses"
    if order == "planned_and_started_in_turn":
        a = _plan(tmp_path / "srcA", out)
        _start(a, monkeypatch)
        b = _plan(tmp_path / "srcB", out)
        _start(b, monkeypatch)
    else:   # both planned before either wrote its listing: labels.json is merged again as it is written
        a, b = _plan(tmp_path / "srcA", out), _plan(tmp_path / "srcB", out)
        for plan in ((a, b) if order.endswith("a_starts_first") else (b, a)):
            _start(plan, monkeypatch)
    assert sorted(_labels(out)) == ["Fall", "Fight", "Sit", "Walk"]
    _finish(a)
    _finish(b)
    jobs, names, _ = plan_videos(DatasetBuildConfig(poses=str(out), output=str(tmp_path / "ds"), use_ray=False))
    assert len(jobs) == 4 and sorted(names) == ["Fall", "Fight", "Sit", "Walk"]
    # a source re-run keeps the other's classes, listed (whether or not their videos are done)
    assert sorted(_plan(tmp_path / "srcB", out).label_names) == ["Fall", "Fight", "Sit", "Walk"]


def test_one_relative_path_under_two_folders_gives_two_clip_files(tmp_path, monkeypatch):
    """datasetA/Fight/1.mp4 and datasetB/Fight/1.mp4 had one video_id: B's clip overwrote A's, A's DONE record
    pointed at B's skeleton and build_dataset built one video of two."""
    _videos(tmp_path / "datasetA", {"Fight/1.mp4": b"video A"})
    _videos(tmp_path / "datasetB", {"Fight/1.mp4": b"video B, another size"})
    out = tmp_path / "poses"
    a = _plan(tmp_path / "datasetA", out)
    _start(a, monkeypatch)
    _finish(a)
    b = _plan(tmp_path / "datasetB", out)
    assert [v.rel_path for v in b.todo] == ["Fight/1.mp4"]
    id_a, id_b = a.videos[0].video_id, b.videos[0].video_id
    assert id_a != id_b and id_a.startswith("1-") and id_b.startswith("1-")
    _start(b, monkeypatch)
    _finish(b)
    listed = {r["video_id"]: r for r in ExtractionManifest(str(out)).listing()}
    assert sorted(listed) == sorted([id_a, id_b])   # B's own id is what its listing records
    done, _ = ExtractionManifest(str(out)).current_done()
    assert sorted((out / r["output"]).read_text() for r in done) == sorted([a.videos[0].uri, b.videos[0].uri])
    jobs, _, _ = plan_videos(DatasetBuildConfig(poses=str(out), output=str(tmp_path / "ds"), use_ray=False))
    assert len(jobs) == 2
    # ids never change: a resume of either source re-extracts nothing, under the same ids
    for source, vid in (("datasetA", id_a), ("datasetB", id_b)):
        again = _plan(tmp_path / source, out)
        assert again.todo == [] and again.videos[0].video_id == vid
    # an edited B video (new key) keeps its id too: the next free one is the same while A's file is there
    (tmp_path / "datasetB/Fight/1.mp4").write_bytes(b"video B, edited")
    edited = _plan(tmp_path / "datasetB", out)
    assert [v.video_id for v in edited.todo] == [id_b]


def test_one_file_under_two_names_keeps_one_id(tmp_path, monkeypatch):
    """Only another file gets another id: the same file through a CSV, a symlinked folder or a source folder moved
    elsewhere (same size and mtime) keeps the id, so it is built once, not twice."""
    _videos(tmp_path / "datasetA", {"Fight/1.mp4": b"video A"})
    out = tmp_path / "poses"
    a = _plan(tmp_path / "datasetA", out)
    _start(a, monkeypatch)
    _finish(a)
    vid = a.videos[0].video_id
    (tmp_path / "datasetA/list.csv").write_text("path,label\nFight/1.mp4,Fight\n")
    assert _plan(None, out, csv=tmp_path / "datasetA/list.csv").videos[0].video_id == vid
    os.symlink(tmp_path / "datasetA", tmp_path / "linkA")
    assert _plan(tmp_path / "linkA", out).videos[0].video_id == vid
    os.rename(tmp_path / "datasetA", tmp_path / "moved")   # mv keeps size and mtime
    assert _plan(tmp_path / "moved", out).videos[0].video_id == vid


def test_a_second_dataset_does_not_take_the_ids_of_an_archived_one(tmp_path, monkeypatch):
    """Source A extracted, then its raw videos archived (gone from this host); source B, another dataset with the
    same names: B took A's id ('a moved folder'), overwrote A's clip, and A dropped out of the build silently."""
    _videos(tmp_path / "datasetA", {"Fight/1.mp4": b"video A"})
    out = tmp_path / "poses"
    a = _plan(tmp_path / "datasetA", out)
    _start(a, monkeypatch)
    _finish(a)
    (tmp_path / "datasetA/Fight/1.mp4").unlink()
    _videos(tmp_path / "datasetB", {"Fight/1.mp4": b"video B, another size"})
    assert _plan(tmp_path / "datasetB", out).videos[0].video_id != a.videos[0].video_id


def test_an_id_taken_by_a_run_started_at_the_same_time_stops_before_writing(tmp_path, monkeypatch):
    """Two runs that planned before either listed its videos both chose the first id; the second to write its
    listing stops with one line naming both files, and its next run gets its own id."""
    _videos(tmp_path / "datasetA", {"Fight/1.mp4": b"video A"})
    _videos(tmp_path / "datasetB", {"Fight/1.mp4": b"video B, another size"})
    out = tmp_path / "poses"
    a, b = _plan(tmp_path / "datasetA", out), _plan(tmp_path / "datasetB", out)
    assert a.videos[0].video_id == b.videos[0].video_id
    _start(a, monkeypatch)
    _stop_before_extracting(b, monkeypatch)   # old code: went on to extract, overwriting A's clip
    with pytest.raises(SourceError, match="datasetA/Fight/1.mp4 under the same video_id") as err:
        job.run_prepared(b, verbose=False)
    assert "datasetB/Fight/1.mp4" in str(err.value) and len(str(err.value).splitlines()) == 1
    b = _plan(tmp_path / "datasetB", out)
    assert b.videos[0].video_id != a.videos[0].video_id
    _start(b, monkeypatch)


def test_a_source_given_with_options_keeps_the_id_of_its_edited_video(tmp_path, monkeypatch, s3):
    """A bucket extracted as s3://bkt/v, then given with pyarrow options (s3://bkt/v?region=...) after a video was
    edited (a new key, so it is extracted again): the earlier listing names the same object (its uri without the
    options), so the video keeps its id and its clip file is replaced, not joined by a second clip of it."""
    s3.create_bucket(Bucket="ids-opts")   # moto keeps buckets across tests: its own
    s3.put_object(Bucket="ids-opts", Key="v/Fight/a.mp4", Body=b"video a")
    out = tmp_path / "poses"
    first = _plan("s3://ids-opts/v", out)
    _start(first, monkeypatch)
    _finish(first)
    s3.put_object(Bucket="ids-opts", Key="v/Fight/a.mp4", Body=b"video a, edited")
    again = _plan("s3://ids-opts/v?region=us-east-1", out)
    assert [v.plain_uri for v in again.todo] == ["s3://ids-opts/v/Fight/a.mp4"]
    assert [v.video_id for v in again.todo] == [first.videos[0].video_id]
