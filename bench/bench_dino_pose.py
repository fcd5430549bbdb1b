"""DINO pose training step: what the Ray job's worker runs vs the seed guide's loop as a user would write it.

Guide loop (the reference): the torchrun-style script of the seed guide (`torchrun train_human_pose.py`): the
model in DistributedDataParallel (gloo here, world size 1 in this process: the per-step work of one rank),
float32 throughout, the backbone frozen with `requires_grad_(False)` and called in grad mode (autograd records
nothing through it since none of its tensors needs a gradient), AdamW over the parameters that need one.
Ours: the same model as `rayjobs/train_dino_pose.py`'s worker builds it (`build_dino_pose_model`, DDP as Ray
Train's prepare_model wraps it): the backbone under no_grad in bfloat16 where the GPU supports it
(model.backbone_dtype=auto, float32 on CPU) and the heads under AMP on GPU. Same batch, alternated repeat by
repeat; ratio = guide seconds / our seconds per pair (median, min-max). Also reported: the backbone's share of
our step. What the Ray job adds on top (Ray start-up, TorchTrainer set-up, checkpoint upload) is a per-job fixed
cost, not per step; it is not timed here.

The backbone is a DINO architecture with random weights by default (no download): `--arch dinov2-small|base|large`
or `dinov3-vits16|vitb16`; `--backbone PATH` times a real local checkpoint instead.
Prints ONE JSON line.

    .venv/bin/python bench/bench_dino_pose.py [--arch dinov2-small] [--image-size 224 224] [--batch 4]
        [--repeats 5] [--steps 1] [--out bench/results/dino_pose.jsonl]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import machine, median, now, save_result  # noqa: E402
from recognizer_core.models.dino_heads import weighted_heatmap_mse  # noqa: E402
from recognizer_core.models.dino_pose import KEYPOINT_HEAD, DinoPoseModelConfig, build_dino_pose_model  # noqa: E402
from recognizer_core.train.amp import amp_plan  # noqa: E402

ARCHS = {  # the published configs' shapes (hidden, layers, heads, mlp, patch, registers)
    "dinov2-small": (384, 12, 6, 1536, 14, 0), "dinov2-base": (768, 12, 12, 3072, 14, 0),
    "dinov2-large": (1024, 24, 16, 4096, 14, 0),
    "dinov3-vits16": (384, 12, 6, 1536, 16, 4), "dinov3-vitb16": (768, 12, 12, 3072, 16, 4),
}


def random_backbone(arch: str, directory: Path) -> str:
    from transformers import Dinov2Config, Dinov2Model, DINOv3ViTConfig, DINOv3ViTModel

    hidden, layers, heads, mlp, patch, regs = ARCHS[arch]
    common = dict(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads, intermediate_size=mlp,
                  patch_size=patch)
    if arch.startswith("dinov2"):
        model = Dinov2Model(Dinov2Config(image_size=518, **common))
    else:
        model = DINOv3ViTModel(DINOv3ViTConfig(image_size=224, num_register_tokens=regs, layerscale_value=1.0,
                                               **common))
    model.save_pretrained(directory)
    return str(directory)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def make_variant(backbone: str, *, reference: bool, args, device: torch.device):
    from torch.nn.parallel import DistributedDataParallel as DDP

    cfg = DinoPoseModelConfig(backbone=backbone, backbone_dtype="float32" if reference else "auto")
    model = build_dino_pose_model(cfg, image_size=tuple(args.image_size), heatmap_size=tuple(args.heatmap_size),
                                  device=device)
    if reference:  # the guide: backbone.requires_grad_(False), called in grad mode, fp32
        model.backbone.vit.requires_grad_(False)
        model.backbone.forward = lambda images, _bb=model.backbone: _grad_forward(_bb, images)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    amp_dtype = amp_plan("none" if reference else "auto", device).dtype
    ddp = DDP(model, device_ids=[device.index or 0] if device.type == "cuda" else None)
    return ddp, opt, amp_dtype


def _grad_forward(bb, images):
    b, _, h, w = images.shape
    gh, gw = h // bb.patch_size[0], w // bb.patch_size[1]
    out = bb.vit(pixel_values=images, output_hidden_states=True)
    norm = getattr(bb.vit, bb._norm_name)
    return [norm(out.hidden_states[i + 1])[:, bb.num_prefix_tokens:].reshape(b, gh, gw, -1).permute(0, 3, 1, 2)
            for i in bb.feature_layers]


def train_steps(model, opt, amp_dtype, batch, steps: int, device) -> float:
    images, target, weight = batch
    autocast = torch.autocast(device.type, dtype=amp_dtype) if amp_dtype else torch.autocast(device.type,
                                                                                             enabled=False)
    sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        with autocast:
            pred = model(images)[KEYPOINT_HEAD]  # model: the DDP wrapper
        loss = weighted_heatmap_mse(pred, target, weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    sync(device)
    return (time.perf_counter() - t0) / steps


def backbone_forward(model, images, steps: int, device) -> float:
    sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        model.module.backbone(images)
    sync(device)
    return (time.perf_counter() - t0) / steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="dinov2-small", choices=sorted(ARCHS))
    ap.add_argument("--backbone", default=None, help="local checkpoint directory instead of --arch")
    ap.add_argument("--image-size", type=int, nargs=2, default=[224, 224])
    ap.add_argument("--heatmap-size", type=int, nargs=2, default=None, help="default: image-size / 4")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--steps", type=int, default=1)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    args.heatmap_size = args.heatmap_size or [args.image_size[0] // 4, args.image_size[1] // 4]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    import torch.distributed as dist

    pg_dir = tempfile.mkdtemp()  # one rank of a torchrun job: a process group of size 1, no network
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", init_method=f"file://{pg_dir}/pg",
                            rank=0, world_size=1)
    with tempfile.TemporaryDirectory() as tmp:
        backbone = args.backbone or random_backbone(args.arch, Path(tmp) / args.arch)
        ours = make_variant(backbone, reference=False, args=args, device=device)
        ref = make_variant(backbone, reference=True, args=args, device=device)
    h, w = args.image_size
    batch = (torch.randn(args.batch, 3, h, w, device=device),
             torch.rand(args.batch, 17, *args.heatmap_size, device=device), torch.ones(args.batch, 17, device=device))
    for m, o, a in (ours, ref):  # warm-up (allocator, kernels)
        train_steps(m, o, a, batch, 1, device)
    t_ours, t_ref, t_bb = [], [], []
    for _ in range(args.repeats):
        t_ours.append(train_steps(*ours, batch, args.steps, device))
        t_ref.append(train_steps(*ref, batch, args.steps, device))
        with torch.autocast(device.type, enabled=False):
            t_bb.append(backbone_forward(ours[0], batch[0], args.steps, device))
    dist.destroy_process_group()
    step_ours, step_ref, bb = median(t_ours), median(t_ref), median(t_bb)
    pairs = [r / o for r, o in zip(t_ref, t_ours)]
    result = {
        "bench": "dino_pose_train_step", "date": now(), "machine": machine(), "device": str(device),
        "backbone": args.backbone or f"random {args.arch}", "backbone_dtype": str(ours[0].module.backbone.dtype),
        "image_size": args.image_size, "heatmap_size": args.heatmap_size, "batch": args.batch,
        "torch_threads": torch.get_num_threads(),
        "reference": "seed guide loop: DDP, fp32, backbone requires_grad_(False)", "repeats": args.repeats,
        "ours_images_per_s": round(args.batch / step_ours, 2),
        "guide_loop_images_per_s": round(args.batch / step_ref, 2),
        "ratio_vs_guide_loop": {"median": round(median(pairs), 3), "min": round(min(pairs), 3),
                                "max": round(max(pairs), 3)},
        "ours_step_ms": round(step_ours * 1e3, 1), "guide_loop_step_ms": round(step_ref * 1e3, 1),
        "backbone_forward_ms": round(bb * 1e3, 1), "backbone_share_of_step": round(bb / step_ours, 3),
        "trainable_params": sum(p.numel() for p in ours[0].module.trainable_parameters()),
        "backbone_params": sum(p.numel() for p in ours[0].module.backbone.parameters()),
    }
    save_result(result, args.out)


if __name__ == "__main__":
    main()
