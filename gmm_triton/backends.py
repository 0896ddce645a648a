"""The op's implementations, one adapter each, and the one place that chooses between them.

- CUDA: the Triton kernel (kernels/step.py).
- CPU: the C++ twin ``gmm_triton._C`` (csrc/), same maths and same Philox stream. For tests and debugging,
  ``GMM_TRITON_CPU_BACKEND`` (or :func:`use_cpu_backend`) selects ``"triton"`` (the Triton kernel under
  ``TRITON_INTERPRET=1``, which must be set before gmm_triton is imported) or ``"reference"`` (the float64
  oracle of reference.py, slow). Without the extension and without an explicit choice the CPU op raises and
  says how to build it: there is no silent fallback.

An adapter receives a :class:`StepArgs` whose every field the op has already checked and resolved.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from .contract import NOISE_NONE, PRED_CODES, VAR_CODES

try:  # registers torch.ops.gmm_triton_cpp.*
    from . import _C  # noqa: F401

    _CPP_ERROR = None
except ImportError as e:  # pragma: no cover - exercised only on machines without the build
    _CPP_ERROR = str(e)

CPU_BACKENDS = ("cpp", "triton", "reference")
_ENV_BACKEND = os.environ.get("GMM_TRITON_CPU_BACKEND")  # read once: the step is on a hot path
_cpu_backend_override: Optional[str] = None


def cpu_backend() -> str:
    """The CPU implementation in use: "cpp", "triton", "reference", or "missing" (extension not built)."""
    name = _cpu_backend_override or _ENV_BACKEND
    if name:
        if name not in CPU_BACKENDS:
            raise ValueError(f"GMM_TRITON_CPU_BACKEND must be one of {CPU_BACKENDS}, got {name!r}")
        return name
    return "cpp" if _CPP_ERROR is None else "missing"


@contextlib.contextmanager
def use_cpu_backend(name: str):
    """Temporarily route the CPU op to another backend (tests use it to run the Triton kernel on CPU)."""
    global _cpu_backend_override
    if name not in CPU_BACKENDS:
        raise ValueError(f"CPU backend must be one of {CPU_BACKENDS}, got {name!r}")
    old, _cpu_backend_override = _cpu_backend_override, name
    try:
        yield
    finally:
        _cpu_backend_override = old


def backend_for(device: torch.device) -> str:
    """Which implementation runs on ``device``: "triton" on CUDA; on CPU the chosen one (cpu_backend)."""
    if device.type == "cuda":
        return "triton"
    if device.type != "cpu":
        raise NotImplementedError(f"gmm_triton supports CUDA and CPU tensors, not {device}")
    name = cpu_backend()
    if name == "missing":
        raise RuntimeError(
            "gmm_triton's CPU kernel (the C++ extension gmm_triton._C) is not built "
            f"({_CPP_ERROR}). Build it against your torch with `pip install --no-build-isolation -e .` "
            "(or `make test`), or set GMM_TRITON_CPU_BACKEND=reference for the slow float64 reference "
            "(GMM_TRITON_CPU_BACKEND=triton runs the Triton kernel under TRITON_INTERPRET=1)."
        )
    if name == "triton" and os.environ.get("TRITON_INTERPRET") != "1":
        raise RuntimeError("the 'triton' CPU backend needs TRITON_INTERPRET=1 set before gmm_triton is imported")
    return name


@dataclass(frozen=True)
class Layout:
    """A dense layout whose inner (non-batch) dimensions are permuted: each sample is one contiguous block, but
    in memory order, not in logical (row-major) order.

    The kernels read and write position j of a sample's block as usual (coalesced) and use its logical index
    (the RNG counter and the mixture tables are defined on logical indices) only where one is needed:
    ``j = (c0·sizes[1] + c1)·sizes[2] + c2`` (memory-order coordinates) ↦ ``d = c0·lstrides[0] + c1·lstrides[1]
    + c2·lstrides[2]``, with at most three dimensions after merging (contract.MAX_PERMUTED_RANK).
    """

    sizes: tuple  # (n0, n1, n2) memory-order sizes, outermost first, padded with 1
    lstrides: tuple  # (l0, l1, l2) their strides in the logical flattening

    def logical_index(self, j: Tensor) -> Tensor:
        """The logical index of memory positions j (int64 tensor): the reference of the kernels' mapping."""
        _, n1, n2 = self.sizes
        c2, t = j % n2, j // n2
        c1, c0 = t % n1, t // n1
        return c0 * self.lstrides[0] + c1 * self.lstrides[1] + c2 * self.lstrides[2]


@dataclass
class StepArgs:
    """The op's resolved arguments. x, m, noise, out, x0: [B(, 2B for m with CFG), ...] whose per-sample blocks are
    contiguous, in logical order or (``layout``) in one shared permuted order; ``B·D`` elements."""

    x: Tensor
    m: Tensor
    out: Tensor
    x0: Tensor
    coef: Tensor
    timesteps: Optional[Tensor]   # int64 rows, one or one per sample (None: ``timestep``)
    timestep: int
    seed: Optional[Tensor]        # int64 [1], or [B] (one per sample: per_sample_seeds); None when nothing is drawn
    sample_offset: Optional[Tensor]  # int64 [1]: global index of sample 0 (None: 0)
    noise: Optional[Tensor]
    threshold: Optional[Tensor]   # float32 [B]
    mixture: object               # MixtureTensors or None
    prediction_type: str
    eta: float
    clip: Optional[float]
    clipped_eps: bool
    guidance: Optional[float]
    offset_final: bool
    write_x0: bool
    noise_mode: int
    layout: Optional[Layout]
    B: int
    D: int

    @property
    def variance_mode(self) -> str:
        return self.mixture.variance_mode if self.mixture is not None else "none"

    @property
    def per_sample_seeds(self) -> bool:
        """One seed per sample: sample b draws under seed[b] at global index sample_offset (the RNG contract,
        reference.sample_keys), as if it were sample 0 of its own run. (With B = 1 both readings agree.)"""
        return self.seed is not None and self.seed.numel() > 1


def host_int(t: Optional[Tensor]) -> int:
    """The value of an int64 scalar tensor (seed, sample offset) on the host, 0 for None (reads any device)."""
    return 0 if t is None else int(t.reshape(-1)[0].item())


def host_ints(t: Tensor) -> list:
    """The values of an int64 tensor (per-sample seeds) on the host (reads any device: CPU backends only)."""
    return [int(v) for v in t.reshape(-1).tolist()]


def on_device_or_host(t: Optional[Tensor], device: torch.device):
    """(device tensor or None, host int): a CPU scalar is read on the host (no device sync), a device one by the
    kernel; several values (per-sample seeds) are always the kernel's to read (a CPU tensor is copied to the
    device, host to device: no sync)."""
    if t is None:
        return None, 0
    if t.device.type == "cpu" and t.numel() == 1:
        return None, host_int(t)
    return t.reshape(-1).to(device, non_blocking=True), 0


def run_triton(a: StepArgs, config=None) -> None:
    from .kernels.step import launch_step

    t_tensor, t_value = None, int(a.timestep)
    if a.timesteps is not None:
        if a.timesteps.numel() == 1 and a.timesteps.device.type == "cpu":
            t_value = int(a.timesteps.reshape(-1)[0])
        else:
            t_tensor = a.timesteps.reshape(-1).to(a.x.device).contiguous()
    seed_tensor, seed_value = on_device_or_host(a.seed, a.x.device)
    off_tensor, off_value = on_device_or_host(a.sample_offset, a.x.device)
    launch_step(a, t_tensor=t_tensor, t_value=t_value, seed_tensor=seed_tensor, seed_value=seed_value,
                off_tensor=off_tensor, off_value=off_value, config=config)


def run_cpp(a: StepArgs) -> None:
    rows = a.timesteps.reshape(-1).to(torch.int64).contiguous() if a.timesteps is not None else None
    mix = a.mixture.op_tensors() if a.mixture is not None else (None,) * 6
    perm = a.layout.sizes + a.layout.lstrides if a.layout is not None else ()
    torch.ops.gmm_triton_cpp.ddim_step(
        a.x, a.m, a.coef, rows, int(a.timestep), host_int(a.seed),
        a.seed.reshape(-1).to("cpu", torch.int64).contiguous() if a.per_sample_seeds else None,
        host_int(a.sample_offset), a.noise,
        a.threshold, *mix, a.out, a.x0, PRED_CODES[a.prediction_type], VAR_CODES[a.variance_mode], a.noise_mode,
        float(a.eta), float(a.clip) if a.clip is not None else 0.0, a.clip is not None, a.clipped_eps,
        float(a.guidance) if a.guidance is not None else 0.0, a.guidance is not None, a.offset_final, a.write_x0,
        list(perm),
    )


def run_reference(a: StepArgs) -> None:
    """The float64 reference on the logical tensors; the outputs take whatever layout ``out`` has."""
    from . import reference

    rows = a.timesteps if a.timesteps is not None else a.timestep
    prev, x0 = reference.fused_step(
        a.x, a.m, rows, a.coef, prediction_type=a.prediction_type, eta=a.eta, clip_sample_range=a.clip,
        threshold_scale=a.threshold, use_clipped_model_output=a.clipped_eps, guidance_scale=a.guidance,
        seed=(host_ints(a.seed) if a.per_sample_seeds else host_int(a.seed)) if a.seed is not None else None,
        sample_offset=host_int(a.sample_offset),
        noise=a.noise if a.noise_mode != NOISE_NONE else None, mixture=a.mixture, offset_final=a.offset_final,
    )
    a.out.copy_(prev)
    if a.write_x0:
        a.x0.copy_(x0)


RUNNERS = {"triton": run_triton, "cpp": run_cpp, "reference": run_reference}
