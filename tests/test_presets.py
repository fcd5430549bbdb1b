"""Every shipped preset loads into its typed config, and the guide's numbers are what the presets say."""
from __future__ import annotations

from pathlib import Path

import pytest

from recognizer_core.config import load_config
from recognizer_core.pose.config import ExtractionConfig
from recognizer_core.train.config import TrainJobConfig
from recognizer_core.train.dino_pose.config import DinoPoseJobConfig

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
CLASS_OF = {"fight_stable": TrainJobConfig, "falldown_stable": TrainJobConfig, "fight_demo": TrainJobConfig,
            "extraction": ExtractionConfig, "dino_pose_base": DinoPoseJobConfig}


def test_every_preset_is_known_and_loads():
    names = sorted(p.stem for p in CONFIGS.glob("*.yaml"))
    assert names == sorted(CLASS_OF), "a new preset needs its config class here"
    needs = {"extraction": ["source.input=/data/videos"]}  # the one thing a user must always give it
    for name, cls in CLASS_OF.items():
        load_config(cls, CONFIGS / f"{name}.yaml", needs.get(name))


@pytest.mark.parametrize("name,dropout,class_weight", [("fight_stable", 0.3, [1.2, 1.0]),
                                                       ("falldown_stable", 0.2, [1.0, 1.5])])
def test_stable_presets_follow_the_training_guide(name, dropout, class_weight):
    cfg = load_config(TrainJobConfig, CONFIGS / f"{name}.yaml")
    m = cfg.model
    assert (m.num_stages, m.base_channels, m.inflate_stages, m.down_stages) == (4, 64, [2], [2])
    assert m.head_in_channels == 128 and m.dropout == dropout and cfg.train.class_weight == class_weight
    assert cfg.pipeline.feats == ["b"] and cfg.pipeline.clip_len == 100 and cfg.pipeline.num_person == 4
    assert (cfg.optim.type, cfg.optim.lr, cfg.optim.weight_decay, cfg.optim.clip_grad_max_norm) == \
        ("adamw", 1e-4, 1e-3, 2.0)
    assert cfg.optim.auto_scale_lr and cfg.optim.base_batch_size == 128
    assert (cfg.schedule.warmup_epochs, cfg.schedule.warmup_start_factor, cfg.schedule.type) == (3, 0.1, "multistep")
    assert (cfg.schedule.milestones, cfg.schedule.gamma) == ([15, 25], 0.5)
    assert (cfg.train.epochs, cfg.train.val_begin, cfg.train.val_interval) == (30, 1, 2)
    assert cfg.checkpoint.num_to_keep == 5


def test_guide_variants_are_one_override_away():
    deeper = load_config(TrainJobConfig, CONFIGS / "fight_stable.yaml",
                         ["model.num_stages=6", "model.inflate_stages=[2,4]", "model.down_stages=[2,4]"])
    assert deeper.model.head_in_channels == 256


def test_demo_preset_differs_from_fight_stable_only_in_its_budget():
    stable = load_config(TrainJobConfig, CONFIGS / "fight_stable.yaml").model_dump()
    demo = load_config(TrainJobConfig, CONFIGS / "fight_demo.yaml").model_dump()
    assert demo["model"] == stable["model"]  # the same network and head
    assert demo["data"]["path"] is None and demo["data"]["train_pkl"] is None  # the built-in demo data
    changed = {(section, k) for section in stable for k in stable[section]
               if isinstance(stable[section], dict) and stable[section][k] != demo[section][k]}
    assert changed == {("data", "demo_num_clips"), ("pipeline", "clip_len"), ("pipeline", "num_person"),
                       ("optim", "base_batch_size"), ("schedule", "warmup_epochs"), ("schedule", "milestones"),
                       ("train", "epochs"), ("train", "batch_size"), ("train", "val_interval"), ("run", "name")}
