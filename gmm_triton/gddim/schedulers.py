"""diffusers-style schedulers for gDDIM on CLD and BDM: ``GDDIMCLDScheduler`` and ``GDDIMBlurScheduler``.

Both keep diffusers' contract (``SchedulerMixin``/``ConfigMixin``, ``register_to_config``, save/load and
``from_config``, ``set_timesteps(n)``, ``timesteps``, ``step(model_output, t, sample, generator)`` returning an
output with ``.prev_sample``) and take each step through one fused op. Timesteps are continuous times in (0, 1],
descending, on a quadratic grid by default (the official code's); the model predicts ε under K (score = −K⁻ᵀ ε).

The config key ``order`` is gDDIM's extrapolation order (0–2: the number of past model outputs a step uses); the
class attribute ``order = 1`` is diffusers' number of model evaluations per step, which pipelines read.
"""
from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils import BaseOutput

from ..coefficients import TableCache
from .blur import BlurProcess
from .cld import CLD
from .engine import MAX_ORDER, SPACINGS, check_solver, gddim_coefficients, time_grid
from .ops import blur_step, cld_step
from .tables import blur_table, cld_table


@dataclass
class GDDIMSchedulerOutput(BaseOutput):
    """prev_sample: the state at the next (smaller) time of the grid."""

    prev_sample: torch.Tensor


class _GDDIMScheduler(SchedulerMixin, ConfigMixin):
    """The shared machinery: the grid, the per-step tables, the ε history of the multistep solver."""

    order = 1  # diffusers' model evaluations per step (see the module docstring)

    def _init_state(self):
        self.num_inference_steps = None
        self.timesteps = None
        self.grid = None
        self._history: list[torch.Tensor] = []
        self._gains = None  # per step K_{t_i} when the history holds data predictions (engine.StepCoefficients)
        self._step_index = None

    @property
    def stochastic(self) -> bool:
        """Whether a step adds noise (λ > 0)."""
        return self.config.lam > 0

    def _check_common(self):
        cfg = self.config
        check_solver(cfg.order, float(cfg.lam), getattr(cfg, "parameterization", "R"), cfg.solver, self._history_kind())
        if cfg.timestep_spacing not in SPACINGS:
            raise ValueError(f"timestep_spacing must be one of {SPACINGS}, got {cfg.timestep_spacing!r}")
        if not (math.isfinite(self._t_max()) and self._t_max() > 0):
            raise ValueError(f"t_max must be finite and > 0, got {self._t_max()}")
        if not 0 < cfg.sampling_eps < self._t_max():
            raise ValueError(f"sampling_eps must lie in (0, t_max={self._t_max()}), got {cfg.sampling_eps}")

    def set_timesteps(self, num_inference_steps: int, device: str | torch.device = None):
        """The grid t_0 = t_max > … > t_N = sampling_eps (N = num_inference_steps) and its step tables.

        ``timesteps`` = t_0 … t_{N-1} (the model is evaluated at each; the last step lands on sampling_eps),
        float64 on ``device``; tables are float64, built once per grid (and per image size for blur)."""
        if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, (int, np.integer)):
            raise TypeError(f"num_inference_steps must be an int, got {type(num_inference_steps).__name__}")
        cfg = self.config
        self.grid = time_grid(int(num_inference_steps), self._t_max(), cfg.sampling_eps, cfg.timestep_spacing)
        self.num_inference_steps = int(num_inference_steps)
        self.timesteps = torch.from_numpy(self.grid[:-1].copy()).to(device)
        self._history, self._step_index = [], None

    def _history_kind(self) -> str:
        return getattr(self.config, "history", "data")  # configs saved before the key existed

    def _coefficients(self, process):
        cfg = self.config
        return gddim_coefficients(process, self.grid, cfg.order, cfg.lam, getattr(cfg, "parameterization", "R"),
                                  cfg.solver, self._history_kind())

    def index_for_timestep(self, timestep) -> int:
        """The grid index i of the step at ``timestep``.

        A host value (a number or a CPU tensor) is looked up on the grid (t_i == timestep). A device tensor is not
        read (that would synchronise with the device on every step): it is taken to be the next step of the
        schedule — step 0 after ``set_timesteps`` or after the last step, else the step after the previous one —
        which is what a sampling loop ``for t in scheduler.timesteps`` passes."""
        if isinstance(timestep, torch.Tensor) and timestep.device.type != "cpu":
            last = self._step_index
            return 0 if last is None or last + 1 >= len(self.grid) - 1 else last + 1
        t = float(timestep.reshape(-1)[0]) if isinstance(timestep, torch.Tensor) else float(timestep)
        hits = np.nonzero(np.isclose(self.grid[:-1], t, rtol=1e-12, atol=0.0))[0]
        if len(hits) == 0:
            raise ValueError(f"timestep {t} is not on the schedule {self.grid[:-1].tolist()}: pass one of "
                             "scheduler.timesteps")
        return int(hits[0])

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor,
             generator: torch.Generator | None = None, variance_noise: torch.Tensor | None = None,
             return_dict: bool = True) -> GDDIMSchedulerOutput | tuple:
        """One step t_i → t_{i+1} through the fused op.

        Args:
            model_output: ε-prediction at (sample, t_i), like ``sample``.
            timestep: t_i, an entry of ``timesteps``. Multistep orders need the steps in order: the history of
                past model outputs (or, for stochastic multistep, of past data predictions) restarts at t_0.
            sample: the state at t_i.
            generator: source of the Philox seed of the step's noise (λ > 0).
            variance_noise: explicit standard-normal noise like ``sample`` instead (for blur: in DCT space).
        """
        if self.grid is None:
            raise ValueError("Number of inference steps is 'None', you need to run 'set_timesteps' after creating "
                             "the scheduler")
        i = self.index_for_timestep(timestep)
        if i == 0:
            self._history = []
        elif self._step_index != i - 1 and self.config.order > 0:
            raise ValueError(f"the multistep solver (order={self.config.order}) needs its steps in order: got step {i} "
                             f"after {self._step_index}")
        table = self._table_for(sample)
        r = int(self._orders[i])
        eps = [model_output] + self._history[:r]
        prev = self._apply(sample, eps, i, table, generator, variance_noise)
        if self.config.order > 0:
            gain = None if self._gains is None else self._gains[i]
            entry = model_output if gain is None else self._data_buffer(sample, model_output, gain)
            self._history = ([entry] + self._history)[:MAX_ORDER]
        self._step_index = i
        if not return_dict:
            return (prev,)
        return GDDIMSchedulerOutput(prev_sample=prev)

    def scale_model_input(self, sample: torch.Tensor, timestep=None) -> torch.Tensor:
        return sample

    def __len__(self):
        return self.num_inference_steps or 0


class GDDIMCLDScheduler(_GDDIMScheduler):
    r"""gDDIM for critically-damped Langevin diffusion: samples are u = (x, v) pairs, [B, 2, *shape].

    Per step (``engine.py`` states the maths), with 2×2 coefficients shared by all pairs:

        u_{i+1} = Ψ(t_{i+1}, t_i) u_i + Σ_{j ≤ r} C_ij ε_{i−j}                                 (λ = 0, order r)
        u_{i+1} = Ψ u_i + (Ψ̂ − Ψ) K_{t_i} ε_i + P^½ n                                          (λ > 0, order 0)
        u_{i+1} = Ψ'_i u_i + C_i0 ε_i + Σ_{1 ≤ j ≤ r} C_ij h_{i−j} + P^½ n                       (λ > 0, order r)

    where the stochastic multistep step extrapolates the data prediction: h_k = u_k − K_{t_k} ε_k (= Ψ(t_k, 0) x̂₀),
    kept by the scheduler (one extra elementwise pass per step), with ``history="data"``; ``history="eps"`` is
    the official code's raw-ε history, which diverges on CLD (``engine.py``).

    Args:
        m_inv, beta, gamma, numerical_eps: the CLD process (:class:`~gmm_triton.gddim.cld.CLD`; official defaults).
        order: gDDIM's extrapolation order r ∈ {0, 1, 2} (the first r steps use lower orders).
        lam: λ ≥ 0 of the reverse family (0: probability flow, deterministic; 1: the reverse SDE).
        parameterization: ``"R"`` (gDDIM's K = R_t) or ``"L"`` (K = L_t, the Cholesky factor, the DDPM-style
            choice): what the model's ε means, score = −K⁻ᵀ ε.
        history: what a stochastic multistep step (λ > 0, order > 0) extrapolates: ``"data"`` (the data
            prediction; exact on Gaussian data) or ``"eps"`` (the official sampler's raw ε; diverges on CLD).
        sampling_eps: the last time of the grid (1e-3); t_max: the first (1).
        solver: ``"gddim"`` (exponential integrator) or ``"euler"`` (probability-flow Euler at λ = 0,
            Euler–Maruyama at λ = 1: the baselines, through the same fused step).
        timestep_spacing: ``"quadratic"`` (t_i = (linspace(√t_max, √eps, N+1))², the official grid) or ``"uniform"``.
    """

    @register_to_config
    def __init__(
        self,
        m_inv: float = 4.0,
        beta: float = 4.0,
        gamma: float = 0.04,
        numerical_eps: float = 1e-6,
        order: int = 0,
        lam: float = 0.0,
        parameterization: Literal["R", "L"] = "R",
        sampling_eps: float = 1e-3,
        t_max: float = 1.0,
        solver: Literal["gddim", "euler"] = "gddim",
        timestep_spacing: Literal["quadratic", "uniform"] = "quadratic",
        history: Literal["data", "eps"] = "data",
    ):
        self.process = CLD(m_inv=m_inv, beta=beta, gamma=gamma, numerical_eps=numerical_eps)
        self._check_common()
        # Σ_t holds e^{−4βt/Γ}·(e^{4βt/Γ} − 1): e^{4βt/Γ} overflows float64 from t = ln(max float)·Γ/(4β)
        # (44.36 for the defaults), where the tables would be NaN
        limit = math.log(sys.float_info.max) * self.process.Gamma / (4 * self.process.beta)
        if not self._t_max() < limit:
            raise ValueError(f"t_max must be below ln(max float64)·Γ/(4β) = {limit:.6g} for this process (Σ_t "
                             f"overflows float64 beyond it), got {self._t_max()}")
        self.init_noise_sigma = 1.0
        self._init_state()

    def _t_max(self):
        return float(self.config.t_max)

    def set_timesteps(self, num_inference_steps: int, device: str | torch.device = None):
        super().set_timesteps(num_inference_steps, device)
        coefs = self._coefficients(self.process)
        self._orders, self._gains = coefs.orders, (None if coefs.history is None else coefs.history[:, 0].tolist())
        self._table = TableCache(cld_table(coefs))
        if device is not None:
            self._table.on(torch.device(device))

    def _table_for(self, sample):
        return self._table.on(sample.device)

    def _apply(self, sample, eps, i, table, generator, noise):
        return cld_step(sample, eps, i, table, stochastic=self.stochastic, generator=generator, noise=noise)

    @staticmethod
    def _data_buffer(sample, eps, gain):
        """h = u − K ε per (x, v) pair, K = ``gain`` (2×2 nested list); fp16/bf16 computed in fp32."""
        ct = torch.float64 if sample.dtype == torch.float64 else torch.float32
        u, e = sample.to(ct), eps.to(ct)
        (k00, k01), (k10, k11) = gain
        h = torch.stack([u[:, 0] - k00 * e[:, 0] - k01 * e[:, 1], u[:, 1] - k10 * e[:, 0] - k11 * e[:, 1]], 1)
        return h.to(sample.dtype)

    def prior_sample(self, shape, generator=None, device=None, dtype=torch.float32) -> torch.Tensor:
        """u ~ N(0, diag(1, M)) per pair, ``shape`` = (B, 2, *dims): the t = 1 prior."""
        return self.process.prior(shape, generator=generator, device=device, dtype=dtype)


class GDDIMBlurScheduler(_GDDIMScheduler):
    r"""gDDIM for blurring diffusion on square images [B, C, N, N] (any N; tables are built per N at the first step).

    Per frequency f of each plane's orthonormal DCT (``blur.py``), with y = DCT(x), ε_y = DCT(ε):

        y_{i+1} = Ψ_f y_i + Σ_{j ≤ r} C_ijf ε_y,{i−j}                   (λ = 0: DDIM per frequency at order 0)
        y_{i+1} = Ψ_f y_i + (Ψ̂_f − Ψ_f) σ_{t_i} ε_y + √P_f n             (λ > 0; λ = 1 is BDM's ancestral sampler)

    and, for λ > 0 with order r > 0, the data-prediction extrapolation of ``engine.py`` on the buffers
    h_k = x_k − σ_{t_k} ε_k (pixel space: K = σ_t for every frequency);

    and the step returns to pixel space; the model predicts ε in pixel space (R = L = σ_t: no parameterization
    choice). One fused op per step (DCTs in registers).

    Args:
        sigma_blur_max, min_scale: the blur schedule (:class:`~gmm_triton.gddim.blur.BlurProcess`; official defaults).
        order, lam, solver, timestep_spacing, history: as for :class:`GDDIMCLDScheduler`.
        sampling_eps: the last time of the grid (1e-5); t_max: the first (None: the official ``rho2t(80)``, where
            the noise-to-signal ratio is 80).
    """

    @register_to_config
    def __init__(
        self,
        sigma_blur_max: float = 10.0,
        min_scale: float = 0.001,
        order: int = 0,
        lam: float = 0.0,
        sampling_eps: float = 1e-5,
        t_max: float | None = None,
        solver: Literal["gddim", "euler"] = "gddim",
        timestep_spacing: Literal["quadratic", "uniform"] = "quadratic",
        history: Literal["data", "eps"] = "data",
    ):
        self._check_common()
        self.init_noise_sigma = float(self.process_for(1).sigma(self._t_max()))  # σ at t_max (validates the schedule)
        self._init_state()

    def _t_max(self):
        return BlurProcess.rho2t(80.0) if self.config.t_max is None else float(self.config.t_max)

    def set_timesteps(self, num_inference_steps: int, device: str | torch.device = None):
        super().set_timesteps(num_inference_steps, device)
        self._tables: dict = {}  # per image size N: (table, DCT matrix, step orders, gains), built at its first step

    def process_for(self, image_size: int) -> BlurProcess:
        """The blur process of N×N images under this config."""
        cfg = self.config
        return BlurProcess(image_size, sigma_blur_max=cfg.sigma_blur_max, min_scale=cfg.min_scale)

    def _table_for(self, sample):
        if sample.dim() != 4 or sample.shape[2] != sample.shape[3]:
            raise ValueError(f"GDDIMBlurScheduler samples are square images [B, C, N, N], got {tuple(sample.shape)}")
        N = int(sample.shape[-1])
        if N not in self._tables:
            proc = self.process_for(N)
            coefs = self._coefficients(proc)
            gains = None if coefs.history is None else coefs.history[:, 0, 0, 0].tolist()  # σ_{t_i}, every f
            self._tables[N] = (TableCache(blur_table(coefs, N)), TableCache(proc.dct()), coefs.orders, gains)
        table, basis, self._orders, self._gains = self._tables[N]
        return table.on(sample.device), basis.on(sample.device)

    @staticmethod
    def _data_buffer(sample, eps, gain):
        """h = x − σ ε (σ = ``gain``, the same for every frequency, so in pixel space); fp16/bf16 in fp32."""
        ct = torch.float64 if sample.dtype == torch.float64 else torch.float32
        return (sample.to(ct) - gain * eps.to(ct)).to(sample.dtype)

    def _apply(self, sample, eps, i, table, generator, noise):
        coef, basis = table
        return blur_step(sample, eps, i, coef, basis, stochastic=self.stochastic, generator=generator, noise=noise)
