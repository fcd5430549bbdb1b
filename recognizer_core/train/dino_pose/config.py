"""`DinoPoseJobConfig`: every setting of the DINO pose training job (the DINO pose guide's defaults).

Sections mirror the STGCN++ job's (`scaling`, `checkpoint`, `run`, `wandb`) so the tuner and the docs treat
both jobs alike. The guide's command-line flags are mapped onto these fields by `rayjobs/train_dino_pose.py`.
"""
from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from recognizer_core.coco_pose.dataset import CocoPoseDataConfig
from recognizer_core.config import SafeName, StrictModel
from recognizer_core.models.dino_pose import DinoPoseModelConfig
from recognizer_core.train.experiment_log import WandbConfig
from recognizer_core.train.sections import ScalingSection


class DinoOptimConfig(StrictModel):
    lr: float = Field(1e-4, gt=0, description="AdamW learning rate of the trainable parts (stem + heads)")
    weight_decay: float = Field(1e-4, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_epochs: float = Field(1.0, ge=0, description="linear warmup (per iteration) before the cosine")
    warmup_start_factor: float = Field(0.001, gt=0, le=1)
    min_lr_ratio: float = Field(0.01, ge=0, le=1, description="cosine floor as a fraction of lr")
    clip_grad_max_norm: float | None = Field(None, gt=0, description="gradient clipping (null = off)")


class DinoTrainConfig(StrictModel):
    epochs: int = Field(100, ge=1)
    batch_size: int = Field(16, ge=1, description="crops per worker per step")
    val_batch_size: int | None = Field(None, ge=1, description="default: batch_size")
    val_interval: int = Field(1, ge=1, description="validate every N epochs (and after the last)")
    amp: Literal["auto", "none", "bf16", "fp16"] = Field(
        "auto", description="mixed precision of the trainable parts: auto = bf16 on GPUs that support it, fp16 "
                            "(loss scaling) on older GPUs, none on CPU")
    flip_test: bool = Field(True, description="average heatmaps of the crop and its mirror at validation")
    oks_nms_threshold: float = Field(0.9, gt=0, le=1, description="OKS-NMS of validation results on every image, "
                                                                   "ground-truth or detection boxes (1.0 keeps all)")
    keypoint_score_threshold: float = Field(0.2, ge=0, le=1, description="keypoints counted in instance scores")
    vis_num_images: int = Field(4, ge=0, description="validation crops drawn into the skeleton PNG")
    log_interval: int = Field(50, ge=0, description="log the running loss every N steps (0 = per epoch)")
    max_nonfinite_steps: int = Field(20, ge=0, description="NaN/inf losses are skipped; more than this many in "
                                                           "a row stops the run with an error")
    seed: int = 0


class DinoCheckpointConfig(StrictModel):
    num_to_keep: int = Field(1, ge=1, description="best checkpoints kept by val/AP (the latest is kept too)")


class DinoRunConfig(StrictModel):
    name: SafeName = Field("human_pose", description="run folder under storage_path; re-running the same name resumes "
                                                "from its latest checkpoint")
    storage_path: str = Field("checkpoints_human_pose", description="where runs, checkpoints and logs go (the "
                                                                    "guide's --checkpoint_dir); NFS/S3 for clusters")
    max_failures: int = Field(0, ge=-1, description="worker-group failures recovered from the latest checkpoint")
    resume_from: str | None = Field(None, description="start from this checkpoint directory or its "
                                                      "training_state.pt / latest_checkpoint.pth (weights, "
                                                      "optimizer, epoch), local or s3://, when the run has no "
                                                      "checkpoint of its own")


class DinoPoseJobConfig(StrictModel):
    data: CocoPoseDataConfig = Field(CocoPoseDataConfig(), description="COCO keypoints and augmentation")
    model: DinoPoseModelConfig = Field(DinoPoseModelConfig(), description="backbone and heads")
    optim: DinoOptimConfig = Field(DinoOptimConfig(), description="AdamW and warmup + cosine schedule")
    train: DinoTrainConfig = Field(DinoTrainConfig(), description="loop, precision, validation")
    scaling: ScalingSection = Field(ScalingSection(), description="Ray Train workers (use_gpu: an explicit choice)")
    checkpoint: DinoCheckpointConfig = Field(DinoCheckpointConfig(), description="checkpoint retention")
    run: DinoRunConfig = Field(DinoRunConfig(), description="run name and storage")
    wandb: WandbConfig = Field(WandbConfig(enabled=True, project="DINOv3_HumanPose"),
                               description="Weights & Biases (offline unless mode=online)")

    @model_validator(mode="after")
    def _checks(self) -> DinoPoseJobConfig:
        (ih, iw), (hh, hw) = self.data.image_size, self.data.heatmap_size
        if min(ih, iw) < 16 or min(hh, hw) < 4:
            raise ValueError(f"data.image_size={self.data.image_size} / data.heatmap_size={self.data.heatmap_size} "
                             "are too small (image >= 16, heatmap >= 4 pixels a side)")
        if hh > ih or hw > iw:
            raise ValueError(f"data.heatmap_size={self.data.heatmap_size} is larger than data.image_size="
                             f"{self.data.image_size}")
        if self.optim.warmup_epochs >= self.train.epochs and self.train.epochs > 1:
            raise ValueError(f"optim.warmup_epochs={self.optim.warmup_epochs} must be shorter than "
                             f"train.epochs={self.train.epochs}")
        return self

    def require_data(self) -> None:
        """The data paths are optional in the file (presets carry none) but needed to run."""
        missing = [f"data.{k}" for k in ("train_image_dir", "train_annotation_file", "val_image_dir",
                                         "val_annotation_file") if not getattr(self.data, k)]
        if missing:
            raise ValueError(f"set {', '.join(missing)} (or --train_image_dir ... on the command line)")
