"""What every op family (the DDIM / flow step, CLD, blur) shares on its way in, stated once.

Each op is a ``torch.library.custom_op`` whose real and fake kernels run the same checks; its Python wrapper resolves
timesteps, seeds and sample offsets into the op's arguments; its real kernel hands a resolved argument object to the
backend registry (backends.run). Everything here is the same for every family:

- checks of the arguments the host can see without reading device data (dtypes, shapes, devices, counts), and of
  host-side values (a CPU timestep outside the table); device values are guarded by the kernels (an out-of-table
  row poisons its sample with NaN);
- the wrapper's resolution of a timestep (int or tensor), a seed (int, tensor, per-sample list, or drawn from a
  generator or a list of them), a sample offset (int or tensor);
- the eager shortcut past the dispatcher (:func:`call`), which the compile matrix patches (tools/aot.host).
"""
from __future__ import annotations

import numbers
from typing import Optional, Tuple

import torch
from torch import Tensor

from .rng import as_seed_tensor, check_seed_tensor, draw_seed

FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


# ------------------------------------------------------------------------------------------------
# checks, shared by the real and the fake kernels (nothing here reads device data)
# ------------------------------------------------------------------------------------------------
def check_index(op: str, name: str, t: Optional[Tensor], B: int, device: torch.device, per_sample_ok: bool) -> None:
    """An integer tensor of one value (or of one per sample) on the host or the sample's device."""
    if t is None:
        return
    if t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
        raise TypeError(f"{op}: {name} must be an integer tensor, got {t.dtype}")
    if t.numel() != 1 and not (per_sample_ok and t.numel() == B):
        raise ValueError(f"{op}: {name} must be a scalar" + (f" or hold one value per sample ({B})" if per_sample_ok
                                                             else "") + f", got shape {tuple(t.shape)}")
    _on_host_or(op, name, t, device)


def check_seed(op: str, seed: Optional[Tensor], B: int, device: torch.device, per_sample_ok: bool) -> None:
    """One seed, or (``per_sample_ok``) one per sample, on the host or the sample's device."""
    if seed is None:
        return
    check_seed_tensor(seed, f"{op}: seed", batch=B if per_sample_ok else None)
    _on_host_or(op, "seed", seed, device)


def check_noise(op: str, noise: Optional[Tensor], sample: Tensor) -> None:
    """A caller's noise tensor: floating, the sample's shape, on its device."""
    if noise is None:
        return
    if noise.shape != sample.shape:
        raise ValueError(f"{op}: noise shape {tuple(noise.shape)} does not match sample shape {tuple(sample.shape)}")
    if noise.dtype not in FLOATS:
        raise TypeError(f"{op}: noise must be a floating-point tensor, got {noise.dtype}")
    if noise.device != sample.device:
        raise ValueError(f"{op}: noise is on {noise.device} but sample is on {sample.device}")


def check_rows_on_host(op: str, R: int, timesteps: Optional[Tensor], timestep: int) -> None:
    """Table rows the host can see (an int, or a CPU tensor) must lie in [0, R); device rows are the kernels' to
    guard (never read back)."""
    if timesteps is None:
        vals = (timestep,)
    elif timesteps.device.type == "cpu":
        vals = (int(timesteps.min()), int(timesteps.max())) if timesteps.numel() else ()
    else:
        vals = ()
    for v in vals:
        if not 0 <= v < R:
            raise ValueError(f"{op}: timestep {v} is outside the coefficient table [0, {R})")


def _on_host_or(op: str, name: str, t: Tensor, device: torch.device) -> None:
    if t.device != device and t.device.type != "cpu":
        raise ValueError(f"{op}: {name} is on {t.device} but sample is on {device}")


def rowwise(t: Tensor) -> bool:
    """Each sample's block is contiguous in logical order (any batch stride, even 0)."""
    expected = 1
    for size, stride in zip(reversed(t.shape[1:]), reversed(t.stride()[1:])):
        if size != 1 and stride != expected:
            return False
        expected *= size
    return True


def rowwise_blocks(t: Optional[Tensor]) -> Optional[Tensor]:
    """t itself if each sample's block is contiguous (any batch stride), else a contiguous copy."""
    return t if t is None or rowwise(t) else t.contiguous()


# ------------------------------------------------------------------------------------------------
# the wrappers' resolution of timesteps, seeds and sample offsets
# ------------------------------------------------------------------------------------------------
def as_timestep(timestep) -> Tuple[Optional[Tensor], int]:
    """(tensor, 0) or (None, int): integer timesteps only; an integral float (diffusers' float grids) is taken."""
    if isinstance(timestep, Tensor):
        return timestep, 0
    if isinstance(timestep, numbers.Integral) and not isinstance(timestep, bool):
        return None, int(timestep)
    if isinstance(timestep, numbers.Real) and not isinstance(timestep, bool) and float(timestep).is_integer():
        return None, int(timestep)
    raise TypeError(f"timestep must be an int or an integer tensor (a coefficient-table row), got {timestep!r}")


def as_offset(sample_offset) -> Optional[Tensor]:
    """None, a device tensor (read by the kernel), or a CPU int64 [1] in [0, 2⁶³) (checked: it is read anyway)."""
    if sample_offset is None:
        return None
    if isinstance(sample_offset, Tensor):
        if sample_offset.device.type != "cpu" or sample_offset.dtype.is_floating_point or sample_offset.numel() != 1:
            return sample_offset  # the op's checks name what is wrong; a device value is the kernel's to read
        sample_offset = int(sample_offset.reshape(-1)[0])
    if isinstance(sample_offset, bool) or not isinstance(sample_offset, numbers.Integral) or \
            not 0 <= sample_offset < 2**63:
        raise ValueError(f"sample_offset must be an int in [0, 2**63) or an integer tensor, got {sample_offset!r}")
    return None if sample_offset == 0 else torch.tensor([int(sample_offset)], dtype=torch.int64)


def resolve_seed(seed, generator, device: torch.device, needed: bool) -> Optional[Tensor]:
    """The op's seed tensor: ``seed`` (int, tensor, or one per sample) if given, else one drawn from ``generator``
    (or a list of them: one per sample) on its own device; None when the call draws nothing."""
    if not needed:
        return None
    if seed is not None:
        return as_seed_tensor(seed)
    return draw_seed(generator, device)


# ------------------------------------------------------------------------------------------------
# the eager shortcut
# ------------------------------------------------------------------------------------------------
def call(impl, op, x: Tensor, m: Tensor, *args):
    """``op(*args)`` minus the dispatcher's Python hop (~100 µs) in plain eager use.

    The implementation is the op's own; the dispatcher is needed only when something must see the op: torch.compile
    tracing, a dispatch mode (FakeTensor, opcheck), tensor subclasses, or autograd.
    """
    if (type(x) is Tensor and type(m) is Tensor and not torch.compiler.is_compiling()
            and torch._C._len_torch_dispatch_stack() == 0
            and not (torch.is_grad_enabled() and (x.requires_grad or m.requires_grad))):
        return impl(*args)
    return op(*args)
