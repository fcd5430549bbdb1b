"""Tune STGCN++ falldown detection: `tune_fight.py` with search_spaces/falldown.yaml (same options).

examples:
  python rayjobs/tune_falldown.py                               # demo: synthetic falls, 4 trials, minutes on 2 CPUs
  python rayjobs/tune_falldown.py --data outputs/falldown_skeletons --folds 5
                                                                # few hundred clips: 5-fold CV by source video
  python rayjobs/tune_falldown.py --data outputs/falldown_skeletons --objective latency --mo-sampler nsga2
                                                                # mean class accuracy vs latency: Pareto front
  ray job submit --working-dir . -- python rayjobs/tune_falldown.py --data /shared/falldown_skeletons \\
      --storage-path s3://bucket/tune

Optimises val/mean_class_accuracy (falls are rare: accuracy alone rewards answering "Normal"). The summary
folder and resume behave as in tune_fight.py.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from tune_fight import main  # noqa: E402

if __name__ == "__main__":
    from recognizer_core.ray_runtime import run_job

    sys.exit(run_job(main, default_space="search_spaces/falldown.yaml", doc=__doc__))
