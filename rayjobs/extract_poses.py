"""Stage 1 + 2 as a Ray Data job: videos -> RTMO poses -> tracked skeletons, one Parquet file per video.

    python rayjobs/extract_poses.py --config configs/extraction.yaml \
        --set source.input=/data/RWF-2000 --set model.onnx.model_path=end2end.onnx --set output=outputs/poses

Decoding runs in CPU tasks (a generator per shard, frames streamed), RTMO in an actor pool (the model loaded
once per actor). Re-running the same command skips finished videos (manifest keyed by path + size + mtime); a
killed job loses only the videos in flight. Bad videos are recorded in failures.jsonl, videos without persons
in empty_clips.jsonl; the job goes on and ends with a summary (summary.json, and one JSON line on stdout).
The logic lives in recognizer_core/extract/ (job.py wires the stages).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from recognizer_core.config import add_config_args, config_from_args  # noqa: E402
from recognizer_core.extract.config import ExtractionConfig  # noqa: E402
from recognizer_core.extract.job import run_extraction  # noqa: E402,F401  (tests call it through this script)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    add_config_args(parser, ExtractionConfig, default_config=None)
    parser.add_argument("--input", help="shortcut for --set source.input=...")
    parser.add_argument("--output", help="shortcut for --set output=...")
    parser.add_argument("--onnx", help="shortcut for --set model.onnx.model_path=...")
    parser.add_argument("--build-dataset", metavar="DIR", help="after extraction, run stage 3 "
                        "(rayjobs/build_dataset.py defaults) into DIR")
    parser.add_argument("--quiet", action="store_true", help="no per-video lines or progress bars")
    args = parser.parse_args(argv)
    for flag, field in (("input", "source.input"), ("output", "output"), ("onnx", "model.onnx.model_path")):
        if getattr(args, flag):
            args.overrides.append(f"{field}={getattr(args, flag)}")
    cfg = config_from_args(ExtractionConfig, args)
    summary = run_extraction(cfg, verbose=not args.quiet)
    print(json.dumps({k: v for k, v in summary.items() if k != "failures"}), flush=True)
    for f in summary["failures"]:
        print(f"[extract] failed: {f['rel_path']}: {f['reason']}", file=sys.stderr)
    if args.build_dataset:
        from recognizer_core.dataset.build import run_build
        from recognizer_core.dataset.config import DatasetBuildConfig

        print(json.dumps(run_build(DatasetBuildConfig(poses=cfg.output, output=args.build_dataset))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
