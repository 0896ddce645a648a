"""Helpers shared by the fused kernels (step, CLD, blur): per-sample table rows, per-launch scalars, and the choice
between the GPU's hardware approximations and the interpreter's accurate functions."""
import os

import torch
import triton
import triton.language as tl

_INTERPRETING = os.environ.get("TRITON_INTERPRET") == "1"  # read once, as triton does when decorating


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


def fast_math(device: torch.device) -> bool:
    """Hardware approximations of sin / cos / sqrt on a GPU (kernels/philox.py states their error); the interpreter
    has no PTX, so it evaluates the same formulas with accurate functions."""
    return device.type == "cuda" and not _INTERPRETING
