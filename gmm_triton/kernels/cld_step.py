"""The fused gDDIM step for critically-damped Langevin diffusion: one pass over the (x, v) pairs.

Per program: one sample b and one BLOCK of its D pairs. The sample's table row (Ψ, C_0..C_2, Λ: 2×2 blocks,
``gddim/tables.py``) is loaded once; the element loop reads x and v of ``sample`` and of each of the NEPS ε
buffers once, draws the pair's two normals in-kernel (Philox stream 0 at the flat indices b·2D + d and
b·2D + D + d of [B, 2, D]) or reads a caller's noise tensor, and writes (x', v'). The maths is stated in
``gddim/reference.py``.
"""
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from .. import contract
from .philox import normal_block
from .common import NOISE_NONE, NOISE_PHILOX, NOISE_TENSOR, STREAM_NOISE, check_noise_code, fast_math, \
    launch_scalar, sample_row

_COLS = tl.constexpr(contract.CLD_COLS)  # the table layout (contract.py)
_PSI = tl.constexpr(contract.CLD_PSI)
_EPS = tl.constexpr(contract.CLD_EPS)
_CHOL = tl.constexpr(contract.CLD_CHOL)


@triton.jit
def _pair_term(e_ptr, e_bs, b, d, D, mask, cp, CT: tl.constexpr):
    """C (e_x, e_v)ᵀ for the ε buffer e and the 2×2 block C at cp."""
    ex = tl.load(e_ptr + b * e_bs + d, mask=mask, other=0.0).to(CT)
    ev = tl.load(e_ptr + b * e_bs + D + d, mask=mask, other=0.0).to(CT)
    c00 = tl.load(cp + 0).to(CT)
    c01 = tl.load(cp + 1).to(CT)
    c10 = tl.load(cp + 2).to(CT)
    c11 = tl.load(cp + 3).to(CT)
    return c00 * ex + c01 * ev, c10 * ex + c11 * ev


@triton.jit(do_not_specialize=["t_value", "seed_value"])
def _cld_step_kernel(
    u_ptr, e0_ptr, e1_ptr, e2_ptr, z_ptr, out_ptr,
    coef_ptr, n_rows, t_ptr, t_value, seed_ptr, seed_value,
    D, n_blk, u_bs, e0_bs, e1_bs, e2_bs, z_bs,
    CT: tl.constexpr, NEPS: tl.constexpr, NOISE: tl.constexpr, T_FROM_PTR: tl.constexpr,
    T_PER_SAMPLE: tl.constexpr, SEED_FROM_PTR: tl.constexpr, ALIGNED4: tl.constexpr, FAST: tl.constexpr,
    BLOCK: tl.constexpr,
):
    check_noise_code(NOISE)
    pid = tl.program_id(0)
    b = (pid // n_blk).to(tl.int64)
    blk = pid % n_blk
    d = blk.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = d < D

    row, valid = sample_row(coef_ptr, n_rows, t_ptr, t_value, b, T_FROM_PTR, T_PER_SAMPLE)
    cp = coef_ptr + row * _COLS
    nan_if_bad = tl.where(valid, 0.0, float("nan")).to(CT)

    x = tl.load(u_ptr + b * u_bs + d, mask=mask, other=0.0).to(CT)
    v = tl.load(u_ptr + b * u_bs + D + d, mask=mask, other=0.0).to(CT)
    p00 = tl.load(cp + _PSI).to(CT)
    p01 = tl.load(cp + _PSI + 1).to(CT)
    p10 = tl.load(cp + _PSI + 2).to(CT)
    p11 = tl.load(cp + _PSI + 3).to(CT)
    ox = p00 * x + p01 * v
    ov = p10 * x + p11 * v
    tx, tv = _pair_term(e0_ptr, e0_bs, b, d, D, mask, cp + _EPS, CT)
    ox += tx
    ov += tv
    if NEPS > 1:
        tx, tv = _pair_term(e1_ptr, e1_bs, b, d, D, mask, cp + _EPS + 4, CT)
        ox += tx
        ov += tv
    if NEPS > 2:
        tx, tv = _pair_term(e2_ptr, e2_bs, b, d, D, mask, cp + _EPS + 8, CT)
        ox += tx
        ov += tv

    if NOISE != NOISE_NONE:
        if NOISE == NOISE_PHILOX:
            seed = launch_scalar(seed_ptr, seed_value, SEED_FROM_PTR)
            start = b * 2 * D + blk.to(tl.int64) * BLOCK
            # normal_block's normals are negated
            nx = -normal_block(seed, start, BLOCK, STREAM_NOISE, ALIGNED4, FAST).to(CT)
            nv = -normal_block(seed, start + D, BLOCK, STREAM_NOISE, ALIGNED4, FAST).to(CT)
        elif NOISE == NOISE_TENSOR:
            nx = tl.load(z_ptr + b * z_bs + d, mask=mask, other=0.0).to(CT)
            nv = tl.load(z_ptr + b * z_bs + D + d, mask=mask, other=0.0).to(CT)
        l00 = tl.load(cp + _CHOL).to(CT)
        l10 = tl.load(cp + _CHOL + 1).to(CT)
        l11 = tl.load(cp + _CHOL + 2).to(CT)
        ox += l00 * nx
        ov += l10 * nx + l11 * nv

    o = b * 2 * D + d
    tl.store(out_ptr + o, (ox + nan_if_bad).to(out_ptr.dtype.element_ty), mask=mask)
    tl.store(out_ptr + o + D, (ov + nan_if_bad).to(out_ptr.dtype.element_ty), mask=mask)


@dataclass(frozen=True)
class LaunchConfig:
    block: int
    num_warps: int


def default_config(D: int, device: torch.device) -> LaunchConfig:
    """GPU: up to 2048 pairs (4096 elements of each buffer) per program, 8 warps from 2048 pairs, as the DDIM
    step's roofline setting; interpreter: few, large programs."""
    if device.type == "cuda":
        block = min(2048, max(256, triton.next_power_of_2(D)))
        return LaunchConfig(block=block, num_warps=8 if block >= 2048 else 4)
    return LaunchConfig(block=min(16384, max(16, triton.next_power_of_2(D))), num_warps=4)


def launch_cld_step(*, u, eps, out, coef, t_tensor, t_value, seed_tensor, seed_value, noise, noise_mode, B, D,
                    config: LaunchConfig | None = None):
    """One launch over B × ceil(D / BLOCK) programs. ``u``, ``eps``, ``noise``: [B, 2, D] views whose per-sample
    blocks are contiguous (any batch stride); ``out`` contiguous. All checks are the op's (gddim/ops.py)."""
    cfg = config or default_config(D, u.device)
    n_blk = triton.cdiv(D, cfg.block)
    e = list(eps) + [eps[0]] * (3 - len(eps))  # unread slots: any valid pointer
    _cld_step_kernel[(B * n_blk,)](
        u, e[0], e[1], e[2], noise if noise is not None else coef, out,
        coef, coef.shape[0], t_tensor if t_tensor is not None else coef, t_value,
        seed_tensor if seed_tensor is not None else coef, seed_value,
        D, n_blk, u.stride(0), e[0].stride(0), e[1].stride(0), e[2].stride(0),
        noise.stride(0) if noise is not None else 0,
        CT=tl.float64 if u.dtype == torch.float64 else tl.float32, NEPS=len(eps), NOISE=noise_mode,
        T_FROM_PTR=t_tensor is not None, T_PER_SAMPLE=t_tensor is not None and t_tensor.numel() > 1,
        SEED_FROM_PTR=seed_tensor is not None, ALIGNED4=D % 4 == 0 and cfg.block % 4 == 0,
        FAST=fast_math(u.device), BLOCK=cfg.block,
        num_warps=cfg.num_warps,
    )
