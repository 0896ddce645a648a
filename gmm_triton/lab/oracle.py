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

from ..contract import PREDICTION_TYPES

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


# ------------------------------------------------------------------------------------------------------------
# gDDIM oracles: exact ε-targets of Gaussian-mixture data under CLD and BDM (float64)
# ------------------------------------------------------------------------------------------------------------
class CLDMixtureDenoiser(torch.nn.Module):
    """The exact gDDIM ε-target for critically-damped Langevin diffusion of ``data`` (a mixture in x):
    ``model(u, t)`` → ε [B, 2, *shape] with score = −K_t⁻ᵀ ε, K = R_t or L_t (``parameterization``).

    Per pair i and component k (data N(μ_k, diag(c_k²)), zero initial velocity, its variance in Σ_t):
    u_t | k ~ N(m_ki, A_ki) with m_ki = Ψ_t (μ_ki, 0)ᵀ and A_ki = Ψ_t diag(c_ki², 0) Ψ_tᵀ + Σ_t (Ψ_t = Ψ(t, 0)), so

        w_k(u) ∝ π_k Π_i N(u_i; m_ki, A_ki),   ∇_{u_i} log p_t(u) = −Σ_k w_k A_ki⁻¹ (u_i − m_ki),   ε = −K_tᵀ ∇log p_t.

    With A⁻¹ = [[p, q], [q, r]] the quadratic forms expand into ‖x‖², x·v, ‖v‖², x·μ_k, v·μ_k: [B, D]×[D, K]
    products, never a [B, K, D] tensor (samples and means centred at Ψ_t (m, 0), m the data mean). Computes in
    float64 (the inverse covariances near t = 0 are large); the output takes the input's dtype and device.
    """

    def __init__(self, data: GaussianMixture, process=None, parameterization: str = "R", chunk_size: int = 1024):
        super().__init__()
        from ..gddim.cld import CLD

        if parameterization not in ("R", "L"):
            raise ValueError(f"parameterization must be 'R' or 'L', got {parameterization!r}")
        self.process = process if process is not None else CLD()
        self.parameterization, self.chunk_size, self.shape = parameterization, chunk_size, data.shape
        m = data.mean()
        self.register_buffer("data_mean", m)
        self.register_buffer("means", data.means.double() - m)
        self.register_buffer("var", data.variances.double())
        self.register_buffer("log_weights", data.weights.double().log())

    def _terms(self, t):
        """Per time: Ψ_t's first column (α, β), A⁻¹ entries p, q, r [K, D'], log det A [K, D'], K_t [2, 2]."""
        proc = self.process
        t = float(t)
        psi, sig = proc.psi(t, 0.0), proc.sigma(t)
        al, be = float(psi[0, 0]), float(psi[1, 0])
        axx = al * al * self.var + float(sig[0, 0])
        axv = al * be * self.var + float(sig[0, 1])
        avv = be * be * self.var + float(sig[1, 1])
        det = axx * avv - axv * axv
        k = (proc.R(t) if self.parameterization == "R" else proc.L(t)).to(self.means.device)
        return al, be, avv / det, -axv / det, axx / det, det.log(), k

    def _flat(self, sample):
        B = sample.shape[0]
        if sample.dim() < 2 or sample.shape[1] != 2:
            raise ValueError(f"CLD samples are [B, 2, ...] (x, v), got {tuple(sample.shape)}")
        u = sample.reshape(B, 2, -1).to(self.means.device, torch.float64)
        if u.shape[2] != self.means.shape[1]:
            raise ValueError(f"samples have {u.shape[2]} coordinates, the mixture has D = {self.means.shape[1]}")
        return u

    def _logits_and_score(self, u, t, score=True):
        al, be, p, q, r, logdet, _ = self._terms(t)
        D = u.shape[2]
        x, v = u[:, 0] - al * self.data_mean, u[:, 1] - be * self.data_mean
        mu = self.means
        cx, cv = mu * (p * al + q * be), mu * (q * al + r * be)           # [K, D] (p, q, r broadcast from [K, D'])
        s3 = (mu * mu * (p * al * al + 2 * q * al * be + r * be * be)).sum(1)
        if p.shape[1] == 1:
            quad = (x * x).sum(1, keepdim=True) * p.T + 2 * (x * v).sum(1, keepdim=True) * q.T + \
                (v * v).sum(1, keepdim=True) * r.T
            ld = D * logdet[:, 0]
        else:
            quad = (x * x) @ p.T + 2 * (x * v) @ q.T + (v * v) @ r.T
            ld = logdet.sum(1)
        quad = quad - 2 * (x @ cx.T + v @ cv.T) + s3
        logits = self.log_weights - 0.5 * (quad + ld) - D * math.log(2 * math.pi)
        if not score:
            return logits, None
        w = torch.softmax(logits, dim=1)
        sx = -(x * (w @ p) + v * (w @ q) - w @ cx)
        sv = -(x * (w @ q) + v * (w @ r) - w @ cv)
        return logits, torch.stack([sx, sv], 1)

    def _chunks(self, sample, t, score):
        u = self._flat(sample)
        parts = [self._logits_and_score(c, t, score) for c in u.split(self.chunk_size)]
        return torch.cat([a for a, _ in parts]), (torch.cat([b for _, b in parts]) if score else None)

    def log_prob(self, sample, t):
        """[B] float64: log p_t(u)."""
        return torch.logsumexp(self._chunks(sample, t, False)[0], dim=1)

    def score(self, sample, t):
        """∇_u log p_t(u), shaped like ``sample``, float64."""
        return self._chunks(sample, t, True)[1].reshape(sample.shape)

    def forward(self, sample, t):
        """ε = −K_tᵀ ∇ log p_t(u) per pair, in the input's dtype and device (t: a float or 0-d tensor)."""
        s = self._chunks(sample, t, True)[1]
        k = self._terms(t)[-1]
        eps = -torch.einsum("ji,bjd->bid", k, s)
        return eps.reshape(sample.shape).to(sample.device, sample.dtype)

    def marginal_sample(self, data: GaussianMixture, n, t, generator=None):
        """n exact samples of u_t [n, 2, *shape] (float64): u_t = Ψ(t, 0)(x0, 0) + R_t z, x0 ~ data."""
        x0 = data.sample(n, generator=generator).reshape(n, -1).double()
        psi, rt = self.process.psi(float(t), 0.0), self.process.R(float(t))
        z = torch.randn(n, 2, x0.shape[1], generator=generator, dtype=torch.float64)
        u = torch.stack([psi[0, 0] * x0, psi[1, 0] * x0], 1) + torch.einsum("ij,bjd->bid", rt, z)
        return u.reshape(n, 2, *data.shape)


class BlurMixtureDenoiser(torch.nn.Module):
    """The exact pixel-space ε-prediction for blurring diffusion of ``data`` (isotropic components, images
    [C, N, N]): ``model(x, t)`` → ε [B, C, N, N].

    In DCT space y = V x Vᵀ (per plane, orthonormal) a component N(μ_k, c_k² I) stays N(μ̃_k, c_k² I) and the
    forward process y_t = a(t) ⊙ y_0 + σ_t ε (a_f = α_t d_f(t)) keeps it diagonal: v_kf = a_f² c_k² + σ_t², so

        ε_y = σ_t Σ_k w_k (y − a ⊙ μ̃_k) / v_k,    w_k ∝ π_k Π_f N(y_f; a_f μ̃_kf, v_kf),    ε_x = Vᵀ ε_y V.

    The quadratic forms expand into [B, D]×[D, K] products (centred at the data mean). Float64 throughout.
    """

    def __init__(self, data: GaussianMixture, process=None, chunk_size: int = 1024):
        super().__init__()
        from ..gddim.blur import BlurProcess

        if len(data.shape) != 3 or data.shape[1] != data.shape[2]:
            raise ValueError(f"blur data must be square images [C, N, N], got shape {data.shape}")
        if not data.isotropic:
            raise ValueError("the blur oracle needs isotropic components (a diagonal pixel covariance is not "
                             "diagonal in DCT space)")
        N = data.shape[-1]
        self.process = process if process is not None else BlurProcess(N)
        if self.process.image_size != N:
            raise ValueError(f"the process is for {self.process.image_size}×{self.process.image_size} images, "
                             f"the data are {N}×{N}")
        self.shape, self.chunk_size = data.shape, chunk_size
        v = self.process.dct()
        self.register_buffer("basis", v)
        means = v @ data.means.double().reshape(-1, *data.shape) @ v.T        # [K, C, N, N] in DCT space
        m = data.weights.double() @ means.reshape(len(means), -1)
        self.register_buffer("data_mean", m)
        self.register_buffer("means", means.reshape(len(means), -1) - m)
        self.register_buffer("var", data.variances.double())                 # [K, 1]
        self.register_buffer("log_weights", data.weights.double().log())

    def _scales(self, t):
        t = float(t)
        a = self.process.blur_scale(t).reshape(-1).repeat(self.shape[0]) * float(self.process.alpha(t))
        return a.to(self.means.device), float(self.process.sigma(t))

    def _to_freq(self, x):
        B = x.shape[0]
        if tuple(x.shape[1:]) != tuple(self.shape):
            raise ValueError(f"samples must be [B, {', '.join(map(str, self.shape))}], got {tuple(x.shape)}")
        return (self.basis @ x.to(self.means.device, torch.float64) @ self.basis.T).reshape(B, -1)

    def _logits_eps(self, y, a, s, eps=True):
        y = y - a * self.data_mean
        iv = 1.0 / (a * a * self.var + s * s)                                 # [K, D]
        amu_iv = a * self.means * iv
        quad = (y * y) @ iv.T - 2 * y @ amu_iv.T + (a * self.means * amu_iv).sum(1)
        logits = self.log_weights - 0.5 * (quad + torch.log(2 * math.pi / iv).sum(1))
        if not eps:
            return logits, None
        w = torch.softmax(logits, dim=1)
        return logits, s * (y * (w @ iv) - w @ amu_iv)

    def log_prob(self, x, t):
        """[B] float64: log p_t(x) (the DCT is orthonormal: the same density in pixel and DCT space)."""
        a, s = self._scales(t)
        y = self._to_freq(x)
        return torch.cat([torch.logsumexp(self._logits_eps(c, a, s, False)[0], 1) for c in y.split(self.chunk_size)])

    def forward(self, x, t):
        """ε in pixel space, like ``x`` (dtype and device); t a float or 0-d tensor."""
        a, s = self._scales(t)
        y = self._to_freq(x)
        ey = torch.cat([self._logits_eps(c, a, s)[1] for c in y.split(self.chunk_size)]).reshape(x.shape)
        return (self.basis.T @ ey @ self.basis).to(x.device, x.dtype)
