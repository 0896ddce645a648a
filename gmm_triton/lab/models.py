"""A small learned denoiser: a residual MLP with a sinusoidal time embedding and two output heads (ε and x̂₀).

The exact oracle (oracle.py) has no model error, so nothing can beat it; a learned model can be beaten, which
is what distillation students and mixture kernels need to be tested against. The network maps a noisy sample
x_t = a x₀ + s ε (flattened to D numbers) at a time τ ∈ [0, 1] of its noise schedule to

    ε̂(x_t, τ) = s x_t + a H_ε(h)  ≈ E[ε | x_t]      and      x̂₀(x_t, τ) = a x_t + s H_x(h)  ≈ E[x₀ | x_t],

one trunk h = h(x_t, τ) and two linear heads H. The skips s x_t and a x_t are the exact denoisers of N(0, I)
data, so each head learns a residual that its coefficient keeps small where the other parametrisation would
be ill-conditioned: x̂₀ = (x_t − s ε̂)/a amplifies the error of ε̂ by s/a (≈ 156 at t = 999 of the linear
schedule), and a plain x̂₀ output must reproduce x_t to the last digit at low noise. Trunk:

    h = W_in x + T(τ),  T(τ) = MLP(sin/cos(2π f_j τ)),  f_j log-spaced in [1, 1000]
    h ← h + W₂ SiLU(W₁ LN(h) + U T(τ))          (``depth`` residual blocks of width ``width``),  h ← LN(h)

Schedules (a, s at τ): ``"linear"``, diffusers' default 1000-step linear-β VP (τ = t / 1000 for the integer
timestep t, a = √ᾱ_t, s = √(1 − ᾱ_t)), and ``"cosine"``, the continuous VP-cosine (a, s) = (cos(πτ/2), sin(πτ/2)).

:class:`DiffusionMLP` wraps a network as a diffusers-style model, ``model(sample, timestep).sample``, for the
integer timesteps of the linear schedule, returning the head named by ``prediction_type``.
"""
from __future__ import annotations

import functools
import math
import os
from types import SimpleNamespace

import torch
from torch import nn

from .errors import UsageError
from .files import load_torch
from .oracle import DenoiserOutput, default_alphas_cumprod

HEADS = ("epsilon", "sample")
SCHEDULES = ("linear", "cosine")
LINEAR_STEPS = 1000


def noise_coefficients(schedule: str, tau: torch.Tensor):
    """(a, s) of a schedule at times τ ∈ [0, 1] (same shape as τ, float32; see the module docstring)."""
    tau = torch.as_tensor(tau)
    if schedule == "cosine":
        angle = 0.5 * math.pi * tau.double()
        return angle.cos().float(), angle.sin().float()
    if schedule == "linear":
        t = (tau.double() * LINEAR_STEPS).round().long().clamp(0, LINEAR_STEPS - 1)
        a, s = _linear_coefficients()
        return a[t], s[t]
    raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")


@functools.lru_cache(maxsize=1)
def _linear_coefficients():
    ac = default_alphas_cumprod(LINEAR_STEPS)
    return ac.sqrt().float(), (1 - ac).sqrt().float()


class TimeEmbedding(nn.Module):
    """τ ∈ [0, 1] ↦ MLP([sin(2π f τ), cos(2π f τ)]) with ``num_frequencies`` log-spaced f ∈ [1, 1000]."""

    def __init__(self, dim: int, num_frequencies: int = 32):
        super().__init__()
        self.register_buffer("freqs", 2 * math.pi * torch.logspace(0, 3, num_frequencies))
        self.mlp = nn.Sequential(nn.Linear(2 * num_frequencies, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, tau: torch.Tensor) -> torch.Tensor:
        angles = tau.reshape(-1, 1).float() * self.freqs
        return self.mlp(torch.cat([angles.sin(), angles.cos()], dim=1))


class ResidualBlock(nn.Module):
    """h ↦ h + W₂ SiLU(W₁ LN(h) + U e): a pre-norm residual MLP block conditioned on the time embedding e."""

    def __init__(self, width: int, time_dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.inner = nn.Linear(width, width)
        self.time = nn.Linear(time_dim, width)
        self.outer = nn.Linear(width, width)

    def forward(self, h, emb):
        return h + self.outer(nn.functional.silu(self.inner(self.norm(h)) + self.time(emb)))


class ResidualMLP(nn.Module):
    """The denoiser network: x [B, D], τ [B] or scalar in [0, 1] ↦ {head: [B, D]} for the heads in ``HEADS``.

    dim: D; width, depth: trunk width and number of residual blocks; time_dim: time-embedding width; schedule:
    the noise schedule that gives the skips' (a, s). The heads' layers start at zero, so an untrained network
    is the N(0, I)-data denoiser ε̂ = s x, x̂₀ = a x.
    """

    def __init__(self, dim: int, width: int = 384, depth: int = 2, time_dim: int = 128, schedule: str = "linear"):
        super().__init__()
        for name, v in (("dim", dim), ("width", width), ("depth", depth), ("time_dim", time_dim)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
        self.config = dict(dim=dim, width=width, depth=depth, time_dim=time_dim, schedule=schedule)
        self.time_embedding = TimeEmbedding(time_dim)
        self.input = nn.Linear(dim, width)
        self.input_time = nn.Linear(time_dim, width)
        self.blocks = nn.ModuleList(ResidualBlock(width, time_dim) for _ in range(depth))
        self.norm = nn.LayerNorm(width)
        self.heads = nn.ModuleDict({h: nn.Linear(width, dim) for h in HEADS})
        for head in self.heads.values():
            nn.init.zeros_(head.weight)
            nn.init.zeros_(head.bias)

    def forward(self, x: torch.Tensor, tau, head: str | None = None):
        """Both heads as a dict, or only ``head`` ("epsilon" or "sample") as a tensor (the other is not computed)."""
        if head is not None and head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, got {head!r}")
        tau = torch.as_tensor(tau, device=x.device).reshape(-1).expand(x.shape[0])
        a, s = (c[:, None].to(x.device) for c in noise_coefficients(self.config["schedule"], tau))
        emb = self.time_embedding(tau)
        h = self.input(x) + self.input_time(emb)
        for block in self.blocks:
            h = block(h, emb)
        h = self.norm(h)
        skip = {"epsilon": (s, a), "sample": (a, s)}                  # ε̂ = s x + a H_ε,  x̂₀ = a x + s H_x
        if head is None:
            return {name: c_x * x + c_h * self.heads[name](h) for name, (c_x, c_h) in skip.items()}
        c_x, c_h = skip[head]
        return c_x * x + c_h * self.heads[head](h)


class DiffusionMLP(nn.Module):
    """A :class:`ResidualMLP` as a diffusers-style model on a discrete VP schedule of ``num_train_timesteps``
    integer timesteps: ``model(sample, timestep).sample`` is the ``prediction_type`` head ("epsilon" or
    "sample") at τ = timestep / num_train_timesteps. ``sample`` has any shape [B, ...] with D elements per item;
    ``timestep`` is a scalar or one per sample."""

    def __init__(self, net: ResidualMLP, prediction_type: str = "epsilon", num_train_timesteps: int = 1000):
        super().__init__()
        if prediction_type not in HEADS:
            raise ValueError(f"prediction_type must be one of {HEADS}, got {prediction_type!r}")
        self.net, self.prediction_type, self.num_train_timesteps = net, prediction_type, num_train_timesteps
        self.config = SimpleNamespace(prediction_type=prediction_type, num_train_timesteps=num_train_timesteps)

    def forward(self, sample, timestep, return_dict=True, **kwargs):
        tau = torch.as_tensor(timestep, device=sample.device).float() / self.num_train_timesteps
        out = self.net(sample.reshape(sample.shape[0], -1).float(), tau, head=self.prediction_type)
        out = out.reshape(sample.shape).to(sample.dtype)
        return DenoiserOutput(out) if return_dict else (out,)


# -- files ------------------------------------------------------------------------------------------------------
MODEL_KEYS = ("config", "network_config", "model", "ema", "iterations")


def trained_with(path: str) -> dict:
    """What the model file at ``path`` was trained with (its training configuration and iterations): part of the
    configuration of every run that uses it, so a cached result never outlives a retrained model."""
    state = load_torch(path, "model file of `gmm-triton train`", MODEL_KEYS)
    return {**state["config"], "iterations": state["iterations"]}


def load_network(path: str, weights: str = "ema") -> ResidualMLP:
    """The network saved by ``gmm-triton train`` (``weights``: "ema", the default, or "raw"), in eval mode. The
    file is loaded without unpickling code (``files.load_torch``)."""
    if weights not in ("ema", "raw"):
        raise ValueError(f"weights must be 'ema' or 'raw', got {weights!r}")
    if not os.path.exists(path):
        raise UsageError(f"no trained model at {path!r}: run `gmm-triton train --out {os.path.dirname(path)}`")
    state = load_torch(path, "model file of `gmm-triton train`", MODEL_KEYS)
    net = ResidualMLP(**state["network_config"])
    net.load_state_dict(state["ema" if weights == "ema" else "model"])
    return net.eval().requires_grad_(False)
