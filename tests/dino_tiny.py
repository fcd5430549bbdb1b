"""Tiny random DINO checkpoints for the DINO pose tests (no weights can be downloaded here).

They are written with `save_pretrained` and loaded back through `AutoModel.from_pretrained(path)`: the code path
a real local checkpoint (`huggingface-cli download facebook/dinov2-base --local-dir ...`) takes.
"""
from __future__ import annotations

from pathlib import Path


def make_tiny_dino(directory: Path, kind: str = "dinov2", **overrides) -> Path:
    import torch
    from transformers import Dinov2Config, Dinov2Model, Dinov2WithRegistersConfig, Dinov2WithRegistersModel, \
        DINOv3ViTConfig, DINOv3ViTModel

    torch.manual_seed(0)
    common = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    common.update(overrides)
    if kind == "dinov2":
        model = Dinov2Model(Dinov2Config(patch_size=14, image_size=56, **common))
    elif kind == "dinov2_registers":
        model = Dinov2WithRegistersModel(Dinov2WithRegistersConfig(patch_size=14, image_size=56,
                                                                   num_register_tokens=4, **common))
    elif kind == "dinov3":
        model = DINOv3ViTModel(DINOv3ViTConfig(patch_size=16, image_size=64, num_register_tokens=4, **common))
    else:
        raise ValueError(kind)
    directory = Path(directory)
    model.save_pretrained(directory)
    return directory


def tiny_job_overrides(backbone: Path, coco: Path, storage: Path, *, epochs: int = 1, size=(64, 48),
                       heatmap=(16, 12)) -> list[str]:
    """`--set` overrides of a DINO pose job that trains in seconds on the shared 4-image COCO sample."""
    return [
        f"model.backbone={backbone}", "model.feature_layers=[-2, -1]", "model.stem_channels=[8, 16]",
        "model.fuser_channels=16", "model.decoder_channels=16",
        f"data.train_image_dir={coco}", f"data.train_annotation_file={coco / 'test_coco.json'}",
        f"data.val_image_dir={coco}", f"data.val_annotation_file={coco / 'test_coco.json'}",
        f"data.image_size=[{size[0]}, {size[1]}]", f"data.heatmap_size=[{heatmap[0]}, {heatmap[1]}]",
        "data.heatmap_sigma=1.0", "data.num_workers=0",
        f"train.epochs={epochs}", "train.batch_size=4", "train.log_interval=1", "train.vis_num_images=2",
        "optim.warmup_epochs=0.5", "optim.lr=1e-3",
        "scaling.num_workers=1", "scaling.cpus_per_worker=0.5", "scaling.use_gpu=false",
        f"run.storage_path={storage}", "run.name=tiny", "wandb.enabled=false",
    ]
