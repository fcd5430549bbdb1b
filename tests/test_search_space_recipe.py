"""The shipped fight/falldown searches train the guide's recipes: every multistep choice decays twice inside its
run (milestones count from the end of the warmup, so [20, 27] of 30 epochs after 3 warmup epochs decayed once),
the demo's scaled milestones stay inside its 10 epochs, SGD trials search an SGD lr range (AdamW's 1e-5..1e-3 put
them 5-2000x below the guide's 0.01), and cosine trials warm up 5 epochs. A config whose milestones fall after its
last epoch (a constant lr, before without a word) is named in one line before training starts."""
from __future__ import annotations

import json
import math
from pathlib import Path

import optuna
import pytest

from recognizer_core.config import load_config
from recognizer_core.train.stgcn.config import TrainConfig, TrainJobConfig
from recognizer_core.train.stgcn.optim import lr_factor
from recognizer_core.tune.search_space import SearchSpaceError, load_search_space
from recognizer_core.tune.stgcn_job import JOB, METRICS

REPO = Path(__file__).resolve().parents[1]
SPACES = ["fight", "falldown"]
optuna.logging.set_verbosity(optuna.logging.WARNING)


def _space(name: str):
    return load_search_space(REPO / "search_spaces" / f"{name}.yaml", TrainJobConfig, job=JOB, metrics=METRICS)


def _drops(cfg: TrainJobConfig) -> list[int]:
    """1-based epochs whose lr is below the previous epoch's (the multistep decays that happen in the run)."""
    f = [lr_factor(e * 10, iters_per_epoch=10, cfg=cfg.schedule, base_lr=1.0, cosine_t_max=cfg.cosine_t_max)
         for e in range(cfg.train.epochs)]
    return [e + 1 for e in range(1, len(f)) if f[e] < f[e - 1]]


def _sample(space, n: int):
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(n):
        trial = study.ask()
        space.suggest(trial)
        study.tell(trial, 0.5)
        yield trial


@pytest.mark.parametrize("milestones, epochs, warmup", [([40, 50], 30, 3), ([20, 27], 30, 3), ([8], 10, 1.5)])
def test_a_milestone_after_the_last_epoch_is_named_before_training(milestones, epochs, warmup, capsys):
    sets = [f"schedule.milestones={json.dumps(milestones)}", f"train.epochs={epochs}",
            f"schedule.warmup_epochs={warmup}"]
    # It still loads (an old run's config, a short `--set train.epochs=2` check of a preset) ...
    cfg = load_config(TrainJobConfig, REPO / "configs/fight_stable.yaml", sets)
    line = cfg.late_milestones_note()  # ... and the training jobs print this one line before they start
    assert f"schedule.milestones={milestones}" in line and f"train.epochs={epochs}" in line
    assert f"schedule.warmup_epochs={warmup:g}" in line and f"below {epochs - math.ceil(warmup)}" in line
    # The last milestone that still acts (at the last epoch) gets no note; nor do unused milestones of a cosine.
    ok = load_config(TrainJobConfig, REPO / "configs/fight_stable.yaml",
                     sets[1:] + [f"schedule.milestones=[{epochs - math.ceil(warmup) - 1}]"])
    assert len(_drops(ok)) == 1 and ok.late_milestones_note() is None
    cosine = load_config(TrainJobConfig, REPO / "configs/fight_stable.yaml", sets + ["schedule.type=cosine"])
    assert cosine.late_milestones_note() is None


def test_prepare_run_prints_the_late_milestones_line(tmp_path, capsys):
    from recognizer_core.train.stgcn import job

    cfg = load_config(TrainJobConfig, REPO / "configs/fight_demo.yaml",
                      ["train.epochs=2", f"run.storage_path={tmp_path}", "data.demo_num_clips=40"])
    assert cfg.late_milestones_note() is not None
    job.prepare_run(cfg)
    assert "[recognizer] warning: schedule.milestones=" in capsys.readouterr().out


@pytest.mark.parametrize("name", SPACES)
def test_every_milestone_choice_decays_twice_inside_the_run(name):
    space = _space(name)
    base = dict(space.start_points()[0])
    # the real search, the demo, a shorter real search, and the CI smoke run (demo + 2 epochs: no room)
    for extra, drops in ((None, 2), (space.demo, 2), ({"train.epochs": 20}, 2), ({**space.demo, "train.epochs": 2}, 0)):
        for label in space.params["schedule.milestones"].labels():
            cfg = space.build_config(TrainJobConfig, {**base, "schedule.milestones": label}, extra)
            begin = math.ceil(cfg.schedule.warmup_epochs)
            assert all(begin + m < cfg.train.epochs for m in cfg.schedule.milestones), (label, extra)
            assert len(_drops(cfg)) == drops, (label, extra, cfg.schedule.milestones)
    # The demo's scaled milestones (before: [20, 27] -> [7, 9], the 9 at epoch 1 + 9 = 10, past the end).
    demo = [space.build_config(TrainJobConfig, {**base, "schedule.milestones": label}, space.demo).schedule.milestones
            for label in space.params["schedule.milestones"].labels()]
    assert demo == [[5, 8], [3, 7], [7, 8]]
    # Starting configs without sampled milestones fit their runs too (the plan validates them before Ray starts);
    # a milestone the user sets is theirs, not rescaled.
    assert space.build_config(TrainJobConfig, {}, {"train.epochs": 20}).schedule.milestones == [10, 16]
    mine = {**space.demo, "schedule.type": "cosine", "schedule.milestones": [4, 6]}
    assert space.build_config(TrainJobConfig, {}, mine).schedule.milestones == [4, 6]


def test_a_space_whose_milestones_do_not_fit_its_own_run_is_refused_on_load(tmp_path):
    text = (REPO / "search_spaces/fight.yaml").read_text().replace("[20, 26]]", "[20, 27]]")
    assert "[20, 27]" in text
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs/fight_stable.yaml").write_text((REPO / "configs/fight_stable.yaml").read_text())
    (tmp_path / "spaces").mkdir()
    (tmp_path / "spaces/fight.yaml").write_text(text)
    with pytest.raises(SearchSpaceError, match=r"params.schedule.milestones: value '\[20, 27\]' gives a config"):
        load_search_space(tmp_path / "spaces/fight.yaml", TrainJobConfig, job=JOB, metrics=METRICS)


@pytest.mark.parametrize("name", SPACES)
def test_sgd_trials_search_an_sgd_lr_range_and_adamw_trials_their_own(name):
    space = _space(name)
    seen = set()
    for trial in _sample(space, 60):
        p = trial.params
        cfg = space.build_config(TrainJobConfig, p)
        seen.add(cfg.optim.type)
        # one lr parameter per trial, the one of its optimizer (Optuna models each range on its own)
        assert ("optim.lr" in p) == (cfg.optim.type == "adamw") and ("optim.lr@sgd" in p) == (cfg.optim.type == "sgd")
        if cfg.optim.type == "sgd":
            assert cfg.optim.lr == p["optim.lr@sgd"] and 1e-3 <= cfg.optim.lr <= 1e-1
        else:
            assert cfg.optim.lr == p["optim.lr"] and 1e-5 <= cfg.optim.lr <= 1e-3
    assert seen == {"adamw", "sgd"}
    sgd = space.params["optim.lr@sgd"]
    assert sgd.low <= 0.01 <= sgd.high and sgd.when == {"optim.type": "sgd"}  # the guide's SGD lr is inside
    (point,) = space.start_points()  # the preset (AdamW, lr 1e-4) is still the first trial, unchanged
    assert space.build_config(TrainJobConfig, point) == TrainJobConfig.model_validate(space.base)


@pytest.mark.parametrize("name", SPACES)
def test_cosine_trials_warm_up_five_epochs_then_t_max_25(name):
    space = _space(name)
    point = {k: v for k, v in space.start_points()[0].items() if k not in ("schedule.milestones", "schedule.gamma")}
    cosine = {**point, "schedule.type": "cosine", "schedule.eta_min": 1e-8, "schedule.warmup_epochs": 5}
    cfg = space.build_config(TrainJobConfig, cosine)
    assert (cfg.schedule.warmup_epochs, cfg.cosine_t_max, cfg.train.epochs) == (5, 25, 30)  # the guide's cosine
    demo = space.build_config(TrainJobConfig, cosine, space.demo)
    assert (demo.schedule.warmup_epochs, demo.cosine_t_max, demo.train.epochs) == (2, 8, 10)  # scaled, inside
    for trial in _sample(space, 30):  # sampled: exactly the cosine trials carry the warmup
        assert ("schedule.warmup_epochs" in trial.params) == (trial.params["schedule.type"] == "cosine")


def test_two_distributions_of_one_field_must_exclude_each_other(tmp_path):
    (tmp_path / "base.yaml").write_text("model: {num_classes: 2}\n")
    (tmp_path / "space.yaml").write_text(
        "job: stgcn\nbase_config: base.yaml\nmetric: val/acc_top1\nparams:\n"
        "  optim.type: {type: choice, values: [adamw, sgd]}\n"
        "  optim.lr: {type: loguniform, low: 1.0e-5, high: 1.0e-3}\n"
        "  optim.lr@sgd: {type: loguniform, low: 1.0e-3, high: 1.0e-1, when: {optim.type: sgd}}\n")
    with pytest.raises(SearchSpaceError, match=r"params.optim.lr@sgd: optim.lr tunes optim.lr too"):
        load_search_space(tmp_path / "space.yaml", TrainJobConfig, job=JOB, metrics=METRICS)


def test_test_after_train_says_which_clips_it_tests_with():
    text = TrainConfig.model_fields["test_after_train"].description
    assert "multi-clip" not in text and "pipeline.test_num_clips" in text  # the presets' 1, shared with validation


# --- review of bfbe56b: resuming older experiments, `field@label` readers, the load checks, the demo's SGD lr ------
def _copy_space(tmp_path: Path, name: str, old: str, new: str) -> Path:
    """The shipped space `name` with `old` replaced by `new`, next to a copy of its base config."""
    text = (REPO / "search_spaces" / f"{name}.yaml").read_text()
    assert old in text
    (tmp_path / "configs").mkdir(exist_ok=True)
    base = "fight_stable" if name == "fight" else "falldown_stable"
    (tmp_path / "configs" / f"{base}.yaml").write_text((REPO / "configs" / f"{base}.yaml").read_text())
    (tmp_path / "spaces").mkdir(exist_ok=True)
    (tmp_path / "spaces" / f"{name}.yaml").write_text(text.replace(old, new))
    return tmp_path / "spaces" / f"{name}.yaml"


def _space_file(tmp_path: Path, params: str, base: str, extra: str = "") -> Path:
    (tmp_path / "base.yaml").write_text(base)
    (tmp_path / "space.yaml").write_text("job: stgcn\nbase_config: base.yaml\nmetric: val/acc_top1\nparams:\n"
                                         + params + extra)
    return tmp_path / "space.yaml"


def test_an_experiment_recorded_before_counted_after_existed_resumes(tmp_path):
    from recognizer_core.config import ConfigError
    from recognizer_core.tune.tuner import REQUEST_FILE, TuneOptions, check_resumable, request_record

    params = ("  model.dropout: {type: uniform, low: 0.1, high: 0.7}\n"
              "  optim.lr: {type: loguniform, low: 1.0e-5, high: 1.0e-3}\n")
    space = load_search_space(_space_file(tmp_path, params, (REPO / "configs/fight_stable.yaml").read_text()),
                              TrainJobConfig, job=JOB)
    opts = TuneOptions(name="exp", storage_path=str(tmp_path))
    # What the code before bfbe56b wrote for this same space: the same dump without the newer key.
    old = request_record(space, {}, TrainJobConfig, opts)
    for p in old["space"]["params"].values():
        assert p.pop("counted_after") is None
    (tmp_path / "exp").mkdir()
    (tmp_path / "exp" / REQUEST_FILE).write_text(json.dumps(old))
    assert check_resumable(space, TrainJobConfig, opts) is True
    # a real change of the space is still refused
    old["space"]["params"]["model.dropout"]["high"] = 0.5
    (tmp_path / "exp" / REQUEST_FILE).write_text(json.dumps(old))
    with pytest.raises(ConfigError, match=r"changed: space\.params\.model\.dropout\)"):  # named by parameter
        check_resumable(space, TrainJobConfig, opts)


@pytest.mark.parametrize("name", SPACES)
def test_a_space_may_tune_the_warmup_next_to_counted_after_milestones(tmp_path, name):
    # the warmup for both schedules ([3, 5] of 30 epochs): with 5, the preset's milestones [15, 25] are bounded
    # to [15, 24] in the trial, as in the load check (before: refused, their 25 checked unbounded)
    path = _copy_space(tmp_path, name, "values: [5], when: {schedule.type: cosine}, epochs_of: 30",
                       "values: [3, 5], epochs_of: 30")
    space = load_search_space(path, TrainJobConfig, job=JOB, metrics=METRICS)
    point = {**space.start_points()[0], "schedule.warmup_epochs": 5}
    for label in space.params["schedule.milestones"].labels():
        cfg = space.build_config(TrainJobConfig, {**point, "schedule.milestones": label})
        assert cfg.late_milestones_note() is None and len(_drops(cfg)) == 2, label


def test_field_at_label_parameters_are_read_as_their_field(tmp_path):
    from recognizer_core.tune.tuner import longest_schedule, schedule_of

    base = (REPO / "configs/fight_demo.yaml").read_text()
    path = _space_file(tmp_path, "  optim.type: {type: choice, values: [adamw, sgd]}\n"
                       "  train.epochs: {type: choice, values: [10, 12], when: {optim.type: adamw}}\n"
                       "  train.epochs@sgd: {type: choice, values: [40], when: {optim.type: sgd}}\n", base)
    space = load_search_space(path, TrainJobConfig, job=JOB, metrics=METRICS)
    sgd = space.build_config(TrainJobConfig, {"optim.type": "sgd", "train.epochs@sgd": 40})
    # ASHA's max_t: the SGD trials' 40 epochs (before: the base's 10, so they were stopped early)
    longest = longest_schedule(space, TrainJobConfig, {}, space.fix_overrides(TrainJobConfig, {}))
    assert longest == schedule_of(sgd) and len(longest) == 40
    # a `when` on a field that a `field@label` parameter sets: loads, and SGD trials sample it (before: refused)
    when = ("  optim.type: {type: choice, values: [adamw, sgd]}\n"
            "  schedule.type: {type: choice, values: [multistep], when: {optim.type: adamw}}\n"
            "  schedule.type@sgd: {type: choice, values: [cosine], when: {optim.type: sgd}}\n"
            "  schedule.eta_min: {type: loguniform, low: 1.0e-9, high: 1.0e-7, when: {schedule.type: %s}}\n")
    fight = (REPO / "configs/fight_stable.yaml").read_text()
    space = load_search_space(_space_file(tmp_path, when % "cosine", fight), TrainJobConfig, job=JOB)
    for trial in _sample(space, 8):
        assert ("schedule.eta_min" in trial.params) == (trial.params["optim.type"] == "sgd")
    with pytest.raises(SearchSpaceError, match=r"when.schedule.type: \['constant'\] never happens \(schedule.type "
                                               r"is one of \['multistep', 'cosine'\]\)"):
        load_search_space(_space_file(tmp_path, when % "constant", fight), TrainJobConfig, job=JOB)
    # the parameter's name in a `when` never matched (suggest records fields): one line naming the field
    named = when.replace("when: {schedule.type: %s}", "when: {schedule.type@sgd: cosine}")
    with pytest.raises(SearchSpaceError, match=r"params.schedule.eta_min.when.schedule.type@sgd: a condition reads "
                                               r"a config field: write schedule.type"):
        load_search_space(_space_file(tmp_path, named, fight), TrainJobConfig, job=JOB)


def test_late_milestones_of_the_starting_config_are_named_once(tmp_path):
    params = ("  model.dropout: {type: uniform, low: 0.1, high: 0.7}\n"
              "  model.base_channels: {type: choice, values: [32, 64]}\n")
    short = "model: {num_classes: 2}\ntrain: {class_weight: [1.0, 1.0], epochs: 10}\n"  # default milestones [15, 25]
    with pytest.raises(SearchSpaceError) as err:
        load_search_space(_space_file(tmp_path, params, short), TrainJobConfig, job=JOB)
    lines = str(err.value).splitlines()[1:]
    assert len(lines) == 1 and lines[0].startswith("  base_config: schedule.milestones=[15, 25]"), lines
    # the demo's shorter run: one `demo:` line (its trials), not one per parameter and value
    full = "model: {num_classes: 2}\ntrain: {class_weight: [1.0, 1.0], epochs: 30}\n"
    with pytest.raises(SearchSpaceError) as err:
        load_search_space(_space_file(tmp_path, params, full, "demo: {train.epochs: 10}\n"), TrainJobConfig, job=JOB)
    lines = str(err.value).splitlines()[1:]
    assert len(lines) == 1 and lines[0].startswith("  demo: with the demo overrides, schedule.milestones="), lines
    # a parameter that moves the schedule still has its own line
    epochs = params + "  train.epochs: {type: choice, values: [10, 30]}\n"
    with pytest.raises(SearchSpaceError) as err:
        load_search_space(_space_file(tmp_path, epochs, full), TrainJobConfig, job=JOB)
    lines = str(err.value).splitlines()[1:]
    assert len(lines) == 1 and lines[0].startswith("  params.train.epochs: value 10 gives a config the job "
                                                   "rejects: schedule.milestones=[15, 25]"), lines


@pytest.mark.parametrize("name", SPACES)
def test_demo_sgd_trials_train_at_a_sane_lr(name):
    from recognizer_core.train.stgcn.optim import scaled_lr

    space = _space(name)
    batches = space.params["train.batch_size"].values

    def trained(params: dict, extra) -> list[float]:
        cfgs = [space.build_config(TrainJobConfig, {**params, "train.batch_size": b}, extra) for b in batches]
        return [scaled_lr(c.optim, c.scaling.num_workers, c.train.batch_size) for c in cfgs]
    sgd = space.params["optim.lr@sgd"]
    for extra in (None, space.demo):  # the real search and the demo: mmaction2's 0.1 at batch 128 at most
        lrs = [lr for v in (sgd.low, sgd.high) for lr in trained({"optim.type": "sgd", "optim.lr@sgd": v}, extra)]
        assert min(lrs) == pytest.approx(1.25e-4) and max(lrs) == pytest.approx(0.05), (extra, lrs)  # before: 1.6
    # AdamW's demo trials keep their few-step boost (x4 .. x16)
    adamw = trained({"optim.type": "adamw", "optim.lr": 1e-3}, space.demo)
    assert (min(adamw), max(adamw)) == (pytest.approx(4e-3), pytest.approx(1.6e-2))
