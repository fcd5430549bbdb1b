"""Runs under the mmaction2 side venv (bench/setup_mmaction2_venv.sh): mmaction2's own skeleton recognition
approach, as demo/demo_skeleton.py does it: one `inference_recognizer` call (test pipeline + model) per
window annotation. argv: config.py checkpoint.pth windows.pkl threads. Prints one JSON line."""
import json
import pickle
import sys
import time

import torch
from mmaction.apis import inference_recognizer, init_recognizer

cfg_path, ckpt, pkl, threads = sys.argv[1:5]
torch.set_num_threads(int(threads))
model = init_recognizer(cfg_path, ckpt, device="cpu")
with open(pkl, "rb") as f:
    annos = pickle.load(f)
inference_recognizer(model, {k: (v.copy() if hasattr(v, "copy") else v) for k, v in annos[0].items()})  # warm-up
copies = [{k: (v.copy() if hasattr(v, "copy") else v) for k, v in a.items()} for a in annos]
t0 = time.perf_counter()
scores = [inference_recognizer(model, a).pred_score.cpu().numpy().tolist() for a in copies]
print("@@RESULT " + json.dumps({"seconds": time.perf_counter() - t0, "n": len(annos), "scores": scores}))
