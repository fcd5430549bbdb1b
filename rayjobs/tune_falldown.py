"""Tune STGCN++ falldown detection: `tune_fight.py` with search_spaces/falldown.yaml (same options).

    python rayjobs/tune_falldown.py                                # demo data, minutes on 2 CPUs
    ray job submit --working-dir . -- python rayjobs/tune_falldown.py --data /shared/falldown_skeletons
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from tune_fight import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(default_space="search_spaces/falldown.yaml"))
