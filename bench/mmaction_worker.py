"""mmaction2 1.2.0 side of the benchmarks; runs under .bench_venv_mmaction2/bin/python, driven by bench/*.py.

A long-lived process so the driver can alternate our timings with mmaction2's (same moment, same machine
load). Protocol: one JSON command per stdin line, one `@@RESULT <json>` line per command on stdout (other
output, e.g. mmaction2's import warnings, is ignored by the driver).

Commands:
  {"cmd": "pipeline", "data": pkl, "test_mode": bool, "feats": [...], "clip_len": int, "num_clips": int,
   "num_person": int}                        -> builds the Compose and loads the annotations
  {"cmd": "run_pipeline", "dump": pkl|null} -> one pass over all annotations: {"seconds", "n"}
  {"cmd": "model", "data": npz, "threads": int, "num_classes": int, "backbone": {...}, "lr": float}
  {"cmd": "train_steps", "steps": int}      -> {"seconds", "cpu_seconds", "loss"}
  {"cmd": "quit"}
"""
from __future__ import annotations

import copy
import json
import pickle
import sys
import time
import warnings

warnings.filterwarnings("ignore")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from mmengine.dataset import Compose  # noqa: E402
from mmengine.registry import init_default_scope  # noqa: E402

import mmaction.datasets.transforms  # noqa: E402,F401  (registers the transforms)
from mmaction.models import GCNHead, STGCN  # noqa: E402

init_default_scope("mmaction")
state: dict = {}


def _pipeline(cmd: dict) -> dict:
    with open(cmd["data"], "rb") as f:
        state["anns"] = pickle.load(f)
    state["compose"] = Compose([
        dict(type="PreNormalize2D"),
        dict(type="GenSkeFeat", dataset="coco", feats=cmd["feats"]),
        dict(type="UniformSampleFrames", clip_len=cmd["clip_len"], num_clips=cmd["num_clips"],
             test_mode=cmd["test_mode"]),
        dict(type="PoseDecode"),
        dict(type="FormatGCNInput", num_person=cmd["num_person"]),
    ])
    return {"n": len(state["anns"])}


def _run_pipeline(cmd: dict) -> dict:
    compose, anns = state["compose"], state["anns"]
    outs = []
    t0 = time.perf_counter()
    for ann in anns:
        # PoseDataset.get_data_info deep-copies each annotation; PreNormalize2D then edits it in place.
        outs.append(compose(copy.deepcopy(ann))["keypoint"])
    seconds = time.perf_counter() - t0
    if cmd.get("dump"):
        with open(cmd["dump"], "wb") as f:
            pickle.dump(outs, f)
    return {"seconds": seconds, "n": len(anns)}


def _model(cmd: dict) -> dict:
    torch.set_num_threads(int(cmd["threads"]))
    torch.manual_seed(0)
    data = np.load(cmd["data"])
    device = torch.device(cmd.get("device", "cpu"))
    state["x"], state["y"] = torch.from_numpy(data["x"]).to(device), torch.from_numpy(data["y"]).long().to(device)
    bb = dict(graph_cfg=dict(layout="coco", mode="spatial"), gcn_adaptive="init", gcn_with_res=True,
              tcn_type="mstcn", **cmd["backbone"])
    backbone = STGCN(**bb).to(device)
    head = GCNHead(num_classes=cmd["num_classes"], in_channels=cmd["head_in_channels"], dropout=cmd["dropout"]).to(device)
    backbone.train()
    head.train()
    params = list(backbone.parameters()) + list(head.parameters())
    state["net"] = (backbone, head)
    state["opt"] = torch.optim.SGD(params, lr=cmd["lr"], momentum=0.9, nesterov=True, weight_decay=5e-4)
    return {"num_parameters": sum(p.numel() for p in params), "threads": torch.get_num_threads()}


def _train_steps(cmd: dict) -> dict:
    backbone, head = state["net"]
    opt, x, y = state["opt"], state["x"], state["y"]
    cuda = x.device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(int(cmd["steps"])):
        # RecognizerGCN.loss: backbone (N, M, T, V, C) -> GCNHead (pools persons) -> cross entropy. bf16: the
        # autocast that mmengine's AmpOptimWrapper(dtype='bfloat16') wraps the forward in.
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bool(cmd.get("bf16"))):
            logits = head(backbone(x))
        loss = F.cross_entropy(logits.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    if cuda:
        torch.cuda.synchronize()
    return {"seconds": time.perf_counter() - t0, "cpu_seconds": time.process_time() - c0, "loss": float(loss)}


HANDLERS = {"pipeline": _pipeline, "run_pipeline": _run_pipeline, "model": _model, "train_steps": _train_steps}


def main() -> None:
    import mmaction

    print("@@RESULT " + json.dumps({"ready": True, "mmaction2": mmaction.__version__,
                                    "torch": torch.__version__}), flush=True)
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["cmd"] == "quit":
            break
        try:
            result = HANDLERS[cmd["cmd"]](cmd)
        except Exception as err:  # report to the driver instead of dying silently
            result = {"error": f"{type(err).__name__}: {err}"}
        print("@@RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
