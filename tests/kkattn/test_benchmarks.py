"""The benchmark harness itself: the correctness gate, the FLOP formula check, the report."""
import argparse

import pytest
import torch

from benchmarks import attention


def _args(**kw):
    base = dict(device="cpu", batch=1, heads=2, dim=16, sigma=2.0, reps=1, quick=True)
    return argparse.Namespace(**{**base, **kw})


def test_flop_formula_matches_flop_counter():
    assert "agrees" in attention.check_flop_formula()


def test_cells_time_correct_methods_and_flag_wrong_ones(tmp_path, monkeypatch):
    args = _args()
    oracle = attention.oracle_file(6, args, torch.float32, tmp_path)
    rows = attention.run_cell("kkattn-chunked", 6, "fp32", args, oracle)
    assert [r["pass"] for r in rows] == ["fwd", "fwd+bwd"]
    assert all(r["status"] == "ok" and r["ms"] > 0 and r["tflops"] > 0 and r["max_rel_err"] < 1e-5 for r in rows)
    assert all(r["gemm_tflops"] > 0 and r["pct_of_gemm"] == 100 * r["tflops"] / r["gemm_tflops"] for r in rows)
    assert "Limit: a 2048³ fp32 GEMM" in attention.limit_line(rows, "fp32")

    real = attention.make_fn

    def broken(method, *a, **kw):
        fn = real(method, *a, **kw)
        return lambda k, v: fn(k, v) * 1.01  # 1% off: must not be timed
    monkeypatch.setattr(attention, "make_fn", broken)
    rows = attention.run_cell("sdpa+G", 6, "fp32", args, oracle)
    assert all(r["status"].startswith("WRONG") and "ms" not in r for r in rows)


def test_cpu_kernel_cells_report_their_path_and_actual_work(tmp_path):
    from kkattn.backends import _REGISTRY
    if not _REGISTRY["cpu"].status().available:
        pytest.skip("the C++ kernel is not built")
    args = _args(heads=2 * torch.get_num_threads())  # the tile-pair schedule
    rows = attention.run_cell("kkattn-cpu", 6, "fp32", args, attention.oracle_file(6, args, torch.float32, tmp_path))
    assert [r["path"] for r in rows] == ["smoother", "smoother"]
    fwd, both = rows
    assert fwd["actual_tflops"] == pytest.approx(fwd["tflops"] * 3 / 4)
    assert both["actual_tflops"] == pytest.approx(both["tflops"] * 10 / 14)
    text = attention.cell_text({**fwd, "pct_of_gemm": 80.0, "actual_pct_of_gemm": 60.0})
    assert "(80% of GEMM; actual 60%) · smoother" in text


def test_report_lists_every_method():
    rows = [{"method": m, "grid": "4×4", "n_tokens": 16, "pass": p, "dtype": "fp32", "status": "ok", "ms": 2.0,
             "ms_min": 1.0, "ms_max": 3.0, "peak_mb": 1.0, "tflops": 0.1, **({"g_build_ms": 0.5} if m == "sdpa+G" else {})}
            for m in ("kkattn-cpu", "reference", "sdpa+G") for p in attention.PASSES]
    meta = {"device": "cpu", "device_name": "test", "date": "today", "quick": True, "batch": 1, "heads": 2, "dim": 16,
            "sigma": 2.0, "reps": 1, "grids": [4], "dtypes": ["fp32"], "flop_check": "ok", "memory": "RSS",
            "machine": {"cpu": "x", "threads": 1, "torch": "t", "triton": None, "python": "3"}}
    text = attention.markdown(rows, ["kkattn-cpu", "reference", "sdpa+G"], meta)
    assert "| 4×4 (16) | 2.0 ms (1.0–3.0)" in text and "1.00× faster" in text and "0.5 ms" in text


def test_sdpa_prior_equals_kkattn_prior():
    import kkattn

    for grid, shape in ((7, (7, 7)), ("1x9", (1, 9)), ("3x5", (3, 5))):
        torch.testing.assert_close(attention.separable_prior(grid, 1.5, torch.float32, "cpu"),
                                   kkattn.gaussian_prior(shape, 1.5))


def test_a_one_row_grid_is_a_cell_of_its_own(tmp_path):
    args = _args()
    oracle = attention.oracle_file("1x20", args, torch.float32, tmp_path)
    rows = attention.run_cell("kkattn-chunked", "1x20", "fp32", args, oracle)
    assert [(r["grid"], r["n_tokens"], r["status"]) for r in rows] == [("1×20", 20, "ok")] * 2
