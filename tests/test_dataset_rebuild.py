"""Stage 3 over a poses folder that changed between extraction runs: edited, moved and relabelled videos, stale pkls
of an earlier build, data errors as one line, and the build's row order with Ray (a fake Ray Data, no cluster)."""
from __future__ import annotations

import json
import logging
import pickle
import shutil

import numpy as np
import pytest

from recognizer_core.dataset import build as build_mod
from recognizer_core.dataset.build import plan_videos, run_build
from recognizer_core.dataset.config import DatasetBuildConfig
from recognizer_core.extract.clip_files import write_clip_file
from recognizer_core.extract.manifest import DONE, EMPTY, ExtractionManifest
from recognizer_core.extract.sources import VideoSource
from recognizer_core.skeleton.clip import SkeletonClip
from recognizer_core.skeleton.store import SkeletonDataset
from tests.fakes.fake_ray_data import FakeRayData

NAMES = ["normal", "fall"]
SOURCE = "/in"   # the source (input folder) the listings belong to


def _clip(vid: str, label_name: str, T: int = 120, seed: int = 0) -> SkeletonClip:
    rng = np.random.default_rng(seed)
    kp = rng.uniform(10, 300, (2, T, 17, 2)).astype(np.float32)
    sc = rng.uniform(0.3, 1, (2, T, 17)).astype(np.float32)
    return SkeletonClip(vid, NAMES.index(label_name), kp, sc, (480, 640), T, label_name=label_name,
                        source_video=f"/in/{vid}.mp4", fps=30.0, track_ids=np.arange(2, dtype=np.int32),
                        frame_inds=np.arange(T, dtype=np.int32), extra={"box_score": sc.mean(-1)})


def _video(rel: str, label: str = "", mtime: int = 0, split: str = "") -> VideoSource:
    return VideoSource(f"/in/{rel}", rel, label or rel.split("/")[-2], split, 100, mtime)


def _extract(root, videos: list[VideoSource], done: list[VideoSource], T: int = 120, listing: bool = True):
    """What an extraction run leaves: a clip file + DONE record per video in `done`, and (new) the listing."""
    (root / "clips").mkdir(parents=True, exist_ok=True)
    (root / "labels.json").write_text(json.dumps({"label_names": NAMES}))
    man = ExtractionManifest(str(root))
    if listing:   # the job writes it when it starts, before any video is done
        man.write_listing(videos, SOURCE)
    _done(man, root, done, T=T)
    return man


def _done(man: ExtractionManifest, root, videos: list[VideoSource], seed: int = 0, T: int = 120) -> None:
    """Each video extracted: its clip file and DONE record."""
    for i, v in enumerate(videos):
        rel = f"clips/{v.video_id}.parquet"
        write_clip_file(_clip(v.video_id, v.label_name, T, seed=seed + i + v.mtime_ns), root / rel)
        man.record(DONE, v.key, uri=v.uri, rel_path=v.rel_path, video_id=v.video_id, label_name=v.label_name,
                   split=v.split, output=rel)


def _cfg(root, out, **kw) -> DatasetBuildConfig:
    return DatasetBuildConfig.model_validate({"poses": str(root), "output": str(out), "use_ray": False,
                                              "window": {"clip_len": 60, "stride": 60}, **kw})


def _videos_in(out) -> dict[str, set[tuple[str, str]]]:
    """{video_id: {(label_name, split)}} over the dataset's windows."""
    idx = SkeletonDataset(out).index(columns=["clip_id", "label_name", "split", "num_frames"]).to_pydict()
    seen: dict[str, set] = {}
    for cid, ln, sp in zip(idx["clip_id"], idx["label_name"], idx["split"]):
        seen.setdefault(cid.split("@")[0], set()).add((ln, sp))
    return seen


def _source(n: int = 12) -> list[VideoSource]:
    return [_video(f"{NAMES[i % 2]}/c{i:02d}.mp4") for i in range(n)]


def test_an_edited_video_is_built_once_at_its_new_version(tmp_path):
    """An edit gives a new key, the same video_id and clip file: two DONE records for one file made the build fail
    ("clip_id is not unique"). The new version (180 frames: 3 windows, the old one had 2) is the one built."""
    videos = _source()
    man = _extract(tmp_path / "poses", videos, videos)
    edited = VideoSource(videos[3].uri, videos[3].rel_path, "fall", "", 200, 777)
    write_clip_file(_clip(edited.video_id, "fall", T=180, seed=9), tmp_path / f"poses/clips/{edited.video_id}.parquet")
    man.record(DONE, edited.key, uri=edited.uri, rel_path=edited.rel_path, video_id=edited.video_id,
               label_name="fall", split="", output=f"clips/{edited.video_id}.parquet")
    man.write_listing(videos[:3] + [edited] + videos[4:], SOURCE)
    jobs, _, _ = plan_videos(_cfg(tmp_path / "poses", tmp_path / "ds"))
    assert len(jobs) == 12 and sum(j["path"].endswith(f"/{edited.video_id}.parquet") for j in jobs) == 1
    summary = run_build(_cfg(tmp_path / "poses", tmp_path / "ds"))
    assert summary["videos"] == 12 and summary["clips"] == 11 * 2 + 3
    # an output written before listings existed: the newest record of each video_id
    shutil.rmtree(tmp_path / "poses" / "listings")
    records, stale = ExtractionManifest(str(tmp_path / "poses")).current_done()
    assert len(records) == 12 and stale == 1 and [r for r in records if r["video_id"] == edited.video_id][0]["key"] \
        == edited.key
    assert run_build(_cfg(tmp_path / "poses", tmp_path / "ds2"))["clips"] == 25


def test_a_moved_or_deleted_video_leaves_the_dataset(tmp_path):
    """normal/c04.mp4 moved to fall/ is extracted again under a new video_id; the old record and clip file stay.
    The same footage was built twice, once per label, often in different splits."""
    videos = _source()
    moved_from = videos[4]
    moved_to = _video("fall/c04.mp4", mtime=moved_from.mtime_ns)
    now = [v for v in videos if v is not moved_from and v is not videos[7]] + [moved_to]   # c07 deleted
    man = _extract(tmp_path / "poses", videos, videos)
    _extract(tmp_path / "poses", now, [moved_to])
    assert man.status(moved_to.key) is None   # (extraction redoes it: a new key)
    run_build(_cfg(tmp_path / "poses", tmp_path / "ds"))
    seen = _videos_in(tmp_path / "ds")
    assert moved_from.video_id not in seen and videos[7].video_id not in seen
    assert {ln for ln, _ in seen[moved_to.video_id]} == {"fall"} and len(seen) == 11


def test_recognize_on_a_poses_folder_scores_only_its_current_videos(tmp_path):
    """recognize --input <poses folder> read every file in clips/: a moved video's old file (the path no longer
    exists) and a deleted video were scored beside the current ones. It takes the build's current videos now."""
    from recognizer_core.recognize.runner import iter_skeleton_clips
    videos = _source()
    moved_from, moved_to = videos[4], _video("fall/c04.mp4", mtime=videos[4].mtime_ns)
    now = [v for v in videos if v is not moved_from and v is not videos[7]] + [moved_to]   # c07 deleted
    _extract(tmp_path / "poses", videos, videos)
    _extract(tmp_path / "poses", now, [moved_to])
    assert len(list((tmp_path / "poses/clips").glob("*.parquet"))) == 13   # the old files stay on disk
    want = sorted(v.video_id for v in now)
    for given in (tmp_path / "poses", tmp_path / "poses/clips"):
        assert sorted(c.clip_id for c in iter_skeleton_clips(given)) == want
    plain = tmp_path / "plain"   # a folder of clip files without an extraction's records: every file
    plain.mkdir()
    for f in sorted((tmp_path / "poses/clips").glob("*.parquet"))[:3]:
        (plain / f.name).write_bytes(f.read_bytes())
    assert len(list(iter_skeleton_clips(plain))) == 3


def test_a_label_fixed_in_the_csv_is_taken_from_the_listing(tmp_path):
    """Same file, label changed in the CSV: same key, so extraction skips it and its record keeps the old label."""
    videos = [_video(f"v{i:02d}.mp4", NAMES[i % 2], split="train" if i < 8 else "val") for i in range(10)]
    _extract(tmp_path / "poses", videos, videos)
    fixed = VideoSource(videos[2].uri, videos[2].rel_path, "fall", "val", videos[2].size, videos[2].mtime_ns)
    ExtractionManifest(str(tmp_path / "poses")).write_listing(videos[:2] + [fixed] + videos[3:], SOURCE)
    assert fixed.key == videos[2].key
    run_build(_cfg(tmp_path / "poses", tmp_path / "ds"))
    ds = SkeletonDataset(tmp_path / "ds")
    rows = [r for r in ds.index(columns=["clip_id", "label", "label_name", "split"]).to_pylist()
            if r["clip_id"].startswith(fixed.video_id)]
    assert rows and all((r["label"], r["label_name"], r["split"]) == (1, "fall", "val") for r in rows)
    assert all(c.label_name == "fall" for c in ds.iter_clips("val") if c.clip_id.startswith(fixed.video_id))


def test_a_video_whose_current_version_is_empty_is_left_out(tmp_path):
    """Edited into a clip with nobody in it: the old clip file (old footage) stays, but it is not this video now."""
    videos = _source(6)
    man = _extract(tmp_path / "poses", videos, videos)
    edited = VideoSource(videos[0].uri, videos[0].rel_path, videos[0].label_name, "", 5, 5)
    man.record(EMPTY, edited.key, video_id=edited.video_id, reason="no person detected")
    man.write_listing([edited] + videos[1:], SOURCE)
    jobs, _, _ = plan_videos(_cfg(tmp_path / "poses", tmp_path / "ds"))
    assert len(jobs) == 5 and not any(edited.video_id in j["path"] for j in jobs)


def test_extraction_writes_the_listing_of_every_video(tmp_path):
    """run_prepared writes its source's listing of the videos it lists, skipped ones included (here all are: no
    Ray)."""
    from recognizer_core.extract.config import ExtractionConfig
    from recognizer_core.extract.job import ExtractionPlan, run_prepared

    videos = _source(4)
    man = _extract(tmp_path / "poses", videos, videos, listing=False)
    cfg = ExtractionConfig.model_validate({"source": {"input": SOURCE}, "output": str(tmp_path / "poses")})
    run_prepared(ExtractionPlan(cfg, man, videos, NAMES, [], {DONE: 4, EMPTY: 0, "failed": 0}), verbose=False)
    listed = ExtractionManifest(str(tmp_path / "poses")).listing()
    assert listed == [{"video_id": v.video_id, "rel_path": v.rel_path, "label_name": v.label_name, "split": "",
                       "key": v.key} for v in videos]


def test_videos_of_two_sources_extracted_into_one_folder_are_both_built(tmp_path):
    """Each source keeps its own listing: footage of a second camera folder extracted into the same poses folder
    does not hide the first folder's videos, and re-listing one source (a video deleted there) leaves the other."""
    first = _source(6)
    second = [_video(f"{NAMES[i % 2]}/cam2_{i}.mp4") for i in range(4)]
    man = _extract(tmp_path / "poses", first, first)
    _done(man, tmp_path / "poses", second, seed=50)
    man.write_listing(second, "/camera2")
    jobs, _, _ = plan_videos(_cfg(tmp_path / "poses", tmp_path / "ds"))
    assert len(jobs) == 10
    man.write_listing(first[1:], SOURCE)   # first[0] deleted from its folder
    jobs, _, _ = plan_videos(_cfg(tmp_path / "poses", tmp_path / "ds"))
    assert len(jobs) == 9 and not any(first[0].video_id in j["path"] for j in jobs)


def test_a_rebuild_removes_the_previous_builds_pkls(tmp_path):
    videos = _source(12)
    _extract(tmp_path / "poses", videos, videos)
    first = run_build(_cfg(tmp_path / "poses", tmp_path / "ds", write_pkl=True))
    assert sorted(first["splits"]) == ["test", "train", "val"]
    again = run_build(_cfg(tmp_path / "poses", tmp_path / "ds", write_pkl=True, split={"ratios": (0.9, 0.1, 0.0)}))
    assert sorted(again["splits"]) == ["train", "val"]
    assert sorted(p.name for p in (tmp_path / "ds/mmaction_pkl").iterdir()) == [
        "train.label_map.txt", "train.pkl", "val.label_map.txt", "val.pkl"]
    # a pkl_dir of the user's: only what the previous build listed goes, other files stay
    own = tmp_path / "mine"
    own.mkdir()
    (own / "keep.pkl").write_bytes(b"x")
    run_build(_cfg(tmp_path / "poses", tmp_path / "ds", write_pkl=True, pkl_dir=str(own)))
    assert not (tmp_path / "ds/mmaction_pkl").exists() or not list((tmp_path / "ds/mmaction_pkl").iterdir())
    run_build(_cfg(tmp_path / "poses", tmp_path / "ds", write_pkl=True, pkl_dir=str(own),
                   split={"ratios": (1.0, 0.0, 0.0)}))
    assert sorted(p.name for p in own.iterdir()) == ["keep.pkl", "train.label_map.txt", "train.pkl"]
    # the guide's config: ann_file_train with no `split=`; mmaction2 1.2.0's PoseDataset.load_data_list then
    # takes the file's top level as the samples (a {'split', 'annotations'} dict gave its two keys, a TypeError)
    data_list = pickle.loads((own / "train.pkl").read_bytes())
    assert isinstance(data_list, list) and len(data_list) == 24
    assert all(isinstance(x, dict) and x["frame_dir"] and x["keypoint"].ndim == 4 for x in data_list)


def test_classes_missing_from_a_split_are_warned_in_one_line(tmp_path, caplog):
    videos = [_video(f"normal/n{i}.mp4") for i in range(5)] + [_video(f"fall/f{i}.mp4") for i in range(2)]
    _extract(tmp_path / "poses", videos, videos)
    with caplog.at_level(logging.WARNING, logger="recognizer_core.dataset.build"):
        summary = run_build(_cfg(tmp_path / "poses", tmp_path / "ds"))
    assert summary["classes_missing_from_splits"] == {"test": ["fall"], "val": ["fall"]}
    (msg,) = [r.getMessage() for r in caplog.records if "missing" in r.getMessage()]
    assert "\n" not in msg and "test: fall; val: fall" in msg


def test_build_cli_data_errors_are_one_line(tmp_path, capsys):
    from rayjobs.build_dataset import main

    videos = _source(4)
    _extract(tmp_path / "poses", videos, videos, listing=False)   # old output: two records for one file
    twice = videos[1]
    ExtractionManifest(str(tmp_path / "poses")).record(DONE, "other-key", video_id="dup", label_name="normal",
                                                        output=f"clips/{twice.video_id}.parquet")
    (tmp_path / "poses" / "clips" / f"{videos[0].video_id}.parquet").write_bytes(b"not parquet")   # skipped
    rc = main(["--poses", str(tmp_path / "poses"), "--output", str(tmp_path / "ds"), "--set", "use_ray=false"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("error: ") and "\n" not in err and "Traceback" not in err
    assert "clip_id is not unique" in err


def test_an_error_out_of_a_ray_task_keeps_its_traceback():
    """A bad clip file is skipped inside the window task (tests/test_build_bad_clips.py), so what Ray hands back
    wrapped is a bug: a traceback, not one line. Bad input met on the driver is still one line."""
    from rayjobs.build_dataset import _data_error

    real = ValueError("clips/x.parquet: expected one clip per video file, found 2")
    user = RuntimeError("UDF failed to process a data block.")
    user.__cause__ = real
    assert _data_error(user) is None and _data_error(real) is real and _data_error(OSError("disk")) is not None


def test_ray_build_preserves_the_video_order(tmp_path, monkeypatch):
    """Ray Data hands blocks back as tasks finish unless preserve_order is set (read where the dataset is made)."""
    videos = _source(6)
    _extract(tmp_path / "poses", videos, videos)
    cfg = _cfg(tmp_path / "poses", tmp_path / "ds")
    jobs, _, _ = plan_videos(cfg)
    fake = FakeRayData().install(monkeypatch)   # runs the batches in order: only the context setting is under test
    with_ray = [c.clip_id for c in build_mod.iter_windows(cfg.model_copy(update={"use_ray": True}), jobs)]
    assert fake.preserve_order == [True]
    # and only for it: the context is the process's (a later Ray Data job in it held its blocks back in order)
    assert fake.ctx.execution_options.preserve_order is False
    assert with_ray == [c.clip_id for c in build_mod.iter_windows(cfg, jobs)]


def test_a_folder_extracted_before_listings_keeps_its_videos_when_a_new_source_is_added(tmp_path):
    """The first run that wrote a listing into a folder extracted before listings existed made the build use the
    listings only: every earlier video was dropped."""
    old = _source(4)
    man = _extract(tmp_path / "poses", old, old, listing=False)   # extracted by the code before listings
    _old_config(tmp_path / "poses", input=SOURCE)
    new = [_video(f"{NAMES[i % 2]}/cam2_{i}.mp4") for i in range(2)]
    _done(man, tmp_path / "poses", new, seed=70)
    man.write_listing(new, "/camera2")
    jobs, _, _ = plan_videos(_cfg(tmp_path / "poses", tmp_path / "ds"))
    assert len(jobs) == 6
    man.write_listing(old[1:], SOURCE)   # the old folder extracted again, old[0] deleted from it: its own listing
    jobs, _, _ = plan_videos(_cfg(tmp_path / "poses", tmp_path / "ds"))
    assert len(jobs) == 5 and not any(old[0].video_id in j["path"] for j in jobs)


def test_one_video_id_in_two_listings_is_built_once(tmp_path):
    """A folder extracted, then a CSV over the same files (to fix a label): two listings name one video_id (one
    clip file); it was built twice and the build died on 'clip_id is not unique'."""
    videos = _source(4)
    man = _extract(tmp_path / "poses", videos, videos)
    relabelled = _video(videos[0].rel_path, label="fall" if videos[0].label_name == "normal" else "normal",
                        mtime=5)
    _done(man, tmp_path / "poses", [relabelled], seed=9)
    man.write_listing([relabelled], "/in/labels.csv")
    jobs, _, _ = plan_videos(_cfg(tmp_path / "poses", tmp_path / "ds"))
    assert len(jobs) == 4
    (job,) = [j for j in jobs if relabelled.video_id in j["path"]]
    assert job["label_name"] == relabelled.label_name     # the newest record's (the file on disk is its)
    run_build(_cfg(tmp_path / "poses", tmp_path / "ds"))  # one clip_id each


def test_a_csv_source_extracted_before_listings_is_listed_by_its_own_file_when_run_again(tmp_path):
    """A folder extracted from a CSV before listings existed, then run again with the CSV minus one video and
    another relabelled: the legacy listing kept every old entry (its keys are not under the CSV's path) and won
    ties by file name, so the deleted video stayed and the relabelled one could keep its old label."""
    old = _source(4)
    man = _extract(tmp_path / "poses", old, old, listing=False)
    _old_config(tmp_path / "poses", manifest_csv="/in/labels.csv")
    relabelled = VideoSource(old[1].uri, old[1].rel_path, "fall" if old[1].label_name == "normal" else "normal",
                             "", old[1].size, old[1].mtime_ns)     # the same file (same key): only the CSV changed
    man.write_listing([old[0], relabelled, old[3]], "/in/labels.csv")   # old[2] left out of the CSV
    jobs, _, _ = plan_videos(_cfg(tmp_path / "poses", tmp_path / "ds"))
    by_id = {j["path"].rsplit("/", 1)[1][: -len(".parquet")]: j for j in jobs}
    assert sorted(by_id) == sorted(v.video_id for v in (old[0], old[1], old[3]))
    assert by_id[old[1].video_id]["label_name"] == relabelled.label_name


def test_a_second_source_with_fewer_classes_keeps_the_first_sources_classes(tmp_path):
    """Each run rewrote labels.json with its own source's classes: a second camera folder with only 'fall' videos
    extracted into the same poses folder left build_dataset refusing the first folder's 'normal' videos."""
    from recognizer_core.extract.config import ExtractionConfig
    from recognizer_core.extract.job import prepare_extraction, run_prepared

    cam1, cam2 = tmp_path / "cam1", tmp_path / "cam2"
    for root, rels in ((cam1, ["normal/a.mp4", "fall/b.mp4"]), (cam2, ["fall/c.mp4"])):
        for rel in rels:
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_bytes(b"x")
    from fakes.fake_rtmo import build_fake_rtmo

    model = build_fake_rtmo(tmp_path / "rtmo.onnx")
    out = tmp_path / "poses"
    for source in (cam1, cam2):
        plan = prepare_extraction(ExtractionConfig.model_validate({
            "source": {"input": str(source)}, "output": str(out), "model": {"onnx": {"model_path": str(model)}}}))
        for v in plan.videos:   # extracted (as the job's tasks would record them), so nothing is left to do
            _done(plan.manifest, out, [v])
        run_prepared(plan.__class__(plan.cfg, plan.manifest, plan.videos, plan.label_names, [], plan.skipped),
                     verbose=False)
    assert json.loads((out / "labels.json").read_text())["label_names"] == ["fall", "normal"]
    jobs, names, _ = plan_videos(_cfg(out, tmp_path / "ds"))
    assert len(jobs) == 3 and names == ["fall", "normal"]
    # an explicit source.label_names comes first, in its order; other sources' classes that have videos follow
    cfg = {"source": {"input": str(cam2), "label_names": ["fall"]}, "output": str(out),
           "model": {"onnx": {"model_path": str(model)}}}
    assert prepare_extraction(ExtractionConfig.model_validate(cfg)).label_names == ["fall", "normal"]
    # a class renamed in the first source (normal -> walking) is gone once no source has videos of it
    (cam1 / "normal").rename(cam1 / "walking")
    cfg = {"source": {"input": str(cam1)}, "output": str(out), "model": {"onnx": {"model_path": str(model)}}}
    assert prepare_extraction(ExtractionConfig.model_validate(cfg)).label_names == ["fall", "walking"]
    cfg["source"]["label_names"] = ["walking", "fall"]
    assert prepare_extraction(ExtractionConfig.model_validate(cfg)).label_names == ["walking", "fall"]
    # the same in a folder with one source (its own listing skipped: no other source, not "no listings")
    cfg = {"source": {"input": str(cam2)}, "output": str(tmp_path / "poses2"),
           "model": {"onnx": {"model_path": str(model)}}}
    plan = prepare_extraction(ExtractionConfig.model_validate(cfg))
    run_prepared(plan.__class__(plan.cfg, plan.manifest, plan.videos, plan.label_names, [], plan.skipped),
                 verbose=False)   # its listing is written when the run starts, the videos' records as they finish
    _done(plan.manifest, tmp_path / "poses2", plan.videos)
    (cam2 / "fall").rename(cam2 / "falling")
    assert prepare_extraction(ExtractionConfig.model_validate(cfg)).label_names == ["falling"]


def _old_config(root, input: str = "", manifest_csv: str = "") -> None:
    """The extraction_config.yaml the code before listings wrote: which source the folder was last extracted from."""
    (root / "extraction_config.yaml").write_text(json.dumps({"source": {"input": input,
                                                                        "manifest_csv": manifest_csv}}))


def test_a_csv_under_a_folder_extracted_before_listings_leaves_the_folders_videos(tmp_path, monkeypatch):
    """A folder extracted before listings existed, then a CSV that lies in it naming one new video (the job, as a
    user runs it): the CSV's run pruned every old video under its folder from the build; and with a video to
    extract, the run replaced the old extraction_config.yaml (which names whose the old videos are) first."""
    import ray

    from fakes.fake_rtmo import build_fake_rtmo
    from recognizer_core.extract.config import ExtractionConfig, SourceConfig
    from recognizer_core.extract.job import prepare_extraction, run_prepared
    from recognizer_core.extract.sources import list_videos

    folder, out = tmp_path / "videos", tmp_path / "poses"
    for rel in ("normal/a.mp4", "fall/b.mp4", "new/c.mp4"):
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(rel.encode())
    old = [v for v in list_videos(SourceConfig(input=str(folder))) if not v.rel_path.startswith("new/")]
    _extract(out, old, old, listing=False)                    # extracted by the code before listings
    _old_config(out, input=str(folder))
    (folder / "extra.csv").write_text("path,label\nnew/c.mp4,fall\n")
    model = build_fake_rtmo(tmp_path / "rtmo.onnx")
    plan = prepare_extraction(ExtractionConfig.model_validate({
        "source": {"manifest_csv": str(folder / "extra.csv")}, "output": str(out),
        "model": {"onnx": {"model_path": str(model)}}}))
    assert [v.rel_path for v in plan.todo] == ["new/c.mp4"]

    def no_cluster():   # the job's Ray part is not this test's: stop where it would start extracting
        raise RuntimeError("no Ray here")
    monkeypatch.setattr(ray, "cluster_resources", no_cluster)
    with pytest.raises(RuntimeError, match="no Ray here"):
        run_prepared(plan, verbose=False)
    _done(plan.manifest, out, plan.videos)   # as the job's tasks would record it
    jobs, _, _ = plan_videos(_cfg(out, tmp_path / "ds"))
    assert len(jobs) == 3
