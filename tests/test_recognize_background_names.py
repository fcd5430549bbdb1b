"""What recognize decides from a model's class names and run folder, whatever the language and the directory:
the background class and the per-person (fall) classes of Korean names (extraction sorts folder names, and
싸움 sorts before 정상, so 정상 was not class 0 and the fight class became the background), the window length from
the training data wherever recognize starts, and the sidecar's format version."""
from __future__ import annotations

import json
import logging
import unicodedata
from pathlib import Path

import numpy as np
import pytest

from recognizer_core.config import ConfigError, dump_config, load_config, validate_config
from recognizer_core.recognize.model import default_window_mode, training_clip_stats
from recognizer_core.recognize.spec import ModelSpec, resolve_background
from recognizer_core.skeleton.transforms import PipelineConfig
from recognizer_core.train.stgcn.config import TrainJobConfig


def nfd(text: str) -> str:
    return unicodedata.normalize("NFD", text)   # as a macOS folder name stores Hangul


# ---- background and fall classes by name --------------------------------------------------------------------

@pytest.mark.parametrize("names, background", [
    (["싸움", "정상"], 1), (["낙상", "정상"], 1), (["폭행", "정상 상황"], 1), (["폭력", "비폭력"], 1),
    (["배경", "쓰러짐"], 0), (["실신", "평상시"], 1), (["일반", "싸움"], 0), (["Fight", "NonFight"], 1)])
def test_korean_background_names_are_found_in_any_position(names, background):
    assert resolve_background(names)[0] == background
    assert resolve_background([nfd(n) for n in names])[0] == background   # decomposed names (macOS) too


def test_a_setting_typed_in_nfc_matches_a_decomposed_class_name():
    names = [nfd("싸움"), nfd("정상")]
    assert resolve_background(names, "정상") == (1, f"set: class {names[1]!r}")
    assert resolve_background(names, nfd("싸움"))[0] == 0 and resolve_background(["Fight", "NORMAL"], "normal")[0] == 1


@pytest.mark.parametrize("names, expected", [
    (["정상", "낙상"], ("track", [])), (["Normal", "Fall"], ("track", [])), ([nfd("정상"), nfd("쓰러짐")], ("track", [])),
    (["정상", "싸움", "넘어짐"], ("both", ["넘어짐"])), (["정상", "싸움"], ("scene", [])),
    (["정상", "싸움", "실신"], ("both", ["실신"]))])
def test_korean_fall_classes_get_track_windows(names, expected):
    background = resolve_background(names)[0]
    assert default_window_mode(names, PipelineConfig(), background) == expected


def test_class_zero_taken_only_for_want_of_a_name_is_one_warning_naming_it_and_the_option(caplog):
    with caplog.at_level(logging.WARNING, logger="recognizer"):
        assert resolve_background(["싸움", "폭행"]) == (0, "auto: no class named like background; class 0 ('싸움')")
        resolve_background(["싸움", "정상"])
        resolve_background(["a", "b"], fallback=None)   # mmaction2 .py models: no background, nothing guessed
    assert len(caplog.records) == 1
    line = caplog.records[0].getMessage()
    assert "'싸움'" in line and "--background-class" in line and "\n" not in line


# ---- the sidecar's format version -----------------------------------------------------------------------------

def _sidecar(tmp_path, **changes):
    data = json.loads(ModelSpec(label_names=["NonFight", "Fight"], pipeline=PipelineConfig(), window_frames=48)
                      .to_json())
    path = tmp_path / "model.json"
    path.write_text(json.dumps({**data, **changes}))
    return path


@pytest.mark.parametrize("changes, message", [
    ({"format": "recognizer-model/2", "score_transform": "sigmoid"},   # a newer field must not read as a typo
     r"model.json: sidecar format recognizer-model/2 is newer than this code \(recognizer-model/1\); upgrade "
     "recognizer or re-export"),
    ({"format": "something-else/9"}, r"model.json: not a recognizer sidecar \(format 'something-else/9'"),
    ({"format": 1}, r"model.json: not a recognizer sidecar")])
def test_a_sidecar_of_a_newer_or_other_format_is_refused_in_one_line(tmp_path, changes, message):
    with pytest.raises(ConfigError, match=message) as err:
        ModelSpec.read(_sidecar(tmp_path, **changes))
    assert "\n" not in str(err.value)


def test_a_version_1_sidecar_and_one_without_format_still_read(tmp_path):
    assert ModelSpec.read(_sidecar(tmp_path)).format == "recognizer-model/1"
    data = json.loads(_sidecar(tmp_path).read_text())
    del data["format"]
    (tmp_path / "model.json").write_text(json.dumps(data))
    assert ModelSpec.read(tmp_path / "model.json").format == "recognizer-model/1"


# ---- the training data's fps and clip length, from any working directory --------------------------------------

def _train_config(**data):
    return validate_config(TrainJobConfig,
                           {"data": {"label_names": ["NonFight", "Fight"], "demo_num_clips": 8, **data},
                            "model": {"num_classes": 2}, "run": {"name": "run", "storage_path": "work_dirs"}},
                           "test")


def _write_clips(project):
    """A dataset at 25 fps (not the 30 fps fallback) in project/outputs/ds and the same clips as a pkl."""
    from recognizer_core.skeleton.demo_data import make_demo_clips
    from recognizer_core.skeleton.mmaction_pkl import write_mmaction_pkl
    from recognizer_core.skeleton.store import write_dataset

    clips = make_demo_clips("fight", 24, seed=1)
    for c in clips:
        c.fps = 25.0
    write_dataset(clips, project / "outputs/ds", ["NonFight", "Fight"])
    write_mmaction_pkl(clips, project / "outputs/all.pkl")
    return int(np.median([c.total_frames for c in clips if c.split == "train"]))


@pytest.mark.parametrize("data", [{"path": "outputs/ds"}, {"train_pkl": "outputs/all.pkl"}, {}],
                         ids=["relative data.path", "relative train_pkl", "demo data"])
def test_a_run_folders_config_finds_its_training_data_from_another_directory(tmp_path, monkeypatch, data):
    """train_stgcn.py saved config.yaml as typed: recognize / export started elsewhere looked the relative path
    up again from there, missed it and fell back to 30 fps and window = clip_len (export wrote that into the
    sidecar); with demo data it wrote a fresh demo dataset into the current directory."""
    from recognizer_core.train.stgcn.job import recorded_config
    from recognizer_core.train.stgcn.job import dataset_for

    monkeypatch.delenv("RECOGNIZER_STORAGE", raising=False)
    project, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    project.mkdir(), elsewhere.mkdir()
    frames = _write_clips(project)
    cfg = _train_config(**data)
    monkeypatch.chdir(project)
    trained = training_clip_stats(cfg)                        # in the training directory, as before
    dump_config(recorded_config(cfg, dataset_for(cfg)), project / "run_config.yaml")
    monkeypatch.chdir(elsewhere)
    saved = load_config(TrainJobConfig, project / "run_config.yaml")
    assert training_clip_stats(saved) == trained
    assert trained[2].startswith(str(project))
    if data:                                                  # (the demo clips have their own fps and length)
        assert trained[:2] == (25.0, frames)
    assert list(elsewhere.iterdir()) == []                    # nothing written where recognize started


def test_train_stgcn_saves_the_dataset_it_trained_on_in_the_run_folder(tmp_path, monkeypatch, capsys):
    """The job itself (Ray replaced by stubs, as tests/test_jobs_before_ray.py does): config.yaml holds the
    resolved data.path, not the relative one typed."""
    from rayjobs import train_stgcn
    from recognizer_core import ray_runtime
    from recognizer_core.train.stgcn import job

    class NoRayTrainer:
        def __init__(self, *args, **kwargs):
            pass

        def fit(self):
            raise RuntimeError("no Ray in this test")

    monkeypatch.setattr(job, "TorchTrainer", NoRayTrainer)
    monkeypatch.setattr(ray_runtime, "start_ray_or_exit", lambda *args, **kwargs: None)
    monkeypatch.setenv("RECOGNIZER_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("RECOGNIZER_STORAGE", raising=False)
    project = tmp_path / "project"
    _write_clips(project)
    monkeypatch.chdir(project)
    sets = ["data.path=outputs/ds", "run.storage_path=runs", "run.name=r", "model.num_stages=2",
            "model.base_channels=8", "model.inflate_stages=[2]", "model.down_stages=[2]", "pipeline.clip_len=16"]
    config = Path(__file__).resolve().parents[1] / "configs/fight_stable.yaml"
    assert train_stgcn.main(["--config", str(config), *[a for s in sets for a in ("--set", s)]]) == 1
    assert "no Ray in this test" in capsys.readouterr().out
    saved = load_config(TrainJobConfig, project / "runs/r/config.yaml")
    assert saved.data.path == str(project / "outputs/ds") and saved.run.name == "r"


def test_an_older_run_finds_demo_data_under_recognizer_storage_and_warns_once_for_a_relative_path(
        tmp_path, monkeypatch, caplog):
    """A config.yaml written before the fix (relative paths as typed) resolves as training did: demo data under
    output_uri(run.storage_path) ($RECOGNIZER_STORAGE), data.path by storage.input_path; missing, one warning."""
    from recognizer_core.train.stgcn.job import dataset_for

    store, elsewhere = tmp_path / "store", tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.setenv("RECOGNIZER_STORAGE", str(store))
    monkeypatch.chdir(tmp_path)
    cfg = _train_config()
    where = dataset_for(cfg)                                  # training wrote the demo data under the storage
    monkeypatch.chdir(elsewhere)
    assert training_clip_stats(cfg)[2] == where and list(elsewhere.iterdir()) == []

    monkeypatch.delenv("RECOGNIZER_STORAGE")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="recognizer"):
        assert training_clip_stats(_train_config(path="outputs/ds")) == (30.0, 100, "fallback: clip_len at 30 fps")
    assert len(caplog.records) == 1
    line = caplog.records[0].getMessage()
    assert "data.path='outputs/ds'" in line and "start from the directory the run was trained in" in line


def test_class_names_given_in_nfc_name_the_classes_of_a_model_with_nfd_names():
    """A model trained from a Mac's (NFD) folder names, a threshold typed on Linux (NFC): "unknown class(es)
    ['싸움']; the model's classes are ['정상', '싸움']" before."""
    from recognizer_core.config import apply_overrides
    from recognizer_core.recognize.runner import RecognizeConfig, effective_spec, shared_span

    nfd = [unicodedata.normalize("NFD", n) for n in ("정상", "싸움")]
    spec = ModelSpec.model_validate({"label_names": nfd, "pipeline": {}, "window_frames": 48})
    cfg = RecognizeConfig.model_validate(apply_overrides(
        {"shared_span_classes": ["싸움"]}, ["thresholds.싸움=0.7"], cls=RecognizeConfig))
    out = effective_spec(spec, cfg)
    assert out.threshold(1).on == 0.7 and out.threshold(1).source == "config"
    assert shared_span(spec, cfg) == frozenset({1})
