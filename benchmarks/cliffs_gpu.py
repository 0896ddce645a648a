"""Issue 19's launches measured on a GPU, beside the static prediction (run by benchmarks/run_gpu.sh).

    python benchmarks/cliffs_gpu.py OUTDIR

For each row: the op call (``ops.ddim_step`` / ``gddim.ops.cld_step`` / ``blur_step``) timed with
``triton.testing.do_bench`` (median, L2 flushed), its DRAM floor bytes (the compile matrix's bytes per element,
``gmm_triton/tools/aot_cases.py`` / ``gddim_aot_cases.py``, times the elements), GB/s and % of the copy bandwidth
measured in the same process (``tools/bench.copy_bandwidth``). The static rows of the same names are in
benchmarks/RESULTS.md. Shapes are the matrix cases' at a batch large enough for a bandwidth regime (the ragged
rows at B = 64 as in the matrix, and at 4096 / 320 samples; the blur rows at 2^22 pixels or more). Writes
OUTDIR/cliffs.csv and prints the table.
"""
import csv
import math
import sys
from pathlib import Path

import torch


def _rows():
    from gmm_triton.tools.aot_cases import Step
    from gmm_triton.tools.gddim_aot_cases import Gddim
    from gmm_triton.mixture import VARIANCES

    h, b, f = torch.float16, torch.bfloat16, torch.float32
    big = (4, 128, 128)
    rows = [("main-fp16-eps-philox-x0 (B=64)", Step(h, shape=big, batch=64))]
    for D, shape in ((1000, (10, 10, 10)), (1001, (7, 11, 13)), (13467, (3, 67, 67))):
        for B in (64, 4096 if D < 2000 else 320):
            rows.append((f"ragged-fp16-d{D}-b{B}-x0", Step(h, shape=shape, batch=B)))
    rows.append(("ragged-fp16-d1001-b4096-devoffset-x0", Step(h, shape=(7, 11, 13), batch=4096,
                                                             sample_offset="device")))
    for dt in (h, b):
        rows.append((f"cl-{'fp16' if dt == h else 'bf16'}-eps-philox-x0 (B=64)", Step(dt, shape=big, batch=64,
                                                                                      layout="channels_last")))
    for lay in ("x_cl", "m_cl"):
        rows.append((f"mixed-{lay}-fp16-eps-philox-x0 (B=64)", Step(h, shape=big, batch=64, layout=lay)))
    for var in VARIANCES:
        for lay in ("contiguous", "channels_last"):
            rows.append((f"{'cl-' if lay != 'contiguous' else ''}gmm-{var}-fp16-eps-philox-x0 (B=64)",
                         Step(h, shape=(4, 64, 64), batch=64, mixture=var, layout=lay)))
    rows.append(("gmm-exact-fp16-eps-philox-k64-x0 (B=64)", Step(h, shape=(4, 64, 64), batch=64, mixture="exact",
                                                                 components=64)))
    for dt in (h, b):
        for order in (0, 1, 2):
            rows.append((f"cld-{'fp16' if dt == h else 'bf16'}-order{order}-philox (B=64)",
                         Gddim("cld", dt, (2, 4, 64, 64), batch=64, order=order)))
    for n in (1, 3, 6, 7, 8, 9, 12, 16, 17, 20, 28, 32, 64):  # 2^22 pixels or more (3 … 32 but 8, 16: the grid, 2
        B = max(64, 2**22 // (3 * n * n))                    # or 4 tiles a program; 16: planes a program)
        rows.append((f"blur-fp32-n{n}-philox (B={B})", Gddim("blur", f, (3, n, n), batch=B)))
    rows.append(("blur-fp32-n7-philox (B=98304)", Gddim("blur", f, (3, 7, 7), batch=98304)))  # 8192 tiles: four a program
    for n in (8, 32, 64):  # three buffers: the grid (N = 8, 32; Kronecker rows on sm_80), the sliced plane (64)
        B = max(64, 2**22 // (3 * n * n))
        rows.append((f"blur-fp32-n{n}-order2-philox-stochastic (B={B})", Gddim("blur", f, (3, n, n), batch=B,
                                                                              order=2)))
    return rows


def _call(spec, dev):
    """A closure making the row's op call on ``dev`` with fresh inputs (built once)."""
    from gmm_triton import build_mixture, ops
    from gmm_triton.gddim import ops as gops
    from gmm_triton.tools import aot_cases

    if hasattr(spec, "kind"):  # a gDDIM row
        from gmm_triton.contract import BLUR_PLANES, CLD_COLS

        shape = (spec.batch, *spec.shape)
        u = torch.randn(shape, device=dev).to(spec.dtype)
        eps = [torch.randn_like(u) for _ in range(spec.order + 1)]
        if spec.kind == "cld":
            tab = torch.rand(10, CLD_COLS, device=dev, dtype=torch.float64)
            return lambda: gops.cld_step(u, eps, 3, tab, stochastic=True, seed=5)
        n = spec.shape[-1]
        tab = torch.rand(10, BLUR_PLANES, n, n, device=dev, dtype=torch.float64)
        basis = torch.linalg.qr(torch.randn(n, n, dtype=torch.float64))[0].to(dev)
        return lambda: gops.blur_step(u, eps, 3, tab, basis, stochastic=True, seed=5)
    s = spec
    x = torch.randn(s.batch, *s.shape, device=dev).to(s.dtype)
    m = torch.randn_like(x)
    if s.layout in ("channels_last", "x_cl"):
        x = x.to(memory_format=torch.channels_last)
    if s.layout in ("channels_last", "m_cl"):
        m = m.to(memory_format=torch.channels_last)
    table = aot_cases._table(False).to(dev)
    mix = build_mixture(s.D, 10, components=s.components, scale=0.1, variance=s.mixture, seed=1, device=dev) \
        if s.mixture else None
    off = torch.tensor([5], device=dev) if s.sample_offset == "device" else None
    return lambda: ops.ddim_step(x, m, 7, table, eta=1.0, seed=torch.tensor([3], device=dev), mixture=mix,
                                 sample_offset=off)


def _floor_bytes(spec) -> float:
    """The compile matrix's DRAM floor of the row (every kernel it launches), in bytes."""
    n = spec.batch * math.prod(spec.shape)
    if hasattr(spec, "kind"):
        return spec.bytes_per_element("_cld_step_kernel" if spec.kind == "cld" else "_blur_step_kernel") * n
    kernels = ["_ddim_step_kernel"] + (["_project_kernel"] if spec.mixture == "exact" else [])
    return sum(spec.bytes_per_element(k) for k in kernels) * n


def main(out: Path) -> int:
    from triton.testing import do_bench

    from gmm_triton.tools.bench import copy_bandwidth

    dev = torch.device("cuda")
    copy = copy_bandwidth(dev)
    lines = []
    for name, spec in _rows():
        try:
            fn = _call(spec, dev)
            us = do_bench(fn, warmup=25, rep=100, return_mode="median") * 1e3
            gbps = _floor_bytes(spec) / (us * 1e-6) / 1e9
            lines.append(dict(row=name, median_us=round(us, 2), floor_mb=round(_floor_bytes(spec) / 1e6, 3),
                              gbps=round(gbps, 1), pct_copy=round(100 * gbps / copy, 1), error=""))
        except Exception as e:  # noqa: BLE001 - a failed row is a row
            lines.append(dict(row=name, median_us="", floor_mb="", gbps="", pct_copy="", error=repr(e)[:200]))
        print(lines[-1], flush=True)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "cliffs.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=list(lines[0]))
        w.writeheader()
        w.writerows(lines)
    print(f"\ncopy bandwidth {copy:.0f} GB/s (same process)")
    print(f"{'row':<46} {'µs':>9} {'MB':>8} {'GB/s':>7} {'%copy':>5}")
    for r in lines:
        print(f"{r['row']:<46} {r['median_us']:>9} {r['floor_mb']:>8} {r['gbps']:>7} {r['pct_copy']:>5} {r['error']}")
    return 1 if any(r["error"] for r in lines) else 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1] if len(sys.argv) > 1 else "gmm_triton_out/cliffs")))
