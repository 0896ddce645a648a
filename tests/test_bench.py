"""`gmm-triton bench` on the CPU: it runs, writes its four files with the documented columns and finite numbers,
and refuses what it must not measure. No timing assertions (a benchmark measures, a test asserts)."""
import argparse
import csv
import json
import math

import pytest
import torch

from gmm_triton import build_mixture, ops
from gmm_triton.tools import bench

needs_cpp = pytest.mark.skipif(ops.cpu_backend() != "cpp", reason="the CPU benchmark measures the C++ twin only")


def _args(*argv):
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    return parser.parse_args(list(argv))


def _positive(value):
    v = float(value)
    return math.isfinite(v) and v > 0


@needs_cpp
def test_quick_cpu_run_writes_table_csvs_plot_and_meta(tmp_path, capsys):
    assert bench.main(_args("--device", "cpu", "--quick", "--out", str(tmp_path))) == 0
    printed = capsys.readouterr().out
    assert "=== kernel table" in printed and "=== end to end" in printed

    with open(tmp_path / "bench.csv", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames) == bench.KERNEL_COLUMNS
        rows = list(reader)
    assert len(rows) == len(bench.QUICK_SIZES) * len(bench.QUICK_DTYPES) * len(bench.VARIANTS)
    assert {r["variant"] for r in rows} == {v.name for v in bench.VARIANTS}
    loop_names = {v.name for v in bench.VARIANTS if v.loop_kernel}
    for r in rows:
        assert r["error"] == ""
        for col in ("floor_bytes", "median_us", "gbps", "pct_copy", "floor_us"):
            assert _positive(r[col]), (col, r)
        has_loop = r["variant"] in loop_names
        for col in ("step_us_ours", "step_us_diffusers", "ratio_diffusers"):
            assert _positive(r[col]) if has_loop else r[col] == "", (col, r)
        assert r["compile_us"] == "" and r["ratio_compile"] == ""  # --quick skips torch.compile on the CPU

    with open(tmp_path / "e2e.csv", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames) == bench.E2E_COLUMNS
        e2e = list(reader)
    assert {r["model"] for r in e2e} == {"unet", "oracle"}
    for r in e2e:
        assert r["mode"] == "eager" and r["scheduler"] in ("ours", "diffusers")
        assert _positive(r["loop_ms"]) and _positive(r["noop_loop_ms"])
        assert math.isfinite(float(r["sched_share_pct"])) and math.isfinite(float(r["sched_us_per_step"]))

    assert (tmp_path / "throughput.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    meta = json.loads((tmp_path / "meta.json").read_text(encoding="utf-8"))
    for key in ("device_name", "torch", "triton", "commit", "copy_gbps", "date"):
        assert key in meta
    assert meta["device"] == "cpu" and meta["cpu_backend"] == "cpp" and meta["errors"] == []
    assert _positive(meta["copy_gbps"])


def test_refuses_a_cpu_backend_other_than_the_cpp_twin(tmp_path, capsys):
    with ops.use_cpu_backend("reference"):
        assert bench.main(_args("--device", "cpu", "--quick", "--out", str(tmp_path))) == 2
    assert "C++ twin" in capsys.readouterr().err
    assert not (tmp_path / "bench.csv").exists()


def test_refuses_cuda_without_a_gpu_or_under_the_interpreter(tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: nothing to refuse")
    assert bench.main(_args("--device", "cuda", "--out", str(tmp_path))) == 2
    assert "gmm-triton bench:" in capsys.readouterr().err


def test_floor_bytes_count_each_input_and_output_once():
    keys = ("ddim1", "cfg", "gmm-diag", "gmm-vub", "gmm-exact")
    ddim, cfg, diag, vub, exact = (bench.VARIANTS_BY_KEY[k] for k in keys)
    B, D = 3, 2 * 8 * 8
    shape = (B, 2, 8, 8)
    assert bench.floor_bytes(ddim, shape, "fp32") == B * D * 4 * 4      # x, m read; prev, x̂₀ written
    assert bench.floor_bytes(ddim, shape, "bf16") == B * D * 2 * 4
    assert bench.floor_bytes(cfg, shape, "fp16") == B * D * 2 * 5       # both CFG halves read
    K = 4
    base = B * D * 4 * 4
    tables = 2 * 4 * K                                                  # cdf and 1/(Kπ), padded to KP = K = 4
    m = build_mixture(D, 5, components=K, scale=0.1, variance="diag")
    assert bench.floor_bytes(diag, shape, "fp32", m) == base + B * D * 4 + tables + D * 4  # min(B, K) = 3 offset rows
    m = build_mixture(D, 5, components=K, scale=0.1, variance="vub")
    assert bench.floor_bytes(vub, shape, "fp32", m) == base + B * D * 4 + tables + K * K * 4
    m = build_mixture(D, 5, components=K, scale=0.1, variance="exact")
    big = (8,) + shape[1:]                                              # B = 8 > K: every component's row once
    assert bench.floor_bytes(exact, big, "fp32", m) == 8 * D * 16 + K * D * 4 + tables + K * (D * 4 + 4)
    with pytest.raises(ValueError):
        bench.floor_bytes(diag, shape, "fp32")


def test_size_and_dtype_options_parse_and_reject():
    args = _args("--sizes", "1x4x64x64,2×3×8×8", "--dtypes", "fp16,bf16", "--variants", "ddim0,cfg")
    assert args.sizes == ((1, 4, 64, 64), (2, 3, 8, 8))
    assert args.dtypes == ("fp16", "bf16") and args.variants == ("ddim0", "cfg")
    for bad in (["--sizes", "4"], ["--sizes", "0x4x8x8"], ["--dtypes", "fp64"], ["--variants", "ddpm"]):
        with pytest.raises(SystemExit):
            _args(*bad)
