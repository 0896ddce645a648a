"""GMMDDIMScheduler: a drop-in ``diffusers.DDIMScheduler`` whose step is one fused kernel, optionally
with the moment-matched Gaussian-mixture reverse kernel of DDIM-GMM (Gabbur, arXiv 2311.04938).

    pipe.scheduler = GMMDDIMScheduler.from_config(pipe.scheduler.config)                     # same samples
    pipe.scheduler = GMMDDIMScheduler.from_config(pipe.scheduler.config, kernel="gmm")       # ORTHO-VUB, s = 0.3
    pipe.scheduler = GMMDDIMScheduler.from_config(pipe.scheduler.config, kernel="gmm",       # the paper's 10 steps
                                                  gmm_scale=10.0, gmm_variance="vub", gmm_clip_variance=True)
"""
from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch
from diffusers.configuration_utils import register_to_config
from diffusers.schedulers.scheduling_ddim import DDIMScheduler, DDIMSchedulerOutput
from diffusers.schedulers.scheduling_utils import SchedulerMixin  # noqa: F401  (pipelines reload through it)
from diffusers.utils.torch_utils import randn_tensor

from ..coefficients import COL_ALPHA, PREV_RULES, TableCache, ddim_table
from ..mixture import VarianceMode
from ..ops import ddim_step
from .common import MixtureCache, SampleOffsetMixin, check_int, check_kernel_options, one_of, step_generator

_SPACINGS = ("leading", "trailing", "linspace")
_PREDICTIONS = ("epsilon", "sample", "v_prediction")


class GMMDDIMScheduler(SampleOffsetMixin, DDIMScheduler):
    r"""DDIM (Song et al. 2021) with a fused step and an optional Gaussian-mixture reverse kernel.

    The step, for x = ``sample`` at timestep t and previous timestep t' (ᾱ from the training schedule):

        x̂₀ = (x − √(1−ᾱ_t) ε̂) / √ᾱ_t  (or from x̂₀ / v predictions),   σ_t = η √((1−ᾱ_t')/(1−ᾱ_t) · (1 − ᾱ_t/ᾱ_t'))
        x_t' = √ᾱ_t' x̂₀ + √(1 − ᾱ_t' − σ_t²) ε̂ + σ_t z                                      (kernel="gaussian")
        x_t' = √ᾱ_t' x̂₀ + √(1 − ᾱ_t' − σ_t²) ε̂ + δ_k + z_k,  k ~ Cat(π),  Cov z_k = σ_t² I − Δ_k    (kernel="gmm")

    where the mixture's offsets δ_k and covariance offsets Δ_k match DDIM's first two moments
    (:mod:`gmm_triton.mixture`). With ``kernel="gaussian"`` and ``noise_source="torch"`` the samples equal
    diffusers' ``DDIMScheduler`` (to float rounding, which is smaller: the step runs in fp32 and rounds once).

    Every argument of ``DDIMScheduler`` keeps its meaning and default. New ones:

    Args:
        kernel: ``"gaussian"`` (DDIM) or ``"gmm"`` (DDIM-GMM).
        noise_source: ``"philox"`` (default): noise drawn inside the kernel from a seed taken from the
            ``generator`` (or torch's global RNG); fast, sync-free, CUDA-graph safe, the same on CPU and GPU.
            ``"torch"``: diffusers' ``randn_tensor`` noise, for bit-for-bit seed parity with ``DDIMScheduler``.
            ``variance_noise`` passed to ``step`` always wins.
        prev_timestep_rule: ``"diffusers"`` (default): t' = t − T // n, diffusers' rule for every spacing,
            including its known mismatch with the ``linspace`` grid and with ``trailing`` when n does not
            divide T. ``"grid"``: t' = the next timestep of the schedule (the largest grid timestep below t).
        gmm_components: K, the number of mixture components (paper: 8).
        gmm_scale: s, the offsets' scale: ‖δ_k‖ = s (RAND) or s√(1 − 1/K) (ORTHO), about s/√D per element.
            Default 0.3, the largest scale measured not to hurt: in the committed evidence run
            (``docs/evidence/evidence.csv``, ``make evidence``: two diffusers UNets trained on MNIST-5k, 5–20
            steps, η ∈ {0, 1}, s ∈ {0.1, 0.3, 1, 3}, 3 seeds, FID in a classifier's features, paired against
            DDIM / RFIM) every cell at s ≤ 0.3 is neutral (the 95 % interval of ΔFID spans 0), s ≥ 1 hurts at
            η = 0, and no cell helps; the README's evidence table has the numbers. The paper searches
            s ∈ {0.01, 0.1, 1, 10} per setting (10 is usually best at 10 steps, on 12288-element latents with
            learned models); an offset spreads over D elements, so larger latents may want a larger s: search
            it there.
        gmm_offsets: ``"ortho"`` (Eq. 10) or ``"rand"`` (Eq. 9).
        gmm_variance: ``"vub"`` (default; ORTHO-VUB, App. A.2: σ_t² minus Golub's eigenvalue upper bounds on
            the first K coordinates, the paper's headline variant and the one measured above), ``"diag"`` (Eq. 11:
            σ_t² − diag(C)/(K π_k) per coordinate) or ``"exact"`` (covariance exactly σ_t² I; needs s²/K ≤ σ_t²
            at every step). Which moments each one matches: the README's "Which moments the mixture matches".
        gmm_shared: one offset table for all steps (the paper's ``*`` variant) instead of one per step.
        gmm_priors: ``"uniform"`` or ``"random"`` (Dirichlet(1,…,1) from ``gmm_seed``), or K probabilities.
        gmm_seed: seed of the offset tables (and random priors), in [0, 2⁶⁴).
        gmm_clip_variance: let ``"vub"`` clip variances at 0 where s²/K > σ_t², as the paper does (App. A.5).
            On by default: at η = 0 (the pipelines' default) σ_t = 0, so every step clips and the default mixture
            could not sample otherwise. Off, such a step raises, naming the step and the bound.
        gmm_offset_final: also apply the mixture on the final step (ᾱ_prev = final_alpha_cumprod). Off by
            default: there σ_t = 0, so an offset adds variance DDIM does not have and cannot be matched.
        gmm_dtype: storage of the offset tables, ``"float32"`` or ``"bfloat16"``.
    """

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas: np.ndarray | list[float] | None = None,
        clip_sample: bool = True,
        set_alpha_to_one: bool = True,
        steps_offset: int = 0,
        prediction_type: Literal["epsilon", "sample", "v_prediction"] = "epsilon",
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        clip_sample_range: float = 1.0,
        sample_max_value: float = 1.0,
        timestep_spacing: Literal["leading", "trailing", "linspace"] = "leading",
        rescale_betas_zero_snr: bool = False,
        kernel: Literal["gaussian", "gmm"] = "gaussian",
        noise_source: Literal["philox", "torch"] = "philox",
        prev_timestep_rule: Literal["diffusers", "grid"] = "diffusers",
        gmm_components: int = 8,
        gmm_scale: float = 0.3,
        gmm_offsets: Literal["ortho", "rand"] = "ortho",
        gmm_variance: VarianceMode = "vub",
        gmm_shared: bool = False,
        gmm_priors: str | list[float] = "uniform",
        gmm_seed: int = 0,
        gmm_clip_variance: bool = True,
        gmm_offset_final: bool = False,
        gmm_dtype: Literal["float32", "bfloat16"] = "float32",
    ):
        one_of("prediction_type", prediction_type, _PREDICTIONS)
        one_of("timestep_spacing", timestep_spacing, _SPACINGS)
        one_of("prev_timestep_rule", prev_timestep_rule, PREV_RULES)
        check_kernel_options(kernel=kernel, noise_source=noise_source, gmm_components=gmm_components,
                             gmm_scale=gmm_scale, gmm_offsets=gmm_offsets, gmm_variance=gmm_variance,
                             gmm_shared=gmm_shared, gmm_priors=gmm_priors, gmm_seed=gmm_seed, gmm_dtype=gmm_dtype,
                             gmm_clip_variance=gmm_clip_variance, gmm_offset_final=gmm_offset_final)
        if not (math.isfinite(float(clip_sample_range)) and clip_sample_range > 0):
            raise ValueError(f"clip_sample_range must be finite and > 0, got {clip_sample_range}")
        check_int("steps_offset", steps_offset)
        if not 0 <= steps_offset < num_train_timesteps:
            raise ValueError(f"steps_offset must be in [0, num_train_timesteps={num_train_timesteps}), "
                             f"got {steps_offset}")
        super().__init__(
            num_train_timesteps=num_train_timesteps, beta_start=beta_start, beta_end=beta_end,
            beta_schedule=beta_schedule, trained_betas=trained_betas, clip_sample=clip_sample,
            set_alpha_to_one=set_alpha_to_one, steps_offset=steps_offset, prediction_type=prediction_type,
            thresholding=thresholding, dynamic_thresholding_ratio=dynamic_thresholding_ratio,
            clip_sample_range=clip_sample_range, sample_max_value=sample_max_value,
            timestep_spacing=timestep_spacing, rescale_betas_zero_snr=rescale_betas_zero_snr,
        )
        self._table: TableCache | None = None
        self._mixture_cache = MixtureCache()

    # ------------------------------------------------------------------------------------------
    def set_timesteps(self, num_inference_steps: int, device: str | torch.device = None):
        """Sets the schedule (as diffusers does) and builds the step's coefficient table on ``device``.

        The table holds one float64 row per training timestep (coefficients.py), so ``step`` indexes it
        with the timestep itself, on the device, without reading anything back to the host.
        """
        T = self.config.num_train_timesteps
        if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, (int, np.integer)):
            raise TypeError(f"num_inference_steps must be an int, got {type(num_inference_steps).__name__}")
        if not 1 <= num_inference_steps <= T:
            raise ValueError(f"num_inference_steps must be in [1, {T}] (num_train_timesteps), got {num_inference_steps}")
        super().set_timesteps(int(num_inference_steps), device=None)  # on the host: the table reads it there
        self._timesteps_host = self.timesteps
        last = int(self._timesteps_host.max())
        if last >= T:  # only "leading" spacing adds steps_offset
            off = self.config.steps_offset
            raise ValueError(f"steps_offset={off} puts the schedule's first timestep at {last} >= num_train_timesteps="
                             f"{T} with {num_inference_steps} steps; use steps_offset <= {off - (last - T + 1)}")
        host = ddim_table(self.alphas_cumprod, float(self.final_alpha_cumprod), T, self._timesteps_host,
                          self.config.prev_timestep_rule)
        self._table = TableCache(host)
        if device is not None:
            self.timesteps = self.timesteps.to(device)  # where diffusers puts them, copied, never read back
            self._table.on(torch.device(device))
        self._schedule_rows = host[self._timesteps_host]  # the steps' rows, for the mixture's variance check
        # host facts for the per-step checks, as plain Python (indexing a tensor costs ~10 µs a step)
        self._num_rows = host.shape[0]
        self._alpha_zero_rows = set(torch.nonzero(host[:, COL_ALPHA] == 0).flatten().tolist())
        self._mixture_cache.clear()

    # ------------------------------------------------------------------------------------------
    def step(
        self,
        model_output: torch.Tensor,
        timestep: int | torch.Tensor,
        sample: torch.Tensor,
        eta: float = 0.0,
        use_clipped_model_output: bool = False,
        generator: torch.Generator | None = None,
        variance_noise: torch.Tensor | None = None,
        return_dict: bool = True,
    ) -> DDIMSchedulerOutput | tuple:
        """One reverse step t → t' through the fused op (diffusers' arguments and return types).

        Args:
            model_output: the network's prediction (ε, x̂₀ or v per ``prediction_type``).
            timestep: the current timestep: an int, or an integer tensor (0-d, or one per sample) on any
                device; a CUDA tensor is read by the kernel, never on the host.
            sample: x_t, with the same shape and device as ``model_output`` (mixed floating dtypes are promoted, as
                diffusers' arithmetic does: the outputs come in the promoted dtype of sample, model_output and the
                step's noise).
            eta: the weight η of the DDIM noise (0: deterministic DDIM; 1: DDPM-like).
            use_clipped_model_output: re-derive ε̂ from the clipped x̂₀.
            generator: source of the step's randomness (the Philox seed, or diffusers' noise). A list (one per
                sample) gives each sample its own: with Philox noise a seed drawn from its generator (its noise and
                mixture component, at its own counter origin), with ``noise_source="torch"`` diffusers' noise from
                its generator and a seed from it for the component; so a batch equals its samples run singly.
                Lists are read as diffusers reads them (:func:`~gmm_triton.schedulers.common.step_generator`):
                a list of one serves the whole batch, a longer list its first B.
            variance_noise: explicit standard-normal noise, as in diffusers (exclusive with ``generator``).
            return_dict: return a ``DDIMSchedulerOutput`` rather than a tuple.
        """
        if self.num_inference_steps is None or self._table is None:
            raise ValueError("Number of inference steps is 'None', you need to run 'set_timesteps' after creating "
                             "the scheduler")
        cfg = self.config
        eta = float(eta)
        gmm = cfg.kernel == "gmm"
        timestep = self._resolve_timestep(timestep, sample)
        noise = None
        generator = step_generator(generator, sample.shape[0], draws=eta > 0 or gmm)
        if eta > 0:
            if variance_noise is not None and generator is not None:
                raise ValueError("Cannot pass both generator and variance_noise. Please make sure that either "
                                 "`generator` or `variance_noise` stays `None`.")
            if variance_noise is not None:
                noise = variance_noise
            elif cfg.noise_source == "torch":
                noise = randn_tensor(model_output.shape, generator=generator, device=model_output.device,
                                     dtype=model_output.dtype)
        # diffusers' arithmetic promotes mixed dtypes (e.g. fp32 ε̂ on a bf16 sample, or fp32 noise): so does the step
        if sample.is_floating_point() and model_output.is_floating_point():  # others: the op names the bad one
            x0_dtype = dtype = torch.promote_types(sample.dtype, model_output.dtype)  # x̂₀ never sees the noise
            if noise is not None and noise.is_floating_point():
                dtype = torch.promote_types(dtype, noise.dtype)
            sample, model_output = sample.to(dtype), model_output.to(dtype)
        else:
            x0_dtype = sample.dtype
        mixture = self._mixture(sample, eta) if gmm else None
        prev, x0 = ddim_step(
            sample, model_output, timestep, self._table.on(sample.device),
            prediction_type=cfg.prediction_type, eta=eta,
            clip_sample_range=cfg.clip_sample_range if (cfg.clip_sample and not cfg.thresholding) else None,
            thresholding=(cfg.dynamic_thresholding_ratio, cfg.sample_max_value) if cfg.thresholding else None,
            use_clipped_model_output=bool(use_clipped_model_output), noise=noise,
            generator=generator, mixture=mixture, offset_final=cfg.gmm_offset_final,
            sample_offset=self._sample_offset,
        )
        x0 = x0.to(x0_dtype)
        if not return_dict:
            return prev, x0
        return DDIMSchedulerOutput(prev_sample=prev, pred_original_sample=x0)

    # ------------------------------------------------------------------------------------------
    def _resolve_timestep(self, timestep, sample):
        """An int (host timesteps, validated) or a device tensor (read by the kernel)."""
        if isinstance(timestep, torch.Tensor):
            if timestep.dtype.is_floating_point or timestep.dtype == torch.bool:
                raise TypeError(f"timestep must be an integer, got a {timestep.dtype} tensor")
            if timestep.device.type != "cpu":
                if not torch.compiler.is_compiling() and not _is_view_of(timestep, self.timesteps):
                    # A foreign device timestep cannot be checked without a sync; this assert is sync-free
                    # and fails loudly (device-side) instead of the kernel's NaN.
                    torch._assert_async(((timestep >= 0) & (timestep < self._num_rows)).all(),
                                        f"timestep outside the training table [0, {self._num_rows})")
                return timestep
            if timestep.numel() != 1:
                self._check_rows(timestep.reshape(-1).tolist())
                return timestep
            timestep = int(timestep)
        elif isinstance(timestep, (float, np.floating)) and float(timestep).is_integer():
            timestep = int(timestep)
        elif not isinstance(timestep, (int, np.integer)) or isinstance(timestep, bool):
            raise TypeError(f"timestep must be an int or an integer tensor, got {type(timestep).__name__}")
        if not torch.compiler.is_compiling():  # host checks: constants under torch.compile
            self._check_rows((timestep,))
        return int(timestep)

    def _check_rows(self, rows):
        for t in rows:
            if not 0 <= t < self._num_rows:
                raise ValueError(f"timestep {t} is outside the training table [0, {self._num_rows}): "
                                 f"num_train_timesteps={self.config.num_train_timesteps}")
            cfg = self.config
            if t in self._alpha_zero_rows and cfg.prediction_type == "epsilon" and (cfg.thresholding
                                                                                   or not cfg.clip_sample):
                # x̂₀ = (x − ε̂)/0 is infinite: clip_sample bounds it (diffusers is finite there); thresholding's quantile
                # of infinities is NaN, and without either the step is inf/NaN in diffusers too
                raise ValueError(f"ᾱ_t = 0 at timestep {t} (zero terminal SNR): x̂₀ = (x − ε̂)/0 is infinite for "
                                 "prediction_type='epsilon', and only clip_sample (without thresholding) keeps the "
                                 "step finite (diffusers returns inf/NaN otherwise); use 'v_prediction' with "
                                 "rescale_betas_zero_snr, or clip_sample=True")

    def _mixture(self, sample, eta):
        return self._mixture_cache.get(self.config, sample, len(self._timesteps_host), eta,
                                       self._schedule_rows, self._timesteps_host)


def _is_view_of(t: torch.Tensor, base: torch.Tensor) -> bool:
    """t is base or a view of it (``for t in timesteps``, ``timesteps[i]``, ``t.expand(B)``): no data is read."""
    return t is base or t._base is base
