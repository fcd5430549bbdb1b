"""Typed job configs: YAML file + dotted command-line overrides, validated by pydantic.

One loader for every job (train, tune, extract, dino pose) so they share the override syntax (`--set
model.base_channels=96`) and the error messages (`<file>: model.base_channels: ...`). No config inheritance: a
preset is one self-contained YAML file.
"""
from __future__ import annotations

import collections.abc
import copy
import difflib
import json
import os
import re
import types
import typing
from pathlib import Path
from typing import Annotated, Any, TypeVar

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, ValidationError, ValidationInfo, field_validator

T = TypeVar("T", bound=BaseModel)
REPO_ROOT = Path(__file__).resolve().parents[1]


class ConfigError(ValueError):
    """A config that cannot be used; the message names the file and the field."""


def _arms(ann: Any) -> list[Any]:
    """The alternatives of an annotation, through Annotated / Optional / Union."""
    origin = typing.get_origin(ann)
    if origin is Annotated:
        return _arms(typing.get_args(ann)[0])
    if origin in (typing.Union, types.UnionType):
        return [a for arg in typing.get_args(ann) for a in _arms(arg)]
    return [ann]


_SEQUENCES = (list, tuple, set, frozenset, collections.abc.Sequence)


def bool_in_number_slot(ann: Any, value: Any) -> bool:
    """True if `value` holds a bool where `ann` wants a number and takes no bool (pydantic's lax mode would
    turn `true` into 1 / 1.0), looking inside lists, tuples and dicts."""
    arms = _arms(ann)
    if isinstance(value, bool):
        return bool not in arms and any(a in (int, float) for a in arms)
    if isinstance(value, (list, tuple)):
        for arm in arms:
            origin, args = typing.get_origin(arm), [a for a in typing.get_args(arm) if a is not Ellipsis]
            if origin in _SEQUENCES and args:
                if origin is tuple and Ellipsis not in typing.get_args(arm) and len(args) == len(value):
                    return any(bool_in_number_slot(a, v) for a, v in zip(args, value))
                return any(bool_in_number_slot(args[0], v) for v in value)
    if isinstance(value, dict):
        for arm in arms:
            if typing.get_origin(arm) in (dict, collections.abc.Mapping) and len(typing.get_args(arm)) == 2:
                return any(bool_in_number_slot(typing.get_args(arm)[1], v) for v in value.values())
    return False


class StrictModel(BaseModel):
    """Base of every config section: unknown keys are errors (a typo must not be silently ignored), and a
    boolean is never taken for a number (`--set model.base_channels=true` must not train 1 channel), while
    the friendly coercions stay ("64" from the command line is 64)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_as_number(cls, value: Any, info: ValidationInfo) -> Any:
        field = cls.model_fields.get(info.field_name) if info.field_name else None
        if field is not None and bool_in_number_slot(field.annotation, value):
            raise ValueError("a number is expected, not a boolean (YAML reads true/false/yes/no/on/off as booleans)")
        return value


# Names that become folders (run.name): no separators, no leading dot, so `storage_path/name` stays inside
# storage_path whatever the user types (`../../x` and `/etc/cron.d/x` are refused).
SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def check_safe_name(value: str) -> str:
    if not SAFE_NAME.fullmatch(value):   # match() let a trailing newline through ($)
        raise ValueError("must be 1-128 letters, digits, '.', '_' or '-', starting with a letter or digit "
                         "(it names a folder inside the storage path)")
    return value


SafeName = Annotated[str, AfterValidator(check_safe_name)]


def folder_inside(root: str | os.PathLike, name: str) -> str:
    """`root/name` for a run (or trial) folder, refusing a name that would leave `root`."""
    check_safe_name(name)
    root = str(root)
    if "://" in root:
        return root.rstrip("/") + "/" + name
    base = Path(root).resolve()
    path = (base / name).resolve()
    if path.parent != base:
        raise ConfigError(f"run.name={name!r}: the run folder {Path(root) / name} leads to {path}, outside "
                          f"run.storage_path={root} (a symlink?)")
    return str(Path(root) / name)


def resolve_repo_path(path: str | os.PathLike | None) -> str | None:
    """A relative path as given if it exists from the working directory, else from the repository root (so the
    jobs' default presets, `configs/...` and `search_spaces/...`, are found from any working directory)."""
    if path is None or os.path.isabs(path) or "://" in str(path) or os.path.exists(path):
        return None if path is None else str(path)
    repo_path = REPO_ROOT / path
    return str(repo_path) if repo_path.exists() else str(path)


def _parse_value(text: str, loader: type = yaml.SafeLoader) -> Any:
    # YAML scalars give the natural types: 96 -> int, 1e-4 -> float, [2, 4] -> list, true -> bool (BaseLoader: text)
    try:
        return yaml.load(text, Loader=loader)
    except yaml.YAMLError:
        return text


# Dotted config paths (`model.dropout`, `train.class_weight[1]`), shared by --set overrides and search spaces.
_INDEX = re.compile(r"^(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:\[(?P<index>\d+)\])?$")


def _dict_values(ann: Any) -> Any:
    """The value annotation of a dict field, or None for any other field."""
    arm = next((a for a in _arms(ann) if typing.get_origin(a) in (dict, collections.abc.Mapping)), None)
    return typing.get_args(arm)[1] if arm is not None and len(typing.get_args(arm)) == 2 else None


def split_dotted(key: str, cls: type[BaseModel] | None = None) -> list[tuple[str, int | None]]:
    """`a.b[2]` -> [("a", None), ("b", 2)]; KeyError naming the bad part. With the config class, the part after a
    dict field is a key of that dict, as written (`thresholds.싸움`, `thresholds.정상 상황`: class names are not
    field names); where its values are not sections, the rest of the key is (a class name may hold a '.')."""
    out: list[tuple[str, int | None]] = []
    parts, node = key.split("."), cls
    while parts:
        part = parts.pop(0)
        m = _INDEX.match(part)
        if not m:
            raise KeyError(f"{key!r}: {part!r} is not a field name (letters, digits, _; optional [index]); a "
                           f"mapping key like it goes in the value: --set '{key.rsplit('.', 1)[0]}={{{part}: ...}}'")
        out.append((m["name"], None if m["index"] is None else int(m["index"])))
        field = node.model_fields.get(m["name"]) if node is not None and m["index"] is None else None
        node, values = (_model_in(field.annotation), _dict_values(field.annotation)) if field else (None, None)
        if values is not None and parts:   # dict[str, Section]: one key, then the section's fields
            node = _model_in(values)
            out.append((parts.pop(0) if node is not None else ".".join(parts), None))
            parts = parts if node is not None else []
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


def set_dotted(data: dict, key: str, value: Any, cls: type[BaseModel] | None = None) -> None:
    parts = split_dotted(key, cls)
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


def _target_annotation(cls: type[BaseModel] | None, key: str) -> Any:
    """The annotation of the field a dotted key sets (the element type for `list[i]`), or None if unknown."""
    *path, (name, index) = split_dotted(key, cls)  # a bad key: KeyError, which the callers report
    section = _section_at(cls, tuple(p for p, _ in path)) if cls is not None else None
    field = section.model_fields.get(name) if section is not None else None
    if field is None or index is None:
        return getattr(field, "annotation", None)
    seq = next((a for a in _arms(field.annotation) if typing.get_origin(a) in _SEQUENCES), None)
    return (typing.get_args(seq) or (None,))[0] if seq is not None else None


def _parse_for(value: str, ann: Any) -> Any:
    """A --set value for a field of type `ann`. Text fields take the text as written (a quoted one as YAML reads
    it): YAML alone made `run.name=2024-05-01` a date, `pkl_dir=` None and `label_names=[No, Yes]` booleans."""
    arms = _arms(ann) if ann is not None else []
    text = value.strip()
    is_null = type(None) in arms and text in ("null", "~", "None")   # an optional field's null
    if str in arms and all(a in (str, type(None)) for a in arms):
        if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"" and isinstance(_parse_value(text), str):
            return _parse_value(text)
        return None if is_null else value
    lists = [a for a in arms if a is not type(None)]   # list[str] | None: a list's scalars are text
    if lists and all(typing.get_origin(a) in (list, tuple) and typing.get_args(a)[:1] == (str,) for a in lists):
        return None if is_null else _parse_value(value, yaml.BaseLoader)
    return _parse_value(value)


def apply_overrides(data: dict, overrides: list[str], source: str = "--set",
                    cls: type[BaseModel] | None = None) -> dict:
    """A copy of `data` with `a.b.c=value` (or `a.list[i]=value`) overrides applied: YAML values (96, 1e-4, [2, 4],
    true), except in the text fields of `cls` (_parse_for)."""
    data = copy.deepcopy(data)
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"{source}: override {item!r} must look like section.field=value")
        key, value = item.split("=", 1)
        try:
            set_dotted(data, key.strip(), _parse_for(value, _target_annotation(cls, key.strip())), cls)
        except KeyError as err:
            raise ConfigError(f"{source}: {err.args[0]}") from None
    return data


def _model_in(ann: Any) -> type[BaseModel] | None:
    for arm in _arms(ann):
        if isinstance(arm, type) and issubclass(arm, BaseModel):
            return arm
        for arg in typing.get_args(arm):  # list[Model], dict[str, Model]
            model = _model_in(arg)
            if model is not None:
                return model
    return None


def _section_at(cls: type[BaseModel], loc: tuple) -> type[BaseModel] | None:
    """The config section (model class) at a pydantic error location, or None."""
    node: type[BaseModel] | None = cls
    for part in loc:
        if isinstance(part, int) or node is None:
            continue
        field = node.model_fields.get(part)
        if field is None:
            return None
        node = _model_in(field.annotation)
    return node


def field_names(cls: type[BaseModel], prefix: str = "") -> list[str]:
    """Every dotted field name of a config class (sections and leaves)."""
    out = []
    for name, field in cls.model_fields.items():
        out.append(prefix + name)
        sub = _model_in(field.annotation)
        if sub is not None and sub is not cls:
            out.extend(field_names(sub, f"{prefix}{name}."))
    return out


def suggest_field(cls: type[BaseModel], loc: tuple) -> str:
    """' - did you mean `model.base_channels`?' for a misspelt field, or ''."""
    names = [str(p) for p in loc if not isinstance(p, int)]
    section = _section_at(cls, loc[:-1])
    prefix = ".".join(names[:-1])
    if section is not None:
        close = difflib.get_close_matches(names[-1], list(section.model_fields), n=1, cutoff=0.6)
        if close:
            return f"; did you mean `{prefix + '.' if prefix else ''}{close[0]}`?"
    # The right name in another section (`train.lr` for `optim.lr`), or a misspelt section.
    everything = field_names(cls)
    close = [n for n in everything if n.rsplit(".", 1)[-1] == names[-1]][:1]
    if not close:
        same_depth = [n for n in everything if n.count(".") == len(names) - 1]
        close = difflib.get_close_matches(".".join(names), same_depth, n=1, cutoff=0.75)
    return f"; did you mean `{close[0]}`?" if close else ""


def _format_validation_error(err: ValidationError, source: str, cls: type[BaseModel] | None = None) -> str:
    lines = [f"{source}: invalid config ({err.error_count()} problem(s))"]
    for e in err.errors():
        loc = ".".join(str(x) for x in e["loc"]) or "<root>"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown field" + ((cls and suggest_field(cls, tuple(e["loc"]))) or " (typo?)")
        given = e.get("input")
        given_s = "" if isinstance(given, dict) or e["type"] == "missing" else f" (got {given!r})"
        lines.append(f"  {loc}: {msg}{given_s}")
    return "\n".join(lines)


def validate_config(cls: type[T], data: dict, source: str = "<config>") -> T:
    try:
        return cls.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_validation_error(err, source, cls)) from None


def _yaml_problem(err: yaml.YAMLError) -> str:
    """PyYAML's multi-line message as one line: what is wrong and where."""
    mark = getattr(err, "problem_mark", None)
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    return f"{problem} at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else problem


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {_yaml_problem(err)}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    return data


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None) -> T:
    """Load `cls` from an optional YAML file plus dotted overrides; errors name file and field."""
    data = read_yaml(path) if path else {}
    source = str(path) if path else "<defaults>"
    if overrides:
        data = apply_overrides(data, overrides, cls=cls)
        source += " + --set " + " ".join(overrides)
    return validate_config(cls, data, source)


def dump_config(cfg: BaseModel, path: str | Path) -> str | Path:
    """`cfg` as YAML at a local path (a Path returned) or an s3:// / gs:// URI (returned as given), written whole
    (storage.write_text): a run folder on object storage got its config.yaml as a local folder "s3:" instead."""
    from recognizer_core.storage import is_remote, write_text  # pyarrow: only for the jobs that write configs

    write_text(path, yaml.safe_dump(json.loads(cfg.model_dump_json()), sort_keys=False))
    return str(path) if is_remote(path) else Path(path)
