"""Training data: shard the dataset per worker and batch it through the skeleton pipeline.

Every source becomes a Parquet skeleton store first (dataset_source.py: mmaction2 pkl files and the demo data are
converted once by the driver), so a worker opens the store, takes a split's rows (splits.py: from the ranges in `_dataset.json`,
never the per-clip index when they are there), and takes its own shard (row groups dealt round-robin to the
ranks, balanced to within a clip), all as row ranges, never a per-clip array. The shard is streamed, never
held: each epoch shuffles its row groups, then clips within a bounded window, all from (seed, epoch, rank) and
computed a window at a time, so memory and start-up are the same at 1k and 500k clips and a resumed run sees
the same batches (the next window is read ahead in a background thread while this one is served); batches are
prepared by `prepare_batch` in loader processes.
Every rank runs the same number of steps (DDP needs that). Training (`epoch_clips`): each rank's epoch is the
largest shard's size, its last batch short as mmengine's DataLoader (drop_last=False) leaves it, and a smaller
shard repeats the first clips of its epoch order to reach that size (at most one when shards are balanced), as
mmengine's DefaultSampler pads each rank's share, so no rank has an empty step and all last batches are equal.
Evaluation pads by wrapping to full batches; padded samples carry `valid=False` and are dropped before metrics.
"""
from __future__ import annotations

import logging
import os
import threading
from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from recognizer_core.skeleton.clip import SkeletonClip, SkeletonDataError
from recognizer_core.skeleton.store import SkeletonDataset
from recognizer_core.skeleton.store_ranges import RowRanges
from recognizer_core.skeleton.validate import empty_positions_for, scan_empty_positions, zero_far_joints
from recognizer_core.skeleton.transforms import PipelineConfig, prepare_batch
from recognizer_core.skeleton.transforms_torch import gather_batch
from recognizer_core.train.stgcn.config import DataConfig
from recognizer_core.train.stgcn import loader_watch
from recognizer_core.train.shard_order import BlockShuffle
# split_info, SplitInfo, shard_positions, ClipIds live in splits.py; callers use them as data.split_info etc.
from recognizer_core.train.splits import ClipIds, SplitInfo, row_blocks, shard_positions, split_info  # noqa: F401
# prepare_dataset lives in dataset_source.py; callers use it as data.prepare_dataset
from recognizer_core.train.stgcn.dataset_source import prepare_dataset  # noqa: F401

log = logging.getLogger("recognizer")


def is_empty_skeleton(clip: SkeletonClip) -> bool:
    return not (np.any(clip.keypoint_score > 0) or np.any(clip.keypoint != 0))


class StreamedShard:
    """One worker's clips, read from the store a bounded window at a time instead of held in memory.

    Holds its rows as RowRanges (O(row groups), not O(clips)); shard index i is the i-th row of the ranges, in
    store order. `load(indices)` reads the row groups holding them and validates the clips; ShardBatches keeps at
    most two windows of `buffer_clips` clips per loader process (the one served and the next, read ahead). Known
    all-zero clips (from the driver's cached validation report, else a scan of their keypoint columns) are left
    out up front, so `len()` is the number of usable clips, as with an in-memory shard."""

    def __init__(self, ds: SkeletonDataset, rows: RowRanges | np.ndarray, cfg: DataConfig, num_classes: int,
                 num_joints: int, source: str, *, empty: np.ndarray | None = None):
        self.ds, self.source = ds, source
        self.nan_policy = cfg.nan_policy
        self.num_classes, self.num_joints = num_classes, num_joints
        if not isinstance(rows, RowRanges):
            rows = RowRanges.from_positions(rows, ds.group_starts())
        self.ranges, self.skipped_positions = rows.without(empty if empty is not None else np.zeros(0, np.int64))
        # the row groups of the shard, numbered 0.. in store order: the unit of the block shuffle
        self.range_block = np.unique(self.ranges.groups, return_inverse=True)[1].reshape(-1)
        self.block_sizes = np.bincount(self.range_block, weights=self.ranges.lengths(),
                                       minlength=int(self.range_block.max(initial=-1)) + 1).astype(np.int64)

    def __len__(self) -> int:
        return len(self.ranges)

    @property
    def positions(self) -> np.ndarray:
        """Row position of every clip, ascending (O(clips): for tools and tests)."""
        return self.ranges.positions()

    @property
    def blocks(self) -> np.ndarray:
        """Block (row group numbered 0.. within the shard) of every clip (O(clips): for tools and tests)."""
        return np.repeat(self.range_block, self.ranges.lengths())

    def __getitem__(self, i: int) -> SkeletonClip:
        """One clip, read on demand (for inspection; batches use `load`)."""
        i = range(len(self))[i]
        return self.load(np.array([i]))[i]

    def load(self, idx: np.ndarray) -> dict[int, SkeletonClip]:
        """{shard index: validated clip} for the given shard indices (read in store order, one pass)."""
        idx = np.unique(np.asarray(idx, dtype=np.int64))
        clips = self.ds.read(self.ranges.take(idx))
        for clip in clips:
            clip.validate(self.source, nan_policy=self.nan_policy, num_classes=self.num_classes,
                          num_joints=self.num_joints)
            if self.nan_policy == "zero":
                zero_far_joints(clip)
            if is_empty_skeleton(clip):  # only when no report / scan saw it first
                raise SkeletonDataError(f"{self.source}: clip {clip.clip_id!r}: keypoint and keypoint_score are "
                                        "all zero (no person); set data.skip_empty_clips=true to skip")
        return dict(zip(idx.tolist(), clips))


def load_shard(ds: SkeletonDataset, rows: RowRanges | np.ndarray, cfg: DataConfig, num_classes: int,
               num_joints: int, source: str) -> tuple[StreamedShard, list[str]]:
    """This worker's clips (rows: RowRanges from shard_positions, or positions) as a StreamedShard (nothing heavy
    read yet) and the ids of skipped all-zero clips (read from their row groups, not from the index)."""
    empty = None
    if cfg.skip_empty_clips:
        empty = empty_positions_for(ds)
        if empty is None:  # no validation report of this dataset version: find them in the keypoint columns
            empty = scan_empty_positions(ds, np.asarray(rows))
    shard = StreamedShard(ds, rows, cfg, num_classes, num_joints, source, empty=empty)
    return shard, ds.clip_ids(shard.skipped_positions) if len(shard.skipped_positions) else []


def eval_shard(ds: SkeletonDataset, info: SplitInfo, rank: int, world: int, cfg: DataConfig, num_classes: int,
               num_joints: int, source: str) -> tuple[StreamedShard, int, int]:
    """(clips, number of valid clips, all-zero clips skipped) of this rank's share of an evaluation split. A rank
    whose share is empty (fewer clips than workers, or only all-zero ones) evaluates a stand-in clip as padding:
    every rank must take part in the gather."""
    clips, skipped = load_shard(ds, shard_positions(info, rank, world), cfg, num_classes, num_joints, source)
    if len(clips):
        return clips, len(clips), len(skipped)
    usable, _ = load_shard(ds, info.ranges, cfg, num_classes, num_joints, source)
    if len(usable):
        return StreamedShard(ds, usable.ranges.take([0]), cfg, num_classes, num_joints, source), 0, len(skipped)
    raise SkeletonDataError(f"{source}: no usable clip to evaluate (all are all-zero skeletons)")


class EpochBatchSampler(Sampler):
    """Yields (epoch, batch_index) keys; `set_epoch` before iterating, as with DistributedSampler."""

    def __init__(self, num_batches: int):
        self.num_batches = num_batches
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        return iter([(self.epoch, b) for b in range(self.num_batches)])

    def __len__(self) -> int:
        return self.num_batches


DEFAULT_BUFFER_CLIPS = 2048  # ~180 MB of 4-person, 100-frame clips; two windows per loader process (read-ahead)


class ShardBatches(Dataset):
    """Batch `b` of epoch `e` of one worker's shard, prepared by the skeleton pipeline.

    The order of an epoch and the augmentation RNG of every batch derive from (seed, epoch, rank, batch), so a
    batch is the same whichever loader process makes it and after a resume. A StreamedShard is block-shuffled
    (shard_order.BlockShuffle): its row groups in a random order per epoch, then the clips shuffled within
    consecutive windows of `buffer_clips` (a multiple of the batch size), computed one window at a time, so a
    batch needs one window of positions and clips in memory, never the shard's. With `read_ahead` a background
    thread reads the next window (the next epoch's first, for training) while this one is served: reading costs
    4-7x preparing a clip (bench_train_loader.py), and without it every loader process stops at each window
    boundary at once (on a GPU that stall was half of a short epoch). Memory is then two windows per process. A list of clips (already
    in memory) is shuffled as a whole. An epoch has `epoch_clips` places (default num_batches * batch_size, full
    batches), wrapping past the shard's end; places past `epoch_clips` are left out, so the last batch is short."""

    def __init__(self, clips: Sequence[SkeletonClip] | StreamedShard, num_batches: int, batch_size: int,
                 pipeline: PipelineConfig, *, train: bool, seed: int, rank: int, num_clips: int | None = None,
                 num_valid: int | None = None, buffer_clips: int = DEFAULT_BUFFER_CLIPS, read_ahead: bool = True,
                 epoch_clips: int | None = None):
        if not len(clips):
            raise SkeletonDataError(f"rank {rank}: no usable clips in this worker's shard")
        self.clips = clips if isinstance(clips, StreamedShard) else list(clips)
        self.num_batches, self.batch_size = num_batches, batch_size
        # training passes the largest shard's size: every rank then has num_batches batches, the last one short by
        # the same amount on each (DDP steps in lockstep; no rank runs an empty batch)
        self.epoch_clips = num_batches * batch_size if epoch_clips is None else epoch_clips
        if not (num_batches - 1) * batch_size < self.epoch_clips <= num_batches * batch_size:
            raise ValueError(f"rank {rank}: epoch_clips={self.epoch_clips} does not fill {num_batches} batches of "
                             f"{batch_size} (an empty or overfull batch)")
        # num_valid=0: a stand-in shard for a rank with nothing to evaluate (its rows are padding)
        self.num_valid = len(self.clips) if num_valid is None else num_valid
        self.pipeline, self.train, self.seed, self.rank, self.num_clips = pipeline, train, seed, rank, num_clips
        self.window = max(1, buffer_clips // batch_size) * batch_size
        self._shuffle = BlockShuffle(self.clips.block_sizes, self.window, seed, rank) \
            if train and isinstance(self.clips, StreamedShard) else None
        self._perm_epoch, self._perm = None, None
        self._window_key, self._window = None, {}
        self.read_ahead = read_ahead and isinstance(self.clips, StreamedShard)
        self._ahead: tuple[tuple[int, int], threading.Thread, dict, int] | None = None
        self._pid = os.getpid()  # the process whose thread _ahead is (the store locks its own files)
        self.max_resident = 0  # most clips held at once by this process (the memory bound, for tests and benches)

    def __getstate__(self) -> dict:  # to a spawned loader process: no thread
        return {k: v for k, v in self.__dict__.items() if k != "_ahead"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, _ahead=None, _pid=os.getpid())

    def indices(self, epoch: int, first: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """Clip indices at epoch places [first, stop) (wrapping past the shard's end; none past epoch_clips) and
        their valid mask (False where a place repeats a clip)."""
        n = len(self.clips)
        places = np.arange(first, min(stop, self.epoch_clips), dtype=np.int64)
        valid = places < min(n, self.num_valid)
        places %= n
        if not self.train:
            return places, valid
        if self._shuffle is not None:
            return self._shuffle.base(epoch, places), valid
        if self._perm_epoch != epoch:
            self._perm = np.random.default_rng([self.seed, epoch, self.rank, 1]).permutation(n)
            self._perm_epoch = epoch
        return self._perm[places], valid

    def order(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """The whole epoch's clip indices (epoch_clips of them) and valid mask: O(clips), for tools and tests;
        batches take only their own slice (`indices`)."""
        return self.indices(epoch, 0, self.epoch_clips)

    def _batch(self, epoch: int, k: int) -> np.ndarray:
        return self.indices(epoch, k * self.batch_size, (k + 1) * self.batch_size)[0]

    def _window_rows(self, epoch: int, w: int) -> np.ndarray:
        """Shard indices of window `w` of `epoch` that this process serves (empty if none of its batches)."""
        first, per_window = w * self.window // self.batch_size, self.window // self.batch_size
        mine = range(first, min(first + per_window, self.num_batches))
        worker = torch.utils.data.get_worker_info()
        if worker is not None and worker.num_workers > 1:
            # a DataLoader hands batch k to loader process k % num_workers: read only this process's share
            # (another batch asked of it is still served, read on demand in _clips_for)
            mine = [k for k in mine if k % worker.num_workers == worker.id]
        return np.concatenate([self._batch(epoch, k) for k in mine]) if mine else np.zeros(0, np.int64)

    def _take_window(self, epoch: int, w: int, b: int) -> dict[int, SkeletonClip]:
        """Window (epoch, w): the read-ahead's result when it read this one, else read now."""
        ahead, self._ahead = self._ahead, None
        if ahead is not None:
            key, thread, box, _ = ahead
            thread.join()
            if key == (epoch, w):
                if "error" in box:  # a bad clip fails the batch that needs it, as without read-ahead
                    raise box["error"]
                return box["clips"]
        rows = self._window_rows(epoch, w)
        return self.clips.load(rows if len(rows) else self._batch(epoch, b))

    def _start_read_ahead(self, epoch: int, w: int) -> None:
        """Reads the window after (epoch, w) in a background thread; its shard indices are computed here, since
        the shuffle's caches are not thread-safe."""
        if (w + 1) * self.window < self.epoch_clips:
            key = (epoch, w + 1)
        elif self.train:
            key = (epoch + 1, 0)  # the next epoch's order is known now: it depends on (seed, epoch, rank) only
        else:
            return  # evaluation runs again only after training epochs: do not hold a window through them
        rows = self._window_rows(*key)
        if not len(rows):
            return
        box: dict = {}

        def read() -> None:
            try:
                box["clips"] = self.clips.load(rows)
            except BaseException as err:  # noqa: BLE001 - handed to the batch that needs this window
                box["error"] = err

        thread = threading.Thread(target=read, name="shard-read-ahead", daemon=True)
        thread.start()
        self._ahead = (key, thread, box, len(rows))

    def _clips_for(self, epoch: int, b: int, idx: np.ndarray) -> list[SkeletonClip]:
        if not isinstance(self.clips, StreamedShard):
            return [self.clips[i] for i in idx]
        w = b * self.batch_size // self.window
        if self._pid != os.getpid():  # a forked loader process: the parent's read-ahead thread is not here
            self._ahead, self._pid = None, os.getpid()
        if self._window_key != (epoch, w):
            self._window = {}  # drop the old window first: at most this one and the one read ahead are resident
            self._window = self._take_window(epoch, w, b)
            self._window_key = (epoch, w)
            if self.read_ahead:
                self._start_read_ahead(epoch, w)
        missing = [i for i in idx.tolist() if i not in self._window]  # a batch past the window (wrap padding)
        extra = self.clips.load(np.array(missing)) if missing else {}
        ahead = self._ahead[3] if self._ahead is not None else 0
        self.max_resident = max(self.max_resident, len(self._window) + ahead + len(extra))
        return [self._window[i] if i in self._window else extra[i] for i in idx.tolist()]

    def __len__(self) -> int:
        return self.num_batches

    def batch_bytes(self) -> int:
        """About the bytes of a batch a loader process hands over: float32 (N, num_clips, M, clip_len, V, C), labels
        and mask (pipeline.device=worker's RawBatch: 3 channels x, y, score, or 6 with motion)."""
        p = self.pipeline
        nc = self.num_clips or (p.num_clips if self.train else p.test_num_clips)
        joints = self.clips.num_joints if isinstance(self.clips, StreamedShard) else self.clips[0].keypoint.shape[2]
        channels = p.in_channels
        if p.device == "worker":  # raw frames whatever the features: x, y, score; twice with motion
            channels = 6 if {"jm", "bm"} & set(p.feats) else 3
        rows = min(self.batch_size, self.epoch_clips)  # a shard smaller than a batch: one short batch
        return rows * (nc * p.num_person * p.clip_len * joints * channels * 4 + 8 + 1)

    def __getitem__(self, key: tuple[int, int]):
        epoch, b = key
        idx, valid = self.indices(epoch, b * self.batch_size, (b + 1) * self.batch_size)
        rng = np.random.default_rng([self.seed, epoch, self.rank, 2, b]) if self.train else None
        # pipeline.device=worker: only the sampled frames (a RawBatch) leave the loader, the features are computed
        # on the training worker's device (transforms_torch.model_inputs); same rng draws: exact resume unaffected
        prepare = gather_batch if self.pipeline.device == "worker" else prepare_batch
        x, y = prepare(self._clips_for(epoch, b, idx), self.pipeline, self.train, rng, self.num_clips)
        return x, y, torch.from_numpy(valid)


def num_batches_for(num_clips: int, batch_size: int) -> int:
    return max(1, int(np.ceil(num_clips / batch_size)))


def _own_files(_: int) -> None:
    """In a loader process: open the store's files afresh rather than share the parent's handles."""
    shard = torch.utils.data.get_worker_info().dataset.clips
    if isinstance(shard, StreamedShard):
        shard.ds._pf = {}


def make_loader(batches: ShardBatches, loader_workers: int, prefetch: int, pin_memory: bool):
    sampler = EpochBatchSampler(len(batches))
    # Its own generator: a DataLoader iterator draws a base seed at creation, from torch's global generator by
    # default, which the loop seeds per epoch for dropout. Persistent loader processes draw once per process, so a
    # resumed run drew where the uninterrupted one had not, and its first epoch's dropout masks differed.
    kwargs = dict(num_workers=loader_workers, pin_memory=pin_memory, generator=torch.Generator())
    if loader_workers > 0:
        loader_watch.check_loader_shm(batches.batch_bytes(), loader_workers, prefetch, len(batches))
        kwargs.update(persistent_workers=True, prefetch_factor=prefetch, worker_init_fn=_own_files,
                      timeout=loader_watch.LOADER_TIMEOUT_S)
    # batch_size=None: each dataset item is already a batch; the sampler hands out (epoch, batch) keys.
    return loader_watch.WatchedLoader(batches, batch_size=None, sampler=sampler, **kwargs), sampler
