"""storage.output_uri: where a job's outputs go (never inside the package `ray job submit` uploads, which Ray
deletes with the session), resolved once on the driver."""
from __future__ import annotations

from pathlib import Path

import pytest

from recognizer_core import storage


@pytest.fixture
def ray_package(tmp_path, monkeypatch):
    """The working directory of a submitted job, as Ray lays it out on the head."""
    pkg = tmp_path / "session_x" / "runtime_resources" / "working_dir_files" / "_ray_pkg_0123abcd"
    pkg.mkdir(parents=True)
    monkeypatch.chdir(pkg)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv(storage.STORAGE_ENV, raising=False)
    storage._announced.clear()
    return pkg


def test_outside_a_package_relative_paths_stay_under_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(storage.STORAGE_ENV, raising=False)
    assert storage.output_uri("work_dirs/x") == str(tmp_path / "work_dirs" / "x")
    assert storage.output_uri("s3://bucket/runs/") == "s3://bucket/runs"
    assert storage.output_uri(tmp_path / "abs") == str(tmp_path / "abs")


def test_inside_a_ray_package_outputs_go_to_the_documented_default(ray_package, tmp_path, capsys):
    home_runs = tmp_path / "home" / "recognizer_runs"
    assert storage.output_uri("work_dirs/tune") == str(home_runs / "work_dirs" / "tune")
    # already resolved into the package (e.g. Path("work_dirs").resolve() in a default): moved out as well
    assert storage.output_uri(ray_package / "work_dirs") == str(home_runs / "work_dirs")
    assert storage.output_uri("/elsewhere/runs") == "/elsewhere/runs"  # an explicit absolute path is kept
    out = capsys.readouterr().out
    assert out.count("[storage]") == 1 and str(home_runs) in out  # said once, with the folder


def test_recognizer_storage_is_the_root_of_relative_outputs(ray_package, monkeypatch):
    monkeypatch.setenv(storage.STORAGE_ENV, "s3://bucket/runs")
    assert storage.output_uri("work_dirs/tune") == "s3://bucket/runs/work_dirs/tune"
    monkeypatch.setenv(storage.STORAGE_ENV, "/mnt/shared/runs")
    assert storage.output_uri("work_dirs") == "/mnt/shared/runs/work_dirs"
    assert not any("_ray_pkg_" in storage.output_uri(p) for p in (".", "a/b", str(Path.cwd() / "c")))


def test_package_detection_needs_the_runtime_resources_layout(tmp_path):
    assert storage.ray_package_root(tmp_path / "_ray_pkg_1" / "x") is None  # a folder merely named so
    pkg = tmp_path / "runtime_resources" / "working_dir_files" / "_ray_pkg_1"
    assert storage.ray_package_root(pkg / "a" / "b") == str(pkg)


def test_atomic_writes_keep_the_old_object_on_s3_when_the_body_fails(monkeypatch):
    """On object storage, pyarrow completes an upload when its stream closes, also when leaving on an exception:
    a job stopped mid-write (SIGTERM becomes KeyboardInterrupt) replaced a whole model or dataset file by a part.
    A real S3-compatible server (moto) on 127.0.0.1."""
    pytest.importorskip("moto")
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
               "AWS_ENDPOINT_URL": f"http://{host}:{port}"}
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"]).create_bucket(Bucket="models")
        uri = "s3://models/fight/model.onnx"
        storage.write_bytes(uri, b"the whole old model")
        with pytest.raises(KeyboardInterrupt):
            with storage.atomic_write(uri, "wb") as f:
                f.write(b"half of a new")
                raise KeyboardInterrupt
        assert storage.read_bytes(uri) == b"the whole old model"
        with storage.atomic_write(uri, "w") as f:
            f.write("new, whole")
        assert storage.read_bytes(uri) == b"new, whole"
    finally:
        server.stop()


def test_atomic_writes_get_the_mode_a_plain_open_gives(tmp_path):
    """mkstemp makes 0600 files: an exported model or a dataset written by one user could not be read by the
    service (another uid) that serves it."""
    import os

    old = os.umask(0o022)
    try:
        storage.write_text(tmp_path / "model.json", "{}")
        with open(tmp_path / "plain.json", "w") as f:
            f.write("{}")
    finally:
        os.umask(old)
    assert (tmp_path / "model.json").stat().st_mode & 0o777 == (tmp_path / "plain.json").stat().st_mode & 0o777 == 0o644
