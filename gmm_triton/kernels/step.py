"""The fused sampling step: one pass over [B, D] that turns the network's prediction into the next sample.

Per program: one sample b and one BLOCK of its D elements. The per-sample scalars (the coefficient row of
its timestep, the mixture component k, the threshold) are loaded once per program; the element loop reads
``sample`` and ``model_output`` once (both CFG halves when guidance is fused), draws the noise in-kernel
(Philox stream 0) or reads a caller's tensor, and writes ``prev_sample`` and, if asked, x̂₀. The maths is
stated in ``reference.py``; this file only says how it is laid out.

The ``"exact"`` mixture variance needs, per sample, the projection of its noise on the offsets' span — a
reduction over D. ``_project_kernel`` computes it first from the noise alone (regenerated from Philox, or
read from the caller's noise), as per-block partial sums; the step kernel adds them up. So ``sample`` and
``model_output`` are still read exactly once.
"""
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from .philox import normal_block, uniform_at

N_COLS = 8
PRED_CODES = {"epsilon": 0, "sample": 1, "v_prediction": 2, "flow": 3}
VAR_CODES = {"none": 0, "diag": 1, "vub": 2, "exact": 3}
NOISE_NONE, NOISE_PHILOX, NOISE_TENSOR = 0, 1, 2


@triton.jit
def _row(coef_ptr, n_rows, t_ptr, t_value, b, T_FROM_PTR: tl.constexpr, T_PER_SAMPLE: tl.constexpr):
    """The table row of sample b, whether it is valid, and a clamped row safe to read."""
    if T_FROM_PTR:
        if T_PER_SAMPLE:
            row = tl.load(t_ptr + b).to(tl.int64)
        else:
            row = tl.load(t_ptr).to(tl.int64)
    else:
        row = tl.cast(t_value, tl.int64)
    valid = (row >= 0) & (row < n_rows)
    return tl.where(valid, row, 0), valid


@triton.jit
def _seed(seed_ptr, seed_value, SEED_FROM_PTR: tl.constexpr):
    if SEED_FROM_PTR:
        return tl.load(seed_ptr)
    else:
        return seed_value


@triton.jit
def _noise(z_ptr, z_bs, seed, b, d, start, mask, NOISE: tl.constexpr, ALIGNED4: tl.constexpr,
           BLOCK: tl.constexpr):
    if NOISE == 1:
        return normal_block(seed, start, BLOCK, 0, ALIGNED4)
    else:
        return tl.load(z_ptr + b * z_bs + d, mask=mask, other=0.0)  # caller casts: fp64 noise stays fp64


@triton.jit
def _project_kernel(
    z_ptr, z_bs, seed_ptr, seed_value, coef_ptr, n_rows, t_ptr, t_value, basis_ptr, part_ptr, D, n_blk,
    KP: tl.constexpr, SHARED: tl.constexpr, NOISE: tl.constexpr, T_FROM_PTR: tl.constexpr,
    T_PER_SAMPLE: tl.constexpr, SEED_FROM_PTR: tl.constexpr, ALIGNED4: tl.constexpr, BLOCK: tl.constexpr,
):
    """part[b, blk, j] = Σ_{d in block} Q[row_b, j, d] z[b, d]: the noise's projection on the offsets' span."""
    pid = tl.program_id(0)
    b = (pid // n_blk).to(tl.int64)
    blk = pid % n_blk
    d = blk.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = d < D
    seed = _seed(seed_ptr, seed_value, SEED_FROM_PTR)
    z = _noise(z_ptr, z_bs, seed, b, d, b * D + blk.to(tl.int64) * BLOCK, mask, NOISE, ALIGNED4, BLOCK)
    if SHARED:
        srow = 0
    else:
        row, _ = _row(coef_ptr, n_rows, t_ptr, t_value, b, T_FROM_PTR, T_PER_SAMPLE)
        srow = tl.load(coef_ptr + row * 8 + 6).to(tl.int64)
    j = tl.arange(0, KP)
    q = tl.load(basis_ptr + (srow * KP + j[:, None]) * D + d[None, :], mask=mask[None, :], other=0.0)
    part = tl.sum(q.to(tl.float32) * tl.where(mask, z.to(tl.float32), 0.0)[None, :], axis=1)
    tl.store(part_ptr + (b * n_blk + blk) * KP + j, part)


@triton.jit(do_not_specialize=["t_value", "seed_value", "eta", "clip", "guidance"])
def _ddim_step_kernel(
    x_ptr, m_ptr, z_ptr, out_ptr, x0_ptr,
    coef_ptr, n_rows, t_ptr, t_value, seed_ptr, seed_value, thr_ptr,
    delta_ptr, cdf_ptr, wk_ptr, var_ptr, basis_ptr, eig_ptr, part_ptr,
    D, n_blk, x_bs, m_bs, m_half, z_bs,
    eta, clip, guidance,
    CT: tl.constexpr, PRED: tl.constexpr, NOISE: tl.constexpr, VAR_MODE: tl.constexpr, MIX: tl.constexpr,
    K: tl.constexpr, KP: tl.constexpr, SHARED: tl.constexpr, NPART: tl.constexpr,
    T_FROM_PTR: tl.constexpr, T_PER_SAMPLE: tl.constexpr, SEED_FROM_PTR: tl.constexpr,
    CLIP: tl.constexpr, THRESH: tl.constexpr, CLIPPED_EPS: tl.constexpr, CFG: tl.constexpr,
    OFFSET_FINAL: tl.constexpr, WRITE_X0: tl.constexpr, ALIGNED4: tl.constexpr, BLOCK: tl.constexpr,
):
    pid = tl.program_id(0)
    b = (pid // n_blk).to(tl.int64)
    blk = pid % n_blk
    d = blk.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = d < D

    # ---- per-sample scalars: one table row, read once per program ------------------------------
    row, valid = _row(coef_ptr, n_rows, t_ptr, t_value, b, T_FROM_PTR, T_PER_SAMPLE)
    cp = coef_ptr + row * 8
    al = tl.load(cp + 0).to(CT)
    sg = tl.load(cp + 1).to(CT)
    alp = tl.load(cp + 2).to(CT)
    sp2 = tl.load(cp + 3).to(CT)
    sigma = tl.cast(eta, CT) * tl.sqrt(tl.load(cp + 4).to(CT))
    c_eps = tl.sqrt(tl.maximum(sp2 - sigma * sigma, 0.0))
    # An out-of-table timestep poisons its sample (NaN) instead of reading out of bounds.
    nan_if_bad = tl.where(valid, 0.0, float("nan")).to(CT)

    # ---- one read of x and of the model output (both halves under fused CFG) --------------------
    x = tl.load(x_ptr + b * x_bs + d, mask=mask, other=0.0).to(CT)
    m = tl.load(m_ptr + b * m_bs + d, mask=mask, other=0.0).to(CT)
    if CFG:
        mc = tl.load(m_ptr + m_half + b * m_bs + d, mask=mask, other=0.0).to(CT)
        m = m + tl.cast(guidance, CT) * (mc - m)

    if PRED == 0:    # epsilon
        x0 = (x - sg * m) / al
        eps = m
    elif PRED == 1:  # sample
        x0 = m
        eps = (x - al * x0) / sg
    elif PRED == 2:  # v_prediction
        x0 = al * x - sg * m
        eps = al * m + sg * x
    else:            # flow velocity v = x1 - x0
        x0 = x - sg * m
        eps = x + al * m
    if THRESH:
        q = tl.load(thr_ptr + b).to(CT)
        x0 = tl.minimum(tl.maximum(x0, -q), q) / q
    elif CLIP:
        cl = tl.cast(clip, CT)
        x0 = tl.minimum(tl.maximum(x0, -cl), cl)
    if CLIPPED_EPS:
        eps = (x - al * x0) / sg
    prev = alp * x0 + c_eps * eps

    # ---- mixture component: one uniform per sample from Philox stream 1 ------------------------
    seed = _seed(seed_ptr, seed_value, SEED_FROM_PTR)
    if MIX:
        apply = (tl.load(cp + 5) == 0) | OFFSET_FINAL
        jk = tl.arange(0, KP)
        cdf = tl.load(cdf_ptr + jk)
        k = tl.minimum(tl.sum((cdf <= uniform_at(seed, b, 1)).to(tl.int32), axis=0), K - 1).to(tl.int64)
        if SHARED:
            srow = 0
        else:
            srow = tl.load(cp + 6).to(tl.int64)
        delta = tl.load(delta_ptr + (srow * K + k) * D + d, mask=mask, other=0.0).to(CT)
        prev += tl.where(apply, delta, 0.0)

    # ---- noise ----------------------------------------------------------------------------------
    if NOISE != 0:
        z = _noise(z_ptr, z_bs, seed, b, d, b * D + blk.to(tl.int64) * BLOCK, mask, NOISE, ALIGNED4,
                   BLOCK).to(CT)
        if MIX and VAR_MODE == 1:    # diag: σ² - w_k diag(C)_d
            u = tl.load(var_ptr + srow * D + d, mask=mask, other=0.0).to(CT)
            sub = tl.load(wk_ptr + k).to(CT) * u
            std = tl.where(sub > 0, tl.sqrt(tl.maximum(sigma * sigma - sub, 0.0)), sigma)  # σ itself if no-op
            prev += tl.where(apply, std, sigma) * z
        elif MIX and VAR_MODE == 2:  # vub: σ² - ub[k, d] on the first K coordinates
            ub = tl.load(var_ptr + k * K + d, mask=d < K, other=0.0).to(CT)
            std = tl.where(ub > 0, tl.sqrt(tl.maximum(sigma * sigma - ub, 0.0)), sigma)
            prev += tl.where(apply, std, sigma) * z
        elif MIX and VAR_MODE == 3:  # exact: σ z + Qᵀ((√(σ² - w_k λ) - σ) ⊙ Q z) on span{δ}
            jk = tl.arange(0, KP)
            p = tl.arange(0, NPART)
            parts = tl.load(part_ptr + (b * n_blk + p[:, None]) * KP + jk[None, :],
                            mask=(p < n_blk)[:, None], other=0.0)
            proj = tl.sum(parts, axis=0).to(CT)
            lam = tl.load(eig_ptr + srow * KP + jk).to(CT)
            wk = tl.load(wk_ptr + k).to(CT)
            sub = wk * lam
            cj = tl.where(sub > 0, tl.sqrt(tl.maximum(sigma * sigma - sub, 0.0)) - sigma, 0.0) * proj
            qt = tl.load(basis_ptr + (srow * KP + jk[:, None]) * D + d[None, :], mask=mask[None, :], other=0.0)
            corr = tl.sum(qt.to(CT) * cj[:, None], axis=0)
            prev += sigma * z
            prev += tl.where(apply, corr, 0.0)
        else:
            prev += sigma * z

    o = b * D + d
    tl.store(out_ptr + o, (prev + nan_if_bad).to(out_ptr.dtype.element_ty), mask=mask)
    if WRITE_X0:
        tl.store(x0_ptr + o, (x0 + nan_if_bad).to(x0_ptr.dtype.element_ty), mask=mask)


@dataclass(frozen=True)
class LaunchConfig:
    block: int
    num_warps: int


def default_config(D: int, device: torch.device) -> LaunchConfig:
    """Launch shape. GPU: 4096-wide blocks, 8 warps (the fp32 and bf16 roofline settings measured in
    reference/triton_anchor.md §2.2). Interpreter: few, large programs (its cost is per program)."""
    if device.type == "cuda":
        return LaunchConfig(block=min(4096, max(256, triton.next_power_of_2(D))), num_warps=8 if D >= 4096 else 4)
    return LaunchConfig(block=min(16384, max(16, triton.next_power_of_2(D))), num_warps=4)


def launch_step(
    *, x, m, out, x0, coef, t_tensor, t_value, seed_tensor, seed_value, noise, threshold, mix,
    D, B, x_bs, m_bs, m_half, z_bs, eta, clip, guidance, pred, noise_mode, cfg, clip_on, clipped_eps,
    offset_final, write_x0, compute_f64, config: LaunchConfig | None = None,
):
    """Launches the (optional) projection pass and the step kernel. All checks are the op's (ops.py)."""
    cfgl = config or default_config(D, x.device)
    BLOCK = cfgl.block
    n_blk = triton.cdiv(D, BLOCK)
    grid = (B * n_blk,)
    aligned4 = D % 4 == 0 and BLOCK % 4 == 0
    dummy = coef  # any valid pointer for arguments a constexpr switch leaves unread
    t_from_ptr = t_tensor is not None
    per_sample = t_from_ptr and t_tensor.numel() > 1
    seed_from_ptr = seed_tensor is not None
    var_code = VAR_CODES[mix.variance_mode] if mix is not None else 0
    part, npart = dummy, 1
    if mix is not None and var_code == 3 and noise_mode != NOISE_NONE:
        part = torch.empty((B, n_blk, mix.kp), device=x.device, dtype=torch.float32)
        npart = triton.next_power_of_2(n_blk)
        _project_kernel[grid](
            noise if noise is not None else dummy, z_bs, seed_tensor if seed_from_ptr else dummy, seed_value,
            coef, coef.shape[0], t_tensor if t_from_ptr else dummy, t_value, mix.basis, part, D, n_blk,
            KP=mix.kp, SHARED=mix.shared, NOISE=noise_mode, T_FROM_PTR=t_from_ptr, T_PER_SAMPLE=per_sample,
            SEED_FROM_PTR=seed_from_ptr, ALIGNED4=aligned4, BLOCK=BLOCK, num_warps=cfgl.num_warps,
        )
    _ddim_step_kernel[grid](
        x, m, noise if noise is not None else dummy, out, x0 if write_x0 else out,
        coef, coef.shape[0], t_tensor if t_from_ptr else dummy, t_value,
        seed_tensor if seed_from_ptr else dummy, seed_value, threshold if threshold is not None else dummy,
        mix.delta if mix is not None else dummy, mix.cdf if mix is not None else dummy,
        mix.component_weight if mix is not None else dummy,
        mix.var_table if (mix is not None and mix.var_table is not None) else dummy,
        mix.basis if (mix is not None and mix.basis is not None) else dummy,
        mix.eigvals if (mix is not None and mix.eigvals is not None) else dummy, part,
        D, n_blk, x_bs, m_bs, m_half, z_bs,
        float(eta), float(clip), float(guidance),
        CT=tl.float64 if compute_f64 else tl.float32, PRED=pred, NOISE=noise_mode, VAR_MODE=var_code,
        MIX=mix is not None, K=mix.k if mix is not None else 1, KP=mix.kp if mix is not None else 1,
        SHARED=mix.shared if mix is not None else True, NPART=npart,
        T_FROM_PTR=t_from_ptr, T_PER_SAMPLE=per_sample, SEED_FROM_PTR=seed_from_ptr,
        CLIP=clip_on, THRESH=threshold is not None, CLIPPED_EPS=clipped_eps, CFG=cfg,
        OFFSET_FINAL=offset_final, WRITE_X0=write_x0, ALIGNED4=aligned4, BLOCK=BLOCK,
        num_warps=cfgl.num_warps,
    )
