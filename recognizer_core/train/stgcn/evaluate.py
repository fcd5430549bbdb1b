"""Evaluation shared by validation and the test job: sharded inference, gathering, metrics.

Every rank scores its shard (multi-clip: softmax of each clip's logits averaged over the clips, mmaction2's
`average_clips='prob'`), the padded fixed-size results are all-gathered, padding is dropped, and every rank
computes the same report (so early-stopping decisions agree without another collective).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch

from recognizer_core.config import ConfigError
from recognizer_core.models.checkpoint import load_mmaction_checkpoint
from recognizer_core.models.recognizer import build_recognizer
from recognizer_core.skeleton.store import SkeletonDataset
from recognizer_core.skeleton.transforms import PipelineConfig
from recognizer_core.skeleton.transforms_torch import model_inputs
from recognizer_core.train.stgcn import data as tdata
from recognizer_core.train.amp import autocast
from recognizer_core.train.collectives import all_gather_tensors, all_reduce, all_reduce_max
from recognizer_core.train.experiment_log import console
from recognizer_core.train.run_files import RunFiles
from recognizer_core.train.state import STATE_FILE, unwrap
from recognizer_core.train.stgcn.metrics import classification_report
from recognizer_core.train.stgcn.plots import plot_confusion_matrix


@torch.no_grad()
def score_batches(model: torch.nn.Module, batches: Iterable, device: torch.device, amp: str = "none",
                  pipeline: PipelineConfig | None = None):
    """(probabilities (n, K), labels (n,), valid (n,)) over `batches` of (x (N, clips, M, T, V, C), y, valid);
    x may be a RawBatch (pipeline.device=worker), its features computed on `device` with `pipeline`."""
    model.eval()
    net = unwrap(model)  # no DDP forward in eval: no gradient sync needed, and ranks may differ in length
    probs, labels, valid = [], [], []
    for x, y, v in batches:
        x = model_inputs(x, device, pipeline)
        with autocast(device, amp):
            p = net.predict(x)
        probs.append(p.float())
        labels.append(y.to(device))
        valid.append(v.to(device))
    if not probs:
        raise RuntimeError("no evaluation batches on this rank")
    return torch.cat(probs), torch.cat(labels), torch.cat(valid)


def gather(probs: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """All ranks' valid rows (every rank holds the same number of rows, padding marked invalid)."""
    # rank-major order; the metrics do not depend on the order
    probs, labels, valid = all_gather_tensors(probs, labels.to(torch.int64), valid.to(torch.int64))
    keep = valid.bool().cpu().numpy()
    return probs.cpu().numpy()[keep], labels.cpu().numpy()[keep]


def evaluate(model, batches, device, *, amp: str = "none", label_names: Sequence[str] | None = None,
             pipeline: PipelineConfig | None = None) -> dict:
    probs, labels, valid = score_batches(model, batches, device, amp, pipeline)
    scores, y = gather(probs, labels, valid)
    report = classification_report(scores, y, label_names)
    report["scores"] = scores
    report["labels"] = y
    return report


# ---- test job: the best (or a given) model on the test split, multi-clip --------------------------------------

def load_weights(model: torch.nn.Module, checkpoint: str | Path) -> str:
    """Weights from an mmaction2 .pth, a Ray Train checkpoint dir (training_state.pt) or a run folder (its
    exported best_<metric>_epoch_N.pth). Strict: every key must match. Returns what was loaded."""
    path = Path(checkpoint)
    if path.is_dir():
        if (path / STATE_FILE).is_file():
            state = torch.load(path / STATE_FILE, map_location="cpu", weights_only=True)
            model.load_state_dict(state["model"], strict=True)
            return str(path / STATE_FILE)
        best = sorted(path.glob("best_*_epoch_*.pth"), key=lambda p: p.stat().st_mtime)
        if not best:
            raise FileNotFoundError(f"{path}: no {STATE_FILE} and no best_*_epoch_*.pth in this folder")
        path = best[-1]
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    load_mmaction_checkpoint(model, path)
    return str(path)


def _test_batches(cfg, dataset_path: str, split: str, ctx, required: bool):
    ds = SkeletonDataset(dataset_path)
    k = cfg.model.num_classes
    info = tdata.split_info(ds, split, k, required=required)
    if info is None:
        return None, ds, 0
    clips, valid, skipped = tdata.eval_shard(ds, info, ctx.rank, ctx.world_size, cfg.data, k, cfg.model.num_joints,
                                             f"{dataset_path} [{split}]")
    bs = cfg.train.val_batch_size or cfg.train.batch_size
    nb = int(all_reduce_max([tdata.num_batches_for(len(clips), bs)])[0])
    batches = tdata.ShardBatches(clips, nb, bs, cfg.pipeline, train=False, seed=cfg.train.seed, rank=ctx.rank,
                                 num_clips=cfg.pipeline.test_num_clips, num_valid=valid)
    loader, _ = tdata.make_loader(batches, cfg.data.loader_workers, cfg.data.prefetch_batches,
                                  ctx.device.type == "cuda")
    return loader, ds, int(all_reduce([skipped])[0])   # all-zero clips skipped over every rank's share


def _skipped_note(report: dict) -> str:
    n = report.get("skipped_empty_clips", 0)
    return f"; {n} all-zero clip(s) skipped, not scored (data.skip_empty_clips)" if n else ""


def _write_test_outputs(report: dict, files: RunFiles, split: str, source: str, num_clips: int) -> dict:
    result = {k: v for k, v in report.items() if k not in ("scores", "labels")}
    result.update({"split": split, "checkpoint": source, "test_num_clips": num_clips})
    files.path(f"{split}_metrics.json").write_text(json.dumps(result, indent=1))
    plot_confusion_matrix(np.array(report["confusion_matrix"]), report["label_names"],
                          files.path(f"confusion_matrix_{split}.png"),
                          title=f"{split} ({num_clips} clip(s)/sample), top-1 {report['acc_top1']:.3f}")
    per_class = ", ".join(f"{n}: P {report['precision'][n]:.3f} R {report['recall'][n]:.3f}"
                          for n in report["label_names"])
    console(f"[recognizer] {split}: top-1 {report['acc_top1']:.4f}  mean class acc "
            f"{report['mean_class_accuracy']:.4f}  ({report['num_samples']} clips, {num_clips} clip(s) each"
            f"{_skipped_note(report)})\n"
            f"[recognizer] {split} per class: {per_class}\n"
            f"[recognizer] {split} confusion matrix (rows true, cols predicted): {report['confusion_matrix']}")
    return result


def test_loop(cfg, dataset_path: str, checkpoint: str, out_uri: str, ctx, split: str, *, required: bool = True,
              source: str | None = None) -> dict | None:
    """Multi-clip test of `checkpoint` (a local .pth, checkpoint folder or run folder) on `split`; rank 0 writes
    <split>_metrics.json and the confusion matrix into `out_uri` (local, NFS or s3://). With required=False a
    dataset without that split is skipped with a line."""
    loader, ds, skipped = _test_batches(cfg, dataset_path, split, ctx, required=required)
    if loader is None:
        if ctx.rank == 0:
            console(f"[recognizer] no {split!r} split in {dataset_path}: skipping the test")
        return None
    model = build_recognizer(cfg.model)
    loaded = load_weights(model, checkpoint)
    model.to(ctx.device)
    report = evaluate(model, loader, ctx.device, amp=cfg.train.amp, label_names=label_names(cfg, ds),
                      pipeline=cfg.pipeline)
    if ctx.rank != 0:
        return None
    files = RunFiles(out_uri)
    try:
        return _write_test_outputs({**report, "skipped_empty_clips": skipped}, files, split,
                                   source or loaded, cfg.pipeline.test_num_clips)
    finally:
        files.close()   # the last sync; on object storage the staging folder goes too


def label_names(cfg, ds) -> list[str]:
    """The class names, index by index. The config's must be the dataset's own when the dataset names them: the
    labels stored are indices into the dataset's list (extraction's default is the sorted folder names, Fight
    before NonFight), and a preset's other order silently swapped reports, class weights and the exported
    model's background class."""
    k = cfg.model.num_classes
    given, stored = list(cfg.data.label_names or []), list(ds.label_names or [])
    # (names left blank in the dataset are unknown; labels beyond the config's classes are split_info's error)
    if given and any(i < len(stored) and stored[i] and stored[i] != name for i, name in enumerate(given)):
        same = sorted(given) == sorted(stored)
        how = "the same classes in another order" if same else "other classes"
        # Rebuilding in the config's order comes first: the tuning spaces weight class 1 as the positive class
        # (train.class_weight[1]), so following "set data.label_names to the dataset's order" made a search tune
        # the background class's weight (extraction's default order is the sorted folder names).
        fix = (f"Rebuild the dataset in the config's order from its poses ({rebuild_command(given, ds)}; needed "
               "to tune: the search spaces weight class 1 as the positive class), or, to train only, set "
               f"data.label_names={stored} and class weights in that order" if same else
               f"Set data.label_names={stored} (and class weights in that order), or rebuild the dataset with the "
               f"class order you want ({rebuild_command(None, ds)})")
        raise ConfigError(f"data.label_names {given} but the dataset {ds.path} stores its labels as {stored} "
                          f"({how}): its label i is {stored[0]!r} for i=0. {fix}.")
    return given or (stored if len(stored) == k else [str(i) for i in range(k)])


def rebuild_command(order: list[str] | None, ds: SkeletonDataset | None = None) -> str:
    """The command that rewrites a built dataset's labels in `order` from the poses it was built from:
    build_dataset.py indexes labels by its label_names (dataset/build.py plan_videos), without the videos or the
    pose model that extract_poses.py --set source.label_names=[...] needs (which rewrote only labels.json). The
    dataset's own poses and folder when it records them (build_dataset's metadata), else placeholders; order
    None: a placeholder for the names too."""
    import shlex

    from recognizer_core.dataset.config import SplitConfig, WindowConfig

    meta = ds.metadata if ds is not None else {}
    poses = meta.get("poses") if meta.get("source") == "rayjobs/build_dataset.py" else None
    # a new folder (build_dataset overwrites its output) with the window and split settings the dataset records
    # where they differ from the defaults: the same clips and splits, only the label order changed
    where = (f"--poses {shlex.quote(str(poses))} --output {shlex.quote(str(ds.path).rstrip('/') + '_ordered')}" if poses
             else "--poses <extraction output> --output <new dataset folder> (with the window / split settings "
                  "the dataset was built with)")
    sets = []
    for key, default in (("window", WindowConfig()), ("split", SplitConfig())):
        for field, value in (meta.get(key) or {}).items() if poses else ():
            if field in type(default).model_fields and value != _plain(getattr(default, field)):
                sets.append(f" --set {shlex.quote(f'{key}.{field}={_set_value(value)}')}")
    names = shlex.quote(f"label_names=[{','.join(order)}]") if order is not None \
        else "label_names=[<class names, background first>]"
    return f"rayjobs/build_dataset.py {where}{''.join(sets)} --set {names}"


def _plain(value):
    return list(value) if isinstance(value, tuple) else value


def _set_value(value) -> str:
    return ("[" + ",".join(str(v) for v in value) + "]") if isinstance(value, (list, tuple)) else str(value)
