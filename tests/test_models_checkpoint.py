"""Checkpoint conversion / export / loading errors, and gradient checkpointing (with_cp) equivalence."""
from __future__ import annotations

import argparse
import copy
import pickle

import pytest
import torch

from recognizer_core.models.checkpoint import (
    CheckpointError, convert_pyskl_state_dict, export_mmaction_checkpoint, infer_model_config,
    load_mmaction_checkpoint, load_state_dict_file)
from recognizer_core.models.recognizer import ModelConfig, build_recognizer
from tests.conftest import shared_path

PYSKL = ("data", "weights", "pyskl_hagrid_stgcnpp.pth")


def tiny(**kw):
    torch.manual_seed(0)
    return build_recognizer(ModelConfig(num_stages=3, base_channels=16, inflate_stages=[2], down_stages=[2],
                                        **kw))


def test_pyskl_checkpoint_converts_and_runs():
    path = shared_path(*PYSKL)
    raw = load_state_dict_file(path)
    assert "cls_head.fc_cls.weight" in raw and "cls_head.fc.weight" not in raw
    sd = convert_pyskl_state_dict(raw)
    cfg = infer_model_config(sd, dropout=0.0)
    assert (cfg.layout, cfg.in_channels, cfg.num_classes) == ("handmp", 2, 40)
    model = build_recognizer(cfg)
    model.load_state_dict(sd, strict=True)
    torch.testing.assert_close(model.cls_head.fc.weight, raw["cls_head.fc_cls.weight"], rtol=0, atol=0)
    model2 = load_mmaction_checkpoint(build_recognizer(cfg), path).eval()  # converts on the fly
    model.eval()
    x = torch.randn(3, 1, 48, 21, 2, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = model(x)
        assert out.shape == (3, 40) and torch.isfinite(out).all()
        torch.testing.assert_close(model2(x), out, rtol=0, atol=0)
        assert out.std(0).max() > 0  # real weights: different inputs give different logits


def test_export_round_trip_is_mmaction_format(tmp_path):
    cfg = ModelConfig(num_stages=3, base_channels=16, dropout=0.0)
    model = build_recognizer(cfg)
    model.train()
    model(torch.randn(2, 2, 16, 17, 3))  # move BN statistics away from their init
    model.eval()
    path = export_mmaction_checkpoint(model, tmp_path / "epoch_3.pth", cfg=cfg, epoch=3,
                                      classes=["NonFight", "Fight"])
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    assert set(ckpt) == {"meta", "state_dict"}
    assert ckpt["meta"]["epoch"] == 3 and ckpt["meta"]["dataset_meta"]["classes"] == ["NonFight", "Fight"]
    assert "type='STGCN'" in ckpt["meta"]["cfg"] and "inflate_stages=[2]" in ckpt["meta"]["cfg"]
    assert list(ckpt["state_dict"]) == list(model.state_dict())
    assert all(k.startswith(("backbone.", "cls_head.fc.")) for k in ckpt["state_dict"])
    loaded = load_mmaction_checkpoint(build_recognizer(cfg), path).eval()
    x = torch.randn(2, 2, 16, 17, 3)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    assert not list(tmp_path.glob("*.tmp*"))


def test_mismatched_checkpoint_error_names_file_and_keys(tmp_path):
    path = export_mmaction_checkpoint(tiny(num_classes=5), tmp_path / "five.pth")
    with pytest.raises(CheckpointError) as err:
        load_mmaction_checkpoint(tiny(num_classes=2), path)
    msg = str(err.value)
    assert str(path) in msg and "cls_head.fc.weight: checkpoint (5, 32) vs model (2, 32)" in msg
    sd = torch.load(path, weights_only=True)["state_dict"]
    sd.pop("backbone.data_bn.weight")
    sd["backbone.extra"] = torch.zeros(1)
    torch.save(sd, tmp_path / "edited.pth")
    with pytest.raises(CheckpointError, match=r"(?s)missing keys \(1\).*backbone.data_bn.weight.*"
                                              r"unexpected keys \(1\).*backbone.extra"):
        load_mmaction_checkpoint(tiny(num_classes=5), tmp_path / "edited.pth")


class _Payload:
    """Runs a shell command when unpickled by plain pickle."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)


def test_loading_never_runs_code_from_the_file(tmp_path):
    bad = tmp_path / "pickled.pth"  # pickled objects beside the weights: one would run a command on load
    marker = tmp_path / "ran"
    torch.save({"state_dict": tiny().state_dict(), "obj": argparse.Namespace(a=1), "evil": _Payload(marker)}, bad)
    sd = load_state_dict_file(bad)
    assert "backbone.data_bn.weight" in sd and not marker.exists()
    assert torch.equal(sd["backbone.data_bn.weight"], tiny().state_dict()["backbone.data_bn.weight"])
    with pytest.raises(CheckpointError, match="state set on the class"):  # no attribute set on torch's classes
        load_state_dict_file(_class_build_checkpoint(tmp_path / "build.pth"))
    assert "count" not in vars(torch.nn.Parameter)
    assert "backbone.data_bn.weight" in load_state_dict_file(bad, trusted=True)  # plain pickle, trusted only
    assert marker.exists()
    with pytest.raises(CheckpointError, match="not found"):
        load_state_dict_file(tmp_path / "missing.pth")
    (tmp_path / "truncated.pth").write_bytes(bad.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="truncated.pth: cannot read checkpoint"):
        load_state_dict_file(tmp_path / "truncated.pth")


def _class_build_checkpoint(path):
    """A hand-written pickle: a global torch does not allow (so the inert loader reads it), then BUILD on the class
    torch.nn.Parameter, which would set an attribute (`count`) on it: torch patched by a data file."""
    import pickle
    import zipfile

    data = (pickle.PROTO + b"\x02" + pickle.GLOBAL + b"argparse\nNamespace\n" + pickle.POP + pickle.GLOBAL + b"torch.nn.parameter\nParameter\n"
            + pickle.NONE + pickle.EMPTY_DICT + pickle.BINUNICODE + (5).to_bytes(4, "little") + b"count"
            + pickle.NONE + pickle.SETITEM + pickle.TUPLE2 + pickle.BUILD + pickle.STOP)
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", data)
        z.writestr("archive/version", "3\n")
    return path


def test_an_mmengine_training_checkpoint_loads_without_mmengine(tmp_path, monkeypatch):
    """mmengine's checkpoints keep the message hub's logs as HistoryBuffer objects with numpy arrays: a plain
    weights-only load refuses them, so a checkpoint straight from an mmaction2 training run could not be used."""
    import sys
    import types

    import numpy as np

    mod = types.ModuleType("mmengine.logging.history_buffer")

    class HistoryBuffer:
        def __init__(self):
            self._log_history, self._count_history = np.array([0.5, 0.4]), np.array([1, 1])
    HistoryBuffer.__module__, HistoryBuffer.__qualname__ = mod.__name__, "HistoryBuffer"
    mod.HistoryBuffer = HistoryBuffer
    for name in ("mmengine", "mmengine.logging"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, mod.__name__, mod)
    path = tmp_path / "best_acc_top1_epoch_3.pth"
    torch.save({"meta": {"epoch": 3, "dataset_meta": {"classes": ["NonFight", "Fight"]}},
                "state_dict": tiny().state_dict(),
                "message_hub": {"log_scalars": {"train/loss": HistoryBuffer()}, "runtime_info": {"epoch": 3}}}, path)
    for name in ("mmengine", "mmengine.logging", mod.__name__):  # loaded where mmengine is not installed
        monkeypatch.delitem(sys.modules, name)
    assert "backbone.data_bn.weight" in load_state_dict_file(path)
    from recognizer_core.models.checkpoint import read_checkpoint

    assert read_checkpoint(path)["meta"]["dataset_meta"]["classes"] == ["NonFight", "Fight"]


class _RunsCode:
    """A pickled object whose unpickling would run code: exec, a global torch's weights-only loader refuses."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').close()",))


def test_a_checkpoint_that_would_run_code_does_not_run_it(tmp_path):
    """torch's legacy (non-zip) format reads its first pickle with pickle_module.load: the inert fallback used plain
    pickle.load there, so such a file ran its code on load (recognize, test_stgcn and export read checkpoints so)."""
    from recognizer_core.models.checkpoint import CheckpointError, read_checkpoint

    marker = tmp_path / "code_ran"
    legacy = tmp_path / "legacy.pth"
    legacy.write_bytes(pickle.dumps(_RunsCode(marker), protocol=2))
    with pytest.raises(CheckpointError, match="legacy.pth: cannot read checkpoint"):
        read_checkpoint(legacy)
    zipped = tmp_path / "zipped.pth"   # the zip format: an inert stand-in, the rest readable
    torch.save({"meta": {"epoch": 1}, "hook": _RunsCode(marker)}, zipped)
    assert read_checkpoint(zipped)["meta"] == {"epoch": 1}
    assert not marker.exists()


def test_infer_config_round_trip():
    for cfg in (ModelConfig(num_stages=4, base_channels=16, inflate_stages=[2, 4], down_stages=[2, 4]),
                ModelConfig(num_stages=3, base_channels=8, in_channels=2, layout="openpose", num_classes=7)):
        got = infer_model_config(build_recognizer(cfg).state_dict(), dropout=cfg.dropout)
        assert got == cfg


def test_with_cp_matches_plain_forward_backward():
    plain = tiny(dropout=0.0)
    cp = copy.deepcopy(plain)
    cp.backbone.with_cp = True
    x = torch.randn(3, 2, 24, 17, 3)
    target = torch.tensor([0, 1, 1])
    for m in (plain, cp):
        m.train()
        torch.nn.functional.cross_entropy(m(x), target).backward()
    for (name, p), q in zip(plain.named_parameters(), cp.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-5, atol=1e-6, msg=name)
    # BN running statistics are updated exactly once (the backward recompute must not update them again)
    for (name, b), c in zip(plain.named_buffers(), cp.buffers()):
        torch.testing.assert_close(c, b, rtol=0, atol=0, msg=name)
    plain.eval(), cp.eval()
    with torch.no_grad():
        torch.testing.assert_close(cp(x), plain(x), rtol=0, atol=0)
