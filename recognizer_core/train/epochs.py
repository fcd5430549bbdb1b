"""Epoch numbering and report naming both products follow.

Epochs are numbered from 1 (epoch 1 is the first); a checkpoint's `epoch` is the number of completed epochs, so
a resumed run starts at `epoch + 1`. Every report carries `epoch`; validation metrics (`val/...`) appear only in
the reports of epochs where validation ran, never as a placeholder. The loss is `train/loss`, the learning rate
`lr`, and per-iteration values end in `_iter`.
"""
from __future__ import annotations


def should_validate(epoch: int, epochs: int, interval: int, begin: int = 1) -> bool:
    """mmengine's EpochBasedTrainLoop: after epoch e if e >= begin and e % interval == 0, and always after the
    last epoch."""
    return epoch >= begin and (epoch % interval == 0 or epoch == epochs)
