r"""DDIM / DDIM-GMM and RFIM / RFIM-GMM in k-diffusion's sampler convention, one fused op call per step.

k-diffusion (and everything built on its convention: ComfyUI, A1111, Forge) calls a sampler as

    sample_X(model, x, sigmas, extra_args=None, callback=None, disable=None, eta=1., s_noise=1., noise_sampler=None)

where ``model(x, sigma * s_in, **extra_args)`` returns the denoised x̂₀ and ``sigmas`` falls to a final 0.

``sample_ddim`` / ``sample_ddim_gmm`` are for ε / x̂₀ models in k-diffusion's coordinates x = x₀ + σ ε
(x = x_VP / √ᾱ, σ² = (1 − ᾱ)/ᾱ). There DDIM(η) is exactly ``sample_euler_ancestral`` (σ = σ_i, σ' = σ_{i+1}):

    σ_up = min(σ', η √(σ'² (σ² − σ'²) / σ²)),  σ_down = √(σ'² − σ_up²),  ε̂ = (x − x̂₀) / σ
    x' = x̂₀ + σ_down ε̂ + s_noise σ_up z                                            (sample_ddim)
    x' = x̂₀ + σ_down ε̂ + δ_k + z_k,  k ~ Cat(π),  Cov z_k = (s_noise σ_up)² I − Δ_k   (sample_ddim_gmm)

``sample_rfim`` / ``sample_rfim_gmm`` are for rectified-flow models (ComfyUI's ``CONST``: x = (1 − σ) x₀ + σ ε):

    x' = (1 − σ') x̂₀ + √(σ'² − σ_up²) ε̂ + s_noise σ_up z,  σ_up = η σ',  ε̂ = (x − (1 − σ) x̂₀) / σ

(with the mixture in place of σ_up z as above); η = 0 is the Euler step, η = 1 draws x' = (1 − σ') x̂₀ + σ' z.
ComfyUI's ``euler_ancestral_RF`` parameterises its noise differently: its η_C is RFIM's per-step
η_i = :func:`rf_ancestral_eta` (``eta`` also takes one value per step).

The mixture (DDIM-GMM, Gabbur arXiv 2311.04938; :mod:`gmm_triton.mixture`) acts in the sampler's own coordinates: its
offsets have scale ``gmm_scale`` in x (for the VP process, s √ᾱ_{i+1} in x_VP); its options are the schedulers'
(:class:`~gmm_triton.GMMDDIMScheduler`), with the same names and defaults.

Noise: a given ``noise_sampler`` is called as ``noise_sampler(σ_i, σ_{i+1})`` once for every step that adds noise
(σ_{i+1} > 0 and σ_up > 0), its draw used as the step's z (the op's ``noise``). Otherwise z is drawn inside the kernel
(Philox, the same numbers on CPU and GPU) from ``seed``, else ``extra_args["seed"]`` (ComfyUI's noise seed), else a
seed drawn from torch's global RNG; step i keys Philox with seed + h(i) (h a fixed 64-bit hash), on the seed's own
device, so no step reads anything back from a GPU. The mixture's component draw always takes that Philox seed.

The σ grid is read to the host once per call to build the step table (:func:`gmm_triton.coefficients.sigma_table`).
"""
from __future__ import annotations

import math
import numbers
from collections import OrderedDict
from types import SimpleNamespace

import torch
from tqdm.auto import trange

from ..coefficients import COL_VAR, sigma_table
from ..ops import ddim_step
from ..rng import as_seed_tensor, draw_seed
from ..schedulers.common import check_mixture_options, check_mixture_variance, mixture_of

__all__ = ["sample_ddim", "sample_ddim_gmm", "sample_rfim", "sample_rfim_gmm", "rf_ancestral_eta"]

_U64 = 1 << 64
_MASK = _U64 - 1


def _splitmix64(v: int) -> int:
    """SplitMix64's output function (Steele et al. 2014): a fixed, well-mixed 64-bit hash of v."""
    z = (v + 0x9E3779B97F4A7C15) & _MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
    return z ^ (z >> 31)


def step_seed(seed, i: int):
    """Step i's Philox key: (seed + h(i)) mod 2⁶⁴, h = SplitMix64. A Python int stays an int; an int64 tensor stays on
    its device (the add wraps like uint64), so a device seed is never read on the host."""
    h = _splitmix64(i)
    if isinstance(seed, torch.Tensor):
        return seed + (h - _U64 if h >= 1 << 63 else h)
    return (int(seed) + h) & _MASK


def _resolve_seed(seed, extra_args, device):
    """``seed``, else ComfyUI's ``extra_args["seed"]``, else one drawn from torch's global RNG (on ``device``)."""
    if seed is None:
        seed = extra_args.get("seed")
    if seed is None:
        return draw_seed(None, device)
    if isinstance(seed, torch.Tensor):
        return as_seed_tensor(seed)
    as_seed_tensor(seed)  # the checks: an int in [0, 2⁶⁴)
    return int(seed)


def _check_sigmas(sigmas, flow: bool) -> torch.Tensor:
    if not isinstance(sigmas, torch.Tensor):
        sigmas = torch.as_tensor(sigmas, dtype=torch.float32)
    if sigmas.dim() != 1 or sigmas.numel() < 1:
        raise ValueError(f"sigmas must be a 1-D tensor of at least one value, got shape {tuple(sigmas.shape)}")
    host = sigmas.detach().cpu().double()  # the one host read of a call: the table is built from it
    if not torch.isfinite(host).all() or (host < 0).any():
        raise ValueError(f"sigmas must be finite and >= 0, got {host.tolist()}")
    if (host[:-1] == 0).any():
        i = int((host[:-1] == 0).nonzero()[0])
        raise ValueError(f"sigmas[{i}] = 0 before the last step: x̂₀ cannot be turned into a step from σ = 0 "
                         "(ε̂ = (x − α x̂₀)/σ)")
    if flow and (host > 1).any():
        raise ValueError(f"flow sigmas must lie in [0, 1] (x = (1 − σ) x₀ + σ ε), got max {float(host.max())}")
    return sigmas


def _check_eta(eta, n: int, flow: bool) -> torch.Tensor:
    e = torch.as_tensor(eta, dtype=torch.float64).reshape(-1)
    if e.numel() not in (1, n):
        raise ValueError(f"eta must be a number or one value per step ({n}), got {e.numel()} values")
    if not torch.isfinite(e).all() or (e < 0).any() or (flow and (e > 1).any()):
        bound = "in [0, 1] for a flow (σ_up = eta·σ' cannot exceed σ')" if flow else "finite and >= 0"
        raise ValueError(f"eta must be {bound}, got {e.tolist()}")
    return e if e.numel() == n else e.expand(n)


# one cache per process: a ComfyUI run repeats the same (latent size, steps, options), and a mixture's tables cost
# a QR of [steps, D, K] to build; the cache holds the few most recent ones
_MIXTURES: "OrderedDict[tuple, object]" = OrderedDict()
_MIXTURES_KEPT = 4


def _mixture(x: torch.Tensor, table: torch.Tensor, options: dict):
    """The mixture for x's latent size and the table's steps, its variance checked against the table's σ²."""
    cfg = SimpleNamespace(**options)
    D, n = math.prod(x.shape[1:]), table.shape[0]
    key = (D, n, x.device, tuple((k, tuple(v) if isinstance(v, list) else v) for k, v in sorted(options.items())))
    mix = _MIXTURES.pop(key, None)
    if mix is None:
        mix = mixture_of(cfg, D, n, x.device)
    _MIXTURES[key] = mix
    while len(_MIXTURES) > _MIXTURES_KEPT:
        _MIXTURES.popitem(last=False)
    check_mixture_variance(mix, cfg, 1.0, table, torch.arange(n))
    return mix


@torch.no_grad()
def _sample(model, x, sigmas, extra_args, callback, disable, eta, s_noise, noise_sampler, seed, flow, mixture_options):
    extra_args = {} if extra_args is None else extra_args
    sigmas = _check_sigmas(sigmas, flow)
    n = sigmas.numel() - 1
    if isinstance(s_noise, bool) or not isinstance(s_noise, numbers.Real) or not (math.isfinite(s_noise)
                                                                                   and s_noise >= 0):
        raise ValueError(f"s_noise must be a finite number >= 0, got {s_noise!r}")
    host = sigma_table(sigmas, eta=_check_eta(eta, n, flow), s_noise=float(s_noise), flow=flow)
    noisy = (host[:, COL_VAR] > 0).tolist()  # steps that add noise: the op runs them at eta = 1
    table = host.to(x.device)
    seed = _resolve_seed(seed, extra_args, x.device) if (noise_sampler is None and any(noisy)) \
        or mixture_options is not None else None
    mixture = _mixture(x, host, mixture_options) if mixture_options is not None else None
    s_in = x.new_ones([x.shape[0]])
    for i in trange(n, disable=disable):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigmas[i], "sigma_hat": sigmas[i], "denoised": denoised})
        dtype = torch.promote_types(x.dtype, denoised.dtype)
        x, denoised = x.to(dtype), denoised.to(dtype)
        noise = noise_sampler(sigmas[i], sigmas[i + 1]) if noisy[i] and noise_sampler is not None else None
        x, _ = ddim_step(
            x, denoised, i, table, prediction_type="sample", eta=1.0 if noisy[i] else 0.0, noise=noise,
            seed=None if seed is None else step_seed(seed, i), mixture=mixture,
            offset_final=bool(mixture_options and mixture_options["gmm_offset_final"]), return_pred_original=False,
        )
    return x


def _mixture_options(**options) -> dict:
    check_mixture_options(**options)
    return options


def sample_ddim(model, x, sigmas, extra_args=None, callback=None, disable=None, eta=1.0, s_noise=1.0,
                noise_sampler=None, seed=None):
    """DDIM(η) in k-diffusion's σ coordinates: ``sample_euler_ancestral``'s step, fused (module docstring).

    Args are k-diffusion's (``eta`` ≥ 0, 1 by default as in its ancestral samplers; 0 is ``sample_euler``), plus
    ``seed``: the Philox seed (an int in [0, 2⁶⁴) or an int64 tensor) when no ``noise_sampler`` is given; by default
    ``extra_args["seed"]``, else drawn from torch's global RNG. Returns the final x (dtype: x's and the model
    output's promoted).
    """
    return _sample(model, x, sigmas, extra_args, callback, disable, eta, s_noise, noise_sampler, seed, False, None)


def sample_ddim_gmm(model, x, sigmas, extra_args=None, callback=None, disable=None, eta=1.0, s_noise=1.0,
                    noise_sampler=None, seed=None, gmm_components=8, gmm_scale=0.3, gmm_offsets="ortho",
                    gmm_variance="vub", gmm_shared=False, gmm_priors="uniform", gmm_seed=0, gmm_clip_variance=True,
                    gmm_offset_final=False, gmm_dtype="float32"):
    """DDIM-GMM in k-diffusion's σ coordinates: :func:`sample_ddim` with the moment-matched mixture kernel.

    The ``gmm_*`` options are :class:`~gmm_triton.GMMDDIMScheduler`'s (same meaning and defaults; the offsets act on x
    in σ coordinates). ``gmm_scale=0`` or ``gmm_components=1`` is :func:`sample_ddim`, bit for bit.
    """
    opts = _mixture_options(
        gmm_components=gmm_components, gmm_scale=gmm_scale, gmm_offsets=gmm_offsets, gmm_variance=gmm_variance,
        gmm_shared=gmm_shared, gmm_priors=gmm_priors, gmm_seed=gmm_seed, gmm_clip_variance=gmm_clip_variance,
        gmm_offset_final=gmm_offset_final, gmm_dtype=gmm_dtype)
    return _sample(model, x, sigmas, extra_args, callback, disable, eta, s_noise, noise_sampler, seed, False, opts)


def sample_rfim(model, x, sigmas, extra_args=None, callback=None, disable=None, eta=1.0, s_noise=1.0,
                noise_sampler=None, seed=None):
    """RFIM for rectified-flow (``CONST``) models: σ_up = η σ' (module docstring); η = 0 is ``sample_euler``.

    ``eta``: in [0, 1], a number or one value per step (:func:`rf_ancestral_eta` maps ComfyUI's
    ``euler_ancestral_RF`` η onto it). Other arguments as :func:`sample_ddim`.
    """
    return _sample(model, x, sigmas, extra_args, callback, disable, eta, s_noise, noise_sampler, seed, True, None)


def sample_rfim_gmm(model, x, sigmas, extra_args=None, callback=None, disable=None, eta=1.0, s_noise=1.0,
                    noise_sampler=None, seed=None, gmm_components=8, gmm_scale=0.3, gmm_offsets="ortho",
                    gmm_variance="vub", gmm_shared=False, gmm_priors="uniform", gmm_seed=0, gmm_clip_variance=True,
                    gmm_offset_final=False, gmm_dtype="float32"):
    """RFIM-GMM: :func:`sample_rfim` with the mixture kernel (options as :func:`sample_ddim_gmm`, and as
    :class:`~gmm_triton.GMMFlowMatchScheduler`'s)."""
    opts = _mixture_options(
        gmm_components=gmm_components, gmm_scale=gmm_scale, gmm_offsets=gmm_offsets, gmm_variance=gmm_variance,
        gmm_shared=gmm_shared, gmm_priors=gmm_priors, gmm_seed=gmm_seed, gmm_clip_variance=gmm_clip_variance,
        gmm_offset_final=gmm_offset_final, gmm_dtype=gmm_dtype)
    return _sample(model, x, sigmas, extra_args, callback, disable, eta, s_noise, noise_sampler, seed, True, opts)


def rf_ancestral_eta(sigmas, eta: float = 1.0) -> torch.Tensor:
    """RFIM's per-step η_i that reproduces ComfyUI's ``sample_euler_ancestral_RF(eta=eta)`` (float64, one per step).

    ComfyUI steps to σ_d = σ'(1 + (σ'/σ − 1) η), then x' = (α'/α_d)(x at σ_d) + s_noise r z with α = 1 − σ and
    r = √(σ'² − (σ_d α'/α_d)²). Written as RFIM, that is ε̂'s coefficient σ_d α'/α_d = √(σ'² − σ_up²) and noise
    σ_up = r, so η_i = r / σ' (0 on the final step, σ' = 0, where ComfyUI returns x̂₀).
    """
    sig = torch.as_tensor(sigmas).detach().cpu().double().reshape(-1)
    t, s = sig[:-1], sig[1:]
    down = s * (1 + (s / t - 1) * float(eta))
    c = down * (1 - s) / (1 - down)
    r = (s * s - c * c).clamp(min=0).sqrt()
    return torch.where(s > 0, r / torch.where(s > 0, s, 1.0), torch.zeros_like(s))
