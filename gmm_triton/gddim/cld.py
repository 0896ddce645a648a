"""Critically-damped Langevin diffusion (CLD; Dockhorn, Vahdat, Kreis 2022) as gDDIM uses it.

Each data coordinate x_i carries a velocity v_i; per pair u = (x, v):

    dx = β M⁻¹ v dt,    dv = β(−x − Γ M⁻¹ v) dt + √(2Γβ) dw,    i.e.  F = β [[0, M⁻¹], [−1, −Γ M⁻¹]],
    G Gᵀ = diag(0, 2Γβ),

critically damped (Γ² = 4M, so Γ = 2/√M⁻¹). The data enter with zero velocity; the initial velocity
v_0 ~ N(0, γM) and a numerical ε on both diagonal entries live in Σ_0 = diag(ε, γM + ε). With B = β(t − s),
g = 1/Γ (so M⁻¹ = 4g²):

    Ψ(t, s) = e^{−2Bg} [[1 + 2Bg, 4Bg²], [−B, 1 − 2Bg]]

and with B = βt, σx0² = ε, σv0² = γM + ε (the closed forms of NVIDIA's CLD-SGM ``var()``):

    Σ_xx = e^{−4Bg} [σx0² + e^{4Bg} − 1 + 4Bg(σx0² − 1) + 4B²g²(σx0² − 2) + 16 g⁴ B² σv0²]
    Σ_xv = e^{−4Bg} [−B σx0² + 4g² B σv0² − 2g B²(σx0² − 2) − 8 g³ B² σv0²]
    Σ_vv = e^{−4Bg} [(Γ²/4)(e^{4Bg} − 1) + Γ B − 4g B σv0² + 4g² B² σv0² + σv0² + B²(σx0² − 2)]

**R_t without an ODE solver.** gDDIM's R (R' = (F + ½GGᵀΣ⁻¹)R, R_0 = Σ_0^½ = L_0, R Rᵀ = Σ) is the Cholesky
factor times a rotation, R_t = L_t Rot(θ_t). Substituting into the ODE, L⁻¹L' + θ' J = L⁻¹(F + ½GGᵀΣ⁻¹)L with
L⁻¹L' lower triangular, so the (0, 1) entry alone fixes θ: θ' = −(L⁻¹ F̂ L)_01 = −F_01 L_11/L_00 (GGᵀ has a zero
first row), i.e.

    θ_t = −β M⁻¹ ∫_0^t √det Σ_τ / Σ_xx(τ) dτ,

a scalar quadrature of the closed forms (tabulated once on panels geometric in τ, Gauss–Legendre within). For the
defaults θ_1 = −12.4842 = −4π + 0.0822 and R_1 = [[0.99662, −0.082057], [0.041036, 0.49831]].
"""
from __future__ import annotations

import math

import numpy as np
import torch

from .engine import _GL_ANGLE, LinearProcess, as_times as _np


class CLD(LinearProcess):
    """The CLD process. Defaults are the official gDDIM code's (``default_cifar10_config.py``).

    Args:
        m_inv: M⁻¹, the inverse mass (4). The damping Γ = 2/√M⁻¹ (critical damping; 1 for the default).
        beta: β, the constant time scale of the drift (4).
        gamma: γ, the initial velocity variance factor: v_0 ~ N(0, γM) (0.04, so v_0 ~ N(0, 0.01)).
        numerical_eps: added to both diagonal entries of Σ_0 (1e-6); must be > 0 (R_0 = Σ_0^½ is inverted).

    The methods ``psi(t, s)``, ``sigma(t)``, ``R(t)``, ``L(t)``, ``F(t)``, ``GG(t)`` take floats or tensors of
    times and return float64 tensors [..., 2, 2]; the prior at t = 1 is close to N(0, diag(1, M)).
    """

    n = 2
    classes = 1

    def __init__(self, m_inv: float = 4.0, beta: float = 4.0, gamma: float = 0.04, numerical_eps: float = 1e-6):
        for name, v in (("m_inv", m_inv), ("beta", beta), ("numerical_eps", numerical_eps)):
            if not (math.isfinite(v) and v > 0):
                raise ValueError(f"{name} must be finite and > 0, got {v}")
        if not (math.isfinite(gamma) and gamma >= 0):
            raise ValueError(f"gamma must be finite and >= 0, got {gamma}")
        self.m_inv, self.beta, self.gamma = float(m_inv), float(beta), float(gamma)
        self.numerical_eps = float(numerical_eps)
        self.Gamma = 2.0 / math.sqrt(self.m_inv)
        self.M = 1.0 / self.m_inv
        self.var_x0 = self.numerical_eps
        self.var_v0 = self.gamma * self.M + self.numerical_eps
        self._theta_table = None

    def key(self):
        return ("CLD", self.m_inv, self.beta, self.gamma, self.numerical_eps)

    # -- closed forms (numpy, vectorised; [..., 1, 2, 2]) ----------------------------------------------------
    def _F(self, t):
        t = np.asarray(t, dtype=np.float64)
        f = np.array([[0.0, self.m_inv], [-1.0, -self.Gamma * self.m_inv]]) * self.beta
        return np.broadcast_to(f, t.shape + (1, 2, 2)).copy()

    def _GG(self, t):
        t = np.asarray(t, dtype=np.float64)
        return np.broadcast_to(np.diag([0.0, 2 * self.Gamma * self.beta]), t.shape + (1, 2, 2)).copy()

    def _psi(self, t, s):
        B = self.beta * (np.asarray(t, dtype=np.float64) - np.asarray(s, dtype=np.float64))
        g = 1.0 / self.Gamma
        e = np.exp(-2 * B * g)
        out = np.empty(B.shape + (1, 2, 2))
        out[..., 0, 0, 0] = e * (1 + 2 * B * g)
        out[..., 0, 0, 1] = e * 4 * B * g * g
        out[..., 0, 1, 0] = -e * B
        out[..., 0, 1, 1] = e * (1 - 2 * B * g)
        return out

    def _sigma_parts(self, t):
        B = self.beta * np.asarray(t, dtype=np.float64)
        g, G = 1.0 / self.Gamma, self.Gamma
        x0, v0 = self.var_x0, self.var_v0
        e = np.exp(-4 * B * g)
        em1 = np.expm1(4 * B * g)
        xx = e * (x0 + em1 + 4 * B * g * (x0 - 1) + 4 * B * B * g * g * (x0 - 2) + 16 * g**4 * B * B * v0)
        xv = e * (-B * x0 + 4 * g * g * B * v0 - 2 * g * B * B * (x0 - 2) - 8 * g**3 * B * B * v0)
        vv = e * (G * G / 4 * em1 + G * B - 4 * g * B * v0 + 4 * g * g * B * B * v0 + v0 + B * B * (x0 - 2))
        return xx, xv, vv

    def _sigma(self, t):
        xx, xv, vv = self._sigma_parts(t)
        return np.stack([np.stack([xx, xv], -1), np.stack([xv, vv], -1)], -2)[..., None, :, :]

    def _L(self, t):
        xx, xv, vv = self._sigma_parts(t)
        a = np.sqrt(xx)
        out = np.zeros(a.shape + (1, 2, 2))
        out[..., 0, 0, 0] = a
        out[..., 0, 1, 0] = xv / a
        out[..., 0, 1, 1] = np.sqrt(np.maximum(vv - xv * xv / xx, 0.0))
        return out

    def _angle_rate(self, tau):
        """θ'(τ) = −β M⁻¹ √det Σ_τ / Σ_xx(τ)."""
        xx, xv, vv = self._sigma_parts(tau)
        return -self.beta * self.m_inv * np.sqrt(np.maximum(xx * vv - xv * xv, 0.0)) / xx

    def _theta(self, t):
        """θ_t: cumulative Gauss–Legendre over a table of panels [0, 1e-10] ∪ geometric up to max(t, 1),
        then one 20-point panel from the table node below t."""
        t = np.asarray(t, dtype=np.float64)
        if np.any(t < 0):
            raise ValueError("CLD times must be >= 0")
        t_hi = max(1.0, float(t.max()) if t.size else 1.0)
        if self._theta_table is None or self._theta_table[0][-1] < t_hi:
            nodes = np.concatenate([[0.0], np.geomspace(1e-10, t_hi, 801)])
            cum = np.concatenate([[0.0], np.cumsum(self._gl(nodes[:-1], nodes[1:]))])
            self._theta_table = (nodes, cum)
        nodes, cum = self._theta_table
        j = np.clip(np.searchsorted(nodes, t, side="right") - 1, 0, len(nodes) - 1)
        return cum[j] + self._gl(nodes[j], t)

    def _gl(self, a, b):
        x, w = _GL_ANGLE
        a, b = np.asarray(a)[..., None], np.asarray(b)[..., None]
        return (0.5 * (b - a) * w * self._angle_rate(0.5 * (a + b) + 0.5 * (b - a) * x)).sum(-1)

    def _R(self, t):
        th = self._theta(t)
        c, s = np.cos(th), np.sin(th)
        rot = np.stack([np.stack([c, -s], -1), np.stack([s, c], -1)], -2)[..., None, :, :]
        return self._L(t) @ rot

    # -- public, torch ----------------------------------------------------------------------------------------
    def _out(self, a):
        return torch.from_numpy(np.ascontiguousarray(a[..., 0, :, :]))

    def psi(self, t, s):
        """Ψ(t, s) [..., 2, 2]: u_t = Ψ(t, s) u_s + noise."""
        return self._out(self._psi(_np(t), _np(s)))

    def sigma(self, t):
        """Σ_t [..., 2, 2]: the covariance of u_t given x_0 (velocity variance included)."""
        return self._out(self._sigma(_np(t)))

    def R(self, t):
        """gDDIM's R_t [..., 2, 2] (R Rᵀ = Σ_t, R_0 = Σ_0^½)."""
        return self._out(self._R(_np(t)))

    def L(self, t):
        """The lower Cholesky factor L_t of Σ_t [..., 2, 2]."""
        return self._out(self._L(_np(t)))

    def F(self, t):
        return self._out(self._F(_np(t)))

    def GG(self, t):
        return self._out(self._GG(_np(t)))

    def prior(self, shape, generator=None, device=None, dtype=torch.float32):
        """Samples of the t = 1 prior N(0, diag(1, M)), ``shape`` = (B, 2, *dims) with index 1 = (x, v)."""
        if len(shape) < 2 or shape[1] != 2:
            raise ValueError(f"CLD samples are [B, 2, ...] (x, v), got shape {tuple(shape)}")
        z = torch.randn(tuple(shape), generator=generator, device=device, dtype=dtype)
        scale = torch.tensor([1.0, math.sqrt(self.M)], device=device, dtype=dtype)
        return z * scale.reshape(1, 2, *([1] * (len(shape) - 2)))
