"""The gDDIM ops: ``torch.ops.gmm_triton.cld_step`` and ``torch.ops.gmm_triton.blur_step``.

The same conventions as ``gmm_triton.ops.ddim_step``: ``torch.library.custom_op`` with a fake kernel (so
``opcheck``, ``torch.compile(fullgraph=True)`` and FakeTensor tracing see them), CUDA → the Triton kernel
(``kernels/cld_step.py``, ``kernels/blur_step.py``), CPU → the C++ twin (``csrc/gddim.cpp``) or, by the shared
backend switch, the Triton kernel under ``TRITON_INTERPRET=1`` or the float64 reference (``reference.py``).
Per-step coefficients come from float64 device tables (``tables.py``) indexed by an int or a device tensor of
step indices (one, or one per sample); inputs are never modified; outputs take the sample's dtype (fp16/bf16
compute in fp32, fp64 in fp64). The maths and the noise's counter layout are in ``reference.py``.

Most callers want :func:`cld_step` / :func:`blur_step`, which resolve seeds and the ε history into the op's
arguments (the schedulers do this).
"""
from __future__ import annotations

import math
from typing import List, Optional, Sequence

import torch
from torch import Tensor

# the package's backend switch, seed helpers and eager fast path: the same door as the DDIM step's
from ..backends import backend_for as _backend
from ..backends import host_int, on_device_or_host
from .. import ops as _ops  # _ops._call: looked up at call time, as the compile matrix patches it
from ..ops import _rowwise as _is_rowwise
from ..rng import as_seed_tensor, draw_seed
from ..kernels.blur_step import MAX_SIZE as BLUR_MAX_SIZE
from . import reference as ref
from .tables import BLUR_PLANES, CLD_COLS

_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
NOISE_NONE, NOISE_PHILOX, NOISE_TENSOR = 0, 1, 2
MAX_EPS = 3


# ------------------------------------------------------------------------------------------------
# checks, shared by the real and the fake kernels
# ------------------------------------------------------------------------------------------------
def _check_common(op, sample, eps, coef, timesteps, seed, noise):
    if not isinstance(sample, Tensor) or sample.dtype not in _FLOATS:
        raise TypeError(f"{op}: sample must be a floating-point tensor (fp16/bf16/fp32/fp64), got "
                        f"{getattr(sample, 'dtype', type(sample))}")
    if not 1 <= len(eps) <= MAX_EPS:
        raise ValueError(f"{op}: model_outputs must hold 1 to {MAX_EPS} ε tensors (the current one first), got "
                         f"{len(eps)}")
    for j, e in enumerate(eps):
        if not isinstance(e, Tensor) or e.shape != sample.shape or e.dtype != sample.dtype or e.device != sample.device:
            raise ValueError(f"{op}: model_outputs[{j}] must match sample ({tuple(sample.shape)} {sample.dtype} on "
                             f"{sample.device}), got {tuple(getattr(e, 'shape', ()))} {getattr(e, 'dtype', type(e))} "
                             f"on {getattr(e, 'device', '?')}")
    if coef.dtype != torch.float64 or coef.device != sample.device:
        raise ValueError(f"{op}: the coefficient table must be float64 on {sample.device}, got {coef.dtype} on "
                         f"{coef.device}")
    B = sample.shape[0]
    if timesteps is not None:
        if timesteps.dtype.is_floating_point or timesteps.dtype.is_complex or timesteps.dtype == torch.bool:
            raise TypeError(f"{op}: the step index must be an integer tensor, got {timesteps.dtype}")
        if timesteps.numel() not in (1, B):
            raise ValueError(f"{op}: the step index must be a scalar or hold one value per sample ({B}), got shape "
                             f"{tuple(timesteps.shape)}")
        if timesteps.device != sample.device and timesteps.device.type != "cpu":
            raise ValueError(f"{op}: the step index is on {timesteps.device} but sample is on {sample.device}")
    if seed is not None and (seed.dtype != torch.int64 or seed.numel() != 1):
        raise ValueError(f"{op}: seed must be an int64 tensor with one value, got {seed.dtype} {tuple(seed.shape)}")
    if noise is not None:
        if noise.shape != sample.shape or noise.dtype not in _FLOATS or noise.device != sample.device:
            raise ValueError(f"{op}: noise must be a floating tensor of the sample's shape {tuple(sample.shape)} on "
                             f"{sample.device}, got {noise.dtype} {tuple(noise.shape)} on {noise.device}")


def _check_cld(sample, eps, coef, timesteps, seed, noise):
    _check_common("cld_step", sample, eps, coef, timesteps, seed, noise)
    if sample.dim() < 2 or sample.shape[1] != 2:
        raise ValueError(f"cld_step: sample must be [B, 2, ...] (index 1: position x, velocity v), got "
                         f"{tuple(sample.shape)}")
    if coef.dim() != 2 or coef.shape[1] != CLD_COLS:
        raise ValueError(f"cld_step: the coefficient table must be [steps, {CLD_COLS}] (gddim/tables.py), got "
                         f"{tuple(coef.shape)}")


def _check_blur(sample, eps, coef, basis, timesteps, seed, noise):
    _check_common("blur_step", sample, eps, coef, timesteps, seed, noise)
    if sample.dim() != 4 or sample.shape[2] != sample.shape[3]:
        raise ValueError(f"blur_step: sample must be square images [B, C, N, N], got {tuple(sample.shape)}")
    N = sample.shape[-1]
    if coef.dim() != 4 or tuple(coef.shape[1:]) != (BLUR_PLANES, N, N):
        raise ValueError(f"blur_step: the coefficient table must be [steps, {BLUR_PLANES}, {N}, {N}], got "
                         f"{tuple(coef.shape)}")
    if basis.dtype != torch.float64 or tuple(basis.shape) != (N, N) or basis.device != sample.device:
        raise ValueError(f"blur_step: basis must be the float64 [{N}, {N}] DCT matrix on {sample.device}, got "
                         f"{basis.dtype} {tuple(basis.shape)} on {basis.device}")
    if sample.device.type == "cuda" and N > BLUR_MAX_SIZE:
        raise ValueError(f"blur_step: the Triton kernel holds a plane in registers: N <= {BLUR_MAX_SIZE}, got {N}")


def _host_rows(op, timesteps, timestep, R):
    """Validates step indices known on the host; device ones poison their sample (NaN) in the kernel."""
    if timesteps is None:
        vals = (timestep,)
    elif timesteps.device.type == "cpu":
        vals = (int(timesteps.min()), int(timesteps.max())) if timesteps.numel() else ()
    else:
        return
    for v in vals:
        if not 0 <= v < R:
            raise ValueError(f"{op}: step index {v} is outside the coefficient table [0, {R})")


def _mode(seed, noise):
    return NOISE_TENSOR if noise is not None else (NOISE_PHILOX if seed is not None else NOISE_NONE)


def _device_rows(timesteps, timestep, device):
    """(device tensor or None, host int) for the Triton launchers: a CPU scalar index is read on the host."""
    if timesteps is None:
        return None, int(timestep)
    if timesteps.numel() == 1 and timesteps.device.type == "cpu":
        return None, int(timesteps.reshape(-1)[0])
    return timesteps.reshape(-1).to(device).contiguous(), 0


def _cpp_rows(timesteps):
    return timesteps.reshape(-1).to(torch.int64).contiguous() if timesteps is not None else None


# ------------------------------------------------------------------------------------------------
# cld_step
# ------------------------------------------------------------------------------------------------
def _rowwise(t: Tensor) -> Tensor:
    """t itself if each sample's block is contiguous (any batch stride), else a contiguous copy."""
    return t if _is_rowwise(t) else t.contiguous()


def _cld_step_impl(sample: Tensor, eps: List[Tensor], coef: Tensor, timesteps: Optional[Tensor], timestep: int,
                   seed: Optional[Tensor], noise: Optional[Tensor]) -> Tensor:
    _check_cld(sample, eps, coef, timesteps, seed, noise)
    _host_rows("cld_step", timesteps, timestep, coef.shape[0])
    out = torch.empty(sample.shape, dtype=sample.dtype, device=sample.device)
    B = sample.shape[0]
    D = math.prod(sample.shape[2:])
    if B == 0 or D == 0:
        return out
    u, es = _rowwise(sample), [_rowwise(e) for e in eps]
    z = _rowwise(noise) if noise is not None else None
    mode = _mode(seed, noise)
    backend = _backend(sample.device)
    if backend == "triton":
        from ..kernels.cld_step import launch_cld_step

        t_tensor, t_value = _device_rows(timesteps, timestep, sample.device)
        seed_tensor, seed_value = on_device_or_host(seed, sample.device)
        launch_cld_step(u=u, eps=es, out=out, coef=coef, t_tensor=t_tensor, t_value=t_value,
                        seed_tensor=seed_tensor,
                        seed_value=seed_value, noise=z, noise_mode=mode, B=B, D=D)
    elif backend == "cpp":
        torch.ops.gmm_triton_cpp.cld_step(u, es, coef.contiguous(), _cpp_rows(timesteps), int(timestep),
                                          host_int(seed), z, out, mode)
    else:
        out.copy_(ref.cld_step(u, es, coef, timesteps if timesteps is not None else timestep,
                               seed=host_int(seed) if seed is not None else None, noise=z))
    return out


_cld_step_op = torch.library.custom_op("gmm_triton::cld_step", _cld_step_impl, mutates_args=())


@_cld_step_op.register_fake
def _(sample, eps, coef, timesteps, timestep, seed, noise):
    _check_cld(sample, eps, coef, timesteps, seed, noise)
    return sample.new_empty(sample.shape)


# ------------------------------------------------------------------------------------------------
# blur_step
# ------------------------------------------------------------------------------------------------
def _blur_step_impl(sample: Tensor, eps: List[Tensor], coef: Tensor, basis: Tensor, timesteps: Optional[Tensor],
                    timestep: int, seed: Optional[Tensor], noise: Optional[Tensor]) -> Tensor:
    _check_blur(sample, eps, coef, basis, timesteps, seed, noise)
    _host_rows("blur_step", timesteps, timestep, coef.shape[0])
    out = torch.empty(sample.shape, dtype=sample.dtype, device=sample.device)
    B, C, N = sample.shape[0], sample.shape[1], sample.shape[-1]
    if out.numel() == 0:
        return out
    x, es = _rowwise(sample), [_rowwise(e) for e in eps]
    z = _rowwise(noise) if noise is not None else None
    mode = _mode(seed, noise)
    backend = _backend(sample.device)
    if backend == "triton":
        from ..kernels.blur_step import launch_blur_step

        t_tensor, t_value = _device_rows(timesteps, timestep, sample.device)
        seed_tensor, seed_value = on_device_or_host(seed, sample.device)
        launch_blur_step(x=x, eps=es, out=out, coef=coef.contiguous(), basis=basis.contiguous(), t_tensor=t_tensor,
                         t_value=t_value, seed_tensor=seed_tensor,
                         seed_value=seed_value, noise=z, noise_mode=mode, B=B, C=C, N=N)
    elif backend == "cpp":
        torch.ops.gmm_triton_cpp.blur_step(x, es, coef.contiguous(), basis.contiguous(), _cpp_rows(timesteps),
                                           int(timestep), host_int(seed), z, out, mode)
    else:
        out.copy_(ref.blur_step(x, es, coef, basis, timesteps if timesteps is not None else timestep,
                                seed=host_int(seed) if seed is not None else None, noise=z))
    return out


_blur_step_op = torch.library.custom_op("gmm_triton::blur_step", _blur_step_impl, mutates_args=())


@_blur_step_op.register_fake
def _(sample, eps, coef, basis, timesteps, timestep, seed, noise):
    _check_blur(sample, eps, coef, basis, timesteps, seed, noise)
    return sample.new_empty(sample.shape)


# ------------------------------------------------------------------------------------------------
# the Python doors
# ------------------------------------------------------------------------------------------------
def _resolve(sample, timestep, table, generator, seed, noise, stochastic):
    dev = sample.device
    if table.device != dev:
        table = table.to(dev)
    timesteps, tval = (timestep, 0) if isinstance(timestep, Tensor) else (None, int(timestep))
    if noise is not None:
        seed = None
    elif seed is not None:
        seed = as_seed_tensor(seed)
    elif stochastic:
        seed = draw_seed(generator, dev)
    return table, timesteps, tval, seed


def cld_step(sample: Tensor, model_outputs: Sequence[Tensor], timestep, table: Tensor, *, stochastic: bool = False,
             generator: Optional[torch.Generator] = None, seed=None, noise: Optional[Tensor] = None) -> Tensor:
    """One fused gDDIM step of critically-damped Langevin diffusion (``torch.ops.gmm_triton.cld_step``).

    Per (x, v) pair: u' = Ψ u + Σ_j C_j ε_j + Λ n with the 2×2 blocks of table row ``timestep``
    (``gddim/reference.py``; the schedulers build the table).

    Args:
        sample: u [B, 2, ...] (index 1: x, v), fp16/bf16/fp32/fp64.
        model_outputs: [ε_i, ε_{i-1}, …]: 1 to 3 ε-predictions like ``sample``, the current one first; their number
            is the step's order + 1.
        timestep: the table row (step index): an int, or an integer tensor with one value or one per sample.
        table: the [steps, 24] float64 table (``tables.cld_table``).
        stochastic: add the noise Λ n; n from ``noise`` (a standard-normal tensor like ``sample``), else Philox
            stream 0 under ``seed`` (int or int64 tensor), else under a seed drawn from ``generator``.
    """
    table, timesteps, tval, seed = _resolve(sample, timestep, table, generator, seed, noise, stochastic)
    eps = list(model_outputs)
    if not stochastic:
        seed = noise = None
    return _ops._call(_cld_step_impl, torch.ops.gmm_triton.cld_step, sample, eps[0] if eps else sample, sample, eps, table,
                 timesteps, tval, seed, noise)


def blur_step(sample: Tensor, model_outputs: Sequence[Tensor], timestep, table: Tensor, basis: Tensor, *,
              stochastic: bool = False, generator: Optional[torch.Generator] = None, seed=None,
              noise: Optional[Tensor] = None) -> Tensor:
    """One fused gDDIM step of blurring diffusion (``torch.ops.gmm_triton.blur_step``).

    Per N×N plane: X' = Vᵀ [A ⊙ (V X Vᵀ) + Σ_j B_j ⊙ (V E_j Vᵀ) + S ⊙ n] V with the per-frequency planes of table
    row ``timestep`` (``gddim/reference.py``).

    Args:
        sample: x [B, C, N, N] in pixel space; model_outputs: 1 to 3 pixel-space ε-predictions, the current first.
        timestep: the table row (step index), an int or an integer tensor (one value or one per sample).
        table: the [steps, 5, N, N] float64 table (``tables.blur_table``); basis: the float64 DCT matrix V [N, N].
        stochastic: add S ⊙ n with n in frequency space: ``noise`` (standard normal, like ``sample``), else
            Philox stream 0 under ``seed``, else under a seed drawn from ``generator``.
    """
    table, timesteps, tval, seed = _resolve(sample, timestep, table, generator, seed, noise, stochastic)
    if basis.device != sample.device:
        basis = basis.to(sample.device)
    eps = list(model_outputs)
    if not stochastic:
        seed = noise = None
    return _ops._call(_blur_step_impl, torch.ops.gmm_triton.blur_step, sample, eps[0] if eps else sample, sample, eps,
                 table, basis, timesteps, tval, seed, noise)
