"""The fused sampling step: one pass over [B, D] that turns the network's prediction into the next sample.

Per program: one sample b and one BLOCK of its D elements. The per-sample scalars (the coefficient row of
its timestep, the mixture component k, the threshold) are loaded once per program; the element loop reads
``sample`` and ``model_output`` once (both CFG halves when guidance is fused), draws the noise in-kernel
(Philox stream 0) or reads a caller's tensor, and writes ``prev_sample`` and, if asked, x̂₀. The maths is
stated in ``reference.py``; this file only says how it is laid out.

The ``"exact"`` mixture variance needs, per sample, the projection of its noise on the offsets' span — a
reduction over D. ``_project_kernel`` computes it first from the noise alone (drawn there from Philox and stored,
σ-scaled, for the step to read; or the caller's noise), as per-tile partial sums; the step kernel adds them up.
So ``sample`` and ``model_output`` are still read exactly once, and the noise is drawn once.

Grid: (sample, tile) — the batch on the grid's x axis (up to 2³¹ − 1), the tiles of a sample on y (up to 65535).

Layouts: a program's elements are positions j of its sample's block in memory. With ``PERMUTED`` (a dense
layout such as channels_last, backends.Layout) position j holds logical element d(j); the loads and stores stay
coalesced at j and only the RNG counter and the mixture tables, which the contract defines on logical indices,
use d(j) (one Philox group per element there instead of one per four).
"""
from dataclasses import dataclass, fields

import torch
import triton
import triton.language as tl

from .. import contract
from .common import fast_math, sample_key, sample_row
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
_C_S = tl.constexpr(contract.COL_S)
_C_ALP = tl.constexpr(contract.COL_ALPHA_PREV)
_C_SP2 = tl.constexpr(contract.COL_S_PREV2)
_C_VAR = tl.constexpr(contract.COL_VAR)
_C_FINAL = tl.constexpr(contract.COL_FINAL)
_C_STEP = tl.constexpr(contract.COL_STEP)
_NO_MASK, _MASKED, _SPLIT = tl.constexpr(0), tl.constexpr(1), tl.constexpr(2)  # how a tile's edges are masked


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
def _table_row(coef_ptr, row, n_tables, SHARED: tl.constexpr):
    """The mixture step table of a coefficient row, whether it exists, and a clamped index safe to read."""
    if SHARED:
        return 0, True
    else:
        srow = tl.load(coef_ptr + row * _NC + _C_STEP).to(tl.int64)
        ok = (srow >= 0) & (srow < n_tables)
        return tl.where(ok, srow, 0), ok


@triton.jit
def _tile(b, blk, D, BLOCK: tl.constexpr, ALIGN: tl.constexpr):
    """The program's tile of sample b: memory positions d = start + [0, BLOCK) of the block, in a frame aligned to
    ALIGN elements of the flat [B, D] array (start = blk·BLOCK − (b·D mod ALIGN)), so that every tile but a sample's
    first and last is a run of whole 16-byte vectors, and (ALIGN ≥ 4) whole Philox groups, whatever D is."""
    start = tl.multiple_of(blk * BLOCK - ((b * D) % ALIGN), ALIGN)
    d = start + tl.arange(0, BLOCK)
    return start, d, (d >= 0) & (d < D)


@triton.jit
def _ld(ptr, off, d0, mask, VEC: tl.constexpr, ALIGN: tl.constexpr, MASKED: tl.constexpr, BLOCK: tl.constexpr):
    """Loads ptr[off + d0 + (0 .. BLOCK-1)]: 16-byte vectors when VEC (off + d0 is a multiple of ALIGN) and the
    tile is either unmasked or its masks are constant over a vector (the launcher's MASK mode)."""
    o = off + d0
    if VEC:
        o = tl.multiple_of(o, ALIGN)
    p = ptr + o + tl.arange(0, BLOCK)
    if MASKED:
        return tl.load(p, mask=mask, other=0.0)
    else:
        return tl.load(p)


@triton.jit
def _st(ptr, off, d0, v, mask, VEC: tl.constexpr, ALIGN: tl.constexpr, MASKED: tl.constexpr, BLOCK: tl.constexpr):
    o = off + d0
    if VEC:
        o = tl.multiple_of(o, ALIGN)
    p = ptr + o + tl.arange(0, BLOCK)
    v = v.to(ptr.dtype.element_ty)
    if MASKED:
        tl.store(p, v, mask=mask)
    else:
        tl.store(p, v)


@triton.jit
def _table(ptr, row_off, start, dl, mask, TVEC: tl.constexpr, MASKED: tl.constexpr, BLOCK: tl.constexpr):
    """A mixture table row at the tile's logical indices: with TVEC (not permuted, tiles unshifted so start is a
    multiple of BLOCK, D a multiple of 8 so rows are 16-byte aligned) a contiguous vector load, otherwise a masked
    gather."""
    if TVEC:
        TA: tl.constexpr = 128 // ptr.dtype.element_ty.primitive_bitwidth  # elements of a 16-byte vector
        return _ld(ptr, row_off, start, mask, True, TA, MASKED, BLOCK)
    else:
        return tl.load(ptr + row_off + dl, mask=mask, other=0.0)


@triton.jit
def _noise(z_ptr, z_off, seed, scale, rho2, base, start, dl, mask, NOISE: tl.constexpr, ALIGNED4: tl.constexpr,
           PERMUTED: tl.constexpr, FAST: tl.constexpr, VEC: tl.constexpr, ALIGN: tl.constexpr,
           MASKED: tl.constexpr, RHO: tl.constexpr, BLOCK: tl.constexpr):
    """−scale (·√rho2 per element with RHO) × the tile's noise (negated: the caller subtracts it, which folds the
    Box–Muller sign into its multiply-add): Philox normals at flat indices base + logical index (base + start +
    [0, BLOCK) unless permuted; scale and rho2 then ride on the Box–Muller radius), or the caller's tensor at the
    tile's memory positions."""
    if NOISE == _NOISE_PHILOX:
        if PERMUTED:
            return normal_at(seed, base + dl, _STREAM_NOISE, FAST, scale, rho2, RHO)
        else:
            return normal_block(seed, base + start, BLOCK, _STREAM_NOISE, ALIGNED4, FAST, ALIGN, scale, rho2, RHO)
    else:
        z = _ld(z_ptr, z_off, start, mask, VEC, ALIGN, MASKED, BLOCK) * -scale  # fp64 stays fp64
        if RHO:  # √1 taken as 1 exactly, so that K = 1 or s = 0 stays DDIM bit for bit
            z = z * tl.where(rho2 < 1.0, tl.sqrt(rho2), 1.0)
        return z


@triton.jit(do_not_specialize=["t_value", "seed_value", "off_value", "eta"])
def _project_kernel(
    z_ptr, z_bs, zout_ptr, seed_ptr, seed_value, off_ptr, off_value, coef_ptr, n_rows, t_ptr, t_value, basis_ptr,
    part_ptr, D, n_blk, n_tables, n1, n2, l0, l1, l2, eta: tl.float64, S: tl.constexpr,
):
    """The "exact" variance's first pass: part[b, tile, j] = Σ_{d in tile} Q[srow_b, j, d] σ_b z[b, d], the σ-scaled
    noise's projection on the offsets' span, one basis row at a time (no [K, BLOCK] tile in registers). Philox noise
    is drawn here once, as the Gaussian step draws it (−σz, σ on the Box–Muller radius), and stored in zout (float32,
    the tile's memory order) for the step to read, rather than drawn a second time there. S: a ProjectSpec."""
    b = tl.program_id(0).to(tl.int64)
    blk = tl.program_id(1)
    start, d, mask = _tile(b, blk.to(tl.int64), D, S.BLOCK, S.ALIGN)
    MASKED: tl.constexpr = S.MASK != _NO_MASK  # this pass reads few element streams: no full / edge split
    dl = _logical(d, n1, n2, l0, l1, l2, S.PERMUTED)
    row, _ = sample_row(coef_ptr, n_rows, t_ptr, t_value, b, S.T_FROM_PTR, S.T_PER_SAMPLE)
    srow, _ = _table_row(coef_ptr, row, n_tables, S.SHARED)
    sigma = tl.cast(eta, tl.float32) * tl.sqrt(tl.load(coef_ptr + row * _NC + _C_VAR).to(tl.float32))  # as the step
    seed, g = sample_key(seed_ptr, seed_value, off_ptr, off_value, b, S.SEED_FROM_PTR, S.SEED_PER_SAMPLE,
                         S.OFF_FROM_PTR)
    zneg = _noise(z_ptr, b * z_bs, seed, sigma, 1.0, g * D, start, dl, mask, S.NOISE, S.ALIGNED4, S.PERMUTED, S.FAST,
                  S.VEC, S.ALIGN, MASKED, False, S.BLOCK).to(tl.float32)  # −σz
    if S.NOISE == _NOISE_PHILOX:
        _st(zout_ptr, b * D, start, zneg, mask, S.VEC, S.ALIGN, MASKED, S.BLOCK)
    zneg = tl.where(mask, zneg, 0.0)
    KP: tl.constexpr = S.KP  # (an attribute of a constexpr is a plain value: static_range wants a constexpr)
    for j in tl.static_range(KP):
        q = _table(basis_ptr, (srow * S.KP + j) * D, start, dl, mask, S.TVEC, MASKED, S.BLOCK).to(tl.float32)
        tl.store(part_ptr + (b * n_blk + blk) * S.KP + j, -tl.sum(q * zneg, axis=0))


@triton.jit
def _tile_step(ptrs, geo, scal, S: tl.constexpr, MASKED: tl.constexpr):
    """The step's element work on one tile, from the loads to the stores: the kernel's pointers, the tile's geometry
    and the per-sample scalars come in as three tuples, the launch's constexprs as its StepSpec S; MASKED: this
    tile's loads and stores are masked."""
    x_ptr, m_ptr, z_ptr, out_ptr, x0_ptr, thr_ptr, delta_ptr, wk_ptr, var_ptr, basis_ptr, eig_ptr, part_ptr = ptrs
    b, start, d, mask, D, n_blk, x_bs, m_bs, m_half, z_bs, n1, n2, l0, l1, l2 = geo
    clip, guidance, seed, g, sigma, al, s_t, alp, c_eps, poison, apply, k, srow = scal
    CT: tl.constexpr = S.CT
    VEC: tl.constexpr = S.VEC
    ALIGN: tl.constexpr = S.ALIGN
    BLOCK: tl.constexpr = S.BLOCK
    POISON_X0: tl.constexpr = S.CLIP or S.THRESH or S.PRED == _SAMPLE  # x̂₀ does not carry a scalar's NaN there

    # ---- one read of x and of the model output (both halves under fused CFG) --------------------
    x = _ld(x_ptr, b * x_bs, start, mask, VEC, ALIGN, MASKED, BLOCK).to(CT)
    m = _ld(m_ptr, b * m_bs, start, mask, VEC, ALIGN, MASKED, BLOCK).to(CT)
    if S.CFG:
        mc = _ld(m_ptr, m_half + b * m_bs, start, mask, VEC, ALIGN, MASKED, BLOCK).to(CT)
        m = m + tl.cast(guidance, CT) * (mc - m)

    if S.PRED == _EPS:
        inv_al = 1.0 / al + poison  # one multiply per element instead of a divide
        x0 = (x - s_t * m) * inv_al
        eps = m
    elif S.PRED == _SAMPLE:
        x0 = m
        eps = (x - al * x0) * (1.0 / s_t)
    elif S.PRED == _V:
        al = al + poison
        x0 = al * x - s_t * m
        eps = al * m + s_t * x
    else:            # flow velocity v = x1 - x0
        s_t = s_t + poison
        x0 = x - s_t * m
        eps = x + al * m
    if S.THRESH:
        q = tl.load(thr_ptr + b).to(CT)
        x0 = tl.minimum(tl.maximum(x0, -q), q) * (1.0 / q)
    elif S.CLIP:
        cl = tl.cast(clip, CT)
        x0 = tl.minimum(tl.maximum(x0, -cl), cl)
    if POISON_X0:
        x0 = x0 + poison
    if S.CLIPPED_EPS:
        eps = (x - al * x0) * (1.0 / s_t)
    prev = alp * x0 + c_eps * eps

    # ---- the mixture's offset --------------------------------------------------------------------
    dl = _logical(d, n1, n2, l0, l1, l2, S.PERMUTED)
    if S.MIX:
        delta = _table(delta_ptr, (srow * S.K + k) * D, start, dl, mask, S.TVEC, MASKED, BLOCK).to(CT)
        prev += delta * apply.to(CT)

    # ---- noise: z = −σ × the normals (negated: subtracting it folds the Box–Muller sign into one multiply-add) ----
    if S.NOISE != _NOISE_NONE:
        # diag / vub: component k's std is σ ρ_d, ρ_d² = max(1 − sub_d/σ², 0), applied inside the Box–Muller square
        # root; ρ² = 1 exactly where nothing is subtracted, so K = 1 or s = 0 gives DDIM bit for bit
        RHO: tl.constexpr = S.MIX and (S.VAR_MODE == _VAR_DIAG or S.VAR_MODE == _VAR_VUB)
        rho2 = 1.0
        if RHO:
            # where the offsets do not apply (or σ = 0), c → 0 makes ρ = 1: a scalar, not a per-element select
            c = tl.where((sigma > 0) & apply, 1.0 / tl.maximum(sigma * sigma, 1e-30), 0.0)
            if S.VAR_MODE == _VAR_DIAG:  # diag: sub_d = w_k diag(C)_d
                c = c * tl.load(wk_ptr + k).to(CT)
                u = _table(var_ptr, srow * D, start, dl, mask, S.TVEC, MASKED, BLOCK).to(CT)
            else:  # vub: sub_d = ub[k, d] on the first K coordinates
                u = tl.load(var_ptr + k * S.K + dl, mask=mask & (dl < S.K), other=0.0).to(CT)
            rho2 = tl.maximum(1.0 - c * u, 0.0).to(tl.float32)  # it rides on the (float32) Box–Muller radius
        if S.ZNEG:  # the exact mode's projection pass drew −σz already (float32)
            z = _noise(z_ptr, b * z_bs, seed, -1.0, 1.0, g * D, start, dl, mask, S.NOISE, S.ALIGNED4, S.PERMUTED,
                       S.FAST, VEC, ALIGN, MASKED, False, BLOCK).to(CT)
        elif CT == tl.float64:  # σ applied in fp64
            z = sigma * _noise(z_ptr, b * z_bs, seed, 1.0, rho2, g * D, start, dl, mask, S.NOISE, S.ALIGNED4,
                               S.PERMUTED, S.FAST, VEC, ALIGN, MASKED, RHO, BLOCK).to(CT)
        else:  # σ rides on the Box–Muller radius: one multiply per pair of normals
            z = _noise(z_ptr, b * z_bs, seed, sigma, rho2, g * D, start, dl, mask, S.NOISE, S.ALIGNED4, S.PERMUTED,
                       S.FAST, VEC, ALIGN, MASKED, RHO, BLOCK)
        prev -= z
        if S.MIX and S.VAR_MODE == _VAR_EXACT:
            # exact: σz + Qᵀ((√(1 − w_k λ/σ²) − 1) ⊙ Q σz) on span{δ}, one basis row at a time; the projections of
            # σz come from the first pass. Where the offsets do not apply (or σ = 0), every coefficient is 0.
            c = tl.where((sigma > 0) & apply, tl.load(wk_ptr + k).to(CT) / tl.maximum(sigma * sigma, 1e-30), 0.0)
            p = tl.arange(0, S.NPART)
            KP: tl.constexpr = S.KP  # (an attribute of a constexpr is a plain value: static_range wants a constexpr)
            for j in tl.static_range(KP):
                proj = tl.sum(tl.load(part_ptr + (b * n_blk + p) * S.KP + j, mask=p < n_blk, other=0.0), axis=0)
                u = c * tl.load(eig_ptr + srow * S.KP + j).to(CT)
                cj = tl.where(u > 0, tl.sqrt(tl.maximum(1.0 - u, 0.0)) - 1.0, 0.0) * proj.to(CT)
                prev += cj * _table(basis_ptr, (srow * S.KP + j) * D, start, dl, mask, S.TVEC, MASKED, BLOCK).to(CT)

    _st(out_ptr, b * D, start, prev, mask, VEC, ALIGN, MASKED, BLOCK)
    if S.WRITE_X0:
        _st(x0_ptr, b * D, start, x0, mask, VEC, ALIGN, MASKED, BLOCK)


@triton.jit(do_not_specialize=["t_value", "seed_value", "off_value", "eta", "clip", "guidance"])
def _ddim_step_kernel(
    x_ptr, m_ptr, z_ptr, out_ptr, x0_ptr,
    coef_ptr, n_rows, t_ptr, t_value, seed_ptr, seed_value, off_ptr, off_value, thr_ptr,
    delta_ptr, cdf_ptr, wk_ptr, var_ptr, basis_ptr, eig_ptr, part_ptr,
    D, n_blk, n_tables, x_bs, m_bs, m_half, z_bs, n1, n2, l0, l1, l2,
    eta: tl.float64, clip: tl.float64, guidance: tl.float64,  # fp64 scalars: an fp64 step keeps them exact
    S: tl.constexpr,  # the launch's StepSpec: every compile-time switch, derived once by launch_spec
):
    # A 2-D grid (sample, tile): no division of the program id.
    b = tl.program_id(0).to(tl.int64)
    blk = tl.program_id(1)
    start, d, mask = _tile(b, blk.to(tl.int64), D, S.BLOCK, S.ALIGN)
    CT: tl.constexpr = S.CT

    # ---- per-sample scalars, once per program: the table row, and an invalid row folded in as NaN ---------
    row, valid = sample_row(coef_ptr, n_rows, t_ptr, t_value, b, S.T_FROM_PTR, S.T_PER_SAMPLE)
    cp = coef_ptr + row * _NC
    seed, g = sample_key(seed_ptr, seed_value, off_ptr, off_value, b, S.SEED_FROM_PTR, S.SEED_PER_SAMPLE,
                         S.OFF_FROM_PTR)  # the sample's key and global index: its RNG counters
    apply = valid  # (the mixture's: placeholders when MIX is off)
    k = b * 0
    srow = b * 0
    if S.MIX:
        apply = (tl.load(cp + _C_FINAL) == 0) | S.OFFSET_FINAL
        jk = tl.arange(0, S.KP)
        cdf = tl.load(cdf_ptr + jk)
        k = tl.minimum(tl.sum((cdf <= uniform_at(seed, g, _STREAM_CHOICE, S.FAST)).to(tl.int32), axis=0), S.K - 1)
        k = k.to(tl.int64)
        srow, table_ok = _table_row(coef_ptr, row, n_tables, S.SHARED)
        valid = valid & table_ok  # a step beyond the mixture's tables poisons its sample, never reads past them
    # An out-of-table timestep (or mixture step) poisons its sample (NaN) instead of reading out of bounds; the
    # NaN rides on a per-program scalar that reaches every output, not on a per-element add.
    poison = tl.where(valid, 0.0, float("nan")).to(CT)
    al = tl.load(cp + _C_AL).to(CT)
    s_t = tl.load(cp + _C_S).to(CT)
    alp = tl.load(cp + _C_ALP).to(CT)
    s_prev2 = tl.load(cp + _C_SP2).to(CT)
    sigma = tl.cast(eta, CT) * tl.sqrt(tl.load(cp + _C_VAR).to(CT))
    c_eps = tl.sqrt(tl.maximum(s_prev2 - sigma * sigma, 0.0))

    # ---- the element work: full tiles without masks; with a ragged D, edge tiles masked in their own copy -------
    ptrs = (x_ptr, m_ptr, z_ptr, out_ptr, x0_ptr, thr_ptr, delta_ptr, wk_ptr, var_ptr, basis_ptr, eig_ptr, part_ptr)
    geo = (b, start, d, mask, D, n_blk, x_bs, m_bs, m_half, z_bs, n1, n2, l0, l1, l2)
    scal = (clip, guidance, seed, g, sigma, al, s_t, alp, c_eps, poison, apply, k, srow)
    if S.MASK == _SPLIT:
        if (start >= 0) & (start + S.BLOCK <= D):
            _tile_step(ptrs, geo, scal, S=S, MASKED=False)
        else:
            _tile_step(ptrs, geo, scal, S=S, MASKED=True)
    else:
        _tile_step(ptrs, geo, scal, S=S, MASKED=S.MASK == _MASKED)


@dataclass(frozen=True)
class LaunchConfig:
    block: int
    num_warps: int


def default_config(D: int, device: torch.device) -> LaunchConfig:
    """Launch shape. GPU: tiles of up to 8192 elements, 32 per thread (up to 8 warps): the per-thread scalar work
    (the program's table row, addresses, Philox keys) is then ~4 instructions per element instead of ~8 at 16 per
    thread, at 78 registers (fp16) / 125 (fp32) and no spill on sm_90 (benchmarks/RESULTS.md, static table).
    Interpreter: few, large programs (its cost is per program)."""
    if device.type == "cuda":
        block = min(8192, max(256, triton.next_power_of_2(D)))
        return LaunchConfig(block=block, num_warps=max(1, min(8, block // 1024)))
    return LaunchConfig(block=min(16384, max(16, triton.next_power_of_2(D))), num_warps=4)


def _mask_mode(D: int, BLOCK: int, align: int) -> int:
    if D % BLOCK == 0 and D % align == 0:  # every sample's tiles start at 0 and end at D
        return _NO_MASK.value
    return _MASKED.value if D % 16 == 0 else _SPLIT.value


@dataclass(frozen=True)
class ProjectSpec:
    """The compile-time switches of the "exact" mode's projection pass (the subset of StepSpec it reads)."""

    NOISE: int            # where the noise comes from (contract.NOISE_CODES): Philox or the caller's tensor
    KP: int               # the mixture's components padded to a power of two (the basis rows per step)
    SHARED: bool          # one mixture table for every step
    T_FROM_PTR: bool      # the timestep rows are read from a device tensor ...
    T_PER_SAMPLE: bool    # ... holding one row per sample
    SEED_FROM_PTR: bool   # the seed is read from a device tensor (else passed by value)
    SEED_PER_SAMPLE: bool  # one seed per sample (read from a device tensor), each sample at global index offset
    OFF_FROM_PTR: bool    # the sample offset is read from a device tensor (else passed by value)
    ALIGNED4: bool        # every tile starts on a whole Philox group (flat counter ≡ 0 mod 4)
    PERMUTED: bool        # a permuted dense layout (backends.Layout): logical indices for the RNG and tables
    FAST: bool            # the GPU's hardware approximations (kernels/common.fast_math)
    VEC: bool             # 16-byte vector accesses of the element streams
    ALIGN: int            # elements of a 16-byte vector (≥ 4): the tiles' alignment
    MASK: int             # how tile edges are masked: _NO_MASK, _MASKED, or _SPLIT (full tiles unmasked)
    TVEC: bool            # mixture table rows read as whole vectors
    BLOCK: int            # elements per program


@dataclass(frozen=True)
class StepSpec(ProjectSpec):
    """Every compile-time switch of the step kernel, derived once from the op's resolved arguments
    (:func:`launch_spec`) and handed to the kernel as one constexpr."""

    CT: object            # the compute type: tl.float64 for fp64 inputs, else tl.float32
    PRED: int             # prediction type (contract.PRED_CODES)
    VAR_MODE: int         # mixture variance mode (contract.VAR_CODES)
    MIX: bool             # the Gaussian-mixture kernel (offsets and a component per sample)
    K: int                # the mixture's components
    NPART: int            # projection partial sums per sample, padded to a power of two ("exact")
    CLIP: bool            # clamp x̂₀ to ±clip
    THRESH: bool          # dynamic thresholding (per-sample q)
    CLIPPED_EPS: bool     # recompute ε̂ from the clipped x̂₀
    CFG: bool             # fused classifier-free guidance over the [uncond; cond] halves
    OFFSET_FINAL: bool    # the mixture's offsets apply on the chain's last step too
    WRITE_X0: bool        # also store x̂₀
    ZNEG: bool            # the noise tensor holds the projection pass's −σz (float32), not standard normals

    @property
    def projected(self) -> bool:
        """The "exact" mode's noise needs the projection pass first."""
        return self.VAR_MODE == contract.VAR_CODES["exact"] and self.NOISE != contract.NOISE_NONE

    def projection(self) -> ProjectSpec:
        """The projection pass's switches: it draws the noise the step then reads back (ZNEG)."""
        sub = {f.name: getattr(self, f.name) for f in fields(ProjectSpec)}
        return ProjectSpec(**{**sub, "NOISE": contract.NOISE_PHILOX if self.ZNEG else self.NOISE})


def _n_tiles(D: int, block: int, align: int) -> int:
    """Tiles of a sample: its block starts -(b·D mod ALIGN) elements into the first (_tile)."""
    return triton.cdiv(D + (align - 1 if D % align else 0), block)


def launch_spec(a, *, t_tensor, seed_tensor, off_tensor, off_value: int, config: LaunchConfig) -> StepSpec:
    """The one place where the step's compile-time switches are derived from the op's resolved ``a``
    (backends.StepArgs) and the launch's device scalars (None: passed by value)."""
    x, mix, D = a.x, a.mixture, a.D
    BLOCK = config.block
    # The tiles of a sample start at -(b·D mod ALIGN): 16-byte vectors (ALIGN elements) and whole Philox groups.
    align = max(4, 16 // x.element_size())
    # flat counter of a tile's start = g·D + start, start ≡ −b·D (mod 4): with g = offset + b that is ≡ offset·D, a
    # multiple of 4 gives whole groups; with per-sample seeds (g = offset) only D ≡ 0 (mod 4) does for every sample
    per_sample = a.per_sample_seeds
    aligned4 = BLOCK % 4 == 0 and (D % 4 == 0 or (off_tensor is None and not per_sample and off_value * D % 4 == 0))
    z_bs = a.noise.stride(0) if a.noise is not None else D
    # vectors need every tensor's sample blocks to sit like out's (b·D) modulo a vector
    vec = all(s % align == D % align for s in (x.stride(0), a.m.stride(0), z_bs)) and \
        (a.guidance is None or (a.B * a.m.stride(0)) % align == 0)
    var_code = contract.VAR_CODES[a.variance_mode]
    projected = var_code == contract.VAR_CODES["exact"] and a.noise_mode != contract.NOISE_NONE
    zneg = projected and a.noise is None  # the step reads the −σz the projection drew: one draw per element
    return StepSpec(
        NOISE=contract.NOISE_TENSOR if zneg else a.noise_mode, KP=mix.kp if mix is not None else 1,
        SHARED=mix.shared if mix is not None else True, T_FROM_PTR=t_tensor is not None,
        T_PER_SAMPLE=t_tensor is not None and t_tensor.numel() > 1, SEED_FROM_PTR=seed_tensor is not None,
        SEED_PER_SAMPLE=per_sample, OFF_FROM_PTR=off_tensor is not None, ALIGNED4=aligned4, PERMUTED=a.layout is not None,
        FAST=fast_math(x.device), VEC=vec, ALIGN=align, MASK=_mask_mode(D, BLOCK, align),
        TVEC=a.layout is None and D % align == 0 and D % 8 == 0,  # mixture table rows as whole vectors
        BLOCK=BLOCK, CT=tl.float64 if x.dtype == torch.float64 else tl.float32,
        PRED=contract.PRED_CODES[a.prediction_type], VAR_MODE=var_code, MIX=mix is not None,
        K=mix.k if mix is not None else 1,
        NPART=triton.next_power_of_2(_n_tiles(D, BLOCK, align)) if projected else 1,
        CLIP=a.clip is not None, THRESH=a.threshold is not None, CLIPPED_EPS=a.clipped_eps,
        CFG=a.guidance is not None, OFFSET_FINAL=a.offset_final, WRITE_X0=a.write_x0, ZNEG=zneg,
    )


def launch_step(a, *, t_tensor, t_value, seed_tensor, seed_value, off_tensor, off_value,
                config: LaunchConfig | None = None):
    """Launches the (optional) projection pass and the step kernel for the op's resolved ``a``
    (backends.StepArgs). All checks are the op's (ops.py)."""
    x, m, noise, mix = a.x, a.m, a.noise, a.mixture
    D, B = a.D, a.B
    cfgl = config or default_config(D, x.device)
    off_host = 0 if off_tensor is not None else off_value
    S = launch_spec(a, t_tensor=t_tensor, seed_tensor=seed_tensor, off_tensor=off_tensor, off_value=off_host,
                    config=cfgl)
    n_blk = _n_tiles(D, S.BLOCK, S.ALIGN)
    if n_blk > 65535:  # the grid's y axis
        raise ValueError(f"a sample of {D} elements needs {n_blk} tiles of {S.BLOCK}: more than the 65535 a CUDA grid "
                         f"allows; pass a larger LaunchConfig block")
    grid = (B, n_blk)
    z_bs = noise.stride(0) if noise is not None else 0
    dummy = a.coef  # any valid pointer for arguments a constexpr switch leaves unread
    lay = a.layout
    (_, n1, n2), (l0, l1, l2) = (lay.sizes, lay.lstrides) if lay is not None else ((1, 1, 1), (0, 0, 1))
    seed_ptr = seed_tensor if seed_tensor is not None else dummy
    off_ptr = off_tensor if off_tensor is not None else dummy
    t_ptr = t_tensor if t_tensor is not None else dummy
    n_tables = mix.num_tables if mix is not None else 1
    part = dummy
    if S.projected:
        part = torch.empty((B, n_blk, mix.kp), device=x.device, dtype=torch.float32)
        zbuf = torch.empty((B, D), device=x.device, dtype=torch.float32) if S.ZNEG else dummy
        _project_kernel[grid](
            noise if noise is not None else dummy, z_bs, zbuf, seed_ptr, seed_value, off_ptr, off_value, a.coef,
            a.coef.shape[0], t_ptr, t_value, mix.basis, part, D, n_blk, n_tables, n1, n2, l0, l1, l2, float(a.eta),
            S=S.projection(), num_warps=cfgl.num_warps,
        )
        if S.ZNEG:
            noise, z_bs = zbuf, D
    opt = lambda t: t if t is not None else dummy  # noqa: E731
    _ddim_step_kernel[grid](
        x, m, opt(noise), a.out, a.x0 if a.write_x0 else a.out,
        a.coef, a.coef.shape[0], t_ptr, t_value, seed_ptr, seed_value, off_ptr, off_value, opt(a.threshold),
        *(opt(t) for t in (mix.op_tensors() if mix is not None else (None,) * 6)), part,
        D, n_blk, n_tables, x.stride(0), m.stride(0), B * m.stride(0), z_bs, n1, n2, l0, l1, l2,
        float(a.eta), float(a.clip) if a.clip is not None else 0.0,
        float(a.guidance) if a.guidance is not None else 0.0,
        S=S, num_warps=cfgl.num_warps,
    )
