"""A stand-in for the part of Ray Data that dataset/build.py uses (DataContext, from_items, map_batches,
iter_batches), so its Ray path runs in-process: batches of `batch` items (all at once with 0) go through the mapped
function in order, and each Arrow table it returns comes back as it is (as a task's block would)."""
from __future__ import annotations

import sys
import types

import numpy as np


class FakeRayData:
    def __init__(self, batch: int = 0):
        self.batch = batch
        self.ctx = types.SimpleNamespace(execution_options=types.SimpleNamespace(preserve_order=False))
        self.tables: list = []                 # every table the mapped function returned
        self.preserve_order: list[bool] = []   # the context's setting at each from_items call

    def install(self, monkeypatch) -> "FakeRayData":
        fake = types.ModuleType("ray")
        fake.data = types.SimpleNamespace(DataContext=types.SimpleNamespace(get_current=lambda: self.ctx),
                                          from_items=self._from_items)
        monkeypatch.setitem(sys.modules, "ray", fake)
        return self

    def _from_items(self, items, **_):
        self.preserve_order.append(self.ctx.execution_options.preserve_order)
        return _Dataset(self, items)


class _Dataset:
    def __init__(self, owner: FakeRayData, items):
        self.owner, self.items, self.fn, self.kw = owner, items, None, {}

    def map_batches(self, fn, fn_kwargs, **_):
        self.fn, self.kw = fn, fn_kwargs
        return self

    def iter_batches(self, **_):
        size = self.owner.batch or len(self.items)
        for s in range(0, len(self.items), size):
            part = self.items[s:s + size]
            self.owner.tables.append(self.fn({k: np.array([j[k] for j in part]) for k in part[0]}, **self.kw))
            yield self.owner.tables[-1]
