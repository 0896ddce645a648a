"""The fused gDDIM step for blurring diffusion: one program per N×N image plane, transforms in registers.

Per program: plane p = (b, c). It reads the plane of ``sample`` and of each of the NEPS ε buffers once, takes
each to frequency space (V P Vᵀ, V the orthonormal DCT-II matrix), combines them with the row's per-frequency
planes, adds the frequency-space noise (Philox stream 0 at the flat index of [B, C, N, N], or a caller's
tensor), returns to pixel space (Vᵀ Y V) and writes the plane once: one pass over memory. The matrix
products run on tiles padded to NP = next_pow2(N): by ``tl.dot`` (IEEE fp32 or fp64, no TF32) for NP ≥ 16, by
a broadcast-and-reduce below that (tl.dot's smallest tile). In-kernel noise needs N = NP (the plane's indices
then fill the tile in order); for other N ``_noise_fill_kernel`` first draws the same normals (same counters)
into a scratch buffer, which the step reads as a noise tensor. The maths is stated in ``gddim/reference.py``.
"""
import torch
import triton
import triton.language as tl

from .. import contract
from .philox import normal_block
from .common import NOISE_NONE, NOISE_PHILOX, NOISE_TENSOR, STREAM_NOISE, check_noise_code, fast_math, \
    launch_scalar, sample_row

_PLANES = tl.constexpr(contract.BLUR_PLANES)  # A, B_0..B_2, S per step (contract.py)

MAX_SIZE = 64  # largest N: four [64, 64] tiles in registers per program


@triton.jit
def _mm(a, b, DOT: tl.constexpr):
    if DOT:
        return tl.dot(a, b, input_precision="ieee")
    else:
        return tl.sum(a[:, :, None] * b[None, :, :], axis=1)


@triton.jit
def _freq(p_ptr, p_bs, b, c, ii, jj, m2, N, v, vt, CT: tl.constexpr, DOT: tl.constexpr):
    """V P Vᵀ of the plane (b, c) of the buffer at p_ptr."""
    p = tl.load(p_ptr + b * p_bs + (c * N + ii) * N + jj, mask=m2, other=0.0).to(CT)
    return _mm(_mm(v, p, DOT), vt, DOT)


@triton.jit(do_not_specialize=["t_value", "seed_value"])
def _blur_step_kernel(
    x_ptr, e0_ptr, e1_ptr, e2_ptr, z_ptr, out_ptr, basis_ptr,
    coef_ptr, n_rows, t_ptr, t_value, seed_ptr, seed_value,
    C, N, x_bs, e0_bs, e1_bs, e2_bs, z_bs,
    CT: tl.constexpr, NEPS: tl.constexpr, NOISE: tl.constexpr, T_FROM_PTR: tl.constexpr,
    T_PER_SAMPLE: tl.constexpr, SEED_FROM_PTR: tl.constexpr, ALIGNED4: tl.constexpr, NP: tl.constexpr,
    DOT: tl.constexpr, FAST: tl.constexpr,
):
    check_noise_code(NOISE)
    pid = tl.program_id(0)
    b = (pid // C).to(tl.int64)
    c = (pid % C).to(tl.int64)
    ii = tl.arange(0, NP)[:, None]
    jj = tl.arange(0, NP)[None, :]
    m2 = (ii < N) & (jj < N)

    row, valid = sample_row(coef_ptr, n_rows, t_ptr, t_value, b, T_FROM_PTR, T_PER_SAMPLE)
    nan_if_bad = tl.where(valid, 0.0, float("nan")).to(CT)
    plane = N * N
    cp = coef_ptr + row * _PLANES * plane + ii * N + jj

    v = tl.load(basis_ptr + ii * N + jj, mask=m2, other=0.0).to(CT)
    vt = tl.load(basis_ptr + jj * N + ii, mask=m2, other=0.0).to(CT)

    y = tl.load(cp, mask=m2, other=0.0).to(CT) * _freq(x_ptr, x_bs, b, c, ii, jj, m2, N, v, vt, CT, DOT)
    y += tl.load(cp + plane, mask=m2, other=0.0).to(CT) * _freq(e0_ptr, e0_bs, b, c, ii, jj, m2, N, v, vt, CT, DOT)
    if NEPS > 1:
        y += tl.load(cp + 2 * plane, mask=m2, other=0.0).to(CT) * _freq(e1_ptr, e1_bs, b, c, ii, jj, m2, N, v, vt,
                                                                          CT, DOT)
    if NEPS > 2:
        y += tl.load(cp + 3 * plane, mask=m2, other=0.0).to(CT) * _freq(e2_ptr, e2_bs, b, c, ii, jj, m2, N, v, vt,
                                                                          CT, DOT)
    if NOISE != NOISE_NONE:
        if NOISE == NOISE_PHILOX:  # N == NP: the plane's flat indices fill the tile row by row
            seed = launch_scalar(seed_ptr, seed_value, SEED_FROM_PTR)
            n = -tl.reshape(normal_block(seed, pid.to(tl.int64) * plane, NP * NP, STREAM_NOISE, ALIGNED4, FAST),
                            (NP, NP)).to(CT)  # normal_block's normals are negated
        elif NOISE == NOISE_TENSOR:
            n = tl.load(z_ptr + b * z_bs + (c * N + ii) * N + jj, mask=m2, other=0.0).to(CT)
        y += tl.load(cp + (_PLANES - 1) * plane, mask=m2, other=0.0).to(CT) * n

    out = _mm(_mm(vt, y, DOT), v, DOT)
    tl.store(out_ptr + (pid.to(tl.int64) * N + ii) * N + jj, (out + nan_if_bad).to(out_ptr.dtype.element_ty),
             mask=m2)


@triton.jit(do_not_specialize=["seed_value"])
def _noise_fill_kernel(z_ptr, n, seed_ptr, seed_value, SEED_FROM_PTR: tl.constexpr, FAST: tl.constexpr,
                       BLOCK: tl.constexpr):
    """z[k] = normal k of Philox stream 0, k < n (the seed from a pointer or a value)."""
    start = tl.program_id(0).to(tl.int64) * BLOCK
    z = -normal_block(launch_scalar(seed_ptr, seed_value, SEED_FROM_PTR), start, BLOCK, STREAM_NOISE, True, FAST)
    offs = start + tl.arange(0, BLOCK)
    tl.store(z_ptr + offs, z, mask=offs < n)


def launch_blur_step(*, x, eps, out, coef, basis, t_tensor, t_value, seed_tensor, seed_value, noise, noise_mode,
                     B, C, N):
    """One launch over the B·C planes (two when the noise goes through a scratch buffer). ``x``, ``eps``,
    ``noise``: [B, C, N, N] with contiguous per-sample blocks (any batch stride); ``out`` contiguous. All checks
    are the op's (gddim/ops.py)."""
    NP = triton.next_power_of_2(N)
    if noise_mode == NOISE_PHILOX and NP != N:
        n = B * C * N * N
        noise = torch.empty((B, C, N, N), device=x.device, dtype=torch.float32)
        _noise_fill_kernel[(triton.cdiv(n, 1024),)](noise, n, seed_tensor if seed_tensor is not None else coef,
                                                    seed_value, SEED_FROM_PTR=seed_tensor is not None,
                                                    FAST=fast_math(x.device), BLOCK=1024)
        noise_mode = NOISE_TENSOR
    e = list(eps) + [eps[0]] * (3 - len(eps))
    _blur_step_kernel[(B * C,)](
        x, e[0], e[1], e[2], noise if noise is not None else coef, out, basis,
        coef, coef.shape[0], t_tensor if t_tensor is not None else coef, t_value,
        seed_tensor if seed_tensor is not None else coef, seed_value,
        C, N, x.stride(0), e[0].stride(0), e[1].stride(0), e[2].stride(0), noise.stride(0) if noise is not None else 0,
        CT=tl.float64 if x.dtype == torch.float64 else tl.float32, NEPS=len(eps), NOISE=noise_mode,
        T_FROM_PTR=t_tensor is not None, T_PER_SAMPLE=t_tensor is not None and t_tensor.numel() > 1,
        SEED_FROM_PTR=seed_tensor is not None, ALIGNED4=N % 2 == 0, NP=NP, DOT=NP >= 16, FAST=fast_math(x.device),
        num_warps=4 if NP <= 32 else 8,
    )
