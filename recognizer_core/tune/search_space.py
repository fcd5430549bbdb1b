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
from typing import Annotated, Any, Iterable, Literal

from pydantic import BaseModel, BeforeValidator, Field, ValidationError, model_validator

from recognizer_core.config import ConfigError, StrictModel, read_yaml, validate_config
from recognizer_core.tune.fields import get_dotted, set_dotted

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
    counted_after: str | None = Field(None, description="with epochs_of: the field of epochs the values count from "
                                      "(milestones: schedule.warmup_epochs); they stay below epochs - ceil(it)")

    @model_validator(mode="after")
    def _consistent(self) -> "Param":
        numeric = self.type in ("uniform", "loguniform", "int")
        if self.counted_after and not self.epochs_of:
            raise ValueError("counted_after goes with epochs_of (it bounds the scaled values)")
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


def _wanted(want: Any) -> list[Any]:
    """The labels a `when` entry accepts (one value or a list)."""
    return [_label(w) for w in (want if isinstance(want, list) else [want])]


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
            chosen[field_of(name)] = value
        return None

    def _active(self, when: dict[str, Any], chosen: dict[str, Any]) -> bool:
        for key, want in when.items():
            have = chosen[key] if key in chosen else get_dotted(self.fixed or self.base, key, default=None)
            if _label(have) not in _wanted(want):
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
                out[field_of(name)] = value
        return out

    def searched_fields(self, trials: str, given: dict[str, Any] | None = None) -> dict[str, str]:
        """Config field -> what sets it in trials (params; choices whose `sets` hold it). `trials` "every" / "some":
        only the fields every trial / at least one trial sets (_trials_setting; `given`: the fixed overrides)."""
        out: dict[str, list[str]] = {}
        whens: dict[str, list[dict | None]] = {}   # the condition of each setter of a field (None: always)
        for name, p in self.params.items():
            if not is_bundle_name(name):
                out.setdefault(field_of(name), []).append(name)
                whens.setdefault(field_of(name), []).append(p.when)
            for key in dict.fromkeys(k for fields in (p.sets or {}).values() for k in fields):
                labels = [label for label, fields in p.sets.items() if key in fields]
                out.setdefault(key, []).append(f"{name}: {' / '.join(labels)}")
                whens.setdefault(key, []).append(p.when if len(labels) == len(p.values or []) else {name: labels})
        keep = ("every",) if trials == "every" else ("every", "some")
        out = {k: by for k, by in out.items() if self._trials_setting(whens[k], set(whens), given or {}) in keep}
        return {key: ("param " if len(by) == 1 else "params ") + ", ".join(by) for key, by in out.items()}

    def _trials_setting(self, whens: list[dict | None], sampled: set[str], given: dict[str, Any]) -> str:
        """Whether setters under these conditions (None: none) set their field in "every", "some" or "no" trial: a
        condition on a field no parameter sets is decided by the fixed config and `given` (`--set schedule.type=`);
        "every" also for conditions on one unconditional choice that accept all its values (`optim.lr@sgd`)."""
        left = []
        for when in whens:
            if when is None:
                return "every"
            fixed_keys = [k for k in when if k not in sampled]
            if any(str(_label(given[k] if k in given else get_dotted(self.fixed or self.base, k, default=None)))
                   not in map(str, _wanted(when[k])) for k in fixed_keys):
                continue   # never active: sets the field in no trial
            rest = {k: v for k, v in when.items() if k not in fixed_keys}
            if not rest:
                return "every"
            left.append(rest)
        keys = {k for w in left for k in w}
        choice = self.params.get(next(iter(keys))) if len(keys) == 1 and all(len(w) == 1 for w in left) else None
        if choice is None or choice.when or choice.type != "choice":
            return "some" if left else "no"
        labels = {str(_label(v)) for v in choice.values or []}   # sets' labels are text, a when's may be numbers
        return "every" if labels <= {str(label) for w in left for label in _wanted(w[next(iter(keys))])} else "some"

    def check_user_overrides(self, overrides: dict[str, Any], flag: str = "--set") -> list[str]:
        """Refuse the user's own overrides (`--set`; a demo budget yields to trials) of a field every trial sets,
        or of a part of one: the sampled value replaced it while the plan printed it as set. A section or list
        holding a searched field is kept (the sampled part goes into it), and so is a field only some trials set
        (`schedule.warmup_epochs` of cosine trials: a 3-epoch search's warm-up), with a returned note."""
        def hits_of(key: str, searched: dict[str, str]) -> list[str]:
            return [by if field == key else f"{field}: {by}" for field, by in searched.items()
                    if _overlap(key, field) and len(key) >= len(field)]

        always, sometimes = (self.searched_fields(trials, given=overrides) for trials in ("every", "some"))
        clashes = [f"{key} ({'; '.join(hits)})" for key in overrides if (hits := hits_of(key, always))]
        notes = [f"{flag} {key} holds in the trials that do not sample it ({'; '.join(hits)})"
                 for key in overrides if not hits_of(key, always) and (hits := hits_of(key, sometimes))]
        if clashes:
            one = len(clashes) == 1
            raise SearchSpaceError(f"{self.source}: {flag} {', '.join(clashes)} {'is' if one else 'are'} searched by "
                                   f"this space: a trial's sampled value replaces the {flag} one; remove "
                                   f"{'it' if one else 'them'} from {flag} or from the space")
        return notes

    def start_points(self) -> list[dict[str, Any]]:
        """`start_with` as Optuna sees parameters (choices by label), for the searcher to enqueue."""
        return [{k: (_label(v) if self.params[k].type == "choice" else v) for k, v in point.items()}
                for point in self.start_with]

    def config_dict(self, params: dict[str, Any], extra: dict[str, Any] | None = None) -> dict:
        data = copy.deepcopy(self.base)
        given = {**(extra or {}), **self.overrides(params)}
        for key, value in given.items():
            set_dotted(data, key, value)
        return self._scale(data, given, [name for name in self.params if name in params])

    def _scale(self, data: dict, given: dict[str, Any], names: Iterable[str], as_written: bool = False) -> dict:
        """`data` with the `epochs_of` values of `names` scaled to its epochs, `counted_after` ones kept inside the
        run (unscaled too, unless `as_written`: on load, a value of `names` past its own epochs_of run is the file's
        error; the base config's values that no name sets are bounded all the same, as every trial bounds them)."""
        epochs = get_dotted(data, self.epochs_field, default=None)
        if not isinstance(epochs, int):
            return data
        written = set(names) if as_written else set()
        # A `counted_after` field no param or override (`given`) sets keeps the base config's value (the milestones
        # of a cosine trial, or of the starting config the plan validates), scaled and bounded the same way.
        unset = {field_of(n): n for n, p in self.params.items() if p.counted_after and not _sets(given, field_of(n))}
        names = [*names, *unset.values()]
        for name in sorted(names, key=lambda n: bool(self.params[n].counted_after)):  # a scaled warmup first
            p = self.params[name]
            value = get_dotted(data, field_of(name), None)
            kept = name in written or not p.counted_after  # at its own run's epochs
            if value is None or not p.epochs_of or (epochs == p.epochs_of and kept):
                continue
            last = None
            if p.counted_after:  # the last value that acts: milestones count from the end of the warmup
                warmup = get_dotted(data, p.counted_after, get_dotted(self.fixed, p.counted_after, 0))
                last = epochs - math.ceil(warmup) - 1
            set_dotted(data, field_of(name), scale_epochs(value, p.epochs_of, epochs, last))
        return data

    def build_config(self, config_cls: type[BaseModel], params: dict[str, Any],
                     extra: dict[str, Any] | None = None) -> BaseModel:
        """The full job config of one trial: base preset + `extra` overrides (e.g. demo budget) + params."""
        shown = ", ".join(f"{k}={v}" for k, v in params.items())
        return validate_config(config_cls, self.config_dict(params, extra),
                               f"{self.base_config} + trial params ({shown})")


def scale_epochs(value: Any, epochs_of: int, epochs: int, last: int | None = None) -> Any:
    """Epochs of an `epochs_of`-epoch run rescaled to `epochs` (at least 1, strictly ascending): milestones [15, 25]
    of 30 epochs are [5, 8] in 10. `last`: the largest value that acts (epochs - ceil(warmup) - 1); a list is pushed
    under it from its end, dropping values below 1 (no room), so [20, 26] of 30 is [7, 8] at 10 epochs, warmup 1."""
    if not isinstance(value, list):
        x = max(1, round(value * epochs / epochs_of))
        return x if last is None else max(1, min(x, last))
    out: list[int] = []
    for v in value:
        x = max(1, round(v * epochs / epochs_of))
        out.append(max(x, out[-1] + 1) if out else x)
    if last is not None:
        for i in reversed(range(len(out))):
            out[i] = min(out[i], last if i == len(out) - 1 else out[i + 1] - 1)
        out = [x for x in out if x >= 1]
    return out


def _sets(overrides: dict[str, Any], field: str) -> bool:
    """Whether dotted `overrides` set `field` (itself, a section holding it, or one of its elements)."""
    return any(k == field or field.startswith(k + ".") or k.startswith(field + "[") for k in overrides)


def _overlap(a: str, b: str) -> bool:
    """Whether dotted paths `a` and `b` name the same value or one holds the other (`optim` / `optim.lr`,
    `train.class_weight` / `train.class_weight[1]`)."""
    short, long = sorted((a, b), key=len)
    return long == short or long.startswith((short + ".", short + "["))


def field_of(name: str) -> str:
    """A parameter's config field: `optim.lr@sgd` tunes `optim.lr` (a second distribution, under another `when`)."""
    return name.split("@", 1)[0]


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
    from recognizer_core.tune.search_space_checks import check_params

    problems += check_params(space, config_cls)
    if problems:
        raise SearchSpaceError(f"{src}: invalid search space\n" + "\n".join(f"  {p}" for p in problems))
    return space


def optuna_distribution(p: Param):
    """The Optuna distribution `SearchSpace.suggest` samples `p` from (for rebuilding a study from results)."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    if p.type == "choice":
        return CategoricalDistribution(p.labels())
    if p.type == "int":
        return IntDistribution(int(p.low), int(p.high), step=int(p.step or 1), log=p.log)
    return FloatDistribution(p.low, p.high, step=p.step, log=p.type == "loguniform")
