"""The op: the only door between the kernels and the schedulers.

``torch.ops.gmm_triton.ddim_step`` (and ``ddim_step_out``, which writes caller buffers) is a
``torch.library.custom_op`` with a fake (meta) kernel, so it works under ``torch.compile(fullgraph=True)``,
``opcheck`` and CUDA-graph capture. Its implementations are registered in backends.py (Triton on CUDA, the C++
twin on CPU; one registry for every op family); the checks and argument resolution every family shares are in
door.py; the RNG's host side is rng.py. Most callers want :func:`ddim_step`, the Python wrapper that resolves
timesteps, seeds, thresholds and the mixture into the op's flat arguments.
"""
from __future__ import annotations

import math
import warnings
from typing import List, Optional, Tuple

import torch
from torch import Tensor

from . import backends, door
from .backends import Layout, StepArgs, cpu_backend, use_cpu_backend  # noqa: F401  (the op's public helpers)
from .contract import COL_ALPHA, COL_S, COL_STEP, MAX_PERMUTED_RANK, MIX_DELTA, N_COLS, NOISE_NONE, NOISE_PHILOX, \
    NOISE_TENSOR, PREDICTION_TYPES, VARIANCE_MODES
from .mixture import MixtureTensors
from .reference import dynamic_threshold_scale
from .rng import check_index_range, draw_seed, philox_normal, philox_words  # noqa: F401  (the op's public helpers)

_OP = "ddim_step"


# ------------------------------------------------------------------------------------------------
# argument checks, shared by the real and the fake kernels (nothing here reads tensor data)
# ------------------------------------------------------------------------------------------------
def _check(sample, model_output, coef, timesteps, seed, sample_offset, noise, threshold, mix, prediction_type,
           variance_mode, eta, guidance_scale):
    if not isinstance(sample, Tensor) or sample.dtype not in door.FLOATS:
        raise TypeError(f"sample must be a floating-point tensor (fp16/bf16/fp32/fp64), got "
                        f"{getattr(sample, 'dtype', type(sample))}")
    if not isinstance(model_output, Tensor) or model_output.dtype not in door.FLOATS:
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
    door.check_index(_OP, "timestep", timesteps, B, sample.device, per_sample_ok=True)
    door.check_seed(_OP, seed, B, sample.device, per_sample_ok=True)
    door.check_index(_OP, "sample_offset", sample_offset, B, sample.device, per_sample_ok=False)
    door.check_noise(_OP, noise, sample)
    if threshold is not None and (threshold.numel() != B or threshold.device != sample.device):
        raise ValueError(f"threshold must hold one value per sample ({B}) on {sample.device}")
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}")
    if variance_mode not in VARIANCE_MODES:
        raise ValueError(f"variance_mode must be one of {VARIANCE_MODES}, got {variance_mode!r}")
    if not (eta >= 0.0) or eta == float("inf"):
        raise ValueError(f"eta must be finite and >= 0, got {eta}")
    if mix:
        MixtureTensors.check_op_tensors(mix, variance_mode, math.prod(sample.shape[1:]), sample.device)
    elif variance_mode != "none":
        raise ValueError(f"variance_mode {variance_mode!r} needs the mixture's tensors")


def _host_checks(coef: Tensor, timesteps: Optional[Tensor], timestep: int, mix_delta: Optional[Tensor]) -> None:
    """Checks of values the host can see without a device read; device values are guarded in the kernels (an
    out-of-table row poisons its sample with NaN instead of reading out of bounds)."""
    R = coef.shape[0]
    door.check_rows_on_host(_OP, R, timesteps, timestep)
    if mix_delta is not None and coef.device.type == "cpu" and mix_delta.shape[0] != 1 and R:
        lo, hi = torch.aminmax(coef[:, COL_STEP])  # one pass over the step column
        steps = int(hi) + 1
        if int(lo) < 0:
            raise ValueError("the coefficient table has a negative step index (column COL_STEP): not a schedule's table")
        if mix_delta.shape[0] < steps:
            raise ValueError(f"the mixture has {mix_delta.shape[0]} step tables but the coefficient table's "
                             f"schedule has {steps} steps: build it with num_steps={steps} (or shared=True)")


# ------------------------------------------------------------------------------------------------
# layouts: any dense layout is read and written in place, outputs are allocated like the sample
# ------------------------------------------------------------------------------------------------
def _permuted_layout(t: Tensor) -> Optional[Layout]:
    """The Layout of a tensor whose per-sample blocks are dense in a permuted order and follow each other (batch
    stride D, as the kernels write block b at b·D), or None if it has none the kernels index (overlapping or gapped,
    another batch stride, or more than MAX_PERMUTED_RANK dimensions after merging)."""
    if t.shape[0] > 1 and t.stride(0) != math.prod(t.shape[1:]):
        return None
    dims = [(st, sz, lst) for sz, st, lst in zip(t.shape[1:], t.stride()[1:], _contiguous_strides(t.shape[1:]))
            if sz != 1]
    dims.sort(key=lambda d: -d[0])  # memory order, outermost first
    expected = 1
    for st, sz, _ in reversed(dims):
        if st != expected:
            return None
        expected *= sz
    merged = []  # memory-order dims that are also adjacent in logical order collapse into one
    for _, sz, lst in dims:
        if merged and merged[-1][1] == lst * sz:
            merged[-1] = (merged[-1][0] * sz, lst)
        else:
            merged.append((sz, lst))
    if len(merged) > MAX_PERMUTED_RANK:
        return None
    merged = [(1, 0)] * (MAX_PERMUTED_RANK - len(merged)) + merged
    return Layout(tuple(s for s, _ in merged), tuple(lst for _, lst in merged))


def _contiguous_strides(shape):
    out, acc = [], 1
    for s in reversed(shape):
        out.append(acc)
        acc *= s
    return out[::-1]


def _same_inner(a: Tensor, b: Tensor) -> bool:
    return all(x == y for x, y, n in zip(a.stride()[1:], b.stride()[1:], a.shape[1:]) if n != 1)


def _dense_kernel_layout(t: Tensor) -> bool:
    return (door.rowwise(t) and t.stride(0) == math.prod(t.shape[1:])) or _permuted_layout(t) is not None


def _like_sample(sample: Tensor) -> Tensor:
    """An output in the sample's layout (e.g. channels_last) when the kernels index it, else contiguous."""
    t = torch.empty_like(sample, memory_format=torch.preserve_format)
    return t if _dense_kernel_layout(t) else torch.empty(sample.shape, dtype=sample.dtype, device=sample.device)


MAX_PIXEL_CHANNELS = 64  # the pixel tiles' largest C (kernels/step.py: a tile holds BLOCK / C ≥ 4 whole pixels)


def _pixel_channels(t: Tensor) -> int:
    """C when t's samples are [C, HW] logical blocks stored pixel by pixel, [HW, C] in memory (channels_last and
    its kin), with C a power of two the step's pixel tiles take; else 0."""
    lay = _permuted_layout(t)
    if lay is None:
        return 0
    (n0, hw, c), (_, l1, l2) = lay.sizes, lay.lstrides
    return c if n0 == 1 and l1 == 1 and l2 == hw and 2 <= c <= MAX_PIXEL_CHANNELS and c & (c - 1) == 0 else 0


def _layout_of(out: Tensor, inputs):
    """(layout, inputs, pixels, stream_cl): the layout the kernels run in, which is ``out``'s, the inputs, and
    backends.StepArgs' pixel-tile fields.

    Inputs in out's layout are read in place. With pixel tiles (out, or with a contiguous out an input, stored
    channels_last-like: ``_pixel_channels``) an input in the other of the two layouts is read in place too (the
    kernel transposes it in registers); any other input is copied once into out's layout."""
    rowwise_out = door.rowwise(out) and out.stride(0) == math.prod(out.shape[1:])
    layout = None if rowwise_out else _permuted_layout(out)
    if not rowwise_out and layout is None:
        raise ValueError(f"out must be dense (no gaps or overlaps, samples one after another, at most "
                         f"{MAX_PERMUTED_RANK} permuted dimensions after merging), got strides {out.stride()}")
    if rowwise_out:
        pixels = max((_pixel_channels(t) for t in inputs if t is not None), default=0)
    else:
        pixels = _pixel_channels(out)

    def place(t):  # (the input as the kernel reads it, whether it is stored pixel by pixel)
        if t is None:
            return None, False
        if rowwise_out:
            return (t, True) if pixels and _pixel_channels(t) == pixels else (door.rowwise_blocks(t), False)
        if _same_inner(t, out):
            return t, bool(pixels)
        if pixels and door.rowwise(t):
            return t, False
        return backends.empty_in_layout(t, out).copy_(t), bool(pixels)

    placed = [place(t) for t in inputs]
    return layout, [t for t, _ in placed], pixels, tuple(cl for _, cl in placed)


# ------------------------------------------------------------------------------------------------
# the op
# ------------------------------------------------------------------------------------------------
def _step_into(
    out: Tensor, x0: Tensor, sample: Tensor, model_output: Tensor, coef: Tensor, timesteps: Optional[Tensor],
    timestep: int, seed: Optional[Tensor], sample_offset: Optional[Tensor], noise: Optional[Tensor],
    threshold: Optional[Tensor], mix: List[Optional[Tensor]], prediction_type: str, variance_mode: str, eta: float,
    clip: Optional[float], use_clipped_model_output: bool, guidance_scale: Optional[float], offset_final: bool,
    write_x0: bool,
) -> None:
    """Both ops' body: checks, then one launch writing ``out`` (and ``x0`` if ``write_x0``)."""
    _check(sample, model_output, coef, timesteps, seed, sample_offset, noise, threshold, mix, prediction_type,
           variance_mode, eta, guidance_scale)
    _host_checks(coef, timesteps, timestep, mix[MIX_DELTA] if mix else None)
    B = sample.shape[0]
    D = math.prod(sample.shape[1:])
    if B == 0 or D == 0:
        return
    noise_mode = NOISE_TENSOR if noise is not None else (NOISE_PHILOX if eta > 0 else NOISE_NONE)
    # the kernels index the table and the mixture rows as packed arrays (free when they already are)
    coef = coef.contiguous()
    mixture = MixtureTensors.from_op_tensors(mix, variance_mode) if mix else None
    if (noise_mode == NOISE_PHILOX or mixture is not None) and seed is None:
        raise ValueError("a seed tensor is needed for in-kernel noise (eta > 0 without noise) or a mixture")
    layout, (x, m, z), pixels, stream_cl = _layout_of(out, (sample, model_output, noise))
    args = StepArgs(
        x=x, m=m, out=out, x0=x0, coef=coef, timesteps=timesteps, timestep=timestep, seed=seed,
        sample_offset=sample_offset, noise=z,
        threshold=None if threshold is None else threshold.float().contiguous(), mixture=mixture,
        prediction_type=prediction_type, eta=eta, clip=clip, clipped_eps=use_clipped_model_output,
        guidance=guidance_scale, offset_final=offset_final, write_x0=write_x0, noise_mode=noise_mode,
        layout=layout, B=B, D=D, pixels=pixels, stream_cl=stream_cl,
    )
    backends.run(_OP, args, sample.device)


def _ddim_step_impl(
    sample: Tensor, model_output: Tensor, coef: Tensor, timesteps: Optional[Tensor], timestep: int,
    seed: Optional[Tensor], sample_offset: Optional[Tensor], noise: Optional[Tensor], threshold: Optional[Tensor],
    mixture: List[Optional[Tensor]], prediction_type: str, variance_mode: str, eta: float, clip: Optional[float],
    use_clipped_model_output: bool, guidance_scale: Optional[float], offset_final: bool, write_x0: bool,
) -> Tuple[Tensor, Tensor]:
    out = _like_sample(sample)
    x0 = _like_sample(sample) if write_x0 else sample.new_empty((0,))
    _step_into(out, x0, sample, model_output, coef, timesteps, timestep, seed, sample_offset, noise, threshold,
               mixture, prediction_type, variance_mode, eta, clip, use_clipped_model_output, guidance_scale,
               offset_final, write_x0)
    return out, x0


def _check_out(name: str, t: Tensor, sample: Tensor) -> None:
    if t.shape != sample.shape or t.dtype != sample.dtype or t.device != sample.device:
        raise ValueError(f"{name} must match sample: {tuple(sample.shape)} {sample.dtype} on {sample.device}, got "
                         f"{tuple(t.shape)} {t.dtype} on {t.device}")
    if not _dense_kernel_layout(t):
        raise ValueError(f"{name} must be dense, its samples one after another (contiguous, channels_last or "
                         f"another permuted dense layout of at most {MAX_PERMUTED_RANK} merged dimensions), got "
                         f"strides {t.stride()}")


def _ddim_step_out_impl(
    out: Tensor, x0_out: Optional[Tensor], sample: Tensor, model_output: Tensor, coef: Tensor,
    timesteps: Optional[Tensor], timestep: int, seed: Optional[Tensor], sample_offset: Optional[Tensor],
    noise: Optional[Tensor], threshold: Optional[Tensor], mixture: List[Optional[Tensor]], prediction_type: str,
    variance_mode: str, eta: float, clip: Optional[float], use_clipped_model_output: bool,
    guidance_scale: Optional[float], offset_final: bool,
) -> None:
    """The same step written into caller buffers (``out`` may be ``sample`` itself: each element is read before the
    same program writes it, and nothing else reads it)."""
    _check_out("out", out, sample)
    if x0_out is not None:
        _check_out("pred_original_out", x0_out, sample)
        if x0_out.stride() != out.stride():
            raise ValueError(f"pred_original_out must have out's strides {out.stride()}, got {x0_out.stride()}")
    _step_into(out, x0_out if x0_out is not None else out, sample, model_output, coef, timesteps, timestep, seed,
               sample_offset, noise, threshold, mixture, prediction_type, variance_mode, eta, clip,
               use_clipped_model_output, guidance_scale, offset_final, x0_out is not None)


_ddim_step_op = torch.library.custom_op("gmm_triton::ddim_step", _ddim_step_impl, mutates_args=())
_ddim_step_out_op = torch.library.custom_op("gmm_triton::ddim_step_out", _ddim_step_out_impl,
                                            mutates_args=("out", "x0_out"))


@_ddim_step_op.register_fake
def _(sample, model_output, coef, timesteps, timestep, seed, sample_offset, noise, threshold, mixture,
      prediction_type, variance_mode, eta, clip, use_clipped_model_output, guidance_scale, offset_final, write_x0):
    _check(sample, model_output, coef, timesteps, seed, sample_offset, noise, threshold, mixture, prediction_type,
           variance_mode, eta, guidance_scale)
    return _like_sample(sample), (_like_sample(sample) if write_x0 else sample.new_empty((0,)))


@_ddim_step_out_op.register_fake
def _(out, x0_out, sample, model_output, coef, timesteps, timestep, seed, sample_offset, noise, threshold, mixture,
      prediction_type, variance_mode, eta, clip, use_clipped_model_output, guidance_scale, offset_final):
    _check(sample, model_output, coef, timesteps, seed, sample_offset, noise, threshold, mixture, prediction_type,
           variance_mode, eta, guidance_scale)
    _check_out("out", out, sample)
    if x0_out is not None:
        _check_out("pred_original_out", x0_out, sample)


# ------------------------------------------------------------------------------------------------
# the Python door
# ------------------------------------------------------------------------------------------------
def _check_thresholding(thresholding) -> Tuple[float, float]:
    try:
        ratio, max_value = (float(v) for v in thresholding)
    except (TypeError, ValueError):
        raise ValueError(f"thresholding must be (dynamic_thresholding_ratio, sample_max_value), got "
                         f"{thresholding!r}") from None
    if not 0.0 < ratio <= 1.0:
        raise ValueError(f"thresholding ratio must be in (0, 1], got {ratio}")
    if not (0.0 < max_value < math.inf):  # q = clamp(quantile, 1, max) is max itself when max < 1, as in diffusers
        raise ValueError(f"thresholding sample_max_value must be finite and > 0 (x̂₀ is divided by the clamped "
                         f"quantile), got {max_value}")
    return ratio, max_value


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
    sample_offset=None,
    mixture: Optional[MixtureTensors] = None,
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
        sample, model_output: [B, ...] tensors of one floating dtype on one device, in any dense layout (e.g.
            channels_last: read in place, and the outputs come back in the sample's layout). With
            ``guidance_scale``, model_output is [2B, ...] = [uncond; cond] and m = u + g (c − u) is fused (each half
            read once).
        timestep: the table row: an int, or an integer tensor with one value or one per sample (a CUDA
            tensor is read by the kernel, never on the host).
        table: the [R, 8] float64 coefficient table (coefficients.py) on the sample's device.
        prediction_type: "epsilon" | "sample" | "v_prediction" | "flow" (rectified-flow velocity).
        eta: σ = η √var (η > 1 warns: σ then exceeds √(1 − ᾱ_prev), and ε̂'s coefficient is clipped at 0 where
            diffusers returns NaN). clip_sample_range: clamp x̂₀ to ±range (None: off).
        thresholding: (ratio, max_value) for Imagen's dynamic thresholding; the per-sample quantile is a torch
            step around the op (a sort cannot be fused into one elementwise pass); precedes clipping.
        noise: the caller's standard-normal tensor (diffusers' ``variance_noise``); otherwise Philox noise
            from ``seed`` (int in [0, 2⁶⁴) or an int64 tensor) or, if None, a seed drawn from ``generator``.
            Per-sample seeds: ``seed`` a list of B ints or an int64 tensor of B values, or ``generator`` a list of
            B generators (one seed drawn from each, rng.draw_seed); sample b then draws under its own seed as if
            it were sample 0 of its own run (at global index ``sample_offset``), so the batch equals B single
            runs with those seeds or generators.
        sample_offset: the global index of sample 0 (an int or an int64 tensor; a CUDA tensor is read by the
            kernel): sample b's noise is drawn at Philox counters from (sample_offset + b)·D and its mixture
            component at sample_offset + b, so a sample's randomness depends on its global index, not on the batch
            it sits in (sharded sampling; 0 by default). With per-sample seeds every sample is at sample_offset.
            A host value must keep the call's flat Philox indices below 2⁶² ((sample_offset + B)·D <= 2⁶², or
            (sample_offset + 1)·D with per-sample seeds; ``rng.INDEX_LIMIT``): beyond, the counters would wrap.
        mixture: a :class:`~gmm_triton.mixture.MixtureTensors` (:func:`~gmm_triton.build_mixture`) for the
            Gaussian-mixture kernel.
        offset_final: apply the mixture on the step that lands on the end of the chain (default off: there
            σ = 0, and no offset can keep the kernel's covariance equal to DDIM's).
        return_pred_original: also write x̂₀ (after clipping), like diffusers' ``pred_original_sample``.
        out, pred_original_out: write into these dense buffers instead of new tensors (``out`` may be
            ``sample`` itself, an in-place update); with ``out``, x̂₀ is written only into ``pred_original_out``.
            Useful in CUDA graphs (static buffers) and on CPU, where fresh large outputs cost page faults.
    """
    if not isinstance(sample, Tensor) or not isinstance(model_output, Tensor):
        raise TypeError(f"sample and model_output must be tensors, got {type(sample).__name__} and "
                        f"{type(model_output).__name__}")
    if not isinstance(table, Tensor):
        raise TypeError(f"table must be the float64 coefficient tensor (ddim_table / flow_table), got "
                        f"{type(table).__name__}")
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}")
    if mixture is not None and not isinstance(mixture, MixtureTensors):
        raise TypeError(f"mixture must be a MixtureTensors (gmm_triton.build_mixture) or None, got "
                        f"{type(mixture).__name__}")
    if generator is not None and not isinstance(generator, (torch.Generator, list, tuple)):
        raise TypeError(f"generator must be a torch.Generator or a list of them (one per sample), got "
                        f"{type(generator).__name__}")
    if isinstance(generator, (list, tuple)) and len(generator) != sample.shape[0]:
        raise ValueError(f"a list of generators needs one per sample ({sample.shape[0]}), got {len(generator)}")
    if clip_sample_range is not None and not (math.isfinite(float(clip_sample_range)) and clip_sample_range > 0):
        raise ValueError(f"clip_sample_range must be finite and > 0 (or None: no clipping), got {clip_sample_range}")
    eta = float(eta)
    if eta > 1.0:
        warnings.warn(f"eta={eta} > 1: σ exceeds √(1 − ᾱ_prev), so the ε̂ term is clipped at 0 (diffusers' "
                      "DDIMScheduler returns NaN there)", stacklevel=2)
    dev = sample.device
    if table.device != dev:
        table = table.to(dev)
    timesteps, tval = door.as_timestep(timestep)
    seed = door.resolve_seed(seed, generator, dev, needed=mixture is not None or (noise is None and eta > 0))
    offset = door.as_offset(sample_offset)
    if offset is None or offset.device.type == "cpu":  # a device offset is the kernel's to read (no host sync)
        per_sample = seed is not None and seed.numel() > 1  # every sample then draws at sample_offset
        check_index_range(0 if offset is None else int(offset), 1 if per_sample else sample.shape[0],
                          math.prod(sample.shape[1:]))
    threshold = None
    if thresholding is not None:
        threshold = _threshold_scale(sample, model_output, timesteps, tval, table, prediction_type,
                                     guidance_scale, _check_thresholding(thresholding))
    mix, var_mode = [], "none"
    if mixture is not None:
        if mixture.device != dev:
            mixture = mixture.to(dev)
        mix, var_mode = mixture.op_tensors(), mixture.variance_mode
    args = (sample, model_output, table, timesteps, tval, seed, offset,
            noise, threshold, mix, prediction_type, var_mode, eta,
            None if clip_sample_range is None else float(clip_sample_range), bool(use_clipped_model_output),
            None if guidance_scale is None else float(guidance_scale), bool(offset_final))
    if out is not None:
        door.call(_ddim_step_out_impl, torch.ops.gmm_triton.ddim_step_out, sample, model_output, out,
                  pred_original_out, *args)
        return out, pred_original_out
    prev, x0 = door.call(_ddim_step_impl, torch.ops.gmm_triton.ddim_step, sample, model_output, *args,
                     bool(return_pred_original))
    return prev, (x0 if return_pred_original else None)


def _threshold_scale(sample, model_output, timesteps, tval, table, prediction_type, guidance_scale, thresholding):
    """Per-sample dynamic-threshold q_b from x̂₀ computed in fp32 torch (the step's only non-fused part)."""
    B = sample.shape[0]
    rows = timesteps.reshape(-1).to(table.device) if timesteps is not None else torch.tensor([tval], device=table.device)
    c = table.index_select(0, rows.long()).float().expand(B, N_COLS)
    shape = (B,) + (1,) * (sample.dim() - 1)
    al, s_t = c.select(1, COL_ALPHA).reshape(shape), c.select(1, COL_S).reshape(shape)  # select: traceable on fakes
    x, m = sample.float(), model_output.float()
    if guidance_scale is not None:
        u, cond = m.chunk(2)
        m = u + guidance_scale * (cond - u)
    x0 = {"epsilon": lambda: (x - s_t * m) / al, "sample": lambda: m, "v_prediction": lambda: al * x - s_t * m,
          "flow": lambda: x - s_t * m}[prediction_type]()
    return dynamic_threshold_scale(x0, *thresholding)
