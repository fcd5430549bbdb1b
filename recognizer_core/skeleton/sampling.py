"""Frame sampling of mmaction2 1.2.0 `UniformSampleFrames`, without the global NumPy RNG.

Test mode: mmaction2 calls `np.random.seed(255)` and draws from the global RNG, so the indices depend only
on (num_frames, clip_len, num_clips). We draw the same numbers from a module-level `RandomState` re-seeded
with 255 (the legacy generator behind `np.random.*`: identical stream) and cache the result: a validation
epoch computes each distinct length once instead of once per sample, and global RNG state is never touched.

Train mode: the same three regimes (short / between clip_len and 2*clip_len / long), drawn from the caller's
`np.random.Generator`, vectorised over clips.

mmaction2 also computes "transitional" frames (where the person count changes) and blends the indices with
them; since the indices are integers that blend is the identity, so it is skipped (it is the per-frame Python
loop that dominates mmaction2's pipeline time).
"""
from __future__ import annotations

import threading
from functools import lru_cache

import numpy as np

TEST_SEED = 255  # mmaction2 UniformSampleFrames(seed=255)
# Re-seeding one RandomState costs ~2 us, constructing one ~250 us; the lock makes the reuse thread-safe.
_TEST_RS = np.random.RandomState(TEST_SEED)
_TEST_RS_LOCK = threading.Lock()


def _check(num_frames: int, clip_len: int, num_clips: int) -> None:
    if num_frames < 1:
        raise ValueError(f"total_frames must be >= 1 to sample frames, got {num_frames}")
    if clip_len < 1 or num_clips < 1:
        raise ValueError(f"clip_len and num_clips must be >= 1, got clip_len={clip_len}, num_clips={num_clips}")


def _uniform_bins(num_frames: int, clip_len: int) -> tuple[np.ndarray, np.ndarray]:
    bids = np.arange(clip_len + 1, dtype=np.int64) * num_frames // clip_len
    return bids[:clip_len], np.diff(bids)


@lru_cache(maxsize=4096)
def _test_indices_cached(num_frames: int, clip_len: int, num_clips: int, seed: int) -> np.ndarray:
    with _TEST_RS_LOCK:
        _TEST_RS.seed(seed)  # legacy seeding, the same stream as np.random.seed(seed)
        return _draw_test_indices(_TEST_RS, num_frames, clip_len, num_clips)


def _draw_test_indices(rs: np.random.RandomState, num_frames: int, clip_len: int, num_clips: int) -> np.ndarray:
    all_inds = []
    for i in range(num_clips):
        if num_frames < clip_len:
            start = i if num_frames < num_clips else i * num_frames // num_clips
            inds = np.arange(start, start + clip_len)
        elif num_frames < 2 * clip_len:
            chosen = rs.choice(clip_len + 1, num_frames - clip_len, replace=False)
            offset = np.zeros(clip_len + 1, dtype=np.int64)
            offset[chosen] = 1
            inds = np.arange(clip_len) + np.cumsum(offset)[:-1]
        else:
            bst, bsize = _uniform_bins(num_frames, clip_len)
            inds = bst + rs.randint(bsize)
        all_inds.append(inds)
    out = (np.concatenate(all_inds) % num_frames).astype(np.int32)
    out.setflags(write=False)
    return out


def test_frame_indices(num_frames: int, clip_len: int, num_clips: int = 1, seed: int = TEST_SEED) -> np.ndarray:
    """int32 (num_clips * clip_len,) frame indices of mmaction2's test-mode UniformSampleFrames (read-only)."""
    _check(num_frames, clip_len, num_clips)
    return _test_indices_cached(int(num_frames), int(clip_len), int(num_clips), int(seed))


test_frame_indices.__test__ = False  # not a pytest test when imported into a test module


def train_frame_indices(num_frames: int, clip_len: int, num_clips: int, rng: np.random.Generator) -> np.ndarray:
    """int32 (num_clips * clip_len,) random indices with mmaction2's train-mode UniformSampleFrames regimes."""
    _check(num_frames, clip_len, num_clips)
    if num_frames < clip_len:
        # A random start, then loop over the clip (the modulo below) like mmaction2.
        starts = rng.integers(0, num_frames, size=num_clips)
        inds = starts[:, None] + np.arange(clip_len)[None]
    elif num_frames < 2 * clip_len:
        # Insert num_frames - clip_len one-frame skips at distinct random positions of clip_len + 1 slots:
        # the first k columns of a random permutation per row are a uniform k-subset.
        k = num_frames - clip_len
        chosen = np.argsort(rng.random((num_clips, clip_len + 1)), axis=1)[:, :k]
        offset = np.zeros((num_clips, clip_len + 1), dtype=np.int64)
        np.put_along_axis(offset, chosen, 1, axis=1)
        inds = np.arange(clip_len)[None] + np.cumsum(offset, axis=1)[:, :-1]
    else:
        bst, bsize = _uniform_bins(num_frames, clip_len)
        inds = bst[None] + rng.integers(0, bsize[None], size=(num_clips, clip_len))
    return (inds.reshape(-1) % num_frames).astype(np.int32)
