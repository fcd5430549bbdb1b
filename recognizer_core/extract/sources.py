"""Video listing: a folder or pyarrow filesystem URI (local, s3://, gs://) or a CSV manifest, with labels.

Folder layouts understood (RWF-2000 and the falldown set): `<split>/<label>/<file>` (split in
`split_names`), `<label>/<file>`, or deeper trees where the file's parent folder is the label.

Names are compared in Unicode NFC: macOS writes file names decomposed (NFD), Linux and Windows keep what they are
given (NFC when typed), so a set copied from a Mac next to files added on Linux had two classes per Korean label,
and a CSV typed in NFC did not find the Mac's files. Labels, rel_paths and video ids use the NFC form; `uri` keeps
the form the file system has (the file is opened by it, and the manifest key, so ids already recorded, stay).
"""
from __future__ import annotations

import csv
import hashlib
import io
import os
import posixpath
import re
import unicodedata
import urllib.parse
from dataclasses import asdict, dataclass
from pathlib import PurePosixPath

import pyarrow.fs as pafs

from recognizer_core.extract.config import SourceConfig
from recognizer_core.names import nfc


class SourceError(ValueError):
    """The video source cannot be listed (missing folder, bad CSV); the message names it."""


@dataclass(frozen=True)
class VideoSource:
    uri: str            # what `open_input_file` gets: a local absolute path or scheme://bucket/key
    rel_path: str       # path relative to the input root (or as written in the CSV), in NFC: the video's name
    label_name: str
    split: str
    size: int
    mtime_ns: int
    # set by the job's planning (job.assign_video_ids) where another source of the poses folder lists a different
    # file under this rel_path's id, or where this file's record has another id: that id, not make_video_id's
    assigned_id: str = ""
    # the source's own pyarrow options (`s3://bkt/v?region=...`), appended to `uri` to open the video; not part of
    # its identity: keys written before they were appended must still match, and options may hold credentials
    options: str = ""

    @property
    def plain_uri(self) -> str:
        """`uri` without the source's options: what manifests record and key the video by."""
        tail = f"?{self.options}"
        return self.uri[:-len(tail)] if self.options and self.uri.endswith(tail) else self.uri

    @property
    def key(self) -> str:
        """Manifest key: a changed file (new size or mtime) is a new key and is extracted again."""
        return f"{self.plain_uri}|{self.size}|{self.mtime_ns}"

    @property
    def video_id(self) -> str:
        """The clip file's name: `assigned_id` if set, else make_video_id(rel_path)."""
        return self.assigned_id or make_video_id(self.rel_path)

    def to_dict(self) -> dict:
        """The video as manifest records hold it: its plain uri, without the source's options."""
        out = asdict(self)
        out["uri"] = self.plain_uri
        del out["options"]
        return out


def make_video_id(rel_path: str, variant: int = 0) -> str:
    """File-system-safe, unique per rel_path: readable stem + hash of the whole relative path. Variant n > 0 hashes
    `rel_path#n`: the id of a second video with one relative path under another source (datasetA/Fight/1.mp4,
    datasetB/Fight/1.mp4), which would otherwise overwrite the first one's clip file.
    The hash is of the NFC form: one id whichever form the file system returns (ASCII and NFC names keep the ids
    they always had; a video recorded under an NFD name keeps its record's id, job.assign_video_ids)."""
    rel_path = nfc(rel_path)
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", PurePosixPath(rel_path).stem)[:60]
    name = f"{rel_path}#{variant}" if variant else rel_path
    return f"{stem}-{hashlib.sha1(name.encode()).hexdigest()[:10]}"


def resolve_filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path inside it) for a local path or a URI that pyarrow understands."""
    if "://" not in uri:
        return pafs.LocalFileSystem(), os.path.abspath(uri)
    try:
        return pafs.FileSystem.from_uri(uri)
    except Exception as err:  # pyarrow raises several types for unknown schemes / missing credentials
        raise SourceError(f"{uri}: cannot open filesystem: {err}") from None


_URI_SAFE = "/!$&'()*+,;=:@~"   # what pyarrow's URIs take as it is: names that opened before keep their keys
_ESCAPE = re.compile(r"%[0-9A-Fa-f]{2}")


def _join_uri(root_uri: str, path: str, query: str = "") -> str:
    if "://" not in root_uri:
        return path
    scheme = root_uri.split("://", 1)[0]
    # a key with a space, '(', '%' or '#' is escaped: pyarrow's from_uri refuses or percent-decodes it otherwise,
    # and the listed video could never be opened
    return f"{scheme}://{urllib.parse.quote(path, safe=_URI_SAFE)}" + (f"?{query}" if query else "")


def _split_options(uri: str) -> tuple[str, str]:
    """(uri without its options, options): pyarrow's options (endpoint_override, scheme, region, ...) are the
    query of a URI with a scheme, after its first '?'; a local path has none (a '?' there is part of a name)."""
    if "://" not in uri:
        return uri, ""
    scheme, rest = uri.split("://", 1)
    path, _, options = rest.partition("?")
    return f"{scheme}://{path}", options


def _options(uri: str) -> str:
    """The pyarrow options of an object-store URI, which every video listed under it needs too: a MinIO endpoint
    given there opened no video of a folder or relative CSV row."""
    return _split_options(uri)[1]


def _escaped_uri(uri: str) -> str:
    """An absolute URI of a CSV row as pyarrow needs it. The key (up to '?', where pyarrow's options start) is
    taken as escaped already, and kept, when pyarrow can parse it: every '%' starts a %XX escape and no character
    needs one (s3://bkt/my%20clip.mp4; plain ASCII keys too, so their manifest keys stay). Otherwise it is the key
    as written, '%' included, and is escaped as folder listings are: `cam#1.mp4` was cut at '#' (two rows became
    one file), a space or a non-ASCII name was refused by pyarrow."""
    plain, query = _split_options(uri)
    key = plain.split("://", 1)[1]
    if urllib.parse.quote(key, safe=_URI_SAFE + "%") == key and "%" not in _ESCAPE.sub("", key):
        return uri
    return _join_uri(uri, key, query)


def _labels_from_layout(rel: str, split_names: list[str]) -> tuple[str, str]:
    parts = PurePosixPath(rel).parts[:-1]
    split = ""
    if parts and parts[0] in {nfc(s) for s in split_names}:
        split, parts = parts[0], parts[1:]
    label = parts[-1] if parts else ""
    return label, split


def _name_forms(path: str) -> list[str]:
    """The path as written, then its NFC and NFD forms (a CSV typed in NFC naming a Mac-copied NFD file). Only whole
    paths: one whose folders and file name are in different forms is not found."""
    return list(dict.fromkeys((path, nfc(path), unicodedata.normalize("NFD", path))))


def _file_info(fs: pafs.FileSystem, path: str) -> pafs.FileInfo:
    for form in _name_forms(path):
        info = fs.get_file_info(form)
        if info.type != pafs.FileType.NotFound:
            return info
    raise SourceError(f"{path}: video not found")


def _file_infos(files: list[tuple[str, pafs.FileSystem, str]]) -> list[pafs.FileInfo]:
    """The FileInfo of each (uri, filesystem, path), in order; 'video not found' names the first missing one. A
    path is looked up as written, then in its other Unicode forms (_name_forms): the info's path is the one found.

    Remote: one listing per folder that two or more rows name (a page of 1000 per request) instead of one HEAD per
    row, one at a time (2000 requests, ~40 s at S3's ~20 ms each, on every run over a 2000-row CSV). A path that
    no listing shows, a folder with one row, a store that refuses listing (an IAM policy may allow GetObject but
    not ListBucket) and every local file (a stat is cheap) is asked for by itself, as before."""
    def folder(uri: str, fs: pafs.FileSystem, path: str) -> tuple[str, str, str] | None:
        # the scheme and the options (?region=...) too: one bucket name under two of them is not the same object
        return None if fs.type_name == "local" else (uri.split("://", 1)[0], _options(uri),
                                                     posixpath.dirname(path))

    rows: dict[tuple[str, str, str], list[int]] = {}
    for i, file in enumerate(files):
        if (key := folder(*file)) is not None:
            rows.setdefault(key, []).append(i)
    listed: dict[tuple[tuple[str, str, str], str], pafs.FileInfo] = {}
    for key, members in rows.items():
        if len(members) > 1:
            try:
                infos = files[members[0]][1].get_file_info(pafs.FileSelector(key[2], allow_not_found=True))
            except OSError:
                continue
            listed.update(((key, info.path), _whole_seconds(info)) for info in infos)
    out = []
    for uri, fs, path in files:
        key = folder(uri, fs, path)
        info = next((listed[(key, p)] for p in _name_forms(path) if (key, p) in listed), None)
        if info is None:
            info = _file_info(fs, path) if fs.type_name == "local" else _whole_seconds(_file_info(fs, path))
        out.append(info)
    return out


def _whole_seconds(info: pafs.FileInfo) -> pafs.FileInfo:
    """A listed object as a HEAD shows it: HTTP's Last-Modified has whole seconds, while MinIO / Ceph listings give
    milliseconds. A CSV row's key (uri|size|mtime) must not depend on how it was looked up (one row in its folder,
    listing refused) nor change from the HEADs that earlier runs recorded: every video would be extracted again."""
    if info.mtime_ns is None:
        return info
    return pafs.FileInfo(info.path, info.type, mtime_ns=info.mtime_ns // 10**9 * 10**9, size=info.size)


def _mtime_ns(info: pafs.FileInfo) -> int:
    return int(info.mtime_ns) if info.mtime_ns is not None else 0


def list_folder(cfg: SourceConfig) -> list[VideoSource]:
    fs, root = resolve_filesystem(cfg.input)
    root_info = fs.get_file_info(root)
    if root_info.type != pafs.FileType.Directory:
        raise SourceError(f"source.input: {cfg.input} is not a folder")
    exts = tuple(e.lower() for e in cfg.extensions)
    infos = fs.get_file_info(pafs.FileSelector(root, recursive=True))
    videos, seen = [], {}
    for info in infos:
        if info.type != pafs.FileType.File or not info.path.lower().endswith(exts):
            continue
        rel = PurePosixPath(info.path).relative_to(PurePosixPath(root)).as_posix()
        if any(part.startswith(".") for part in PurePosixPath(rel).parts):
            continue   # hidden: macOS's ._x.mp4 resource forks, a .Trash folder's videos
        if (name := nfc(rel)) in seen:   # one name twice (Linux keeps both forms apart): one video id, one clip
            raise SourceError(f"source.input: {cfg.input}: {name!r} is there twice, in NFC and in NFD Unicode "
                              f"form (a copy from a Mac next to one made here): keep one")
        seen[name] = rel
        label, split = _labels_from_layout(name, cfg.split_names)
        videos.append(VideoSource(_join_uri(cfg.input, info.path, _options(cfg.input)), name, label, split,
                                  int(info.size or 0), _mtime_ns(info), options=_options(cfg.input)))
    return sorted(videos, key=lambda v: v.rel_path)


def list_manifest(cfg: SourceConfig) -> list[VideoSource]:
    fs, csv_path = resolve_filesystem(cfg.manifest_csv)
    try:
        with fs.open_input_stream(csv_path) as f:
            text = f.read().decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise SourceError(f"source.manifest_csv: {cfg.manifest_csv} is not UTF-8 text ({err.reason} at byte "
                          f"{err.start}): save it as UTF-8 (Excel: 'CSV UTF-8')") from None
    except (FileNotFoundError, OSError) as err:
        raise SourceError(f"source.manifest_csv: cannot read {cfg.manifest_csv}: {err}") from None
    reader = csv.DictReader(io.StringIO(text))
    rows = [(reader.line_num, row) for row in reader]   # line_num: the file's line, blank lines counted
    if not rows or not {"path", "label"} <= set(rows[0][1]):
        raise SourceError(f"{cfg.manifest_csv}: needs a header with columns path,label[,split]")
    base = cfg.input or (os.path.dirname(cfg.manifest_csv) if "://" not in cfg.manifest_csv
                         else _split_options(cfg.manifest_csv)[0].rsplit("/", 1)[0])
    options = _options(cfg.input) or _options(cfg.manifest_csv)   # the source's, else the CSV's own
    base = _split_options(base)[0]
    files, named, seen = [], [], {}
    for line_no, row in rows:
        rel = (row.get("path") or "").strip()
        if not rel:
            raise SourceError(f"{cfg.manifest_csv}:{line_no}: empty path")
        split = nfc((row.get("split") or "").strip())
        # a typo ('tain') was extracted and built as its own split
        if split and split not in {nfc(s) for s in cfg.split_names}:
            raise SourceError(f"{cfg.manifest_csv}:{line_no}: split {split!r} is not one of source.split_names "
                              f"{cfg.split_names} (or empty: drawn by ratio)")
        added = ""   # the source's options this row's uri gets (not part of its key: VideoSource.options)
        if "://" in rel:
            uri = _escaped_uri(rel)
            same_store = uri.split("://", 1)[0] == (cfg.input or cfg.manifest_csv).split("://", 1)[0]
            if options and "?" not in uri and same_store:
                uri, added = f"{uri}?{options}", options   # a row on the source's store, without options of its own
        elif os.path.isabs(rel):
            uri = rel
        elif "://" in base:   # the base as written may be escaped already (s3://bkt/my%20videos): decoded, joined
            uri = _join_uri(base, urllib.parse.unquote(base.split("://", 1)[1]).rstrip("/") + "/" + rel, options)
            added = options
        else:
            uri = f"{base.rstrip('/')}/{rel}"
        vfs, vpath = resolve_filesystem(uri)
        if nfc(vpath) in seen:   # one file twice (also in two Unicode forms): extracted twice, the last label kept
            raise SourceError(f"{cfg.manifest_csv}:{line_no}: {rel} is listed already on line {seen[nfc(vpath)]}")
        seen[nfc(vpath)] = line_no
        files.append((uri, vfs, vpath))
        named.append((nfc(rel), nfc((row.get("label") or "").strip()), split, added))
    # sizes and mtimes (the manifest key) after every row is checked: folders are listed, not one HEAD per row
    return [VideoSource(_found_uri(uri, vpath, info.path), rel, label, split, int(info.size or 0), _mtime_ns(info),
                        options=added)
            for (uri, _, vpath), (rel, label, split, added), info in zip(files, named, _file_infos(files))]


def _found_uri(uri: str, path: str, found: str) -> str:
    """The row's URI (a local path for local rows) naming the file as found: `found` is `path` in another Unicode
    form where the file system has that one (its own form opens it, and keys it as a folder listing would)."""
    if "://" not in uri:
        return found
    return uri if found == path else _join_uri(uri, found, _options(uri))


def list_videos(cfg: SourceConfig) -> list[VideoSource]:
    """Every video of the source, with label name and (possibly empty) given split, sorted by rel_path."""
    videos = list_manifest(cfg) if cfg.manifest_csv else list_folder(cfg)
    if cfg.limit:
        videos = videos[: cfg.limit]
    return videos


def label_index(videos: list[VideoSource], label_names: list[str]) -> list[str]:
    """Class names in index order: the configured list (every video's label must be in it) or sorted found; in NFC,
    as the videos' labels are (a YAML typed on a Mac may hold NFD names)."""
    found = sorted({nfc(v.label_name) for v in videos})
    label_names = [nfc(n) for n in label_names]
    if not label_names:
        return found
    unknown = [name for name in found if name not in label_names]
    if unknown:
        raise SourceError(f"source.label_names {label_names} lacks labels found in the videos: {unknown}")
    return list(label_names)


def open_video_file(uri: str):
    """A seekable binary file object for any local path or pyarrow URI (PyAV reads file objects)."""
    fs, path = resolve_filesystem(uri)
    return fs.open_input_file(path)
