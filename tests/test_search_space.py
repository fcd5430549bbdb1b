"""Search-space YAML: the shipped spaces load against the real job config, sample valid configs with the right
conditional structure, and bad files are rejected with errors naming the file and the parameter."""
from __future__ import annotations

import textwrap
from pathlib import Path

import optuna
import pytest

from recognizer_core.train.stgcn.config import TrainJobConfig
from recognizer_core.tune.search_space import (SearchSpaceError, load_search_space, optuna_distribution,
                                               set_dotted)
from recognizer_core.tune.stgcn_job import JOB, METRICS

REPO = Path(__file__).resolve().parents[1]
optuna.logging.set_verbosity(optuna.logging.WARNING)


def _sample(space, n: int, seed: int = 0):
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=seed))
    out = []
    for _ in range(n):
        trial = study.ask()
        space.suggest(trial)
        out.append(trial)
        study.tell(trial, 0.5)
    return out


@pytest.mark.parametrize("name", ["fight", "falldown"])
def test_shipped_spaces_sample_valid_conditional_configs(name):
    space = load_search_space(REPO / "search_spaces" / f"{name}.yaml", TrainJobConfig, job=JOB, metrics=METRICS)
    base = TrainJobConfig.model_validate(space.base)
    seen_types, seen_sched, seen_depth = set(), set(), set()
    for trial in _sample(space, 40):
        p = trial.params
        # Conditional parameters exist exactly when their condition holds.
        assert ("optim.momentum" in p) == ("optim.nesterov" in p) == ("optim.lr@sgd" in p) == (p["optim.type"] == "sgd")
        assert ("optim.lr" in p) == (p["optim.type"] == "adamw")  # each optimizer samples its own lr range
        assert ("schedule.milestones" in p) == ("schedule.gamma" in p) == (p["schedule.type"] == "multistep")
        assert ("schedule.eta_min" in p) == (p["schedule.type"] == "cosine")
        # The distributions Optuna recorded are the ones the plots rebuild from the YAML.
        for k, dist in trial.distributions.items():
            assert optuna_distribution(space.params[k]) == dist
        cfg = space.build_config(TrainJobConfig, p, space.demo)
        seen_types.add(cfg.optim.type)
        seen_sched.add(cfg.schedule.type)
        seen_depth.add(p["depth"])
        stages = {"shallow": (3, [], []), "stable": (4, [2], [2]), "deep": (6, [2, 4], [2, 4])}[p["depth"]]
        assert (cfg.model.num_stages, cfg.model.inflate_stages, cfg.model.down_stages) == stages
        assert cfg.model.base_channels in (32, 48, 64, 96) and 0.1 <= cfg.model.dropout <= 0.7
        low, high = (1e-5, 1e-3) if cfg.optim.type == "adamw" else (1e-3, 1e-1)
        assert low <= cfg.optim.lr <= high and 1e-4 <= cfg.optim.weight_decay <= 1e-2
        # class_weight[1] tunes the positive class only; the negative class keeps the preset's weight.
        assert cfg.train.class_weight == [base.train.class_weight[0], pytest.approx(p["train.class_weight[1]"])]
        assert cfg.pipeline.feats in (["j"], ["b"]) and cfg.model.in_channels == 3
        if cfg.schedule.type == "multistep":
            # List choices map back to lists; they are epochs of the 30-epoch preset, scaled to the demo's 10
            # epochs and kept inside the run after its warmup (before: all fell at or after its last epoch).
            scaled = {"[15, 25]": [5, 8], "[10, 20]": [3, 7], "[20, 26]": [7, 8]}[p["schedule.milestones"]]
            assert cfg.schedule.milestones == scaled and 1 + cfg.schedule.milestones[-1] < cfg.train.epochs
            full = space.build_config(TrainJobConfig, p)  # the preset's own 30 epochs: the values as written
            assert full.schedule.milestones == __import__("json").loads(p["schedule.milestones"])
        else:  # the guide's cosine warmup (5 of 30 epochs) scaled to the demo's 10; untouched fields: the preset's
            assert cfg.schedule.warmup_epochs == 2 and cfg.schedule.eta_min == pytest.approx(p["schedule.eta_min"])
            assert cfg.schedule.warmup_start_factor == base.schedule.warmup_start_factor
        if cfg.optim.type == "adamw":
            assert cfg.optim.momentum == base.optim.momentum
        # Demo overrides are applied under the trial's params.
        assert cfg.train.epochs == space.demo["train.epochs"] and cfg.scaling.cpus_per_worker == 0.5
    assert seen_types == {"adamw", "sgd"} and seen_sched == {"multistep", "cosine"}
    assert seen_depth == {"shallow", "stable", "deep"}
    # The first trial is the guide's stable recipe: exactly the preset, as the baseline.
    (point,) = space.start_points()
    assert space.build_config(TrainJobConfig, point) == base


@pytest.mark.parametrize("name", ["fight", "falldown"])
def test_cosine_eta_min_stays_well_below_every_trials_lr(name):
    """eta_min was searched in 1e-7..1e-5 while a trial's lr after auto_scale_lr goes down to 1e-5 x 16/128 =
    1.25e-6: ~4% of cosine trials had eta_min >= lr, a flat lr labelled cosine (optim.py clamps the floor)."""
    space = load_search_space(REPO / "search_spaces" / f"{name}.yaml", TrainJobConfig, job=JOB, metrics=METRICS)
    for extra in ({}, space.demo):  # a real search (the preset's base_batch_size 128) and the demo's
        cfg = space.build_config(TrainJobConfig, {}, extra)
        batches = space.params["train.batch_size"].values if "train.batch_size" in space.params else [
            cfg.train.batch_size]
        scale = cfg.scaling.num_workers * min(batches) / cfg.optim.base_batch_size if cfg.optim.auto_scale_lr else 1
        smallest_lr = space.params["optim.lr"].low * scale
        assert space.params["schedule.eta_min"].high <= 0.1 * smallest_lr, (name, extra, smallest_lr)


def _write(tmp_path: Path, params: str, **top) -> Path:
    (tmp_path / "configs").mkdir(exist_ok=True)
    (tmp_path / "configs" / "base.yaml").write_text(
        "model: {num_classes: 2}\ntrain: {class_weight: [1.0, 1.0], epochs: 10}\nschedule: {milestones: [5, 6]}\n")
    head = {"job": "stgcn", "base_config": "configs/base.yaml", "metric": "val/acc_top1", "mode": "max", **top}
    text = "".join(f"{k}: {v}\n" for k, v in head.items() if v is not None)
    (tmp_path / "spaces").mkdir(exist_ok=True)
    path = tmp_path / "spaces" / "space.yaml"
    path.write_text(text + "params:\n" + textwrap.indent(textwrap.dedent(params).strip() + "\n", "  "))
    return path


def _error(path: Path) -> str:
    with pytest.raises(SearchSpaceError) as err:
        load_search_space(path, TrainJobConfig, job=JOB, metrics=METRICS)
    text = str(err.value)
    assert str(path) in text, text  # every error names the file
    return text


def test_valid_minimal_space_and_base_relative_to_repo_root(tmp_path):
    path = _write(tmp_path, "model.dropout: {type: uniform, low: 0.1, high: 0.5}")
    space = load_search_space(path, TrainJobConfig, job=JOB, metrics=METRICS)
    assert space.base["train"]["epochs"] == 10 and list(space.params) == ["model.dropout"]


@pytest.mark.parametrize("params, expected", [
    # typo in a field name: named, with a suggestion
    ("model.dropuot: {type: uniform, low: 0.1, high: 0.5}", "params.model.dropuot: not a field of TrainJobConfig "
                                                            "(did you mean model.dropout?)"),
    ("modle.dropout: {type: uniform, low: 0.1, high: 0.5}", "params.modle.dropout: not a field"),
    # a section instead of a field
    ("train.early_stopping: {type: choice, values: [1, 2]}",
     "params.train.early_stopping: train.early_stopping is a section; name one of its fields (enabled, monitor"),
    # bad ranges
    ("model.dropout: {type: uniform, low: 0.5, high: 0.1}", "params.model.dropout: low (0.5) must be below high"),
    ("optim.lr: {type: loguniform, low: 0.0, high: 0.1}", "params.optim.lr: a log-scale range needs low > 0"),
    ("train.epochs: {type: int, low: 1.5, high: 4}", "params.train.epochs: type int needs integer"),
    ("model.dropout: {type: uniform, low: 0.1}", "params.model.dropout: type uniform needs low and high"),
    ("model.base_channels: {type: choice, values: []}", "params.model.base_channels: type choice needs a non-empty"),
    # unknown distribution type and unknown key
    ("model.dropout: {type: normal, low: 0.1, high: 0.5}", "params.model.dropout.type: Input should be"),
    ("model.dropout: {type: uniform, low: 0.1, high: 0.5, hihg: 2}", "params.model.dropout.hihg: unknown key"),
    # values the config itself rejects (dropout must be < 1, stages within num_stages)
    ("model.dropout: {type: uniform, low: 0.1, high: 1.5}",
     "params.model.dropout: high gives a config the job rejects"),
    ("model.num_stages: {type: choice, values: [1, 4]}", "params.model.num_stages: value 1 gives a config the job "
                                                         "rejects"),
    # conditions
    ("optim.momentum: {type: uniform, low: 0.8, high: 0.99, when: {optim.type: sgd}}\n"
     "optim.type: {type: choice, values: [adamw, sgd]}",
     "params.optim.momentum.when.optim.type: optim.type is tuned after optim.momentum"),
    ("optim.type: {type: choice, values: [adamw, sgd]}\n"
     "optim.momentum: {type: uniform, low: 0.8, high: 0.99, when: {optim.type: sgdd}}",
     "params.optim.momentum.when.optim.type: ['sgdd'] never happens"),
    ("optim.momentum: {type: uniform, low: 0.8, high: 0.99, when: {optim.typo: sgd}}",
     "params.optim.momentum.when.optim.typo: not a field"),
    # bundles
    ("depth: {type: choice, values: [a, b]}", "params.depth: a name without dots is a bundle and needs `sets`"),
    ("depth: {type: choice, values: [a, b], sets: {a: {model.num_stages: 3}}}", "sets must have exactly one entry"),
    ("depth: {type: choice, values: [a], sets: {a: {model.num_stagez: 3}}}",
     "params.depth.sets.a.model.num_stagez: not a field"),
    ("depth: {type: choice, values: [a], sets: {a: {model.num_stages: 1, model.inflate_stages: [2]}}}",
     "params.depth: value 'a' gives a config the job rejects"),
    # [index] only on list fields
    ("model.dropout[1]: {type: uniform, low: 0.1, high: 0.5}", "dropout is not a list"),
    # a float distribution on an int field: its ends 16.0 and 64.0 pass, every sampled value failed its trial
    ("train.batch_size: {type: uniform, low: 16, high: 64}",
     "params.train.batch_size: a value inside (16.000000000000004) gives a config the job rejects"),
])
def test_bad_params_are_rejected_with_clear_errors(tmp_path, params, expected):
    text = _error(_write(tmp_path, params))
    assert expected in text, text


def test_bad_top_level_is_rejected(tmp_path):
    p = "model.dropout: {type: uniform, low: 0.1, high: 0.5}"
    assert "metric: 'val/acc' is not reported" in _error(_write(tmp_path, p, metric="val/acc"))
    assert "job: this space is for 'dino_pose'" in _error(_write(tmp_path, p, job="dino_pose"))
    assert "mode: Input should be 'max' or 'min'" in _error(_write(tmp_path, p, mode="maximise"))
    assert "base_config:" in _error(_write(tmp_path, p, base_config="configs/missing.yaml"))
    assert "sampler: unknown key" in _error(_write(tmp_path, p, sampler="tpe"))
    assert "demo.train.epoch: not a field" in _error(_write(tmp_path, p, demo="{train.epoch: 2}"))


def test_missing_params_and_bad_yaml(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("job: stgcn\nbase_config: x.yaml\nmetric: val/acc_top1\n")
    assert "params: Field required" in _error(path)
    path.write_text("params: [unclosed\n")
    with pytest.raises(Exception, match="not valid YAML"):
        load_search_space(path, TrainJobConfig)


def test_index_and_sets_overrides(tmp_path):
    path = _write(tmp_path, """
        depth: {type: choice, values: [small, big], sets: {small: {model.num_stages: 3, model.inflate_stages: [],
                 model.down_stages: []}, big: {model.num_stages: 6, model.inflate_stages: [2, 4],
                 model.down_stages: [2, 4]}}}
        train.class_weight[1]: {type: uniform, low: 1.0, high: 3.0}
        model.base_channels: {type: int, low: 32, high: 96, step: 16, when: {depth: big}}
    """)
    space = load_search_space(path, TrainJobConfig)
    cfg = space.build_config(TrainJobConfig, {"depth": "big", "train.class_weight[1]": 2.5,
                                              "model.base_channels": 80})
    assert (cfg.model.num_stages, cfg.model.inflate_stages, cfg.model.base_channels) == (6, [2, 4], 80)
    assert cfg.train.class_weight == [1.0, 2.5]
    for trial in _sample(space, 12):
        assert ("model.base_channels" in trial.params) == (trial.params["depth"] == "big")
        if "model.base_channels" in trial.params:
            assert trial.params["model.base_channels"] in range(32, 97, 16)
    with pytest.raises(SearchSpaceError, match="trial parameter 'model.dropout' is not in this space"):
        space.build_config(TrainJobConfig, {"model.dropout": 0.2})


def test_set_dotted_index_needs_a_list():
    data = {"train": {"class_weight": None}}
    with pytest.raises(KeyError, match="an \\[index\\] needs a list"):
        set_dotted(data, "train.class_weight[1]", 2.0)
    data = {"train": {"class_weight": [1.0, 1.0]}}
    set_dotted(data, "train.class_weight[1]", 2.0)
    assert data == {"train": {"class_weight": [1.0, 2.0]}}


def test_start_with_points_are_checked(tmp_path):
    params = """
        optim.type: {type: choice, values: [adamw, sgd]}
        optim.momentum: {type: uniform, low: 0.8, high: 0.99, when: {optim.type: sgd}}
        schedule.milestones: {type: choice, values: [[5, 6], [2, 4]]}
    """
    ok = _write(tmp_path, params, start_with="[{optim.type: sgd, optim.momentum: 0.9, schedule.milestones: [2, 4]}]")
    space = load_search_space(ok, TrainJobConfig)
    assert space.start_points() == [{"optim.type": "sgd", "optim.momentum": 0.9, "schedule.milestones": "[2, 4]"}]
    for point, expected in [
        ("{optim.typo: sgd}", "start_with[0].optim.typo: not a parameter of this space"),
        ("{optim.type: rmsprop}", "start_with[0].optim.type: 'rmsprop' is not one of ['adamw', 'sgd']"),
        ("{optim.type: sgd, optim.momentum: 1.5}", "start_with[0].optim.momentum: 1.5 is outside [0.8, 0.99]"),
        ("{optim.type: adamw, optim.momentum: 0.9}", "start_with[0].optim.momentum: inactive in this point"),
        ("{schedule.milestones: [30, 20]}", "start_with[0].schedule.milestones: [30, 20] is not one of"),
    ]:
        assert expected in _error(_write(tmp_path, params, start_with=f"[{point}]")), point


def test_numbers_as_yaml_writes_them_and_integer_choice_sets(tmp_path):
    """YAML 1.1 reads 1e-4 as text: a start point's lr of 1e-4 was 'outside [1e-05, 0.001]'. A choice of integers
    with `sets` keyed by those integers was refused (keys had to be quoted)."""
    params = """
        optim.lr: {type: loguniform, low: 1e-5, high: 1e-3}
        stages: {type: choice, values: [3, 4], sets: {3: {model.num_stages: 3, model.inflate_stages: [],
                 model.down_stages: []}, 4: {model.num_stages: 4, model.inflate_stages: [2], model.down_stages: [2]}}}
    """
    space = load_search_space(_write(tmp_path, params, start_with="[{optim.lr: 1e-4, stages: 3}]"), TrainJobConfig)
    assert space.start_points() == [{"optim.lr": 1e-4, "stages": 3}]
    assert space.build_config(TrainJobConfig, {"stages": 3}).model.num_stages == 3


def test_the_preset_trial_is_found_when_its_point_leaves_params_to_sample(tmp_path):
    """start_with may leave params out (they are sampled); the preset comparison wanted every param equal and
    never found the preset trial."""
    from recognizer_core.tune.compare import preset_trial
    from recognizer_core.tune.records import TrialRecord

    params = """
        optim.type: {type: choice, values: [adamw, sgd]}
        optim.lr: {type: loguniform, low: 1.0e-5, high: 1.0e-3}
        model.dropout: {type: uniform, low: 0.1, high: 0.7}
    """
    space = load_search_space(_write(tmp_path, params, start_with="[{optim.type: adamw, model.dropout: 0.3}]"),
                              TrainJobConfig)
    later = TrialRecord("b", {"optim.type": "adamw", "model.dropout": 0.3, "optim.lr": 2e-4}, [], created=2)
    first = TrialRecord("a", {"optim.type": "adamw", "model.dropout": 0.3, "optim.lr": 4.7e-5}, [], created=1)
    other = TrialRecord("c", {"optim.type": "sgd", "model.dropout": 0.3, "optim.lr": 1e-4}, [], created=0)
    assert preset_trial([later, other, first], space) is first


def test_conditions_read_the_trials_config_with_defaults_and_overrides(tmp_path):
    """`when` read the preset's YAML as written: a default the preset leaves out (optim.type: adamw) read as None, and
    a --set / demo override (optim.type=sgd) was not seen, so its parameters were never sampled although every
    trial ran that optimizer."""
    path = _write(tmp_path, """
        optim.weight_decay: {type: loguniform, low: 1.0e-4, high: 1.0e-2, when: {optim.type: adamw}}
        optim.momentum: {type: uniform, low: 0.8, high: 0.99, when: {optim.type: sgd}}
    """)
    space = load_search_space(path, TrainJobConfig, job=JOB, metrics=METRICS)
    assert "type" not in space.base.get("optim", {})   # the base YAML leaves the default out
    assert all(set(t.params) == {"optim.weight_decay"} for t in _sample(space, 3))
    space.fix_overrides(TrainJobConfig, {"optim.type": "sgd"})   # what the tuner does with --set / demo
    assert all(set(t.params) == {"optim.momentum"} for t in _sample(space, 3))

