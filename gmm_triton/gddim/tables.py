"""The gDDIM ops' coefficient tables: the engine's float64 step coefficients packed in the layout the kernels read.

CLD: one row of ``CLD_COLS`` = 24 float64 per step (192 bytes): Ψ at columns 0–3, C_0, C_1, C_2 at 4–7, 8–11,
12–15 (each a row-major 2×2 block), the noise factor Λ = [[l00, 0], [l10, l11]] at 16–18, zeros at 19–23.
Blur: [steps, 5, N, N] float64 planes A = Ψ_f, B_0..B_2 = C_0f..C_2f and S = the noise std √P_f, per frequency.
"""
from __future__ import annotations

import numpy as np
import torch

from ..contract import BLUR_PLANES, CLD_CHOL as COL_CHOL, CLD_COLS, CLD_EPS as COL_EPS, CLD_PSI as COL_PSI
from .engine import MAX_ORDER, StepCoefficients

assert BLUR_PLANES == MAX_ORDER + 3 and COL_CHOL == COL_EPS + 4 * (MAX_ORDER + 1)  # A, B_0..B_MAX_ORDER, S


def cld_table(c: StepCoefficients) -> torch.Tensor:
    """[steps, 24] float64 (CPU) from a CLD process's coefficients (C = 1, n = 2)."""
    if c.psi.shape[1:] != (1, 2, 2):
        raise ValueError(f"CLD tables need 2×2 blocks of one class, got {c.psi.shape[1:]}")
    S = c.num_steps
    t = np.zeros((S, CLD_COLS))
    t[:, COL_PSI:COL_PSI + 4] = c.psi.reshape(S, 4)
    t[:, COL_EPS:COL_EPS + 4 * (MAX_ORDER + 1)] = c.eps.reshape(S, 4 * (MAX_ORDER + 1))
    t[:, COL_CHOL] = c.chol[:, 0, 0, 0]
    t[:, COL_CHOL + 1] = c.chol[:, 0, 1, 0]
    t[:, COL_CHOL + 2] = c.chol[:, 0, 1, 1]
    return torch.from_numpy(t)


def blur_table(c: StepCoefficients, image_size: int) -> torch.Tensor:
    """[steps, 5, N, N] float64 (CPU) from a blur process's coefficients (C = N² frequencies, n = 1)."""
    S, N = c.num_steps, image_size
    if c.psi.shape[1:] != (N * N, 1, 1):
        raise ValueError(f"blur tables need {N * N} scalar classes, got {c.psi.shape[1:]}")
    t = np.concatenate([c.psi[:, None, :, 0, 0], c.eps[:, :, :, 0, 0], c.chol[:, None, :, 0, 0]], axis=1)
    return torch.from_numpy(np.ascontiguousarray(t.reshape(S, BLUR_PLANES, N, N)))
