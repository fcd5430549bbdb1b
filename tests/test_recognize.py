"""Recognize core: events from known score sequences, windows, and window scores equal to the test job's."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from recognizer_core.recognize.events import events_from_scores, hysteresis_runs, threshold_at_precision
from recognizer_core.recognize.model import load_recognizer
from recognizer_core.recognize.runner import RecognizeConfig, effective_spec, recognize_clip
from recognizer_core.recognize.windows import resample, video_windows
from recognizer_core.skeleton.clip import SkeletonClip
from tests.recognize_helpers import make_run_folder


def _seq(scores, hop=0.5, length=2.0):
    starts = np.arange(len(scores)) * hop
    return starts, starts + length, np.asarray(scores, float)


def test_hysteresis_keeps_a_dipping_score_as_one_event():
    s = [0.1, 0.7, 0.55, 0.45, 0.65, 0.2, 0.8, 0.9]
    assert hysteresis_runs(s, on=0.6, off=0.5) == [(1, 2), (4, 4), (6, 7)]
    assert hysteresis_runs(s, on=0.6, off=0.4) == [(1, 4), (6, 7)]
    assert hysteresis_runs([0.9, 0.9], 0.6, 0.5) == [(0, 1)]  # open at the end
    assert hysteresis_runs([0.59] * 5, 0.6, 0.5) == []


def test_events_span_window_centres_merge_and_minimum_duration():
    starts, ends, s = _seq([0.1, 0.8, 0.9, 0.2, 0.1, 0.1, 0.1, 0.1, 0.1, 0.95, 0.1])
    # centres are start + 1.0; hop 0.5: windows 1-2 -> [1.25, 2.25], window 9 -> [5.25, 5.75]
    ev = events_from_scores(starts, ends, s, on=0.6, off=0.5, min_duration_s=0.0, merge_gap_s=0.0,
                            track_ids=[[i] for i in range(len(s))])
    assert [(a, b, p, ids) for a, b, p, ids in ev] == [(1.25, 2.25, 0.9, [1, 2]), (5.25, 5.75, 0.95, [9])]
    # minimum duration drops the single-window event
    ev = events_from_scores(starts, ends, s, on=0.6, off=0.5, min_duration_s=0.6, merge_gap_s=0.0)
    assert [(a, b) for a, b, _, _ in ev] == [(1.25, 2.25)]
    # merging closes the 3 s gap, then the merged event is long enough
    ev = events_from_scores(starts, ends, s, on=0.6, off=0.5, min_duration_s=0.6, merge_gap_s=3.0,
                            track_ids=[[i % 2] for i in range(len(s))])
    assert [(a, b, p, ids) for a, b, p, ids in ev] == [(1.25, 5.75, 0.95, [0, 1])]
    assert events_from_scores([], [], [], on=0.5, off=0.4, min_duration_s=0, merge_gap_s=0) == []


def test_a_stretch_without_windows_ends_an_event():
    """Nobody seen from 10 s to 40 s: no windows there, so the windows before and after are neighbours in the
    list; the run must not span the gap (two fights, not one of 47 s)."""
    starts = np.concatenate([np.arange(0, 10, 0.5), np.arange(37.5, 47.5, 0.5)])
    ev = events_from_scores(starts, starts + 3.0, np.full(len(starts), 0.9), on=0.6, off=0.5, min_duration_s=0.0,
                            merge_gap_s=1.0)
    # the first fight holds the video's first window (reaches back to 0), the second its last (on to 50)
    assert [(a, b) for a, b, _, _ in ev] == [(0.0, 11.25), (38.75, 50.0)]
    ev = events_from_scores(starts, starts + 3.0, np.full(len(starts), 0.9), on=0.6, off=0.5, min_duration_s=0.0,
                            merge_gap_s=30.0)  # a merge gap wider than the stretch joins them, as asked
    assert [(a, b) for a, b, _, _ in ev] == [(0.0, 50.0)]


def test_threshold_at_precision():
    scores = np.array([0.95, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
    positive = np.array([1, 1, 0, 1, 1, 0, 0], bool)
    assert threshold_at_precision(scores, positive, 1.0) == (0.9, 1.0, 0.5)
    th, p, r = threshold_at_precision(scores, positive, 0.75)
    assert (th, p, r) == (0.6, 0.8, 1.0)
    assert threshold_at_precision(scores, ~positive, 0.99)[2] == 0.0  # unreachable: recall 0


def test_threshold_at_precision_and_best_precision_follow_every_threshold_cut():
    """Both read one precision curve over the cuts a threshold can make (all windows scoring >= it, ties
    together), checked against every distinct score tried as a threshold: ties, all-negative, all-positive and
    empty inputs."""
    from recognizer_core.recognize.calibrate import best_precision

    rng = np.random.default_rng(0)
    for case in range(400):
        n = int(rng.integers(0, 10))
        scores = rng.integers(0, int(rng.integers(1, 5)), n) / 4 if case % 2 else rng.random(n)
        positive = rng.random(n) < [0.0, 1.0, 0.5, rng.random()][case % 4]
        cuts = []   # (threshold, precision, true positives), lowest threshold first
        for t in sorted(set(scores.tolist())):
            fired = scores >= t
            cuts.append((t, int((fired & positive).sum()) / int(fired.sum()), int((fired & positive).sum())))
        for target in (0.25, 0.5, 2 / 3, 0.9, 1.0):
            want = next(((t, p, tp / max(int(positive.sum()), 1)) for t, p, tp in cuts if p >= target),
                        (1.0, 1.0, 0.0))
            assert threshold_at_precision(scores, positive, target) == want
        top = max((p for _, p, _ in cuts), default=None)
        assert best_precision(scores, positive) == next(((p, t) for t, p, _ in cuts if p == top), None)


def _clip(T=90, M=3, fps=15.0):
    rng = np.random.default_rng(0)
    kp = rng.uniform(10, 300, (M, T, 17, 2)).astype(np.float32)
    sc = rng.uniform(0.2, 1.0, (M, T, 17)).astype(np.float32)
    sc[2, : T // 2] = 0  # the third person appears half-way
    return SkeletonClip(clip_id="v", label=0, keypoint=kp, keypoint_score=sc, img_shape=(320, 320), total_frames=T,
                        fps=fps, track_ids=np.array([7, 8, 9], np.int32), frame_inds=np.arange(T, dtype=np.int32),
                        source_video="v.mp4", extra={"source_fps": fps})


def test_windows_resample_to_the_model_fps_and_cover_scene_or_tracks():
    clip = _clip()  # 6 s at 15 fps
    c30, times = resample(clip, 30.0)
    counts = np.bincount(c30.frame_inds)
    assert c30.num_frames == 179 and counts.min() >= 1 and counts.max() == 2  # every frame, each at most twice
    assert times[-1] == pytest.approx(89 / 15) and np.all(np.diff(times) >= 0)
    wins = video_windows(clip, fps=30.0, window_frames=60, num_person=2, mode="scene", stride_s=0.5)
    assert [round(w.start_s, 3) for w in wins][:3] == [0.0, 0.467, 1.0]  # source frame times (0.5 s: a tie, the earlier frame)
    assert all(w.clip.num_frames == 60 and w.clip.num_person == 2 for w in wins)
    assert all(w.end_s - w.start_s == pytest.approx(2.0, abs=0.07) for w in wins)
    assert wins[-1].end_s == pytest.approx(89 / 15 + 1 / 30) and wins[-1].start_s > wins[-2].start_s  # the end is scored
    tracks = video_windows(clip, fps=30.0, window_frames=60, num_person=2, mode="track", stride_s=0.5)
    by_track = {tid: sum(1 for w in tracks if w.track_ids == [tid]) for tid in (7, 8, 9)}
    assert by_track[7] == by_track[8] == len(wins) and 0 < by_track[9] < by_track[7]  # 9 only when seen


def test_window_scores_on_parquet_equal_the_test_job_path(tmp_path):
    """recognize on the dataset's clips (one window each) == train/evaluate.py's test path on the same clips."""
    from recognizer_core.skeleton.store import SkeletonDataset
    from recognizer_core.train.stgcn.evaluate import _test_batches, evaluate, load_weights
    from recognizer_core.models.recognizer import build_recognizer
    from recognizer_core.train.context import LocalContext

    run, cfg = make_run_folder(tmp_path)
    loader, _, _ = _test_batches(cfg, cfg.data.path, "train", LocalContext(tmp_path / "ckpt"), required=True)
    model = build_recognizer(cfg.model)
    load_weights(model, run)
    ref = evaluate(model, loader, torch.device("cpu"))["scores"]

    rec = load_recognizer(run)
    assert rec.spec.label_names == ["NonFight", "Fight"] and rec.spec.fps == 30.0
    assert rec.spec.pipeline.clip_len == 24 and rec.spec.pipeline.test_num_clips == 2
    spec = effective_spec(rec.spec, RecognizeConfig(window_s=10.0))  # longer than any clip: one window each
    clips = list(SkeletonDataset(cfg.data.path).iter_clips("train", copy=True))
    ours = np.concatenate([recognize_clip(rec, c, spec, RecognizeConfig()).probs for c in clips])
    assert ours.shape == ref.shape == (len(clips), 2)
    assert ref[:, 1].std() > 1e-4  # scores differ per clip by far more than the tolerance
    np.testing.assert_allclose(ours, ref, atol=1e-7, rtol=1e-5)


def test_outputs_of_videos_with_one_file_name_and_of_dataset_rows_do_not_overwrite_each_other(tmp_path):
    """cam1/x.mp4 and cam2/x.mp4 (a camera export's names) and a dataset's windows of one source video: each
    gets its own output files. Before, the second overwrote the first's events, silently."""
    from rayjobs.recognize import run_skeletons
    from recognizer_core.recognize.outputs import rel_path_stem

    assert rel_path_stem("cam1/2024-05-01.mp4") == "cam1__2024-05-01.mp4" and rel_path_stem("x.mp4") == "x.mp4"
    run, cfg = make_run_folder(tmp_path)
    rec = load_recognizer(run)
    rc = RecognizeConfig(thresholds={"Fight": 0.0}, min_duration_s=0.0, timeline=False)
    spec = effective_spec(rec.spec, rc)
    a, b = _clip(), _clip()
    a.source_video, b.source_video = "/nvr/cam1/2024-05-01.mp4", "/nvr/cam2/2024-05-01.mp4"
    a.clip_id, b.clip_id = "cam1_0501", "cam2_0501"
    b.keypoint_score[:, 15:] = 0  # cam2's people leave after 1 s: a shorter event
    res = run_skeletons(rec, spec, rc, [a, b], tmp_path / "out")
    files = sorted(p.name for p in (tmp_path / "out").glob("*.events.jsonl"))
    assert len(files) == 2 and files[0] == "2024-05-01.mp4.events.jsonl", files
    ends = {f: [json.loads(x)["end_s"] for x in (tmp_path / "out" / f).read_text().splitlines()] for f in files}
    assert sorted(ends.values()) == sorted([[e.to_dict()["end_s"] for e in res["events"][v]] for v in (a.source_video,
                                                                                          b.source_video)])
    assert len({tuple(v) for v in ends.values()}) == 2  # two different event lists, both kept

    # a dataset folder: rows are windows of source videos, three of cam1's here
    from recognizer_core.dataset.windows import make_windows
    from recognizer_core.skeleton.store import write_dataset

    rows = [w for c in (a, b) for w in make_windows(c, 30, 30, num_person=2)]
    data = write_dataset(rows, tmp_path / "ds", ["NonFight", "Fight"])
    res = run_skeletons(rec, spec, rc, str(data), tmp_path / "out_ds")
    assert sorted(res["events"]) == sorted(r.clip_id for r in rows) and len(rows) == 4
    assert len(list((tmp_path / "out_ds").glob("*.events.jsonl"))) == 4
    first = res["events"][rows[1].clip_id][0]  # the second window of cam1: its times are the video's
    assert first.start_s >= 1.9 and first.end_s <= 4.1


def test_model_forms_tune_summary_and_mmaction_pth_with_py_config(tmp_path):
    import shutil

    from recognizer_core.models.checkpoint import mmaction_config_text
    from recognizer_core.skeleton.store import SkeletonDataset

    run, cfg = make_run_folder(tmp_path)
    pth = next(run.glob("best_*.pth"))
    summary = tmp_path / "exp" / "summary"  # a Tune experiment: <exp>/summary/best_config.yaml + best .pth
    summary.mkdir(parents=True)
    shutil.copy(run / "config.yaml", summary / "best_config.yaml")
    shutil.copy(pth, summary / pth.name)
    clip = next(iter(SkeletonDataset(cfg.data.path).iter_clips("train", copy=True)))
    ref = load_recognizer(run)
    x = ref.prepare([clip])
    for model in (tmp_path / "exp", summary):
        np.testing.assert_array_equal(load_recognizer(model).predict(x), ref.predict(x))
    py = tmp_path / "stgcnpp.py"  # an mmaction2 config: the test pipeline is the last one written
    py.write_text(mmaction_config_text(cfg.model) + "train_pipeline = [dict(type='UniformSampleFrames', clip_len=100)]\n"
                  "test_pipeline = [dict(type='GenSkeFeat', dataset='coco', feats=['j', 'b']), "
                  "dict(type='UniformSampleFrames', clip_len=24, num_clips=2, test_mode=True), "
                  "dict(type='FormatGCNInput', num_person=2)]\n")
    mm = load_recognizer(pth, model_config=py)
    assert mm.spec.label_names == ["NonFight", "Fight"]  # from the checkpoint's meta
    assert mm.spec.pipeline.model_dump() == ref.spec.pipeline.model_dump()
    np.testing.assert_allclose(mm.predict(x), ref.predict(x), atol=1e-6)
    with pytest.raises(ValueError, match="needs its config"):
        load_recognizer(pth)
    with pytest.raises(FileNotFoundError, match="not a run folder"):
        load_recognizer(tmp_path / "dataset")


def test_both_window_kinds_fights_from_scene_windows_falls_from_track_windows():
    from recognizer_core.recognize.events import detect_events
    from recognizer_core.recognize.model import default_window_mode
    from recognizer_core.recognize.spec import ModelSpec
    from recognizer_core.skeleton.transforms import PipelineConfig

    pipe = PipelineConfig(num_person=2)
    assert default_window_mode(["Normal", "Fight", "Falldown"], pipe) == ("both", ["Falldown"])
    assert default_window_mode(["Normal", "Falldown"], pipe) == ("track", [])
    assert default_window_mode(["NonFight", "Fight"], pipe) == ("scene", [])
    spec = ModelSpec(label_names=["Normal", "Fight", "Falldown"], pipeline=pipe, window_frames=60,
                     window_mode="both", track_classes=["Falldown"])
    wins = video_windows(_clip(), fps=30.0, window_frames=60, num_person=2, mode="both", stride_s=0.5)
    scene = [w for w in wins if w.kind == "scene"]
    assert len(scene) and len(wins) > 3 * len(scene) - 10 and {w.key for w in wins} >= {"scene", "track7"}
    probs = np.full((len(wins), 3), [0.0, 0.9, 0.9])  # every class high everywhere
    events = detect_events(wins, probs, spec)
    assert {(e.label, tuple(e.track_ids)) for e in events} == {("Fight", (7, 8)), ("Falldown", (7,)),
                                                                ("Falldown", (8,)), ("Falldown", (9,))}
    assert sum(e.label == "Falldown" for e in events) == 3 and sum(e.label == "Fight" for e in events) == 1
    with pytest.raises(Exception, match="unknown classes"):
        effective_spec(spec, RecognizeConfig(track_classes=["Fall"]))


def test_background_class_by_name_by_setting_or_by_the_models_convention(tmp_path):
    """Extraction's default class order is the sorted folders (Fight, NonFight): with class 0 taken as the
    background, the exported model made NonFight events and never Fight ones; an mmaction2 NTU model never
    made events of its class 0 ("drink water"), with no setting to change it."""
    from recognizer_core.recognize.spec import ModelSpec, resolve_background, with_background
    from recognizer_core.skeleton.transforms import PipelineConfig

    assert resolve_background(["Fight", "NonFight"])[0] == 1
    assert resolve_background(["Fall", "no_fall"])[0] == 1 and resolve_background(["Non-Fight", "Fight"])[0] == 0
    assert resolve_background(["drink water", "eat meal"], fallback=None) == (
        None, "auto: no class named like background, so every class makes events")
    assert resolve_background(["Calm", "Fight"])[0] == 0                        # this project's order
    assert resolve_background(["Fight", "NonFight"], "none")[0] is None
    assert resolve_background(["Fight", "NonFight"], "fight")[0] == 0 and resolve_background(["a", "b"], 1)[0] == 1
    for setting, msg in (("Walk", "not one of the model's classes"), ("2", "index 2 outside 0..1")):
        with pytest.raises(ValueError, match=msg):
            resolve_background(["Fight", "NonFight"], setting)
    assert resolve_background(["Normal", "Fight", "Other"])[0] == 0     # class 0 among them: the presets' order
    with pytest.raises(ValueError, match=r"classes \['Normal', 'Other'\] all look like background"):
        resolve_background(["Fight", "Normal", "Other"])

    run, cfg = make_run_folder(tmp_path)
    rec = load_recognizer(run, label_names=["Fight", "NonFight"])
    assert rec.spec.background_class == 1 and rec.spec.event_classes == [0] and list(rec.spec.thresholds) == ["Fight"]
    rec = load_recognizer(run, background_class="none")
    assert rec.spec.background_class is None and list(rec.spec.thresholds) == ["NonFight", "Fight"]

    pth, py = next(run.glob("best_*.pth")), tmp_path / "stgcnpp.py"
    from recognizer_core.models.checkpoint import mmaction_config_text

    py.write_text(mmaction_config_text(cfg.model) + "test_pipeline = [dict(type='UniformSampleFrames', clip_len=24)]\n")
    mm = load_recognizer(pth, model_config=py, label_names=["drink water", "eat meal"])
    assert mm.spec.background_class is None and mm.spec.event_classes == [0, 1]
    assert load_recognizer(pth, model_config=py, label_names=["drink water", "eat meal"],
                           background_class="eat meal").spec.event_classes == [0]

    # an export's recorded choice, changed at recognition time (load_recognizer(background_class=...))
    spec = ModelSpec(label_names=["NonFight", "Fight", "Falldown"], pipeline=PipelineConfig(), window_frames=60,
                     thresholds={"Fight": {"on": 0.7}, "Falldown": {"on": 0.6}})
    assert with_background(spec, None) is spec
    moved = with_background(spec, "Falldown")
    assert moved.background_class == 2 and moved.event_classes == [0, 1] and list(moved.thresholds) == ["Fight"]
    assert moved.source["background_class"] == "set: class 'Falldown'"
    from recognizer_core.recognize.model import default_window_mode

    # the window kind follows the event classes, not classes 1..K-1: Fall here is per-person (track windows)
    assert default_window_mode(["Fall", "Normal"], PipelineConfig(num_person=2), 1) == ("track", [])


def test_onnx_prepare_reads_a_float16_pkls_clips_as_the_torch_path_does():
    """A clip from a PYSKL float16 pkl holds float32 copies and is normalised in float16 (transforms._clip_arrays,
    as mmaction2 does); OnnxRecognizer.prepare normalised the float32 copies instead."""
    from recognizer_core.recognize.model import OnnxRecognizer, TorchRecognizer
    from recognizer_core.recognize.spec import ModelSpec
    from recognizer_core.skeleton.clip import DTYPE_KEY
    from recognizer_core.skeleton.transforms import PipelineConfig, test_sample

    clip = _clip(T=40)
    clip.keypoint = clip.keypoint.astype(np.float16).astype(np.float32)
    clip.keypoint_score = clip.keypoint_score.astype(np.float16).astype(np.float32)
    clip.extra[DTYPE_KEY] = {"keypoint": "<f2", "keypoint_score": "<f2"}
    spec = ModelSpec(label_names=["NonFight", "Fight"], pipeline=PipelineConfig(feats=["b"], clip_len=10,
                                                                              num_person=2), window_frames=40)
    onnx_rec = OnnxRecognizer.__new__(OnnxRecognizer)   # prepare needs no session
    onnx_rec.spec = spec
    torch_rec = TorchRecognizer.__new__(TorchRecognizer)
    torch_rec.spec = spec
    ref = torch_rec.prepare([clip])
    assert not np.array_equal(test_sample(clip.keypoint, clip.keypoint_score, clip.img_shape, spec.pipeline)[0],
                              ref[0])   # float32 normalisation differs: the case matters
    np.testing.assert_array_equal(onnx_rec.prepare([clip]), ref)


def test_overlay_labels_a_reused_row_with_the_person_it_holds_at_each_frame():
    """Tracking reuses a row for a later person (frame_track_ids): the overlay puts track 12's label on that row
    only in 12's frames, and track 7's only in 7's (with the row's single track id, 7's label sat on 12)."""
    from recognizer_core.recognize.overlay import label_placements, row_owners
    clip = _clip()
    owner = np.repeat(np.array([[7], [8], [9]], np.int32), 90, axis=1)
    owner[0, 40:50], owner[0, 50:] = -1, 12
    clip.keypoint_score[0, 40:50] = 0
    clip.extra["frame_track_ids"] = owner
    tracks = video_windows(clip, fps=15.0, window_frames=30, num_person=1, mode="track", stride_s=0.5)
    assert {w.key for w in tracks} == {"track7", "track8", "track9", "track12"}
    labels = {"track7": ("Fight", 0.8, True), "track12": ("Fight", 0.9, True), "scene": ("NonFight", 0.6, False)}
    ids = row_owners(clip)
    for t, shown in ((10, "0.80"), (70, "0.90")):
        placed = label_placements(clip, t, ids[:, t], labels)
        x, y = clip.keypoint[0, t].min(0)
        assert sorted(placed) == [(f"Fight {shown}", (float(x), float(y) - 24), True),
                                  ("NonFight 0.60", (8.0, 8.0), False)]
    assert [p[0] for p in label_placements(clip, 45, ids[:, 45], labels)] == ["NonFight 0.60"]  # nobody there
    del clip.extra["frame_track_ids"]  # without per-frame ids the row is its one track on every frame
    assert (row_owners(clip) == np.array([[7], [8], [9]])).all()


def test_mmaction_py_config_sets_the_temporal_strides_the_weights_do_not_hold(tmp_path):
    """A stage that widens the channels without striding in time (inflate_stages=[3], down_stages=[]) has a 1x1
    residual conv like a down stage: from the weights alone recognize built a stride-2 stage (other scores)."""
    from recognizer_core.models.checkpoint import export_mmaction_checkpoint, mmaction_config_text
    from recognizer_core.models.recognizer import ModelConfig, build_recognizer
    from recognizer_core.recognize.model import load_recognizer
    torch.manual_seed(0)
    cfg = ModelConfig(num_classes=2, in_channels=3, base_channels=8, num_stages=3, inflate_stages=[3],
                      down_stages=[], dropout=0.0)
    net = build_recognizer(cfg).eval()
    pth = export_mmaction_checkpoint(net, tmp_path / "m.pth", cfg=cfg)
    py = tmp_path / "m.py"
    py.write_text(mmaction_config_text(cfg) + "test_pipeline = [dict(type='UniformSampleFrames', clip_len=32, "
                  "num_clips=1), dict(type='FormatGCNInput', num_person=2)]\n")
    rec = load_recognizer(pth, model_config=py, label_names=["a", "b"])
    assert rec.spec.model["down_stages"] == [] and rec.spec.model["inflate_stages"] == [3]
    x = rec.prepare([_clip(T=40)])
    with torch.no_grad():
        want = net(torch.from_numpy(x)).softmax(-1).numpy()
    np.testing.assert_allclose(rec.predict(x), want, atol=1e-6)
