"""RTMO contract: letterbox + fake end2end ONNX model + post-processing give persons in original pixels."""
from __future__ import annotations

import numpy as np
import pytest

from fakes.fake_rtmo import KEYPOINT_SCALE, build_fake_rtmo, draw_markers, expected_person, tower_gflops, tower_layers
from recognizer_core.extract.backends import BackendError, OrtBackend, build_backend
from recognizer_core.extract.config import OnnxOptions, PoseModelConfig
from recognizer_core.extract.rtmo import RtmoPoseEstimator, box_iou, nms, postprocess, to_model_input
from recognizer_core.extract.frame_image import letterbox, letterbox_params


@pytest.fixture(scope="module")
def fake_models(tmp_path_factory):
    d = tmp_path_factory.mktemp("fake_rtmo")
    return {"dynamic": build_fake_rtmo(d / "dyn.onnx"), "static": build_fake_rtmo(d / "static.onnx", False),
            "static3": build_fake_rtmo(d / "static3.onnx", False, static_batch=3)}


def _estimator(path, **kw):
    cfg = PoseModelConfig(onnx={"model_path": str(path)}, **kw)
    return RtmoPoseEstimator(build_backend(cfg), cfg)


def test_letterbox_is_top_left_aspect_kept_padded_114():
    img = np.full((240, 320, 3), 200, np.uint8)
    out, ratio = letterbox(img, (640, 640))
    assert ratio == 2.0 and out.shape == (640, 640, 3) and out.dtype == np.uint8
    assert (out[:480] == 200).all() and (out[480:] == 114).all()
    assert letterbox_params(1080, 1920, (640, 640)) == (1 / 3, 360, 640)
    x = to_model_input(out[None])
    assert x.shape == (1, 3, 640, 640) and x.dtype == np.float32 and x[0, :, 0, 0].tolist() == [200.0] * 3


@pytest.mark.parametrize("kind", ["dynamic", "static"])
@pytest.mark.parametrize("wh,side", [((320, 240), 12), ((240, 320), 12), ((1280, 720), 40), ((1920, 1080), 60)])
def test_fake_model_coordinates_in_original_pixels(fake_models, kind, wh, side):
    est = _estimator(fake_models[kind], score_threshold=0.3, nms_threshold=0.45, keypoint_threshold=0.3)
    assert est.backend.fixed_batch == (None if kind == "dynamic" else 1)
    w, h = wh
    cell = 160 / min(640 / h, 640 / w)           # a model grid cell in original pixels
    centres = [(round(cell * 0.5), round(cell * 0.5)), (round(cell * 1.5), round(cell * 1.4))]
    poses = est.estimate_image(draw_markers(w, h, centres, side))
    assert len(poses) == 2                       # the model's duplicate boxes were removed by NMS
    order = np.argsort(poses.boxes[:, 0])
    for c, i in zip(centres, order):
        box, kpts = expected_person(c, side, (w, h))
        np.testing.assert_allclose(poses.boxes[i], box, atol=0.51)
        np.testing.assert_allclose(poses.keypoints[i], kpts, atol=0.51)
        # ankles score 0.2 x detection score < keypoint_threshold: zeroed; others keep the model's score
        assert (poses.keypoint_scores[i][KEYPOINT_SCALE < 1] == 0).all()
        np.testing.assert_allclose(poses.keypoint_scores[i][:15], poses.scores[i], rtol=1e-6)


def test_batched_equals_single_and_static_batch_model(fake_models):
    rng = np.random.default_rng(0)
    frames, ratios, hws = [], [], []
    for k in range(5):
        img = draw_markers(320, 240, [tuple(rng.integers(10, 70, 2))], 12)
        lb, r = letterbox(img, (640, 640))
        frames.append(lb), ratios.append(r), hws.append((240, 320))
    frames = np.stack(frames)
    dyn = _estimator(fake_models["dynamic"])(frames, ratios, hws)
    one = [_estimator(fake_models["static"])(frames[i:i + 1], ratios[i:i + 1], hws[i:i + 1])[0] for i in range(5)]
    static_batched = _estimator(fake_models["static"])(frames, ratios, hws)
    three = _estimator(fake_models["static3"])
    assert three.backend.fixed_batch == 3
    static3 = three(frames, ratios, hws)      # 5 frames = a full chunk of 3 + 2 padded with copies of the last
    assert len(static3) == 5
    for a, b, c, d in zip(dyn, one, static_batched, static3):
        assert len(a) == len(b) == len(c) == len(d) == 1
        np.testing.assert_allclose(a.keypoints, b.keypoints, atol=1e-4)
        np.testing.assert_allclose(a.keypoints, c.keypoints, atol=1e-4)
        np.testing.assert_allclose(a.keypoints, d.keypoints, atol=1e-4)


def test_compute_stand_in_keeps_the_outputs_and_adds_its_convs(fake_models, tmp_path):
    # bench_extract.py --fake-gflops: the fake model with a conv tower of a model's cost, the same poses
    import onnx

    assert tower_layers(0) == 0 and tower_gflops(tower_layers(2.0)) >= 2.0 > tower_gflops(tower_layers(2.0) - 1)
    heavy = build_fake_rtmo(tmp_path / "heavy.onnx", gflops=2.0)
    convs = [n for n in onnx.load(str(heavy)).graph.node if n.op_type == "Conv"]
    assert len(convs) == 1 + tower_layers(2.0)   # the stem and the 3x3 layers survived export
    frames = np.stack([letterbox(draw_markers(320, 240, [(40, 50), (150, 60)], 12), (640, 640))[0]] * 2)
    light = _estimator(fake_models["dynamic"])(frames, [2.0] * 2, [(240, 320)] * 2)
    costly = _estimator(heavy)(frames, [2.0] * 2, [(240, 320)] * 2)
    for a, b in zip(light, costly):
        assert len(a) == len(b) == 2
        np.testing.assert_array_equal(a.boxes, b.boxes)
        np.testing.assert_array_equal(a.keypoints, b.keypoints)


def test_nms_and_thresholds():
    boxes = np.array([[0, 0, 10, 10], [1, 0, 11, 10], [20, 20, 30, 30], [0, 0, 10, 10.5]], np.float32)
    scores = np.array([0.9, 0.95, 0.5, 0.1], np.float32)
    assert nms(boxes, scores, 0.45).tolist() == [1, 2]
    assert nms(boxes, scores, 0.99).tolist() == [1, 0, 2, 3]
    np.testing.assert_allclose(box_iou(boxes[:1], boxes[1:2]), [[90 / 110]], rtol=1e-6)
    dets = np.concatenate([boxes, scores[:, None]], 1)
    kpts = np.zeros((4, 17, 3), np.float32)
    kpts[..., 2] = 0.5
    kpts[1, 3, 2] = 0.1
    cfg = PoseModelConfig(score_threshold=0.3, nms_threshold=0.45, keypoint_threshold=0.3, max_detections=1)
    p = postprocess(dets, kpts, ratio=0.5, image_hw=(15, 15), cfg=cfg)
    assert len(p) == 1 and p.scores.tolist() == [pytest.approx(0.95)]
    assert p.boxes[0].tolist() == [2, 0, 15, 15]          # /ratio then clipped to the 15 x 15 image
    assert p.keypoint_scores[0, 3] == 0 and p.keypoint_scores[0, 0] == 0.5
    with pytest.raises(ValueError, match="dets"):
        postprocess(dets[:, :4], kpts, 1.0, (15, 15), cfg)
    nan = dets.copy()
    nan[1, 0] = np.nan
    assert postprocess(nan, kpts, 1.0, (15, 15), PoseModelConfig(max_detections=5)).scores.tolist() == \
        [pytest.approx(0.9), pytest.approx(0.5)]
    padded = np.concatenate([dets[2:3], np.zeros((3, 5), np.float32)])   # a fixed-K export's zero padding rows
    p = postprocess(padded, np.zeros((4, 17, 3), np.float32), 1.0, (40, 40), PoseModelConfig(score_threshold=0))
    assert p.scores.tolist() == [pytest.approx(0.5)]


def test_backend_errors(fake_models, tmp_path):
    with pytest.raises(BackendError, match="not found"):
        OrtBackend(OnnxOptions(model_path=str(tmp_path / "missing.onnx")), (640, 640))
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        with pytest.raises(BackendError, match="no CUDA provider"):
            OrtBackend(OnnxOptions(model_path=str(fake_models["dynamic"]), device="cuda"), (640, 640))
    with pytest.raises(BackendError, match="width is 640"):
        OrtBackend(OnnxOptions(model_path=str(fake_models["static"])), (640, 480))
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(BackendError, match="cannot load"):
        OrtBackend(OnnxOptions(model_path=str(bad)), (640, 640))
    backend = OrtBackend(OnnxOptions(model_path=str(fake_models["dynamic"]), execution_mode="ORT_PARALLEL",
                                     graph_optimization_level="ORT_ENABLE_BASIC", enable_mem_pattern=False,
                                     enable_cpu_mem_arena=False), (640, 640))
    assert backend.provider == "CPUExecutionProvider" and backend.output_names == ["dets", "keypoints"]
