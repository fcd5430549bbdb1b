"""A set of a skeleton store's rows held as row ranges, one or more per row group: what a split and a training
shard are, so that taking a split, sharding it and shuffling its row groups cost O(ranges + row groups), never
O(clips). Row positions are materialised only for the rows actually read (a window of the training stream), or
on request for tools and tests (`positions()`, `np.asarray(ranges)`).
"""
from __future__ import annotations

import numpy as np


def _i64(a) -> np.ndarray:
    return np.asarray(a, dtype=np.int64).reshape(-1)


class RowRanges:
    """Ascending, disjoint [start, stop) ranges of global row positions, none crossing a row group.

    `groups[k]` is the global row-group number of range k (its index in `bounds`, the ascending row-group starts
    of the whole dataset with its row count last). Row i of the set (0 <= i < len) is `take([i])`: the rows are
    counted range by range, in store order."""

    def __init__(self, starts: np.ndarray, stops: np.ndarray, bounds: np.ndarray, groups: np.ndarray | None = None):
        self.starts, self.stops, self.bounds = _i64(starts), _i64(stops), bounds
        self.groups = np.searchsorted(bounds, self.starts, side="right") - 1 if groups is None else _i64(groups)
        self.offsets = np.zeros(len(self.starts) + 1, np.int64)
        np.cumsum(self.stops - self.starts, out=self.offsets[1:])

    @classmethod
    def cut(cls, starts, stops, bounds: np.ndarray) -> "RowRanges":
        """Ascending, disjoint ranges (any length) cut at the row-group starts `bounds`; empty ranges dropped."""
        starts, stops = _i64(starts), _i64(stops)
        keep = stops > starts
        starts, stops = starts[keep], stops[keep]
        if not len(starts):
            return cls(starts, stops, bounds)
        inner = bounds[(bounds > starts[0]) & (bounds < stops[-1])]
        points = np.union1d(np.concatenate([starts, stops]), inner)
        a, b = points[:-1], points[1:]
        k = np.searchsorted(starts, a, side="right") - 1  # the range each segment would lie in
        inside = (k >= 0) & (a < stops[np.maximum(k, 0)])
        return cls(a[inside], b[inside], bounds)

    @classmethod
    def from_positions(cls, positions, bounds: np.ndarray) -> "RowRanges":
        """The set of the given row positions (any order, duplicates dropped), as maximal runs cut at row groups."""
        pos = np.unique(_i64(positions))
        if not len(pos):
            return cls(pos, pos, bounds)
        breaks = np.flatnonzero(np.diff(pos) != 1)
        return cls.cut(pos[np.r_[0, breaks + 1]], pos[np.r_[breaks, len(pos) - 1]] + 1, bounds)

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __repr__(self) -> str:
        return f"RowRanges({len(self)} rows in {len(self.starts)} ranges)"

    def lengths(self) -> np.ndarray:
        return self.stops - self.starts

    def positions(self) -> np.ndarray:
        """Every row position, ascending (O(rows): for tools and tests, not the training start)."""
        n = len(self)
        return np.arange(n, dtype=np.int64) + np.repeat(self.starts - self.offsets[:-1], self.lengths())

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        pos = self.positions()
        return pos if dtype is None else pos.astype(dtype)

    def take(self, idx) -> np.ndarray:
        """Row positions of the set's rows `idx` (0 <= idx < len)."""
        idx = _i64(idx)
        k = np.searchsorted(self.offsets, idx, side="right") - 1
        return self.starts[k] + idx - self.offsets[k]

    def select(self, mask: np.ndarray) -> "RowRanges":
        """The ranges where `mask` (one flag per range) is set."""
        return RowRanges(self.starts[mask], self.stops[mask], self.bounds, self.groups[mask])

    def subset(self, positions) -> "RowRanges":
        """Another set of rows of the same dataset (e.g. every n-th row of this one)."""
        return RowRanges.from_positions(positions, self.bounds)

    def without(self, positions) -> tuple["RowRanges", np.ndarray]:
        """(this set less the given positions, the given positions that were in it, ascending)."""
        pos = np.unique(_i64(positions))
        if not len(pos) or not len(self.starts):
            return self, pos[:0]
        k = np.searchsorted(self.starts, pos, side="right") - 1
        hit = pos[(k >= 0) & (pos < self.stops[np.maximum(k, 0)])]
        if not len(hit):
            return self, hit
        # each removed row p ends a piece at p and starts the next at p + 1: pair the sorted starts and stops
        starts = np.sort(np.concatenate([self.starts, hit + 1]))
        stops = np.sort(np.concatenate([self.stops, hit]))
        keep = stops > starts
        starts, stops = starts[keep], stops[keep]
        return RowRanges(starts, stops, self.bounds), hit
