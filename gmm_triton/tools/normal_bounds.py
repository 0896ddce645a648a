"""The normal bounds of kernels/philox.py, computed: ``python -m gmm_triton.tools.normal_bounds``.

A float32 model of the Triton kernels' Box–Muller (numpy float32 arithmetic in the kernels' operation order, which
is what the interpreter executes) evaluates, over all 2²⁴ words of each axis:
- the angle leaf's error |Δc| (cos and sin) for the accurate leaf (the exact angle, rounded) and for the GPU's (the
  float32 φ = fl(k · fl(2π·2⁻²⁴)), then the PTX cos/sin.approx error 2⁻²⁰·⁹ added as a worst case);
- the radius error |Δr(a)| with accurate leaves and with the PTX rcp / sqrt leaves at their worst (rounded up);
and bounds every pair (a, b) by max over a of |Δr(a)| + r(a)·max|Δc| + ½ ulp(z) — the bound the implementations are
tested against (reference.NORMAL_BOUNDS; tests/test_philox_math.py).
"""
from __future__ import annotations

import numpy as np

F32, F64 = np.float32, np.float64
TWO_PI_2_24 = 2 * np.pi * 2.0**-24
PTX_TRIG_ERROR = 2.0**-20.9  # cos/sin.approx.ftz.f32, absolute, on [−π, π] (PTX ISA)


def _round_up(v64: np.ndarray) -> np.ndarray:
    """v rounded up to float32: the worst a ≤ 1-ulp instruction (rcp.approx, sqrt.approx) may return."""
    v = v64.astype(F32)
    return np.where(v.astype(F64) < v64, np.nextafter(v, F32(np.inf)), v)


def angle_errors() -> dict:
    """max |Δc| over every angle index k, for the accurate and the GPU angle leaves, and where φ errs most."""
    k = np.arange(-(1 << 23), 1 << 23, dtype=np.int64)
    exact = k * TWO_PI_2_24
    phi32 = (k.astype(F32) * F32(TWO_PI_2_24)).astype(F32)
    dphi = np.abs(phi32.astype(F64) - exact)
    out = {"phi_error": float(dphi.max()), "phi_worst_b": int(k[dphi.argmax()] + (1 << 23))}
    accurate = max(np.abs(np.cos(exact).astype(F32).astype(F64) - np.cos(exact)).max(),
                   np.abs(np.sin(exact).astype(F32).astype(F64) - np.sin(exact)).max())
    gpu = max(np.abs(np.cos(phi32.astype(F64)) - np.cos(exact)).max(),
              np.abs(np.sin(phi32.astype(F64)) - np.sin(exact)).max()) + PTX_TRIG_ERROR
    out.update(accurate=float(accurate), gpu=float(gpu))
    return out


def radii(rcp, sqrt) -> np.ndarray:
    """r(a) for every 24-bit word value a as kernels/philox.py's _radius2 and _sqrt compute it (float32)."""
    x = (np.arange(1 << 24, dtype=np.int64) + 1).astype(F32)
    ix = x.view(np.int32) + np.int32(0x3F800000 - 0x3F3504F3)
    f = ((ix & 0x007FFFFF) + 0x3F3504F3).astype(np.int32).view(F32)
    t = ((f - F32(1.0)) * rcp(f + F32(1.0))).astype(F32)
    t2 = (t * t).astype(F32)
    e_term = (((ix >> 23) - (127 + 24)).astype(F32) * F32(-2.0 * 0.6931471805599453)).astype(F32)
    p = F32(-0.5714285714285714)
    for c in (-0.8, -1.3333333333333333, -4.0):
        p = (F32(c) + t2 * p).astype(F32)
    return sqrt((t * p + e_term).astype(F32))


def bounds() -> dict:
    """The per-pair error bounds of the interpreter's and the GPU's leaves (module docstring)."""
    a = np.arange(1 << 24, dtype=F64)
    r_true = np.sqrt(-2.0 * np.log((a + 1) * 2.0**-24))
    ang = angle_errors()
    accurate = radii(lambda y: (F32(1.0) / y).astype(F32), lambda v: np.sqrt(v).astype(F32))
    gpu = radii(lambda y: _round_up(1.0 / y.astype(F64)), lambda v: _round_up(np.sqrt(v.astype(F64))))
    out = dict(ang)
    for name, r, dc in (("interpreter", accurate, ang["accurate"]), ("gpu", gpu, ang["gpu"])):
        dr = np.abs(r.astype(F64) - r_true)
        zmax = (r.astype(F64) * (1 + dc)).astype(F32)
        half_ulp = (np.nextafter(zmax, F32(np.inf)).astype(F64) - zmax.astype(F64)) / 2
        per_a = dr + r_true * dc + half_ulp
        out[f"radius_{name}"] = float(dr.max())
        out[f"bound_{name}"] = float(per_a.max())
        out[f"bound_{name}_worst_a"] = int(per_a.argmax())
    return out


def main() -> None:
    for k, v in bounds().items():
        print(f"{k:28s} {v:.4g}" if isinstance(v, float) else f"{k:28s} {v}")


if __name__ == "__main__":
    main()
