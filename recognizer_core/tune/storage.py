"""Experiment storage as URIs: a local folder or anything pyarrow.fs opens (s3://, gs://, hdfs://).

Ray Tune/Train write there themselves; these helpers read and write the few extra files the tuner keeps
(request record, summary) the same way, so the summary of an s3:// experiment lands in s3:// too.
"""
from __future__ import annotations

import os
import posixpath
from pathlib import Path

import pyarrow.fs as pafs


def is_remote(uri: str) -> bool:
    return "://" in uri and not uri.startswith("file://")


def to_uri(path: str) -> str:
    """Remote URIs unchanged; local paths made absolute (Ray needs absolute storage paths)."""
    if is_remote(path):
        return path.rstrip("/")
    if path.startswith("file://"):
        path = path[len("file://"):]
    return str(Path(path).expanduser().resolve())


def join_uri(base: str, *parts: str) -> str:
    return posixpath.join(base, *parts) if is_remote(base) else os.path.join(base, *parts)


def _fs(uri: str) -> tuple[pafs.FileSystem, str]:
    return pafs.FileSystem.from_uri(uri)


def read_text(uri: str) -> str | None:
    fs, path = _fs(uri)
    if fs.get_file_info(path).type != pafs.FileType.File:
        return None
    with fs.open_input_stream(path) as f:
        return f.read().decode()


def write_text(uri: str, text: str) -> None:
    fs, path = _fs(uri)
    fs.create_dir(posixpath.dirname(path), recursive=True)
    with fs.open_output_stream(path) as f:
        f.write(text.encode())


def exists(uri: str) -> bool:
    fs, path = _fs(uri)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def copy_tree(src_uri: str, dst_uri: str) -> None:
    """Copy a folder between any two storages (local <-> s3 <-> gs)."""
    src_fs, src = _fs(src_uri)
    dst_fs, dst = _fs(dst_uri)
    dst_fs.create_dir(dst, recursive=True)
    pafs.copy_files(src, dst, source_filesystem=src_fs, destination_filesystem=dst_fs)
