"""Bad input raises a clear TypeError/ValueError naming the argument, before any kernel runs."""
import math

import pytest
import torch

import kkattn
from kkattn import reference
from conftest import HAS_GPU


def kv(shape=(1, 2, 16, 16), dtype=torch.float32):
    return torch.randn(shape, dtype=dtype), torch.randn(shape, dtype=dtype)


k0, v0 = kv()
BAD = [
    # (description, args, kwargs, exception, message fragment)
    ("k not a tensor", (k0.tolist(), v0, 2.0), {}, TypeError, "k must be a torch.Tensor"),
    ("rank 3 k", (k0[0], v0, 2.0), {}, ValueError, "k must have shape (B, H, N, D)"),
    ("rank 5 v", (k0, v0[None], 2.0), {}, ValueError, "v must have shape (B, H, N, D)"),
    ("k/v shape mismatch", (k0, v0[:, :1], 2.0), {}, ValueError, "same shape"),
    ("k/v head dim mismatch", (k0, torch.randn(1, 2, 16, 8), 2.0), {}, ValueError, "same shape"),
    ("k/v dtype mismatch", (k0, v0.double(), 2.0), {}, TypeError, "same dtype"),
    ("integer dtype", (k0.long(), v0.long(), 2.0), {}, TypeError, "float16, bfloat16, float32 or float64"),
    ("grid product", (k0, v0, 2.0), {"grid": (3, 5)}, ValueError, "does not match N - num_prefix_tokens"),
    ("grid not a pair", (k0, v0, 2.0), {"grid": (16,)}, TypeError, "grid must be a pair"),
    ("grid non-positive", (k0, v0, 2.0), {"grid": (-4, -4)}, ValueError, "must be positive"),
    ("non-square N", (*kv((1, 2, 15, 16)), 2.0), {}, ValueError, "not a perfect square"),
    ("sigma zero", (k0, v0, 0.0), {}, ValueError, "sigma must be a positive finite"),
    ("sigma negative", (k0, v0, -1.0), {}, ValueError, "sigma must be a positive finite"),
    ("sigma nan", (k0, v0, math.nan), {}, ValueError, "sigma must be a positive finite"),
    ("sigma inf", (k0, v0, math.inf), {}, ValueError, "sigma must be a positive finite"),
    ("sigma string", (k0, v0, "2"), {}, TypeError, "sigma must be None"),
    ("sigma tensor wrong length", (k0, v0, torch.ones(3)), {}, ValueError, "sigma tensor must have shape (2,)"),
    ("sigma tensor 2-D", (k0, v0, torch.ones(2, 1)), {}, ValueError, "sigma tensor must have shape (2,)"),
    ("sigma tensor non-positive", (k0, v0, torch.tensor([1.0, 0.0])), {}, ValueError, "positive and finite"),
    ("sigma tensor nan", (k0, v0, torch.tensor([1.0, math.nan])), {}, ValueError, "positive and finite"),
    ("sigma tensor int", (k0, v0, torch.tensor([1, 2])), {}, TypeError, "floating point"),
    ("prefix negative", (k0, v0, 2.0), {"num_prefix_tokens": -1}, ValueError, "num_prefix_tokens must be in"),
    ("prefix = N", (k0, v0, 2.0), {"num_prefix_tokens": 16}, ValueError, "num_prefix_tokens must be in"),
    ("prefix not int", (k0, v0, 2.0), {"num_prefix_tokens": 1.0}, TypeError, "num_prefix_tokens must be an int"),
    ("scale zero", (k0, v0, 2.0), {"scale": 0.0}, ValueError, "scale must be a positive finite"),
    ("unknown backend", (k0, v0, 2.0), {"backend": "flash"}, ValueError, "backend must be one of"),
    ("triton float64", (k0.double(), v0.double(), 2.0), {"backend": "triton"}, TypeError, "backend 'triton' takes"),
    ("triton head dim 24", (*kv((1, 2, 16, 24)), 2.0), {"backend": "triton"}, ValueError, "head dims (16, 32, 64, 128)"),
    ("cpu kernel float64", (k0.double(), v0.double(), 2.0), {"backend": "cpu"}, TypeError, "backend 'cpu' takes"),
    ("cuda kernels on CPU tensors", (k0, v0, 2.0), {"backend": "cuda"}, ValueError, "backend 'cuda'"),
]
if not kkattn.available_backends()["cpu"].available:  # a pure-Python install: asking for it says why
    BAD[-2] = ("cpu kernel missing", (k0, v0, 2.0), {"backend": "cpu"}, ValueError, "backend 'cpu' is not available")


@pytest.mark.parametrize("what,args,kwargs,exc,fragment", BAD, ids=[b[0] for b in BAD])
def test_bad_input_raises_before_any_kernel(what, args, kwargs, exc, fragment, monkeypatch):
    from kkattn import _ops

    def no_kernel(*a, **k):
        raise AssertionError("a kernel ran before the input was rejected")

    monkeypatch.setattr(_ops, "get_backend", lambda name: type("B", (), {"forward": no_kernel})())
    with pytest.raises(exc) as info:
        kkattn.neighborhood_kk_attention(*args, **kwargs)
    assert fragment in str(info.value), str(info.value)


def test_reference_validates_too():
    with pytest.raises(ValueError, match="perfect square"):
        reference.neighborhood_kk_attention(*kv((1, 2, 15, 16)), 2.0)
    with pytest.raises(ValueError, match="sigma"):
        reference.neighborhood_kk_attention(k0, v0, -2.0)


def test_k_v_on_different_devices():
    k = torch.randn(1, 2, 16, 16, device="meta")
    with pytest.raises(ValueError, match="same device"):
        kkattn.neighborhood_kk_attention(k, v0, 2.0)


def test_sigma_tensor_on_another_device():
    with pytest.raises(ValueError, match="sigma tensor is on meta"):
        kkattn.neighborhood_kk_attention(k0, v0, torch.ones(2, device="meta"))


@pytest.mark.skipif(HAS_GPU, reason="checks the no-GPU, no-interpreter message")
def test_triton_without_gpu_or_interpreter_says_why(monkeypatch):
    from kkattn.backends import _probes
    monkeypatch.setattr(_probes, "interpreting", lambda: False)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert str(kkattn.available_backends()["triton"]) == \
        "triton: no GPU — set TRITON_INTERPRET=1 to run it on CPU tensors"
    with pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
        kkattn.neighborhood_kk_attention(k0, v0, 2.0, backend="triton")
    # Set, but only after triton's functions were decorated: say so instead of failing inside triton.
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert "set it before importing kkattn" in str(kkattn.available_backends()["triton"])
    with pytest.raises(ValueError, match="before importing kkattn"):
        kkattn.neighborhood_kk_attention(k0, v0, 2.0, backend="triton")


def test_gaussian_prior_bad_input():
    with pytest.raises(ValueError, match="sigma"):
        kkattn.gaussian_prior((4, 4), 0.0)
    with pytest.raises(ValueError, match="needs a sigma"):
        kkattn.gaussian_prior((4, 4), None)
    with pytest.raises(TypeError, match="grid must be a pair"):
        kkattn.gaussian_prior((4, 4, 4), 1.0)


def test_module_bad_config():
    with pytest.raises(ValueError, match="divisible"):
        kkattn.nn.NeighborhoodKKAttention(30, 4)
    with pytest.raises(ValueError, match="sigma"):
        kkattn.nn.NeighborhoodKKAttention(32, 4, sigma=-1.0)


def test_missing_extension_falls_back_and_says_why(monkeypatch):
    # A pure-Python install (no kkattn._C): auto uses chunked on CPU, asking for "cpu" explains.
    from kkattn.backends import _auto_choice, cpu
    monkeypatch.setattr(cpu, "load", lambda: "not compiled (this install has no kkattn._C extension)")
    assert str(kkattn.available_backends()["cpu"]) == "cpu: not compiled (this install has no kkattn._C extension)"
    assert _auto_choice("cpu", torch.float32, 64) == "chunked"
    with pytest.raises(ValueError, match="backend 'cpu' is not available: not compiled"):
        kkattn.neighborhood_kk_attention(k0, v0, 2.0, backend="cpu")
    out = kkattn.neighborhood_kk_attention(k0, v0, 2.0)
    torch.testing.assert_close(out, reference.neighborhood_kk_attention(k0, v0, 2.0), rtol=1e-5, atol=1e-6)


def test_a_0d_sigma_tensor_is_a_scalar_and_differentiable():
    k, v = torch.randn(1, 3, 13, 16, dtype=torch.float64), torch.randn(1, 3, 13, 16, dtype=torch.float64)
    want = kkattn.neighborhood_kk_attention(k, v, 1.5, grid=(3, 4), num_prefix_tokens=1)
    sigma = torch.tensor(1.5, dtype=torch.float64, requires_grad=True)
    got = kkattn.neighborhood_kk_attention(k, v, sigma, grid=(3, 4), num_prefix_tokens=1)
    torch.testing.assert_close(got, want)
    got.sum().backward()
    per_head = torch.full((3,), 1.5, dtype=torch.float64, requires_grad=True)  # the sum of the heads' dσ
    kkattn.neighborhood_kk_attention(k, v, per_head, grid=(3, 4), num_prefix_tokens=1).sum().backward()
    torch.testing.assert_close(sigma.grad, per_head.grad.sum())
    assert kkattn.gaussian_prior((3, 4), torch.tensor(1.5)).shape == (12, 12)  # as for a float σ
    with pytest.raises(ValueError, match="sigma must be positive"):
        kkattn.neighborhood_kk_attention(k, v, torch.tensor(-1.0, dtype=torch.float64), grid=(3, 4),
                                         num_prefix_tokens=1)
