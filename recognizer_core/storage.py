"""Paths and URIs every job reads and writes: a local/NFS folder or anything pyarrow.fs opens (s3://, gs://).

One place for the questions the jobs used to answer inline: is this remote (`is_remote`), what absolute form
travels to other nodes (`to_uri`: resolved once on the driver), how to write a file so a reader never sees half
of it (`atomic_write`, `write_bytes`, `write_text`; `put_object` through a filesystem the caller holds), and how
to read/copy across storages.

Where outputs go (`output_uri`): a configured absolute path or URI as given; a relative one under
$RECOGNIZER_STORAGE when set, else under the working directory -- except when the job runs from a package that
`ray job submit --working-dir` uploaded (`.../runtime_resources/working_dir_files/_ray_pkg_*`), which Ray deletes
with the session: then under ~/recognizer_runs (DEFAULT_JOB_ROOT), and the job says so.
"""
from __future__ import annotations

import contextlib
import errno
import os
import posixpath
import tempfile
from pathlib import Path
from typing import IO, Iterator

import pyarrow as pa
import pyarrow.fs as pafs


def is_remote(uri: str | os.PathLike) -> bool:
    """True for object-store / remote URIs (s3://, gs://, hdfs://); False for local paths and file://."""
    uri = str(uri)
    return "://" in uri and not uri.startswith("file://")


def to_uri(path: str | os.PathLike) -> str:
    """Remote URIs unchanged; local paths made absolute (`~` expanded). Resolve once on the driver and send the
    result: a relative path means something else on every node (and inside `ray job submit`'s package)."""
    path = str(path)
    if is_remote(path):
        return path.rstrip("/")
    if path.startswith("file://"):
        path = path[len("file://"):]
    return str(Path(path).expanduser().resolve())


STORAGE_ENV = "RECOGNIZER_STORAGE"
DEFAULT_JOB_ROOT = "~/recognizer_runs"  # outputs of a job running from an uploaded Ray package (documented)
_announced: set[str] = set()


def ray_package_root(path: str | os.PathLike) -> str | None:
    """The `_ray_pkg_*` folder `path` lies in (a `ray job submit --working-dir` upload), else None."""
    parts = Path(str(path)).parts
    for i, part in enumerate(parts):
        if part.startswith("_ray_pkg_") and "runtime_resources" in parts[:i]:
            return str(Path(*parts[: i + 1]))
    return None


def storage_root() -> str:
    """Base of relative output paths: $RECOGNIZER_STORAGE, else the working directory, else (inside a Ray package,
    which Ray deletes with the session) ~/recognizer_runs."""
    env = os.environ.get(STORAGE_ENV)
    if env:
        return to_uri(env)
    cwd = os.getcwd()
    return str(Path(DEFAULT_JOB_ROOT).expanduser()) if ray_package_root(cwd) else cwd


def output_uri(path: str | os.PathLike) -> str:
    """Resolve an output location once, on the driver (see the module doc): never a path inside a Ray package.
    A path already resolved into the package (e.g. `Path("work_dirs").resolve()`) is moved to the storage root
    with the same relative layout."""
    path = str(path)
    if is_remote(path):
        return path.rstrip("/")
    if path.startswith("file://"):
        path = path[len("file://"):]
    p = Path(path).expanduser()
    if p.is_absolute():
        pkg = ray_package_root(p.resolve())
        if pkg is None:
            return str(p.resolve())
        p = p.resolve().relative_to(pkg)
    root = storage_root()
    if ray_package_root(os.getcwd()) and root not in _announced:
        _announced.add(root)
        print(f"[storage] this job runs from a package uploaded by `ray job submit` ({os.getcwd()}), which Ray "
              f"deletes with the session: relative output paths go under {root} (set {STORAGE_ENV} or give an "
              "absolute / s3:// path to choose)", flush=True)
    return join_uri(root, p.as_posix()) if is_remote(root) else str((Path(root) / p).resolve())


def input_path(path: str) -> str:
    """Where a job reads a relative input: as given when it is a URI, absolute or found here; else where the jobs
    write relative outputs (`output_uri`: $RECOGNIZER_STORAGE on a cluster, whose `ray job submit` working
    directory holds only the uploaded code) when it is there; else as given, for the caller's own 'not found'."""
    local = Path(path).expanduser()
    if not path or is_remote(path) or local.is_absolute() or local.exists():
        return path
    moved = output_uri(path)
    return moved if not is_remote(moved) and Path(moved).exists() else path


def join_uri(base: str, *parts: str) -> str:
    return posixpath.join(base, *parts) if is_remote(base) else os.path.join(base, *parts)


def filesystem(uri: str | os.PathLike) -> tuple[pafs.FileSystem, str]:
    """(pyarrow filesystem, path inside it) for a local path or a remote URI."""
    uri = str(uri)
    if not is_remote(uri):
        return pafs.LocalFileSystem(), to_uri(uri)
    return pafs.FileSystem.from_uri(uri)


def object_filesystem(uri: str | os.PathLike) -> tuple[pafs.FileSystem, str]:
    """filesystem() for whole-object writes (put_object), which other reads may share. On S3 with
    allow_delayed_open: an object smaller than one upload part then goes up as one PutObject at close, where
    pyarrow's default opens a multipart upload for every object (3 requests for a 300-byte manifest record)."""
    uri = str(uri)
    if uri.startswith("s3://") and "?" not in uri:
        try:
            return pafs.FileSystem.from_uri(uri + "?allow_delayed_open=true")
        except pa.ArrowInvalid:   # an older pyarrow refuses the option: its default upload, as before
            pass
    return filesystem(uri)


def put_object(fs: pafs.FileSystem, path: str, data: bytes | memoryview) -> None:
    """Write `data` as the whole object `path` of a remote `fs` in one upload (an object store publishes an object
    only when it is complete; locally use atomic_write, which renames a temp file). S3 has no folders: an object
    needs no parent, and create_dir cost 2 HEADs and a PUT of an empty marker per level, per write, which no
    reader needed (a prefix with objects lists as a folder). GCS and HDFS keep creating the parents."""
    if fs.type_name != "s3":
        fs.create_dir(posixpath.dirname(path), recursive=True)
    with fs.open_output_stream(path) as raw:
        raw.write(data)


def _umask() -> int:
    try:  # Linux shows it without changing it (os.umask can only be read by setting it, racing other threads)
        with open("/proc/self/status", encoding="ascii") as f:
            return next(int(line.split()[1], 8) for line in f if line.startswith("Umask:"))
    except (OSError, StopIteration, ValueError):
        mask = os.umask(0o022)
        os.umask(mask)
        return mask


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """Open `path` for writing so that readers see the old file or the whole new one, never a part: locally a
    temp file in the same folder renamed over the target (removed on failure), with the mode a plain `open`
    gives (mkstemp's 0600 kept other users and services from reading exported models and datasets); remotely the
    bytes are gathered in memory and uploaded only when the body ends without an error (pyarrow completes an
    object store upload when its stream closes, an exception's exit included, which published a partial file)."""
    if is_remote(path):
        import io

        buf = io.BytesIO()
        if "b" in mode:
            yield buf
        else:
            text = io.TextIOWrapper(buf, encoding="utf-8")
            yield text
            text.flush()
            text.detach()
        put_object(*object_filesystem(path), buf.getbuffer())
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.fchmod(fd, 0o666 & ~_umask())
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


# a write the machine refused, whatever is written: a full disk or quota, a read-only mount
MACHINE_WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS})


def machine_write_error(err: BaseException | None) -> OSError | None:
    """The OSError in `err` whose errno is in MACHINE_WRITE_ERRNOS: `err` itself, what it was raised from, or the
    exception a Ray task raised (RayTaskError keeps it as `cause`); else None. A long job stops on it rather than
    record the item it was writing as bad: every item after it would fail alike, and a re-run skipped them all."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in MACHINE_WRITE_ERRNOS:
            return err
        err = getattr(err, "cause", None) or err.__cause__ or err.__context__
    return None


def machine_write_line(err: OSError, where: str, kept: str) -> str:
    """The one line a job stops with on a machine_write_error: the file or folder, the cause, what to do (pyarrow's
    texts name no file and bury the cause: 'Error writing bytes to file. Detail: [errno 28] ...')."""
    fix = "make it writable" if err.errno == errno.EROFS else "free space"
    return (f"{where}: {os.strerror(err.errno)} [Errno {err.errno}]: the job stopped; {fix} and run the same "
            f"command again: {kept}")


def write_bytes(uri: str | os.PathLike, data: bytes) -> None:
    with atomic_write(uri, "wb") as f:
        f.write(data)


def write_text(uri: str | os.PathLike, text: str) -> None:
    write_bytes(uri, text.encode())


def read_bytes(uri: str | os.PathLike) -> bytes | None:
    fs, path = filesystem(uri)
    if fs.get_file_info(path).type != pafs.FileType.File:
        return None
    with fs.open_input_stream(path) as f:
        return f.read()


def read_text(uri: str | os.PathLike) -> str | None:
    data = read_bytes(uri)
    return None if data is None else data.decode()


def exists(uri: str | os.PathLike) -> bool:
    fs, path = filesystem(uri)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def remove(uri: str | os.PathLike) -> None:
    """Delete a file or object if it is there."""
    fs, path = filesystem(uri)
    if fs.get_file_info(path).type != pafs.FileType.NotFound:
        fs.delete_file(path)


def copy_tree(src_uri: str, dst_uri: str) -> None:
    """Copy a folder between any two storages (local <-> s3 <-> gs)."""
    src_fs, src = filesystem(src_uri)
    dst_fs, dst = filesystem(dst_uri)
    dst_fs.create_dir(dst, recursive=True)
    pafs.copy_files(src, dst, source_filesystem=src_fs, destination_filesystem=dst_fs)
