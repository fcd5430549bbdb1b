"""The load-time checks of a search space (search_space.load_search_space): every parameter names a config field,
every candidate value (range ends, each choice with its bundle) gives a config the job accepts and whose schedule
acts inside the run, conditions name parameters that exist, two parameters of one field never both apply, and the
start points are points of the space."""
from __future__ import annotations

import copy
from typing import Any

from pydantic import BaseModel

from recognizer_core.config import ConfigError, validate_config
from recognizer_core.tune.fields import check_field, get_dotted, set_dotted
from recognizer_core.tune.search_space import (Param, SearchSpace, _label, _wanted, field_of, is_bundle_name)


def check_params(space: SearchSpace, config_cls: type[BaseModel]) -> list[str]:
    """Every problem of a parsed space against its job's config class, one line each (empty when it is valid)."""
    problems: list[str] = []
    seen: dict[str, Param] = {}
    for name, p in space.params.items():
        where = f"params.{name}"
        if is_bundle_name(name):
            if not p.sets:
                problems.append(f"{where}: a name without dots is a bundle and needs `sets`; "
                                f"to tune a field, use its dotted path (e.g. model.{name})")
        elif (why := check_field(config_cls, field_of(name))) is not None:
            problems.append(f"{where}: {why}")
            continue
        if p.counted_after and (why := check_field(config_cls, p.counted_after)) is not None:
            problems.append(f"{where}.counted_after: {why}")
        for other in [n for n in seen if field_of(n) == field_of(name) and not _exclusive(p, seen[n])]:
            problems.append(f"{where}: {other} tunes {field_of(name)} too; give both a `when` on one field with "
                            "different values, so that no trial has both")
        for label, fields in (p.sets or {}).items():
            for key in fields:
                if (why := check_field(config_cls, key)) is not None:
                    problems.append(f"{where}.sets.{label}.{key}: {why}")
        for key, want in (p.when or {}).items():
            setters = [n for n in seen if n == key or (field_of(n) == key if not is_bundle_name(n) else
                                                      any(key in fields for fields in (seen[n].sets or {}).values()))]
            if "@" in key:  # suggest() records the field a parameter sets, so this condition never held
                problems.append(f"{where}.when.{key}: a condition reads a config field: write "
                                f"{field_of(key)} (the field {key} sets)")
            elif setters:
                allowed = _values_of(space, key, setters)
                wanted = want if isinstance(want, list) else [want]
                bad = [w for w in wanted if allowed is not None and _label(w) not in allowed]
                if bad:
                    problems.append(f"{where}.when.{key}: {bad} never happens ({key} is one of {allowed})")
            elif any(n == key or field_of(n) == key for n in space.params):
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
    bases = {"": {}}
    if space.demo:
        bases[" (with the demo overrides)"] = space.demo
    # The starting configs (as trials start: epoch-valued base fields scaled to the demo's epochs), each named once:
    # late milestones there would otherwise repeat on every parameter's every value, each blamed for them.
    late_in: dict[str, str | None] = {}
    for suffix, extra in bases.items():
        where = "demo" if extra else "base_config"
        try:
            cfg = validate_config(config_cls, space.config_dict({}, extra), "base_config + demo" if extra else
                                  space.base_config)
        except (ConfigError, KeyError) as err:
            return [f"{where}: {_reason(err)}"]
        late_in[suffix] = _late(cfg)
        if late_in[suffix] and (not extra or late_in[suffix] != late_in[""]):
            problems.append(f"{where}: {'with the demo overrides, ' if extra else ''}{late_in[suffix]}")
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
                overrides[field_of(name)] = value
            for suffix, extra in bases.items():
                data, given = copy.deepcopy(space.base), {**extra, **overrides}
                try:
                    for k, v in given.items():
                        set_dotted(data, k, v)
                    cfg = validate_config(config_cls, space._scale(data, given, [name], as_written=True), "config")
                    late = _late(cfg)  # loads, but never decays the lr; the starting config's own note is named above
                    if late and late != late_in[suffix]:
                        raise ConfigError(late)
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
                chosen[field_of(name)] = point[name]
                if p.sets:
                    chosen.update(p.sets.get(str(_label(point[name])), {}))
        if not bad:
            try:
                space.build_config(config_cls, {k: _label(v) for k, v in point.items()})
            except (ConfigError, KeyError) as err:
                problems.append(f"{where}: gives a config the job rejects: {_reason(err)}")
    return problems


def _late(cfg: BaseModel) -> str | None:
    """The config's line about milestones after its last epoch (a job without such a check: None)."""
    return getattr(cfg, "late_milestones_note", lambda: None)()


def _values_of(space: SearchSpace, key: str, setters: list[str]) -> list[Any] | None:
    """The labels field (or bundle) `key` can have when a later `when` reads it, given the parameters above that set
    it (`key`, `key@label`, bundles): their choices, plus the starting config's value (base, base + demo) unless one
    of them sets it in every trial. None (anything) when a range sets it."""
    values: list[Any] = []
    always = False
    for n in setters:
        p = space.params[n]
        if n == key and is_bundle_name(n):
            return p.labels()
        if not is_bundle_name(n):
            if p.type != "choice":
                return None
            values += p.labels()
            always = always or not p.when
        else:
            # a bundle setting the field: the values its labels give it
            given = [fields[key] for fields in (p.sets or {}).values() if key in fields]
            values += [_label(v) for v in given]
            always = always or (not p.when and len(given) == len(p.labels()))
    if not always:
        values += [_label(get_dotted(space.fixed, key, None)),
                   _label(space.demo.get(key, get_dotted(space.fixed, key, None)))]
    return list(dict.fromkeys(values))


def _exclusive(a: Param, b: Param) -> bool:
    """Whether no trial activates both: their `when`s want disjoint values of a shared field."""
    shared = (a.when or {}).keys() & (b.when or {}).keys()
    return any(not set(_wanted(a.when[k])) & set(_wanted(b.when[k])) for k in shared)


def _reason(err: Exception) -> str:
    text = str(err.args[0]) if isinstance(err, KeyError) else str(err)
    return text.replace("\n", "\n    ")
