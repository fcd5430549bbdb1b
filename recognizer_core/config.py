"""Typed job configs: YAML file + dotted command-line overrides, validated by pydantic.

One loader for every job (train, tune, extract, dino pose) so they share the override syntax
(`--set model.base_channels=96`) and the error messages (`<file>: model.base_channels: ...`).
No config inheritance: a preset is one self-contained YAML file.
"""
from __future__ import annotations

import argparse
import copy
import json
import re
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

T = TypeVar("T", bound=BaseModel)


class ConfigError(ValueError):
    """A config that cannot be used; the message names the file and the field."""


class StrictModel(BaseModel):
    """Base of every config section: unknown keys are errors (a typo must not be silently ignored)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())


def _parse_value(text: str) -> Any:
    # YAML scalars give the natural types: 96 -> int, 1e-4 -> float, [2, 4] -> list, true -> bool.
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


# Dotted config paths (`model.dropout`, `train.class_weight[1]`), shared by --set overrides and search spaces.
_INDEX = re.compile(r"^(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:\[(?P<index>\d+)\])?$")


def split_dotted(key: str) -> list[tuple[str, int | None]]:
    """`a.b[2]` -> [("a", None), ("b", 2)]; KeyError naming the bad part."""
    out = []
    for part in key.split("."):
        m = _INDEX.match(part)
        if not m:
            raise KeyError(f"{key!r}: {part!r} is not a field name (letters, digits, _; optional [index])")
        out.append((m["name"], None if m["index"] is None else int(m["index"])))
    return out


def get_dotted(data: dict, key: str, default: Any = KeyError) -> Any:
    node: Any = data
    try:
        for name, index in split_dotted(key):
            node = node[name]
            if index is not None:
                node = node[index]
        return node
    except (KeyError, IndexError, TypeError):
        if default is KeyError:
            raise KeyError(key) from None
        return default


def set_dotted(data: dict, key: str, value: Any) -> None:
    parts = split_dotted(key)
    node = data
    for name, index in parts[:-1]:
        if index is not None:
            raise KeyError(f"{key!r}: only the last part may have an [index]")
        child = node.get(name)
        if child is None:
            child = node[name] = {}
        if not isinstance(child, dict):
            raise KeyError(f"{key!r}: {name!r} is a value, not a section")
        node = child
    name, index = parts[-1]
    if index is None:
        node[name] = copy.deepcopy(value)
        return
    seq = node.get(name)
    if not isinstance(seq, list) or index >= len(seq):
        raise KeyError(f"{key!r}: the config's {name} is {seq!r}; an [index] needs a list with "
                       f"at least {index + 1} entries")
    seq[index] = copy.deepcopy(value)


def apply_overrides(data: dict, overrides: list[str], source: str = "--set") -> dict:
    """Return a copy of `data` with `a.b.c=value` (or `a.list[i]=value`) overrides applied."""
    data = copy.deepcopy(data)
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"{source}: override {item!r} must look like section.field=value")
        key, value = item.split("=", 1)
        try:
            set_dotted(data, key.strip(), _parse_value(value))
        except KeyError as err:
            raise ConfigError(f"{source}: {err.args[0]}") from None
    return data


def _format_validation_error(err: ValidationError, source: str) -> str:
    lines = [f"{source}: invalid config ({err.error_count()} problem(s))"]
    for e in err.errors():
        loc = ".".join(str(x) for x in e["loc"]) or "<root>"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown field (typo?)"
        given = e.get("input")
        given_s = "" if isinstance(given, dict) or e["type"] == "missing" else f" (got {given!r})"
        lines.append(f"  {loc}: {msg}{given_s}")
    return "\n".join(lines)


def validate_config(cls: type[T], data: dict, source: str = "<config>") -> T:
    try:
        return cls.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_validation_error(err, source)) from None


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    return data


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None) -> T:
    """Load `cls` from an optional YAML file plus dotted overrides; errors name file and field."""
    data = read_yaml(path) if path else {}
    source = str(path) if path else "<defaults>"
    if overrides:
        data = apply_overrides(data, overrides)
        source += " + --set " + " ".join(overrides)
    return validate_config(cls, data, source)


def dump_config(cfg: BaseModel, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(json.loads(cfg.model_dump_json()), sort_keys=False))
    return path


def _type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return " | ".join(repr(a) for a in typing.get_args(annotation))
    if origin is not None:
        args = ", ".join(_type_name(a) for a in typing.get_args(annotation))
        name = getattr(origin, "__name__", str(origin)).replace("UnionType", "Union")
        return f"{name}[{args}]"
    return getattr(annotation, "__name__", str(annotation))


def describe_fields(cls: type[BaseModel], prefix: str = "") -> list[str]:
    """One line per leaf field: dotted name, type, default, description (for --help)."""
    lines = []
    for name, field in cls.model_fields.items():
        key = f"{prefix}{name}"
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            if field.description:
                lines.append(f"{key}: {field.description}")
            lines.extend(describe_fields(ann, key + "."))
            continue
        default = "required" if field.is_required() else f"default {field.get_default(call_default_factory=True)!r}"
        desc = f"  {field.description}" if field.description else ""
        lines.append(f"  {key} ({_type_name(ann)}, {default}){desc}")
    return lines


def add_config_args(parser: argparse.ArgumentParser, cls: type[BaseModel], default_config: str | None = None) -> None:
    """Add --config/--set to a parser and list every field of `cls` in --help."""
    parser.add_argument("--config", default=default_config, help="YAML config file (a preset from configs/)")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE",
        help="dotted override, repeatable, e.g. --set model.base_channels=96 --set optim.lr=3e-4",
    )
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = ((parser.epilog or "") + "\n\nconfig fields (set in the YAML or with --set):\n"
                     + "\n".join(describe_fields(cls)))


def config_from_args(cls: type[T], args: argparse.Namespace) -> T:
    return load_config(cls, args.config, args.overrides)
