"""The gDDIM ops: ``torch.ops.gmm_triton.cld_step`` and ``torch.ops.gmm_triton.blur_step``.

The same conventions as ``gmm_triton.ops.ddim_step``: ``torch.library.custom_op`` with a fake kernel (so
``opcheck``, ``torch.compile(fullgraph=True)`` and FakeTensor tracing see them), the same checks and argument
resolution (``gmm_triton/door.py``), and backends registered in the same registry (``backends.RUNNERS``): CUDA →
the Triton kernel (``kernels/cld_step.py``, ``kernels/blur_step.py``), CPU → the C++ twin (``csrc/gddim.cpp``) or,
by the shared backend switch, the Triton kernel under ``TRITON_INTERPRET=1`` or the float64 reference
(``reference.py``).
Per-step coefficients come from float64 device tables (``tables.py``) indexed by an int or a device tensor of
step indices (one, or one per sample); inputs are never modified; outputs take the sample's dtype (fp16/bf16
compute in fp32, fp64 in fp64). The maths and the noise's counter layout are in ``reference.py``.

Most callers want :func:`cld_step` / :func:`blur_step`, which resolve seeds and the ε history into the op's
arguments (the schedulers do this).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Optional, Sequence

import torch
from torch import Tensor

from .. import backends, door
from ..backends import cpp_rows, device_rows, host_int, host_seeds, on_device_or_host
from ..contract import NOISE_NONE, NOISE_PHILOX, NOISE_TENSOR
from ..kernels.blur_step import MAX_SIZE as BLUR_MAX_SIZE
from . import reference as ref
from .tables import BLUR_PLANES, CLD_COLS

MAX_EPS = 3


# ------------------------------------------------------------------------------------------------
# checks, shared by the real and the fake kernels
# ------------------------------------------------------------------------------------------------
def _check_common(op, sample, eps, coef, timesteps, seed, noise):
    if not isinstance(sample, Tensor) or sample.dtype not in door.FLOATS:
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
    door.check_index(op, "timestep", timesteps, B, sample.device, per_sample_ok=True)
    door.check_seed(op, seed, B, sample.device, per_sample_ok=False)
    door.check_noise(op, noise, sample)


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


# ------------------------------------------------------------------------------------------------
# the resolved arguments and the backends (registered in backends.RUNNERS)
# ------------------------------------------------------------------------------------------------
@dataclass
class GddimArgs:
    """A gDDIM op's resolved arguments: per-sample blocks contiguous (any batch stride), ``out`` contiguous."""

    sample: Tensor
    eps: list
    coef: Tensor
    basis: Optional[Tensor]   # blur only: the DCT matrix V
    timesteps: Optional[Tensor]
    timestep: int
    seed: Optional[Tensor]    # int64 [1], None without Philox noise
    noise: Optional[Tensor]
    noise_mode: int
    out: Tensor


def _resolve(op, sample, eps, coef, basis, timesteps, timestep, seed, noise) -> GddimArgs:
    """Both ops' body between their checks and the backend: the host-visible rows, the output, the noise source."""
    door.check_rows_on_host(op, coef.shape[0], timesteps, timestep)
    out = torch.empty(sample.shape, dtype=sample.dtype, device=sample.device)
    mode = NOISE_TENSOR if noise is not None else (NOISE_PHILOX if seed is not None else NOISE_NONE)
    return GddimArgs(door.rowwise_blocks(sample), [door.rowwise_blocks(e) for e in eps], coef.contiguous(),
                     None if basis is None else basis.contiguous(), timesteps, timestep, seed,
                     door.rowwise_blocks(noise), mode, out)


@backends.register("cld_step", "triton")
def _cld_triton(a: GddimArgs) -> None:
    from ..kernels.cld_step import launch_cld_step

    t_tensor, t_value = device_rows(a.timesteps, a.timestep, a.sample.device)
    seed_tensor, seed_value = on_device_or_host(a.seed, a.sample.device)
    launch_cld_step(u=a.sample, eps=a.eps, out=a.out, coef=a.coef, t_tensor=t_tensor, t_value=t_value,
                    seed_tensor=seed_tensor, seed_value=seed_value, noise=a.noise, noise_mode=a.noise_mode,
                    B=a.sample.shape[0], D=math.prod(a.sample.shape[2:]))


@backends.register("cld_step", "cpp")
def _cld_cpp(a: GddimArgs) -> None:
    torch.ops.gmm_triton_cpp.cld_step(a.sample, a.eps, a.coef, cpp_rows(a.timesteps), int(a.timestep),
                                      host_int(a.seed), a.noise, a.out, a.noise_mode)


@backends.register("cld_step", "reference")
def _cld_reference(a: GddimArgs) -> None:
    a.out.copy_(ref.cld_step(a.sample, a.eps, a.coef, a.timesteps if a.timesteps is not None else a.timestep,
                             seed=host_seeds(a.seed), noise=a.noise))


@backends.register("blur_step", "triton")
def _blur_triton(a: GddimArgs) -> None:
    from ..kernels.blur_step import launch_blur_step

    t_tensor, t_value = device_rows(a.timesteps, a.timestep, a.sample.device)
    seed_tensor, seed_value = on_device_or_host(a.seed, a.sample.device)
    B, C, N = a.sample.shape[0], a.sample.shape[1], a.sample.shape[-1]
    launch_blur_step(x=a.sample, eps=a.eps, out=a.out, coef=a.coef, basis=a.basis, t_tensor=t_tensor,
                     t_value=t_value, seed_tensor=seed_tensor, seed_value=seed_value, noise=a.noise,
                     noise_mode=a.noise_mode, B=B, C=C, N=N)


@backends.register("blur_step", "cpp")
def _blur_cpp(a: GddimArgs) -> None:
    torch.ops.gmm_triton_cpp.blur_step(a.sample, a.eps, a.coef, a.basis, cpp_rows(a.timesteps), int(a.timestep),
                                       host_int(a.seed), a.noise, a.out, a.noise_mode)


@backends.register("blur_step", "reference")
def _blur_reference(a: GddimArgs) -> None:
    a.out.copy_(ref.blur_step(a.sample, a.eps, a.coef, a.basis, a.timesteps if a.timesteps is not None else a.timestep,
                              seed=host_seeds(a.seed), noise=a.noise))


# ------------------------------------------------------------------------------------------------
# the ops
# ------------------------------------------------------------------------------------------------
def _cld_step_impl(sample: Tensor, eps: List[Tensor], coef: Tensor, timesteps: Optional[Tensor], timestep: int,
                   seed: Optional[Tensor], noise: Optional[Tensor]) -> Tensor:
    _check_cld(sample, eps, coef, timesteps, seed, noise)
    a = _resolve("cld_step", sample, eps, coef, None, timesteps, timestep, seed, noise)
    if a.out.numel():
        backends.run("cld_step", a, sample.device)
    return a.out


_cld_step_op = torch.library.custom_op("gmm_triton::cld_step", _cld_step_impl, mutates_args=())


@_cld_step_op.register_fake
def _(sample, eps, coef, timesteps, timestep, seed, noise):
    _check_cld(sample, eps, coef, timesteps, seed, noise)
    return sample.new_empty(sample.shape)


def _blur_step_impl(sample: Tensor, eps: List[Tensor], coef: Tensor, basis: Tensor, timesteps: Optional[Tensor],
                    timestep: int, seed: Optional[Tensor], noise: Optional[Tensor]) -> Tensor:
    _check_blur(sample, eps, coef, basis, timesteps, seed, noise)
    a = _resolve("blur_step", sample, eps, coef, basis, timesteps, timestep, seed, noise)
    if a.out.numel():
        backends.run("blur_step", a, sample.device)
    return a.out


_blur_step_op = torch.library.custom_op("gmm_triton::blur_step", _blur_step_impl, mutates_args=())


@_blur_step_op.register_fake
def _(sample, eps, coef, basis, timesteps, timestep, seed, noise):
    _check_blur(sample, eps, coef, basis, timesteps, seed, noise)
    return sample.new_empty(sample.shape)


# ------------------------------------------------------------------------------------------------
# the Python doors
# ------------------------------------------------------------------------------------------------
def _door(sample, timestep, table, generator, seed, noise, stochastic):
    """The wrappers' shared resolution: the table on the sample's device, the timestep, and the seed (drawn only
    when Philox noise is drawn)."""
    if table.device != sample.device:
        table = table.to(sample.device)
    timesteps, tval = door.as_timestep(timestep)
    seed = door.resolve_seed(seed, generator, sample.device, needed=stochastic and noise is None)
    return table, timesteps, tval, seed, noise if stochastic else None


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
    table, timesteps, tval, seed, noise = _door(sample, timestep, table, generator, seed, noise, stochastic)
    eps = list(model_outputs)
    return door.call(_cld_step_impl, torch.ops.gmm_triton.cld_step, sample, eps[0] if eps else sample, sample, eps,
                     table, timesteps, tval, seed, noise)


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
    table, timesteps, tval, seed, noise = _door(sample, timestep, table, generator, seed, noise, stochastic)
    if basis.device != sample.device:
        basis = basis.to(sample.device)
    eps = list(model_outputs)
    return door.call(_blur_step_impl, torch.ops.gmm_triton.blur_step, sample, eps[0] if eps else sample, sample, eps,
                     table, basis, timesteps, tval, seed, noise)
