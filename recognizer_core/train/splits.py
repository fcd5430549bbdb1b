"""A split of a skeleton dataset for training: its rows (as row ranges), label counts, and the shard of each rank.

The training start takes a split's rows from the ranges in `_dataset.json` (SkeletonDataset.split_ranges) and
deals row groups to the ranks as ranges (balanced to within a clip), so it reads no data file and not the
per-clip index, and costs O(files + row groups), not O(clips), at any dataset size; datasets without ranges (old
or interleaved ones, a split_map, folds) take their rows from the index and continue as ranges from there.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa

from recognizer_core.skeleton.clip import SkeletonDataError
from recognizer_core.skeleton.store import SkeletonDataset
from recognizer_core.skeleton.store_ranges import RowRanges
from recognizer_core.skeleton.store_rows import int64_array


class ClipIds(Sequence):
    """Clip ids as an Arrow array, turned into Python strings only when read (400k of them as a list of str
    cost 30 MB and 0.3 s per worker, for ids that are only looked at when naming a clip)."""

    def __init__(self, ids: pa.Array):
        self._ids = ids

    def __len__(self) -> int:
        return len(self._ids)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return self._ids[i].to_pylist()
        return self._ids[i].as_py()


class SplitInfo:
    """One split's rows (RowRanges: ascending, cut at row groups) and its clips per label. Per-clip positions,
    row groups, labels and clip ids are materialised only when asked for (tools and tests; the training start
    needs none of them), labels and ids read from the split's own row groups when the dataset lists its split ranges."""

    def __init__(self, name: str, ranges: RowRanges, label_counts: dict[int, int], *, ds: SkeletonDataset,
                 labels: np.ndarray | None = None, clip_ids: Sequence[str] | None = None):
        self.name, self.ranges, self.label_counts = name, ranges, label_counts
        self._ds, self._labels, self._clip_ids = ds, labels, clip_ids

    def __len__(self) -> int:
        return len(self.ranges)

    @property
    def positions(self) -> np.ndarray:
        """Every row position, ascending (O(clips))."""
        return self.ranges.positions()

    @property
    def blocks(self) -> np.ndarray:
        """The global row group of every position (O(clips))."""
        return np.repeat(self.ranges.groups, self.ranges.lengths())

    def _read_index(self) -> None:
        # only a split taken from `_dataset.json`'s ranges gets here: its own row groups, not `_index.parquet`
        table = self._ds.read_columns(self.ranges, ["clip_id", "label"])
        self._labels = table["label"].to_numpy().astype(np.int64)
        self._clip_ids = ClipIds(table["clip_id"].combine_chunks())

    @property
    def labels(self) -> np.ndarray:
        if self._labels is None:
            self._read_index()
        return self._labels

    @property
    def clip_ids(self) -> Sequence[str]:
        if self._clip_ids is None:
            self._read_index()
        return self._clip_ids


def row_blocks(ds: SkeletonDataset, positions: np.ndarray) -> np.ndarray:
    """The row group (global number) holding each position."""
    return np.searchsorted(ds.group_starts(), positions, side="right") - 1


def split_info(ds: SkeletonDataset, split: str, num_classes: int, required: bool = True) -> SplitInfo | None:
    """One split's rows, with labels checked against num_classes. From the split ranges and label counts in
    `_dataset.json` when the dataset has them (no data file and no index read), else from the light index."""
    ranges, counts = ds.split_ranges(split), ds.split_label_counts(split)
    if ranges is not None and counts is not None:
        bad_labels = [lb for lb in counts if not 0 <= lb < num_classes]
        if len(ranges) and not bad_labels:
            return SplitInfo(split, ranges, counts, ds=ds)
    # no ranges, an empty split or bad labels (the index names the clips in the error)
    table = ds.index(split, columns=["clip_id", "label"])
    if table.num_rows == 0:
        if required:
            raise SkeletonDataError(f"{ds.path}: split {split!r} is empty (splits present: {ds.splits()})")
        return None
    pos = table["position"].to_numpy().astype(np.int64)
    labels = table["label"].to_numpy().astype(np.int64)
    ids = table["clip_id"].combine_chunks()
    bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
    if bad.size:
        show = ", ".join(f"{ids[int(i)].as_py()!r} (label {labels[i]})" for i in bad[:5])
        raise SkeletonDataError(f"{ds.path}: split {split!r} has {bad.size} clip(s) with labels outside "
                                f"[0, {num_classes}) (model.num_classes): {show}")
    order = np.argsort(pos)
    uniq, n = np.unique(labels, return_counts=True)
    return SplitInfo(split, RowRanges.from_positions(pos, ds.group_starts()), dict(zip(uniq.tolist(), n.tolist())),
                     ds=ds, labels=labels[order], clip_ids=ClipIds(ids.take(int64_array(order))))


def shard_positions(info: SplitInfo, rank: int, world: int) -> RowRanges:
    """This rank's rows: row groups dealt round-robin (a rank reads mostly its own row groups; neighbouring
    groups hold other videos and labels, so every shard mixes them), then balanced to within one clip: the
    shards that came out larger hand the rows at their end to the smaller ones. Groups differ in size (a split's
    first and last ones are partial), and unbalanced shards made the smaller ones repeat up to most of their
    clips to fill the largest one's steps (DistributedSampler pads at most world - 1). Every clip is in exactly
    one shard. O(ranges); every world-th clip when the row groups are fewer than the ranks."""
    if world == 1:
        return info.ranges
    r = info.ranges
    ids = np.unique(r.groups)
    if len(ids) < world:
        return r.subset(info.positions[rank::world])
    owner = np.searchsorted(ids, r.groups) % world          # range k's rank, dealt by row group
    lengths = r.lengths()
    have = np.bincount(owner, weights=lengths, minlength=world).astype(np.int64)
    n = int(lengths.sum())
    want = np.full(world, n // world, np.int64)
    want[: n % world] += 1
    pool: list[tuple[int, int]] = []                        # rows the larger shards give up, in store order
    starts = [list(r.starts[owner == k]) for k in range(world)]
    stops = [list(r.stops[owner == k]) for k in range(world)]
    for k in range(world):
        extra = int(have[k] - want[k])
        while extra > 0:                                    # from the end of the shard
            a, b = int(starts[k][-1]), int(stops[k][-1])
            cut = max(a, b - extra)
            pool.append((cut, b))
            extra -= b - cut
            if cut == a:
                starts[k].pop(), stops[k].pop()
            else:
                stops[k][-1] = cut
    pool.sort()
    for k in range(world):
        need = int(want[k] - have[k])
        while need > 0:
            a, b = pool.pop(0)
            take = min(need, b - a)
            starts[k].append(a), stops[k].append(a + take)
            if a + take < b:
                pool.insert(0, (a + take, b))
            need -= take
    order = np.argsort(starts[rank], kind="stable")
    return RowRanges.cut(np.asarray(starts[rank], np.int64)[order], np.asarray(stops[rank], np.int64)[order],
                         r.bounds)
