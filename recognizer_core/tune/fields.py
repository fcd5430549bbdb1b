"""Dotted config paths (`model.dropout`, `train.class_weight[1]`): read/write them in nested dicts, and check
them against a pydantic config class (for error messages that name the field and suggest the right one)."""
from __future__ import annotations

import difflib
import types
import typing
from typing import Any

from pydantic import BaseModel

from recognizer_core.config import get_dotted, set_dotted, split_dotted  # noqa: F401  (get/set re-exported)


def _unwrap(annotation: Any) -> Any:
    """Optional[X] / X | None -> X (the model or list inside)."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def field_names(cls: type[BaseModel], prefix: str = "") -> list[str]:
    names = []
    for name, f in cls.model_fields.items():
        ann = _unwrap(f.annotation)
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            names.extend(field_names(ann, f"{prefix}{name}."))
        else:
            names.append(f"{prefix}{name}")
    return names


def check_field(cls: type[BaseModel], key: str) -> str | None:
    """None if `key` names a leaf field of `cls` (an [index] needs a list field), else the reason."""
    try:
        parts = split_dotted(key)
    except KeyError as err:
        return str(err.args[0])
    node: Any = cls
    for i, (name, index) in enumerate(parts):
        fields = node.model_fields if isinstance(node, type) and issubclass(node, BaseModel) else {}
        if name not in fields:
            close = difflib.get_close_matches(key.split("[")[0], field_names(cls), n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            return f"not a field of {cls.__name__}{hint}"
        node = _unwrap(fields[name].annotation)
        if index is not None and typing.get_origin(node) is not list:
            return f"{name} is not a list, so [{index}] cannot index it"
        last = i == len(parts) - 1
        if last and isinstance(node, type) and issubclass(node, BaseModel):
            return f"{key} is a section; name one of its fields ({', '.join(node.model_fields)})"
    return None
