"""`TrainJobConfig`: every setting of the STGCN++ train/test jobs, typed and validated on load.

The defaults are the training guide's "stable" recipe (mmaction2 `stgcnpp_enhanced_*_stable.py`); the presets
in `configs/` only set what differs (task, class weights, dropout). Cross-field rules (class weights vs
classes, input channels vs features, schedule milestones) are checked here so a bad config fails before
Ray starts, with the field named.
"""
from __future__ import annotations

import math
from typing import Literal

from pydantic import Field, field_validator, model_validator

from recognizer_core.config import SafeName, StrictModel
from recognizer_core.models.recognizer import ModelConfig
from recognizer_core.skeleton.transforms import PipelineConfig
from recognizer_core.train.experiment_log import WandbConfig
from recognizer_core.train.sections import ScalingSection


CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")  # torch.compile modes that replay the step as CUDA graphs


def _finite(v):
    """A float field's value (or a list/tuple of floats) if every number in it is finite. pydantic's bounds let
    inf through (inf > 0) and NaN through `w <= 0` style checks: optim.lr=inf and train.class_weight=[nan, 1.0]
    loaded and trained into NaN losses."""
    values = v if isinstance(v, (list, tuple)) else [v]
    if any(isinstance(x, float) and not math.isfinite(x) for x in values):
        raise ValueError(f"must be finite numbers, got {list(v)}" if isinstance(v, (list, tuple)) else
                         f"must be a finite number, got {v}")
    return v


class _FiniteFloats(StrictModel):
    """The sections below: every float field (and list/tuple of floats) must be finite."""

    @field_validator("*")
    @classmethod
    def _finite_floats(cls, v):
        return _finite(v)


class DataConfig(StrictModel):
    path: str | None = Field(None, description="Parquet skeleton dataset folder (train/val/test splits in one "
                                               "dataset); a local or shared (NFS) path every worker can read")
    train_pkl: str | None = Field(None, description="mmaction2 PoseDataset pkl for training (instead of path)")
    val_pkl: str | None = Field(None, description="mmaction2 pkl for validation (default: train_pkl)")
    test_pkl: str | None = Field(None, description="mmaction2 pkl for the test job (default: val_pkl)")
    train_split: str = Field("train", description="split name of the training clips (Parquet `split` column "
                                                  "or the pkl's `split` mapping)")
    val_split: str = Field("val", description="split name of the validation clips")
    test_split: str = Field("test", description="split name of the test clips")
    demo_task: Literal["fight", "falldown"] = Field(
        "fight", description="built-in synthetic demo data used when neither path nor train_pkl is set")
    demo_num_clips: int = Field(96, ge=8, description="number of demo clips (all splits together)")
    demo_seed: int = Field(0, description="seed of the demo data generator")
    label_names: list[str] | None = Field(None, description="class names in label order (default: from the "
                                                            "dataset; used in reports and plots)")
    nan_policy: Literal["reject", "zero"] = Field(
        "reject", description="NaN/inf keypoints: 'reject' stops with the clip named, 'zero' zeroes those joints")
    skip_empty_clips: bool = Field(True, description="drop clips whose skeletons are all zero (no person "
                                                     "detected), logging how many; false = error")
    loader_workers: int = Field(2, ge=0, description="processes per training worker preparing batches "
                                                     "(0 = in the training process)")
    prefetch_batches: int = Field(4, ge=1, description="batches each loader process prepares ahead")

    @model_validator(mode="after")
    def _one_source(self) -> "DataConfig":
        if self.path and self.train_pkl:
            raise ValueError("set either data.path (Parquet) or data.train_pkl (mmaction2 pkl), not both")
        if (self.val_pkl or self.test_pkl) and not self.train_pkl:
            raise ValueError("data.val_pkl/test_pkl need data.train_pkl")
        return self

    @property
    def is_demo(self) -> bool:
        return not self.path and not self.train_pkl


class OptimConfig(_FiniteFloats):
    type: Literal["adamw", "sgd"] = Field("adamw", description="optimizer (the guide recommends AdamW)")
    lr: float = Field(1e-4, gt=0, description="base learning rate (before auto_scale_lr)")
    weight_decay: float = Field(1e-3, ge=0, description="weight decay")
    betas: tuple[float, float] = Field((0.9, 0.999), description="AdamW betas")
    eps: float = Field(1e-8, gt=0, description="AdamW eps")
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum")
    nesterov: bool = Field(False, description="SGD Nesterov momentum")
    clip_grad_max_norm: float | None = Field(2.0, gt=0, description="gradient clipping max L2 norm (null = off)")
    auto_scale_lr: bool = Field(True, description="scale lr by (num_workers * batch_size) / base_batch_size, "
                                                  "as mmengine's auto_scale_lr")
    base_batch_size: int = Field(128, gt=0, description="total batch size the base lr is meant for")

    @field_validator("betas")
    @classmethod
    def _betas(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not all(0.0 <= b < 1.0 for b in v):
            raise ValueError(f"betas must be in [0, 1), got {v}")
        return v


class ScheduleConfig(_FiniteFloats):
    warmup_epochs: float = Field(3, ge=0, description="linear warmup length in epochs (applied per iteration)")
    warmup_start_factor: float = Field(0.1, gt=0, le=1, description="lr factor at the first warmup iteration")
    type: Literal["multistep", "cosine", "constant"] = Field("multistep", description="schedule after warmup")
    milestones: list[int] = Field([15, 25], description="multistep: epochs after the warmup where lr is "
                                                        "multiplied by gamma (mmengine's begin=warmup_epochs)")
    gamma: float = Field(0.5, gt=0, le=1, description="multistep decay factor")
    T_max: int | None = Field(None, gt=0, description="cosine: epochs of the cosine after warmup "
                                                      "(default: epochs - warmup_epochs)")
    eta_min: float = Field(1e-6, ge=0, description="cosine: final learning rate")

    @field_validator("milestones")
    @classmethod
    def _ascending(cls, v: list[int]) -> list[int]:
        if any(b <= a for a, b in zip(v, v[1:])) or any(m <= 0 for m in v):
            raise ValueError(f"milestones must be positive and strictly ascending, got {v}")
        return v


class EarlyStoppingConfig(_FiniteFloats):
    enabled: bool = Field(False, description="stop when the monitored metric stops improving")
    monitor: Literal["val/acc_top1", "val/mean_class_accuracy"] = Field("val/acc_top1",
                                                                        description="metric to watch")
    patience: int = Field(10, ge=1, description="validations without improvement before stopping")
    min_delta: float = Field(0.001, ge=0, description="smallest change that counts as an improvement")


class TrainConfig(_FiniteFloats):
    epochs: int = Field(30, ge=1, description="number of training epochs")
    batch_size: int = Field(32, ge=1, description="clips per worker per step")
    val_batch_size: int | None = Field(None, ge=1, description="clips per worker per validation step "
                                                               "(default: batch_size)")
    val_begin: int = Field(1, ge=1, description="first epoch that may be validated")
    val_interval: int = Field(2, ge=1, description="validate every N epochs (and after the last epoch)")
    amp: Literal["none", "fp16", "bf16"] = Field("none", description="mixed precision: fp16 (GPU, with loss "
                                                                   "scaling) or bf16 (GPU with bf16, CPU)")
    loss_scale: float | Literal["dynamic"] = Field(512.0, description="fp16 initial loss scale (mmaction2 "
                                                                      "fp16=dict(loss_scale=512.)), dynamic "
                                                                      "growth either way")
    accumulative_counts: int = Field(1, ge=1, description="gradient accumulation: optimizer step every N batches")
    class_weight: list[float] | None = Field(None, description="cross-entropy weight per class (null = equal)")
    early_stopping: EarlyStoppingConfig = Field(EarlyStoppingConfig(), description="early stopping")
    max_nonfinite_steps: int = Field(20, ge=0, description="NaN/inf losses are skipped (logged); more than "
                                                           "this many in a row stops the run with an error")
    seed: int = Field(0, description="seed of weights init, shuffling, augmentation and dropout")
    deterministic: bool = Field(False, description="deterministic GPU kernels (no cuDNN autotuning), so a GPU run "
                                                   "repeats and resumes bit for bit; slower. CPU runs already do")
    compile: Literal["none", "default", "reduce-overhead", "max-autotune"] = Field(
        "none", description="torch.compile the model for the training steps (inductor; validation, checkpoints and "
                           "export use the same weights uncompiled). 'reduce-overhead' also replays the step as CUDA "
                           "graphs (a small model's per-step launch cost on a GPU), 'max-autotune' also autotunes "
                           "kernels; both GPU only. The first step compiles (about 40-100 s). Pays on a GPU; on a "
                           "CPU the fused kernels that compiling switches off are faster (docs/training.md)")
    log_interval: int = Field(20, ge=0, description="console/TensorBoard loss every N iterations (0 = per epoch only)")
    test_after_train: bool = Field(True, description="after training, evaluate the best model on the test "
                                                     "split (if it has clips) with pipeline.test_num_clips clips "
                                                     "per sample, the number validation uses (1 in the presets)")

    @field_validator("compile", mode="before")
    @classmethod
    def _yaml_off(cls, v):
        return "none" if v is False else v  # YAML reads `compile: off` (and `false`, `no`) as false

    @field_validator("class_weight")
    @classmethod
    def _positive(cls, v: list[float] | None) -> list[float] | None:
        if v is not None and (not v or any(w <= 0 for w in v)):
            raise ValueError(f"class weights must be positive, got {v}")
        return v


class CheckpointSection(StrictModel):
    num_to_keep: int = Field(5, ge=1, description="checkpoints kept (the best by score_attribute and the latest "
                                                  "are always among them)")
    score_attribute: Literal["val/acc_top1", "val/mean_class_accuracy"] = Field(
        "val/acc_top1", description="metric ranking checkpoints (higher is better)")


class RunSection(StrictModel):
    name: SafeName = Field("stgcnpp", description="run name: the run folder is storage_path/name; re-running with "
                                             "the same name continues the run from its latest checkpoint")
    storage_path: str = Field("work_dirs", description="folder holding runs: local, or an NFS path shared by "
                              "all nodes on a cluster (not s3://: the job writes its run folder and prepared "
                              "datasets as files; Tune's --storage-path takes s3://)")
    max_failures: int = Field(3, ge=-1, description="worker-group failures recovered from the latest "
                                                    "checkpoint (-1 = unlimited)")
    ray_log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "WARNING", description="Ray Train's own console logs (INFO shows every report and checkpoint)")
    resume: Literal["auto", "never"] = Field("auto", description="'auto' continues an existing run of the same "
                                                                 "name; 'never' refuses to start if it exists")


class TrainJobConfig(StrictModel):
    data: DataConfig = Field(DataConfig(), description="datasets")
    model: ModelConfig = Field(ModelConfig(), description="STGCN++ backbone and GCN head")
    pipeline: PipelineConfig = Field(PipelineConfig(), description="skeleton pipeline and augmentations")
    optim: OptimConfig = Field(OptimConfig(), description="optimizer")
    schedule: ScheduleConfig = Field(ScheduleConfig(), description="learning-rate schedule")
    train: TrainConfig = Field(TrainConfig(), description="training loop")
    scaling: ScalingSection = Field(ScalingSection(), description="Ray Train workers and resources")
    checkpoint: CheckpointSection = Field(CheckpointSection(), description="checkpoint retention")
    run: RunSection = Field(RunSection(), description="run name, storage, fault tolerance")
    wandb: WandbConfig = Field(WandbConfig(), description="Weights & Biases (offline unless mode=online)")

    @model_validator(mode="before")
    @classmethod
    def _derive_in_channels(cls, data):
        # model.in_channels follows the pipeline's features unless set explicitly (then it must agree).
        if isinstance(data, dict):
            model = data.get("model")
            model = dict(model) if isinstance(model, dict) else ({} if model is None else model)
            if isinstance(model, dict) and "in_channels" not in model:
                pipe = data.get("pipeline", {})
                try:
                    pcfg = pipe if isinstance(pipe, PipelineConfig) else PipelineConfig.model_validate(pipe or {})
                except Exception:  # the pipeline section's own errors are reported by its validation
                    return data
                model["in_channels"] = pcfg.in_channels
                data = {**data, "model": model}
        return data

    @model_validator(mode="after")
    def _cross_checks(self) -> "TrainJobConfig":
        k = self.model.num_classes
        if self.model.in_channels != self.pipeline.in_channels:
            raise ValueError(f"model.in_channels={self.model.in_channels} but pipeline.feats "
                             f"{self.pipeline.feats} give {self.pipeline.in_channels} channels "
                             "(leave model.in_channels unset to derive it)")
        if self.train.class_weight is not None and len(self.train.class_weight) != k:
            raise ValueError(f"train.class_weight has {len(self.train.class_weight)} entries but "
                             f"model.num_classes={k}")
        if self.data.label_names is not None and len(self.data.label_names) != k:
            raise ValueError(f"data.label_names has {len(self.data.label_names)} names but model.num_classes={k}")
        if self.train.val_begin > self.train.epochs:
            raise ValueError(f"train.val_begin={self.train.val_begin} is after the last epoch "
                             f"({self.train.epochs}): the run would never validate")
        if self.schedule.warmup_epochs >= self.train.epochs and self.train.epochs > 1:
            raise ValueError(f"schedule.warmup_epochs={self.schedule.warmup_epochs} must be shorter than "
                             f"train.epochs={self.train.epochs}")
        if self.train.amp == "fp16" and not self.scaling.use_gpu:
            raise ValueError("train.amp=fp16 needs scaling.use_gpu=true (fp16 loss scaling is a GPU recipe); "
                             "use train.amp=bf16 on CPU")
        if self.train.compile in CUDA_GRAPH_MODES and not self.scaling.use_gpu:
            raise ValueError(f"train.compile={self.train.compile} captures CUDA graphs: it needs scaling.use_gpu=true; "
                             "use train.compile=default (or none, faster) on CPU")
        if self.train.compile in CUDA_GRAPH_MODES and self.train.accumulative_counts > 1:
            # CUDA graph trees hand the first micro-batch's gradient buffer to .grad and overwrite it on the next
            # replay: accumulated gradients come out wrong without an error (pytorch/pytorch#169545, open)
            raise ValueError(f"train.compile={self.train.compile} (CUDA graphs) gives wrong accumulated gradients "
                             f"with train.accumulative_counts={self.train.accumulative_counts}; use "
                             "train.compile=default, or accumulative_counts=1")
        if self.train.compile in CUDA_GRAPH_MODES and self.scaling.num_workers > 1:
            # DDP reads each gradient from a hook after the graph's backward; under CUDA graph trees those are the
            # graph's reused output buffers (the accumulation bug above). Not verified on more than one GPU (no such
            # machine here), so not offered there yet
            raise ValueError(f"train.compile={self.train.compile} (CUDA graphs) is for one worker; with "
                             f"scaling.num_workers={self.scaling.num_workers} use train.compile=default")
        if self.data.is_demo and k != 2:
            raise ValueError(f"the built-in demo data has 2 classes but model.num_classes={k}; set data.path "
                             "or data.train_pkl")
        return self

    def late_milestones_note(self) -> str | None:
        """One line when a multistep milestone falls at or after the last epoch (it never decays the lr), else None.

        Milestones count epochs after the warmup (mmengine's begin=warmup). mmengine trains such a config without a
        word (`milestones=[40, 50]` of 30 epochs: a constant lr); a config stays loadable (an old run, a short
        `--set train.epochs=2` check of a preset), so the training jobs print this before they start and the
        search spaces refuse a choice that gets it (tune/search_space.py)."""
        begin = math.ceil(self.schedule.warmup_epochs)
        late = [m for m in self.schedule.milestones if begin + m >= self.train.epochs]
        if self.schedule.type != "multistep" or not late:
            return None
        return (f"schedule.milestones={self.schedule.milestones} count epochs after the warmup "
                f"(schedule.warmup_epochs={self.schedule.warmup_epochs:g}, so from epoch {begin}): {late} would decay "
                f"the lr after the last of train.epochs={self.train.epochs}, i.e. never; keep each milestone below "
                f"{self.train.epochs - begin} (schedule.milestones=[] for none) or set schedule.type=constant")

    @property
    def cosine_t_max(self) -> int:
        return self.schedule.T_max or max(1, int(round(self.train.epochs - self.schedule.warmup_epochs)))
