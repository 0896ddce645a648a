"""gDDIM's coefficient engine (Zhang, Tao, Chen, arXiv 2206.05564): float64, on the host, once per time grid.

A linear diffusion ``du = F_t u dt + G_t dw`` acts on blocks of n coordinates (n = 2 for CLD's (x, v) pairs,
n = 1 per frequency for BDM and for VP) that fall into C classes sharing their coefficients (CLD: C = 1; BDM:
C = N² frequencies). A process supplies, vectorised over times ``t`` of any shape, [..., C, n, n] arrays of

    F_t, G_t G_tᵀ                     drift and diffusion
    Ψ(t, s)                          transition:  ∂_t Ψ(t, s) = F_t Ψ(t, s),  Ψ(s, s) = I
    Σ_t                              covariance of u_t | data:  Σ' = FΣ + ΣFᵀ + GGᵀ,  from Σ_0
    L_t, R_t                         two square roots of Σ_t: the Cholesky factor, and gDDIM's
                                     R' = (F + ½ GGᵀ Σ⁻¹) R, R_0 = Σ_0^½  (n = 1: R = L = √Σ)

and the network predicts ε with score = −K_t⁻ᵀ ε, K ∈ {R, L}. On a reverse grid t_0 > t_1 > … > t_N the engine
returns, per step i (t_i → t_{i+1}), the coefficients of one affine update

    u_{i+1} = Ψ_i u_i + Σ_{j=0..r} C_ij ε(u_{i-j}, t_{i-j}) + Λ_i n,      n ~ N(0, I),  Λ_i lower triangular

for four solvers:

* **deterministic gDDIM, order r** (λ = 0): the probability-flow ODE du = [F u + ½ GGᵀ K⁻ᵀ ε] dt integrated
  exactly with ε replaced by its Lagrange extrapolation through t_i, …, t_{i-r} (lower orders on the first r
  steps): C_ij = ∫_{t_i}^{t_{i+1}} Ψ(t_{i+1}, τ) ½ G_τG_τᵀ K_τ⁻ᵀ ℓ_j(τ) dτ by Gauss–Legendre on panels geometric
  in τ. For K = R and r = 0 this is exactly C_i0 = R_{t_{i+1}} − Ψ R_{t_i} (gDDIM's order-0 step; on VP it is
  DDIM with η = 0), and that closed form is used.
* **stochastic gDDIM** (λ > 0): the λ-family du = [F u + (1+λ²)/2 GGᵀ ∇log p] dt + λ G dw̄. With the data
  prediction x̂₀ defined by ∇log p_τ = −Σ_τ⁻¹(u − Ψ(τ, 0) x̂₀) (i.e. u − Ψ(τ, 0) x̂₀ = K_τ ε), the drift is
  F̂ u − (1+λ²)/2 GGᵀΣ⁻¹ Ψ(τ, 0) x̂₀ with F̂ = F + (1+λ²)/2 GGᵀΣ⁻¹, so with Ψ̂ the transition of F̂

      u_t = Ψ̂(t,s) u_s − ∫_s^t Ψ̂(t,τ) (1+λ²)/2 G_τG_τᵀ Σ_τ⁻¹ Ψ(τ, 0) x̂₀(τ) dτ + P^½ n,

  P = Σ_t − Ψ̂ Σ_s Ψ̂ᵀ (the covariance the reverse SDE adds: Gaussian data keep their marginals). Writing
  Ψ̂(t, s) = R_t Φ R_s⁻¹, Φ solves the well-conditioned ∂_τ Φ = ½λ² H_τ Φ, H = R⁻¹ GGᵀ R⁻ᵀ ⪰ 0, Φ(s, s) = I
  (F̂ − F̂|_{λ=0} = ½λ² GGᵀΣ⁻¹ and R solves the λ = 0 flow), integrated backwards from s to t by 4th-order
  Magnus steps; then P = R_t (I − ΦΦᵀ) R_tᵀ ⪰ 0. At λ = 1 Ψ̂ = Σ_t Ψ(s,t)ᵀ Σ_s⁻¹ (the forward process's
  posterior: DDPM's ancestral step on VP).

  *Order 0* freezes x̂₀ = x̂₀(s) = Ψ(0, s)(u_s − K_s ε): u_t = Ψ(t,s) u_s + (Ψ̂(t,s) − Ψ(t,s)) K_s ε + P^½ n.

  *Order r* (the official code's ``LambdaSDE.get_poly_eps_coef``) puts the Lagrange extrapolation through
  t_i, …, t_{i-r} inside the same integral. Its weights, in a form that inverts no small Σ (Ψ̂(t,τ) Σ_τ⁻¹ =
  R_t Φ(t,τ) R_τ⁻¹ R_τ⁻ᵀ, and d/dτ[Φ(t,τ) R_τ⁻¹ Ψ(τ,s)] = −Φ ½(1+λ²) H R_τ⁻¹ Ψ(τ,s) gives their sum in closed form),

      D_ij = R_{t_{i+1}} ∫_{t_i}^{t_{i+1}} Φ(t_{i+1},τ) ½(1+λ²) H_τ R_τ⁻¹ Ψ(τ, t_i) ℓ_j(τ) dτ,   Σ_j D_ij = Ψ̂ − Ψ

  (Gauss–Legendre on panels geometric in τ; D_i0 is set from the closed-form sum, so the weights of a constant
  are exact). The official sampler multiplies D_ij K_{t_i} with the *raw* past ε_{i-j} (``history="eps"``):
  u_{i+1} = Ψ u_i + Σ_j D_ij K_{t_i} ε_{i-j}, which reads ε_{i-j} as if it belonged to the current state. Along a
  stochastic path ε_{i-j} − ε_i carries the noise added since, and the extrapolation amplifies it: on Gaussian data
  the covariance blows up (20 steps, λ = 0.5, order 2: 8·10¹² × Σ_t on CLD, 10⁴ on blur; computed exactly in the
  tests). The default (``history="data"``) extrapolates what the integral holds, the data prediction: the buffer
  of a past step is h_j = u_j − K_{t_j} ε_j = Ψ(t_j, 0) x̂₀(t_j), mapped to t_i by Ψ(t_i, t_j), and the same
  weights give

      u_{i+1} = (Ψ + Σ_{j≥1} D_ij) u_i + D_i0 K_{t_i} ε_i − Σ_{j≥1} D_ij Ψ(t_i, t_{i-j}) h_{i-j} + P^½ n,

  the official step with ε_{i-j} replaced by K_{t_i}⁻¹(u_i − Ψ(t_i, 0) x̂₀(t_{i-j})), the ε the current state would
  have under the past prediction. On Gaussian data (x̂₀ constant) it is the order-0 step, so the marginals are
  kept exactly at every order.
* **Euler** (the baselines): u_{i+1} = (I + hF) u_i + h (1+λ²)/2 GGᵀ K⁻ᵀ ε_i + λ √|h| G n with h = t_{i+1} − t_i;
  λ = 0 is probability-flow Euler, λ = 1 Euler–Maruyama on the reverse SDE (the official baseline's
  ``(1+λ)/2`` factor, which keeps the marginals only for λ ∈ {0, 1}, is deliberately not copied).

``VP`` (the isotropic special case, n = 1) is defined here: it ties gDDIM to DDIM and DDPM in the tests.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

PARAMETERIZATIONS = ("R", "L")
SOLVERS = ("gddim", "euler")
HISTORIES = ("data", "eps")
SPACINGS = ("quadratic", "uniform")
MAX_ORDER = 2

_GL_QUAD = np.polynomial.legendre.leggauss(12)   # per panel of the C_ij quadrature
_GL_ANGLE = np.polynomial.legendre.leggauss(20)  # per panel of CLD's rotation-angle integral
_MAGNUS_C = (0.5 - math.sqrt(3) / 6, 0.5 + math.sqrt(3) / 6)


# ------------------------------------------------------------------------------------------------
# small-matrix algebra on [..., n, n] arrays, n ∈ {1, 2}
# ------------------------------------------------------------------------------------------------
def inv_small(a: np.ndarray) -> np.ndarray:
    if a.shape[-1] == 1:
        return 1.0 / a
    det = a[..., 0, 0] * a[..., 1, 1] - a[..., 0, 1] * a[..., 1, 0]
    out = np.empty_like(a)
    out[..., 0, 0], out[..., 1, 1] = a[..., 1, 1] / det, a[..., 0, 0] / det
    out[..., 0, 1], out[..., 1, 0] = -a[..., 0, 1] / det, -a[..., 1, 0] / det
    return out


def expm_small(a: np.ndarray) -> np.ndarray:
    """exp(A): for 2×2, A = μI + B with B traceless, B² = δI, exp(A) = e^μ (cosh√δ I + sinh√δ/√δ B)."""
    if a.shape[-1] == 1:
        return np.exp(a)
    mu = 0.5 * (a[..., 0, 0] + a[..., 1, 1])
    b = a - mu[..., None, None] * np.eye(2)
    delta = b[..., 0, 0] ** 2 + b[..., 0, 1] * b[..., 1, 0]
    q = np.sqrt(np.abs(delta))
    small = q < 1e-4
    qs = np.where(small, 1.0, q)
    ch = np.where(delta >= 0, np.cosh(q), np.cos(q))
    sh = np.where(delta >= 0, np.sinh(qs) / qs, np.sin(qs) / qs)
    sh = np.where(small, 1.0 + delta / 6.0 + delta**2 / 120.0, sh)  # series of sinh(q)/q in δ = ±q²
    ch = np.where(small, 1.0 + delta / 2.0 + delta**2 / 24.0, ch)
    return np.exp(mu)[..., None, None] * (ch[..., None, None] * np.eye(2) + sh[..., None, None] * b)


def cholesky_small(p: np.ndarray) -> np.ndarray:
    """Lower Cholesky factor of symmetric PSD [..., n, n] (negative rounding clamped to 0; a zero pivot gives 0)."""
    if p.shape[-1] == 1:
        return np.sqrt(np.maximum(p, 0.0))
    l00 = np.sqrt(np.maximum(p[..., 0, 0], 0.0))
    l10 = np.where(l00 > 0, p[..., 1, 0] / np.where(l00 > 0, l00, 1.0), 0.0)
    l11 = np.sqrt(np.maximum(p[..., 1, 1] - l10**2, 0.0))
    out = np.zeros_like(p)
    out[..., 0, 0], out[..., 1, 0], out[..., 1, 1] = l00, l10, l11
    return out


def _t(a: np.ndarray) -> np.ndarray:
    return np.swapaxes(a, -1, -2)


def as_times(t) -> np.ndarray:
    """Times (float, array or tensor) as a float64 numpy array for the processes' vectorised methods."""
    if isinstance(t, torch.Tensor):
        return t.detach().cpu().double().numpy()
    return np.asarray(t, dtype=np.float64)


# ------------------------------------------------------------------------------------------------
# processes
# ------------------------------------------------------------------------------------------------
class LinearProcess:
    """Base of CLD, BlurProcess and VP: numpy methods ``_F, _GG, _psi, _sigma, _L, _R`` over times of any
    shape, returning [..., C, n, n] float64; subclasses set ``n`` and ``classes`` and implement all but
    ``_L``/``_R`` (defaults: Cholesky; R = L for n = 1, where R Rᵀ = Σ with R > 0 is unique)."""

    n: int = 1
    classes: int = 1

    def _L(self, t):
        return cholesky_small(self._sigma(t))

    def _R(self, t):
        if self.n != 1:
            raise NotImplementedError("a process with 2×2 blocks must supply R_t")
        return self._L(t)

    def _K(self, t, parameterization):
        return self._R(t) if parameterization == "R" else self._L(t)

    def key(self) -> tuple:
        """Hashable identity of the process (its class and parameters): the coefficient cache's key."""
        raise NotImplementedError

    def __eq__(self, other):
        return isinstance(other, LinearProcess) and self.key() == other.key()

    def __hash__(self):
        return hash(self.key())

    def __repr__(self):
        return f"{type(self).__name__}{self.key()[1:]}"


class VP(LinearProcess):
    """Variance-preserving diffusion (Song et al. 2021), the isotropic special case of gDDIM:
    log ᾱ(t) = −β_min t − ½(β_max − β_min) t², F = −½β(t), GGᵀ = β(t), Ψ(t, s) = √(ᾱ_t/ᾱ_s), Σ_t = 1 − ᾱ_t
    (Σ_0 = 0), R = L = √(1 − ᾱ_t). gDDIM's order-0 step is DDIM (η = 0) and its λ = 1 step DDPM's ancestral step.
    """

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0):
        if not 0 <= beta_min <= beta_max:
            raise ValueError(f"need 0 <= beta_min <= beta_max, got beta_min={beta_min}, beta_max={beta_max}")
        self.beta_min, self.beta_max = float(beta_min), float(beta_max)

    def key(self):
        return ("VP", self.beta_min, self.beta_max)

    def log_alpha_bar(self, t):
        t = np.asarray(t, dtype=np.float64)
        return -self.beta_min * t - 0.5 * (self.beta_max - self.beta_min) * t * t

    def _beta(self, t):
        return self.beta_min + (self.beta_max - self.beta_min) * np.asarray(t, dtype=np.float64)

    def _F(self, t):
        return (-0.5 * self._beta(t))[..., None, None, None]

    def _GG(self, t):
        return self._beta(t)[..., None, None, None]

    def _psi(self, t, s):
        return np.exp(0.5 * (self.log_alpha_bar(t) - self.log_alpha_bar(s)))[..., None, None, None]

    def _sigma(self, t):
        return (-np.expm1(self.log_alpha_bar(t)))[..., None, None, None]


# ------------------------------------------------------------------------------------------------
# grids, quadrature, Magnus
# ------------------------------------------------------------------------------------------------
def time_grid(num_steps: int, t_max: float, t_min: float, spacing: str = "quadratic") -> np.ndarray:
    """The reverse grid t_0 = t_max > … > t_N = t_min: ``"quadratic"`` (the official code's
    (linspace(√t_max, √t_min, N+1))²) or ``"uniform"``."""
    if isinstance(num_steps, bool) or int(num_steps) != num_steps or num_steps < 1:
        raise ValueError(f"num_inference_steps must be a positive int, got {num_steps!r}")
    if not 0 < t_min < t_max:
        raise ValueError(f"need 0 < t_min < t_max, got t_min={t_min}, t_max={t_max}")
    if spacing == "quadratic":
        grid = np.linspace(math.sqrt(t_max), math.sqrt(t_min), int(num_steps) + 1) ** 2
    elif spacing == "uniform":
        grid = np.linspace(t_max, t_min, int(num_steps) + 1)
    else:
        raise ValueError(f"timestep_spacing must be one of {SPACINGS}, got {spacing!r}")
    grid[0], grid[-1] = t_max, t_min
    return grid


def _panel_count(ratio: float, per_efold: int, minimum: int) -> int:
    return minimum + int(math.ceil(per_efold * abs(math.log(ratio))))


def log_panels_gl(a: float, b: float, rule, per_efold: int = 16, minimum: int = 4):
    """Nodes and weights of Gauss–Legendre on panels geometric in τ between a and b (0 < a, b):
    ∫_a^b f dτ ≈ Σ w f(τ) (signed: b < a integrates backwards)."""
    x, w = rule
    m = _panel_count(b / a, per_efold, minimum)
    edges = np.log(a) + (np.log(b) - np.log(a)) * np.arange(m + 1) / m
    lo, hi = edges[:-1, None], edges[1:, None]
    u = 0.5 * (hi + lo) + 0.5 * (hi - lo) * x[None, :]
    tau = np.exp(u)
    return tau.ravel(), (0.5 * (hi - lo) * w[None, :] * tau).ravel()


def lagrange_basis(nodes: np.ndarray, tau: np.ndarray) -> np.ndarray:
    """ℓ_j(τ) = Π_{k≠j} (τ − t_k)/(t_j − t_k): [len(nodes), *tau.shape]."""
    out = []
    for j, tj in enumerate(nodes):
        lj = np.ones_like(tau)
        for k, tk in enumerate(nodes):
            if k != j:
                lj = lj * (tau - tk) / (tj - tk)
        out.append(lj)
    return np.stack(out)


def exponential_weights(process: LinearProcess, t_to: float, t_from: float, nodes, parameterization: str):
    """C_j = ∫_{t_from}^{t_to} Ψ(t_to, τ) ½ G_τG_τᵀ K_τ⁻ᵀ ℓ_j(τ) dτ for the Lagrange basis through ``nodes``:
    [len(nodes), C, n, n]."""
    tau, w = log_panels_gl(t_from, t_to, _GL_QUAD)
    integrand = process._psi(np.full_like(tau, t_to), tau) @ (0.5 * process._GG(tau)) @ _t(
        inv_small(process._K(tau, parameterization)))                       # [q, C, n, n]
    ell = lagrange_basis(np.asarray(nodes, dtype=np.float64), tau)          # [r+1, q]
    return np.einsum("jq,q,qcab->jcab", ell, w, integrand)


def phi_lambda(process: LinearProcess, t: np.ndarray, s: np.ndarray, lam: float, per_efold: int = 64,
               per_unit: int = 1000, minimum: int = 16) -> np.ndarray:
    """Φ(t, s) with ∂_τ Φ = ½λ² H_τ Φ, H = R⁻¹ GGᵀ R⁻ᵀ, Φ(s, s) = I, for t < s elementwise: [S, C, n, n].

    4th-order Magnus steps (two Gauss nodes, one commutator, exact 2×2 exponential) on panels geometric in τ,
    the same count m for every step, m = minimum + per_efold·max ln(s/t) + per_unit·max(s − t) (H varies on the
    scale of τ near 0 and on the scale of the process at large τ), integrated from s down to t. For CLD's
    5-step grid this reproduces the λ = 1 closed form to ~1e-10."""
    t, s = np.asarray(t, dtype=np.float64), np.asarray(s, dtype=np.float64)
    eye = np.broadcast_to(np.eye(process.n), (len(t), process.classes, process.n, process.n))
    if lam == 0:
        return eye.copy()
    m = _panel_count(float(np.max(s / t)), per_efold, minimum) + int(math.ceil(per_unit * float(np.max(s - t))))
    lu = np.log(s)[:, None] + (np.log(t) - np.log(s))[:, None] * np.arange(m + 1)[None, :] / m  # [S, m+1]
    phi = eye.copy()

    def a_at(u):
        tau = np.exp(u)
        ri = inv_small(process._R(tau))
        return (0.5 * lam * lam) * (ri @ process._GG(tau) @ _t(ri)) * tau[:, None, None, None]  # dτ = τ du

    for k in range(m):
        h = (lu[:, k + 1] - lu[:, k])[:, None, None, None]
        a1 = a_at(lu[:, k] + _MAGNUS_C[0] * (lu[:, k + 1] - lu[:, k]))
        a2 = a_at(lu[:, k] + _MAGNUS_C[1] * (lu[:, k + 1] - lu[:, k]))
        omega = 0.5 * h * (a1 + a2) + (math.sqrt(3) / 12) * h * h * (a2 @ a1 - a1 @ a2)
        phi = expm_small(omega) @ phi
    return phi


# ------------------------------------------------------------------------------------------------
# the per-step coefficients
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class StepCoefficients:
    """u_{i+1} = psi[i] u_i + eps[i, 0] ε_i + Σ_{j≥1} eps[i, j] h_{i-j} + chol[i] n for the steps i of ``grid``
    (float64 numpy), with the buffer h_k of a past step k: ε_k, or, when ``history`` is set (stochastic multistep
    with ``history="data"``), h_k = u_k − history[k] ε_k (history[k] = K_{t_k}: h_k = Ψ(t_k, 0) x̂₀(t_k)).

    psi [S, C, n, n]; eps [S, MAX_ORDER+1, C, n, n] (zero beyond ``orders[i]``); chol [S, C, n, n] lower
    triangular (zero for deterministic steps); orders [S]: the number of past buffers each step uses;
    history [S, C, n, n] or None."""

    grid: np.ndarray
    psi: np.ndarray
    eps: np.ndarray
    chol: np.ndarray
    orders: np.ndarray
    history: np.ndarray | None = None

    @property
    def num_steps(self) -> int:
        return len(self.grid) - 1


def check_solver(order: int, lam: float, parameterization: str, solver: str, history: str = "data") -> None:
    """Validates a solver choice; each error names its argument."""
    if history not in HISTORIES:
        raise ValueError(f"history must be one of {HISTORIES}, got {history!r}")
    if parameterization not in PARAMETERIZATIONS:
        raise ValueError(f"parameterization must be one of {PARAMETERIZATIONS}, got {parameterization!r}")
    if solver not in SOLVERS:
        raise ValueError(f"solver must be one of {SOLVERS}, got {solver!r}")
    if isinstance(order, bool) or int(order) != order or not 0 <= order <= MAX_ORDER:
        raise ValueError(f"order must be 0, 1 or 2, got {order!r}")
    if not (math.isfinite(lam) and lam >= 0):
        raise ValueError(f"lam must be finite and >= 0, got {lam}")
    if solver == "euler" and order > 0:
        raise ValueError(f"solver='euler' is a one-step method: order must be 0, got {order}")


def gddim_coefficients(process: LinearProcess, grid, order: int = 0, lam: float = 0.0,
                       parameterization: str = "R", solver: str = "gddim", history: str = "data") -> StepCoefficients:
    """The step coefficients of ``solver`` on ``grid`` (descending times), cached per (process, grid, options).
    ``history`` ("data" or "eps", see the module docstring) matters only for stochastic multistep (λ > 0, r > 0)."""
    check_solver(order, float(lam), parameterization, solver, history)
    grid = tuple(float(v) for v in np.asarray(grid, dtype=np.float64).reshape(-1))
    if len(grid) < 2 or any(not (a > b > 0) for a, b in zip(grid, grid[1:])):
        raise ValueError("grid must hold at least two strictly decreasing positive times")
    if not (solver == "gddim" and lam > 0 and order > 0):
        history = "eps"  # every other solver extrapolates ε itself (or nothing): one cache entry
    return _coefficients(process, grid, int(order), float(lam), parameterization, solver, history)


@lru_cache(maxsize=64)
def _coefficients(process, grid, order, lam, parameterization, solver, history) -> StepCoefficients:
    c = _compute(process, grid, order, lam, parameterization, solver, history)
    for a in (c.grid, c.psi, c.eps, c.chol, c.orders) + (() if c.history is None else (c.history,)):
        a.setflags(write=False)  # shared through the cache
    return c


def stochastic_weights(process: LinearProcess, t_to: float, t_from: float, nodes, lam: float,
                       total: np.ndarray) -> np.ndarray:
    """D_j = R_{t_to} ∫_{t_from}^{t_to} Φ(t_to, τ) ½(1+λ²) H_τ R_τ⁻¹ Ψ(τ, t_from) ℓ_j(τ) dτ for the Lagrange basis
    through ``nodes`` (nodes[0] = t_from), with D_0 set so that Σ_j D_j = ``total`` (= Ψ̂ − Ψ of the step, [C, n, n])
    exactly: [len(nodes), C, n, n]. The weights of the stochastic extrapolation (module docstring).

    Φ(t_to, τ) at the quadrature nodes τ_1 < … < τ_q comes from one march up from τ_0 = t_to, Φ(t_to, τ_k) =
    Φ(t_to, τ_{k-1}) Φ(τ_{k-1}, τ_k), the short factors by :func:`phi_lambda` (vectorised over k)."""
    tau, w = log_panels_gl(t_from, t_to, _GL_QUAD)
    order = np.argsort(tau)
    tau, w = tau[order], w[order]
    factors = phi_lambda(process, np.concatenate([[t_to], tau[:-1]]), tau, lam)   # Φ(τ_{k-1}, τ_k)
    phi = np.empty_like(factors)
    acc = np.broadcast_to(np.eye(process.n), factors.shape[1:])
    for k in range(len(tau)):
        acc = acc @ factors[k]
        phi[k] = acc
    r_inv = inv_small(process._R(tau))
    h = r_inv @ process._GG(tau) @ _t(r_inv)
    integrand = phi @ ((0.5 * (1 + lam * lam)) * h) @ r_inv @ process._psi(tau, np.full_like(tau, t_from))
    ell = lagrange_basis(np.asarray(nodes, dtype=np.float64), tau)
    d = process._R(np.array([t_to]))[0] @ np.einsum("jq,q,qcab->jcab", ell, w, integrand)
    d[0] = total - d[1:].sum(0)
    return d


def _compute(process, grid, order, lam, parameterization, solver, history) -> StepCoefficients:
    g = np.asarray(grid)
    S, C, n = len(g) - 1, process.classes, process.n
    t_from, t_to = g[:-1], g[1:]
    eps = np.zeros((S, MAX_ORDER + 1, C, n, n))
    chol = np.zeros((S, C, n, n))
    orders = np.zeros(S, dtype=np.int64)
    if solver == "euler":
        h = (t_to - t_from)[:, None, None, None]
        psi = np.eye(n) + h * process._F(t_from)
        gg = process._GG(t_from)
        eps[:, 0] = h * 0.5 * (1 + lam * lam) * gg @ _t(inv_small(process._K(t_from, parameterization)))
        chol = cholesky_small(lam * lam * np.abs(h) * gg)
        return StepCoefficients(g, psi, eps, chol, orders)

    psi = process._psi(t_to, t_from)
    if lam > 0:
        phi = phi_lambda(process, t_to, t_from, lam)
        r_to = process._R(t_to)
        k_from = process._K(t_from, parameterization)
        psi_hat = r_to @ phi @ inv_small(process._R(t_from))
        eps[:, 0] = (psi_hat - psi) @ k_from
        p = r_to @ (np.eye(n) - phi @ _t(phi)) @ _t(r_to)
        chol = cholesky_small(0.5 * (p + _t(p)))
        total, psi = psi_hat - psi, psi.copy()                   # Σ_j D_ij = Ψ̂ − Ψ per step
        for i in range(1, S):
            r = min(order, i)
            if r == 0:
                continue
            orders[i] = r
            d = stochastic_weights(process, t_to[i], t_from[i], g[i - r: i + 1][::-1], lam, total[i])
            eps[i, 0] = d[0] @ k_from[i]
            if history == "eps":                 # the official sampler: D_ij K_{t_i} on the raw ε_{i-j}
                eps[i, 1:r + 1] = d[1:] @ k_from[i]
            else:                                # on h_{i-j} = Ψ(t_{i-j}, 0) x̂₀, mapped to t_i
                psi[i] = psi[i] + d[1:].sum(0)
                eps[i, 1:r + 1] = -d[1:] @ process._psi(np.full(r, t_from[i]), g[i - r: i][::-1])
        return StepCoefficients(g, psi, eps, chol, orders, k_from if history == "data" else None)

    for i in range(S):
        r = min(order, i)
        orders[i] = r
        if r == 0 and parameterization == "R":
            eps[i, 0] = process._R(t_to[i:i + 1])[0] - psi[i] @ process._R(t_from[i:i + 1])[0]
        else:
            eps[i, : r + 1] = exponential_weights(process, t_to[i], t_from[i], g[i - r: i + 1][::-1],
                                                  parameterization)
    return StepCoefficients(g, psi, eps, chol, orders)
