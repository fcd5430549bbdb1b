"""COCO person keypoints for the DINO pose model: top-down dataset, heatmaps, augmentation, evaluation, drawing."""
