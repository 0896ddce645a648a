"""The host side of the RNG contract (stated in reference.py): seeds from generators, Philox normals and words.

A seed is an int64 [1] tensor. It is drawn on the generator's own device, so nothing waits on the GPU: a CPU
seed is read on the host by the op; a device seed is read by the kernel, which is what lets a captured CUDA
graph draw fresh noise on every replay. Python ints are accepted anywhere a seed is and mean the same 64 bits
(0 ≤ seed < 2⁶⁴; values ≥ 2⁶³ are stored as their two's-complement int64).
"""
from __future__ import annotations

import numbers
from typing import Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from . import backends
from .contract import STREAM_LATENT

_U64 = 1 << 64


def as_seed_tensor(seed, name: str = "seed") -> Tensor:
    """``seed`` as an int64 tensor: a Python int in [0, 2⁶⁴) or an integer tensor of one element gives [1]; a
    sequence of such ints, or an integer tensor of several, gives one seed per sample ([B], the op's per-sample
    seeds)."""
    if isinstance(seed, Tensor):
        check_seed_tensor(seed, name)
        return seed.reshape(-1).to(torch.int64)
    if isinstance(seed, (list, tuple)):
        if not seed:
            raise ValueError(f"{name} is an empty sequence; pass one seed per sample, or one for the batch")
        return torch.tensor([_int64_bits(s, f"{name}[{i}]") for i, s in enumerate(seed)], dtype=torch.int64)
    return torch.tensor([_int64_bits(seed, name)], dtype=torch.int64)


def _int64_bits(seed, name: str) -> int:
    """A seed in [0, 2⁶⁴) as the int64 with its bits (values ≥ 2⁶³ become their two's complement)."""
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"{name} must be an int in [0, 2**64) or an integer tensor, got {type(seed).__name__}")
    s = int(seed)
    if not 0 <= s < _U64:
        raise ValueError(f"{name} must be in [0, 2**64), got {s}")
    return s - _U64 if s >= 1 << 63 else s


def check_seed_tensor(seed: Tensor, name: str = "seed", batch: Optional[int] = None) -> None:
    """An integer tensor of one seed, or (``batch`` given) of one seed per sample."""
    if seed.dtype.is_floating_point or seed.dtype.is_complex or seed.dtype == torch.bool:
        raise TypeError(f"{name} must be an integer tensor (int64 bits of the Philox key), got {seed.dtype}")
    if seed.numel() == 0:
        raise ValueError(f"{name} is empty: it must hold one seed, or one per sample")
    if batch is not None and seed.numel() not in (1, batch):
        raise ValueError(f"{name} must hold one seed or one per sample ({batch}), got shape {tuple(seed.shape)}")


def host_seed(seed: Tensor) -> int:
    """The seed's 64 bits as a host int64 (a CPU read; a device seed is copied once: CPU backends only)."""
    return backends.host_int(seed)


def draw_seed(generator=None, device=None) -> Tensor:
    """A fresh Philox seed from ``generator`` (or torch's global RNG on ``device``): int64 [1]; or, for a list of
    generators (one per sample, as diffusers pipelines pass them), one seed per generator, int64 [len(list)] — the
    op's per-sample seeds, so that a batch drawn with [g0, g1, …] equals the single runs drawn with g0, g1, ….

    Each seed is drawn on its generator's own device, so nothing waits on the GPU: CPU generators give a CPU seed
    that the op reads on the host (per-sample seeds are copied to the device, host to device); CUDA generators (or
    the default one for CUDA latents) give a device seed that the kernel reads. The generators of a list must
    share one device.
    """
    if isinstance(generator, (list, tuple)):
        if not generator:
            raise ValueError("generator is an empty list; pass one torch.Generator per sample, or one for the batch")
        for i, g in enumerate(generator):
            if not isinstance(g, torch.Generator):
                raise TypeError(f"generator[{i}] must be a torch.Generator, got {type(g).__name__}")
        devices = {g.device for g in generator}
        if len(devices) > 1:
            raise ValueError(f"the generators of a list must share one device, got {sorted(map(str, devices))}")
        return torch.cat([_draw(g, g.device) for g in generator])
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or a list of them, got {type(generator).__name__}")
    return _draw(generator, generator.device if generator is not None else torch.device(device or "cpu"))


def _draw(generator: Optional[torch.Generator], device: torch.device) -> Tensor:
    return torch.randint(0, 2**62, (1,), generator=generator, device=device, dtype=torch.int64)


def _key(seed) -> int:
    """A seed's 64 bits as the int64 the kernels' ``seed`` argument takes (values ≥ 2⁶³ wrap to negative)."""
    s = int(seed)
    if not -(1 << 63) <= s < _U64:
        raise ValueError(f"seed must be in [0, 2**64) (or an int64), got {s}")
    return s - _U64 if s >= 1 << 63 else s


def philox_normal(shape: Sequence[int], *, seed: int, stream: int, device=None,
                  dtype: torch.dtype = torch.float32, start: int = 0) -> Tensor:
    """Standard normals of Philox ``stream`` under ``seed`` for flat indices start.. of ``shape`` (reference.py)."""
    device = torch.device(device) if device is not None else torch.device("cpu")
    out = torch.empty(tuple(shape), device=device, dtype=torch.float32)
    if out.numel():
        backend = backends.backend_for(device)
        if backend == "triton":
            from .kernels.philox import normal_fill

            normal_fill(out, _key(seed), int(stream), int(start))
        elif backend == "cpp":
            torch.ops.gmm_triton_cpp.philox_normal_(out, _key(seed), int(stream), int(start))
        else:
            from .reference import philox_normal as ref

            out.copy_(torch.from_numpy(ref(_key(seed), out.numel(), int(stream), int(start))).reshape(out.shape))
    return out.to(dtype)


def philox_words(n: int, *, seed: int, stream: int, start: int = 0, device=None) -> Tensor:
    """The raw Philox words [n, 4] (int32 bit patterns) of counters start..start+n-1: the RNG's integers."""
    device = torch.device(device) if device is not None else torch.device("cpu")
    out = torch.empty((n, 4), device=device, dtype=torch.int32)
    backend = backends.backend_for(device)
    if backend == "triton":
        from .kernels.philox import philox_words as words

        return words(out, _key(seed), int(stream), int(start))
    if backend == "reference":
        from .reference import philox4x32

        w = philox4x32(_key(seed), np.arange(start, start + n, dtype=np.uint64), int(stream))
        return out.copy_(torch.from_numpy(np.stack(w, 1).view(np.int32)))
    torch.ops.gmm_triton_cpp.philox_words_(out, _key(seed), int(stream), int(start))
    return out


def initial_noise(shape: Sequence[int], seed: int, *, sample_offset: int = 0, device=None,
                  dtype: torch.dtype = torch.float32) -> Tensor:
    """The initial latents x_T ~ N(0, I) of samples sample_offset … sample_offset + B − 1 of a run (B = shape[0]).

    Sample b takes the Philox normals of stream 3 (STREAM_LATENT) at flat indices (sample_offset + b)·D … +D−1,
    D = prod(shape[1:]): a sample's latent depends on (seed, its global index) only, never on the batch it is in
    or the process that draws it. Generated on the host (the C++ twin, or the reference) and copied to
    ``device``, so every device gets the same bits.
    """
    if isinstance(sample_offset, bool) or not isinstance(sample_offset, numbers.Integral) or sample_offset < 0:
        raise ValueError(f"sample_offset must be an int >= 0, got {sample_offset!r}")
    shape = tuple(int(s) for s in shape)
    if not shape:
        raise ValueError("shape must have a batch dimension: [B, ...]")
    D = int(np.prod(shape[1:])) if len(shape) > 1 else 1
    z = philox_normal(shape, seed=int(seed), stream=STREAM_LATENT, start=int(sample_offset) * D)
    return z.to(device=device or "cpu", dtype=dtype)
