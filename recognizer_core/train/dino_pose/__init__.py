"""DINO pose (keypoint heatmap) training on the shared core (`recognizer_core.train`)."""
