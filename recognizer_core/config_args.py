"""The command line every job shares: --config (a YAML preset), --set (dotted overrides) and a --help that lists
every field of the job's config with its type, default and description."""
from __future__ import annotations

import argparse
import json
import typing
from typing import Any, TypeVar

from pydantic import BaseModel

from recognizer_core.config import _model_in, load_config, resolve_repo_path

T = TypeVar("T", bound=BaseModel)


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


def _set_example(cls: type[BaseModel]) -> str:
    """A --set example naming two real number fields of this job's config (at their defaults, so it is valid)."""
    picks = []

    def walk(model: type[BaseModel], prefix: str) -> None:
        for name, field in model.model_fields.items():
            sub = _model_in(field.annotation)
            if sub is not None and sub is not model:
                walk(sub, f"{prefix}{name}.")
            elif not field.is_required():
                default = field.get_default(call_default_factory=True)
                if type(default) in (int, float) and default:
                    picks.append((f"{prefix}{name}", default))

    walk(cls, "")
    order = {"model": 0, "optim": 1, "train": 2}
    picks.sort(key=lambda kv: order.get(kv[0].split(".")[0], 3))
    return " ".join(f"--set {key}={json.dumps(value)}" for key, value in picks[:2])


def add_config_args(parser: argparse.ArgumentParser, cls: type[BaseModel], default_config: str | None = None) -> None:
    """Add --config/--set to a parser and list every field of `cls` in --help.

    The description and epilog are printed as written (RawDescriptionHelpFormatter); a relative default config
    is resolved from the repository so the job runs from any working directory.
    """
    parser.add_argument("--config", default=resolve_repo_path(default_config),
                        help="YAML config file (a preset from configs/)")
    example = _set_example(cls)
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE",
        help="dotted override of any config field listed below, repeatable" + (f", e.g. {example}" if example else ""),
    )
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = ((parser.epilog or "") + "\n\nconfig fields (set in the YAML or with --set):\n"
                     + "\n".join(describe_fields(cls)))


def config_from_args(cls: type[T], args: argparse.Namespace) -> T:
    return load_config(cls, resolve_repo_path(args.config), args.overrides)
