"""The op: the only door between the kernels and the schedulers.

``torch.ops.gmm_triton.ddim_step`` is a ``torch.library.custom_op`` with a fake (meta) kernel, so it works
under ``torch.compile(fullgraph=True)``, ``opcheck`` and CUDA-graph capture. Devices:

- CUDA: the Triton kernel (kernels/step.py).
- CPU: the C++ twin ``gmm_triton._C`` (csrc/), same maths and same Philox stream. For tests and debugging,
  ``GMM_TRITON_CPU_BACKEND`` (or :func:`use_cpu_backend`) selects ``"triton"`` (the Triton kernel under
  ``TRITON_INTERPRET=1``, which must be set before gmm_triton is imported) or ``"reference"`` (the float64
  oracle of reference.py, slow). Without the extension and without an explicit choice the CPU op raises
  and says how to build it: there is no silent fallback.

Most callers want :func:`ddim_step`, the Python wrapper that resolves timesteps, seeds, thresholds and
the mixture object into the op's flat arguments.
"""
from __future__ import annotations

import contextlib
import math
import os
from typing import Optional, Sequence, Tuple

import torch
from torch import Tensor

from .coefficients import N_COLS
from .kernels.step import NOISE_NONE, NOISE_PHILOX, NOISE_TENSOR, PRED_CODES, VAR_CODES
from .reference import PREDICTION_TYPES, dynamic_threshold_scale

try:  # registers torch.ops.gmm_triton_cpp.*
    from . import _C  # noqa: F401

    _CPP_ERROR = None
except ImportError as e:  # pragma: no cover - exercised only on machines without the build
    _CPP_ERROR = str(e)

CPU_BACKENDS = ("cpp", "triton", "reference")
_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_cpu_backend_override: Optional[str] = None


_ENV_BACKEND = os.environ.get("GMM_TRITON_CPU_BACKEND")  # read once: the step is on a hot path


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


def _missing_cpp() -> RuntimeError:
    return RuntimeError(
        "gmm_triton's CPU kernel (the C++ extension gmm_triton._C) is not built "
        f"({_CPP_ERROR}). Build it against your torch with `pip install --no-build-isolation -e .` "
        "(or `make test`), or set GMM_TRITON_CPU_BACKEND=reference for the slow float64 reference "
        "(GMM_TRITON_CPU_BACKEND=triton runs the Triton kernel under TRITON_INTERPRET=1)."
    )


def _triton_interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


# ------------------------------------------------------------------------------------------------
# argument checks, shared by the real and the fake kernels
# ------------------------------------------------------------------------------------------------
def _inner_contiguous(t: Tensor) -> bool:
    if t.is_contiguous():
        return True
    expected = 1
    for size, stride in zip(reversed(t.shape[1:]), reversed(t.stride()[1:])):
        if size != 1 and stride != expected:
            return False
        expected *= size
    return True


def _rowwise(t: Tensor) -> Tensor:
    """t itself if each sample's block is contiguous (any batch stride, even 0), else a contiguous copy."""
    return t if _inner_contiguous(t) else t.contiguous()


def _check(sample, model_output, coef, timesteps, noise, threshold, mix, prediction_type, variance_mode,
           eta, guidance_scale):
    if not isinstance(sample, Tensor) or sample.dtype not in _FLOATS:
        raise TypeError(f"sample must be a floating-point tensor (fp16/bf16/fp32/fp64), got "
                        f"{getattr(sample, 'dtype', type(sample))}")
    if not isinstance(model_output, Tensor) or model_output.dtype not in _FLOATS:
        raise TypeError(f"model_output must be a floating-point tensor (fp16/bf16/fp32/fp64), got "
                        f"{getattr(model_output, 'dtype', type(model_output))}")
    if sample.dim() < 1:
        raise ValueError("sample must have a batch dimension: shape [B, ...]")
    if model_output.dtype != sample.dtype:
        raise TypeError(f"model_output dtype {model_output.dtype} does not match sample dtype {sample.dtype}; "
                        "cast one of them")
    if model_output.device != sample.device:
        raise ValueError(f"model_output is on {model_output.device} but sample is on {sample.device}")
    B = sample.shape[0]
    if guidance_scale is None:
        if model_output.shape != sample.shape:
            raise ValueError(f"model_output shape {tuple(model_output.shape)} does not match sample shape "
                             f"{tuple(sample.shape)}")
    elif model_output.shape[0] != 2 * B or model_output.shape[1:] != sample.shape[1:]:
        raise ValueError(f"with guidance_scale, model_output must hold the [uncond; cond] halves: shape "
                         f"{(2 * B, *sample.shape[1:])}, got {tuple(model_output.shape)}")
    if coef.dim() != 2 or coef.shape[1] != N_COLS or coef.dtype != torch.float64:
        raise ValueError(f"coefficient table must be float64 [R, {N_COLS}] (coefficients.py), got "
                         f"{coef.dtype} {tuple(coef.shape)}")
    if coef.device != sample.device:
        raise ValueError(f"coefficient table is on {coef.device} but sample is on {sample.device}")
    if timesteps is not None:
        if timesteps.dtype.is_floating_point or timesteps.dtype.is_complex or timesteps.dtype == torch.bool:
            raise TypeError(f"timestep must be an integer tensor, got {timesteps.dtype}")
        if timesteps.numel() not in (1, B):
            raise ValueError(f"timestep must be a scalar or hold one value per sample ({B}), got shape "
                             f"{tuple(timesteps.shape)}")
        if timesteps.device != sample.device and timesteps.device.type != "cpu":
            raise ValueError(f"timestep is on {timesteps.device} but sample is on {sample.device}")
    if noise is not None:
        if noise.shape != sample.shape:
            raise ValueError(f"noise shape {tuple(noise.shape)} does not match sample shape {tuple(sample.shape)}")
        if noise.dtype not in _FLOATS:
            raise TypeError(f"noise must be a floating-point tensor, got {noise.dtype}")
        if noise.device != sample.device:
            raise ValueError(f"noise is on {noise.device} but sample is on {sample.device}")
    if threshold is not None and (threshold.numel() != B or threshold.device != sample.device):
        raise ValueError(f"threshold must hold one value per sample ({B}) on {sample.device}")
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}")
    if variance_mode not in VAR_CODES:
        raise ValueError(f"variance_mode must be one of {tuple(VAR_CODES)}, got {variance_mode!r}")
    if not (eta >= 0.0) or eta == float("inf"):
        raise ValueError(f"eta must be finite and >= 0, got {eta}")
    delta = mix[0]
    if delta is not None:
        D = math.prod(sample.shape[1:])
        if delta.dim() != 3 or delta.shape[2] != D:
            raise ValueError(f"mixture offsets must be [S, K, D] with D={D} (the latent size), got "
                             f"{tuple(delta.shape)}")
        if any(t is not None and t.device != sample.device for t in mix):
            raise ValueError(f"mixture tensors must be on the sample's device {sample.device}")
        if mix[1] is None or mix[2] is None:
            raise ValueError("a mixture needs its cdf and component weights")
        if variance_mode in ("diag", "vub") and mix[3] is None:
            raise ValueError(f"variance_mode {variance_mode!r} needs the mixture's variance table")
        if variance_mode == "exact" and (mix[4] is None or mix[5] is None):
            raise ValueError("variance_mode 'exact' needs the mixture's basis and eigenvalues")
    elif variance_mode != "none":
        raise ValueError(f"variance_mode {variance_mode!r} needs mixture tensors")


def _host_rows(timesteps: Optional[Tensor], timestep: int, R: int) -> None:
    """Validates timesteps known on the host; device timesteps are checked by the kernel (NaN) or the caller."""
    if timesteps is None:
        vals = (timestep,)
    elif timesteps.device.type == "cpu":
        vals = (int(timesteps.min()), int(timesteps.max())) if timesteps.numel() else ()
    else:
        return
    for v in vals:
        if not 0 <= v < R:
            raise ValueError(f"timestep {v} is outside the coefficient table [0, {R}) "
                             f"(the scheduler's training timesteps)")


# ------------------------------------------------------------------------------------------------
# the op
# ------------------------------------------------------------------------------------------------
def _step_into(
    out: Tensor, x0: Tensor, sample: Tensor, model_output: Tensor, coef: Tensor, timesteps: Optional[Tensor],
    timestep: int, seed: Optional[Tensor], noise: Optional[Tensor], threshold: Optional[Tensor],
    mix_delta: Optional[Tensor], mix_cdf: Optional[Tensor], mix_weight: Optional[Tensor], mix_var: Optional[Tensor],
    mix_basis: Optional[Tensor], mix_eig: Optional[Tensor], prediction_type: str, variance_mode: str, eta: float,
    clip: Optional[float], use_clipped_model_output: bool, guidance_scale: Optional[float], offset_final: bool,
    write_x0: bool,
) -> None:
    """Both ops' body: checks, then one launch writing ``out`` (and ``x0`` if ``write_x0``), contiguous [B, ...]."""
    mix = (mix_delta, mix_cdf, mix_weight, mix_var, mix_basis, mix_eig)
    _check(sample, model_output, coef, timesteps, noise, threshold, mix, prediction_type, variance_mode, eta,
           guidance_scale)
    _host_rows(timesteps, timestep, coef.shape[0])
    B = sample.shape[0]
    D = math.prod(sample.shape[1:])
    if B == 0 or D == 0:
        return
    noise_mode = NOISE_TENSOR if noise is not None else (NOISE_PHILOX if eta > 0 else NOISE_NONE)
    if (noise_mode == NOISE_PHILOX or mix_delta is not None) and seed is None:
        raise ValueError("a seed tensor is needed for in-kernel noise (eta > 0 without noise) or a mixture")
    x, m = _rowwise(sample), _rowwise(model_output)
    z = _rowwise(noise) if noise is not None else None
    args = dict(x=x, m=m, coef=coef, timesteps=timesteps, timestep=timestep, seed=seed, noise=z,
                threshold=None if threshold is None else threshold.float().contiguous(), mix=mix,
                prediction_type=prediction_type, variance_mode=variance_mode, eta=eta, clip=clip,
                clipped_eps=use_clipped_model_output, guidance=guidance_scale, offset_final=offset_final,
                write_x0=write_x0, noise_mode=noise_mode, out=out, x0=x0, B=B, D=D)
    {"triton": _run_triton, "cpp": _run_cpp, "reference": _run_reference}[_backend(sample.device)](**args)


def _ddim_step_impl(
    sample: Tensor, model_output: Tensor, coef: Tensor, timesteps: Optional[Tensor], timestep: int,
    seed: Optional[Tensor], noise: Optional[Tensor], threshold: Optional[Tensor],
    mix_delta: Optional[Tensor], mix_cdf: Optional[Tensor], mix_weight: Optional[Tensor],
    mix_var: Optional[Tensor], mix_basis: Optional[Tensor], mix_eig: Optional[Tensor],
    prediction_type: str, variance_mode: str, eta: float, clip: Optional[float],
    use_clipped_model_output: bool, guidance_scale: Optional[float], offset_final: bool, write_x0: bool,
) -> Tuple[Tensor, Tensor]:
    out = torch.empty(sample.shape, dtype=sample.dtype, device=sample.device)
    x0 = torch.empty(sample.shape if write_x0 else (0,), dtype=sample.dtype, device=sample.device)
    _step_into(out, x0, sample, model_output, coef, timesteps, timestep, seed, noise, threshold, mix_delta, mix_cdf,
               mix_weight, mix_var, mix_basis, mix_eig, prediction_type, variance_mode, eta, clip,
               use_clipped_model_output, guidance_scale, offset_final, write_x0)
    return out, x0


def _check_out(name: str, t: Tensor, sample: Tensor) -> None:
    if t.shape != sample.shape or t.dtype != sample.dtype or t.device != sample.device:
        raise ValueError(f"{name} must match sample: {tuple(sample.shape)} {sample.dtype} on {sample.device}, got "
                         f"{tuple(t.shape)} {t.dtype} on {t.device}")
    if not t.is_contiguous():
        raise ValueError(f"{name} must be contiguous")


def _ddim_step_out_impl(
    out: Tensor, x0_out: Optional[Tensor], sample: Tensor, model_output: Tensor, coef: Tensor,
    timesteps: Optional[Tensor], timestep: int, seed: Optional[Tensor], noise: Optional[Tensor],
    threshold: Optional[Tensor], mix_delta: Optional[Tensor], mix_cdf: Optional[Tensor],
    mix_weight: Optional[Tensor], mix_var: Optional[Tensor], mix_basis: Optional[Tensor], mix_eig: Optional[Tensor],
    prediction_type: str, variance_mode: str, eta: float, clip: Optional[float], use_clipped_model_output: bool,
    guidance_scale: Optional[float], offset_final: bool,
) -> None:
    """The same step written into caller buffers (``out`` may be ``sample`` itself: each element is read before the
    same program writes it, and nothing else reads it)."""
    _check_out("out", out, sample)
    if x0_out is not None:
        _check_out("pred_original_out", x0_out, sample)
    _step_into(out, x0_out if x0_out is not None else out, sample, model_output, coef, timesteps, timestep, seed,
               noise, threshold, mix_delta, mix_cdf, mix_weight, mix_var, mix_basis, mix_eig, prediction_type,
               variance_mode, eta, clip, use_clipped_model_output, guidance_scale, offset_final, x0_out is not None)


_ddim_step_op = torch.library.custom_op("gmm_triton::ddim_step", _ddim_step_impl, mutates_args=())
_ddim_step_out_op = torch.library.custom_op("gmm_triton::ddim_step_out", _ddim_step_out_impl,
                                            mutates_args=("out", "x0_out"))


def _call(impl, op, x: Tensor, m: Tensor, *args):
    """``op(*args)`` minus the dispatcher's Python hop (~100 µs) in plain eager use.

    The implementation is the op's own; the dispatcher is needed only when something must see the op: torch.compile
    tracing, a dispatch mode (FakeTensor, opcheck), tensor subclasses, or autograd.
    """
    if (type(x) is Tensor and type(m) is Tensor and not torch.compiler.is_compiling()
            and torch._C._len_torch_dispatch_stack() == 0
            and not (torch.is_grad_enabled() and (x.requires_grad or m.requires_grad))):
        return impl(*args)
    return op(*args)


@_ddim_step_op.register_fake
def _(sample, model_output, coef, timesteps, timestep, seed, noise, threshold, mix_delta, mix_cdf, mix_weight,
      mix_var, mix_basis, mix_eig, prediction_type, variance_mode, eta, clip, use_clipped_model_output,
      guidance_scale, offset_final, write_x0):
    _check(sample, model_output, coef, timesteps, noise, threshold,
           (mix_delta, mix_cdf, mix_weight, mix_var, mix_basis, mix_eig), prediction_type, variance_mode, eta,
           guidance_scale)
    out = sample.new_empty(sample.shape)
    return out, sample.new_empty(sample.shape if write_x0 else (0,))


@_ddim_step_out_op.register_fake
def _(out, x0_out, sample, model_output, coef, timesteps, timestep, seed, noise, threshold, mix_delta, mix_cdf,
      mix_weight, mix_var, mix_basis, mix_eig, prediction_type, variance_mode, eta, clip, use_clipped_model_output,
      guidance_scale, offset_final):
    _check(sample, model_output, coef, timesteps, noise, threshold,
           (mix_delta, mix_cdf, mix_weight, mix_var, mix_basis, mix_eig), prediction_type, variance_mode, eta,
           guidance_scale)
    _check_out("out", out, sample)
    if x0_out is not None:
        _check_out("pred_original_out", x0_out, sample)


class _Mix:
    """The op's flat mixture tensors, seen as the attributes the launchers read."""

    def __init__(self, mix, variance_mode):
        self.delta, self.cdf, self.component_weight, self.var_table, self.basis, self.eigvals = mix
        self.variance_mode = variance_mode
        self.k = self.delta.shape[1]
        self.kp = self.cdf.numel()
        self.shared = self.delta.shape[0] == 1


def _seed_split(seed: Optional[Tensor]):
    """(device tensor or None, host int): a CPU seed is read on the host (no device sync)."""
    if seed is None:
        return None, 0
    if seed.device.type == "cpu":
        return None, int(seed.reshape(-1)[0])
    return seed.reshape(-1), 0


def _run_triton(*, x, m, coef, timesteps, timestep, seed, noise, threshold, mix, prediction_type,
                variance_mode, eta, clip, clipped_eps, guidance, offset_final, write_x0, noise_mode, out, x0,
                B, D, config=None):
    from .kernels.step import launch_step

    t_tensor, t_value = None, int(timestep)
    if timesteps is not None:
        if timesteps.numel() == 1 and timesteps.device.type == "cpu":
            t_value = int(timesteps.reshape(-1)[0])
        else:
            t_tensor = timesteps.reshape(-1).to(x.device).contiguous()
    seed_tensor, seed_value = _seed_split(seed)
    if seed_tensor is not None and seed_tensor.device != x.device:
        seed_tensor = seed_tensor.to(x.device)
    launch_step(
        x=x, m=m, out=out, x0=x0, coef=coef, t_tensor=t_tensor, t_value=t_value, seed_tensor=seed_tensor,
        seed_value=seed_value, noise=noise, threshold=threshold,
        mix=_Mix(mix, variance_mode) if mix[0] is not None else None, D=D, B=B,
        x_bs=x.stride(0), m_bs=m.stride(0), m_half=B * m.stride(0), z_bs=noise.stride(0) if noise is not None else 0,
        eta=eta, clip=clip if clip is not None else 0.0, guidance=guidance if guidance is not None else 0.0,
        pred=PRED_CODES[prediction_type], noise_mode=noise_mode, cfg=guidance is not None,
        clip_on=clip is not None, clipped_eps=clipped_eps, offset_final=offset_final, write_x0=write_x0,
        compute_f64=x.dtype == torch.float64, config=config,
    )


def _run_cpp(*, x, m, coef, timesteps, timestep, seed, noise, threshold, mix, prediction_type, variance_mode,
             eta, clip, clipped_eps, guidance, offset_final, write_x0, noise_mode, out, x0, B, D):
    rows = timesteps.reshape(-1).to(torch.int64).contiguous() if timesteps is not None else None
    _, seed_value = _seed_split(seed)
    torch.ops.gmm_triton_cpp.ddim_step(
        x, m, coef, rows, int(timestep), seed_value, noise, threshold, *mix, out, x0,
        PRED_CODES[prediction_type], VAR_CODES[variance_mode], noise_mode, float(eta),
        float(clip) if clip is not None else 0.0, clip is not None, clipped_eps,
        float(guidance) if guidance is not None else 0.0, guidance is not None, offset_final, write_x0,
    )


def _run_reference(*, x, m, coef, timesteps, timestep, seed, noise, threshold, mix, prediction_type,
                   variance_mode, eta, clip, clipped_eps, guidance, offset_final, write_x0, noise_mode, out, x0,
                   B, D):
    from . import reference
    from .mixture import MixtureTensors

    mt = None
    if mix[0] is not None:
        mt = MixtureTensors(delta=mix[0], cdf=mix[1], component_weight=mix[2], priors=None,
                            variance_mode=variance_mode, scale=0.0, var_table=mix[3], basis=mix[4], eigvals=mix[5])
    rows = timesteps if timesteps is not None else timestep
    _, seed_value = _seed_split(seed)
    prev, xx0 = reference.fused_step(
        x, m, rows, coef, prediction_type=prediction_type, eta=eta, clip_sample_range=clip,
        threshold_scale=threshold, use_clipped_model_output=clipped_eps, guidance_scale=guidance,
        seed=seed_value if seed is not None else None, noise=noise, mixture=mt, offset_final=offset_final,
    )
    out.copy_(prev)
    if write_x0:
        x0.copy_(xx0)


# ------------------------------------------------------------------------------------------------
# Philox normals (mixture construction): same stream on every device
# ------------------------------------------------------------------------------------------------
def _backend(device: torch.device) -> str:
    """Which implementation runs on ``device``: "triton" on CUDA; on CPU the chosen one (cpu_backend)."""
    if device.type == "cuda":
        return "triton"
    if device.type != "cpu":
        raise NotImplementedError(f"gmm_triton supports CUDA and CPU tensors, not {device}")
    name = cpu_backend()
    if name == "missing":
        raise _missing_cpp()
    if name == "triton" and not _triton_interpreting():
        raise RuntimeError("the 'triton' CPU backend needs TRITON_INTERPRET=1 set before gmm_triton is imported")
    return name


def philox_normal(shape: Sequence[int], *, seed: int, stream: int, device=None,
                  dtype: torch.dtype = torch.float32, start: int = 0) -> Tensor:
    """Standard normals of Philox ``stream`` under ``seed`` for flat indices start.. of ``shape`` (reference.py)."""
    device = torch.device(device) if device is not None else torch.device("cpu")
    out = torch.empty(tuple(shape), device=device, dtype=torch.float32)
    if out.numel():
        backend = _backend(device)
        if backend == "triton":
            from .kernels.philox import normal_fill

            normal_fill(out, int(seed), int(stream), int(start))
        elif backend == "cpp":
            torch.ops.gmm_triton_cpp.philox_normal_(out, int(seed), int(stream), int(start))
        else:
            from .reference import philox_normal as ref

            out.copy_(torch.from_numpy(ref(int(seed), out.numel(), int(stream), int(start))).reshape(out.shape))
    return out.to(dtype)


def philox_words(n: int, *, seed: int, stream: int, start: int = 0, device=None) -> Tensor:
    """The raw Philox words [n, 4] (int32 bit patterns) of counters start..start+n-1: the RNG's integers."""
    device = torch.device(device) if device is not None else torch.device("cpu")
    out = torch.empty((n, 4), device=device, dtype=torch.int32)
    backend = _backend(device)
    if backend == "triton":
        from .kernels.philox import philox_words as words

        return words(out, int(seed), int(stream), int(start))
    if backend == "reference":
        import numpy as np

        from .reference import philox4x32

        w = philox4x32(int(seed), np.arange(start, start + n, dtype=np.uint64), int(stream))
        return out.copy_(torch.from_numpy(np.stack(w, 1).view(np.int32)))
    torch.ops.gmm_triton_cpp.philox_words_(out, int(seed), int(stream), int(start))
    return out


# ------------------------------------------------------------------------------------------------
# the Python door
# ------------------------------------------------------------------------------------------------
def draw_seed(generator: Optional[torch.Generator] = None, device=None) -> Tensor:
    """A fresh int64 [1] Philox seed from ``generator`` (or torch's global RNG on ``device``).

    Drawn on the generator's own device, so nothing waits on the GPU: a CPU generator gives a CPU seed
    that the op reads on the host; a CUDA generator (or the default one for CUDA latents) gives a device
    seed that the kernel reads, which is what makes a captured CUDA graph draw fresh noise on each replay.
    """
    dev = generator.device if generator is not None else torch.device(device or "cpu")
    return torch.randint(0, 2**62, (1,), generator=generator, device=dev, dtype=torch.int64)


def ddim_step(
    sample: Tensor,
    model_output: Tensor,
    timestep,
    table: Tensor,
    *,
    prediction_type: str = "epsilon",
    eta: float = 0.0,
    clip_sample_range: Optional[float] = None,
    thresholding: Optional[Tuple[float, float]] = None,
    use_clipped_model_output: bool = False,
    guidance_scale: Optional[float] = None,
    noise: Optional[Tensor] = None,
    generator: Optional[torch.Generator] = None,
    seed=None,
    mixture=None,
    offset_final: bool = False,
    return_pred_original: bool = True,
    out: Optional[Tensor] = None,
    pred_original_out: Optional[Tensor] = None,
) -> Tuple[Tensor, Optional[Tensor]]:
    """One fused DDIM / DDIM-GMM / RFIM step. Returns (prev_sample, pred_original_sample or None).

    Computes, per sample b at table row r_b = timestep (see reference.py for the full statement),

        x̂₀, ε̂ = convert(prediction_type, x, m);  x̂₀ ← clip / threshold;  σ = η √var[r_b]
        x_prev = α_prev x̂₀ + √(s_prev² − σ²) ε̂ + δ_k + noise,

    in one pass over ``sample`` and ``model_output`` (fp32 arithmetic, fp64 for fp64 inputs).

    Args:
        sample, model_output: [B, ...] tensors of one floating dtype on one device. With ``guidance_scale``,
            model_output is [2B, ...] = [uncond; cond] and m = u + g (c − u) is fused (each half read once).
        timestep: the table row: an int, or an integer tensor with one value or one per sample (a CUDA
            tensor is read by the kernel, never on the host).
        table: the [R, 8] float64 coefficient table (coefficients.py) on the sample's device.
        prediction_type: "epsilon" | "sample" | "v_prediction" | "flow" (rectified-flow velocity).
        eta: σ = η √var. clip_sample_range: clamp x̂₀ to ±range (None: off).
        thresholding: (ratio, max_value) for Imagen's dynamic thresholding; the per-sample quantile is a torch
            step around the op (a sort cannot be fused into one elementwise pass); precedes clipping.
        noise: the caller's standard-normal tensor (diffusers' ``variance_noise``); otherwise Philox noise
            from ``seed`` (int or int64 tensor) or, if None, a seed drawn from ``generator``.
        mixture: a :class:`~gmm_triton.mixture.MixtureTensors` for the Gaussian-mixture kernel.
        offset_final: apply the mixture on the step that lands on the end of the chain (default off: there
            σ = 0, and no offset can keep the kernel's covariance equal to DDIM's).
        return_pred_original: also write x̂₀ (after clipping), like diffusers' ``pred_original_sample``.
        out, pred_original_out: write into these contiguous buffers instead of new tensors (``out`` may be
            ``sample`` itself, an in-place update); with ``out``, x̂₀ is written only into ``pred_original_out``.
            Useful in CUDA graphs (static buffers) and on CPU, where fresh large outputs cost page faults.
    """
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}")
    dev = sample.device
    if table.device != dev:
        table = table.to(dev)
    timesteps, tval = None, 0
    if isinstance(timestep, Tensor):
        timesteps = timestep
    else:
        tval = int(timestep)
    needs_seed = mixture is not None or (noise is None and eta > 0)
    if needs_seed and seed is None:
        seed = draw_seed(generator, dev)
    elif seed is not None and not isinstance(seed, Tensor):
        seed = torch.tensor([int(seed)], dtype=torch.int64)
    threshold = None
    if thresholding is not None:
        threshold = _threshold_scale(sample, model_output, timesteps, tval, table, prediction_type,
                                     guidance_scale, thresholding)
    mix = (None,) * 6
    var_mode = "none"
    if mixture is not None:
        if mixture.device != dev:
            mixture = mixture.to(dev)
        mix = (mixture.delta, mixture.cdf, mixture.component_weight, mixture.var_table, mixture.basis,
               mixture.eigvals)
        var_mode = mixture.variance_mode
    args = (sample, model_output, table, timesteps, tval, seed if needs_seed else None, noise, threshold, *mix,
            prediction_type, var_mode, float(eta), None if clip_sample_range is None else float(clip_sample_range),
            bool(use_clipped_model_output), None if guidance_scale is None else float(guidance_scale),
            bool(offset_final))
    if out is not None:
        _call(_ddim_step_out_impl, torch.ops.gmm_triton.ddim_step_out, sample, model_output, out, pred_original_out,
              *args)
        return out, pred_original_out
    prev, x0 = _call(_ddim_step_impl, torch.ops.gmm_triton.ddim_step, sample, model_output, *args,
                     bool(return_pred_original))
    return prev, (x0 if return_pred_original else None)


def _threshold_scale(sample, model_output, timesteps, tval, table, prediction_type, guidance_scale, thresholding):
    """Per-sample dynamic-threshold q_b from x̂₀ computed in fp32 torch (the step's only non-fused part)."""
    B = sample.shape[0]
    rows = timesteps.reshape(-1).to(table.device) if timesteps is not None else torch.tensor([tval], device=table.device)
    c = table.index_select(0, rows.long()).float().expand(B, N_COLS)
    shape = (B,) + (1,) * (sample.dim() - 1)
    al, sg = c[:, 0].reshape(shape), c[:, 1].reshape(shape)
    x, m = sample.float(), model_output.float()
    if guidance_scale is not None:
        u, cond = m.chunk(2)
        m = u + guidance_scale * (cond - u)
    x0 = {"epsilon": lambda: (x - sg * m) / al, "sample": lambda: m, "v_prediction": lambda: al * x - sg * m,
          "flow": lambda: x - sg * m}[prediction_type]()
    return dynamic_threshold_scale(x0, *thresholding)
