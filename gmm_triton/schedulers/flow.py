"""GMMFlowMatchScheduler: a drop-in ``diffusers.FlowMatchEulerDiscreteScheduler`` whose step is one fused kernel:
the rectified-flow implicit sampler RFIM, optionally with the moment-matched Gaussian-mixture kernel (RFIM-GMM;
Gabbur, arXiv 2311.04938, §4).

    pipe.scheduler = GMMFlowMatchScheduler.from_config(pipe.scheduler.config)                  # same samples
    pipe.scheduler = GMMFlowMatchScheduler.from_config(pipe.scheduler.config, kernel="gmm")    # ORTHO-VUB, s = 0.3
"""
from __future__ import annotations

from typing import Literal

import torch
from diffusers.configuration_utils import register_to_config
from diffusers.schedulers.scheduling_flow_match_euler_discrete import (
    FlowMatchEulerDiscreteScheduler,
    FlowMatchEulerDiscreteSchedulerOutput,
)
from diffusers.schedulers.scheduling_utils import SchedulerMixin  # noqa: F401  (pipelines reload through it)
from diffusers.utils.torch_utils import randn_tensor

from ..coefficients import TableCache, flow_table
from ..mixture import VarianceMode
from ..ops import ddim_step
from .common import MixtureCache, SampleOffsetMixin, check_kernel_options, check_number, step_generator


class GMMFlowMatchScheduler(SampleOffsetMixin, FlowMatchEulerDiscreteScheduler):
    r"""Rectified-flow sampling (RFIM / RFIM-GMM) with a fused step, on diffusers' flow-matching schedule.

    Data sit at t = 0 and noise at t = 1: x_t = (1 − t) x₀ + t x₁, and the model predicts the velocity
    v = x₁ − x₀. A step goes from t = σ_i to s = σ_{i+1} (``self.sigmas``, exactly as diffusers builds them:
    shift, dynamic shifting with ``mu``, ``shift_terminal``, Karras / exponential / beta sigmas, custom sigmas):

        x̂₀ = x_t − t v̂,   x̂₁ = x_t + (1 − t) v̂,   σ = η s
        x_s = (1 − s) x̂₀ + √(s² − σ²) x̂₁ + σ z                                         (kernel="gaussian")
        x_s = (1 − s) x̂₀ + √(s² − σ²) x̂₁ + δ_k + z_k,  k ~ Cat(π),  Cov z_k = σ² I − Δ_k    (kernel="gmm")

    which keeps q(x_s | x₀) = N((1 − s) x₀, s² I) (paper Eq. 20); the mixture's offsets δ_k and covariance
    offsets Δ_k match the Gaussian kernel's first two moments (:mod:`gmm_triton.mixture`). With η = 0 and the
    Gaussian kernel the step is diffusers' Euler step x_s = x_t + (s − t) v̂ (to float rounding; it runs in fp32
    and rounds once). η = 1 is diffusers' ``stochastic_sampling``: x_s = (1 − s) x̂₀ + s z.

    Every argument of ``FlowMatchEulerDiscreteScheduler`` keeps its meaning and default. New ones:

    Args:
        kernel: ``"gaussian"`` (RFIM) or ``"gmm"`` (RFIM-GMM).
        eta: η ∈ [0, 1], the weight of the fresh noise, σ = η s (paper: 0, 0.2, 0.5). A config key, not a
            ``step`` argument: flow-matching pipelines never pass η. 0 is the deterministic Euler step (but
            RFIM-GMM still draws a component per sample); 1 is diffusers' stochastic sampling.
        noise_source: ``"philox"`` (default): noise drawn inside the kernel from a seed taken from the
            ``generator`` (or torch's global RNG); fast, sync-free, the same on CPU and GPU. ``"torch"``:
            diffusers' ``randn_tensor`` noise (float32, as diffusers' stochastic sampling draws it), for
            seed parity with ``FlowMatchEulerDiscreteScheduler(stochastic_sampling=True)``.
        gmm_components, gmm_scale, gmm_offsets, gmm_variance, gmm_shared, gmm_priors, gmm_seed,
        gmm_clip_variance, gmm_offset_final, gmm_dtype: the mixture, exactly as in
            :class:`~gmm_triton.schedulers.ddim.GMMDDIMScheduler`, defaults included (K components; offsets of
            scale s; "diag" / "vub" / "exact" variances, "exact" needing s²/K ≤ σ² = (η σ_{i+1})² at every step
            where the mixture applies; one table per step or shared; priors; seed; VUB clipping; whether the
            offsets also act on the last step, which lands on σ = 0 where no offset can be moment-matched). For
            flows too s = 0.3 is the largest scale measured not to hurt: RFIM-GMM's FD is within ±2.6 % of RFIM's
            at s ≤ 0.3 and up to 138 % worse at s = 1 (README sweep, 5–20 steps).

    Cases the fused step does not cover:
        - ``stochastic_sampling=True`` is RFIM with η = 1 and runs through the fused op (so it also works with
          the mixture); ``eta`` must then be left at 0 or set to 1.
        - ``invert_sigmas=True`` (Mochi: the chain runs towards σ = 1, outside the RFIM convention) and
          ``per_token_timesteps`` (a per-token σ the op's per-sample table cannot index) fall back to
          diffusers' own ``step`` when ``kernel="gaussian"`` and ``eta=0`` (or ``stochastic_sampling``, which
          diffusers' step implements too), where that is the same sampler; otherwise ``invert_sigmas`` is
          rejected at construction and ``per_token_timesteps`` in ``step`` (NotImplementedError).

    Step index and host syncs: the op's table row is ``self.step_index``, a host int set by diffusers' own
    logic: ``begin_index`` when the pipeline called ``set_begin_index`` (SD3, Flux... do), otherwise the
    position of the first ``timestep`` in ``self.timesteps`` — a device search that reads back to the host
    (one CUDA sync, on the first step only). It advances by one per ``step``, as in diffusers.
    """

    init_noise_sigma = 1.0  # x₁ ~ N(0, I); diffusers' flow schedulers lack it, generic loops multiply by it

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        shift: float = 1.0,
        use_dynamic_shifting: bool = False,
        base_shift: float | None = 0.5,
        max_shift: float | None = 1.15,
        base_image_seq_len: int = 256,
        max_image_seq_len: int = 4096,
        invert_sigmas: bool = False,
        shift_terminal: float | None = None,
        use_karras_sigmas: bool = False,
        use_exponential_sigmas: bool = False,
        use_beta_sigmas: bool = False,
        time_shift_type: Literal["exponential", "linear"] = "exponential",
        stochastic_sampling: bool = False,
        kernel: Literal["gaussian", "gmm"] = "gaussian",
        eta: float = 0.0,
        noise_source: Literal["philox", "torch"] = "philox",
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
        check_kernel_options(kernel=kernel, noise_source=noise_source, gmm_components=gmm_components,
                             gmm_scale=gmm_scale, gmm_offsets=gmm_offsets, gmm_variance=gmm_variance,
                             gmm_shared=gmm_shared, gmm_priors=gmm_priors, gmm_seed=gmm_seed, gmm_dtype=gmm_dtype,
                             gmm_clip_variance=gmm_clip_variance, gmm_offset_final=gmm_offset_final)
        check_number("eta", eta)
        if not 0.0 <= float(eta) <= 1.0:  # σ = η s ≤ s keeps √(s² − σ²) real
            raise ValueError(f"eta must be in [0, 1] for a flow (σ = eta·s cannot exceed s), got {eta}")
        if stochastic_sampling and float(eta) not in (0.0, 1.0):
            raise ValueError(f"stochastic_sampling=True is RFIM with eta=1 (x_s = (1 - s) x̂₀ + s z); it conflicts "
                             f"with eta={eta}: leave eta at 0 or 1, or set stochastic_sampling=False")
        if invert_sigmas and (kernel != "gaussian" or float(eta) != 0.0):
            raise ValueError("invert_sigmas=True (the chain runs towards sigma = 1) is outside the rectified-flow "
                             "convention of RFIM: it is supported only with kernel='gaussian' and eta=0, through "
                             "diffusers' Euler step")
        super().__init__(
            num_train_timesteps=num_train_timesteps, shift=shift, use_dynamic_shifting=use_dynamic_shifting,
            base_shift=base_shift, max_shift=max_shift, base_image_seq_len=base_image_seq_len,
            max_image_seq_len=max_image_seq_len, invert_sigmas=invert_sigmas, shift_terminal=shift_terminal,
            use_karras_sigmas=use_karras_sigmas, use_exponential_sigmas=use_exponential_sigmas,
            use_beta_sigmas=use_beta_sigmas, time_shift_type=time_shift_type,
            stochastic_sampling=stochastic_sampling,
        )
        self._table: TableCache | None = None
        self._mixture_cache = MixtureCache()

    @property
    def effective_eta(self) -> float:
        """The η of every step: 1 under ``stochastic_sampling`` (diffusers' rule), else the config's."""
        return 1.0 if self.config.stochastic_sampling else float(self.config.eta)

    # ------------------------------------------------------------------------------------------
    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: str | torch.device = None,
        sigmas: list[float] | None = None,
        mu: float | None = None,
        timesteps: list[float] | None = None,
    ):
        """Sets the schedule exactly as diffusers does, then builds the step's coefficient table on ``device``.

        Args are diffusers': ``num_inference_steps``; ``device`` (of ``timesteps``, ``sigmas`` and the table);
        custom ``sigmas`` and/or ``timesteps``; ``mu``, the resolution-dependent shift (required with
        ``use_dynamic_shifting``). The table has one float64 row per step i (σ_i → σ_{i+1}, coefficients.py),
        indexed by ``step_index``. The cached mixtures are dropped: their per-step tables follow the schedule.
        """
        # the schedule is computed on the host, where the table is built, then copied where diffusers puts it
        super().set_timesteps(num_inference_steps, device=None, sigmas=sigmas, mu=mu, timesteps=timesteps)
        self._table = TableCache(flow_table(self.sigmas))
        self._timesteps_host = self.timesteps  # for error messages; never copied in step
        if device is not None:
            self.timesteps, self.sigmas = self.timesteps.to(device), self.sigmas.to(device)
            self._table.on(torch.device(device))
        self._mixture_cache.clear()

    # ------------------------------------------------------------------------------------------
    def step(
        self,
        model_output: torch.FloatTensor,
        timestep: float | torch.FloatTensor,
        sample: torch.FloatTensor,
        s_churn: float = 0.0,
        s_tmin: float = 0.0,
        s_tmax: float = float("inf"),
        s_noise: float = 1.0,
        generator: torch.Generator | None = None,
        per_token_timesteps: torch.Tensor | None = None,
        return_dict: bool = True,
    ) -> FlowMatchEulerDiscreteSchedulerOutput | tuple:
        """One step σ_i → σ_{i+1} through the fused op (diffusers' arguments and return types).

        Args:
            model_output: the predicted velocity v̂ = x₁ − x₀.
            timestep: one of ``self.timesteps`` (a float or a 0-d tensor): used only to find the step index on
                the first step when no ``begin_index`` is set; integer indices are rejected, as in diffusers.
            sample: x_t, the same shape and device as ``model_output`` (any floating dtype: both are promoted to
                the wider one for the step).
            s_churn, s_tmin, s_tmax, s_noise: accepted for diffusers compatibility and ignored (as diffusers does).
            generator: source of the step's randomness (the Philox seed, diffusers' noise, the component draw). A
                list (one per sample) gives each sample its own: with Philox noise a seed drawn from its generator
                (its noise and mixture component, at its own counter origin), with ``noise_source="torch"``
                diffusers' noise from its generator and a seed from it for the component; so a batch equals its
                samples run singly. Lists are read as diffusers reads them
                (:func:`~gmm_triton.schedulers.common.step_generator`): a list of one serves the whole batch, a
                longer list its first B.
            per_token_timesteps: per-token timesteps; only with ``kernel="gaussian"`` and ``eta=0``, through
                diffusers' own step (its output is then float32, as diffusers returns it).
            return_dict: return a ``FlowMatchEulerDiscreteSchedulerOutput`` rather than a tuple.

        Returns:
            ``FlowMatchEulerDiscreteSchedulerOutput(prev_sample)`` or ``(prev_sample,)``, ``prev_sample`` in
            ``model_output``'s dtype (diffusers' rule).
        """
        if isinstance(timestep, (int, torch.IntTensor, torch.LongTensor)):
            raise ValueError(
                "Passing integer indices (e.g. from `enumerate(timesteps)`) as timesteps to "
                "`GMMFlowMatchScheduler.step()` is not supported. Make sure to pass one of the "
                "`scheduler.timesteps` as a timestep."
            )
        if self._table is None:  # no set_timesteps: diffusers steps through the training schedule built at __init__
            self._table = TableCache(flow_table(self.sigmas))
            self._timesteps_host = self.timesteps
        cfg = self.config
        if per_token_timesteps is not None or cfg.invert_sigmas:
            if cfg.kernel != "gaussian" or not (cfg.eta == 0 or cfg.stochastic_sampling):
                raise NotImplementedError("per_token_timesteps are supported only with kernel='gaussian' and eta=0, "
                                          "through diffusers' own step: the fused op takes one sigma per sample")
            return super().step(model_output, timestep, sample, s_churn=s_churn, s_tmin=s_tmin, s_tmax=s_tmax,
                                s_noise=s_noise, generator=generator, per_token_timesteps=per_token_timesteps,
                                return_dict=return_dict)
        if self.step_index is None:
            self._init_step_index(timestep)
        row = self.step_index
        n = self._table.host.shape[0]
        if not 0 <= row < n:
            raise IndexError(f"step index {row} is past the last step of the {n}-step schedule; call set_timesteps "
                             "(or set_begin_index) before sampling again")
        dtype = torch.promote_types(sample.dtype, model_output.dtype)
        x, v = sample.to(dtype), model_output.to(dtype)
        eta = self.effective_eta
        noise = None
        generator = step_generator(generator, x.shape[0], draws=eta > 0 or cfg.kernel == "gmm")
        if eta > 0 and cfg.noise_source == "torch":
            noise = randn_tensor(x.shape, generator=generator, device=x.device, dtype=torch.float32)
        mixture = self._mixture(x, eta) if cfg.kernel == "gmm" else None
        prev, _ = ddim_step(
            x, v, row, self._table.on(x.device), prediction_type="flow", eta=eta, noise=noise,
            generator=generator, mixture=mixture,
            offset_final=cfg.gmm_offset_final, return_pred_original=False, sample_offset=self._sample_offset,
        )
        self._step_index += 1
        prev = prev.to(model_output.dtype)
        if not return_dict:
            return (prev,)
        return FlowMatchEulerDiscreteSchedulerOutput(prev_sample=prev)

    # ------------------------------------------------------------------------------------------
    def _mixture(self, sample, eta):
        """The mixture for this latent shape, its variance checked with σ² = (η s)² per step."""
        return self._mixture_cache.get(self.config, sample, self._table.host.shape[0], eta, self._table.host,
                                       self._timesteps_host)
