"""Write tests/golden/mmaction2_pipeline_cases.npz.xz: installed mmaction2 1.2.0's test-mode skeleton pipeline on the
random cases of tests/test_transforms_parity.py::test_test_sample_equals_installed_mmaction2.

That test needs the gitignored side venv and skips without it (so never in CI); the golden lets
tests/test_transforms_parity_golden.py compare the project's pipeline with mmaction2's outputs on every run.
The cases (the same generator, seed and specs as that test): float16 input (PYSKL pkls), M=0 persons, T=1, float64,
undetected joints, T < clip_len and clip_len <= T < 2 * clip_len, motion features, several clips.

    bash bench/setup_mmaction2_venv.sh                                  # once: .bench_venv_mmaction2/
    .bench_venv_mmaction2/bin/python bench/make_mmaction2_pipeline_golden.py [--out FILE]

Started with another python, it re-runs itself under the side venv's. The file is a plain .npz (no pickled
objects: np.load(..., allow_pickle=False) reads it) compressed with xz, ~0.6 MB: the outputs are float32 at the
test's 1e-6 tolerance, and zlib's 32 KB window (np.savez_compressed) left them over 1 MB.
Prints one JSON line (cases, bytes, mmaction2 version).
"""
from __future__ import annotations

import argparse
import io
import json
import lzma
import os
import sys
import warnings
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SIDE_PY = REPO / ".bench_venv_mmaction2" / "bin" / "python"
DEFAULT_OUT = REPO / "tests" / "golden" / "mmaction2_pipeline_cases.npz.xz"
# (M persons, T frames, dtype) per annotation and (feats, clip_len, num_clips, num_person) per pipeline: the test's
SPECS = [(2, 1, "float32"), (0, 30, "float32"), (3, 199, "float16"), (6, 57, "float32"), (1, 200, "float64"),
         (2, 23, "float16")]
PIPELINES = ((["j", "b", "jm", "bm"], 48, 3, 4), (["bm", "j"], 20, 2, 2))


def annotations() -> list[dict]:
    """The test's random PoseDataset annotations, drawn in the same order from default_rng(0)."""
    rng = np.random.default_rng(0)
    anns = []
    for i, (m, t, dtype) in enumerate(SPECS):
        h, w = (480, 640) if i % 2 else (1080, 1920)
        kp = (rng.random((m, t, 17, 2)) * [w, h]).astype(dtype)
        kp[:, : t // 3, 5:9] = 0  # undetected joints
        score = rng.random((m, t, 17)).astype(dtype)
        anns.append(dict(keypoint=kp, keypoint_score=score, img_shape=(h, w), total_frames=t, label=i % 2,
                         start_index=0, modality="Pose", frame_dir=f"rand{i}"))
    return anns


def run_mmaction2(anns: list[dict]) -> tuple[dict[str, np.ndarray], str]:
    """Every annotation through every pipeline of installed mmaction2 -> the npz's arrays."""
    warnings.filterwarnings("ignore")
    import mmaction
    import mmaction.datasets.transforms  # noqa: F401  (registers the transforms)
    from mmengine.dataset import Compose
    from mmengine.registry import init_default_scope

    init_default_scope("mmaction")
    arrays: dict[str, np.ndarray] = {}
    case = 0
    for i, ann in enumerate(anns):
        arrays[f"ann{i}_keypoint"], arrays[f"ann{i}_keypoint_score"] = ann["keypoint"], ann["keypoint_score"]
        arrays[f"ann{i}_img_shape"] = np.array(ann["img_shape"], np.int64)
        arrays[f"ann{i}_label"] = np.array(ann["label"], np.int64)
        for feats, clip_len, num_clips, num_person in PIPELINES:
            pipe = Compose([dict(type="PreNormalize2D"), dict(type="GenSkeFeat", dataset="coco", feats=feats),
                            dict(type="UniformSampleFrames", clip_len=clip_len, num_clips=num_clips, test_mode=True),
                            dict(type="PoseDecode"), dict(type="FormatGCNInput", num_person=num_person)])
            # mmaction2's PreNormalize2D edits the dict in place: each pipeline gets its own copy
            r = pipe({k: (v.copy() if hasattr(v, "copy") else v) for k, v in ann.items()})
            arrays[f"case{case}_ann"] = np.array(i, np.int64)
            arrays[f"case{case}_feats"] = np.array(feats)
            arrays[f"case{case}_params"] = np.array([clip_len, num_clips, num_person], np.int64)
            arrays[f"case{case}_keypoint"] = np.asarray(r["keypoint"])
            arrays[f"case{case}_frame_inds"] = np.asarray(r["frame_inds"])
            case += 1
    arrays["num_cases"], arrays["num_annotations"] = np.array(case), np.array(len(anns))
    arrays["mmaction2_version"] = np.array(mmaction.__version__)
    return arrays, mmaction.__version__


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"golden file (default {DEFAULT_OUT})")
    args = ap.parse_args(argv)
    try:
        import mmaction  # noqa: F401
    except ImportError:
        # venv pythons are symlinks to one interpreter: the venv is told apart by sys.prefix, not the binary
        if SIDE_PY.exists() and Path(sys.prefix).resolve() != SIDE_PY.parents[1].resolve():
            os.execv(str(SIDE_PY), [str(SIDE_PY), __file__, *sys.argv[1:]])
        print(f"error: mmaction2 is not importable by {sys.executable}: run bash bench/setup_mmaction2_venv.sh, "
              f"then {SIDE_PY.relative_to(REPO)} bench/make_mmaction2_pipeline_golden.py", file=sys.stderr)
        return 2
    arrays, version = run_mmaction2(annotations())
    if version != "1.2.0":
        print(f"error: mmaction2 {version} installed; the golden is of mmaction2 1.2.0", file=sys.stderr)
        return 2
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    data = lzma.compress(buf.getvalue(), preset=9 | lzma.PRESET_EXTREME)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(data)
    print(json.dumps({"golden": str(args.out), "cases": int(arrays["num_cases"]), "bytes": len(data),
                      "mmaction2": version}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
