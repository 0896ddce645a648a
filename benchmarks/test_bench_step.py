"""pytest-benchmark suites of the fused step; `gmm_triton/tools/bench.py` has the method and the full table.

    pytest benchmarks                          CPU: the op (C++ twin) and 50-step scheduler loops, ours vs diffusers
    pytest -m cuda benchmarks                  GPU: the Triton kernel; do_bench medians and GB/s in extra_info
    GMM_BENCH_FULL=1 pytest benchmarks ...     the full size and dtype lists (default: tiny)

Benchmarks measure; they assert nothing about time. Under `--benchmark-disable` (CI) each target runs
once, so every case here stays small by default.
"""
import os

import pytest
import torch

from gmm_triton import ops
from gmm_triton.tools import bench

FULL = os.environ.get("GMM_BENCH_FULL") == "1"
CPU_SIZES = bench.SIZES if FULL else ((1, 4, 32, 32),)
GPU_SIZES = bench.SIZES if FULL else ((1, 4, 64, 64), (2, 4, 128, 128))
DTYPES = tuple(bench.DTYPES) if FULL else ("fp32", "bf16")
LOOP_VARIANTS = tuple(v for v in bench.VARIANTS if v.loop_kernel is not None)
GPU_CALLS_PER_ROUND = 10

needs_cpp = pytest.mark.skipif(ops.cpu_backend() != "cpp",
                               reason="CPU benchmarks measure the C++ twin only (gmm_triton._C not in use)")


def _name(shape):
    return "x".join(map(str, shape))


shapes = pytest.mark.parametrize("shape", CPU_SIZES, ids=_name)
gpu_shapes = pytest.mark.parametrize("shape", GPU_SIZES, ids=_name)
dtypes = pytest.mark.parametrize("dtype", DTYPES)
variants = pytest.mark.parametrize("variant", bench.VARIANTS, ids=lambda v: v.key)
loop_variants = pytest.mark.parametrize("variant", LOOP_VARIANTS, ids=lambda v: v.key)
impls = pytest.mark.parametrize("impl", ["ours", "diffusers"])


@pytest.fixture(scope="module")
def caches():
    """Coefficient tables and mixtures shared by the cases of this module: (tables, mixtures)."""
    return {}, {}


def _loop(variant, impl, shape, dtype, dev):
    """A 50-step ``x = step(m, t, x)`` loop of ``impl`` on fresh random inputs, warmed up (mixture built)."""
    sched, step = bench.schedulers(variant, dev)[impl]
    dt = bench.DTYPES[dtype]
    x, m = torch.randn(shape, device=dev, dtype=dt), torch.randn(shape, device=dev, dtype=dt)
    bench.step_loop(step, sched.timesteps[:2], m, x)()
    return bench.step_loop(step, sched.timesteps, m, x)


# ------------------------------------------------------------------------------------------------
# CPU: the C++ twin against diffusers on the CPU
# ------------------------------------------------------------------------------------------------
@needs_cpp
@variants
@dtypes
@shapes
def test_cpu_op(benchmark, caches, shape, dtype, variant):
    case = bench.make_case(shape, dtype, variant, "cpu", tables=caches[0], mixtures=caches[1])
    benchmark.group = f"cpu op {_name(shape)} {dtype}"
    benchmark.extra_info["floor_bytes"] = case.floor_bytes
    prev, _ = benchmark(case.run)
    assert prev.shape == shape


@needs_cpp
@impls
@loop_variants
@dtypes
@shapes
def test_cpu_scheduler_loop(benchmark, shape, dtype, variant, impl):
    run = _loop(variant, impl, shape, dtype, torch.device("cpu"))
    benchmark.group = f"cpu 50-step loop {_name(shape)} {dtype} {variant.name}"
    benchmark.extra_info["steps"] = bench.NUM_STEPS
    assert benchmark(run).shape == shape


# ------------------------------------------------------------------------------------------------
# GPU: the Triton kernel (every target ends with a device sync)
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def copy_gbps():
    return bench.copy_bandwidth(torch.device("cuda"))


@pytest.mark.cuda
@variants
@dtypes
@gpu_shapes
def test_gpu_op(benchmark, caches, copy_gbps, shape, dtype, variant):
    dev = torch.device("cuda")
    case = bench.make_case(shape, dtype, variant, dev, tables=caches[0], mixtures=caches[1])

    def target():
        for _ in range(GPU_CALLS_PER_ROUND):
            case.run()
        torch.cuda.synchronize()

    benchmark.group = f"gpu op {_name(shape)} {dtype}"
    benchmark.pedantic(target, iterations=1, rounds=20, warmup_rounds=3)
    us = bench.time_calls({"op": case.run}, dev, budget_s=0)["op"]
    gbps = case.floor_bytes / (us * 1e-6) / 1e9
    benchmark.extra_info.update(calls_per_round=GPU_CALLS_PER_ROUND, floor_bytes=case.floor_bytes,
                                do_bench_median_us=us, gbps=gbps, pct_copy=100 * gbps / copy_gbps,
                                copy_gbps=copy_gbps)


@pytest.mark.cuda
@impls
@loop_variants
@dtypes
@gpu_shapes
def test_gpu_scheduler_loop(benchmark, shape, dtype, variant, impl):
    run = _loop(variant, impl, shape, dtype, torch.device("cuda"))

    def target():
        out = run()
        torch.cuda.synchronize()
        return out

    benchmark.group = f"gpu 50-step loop {_name(shape)} {dtype} {variant.name}"
    benchmark.extra_info["steps"] = bench.NUM_STEPS
    assert benchmark.pedantic(target, iterations=1, rounds=10, warmup_rounds=2).shape == shape
