r"""Stage 1 + 2 as a Ray Data job: videos -> RTMO poses -> tracked skeletons, one Parquet file per video.

    python rayjobs/extract_poses.py --config configs/extraction.yaml \
        --set source.input=/data/RWF-2000 --set model.onnx.model_path=end2end.onnx --set output=outputs/poses
    python rayjobs/extract_poses.py --input /data/RWF-2000 --pose-model rtmo-s --output outputs/poses

Decoding runs in CPU tasks (a generator per shard, frames streamed), RTMO in an autoscaling actor pool (the
model loaded once per actor; up to one actor per GPU of the cluster), tracking and the Parquet write in one Ray
task per video on any node. Inputs and the model are checked before Ray starts (`error: ...`, exit 2, nothing
created). Paths must be shared storage (NFS) or URIs (s3://) on a cluster. Re-running the same command skips
finished videos (manifest keyed by path + size + mtime); a killed job loses only the videos in flight. Bad
videos are recorded in failures.jsonl, videos without persons in empty_clips.jsonl, truncated ones flagged;
the job goes on and ends with a summary (summary.json, and one JSON line on stdout).
Exit status: 0; 2 for bad input (or a failed --build-dataset); 1 when no video of the source has a clip (none
extracted now or before) and some failed, in this run or an earlier one (a re-run that skips them all too).
The logic lives in recognizer_core/extract/ (job.py wires the stages).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from recognizer_core.config import ConfigError  # noqa: E402
from recognizer_core.config_args import add_config_args, config_from_args  # noqa: E402
from recognizer_core.extract.backends import BackendError  # noqa: E402
from recognizer_core.extract.config import ExtractionConfig  # noqa: E402
from recognizer_core.extract.job import prepare_extraction, run_prepared  # noqa: E402
from recognizer_core.extract.sources import SourceError  # noqa: E402
from recognizer_core.ray_runtime import RayStartError, start_ray  # noqa: E402
from recognizer_core.recognize.pose_models import PoseModelError, resolve_pose_model  # noqa: E402

INPUT_ERRORS = (ConfigError, SourceError, BackendError, PoseModelError)


def nothing_extracted(summary: dict) -> str | None:
    """The line saying that no video has a clip and some failed (exit 1), or None. Videos finished by an earlier run
    count as extracted (a re-run of a finished job with a few failures succeeds); a source of only empty videos
    (nobody in them) is no failure. Every video failing exited 0, on the first run and on every re-run."""
    failed = summary["failed"] + summary["skipped_failed"]
    if summary["done"] + summary["skipped_done"] or not failed:
        return None
    earlier = f" ({summary['skipped_failed']} in an earlier run)" if summary["skipped_failed"] else ""
    return (f"error: no video was extracted: {failed} of {summary['videos']} failed{earlier}; failures.jsonl "
            f"in {summary['output']} says why (--set retry_failed=true tries them again)")


def run_extraction(cfg: ExtractionConfig, verbose: bool = True) -> dict:
    """Check the inputs and the model (before Ray starts; raises INPUT_ERRORS), start or join Ray, extract."""
    plan = prepare_extraction(cfg)
    if plan.todo:
        start_ray(cfg.ray.address or None, job="extract_poses", log_to_driver=verbose, dashboard=verbose)
    return run_prepared(plan, verbose)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    add_config_args(parser, ExtractionConfig, default_config=None)
    parser.add_argument("--input", help="shortcut for --set source.input=...")
    parser.add_argument("--output", help="shortcut for --set output=...")
    parser.add_argument("--onnx", help="shortcut for --set model.onnx.model_path=...")
    parser.add_argument("--pose-model", help="rtmo-s | rtmo-m | rtmo-l (downloaded once, cached) or an RTMO "
                        ".onnx path: sets model.onnx.model_path")
    parser.add_argument("--pose-cache", help="--pose-model download cache folder (default: "
                        "$XDG_CACHE_HOME/recognizer/pose_models, else ~/.cache/recognizer/pose_models)")
    parser.add_argument("--build-dataset", metavar="DIR", help="after extraction, run stage 3 "
                        "(rayjobs/build_dataset.py defaults) into DIR")
    parser.add_argument("--quiet", action="store_true", help="no per-video lines or progress bars")
    args = parser.parse_args(argv)
    for flag, field in (("input", "source.input"), ("output", "output"), ("onnx", "model.onnx.model_path")):
        if getattr(args, flag):
            args.overrides.append(f"{field}={getattr(args, flag)}")
    try:
        if args.pose_model:   # resolved (downloaded) here, before Ray starts
            path = resolve_pose_model(args.pose_model, args.pose_cache)
            args.overrides.append(f"model.onnx.model_path={path}")
        cfg = config_from_args(ExtractionConfig, args)
        summary = run_extraction(cfg, verbose=not args.quiet)
    except (*INPUT_ERRORS, RayStartError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    listed = ("failures", "truncated_videos", "damaged_videos")   # one line each below
    print(json.dumps({k: v for k, v in summary.items() if k not in listed}), flush=True)
    for f in summary["failures"]:
        print(f"[extract] failed: {f['rel_path']}: {f['reason']}", file=sys.stderr)
    for t in summary["truncated_videos"]:
        print(f"[extract] truncated: {t['rel_path']}: decoded {t['decoded_frames']} of {t['declared_frames']} "
              f"declared frames ({'kept' if t['kept'] else 'not kept'})", file=sys.stderr)
    for d in summary["damaged_videos"]:
        print(f"[extract] damaged: {d['rel_path']}: {d['skipped_packets']} damaged packets skipped (their frames are "
              f"missing, the rest kept)", file=sys.stderr)
    if args.build_dataset:
        from recognizer_core.dataset.build import plan_videos, resolve_paths, run_build
        from recognizer_core.dataset.config import DatasetBuildConfig

        try:  # one clear line, as everywhere else (e.g. no video finished: nothing to build), before Ray starts
            bcfg = resolve_paths(DatasetBuildConfig(poses=summary["output"], output=args.build_dataset))
            plan = plan_videos(bcfg)
            start_ray(cfg.ray.address or None, job="build_dataset", dashboard=False)
            print(json.dumps(run_build(bcfg, plan)))
        except (ConfigError, RayStartError, ValueError) as err:
            print(f"error: --build-dataset: {err}", file=sys.stderr)
            if (line := nothing_extracted(summary)) is not None:   # the build's failure follows from this one
                print(line, file=sys.stderr)
                return 1
            return 2
    if (line := nothing_extracted(summary)) is not None:   # after a build of other sources' clips, if asked
        print(line, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    from recognizer_core.ray_runtime import run_job

    sys.exit(run_job(main))
