"""The blur step's rounding against the float64 reference, per form and split (kernels/blur_step.py), on the CPU
through the Triton kernels under TRITON_INTERPRET=1 (the same tf32x3 part products as the tensor cores compute):
max |out − reference| / (the same maths on |inputs|), the scale the tests bound by 4e-7 (deterministic) and 2e-6
(stochastic). Writes docs/results/blur_precision.json and prints the table of benchmarks/RESULTS.md.

    python benchmarks/blur_precision.py
"""
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("TRITON_INTERPRET", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import torch  # noqa: E402

from gmm_triton import ops  # noqa: E402
from gmm_triton.gddim import ops as gops, reference as gref  # noqa: E402
from gmm_triton.kernels import blur_step as K  # noqa: E402
from test_gddim_ops import blur_tables, magnitude, philox  # noqa: E402

# (N, buffers, samples of 3 planes): every form and split an sm_90 fp32 launch takes (kron: rounding split with three
# buffers; the grid: from one tile of planes, at N = 3 and 6 at any size; three buffers on the grid at N = 24)
CASES = [(3, 1, 13), (3, 2, 71), (6, 1, 17), (8, 1, 13), (8, 3, 13), (7, 1, 13), (10, 2, 13), (20, 1, 13),
         (12, 1, 13), (16, 2, 13), (16, 3, 13), (28, 1, 13), (24, 3, 13), (48, 1, 13), (33, 3, 13),
         (48, 2, 13)]


def form(N, k, B):
    if K.launches_grid(N, k, 3 * B, True, 90):  # the interpreter launches what sm_90 does (blur_step._arch)
        return "grid"
    if K.kron_form(N):
        return "kron, rounded split" if k == 3 and K.tile_size(N) == 64 else "kron"
    T = K.tile_size(N)
    if K.plane_sliced(k, T, N):
        return f"plane T={T}, sliced"
    if K.plane_y_scratch(k, T, N):
        return f"plane T={T}, Y in scratch, rounded split"
    return f"plane T={T}" + (", rounded split" if T == 64 else "")


def main():
    torch.manual_seed(0)
    rows_out = []
    for N, k, B in CASES:
        _, bt, basis = blur_tables(N, lam_order=2)
        det, _, _ = blur_tables(N)
        x = torch.randn(B, 3, N, N)  # 3·B planes (39: a grid tile at N = 7, 36 planes, and 10, 18 …)
        eps = [torch.randn_like(x) for _ in range(k)]
        rows = torch.randint(0, 5, (B,))
        res = {}
        for name, table, kw, noise, bound in [("deterministic", det, {}, None, 4e-7),
                                              ("stochastic", bt, dict(stochastic=True, seed=5), philox(5, x.shape),
                                               2e-6)]:
            with ops.use_cpu_backend("triton"):
                out = gops.blur_step(x, eps, rows, table, basis, **kw)
            ref = gref.blur_step(x, eps, table, basis, rows, seed=kw.get("seed"))
            scale = magnitude(gref.blur_step, x, eps, table, basis.abs(), rows, noise=noise)
            res[name] = {"max_err_over_scale": float(((out.double() - ref).abs() / scale).max()), "bound": bound}
        rows_out.append({"N": N, "buffers": k + 1, "form": form(N, k, B), "planes": 3 * B, **res})
        print(rows_out[-1], flush=True)
    out = ROOT / "docs" / "results" / "blur_precision.json"
    out.write_text(json.dumps({"command": "python benchmarks/blur_precision.py", "rows": rows_out}, indent=1) + "\n")
    print("\n| N | buffers (x + ε) | planes | form | deterministic: max err / scale (bound 4e-7) | stochastic (bound 2e-6) |")
    print("|---|---|---|---|---|---|")
    for r in rows_out:
        print(f"| {r['N']} | {r['buffers']} | {r['planes']} | {r['form']} | {r['deterministic']['max_err_over_scale']:.2g} | "
              f"{r['stochastic']['max_err_over_scale']:.2g} |")


if __name__ == "__main__":
    main()
