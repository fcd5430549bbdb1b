"""The order in which a streamed shard's clips are seen in an epoch, computed one window at a time.

The epoch order of a shard of n clips in B row groups ("blocks", each a run of consecutive shard indices) is:
the blocks in a random order, rng (seed, epoch, rank, 1); the clips of each block in store order; then each
consecutive window of `window` clips of that stream shuffled by rng (seed, epoch, rank, 3, w). `base(epoch, j)`
gives the clips at stream places j from the block order (O(B) once per epoch) and the windows holding them
(O(window) each), so a batch costs the same at 1k and 500k clips and the whole order is never built; it equals
the materialised order (argsort of shuffled block ranks, then each window permuted) bit for bit.
"""
from __future__ import annotations

from collections import OrderedDict

import numpy as np


class BlockShuffle:
    """Epoch orders of a shard whose block k holds shard indices [block_start[k], block_start[k] + sizes[k])."""

    def __init__(self, block_sizes: np.ndarray, window: int, seed: int, rank: int):
        self.sizes = np.asarray(block_sizes, dtype=np.int64)
        self.start = np.concatenate([[0], np.cumsum(self.sizes)[:-1]]).astype(np.int64)
        self.n, self.window, self.seed, self.rank = int(self.sizes.sum()), window, seed, rank
        self._epoch, self._perm, self._ends = None, None, None
        self._windows: OrderedDict = OrderedDict()  # (epoch, w) -> window; at most two kept (a wrap spans two)

    def _blocks(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        if self._epoch != epoch:
            self._perm = np.random.default_rng([self.seed, epoch, self.rank, 1]).permutation(len(self.sizes))
            self._ends = np.cumsum(self.sizes[self._perm])
            self._epoch = epoch
        return self._perm, self._ends

    def stream(self, epoch: int, lo: int, hi: int) -> np.ndarray:
        """Shard indices at stream places [lo, hi) before the window shuffle: blocks in shuffled order."""
        perm, ends = self._blocks(epoch)
        k0, k1 = np.searchsorted(ends, [lo, hi - 1], side="right")
        ks = np.arange(k0, k1 + 1)
        first = ends[ks] - self.sizes[perm[ks]]  # stream place of each block's first clip
        a, b = np.maximum(first, lo), np.minimum(ends[ks], hi)
        offs = np.concatenate([[0], np.cumsum(b - a)])
        # clips a..b of each block: its first shard index plus the place within the block
        base = self.start[perm[ks]] + a - first - offs[:-1]
        return np.arange(hi - lo, dtype=np.int64) + np.repeat(base, b - a)

    def window_order(self, epoch: int, w: int) -> np.ndarray:
        key = (epoch, w)
        if key not in self._windows:
            lo, hi = w * self.window, min((w + 1) * self.window, self.n)
            part = self.stream(epoch, lo, hi)
            self._windows[key] = part[np.random.default_rng([self.seed, epoch, self.rank, 3, w]).permutation(hi - lo)]
            while len(self._windows) > 2:
                self._windows.popitem(last=False)
        return self._windows[key]

    def base(self, epoch: int, places: np.ndarray) -> np.ndarray:
        """Shard indices at epoch-stream places `places` (0 <= place < n)."""
        places = np.asarray(places, dtype=np.int64)
        out = np.empty(len(places), dtype=np.int64)
        wins = places // self.window
        for w in np.unique(wins).tolist():
            sel = wins == w
            out[sel] = self.window_order(epoch, w)[places[sel] - w * self.window]
        return out
