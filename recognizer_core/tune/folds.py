"""Cross-validation folds for small datasets, grouped by source video: the windows of one video never sit on
both sides of a fold. The folds are written as a *view* of the prepared skeleton store (its Parquet files
linked, a `_dataset.json` whose `split_map` names `cv<k>_train` / `cv<k>_val`, `trainval` and `test`), so
the training loader selects them by split name like any other split: no change to the data code. The view also
lists each of its splits' row ranges and label counts (under SPLIT_MAP_AS_ROWS), so training a fold, like training
on the source, reads no per-clip `_index.parquet` (the split_map stays for tools that select by clip id).
Writing the view again after the source was rebuilt relinks its files (a link kept from the old source would
read the old clips under the new split_map)."""
from __future__ import annotations

import json
import os
import random
import shutil
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

from recognizer_core.skeleton.store import DATASET_JSON, SPLIT_MAP_AS_ROWS, SkeletonDataset
from recognizer_core.skeleton.store_write import MAX_RANGES_PER_FILE, WRITE_ID
from recognizer_core.storage import write_text

TRAINVAL = "trainval"


def assign_folds(groups: list[str], labels: list[int], k: int, seed: int = 0) -> list[int]:
    """Fold of each row: whole groups (source videos) go to one fold; groups are placed largest first, each on
    the fold that has fewest rows of the group's majority label (then fewest rows), so folds stay balanced in
    size and class mix. Where that leaves a fold without a label that k or more groups hold (a rare class only a
    minority of mixed videos' rows), the groups holding each such label, rarest first, are placed first, one per
    fold lacking it; folds that had every label stay as they were. Deterministic for a seed."""
    if k < 2:
        raise ValueError(f"folds must be >= 2, got {k}")
    rows: dict[str, list[int]] = defaultdict(list)
    for i, g in enumerate(groups):
        rows[g].append(i)
    if len(rows) < k:
        raise ValueError(f"{len(rows)} source video(s) cannot make {k} folds grouped by video")
    order = sorted(rows)
    random.Random(seed).shuffle(order)
    order.sort(key=lambda g: -len(rows[g]))  # stable: equal sizes keep the seeded order
    fold_of = _place(order, rows, labels, k, {})
    holders: dict[int, list[str]] = defaultdict(list)   # label -> the groups with a row of it, in placing order
    for g in order:
        for lb in dict.fromkeys(labels[i] for i in rows[g]):
            holders[lb].append(g)
    lacking = [lb for lb, gs in holders.items() if len(gs) >= k and len({fold_of[rows[g][0]] for g in gs}) < k]
    if not lacking:
        return fold_of
    first: dict[str, int] = {}
    size = [0] * k
    for lb in sorted(holders, key=lambda c: (len(holders[c]), c)):
        have = {first[g] for g in holders[lb] if g in first}
        for g in holders[lb]:
            missing = [f for f in range(k) if f not in have]
            if not missing:
                break
            if g not in first:
                first[g] = min(missing, key=lambda f: (size[f], f))
                size[first[g]] += len(rows[g])
                have.add(first[g])
    return _place(order, rows, labels, k, first)


def _place(order: list[str], rows: dict[str, list[int]], labels: list[int], k: int,
           first: dict[str, int]) -> list[int]:
    """assign_folds' greedy placement, the groups in `first` on their given folds before the rest."""
    per_label = [Counter() for _ in range(k)]
    size = [0] * k
    fold_of = [0] * sum(len(r) for r in rows.values())
    for g in [g for g in order if g in first] + [g for g in order if g not in first]:
        if g in first:
            f = first[g]
        else:
            major = Counter(labels[i] for i in rows[g]).most_common(1)[0][0]
            f = min(range(k), key=lambda j: (per_label[j][major], size[j], j))
        for i in rows[g]:
            fold_of[i] = f
            per_label[f][labels[i]] += 1
        size[f] += len(rows[g])
    return fold_of


def check_every_class_in_each_fold(groups: list[str], labels: list[int], fold_of: list[int], k: int,
                                   label_names: list[str], pooled: str) -> None:
    """Refuse folds where some cv<k>_val has no clip of a class the pooled data has: mean class accuracy then
    averages that fold over the other classes alone (a detector with no false alarm scores 1.0, one false alarm in
    42 clips 0.488), and the mean over folds that the search ranks by is dominated by that one fold. Names the
    rarest such class and the fix, as a ValueError the tune job prints before Ray starts."""
    videos_of: dict[int, set[str]] = defaultdict(set)
    for g, lb in zip(groups, labels):
        videos_of[lb].add(g)
    in_fold: list[set[int]] = [set() for _ in range(k)]
    for lb, f in zip(labels, fold_of):
        in_fold[f].add(lb)
    for lb in sorted(videos_of, key=lambda c: (len(videos_of[c]), c)):  # the rarest class first: the one to fix
        without = [f"cv{f}_val" for f in range(k) if lb not in in_fold[f]]
        if not without:
            continue
        name = f"class {label_names[lb]!r}" if 0 <= lb < len(label_names) else f"class {lb}"
        n = len(videos_of[lb])
        if n < k:  # whole videos go to one fold: a class in n videos reaches n folds at most
            fix = (f"use --folds {n} or fewer" if n >= 2 else "tune without --folds") + f", or add videos of {name}"
        else:  # enough videos, but they are mostly another class and were placed by it
            fix = f"use fewer --folds or another --seed, or add videos of {name}"
        raise ValueError(f"{pooled}: --folds {k}: {name} has {n} source video(s), so {', '.join(without)} "
                         f"would hold no clip of it and score mean class accuracy without it; {fix}")


def write_fold_store(dataset_path: str | Path, out_dir: str | Path, k: int, *, seed: int = 0,
                     train_split: str = "train", val_split: str = "val", test_split: str = "test") -> dict:
    """Write the fold view of `dataset_path` (train + val pooled, then split into k folds by source video)
    into `out_dir`; returns {path, folds: [{train, val, val_videos}], trainval, test}. Idempotent."""
    src = SkeletonDataset(dataset_path)
    # through the split ranges when the dataset lists them (no `_index.parquet` read), else from the index
    pool = [src.split_columns(s, ["clip_id", "label", "source_video"]) for s in (train_split, val_split)]
    ids = [x for t in pool for x in t["clip_id"].to_pylist()]
    labels = [int(x) for t in pool for x in t["label"].to_pylist()]
    # A clip without a recorded video is its own group (nothing says it shares a video with another clip).
    groups = [v or f"clip:{c}" for t in pool for c, v in zip(t["clip_id"].to_pylist(), t["source_video"].to_pylist())]
    if len(set(ids)) != len(ids):
        raise ValueError(f"{dataset_path}: clips listed in both {train_split!r} and {val_split!r}; folds need "
                         "each clip once")
    fold_of = assign_folds(groups, labels, k, seed)
    check_every_class_in_each_fold(groups, labels, fold_of, k, src.label_names,
                                   f"{dataset_path} ({train_split}+{val_split})")
    test = src.split_columns(test_split, ["clip_id", "label"])
    test_ids = test["clip_id"].to_pylist()
    split_map: dict[str, list[str]] = {TRAINVAL: ids, "test": test_ids}
    pos = np.concatenate([t["position"].to_numpy() for t in pool]).astype(np.int64)
    lab, fold_arr = np.asarray(labels, np.int64), np.asarray(fold_of)
    members = {TRAINVAL: (pos, lab), "test": (test["position"].to_numpy().astype(np.int64),
                                              test["label"].to_numpy().astype(np.int64))}
    info_folds = []
    for f in range(k):
        split_map[f"cv{f}_train"] = [c for c, j in zip(ids, fold_of) if j != f]
        split_map[f"cv{f}_val"] = [c for c, j in zip(ids, fold_of) if j == f]
        members[f"cv{f}_train"] = (pos[fold_arr != f], lab[fold_arr != f])
        members[f"cv{f}_val"] = (pos[fold_arr == f], lab[fold_arr == f])
        info_folds.append({"train": len(split_map[f"cv{f}_train"]), "val": len(split_map[f"cv{f}_val"]),
                           "val_videos": len({g for g, j in zip(groups, fold_of) if j == f})})
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    previous = _read_json(out / DATASET_JSON)
    info = dict(src.info)
    index_file = info.get("index_file")  # the light-column index travels with the parts it indexes
    if index_file and not os.path.exists(os.path.join(str(dataset_path), index_file)):
        del info["index_file"]  # (gone from the source: the view reads its light columns from the parts)
        index_file = None
    linked = list(src.files) + ([os.path.join(str(dataset_path), index_file)] if index_file else [])
    # a copy (no hard link across devices) is kept only if the view was written from this very write of the source
    copies_current = info.get(WRITE_ID) is not None and previous.get(WRITE_ID) == info.get(WRITE_ID)
    for f in linked:  # the view links the source's Parquet files (same names, as _dataset.json lists them)
        _link(f, out / Path(f).name, copies_current)
    names = {Path(f).name for f in linked}
    for old in out.glob("part-*.parquet"):  # a part file the rebuilt source no longer has
        if old.name not in names:
            old.unlink()
    info["split_map"] = split_map
    info["splits"] = {s: len(v) for s, v in split_map.items()}
    info["metadata"] = {**dict(info.get("metadata") or {}),
                        "folds": {"k": k, "seed": seed, "grouped_by": "source_video", "source": str(dataset_path)}}
    info["files"] = [dict(f) for f in info.get("files") or [{"name": Path(f).name, "num_rows": None}
                                                            for f in src.files]]
    for f in info["files"]:  # the source's own split ranges are not the view's splits
        f.pop("split_rows", None)
    info.pop("split_labels", None)
    rows = _split_rows(src, members)
    if rows is not None:  # the view's splits as row ranges too, so its training start reads no index either
        for f, r in zip(info["files"], rows):
            f["split_rows"] = r
        info["split_labels"] = {s: {str(lb): int(n) for lb, n in zip(*np.unique(lb_, return_counts=True))}
                                for s, (_, lb_) in members.items()}
        info[SPLIT_MAP_AS_ROWS] = True
    write_text(out / DATASET_JSON, json.dumps(info, indent=1))
    return {"path": str(out), "folds": info_folds, TRAINVAL: len(ids), "test": len(test_ids)}


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _link(src: str, link: Path, copies_current: bool) -> None:
    """Make `link` the source file `src`: kept when it is that file (same inode) or, for a copy, when the view was
    written from the source's current write; else replaced whole (a hard link, or a copy where the view sits on
    another device), through a temporary name so an interrupted call leaves no partial file under `link`."""
    if link.exists():
        a, b = os.stat(src), os.stat(link)
        if (a.st_ino, a.st_dev) == (b.st_ino, b.st_dev) or (copies_current and a.st_size == b.st_size):
            return
    tmp = link.with_name(f".{link.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copy2(src, tmp)
        os.replace(tmp, link)
    finally:
        tmp.unlink(missing_ok=True)


def _split_rows(src: SkeletonDataset, members: dict[str, tuple[np.ndarray, np.ndarray]]) -> list[dict] | None:
    """Per source file, {split: [[first row, end row), ...]} of the given (positions, labels) splits, as
    write_dataset lists them; None when a file would list more than MAX_RANGES_PER_FILE ranges of one split (the
    view then takes its split rows from the index, as an interleaved dataset does)."""
    file_start = np.array([b[0] for b in src.row_group_bounds()] + [len(src)], dtype=np.int64)
    out: list[dict] = [{} for _ in src.files]
    for split, (pos, _) in members.items():
        pos = np.sort(pos)
        fidx = np.searchsorted(file_start, pos, side="right") - 1
        for fi in np.unique(fidx).tolist():
            local = pos[fidx == fi] - file_start[fi]
            breaks = np.flatnonzero(np.diff(local) != 1)
            starts, ends = local[np.r_[0, breaks + 1]], local[np.r_[breaks, len(local) - 1]] + 1
            if len(starts) > MAX_RANGES_PER_FILE:
                return None
            out[fi][split] = [[int(a), int(b)] for a, b in zip(starts, ends)]
    return [dict(sorted(r.items())) for r in out]


def fold_overrides(store: str, k: int) -> list[dict]:
    """The data overrides of fold f's training run."""
    return [{"data.path": store, "data.train_split": f"cv{f}_train", "data.val_split": f"cv{f}_val"}
            for f in range(k)]
