"""GPU-only code paths checked on a CPU: fused SGD's skipped first step, `auto` precision on pre-Ampere GPUs,
CUDA RNG restore with fewer GPUs, and ONNX Runtime's CUDA library preload.

Only the hardware's answers are simulated (monkeypatched torch.cuda / onnxruntime functions); the code under test
and torch's own functions around it run as they would on the GPU machine.
"""
from __future__ import annotations

import types

import pytest
import torch
import torch.cuda.random as cuda_random

from recognizer_core.models.dino_backbone import resolve_backbone_dtype
from recognizer_core.train import state as train_state
from recognizer_core.train.amp import AmpPlan, amp_plan
from recognizer_core.train.nonfinite import NonFiniteGuard
from recognizer_core.train.stgcn.config import OptimConfig
from recognizer_core.train.stgcn.optim import build_optimizer


# --- fused SGD: a skipped (non-finite) first step must not leave garbage momentum -------------------------------

def _poison_empty_like(monkeypatch):
    # torch's fused SGD starts first-step buffers with torch.empty_like; make "uninitialised" deterministic (NaN)
    # so the test does not depend on what the allocator hands back
    monkeypatch.setattr(torch, "empty_like", lambda t, *a, **k: torch.full_like(t, float("nan")))


def _two_steps(fused: bool, skip_with: str, nesterov: bool, to_double: bool = False) -> torch.Tensor:
    """Step 1 has an infinite gradient (skipped), step 2 a finite one; returns the weights after both."""
    torch.manual_seed(0)
    lin = torch.nn.Linear(16, 8)
    cfg = OptimConfig(type="sgd", momentum=0.9, nesterov=nesterov, weight_decay=1e-3)
    opt = build_optimizer(lin.parameters(), cfg, lr=0.1, fused=fused)
    if to_double:  # the model is placed (moved / cast) after the optimizer is built, as in stgcn/loop.py
        lin.double()
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 16, enabled=skip_with == "scaler")
    x = torch.randn(4, 16, dtype=lin.weight.dtype)
    for scale in (float("inf"), 1.0):
        scaler.scale(lin(x).pow(2).mean() * scale).backward()
        scaler.unscale_(opt)
        params = [p for p in lin.parameters() if p.grad is not None]
        run = skip_with == "scaler" or NonFiniteGuard.step_allowed(opt, params)
        try:
            if run:
                scaler.step(opt)
        finally:
            opt.__dict__.pop("found_inf", None)
        scaler.update()
        opt.zero_grad(set_to_none=True)
    return torch.cat([p.detach().flatten() for p in lin.parameters()])


@pytest.mark.parametrize("skip_with", ["guard", "scaler"])
@pytest.mark.parametrize("nesterov", [False, True])
def test_fused_sgd_skipped_first_step_equals_stock_sgd(monkeypatch, skip_with, nesterov):
    _poison_empty_like(monkeypatch)
    stock = _two_steps(False, skip_with, nesterov)
    fused = _two_steps(True, skip_with, nesterov)
    assert torch.isfinite(fused).all(), "the skipped first step left uninitialised momentum buffers"
    torch.testing.assert_close(fused, stock)


def test_fused_sgd_momentum_made_at_step_time_on_the_params_dtype(monkeypatch):
    # buffers made in build_optimizer would keep the parameters' old device / dtype
    _poison_empty_like(monkeypatch)
    torch.testing.assert_close(_two_steps(True, "guard", False, to_double=True),
                               _two_steps(False, "guard", False, to_double=True))


def test_fused_sgd_keeps_a_resumed_momentum_buffer():
    p = torch.nn.Parameter(torch.ones(3))
    opt = build_optimizer([p], OptimConfig(type="sgd", momentum=0.5, weight_decay=0.0), lr=1.0, fused=True)
    opt.state[p]["momentum_buffer"] = torch.full((3,), 2.0)   # what a checkpoint restored
    p.grad = torch.ones(3)
    opt.step()
    assert p.tolist() == [-1.0] * 3   # buf = 0.5 * 2 + 1 = 2; p = 1 - 2


# --- amp: auto / backbone_dtype auto on a pre-Ampere GPU -----------------------------------------------------------

def _gpu(monkeypatch, major: int, minor: int) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda d: types.SimpleNamespace(major=major, minor=minor, name="simulated"))
    # CUDA >= 11 can create bf16 tensors on sm_70/75 (emulated): torch's default check then answers True
    monkeypatch.setattr(torch.cuda, "_check_bf16_tensor_supported", lambda d: True)
    monkeypatch.setattr(torch.version, "hip", None)


@pytest.mark.parametrize("major,minor", [(7, 5), (7, 0)])   # T4, V100
def test_auto_precision_is_fp16_with_scaler_before_ampere(monkeypatch, major, minor):
    _gpu(monkeypatch, major, minor)
    assert amp_plan("auto", torch.device("cuda")) == AmpPlan(torch.float16, True)
    assert resolve_backbone_dtype("auto", "cuda") == torch.float32


@pytest.mark.parametrize("major,minor", [(8, 0), (9, 0)])   # A100, H100
def test_auto_precision_is_bf16_from_ampere(monkeypatch, major, minor):
    _gpu(monkeypatch, major, minor)
    assert amp_plan("auto", torch.device("cuda")) == AmpPlan(torch.bfloat16, False)
    assert resolve_backbone_dtype("auto", "cuda") == torch.bfloat16


# --- CUDA RNG states restored where fewer (or more) GPUs are visible ----------------------------------------------

def _visible_gpus(monkeypatch, n: int) -> tuple[torch.Generator, ...]:
    """n simulated GPUs whose generators are CPU ones; CUDA "initialised" (the model is already on the GPU when
    place_and_resume restores), so torch's own set_rng_state applies the state at once."""
    gens = tuple(torch.Generator() for _ in range(n))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: n)
    monkeypatch.setattr(cuda_random, "device_count", lambda: n)
    monkeypatch.setattr(cuda_random, "is_initialized", lambda: True)
    monkeypatch.setattr(cuda_random, "_lazy_call", lambda cb, **kw: cb())
    monkeypatch.setattr(torch.cuda, "default_generators", gens)
    return gens


def _saved_with_cuda_states(n: int) -> tuple[dict, list[torch.Tensor]]:
    saved = train_state.rng_state()   # before the simulation: this CPU has no CUDA states to save
    states = [torch.Generator().manual_seed(100 + i).get_state() for i in range(n)]
    saved["cuda"] = states
    return saved, states


def test_cuda_rng_restore_with_fewer_gpus_visible(monkeypatch):
    saved, states = _saved_with_cuda_states(4)   # rank 0 of a 4-GPU node saved one state per GPU
    (gen,) = _visible_gpus(monkeypatch, 1)
    train_state.set_rng_state(saved)
    assert torch.equal(gen.get_state(), states[0])


def test_cuda_rng_restore_with_more_gpus_visible(monkeypatch):
    saved, states = _saved_with_cuda_states(1)
    gens = _visible_gpus(monkeypatch, 2)
    untouched = gens[1].get_state()
    train_state.set_rng_state(saved)
    assert torch.equal(gens[0].get_state(), states[0]) and torch.equal(gens[1].get_state(), untouched)


# --- ONNX Runtime: CUDA / cuDNN libraries preloaded before a CUDA session ------------------------------------------

@pytest.fixture(scope="module")
def fake_rtmo_path(tmp_path_factory):
    from fakes.fake_rtmo import build_fake_rtmo

    return str(build_fake_rtmo(tmp_path_factory.mktemp("rtmo") / "dyn.onnx"))


def _record_ort(monkeypatch, calls: list[str], cuda: bool) -> None:
    import onnxruntime as ort

    monkeypatch.setattr(ort, "preload_dlls", lambda *a, **k: calls.append("preload"), raising=False)
    if cuda:
        monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])

        def session(*a, **k):   # a CPU machine cannot make a CUDA session: record the order, then fail loading
            calls.append("session")
            raise RuntimeError("simulated: no GPU here")

        monkeypatch.setattr(ort, "InferenceSession", session)


def test_ort_cuda_session_preloads_cuda_libraries_first(monkeypatch, fake_rtmo_path):
    from recognizer_core.extract.backends import BackendError, OrtBackend
    from recognizer_core.extract.config import OnnxOptions

    calls: list[str] = []
    _record_ort(monkeypatch, calls, cuda=True)
    with pytest.raises(BackendError, match="simulated"):
        OrtBackend(OnnxOptions(model_path=fake_rtmo_path, device="cuda:0"), (640, 640))
    assert calls == ["preload", "session"]


def test_ort_cuda_session_without_preload_dlls(monkeypatch, fake_rtmo_path):
    import onnxruntime as ort

    from recognizer_core.extract.backends import BackendError, OrtBackend
    from recognizer_core.extract.config import OnnxOptions

    calls: list[str] = []
    _record_ort(monkeypatch, calls, cuda=True)
    monkeypatch.delattr(ort, "preload_dlls")   # older onnxruntime-gpu builds
    with pytest.raises(BackendError, match="simulated"):
        OrtBackend(OnnxOptions(model_path=fake_rtmo_path, device="cuda"), (640, 640))
    assert calls == ["session"]


def test_ort_cpu_session_builds_without_preload(monkeypatch, fake_rtmo_path):
    from recognizer_core.extract.backends import OrtBackend
    from recognizer_core.extract.config import OnnxOptions

    calls: list[str] = []
    _record_ort(monkeypatch, calls, cuda=False)
    backend = OrtBackend(OnnxOptions(model_path=fake_rtmo_path), (640, 640))
    assert backend.provider == "CPUExecutionProvider" and calls == []
