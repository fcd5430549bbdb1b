"""Video listing: folder layouts, CSV manifests, labels; config validation; --help lists every field."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from recognizer_core.config import ConfigError, load_config
from recognizer_core.config_args import describe_fields
from recognizer_core.dataset.config import DatasetBuildConfig
from recognizer_core.extract.config import ExtractionConfig, SourceConfig
from recognizer_core.extract.manifest import DONE, FAILED, ExtractionManifest
from recognizer_core.extract.sources import SourceError, label_index, list_videos

REPO = Path(__file__).resolve().parents[1]


def _touch(root: Path, rel: str, data: bytes = b"x") -> None:
    (root / rel).parent.mkdir(parents=True, exist_ok=True)
    (root / rel).write_bytes(data)


def test_folder_layouts(tmp_path):
    for rel in ("train/Fight/a.avi", "train/NonFight/b.mp4", "val/Fight/c.MKV", "Falldown/d.mp4",
                "x/y/Normal/e.mp4", "notes.txt"):
        _touch(tmp_path, rel)
    videos = list_videos(SourceConfig(input=str(tmp_path)))
    got = {v.rel_path: (v.label_name, v.split) for v in videos}
    assert got == {"train/Fight/a.avi": ("Fight", "train"), "train/NonFight/b.mp4": ("NonFight", "train"),
                   "val/Fight/c.MKV": ("Fight", "val"), "Falldown/d.mp4": ("Falldown", ""),
                   "x/y/Normal/e.mp4": ("Normal", "")}
    assert len({v.video_id for v in videos}) == 5
    assert label_index(videos, []) == ["Falldown", "Fight", "NonFight", "Normal"]
    with pytest.raises(SourceError, match="lacks labels"):
        label_index(videos, ["Fight", "NonFight"])
    assert len(list_videos(SourceConfig(input=str(tmp_path), limit=2))) == 2
    with pytest.raises(SourceError, match="not a folder"):
        list_videos(SourceConfig(input=str(tmp_path / "nope")))


def test_csv_manifest_and_keys(tmp_path):
    _touch(tmp_path, "v/a.mp4", b"abc")
    _touch(tmp_path, "v/b.mp4")
    (tmp_path / "m.csv").write_text(f"path,label,split\nv/a.mp4,Fight,val\n{tmp_path}/v/b.mp4,NonFight,\n")
    videos = list_videos(SourceConfig(manifest_csv=str(tmp_path / "m.csv")))
    assert [(v.rel_path, v.label_name, v.split, v.size) for v in videos] == [
        ("v/a.mp4", "Fight", "val", 3), (f"{tmp_path}/v/b.mp4", "NonFight", "", 1)]
    key = videos[0].key
    _touch(tmp_path, "v/a.mp4", b"abcd")  # an edited file is a new key
    assert list_videos(SourceConfig(manifest_csv=str(tmp_path / "m.csv")))[0].key != key
    (tmp_path / "bad.csv").write_text("file,class\nx,y\n")
    with pytest.raises(SourceError, match="path,label"):
        list_videos(SourceConfig(manifest_csv=str(tmp_path / "bad.csv")))
    (tmp_path / "missing.csv").write_text("path,label\nv/zzz.mp4,Fight\n")
    with pytest.raises(SourceError, match="zzz.mp4: video not found"):
        list_videos(SourceConfig(manifest_csv=str(tmp_path / "missing.csv")))


def test_manifest_ignores_torn_lines_and_missing_outputs(tmp_path):
    m = ExtractionManifest(tmp_path)
    (tmp_path / "clips").mkdir()
    (tmp_path / "clips/a.parquet").write_bytes(b"x")
    m.record(DONE, "k1", output="clips/a.parquet")
    m.record(DONE, "k2", output="clips/gone.parquet")
    m.record(FAILED, "k3", reason="bad")
    with open(m.path(DONE), "a") as f:
        f.write('{"key": "k4", "outp')          # a job killed mid-write
    m2 = ExtractionManifest(tmp_path)
    assert [m2.status(k) for k in ("k1", "k2", "k3", "k4")] == [DONE, None, FAILED, None]
    # the summary's failures: a video retried with success is not one, nor an edited video's old version (k5)
    (tmp_path / "clips/c.parquet").write_bytes(b"x")
    m2.record(FAILED, "k1", reason="old", rel_path="a.mp4")
    m2.record(FAILED, "k5", reason="older version", rel_path="e.mp4")
    m2.record(DONE, "k3", output="clips/c.parquet")
    m2.record(FAILED, "k6", reason="bad", rel_path="f.mp4")
    assert m2.failures(["k1", "k3", "k6"]) == [{"rel_path": "f.mp4", "reason": "bad"}]


def test_config_errors_and_help():
    with pytest.raises(ConfigError, match="source.input or source.manifest_csv"):
        load_config(ExtractionConfig)
    with pytest.raises(ConfigError, match="model.onnx.device_id: unknown field"):
        load_config(ExtractionConfig, overrides=["source.input=x", "model.onnx.device_id=0"])
    with pytest.raises(ConfigError, match="split.ratios"):
        load_config(DatasetBuildConfig, overrides=["split.ratios=[0.5,0.5,0.5]"])
    cfg = load_config(ExtractionConfig, REPO / "configs/extraction.yaml", ["source.input=/videos"])
    assert cfg.model.inference_mode == "onnx" and cfg.model.nms_threshold == 0.45
    out = subprocess.run([sys.executable, str(REPO / "rayjobs/extract_poses.py"), "--help"], capture_output=True,
                         text=True, check=True).stdout
    for line in describe_fields(ExtractionConfig):
        name = line.strip().split(" ")[0].rstrip(":")
        assert name in out, name
    out = subprocess.run([sys.executable, str(REPO / "rayjobs/build_dataset.py"), "--help"], capture_output=True,
                         text=True, check=True).stdout
    assert "window.clip_len" in out and "split.ratios" in out and "write_pkl" in out


def test_uri_source_lists_and_decodes(tmp_path):
    import numpy as np

    from fakes.fake_rtmo import write_marker_video
    from recognizer_core.extract.video import iter_frames, probe_video

    write_marker_video(tmp_path / "val/Fight/a.mp4", [np.full((6, 2), 40.0)])
    (v,) = list_videos(SourceConfig(input=f"file://{tmp_path}"))
    assert v.uri == f"file://{tmp_path}/val/Fight/a.mp4" and (v.label_name, v.split) == ("Fight", "val")
    assert probe_video(v.uri).num_frames == 6 and len(list(iter_frames(v.uri))) == 6
    with pytest.raises(SourceError, match="nosuchscheme"):
        list_videos(SourceConfig(input="nosuchscheme://bucket/videos"))


def test_odd_names_hidden_files_and_csv_mistakes(tmp_path, s3):
    """Object-store keys with a space, '(', '%' or '#' were listed as URIs pyarrow could not open (every such video
    'failed'); hidden files (macOS ._x.mp4, a .Trash folder) were videos; a CSV naming one file twice extracted it
    twice with whichever label came last; a cp1252 CSV (Excel's plain 'CSV') ended in a traceback; line numbers
    skipped blank lines."""
    from recognizer_core.extract.sources import open_video_file

    s3.create_bucket(Bucket="bkt")
    names = ["train/Fight/my clip (1).MP4", "val/NonFight/c%20d.avi", "val/NonFight/e#1.mp4"]
    for i, name in enumerate(names):
        s3.put_object(Bucket="bkt", Key=f"videos/{name}", Body=bytes([i]) * (i + 1))
    videos = list_videos(SourceConfig(input="s3://bkt/videos"))
    assert sorted(v.rel_path for v in videos) == sorted(names)
    for v in videos:
        with open_video_file(v.uri) as f:
            assert f.read() == bytes([names.index(v.rel_path)]) * (names.index(v.rel_path) + 1)
    # what opened before is not escaped (its manifest key, so its extraction, stays); a CSV in a folder whose
    # name is written escaped (as pyarrow needs it) finds its videos
    assert [v.uri for v in videos if "(1)" in v.rel_path] == ["s3://bkt/videos/train/Fight/my%20clip%20(1).MP4"]
    s3.put_object(Bucket="bkt", Key="my videos/list.csv", Body=b"path,label\nFight/a b.mp4,Fight\n")
    s3.put_object(Bucket="bkt", Key="my videos/Fight/a b.mp4", Body=b"v")
    (v,) = list_videos(SourceConfig(manifest_csv="s3://bkt/my%20videos/list.csv"))
    with open_video_file(v.uri) as f:
        assert f.read() == b"v"

    for rel in ("Fight/a.mp4", "Fight/._a.mp4", ".Trash/Fight/old.mp4"):
        _touch(tmp_path / "local", rel)
    assert [v.rel_path for v in list_videos(SourceConfig(input=str(tmp_path / "local")))] == ["Fight/a.mp4"]

    (tmp_path / "dup.csv").write_text("path,label\nlocal/Fight/a.mp4,Fight\n\nlocal/Fight/a.mp4,NonFight\n")
    with pytest.raises(SourceError, match=r"dup.csv:4: local/Fight/a.mp4 is listed already on line 2"):
        list_videos(SourceConfig(manifest_csv=str(tmp_path / "dup.csv")))
    (tmp_path / "blank.csv").write_text("path,label\n\n\n,Fight\n")
    with pytest.raises(SourceError, match=r"blank.csv:4: empty path"):
        list_videos(SourceConfig(manifest_csv=str(tmp_path / "blank.csv")))
    (tmp_path / "excel.csv").write_bytes("path,label\nlocal/Fight/a.mp4,Pelea violenta\u00ed\n".encode("cp1252"))
    with pytest.raises(SourceError, match="excel.csv is not UTF-8 text"):
        list_videos(SourceConfig(manifest_csv=str(tmp_path / "excel.csv")))


def test_a_csv_split_outside_split_names_is_rejected(tmp_path):
    """A split typo ('tain') was extracted and built as a split of its own; now one error naming file, line and
    value, before any video is looked up. An empty split (drawn by ratio) and the configured names still pass."""
    _touch(tmp_path, "v/a.mp4")
    _touch(tmp_path, "v/b.mp4")
    (tmp_path / "m.csv").write_text("path,label,split\nv/a.mp4,Fight,train\nv/b.mp4,NonFight,tain\n")
    with pytest.raises(SourceError, match=r"m.csv:3: split 'tain' is not one of source.split_names "
                                          r"\['train', 'val', 'test'\]"):
        list_videos(SourceConfig(manifest_csv=str(tmp_path / "m.csv")))
    cfg = SourceConfig(manifest_csv=str(tmp_path / "m.csv"), split_names=["train", "tain"])
    assert [v.split for v in list_videos(cfg)] == ["train", "tain"]
    (tmp_path / "ok.csv").write_text("path,label,split\nv/a.mp4,Fight,val\nv/b.mp4,NonFight,\n")
    assert [v.split for v in list_videos(SourceConfig(manifest_csv=str(tmp_path / "ok.csv")))] == ["val", ""]


def test_csv_rows_on_an_object_store_keep_whole_second_mtimes_however_they_are_looked_up(tmp_path):
    """Rows of a folder named twice are looked up by one listing: MinIO / Ceph list mtimes in milliseconds where a
    HEAD (what earlier runs recorded) gives whole seconds, so every key changed and a resume extracted everything
    again; a folder's lone row (a HEAD) and a listed one must also agree."""
    import os

    import pyarrow.fs as pafs

    from recognizer_core.extract.sources import _file_infos

    for name in ("a.mp4", "b.mp4"):
        (tmp_path / "videos" / name).parent.mkdir(exist_ok=True)
        (tmp_path / "videos" / name).write_bytes(b"v")
        os.utime(tmp_path / "videos" / name, ns=(1_700_000_000_123_456_789,) * 2)
    remote = pafs.SubTreeFileSystem(str(tmp_path), pafs.LocalFileSystem())  # not 'local': listed like a bucket
    both = _file_infos([(f"s3://b/videos/{n}", remote, f"videos/{n}") for n in ("a.mp4", "b.mp4")])
    lone = _file_infos([("s3://b/videos/a.mp4", remote, "videos/a.mp4")])
    assert [i.mtime_ns for i in both] == [1_700_000_000_000_000_000] * 2 == [lone[0].mtime_ns] * 2
    local = _file_infos([(str(tmp_path / "videos/a.mp4"), pafs.LocalFileSystem(), str(tmp_path / "videos/a.mp4"))])
    assert local[0].mtime_ns == 1_700_000_000_123_456_789   # local files keep their stat, as their keys always had
