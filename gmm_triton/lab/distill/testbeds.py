"""The distillation testbeds: Gaussian mixtures whose truth is known, their exact denoiser at per-sample noise
levels, the noise schedules, and the metrics of the distillation tables.

Data p0 = Σ_k π_k N(μ_k, c_k² I) (isotropic components), noised as x_t = a x0 + s ε. For a batch whose samples
sit at different noise levels (a_b, s_b) — what training draws — the posterior of section 0.1 of the seeds note
is evaluated for all samples at once: with v_bk = a_b² c_k² + s_b², centred x (x − a m) and μ (μ − m),

    logit_bk = log π_k − ½ (‖x_b‖² − 2 a_b x_b·μ_k + a_b² ‖μ_k‖²) / v_bk − (D/2) log(2π v_bk),   w = softmax_k
    x̂0_b = m + s_b² Σ_k w_bk μ_k / v_bk + a_b x_b Σ_k w_bk c_k² / v_bk
    ε̂_b  = s_b (x_b Σ_k w_bk / v_bk − a_b Σ_k w_bk μ_k / v_bk)             (= −s_b ∇ log p_t(x_b))

(``oracle.MixtureDenoiser`` computes the same with one (a, s) per group of equal integer timesteps; the tests
check the two against each other). Three [B, D] × [D, K] products and [B, K] elementwise work per call.

Testbeds: ``digits`` (the package's embedded 16×16 digits mixture, D = 256, 1797 components, 10 classes), and two
imbalanced low-dimensional ones for EM distillation, ``2d4`` (4 modes on a circle of radius 2.5, std 0.25,
π = .6/.25/.1/.05) and ``8d8`` (8 modes with means 2·N(0, I) drawn from a fixed seed, std 0.3,
π = .4/.2/.12/.1/.08/.05/.03/.02).
"""
from __future__ import annotations

import math

import torch

from ..metrics import chi2_quantile, frechet_distance, mode_metrics, nll
from ..oracle import GaussianMixture, digits_mixture

DATASETS = ("2d4", "8d8")


def two_d_four() -> GaussianMixture:
    angles = torch.arange(4, dtype=torch.float64) * (math.pi / 2)
    means = 2.5 * torch.stack([angles.cos(), angles.sin()], dim=1)
    return GaussianMixture(means.float(), torch.full((4,), 0.25), torch.tensor([0.6, 0.25, 0.1, 0.05]))


def eight_d_eight() -> GaussianMixture:
    g = torch.Generator().manual_seed(8)
    means = 2.0 * torch.randn(8, 8, generator=g, dtype=torch.float64)
    weights = torch.tensor([0.4, 0.2, 0.12, 0.1, 0.08, 0.05, 0.03, 0.02])
    return GaussianMixture(means.float(), torch.full((8,), 0.3), weights)


def dataset(name: str) -> GaussianMixture:
    """A testbed by name: "2d4", "8d8" or "digits"."""
    if name == "2d4":
        return two_d_four()
    if name == "8d8":
        return eight_d_eight()
    if name == "digits":
        return digits_mixture(16, std=0.1)
    raise ValueError(f"dataset must be one of {DATASETS + ('digits',)}, got {name!r}")


class ExactDenoiser:
    """x̂0 and ε̂ of an isotropic :class:`GaussianMixture` at per-sample noise levels (a [B], s [B]), float32."""

    def __init__(self, data: GaussianMixture):
        if not data.isotropic:
            raise ValueError("ExactDenoiser needs isotropic components (stds of shape [K])")
        self.mean = data.mean().float()
        self.means = (data.means.double() - data.mean()).float()               # centred μ_k [K, D]
        self.means_sq = (self.means.double() ** 2).sum(1).float()              # ‖μ_k‖² [K]
        self.var = data.variances.reshape(-1).float()                           # c_k² [K]
        self.log_weights = data.weights.double().log().float()
        self.dim = data.dim

    def __call__(self, x: torch.Tensor, a: torch.Tensor, s: torch.Tensor):
        """(x̂0, ε̂), each [B, D], for x [B, D] and a, s of shape [B] (or scalars)."""
        return mixture_posterior(x, a, s, self.mean, self.means, self.var, self.log_weights, self.means_sq)


def mixture_posterior(x, a, s, mean, means, var, log_weights, means_sq=None):
    """(x̂0, ε̂) [B, D] of the isotropic mixture (data mean ``mean`` [D], centred means ``means`` [K, D], variances
    ``var`` [K], log-weights ``log_weights`` [K], ``means_sq`` = ‖means‖² [K] or None to compute it) at per-sample
    (a [B], s [B]) (the module docstring's formulas). Differentiable in every mixture argument: the instant moment
    matching variant (``mm.py``) takes the oracle's gradient with respect to its parameters."""
    a = torch.as_tensor(a, dtype=x.dtype).reshape(-1, 1).expand(x.shape[0], 1)
    s = torch.as_tensor(s, dtype=x.dtype).reshape(-1, 1).expand(x.shape[0], 1)
    if means_sq is None:
        means_sq = (means * means).sum(1)
    xc = x - a * mean
    v = a * a * var + s * s                                                      # [B, K]
    sq = (xc * xc).sum(1, keepdim=True) - 2 * a * (xc @ means.T) + a * a * means_sq
    logits = log_weights - 0.5 * (sq.clamp_min(0) / v + x.shape[1] * torch.log(2 * math.pi * v))
    w_iv = torch.softmax(logits, dim=1) / v                                      # w_bk / v_bk
    w_mu = w_iv @ means                                                          # Σ_k w μ_k / v
    x0 = mean + s * s * w_mu + a * xc * (w_iv @ var)[:, None]
    eps = s * (xc * w_iv.sum(1, keepdim=True) - a * w_mu)
    return x0, eps


# -- metrics -----------------------------------------------------------------------------------------------
def digits_metrics(samples: torch.Tensor, data: GaussianMixture) -> dict:
    """fd (Fréchet distance to the exact moments), mode_tv (class-weight TV), coverage, precision, nll."""
    mm = mode_metrics(samples, data)
    return {"fd": frechet_distance(samples, data.mean(), data.covariance()), "mode_tv": mm["tv"],
            "coverage": mm["coverage"], "precision": mm["precision"], "nll": nll(samples, data)}


def mode_report(samples: torch.Tensor, data: GaussianMixture, quantile: float = 0.99) -> dict:
    """Mode-level metrics of a low-dimensional testbed (one mode per component).

    Each sample belongs to its most likely component under p0; f_m is the share of samples that belong to m.
    mode_tv = ½ Σ_m |f_m − π_m|; mode m is covered when f_m ≥ π_m / 2 (with n = 5000 and π_m ≥ 0.02, exact samples
    fail this with probability < 1e-8 per mode); recall_m = min(1, q_m / (quantile · π_m)), q_m the share of
    samples that belong to m *and* lie inside its ``quantile`` chi-square ball (≈ 1 for exact samples; it also
    drops when the generator's mode is blurred); precision: the share of samples inside the ball of their component.
    """
    x = samples.reshape(samples.shape[0], -1).double()
    comp = data.assign(x)
    maha = ((x - data.means.double()[comp]) ** 2 / data.variances.double()[comp]).sum(1)
    inside = maha <= chi2_quantile(quantile, x.shape[1])
    K, pi = data.num_components, data.weights.double()
    q = torch.bincount(comp[inside], minlength=K).double() / x.shape[0]
    f = torch.bincount(comp, minlength=K).double() / x.shape[0]
    recall = (q / (quantile * pi)).clamp_max(1.0)
    return {"mode_tv": float(0.5 * (f - pi).abs().sum()), "modes_covered": int((f >= pi / 2).sum()),
            "precision": float(inside.double().mean()), "recall": [round(float(r), 4) for r in recall],
            "weights": [round(float(v), 4) for v in f]}
