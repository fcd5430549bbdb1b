"""The one config system: YAML + dotted overrides, errors that name the file and the field."""
from __future__ import annotations

import argparse
from typing import Literal

import pytest

from recognizer_core.config import ConfigError, StrictModel, apply_overrides, dump_config, load_config
from recognizer_core.config_args import add_config_args, config_from_args


class Model(StrictModel):
    base_channels: int = 64
    inflate_stages: list[int] = [2]
    dropout: float = 0.3


class Optim(StrictModel):
    type: Literal["adamw", "sgd"] = "adamw"
    lr: float = 1e-4


class Data(StrictModel):
    pkl_dir: str = "x"
    val_pkl: str | None = None
    label_names: list[str] = []
    classes: list[str] | None = None   # as the training job's data.label_names


class Job(StrictModel):
    name: str = "run"
    model: Model = Model()
    optim: Optim = Optim()
    data: Data = Data()


def test_yaml_and_overrides(tmp_path):
    p = tmp_path / "job.yaml"
    p.write_text("model:\n  base_channels: 32\noptim:\n  type: sgd\n")
    cfg = load_config(Job, p, ["model.base_channels=96", "optim.lr=3e-4", "model.inflate_stages=[2, 4]"])
    assert cfg.model.base_channels == 96 and cfg.optim.type == "sgd"
    assert cfg.optim.lr == pytest.approx(3e-4) and cfg.model.inflate_stages == [2, 4]
    # round trip through dump_config
    again = load_config(Job, dump_config(cfg, tmp_path / "out.yaml"))
    assert again == cfg


def test_unknown_field_names_file_and_field(tmp_path):
    p = tmp_path / "typo.yaml"
    p.write_text("model:\n  base_channel: 32\n")
    with pytest.raises(ConfigError) as e:
        load_config(Job, p)
    assert str(p) in str(e.value) and "model.base_channel" in str(e.value) and "unknown field" in str(e.value)


def test_bad_value_names_field():
    with pytest.raises(ConfigError) as e:
        load_config(Job, None, ["optim.type=adam"])
    assert "optim.type" in str(e.value) and "'adam'" in str(e.value)


def test_override_list_element(tmp_path):
    p = tmp_path / "job.yaml"
    p.write_text("model:\n  inflate_stages: [2, 4]\n")
    cfg = load_config(Job, p, ["model.inflate_stages[1]=5"])
    assert cfg.model.inflate_stages == [2, 5]
    with pytest.raises(ConfigError, match="needs a list with at least 4 entries"):
        load_config(Job, p, ["model.inflate_stages[3]=5"])


def test_text_fields_take_the_text_as_written():
    """YAML made `name=2024-05-01` a date, `pkl_dir=` None, `label_names=[No, Yes]` booleans: rejected, or the
    documented 'empty = default' unreachable. Numbers and lists of numbers still parse."""
    cfg = load_config(Job, None, ["name=2024-05-01", "data.pkl_dir=", "data.label_names=[No, Yes]",
                                  "data.val_pkl=null", "model.inflate_stages=[1, 2]", "optim.lr=1e-3"])
    assert cfg.name == "2024-05-01" and cfg.data.pkl_dir == "" and cfg.data.label_names == ["No", "Yes"]
    assert cfg.data.val_pkl is None and cfg.model.inflate_stages == [1, 2] and cfg.optim.lr == 1e-3
    assert load_config(Job, None, ['name="2024-05-01"', "data.pkl_dir='a b'"]).name == "2024-05-01"  # quoted
    assert load_config(Job, None, ["data.val_pkl=on", "data.label_names=[off]"]).data.label_names == ["off"]
    with pytest.raises(ConfigError, match="label_names"):  # an [index] needs the list in the config
        load_config(Job, None, ["data.label_names[0]=off"])
    # an optional list of text (the training job's data.label_names, recognize's track_classes) took YAML's types
    optional = load_config(Job, None, ["data.classes=[No, Yes, 1]"]).data.classes
    assert optional == ["No", "Yes", "1"] and load_config(Job, None, ["data.classes=null"]).data.classes is None


def test_override_errors():
    with pytest.raises(ConfigError, match="section.field=value"):
        apply_overrides({}, ["model.base_channels"])
    with pytest.raises(ConfigError, match="is a value, not a section"):
        apply_overrides({"name": "x"}, ["name.sub=1"])


def test_missing_and_non_mapping_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(Job, tmp_path / "nope.yaml")
    p = tmp_path / "list.yaml"
    p.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(Job, p)


def test_help_lists_every_field(tmp_path):
    parser = argparse.ArgumentParser()
    add_config_args(parser, Job)
    text = parser.format_help()
    for field in ("model.base_channels", "model.dropout", "optim.type", "optim.lr", "name"):
        assert field in text
    args = parser.parse_args(["--set", "model.dropout=0.5"])
    assert config_from_args(Job, args).model.dropout == 0.5


def test_fractional_gpus_with_several_workers_are_refused_before_ray():
    """Two DDP ranks given halves of one GPU (PACK puts them there) crash NCCL at start ("Duplicate GPU
    detected"); tune's --gpus-per-worker help invited the combination."""
    from recognizer_core.train.stgcn.config import TrainJobConfig

    gpu = ["scaling.use_gpu=true", "scaling.gpus_per_worker=0.5"]
    with pytest.raises(ConfigError, match="scaling: .*NCCL needs a whole GPU per worker"):
        load_config(TrainJobConfig, None, gpu + ["scaling.num_workers=2"])
    assert load_config(TrainJobConfig, None, gpu).scaling.gpus_per_worker == 0.5   # one worker: trials share
