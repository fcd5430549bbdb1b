"""Exported model formats: ONNX + JSON sidecar (onnx.py), mmaction2 checkpoints (mmaction.py)."""
