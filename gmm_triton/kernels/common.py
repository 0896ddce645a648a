"""Helpers shared by the fused kernels (step, CLD, blur): per-sample table rows, per-launch scalars, the contract's
codes as constexprs, and the math mode of the RNG's float leaves (kernels/philox.py)."""
import contextlib
import os

import torch
import triton
import triton.language as tl

from .. import contract

INTERPRETING = os.environ.get("TRITON_INTERPRET") == "1"  # read once, as triton does when decorating

# the contract's noise sources and Philox streams, as the compile-time constants Triton requires of globals
NOISE_NONE = tl.constexpr(contract.NOISE_NONE)
NOISE_PHILOX = tl.constexpr(contract.NOISE_PHILOX)
NOISE_TENSOR = tl.constexpr(contract.NOISE_TENSOR)
STREAM_NOISE = tl.constexpr(contract.STREAM_NOISE)
STREAM_CHOICE = tl.constexpr(contract.STREAM_CHOICE)


@triton.jit
def check_noise_code(NOISE: tl.constexpr):
    """Fails the compile (and the interpreter) on a noise code the kernels do not implement."""
    tl.static_assert(NOISE == NOISE_NONE or NOISE == NOISE_PHILOX or NOISE == NOISE_TENSOR,
                     "unknown noise code (contract.NOISE_CODES)")


@triton.jit
def sample_row(coef_ptr, n_rows, t_ptr, t_value, b, T_FROM_PTR: tl.constexpr, T_PER_SAMPLE: tl.constexpr):
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
def launch_scalar(ptr, value, FROM_PTR: tl.constexpr):
    """A per-launch int64 scalar (seed, sample offset): read by the kernel from a device tensor, or passed by value."""
    if FROM_PTR:
        return tl.load(ptr)
    else:
        return value


@triton.jit
def sample_key(seed_ptr, seed_value, off_ptr, off_value, b, SEED_FROM_PTR: tl.constexpr,
               SEED_PER_SAMPLE: tl.constexpr, OFF_FROM_PTR: tl.constexpr):
    """(Philox key, global index g) of sample b; g keys its RNG counters (noise from g·D, its mixture component at g).

    One seed per launch: the launch's seed at g = offset + b. Per-sample seeds (``seed_ptr[b]``, one per sample):
    sample b is sample 0 of its own run, g = offset, so a batch built from B seeds equals B single-sample runs."""
    off = launch_scalar(off_ptr, off_value, OFF_FROM_PTR)
    if SEED_PER_SAMPLE:
        return tl.load(seed_ptr + b), off + b * 0  # (+ b·0: int64 even when the offset is a small host int)
    else:
        return launch_scalar(seed_ptr, seed_value, SEED_FROM_PTR), b + off


@triton.jit
def load_run(ptr, off, start, mask, VEC: tl.constexpr, ALIGN: tl.constexpr, MASKED: tl.constexpr,
             BLOCK: tl.constexpr):
    """ptr[off + start + (0 .. BLOCK-1)]: 16-byte vectors when VEC (the launcher checked that off + start is a
    multiple of ALIGN elements, which Triton cannot see through a runtime offset), masked only when MASKED."""
    o = off + start
    if VEC:
        o = tl.multiple_of(o, ALIGN)
    p = ptr + o + tl.arange(0, BLOCK)
    if MASKED:
        return tl.load(p, mask=mask, other=0.0)
    else:
        return tl.load(p)


@triton.jit
def store_run(ptr, off, start, v, mask, VEC: tl.constexpr, ALIGN: tl.constexpr, MASKED: tl.constexpr,
              BLOCK: tl.constexpr):
    """ptr[off + start + (0 .. BLOCK-1)] = v in ptr's dtype (see load_run)."""
    o = off + start
    if VEC:
        o = tl.multiple_of(o, ALIGN)
    p = ptr + o + tl.arange(0, BLOCK)
    v = v.to(ptr.dtype.element_ty)
    if MASKED:
        tl.store(p, v, mask=mask)
    else:
        tl.store(p, v)


def vector_align(t: torch.Tensor) -> int:
    """Elements per 16-byte vector, at least 4 (a Philox group): the alignment unit of a tile's start."""
    return max(4, 16 // t.element_size())


# The math mode of the RNG's leaf functions (the kernels' FAST constexpr; kernels/philox.py): the GPU and the
# interpreter run the same control flow and differ only in these leaves.
MATH_ACCURATE = tl.constexpr(0)  # the interpreter: correctly rounded float32 (the angle's cos / sin from float64)
MATH_GPU = tl.constexpr(1)       # a GPU: PTX mul.wide, rcp / sin / cos / sqrt.approx (inline asm, MUFU)
MATH_EMULATED = tl.constexpr(2)  # the interpreter running the GPU branch: each PTX leaf emulated at its stated error
_emulate_gpu_math = False


@contextlib.contextmanager
def emulated_gpu_math():
    """Run the Triton kernels under the interpreter with the GPU's math leaves emulated (MATH_EMULATED): what a GPU
    computes, up to the documented error of each hardware instruction, on the CPU (tests use it)."""
    global _emulate_gpu_math
    old, _emulate_gpu_math = _emulate_gpu_math, True
    try:
        yield
    finally:
        _emulate_gpu_math = old


def fast_math(device: torch.device) -> int:
    """The math mode of a launch on ``device``: MATH_GPU on a GPU; under the interpreter MATH_ACCURATE, or
    MATH_EMULATED inside :func:`emulated_gpu_math`."""
    if device.type == "cuda" and not INTERPRETING:
        return MATH_GPU.value
    return (MATH_EMULATED if _emulate_gpu_math else MATH_ACCURATE).value
