"""Exported models: the best STGCN++ model in mmaction2 format (`mmaction`), ONNX (`onnx*`)."""
