"""The fused gDDIM step for critically-damped Langevin diffusion: one pass over the (x, v) pairs.

Per program: one sample b and one BLOCK of its D pairs (a 2-D grid: sample, tile). The sample's table row (Ψ,
C_0..C_2, Λ: 2×2 blocks, ``gddim/tables.py``) is loaded once; the element loop reads x and v of ``sample`` and of
each of the NEPS ε buffers once, as 16-byte vectors where the launcher has checked the alignment, draws the pair's
two normals in-kernel (Philox stream 0 at the flat indices b·2D + d and b·2D + D + d of [B, 2, D], joined in
registers into the rows of the vector loads) or reads a caller's noise tensor, and writes (x', v'). The maths is
stated in ``gddim/reference.py``.
"""
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from .. import contract
from .philox import normal_block
from .common import fast_math, launch_scalar, load_run, sample_row, store_run, vector_align

_COLS = tl.constexpr(contract.CLD_COLS)  # the table layout (contract.py)
_PSI = tl.constexpr(contract.CLD_PSI)
_EPS = tl.constexpr(contract.CLD_EPS)
_CHOL = tl.constexpr(contract.CLD_CHOL)

NOISE_NONE, NOISE_PHILOX, NOISE_TENSOR = 0, 1, 2


@triton.jit
def _block2(cp, CT: tl.constexpr):
    """The 2×2 block at cp, row-major, in the compute type."""
    return (tl.load(cp + 0).to(CT), tl.load(cp + 1).to(CT), tl.load(cp + 2).to(CT), tl.load(cp + 3).to(CT))


@triton.jit
def _add_term(ox, ov, e_ptr, off, D, start, mask, cp, CT: tl.constexpr, VEC: tl.constexpr, ALIGN: tl.constexpr,
              MASKED: tl.constexpr, BLOCK: tl.constexpr):
    """(ox, ov) + C (e_x, e_v)ᵀ for the ε buffer e and the 2×2 block C at cp."""
    c00, c01, c10, c11 = _block2(cp, CT)
    ex = load_run(e_ptr, off, start, mask, VEC, ALIGN, MASKED, BLOCK).to(CT)
    ev = load_run(e_ptr, off + D, start, mask, VEC, ALIGN, MASKED, BLOCK).to(CT)
    return ox + c00 * ex + c01 * ev, ov + c10 * ex + c11 * ev


@triton.jit(do_not_specialize=["t_value", "seed_value"])
def _cld_step_kernel(
    u_ptr, e0_ptr, e1_ptr, e2_ptr, z_ptr, out_ptr,
    coef_ptr, n_rows, t_ptr, t_value, seed_ptr, seed_value,
    D, u_bs, e0_bs, e1_bs, e2_bs, z_bs,
    CT: tl.constexpr, NEPS: tl.constexpr, NOISE: tl.constexpr, T_FROM_PTR: tl.constexpr,
    T_PER_SAMPLE: tl.constexpr, SEED_FROM_PTR: tl.constexpr, ALIGNED4: tl.constexpr, FAST: tl.constexpr,
    VEC: tl.constexpr, ALIGN: tl.constexpr, MASKED: tl.constexpr, BLOCK: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    start = tl.program_id(1).to(tl.int64) * BLOCK
    mask = start + tl.arange(0, BLOCK) < D

    # per-sample scalars, once per program; an invalid row poisons the two coefficients every output goes through
    row, valid = sample_row(coef_ptr, n_rows, t_ptr, t_value, b, T_FROM_PTR, T_PER_SAMPLE)
    cp = coef_ptr + row * _COLS
    poison = tl.where(valid, 0.0, float("nan")).to(CT)
    p00, p01, p10, p11 = _block2(cp + _PSI, CT)

    x = load_run(u_ptr, b * u_bs, start, mask, VEC, ALIGN, MASKED, BLOCK).to(CT)
    v = load_run(u_ptr, b * u_bs + D, start, mask, VEC, ALIGN, MASKED, BLOCK).to(CT)
    ox = (p00 + poison) * x + p01 * v
    ov = (p10 + poison) * x + p11 * v
    ox, ov = _add_term(ox, ov, e0_ptr, b * e0_bs, D, start, mask, cp + _EPS, CT, VEC, ALIGN, MASKED, BLOCK)
    if NEPS > 1:
        ox, ov = _add_term(ox, ov, e1_ptr, b * e1_bs, D, start, mask, cp + _EPS + 4, CT, VEC, ALIGN, MASKED, BLOCK)
    if NEPS > 2:
        ox, ov = _add_term(ox, ov, e2_ptr, b * e2_bs, D, start, mask, cp + _EPS + 8, CT, VEC, ALIGN, MASKED, BLOCK)

    if NOISE != 0:
        l00 = tl.load(cp + _CHOL).to(CT)
        l10 = tl.load(cp + _CHOL + 1).to(CT)
        l11 = tl.load(cp + _CHOL + 2).to(CT)
        if NOISE == 1:  # normal_block's normals come negated: subtracting them folds the sign into the FMAs
            seed = launch_scalar(seed_ptr, seed_value, SEED_FROM_PTR)
            nx = normal_block(seed, b * 2 * D + start, BLOCK, 0, ALIGNED4, FAST, ALIGN).to(CT)
            nv = normal_block(seed, b * 2 * D + D + start, BLOCK, 0, ALIGNED4, FAST, ALIGN).to(CT)
        else:
            nx = -load_run(z_ptr, b * z_bs, start, mask, VEC, ALIGN, MASKED, BLOCK).to(CT)
            nv = -load_run(z_ptr, b * z_bs + D, start, mask, VEC, ALIGN, MASKED, BLOCK).to(CT)
        ox -= l00 * nx
        ov -= l10 * nx + l11 * nv

    store_run(out_ptr, b * 2 * D, start, ox, mask, VEC, ALIGN, MASKED, BLOCK)
    store_run(out_ptr, b * 2 * D + D, start, ov, mask, VEC, ALIGN, MASKED, BLOCK)


@dataclass(frozen=True)
class LaunchConfig:
    block: int
    num_warps: int


def default_config(D: int, device: torch.device) -> LaunchConfig:
    """GPU: up to 4096 pairs per program, 16 per thread (32 elements of each buffer: the DDIM step's setting, which
    amortises the per-program table row and Philox keys); interpreter: few, large programs."""
    if device.type == "cuda":
        block = min(4096, max(256, triton.next_power_of_2(D)))
        return LaunchConfig(block=block, num_warps=max(1, min(8, block // 512)))
    return LaunchConfig(block=min(16384, max(16, triton.next_power_of_2(D))), num_warps=4)


def launch_cld_step(*, u, eps, out, coef, t_tensor, t_value, seed_tensor, seed_value, noise, noise_mode, B, D,
                    config: LaunchConfig | None = None):
    """One launch over (B, ceil(D / BLOCK)) programs. ``u``, ``eps``, ``noise``: [B, 2, D] views whose per-sample
    blocks are contiguous (any batch stride); ``out`` contiguous. All checks are the op's (gddim/ops.py)."""
    cfg = config or default_config(D, u.device)
    n_blk = triton.cdiv(D, cfg.block)
    if n_blk > 65535:  # the grid's y axis
        raise ValueError(f"cld_step: {D} pairs per sample need {n_blk} tiles of {cfg.block}: more than the 65535 a "
                         f"CUDA grid allows; pass a larger LaunchConfig block")
    e = list(eps) + [eps[0]] * (3 - len(eps))  # unread slots: any valid pointer
    align = vector_align(u)
    # 16-byte vectors need every stream's offsets (b·stride, + D for the v half) to be whole vectors
    strides = [u.stride(0), out.stride(0)] + [t.stride(0) for t in eps] + ([noise.stride(0)] if noise is not None else [])
    vec = D % align == 0 and all(s % align == 0 for s in strides)
    _cld_step_kernel[(B, n_blk)](
        u, e[0], e[1], e[2], noise if noise is not None else coef, out,
        coef, coef.shape[0], t_tensor if t_tensor is not None else coef, t_value,
        seed_tensor if seed_tensor is not None else coef, seed_value,
        D, u.stride(0), e[0].stride(0), e[1].stride(0), e[2].stride(0),
        noise.stride(0) if noise is not None else 0,
        CT=tl.float64 if u.dtype == torch.float64 else tl.float32, NEPS=len(eps), NOISE=noise_mode,
        T_FROM_PTR=t_tensor is not None, T_PER_SAMPLE=t_tensor is not None and t_tensor.numel() > 1,
        SEED_FROM_PTR=seed_tensor is not None, ALIGNED4=D % 4 == 0 and cfg.block % 4 == 0,
        FAST=fast_math(u.device), VEC=vec, ALIGN=align, MASKED=D % cfg.block != 0, BLOCK=cfg.block,
        num_warps=cfg.num_warps,
    )
