"""What a trained detector needs at recognition time, in one typed record (`ModelSpec`).

The sidecar JSON of an exported ONNX model is a ModelSpec; a run folder, a Tune summary or an mmaction2 .pth
gives the same record, built from its config (model.py). Label names, pipeline, fps and window length come
from the model and its training data, never retyped by the user.
"""
from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Literal, Sequence

from pydantic import Field, field_validator, model_validator

from recognizer_core.config import ConfigError, StrictModel, validate_config
from recognizer_core.names import nfc
from recognizer_core.skeleton.transforms import PipelineConfig

log = logging.getLogger("recognizer")
SIDECAR_FORMAT = "recognizer-model/1"
SIDECAR_VERSION = 1
# Class names taken for the background class, compared as _norm compares them (NFC, casefolded, without `_`, `-`
# and spaces: NonFight, non_fight, No-Fall, 정상 상황, ...). Extraction's default class order is the sorted folder
# names (Fight before NonFight, 싸움 before 정상), so the background cannot be assumed to be class 0.
BACKGROUND_NAMES = ("nonfight", "nofight", "nonfall", "nofall", "normal", "background", "none", "negative", "other",
                    "정상", "정상상황", "일반", "배경", "비폭력", "평상시")
# Words that make an event class per-person (a fall: per-track windows), found anywhere in the _norm'ed name
# (Falldown, fall_down, 낙상사고); Korean fall classes are commonly 낙상, 쓰러짐, 넘어짐 or 실신.
FALL_WORDS = ("fall", "낙상", "쓰러짐", "넘어짐", "실신")


def sidecar_path(onnx_path: str | Path) -> Path:
    """<model>.onnx -> <model>.json"""
    return Path(onnx_path).with_suffix(".json")


class ClassThreshold(StrictModel):
    on: float = Field(0.5, ge=0, le=1, description="an event starts when the class score reaches this")
    off: float | None = Field(None, ge=0, le=1, description="and ends when it drops below this "
                                                            "(hysteresis; default on - 0.1)")
    min_duration_s: float = Field(0.5, ge=0, description="events whose windows fired for less than this are "
                                                          "dropped")
    source: str = Field("default", description="where the threshold came from (default, config, validation)")

    @property
    def off_value(self) -> float:
        return max(0.0, self.on - 0.1) if self.off is None else min(self.off, self.on)


class ModelSpec(StrictModel):
    """Everything recognize needs besides the weights; the JSON sidecar of an exported model."""

    format: str = Field(SIDECAR_FORMAT, description="sidecar format and version (recognizer-model/<n>); a newer "
                                                    "one is refused")
    label_names: list[str] = Field(..., min_length=2, description="class names in logit order")
    background_class: int | None = Field(0, description="index of the class that never makes an event "
                                                        "(NonFight, Normal); null: every class makes events")
    model: dict = Field(default_factory=dict, description="ModelConfig of the network (for rebuilding it)")
    pipeline: PipelineConfig = Field(..., description="the training pipeline; recognize runs its test mode")
    fps: float = Field(30.0, gt=0, description="frame rate of the training clips (videos are resampled to it)")
    window_frames: int = Field(..., ge=1, description="frames per recognition window at `fps` (the median "
                                                      "training clip length)")
    window_mode: Literal["scene", "track", "both"] = Field(
        "scene", description="scene: one window over the top-M tracks (interactions: fights); track: one window "
                             "per track (per-person classes: falls); both: track_classes from track windows, the "
                             "other classes from scene windows")
    track_classes: list[str] = Field(default_factory=list, description="per-person classes (window_mode both)")
    thresholds: dict[str, ClassThreshold] = Field(default_factory=dict, description="per class name")
    source: dict = Field(default_factory=dict, description="run / checkpoint / epoch the model came from")

    @field_validator("format")
    @classmethod
    def _format(cls, value: str) -> str:
        problem = format_problem(value)
        if problem:
            raise ValueError(problem)
        return value

    @model_validator(mode="after")
    def _check(self) -> "ModelSpec":
        k = len(self.label_names)
        if self.background_class is not None and not 0 <= self.background_class < k:
            raise ValueError(f"background_class {self.background_class} outside 0..{k - 1}")
        bad = [n for n in [*self.thresholds, *self.track_classes] if n not in self.label_names]
        if bad:
            raise ValueError(f"thresholds / track_classes name unknown classes {bad}; classes are {self.label_names}")
        if self.model.get("num_classes", k) != k:
            raise ValueError(f"model.num_classes={self.model['num_classes']} but {k} label_names")
        return self

    @property
    def event_classes(self) -> list[int]:
        return [c for c in range(len(self.label_names)) if c != self.background_class]

    def window_kind(self, cls: int) -> str:
        """The window kind ('scene' or 'track') whose scores make events of class `cls`."""
        if self.window_mode != "both":
            return self.window_mode
        return "track" if self.label_names[cls] in self.track_classes else "scene"

    def threshold(self, cls: int) -> ClassThreshold:
        return self.thresholds.get(self.label_names[cls], ClassThreshold())

    @property
    def window_s(self) -> float:
        return self.window_frames / self.fps

    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), indent=1)

    @classmethod
    def read(cls, path: str | Path) -> "ModelSpec":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: model sidecar not found (export_model.py writes <model>.json "
                                    "beside <model>.onnx)")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: not JSON: {err}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: not a recognizer sidecar (a JSON object expected, got {type(data).__name__})")
        # the version before the fields: a newer sidecar's added field would otherwise read as a typo
        problem = format_problem(data.get("format", SIDECAR_FORMAT))
        if problem:
            raise ConfigError(f"{path}: {problem}")
        return validate_config(cls, data, str(path))


def format_problem(value) -> str | None:
    """Why a sidecar's `format` is not one this code reads (None: it is)."""
    m = re.fullmatch(r"recognizer-model/(\d+)", value) if isinstance(value, str) else None
    if m is None or int(m.group(1)) < 1:
        return f"not a recognizer sidecar (format {value!r}, expected {SIDECAR_FORMAT})"
    if int(m.group(1)) > SIDECAR_VERSION:
        return (f"sidecar format {value} is newer than this code ({SIDECAR_FORMAT}); upgrade recognizer or "
                "re-export")
    return None


def _norm(name: str) -> str:
    """A class name as the name lists compare it: NFC (a name typed on Linux matches one from a macOS folder, which
    stores Hangul decomposed), casefolded, without `_`, `-` and whitespace."""
    return re.sub(r"[\s_-]+", "", nfc(name).casefold())


def is_fall_name(name: str) -> bool:
    """A per-person (fall) class by its name (FALL_WORDS)."""
    return any(word in _norm(name) for word in FALL_WORDS)


def resolve_background(label_names: Sequence[str], setting: str | int | None = "auto",
                       fallback: int | None = 0) -> tuple[int | None, str]:
    """(background class index or None, how it was chosen) for a background_class setting: a class name
    (NFC, then case-insensitive), an index, 'none' (every class makes events), or 'auto' / None: the class named like
    background (BACKGROUND_NAMES; class 0 where it is one of several, an error where it is not), else
    `fallback` (0 for this project's models, whose presets put the background first; None for mmaction2
    configs, whose datasets such as NTU have no background class)."""
    names = list(label_names)
    text = "auto" if setting is None else str(setting).strip()
    if text.lower() == "auto":
        found = [i for i, n in enumerate(names) if _norm(n) in BACKGROUND_NAMES]
        if len(found) > 1 and found[0] == 0:   # e.g. Normal, Fight, Other: the presets' order decides
            found = [0]
        if len(found) > 1:
            raise ValueError(f"background_class: classes {[names[i] for i in found]} all look like background; "
                             "choose one (a class name, an index, or none)")
        if found:
            return found[0], f"auto: class named {names[found[0]]!r}"
        if fallback is None:
            return None, "auto: no class named like background, so every class makes events"
        # a guess: with the wrong class as background the model never reports the right one (싸움 before 정상)
        log.warning("no class of %s is named like background: class %d (%r) is taken as the background (never an "
                    "event); set --background-class (a class name, an index or none) if it is not",
                    names, fallback, names[fallback])
        return fallback, f"auto: no class named like background; class {fallback} ({names[fallback]!r})"
    if text.lower() == "none":
        return None, "set: none (every class makes events)"
    if re.fullmatch(r"\d+", text):
        if int(text) >= len(names):
            raise ValueError(f"background_class: index {text} outside 0..{len(names) - 1} (classes {names})")
        return int(text), f"set: class {text} ({names[int(text)]!r})"
    forms, text = [nfc(n) for n in names], nfc(text)
    exact = [i for i, n in enumerate(forms) if n == text] or \
        [i for i, n in enumerate(forms) if n.casefold() == text.casefold()]
    if len(exact) != 1:
        raise ValueError(f"background_class: {text!r} is not one of the model's classes {names} "
                         "(give a class name, an index, none or auto)")
    return exact[0], f"set: class {names[exact[0]]!r}"


def with_background(spec: ModelSpec, setting: str | int | None) -> ModelSpec:
    """`spec` with its background class chosen by `setting` (see resolve_background; None keeps the spec's):
    the new background's threshold is dropped, a former background class gets the default threshold."""
    if setting is None:
        return spec
    index, how = resolve_background(spec.label_names, setting, spec.background_class)
    thresholds = {n: t for n, t in spec.thresholds.items() if index is None or n != spec.label_names[index]}
    return ModelSpec.model_validate({**spec.model_dump(), "background_class": index, "thresholds": thresholds,
                                     "source": {**spec.source, "background_class": how}})
