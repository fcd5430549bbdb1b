"""Train-mode frame sampling (skeleton/sampling.py train_frame_indices) follows mmaction2 1.2.0's
UniformSampleFrames._get_train_clips in the clip_len <= T < 2 * clip_len regime.

That rule (mmaction/datasets/transforms/pose_transforms.py, v1.2.0, lines 1049-1056, copied in `_mmaction2_clip`):
T - clip_len one-frame skips at distinct random positions among clip_len + 1 slots, i.e. the clip keeps every frame
but clip_len + 1 - (T - clip_len) of them, chosen uniformly. A contiguous random crop in its place passed the suite
(only shapes and ranges were checked). At T=199, clip_len=100 exactly 2 of 101 slots carry no skip, so every clip
is a strictly increasing run with steps of 1 or 2 and at most two steps of 1; a crop has 99 steps of 1."""
from __future__ import annotations

import numpy as np
import pytest

from recognizer_core.skeleton.sampling import train_frame_indices

T, CLIP_LEN, N = 199, 100, 4000


def _mmaction2_clip(num_frames: int, clip_len: int, rs: np.random.RandomState) -> np.ndarray:
    """A literal copy of mmaction2 1.2.0's branch `elif clip_len <= num_frames < 2 * clip_len` of
    UniformSampleFrames._get_train_clips, drawing from `rs` instead of the global np.random."""
    basic = np.arange(clip_len)
    inds = rs.choice(clip_len + 1, num_frames - clip_len, replace=False)
    offset = np.zeros(clip_len + 1, dtype=np.int32)
    offset[inds] = 1
    offset = np.cumsum(offset)
    inds = basic + offset[:-1]
    return inds


def _skips(clips: np.ndarray, num_frames: int) -> np.ndarray:
    """(N, clip_len) indices -> (N, clip_len + 1) 0/1 skip slots that produce them under mmaction2's rule
    (slot 0 from the first index, slot j from the step before index j, the last slot from the total)."""
    steps = np.diff(clips, axis=1) - 1
    first = clips[:, :1]
    last = (num_frames - clips.shape[1]) - first - steps.sum(1, keepdims=True)
    return np.concatenate([first, steps, last], axis=1)


def test_every_clip_is_one_mmaction2_could_draw():
    clips = train_frame_indices(T, CLIP_LEN, N, np.random.default_rng(0)).reshape(N, CLIP_LEN)
    assert clips.min() >= 0 and clips.max() <= T - 1
    skips = _skips(clips, T)
    # each slot holds 0 or 1 skip and the skips number exactly T - clip_len: the rule's support, nothing else
    assert set(np.unique(skips)) <= {0, 1} and (skips.sum(1) == T - CLIP_LEN).all()
    assert (np.diff(clips, axis=1) >= 1).all()  # no frame twice, none out of order


def test_the_skip_positions_are_distributed_as_mmaction2s():
    ours = _skips(train_frame_indices(T, CLIP_LEN, N, np.random.default_rng(1)).reshape(N, CLIP_LEN), T)
    rs = np.random.RandomState(2)
    ref = _skips(np.stack([_mmaction2_clip(T, CLIP_LEN, rs) for _ in range(N)]), T)
    # the 2 skip-free slots of 101 are a uniform pair: each slot is skip-free with probability 2/101, and the
    # two free slots are adjacent with probability 100/5050 = 2/101
    p = 2 / (CLIP_LEN + 1)
    se = np.sqrt(p * (1 - p) / N)
    for name, s in (("ours", ours), ("mmaction2", ref)):
        free = 1 - s
        assert (free.sum(1) == 2).all(), name
        assert np.abs(free.mean(0) - p).max() < 5 * se, name  # per slot: within 5 standard errors of 2/101
        pos = np.sort(np.nonzero(free)[1].reshape(N, 2), axis=1)
        adjacent = np.mean(pos[:, 1] - pos[:, 0] == 1)
        assert abs(adjacent - p) < 5 * se, name
        # the first index is 0 or 1 and the last 197 or 198, with mmaction2's probabilities
        starts_at_1 = np.mean(s[:, 0] == 1)
        assert starts_at_1 == pytest.approx(1 - p, abs=5 * se), name
    # mean index at clip position j: the rule's is j + (j + 1) * 99/101, a random crop's j + 49.5
    ours_mean = np.cumsum(ours, axis=1)[:, :-1].mean(0) + np.arange(CLIP_LEN)
    ref_mean = np.cumsum(ref, axis=1)[:, :-1].mean(0) + np.arange(CLIP_LEN)
    np.testing.assert_allclose(ours_mean, ref_mean, atol=0.1)


@pytest.mark.parametrize("num_frames", [100, 150, 199])
def test_regime_edges(num_frames):
    """T = clip_len keeps every frame in order; T in between keeps the first or second frame and ends at T-1 or
    T-2; the regime's bounds are mmaction2's (T < 2 * clip_len, not <=)."""
    clips = train_frame_indices(num_frames, CLIP_LEN, 200, np.random.default_rng(3)).reshape(200, CLIP_LEN)
    if num_frames == CLIP_LEN:
        assert (clips == np.arange(CLIP_LEN)).all()
    assert set(clips[:, 0]) <= {0, 1} and set(clips[:, -1]) <= {num_frames - 2, num_frames - 1}
    assert ((_skips(clips, num_frames) == 0) | (_skips(clips, num_frames) == 1)).all()
