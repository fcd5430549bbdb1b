"""Recognize actions with a trained detector: skeleton files, videos (Ray Data batch mode) or a live stream.

    python rayjobs/recognize.py                                   # embedded demo: newest local model (or train
                                                                  # the fight_demo one) on a synthetic scene
    python rayjobs/recognize.py --model work_dirs/fight_demo --input outputs/poses        # extracted skeletons
    python rayjobs/recognize.py --model exports/fight.onnx --input /data/videos --pose-model rtmo-s
                                --labels /data/videos --output outputs/recognize    # videos + evaluation
    python rayjobs/recognize.py --model exports/fight.onnx --stream rtsp://cam/1 --pose-model rtmo-s

--model: a training run folder, a Tune summary, a .pth (+ --model-config) or an exported .onnx (+ sidecar).
Labels, pipeline, fps and window length come from the model. Per video: <stem>.events.jsonl / .events.csv,
<stem>.windows.csv and <stem>.timeline.png in --output; --labels adds evaluation.json + confusion_matrix.png
(events match true intervals at temporal IoU >= --event-tiou, 0.5).
`--set` takes RecognizeConfig fields (stride_s, window_mode, thresholds.<Class>=0.7, min_duration_s, ...).
--background-class chooses the class that never makes an event (default: the export's record, else the class
named like background, e.g. NonFight / Normal, else class 0 of our models and none of mmaction2 .py models).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
ROOT = Path(__file__).resolve().parents[1]

from recognizer_core.config import ConfigError  # noqa: E402
from recognizer_core.config_args import add_config_args, config_from_args  # noqa: E402
from recognizer_core.ray_runtime import install_stop_handlers  # noqa: E402
from recognizer_core.recognize.runner import RecognizeConfig  # noqa: E402


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(p, RecognizeConfig, default_config=None)
    p.add_argument("--model", help="run folder, Tune summary, .pth (+ --model-config) or .onnx (+ .json sidecar)")
    p.add_argument("--model-config", help="config of a .pth: training YAML or mmaction2 .py")
    p.add_argument("--background-class", help="the class that never makes an event: a class name, an index, none "
                                              "(every class makes events) or auto (default: the model's)")
    p.add_argument("--input", help="skeleton Parquet (file, extract_poses output, dataset) or videos (folder, "
                                   "file, URI, or a CSV with a path column)")
    p.add_argument("--output", default="outputs/recognize", help="output folder")
    p.add_argument("--labels", help="evaluate: labelled video folder, or CSV video,label[,start_s,end_s]")
    p.add_argument("--event-tiou", type=float, default=0.5,
                   help="evaluation: the temporal IoU in (0, 1] an event needs with a true interval to match it "
                        "(a fall much shorter than the window: 0.3, docs/recognize.md)")
    p.add_argument("--stream", help="live source: rtsp:// / http:// URL or a camera index")
    p.add_argument("--pose-model", help="rtmo-s | rtmo-m | rtmo-l (downloaded, cached) or an RTMO .onnx path")
    p.add_argument("--pose-cache", help="--pose-model download cache folder (default: "
                                        "$XDG_CACHE_HOME/recognizer/pose_models, else ~/.cache/recognizer/pose_models)")
    p.add_argument("--address", help="Ray address for video batch mode (default: RAY_ADDRESS or a private Ray)")
    p.add_argument("--threads", type=int, default=0, help="intra-op threads of the model (0 = default)")
    p.add_argument("--event-file", help="stream mode: append each closed event (JSON line) to this file")
    p.add_argument("--post-url", help="stream mode: POST each closed event (JSON) to this URL")
    p.add_argument("--max-seconds", type=float, default=0, help="stream mode: stop after this long (0 = never)")
    p.add_argument("--reconnect-s", type=float, default=300.0,
                   help="stream mode: when a live source drops after giving frames, keep reopening it (0.5 s to 10 s "
                        "apart) for up to this many seconds without a frame (0 = end at the first drop)")
    return p.parse_args(argv)


def default_model(args) -> str:
    from recognizer_core.recognize.demo import RUNS_FOLDER, demo_folder, newest_local_model, search_roots
    from recognizer_core.storage import STORAGE_ENV

    found = newest_local_model()
    if found is not None:
        print(f"[recognize] using the newest local model: {found}", flush=True)
        return str(found)
    roots = " or ".join(search_roots())
    runs, moved = demo_folder(RUNS_FOLDER)
    command = [sys.executable, str(ROOT / "rayjobs/train_stgcn.py"), "--config", str(ROOT / "configs/fight_demo.yaml")]
    where = f"into {runs}/fight_demo"
    if moved:  # an absolute run.storage_path is used as given: run folder and demo data stay in this folder
        command += ["--set", f"run.storage_path={runs}"]
        where += f" (not under {STORAGE_ENV}={os.environ.get(STORAGE_ENV)}: object storage, and the demo reads files)"
    print(f"[recognize] no trained model found under {roots}: training the 1-minute fight_demo model first "
          f"{where} ({' '.join(command[1:])})", flush=True)
    # in this working directory, where the job writes its run folder (output_uri) and search_roots looks for it:
    # run from the repo root, it wrote the repo's work_dirs (unwritable in a read-only checkout), and a demo
    # started elsewhere trained, then found nothing, every time
    proc = subprocess.run(command)
    if proc.returncode != 0:
        raise SystemExit("error: training the demo model failed (see above)")
    found = newest_local_model()
    if found is None:
        raise SystemExit(f"error: the demo model was trained, but no best_*.pth with its config is under {roots}")
    return str(found)


def run_skeletons(rec, spec, cfg: RecognizeConfig, source, out: Path, truth=None) -> dict:
    """Score each clip of a skeleton input (a path, or a list of clips). A file or clip that cannot be read,
    checked (cfg.nan_policy) or scored is printed as `failed: <file>: <reason>` and listed under `failures`
    (batch mode's words and fields); the others are still scored. A write the machine refuses (a full disk)
    raises OutputWriteStopped, as in batch mode: that clip's outputs removed, the clips before it kept."""
    from recognizer_core.extract.finish import OutputWriteStopped
    from recognizer_core.recognize.batch import remove_outputs
    from recognizer_core.recognize.outputs import UniqueStems, plot_timeline, write_video_outputs
    from recognizer_core.recognize.runner import check_clip, failure_reason, iter_skeleton_inputs, recognize_clip
    from recognizer_core.storage import machine_write_error, machine_write_line

    failures: list[dict] = []

    def failed(name: str, reason: str) -> None:
        failures.append({"rel_path": name, "reason": reason})
        print(f"[recognize] failed: {name}: {reason}", file=sys.stderr, flush=True)

    clips = ((c.source_video or c.clip_id, c) for c in source) if isinstance(source, list) else \
        iter_skeleton_inputs(source, failed)
    events, windows, stems = {}, 0, UniqueStems()
    for name, clip in clips:
        try:
            res = recognize_clip(rec, check_clip(clip, spec, cfg.nan_policy, name), spec, cfg)
        except Exception as err:  # noqa: BLE001 - one clip's failure never ends the run (batch mode's rule)
            failed(name, failure_reason(err, name))
            continue
        stem = stems(res.video)
        try:   # an unwritable name fails this clip, a full disk stops the run: batch mode's rules
            write_video_outputs(out, res.video, res.windows, res.probs, res.events, spec, timeline=cfg.timeline,
                                stem=stem)
            if truth is not None and cfg.timeline:
                plot_timeline(out / f"{stem}.timeline.png", res.video, res.windows, res.probs, res.events, spec,
                              truth)
        except OSError as err:
            remove_outputs(out, stem)   # an events file written before the rest failed read as 'no events'
            if (refused := machine_write_error(err)) is not None:   # every clip after it would fail alike
                raise OutputWriteStopped(machine_write_line(refused, str(out), "the clips' outputs written "
                                                            "are kept; a re-run writes every clip again")) from err
            failed(name, f"writing outputs failed: {err}")
            continue
        events[res.video] = res.events
        windows += len(res.windows)
        print(f"[recognize] {res.video}: {len(res.windows)} windows, {len(res.events)} events "
              f"({res.seconds:.2f} s)", flush=True)
    return {"events": events, "windows": windows, "failed": len(failures), "failures": failures}


def main(argv: list[str] | None = None) -> int:
    """Exit codes: 0 done (some inputs may have failed, listed), 1 not one input has a result (or a stream
    ended with an error), 2 bad input or setup reported before work starts, 130 stopped (Ctrl-C / SIGTERM;
    stream mode returns 0 after closing its events)."""
    args = parse_args(argv)
    from recognizer_core.recognize.evaluation import check_tiou

    try:
        cfg = config_from_args(RecognizeConfig, args)
        check_tiou(args.event_tiou)  # before any model work, as a bad --set is
    except (ConfigError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    from recognizer_core.recognize.model import load_recognizer
    from recognizer_core.recognize.runner import effective_spec

    demo = not args.input and not args.stream
    if not args.model and not demo:
        print("error: --model is required with --input / --stream", file=sys.stderr)
        return 2
    from recognizer_core.storage import STORAGE_ENV, is_remote, output_uri

    resolved = output_uri(args.output)  # never inside `ray job submit`'s package, which Ray deletes
    # an s3:// one, given or made by an s3:// $RECOGNIZER_STORAGE: Path() wrote a local folder "s3:" (stream mode
    # writes no --output)
    if is_remote(resolved) and demo and not is_remote(args.output):
        from recognizer_core.recognize.demo import demo_folder

        resolved = demo_folder(args.output)[0]  # where the demo keeps its model too
    elif is_remote(resolved) and not args.stream:
        print(f"error: --output {args.output}: resolves to {resolved}, object storage, which recognize does not "
              f"write: give an absolute local or shared (NFS) folder, or set {STORAGE_ENV} to a folder",
              file=sys.stderr)
        return 2
    out = Path(resolved)
    args.output = str(out)
    if out.exists() and not out.is_dir():  # before any model work; the first write was a FileExistsError
        print(f"error: --output {out}: exists and is not a folder", file=sys.stderr)
        return 2
    model = args.model or default_model(args)
    try:
        rec = load_recognizer(model, model_config=args.model_config, threads=args.threads,
                              background_class=args.background_class)
        if cfg.calibrate_precision:
            from recognizer_core.recognize.calibrate import calibrate_thresholds
            from recognizer_core.storage import is_remote

            data = rec.spec.source.get("training_data", "")
            if not data or not (is_remote(data) or Path(data).is_dir()):  # Path("") is the working directory
                raise ValueError(f"calibrate_precision: the model's training data is not here ({data!r})")
            th, report = calibrate_thresholds(rec, data, rec.spec.source.get("val_split", "val"),
                                              cfg.calibrate_precision)
            rec.spec = rec.spec.model_copy(update={"thresholds": th})
            print(f"[recognize] thresholds calibrated on the validation split: {json.dumps(report)}", flush=True)
        spec = effective_spec(rec.spec, cfg)
        if args.labels:  # read before the run: a bad labels file is reported before any video is processed
            from recognizer_core.recognize.evaluation import read_labels

            labels, intervals = read_labels(args.labels, spec.label_names, spec.background_class)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"[recognize] model {rec.source}: classes {spec.label_names}, {spec.window_mode} windows of "
          f"{spec.window_s:.2f} s at {spec.fps:g} fps, stride {cfg.stride_s} s, thresholds "
          f"{ {k: v.on for k, v in spec.thresholds.items()} }", flush=True)
    if args.stream:
        from recognizer_core.recognize.stream import run_stream_cli

        return run_stream_cli(rec, spec, cfg, args)
    from recognizer_core.extract.finish import OutputWriteStopped

    if demo:
        from recognizer_core.recognize.demo import side_by_side
        from recognizer_core.recognize.evaluation import evaluate, video_key
        from recognizer_core.skeleton.demo_sequence import make_demo_sequence

        clip, truth = make_demo_sequence()
        print(f"[recognize] SYNTHETIC demo sequence: {clip.num_frames / clip.fps:.0f} s, {clip.num_person} "
              f"tracks, {len(truth)} true events", flush=True)
        # SIGTERM stops as Ctrl-C does (one `stopped` line, 130; batch mode's start_ray installs the same), where
        # by default it killed the run without a word (143)
        install_stop_handlers()
        try:
            result = run_skeletons(rec, spec, cfg, [clip], out, truth)
        except OutputWriteStopped as err:   # a full disk: batch mode's one line and exit 2
            print(f"error: {err}", file=sys.stderr)
            return 2
        if result["failed"]:   # printed above
            return 1
        events = result["events"][clip.source_video]
        print(side_by_side(events, truth, spec.label_names))
        report = evaluate(result["events"], {}, {video_key(clip.source_video): truth}, spec.label_names,
                          spec.background_class, args.event_tiou)
        print(json.dumps({"events": len(events), "true_events": len(truth),
                          "event_level": report["events"], "output": str(out)}))
        return 0
    from recognizer_core.recognize.batch import is_skeleton_input
    from recognizer_core.storage import is_remote

    local = args.input.removeprefix("file://")
    if not is_remote(args.input) and not Path(local).exists():  # not "video input needs --pose-model"
        print(f"error: --input {args.input}: no such file or folder", file=sys.stderr)
        return 2
    if is_skeleton_input(local):
        install_stop_handlers()  # as in the demo above
        try:
            result = run_skeletons(rec, spec, cfg, local, out)
        except (FileNotFoundError, ValueError, OutputWriteStopped) as err:
            # the input as a whole (one bad file is a `failed:` line), or a full disk (batch mode's line)
            print(f"error: {err}", file=sys.stderr)
            return 2
    else:
        from recognizer_core.recognize.batch import run_batch_cli

        result = run_batch_cli(rec, spec, cfg, args, model)
        if result is None:  # an error before any video was processed, printed: the user's to fix, as in every job
            return 2
    summary = {"videos": len(result["events"]), "windows": result.get("windows"),
               "events": sum(len(v) for v in result["events"].values()), "output": str(out)}
    if args.labels:
        from recognizer_core.recognize.evaluation import evaluate, write_report

        try:
            report = evaluate(result["events"], labels, intervals, spec.label_names, spec.background_class,
                              args.event_tiou)
        except ValueError as err:  # a label name that fits several videos
            print(f"error: {err}", file=sys.stderr)
            return 2
        write_report(report, out)
        summary["evaluation"] = {k: report[k] for k in ("videos", "accuracy", "precision", "recall")}
        if "events" in report:
            summary["evaluation"]["events"] = report["events"]
    print(json.dumps({**summary, **{k: v for k, v in result.items() if k not in ("events", "windows")}}))
    # failed inputs are listed above and the others scored; an error only when not one has a result. `failures`,
    # not `failed`: a batch re-run skips the videos that failed before, so `failed` (this run's) was 0 and a run
    # whose every video failed exited 0 the second time; `events` holds earlier runs' results too
    return 1 if result.get("failures") and not result["events"] else 0


if __name__ == "__main__":
    from recognizer_core.ray_runtime import run_job

    sys.exit(run_job(main))
