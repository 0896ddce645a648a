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
import dataclasses
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


def empty_in_layout(t: Tensor, like: Tensor) -> Tensor:
    """An empty tensor of t's shape and dtype whose inner dimensions are laid out in like's memory order (batch
    stride: t's inner size)."""
    perm = [0] + sorted(range(1, like.dim()), key=lambda i: -like.stride(i))
    inv = sorted(range(len(perm)), key=lambda i: perm[i])
    return torch.empty([t.shape[p] for p in perm], dtype=t.dtype, device=t.device).permute(inv)


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
    # Pixel tiles (kernels/step.py): C > 0 when out or an input is channels_last-like ([C, HW] samples stored
    # [HW, C], C a power of two) and the op left the other layout's inputs in place; stream_cl says which of
    # (x, m, noise) are stored that way (out: ``layout is not None``). Implementations without pixel tiles take
    # :meth:`conformed`.
    pixels: int = 0
    stream_cl: tuple = (False, False, False)

    def conformed(self) -> "StepArgs":
        """These arguments with every input in out's layout (an input in the other one copied once) and no pixel
        tiles: what an implementation that indexes all streams alike takes."""
        if not self.pixels:
            return self
        cl_out = self.layout is not None
        x, m, z = (t if t is None or cl == cl_out else empty_in_layout(t, self.out).copy_(t)
                   for t, cl in zip((self.x, self.m, self.noise), self.stream_cl))
        return dataclasses.replace(self, x=x, m=m, noise=z, pixels=0, stream_cl=(cl_out,) * 3)

    @property
    def variance_mode(self) -> str:
        return self.mixture.variance_mode if self.mixture is not None else "none"

    @property
    def per_sample_seeds(self) -> bool:
        """One seed per sample: sample b draws under seed[b] at global index sample_offset (the RNG contract,
        reference.sample_keys), as if it were sample 0 of its own run. (With B = 1 both readings agree.)"""
        return self.seed is not None and self.seed.numel() > 1


# ------------------------------------------------------------------------------------------------
# the registry: every op family's implementations, and the one dispatch
# ------------------------------------------------------------------------------------------------
RUNNERS: dict = {}
"""{op family: {backend: runner}}: a runner takes the op's resolved argument object and writes its outputs."""


def register(family: str, backend: str):
    """Decorator: ``fn`` implements op ``family`` on ``backend`` ("triton", or a CPU backend)."""
    if backend not in ("triton",) + CPU_BACKENDS:
        raise ValueError(f"backend must be 'triton' or one of {CPU_BACKENDS}, got {backend!r}")

    def deco(fn):
        RUNNERS.setdefault(family, {})[backend] = fn
        return fn

    return deco


def run(family: str, args, device: torch.device) -> None:
    """Runs op ``family`` on the backend that serves ``device`` (backend_for)."""
    RUNNERS[family][backend_for(device)](args)


# ------------------------------------------------------------------------------------------------
# what every runner needs: the launch scalars (timestep row, seed, sample offset) on the host or the device
# ------------------------------------------------------------------------------------------------
def host_int(t: Optional[Tensor]) -> int:
    """The value of an int64 scalar tensor (seed, sample offset) on the host, 0 for None (reads any device)."""
    return 0 if t is None else int(t.reshape(-1)[0].item())


def host_seeds(seed: Optional[Tensor]):
    """The seed on the host (reads any device: CPU backends only): None, an int, or a list of per-sample ints."""
    if seed is None:
        return None
    return [int(v) for v in seed.reshape(-1).tolist()] if seed.numel() > 1 else host_int(seed)


def cpu_seeds(seed: Optional[Tensor]) -> Optional[Tensor]:
    """Per-sample seeds as the C++ twin takes them (a contiguous CPU int64 tensor), None for one seed."""
    return seed.reshape(-1).to("cpu", torch.int64).contiguous() if seed is not None and seed.numel() > 1 else None


def on_device_or_host(t: Optional[Tensor], device: torch.device):
    """(device tensor or None, host int): a CPU scalar is read on the host (no device sync), a device one by the
    kernel; several values (per-sample seeds or rows) are always the kernel's to read (a CPU tensor is copied to
    the device, host to device: no sync)."""
    if t is None:
        return None, 0
    if t.device.type == "cpu" and t.numel() == 1:
        return None, host_int(t)
    return t.reshape(-1).to(device, non_blocking=True).contiguous(), 0


def device_rows(timesteps: Optional[Tensor], timestep: int, device: torch.device):
    """(device tensor or None, host int) of the table rows for a Triton launch."""
    return (None, int(timestep)) if timesteps is None else on_device_or_host(timesteps, device)


def cpp_rows(timesteps: Optional[Tensor]) -> Optional[Tensor]:
    """The table rows as the C++ twin takes them (contiguous int64), None for an int timestep."""
    return timesteps.reshape(-1).to(torch.int64).contiguous() if timesteps is not None else None


# ------------------------------------------------------------------------------------------------
# the DDIM / flow step
# ------------------------------------------------------------------------------------------------
@register("ddim_step", "triton")
def run_triton(a: StepArgs, config=None) -> None:
    from .kernels.step import launch_step

    t_tensor, t_value = device_rows(a.timesteps, a.timestep, a.x.device)
    seed_tensor, seed_value = on_device_or_host(a.seed, a.x.device)
    off_tensor, off_value = on_device_or_host(a.sample_offset, a.x.device)
    launch_step(a, t_tensor=t_tensor, t_value=t_value, seed_tensor=seed_tensor, seed_value=seed_value,
                off_tensor=off_tensor, off_value=off_value, config=config)


@register("ddim_step", "cpp")
def run_cpp(a: StepArgs) -> None:
    a = a.conformed()
    perm = a.layout.sizes + a.layout.lstrides if a.layout is not None else ()
    torch.ops.gmm_triton_cpp.ddim_step(
        a.x, a.m, a.coef, cpp_rows(a.timesteps), int(a.timestep), host_int(a.seed), cpu_seeds(a.seed),
        host_int(a.sample_offset), a.noise, a.threshold, a.mixture.op_tensors() if a.mixture is not None else [],
        a.out, a.x0, PRED_CODES[a.prediction_type], VAR_CODES[a.variance_mode], a.noise_mode, float(a.eta),
        float(a.clip) if a.clip is not None else 0.0, a.clip is not None, a.clipped_eps,
        float(a.guidance) if a.guidance is not None else 0.0, a.guidance is not None, a.offset_final, a.write_x0,
        list(perm),
    )


@register("ddim_step", "reference")
def run_reference(a: StepArgs) -> None:
    """The float64 reference on the logical tensors; the outputs take whatever layout ``out`` has."""
    from . import reference

    rows = a.timesteps if a.timesteps is not None else a.timestep
    prev, x0 = reference.fused_step(
        a.x, a.m, rows, a.coef, prediction_type=a.prediction_type, eta=a.eta, clip_sample_range=a.clip,
        threshold_scale=a.threshold, use_clipped_model_output=a.clipped_eps, guidance_scale=a.guidance,
        seed=host_seeds(a.seed), sample_offset=host_int(a.sample_offset),
        noise=a.noise if a.noise_mode != NOISE_NONE else None, mixture=a.mixture, offset_final=a.offset_final,
    )
    a.out.copy_(prev)
    if a.write_x0:
        a.x0.copy_(x0)
