"""Loader processes that cannot hand a batch over do not hang the training: /dev/shm is checked before they start
(check_loader_shm), and a batch that never comes ends in an error naming the likely causes (WatchedLoader).

Loader processes hand batches over in files under /dev/shm (torch's file_descriptor and file_system sharing both):
one that cannot allocate its batch there prints 'unable to allocate shared memory(shm)' from its queue's feeder
thread, the batch is lost, and torch's DataLoader, without a timeout, waits for it forever (Docker's default 64 MB
/dev/shm at batch 128).
"""
from __future__ import annotations

import os
import shutil
import time

import torch.utils.data
from torch.utils.data import DataLoader

from recognizer_core.skeleton.clip import SkeletonDataError

SHM_DIR = "/dev/shm"
# A loader process that lost a batch leaves the training worker waiting forever (torch's default: no timeout). No
# batch takes minutes: preparing one is well under a second; the slowest, a loader's first or one at a window
# boundary, waits for its share of a window read (2048 clips, ~180 MB: under a second from local disk, 1-2 minutes
# from object storage even at 1-2 MB/s). 10 minutes is far above that, and still ends a hang.
LOADER_TIMEOUT_S = 600


class LoaderSharedMemoryError(SkeletonDataError):
    """/dev/shm is too small for the batches the loader processes hand over. A SkeletonDataError so that Ray Train
    ends the run at once (ray_run.StopOnDataError) instead of retrying: every retry on this node fails the same."""


def shm_free_bytes() -> int | None:
    """Free bytes in /dev/shm (None: there is none): loader processes hand batches over in files there, with both
    of torch's sharing strategies (file_descriptor, Linux's default, and file_system)."""
    try:
        return shutil.disk_usage(SHM_DIR).free
    except OSError:
        return None


def check_loader_shm(batch_bytes: int, loader_workers: int, prefetch: int, num_batches: int) -> None:
    """Refuses loader processes whose batches /dev/shm cannot hold: one that cannot allocate its batch there (torch
    prints 'unable to allocate shared memory(shm)') loses it, and the training worker waits for it forever."""
    free = shm_free_bytes()
    if loader_workers == 0 or free is None:
        return
    # held at once: `prefetch` batches per process (at most an epoch's), the step's and the one arriving (22.6 MB
    # measured, 24.9 computed), per rank on this node (LOCAL_WORLD_SIZE, from Ray Train): they share /dev/shm
    ranks = max(1, int(os.environ.get("LOCAL_WORLD_SIZE") or 1))
    need = batch_bytes * (min(loader_workers * prefetch, num_batches) + 2) * ranks
    if free < need:
        mb = 1024 * 1024
        raise LoaderSharedMemoryError(
            f"{SHM_DIR} has {free / mb:.1f} MB free, but data.loader_workers={loader_workers} with "
            f"data.prefetch_batches={prefetch} need about {need / mb:.1f} MB there for their batches "
            f"({batch_bytes / mb:.1f} MB each; a full /dev/shm hangs the training): give the container a larger "
            "/dev/shm (docker run --shm-size=2g; Kubernetes: an emptyDir with medium: Memory mounted on /dev/shm) "
            "or set --set data.loader_workers=0 (batches prepared in the training process)")


class _PollingIter(torch.utils.data.dataloader._MultiProcessingDataLoaderIter):
    """torch's iterator, waiting for a batch in its 5 s polls (each checks that the loader processes live) until the
    timeout, instead of one wait of the whole timeout: off the main thread (Ray Train's training thread) torch has
    no SIGCHLD handler, and a killed loader process (OOM killer) went unnoticed for the 600 s instead of 5 s."""

    def _get_data(self):
        if not self._timeout:
            return super()._get_data()
        deadline = time.monotonic() + self._timeout
        while not self._pin_memory or self._pin_memory_thread.is_alive():
            ok, data = self._try_get_data()
            if ok:
                return data
            if time.monotonic() > deadline:
                raise RuntimeError(f"DataLoader timed out after {self._timeout} seconds")
        raise RuntimeError("Pin memory thread exited unexpectedly")


class WatchedLoader(DataLoader):
    """A DataLoader whose timeout (a stuck loader process) ends in an error naming the likely causes."""

    def _get_iterator(self):
        return _PollingIter(self) if self.num_workers > 0 else super()._get_iterator()

    def __iter__(self):
        batches = super().__iter__()
        while True:
            try:
                batch = next(batches)
            except StopIteration:
                return
            except RuntimeError as err:
                if not self.timeout or "timed out" not in str(err):
                    raise
                raise RuntimeError(
                    f"no batch from the {self.num_workers} loader process(es) in {self.timeout:g} s "
                    f"(data.loader_workers): one is stuck or lost its batch; look above for 'unable to allocate "
                    f"shared memory' (a full {SHM_DIR}: enlarge it, e.g. docker run --shm-size=2g) or a hung read "
                    "of the dataset; --set data.loader_workers=0 prepares batches in the training process") from err
            yield batch
