"""The torch pipeline (skeleton/transforms_torch.py) against the NumPy one: bitwise in test mode, same RNG draws."""
from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from conftest import shared_path
from recognizer_core.skeleton.demo_data import make_demo_clips
from recognizer_core.skeleton.transforms import PipelineConfig, prepare_batch
from recognizer_core.skeleton.transforms_torch import batch_features, gather_batch, prepare_batch_torch

FEATS = [["j"], ["b"], ["jm"], ["bm"], ["j", "b", "jm", "bm"], ["bm", "j"]]


def _golden_anns():
    with open(shared_path("golden", "pipeline_shared.pkl"), "rb") as f:
        return [rec["annotation"] for rec in pickle.load(f)["records"]]


def _bitwise(a: torch.Tensor, b: torch.Tensor) -> None:
    assert a.shape == b.shape and a.dtype == b.dtype == torch.float32
    assert torch.equal(a.view(torch.int32), b.view(torch.int32))  # same bits, +0.0 vs -0.0 included


@pytest.mark.parametrize("feats", FEATS)
def test_test_mode_bitwise_equal_on_golden_and_demo(feats):
    golden = _golden_anns()
    demo = make_demo_clips("fight", num_clips=6, seed=3)
    for clips, num_person, num_clips in ((golden, 2, 1), (golden, 1, 3), (demo, 4, 2)):
        cfg = PipelineConfig(feats=feats, clip_len=48, num_person=num_person, test_num_clips=num_clips)
        want, labels = prepare_batch(clips, cfg, train=False)
        got, got_labels = prepare_batch_torch(clips, cfg, train=False)
        _bitwise(got, want)
        assert torch.equal(got_labels, labels)


@pytest.mark.parametrize("feats", [["b"], ["j", "b", "jm", "bm"]])
def test_train_mode_same_draws_and_values(feats):
    clips = make_demo_clips("fight", num_clips=8, seed=5) + _golden_anns()
    cfg = PipelineConfig(feats=feats, clip_len=40, num_person=3, num_clips=2, random_rescale=(0.8, 1.2),
                         random_shift=0.1, random_rotate=15.0)
    rng_np, rng_t = np.random.default_rng(7), np.random.default_rng(7)
    for _ in range(2):  # two batches in a row: the generators must stay in step
        want, _ = prepare_batch(clips, cfg, train=True, rng=rng_np)
        got, _ = prepare_batch_torch(clips, cfg, train=True, rng=rng_t)
        _bitwise(got, want)  # on CPU the affine is the same products and sums in the same order
    assert rng_np.bit_generator.state == rng_t.bit_generator.state
    # the augmentation really ran: without it the values differ
    plain, _ = prepare_batch_torch(clips, cfg.model_copy(update=dict(random_rescale=None, random_shift=None,
                                                                      random_rotate=None)),
                                   train=True, rng=np.random.default_rng(7))
    assert not torch.allclose(plain, want)


def test_compiled_features_equal_the_eager_ones_bit_for_bit():
    # train.compile with pipeline.device=worker compiles features_of (inductor, C++ on a CPU): one graph, the same
    # bits as the eager ops, train mode (affine) with bones and motion; the non-finite check still names the clip
    from torch._dynamo.utils import counters

    from recognizer_core.skeleton.transforms_torch import compiled_features

    clips = make_demo_clips("fight", num_clips=8, seed=5)
    cfg = PipelineConfig(feats=["j", "b", "jm", "bm"], clip_len=40, num_person=3, random_rescale=(0.8, 1.2),
                         random_shift=0.1, random_rotate=15.0)
    compute = compiled_features(cfg)
    counters.clear()
    rng = np.random.default_rng(7)
    for _ in range(2):
        raw, _ = gather_batch(clips, cfg, train=True, rng=rng)
        _bitwise(batch_features(raw, cfg, compute), batch_features(raw, cfg))
    assert counters["stats"]["unique_graphs"] == 1
    # a float16 pkl's clips (their dtype is kept, as mmaction2 computes in it): inductor kept the intermediates
    # in float32 where eager rounds each op to float16 (28,528 of 73,440 values apart)
    half = [dict(keypoint=c.keypoint.astype(np.float16), keypoint_score=c.keypoint_score.astype(np.float16),
                 img_shape=c.img_shape, total_frames=c.keypoint.shape[1], label=c.label, frame_dir=c.clip_id)
            for c in clips]
    raw, _ = gather_batch(half, cfg, train=True, rng=rng)
    _bitwise(batch_features(raw, cfg, compiled_features(cfg)), batch_features(raw, cfg))
    raw.keypoint[2, 0, 1, 0, 3, 5, 0] = float("nan")  # past the loader's validation, as a broken batch would be
    with pytest.raises(ValueError, match=clips[2].clip_id):
        batch_features(raw, cfg, compute)


def test_raw_batch_split_float64_and_errors():
    clips = make_demo_clips("falldown", num_clips=3, seed=1)
    cfg = PipelineConfig(feats=["j", "bm"], clip_len=30, num_person=2)
    raw, labels = gather_batch(clips, cfg, train=False)
    assert raw.keypoint.shape == (3, 1, 2, 2, 30, 17, 2) and labels.tolist() == [c.label for c in clips]
    # a RawBatch crosses from a loader process to the training process by pickle
    _bitwise(batch_features(pickle.loads(pickle.dumps(raw)).to("cpu"), cfg), prepare_batch(clips, cfg, train=False)[0])
    # float64 keypoints (a PYSKL pkl) are computed in float64, as the NumPy path
    anns = [dict(keypoint=c.keypoint.astype(np.float64), keypoint_score=c.keypoint_score.astype(np.float64),
                 img_shape=c.img_shape, total_frames=c.keypoint.shape[1], label=c.label, frame_dir=f"c{i}")
            for i, c in enumerate(clips)]
    _bitwise(prepare_batch_torch(anns, cfg, train=False)[0], prepare_batch(anns, cfg, train=False)[0])
    anns[1]["keypoint"][0, 3, 5, 0] = np.nan
    with pytest.raises(ValueError, match="non-finite.*'c1'"):
        prepare_batch_torch(anns, cfg, train=False)
    with pytest.raises(ValueError, match="needs an np.random.Generator"):
        gather_batch(anns, cfg, train=True)
