"""PyTorch integration: custom op checks, torch.compile, FlopCounterMode, dispatch, the nn module."""
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import kkattn
from kkattn import reference
from kkattn.backends import _auto_choice


def test_opcheck_forward_op():
    k = torch.randn(2, 3, 10, 16, requires_grad=True)
    v = torch.randn(2, 3, 10, 16, requires_grad=True)
    sigma = torch.tensor([1.0, 2.0, 3.0], requires_grad=True)
    for s in (sigma, None):
        torch.library.opcheck(torch.ops.kkattn.forward.default, (k, v, s, 3, 1, 0.25, "chunked"))


def test_torch_compile_fullgraph_forward_and_backward():
    k = torch.randn(1, 2, 65, 16, requires_grad=True)
    v = torch.randn(1, 2, 65, 16, requires_grad=True)

    def f(k, v):
        return kkattn.neighborhood_kk_attention(k * 1.5, v, 2.0, num_prefix_tokens=1).square().sum()

    compiled = torch.compile(f, fullgraph=True, backend="inductor")
    loss = compiled(k, v)
    loss.backward()
    dk, dv = k.grad.clone(), v.grad.clone()
    k.grad = v.grad = None
    want = f(k, v)
    want.backward()
    torch.testing.assert_close(loss, want)
    torch.testing.assert_close(dk, k.grad)
    torch.testing.assert_close(dv, v.grad)


def test_flop_counter_reports_the_formula():
    b, h, n, d = 2, 3, 64, 16
    k = torch.randn(b, h, n, d, requires_grad=True)
    with FlopCounterMode(display=False) as counter:
        kkattn.neighborhood_kk_attention(k, k.detach(), 2.0).sum().backward()
    counts = counter.get_flop_counts()["Global"]
    assert counts[torch.ops.kkattn.forward] == 4 * b * h * n * n * d
    assert counts[torch.ops.kkattn.backward] == 10 * b * h * n * n * d


def test_available_backends_reports_why():
    status = kkattn.available_backends()
    assert set(status) == {"reference", "chunked", "triton", "cpu", "cuda"}
    assert status["reference"].available and status["chunked"].available
    assert str(status["cpu"]).startswith("cpu: available (compiled C++") or \
        str(status["cpu"]) == "cpu: not compiled (this install has no kkattn._C extension)"
    # The CUDA kernels: available with a GPU and a CUDA build, else the reason (not compiled / no GPU).
    assert status["cuda"].available == (torch.cuda.is_available() and "not compiled" not in status["cuda"].detail)
    assert str(status["triton"]).startswith("triton: ")


def test_auto_dispatch():
    cpu_kernel = kkattn.available_backends()["cpu"].available
    assert _auto_choice("cpu", torch.float32, 64) == ("cpu" if cpu_kernel else "chunked")
    assert _auto_choice("cpu", torch.bfloat16, 24) == ("cpu" if cpu_kernel else "chunked")
    assert _auto_choice("cpu", torch.float64, 64) == "chunked"
    # CUDA tensors: the CUDA kernels when this install can run them, else Triton when it can take them.
    status = kkattn.available_backends()
    want = "cuda" if status["cuda"].available else "triton" if status["triton"].available else "chunked"
    if not (want == "triton" and not torch.cuda.is_available()):  # the interpreter takes CPU tensors only
        assert _auto_choice("cuda", torch.bfloat16, 64) == want
    assert _auto_choice("cuda", torch.float64, 64) == "chunked"
    assert _auto_choice("cuda", torch.float32, 24) == "chunked"


def test_backend_reference_by_name_matches_auto():
    k = torch.randn(1, 2, 36, 16)
    v = torch.randn(1, 2, 36, 16)
    torch.testing.assert_close(kkattn.neighborhood_kk_attention(k, v, 2.0, backend="reference"),
                               kkattn.neighborhood_kk_attention(k, v, 2.0), rtol=1e-5, atol=1e-6)


def _module_reference(mod, x, grid):
    """The module's computation written out with the materialized oracle."""
    b, n, c = x.shape
    kv = x.double() @ mod.kv.weight.double().T + mod.kv.bias.double()
    k, v = kv.reshape(b, n, 2, mod.num_heads, mod.head_dim).permute(2, 0, 3, 1, 4)
    sigma = mod.sigma
    sigma = sigma.double() if isinstance(sigma, torch.Tensor) else sigma
    o = reference.neighborhood_kk_attention(k, v, sigma, grid=grid, num_prefix_tokens=mod.num_prefix_tokens)
    return o.transpose(1, 2).reshape(b, n, c) @ mod.proj.weight.double().T + mod.proj.bias.double()


@pytest.mark.parametrize("learnable", [False, True])
def test_module_matches_reference(learnable):
    mod = kkattn.nn.NeighborhoodKKAttention(64, 4, sigma=2.0, num_prefix_tokens=1, learnable_sigma=learnable)
    x = torch.randn(2, 1 + 5 * 7, 64, requires_grad=True)
    out = mod(x, grid=(5, 7))
    assert out.shape == x.shape
    torch.testing.assert_close(out.double(), _module_reference(mod, x, (5, 7)), rtol=1e-4, atol=1e-5)
    out.square().sum().backward()
    assert x.grad is not None and mod.kv.weight.grad is not None
    if learnable:
        assert mod.log_sigma.grad is not None and torch.all(mod.log_sigma.grad != 0)


def test_module_load_qkv_takes_k_and_v_rows():
    dim = 32
    qkv = torch.nn.Linear(dim, 3 * dim)
    mod = kkattn.nn.NeighborhoodKKAttention(dim, 4).load_qkv_(qkv.weight, qkv.bias)
    torch.testing.assert_close(mod.kv.weight, qkv.weight[dim:])
    torch.testing.assert_close(mod.kv.bias, qkv.bias[dim:])
    with pytest.raises(ValueError, match="qkv_weight must have shape"):
        mod.load_qkv_(qkv.weight[:dim])


def test_import_after_torch_registers_the_ops_and_flop_formulas():
    """``import torch, kkattn`` registers torch.ops.kkattn at once (the package loads lazily only without torch,
    for the console scripts): a FlopCounterMode created before the first call still counts it."""
    import subprocess
    import sys

    code = ("import torch, kkattn\n"
            "from torch.utils.flop_counter import FlopCounterMode\n"
            "assert hasattr(torch.ops.kkattn, 'forward')\n"
            "k = torch.randn(1, 2, 16, 8)\n"
            "with FlopCounterMode(display=False) as counter:\n"
            "    kkattn.neighborhood_kk_attention(k, k, 2.0, grid=(4, 4))\n"
            "print(counter.get_total_flops())\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert int(result.stdout.strip()) == 4 * 1 * 2 * 16 * 16 * 8
