"""Loader processes and a small /dev/shm: refused before training with one line naming the sizes and the remedies
(a full /dev/shm made a loader process lose its batch and the training wait forever), and a stuck loader process
is an error after the loader's timeout instead of a hang."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections import namedtuple
from pathlib import Path

import pytest

from recognizer_core.config import load_config
from recognizer_core.skeleton.clip import SkeletonDataError
from recognizer_core.skeleton.demo_data import make_demo_clips
from recognizer_core.skeleton.store import SkeletonDataset, write_dataset
from recognizer_core.train.context import LocalContext
from recognizer_core.train.stgcn import data as tdata
from recognizer_core.train.stgcn import loader_watch
from recognizer_core.train.stgcn.config import TrainJobConfig
from recognizer_core.train.stgcn.loop import train_loop

REPO = Path(__file__).resolve().parents[1]
MB = 1024 * 1024
SMALL_MODEL = ["model.num_stages=2", "model.base_channels=16", "model.inflate_stages=[2]", "model.down_stages=[2]",
               "train.epochs=1", "train.batch_size=32", "schedule.warmup_epochs=0", "train.log_interval=0",
               "train.test_after_train=false"]
Usage = namedtuple("Usage", "total used free")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    clips = make_demo_clips("fight", 96, seed=1)
    return str(write_dataset(clips, tmp_path_factory.mktemp("shm") / "ds", label_names=("NonFight", "Fight")))


def _shm_free(monkeypatch, free: int) -> None:
    """/dev/shm reports `free` bytes; every other path its real usage."""
    real = shutil.disk_usage

    def usage(path):
        return Usage(free, 0, free) if str(path) == loader_watch.SHM_DIR else real(path)
    monkeypatch.setattr(shutil, "disk_usage", usage)


def _batches(dataset: str, batch_size: int = 8, cls=tdata.ShardBatches) -> tdata.ShardBatches:
    cfg = load_config(TrainJobConfig, REPO / "configs/fight_stable.yaml", [])
    ds = SkeletonDataset(dataset)
    info = tdata.split_info(ds, "train", 2)
    shard, _ = tdata.load_shard(ds, info.ranges, cfg.data, 2, 17, "t")
    return cls(shard, tdata.num_batches_for(len(shard), batch_size), batch_size, cfg.pipeline, train=True, seed=0,
               rank=0, epoch_clips=len(shard))  # as the training loop makes them: the last batch short


def test_small_shm_refuses_loader_processes_with_one_line(dataset, monkeypatch):
    _shm_free(monkeypatch, 1 * MB)
    batches = _batches(dataset)
    # batch 8 of 4 persons x 100 frames x 17 joints x 3 channels, float32: 0.6 MB; 2 processes x 4 + 2 batches
    assert len(batches) >= 8 and batches.batch_bytes() == 8 * (4 * 100 * 17 * 3 * 4 + 9)
    with pytest.raises(loader_watch.LoaderSharedMemoryError) as err:
        tdata.make_loader(batches, 2, 4, False)
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith("/dev/shm has 1.0 MB free, but data.loader_workers=2 with data.prefetch_batches=4 need "
                          "about 6.2 MB there for their batches (0.6 MB each")
    assert "--shm-size" in msg and "medium: Memory" in msg and "--set data.loader_workers=0" in msg


def test_ranks_on_one_node_share_shm(dataset, monkeypatch):
    batches = _batches(dataset)
    need_one = batches.batch_bytes() * (2 * 4 + 2)
    _shm_free(monkeypatch, need_one + MB)
    tdata.make_loader(batches, 2, 4, False)  # one rank: fits
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # as Ray Train sets it: two ranks' loaders on this node
    with pytest.raises(loader_watch.LoaderSharedMemoryError, match="need about 12.5 MB"):
        tdata.make_loader(batches, 2, 4, False)


def test_train_loop_stops_before_training_on_small_shm(dataset, monkeypatch, tmp_path):
    _shm_free(monkeypatch, 4 * MB)
    cfg = load_config(TrainJobConfig, REPO / "configs/fight_stable.yaml", SMALL_MODEL)
    t = time.time()
    with pytest.raises(SkeletonDataError, match=r"^/dev/shm has 4\.0 MB free"):  # not retried by Ray Train
        train_loop(cfg, dataset, str(tmp_path / "run"), LocalContext(tmp_path / "ckpt"))
    assert time.time() - t < 30
    assert not (tmp_path / "ckpt").exists() or not any((tmp_path / "ckpt").iterdir())  # nothing trained


def test_no_refusal_without_loader_processes_or_with_room(dataset, monkeypatch):
    _shm_free(monkeypatch, 1 * MB)
    loader, sampler = tdata.make_loader(_batches(dataset), 0, 4, False)  # batches made in this process
    x, y, _ = next(iter(loader))
    assert x.shape[0] == 8 and loader.timeout == 0
    _shm_free(monkeypatch, 64 * 1024 * MB)
    loader, sampler = tdata.make_loader(_batches(dataset), 2, 4, False)
    assert loader.timeout == loader_watch.LOADER_TIMEOUT_S
    assert sum(len(y) for _, y, _ in loader) == loader.dataset.epoch_clips


def test_an_epoch_smaller_than_the_prefetch_needs_less(dataset, monkeypatch):
    """A shard smaller than a batch: one short batch in flight, not loader_workers x prefetch full ones."""
    batches = _batches(dataset, batch_size=128)
    rows = batches.epoch_clips
    assert len(batches) == 1 and rows < 128 and batches.batch_bytes() == rows * (4 * 100 * 17 * 3 * 4 + 9)
    _shm_free(monkeypatch, batches.batch_bytes() * 3 + MB)  # its one batch, the step's and the one arriving
    tdata.make_loader(batches, 2, 4, False)
    _shm_free(monkeypatch, batches.batch_bytes() * 3 - MB)
    with pytest.raises(loader_watch.LoaderSharedMemoryError):
        tdata.make_loader(batches, 2, 4, False)


class SlowBatches(tdata.ShardBatches):
    def __getitem__(self, key):
        if torch_worker():
            time.sleep(8)  # a loader process that never delivers (in the test: for longer than the timeout)
        return super().__getitem__(key)


def torch_worker() -> bool:
    import torch.utils.data
    return torch.utils.data.get_worker_info() is not None


def test_stuck_loader_process_is_an_error_naming_the_causes(dataset, monkeypatch):
    monkeypatch.setattr(loader_watch, "LOADER_TIMEOUT_S", 2)
    loader, _ = tdata.make_loader(_batches(dataset, cls=SlowBatches), 1, 1, False)
    t = time.time()
    with pytest.raises(RuntimeError, match=r"no batch from the 1 loader process\(es\) in 2 s .*unable to allocate "
                                           r"shared memory.*--set data.loader_workers=0"):
        next(iter(loader))
    assert time.time() - t < 20
    del loader  # ends its (persistent) loader process


REPRO = """
import sys
from recognizer_core.train.stgcn import data as tdata
from recognizer_core.train.stgcn import loader_watch
sys.path.insert(0, {tests!r})
from test_train_shm import _batches
try:
    tdata.make_loader(_batches({dataset!r}), 2, 4, False)
except loader_watch.LoaderSharedMemoryError as err:
    print("refused:", err)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux") or os.geteuid() != 0 or not shutil.which("unshare"),
                    reason="needs Linux, root and unshare to mount a small /dev/shm")
def test_real_4mb_shm_is_refused(dataset):
    """A real 4 MB tmpfs on /dev/shm (a private mount namespace): the free size is read from it."""
    code = REPRO.format(tests=str(REPO / "tests"), dataset=dataset)
    cmd = ["unshare", "-m", "--propagation", "private", "sh", "-c",
           'mount -t tmpfs -o size=4m tmpfs /dev/shm && exec "$0" -c "$1"', sys.executable, code]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=REPO,
                             env={**os.environ, "PYTHONPATH": str(REPO)})
    except subprocess.TimeoutExpired:
        pytest.fail("the loader under a 4 MB /dev/shm did not finish in 60 s")
    if out.returncode != 0 and "mount" in out.stderr and "refused:" not in out.stdout:
        pytest.skip(f"cannot mount a tmpfs here: {out.stderr.strip()[:200]}")
    assert "refused: /dev/shm has 4.0 MB free" in out.stdout, out.stdout + out.stderr


def _tensor_bytes(obj) -> int:
    import torch
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_tensor_bytes(v) for v in obj)
    if hasattr(obj, "__dataclass_fields__"):
        return sum(_tensor_bytes(getattr(obj, f)) for f in obj.__dataclass_fields__)
    return 0


@pytest.mark.parametrize("device, feats", [("cpu", "[b]"), ("cpu", "[j,b,jm,bm]"), ("worker", "[j,b]"),
                                           ("worker", "[j,b,jm,bm]")])
def test_the_estimate_is_the_bytes_a_loader_process_hands_over(dataset, device, feats):
    """pipeline.device=worker hands over raw frames (3 channels, 6 with motion) whatever the features: counting the
    model's input channels there doubled the estimate and refused a 64 MB /dev/shm that held the epoch (50 MB)."""
    cfg = load_config(TrainJobConfig, REPO / "configs/fight_stable.yaml",
                      [f"pipeline.device={device}", f"pipeline.feats={feats}"])
    ds = SkeletonDataset(dataset)
    shard, _ = tdata.load_shard(ds, tdata.split_info(ds, "train", 2).ranges, cfg.data, 2, 17, "t")
    batches = tdata.ShardBatches(shard, tdata.num_batches_for(len(shard), 8), 8, cfg.pipeline, train=True, seed=0,
                                 rank=0, epoch_clips=len(shard))
    real = _tensor_bytes(batches[(0, 0)])
    assert real > 0 and abs(batches.batch_bytes() - real) <= 0.01 * real


def test_a_killed_loader_process_is_an_error_within_seconds_off_the_main_thread(dataset):
    """Ray Train runs the loop in a thread, where torch installs no SIGCHLD handler: a loader process killed (the
    OOM killer) is noticed at torch's 5 s polls of the loader processes, not after the whole 600 s timeout."""
    import os
    import signal
    import threading

    assert loader_watch.LOADER_TIMEOUT_S >= 600
    loader, _ = tdata.make_loader(_batches(dataset, cls=SlowFirstBatches), 1, 1, False)
    seen = {}

    def training_thread():
        it = iter(loader)
        next(it)
        os.kill(loader._iterator._workers[0].pid, signal.SIGKILL)
        t = time.monotonic()
        try:
            next(it)
        except RuntimeError as err:
            seen["error"], seen["after_s"] = str(err), time.monotonic() - t

    thread = threading.Thread(target=training_thread, name="TrainingThread")
    thread.start()
    thread.join(120)
    assert "exited unexpectedly" in seen.get("error", "") and seen["after_s"] < 30, seen


class SlowFirstBatches(tdata.ShardBatches):
    def __getitem__(self, key):
        if torch_worker() and key[1] > 0:
            time.sleep(3)  # the loader process is busy with the next batch when it is killed
        return super().__getitem__(key)
