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

Pixel tiles (``CH`` = C > 0: channels_last and mixed channels_last / contiguous launches, backends.StepArgs.pixels):
a sample is a [C, HW] logical block and a program takes pixels p0 + [0, PB) of every channel (PB = BLOCK / C). A
channels_last stream holds that tile as one run [PB, C] in memory, a contiguous one as C rows of PB; each is read
coalesced in its own order and transposed in registers (through shared memory: ``tl.trans``) into the compute
order, which is ``out``'s (``CL``). The noise and the mixture rows are produced in logical order as [C, PB] rows —
contiguous Philox counters (one group per four elements, as for contiguous tiles) and vector table loads — and
transposed once into the compute order; the exact mode's basis sums run in logical order (one transpose each way).
"""
from dataclasses import dataclass, fields

import torch
import triton
import triton.language as tl

from .. import contract
from .common import NOISE_NONE, NOISE_PHILOX, NOISE_TENSOR, STREAM_CHOICE, STREAM_NOISE, check_noise_code, \
    fast_math, load_run, sample_key, sample_row, store_run
from .philox import normal_at, normal_block, normal_rows, uniform_at

# the contract's codes, as the compile-time constants Triton requires of globals
_EPS = tl.constexpr(contract.PRED_CODES["epsilon"])
_SAMPLE = tl.constexpr(contract.PRED_CODES["sample"])
_V = tl.constexpr(contract.PRED_CODES["v_prediction"])
_FLOW = tl.constexpr(contract.PRED_CODES["flow"])
_VAR_NONE = tl.constexpr(contract.VAR_CODES["none"])
_VAR_DIAG = tl.constexpr(contract.VAR_CODES["diag"])
_VAR_VUB = tl.constexpr(contract.VAR_CODES["vub"])
_VAR_EXACT = tl.constexpr(contract.VAR_CODES["exact"])
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
def _px_tile(blk, D, S: tl.constexpr):
    """A pixel tile (S.CH > 0): its first pixel p0, its logical indices c·HW + p0 + j as a [CH, PB] tensor, and
    their mask (pixels beyond HW)."""
    PB: tl.constexpr = S.BLOCK // S.CH
    ALIGN: tl.constexpr = S.ALIGN
    HW = D // S.CH
    if S.VEC:  # (the launcher checked HW % ALIGN == 0: vector loads of the mixture rows)
        HW = tl.multiple_of(HW, ALIGN)
    p0 = tl.multiple_of(blk * PB, PB)
    j = tl.arange(0, PB)[None, :]
    dl = tl.arange(0, S.CH)[:, None] * HW + p0 + j
    return p0, dl, tl.broadcast_to(p0 + j < HW, (S.CH, PB))


@triton.jit
def _ld_px(ptr, off, p0, D, SCL: tl.constexpr, VEC: tl.constexpr, ALIGN: tl.constexpr, MASKED: tl.constexpr,
           CH: tl.constexpr, PB: tl.constexpr):
    """A stream's pixel tile in its own order: SCL (channels_last) the run ptr[off + p0·CH + [0, PB·CH)], else the
    CH rows ptr[off + c·HW + p0 + [0, PB)] as [CH, PB] (16-byte vectors when VEC: HW and PB multiples of ALIGN)."""
    HW = D // CH
    if SCL:
        o = off + p0 * CH
        if VEC:
            o = tl.multiple_of(o, ALIGN)
        i = tl.arange(0, PB * CH)
        if MASKED:
            return tl.load(ptr + o + i, mask=p0 * CH + i < D, other=0.0)
        else:
            return tl.load(ptr + o + i)
    else:
        o = off + p0
        if VEC:
            o = tl.multiple_of(o, ALIGN)
            HW = tl.multiple_of(HW, ALIGN)
        j = tl.arange(0, PB)[None, :]
        p = ptr + o + tl.arange(0, CH)[:, None] * HW + j
        if MASKED:
            return tl.load(p, mask=tl.broadcast_to(p0 + j < HW, (CH, PB)), other=0.0)
        else:
            return tl.load(p)


@triton.jit
def _st_px(ptr, off, p0, v, D, SCL: tl.constexpr, VEC: tl.constexpr, ALIGN: tl.constexpr, MASKED: tl.constexpr,
           CH: tl.constexpr, PB: tl.constexpr):
    """Stores v (a run with SCL, else [CH, PB] rows: _ld_px's shapes) into the pixel tile of ptr."""
    HW = D // CH
    v = v.to(ptr.dtype.element_ty)
    if SCL:
        o = off + p0 * CH
        if VEC:
            o = tl.multiple_of(o, ALIGN)
        i = tl.arange(0, PB * CH)
        if MASKED:
            tl.store(ptr + o + i, v, mask=p0 * CH + i < D)
        else:
            tl.store(ptr + o + i, v)
    else:
        o = off + p0
        if VEC:
            o = tl.multiple_of(o, ALIGN)
            HW = tl.multiple_of(HW, ALIGN)
        j = tl.arange(0, PB)[None, :]
        p = ptr + o + tl.arange(0, CH)[:, None] * HW + j
        if MASKED:
            tl.store(p, v, mask=tl.broadcast_to(p0 + j < HW, (CH, PB)))
        else:
            tl.store(p, v)


@triton.jit
def _from_logical(v, S: tl.constexpr):
    """A [CH, PB] logical-order pixel tile in the compute order (a [BLOCK] vector); v itself without pixel tiles."""
    if S.CH > 0:
        if S.CL:
            return tl.reshape(tl.trans(v), (S.BLOCK,))
        else:
            return tl.reshape(v, (S.BLOCK,))
    else:
        return v


@triton.jit
def _to_logical(v, S: tl.constexpr):
    """The inverse of _from_logical."""
    if S.CH > 0:
        if S.CL:
            return tl.trans(tl.reshape(v, (S.BLOCK // S.CH, S.CH)))
        else:
            return tl.reshape(v, (S.CH, S.BLOCK // S.CH))
    else:
        return v


@triton.jit
def _lg(v, S: tl.constexpr, IN_LOGICAL: tl.constexpr):
    """A logical-order term in prev's order: the compute order (_from_logical), unless prev is in logical order."""
    if IN_LOGICAL:
        return v
    else:
        return _from_logical(v, S)


@triton.jit
def _ld_s(ptr, off, start, mask, D, S: tl.constexpr, SCL: tl.constexpr, MASKED: tl.constexpr):
    """An element stream's tile in the compute order: load_run, or with pixel tiles the stream read in its own order
    (SCL: channels_last) and transposed in registers where that is not the compute order."""
    if S.CH > 0:
        v = _ld_px(ptr, off, start, D, SCL, S.VEC, S.ALIGN, MASKED, S.CH, S.BLOCK // S.CH)
        if SCL:
            if S.CL:
                return v
            else:
                return tl.reshape(tl.trans(tl.reshape(v, (S.BLOCK // S.CH, S.CH))), (S.BLOCK,))
        else:
            return _from_logical(v, S)
    else:
        return load_run(ptr, off, start, mask, S.VEC, S.ALIGN, MASKED, S.BLOCK)


@triton.jit
def _st_s(ptr, off, start, v, mask, D, S: tl.constexpr, MASKED: tl.constexpr):
    """Stores a compute-order tile into an output (in the compute order: out's)."""
    if S.CH > 0:
        if S.CL:
            _st_px(ptr, off, start, v, D, True, S.VEC, S.ALIGN, MASKED, S.CH, S.BLOCK // S.CH)
        else:
            _st_px(ptr, off, start, tl.reshape(v, (S.CH, S.BLOCK // S.CH)), D, False, S.VEC, S.ALIGN, MASKED, S.CH,
                   S.BLOCK // S.CH)
    else:
        store_run(ptr, off, start, v, mask, S.VEC, S.ALIGN, MASKED, S.BLOCK)


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
def _table(ptr, row_off, start, dl, mask, TVEC: tl.constexpr, MASKED: tl.constexpr, BLOCK: tl.constexpr):
    """A mixture table row at the tile's logical indices: with TVEC (not permuted, tiles unshifted so start is a
    multiple of BLOCK, D a multiple of 8 so rows are 16-byte aligned) a contiguous vector load, otherwise a masked
    gather."""
    if TVEC:
        TA: tl.constexpr = 128 // ptr.dtype.element_ty.primitive_bitwidth  # elements of a 16-byte vector
        return load_run(ptr, row_off, start, mask, True, TA, MASKED, BLOCK)
    elif MASKED:
        return tl.load(ptr + row_off + dl, mask=mask, other=0.0)
    else:
        return tl.load(ptr + row_off + dl)


@triton.jit
def _noise(z_ptr, z_off, seed, scale, rho2, base, start, dl, mask, D, S: tl.constexpr, NOISE: tl.constexpr,
           MASKED: tl.constexpr, RHO: tl.constexpr):
    """−scale (·√rho2 per element with RHO) × the tile's noise (negated: the caller subtracts it, which folds the
    Box–Muller sign into its multiply-add): Philox normals at flat indices base + logical index (base + start +
    [0, BLOCK) unless permuted; scale and rho2 then ride on the Box–Muller radius), or the caller's tensor at the
    tile's memory positions. With pixel tiles (S.CH > 0) the noise comes in logical order, [CH, PB] (D: a
    sample's elements)."""
    ALIGNED4: tl.constexpr = S.ALIGNED4
    FAST: tl.constexpr = S.FAST
    VEC: tl.constexpr = S.VEC
    ALIGN: tl.constexpr = S.ALIGN
    BLOCK: tl.constexpr = S.BLOCK
    check_noise_code(NOISE)
    tl.static_assert(NOISE != NOISE_NONE, "_noise draws no noise for NOISE_NONE")
    if S.CH > 0:
        PB: tl.constexpr = BLOCK // S.CH
        if NOISE == NOISE_PHILOX:  # rows c·HW + p0 + [0, PB): whole Philox groups when ALIGNED4
            ROW: tl.constexpr = 8 if ALIGN == 8 and PB % 8 == 0 else 4
            rows = base + start + tl.arange(0, S.CH)[:, None] * (D // S.CH)
            return normal_rows(seed, rows, PB, STREAM_NOISE, ALIGNED4, FAST, ROW, scale, rho2, RHO)
        else:
            z = _ld_px(z_ptr, z_off, start, D, S.Z_CL, VEC, ALIGN, MASKED, S.CH, PB)
            if S.Z_CL:
                z = tl.trans(tl.reshape(z, (PB, S.CH)))
            z = z * -scale
            if RHO:
                z = z * tl.where(rho2 < 1.0, tl.sqrt(rho2), 1.0)
            return z
    elif NOISE == NOISE_PHILOX:
        if S.PERMUTED:
            return normal_at(seed, base + dl, STREAM_NOISE, FAST, scale, rho2, RHO)
        else:
            return normal_block(seed, base + start, BLOCK, STREAM_NOISE, ALIGNED4, FAST, ALIGN, scale, rho2, RHO)
    elif NOISE == NOISE_TENSOR:
        z = load_run(z_ptr, z_off, start, mask, VEC, ALIGN, MASKED, BLOCK) * -scale  # fp64 stays fp64
        if RHO:  # √1 taken as 1 exactly, so that K = 1 or s = 0 stays DDIM bit for bit
            z = z * tl.where(rho2 < 1.0, tl.sqrt(rho2), 1.0)
        return z


@triton.jit
def _check_codes(S: tl.constexpr):
    """Fails the compile (and the interpreter) on a code this kernel does not implement: every branch below is
    explicit, so an unknown code can never fall through to another code's maths."""
    tl.static_assert(S.PRED == _EPS or S.PRED == _SAMPLE or S.PRED == _V or S.PRED == _FLOW,
                     "unknown prediction code (contract.PRED_CODES)")
    tl.static_assert(S.VAR_MODE == _VAR_NONE or S.VAR_MODE == _VAR_DIAG or S.VAR_MODE == _VAR_VUB
                     or S.VAR_MODE == _VAR_EXACT, "unknown variance mode code (contract.VAR_CODES)")
    check_noise_code(S.NOISE)


@triton.jit(do_not_specialize=["t_value", "seed_value", "off_value", "eta"])
def _project_kernel(
    z_ptr, z_bs, zout_ptr, seed_ptr, seed_value, off_ptr, off_value, coef_ptr, n_rows, t_ptr, t_value, basis_ptr,
    part_ptr, D, n_blk, n_tables, n1, n2, l0, l1, l2, eta: tl.float64, S: tl.constexpr,
):
    """The "exact" variance's first pass: part[b, tile, j] = Σ_{d in tile} Q[srow_b, j, d] σ_b z[b, d], the σ-scaled
    noise's projection on the offsets' span, one basis row at a time (no [K, BLOCK] tile in registers). Philox noise
    is drawn here once, as the Gaussian step draws it (−σz, σ on the Box–Muller radius), and stored in zout (float32,
    the tile's memory order; logical order with pixel tiles) for the step to read, rather than drawn a second time
    there. S: a ProjectSpec."""
    b = tl.program_id(0).to(tl.int64)
    blk = tl.program_id(1)
    if S.CH > 0:
        start, dl, mask = _px_tile(blk.to(tl.int64), D, S)
    else:
        start, d, mask = _tile(b, blk.to(tl.int64), D, S.BLOCK, S.ALIGN)
        dl = _logical(d, n1, n2, l0, l1, l2, S.PERMUTED)
    MASKED: tl.constexpr = S.MASK != _NO_MASK  # this pass reads few element streams: no full / edge split
    row, _ = sample_row(coef_ptr, n_rows, t_ptr, t_value, b, S.T_FROM_PTR, S.T_PER_SAMPLE)
    srow, _ = _table_row(coef_ptr, row, n_tables, S.SHARED)
    sigma = tl.cast(eta, tl.float32) * tl.sqrt(tl.load(coef_ptr + row * _NC + _C_VAR).to(tl.float32))  # as the step
    seed, g = sample_key(seed_ptr, seed_value, off_ptr, off_value, b, S.SEED_FROM_PTR, S.SEED_PER_SAMPLE,
                         S.OFF_FROM_PTR)
    zneg = _noise(z_ptr, b * z_bs, seed, sigma, 1.0, g * D, start, dl, mask, D, S, S.NOISE, MASKED,
                  False).to(tl.float32)  # −σz
    if S.NOISE == NOISE_PHILOX:
        if S.CH > 0:  # logical rows: the step reads them as a contiguous noise stream
            _st_px(zout_ptr, b * D, start, zneg, D, False, S.VEC, S.ALIGN, MASKED, S.CH, S.BLOCK // S.CH)
        else:
            store_run(zout_ptr, b * D, start, zneg, mask, S.VEC, S.ALIGN, MASKED, S.BLOCK)
    zneg = tl.where(mask, zneg, 0.0)
    # a loop, not unrolled: unrolled, the K basis rows' loads were all issued ahead and spilled at K ≥ 32
    for j in tl.range(0, S.KP, loop_unroll_factor=1):
        q = _table(basis_ptr, (srow * S.KP + j) * D, start, dl, mask, S.TVEC, MASKED, S.BLOCK).to(tl.float32)
        tl.store(part_ptr + (b * n_blk + blk) * S.KP + j, -tl.sum(q * zneg, axis=None))


@triton.jit
def _tile_step(ptrs, geo, scal, S: tl.constexpr, MASKED: tl.constexpr):
    """The step's element work on one tile, from the loads to the stores: the kernel's pointers, the tile's geometry
    and the per-sample scalars come in as three tuples, the launch's constexprs as its StepSpec S; MASKED: this
    tile's loads and stores are masked."""
    x_ptr, m_ptr, z_ptr, out_ptr, x0_ptr, thr_ptr, delta_ptr, wk_ptr, var_ptr, basis_ptr, eig_ptr, part_ptr = ptrs
    b, start, d, mask, D, D_rng, n_blk, x_bs, m_bs, m_half, z_bs, n1, n2, l0, l1, l2 = geo
    clip, guidance, seed, g, sigma, al, s_t, alp, c_eps, poison, apply, k, srow = scal
    CT: tl.constexpr = S.CT
    VEC: tl.constexpr = S.VEC
    ALIGN: tl.constexpr = S.ALIGN
    BLOCK: tl.constexpr = S.BLOCK
    POISON_X0: tl.constexpr = S.CLIP or S.THRESH or S.PRED == _SAMPLE  # x̂₀ does not carry a scalar's NaN there

    # ---- one read of x and of the model output (both halves under fused CFG) --------------------
    x = _ld_s(x_ptr, b * x_bs, start, mask, D, S, S.X_CL, MASKED).to(CT)
    m = _ld_s(m_ptr, b * m_bs, start, mask, D, S, S.M_CL, MASKED).to(CT)
    if S.CFG:
        mc = _ld_s(m_ptr, m_half + b * m_bs, start, mask, D, S, S.M_CL, MASKED).to(CT)
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
    elif S.PRED == _FLOW:  # flow velocity v = x1 - x0
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
    # Pixel tiles: d is already the [CH, PB] logical indices, and each logical-order term below is transposed into
    # the compute order (_lg) — or, for the exact mode's K basis rows, prev goes to logical order and back (RT).
    dl = _logical(d, n1, n2, l0, l1, l2, S.PERMUTED)
    RT: tl.constexpr = S.CH > 0 and S.MIX and S.VAR_MODE == _VAR_EXACT and S.NOISE != NOISE_NONE
    if RT:
        prev = _to_logical(prev, S)
    if S.MIX:
        delta = _table(delta_ptr, (srow * S.K + k) * D, start, dl, mask, S.TVEC, MASKED, BLOCK).to(CT)
        prev += _lg(delta * apply.to(CT), S, RT)

    # ---- noise: z = −σ × the normals (negated: subtracting it folds the Box–Muller sign into one multiply-add) ----
    if S.NOISE != NOISE_NONE:
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
            elif S.VAR_MODE == _VAR_VUB:  # vub: sub_d = ub[k, d] on the first K coordinates
                u = tl.load(var_ptr + k * S.K + dl, mask=mask & (dl < S.K), other=0.0).to(CT)
            rho2 = tl.maximum(1.0 - c * u, 0.0).to(tl.float32)  # it rides on the (float32) Box–Muller radius
        if S.ZNEG:  # the exact mode's projection pass drew −σz already (float32)
            z = _noise(z_ptr, b * z_bs, seed, -1.0, 1.0, g * D_rng, start, dl, mask, D, S, S.NOISE, MASKED,
                       False).to(CT)
        elif CT == tl.float64:  # σ applied in fp64
            z = sigma * _noise(z_ptr, b * z_bs, seed, 1.0, rho2, g * D_rng, start, dl, mask, D, S, S.NOISE, MASKED,
                               RHO).to(CT)
        else:  # σ rides on the Box–Muller radius: one multiply per pair of normals
            z = _noise(z_ptr, b * z_bs, seed, sigma, rho2, g * D_rng, start, dl, mask, D, S, S.NOISE, MASKED, RHO)
        prev -= _lg(z, S, RT)
        if S.MIX and S.VAR_MODE == _VAR_EXACT:
            # exact: σz + Qᵀ((√(1 − w_k λ/σ²) − 1) ⊙ Q σz) on span{δ}, one basis row at a time; the projections of
            # σz come from the first pass. Where the offsets do not apply (or σ = 0), every coefficient is 0.
            c = tl.where((sigma > 0) & apply, tl.load(wk_ptr + k).to(CT) / tl.maximum(sigma * sigma, 1e-30), 0.0)
            p = tl.arange(0, S.NPART)
            # a loop, not unrolled: unrolled, the K basis rows' loads were all issued ahead (20 KB of spill at K = 64)
            for j in tl.range(0, S.KP, loop_unroll_factor=1):
                proj = tl.sum(tl.load(part_ptr + (b * n_blk + p) * S.KP + j, mask=p < n_blk, other=0.0), axis=0)
                u = c * tl.load(eig_ptr + srow * S.KP + j).to(CT)
                cj = tl.where(u > 0, tl.sqrt(tl.maximum(1.0 - u, 0.0)) - 1.0, 0.0) * proj.to(CT)
                # (logical order: with pixel tiles this is the RT case)
                prev += cj * _table(basis_ptr, (srow * S.KP + j) * D, start, dl, mask, S.TVEC, MASKED, BLOCK).to(CT)
    if RT:
        prev = _from_logical(prev, S)

    _st_s(out_ptr, b * D, start, prev, mask, D, S, MASKED)
    if S.WRITE_X0:
        _st_s(x0_ptr, b * D, start, x0, mask, D, S, MASKED)


@triton.jit(do_not_specialize=["t_value", "seed_value", "off_value", "eta", "clip", "guidance"])
def _ddim_step_kernel(
    x_ptr, m_ptr, z_ptr, out_ptr, x0_ptr,
    coef_ptr, n_rows, t_ptr, t_value, seed_ptr, seed_value, off_ptr, off_value, thr_ptr,
    delta_ptr, cdf_ptr, wk_ptr, var_ptr, basis_ptr, eig_ptr, part_ptr,
    D, D_rng, n_blk, n_tables, x_bs, m_bs, m_half, z_bs, n1, n2, l0, l1, l2,
    eta: tl.float64, clip: tl.float64, guidance: tl.float64,  # fp64 scalars: an fp64 step keeps them exact
    S: tl.constexpr,  # the launch's StepSpec: every compile-time switch, derived once by launch_spec
):
    """D: the extent a program's tiles cover (a sample's D, or B·D with FLAT); D_rng: a sample's D (its counters
    start at g·D_rng)."""
    _check_codes(S)
    # A 2-D grid (sample, tile): no division of the program id. FLAT: a 1-D grid of tiles of the flat array, b = 0.
    if S.FLAT:
        b = tl.program_id(1).to(tl.int64)  # (0)
        blk = tl.program_id(0)
    else:
        b = tl.program_id(0).to(tl.int64)
        blk = tl.program_id(1)
    if S.CH > 0:  # pixel tiles: d holds the [CH, PB] logical indices
        start, d, mask = _px_tile(blk.to(tl.int64), D, S)
    else:
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
        k = tl.minimum(tl.sum((cdf <= uniform_at(seed, g, STREAM_CHOICE, S.FAST)).to(tl.int32), axis=0), S.K - 1)
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
    geo = (b, start, d, mask, D, D_rng, n_blk, x_bs, m_bs, m_half, z_bs, n1, n2, l0, l1, l2)
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
    FAST: int             # the math mode of the RNG leaves: common.MATH_GPU on a GPU (kernels/philox.py)
    VEC: bool             # 16-byte vector accesses of the element streams
    ALIGN: int            # elements of a 16-byte vector (≥ 4): the tiles' alignment
    MASK: int             # how tile edges are masked: _NO_MASK, _MASKED, or _SPLIT (full tiles unmasked)
    TVEC: bool            # mixture table rows read as whole vectors
    BLOCK: int            # elements per program
    CH: int               # pixel tiles of CH channels × BLOCK / CH pixels (channels_last or mixed layouts); 0: off
    Z_CL: bool            # with pixel tiles: the noise tensor is channels_last (else logical rows)


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
    FLAT: bool            # tiles of the flat [B·D] array (a grid of tiles, b = 0): every per-sample value is the
                          # same and every stream contiguous, so a ragged D needs no per-sample edge tiles
    CL: bool              # with pixel tiles: out (and x̂₀) channels_last, the compute order; else logical order
    X_CL: bool            # with pixel tiles: the sample is channels_last
    M_CL: bool            # with pixel tiles: the model output is channels_last

    @property
    def projected(self) -> bool:
        """The "exact" mode's noise needs the projection pass first."""
        return self.VAR_MODE == contract.VAR_CODES["exact"] and self.NOISE != contract.NOISE_NONE

    def projection(self) -> ProjectSpec:
        """The projection pass's switches: it draws the noise the step then reads back (ZNEG)."""
        sub = {f.name: getattr(self, f.name) for f in fields(ProjectSpec)}
        return ProjectSpec(**{**sub, "NOISE": contract.NOISE_PHILOX if self.ZNEG else self.NOISE})


def _n_tiles(D: int, block: int, align: int, ch: int = 0) -> int:
    """Tiles of a sample: its block starts -(b·D mod ALIGN) elements into the first (_tile); pixel tiles (ch > 0):
    BLOCK / ch of its D / ch pixels each."""
    if ch:
        return triton.cdiv(D // ch, block // ch)
    return triton.cdiv(D + (align - 1 if D % align else 0), block)


def pixel_tiles(a, block: int) -> int:
    """The channels of the launch's pixel tiles (StepSpec.CH), 0 for none: the op left channels_last-like streams
    for the kernel (backends.StepArgs.pixels) and a tile holds whole pixels (BLOCK a multiple of C)."""
    return a.pixels if a.pixels and block % a.pixels == 0 else 0


def flat_tiles(a, t_tensor, config: LaunchConfig | None) -> bool:
    """Whether the launch tiles the flat [B·D] array (StepSpec.FLAT): a ragged D (per-sample tiles would have edges),
    every per-sample value the same (one timestep row, one seed, no mixture component, no per-sample threshold) and
    every stream contiguous in the logical order (batch strides D), so that a tile may run across samples: its
    element f is sample f // D's, with counter offset·D + f."""
    D, per_sample_t = a.D, t_tensor is not None and t_tensor.numel() > 1
    block = (config or default_config(D, a.x.device)).block
    ragged = _mask_mode(D, block, max(4, 16 // a.x.element_size())) != _NO_MASK.value
    strides = [a.x.stride(0), a.m.stride(0)] + ([a.noise.stride(0)] if a.noise is not None else [])
    return (ragged and a.layout is None and a.mixture is None and a.threshold is None and not per_sample_t
            and not a.per_sample_seeds and all(st == D for st in strides) and a.B > 1 and not a.pixels)


def launch_spec(a, *, t_tensor, seed_tensor, off_tensor, off_value: int, config: LaunchConfig,
                flat: bool = False) -> StepSpec:
    """The one place where the step's compile-time switches are derived from the op's resolved ``a``
    (backends.StepArgs), the launch's device scalars (None: passed by value) and its tiling (``flat``:
    :func:`flat_tiles`, with ``config`` chosen for the flat extent)."""
    x, mix, D = a.x, a.mixture, a.D
    BLOCK = config.block
    ch = pixel_tiles(a, BLOCK)
    # The tiles of a sample start at -(b·D mod ALIGN): 16-byte vectors (ALIGN elements) and whole Philox groups.
    align = max(4, 16 // x.element_size())
    extent = a.B * D if flat else D  # what the tiles cover
    # flat counter of a tile's start = g·D + start, start ≡ −b·D (mod 4): with g = offset + b that is ≡ offset·D, a
    # multiple of 4 gives whole groups; with per-sample seeds (g = offset) only D ≡ 0 (mod 4) does for every sample
    per_sample = a.per_sample_seeds
    aligned4 = BLOCK % 4 == 0 and (D % 4 == 0 or (off_tensor is None and not per_sample and off_value * D % 4 == 0))
    z_bs = a.noise.stride(0) if a.noise is not None else D
    # vectors need every tensor's sample blocks to sit like out's (b·D) modulo a vector
    vec = all(s % align == D % align for s in (x.stride(0), a.m.stride(0), z_bs)) and \
        (a.guidance is None or (a.B * a.m.stride(0)) % align == 0)
    mask = (_NO_MASK.value if extent % BLOCK == 0 else _SPLIT.value) if flat else _mask_mode(D, BLOCK, align)
    var_code = contract.VAR_CODES[a.variance_mode]
    projected = var_code == contract.VAR_CODES["exact"] and a.noise_mode != contract.NOISE_NONE
    zneg = projected and a.noise is None  # the step reads the −σz the projection drew: one draw per element
    x_cl, m_cl, z_cl = a.stream_cl if ch else (False, False, False)
    if ch:  # pixel tiles: rows c·HW + p0 + [0, PB) and runs p0·C + [0, BLOCK) (_ld_px)
        hw, pb = D // ch, BLOCK // ch
        aligned4 = hw % 4 == 0 and pb % 4 == 0
        vec = vec and D % align == 0 and hw % align == 0 and pb % align == 0
        mask = _MASKED.value if hw % pb else _NO_MASK.value
        z_cl = z_cl and not zneg  # the projection pass stores −σz in logical rows
    return StepSpec(
        NOISE=contract.NOISE_TENSOR if zneg else a.noise_mode, KP=mix.kp if mix is not None else 1,
        SHARED=mix.shared if mix is not None else True, T_FROM_PTR=t_tensor is not None,
        T_PER_SAMPLE=t_tensor is not None and t_tensor.numel() > 1, SEED_FROM_PTR=seed_tensor is not None,
        SEED_PER_SAMPLE=per_sample, OFF_FROM_PTR=off_tensor is not None, ALIGNED4=aligned4,
        PERMUTED=a.layout is not None and not ch, FAST=fast_math(x.device), VEC=vec, ALIGN=align, FLAT=flat,
        MASK=mask,  # flat tiles: only the last is ragged (_SPLIT keeps the others unmasked)
        TVEC=a.layout is None and not ch and D % align == 0 and D % 8 == 0,  # mixture table rows as whole vectors
        BLOCK=BLOCK, CH=ch, Z_CL=z_cl, CL=bool(ch) and a.layout is not None, X_CL=x_cl, M_CL=m_cl,
        CT=tl.float64 if x.dtype == torch.float64 else tl.float32,
        PRED=contract.PRED_CODES[a.prediction_type], VAR_MODE=var_code, MIX=mix is not None,
        K=mix.k if mix is not None else 1,
        NPART=triton.next_power_of_2(_n_tiles(D, BLOCK, align, ch)) if projected else 1,
        CLIP=a.clip is not None, THRESH=a.threshold is not None, CLIPPED_EPS=a.clipped_eps,
        CFG=a.guidance is not None, OFFSET_FINAL=a.offset_final, WRITE_X0=a.write_x0, ZNEG=zneg,
    )


def launch_step(a, *, t_tensor, t_value, seed_tensor, seed_value, off_tensor, off_value,
                config: LaunchConfig | None = None):
    """Launches the (optional) projection pass and the step kernel for the op's resolved ``a``
    (backends.StepArgs). All checks are the op's (ops.py)."""
    flat = flat_tiles(a, t_tensor, config)
    extent = a.B * a.D if flat else a.D
    cfgl = config or default_config(extent, a.x.device)
    if a.pixels and not pixel_tiles(a, cfgl.block):  # a block of partial pixels: every stream in out's layout
        a = a.conformed()
    x, m, noise, mix = a.x, a.m, a.noise, a.mixture
    D, B = a.D, a.B
    off_host = 0 if off_tensor is not None else off_value
    S = launch_spec(a, t_tensor=t_tensor, seed_tensor=seed_tensor, off_tensor=off_tensor, off_value=off_host,
                    config=cfgl, flat=flat)
    n_blk = _n_tiles(extent, S.BLOCK, S.ALIGN, S.CH)
    if n_blk > 65535 and not flat:  # the grid's y axis
        raise ValueError(f"a sample of {D} elements needs {n_blk} tiles of {S.BLOCK}: more than the 65535 a CUDA grid "
                         f"allows; pass a larger LaunchConfig block")
    grid = (n_blk, 1) if flat else (B, n_blk)
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
        *(opt(t) for t in (mix.op_tensors() if mix is not None else [None] * len(contract.MIX_TENSORS))), part,
        extent, D, n_blk, n_tables, x.stride(0), m.stride(0), B * m.stride(0), z_bs, n1, n2, l0, l1, l2,
        float(a.eta), float(a.clip) if a.clip is not None else 0.0,
        float(a.guidance) if a.guidance is not None else 0.0,
        S=S, num_warps=cfgl.num_warps,
    )
