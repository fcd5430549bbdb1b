"""mmaction2 1.2.0's training path for the fight preset, run under .bench_venv_mmaction2/bin/python by
bench/bench_train.py: PoseDataset(pkl) + the guide's train pipeline + DataLoader(pseudo_collate) +
RecognizerGCN(STGCN, GCNHead with class weights) + OptimWrapper(AdamW, clip_grad) and `model.train_step`, which is
what mmengine's EpochBasedTrainLoop runs per iteration (without the hooks). Prints `@@RESULT <json>`.

    .bench_venv_mmaction2/bin/python bench/mmaction_train_loop.py --pkl train.pkl --epochs 3 --batch 16 \
        --workers 2 --threads 2
"""
from __future__ import annotations

import argparse
import json
import time
import warnings

warnings.filterwarnings("ignore")

import torch  # noqa: E402
from mmengine.dataset import DefaultSampler, pseudo_collate  # noqa: E402
from mmengine.optim import build_optim_wrapper  # noqa: E402
from mmengine.registry import init_default_scope  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

init_default_scope("mmaction")
from mmaction.datasets import PoseDataset  # noqa: E402
from mmaction.registry import MODELS  # noqa: E402
from mmaction.utils import register_all_modules  # noqa: E402

register_all_modules()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pkl", required=True)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--clip-len", type=int, default=100)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    pipeline = [dict(type="PreNormalize2D"), dict(type="GenSkeFeat", dataset="coco", feats=["b"]),
                dict(type="UniformSampleFrames", clip_len=args.clip_len), dict(type="PoseDecode"),
                dict(type="FormatGCNInput", num_person=4), dict(type="PackActionInputs")]
    dataset = PoseDataset(ann_file=args.pkl, pipeline=pipeline, split="train")
    loader = DataLoader(dataset, batch_size=args.batch, num_workers=args.workers, collate_fn=pseudo_collate,
                        sampler=DefaultSampler(dataset, shuffle=True, seed=0),
                        persistent_workers=args.workers > 0, pin_memory=args.device != "cpu")
    model = MODELS.build(dict(
        type="RecognizerGCN",
        backbone=dict(type="STGCN", gcn_adaptive="init", gcn_with_res=True, tcn_type="mstcn",
                      graph_cfg=dict(layout="coco", mode="spatial"), num_stages=4, base_channels=64,
                      inflate_stages=[2], down_stages=[2]),
        cls_head=dict(type="GCNHead", num_classes=2, in_channels=128, dropout=0.3,
                      loss_cls=dict(type="CrossEntropyLoss", class_weight=[1.2, 1.0])))).to(args.device)
    model.train()
    optim = build_optim_wrapper(model, dict(
        type="OptimWrapper", optimizer=dict(type="AdamW", lr=1e-4, weight_decay=1e-3, betas=(0.9, 0.999), eps=1e-8),
        clip_grad=dict(max_norm=2.0, norm_type=2)))
    epochs = []
    for epoch in range(args.epochs):
        loader.sampler.set_epoch(epoch)
        n, wait = 0, 0.0
        t0 = time.perf_counter()
        it = iter(loader)
        while True:
            t_fetch = time.perf_counter()
            try:
                data = next(it)
            except StopIteration:
                break
            wait += time.perf_counter() - t_fetch
            model.train_step(data, optim)
            n += len(data["inputs"])
        if args.device != "cpu":
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        epochs.append({"samples": n, "seconds": dt, "samples_per_s": n / dt, "data_wait_frac": wait / dt})
    import mmaction

    print("@@RESULT " + json.dumps({"mmaction2": mmaction.__version__, "torch": torch.__version__,
                                    "threads": torch.get_num_threads(), "epochs": epochs}), flush=True)


if __name__ == "__main__":
    main()
