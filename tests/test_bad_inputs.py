"""The table of bad inputs: each row is one kind of bad input a user can give, with the one clear message (naming
the file / clip and the field) or the recorded skip it must produce. `len(CASES)` is the figure the README quotes.

No Ray here: every check runs on the driver before Ray would start. Imports are inside each case so that one
renamed module fails its rows, not the whole table.
"""
from __future__ import annotations

import json
import logging
import pickle
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Case:
    id: str
    run: Callable[[Path], Any]  # given a fresh tmp_path; raises, or returns what `check` inspects
    error: str  # exception class name expected ("" = must not raise: the input is skipped/handled)
    message: str  # regex the message (or, for handled inputs, `check`'s text) must match
    check: Callable[[Any], str] | None = None  # for handled inputs: returns a text describing what was recorded
    listing: bool = False  # the one-line message is followed by a listing (e.g. the mismatched checkpoint keys)


# ---------------------------------------------------------------- helpers

def _train_cfg(overrides=(), yaml_text: str | None = None, tmp: Path | None = None, config: Path | None = None):
    from recognizer_core.config import load_config
    from recognizer_core.train.stgcn.config import TrainJobConfig

    path = config or REPO / "configs" / "fight_stable.yaml"
    if yaml_text is not None:
        path = tmp / "bad.yaml"
        path.write_text(yaml_text)
    return load_config(TrainJobConfig, path, list(overrides))


def _require_tcmalloc(cfg):
    from recognizer_core.train.cpu_malloc import require_tcmalloc

    return require_tcmalloc(cfg.scaling.cpu_malloc, cfg.scaling.tcmalloc_path)


def _folder_inside(root, name):
    from recognizer_core.config import folder_inside

    return folder_inside(root, name)


def _dino_cfg(overrides=()):
    from recognizer_core.config import load_config
    from recognizer_core.train.dino_pose.config import DinoPoseJobConfig

    return load_config(DinoPoseJobConfig, REPO / "configs" / "dino_pose_base.yaml", list(overrides))


def _clip(**kw):
    from recognizer_core.skeleton.clip import SkeletonClip

    m, t = kw.pop("m", 1), kw.pop("t", 8)
    rng = np.random.default_rng(0)
    args = dict(clip_id="c1", label=0, keypoint=rng.uniform(10, 90, (m, t, 17, 2)).astype(np.float32),
                keypoint_score=np.full((m, t, 17), 0.9, np.float32), img_shape=(100, 100), total_frames=t)
    args.update(kw)
    return SkeletonClip(**args)


def _validate(nan_policy="reject", num_classes=None, **kw):
    return _clip(**kw).validate("bad.parquet", nan_policy=nan_policy, num_classes=num_classes)


def _kp_with(value, index=(0, 3, 5, 0)):
    kp = np.random.default_rng(0).uniform(10, 90, (1, 8, 17, 2)).astype(np.float32)
    kp[index] = value
    return kp


def _ann(**kw):
    ann = _clip().to_annotation()
    ann.update(kw)
    return ann


def _pkl(tmp: Path, data: Any, raw: bytes | None = None):
    from recognizer_core.skeleton.mmaction_pkl import read_mmaction_pkl

    path = tmp / "bad.pkl"
    path.write_bytes(raw if raw is not None else pickle.dumps(data))
    return read_mmaction_pkl(path)


def _dataset(tmp: Path, clips, **kw):
    from recognizer_core.skeleton.store import SkeletonDataset, write_dataset

    return SkeletonDataset(write_dataset(clips, tmp / "ds", ["a", "b"], **kw))


def _split_info(tmp: Path, split: str, num_classes: int = 2):
    from recognizer_core.train.stgcn.data import split_info

    ds = _dataset(tmp, [_clip(clip_id=f"c{i}", label=i % 2, split="train") for i in range(4)])
    return split_info(ds, split, num_classes)


def _space(tmp: Path, params: str):
    from recognizer_core.train.stgcn.config import TrainJobConfig
    from recognizer_core.tune.search_space import load_search_space

    path = tmp / "space.yaml"
    path.write_text(f"job: stgcn\nbase_config: {REPO / 'configs' / 'fight_stable.yaml'}\nmetric: val/acc_top1\n"
                    f"mode: max\nparams:\n{params}\n")
    return load_search_space(path, TrainJobConfig)


def _onnx(tmp: Path, content: bytes | None):
    from recognizer_core.extract.backends import OrtBackend
    from recognizer_core.extract.config import OnnxOptions

    path = tmp / "rtmo.onnx"
    if content is not None:
        path.write_bytes(content)
    return OrtBackend(OnnxOptions(model_path=str(path)), (640, 640))


def _coco(tmp: Path, annotation: str | None, image_dir: bool = True):
    from recognizer_core.coco_pose.dataset import CocoPoseDataConfig, CocoPoseDataset

    ann = tmp / "person_keypoints.json"
    if annotation is not None:
        ann.write_text(annotation)
    images = tmp / "images"
    if image_dir:
        images.mkdir()
    return CocoPoseDataset(images, ann, CocoPoseDataConfig(), train=False)


def _write(tmp: Path, name: str, data: bytes) -> Path:
    path = tmp / name
    path.write_bytes(data)
    return path


def _unannotated_split_warning(tmp: Path) -> str:
    # caplog cannot be handed into a table row; capture the module's log records directly.
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    log = logging.getLogger("recognizer_core.skeleton.mmaction_pkl")
    log.addHandler(handler)
    try:
        ghosts = [f"ghost{i}" for i in range(7)]
        _pkl(tmp, {"split": {"train": ["c1", *ghosts]}, "annotations": [_ann()]})
    finally:
        log.removeHandler(handler)
    return "\n".join(r.getMessage() for r in records)


def _checkpoint_mismatch(tmp: Path):
    import torch

    from recognizer_core.models.checkpoint import load_mmaction_checkpoint
    from recognizer_core.models.recognizer import ModelConfig, build_recognizer

    path = tmp / "other.pth"
    torch.save({"state_dict": {"backbone.nonexistent.weight": torch.zeros(3)}}, path)
    return load_mmaction_checkpoint(build_recognizer(ModelConfig()), path)


# ---------------------------------------------------------------- the table

FIELD = r"\(got .*\)"
CASES = [
    # configs: file, YAML, fields, types
    Case("config file missing", lambda t: _train_cfg(config=t / "nope.yaml"), "ConfigError",
         r"nope\.yaml: config file not found"),
    Case("config not YAML", lambda t: _train_cfg(yaml_text="model: [1, 2\n", tmp=t), "ConfigError",
         r"bad\.yaml: not valid YAML: expected ',' or '\]', but got '<stream end>' at line 2, column 1"),
    Case("config top level a list", lambda t: _train_cfg(yaml_text="- 1\n- 2\n", tmp=t), "ConfigError",
         r"bad\.yaml: top level must be a mapping"),
    Case("unknown field suggests the close match", lambda t: _train_cfg(["model.base_chanels=64"]), "ConfigError",
         r"model\.base_chanels: unknown field; did you mean `model\.base_channels`\?"),
    Case("field in the wrong section", lambda t: _train_cfg(["train.lr=0.1"]), "ConfigError",
         r"train\.lr: unknown field; did you mean `optim\.lr`\?"),
    Case("misspelt section", lambda t: _train_cfg(["modle.dropout=0.1"]), "ConfigError",
         r"modle: unknown field; did you mean `model`\?"),
    Case("unknown field in YAML", lambda t: _train_cfg(yaml_text="optim:\n  lrr: 0.1\n", tmp=t), "ConfigError",
         r"bad\.yaml.*\n  optim\.lrr: unknown field; did you mean `optim\.lr`\?"),
    Case("text for an int", lambda t: _train_cfg(["model.base_channels=wide"]), "ConfigError",
         r"model\.base_channels: .*integer.*\(got 'wide'\)"),
    Case("bool for an int (--set)", lambda t: _train_cfg(["model.base_channels=true"]), "ConfigError",
         r"model\.base_channels: a number is expected, not a boolean"),
    Case("bool for a float (--set optim.lr)", lambda t: _train_cfg(["optim.lr=true"]), "ConfigError",
         r"optim\.lr: a number is expected, not a boolean"),
    Case("bool for a float (--set model.dropout)", lambda t: _train_cfg(["model.dropout=false"]), "ConfigError",
         r"model\.dropout: a number is expected, not a boolean"),
    Case("bool for a float (YAML yes)", lambda t: _train_cfg(yaml_text="optim:\n  lr: yes\n", tmp=t),
         "ConfigError", r"bad\.yaml.*\n  optim\.lr: a number is expected, not a boolean"),
    Case("bool inside a number list", lambda t: _train_cfg(["train.class_weight=[1.0, true]"]), "ConfigError",
         r"train\.class_weight: a number is expected, not a boolean"),
    Case("override without =", lambda t: _train_cfg(["model.dropout"]), "ConfigError",
         r"--set: override 'model\.dropout' must look like section\.field=value"),
    Case("override with a bad name", lambda t: _train_cfg(["model..dropout=1"]), "ConfigError",
         r"--set: 'model\.\.dropout': '' is not a field name"),
    Case("override index past the list", lambda t: _train_cfg(["train.class_weight[7]=1"]), "ConfigError",
         r"--set: 'train\.class_weight\[7\]'"),
    Case("tcmalloc asked for, library path missing", lambda t: _require_tcmalloc(
        _train_cfg(["scaling.cpu_malloc=tcmalloc", f"scaling.tcmalloc_path={t / 'libtcmalloc.so.4'}"])),
         "ConfigError", r"scaling\.tcmalloc_path='.*libtcmalloc\.so\.4': no such file"),
    Case("run.name leaving storage (../)", lambda t: _train_cfg(["run.name=../../x"]), "ConfigError",
         r"run\.name: must be 1-128 letters.*\(got '\.\./\.\./x'\)"),
    Case("run.name absolute path", lambda t: _train_cfg(["run.name=/etc/cron.d/x"]), "ConfigError",
         r"run\.name: must be 1-128 letters"),
    Case("DINO run.name leaving storage", lambda t: _dino_cfg(["run.name=../x"]), "ConfigError",
         r"run\.name: must be 1-128 letters"),
    Case("run.name with a trailing newline (a YAML block scalar)", lambda t: _train_cfg(["run.name=fight\n"]),
         "ConfigError", r"run\.name: must be 1-128 letters"),
    Case("run folder is a symlink leaving storage", lambda t: (t.joinpath("runs").mkdir(),
                                                               t.joinpath("runs", "r1").symlink_to("/etc"),
                                                               _folder_inside(t / "runs", "r1")),
         "ConfigError", r"run\.name='r1': the run folder .*r1 leads to /etc, outside run\.storage_path=.*runs"),
    Case("label_names vs num_classes", lambda t: _train_cfg(["data.label_names=[a, b, c]"]), "ConfigError",
         r"data\.label_names has 3 names but model\.num_classes=2"),
    Case("DINO heatmap larger than image", lambda t: _dino_cfg(["data.image_size=[64, 64]",
                                                               "data.heatmap_size=[128, 128]"]),
         "ConfigError", r"data\.heatmap_size=.*is larger than data\.image_size"),
    Case("DINO job without data paths", lambda t: _dino_cfg().require_data(), "ValueError",
         r"set data\.train_image_dir"),
    # search spaces (validated through the job's config class)
    Case("search space: bool among int choices", lambda t: _space(
        t, "  model.base_channels: {type: choice, values: [32, true]}"), "SearchSpaceError",
         r"space\.yaml.*model\.base_channels"),
    Case("search space: bool as a range bound", lambda t: _space(
        t, "  model.dropout: {type: uniform, low: false, high: 0.5}"), "SearchSpaceError",
         r"space\.yaml.*a number is expected, not a boolean"),
    Case("search space: unknown param field", lambda t: _space(
        t, "  model.base_chanels: {type: choice, values: [32, 64]}"), "SearchSpaceError",
         r"space\.yaml.*model\.base_chanels"),
    # skeleton clips
    Case("NaN keypoint", lambda t: _validate(keypoint=_kp_with(np.nan)), "SkeletonDataError",
         r"bad\.parquet: clip 'c1': keypoint has NaN/inf values \(first at index \(0, 3, 5, 0\)\)"),
    Case("inf score", lambda t: _validate(keypoint_score=np.where(np.arange(17) == 2, np.inf, 0.9)[None, None]
                                          .repeat(8, 1).astype(np.float32)), "SkeletonDataError",
         r"clip 'c1': keypoint_score has NaN/inf values"),
    Case("NaN keypoint, nan_policy=zero", lambda t: _validate("zero", keypoint=_kp_with(np.nan)), "",
         r"zeroed 1 joint", lambda c: f"zeroed {int((c.keypoint_score == 0).sum())} joint"),
    Case("keypoint far outside the image (1e30)", lambda t: _validate(keypoint=_kp_with(1e30)),
         "SkeletonDataError", r"clip 'c1': keypoint has coordinates far outside img_shape .* \(1e\+30\)"),
    Case("keypoint far outside, nan_policy=zero", lambda t: _validate("zero", keypoint=_kp_with(-1e30)), "",
         r"zeroed 1 joint, max \|xy\| 9\d", lambda c: f"zeroed {int((c.keypoint_score == 0).sum())} joint, "
                                                     f"max |xy| {np.abs(c.keypoint).max():.0f}"),
    Case("no frames (T=0)", lambda t: _validate(t=0), "SkeletonDataError", r"clip 'c1': keypoint has 0 frames"),
    Case("score shape mismatch", lambda t: _validate(keypoint_score=np.ones((2, 8, 17), np.float32)),
         "SkeletonDataError", r"keypoint_score shape \(2, 8, 17\) does not match"),
    Case("3-D keypoints", lambda t: _validate(keypoint=np.zeros((1, 8, 17, 3), np.float32)),
         "SkeletonDataError", r"3-D coordinates .* not supported"),
    Case("wrong joint count", lambda t: _validate(keypoint=np.zeros((1, 8, 25, 2), np.float32),
                                                  keypoint_score=np.ones((1, 8, 25), np.float32)),
         "SkeletonDataError", r"keypoint has 25 joints, expected 17"),
    Case("total_frames disagrees", lambda t: _validate(total_frames=9), "SkeletonDataError",
         r"total_frames=9 but keypoint has T=8"),
    Case("negative label", lambda t: _validate(label=-1), "SkeletonDataError", r"label=-1 out of range"),
    Case("bool label", lambda t: _validate(label=True), "SkeletonDataError", r"label must be an int, got True"),
    Case("label >= num_classes", lambda t: _validate(label=5, num_classes=2), "SkeletonDataError",
         r"label=5 out of range \[0, 2\)"),
    Case("img_shape not positive", lambda t: _validate(img_shape=(0, 100)), "SkeletonDataError",
         r"img_shape must be positive"),
    # mmaction2 pickles
    Case("pkl missing", lambda t: __import__("recognizer_core.skeleton.mmaction_pkl", fromlist=["x"])
         .read_mmaction_pkl(t / "nope.pkl"), "SkeletonDataError", r"nope\.pkl: file not found"),
    Case("pkl not a pickle", lambda t: _pkl(t, None, raw=b"\x00garbage"), "SkeletonDataError",
         r"bad\.pkl: not a readable pickle"),
    Case("pkl wrong layout", lambda t: _pkl(t, {"clips": []}), "SkeletonDataError",
         r"bad\.pkl: not an mmaction2 pose pickle"),
    Case("pkl annotation not a dict", lambda t: _pkl(t, [_ann(), 3]), "SkeletonDataError",
         r"bad\.pkl: annotations\[1\] is a int"),
    Case("pkl split not a mapping of lists", lambda t: _pkl(t, {"split": {"train": 3}, "annotations": []}),
         "SkeletonDataError", r"bad\.pkl: 'split' must map split names to lists"),
    Case("pkl annotation without keypoint_score", lambda t: _pkl(t, [{k: v for k, v in _ann().items()
                                                                      if k != "keypoint_score"}]),
         "SkeletonDataError", r"bad\.pkl: clip 'c1': annotation has no 'keypoint_score'"),
    Case("pkl annotation without label", lambda t: _pkl(t, [{k: v for k, v in _ann().items() if k != "label"}]),
         "SkeletonDataError", r"bad\.pkl: clip 'c1': annotation has no 'label'"),
    Case("pkl split names clips without annotation", _unannotated_split_warning, "",
         r"bad\.pkl: 'split' lists 7 clip\(s\) that have no annotation \(first: 'ghost0', .*'ghost4', \.\.\.\)",
         lambda text: text),
    # the Parquet skeleton store
    Case("dataset folder missing", lambda t: __import__("recognizer_core.skeleton.store", fromlist=["x"])
         .SkeletonDataset(t / "nope"), "SkeletonDataError", r"nope: skeleton dataset folder not found"),
    Case("dataset json corrupt", lambda t: (_dataset(t, [_clip()]), (t / "ds" / "_dataset.json").write_text("{"),
                                            __import__("recognizer_core.skeleton.store", fromlist=["x"])
                                            .SkeletonDataset(t / "ds")), "SkeletonDataError",
         r"_dataset\.json: not valid JSON"),
    Case("Parquet part not Parquet", lambda t: __import__("recognizer_core.skeleton.store", fromlist=["x"])
         .check_file_schema(_write(t, "part-00000.parquet", b"not parquet")), "SkeletonDataError",
         r"part-00000\.parquet: not a readable Parquet file"),
    Case("duplicate clip_id", lambda t: _dataset(t, [_clip(), _clip()]), "SkeletonDataError",
         r"clip 'c1': clip_id is not unique"),
    Case("dataset exists, no overwrite", lambda t: (_dataset(t, [_clip()]), _dataset(t, [_clip()])),
         "FileExistsError", r"ds: already holds a skeleton dataset"),
    Case("bad clip skipped with on_error=skip", lambda t: _dataset(
        t, [_clip(), _clip(clip_id="c2", keypoint=_kp_with(np.nan))], on_error="skip"), "",
         r"1 clip\(s\), skipped: c2: .*NaN/inf",
         lambda ds: f"{len(ds)} clip(s), skipped: " + "; ".join(f"{s['clip_id']}: {s['error']}"
                                                                 for s in ds.info["skipped"])),
    # training data
    Case("empty split", lambda t: _split_info(t, "val"), "SkeletonDataError",
         r"ds: split 'val' is empty \(splits present"),
    Case("labels outside num_classes", lambda t: _split_info(t, "train", num_classes=1), "SkeletonDataError",
         r"split 'train' has 2 clip\(s\) with labels outside \[0, 1\)"),
    Case("data.path missing", lambda t: __import__("recognizer_core.train.stgcn.data", fromlist=["x"]).prepare_dataset(
        _train_cfg([f"data.path={t / 'nope'}"]).data, t), "SkeletonDataError",
         r"data\.path=.*nope.*: skeleton dataset folder not found"),
    # videos, extraction inputs, the pose model
    Case("corrupt video", lambda t: __import__("recognizer_core.extract.video", fromlist=["x"]).probe_video(
        str(_write(t, "broken.mp4", b"\x00\x00\x00\x18ftypmp42" + b"\x13" * 200))), "VideoDecodeError",
         r"broken\.mp4: cannot open video"),
    Case("input folder missing", lambda t: __import__("recognizer_core.extract.sources", fromlist=["x"]).list_folder(
        __import__("recognizer_core.extract.config", fromlist=["x"]).SourceConfig(input=str(t / "nope"))),
         "SourceError", r"source\.input: .*nope is not a folder"),
    Case("manifest CSV without header", lambda t: __import__("recognizer_core.extract.sources", fromlist=["x"])
         .list_manifest(__import__("recognizer_core.extract.config", fromlist=["x"]).SourceConfig(
             manifest_csv=str(_write(t, "videos.csv", b"a.mp4,Fight\n")))), "SourceError",
         r"videos\.csv: needs a header with columns path,label"),
    Case("ONNX model missing", lambda t: _onnx(t, None), "BackendError",
         r"model\.onnx\.model_path: RTMO ONNX file not found"),
    Case("ONNX model unreadable", lambda t: _onnx(t, b"not an onnx model"), "BackendError",
         r"rtmo\.onnx: ONNX Runtime cannot load the model"),
    # checkpoints
    Case("checkpoint missing", lambda t: __import__("recognizer_core.models.checkpoint", fromlist=["x"])
         .load_state_dict_file(t / "nope.pth"), "CheckpointError", r"nope\.pth: checkpoint file not found"),
    Case("checkpoint unreadable", lambda t: __import__("recognizer_core.models.checkpoint", fromlist=["x"])
         .load_state_dict_file(_write(t, "junk.pth", b"junk")), "CheckpointError",
         r"junk\.pth: cannot read checkpoint"),
    Case("checkpoint of another model", _checkpoint_mismatch, "CheckpointError",
         r"other\.pth: checkpoint does not match the model", listing=True),
    # COCO keypoints (DINO pose)
    Case("COCO annotation file missing", lambda t: _coco(t, None), "FileNotFoundError",
         r"person_keypoints\.json: COCO annotation file not found"),
    Case("COCO annotation not COCO", lambda t: _coco(t, "[1, 2]"), "ValueError",
         r"person_keypoints\.json: not a COCO annotation file"),
    Case("COCO image folder missing", lambda t: _coco(t, json.dumps({"images": [], "annotations": [],
                                                                     "categories": []}), image_dir=False),
         "FileNotFoundError", r"images: image directory not found"),
]


def test_case_ids_unique():
    assert len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, tmp_path):
    if not case.error:
        text = case.check(case.run(tmp_path))
        assert re.search(case.message, text, re.S), f"handled input recorded {text!r}, expected /{case.message}/"
        return
    with pytest.raises(Exception) as info:
        case.run(tmp_path)
    err = info.value
    names = [k.__name__ for k in type(err).__mro__]
    assert case.error in names, f"raised {type(err).__name__}: {err}"
    msg = str(err)
    assert re.search(case.message, msg, re.S), f"message {msg!r} does not match /{case.message}/"
    # One clear message: no traceback text, the file or the field named on the first line, then at most a line
    # or two (one per config problem) unless the row is a listing.
    first = msg.splitlines()[0]
    assert "Traceback" not in msg and (": " in first or re.search(r"\b[a-z_]+\.[a-z_]+\b", first)), msg
    assert case.listing or len(msg.splitlines()) <= 3, msg
