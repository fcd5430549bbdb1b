"""A stand-in for ray.tune.Tuner whose fit() runs a given function instead of a search: for tests of what a tune
job does around its search (stop handling), in-process or in a subprocess script."""
from __future__ import annotations

from typing import Any, Callable


def stand_in_tuner(during_fit: Callable[[], Any]) -> type:
    """A Tuner class (any constructor arguments; nothing to restore) whose fit() returns during_fit()."""

    class Tuner:
        def __init__(self, *args, **kwargs):
            pass

        @staticmethod
        def can_restore(uri):
            return False

        def fit(self):
            return during_fit()

    return Tuner
