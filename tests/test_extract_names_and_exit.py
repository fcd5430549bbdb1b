"""Extraction names and bookkeeping without Ray: Unicode forms of one name (a set copied from a Mac), absolute
object-store URIs in a CSV, record times of drivers in other time zones, a 3ba4158 poses folder's root
videos.jsonl, and extract_poses' exit status when nothing was extracted."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import unicodedata
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest

from recognizer_core.extract.config import SourceConfig
from recognizer_core.extract.manifest import DONE, FAILED, ExtractionManifest, _newest_last
from recognizer_core.extract.sources import SourceError, label_index, list_videos, make_video_id, open_video_file

REPO = Path(__file__).resolve().parents[1]


def NFD(text: str) -> str:
    return unicodedata.normalize("NFD", text)


def _touch(path: Path, data: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_mac_and_linux_forms_of_one_name_are_one_class_one_id_and_found(tmp_path):
    """macOS writes names decomposed (NFD): with files added on Linux (NFC) each Korean label was two classes, a
    label_names entry matched only one of them, and a CSV typed in NFC did not find the Mac's file."""
    root = tmp_path / "videos"
    for folder, name in [(NFD("싸움"), "mac1.mp4"), (NFD("정상 상황"), "mac2.mp4"), ("싸움", "lin1.mp4"),
                         ("정상 상황", "lin2.mp4")]:
        _touch(root / folder / name, name.encode())
    videos = list_videos(SourceConfig(input=str(root)))
    assert {v.label_name for v in videos} == {"싸움", "정상 상황"}   # NFC
    assert label_index(videos, []) == ["싸움", "정상 상황"]
    assert label_index(videos, ["정상 상황", NFD("싸움")]) == ["정상 상황", "싸움"]   # a YAML typed on a Mac too
    mac = next(v for v in videos if v.rel_path == "싸움/mac1.mp4")
    assert mac.uri == str(root / NFD("싸움") / "mac1.mp4")   # opened (and keyed) as the file system has it
    assert mac.video_id == make_video_id(NFD("싸움/mac1.mp4")) == make_video_id("싸움/mac1.mp4")
    # ids that were extracted before stay: ASCII names, NFC names (values of the code before NFC)
    assert make_video_id("train/Fight/a.avi") == "a-217feb71eb"
    assert make_video_id("train/Fight/a.avi", 1) == "a-c4f989ad9c"
    assert make_video_id("싸움/a.mp4") == "a-d54afa91cf"

    csv = root / "m.csv"
    csv.write_text("path,label\n싸움/mac1.mp4,싸움\n" + NFD("정상 상황/lin2.mp4,정상 상황") + "\n", encoding="utf-8")
    got = list_videos(SourceConfig(manifest_csv=str(csv)))
    assert [(v.rel_path, v.label_name) for v in got] == [("싸움/mac1.mp4", "싸움"), ("정상 상황/lin2.mp4", "정상 상황")]
    assert [Path(v.uri).read_bytes() for v in got] == [b"mac1.mp4", b"lin2.mp4"]
    assert got[0].uri == mac.uri and got[0].video_id == mac.video_id   # the folder's video, not another
    csv.write_text("path,label\n싸움/mac1.mp4,싸움\n" + NFD("싸움/mac1.mp4,싸움") + "\n", encoding="utf-8")
    with pytest.raises(SourceError, match="m.csv:3: .* is listed already on line 2"):
        list_videos(SourceConfig(manifest_csv=str(csv)))

    _touch(root / "싸움" / "x.mp4")
    _touch(root / NFD("싸움") / "x.mp4")   # Linux keeps both: one id, one clip file for two videos
    with pytest.raises(SourceError, match=r"'싸움/x.mp4' is there twice, in NFC and in NFD"):
        list_videos(SourceConfig(input=str(root)))


def test_absolute_object_store_rows_are_escaped_unless_they_are_already(s3):
    """Absolute s3:// rows went to pyarrow as written: `cam#1.mp4` and `cam#2.mp4` were both cut to `cam` ("listed
    already"), a space or a Korean key could not be parsed. An escaped row (%20) is kept, so its key stays."""
    s3.create_bucket(Bucket="bkt")
    # the Korean key as a Mac uploaded it (NFD), its row typed in NFC: found in the folder's listing as well
    keys = ["v/cam#1.mp4", "v/cam#2.mp4", NFD("v/싸움/a b.mp4"), "v/my clip.mp4", "v/50%.mp4", "v/plain.mp4"]
    for key in keys:
        s3.put_object(Bucket="bkt", Key=key, Body=key.encode())
    rows = ["s3://bkt/v/cam#1.mp4", "s3://bkt/v/cam#2.mp4", "s3://bkt/v/싸움/a b.mp4", "s3://bkt/v/my%20clip.mp4",
            "s3://bkt/v/50%.mp4", "s3://bkt/v/plain.mp4"]
    s3.put_object(Bucket="bkt", Key="v/m.csv", Body=("path,label\n" + "".join(f"{r},Fight\n" for r in rows)).encode())
    videos = list_videos(SourceConfig(manifest_csv="s3://bkt/v/m.csv"))
    assert [v.rel_path for v in videos] == rows
    for video, key in zip(videos, keys):
        with open_video_file(video.uri) as f:
            assert f.read() == key.encode()
    assert [v.uri for v in videos][3:] == ["s3://bkt/v/my%20clip.mp4", "s3://bkt/v/50%25.mp4",
                                           "s3://bkt/v/plain.mp4"]


def test_the_options_of_an_object_store_source_reach_every_video_under_it(s3, monkeypatch):
    """A MinIO endpoint given in the source's URI options (`?endpoint_override=...&scheme=http`): the folder was
    listed with them, but its videos and a CSV's relative rows were opened without them (the default endpoint)."""
    s3.create_bucket(Bucket="opts")   # moto keeps buckets across tests: its own
    for key in ("v/Fight/a.mp4", "v/NonFight/b c.mp4"):
        s3.put_object(Bucket="opts", Key=key, Body=key.encode())
    s3.put_object(Bucket="opts", Key="v/m.csv", Body=b"path,label\nFight/a.mp4,Fight\nNonFight/b c.mp4,NonFight\n")
    endpoint = s3.meta.endpoint_url.split("://", 1)[1]
    monkeypatch.delenv("AWS_ENDPOINT_URL")   # only the URI's options say where the server is
    options = f"?endpoint_override={endpoint}&scheme=http"
    s3.put_object(Bucket="opts", Key="v/abs.csv", Body=b"path,label\ns3://opts/v/Fight/a.mp4,Fight\n")
    for cfg in (SourceConfig(input=f"s3://opts/v{options}"), SourceConfig(manifest_csv=f"s3://opts/v/m.csv{options}"),
                SourceConfig(input="s3://opts/v", manifest_csv=f"s3://opts/v/m.csv{options}"),   # the CSV's own
                SourceConfig(manifest_csv=f"s3://opts/v/abs.csv{options}")):                     # absolute rows too
        videos = list_videos(cfg)
        assert [v.rel_path for v in videos][:2] in (["Fight/a.mp4", "NonFight/b c.mp4"], ["s3://opts/v/Fight/a.mp4"])
        for video in videos:
            assert video.uri.endswith(options), video.uri
            with open_video_file(video.uri) as f:
                assert f.read().startswith(b"v/")
            # the options open the video; its manifest key (and records) stay what they were without them:
            # a source given `?region=...` later must not extract every video again (or record credentials)
            assert "?" not in video.key and "?" not in video.to_dict()["uri"] and "options" not in video.to_dict()


def test_a_mac_uploaded_object_named_in_nfc_keeps_the_sources_options(s3, monkeypatch):
    """A MinIO source (its endpoint in the URI's options) whose objects a Mac uploaded (NFD keys), listed by a CSV
    typed on Linux (NFC): the video is found in its NFD form and must still open through the MinIO endpoint."""
    s3.create_bucket(Bucket="opts-nfd")   # moto keeps buckets across tests: its own
    s3.put_object(Bucket="opts-nfd", Key=NFD("v/싸움/a.mp4"), Body=b"v/data")
    s3.put_object(Bucket="opts-nfd", Key="v/m.csv", Body="path,label\n싸움/a.mp4,싸움\n".encode())
    endpoint = s3.meta.endpoint_url.split("://", 1)[1]
    monkeypatch.delenv("AWS_ENDPOINT_URL")   # only the URI's options say where the server is
    options = f"?endpoint_override={endpoint}&scheme=http"
    (video,) = list_videos(SourceConfig(manifest_csv=f"s3://opts-nfd/v/m.csv{options}"))
    assert video.uri.endswith(options) and "?" not in video.key, video.uri
    with open_video_file(video.uri) as f:
        assert f.read() == b"v/data"


def test_a_row_on_another_store_does_not_get_the_csvs_options(s3, tmp_path, monkeypatch):
    """The CSV's own options (an s3 endpoint) are for the rows on its store: a file:// row opens without them."""
    local = _touch(tmp_path / "a.mp4", b"v/local")
    s3.create_bucket(Bucket="opts-other-store")
    s3.put_object(Bucket="opts-other-store", Key="v/m.csv", Body=f"path,label\nfile://{local},Fight\n".encode())
    endpoint = s3.meta.endpoint_url.split("://", 1)[1]
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    (video,) = list_videos(SourceConfig(manifest_csv=f"s3://opts-other-store/v/m.csv?endpoint_override={endpoint}"
                                                     "&scheme=http"))
    assert "?" not in video.uri and video.options == "", video.uri
    with open_video_file(video.uri) as f:
        assert f.read() == b"v/local"


def test_record_times_are_utc_and_ordered_by_their_instant(tmp_path, s3):
    """Times were local clock time without a zone: compact() filed a newer record of a driver in another zone (or
    after a DST fall-back) as older. Records without an offset (older code) come first, in their given order."""
    rec = ExtractionManifest(str(tmp_path)).record(DONE, "k", output="clips/a.parquet")
    assert datetime.fromisoformat(rec["time"]).utcoffset().total_seconds() == 0
    seoul = {"key": "a|1|1", "time": "2026-12-05T18:00:00+09:00"}   # 09:00 UTC
    utc = {"key": "a|2|2", "time": "2026-12-05T10:00:00+00:00"}     # an hour later, from a pod in UTC
    old = [{"key": "o|1|1", "time": "2026-12-05T23:00:00"}, {"key": "o|2|2", "time": "2026-12-05T01:00:00"}]
    assert [r["key"] for r in _newest_last([utc, old[0], seoul, old[1]])] == ["o|1|1", "o|2|2", "a|1|1", "a|2|2"]
    # an object-store record without a video id is named by a hash of its key that every run agrees on
    s3.create_bucket(Bucket="bkt")
    ExtractionManifest("s3://bkt/poses").record(FAILED, "s3://bkt/v/a.mp4|1|2", reason="bad")
    names = [o["Key"] for o in s3.list_objects_v2(Bucket="bkt", Prefix="poses/")["Contents"]]
    assert names == [f"poses/manifest/failed/{hashlib.sha1(b's3://bkt/v/a.mp4|1|2').hexdigest()[:20]}.json"]


def _poses_3ba(tmp_path: Path) -> Path:
    """A poses folder as commit 3ba4158 wrote it: done records of a, b (b since deleted from the source) and the
    root videos.jsonl of its last run, which listed only a."""
    poses = tmp_path / "poses"
    done, listing = [], []
    for name in ("a", "b"):
        key = f"{tmp_path}/videos/Fight/{name}.mp4|10|1"
        rec = {"key": key, "rel_path": f"Fight/{name}.mp4", "video_id": name, "label_name": "Fight", "split": "",
               "output": f"clips/{name}.parquet", "time": "2026-12-05T13:48:04"}
        done.append(json.dumps(rec) + "\n")
        listing += [json.dumps({k: rec[k] for k in ("video_id", "rel_path", "label_name", "split", "key")}) + "\n"]
        _touch(poses / "clips" / f"{name}.parquet")
    (poses / "done.jsonl").write_text("".join(done))
    (poses / "videos.jsonl").write_text(listing[0])
    (poses / "extraction_config.yaml").write_text(f"source:\n  input: {tmp_path}/videos\n")
    return poses


def test_a_3ba4158_root_listing_is_the_listing_until_listings_exist(tmp_path):
    """The root videos.jsonl was ignored: the build took every video ever extracted there, a deleted one too."""
    poses = _poses_3ba(tmp_path)
    records, stale = ExtractionManifest(str(poses)).current_done()
    assert [r["video_id"] for r in records] == ["a"] and stale == 1
    # the first run of another source keeps a (as that folder's listing), not b
    _touch(tmp_path / "other/NonFight/c.mp4")
    m = ExtractionManifest(str(poses))
    m.write_listing(list_videos(SourceConfig(input=str(tmp_path / "other"))), str(tmp_path / "other"))
    assert sorted(r["rel_path"] for r in m.listing()) == ["Fight/a.mp4", "NonFight/c.mp4"]


def _summary(**counts) -> dict:
    base = {"videos": 2, "done": 0, "failed": 0, "empty": 0, "skipped_done": 0, "skipped_failed": 0,
            "skipped_empty": 0, "output": "out", "failures": [], "truncated_videos": [], "damaged_videos": []}
    return {**base, **counts}


@pytest.mark.parametrize("counts, status", [
    ({"failed": 2}, 1),                                  # first run, every video failed
    ({"done": 1, "failed": 1}, 0),
    ({"skipped_done": 5, "skipped_failed": 1}, 0),       # a re-run of a finished job with a failure
    ({"empty": 2}, 0),                                   # nobody in the videos: no failure
    ({"videos": 0}, 0),
])
def test_exit_status_when_nothing_was_extracted(monkeypatch, capsys, counts, status):
    import rayjobs.extract_poses as job

    monkeypatch.setattr(job, "run_extraction", lambda cfg, verbose=True: _summary(**counts))
    assert job.main(["--input", "videos", "--output", "out", "--quiet"]) == status
    err = capsys.readouterr().err.splitlines()
    assert (err == ["error: no video was extracted: 2 of 2 failed; failures.jsonl in out says why "
                    "(--set retry_failed=true tries them again)"]) == (status == 1)


def test_a_rerun_whose_videos_all_failed_before_exits_1(tmp_path):
    """Every video failed in an earlier run and is skipped now (no Ray starts): exit status 0 until 2026-12-05."""
    from fakes.fake_rtmo import build_fake_rtmo, write_marker_video

    model = build_fake_rtmo(tmp_path / "fake_rtmo.onnx")
    write_marker_video(tmp_path / "videos/Fight/a.mp4", [np.full((4, 2), 40.0)])
    (video,) = list_videos(SourceConfig(input=str(tmp_path / "videos")))
    ExtractionManifest(str(tmp_path / "out")).record(FAILED, video.key, rel_path=video.rel_path,
                                                     video_id=video.video_id, reason="decode error")
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_ADDRESS": "127.0.0.1:1"}   # a Ray start would fail loudly
    proc = subprocess.run([sys.executable, str(REPO / "rayjobs/extract_poses.py"), "--quiet", "--input", "videos",
                           "--onnx", str(model), "--output", "out"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1].startswith("error: no video was extracted: 1 of 1 failed (1 in an "
                                                           "earlier run)")


def test_classes_of_an_earlier_mac_extraction_are_not_listed_twice(tmp_path):
    """A labels.json (and another source's listing) written from NFD folder names before names were normalised:
    the folder's classes held 싸움 twice (NFD from before, NFC from this run)."""
    from recognizer_core.extract.config import ExtractionConfig
    from recognizer_core.extract.job import _with_earlier_classes

    nfd = [unicodedata.normalize("NFD", n) for n in ("정상", "싸움")]
    (tmp_path / "labels.json").write_text(json.dumps({"label_names": nfd}))
    cfg = ExtractionConfig(source=SourceConfig(input=str(tmp_path / "videos")), output=str(tmp_path))
    others = [{"label_name": unicodedata.normalize("NFD", "낙상")}, {"label_name": "싸움"}]
    names = _with_earlier_classes(cfg, ["싸움"], others)
    assert names == ["싸움", "낙상"], [unicodedata.is_normalized("NFC", n) for n in names]


def test_a_build_from_records_of_an_earlier_mac_extraction_takes_them_as_the_same_classes(tmp_path, monkeypatch):
    """Another source's records (and its listing) kept the NFD names an earlier extraction wrote while labels.json
    is NFC now: plan_videos refused with "label_names ['싸움', '정상'] lacks labels ...: ['싸움', '정상']"."""
    from recognizer_core.dataset import build
    from recognizer_core.dataset.config import DatasetBuildConfig

    (tmp_path / "labels.json").write_text(json.dumps({"label_names": ["싸움", "정상"]}))
    nfd = {n: unicodedata.normalize("NFD", n) for n in ("싸움", "정상")}
    records = [{"video_id": f"v{i}", "label_name": nfd[n] if i % 2 else n, "output": f"clips/v{i}.parquet"}
               for i, n in enumerate(["싸움", "정상"] * 4)]
    monkeypatch.setattr(build.ExtractionManifest, "current_done", lambda self: (records, 0))
    jobs, names, unlabelled = build.plan_videos(DatasetBuildConfig(poses=str(tmp_path)))
    assert names == ["싸움", "정상"] and unlabelled == 0
    assert [j["label"] for j in jobs] == [0, 1] * 4 and {j["label_name"] for j in jobs} == {"싸움", "정상"}
