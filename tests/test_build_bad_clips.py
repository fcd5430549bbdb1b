"""Stage 3 over a poses folder with bad clip files (truncated, a column missing, a wrong keypoint length, NaN): each
skips its video (`skipped: <path>: <reason>`, build_summary.json) and the build goes on; with Ray too, through the
same per-video code; every video bad is one error line, exit 2, and the previous dataset stays."""
from __future__ import annotations

import json
import logging

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recognizer_core.dataset import build as build_mod
from recognizer_core.dataset.build import plan_videos
from recognizer_core.dataset.config import DatasetBuildConfig
from recognizer_core.extract.clip_files import write_clip_file
from recognizer_core.extract.manifest import DONE, ExtractionManifest
from recognizer_core.extract.sources import VideoSource
from recognizer_core.skeleton.clip import SkeletonClip
from recognizer_core.skeleton.store import SkeletonDataset
from tests.fakes.fake_ray_data import FakeRayData

NAMES = ["normal", "fall"]


def _extract(root, n: int = 6) -> list[str]:
    """n extracted videos (clip file + DONE record + listing); returns their clip files' paths."""
    (root / "clips").mkdir(parents=True)
    (root / "labels.json").write_text(json.dumps({"label_names": NAMES}))
    videos = [VideoSource(f"/in/{NAMES[i % 2]}/c{i}.mp4", f"{NAMES[i % 2]}/c{i}.mp4", NAMES[i % 2], "train", 100, 0)
              for i in range(n)]
    man = ExtractionManifest(str(root))
    man.write_listing(videos, "/in")
    paths = []
    for i, v in enumerate(videos):
        rng = np.random.default_rng(i)
        kp = rng.uniform(10, 300, (2, 120, 17, 2)).astype(np.float32)
        sc = rng.uniform(0.3, 1, (2, 120, 17)).astype(np.float32)
        clip = SkeletonClip(v.video_id, i % 2, kp, sc, (480, 640), 120, label_name=v.label_name,
                            source_video=v.uri, fps=30.0)
        rel = f"clips/{v.video_id}.parquet"
        paths.append(write_clip_file(clip, root / rel))
        man.record(DONE, v.key, uri=v.uri, rel_path=v.rel_path, video_id=v.video_id, label_name=v.label_name,
                   split=v.split, output=rel)
    return paths


def _edit(path: str, fn) -> None:
    pq.write_table(fn(pq.read_table(path)), path)


def _list_col(t: pa.Table, name: str, fn) -> pa.Table:
    rows = t.column(name).to_pylist()
    rows[0] = fn(rows[0])
    return t.set_column(t.schema.get_field_index(name), name, pa.array(rows, pa.list_(pa.float32())))


def _damage(paths: list[str]) -> dict[str, str]:
    """Four kinds of bad file (as /tmp/review_badinput/mkbad_poses.py made them); {path: what its reason says}."""
    data = open(paths[0], "rb").read()
    open(paths[0], "wb").write(data[: len(data) // 2])
    _edit(paths[1], lambda t: t.drop(["keypoint_score"]))
    _edit(paths[2], lambda t: _list_col(t, "keypoint", lambda kp: kp[:-7]))
    _edit(paths[3], lambda t: _list_col(t, "keypoint", lambda kp: kp[:5] + [float("nan")] + kp[6:]))
    return {paths[0]: "Parquet magic bytes not found", paths[1]: "batch has no column 'keypoint_score'",
            paths[2]: "keypoint has 8153 values, expected", paths[3]: "keypoint has NaN/inf values"}


def _cfg(root, out, **kw) -> DatasetBuildConfig:
    return DatasetBuildConfig.model_validate({"poses": str(root), "output": str(out), "use_ray": False,
                                              "split": {"mode": "given"}, "window": {"clip_len": 60}, **kw})


def test_a_bad_clip_file_skips_its_video_and_the_build_goes_on(tmp_path, caplog):
    """Each of these ended the whole build (rc 2) before, naming no file for a missing column or a short list."""
    from rayjobs.build_dataset import main

    paths = _extract(tmp_path / "poses")
    expect = _damage(paths)
    # another tool's 'extra' column: JSON, but not an object (an AttributeError escaped the per-video catch)
    _edit(paths[4], lambda t: t.set_column(t.schema.get_field_index("extra"), "extra", pa.array(["[1, 2]"] * len(t))))
    expect[paths[4]] = "column 'extra' must hold a JSON object, got list"
    with caplog.at_level(logging.WARNING, logger="recognizer_core.dataset.build"):
        rc = main(["--poses", str(tmp_path / "poses"), "--output", str(tmp_path / "ds"), "--set", "use_ray=false",
                   "--set", "split.mode=given", "--set", "window.clip_len=60"])
    assert rc == 0
    summary = json.loads((tmp_path / "ds" / "build_summary.json").read_text())
    skipped = {s["path"]: s["reason"] for s in summary["bad_clip_files_skipped"]}
    assert sorted(skipped) == sorted(expect)
    for path, text in expect.items():
        assert text in skipped[path] and "\n" not in skipped[path] and "<batch>" not in skipped[path]
    assert "nan_policy" not in skipped[paths[3]] and "re-extract this video" in skipped[paths[3]]
    lines = [r.getMessage() for r in caplog.records]
    assert all(f"skipped: {p}: {skipped[p]}" in lines for p in paths[:5])
    assert "5 of 6 videos skipped for a bad clip file" in " ".join(lines)
    # the good video is built, 2 windows
    assert SkeletonDataset(tmp_path / "ds").splits() == {"train": 2} and summary["clips"] == 2


def test_every_bad_clip_file_is_one_error_line_and_the_old_dataset_stays(tmp_path, capsys):
    from rayjobs.build_dataset import main

    paths = _extract(tmp_path / "poses", n=4)
    args = ["--poses", str(tmp_path / "poses"), "--output", str(tmp_path / "ds"), "--set", "use_ray=false",
            "--set", "split.mode=given"]
    assert main(args) == 0
    capsys.readouterr()
    _damage(paths)
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f"error: poses: {tmp_path / 'poses'}: all 4 videos' clip files are bad, nothing to build "
                          f"(first: {paths[0]}: ")
    assert len(SkeletonDataset(tmp_path / "ds")) == 4   # the previous build, whole


def test_the_ray_path_skips_through_the_same_per_video_code(tmp_path, monkeypatch):
    """The catch is inside the function Ray Data runs: a bad file comes back as a skip row, not an exception."""
    paths = _extract(tmp_path / "poses", n=8)
    _damage([paths[i] for i in (0, 1, 3, 4)])   # batches of 2: bad only, mixed, mixed, good only
    cfg = _cfg(tmp_path / "poses", tmp_path / "ds")
    jobs, _, _ = plan_videos(cfg)
    assert [j["path"] for j in jobs] == paths
    local: list[dict] = []
    want = [c.clip_id for c in build_mod.iter_windows(cfg, jobs, local)]
    tables = FakeRayData(batch=2).install(monkeypatch).tables
    remote: list[dict] = []
    got = [c.clip_id for c in build_mod.iter_windows(cfg.model_copy(update={"use_ray": True}), jobs, remote)]
    assert got == want and len(got) == 8
    assert remote == local and len(local) == 4
    # Ray Data wants one schema for every block: a batch of only skips, only windows, or both
    assert len(tables) == 4 and all(t.schema == tables[0].schema for t in tables)


@pytest.mark.ray
def test_a_bad_clip_file_is_skipped_under_real_ray(ray_local, tmp_path):
    """Ray Data's own blocks (schemas, batching): the skip rows come back and the good videos are built."""
    paths = _extract(tmp_path / "poses")
    expect = _damage(paths)
    summary = build_mod.run_build(_cfg(tmp_path / "poses", tmp_path / "ds", use_ray=True))
    assert sorted(s["path"] for s in summary["bad_clip_files_skipped"]) == sorted(expect)
    assert summary["clips"] == 4
