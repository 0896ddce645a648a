"""Exact Gaussian-mixture data and its closed-form denoiser: an "oracle" model for testing samplers.

Data: p0(x) = Σ_k π_k N(x; μ_k, C_k) in D dimensions, C_k = diag(c_k²) (isotropic: one c_k per component).
Forward process x_t = a x0 + s ε, ε ~ N(0, I):

    VP:   a = √ᾱ[t], s = √(1 − ᾱ[t])        (ᾱ = a diffusers scheduler's alphas_cumprod, t an integer index)
    flow: a = 1 − t, s = t                    (x_t = (1 − t) x0 + t x1, x1 = ε, t = timestep / num_train_timesteps)

Then p_t(x) = Σ_k π_k N(x; a μ_k, V_k) with V_k = a² C_k + s² I (diagonal, entries v_kd), and with the
responsibilities w_k(x) = softmax_k[log π_k − ½ Σ_d (x_d − a μ_kd)² / v_kd − ½ Σ_d log(2π v_kd)]:

    x̂0 = E[x0 | x_t = x] = Σ_k w_k [μ_k + a C_k V_k⁻¹ (x − a μ_k)] = Σ_k w_k [s² V_k⁻¹ μ_k + a C_k V_k⁻¹ x]
    ε̂  = E[ε | x_t = x]  = (x − a x̂0) / s              = s Σ_k w_k V_k⁻¹ (x − a μ_k)   (= −s ∇ log p_t(x))
    v̂  = a ε̂ − s x̂0   (v-prediction)        û = ε̂ − x̂0 = E[x1 − x0 | x_t]   (flow velocity)

The right-hand forms divide by nothing that vanishes, so every prediction is finite for all t as long as every
c_kd > 0: at s = 0 (flow t = 0) ε̂ = 0, x̂0 = x and û = −x; at a = 0 (zero SNR) every V_k = s² I, so w = π and x̂0
is the data mean. Consistency a x̂0 + s ε̂ = x holds exactly (Σ_k w_k (a² C_k + s²) V_k⁻¹ = 1).

Cost: the squared distances expand into matmuls, Σ_d x_d²/v_kd − 2a Σ_d x_d μ_kd/v_kd + a² Σ_d μ_kd²/v_kd, and the
moments need only w @ (μ/V), w @ (C/V) and w @ (1/V): [B, D]×[D, K] and [B, K]×[K, D] products, never a [B, K, D]
tensor. The batch is processed in chunks, grouped by timestep so that a and s are scalars within a group. To limit
float32 cancellation in the expansion, x and μ are first centred at the data mean m (x − a m, μ − m).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from types import SimpleNamespace

import torch

from .contract import PREDICTION_TYPES

SCHEDULES = ("vp", "flow")


def _posterior(x, means, var, log_weights, a, s, moments=True):
    """Logits log π_k + log N(x; a μ_k, V_k) [b, K] and, if ``moments``, the centred x̂0 and ε̂ [b, D].

    x [b, D] and means [K, D] centred at the data mean (x − a m, μ − m); var [K, 1] (isotropic) or [K, D];
    log_weights [K]; a, s scalars (floats or 0-d tensors).
    """
    v = a * a * var + s * s                                      # [K, 1] or [K, D]
    iv = v.reciprocal()
    mu_iv = means * iv                                           # μ_k / v_k
    x_sq = x * x if var.shape[1] > 1 else (x * x).sum(1, keepdim=True)
    sq_dist = (x_sq @ iv.T - 2 * a * (x @ mu_iv.T) + a * a * (means * mu_iv).sum(1)).clamp_min(0)
    log_det = torch.log(2 * math.pi * v).sum(1) * (x.shape[1] / var.shape[1])
    logits = log_weights - 0.5 * (sq_dist + log_det)
    if not moments:
        return logits
    w = torch.softmax(logits, dim=1)
    w_mu = w @ mu_iv                                             # Σ_k w_k μ_k / v_k
    x0 = s * s * w_mu + a * x * (w @ (var * iv))
    eps = s * (x * (w @ iv) - a * w_mu)
    return logits, x0, eps


class GaussianMixture:
    """p0 = Σ_k π_k N(μ_k, diag(c_k²)) over flattened samples of image shape ``shape``.

    means [K, D]; stds [K] (isotropic) or [K, D] (diagonal), all > 0; weights [K] (≥ 0, sum 1; default uniform);
    labels [K] (groups components into modes; default: one mode per component; stored renumbered 0..M-1 in
    order of the sorted original labels); shape: one sample's shape, prod(shape) == D (default (D,)).
    """

    def __init__(self, means, stds, weights=None, labels=None, shape=None):
        means = torch.as_tensor(means)
        if means.ndim != 2 or not means.is_floating_point():
            raise ValueError(f"means must be a floating-point [K, D] tensor, got {means.dtype} {tuple(means.shape)}")
        K, D = means.shape
        stds = torch.as_tensor(stds, dtype=means.dtype, device=means.device)
        if tuple(stds.shape) not in ((K,), (K, D)):
            raise ValueError(f"stds must have shape [{K}] or [{K}, {D}], got {tuple(stds.shape)}")
        if not bool((stds > 0).all()):
            raise ValueError("stds must be strictly positive (the denoiser divides by a² c² + s², zero at s = 0)")
        if weights is None:
            weights = torch.full((K,), 1.0 / K, dtype=means.dtype, device=means.device)
        weights = torch.as_tensor(weights, dtype=means.dtype, device=means.device)
        if tuple(weights.shape) != (K,):
            raise ValueError(f"weights must have shape [{K}], got {tuple(weights.shape)}")
        if bool((weights < 0).any()) or abs(float(weights.double().sum()) - 1.0) > 1e-5:
            raise ValueError(f"weights must be non-negative and sum to 1, got sum {float(weights.double().sum())}")
        labels = torch.as_tensor(torch.arange(K) if labels is None else labels, device=means.device)
        if tuple(labels.shape) != (K,) or labels.is_floating_point():
            raise ValueError(f"labels must be an integer [{K}] tensor, got {labels.dtype} {tuple(labels.shape)}")
        shape = (D,) if shape is None else tuple(int(n) for n in shape)
        if math.prod(shape) != D:
            raise ValueError(f"shape {shape} has {math.prod(shape)} elements, but the means have D = {D}")
        self.means, self.stds, self.shape = means, stds, shape
        self.weights = weights / weights.sum()
        self.labels = torch.unique(labels, return_inverse=True)[1]

    @classmethod
    def random(cls, num_components, shape, std=0.2, *, diagonal=False, num_modes=None, uniform_weights=False,
               seed=0, dtype=torch.float32, device=None):
        """A random test mixture: means N(0, I) (typical distance √(2D), well separated for std ≪ 1),
        stds std·U(0.5, 1.5) per component (or per component and dimension if ``diagonal``), weights
        ∝ U(0.5, 1.5) unless ``uniform_weights``, labels k mod ``num_modes`` if given. Drawn on the CPU from
        ``seed``, so the same seed gives the same mixture on every device."""
        g = torch.Generator().manual_seed(seed)
        shape = (shape,) if isinstance(shape, int) else tuple(shape)
        K, D = num_components, math.prod(shape)
        means = torch.randn(K, D, generator=g, dtype=torch.float64)
        stds = std * (0.5 + torch.rand((K, D) if diagonal else (K,), generator=g, dtype=torch.float64))
        weights = 0.5 + torch.rand(K, generator=g, dtype=torch.float64)
        if uniform_weights:
            weights = torch.ones_like(weights)
        labels = None if num_modes is None else torch.arange(K) % num_modes
        return cls(means.to(device, dtype), stds.to(device, dtype), (weights / weights.sum()).to(device, dtype),
                   labels, shape)

    # -- structure ---------------------------------------------------------------------------------------------
    @property
    def num_components(self):
        return self.means.shape[0]

    @property
    def dim(self):
        return self.means.shape[1]

    @property
    def num_modes(self):
        return int(self.labels.max()) + 1

    @property
    def isotropic(self):
        return self.stds.ndim == 1

    @property
    def variances(self):
        """c² as [K, 1] (isotropic) or [K, D]."""
        return self.stds.reshape(self.num_components, -1) ** 2

    def mode_weights(self):
        """[num_modes] float64: Σ_{k in mode} π_k."""
        w = self.weights.double()
        return torch.zeros(self.num_modes, dtype=w.dtype, device=w.device).index_add_(0, self.labels, w)

    def to(self, device=None, dtype=None):
        return GaussianMixture(self.means.to(device, dtype), self.stds.to(device, dtype),
                               self.weights.to(device, dtype), self.labels.to(device), self.shape)

    # -- moments and sampling ----------------------------------------------------------------------------------
    def mean(self):
        """[D] float64: m = Σ_k π_k μ_k."""
        return self.weights.double() @ self.means.double()

    def covariance(self):
        """[D, D] float64: Σ_k π_k (C_k + μ_k μ_kᵀ) − m mᵀ, computed from the centred means."""
        w = self.weights.double()
        centred = self.means.double() - self.mean()
        cov = (centred.T * w) @ centred
        cov.diagonal().add_(w @ self.variances.double())
        return cov

    def sample(self, n, generator=None, return_components=False):
        """n exact samples [n, *shape] (and their component ids [n] if ``return_components``).
        ``generator`` must live on the mixture's device."""
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = torch.randn(n, self.dim, generator=generator, device=self.means.device, dtype=self.means.dtype)
        x = (self.means[k] + self.stds.reshape(self.num_components, -1)[k] * z).reshape(n, *self.shape)
        return (x, k) if return_components else x

    # -- densities (float64) -----------------------------------------------------------------------------------
    def _logits(self, x, a, s, chunk_size):
        """[n, K] float64: log π_k + log N(x; a μ_k, a² C_k + s² I)."""
        x = x.reshape(x.shape[0], -1).to(self.means.device, torch.float64)
        if x.shape[1] != self.dim:
            raise ValueError(f"samples have {x.shape[1]} elements each, the mixture has D = {self.dim}")
        m = self.mean()
        means, var, log_w = self.means.double() - m, self.variances.double(), self.weights.double().log()
        return torch.cat([_posterior(c - a * m, means, var, log_w, a, s, moments=False) for c in x.split(chunk_size)])

    def log_prob(self, x, a=1.0, s=0.0, chunk_size=1024):
        """[n] float64: exact log p_t(x) of the noised marginal (log p0 with the defaults a = 1, s = 0)."""
        return torch.logsumexp(self._logits(x, a, s, chunk_size), dim=1)

    def component_log_posterior(self, x, a=1.0, s=0.0, chunk_size=1024):
        """[n, K] float64: log w_k(x) = log P(component k | x_t = x)."""
        return torch.log_softmax(self._logits(x, a, s, chunk_size), dim=1)

    def assign(self, x, a=1.0, s=0.0, chunk_size=1024):
        """[n] long: the most likely component of each sample (argmax_k w_k), without an [n, K] result."""
        return torch.cat([self._logits(c, a, s, chunk_size).argmax(1) for c in x.split(chunk_size)])


def digits_mixture(size=16, std=0.1, *, dtype=torch.float32, device=None):
    """The embedded default data set: scikit-learn's 1797 8×8 digits, bilinearly resized to size×size
    (align_corners=False), scaled from [0, 16] to [−1, 1], as K = 1797 equally weighted components with
    isotropic std ``std``, labelled by digit class (10 modes), shape (1, size, size)."""
    from sklearn.datasets import load_digits  # optional dependency; the data ship inside the wheel

    digits = load_digits()
    images = torch.as_tensor(digits.images, dtype=torch.float64).unsqueeze(1)
    images = torch.nn.functional.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
    means = (images / 8.0 - 1.0).reshape(len(images), -1)
    return GaussianMixture(means.to(device, dtype), torch.full((len(images),), std, dtype=dtype, device=device),
                           labels=torch.as_tensor(digits.target, device=device), shape=(1, size, size))


def default_alphas_cumprod(num_train_timesteps=1000):
    """ᾱ of diffusers' default DDPM/DDIM schedule (linear β from 1e-4 to 0.02), float64."""
    return torch.cumprod(1.0 - torch.linspace(1e-4, 0.02, num_train_timesteps, dtype=torch.float64), 0)


@dataclass
class DenoiserOutput:
    """Like diffusers' ``UNet2DOutput``."""
    sample: torch.Tensor


class MixtureDenoiser(torch.nn.Module):
    """The exact denoiser of ``data`` as a diffusers-style model: ``model(sample, timestep).sample``.

    schedule "vp": a = √ᾱ[t], s = √(1 − ᾱ[t]), ᾱ = ``alphas_cumprod`` (default: diffusers' linear schedule with
    ``num_train_timesteps`` steps); integer timesteps index it. schedule "flow": t = timestep / num_train_timesteps,
    a = 1 − t, s = t (diffusers' FlowMatchEulerDiscreteScheduler passes timestep = σ·1000).
    prediction_type: "epsilon", "sample", "v_prediction" or "flow" (û = x1 − x0); default "epsilon" for "vp" and
    "flow" for "flow". Computes in ``dtype`` (float32 or float64) on the module's device; the output takes the
    input's dtype and device. Batches are split into chunks of ``chunk_size`` samples per timestep.
    """

    def __init__(self, data, alphas_cumprod=None, prediction_type=None, schedule="vp", num_train_timesteps=1000,
                 chunk_size=1024, dtype=torch.float32):
        super().__init__()
        if schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
        prediction_type = prediction_type or ("flow" if schedule == "flow" else "epsilon")
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}")
        device = data.means.device
        m = data.mean()
        self.register_buffer("data_mean", m.to(dtype))
        self.register_buffer("means", (data.means.double() - m).to(dtype))
        self.register_buffer("var", data.variances.to(dtype))
        self.register_buffer("log_weights", data.weights.double().log().to(dtype))
        if schedule == "vp":
            ac = (default_alphas_cumprod(num_train_timesteps) if alphas_cumprod is None
                  else torch.as_tensor(alphas_cumprod).detach().double())
            if ac.ndim != 1 or ac.numel() == 0 or bool(((ac < 0) | (ac > 1)).any()):
                raise ValueError("alphas_cumprod must be a non-empty 1-D tensor with values in [0, 1]")
            num_train_timesteps = ac.numel()
            # a and s from float64 ᾱ, then rounded: s stays accurate where ᾱ is close to 1
            self.register_buffer("sqrt_alphas_cumprod", ac.sqrt().to(device, dtype))
            self.register_buffer("sqrt_one_minus_alphas_cumprod", (1 - ac).sqrt().to(device, dtype))
        self.schedule, self.prediction_type = schedule, prediction_type
        self.num_train_timesteps, self.chunk_size = num_train_timesteps, chunk_size
        self.config = SimpleNamespace(
            sample_size=data.shape[-1], in_channels=data.shape[0] if len(data.shape) == 3 else None,
            out_channels=data.shape[0] if len(data.shape) == 3 else None, num_train_timesteps=num_train_timesteps,
            prediction_type=prediction_type, schedule=schedule)

    @property
    def dtype(self):
        return self.means.dtype

    @property
    def device(self):
        return self.means.device

    def coefficients(self, timestep):
        """(a, s), each shaped like ``timestep``, in the compute dtype."""
        t = torch.as_tensor(timestep, device=self.device)
        if self.schedule == "flow":
            t = t.to(torch.float64) / self.num_train_timesteps
            if bool(((t < 0) | (t > 1)).any()):
                raise ValueError(f"flow timesteps must lie in [0, {self.num_train_timesteps}]")
            return (1 - t).to(self.dtype), t.to(self.dtype)
        if t.is_floating_point() and bool((t != t.round()).any()):
            raise ValueError("VP timesteps must be integers (indices into alphas_cumprod)")
        t = t.long()
        if bool(((t < 0) | (t >= self.num_train_timesteps)).any()):
            raise ValueError(f"VP timesteps must lie in [0, {self.num_train_timesteps - 1}]")
        return self.sqrt_alphas_cumprod[t], self.sqrt_one_minus_alphas_cumprod[t]

    def _predict(self, sample, timestep):
        """Flat x̂0, ε̂ [B, D] and a, s [B, 1] in the compute dtype, on the module's device."""
        B = sample.shape[0]
        x = sample.reshape(B, -1).to(self.device, self.dtype)
        if x.shape[1] != self.means.shape[1]:
            raise ValueError(f"sample has {x.shape[1]} elements per item, the mixture has D = {self.means.shape[1]}")
        t = torch.as_tensor(timestep, device=self.device).reshape(-1)
        if t.numel() == 1:
            t = t.expand(B)
        elif t.numel() != B:
            raise ValueError(f"timestep must be a scalar or have one entry per sample ({B}), got {t.numel()}")
        a, s = self.coefficients(t)
        x0, eps = torch.empty_like(x), torch.empty_like(x)
        for value in torch.unique(t):
            idx = (t == value).nonzero().squeeze(1)
            a_g, s_g = a[idx[0]], s[idx[0]]
            for c in idx.split(self.chunk_size):
                _, x0[c], eps[c] = _posterior(x[c] - a_g * self.data_mean, self.means, self.var, self.log_weights,
                                              a_g, s_g)
        return x0 + self.data_mean, eps, a[:, None], s[:, None]

    def posterior(self, sample, timestep):
        """(x̂0, ε̂) = (E[x0 | x_t], E[ε | x_t]), each shaped like ``sample``, in the compute dtype."""
        x0, eps, _, _ = self._predict(sample, timestep)
        return x0.reshape(sample.shape), eps.reshape(sample.shape)

    def forward(self, sample, timestep, encoder_hidden_states=None, return_dict=True, **kwargs):
        """The prediction of ``prediction_type``; other diffusers arguments are accepted and ignored."""
        x0, eps, a, s = self._predict(sample, timestep)
        if self.prediction_type == "epsilon":
            out = eps
        elif self.prediction_type == "sample":
            out = x0
        elif self.prediction_type == "v_prediction":
            out = a * eps - s * x0
        else:
            out = eps - x0
        out = out.reshape(sample.shape).to(sample.device, sample.dtype)
        return DenoiserOutput(out) if return_dict else (out,)
