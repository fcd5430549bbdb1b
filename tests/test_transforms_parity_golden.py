"""Test-mode skeleton pipeline == installed mmaction2 1.2.0 on the random cases of
test_transforms_parity.py::test_test_sample_equals_installed_mmaction2, on every run (no side venv, no skip).

That test runs mmaction2 itself and skips without the gitignored .bench_venv_mmaction2, so CI never ran it.
tests/golden/mmaction2_pipeline_cases.npz.xz holds its inputs and mmaction2's outputs, written by
bench/make_mmaction2_pipeline_golden.py under that venv: float16 input (PYSKL pkls), M=0 persons, T=1, float64,
undetected joints, motion features, several clips. Same checks and tolerance as that test."""
from __future__ import annotations

import io
import lzma
from pathlib import Path

import numpy as np

from recognizer_core.skeleton import transforms
from recognizer_core.skeleton.clip import SkeletonClip
from recognizer_core.skeleton.transforms import PipelineConfig, prepare_batch

GOLDEN = Path(__file__).resolve().parent / "golden" / "mmaction2_pipeline_cases.npz.xz"


def _golden() -> dict[str, np.ndarray]:
    with lzma.open(GOLDEN) as f:
        with np.load(io.BytesIO(f.read()), allow_pickle=False) as z:
            return {k: z[k] for k in z.files}


def _annotation(g: dict, i: int) -> dict:
    kp, shape = g[f"ann{i}_keypoint"], tuple(g[f"ann{i}_img_shape"].tolist())
    return dict(keypoint=kp, keypoint_score=g[f"ann{i}_keypoint_score"], img_shape=shape, total_frames=kp.shape[1],
                label=int(g[f"ann{i}_label"]), start_index=0, modality="Pose", frame_dir=f"rand{i}")


def test_golden_holds_the_parity_tests_cases():
    g = _golden()
    assert str(g["mmaction2_version"]) == "1.2.0" and int(g["num_cases"]) == 12
    anns = [_annotation(g, i) for i in range(int(g["num_annotations"]))]
    assert [(a["keypoint"].shape[0], a["total_frames"], str(a["keypoint"].dtype)) for a in anns] == [
        (2, 1, "float32"), (0, 30, "float32"), (3, 199, "float16"), (6, 57, "float32"), (1, 200, "float64"),
        (2, 23, "float16")]


def test_test_sample_equals_mmaction2_golden():
    g = _golden()
    for c in range(int(g["num_cases"])):
        ann = _annotation(g, int(g[f"case{c}_ann"]))
        feats = [str(f) for f in g[f"case{c}_feats"]]
        clip_len, num_clips, num_person = (int(v) for v in g[f"case{c}_params"])
        want, want_inds = g[f"case{c}_keypoint"], g[f"case{c}_frame_inds"]
        cfg = PipelineConfig(feats=feats, clip_len=clip_len, num_person=num_person)
        kp_before = ann["keypoint"].copy()
        x, inds = transforms.test_sample(ann["keypoint"], ann["keypoint_score"], ann["img_shape"], cfg,
                                         num_clips=num_clips)
        where = f"case {c}: {ann['frame_dir']} {ann['keypoint'].dtype} {feats}"
        np.testing.assert_array_equal(inds, want_inds, err_msg=where)
        assert x.dtype == np.float32 and x.shape == want.shape, where
        np.testing.assert_allclose(x, want, rtol=0, atol=1e-6, err_msg=where)
        np.testing.assert_array_equal(ann["keypoint"], kp_before, err_msg=where)  # input not modified
        # A SkeletonClip holds float32 copies of a float16 pkl and still reproduces mmaction2 on the file.
        clip = SkeletonClip.from_annotation(ann, source="golden")
        xb, _ = prepare_batch([clip], cfg.model_copy(update={"test_num_clips": num_clips}), train=False)
        np.testing.assert_allclose(xb[0].numpy(), want, rtol=0, atol=1e-6, err_msg=where)
