r"""Stage 3 as a Ray Data job: per-video skeletons -> windows, labels, splits -> Parquet skeleton dataset.

    python rayjobs/build_dataset.py --set poses=outputs/poses --set output=outputs/dataset \
        --set window.clip_len=100 --set window.stride=50 --set write_pkl=true

Reads the videos finished by rayjobs/extract_poses.py (the current version of each video its source's last run
listed, with that listing's labels and splits; see docs/extraction.md), draws splits per source video
(given by the folder layout / CSV, or by ratio, stratified by label), cuts windows in parallel tasks and
streams them into the skeleton store (`part-*.parquet` + `_dataset.json`); with write_pkl also one
mmaction2 PoseDataset pickle per split (`<split>.pkl` + label map). The logic lives in recognizer_core/dataset/.
A bad clip file (damaged, a column missing, NaN) skips its video: `skipped: <path>: <reason>` on the console and
in build_summary.json (`bad_clip_files_skipped`); only when every video is bad does the job end (one error line,
exit 2, the previous dataset kept).

    python rayjobs/build_dataset.py --regroup outputs/old_dataset --output outputs/dataset_grouped

rewrites an existing dataset (e.g. one written before split ranges existed, its splits interleaved) into a new
folder with each file's rows grouped by split, so training reads its splits as row ranges, not from the per-clip
index; same clips, columns, metadata and training batches (skeleton/store_regroup.py). No Ray.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from recognizer_core.config import ConfigError  # noqa: E402
from recognizer_core.config_args import add_config_args, config_from_args  # noqa: E402
from recognizer_core.dataset.build import plan_videos, resolve_paths, run_build  # noqa: E402
from recognizer_core.dataset.config import DatasetBuildConfig  # noqa: E402
from recognizer_core.ray_runtime import RayStartError, start_ray  # noqa: E402
from recognizer_core.skeleton.clip import SkeletonDataError  # noqa: E402
from recognizer_core.skeleton.store_regroup import regroup_by_split  # noqa: E402
from recognizer_core.storage import machine_write_error, machine_write_line  # noqa: E402


def _data_error(err: BaseException) -> BaseException | None:
    """`err` where it is bad data (ValueError, OSError: the listing, a split, the output), else None. A bad clip
    file never gets here: its video is skipped inside the window task (dataset/build.py windows_or_skip), so an
    error Ray hands back from a task is a bug and keeps its traceback."""
    return err if isinstance(err, (ValueError, OSError)) else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    add_config_args(parser, DatasetBuildConfig)
    parser.add_argument("--poses", help="shortcut for --set poses=...")
    parser.add_argument("--output", help="shortcut for --set output=...")
    parser.add_argument("--regroup", metavar="DATASET", help="instead of building: rewrite this skeleton dataset "
                        "into --output (a new folder) with each file's rows grouped by split")
    args = parser.parse_args(argv)
    if args.regroup:
        if not args.output:
            parser.error("--regroup needs --output (the new dataset's folder)")
        try:
            summary = regroup_by_split(args.regroup, args.output)
        except SkeletonDataError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        print(json.dumps(summary), flush=True)
        return 0
    for flag in ("poses", "output"):
        if getattr(args, flag):
            args.overrides.append(f"{flag}={getattr(args, flag)}")
    output = args.output or "the output folder"   # named by a write the machine refused (pyarrow's name no file)
    try:
        cfg = resolve_paths(config_from_args(DatasetBuildConfig, args))
        output = cfg.output
        plan = plan_videos(cfg)            # bad poses folder or labels: one error line, before Ray starts
        if cfg.use_ray:
            start_ray(cfg.ray_address or None, job="build_dataset", dashboard=False)
        summary = run_build(cfg, plan)
    except (ConfigError, RayStartError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except Exception as err:   # noqa: BLE001 - bad data: one line; anything else keeps its traceback
        data = _data_error(err)
        if data is None:
            raise
        if (refused := machine_write_error(data)) is not None:
            print(f"error: {machine_write_line(refused, output, 'the build starts over')}", file=sys.stderr)
            return 2
        text = str(data).strip().splitlines()
        print(f"error: {text[0] if text else type(data).__name__}", file=sys.stderr)
        return 2
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    from recognizer_core.ray_runtime import run_job

    sys.exit(run_job(main))
