"""Per-step scalar tables, computed once (on set_timesteps) in float64 and kept on the sample's device.

The fused op never computes a schedule: it reads one row of a [R, 8] float64 table per sample, indexed by
a device tensor (or an int), so a step makes no host read of device values and one launch can serve
samples at different timesteps. Columns (see reference.py for the step they parameterise):

    0  α        x_t = α x₀ + s ε           VP: √ᾱ_t            flow: 1 - t
    1  s                                   VP: √(1 - ᾱ_t)      flow: t
    2  α_prev   at the step's target       VP: √ᾱ_prev         flow: 1 - t_next
    3  s_prev²                             VP: 1 - ᾱ_prev      flow: t_next²
    4  var      σ² at η = 1                VP: DDIM's (1-ᾱ_prev)/(1-ᾱ_t)·(1-ᾱ_t/ᾱ_prev)   flow: t_next²
    5  final    1 when the step lands on the end of the chain (DDIM: prev_t < 0, ᾱ_prev = final_alpha_cumprod)
    6  step     index of the row's step in the schedule (selects the mixture's per-step offset table)
    7  (zero)   padding to 64 bytes a row

DDIM rows are indexed by the training timestep t ∈ [0, T): every t has a row, on the grid or not, so any
int t that diffusers accepts works. Flow rows are indexed by the step index.
"""
from __future__ import annotations

import numpy as np
import torch

from .contract import COL_ALPHA, COL_ALPHA_PREV, COL_FINAL, COL_S, COL_S_PREV2, COL_STEP, COL_VAR, N_COLS

PREV_RULES = ("diffusers", "grid")


def ddim_prev_timesteps(num_rows: int, num_train_timesteps: int, timesteps: np.ndarray, rule: str) -> np.ndarray:
    """The previous timestep of every training timestep t ∈ [0, num_rows) under a rule.

    ``"diffusers"`` (default, bit-compatible): prev_t = t - T // n for every spacing. This is diffusers'
    DDIMScheduler behaviour, including its known mismatch with the grid for ``linspace`` and for
    ``trailing`` when n does not divide T (huggingface/diffusers#11347, #12633): e.g. trailing, T=1000, n=7
    steps from 999 to 857 although the next grid entry is 856.
    ``"grid"``: prev_t = the largest grid timestep below t (the true next entry of the schedule for grid
    timesteps), or -1 below the last one.
    """
    t = np.arange(num_rows, dtype=np.int64)
    n = len(timesteps)
    if rule == "diffusers":
        return t - num_train_timesteps // n
    if rule == "grid":
        grid = np.sort(np.asarray(timesteps, dtype=np.int64))
        pos = np.searchsorted(grid, t, side="left")  # number of grid entries < t
        return np.where(pos > 0, grid[np.maximum(pos - 1, 0)], -1)
    raise ValueError(f"prev_timestep_rule must be one of {PREV_RULES}, got {rule!r}")


def step_index_of(num_rows: int, timesteps: np.ndarray) -> np.ndarray:
    """For every t: the index i of the largest grid timestep <= t (0 above the grid, n-1 below it)."""
    desc = np.asarray(timesteps, dtype=np.int64)
    asc = desc[::-1]
    t = np.arange(num_rows, dtype=np.int64)
    above = len(asc) - np.searchsorted(asc, t, side="right")  # grid entries > t
    return np.clip(above, 0, len(desc) - 1)


def ddim_table(
    alphas_cumprod: torch.Tensor,
    final_alpha_cumprod: float,
    num_train_timesteps: int,
    timesteps,
    prev_rule: str = "diffusers",
) -> torch.Tensor:
    """The [len(alphas_cumprod), 8] float64 DDIM table (CPU) for a schedule ``timesteps`` (descending).

    Computed in float64 from diffusers' float32 ᾱ values, so that a step is as accurate as the
    float64 reference run on the same (float32) ᾱ table.
    """
    acp = alphas_cumprod.detach().cpu().double().numpy()
    R = len(acp)
    ts = np.asarray(torch.as_tensor(timesteps).cpu().numpy(), dtype=np.int64)
    prev = ddim_prev_timesteps(R, num_train_timesteps, ts, prev_rule)
    a = acp
    ap = np.where(prev >= 0, acp[np.clip(prev, 0, R - 1)], float(final_alpha_cumprod))
    with np.errstate(divide="ignore", invalid="ignore"):
        var = np.where(a < 1.0, (1.0 - ap) / (1.0 - a) * (1.0 - a / ap), 0.0)
    table = np.zeros((R, N_COLS), dtype=np.float64)
    table[:, COL_ALPHA] = np.sqrt(a)
    table[:, COL_S] = np.sqrt(1.0 - a)
    table[:, COL_ALPHA_PREV] = np.sqrt(ap)
    table[:, COL_S_PREV2] = 1.0 - ap
    table[:, COL_VAR] = np.maximum(var, 0.0)
    table[:, COL_FINAL] = prev < 0
    table[:, COL_STEP] = step_index_of(R, ts)
    return torch.from_numpy(table)


def flow_table(sigmas) -> torch.Tensor:
    """The [n, 8] float64 table of a rectified-flow schedule σ_0 > … > σ_n (row i: step σ_i → σ_{i+1}).

    x_t = (1 - t) x₀ + t x₁; the step from t to s keeps q(x_s | x₀) = N((1 - s) x₀, s² I) with σ = η s
    (Gabbur, §4, Eq. 20): x_s = (1 - s) x̂₀ + √(s² - σ²) x̂₁ + σ z, and η = 0 is the Euler step.
    """
    sig = np.asarray(torch.as_tensor(sigmas).detach().cpu().double().numpy(), dtype=np.float64)
    t, s = sig[:-1], sig[1:]
    n = len(t)
    table = np.zeros((n, N_COLS), dtype=np.float64)
    table[:, COL_ALPHA] = 1.0 - t
    table[:, COL_S] = t
    table[:, COL_ALPHA_PREV] = 1.0 - s
    table[:, COL_S_PREV2] = s * s
    table[:, COL_VAR] = s * s
    table[:, COL_FINAL] = np.arange(n) == n - 1
    table[:, COL_STEP] = np.arange(n)
    return torch.from_numpy(table)


class TableCache:
    """One host table and its copies on the devices that asked for it (copied once, then reused)."""

    def __init__(self, table: torch.Tensor):
        self.host = table
        self._on = {}

    def on(self, device: torch.device) -> torch.Tensor:
        key = (device.type, device.index)
        t = self._on.get(key)
        if t is None:
            t = self.host if device.type == "cpu" else self.host.to(device)
            self._on[key] = t
        return t
