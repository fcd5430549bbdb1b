"""Test-mode skeleton pipeline == mmaction2 1.2.0 (golden outputs; and the real mmaction2 when installed)."""
from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, shared_path
from recognizer_core.skeleton import sampling, transforms
from recognizer_core.skeleton.clip import SkeletonClip
from recognizer_core.skeleton.transforms import PipelineConfig, prepare_batch

MMACTION_PY = REPO / ".bench_venv_mmaction2" / "bin" / "python"


def _golden():
    with open(shared_path("golden", "pipeline_shared.pkl"), "rb") as f:
        return pickle.load(f)


def _cases(golden):
    for rec in golden["records"]:
        for key, out in rec["outputs"].items():
            feats, clip_len, num_clips, num_person = key.split("|")
            cfg = PipelineConfig(feats=feats.split("+"), clip_len=int(clip_len), num_person=int(num_person))
            yield rec["annotation"], key, cfg, int(num_clips), out


def test_test_sample_equals_golden():
    golden = _golden()
    cases = list(_cases(golden))
    assert len(cases) == 24 and {c[0]["total_frames"] for c in cases} == {40, 150, 300}
    for ann, key, cfg, num_clips, out in cases:
        kp_before = ann["keypoint"].copy()
        x, inds = transforms.test_sample(ann["keypoint"], ann["keypoint_score"], ann["img_shape"], cfg, num_clips=num_clips)
        where = f"{ann['frame_dir']} {key}"
        assert x.dtype == np.float32 and x.shape == out["keypoint"].shape, where
        np.testing.assert_array_equal(inds, out["frame_inds"], err_msg=where)
        np.testing.assert_allclose(x, out["keypoint"], rtol=0, atol=1e-6, err_msg=where)
        np.testing.assert_array_equal(ann["keypoint"], kp_before)  # unlike mmaction2, input is not modified


def test_prepare_batch_equals_golden():
    golden = _golden()
    anns = [rec["annotation"] for rec in golden["records"]]
    for key in ("b|100|10|2", "j+b|100|1|2", "bm|100|1|2", "jm|100|1|2"):
        feats, clip_len, num_clips, num_person = key.split("|")
        cfg = PipelineConfig(feats=feats.split("+"), clip_len=int(clip_len), num_person=int(num_person),
                             test_num_clips=int(num_clips))
        x, labels = prepare_batch(anns, cfg, train=False)
        want = np.stack([rec["outputs"][key]["keypoint"] for rec in golden["records"]])
        assert x.shape == want.shape and str(x.dtype) == "torch.float32"
        np.testing.assert_allclose(x.numpy(), want, rtol=0, atol=1e-6, err_msg=key)
        assert labels.tolist() == [a["label"] for a in anns]


def test_frame_indices_do_not_touch_global_rng():
    np.random.seed(7)
    expected_next = np.random.RandomState(7).rand()
    sampling.test_frame_indices(137, 100, 3)  # the 100 <= T < 200 regime draws random numbers
    assert np.random.rand() == expected_next


_MM_SCRIPT = r"""
import json, pickle, sys, warnings
warnings.filterwarnings('ignore')
import numpy as np
from mmengine.dataset import Compose
from mmengine.registry import init_default_scope
import mmaction.datasets.transforms  # registers the transforms
init_default_scope('mmaction')
cases = pickle.load(open(sys.argv[1], 'rb'))
outs = []
for ann, feats, clip_len, num_clips, num_person in cases:
    pipe = Compose([dict(type='PreNormalize2D'), dict(type='GenSkeFeat', dataset='coco', feats=feats),
                    dict(type='UniformSampleFrames', clip_len=clip_len, num_clips=num_clips, test_mode=True),
                    dict(type='PoseDecode'), dict(type='FormatGCNInput', num_person=num_person)])
    r = pipe({k: (v.copy() if hasattr(v, 'copy') else v) for k, v in ann.items()})
    outs.append((r['keypoint'], r['frame_inds']))
pickle.dump(outs, open(sys.argv[2], 'wb'))
"""


@pytest.mark.skipif(not MMACTION_PY.exists(), reason="mmaction2 side venv missing: bash bench/setup_mmaction2_venv.sh")
def test_test_sample_equals_installed_mmaction2(tmp_path):
    """Random clips beyond the golden set: float16 input (PYSKL pkls), M=0 persons, T=1, motion + clips."""
    rng = np.random.default_rng(0)
    cases = []
    specs = [(2, 1, "float32"), (0, 30, "float32"), (3, 199, "float16"), (6, 57, "float32"), (1, 200, "float64"),
             (2, 23, "float16")]
    for i, (m, t, dtype) in enumerate(specs):
        h, w = (480, 640) if i % 2 else (1080, 1920)
        kp = (rng.random((m, t, 17, 2)) * [w, h]).astype(dtype)
        kp[:, : t // 3, 5:9] = 0  # undetected joints
        score = rng.random((m, t, 17)).astype(dtype)
        ann = dict(keypoint=kp, keypoint_score=score, img_shape=(h, w), total_frames=t, label=i % 2,
                   start_index=0, modality="Pose", frame_dir=f"rand{i}")
        for feats, clip_len, num_clips, num_person in ((["j", "b", "jm", "bm"], 48, 3, 4), (["bm", "j"], 20, 2, 2)):
            cases.append((ann, feats, clip_len, num_clips, num_person))
    (tmp_path / "cases.pkl").write_bytes(pickle.dumps(cases))
    proc = subprocess.run([str(MMACTION_PY), "-c", _MM_SCRIPT, str(tmp_path / "cases.pkl"), str(tmp_path / "out.pkl")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    outs = pickle.loads((tmp_path / "out.pkl").read_bytes())
    for (ann, feats, clip_len, num_clips, num_person), (want, want_inds) in zip(cases, outs):
        cfg = PipelineConfig(feats=feats, clip_len=clip_len, num_person=num_person)
        x, inds = transforms.test_sample(ann["keypoint"], ann["keypoint_score"], ann["img_shape"], cfg, num_clips=num_clips)
        where = f"{ann['frame_dir']} {ann['keypoint'].dtype} {feats}"
        np.testing.assert_array_equal(inds, want_inds, err_msg=where)
        assert x.shape == want.shape, where
        np.testing.assert_allclose(x, want, rtol=0, atol=1e-6, err_msg=where)
        # A SkeletonClip holds float32 copies of a float16 pkl and still reproduces mmaction2 on the file.
        clip = SkeletonClip.from_annotation(ann, source="random")
        xb, _ = prepare_batch([clip], cfg.model_copy(update={"test_num_clips": num_clips}), train=False)
        np.testing.assert_allclose(xb[0].numpy(), want, rtol=0, atol=1e-6, err_msg=where)
