"""Load a trained detector for recognition: run folder, Tune summary, mmaction2 .pth + config, or ONNX + sidecar.

What a folder must hold (the contract relied on, nothing else):
- training run folder (`rayjobs/train_stgcn.py`): `config.yaml` (TrainJobConfig) and the exported best model
  `best_<metric>_epoch_<N>.pth` (mmaction2 format; the newest one is taken);
- Tune summary folder (`rayjobs/tune_*.py`, `<experiment>/summary`, or the experiment folder itself):
  `best_config.yaml` and `best_<metric>_epoch_<N>.pth`;
- `<name>.pth` + `--model-config` (our training YAML, or an mmaction2 `.py` config: clip_len, num_clips,
  num_person and feats are read from its test pipeline; the network from the weights; classes from the
  checkpoint's meta or `label_names=`);
- `<name>.onnx` + `<name>.json` (rayjobs/export_model.py): ONNX Runtime only, torch is never imported.

The background class (never an event) is the one named like background (spec.BACKGROUND_NAMES, English and
Korean), else class 0 for our training configs (the presets put it first; a warning names it) and none for
mmaction2 `.py` configs; `background_class` (a name, an index or `none`) overrides it, and an export records the
choice in its sidecar.
"""
from __future__ import annotations

import logging
import re
import threading
from pathlib import Path
from typing import Protocol, Sequence

import numpy as np

from recognizer_core.config import load_config
from recognizer_core.recognize.spec import ClassThreshold, ModelSpec, is_fall_name, resolve_background, \
    sidecar_path, with_background
from recognizer_core.skeleton.transforms import PipelineConfig, _clip_arrays, test_sample
from recognizer_core.storage import is_remote, to_uri

log = logging.getLogger("recognizer")
BEST_GLOB = "best_*_epoch_*.pth"


class Recognizer(Protocol):
    spec: ModelSpec
    source: str

    def prepare(self, clips: Sequence) -> np.ndarray: ...          # windows -> (N, clips, M, T, V, C)

    def predict(self, x: np.ndarray) -> np.ndarray: ...            # -> clip-averaged probabilities (N, K)


def _softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


_THREADS_LOCK = threading.Lock()  # TorchRecognizer.predict with a thread bound


class TorchRecognizer:
    """The trained network in torch, fed by the batched test-mode pipeline (exactly the test job's path)."""

    def __init__(self, net, spec: ModelSpec, source: str, device: str = "cpu", threads: int = 0):
        import torch

        self.torch, self.device, self.threads = torch, torch.device(device), threads
        self.net, self.spec, self.source = net.eval().to(self.device), spec, source

    def prepare(self, clips: Sequence) -> np.ndarray:
        from recognizer_core.skeleton.transforms import prepare_batch

        return prepare_batch(list(clips), self.spec.pipeline, train=False)[0].numpy()

    def predict(self, x: np.ndarray) -> np.ndarray:
        # `threads` bounds this model's intra-op threads during its own calls only: torch's count is
        # process-wide, and setting it at load throttled a notebook's or service's other torch work for good
        # (ONNX Runtime keeps its count inside the session)
        if not self.threads:
            return self._predict(x)
        # one bounded call at a time: torch's count is per OS thread, copied by a thread at its first torch call;
        # a service thread starting while another was inside here took the bound for good
        with _THREADS_LOCK:
            before = self.torch.get_num_threads()
            if self.threads != before:
                self.torch.set_num_threads(self.threads)
            try:
                return self._predict(x)
            finally:
                if self.torch.get_num_threads() != before:
                    self.torch.set_num_threads(before)

    def _predict(self, x: np.ndarray) -> np.ndarray:
        with self.torch.no_grad():
            return self.net.predict(self.torch.from_numpy(x).to(self.device)).float().cpu().numpy()


class OnnxRecognizer:
    """An exported model under ONNX Runtime (no torch): test-mode pipeline per window, softmax averaged over
    clips as mmaction2's average_clips='prob'."""

    def __init__(self, onnx_path: str | Path, spec: ModelSpec, threads: int = 0, providers: list[str] | None = None):
        from recognizer_core.onnx_runtime import import_onnxruntime

        ort = import_onnxruntime()  # one ORT build only (CPU and GPU builds break each other)

        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(onnx_path), opts, providers=providers or ["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name
        self.spec, self.source = spec, str(onnx_path)
        _check_sidecar_fits(self.session, spec, onnx_path)

    def prepare(self, clips: Sequence) -> np.ndarray:
        # the arrays prepare_batch (the torch path) reads: a float16 pkl's clips are normalised in float16
        return np.stack([test_sample(*_clip_arrays(c, False), c.img_shape, self.spec.pipeline)[0] for c in clips])

    def predict(self, x: np.ndarray) -> np.ndarray:
        n, nc = x.shape[:2]
        logits = self.session.run(None, {self.input: np.ascontiguousarray(x.reshape(n * nc, *x.shape[2:]),
                                                                           np.float32)})[0]
        return _softmax(logits.astype(np.float64)).reshape(n, nc, -1).mean(1).astype(np.float32)


def _check_sidecar_fits(session, spec: ModelSpec, onnx_path) -> None:
    """The sidecar describes this model: its input (batch, M, T, V, C) holds the spec's persons, clip length and
    feature channels, and its output one score per label. A copied or mixed-up sidecar was accepted, then every
    window failed with ONNX Runtime's three-line shape error (and the run exited 0), or, where the shapes matched
    (two labels swapped), ran with the wrong class names: the sha256 an export records catches that one.
    ValueError, one line."""
    shape = list(session.get_inputs()[0].shape)[1:]
    want = {"persons (pipeline.num_person)": (0, spec.pipeline.num_person),
            "frames (pipeline.clip_len)": (1, spec.pipeline.clip_len),
            "channels (pipeline.feats)": (3, spec.pipeline.in_channels)}
    bad = [f"{what} {n} in the sidecar, {shape[i]} in the model" for what, (i, n) in want.items()
           if len(shape) == 4 and isinstance(shape[i], int) and shape[i] != n]
    out = list(session.get_outputs()[0].shape)
    if out and isinstance(out[-1], int) and out[-1] != len(spec.label_names):
        bad.append(f"{len(spec.label_names)} labels in the sidecar, {out[-1]} scores in the model")
    recorded = spec.source.get("onnx_sha256")  # sidecars written since 2026-12-05 (export_model.py)
    if not bad and recorded:
        import hashlib

        if hashlib.sha256(Path(onnx_path).read_bytes()).hexdigest() != recorded:
            bad.append("the model file is not the one exported with this sidecar (its sha256 differs)")
    if bad:
        raise ValueError(f"{sidecar_path(Path(onnx_path))} does not describe {onnx_path}: {'; '.join(bad)} "
                         "(re-export the model, or put its own sidecar beside it)")


# ---- specs from training configs --------------------------------------------------------------------------

def training_clip_stats(cfg) -> tuple[float, int, str]:
    """(fps, median clip frames, where from) of the training split the run trained on (light columns only).
    The data is found as training found it (job.dataset_for): data.path by storage.input_path, pkl conversions
    and demo data under output_uri(run.storage_path)/datasets. A run folder's config.yaml records the resolved
    dataset (train_stgcn.py), so this does not depend on the working directory; an older one's relative path
    does, and gives the fallback with one warning naming the path."""
    from recognizer_core.skeleton.store import SkeletonDataset
    from recognizer_core.train.stgcn.dataset_source import datasets_dir, prepare_dataset

    try:
        path = prepare_dataset(cfg.data, datasets_dir(cfg.run.storage_path))
        table = SkeletonDataset(path).index(cfg.data.train_split, columns=["total_frames", "fps"])
        frames = np.asarray(table.column("total_frames"), float)
        fps = np.asarray(table.column("fps"), float)
        fps = fps[fps > 0]
        return (float(np.median(fps)) if len(fps) else 30.0), int(np.median(frames)), to_uri(path)
    except Exception as err:  # noqa: BLE001 - the spec still works, with the stated fallback
        # a run folder written before train_stgcn.py recorded the resolved dataset: say where to start from
        relative = any(v and not is_remote(v) and not Path(v).expanduser().is_absolute()
                       for v in (cfg.data.path, cfg.data.train_pkl))
        hint = ("; the config's data path is relative: start from the directory the run was trained in (or set "
                "RECOGNIZER_STORAGE to it)" if relative else "")
        log.warning("training data not readable (%s): window = clip_len %d frames at 30 fps%s", err,
                    cfg.pipeline.clip_len, hint)
        return 30.0, int(cfg.pipeline.clip_len), "fallback: clip_len at 30 fps"


def default_window_mode(label_names: Sequence[str], pipeline: PipelineConfig,
                        background: int | None = 0) -> tuple[str, list[str]]:
    """(mode, per-person classes): event classes named like a fall (spec.FALL_WORDS: Falldown, 낙상, ...) are
    per-person (per-track windows), the others interactions (scene windows); a one-person model is per-person
    throughout. Override with window_mode."""
    events = [n for i, n in enumerate(label_names) if i != background]
    per_person = [n for n in events if is_fall_name(n)]
    if pipeline.num_person == 1 or (per_person and len(per_person) == len(events)):
        return "track", []
    return ("both", per_person) if per_person else ("scene", [])


def spec_from_train_config(cfg, label_names: Sequence[str] | None, source: dict,
                           background_class: str | int | None = None) -> ModelSpec:
    k = cfg.model.num_classes
    names = list(label_names or cfg.data.label_names or [str(i) for i in range(k)])
    background, how = resolve_background(names, background_class, fallback=0)
    fps, frames, data_source = training_clip_stats(cfg)
    mode, per_person = default_window_mode(names, cfg.pipeline, background)
    return ModelSpec(label_names=names, background_class=background, model=cfg.model.model_dump(mode="json"),
                     pipeline=cfg.pipeline, fps=fps, window_frames=frames, window_mode=mode, track_classes=per_person,
                     thresholds={n: ClassThreshold() for i, n in enumerate(names) if i != background},
                     source={**source, "background_class": how, "training_data": data_source,
                             "val_split": getattr(cfg.data, "val_split", "val")})


def _checkpoint_meta(pth: Path) -> dict:
    from recognizer_core.models.checkpoint import read_checkpoint

    obj = read_checkpoint(pth)
    meta = obj.get("meta") if isinstance(obj, dict) else None
    return meta if isinstance(meta, dict) else {}


def _newest_best(folder: Path) -> Path:
    best = sorted(folder.glob(BEST_GLOB), key=lambda p: p.stat().st_mtime)
    if not best:
        raise FileNotFoundError(f"{folder}: no {BEST_GLOB} (the exported best model of a run or Tune summary)")
    return best[-1]


def resolve_model_folder(path: Path) -> tuple[Path, Path]:
    """(config YAML, best .pth) of a run folder, a Tune summary folder or a Tune experiment folder."""
    for folder in (path, path / "summary"):
        for name in ("config.yaml", "best_config.yaml"):
            if (folder / name).is_file() and list(folder.glob(BEST_GLOB)):
                return folder / name, _newest_best(folder)
    raise FileNotFoundError(f"{path}: not a run folder (config.yaml + {BEST_GLOB}) nor a Tune summary "
                            f"(best_config.yaml + {BEST_GLOB})")


def _mmaction_py_pipeline(text: str, source: str) -> PipelineConfig:
    """The test pipeline parameters of an mmaction2 skeleton config (the last occurrence of each wins: the
    test pipeline is written after the train / val ones)."""
    def last(pattern: str) -> str | None:
        found = re.findall(pattern, text)
        return found[-1] if found else None

    clip_len = last(r"clip_len\s*=\s*(\d+)")
    if clip_len is None:
        raise ValueError(f"{source}: no UniformSampleFrames clip_len found in the mmaction2 config")
    feats = last(r"feats\s*=\s*\[([^\]]*)\]")
    return PipelineConfig(clip_len=int(clip_len), test_num_clips=int(last(r"num_clips\s*=\s*(\d+)") or 1),
                          num_person=int(last(r"num_person\s*=\s*(\d+)") or 2),
                          feats=[a or b for a, b in re.findall(r"'(\w+)'|\"(\w+)\"", feats)] if feats else ["j"])


def _mmaction_py_stages(text: str, source: str) -> dict:
    """num_stages / inflate_stages / down_stages of an mmaction2 config's backbone, where it sets them: temporal
    strides are not in the weights (infer_model_config guesses a down stage at every 1x1 residual conv, also
    one that only widens the channels)."""
    import ast

    found = {}
    for key in ("num_stages", "inflate_stages", "down_stages"):
        m = re.search(rf"\b{key}\s*=\s*(\[[^\]]*\]|\d+)", text)
        if m:
            try:
                found[key] = ast.literal_eval(m.group(1))
            except (ValueError, SyntaxError):
                raise ValueError(f"{source}: cannot read {key} = {m.group(1)!r}") from None
    return found


def load_recognizer(path: str | Path, *, model_config: str | Path | None = None,
                    label_names: Sequence[str] | None = None, device: str = "cpu", threads: int = 0,
                    spec: ModelSpec | None = None, background_class: str | int | None = None) -> Recognizer:
    """A ready-to-score model from any of the forms in the module docstring. `spec` (already resolved, e.g. on
    the driver) skips reading the training data for it and is used as it is. `background_class`: a class name,
    an index, 'none' or 'auto' (None: an export's recorded choice, else auto; see the module docstring)."""
    path = Path(path).expanduser()
    if path.suffix == ".onnx":
        if not path.is_file():
            raise FileNotFoundError(f"{path}: ONNX model not found")
        return OnnxRecognizer(path, spec or with_background(ModelSpec.read(sidecar_path(path)), background_class),
                              threads=threads)
    if path.is_dir():
        cfg_file, pth = resolve_model_folder(path)
    elif path.suffix == ".pth":
        if model_config is None:
            raise ValueError(f"{path}: an mmaction2 .pth needs its config (--model-config <train YAML or "
                             "mmaction2 .py>)")
        cfg_file, pth = Path(model_config), path
    else:
        raise FileNotFoundError(f"{path}: not a run folder, Tune summary, .pth or .onnx model")
    return _torch_recognizer(cfg_file, pth, label_names, device, threads, spec, background_class)


def _torch_recognizer(cfg_file: Path, pth: Path, label_names, device: str, threads: int,
                      given: ModelSpec | None = None, background_class: str | int | None = None) -> TorchRecognizer:
    from recognizer_core.models.checkpoint import infer_model_config, load_mmaction_checkpoint, \
        load_state_dict_file
    from recognizer_core.models.recognizer import build_recognizer
    from recognizer_core.train.stgcn.config import TrainJobConfig

    meta = _checkpoint_meta(pth)
    names = label_names or (meta.get("dataset_meta") or {}).get("classes")
    source = {"checkpoint": str(pth.resolve()), "config": str(cfg_file.resolve()), "epoch": meta.get("epoch"),
              **({"trained_by": meta["source"]} if isinstance(meta.get("source"), str) else {}),
              **({"val_in_training": True} if meta.get("val_in_training") is True else {})}
    if cfg_file.suffix == ".py":
        model_cfg = infer_model_config(load_state_dict_file(pth), dropout=0.0,
                                       **_mmaction_py_stages(cfg_file.read_text(), str(cfg_file)))
        pipeline = _mmaction_py_pipeline(cfg_file.read_text(), str(cfg_file))
        names = list(names or [str(i) for i in range(model_cfg.num_classes)])
        background, how = resolve_background(names, background_class, fallback=None)
        mode, per_person = default_window_mode(names, pipeline, background)
        spec = given or ModelSpec(
            label_names=names, background_class=background, model=model_cfg.model_dump(mode="json"),
            pipeline=pipeline, window_frames=pipeline.clip_len, window_mode=mode, track_classes=per_person,
            thresholds={n: ClassThreshold() for i, n in enumerate(names) if i != background},
            source={**source, "background_class": how, "note": "mmaction2 config: window = clip_len at 30 fps"})
    else:
        cfg = load_config(TrainJobConfig, cfg_file)
        model_cfg = cfg.model
        spec = given or spec_from_train_config(cfg, names, source, background_class)
    net = build_recognizer(model_cfg)
    load_mmaction_checkpoint(net, pth)
    return TorchRecognizer(net, spec, str(pth), device, threads)
