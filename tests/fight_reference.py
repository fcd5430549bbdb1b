"""The fight preset's uninterrupted tiny STGCN++ run: one Ray Train run (2 workers, demo data) that two tests
compare against. test_train_ray's killed-and-resumed run on a local Ray, and test_two_node's run that loses a node,
must both end with its weights and metrics, so the same settings come from here and the run is made once per
session (the `fight_reference` fixture in conftest.py)."""
from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PRESET = "fight_stable.yaml"
TINY = ["model.num_stages=2", "model.base_channels=8", "model.inflate_stages=[2]", "model.down_stages=[2]",
        "pipeline.clip_len=24", "train.epochs=4", "train.batch_size=8", "data.loader_workers=0",
        "data.demo_num_clips=60", "schedule.warmup_epochs=1", "scaling.num_workers=2",
        "scaling.cpus_per_worker=0.5", "train.log_interval=0"]
# test_num_clips=3 (the preset says 1): the test job must use the config the run was trained with.
EXTRA = ["pipeline.test_num_clips=3"]
NAME = "fight"


def sets(*extra: str) -> list[str]:
    """The reference's --set overrides, then `extra` (a run name, storage, placement...)."""
    return [*TINY, *EXTRA, *extra]


def args(storage: Path, name: str, *extra: str) -> list[str]:
    """rayjobs/train_stgcn.py's argv for the reference's settings in `storage`/`name`."""
    return ["--config", str(REPO / "configs" / PRESET)] + [
        a for s in sets(f"run.storage_path={storage}", f"run.name={name}", *extra) for a in ("--set", s)]


def run_reference(storage: Path) -> tuple[Path, dict]:
    """Train it on the Ray this process is connected to; (run folder, the job's JSON line)."""
    from rayjobs.train_stgcn import main

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(args(storage, NAME)) == 0
    return storage / NAME, json.loads([ln for ln in printed.getvalue().splitlines() if ln.startswith("{")][-1])
