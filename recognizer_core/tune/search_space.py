"""Search-space YAML (`search_spaces/*.yaml`) -> an Optuna define-by-run space over a job's typed config.

A space names config fields with the same dotted paths as `--set` (plus `[i]` for one list element) and gives
each a distribution. Everything is checked on load against the job's config class: unknown fields, bad ranges,
values the config itself rejects, conditions on parameters that do not exist. Errors name the file and the
parameter. See search_spaces/README.md for the format.
"""
from __future__ import annotations

import contextlib
import copy
import json
import math
import typing
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, Field, ValidationError, model_validator

from recognizer_core.config import ConfigError, StrictModel, read_yaml, validate_config
from recognizer_core.tune.fields import check_field, get_dotted, set_dotted

Scalar = (str, int, float, bool, type(None))


class SearchSpaceError(ConfigError):
    """A search-space file that cannot be used; the message names the file and the parameter."""


class Param(StrictModel):
    """One tuned parameter: a distribution, optionally active only `when` other values match."""

    type: Literal["uniform", "loguniform", "int", "choice"]
    low: float | None = None
    high: float | None = None
    step: float | None = Field(None, gt=0)
    log: bool = False
    values: list[Any] | None = None
    sets: dict[Annotated[str, BeforeValidator(str)], dict[str, Any]] | None = None  # YAML's int keys as text
    when: dict[str, Any] | None = None
    epochs_of: int | None = Field(None, ge=1, description="the values are epochs of a run this many epochs "
                                  "long (e.g. milestones of a 30-epoch preset): each trial gets them scaled to "
                                  "its own epochs, so a shorter run (the demo) keeps the schedule's shape")

    @model_validator(mode="after")
    def _consistent(self) -> "Param":
        numeric = self.type in ("uniform", "loguniform", "int")
        if numeric:
            if self.low is None or self.high is None:
                raise ValueError(f"type {self.type} needs low and high")
            if not self.low < self.high:
                raise ValueError(f"low ({self.low}) must be below high ({self.high})")
            if self.values is not None or self.sets is not None:
                raise ValueError(f"values/sets belong to type choice, not {self.type}")
            if (self.type == "loguniform" or self.log) and self.low <= 0:
                raise ValueError(f"a log-scale range needs low > 0, got {self.low}")
            if self.type == "loguniform" and self.step is not None:
                raise ValueError("loguniform takes no step (Optuna cannot combine log and step)")
            if self.type == "int":
                if self.low != int(self.low) or self.high != int(self.high) or (
                        self.step is not None and self.step != int(self.step)):
                    raise ValueError("type int needs integer low, high and step")
                if self.log and self.step not in (None, 1):
                    raise ValueError("type int with log: true takes no step")
            elif self.log:
                raise ValueError("log: true is for type int; use type loguniform for floats")
        else:
            if not self.values:
                raise ValueError("type choice needs a non-empty list of values")
            if self.low is not None or self.high is not None or self.step is not None or self.log:
                raise ValueError("type choice takes values (and sets), not low/high/step/log")
            labels = [_label(v) for v in self.values]
            if len(set(labels)) != len(labels):
                raise ValueError(f"values repeat: {self.values}")
            if self.sets is not None:
                if set(self.sets) != {str(x) for x in labels}:
                    raise ValueError(f"sets must have exactly one entry per value {labels}, got {list(self.sets)}")
        return self

    def labels(self) -> list[Any]:
        return [_label(v) for v in self.values or []]

    def candidates(self) -> list[tuple[str, Any]]:
        """Values worth validating against the config: the range ends, or every choice."""
        if self.type == "choice":
            return [(f"value {_label(v)!r}", v) for v in self.values]
        if self.type == "int":
            return [("low", int(self.low)), ("high", int(self.high))]
        # and a value between them: 16.0 and 64.0 pass an int field, every sampled 42.3 then failed its trial
        inside = self.low + self.step if self.step else math.nextafter(self.low, self.high)
        return [("low", self.low), ("high", self.high), (f"a value inside ({inside!r})", inside)]

    def value_of(self, label: Any) -> Any:
        """Optuna only stores scalars: a choice of lists is suggested by label and mapped back here."""
        if self.type != "choice":
            return label
        for v in self.values:
            if _label(v) == label:
                return copy.deepcopy(v)
        raise KeyError(f"{label!r} is not one of {self.labels()}")


def _label(value: Any) -> Any:
    return value if isinstance(value, Scalar) else json.dumps(value)


class SearchSpace(StrictModel):
    """A parsed, validated search-space file (`load_search_space`)."""

    job: str = Field(description="which trainer the space is for (stgcn | dino_pose)")
    base_config: str = Field(description="preset YAML every trial starts from")
    metric: str = Field(description="reported metric to optimise")
    mode: Literal["max", "min"] = "max"
    description: str = ""
    params: dict[str, Param]
    demo: dict[str, Any] = Field(default_factory=dict, description="overrides applied when running on demo data")
    start_with: list[dict[str, Any]] = Field(default_factory=list, description="known configs (param -> value) "
                                             "evaluated first, e.g. the preset as a baseline")
    epochs_field: str = Field("train.epochs", description="config field holding a run's epochs (for epochs_of)")
    # Filled by the loader (not written in the YAML).
    source: str = ""
    base: dict[str, Any] = Field(default_factory=dict)
    # What `when` reads for a field no earlier parameter set: the trials' starting config, class defaults and (from
    # `fix_overrides`) the demo / --set overrides included; the raw YAML had neither, so a `when` missed them.
    fixed: dict[str, Any] = Field(default_factory=dict)

    def fix_overrides(self, config_cls: type[BaseModel], extra: dict[str, Any] | None = None) -> BaseModel:
        """The trials' starting config (base + class defaults + `extra`), kept for `when`; returned."""
        cfg = self.build_config(config_cls, {}, extra)
        self.fixed = cfg.model_dump(mode="json")
        return cfg

    @model_validator(mode="after")
    def _start_numbers(self) -> "SearchSpace":
        # YAML 1.1 reads 1e-4 (no dot) as text: a start point's number for a numeric parameter is a number
        for point in self.start_with:
            for name, value in point.items():
                p = self.params.get(name)
                if p is not None and p.type != "choice" and isinstance(value, str):
                    with contextlib.suppress(ValueError):  # not a number: left for the range check to name
                        point[name] = int(float(value)) if p.type == "int" and float(value).is_integer() \
                            else float(value)
        return self

    # --- the Optuna define-by-run function -------------------------------------------------------------------
    def suggest(self, trial) -> None:
        """Define-by-run: suggest each active parameter, in file order (a `when` sees earlier choices)."""
        chosen: dict[str, Any] = {}
        for name, p in self.params.items():
            if p.when and not self._active(p.when, chosen):
                continue
            if p.type == "choice":
                label = trial.suggest_categorical(name, p.labels())
                value = p.value_of(label)
                if p.sets:
                    chosen.update(p.sets[str(label)])
            elif p.type == "int":
                value = trial.suggest_int(name, int(p.low), int(p.high), step=int(p.step or 1), log=p.log)
            else:
                value = trial.suggest_float(name, p.low, p.high, step=p.step, log=p.type == "loguniform")
            chosen[name] = value
        return None

    def _active(self, when: dict[str, Any], chosen: dict[str, Any]) -> bool:
        for key, want in when.items():
            have = chosen[key] if key in chosen else get_dotted(self.fixed or self.base, key, default=None)
            wanted = want if isinstance(want, list) else [want]
            if _label(have) not in [_label(w) for w in wanted]:
                return False
        return True

    # --- trial params -> config ------------------------------------------------------------------------------
    def overrides(self, params: dict[str, Any]) -> dict[str, Any]:
        """Sampled params (Optuna labels, as in a Tune trial config) -> dotted config overrides."""
        out: dict[str, Any] = {}
        for name, label in params.items():
            if name not in self.params:
                raise SearchSpaceError(f"{self.source}: trial parameter {name!r} is not in this space "
                                       f"(params: {list(self.params)})")
            p = self.params[name]
            value = p.value_of(label)
            if p.sets:
                out.update(copy.deepcopy(p.sets[str(_label(value))]))
                if not is_bundle_name(name):
                    out[name] = value
            else:
                out[name] = value
        return out

    def start_points(self) -> list[dict[str, Any]]:
        """`start_with` as Optuna sees parameters (choices by label), for the searcher to enqueue."""
        return [{k: (_label(v) if self.params[k].type == "choice" else v) for k, v in point.items()}
                for point in self.start_with]

    def config_dict(self, params: dict[str, Any], extra: dict[str, Any] | None = None) -> dict:
        data = copy.deepcopy(self.base)
        for key, value in {**(extra or {}), **self.overrides(params)}.items():
            set_dotted(data, key, value)
        epochs = get_dotted(data, self.epochs_field, default=None)
        for name, p in self.params.items():
            if p.epochs_of and name in params and isinstance(epochs, int) and epochs != p.epochs_of:
                set_dotted(data, name, scale_epochs(get_dotted(data, name), p.epochs_of, epochs))
        return data

    def build_config(self, config_cls: type[BaseModel], params: dict[str, Any],
                     extra: dict[str, Any] | None = None) -> BaseModel:
        """The full job config of one trial: base preset + `extra` overrides (e.g. demo budget) + params."""
        shown = ", ".join(f"{k}={v}" for k, v in params.items())
        return validate_config(config_cls, self.config_dict(params, extra),
                               f"{self.base_config} + trial params ({shown})")


def scale_epochs(value: Any, epochs_of: int, epochs: int) -> Any:
    """Epoch numbers meant for an `epochs_of`-epoch run, rescaled to `epochs` (at least 1, strictly ascending,
    below `epochs` where there is room): milestones [15, 25] of 30 epochs become [5, 8] in a 10-epoch run."""
    if isinstance(value, list):
        out: list[int] = []
        for v in value:
            x = max(1, round(v * epochs / epochs_of))
            out.append(max(x, out[-1] + 1) if out else x)
        return out
    return max(1, round(value * epochs / epochs_of))


def is_bundle_name(name: str) -> bool:
    """A parameter without dots (e.g. `depth`) names a bundle of fields, not a config field."""
    return "." not in name


# --- loading ------------------------------------------------------------------------------------------------
def _resolve_base(path: Path, base: str) -> Path:
    p = Path(base)
    if p.is_absolute():
        return p
    # The space file's folder, then its parent (the repository root for files in search_spaces/), then cwd.
    for root in (path.parent, path.parent.parent, Path.cwd()):
        if (root / p).is_file():
            return (root / p).resolve()
    return (path.parent.parent / p).resolve()


def load_search_space(path: str | Path, config_cls: type[BaseModel], *, job: str | None = None,
                      metrics: typing.Iterable[str] | None = None) -> SearchSpace:
    """Parse and validate `path` for a job whose config class is `config_cls`.

    `job`: the trainer this space must be for; `metrics`: the metric names that job reports.
    """
    path = Path(path)
    src = str(path)
    data = read_yaml(path)
    try:
        space = SearchSpace.model_validate({k: v for k, v in data.items() if k not in ("source", "base")}
                                           | {"source": src})
    except ValidationError as err:
        lines = [f"{src}: invalid search space ({err.error_count()} problem(s))"]
        for e in err.errors():
            loc = ".".join(str(x) for x in e["loc"] if x not in ("function-after[_consistent()]",))
            msg = "unknown key (typo?)" if e["type"] == "extra_forbidden" else e["msg"]
            lines.append(f"  {loc}: {msg.removeprefix('Value error, ')}")
        raise SearchSpaceError("\n".join(lines)) from None
    problems: list[str] = []
    if job is not None and space.job != job:
        problems.append(f"job: this space is for {space.job!r}, but this script tunes {job!r}")
    metrics = list(metrics or [])
    if metrics and space.metric not in metrics:
        problems.append(f"metric: {space.metric!r} is not reported by the {job or 'job'} trainer "
                        f"(one of {metrics})")
    base_path = _resolve_base(path, space.base_config)
    try:
        space.base = read_yaml(base_path)
        space.fixed = validate_config(config_cls, space.base, str(base_path)).model_dump(mode="json")
    except ConfigError as err:
        raise SearchSpaceError(f"{src}: base_config: {err}") from None
    problems += _check_params(space, config_cls)
    if problems:
        raise SearchSpaceError(f"{src}: invalid search space\n" + "\n".join(f"  {p}" for p in problems))
    return space


def _check_params(space: SearchSpace, config_cls: type[BaseModel]) -> list[str]:
    problems: list[str] = []
    seen: dict[str, Param] = {}
    for name, p in space.params.items():
        where = f"params.{name}"
        if is_bundle_name(name):
            if not p.sets:
                problems.append(f"{where}: a name without dots is a bundle and needs `sets`; "
                                f"to tune a field, use its dotted path (e.g. model.{name})")
        elif (why := check_field(config_cls, name)) is not None:
            problems.append(f"{where}: {why}")
            continue
        for label, fields in (p.sets or {}).items():
            for key in fields:
                if (why := check_field(config_cls, key)) is not None:
                    problems.append(f"{where}.sets.{label}.{key}: {why}")
        for key, want in (p.when or {}).items():
            if key in seen:
                allowed = seen[key].labels() if seen[key].type == "choice" else None
                wanted = want if isinstance(want, list) else [want]
                bad = [w for w in wanted if allowed is not None and _label(w) not in allowed]
                if bad:
                    problems.append(f"{where}.when.{key}: {bad} never happens ({key} is one of {allowed})")
            elif key in space.params:
                problems.append(f"{where}.when.{key}: {key} is tuned after {name}; list it first")
            elif is_bundle_name(key) or (why := check_field(config_cls, key)) is not None:
                problems.append(f"{where}.when.{key}: not a field of {config_cls.__name__} "
                                "nor a parameter listed above")
        seen[name] = p
    for key in space.demo:
        if (why := check_field(config_cls, key)) is not None:
            problems.append(f"demo.{key}: {why}")
    if problems:
        return problems
    bases = {"": space.base}
    if space.demo:
        bases[" (with the demo overrides)"] = copy.deepcopy(space.base)
        try:
            for k, v in space.demo.items():
                set_dotted(bases[" (with the demo overrides)"], k, v)
            validate_config(config_cls, bases[" (with the demo overrides)"], "base_config + demo")
        except (ConfigError, KeyError) as err:
            return [f"demo: {_reason(err)}"]
    # Each candidate value (range ends, every choice with its bundle) must give a config the job accepts.
    for name, p in space.params.items():
        fixed: dict[str, Any] = {}
        for k, v in (p.when or {}).items():
            v = v[0] if isinstance(v, list) else v
            if k in space.params and space.params[k].sets:
                fixed.update(space.params[k].sets[str(_label(v))])
            if not is_bundle_name(k):
                fixed[k] = v
        for what, value in p.candidates():
            overrides = dict(fixed)
            if p.sets:
                overrides.update(p.sets[str(_label(value))])
            if not is_bundle_name(name):
                overrides[name] = value
            for suffix, base in bases.items():
                data = copy.deepcopy(base)
                try:
                    for k, v in overrides.items():
                        set_dotted(data, k, v)
                    validate_config(config_cls, data, "config")
                except (ConfigError, KeyError) as err:
                    problems.append(f"params.{name}: {what} gives a config the job rejects{suffix}: "
                                    f"{_reason(err)}")
                    break
    problems += _check_start_points(space, config_cls)
    return problems


def _check_start_points(space: SearchSpace, config_cls: type[BaseModel]) -> list[str]:
    problems = []
    for i, point in enumerate(space.start_with):
        where = f"start_with[{i}]"
        bad = False
        for name, value in point.items():
            p = space.params.get(name)
            if p is None:
                problems.append(f"{where}.{name}: not a parameter of this space")
                bad = True
            elif p.type == "choice" and _label(value) not in p.labels():
                problems.append(f"{where}.{name}: {value!r} is not one of {p.values}")
                bad = True
            elif p.type != "choice" and not (isinstance(value, (int, float)) and p.low <= value <= p.high):
                problems.append(f"{where}.{name}: {value!r} is outside [{p.low:g}, {p.high:g}]")
                bad = True
        chosen: dict[str, Any] = {}
        for name, p in space.params.items():  # as `suggest` walks them: a point must not set inactive ones
            if p.when and not space._active(p.when, chosen):
                if name in point:
                    problems.append(f"{where}.{name}: inactive in this point (its condition {p.when} is not met)")
                    bad = True
                continue
            if name in point and not bad:
                chosen[name] = point[name]
                if p.sets:
                    chosen.update(p.sets.get(str(_label(point[name])), {}))
        if not bad:
            try:
                space.build_config(config_cls, {k: _label(v) for k, v in point.items()})
            except (ConfigError, KeyError) as err:
                problems.append(f"{where}: gives a config the job rejects: {_reason(err)}")
    return problems


def _reason(err: Exception) -> str:
    text = str(err.args[0]) if isinstance(err, KeyError) else str(err)
    return text.replace("\n", "\n    ")


def optuna_distribution(p: Param):
    """The Optuna distribution `SearchSpace.suggest` samples `p` from (for rebuilding a study from results)."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    if p.type == "choice":
        return CategoricalDistribution(p.labels())
    if p.type == "int":
        return IntDistribution(int(p.low), int(p.high), step=int(p.step or 1), log=p.log)
    return FloatDistribution(p.low, p.high, step=p.step, log=p.type == "loguniform")
