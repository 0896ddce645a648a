"""Float64 reference of every op in gmm_triton, and the numpy Philox the kernels must reproduce.

This module is the test oracle, never a silent fallback: it is slow (numpy Philox, float64 torch) and
exists so that the Triton kernel (GPU and interpreter) and the C++ twin can be checked against one
independent statement of the maths.

The step, in the notation of the coefficient table (one row per timestep, see ``coefficients.py``):

    x_t = α_t x₀ + s_t ε                                   (VP: α = √ᾱ, s = √(1-ᾱ); flow: α = 1-t, s = t)
    x̂₀, ε̂  from the model output m:
        epsilon:       x̂₀ = (x - s m) / α              ε̂ = m
        sample:        x̂₀ = m                          ε̂ = (x - α x̂₀) / s
        v_prediction:  x̂₀ = α x - s m                  ε̂ = α m + s x
        flow:          x̂₀ = x - s m                    ε̂ = x + α m      (m = v = x₁ - x₀)
    x̂₀ ← clamp(x̂₀, -r, r)  or  clamp(x̂₀, -q_b, q_b) / q_b  (dynamic thresholding, q_b per sample)
    ε̂  ← (x - α x̂₀) / s   if use_clipped_model_output
    σ   = η √var
    x_prev = α_prev x̂₀ + √max(s_prev² - σ², 0) ε̂ + δ_k + noise

with noise = σ z for the Gaussian kernel and the mixture's own per-dimension law otherwise
(``mixture.py``): z from Philox stream 0 or a caller's tensor, k ~ Cat(π) from Philox stream 1.

RNG contract (shared with ``kernels/philox.py`` and ``csrc/philox.h``; stream ids in ``contract.py``):
    Philox4x32-10, key = (lo32(seed), hi32(seed)), counter = (lo32(c), hi32(c), stream, 0).
    Sample b of a call has the key ``seed`` and the global index g = sample_offset + b (sample_offset = 0 unless
    the caller shards a run); with per-sample seeds (one per sample) it has the key seed[b] and g = sample_offset,
    as if it were sample 0 of its own run (sample_keys). Its element d (logical row-major index within the sample,
    whatever the memory layout) has the flat index i = g·D + d.
    stream 0, noise:   c = i // 4; element i takes normal i % 4 of its group:
                       (n0, n1) = BoxMuller(w0, w1), (n2, n3) = BoxMuller(w2, w3).
    stream 1, choice:  c = g; u = U(w0); k = #{j : cdf_j <= u}, capped at K-1.
    stream 2, tables:  like stream 0, for the mixture-offset Gaussians drawn from gmm_seed.
    stream 3, latents: like stream 0, for the initial noise x_T of sample g (rng.initial_noise).
    U(w)  = (w >> 8) · 2⁻²⁴ ∈ [0, 1);   U°(w) = ((w >> 8) + 1) · 2⁻²⁴ ∈ (0, 1]
    BoxMuller(a, b) = r cos θ, r sin θ  with  r = √(-2 ln U°(a)),  θ = 2π U(b)   (|z| ≤ 5.77).
Implementations must give the Philox words bit for bit and the normals within a stated bound of this float64
value: the C++ twin and the Triton kernel under the interpreter within 1e-6 (float32 series log and sin/cos), the
Triton kernel on a GPU within 5e-6 absolute (hardware sin/cos of θ − π and square root; kernels/philox.py).
"""
from __future__ import annotations

import math

import numpy as np
import torch

from .contract import COL_FINAL, COL_STEP, PREDICTION_TYPES, STREAM_CHOICE, STREAM_NOISE

_M0, _M1 = np.uint64(0xD2511F53), np.uint64(0xCD9E8D57)
_W0, _W1 = np.uint32(0x9E3779B9), np.uint32(0xBB67AE85)
_MASK32 = np.uint64(0xFFFFFFFF)


# --------------------------------------------------------------------------------------------
# Philox4x32-10 in numpy
# --------------------------------------------------------------------------------------------
def philox4x32_rounds(c0, c1, c2, c3, k0: int, k1: int, rounds: int = 10):
    """Philox4x32 (Salmon et al. 2011) of counter words c0..c3 (uint32 arrays) under key (k0, k1)."""
    c0, c1, c2, c3 = (np.asarray(c, dtype=np.uint32) for c in (c0, c1, c2, c3))
    k0, k1 = int(k0) & 0xFFFFFFFF, int(k1) & 0xFFFFFFFF
    for _ in range(rounds):
        p0 = _M0 * c0.astype(np.uint64)
        p1 = _M1 * c2.astype(np.uint64)
        c0, c1, c2, c3 = (
            (p1 >> np.uint64(32)).astype(np.uint32) ^ c1 ^ np.uint32(k0),
            (p1 & _MASK32).astype(np.uint32),
            (p0 >> np.uint64(32)).astype(np.uint32) ^ c3 ^ np.uint32(k1),
            (p0 & _MASK32).astype(np.uint32),
        )
        k0 = (k0 + int(_W0)) & 0xFFFFFFFF
        k1 = (k1 + int(_W1)) & 0xFFFFFFFF
    return c0, c1, c2, c3


def philox4x32(seed: int, counter, stream: int = 0, rounds: int = 10):
    """The contract's Philox: counter = (lo32(c), hi32(c), stream, 0), key = (lo32(seed), hi32(seed))."""
    counter = np.asarray(counter, dtype=np.uint64)
    seed = int(seed) & 0xFFFFFFFFFFFFFFFF
    c0 = (counter & _MASK32).astype(np.uint32)
    c1 = (counter >> np.uint64(32)).astype(np.uint32)
    return philox4x32_rounds(c0, c1, np.full_like(c0, stream), np.zeros_like(c0), seed & 0xFFFFFFFF, seed >> 32,
                             rounds)


def uniform(words) -> np.ndarray:
    """U(w) = (w >> 8)·2⁻²⁴ in [0, 1), exact in float32."""
    return (np.asarray(words, dtype=np.uint32) >> np.uint32(8)).astype(np.float64) * 2.0**-24


def uniform_open(words) -> np.ndarray:
    """U°(w) = ((w >> 8) + 1)·2⁻²⁴ in (0, 1]: the Box-Muller radius input, never 0."""
    return ((np.asarray(words, dtype=np.uint32) >> np.uint32(8)).astype(np.float64) + 1.0) * 2.0**-24


def philox_normal(seed: int, numel: int, stream: int = STREAM_NOISE, start: int = 0) -> np.ndarray:
    """Normals for flat element indices start .. start+numel-1 of a stream (float64)."""
    idx = np.arange(start, start + numel, dtype=np.uint64)
    groups = np.unique(idx >> np.uint64(2))
    w = philox4x32(seed, groups, stream)
    r01 = np.sqrt(-2.0 * np.log(uniform_open(w[0])))
    r23 = np.sqrt(-2.0 * np.log(uniform_open(w[2])))
    th01, th23 = 2.0 * math.pi * uniform(w[1]), 2.0 * math.pi * uniform(w[3])
    lanes = np.stack([r01 * np.cos(th01), r01 * np.sin(th01), r23 * np.cos(th23), r23 * np.sin(th23)], 1)
    lane_of = (idx & np.uint64(3)).astype(np.int64)
    row_of = (idx >> np.uint64(2)) - groups[0]
    return lanes[row_of.astype(np.int64), lane_of]


def philox_uniform(seed: int, numel: int, stream: int = STREAM_CHOICE, start: int = 0) -> np.ndarray:
    """One uniform per index start..start+numel-1 of a stream (the component-choice draw)."""
    return uniform(philox4x32(seed, np.arange(start, start + numel, dtype=np.uint64), stream)[0])


def sample_keys(seed, batch: int, sample_offset: int = 0) -> list:
    """[(key_b, g_b)]: the Philox key and global index of each sample. One seed (an int): (seed, sample_offset + b);
    per-sample seeds (a sequence of ``batch`` ints): (seed[b], sample_offset)."""
    if isinstance(seed, (list, tuple, np.ndarray)):
        if len(seed) != batch:
            raise ValueError(f"per-sample seeds must hold one seed per sample ({batch}), got {len(seed)}")
        return [(int(k), sample_offset) for k in seed]
    return [(int(seed), sample_offset + b) for b in range(batch)]


def choose_components(seed, batch: int, cdf, sample_offset: int = 0, K: int | None = None) -> np.ndarray:
    """k_b = #{j : cdf_j <= u_b}, capped at K-1: inverse-CDF draw of one component per sample, u_b drawn at the
    sample's global index (sample_keys: one seed, or one per sample)."""
    cdf = np.asarray(cdf, dtype=np.float32).astype(np.float64)
    if isinstance(seed, (list, tuple, np.ndarray)):
        u = np.array([philox_uniform(k, 1, STREAM_CHOICE, g)[0] for k, g in sample_keys(seed, batch, sample_offset)])
    else:  # one draw over the consecutive indices
        u = philox_uniform(seed, batch, STREAM_CHOICE, sample_offset)
    k = (cdf[None, :] <= u[:, None]).sum(1)
    return np.minimum(k, (len(cdf) if K is None else K) - 1)


# --------------------------------------------------------------------------------------------
# The DDIM step in diffusers' terms (ᾱ_t, ᾱ_prev), float64
# --------------------------------------------------------------------------------------------
def ddim_step(
    sample: torch.Tensor,
    model_output: torch.Tensor,
    alpha_prod_t: float,
    alpha_prod_t_prev: float,
    *,
    eta: float = 0.0,
    prediction_type: str = "epsilon",
    clip_sample_range: float | None = None,
    thresholding: tuple[float, float] | None = None,
    use_clipped_model_output: bool = False,
    noise: torch.Tensor | None = None,
):
    """One DDIM step (Song et al. 2021, Eq. 12) in float64, as diffusers' ``DDIMScheduler.step`` defines it.

    ``thresholding`` = (dynamic_thresholding_ratio, sample_max_value) applies Imagen's dynamic thresholding
    and takes precedence over ``clip_sample_range``. Returns (prev_sample, pred_original_sample) in float64.
    """
    a, ap = float(alpha_prod_t), float(alpha_prod_t_prev)
    var = (1 - ap) / (1 - a) * (1 - a / ap) if a < 1 else 0.0
    coef = torch.tensor([math.sqrt(a), math.sqrt(1 - a), math.sqrt(ap), 1 - ap, var], dtype=torch.float64)
    return _step_core(
        sample.double(), model_output.double(), coef.expand(sample.shape[0], 5), eta, prediction_type,
        clip_sample_range, thresholding, use_clipped_model_output, None if noise is None else noise.double(),
    )


def dynamic_threshold_scale(x0: torch.Tensor, ratio: float, max_value: float) -> torch.Tensor:
    """Per-sample q_b = clamp(quantile(|x̂₀_b|, ratio), 1, max_value) (Imagen; diffusers' _threshold_sample)."""
    q = torch.quantile(x0.reshape(x0.shape[0], -1).abs().float(), ratio, dim=1)
    return q.clamp(min=1.0, max=max_value)


def _bcast(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.reshape(v.shape[0], *([1] * (like.dim() - 1)))


def _step_core(x, m, coef, eta, prediction_type, clip, thresholding, clipped_eps, noise,
               threshold_scale=None, offset=None, noise_fn=None):
    """The shared float64 maths. coef[b] = (α, s, α_prev, s_prev², var). Returns (prev, x̂₀)."""
    al, s_t, alp, s_prev2, var = (_bcast(coef[:, i], x) for i in range(5))
    if prediction_type == "epsilon":
        x0, eps = (x - s_t * m) / al, m
    elif prediction_type == "sample":
        x0 = m
        eps = (x - al * x0) / s_t
    elif prediction_type == "v_prediction":
        x0, eps = al * x - s_t * m, al * m + s_t * x
    elif prediction_type == "flow":
        x0, eps = x - s_t * m, x + al * m
    else:
        raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}")
    if thresholding is not None or threshold_scale is not None:
        q = threshold_scale if threshold_scale is not None else dynamic_threshold_scale(x0, *thresholding)
        q = _bcast(q.double(), x)
        x0 = torch.maximum(torch.minimum(x0, q), -q) / q
    elif clip is not None:
        x0 = x0.clamp(-clip, clip)
    if clipped_eps:
        eps = (x - al * x0) / s_t
    sigma = eta * var.sqrt()
    prev = alp * x0 + (s_prev2 - sigma**2).clamp(min=0).sqrt() * eps
    if offset is not None:
        prev = prev + offset
    if noise_fn is not None:
        prev = prev + noise_fn(sigma)
    elif noise is not None and eta > 0:
        prev = prev + sigma * noise
    return prev, x0


# --------------------------------------------------------------------------------------------
# The fused op, exactly: tables, rows, CFG, Philox noise, mixture
# --------------------------------------------------------------------------------------------
def fused_step(
    sample: torch.Tensor,
    model_output: torch.Tensor,
    rows,
    coef: torch.Tensor,
    *,
    prediction_type: str = "epsilon",
    eta: float = 0.0,
    clip_sample_range: float | None = None,
    threshold_scale: torch.Tensor | None = None,
    use_clipped_model_output: bool = False,
    guidance_scale: float | None = None,
    seed: int | None = None,
    sample_offset: int = 0,
    noise: torch.Tensor | None = None,
    mixture=None,
    offset_final: bool = False,
):
    """What ``torch.ops.gmm_triton.ddim_step`` computes, in float64, for any backend to be compared with.

    rows: the coefficient-table row per sample (int or [B]); coef: the [R, 8] table (coefficients.py);
    guidance_scale: model_output holds [uncond; cond] halves, m = u + g (c - u);
    seed: Philox seed for noise (stream 0) and the component choice (stream 1): an int, or a sequence of one seed
        per sample (sample b then at global index sample_offset; sample_keys);
    sample_offset: the global index of sample 0 (the RNG counters of sample b start at (sample_offset + b)·D);
    mixture: a ``MixtureTensors`` (mixture.py) or None for the Gaussian kernel.
    Rows outside the table, and mixture step tables outside the mixture, give NaN for their sample.
    Returns (prev_sample, pred_original_sample) in float64.
    """
    x = sample.double().cpu()
    m = model_output.double().cpu()
    if guidance_scale is not None:
        u, c = m.chunk(2)
        m = u + guidance_scale * (c - u)
    B = x.shape[0]
    D = x[0].numel()
    rows = torch.as_tensor(rows, dtype=torch.int64).reshape(-1).expand(B).cpu()
    table = coef.double().cpu()
    R = table.shape[0]
    bad = (rows < 0) | (rows >= R)
    rows_c = rows.clamp(0, R - 1)
    crow = table[rows_c]
    z = None
    if noise is not None:
        z = noise.double().cpu().reshape(B, D)
    elif isinstance(seed, (list, tuple)):
        keys = sample_keys(seed, B, sample_offset)
        z = torch.from_numpy(np.stack([philox_normal(k, D, start=g * D) for k, g in keys]))
    elif seed is not None:
        z = torch.from_numpy(philox_normal(seed, B * D, start=sample_offset * D)).reshape(B, D)

    offset, noise_fn = None, None
    if mixture is not None:
        S = mixture.delta.shape[0]
        srow = torch.zeros(B, dtype=torch.long) if S == 1 else crow[:, COL_STEP].long()
        bad = bad | (srow < 0) | (srow >= S)
        offset, noise_fn = _mixture_terms(mixture, crow, srow.clamp(0, S - 1), seed, sample_offset, B, D, z,
                                          offset_final, eta)
        offset = offset.reshape(x.shape)
    zz = None if z is None else z.reshape(x.shape)
    prev, x0 = _step_core(
        x, m, crow[:, :5], eta, prediction_type, clip_sample_range, None, use_clipped_model_output, zz,
        threshold_scale=threshold_scale, offset=offset,
        noise_fn=None if noise_fn is None else (lambda sigma: noise_fn(sigma).reshape(x.shape)),
    )
    if bad.any():
        prev[bad] = float("nan")
        x0[bad] = float("nan")
    return prev, x0


def _mixture_terms(mix, crow, srow, seed, sample_offset, B, D, z, offset_final, eta):
    """Offsets δ_k and the mixture noise for each sample (float64); srow: each sample's step table."""
    K = mix.delta.shape[1]
    k = torch.from_numpy(choose_components(seed, B, mix.cdf.cpu().numpy(), sample_offset, K)).long()
    apply = (crow[:, COL_FINAL] == 0) | offset_final
    delta = mix.delta.double().cpu()[srow, k] * apply[:, None]
    w = mix.component_weight.double().cpu()[k]                       # 1 / (K₊ π_k)
    mode = mix.variance_mode

    def noise_fn(sigma):
        sig = sigma.reshape(B, 1)
        if z is None or eta == 0:
            return torch.zeros(B, D, dtype=torch.float64)
        if mode == "none":
            return sig * z
        if mode == "diag":
            sub = w[:, None] * mix.var_table.double().cpu()[srow]
            std = (sig**2 - sub).clamp(min=0).sqrt()
        elif mode == "vub":
            ub = torch.zeros(B, D, dtype=torch.float64)
            ub[:, :K] = mix.var_table.double().cpu()[k][:, : min(K, D)]
            std = (sig**2 - ub).clamp(min=0).sqrt()
        else:  # exact: σ z + Q^T ((√max(σ² − w λ, 0) − σ) ⊙ Q z) on span{δ}
            Q = mix.basis.double().cpu()[srow]                         # [B, K, D]
            lam = mix.eigvals.double().cpu()[srow]                     # [B, K]
            c = (sig**2 - w[:, None] * lam).clamp(min=0).sqrt() - sig
            proj = torch.einsum("bkd,bd->bk", Q, z)
            out = sig * z + torch.einsum("bkd,bk->bd", Q, c * proj)
            keep = apply[:, None]
            return torch.where(keep, out, sig * z)
        std = torch.where(apply[:, None], std, sig.expand(B, D))
        return std * z

    return delta, noise_fn
