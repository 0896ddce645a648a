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

Layouts: a program's elements are positions j of its sample's block in memory. With ``PERMUTED`` (a dense
layout such as channels_last, backends.Layout) position j holds logical element d(j); the loads and stores stay
coalesced at j and only the RNG counter and the mixture tables, which the contract defines on logical indices,
use d(j) (one Philox group per element there instead of one per four).
"""
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from .. import contract
from .philox import normal_at, normal_block, uniform_at

# the contract's codes, as the compile-time constants Triton requires of globals
_EPS = tl.constexpr(contract.PRED_CODES["epsilon"])
_SAMPLE = tl.constexpr(contract.PRED_CODES["sample"])
_V = tl.constexpr(contract.PRED_CODES["v_prediction"])
_VAR_DIAG = tl.constexpr(contract.VAR_CODES["diag"])
_VAR_VUB = tl.constexpr(contract.VAR_CODES["vub"])
_VAR_EXACT = tl.constexpr(contract.VAR_CODES["exact"])
_NOISE_NONE = tl.constexpr(contract.NOISE_NONE)
_NOISE_PHILOX = tl.constexpr(contract.NOISE_PHILOX)
_STREAM_NOISE = tl.constexpr(contract.STREAM_NOISE)
_STREAM_CHOICE = tl.constexpr(contract.STREAM_CHOICE)
_NC = tl.constexpr(contract.N_COLS)
_C_AL = tl.constexpr(contract.COL_ALPHA)
_C_SG = tl.constexpr(contract.COL_SIGMA)
_C_ALP = tl.constexpr(contract.COL_ALPHA_PREV)
_C_SP2 = tl.constexpr(contract.COL_SIGMA_PREV2)
_C_VAR = tl.constexpr(contract.COL_VAR)
_C_FINAL = tl.constexpr(contract.COL_FINAL)
_C_STEP = tl.constexpr(contract.COL_STEP)


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
def _scalar(ptr, value, FROM_PTR: tl.constexpr):
    """A per-launch int64 scalar (seed, sample offset): read by the kernel from a device tensor, or passed by value."""
    if FROM_PTR:
        return tl.load(ptr)
    else:
        return value


@triton.jit
def _logical(d, n1, n2, l0, l1, l2, PERMUTED: tl.constexpr):
    """The logical index of memory position d of a sample's block (backends.Layout); d itself if not permuted."""
    if PERMUTED:
        c2 = d % n2
        t = d // n2
        return (t // n1) * l0 + (t % n1) * l1 + c2 * l2
    else:
        return d


@triton.jit
def _noise(z_ptr, z_bs, seed, b, d, base, dl, start, mask, NOISE: tl.constexpr, ALIGNED4: tl.constexpr,
           PERMUTED: tl.constexpr, BLOCK: tl.constexpr):
    """The block's noise: Philox normals at flat indices base + dl (start = base + the block's first d when d = dl),
    or the caller's tensor at the memory positions d."""
    if NOISE == _NOISE_PHILOX:
        if PERMUTED:
            return normal_at(seed, base + dl, _STREAM_NOISE)
        else:
            return normal_block(seed, start, BLOCK, _STREAM_NOISE, ALIGNED4)
    else:
        return tl.load(z_ptr + b * z_bs + d, mask=mask, other=0.0)  # caller casts: fp64 noise stays fp64


@triton.jit
def _table_row(coef_ptr, row, n_tables, SHARED: tl.constexpr):
    """The mixture step table of a coefficient row, whether it exists, and a clamped index safe to read."""
    if SHARED:
        return 0, True
    else:
        srow = tl.load(coef_ptr + row * _NC + _C_STEP).to(tl.int64)
        ok = (srow >= 0) & (srow < n_tables)
        return tl.where(ok, srow, 0), ok


@triton.jit
def _project_kernel(
    z_ptr, z_bs, seed_ptr, seed_value, off_ptr, off_value, coef_ptr, n_rows, t_ptr, t_value, basis_ptr, part_ptr,
    D, n_blk, n_tables, n1, n2, l0, l1, l2,
    KP: tl.constexpr, SHARED: tl.constexpr, NOISE: tl.constexpr, T_FROM_PTR: tl.constexpr,
    T_PER_SAMPLE: tl.constexpr, SEED_FROM_PTR: tl.constexpr, OFF_FROM_PTR: tl.constexpr, ALIGNED4: tl.constexpr,
    PERMUTED: tl.constexpr, BLOCK: tl.constexpr,
):
    """part[b, blk, j] = Σ_{d in block} Q[srow_b, j, d] z[b, d]: the noise's projection on the offsets' span."""
    pid = tl.program_id(0)
    b = (pid // n_blk).to(tl.int64)
    blk = pid % n_blk
    d = blk.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = d < D
    dl = _logical(d, n1, n2, l0, l1, l2, PERMUTED)
    seed = _scalar(seed_ptr, seed_value, SEED_FROM_PTR)
    base = (b + _scalar(off_ptr, off_value, OFF_FROM_PTR)) * D
    z = _noise(z_ptr, z_bs, seed, b, d, base, dl, base + blk.to(tl.int64) * BLOCK, mask, NOISE, ALIGNED4, PERMUTED,
               BLOCK)
    row, _ = _row(coef_ptr, n_rows, t_ptr, t_value, b, T_FROM_PTR, T_PER_SAMPLE)
    srow, _ = _table_row(coef_ptr, row, n_tables, SHARED)
    j = tl.arange(0, KP)
    q = tl.load(basis_ptr + (srow * KP + j[:, None]) * D + dl[None, :], mask=mask[None, :], other=0.0)
    part = tl.sum(q.to(tl.float32) * tl.where(mask, z.to(tl.float32), 0.0)[None, :], axis=1)
    tl.store(part_ptr + (b * n_blk + blk) * KP + j, part)


@triton.jit(do_not_specialize=["t_value", "seed_value", "off_value", "eta", "clip", "guidance"])
def _ddim_step_kernel(
    x_ptr, m_ptr, z_ptr, out_ptr, x0_ptr,
    coef_ptr, n_rows, t_ptr, t_value, seed_ptr, seed_value, off_ptr, off_value, thr_ptr,
    delta_ptr, cdf_ptr, wk_ptr, var_ptr, basis_ptr, eig_ptr, part_ptr,
    D, n_blk, n_tables, x_bs, m_bs, m_half, z_bs, n1, n2, l0, l1, l2,
    eta, clip, guidance,
    CT: tl.constexpr, PRED: tl.constexpr, NOISE: tl.constexpr, VAR_MODE: tl.constexpr, MIX: tl.constexpr,
    K: tl.constexpr, KP: tl.constexpr, SHARED: tl.constexpr, NPART: tl.constexpr,
    T_FROM_PTR: tl.constexpr, T_PER_SAMPLE: tl.constexpr, SEED_FROM_PTR: tl.constexpr, OFF_FROM_PTR: tl.constexpr,
    CLIP: tl.constexpr, THRESH: tl.constexpr, CLIPPED_EPS: tl.constexpr, CFG: tl.constexpr,
    OFFSET_FINAL: tl.constexpr, WRITE_X0: tl.constexpr, ALIGNED4: tl.constexpr, PERMUTED: tl.constexpr,
    BLOCK: tl.constexpr,
):
    pid = tl.program_id(0)
    b = (pid // n_blk).to(tl.int64)
    blk = pid % n_blk
    d = blk.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = d < D

    # ---- per-sample scalars: one table row, read once per program ------------------------------
    row, valid = _row(coef_ptr, n_rows, t_ptr, t_value, b, T_FROM_PTR, T_PER_SAMPLE)
    cp = coef_ptr + row * _NC
    al = tl.load(cp + _C_AL).to(CT)
    sg = tl.load(cp + _C_SG).to(CT)
    alp = tl.load(cp + _C_ALP).to(CT)
    sp2 = tl.load(cp + _C_SP2).to(CT)
    sigma = tl.cast(eta, CT) * tl.sqrt(tl.load(cp + _C_VAR).to(CT))
    c_eps = tl.sqrt(tl.maximum(sp2 - sigma * sigma, 0.0))
    g = b + _scalar(off_ptr, off_value, OFF_FROM_PTR)  # the sample's global index: its RNG counters
    base = g * D

    # ---- one read of x and of the model output (both halves under fused CFG) --------------------
    x = tl.load(x_ptr + b * x_bs + d, mask=mask, other=0.0).to(CT)
    m = tl.load(m_ptr + b * m_bs + d, mask=mask, other=0.0).to(CT)
    if CFG:
        mc = tl.load(m_ptr + m_half + b * m_bs + d, mask=mask, other=0.0).to(CT)
        m = m + tl.cast(guidance, CT) * (mc - m)

    if PRED == _EPS:
        x0 = (x - sg * m) / al
        eps = m
    elif PRED == _SAMPLE:
        x0 = m
        eps = (x - al * x0) / sg
    elif PRED == _V:
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
    seed = _scalar(seed_ptr, seed_value, SEED_FROM_PTR)
    dl = _logical(d, n1, n2, l0, l1, l2, PERMUTED)
    if MIX:
        apply = (tl.load(cp + _C_FINAL) == 0) | OFFSET_FINAL
        jk = tl.arange(0, KP)
        cdf = tl.load(cdf_ptr + jk)
        k = tl.minimum(tl.sum((cdf <= uniform_at(seed, g, _STREAM_CHOICE)).to(tl.int32), axis=0), K - 1)
        k = k.to(tl.int64)
        srow, table_ok = _table_row(coef_ptr, row, n_tables, SHARED)
        valid = valid & table_ok  # a step beyond the mixture's tables poisons its sample, never reads past them
        delta = tl.load(delta_ptr + (srow * K + k) * D + dl, mask=mask, other=0.0).to(CT)
        prev += tl.where(apply, delta, 0.0)

    # ---- noise ----------------------------------------------------------------------------------
    if NOISE != _NOISE_NONE:
        z = _noise(z_ptr, z_bs, seed, b, d, base, dl, base + blk.to(tl.int64) * BLOCK, mask, NOISE, ALIGNED4,
                   PERMUTED, BLOCK).to(CT)
        if MIX and VAR_MODE == _VAR_DIAG:    # diag: σ² - w_k diag(C)_d
            u = tl.load(var_ptr + srow * D + dl, mask=mask, other=0.0).to(CT)
            sub = tl.load(wk_ptr + k).to(CT) * u
            std = tl.where(sub > 0, tl.sqrt(tl.maximum(sigma * sigma - sub, 0.0)), sigma)  # σ itself if no-op
            prev += tl.where(apply, std, sigma) * z
        elif MIX and VAR_MODE == _VAR_VUB:  # vub: σ² - ub[k, d] on the first K coordinates
            ub = tl.load(var_ptr + k * K + dl, mask=mask & (dl < K), other=0.0).to(CT)
            std = tl.where(ub > 0, tl.sqrt(tl.maximum(sigma * sigma - ub, 0.0)), sigma)
            prev += tl.where(apply, std, sigma) * z
        elif MIX and VAR_MODE == _VAR_EXACT:  # exact: σ z + Qᵀ((√(σ² - w_k λ) - σ) ⊙ Q z) on span{δ}
            jk = tl.arange(0, KP)
            p = tl.arange(0, NPART)
            parts = tl.load(part_ptr + (b * n_blk + p[:, None]) * KP + jk[None, :],
                            mask=(p < n_blk)[:, None], other=0.0)
            proj = tl.sum(parts, axis=0).to(CT)
            lam = tl.load(eig_ptr + srow * KP + jk).to(CT)
            wk = tl.load(wk_ptr + k).to(CT)
            sub = wk * lam
            cj = tl.where(sub > 0, tl.sqrt(tl.maximum(sigma * sigma - sub, 0.0)) - sigma, 0.0) * proj
            qt = tl.load(basis_ptr + (srow * KP + jk[:, None]) * D + dl[None, :], mask=mask[None, :], other=0.0)
            corr = tl.sum(qt.to(CT) * cj[:, None], axis=0)
            prev += sigma * z
            prev += tl.where(apply, corr, 0.0)
        else:
            prev += sigma * z

    # An out-of-table timestep (or mixture step) poisons its sample (NaN) instead of reading out of bounds.
    nan_if_bad = tl.where(valid, 0.0, float("nan")).to(CT)
    o = b * D + d
    tl.store(out_ptr + o, (prev + nan_if_bad).to(out_ptr.dtype.element_ty), mask=mask)
    if WRITE_X0:
        tl.store(x0_ptr + o, (x0 + nan_if_bad).to(x0_ptr.dtype.element_ty), mask=mask)


@dataclass(frozen=True)
class LaunchConfig:
    block: int
    num_warps: int


def default_config(D: int, device: torch.device) -> LaunchConfig:
    """Launch shape. GPU: 4096-wide blocks, 8 warps (the settings at which an elementwise fp32 / bf16 kernel with
    in-kernel Philox reached copy bandwidth on an H100 in earlier measurements). Interpreter: few, large programs
    (its cost is per program)."""
    if device.type == "cuda":
        return LaunchConfig(block=min(4096, max(256, triton.next_power_of_2(D))), num_warps=8 if D >= 4096 else 4)
    return LaunchConfig(block=min(16384, max(16, triton.next_power_of_2(D))), num_warps=4)


def launch_step(a, *, t_tensor, t_value, seed_tensor, seed_value, off_tensor, off_value,
                config: LaunchConfig | None = None):
    """Launches the (optional) projection pass and the step kernel for the op's resolved ``a``
    (backends.StepArgs). All checks are the op's (ops.py)."""
    x, m, noise, mix = a.x, a.m, a.noise, a.mixture
    D, B = a.D, a.B
    cfgl = config or default_config(D, x.device)
    BLOCK = cfgl.block
    n_blk = triton.cdiv(D, BLOCK)
    grid = (B * n_blk,)
    aligned4 = D % 4 == 0 and BLOCK % 4 == 0
    dummy = a.coef  # any valid pointer for arguments a constexpr switch leaves unread
    z_bs = noise.stride(0) if noise is not None else 0
    t_from_ptr = t_tensor is not None
    per_sample = t_from_ptr and t_tensor.numel() > 1
    lay = a.layout
    (_, n1, n2), (l0, l1, l2) = (lay.sizes, lay.lstrides) if lay is not None else ((1, 1, 1), (0, 0, 1))
    common = dict(T_FROM_PTR=t_from_ptr, T_PER_SAMPLE=per_sample, SEED_FROM_PTR=seed_tensor is not None,
                  OFF_FROM_PTR=off_tensor is not None, ALIGNED4=aligned4, PERMUTED=a.layout is not None,
                  BLOCK=BLOCK, num_warps=cfgl.num_warps)
    seed_ptr = seed_tensor if seed_tensor is not None else dummy
    off_ptr = off_tensor if off_tensor is not None else dummy
    t_ptr = t_tensor if t_from_ptr else dummy
    n_tables = mix.num_tables if mix is not None else 1
    var_code = contract.VAR_CODES[a.variance_mode]
    part, npart = dummy, 1
    if var_code == contract.VAR_CODES["exact"] and a.noise_mode != contract.NOISE_NONE:
        part = torch.empty((B, n_blk, mix.kp), device=x.device, dtype=torch.float32)
        npart = triton.next_power_of_2(n_blk)
        _project_kernel[grid](
            noise if noise is not None else dummy, z_bs, seed_ptr, seed_value, off_ptr, off_value, a.coef,
            a.coef.shape[0], t_ptr, t_value, mix.basis, part, D, n_blk, n_tables, n1, n2, l0, l1, l2,
            KP=mix.kp, SHARED=mix.shared, NOISE=a.noise_mode, **common,
        )
    opt = lambda t: t if t is not None else dummy  # noqa: E731
    _ddim_step_kernel[grid](
        x, m, opt(noise), a.out, a.x0 if a.write_x0 else a.out,
        a.coef, a.coef.shape[0], t_ptr, t_value, seed_ptr, seed_value, off_ptr, off_value, opt(a.threshold),
        *(opt(t) for t in (mix.op_tensors() if mix is not None else (None,) * 6)), part,
        D, n_blk, n_tables, x.stride(0), m.stride(0), B * m.stride(0), z_bs, n1, n2, l0, l1, l2,
        float(a.eta), float(a.clip) if a.clip is not None else 0.0,
        float(a.guidance) if a.guidance is not None else 0.0,
        CT=tl.float64 if x.dtype == torch.float64 else tl.float32, PRED=contract.PRED_CODES[a.prediction_type],
        NOISE=a.noise_mode, VAR_MODE=var_code, MIX=mix is not None, K=mix.k if mix is not None else 1,
        KP=mix.kp if mix is not None else 1, SHARED=mix.shared if mix is not None else True, NPART=npart,
        CLIP=a.clip is not None, THRESH=a.threshold is not None, CLIPPED_EPS=a.clipped_eps,
        CFG=a.guidance is not None, OFFSET_FINAL=a.offset_final, WRITE_X0=a.write_x0, **common,
    )
