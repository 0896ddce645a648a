"""Blurring diffusion (BDM; Hoogeboom & Salimans 2022) as the official gDDIM code re-implements it (``blur_jax``).

In the orthonormal 2-D DCT of each N×N channel, y = V x Vᵀ (V the DCT-II matrix, :func:`dct_matrix`), every
frequency f = (i, j) is an independent scalar diffusion

    y_t = α_t d_f(t) y_0 + σ_t ε,       α_t = cos(φ_t),  σ_t = sin(φ_t),  φ_t = ((t + 0.004)/1.008)·π/2
    d_f(t) = (1 − d_min) e^{−λ_f τ_t} + d_min,   λ_f = π²(i² + j²)/N²,   τ_t = σ_B(t)²/2,   σ_B(t) = σ_B,max sin²(tπ/2)

i.e. F_f = d/dt log(α_t d_f(t)), G_f² = dσ²/dt − 2 F_f σ² ≥ 0 (blurring only adds to the VP drift's decay), and
Ψ_f(t, s) = α_t d_f(t) / (α_s d_f(s)). The noise stays isotropic, Σ_t = σ_t² I, so R_t = L_t = σ_t: gDDIM's R
versus L question does not arise, and its gain over BDM's ancestral sampler comes from the exponential-integrator
step (DDIM per frequency). The ancestral sampler is the λ = 1 member of the engine's stochastic family: per
frequency it is the forward process's posterior q(y_t | y_s, ŷ_0).
"""
from __future__ import annotations

import math

import numpy as np
import torch

from .engine import LinearProcess, as_times as _np

_PHASE = math.pi / (2 * 1.008)


def dct_matrix(n: int) -> np.ndarray:
    """The orthonormal DCT-II matrix V [n, n] (float64): V[k, m] = √(2/n) c_k cos(π(2m+1)k/(2n)), c_0 = 1/√2,
    c_k = 1; y = V x Vᵀ is ``scipy.fft.dctn(x, norm="ortho")`` of an n×n plane and x = Vᵀ y V its inverse."""
    k = np.arange(n)[:, None]
    m = np.arange(n)[None, :]
    v = math.sqrt(2.0 / n) * np.cos(math.pi * (2 * m + 1) * k / (2 * n))
    v[0] /= math.sqrt(2.0)
    return v


class BlurProcess(LinearProcess):
    """The BDM process on N×N images (each channel transformed alike). Defaults are ``blur_jax``'s.

    Args:
        image_size: N (square images, any N ≥ 1).
        sigma_blur_max: σ_B,max, the largest blur (10; the official README sweeps it).
        min_scale: d_min, the floor of the per-frequency scale (0.001).

    The coefficient classes are the N² frequencies (row-major (i, j)). Methods take float or tensor times:
    ``alpha(t)``, ``sigma(t)`` (σ_t), ``blur_scale(t)`` (d [..., N, N]), ``psi(t, s)`` [..., N, N];
    ``rho2t(ρ)`` is the time at which the noise-to-signal ratio σ/α of the unblurred frequency equals ρ.
    """

    n = 1

    def __init__(self, image_size: int, sigma_blur_max: float = 10.0, min_scale: float = 0.001):
        if isinstance(image_size, bool) or int(image_size) != image_size or image_size < 1:
            raise ValueError(f"image_size must be a positive int, got {image_size!r}")
        if not (math.isfinite(sigma_blur_max) and sigma_blur_max >= 0):
            raise ValueError(f"sigma_blur_max must be finite and >= 0, got {sigma_blur_max}")
        if not 0 < min_scale <= 1:
            raise ValueError(f"min_scale must lie in (0, 1], got {min_scale}")
        self.image_size, self.sigma_blur_max, self.min_scale = int(image_size), float(sigma_blur_max), float(min_scale)
        self.classes = self.image_size**2
        i = np.arange(self.image_size)
        self.freqs = (math.pi**2 * (i[:, None] ** 2 + i[None, :] ** 2) / self.image_size**2).reshape(-1)  # λ_f

    def key(self):
        return ("Blur", self.image_size, self.sigma_blur_max, self.min_scale)

    # -- scalar schedules --------------------------------------------------------------------------------------
    @staticmethod
    def _phase(t):
        return (np.asarray(t, dtype=np.float64) + 0.004) * _PHASE

    def _tau(self, t):
        sb = self.sigma_blur_max * np.sin(np.asarray(t, dtype=np.float64) * math.pi / 2) ** 2
        return 0.5 * sb * sb

    def _tau_dot(self, t):
        t = np.asarray(t, dtype=np.float64)
        sb = self.sigma_blur_max * np.sin(t * math.pi / 2) ** 2
        return sb * self.sigma_blur_max * (math.pi / 2) * np.sin(t * math.pi)

    def _d(self, t):
        """[..., C]: d_f(t)."""
        return (1 - self.min_scale) * np.exp(-self.freqs * self._tau(t)[..., None]) + self.min_scale

    def _a(self, t):
        """[..., C]: α_t d_f(t), the signal scale per frequency."""
        return np.cos(self._phase(t))[..., None] * self._d(t)

    # -- the engine's interface ([..., C, 1, 1]) -------------------------------------------------------------
    def _F(self, t):
        t = np.asarray(t, dtype=np.float64)
        e = (1 - self.min_scale) * np.exp(-self.freqs * self._tau(t)[..., None])
        d_rate = -self.freqs * e * self._tau_dot(t)[..., None] / (e + self.min_scale)
        return (-np.tan(self._phase(t)) * _PHASE)[..., None, None, None] + d_rate[..., None, None]

    def _GG(self, t):
        ph = self._phase(t)
        s2 = np.sin(ph) ** 2
        ds2 = 2 * np.sin(ph) * np.cos(ph) * _PHASE
        return ds2[..., None, None, None] - 2 * self._F(t) * s2[..., None, None, None]

    def _psi(self, t, s):
        return (self._a(t) / self._a(s))[..., None, None]

    def _sigma(self, t):
        s2 = np.sin(self._phase(t)) ** 2
        return np.broadcast_to(s2[..., None, None, None], s2.shape + (self.classes, 1, 1)).copy()

    # -- public, torch ----------------------------------------------------------------------------------------
    def _plane(self, a):
        a = np.asarray(a)
        return torch.from_numpy(np.ascontiguousarray(a.reshape(a.shape[:-1] + (self.image_size, self.image_size))))

    def alpha(self, t):
        return torch.from_numpy(np.asarray(np.cos(self._phase(_np(t)))))

    def sigma(self, t):
        return torch.from_numpy(np.asarray(np.sin(self._phase(_np(t)))))

    def blur_scale(self, t):
        """d(t) [..., N, N]."""
        return self._plane(self._d(_np(t)))

    def psi(self, t, s):
        """Ψ(t, s) per frequency [..., N, N]."""
        return self._plane(self._psi(_np(t), _np(s))[..., 0, 0])

    def R(self, t):
        """R_t = L_t = σ_t per frequency [..., N, N]."""
        return self._plane(np.sqrt(self._sigma(_np(t))[..., 0, 0]))

    L = R

    @staticmethod
    def rho2t(rho: float) -> float:
        """The t with σ_t/α_t = ρ (the official start time is rho2t(80))."""
        return math.atan(rho) / _PHASE - 0.004

    def dct(self) -> torch.Tensor:
        """V [N, N] float64 (:func:`dct_matrix`)."""
        return torch.from_numpy(dct_matrix(self.image_size))

    def marginal_sample(self, x0: torch.Tensor, t: float, generator=None) -> torch.Tensor:
        """x_t in pixel space for clean images x0 [B, C, N, N]: Vᵀ(α_t d(t) ⊙ V x0 Vᵀ + σ_t ε)V, ε ~ N(0, I)."""
        v = self.dct().to(x0.device, torch.float64)
        y = v @ x0.double() @ v.T
        a = torch.from_numpy(self._a(np.float64(t)).reshape(self.image_size, self.image_size)).to(x0.device)
        z = torch.randn(y.shape, generator=generator, device=x0.device, dtype=torch.float64)
        return (v.T @ (a * y + float(self.sigma(t)) * z) @ v).to(x0.dtype)
