"""Float64 reference of the gDDIM ops: the test oracle of the Triton kernels and the C++ twin, never a fallback.

Both ops apply one row of a float64 coefficient table (``tables.py``), row r_b per sample b (an int, or one
per sample), to the state and the r+1 ε buffers [ε_i, ε_{i-1}, …] (the current model output first):

**cld_step** — state and ε are [B, 2, *S] (index 1: x, v), flattened to [B, 2, D]; per pair d, with the table
row's 2×2 blocks Ψ, C_0..C_2 and the lower-triangular noise factor Λ = [[l00, 0], [l10, l11]]:

    (x', v')ᵀ = Ψ (x, v)ᵀ + Σ_j C_j (ε_j,x, ε_j,v)ᵀ + Λ (n_x, n_v)ᵀ

**blur_step** — state and ε are [B, C, N, N] images; with the orthonormal basis V [N, N] (the DCT-II matrix)
and per-frequency planes A, B_0..B_2, S [N, N] of the row:

    Y = A ⊙ (V X Vᵀ) + Σ_j B_j ⊙ (V E_j Vᵀ) + S ⊙ n,        X' = Vᵀ Y V

with n in frequency space. Noise (Philox stream 0 of the RNG contract in ``gmm_triton/reference.py``):

    cld_step:   n_x = normal[b·2D + d],  n_v = normal[b·2D + D + d]   (the flat index over [B, 2, D])
    blur_step:  n[b, c, i, j] = normal[((b·C + c)·N + i)·N + j]        (the flat index over [B, C, N, N])

or a caller's tensor of the state's shape (for blur_step, in frequency space). A row outside the table makes
that sample NaN.
"""
from __future__ import annotations

import math

import torch

from ..reference import philox_normal
from .tables import COL_CHOL, COL_EPS, COL_PSI


def _rows(steps, B, R):
    rows = torch.as_tensor(steps, dtype=torch.int64).reshape(-1).cpu().expand(B)
    bad = (rows < 0) | (rows >= R)
    return rows.clamp(0, R - 1), bad


def _noise(seed, noise, shape):
    if noise is not None:
        return noise.double().cpu().reshape(shape)
    if seed is not None:
        return torch.from_numpy(philox_normal(int(seed), math.prod(shape))).reshape(shape)
    return None


def cld_step(sample, eps, coef, steps, *, seed=None, noise=None):
    """What ``torch.ops.gmm_triton.cld_step`` computes, in float64 on the CPU (see the module docstring)."""
    B = sample.shape[0]
    u = sample.double().cpu().reshape(B, 2, -1)
    rows, bad = _rows(steps, B, coef.shape[0])
    c = coef.double().cpu()[rows]                                           # [B, 24]
    psi = c[:, COL_PSI:COL_PSI + 4].reshape(B, 2, 2)
    out = torch.einsum("bij,bjd->bid", psi, u)
    for j, e in enumerate(eps):
        cj = c[:, COL_EPS + 4 * j:COL_EPS + 4 * j + 4].reshape(B, 2, 2)
        out = out + torch.einsum("bij,bjd->bid", cj, e.double().cpu().reshape(B, 2, -1))
    n = _noise(seed, noise, (B, 2, u.shape[2]))
    if n is not None:
        l00, l10, l11 = (c[:, COL_CHOL + k, None] for k in range(3))
        out = out + torch.stack([l00 * n[:, 0], l10 * n[:, 0] + l11 * n[:, 1]], 1)
    out[bad] = float("nan")
    return out.reshape(sample.shape)


def blur_step(sample, eps, coef, basis, steps, *, seed=None, noise=None):
    """What ``torch.ops.gmm_triton.blur_step`` computes, in float64 on the CPU (see the module docstring)."""
    B = sample.shape[0]
    v = basis.double().cpu()
    rows, bad = _rows(steps, B, coef.shape[0])
    c = coef.double().cpu()[rows][:, :, None]                              # [B, 5, 1, N, N]
    y = c[:, 0] * (v @ sample.double().cpu() @ v.T)
    for j, e in enumerate(eps):
        y = y + c[:, 1 + j] * (v @ e.double().cpu() @ v.T)
    n = _noise(seed, noise, tuple(sample.shape))
    if n is not None:
        y = y + c[:, 4] * n
    out = v.T @ y @ v
    out[bad] = float("nan")
    return out
