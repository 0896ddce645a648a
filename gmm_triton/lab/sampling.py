"""The lab's samplers: the paper's DDIM-GMM variants and RFIM(-GMM) as named scheduler configurations, sampling an
oracle or a model with them, and the metrics row of one configuration averaged over seeds (demo, eval, the learned
model's rows, generate)."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch

from .metrics import evaluate
from .oracle import MixtureDenoiser

METRICS = ("fd", "coverage", "tv", "precision", "sw2", "nll")


@dataclass(frozen=True)
class Sampler:
    """A named sampler: a scheduler family and the config keys that select its kernel."""

    name: str
    family: str = "ddim"  # "ddim" (GMMDDIMScheduler) or "flow" (GMMFlowMatchScheduler)
    options: dict = field(default_factory=dict)

    @property
    def is_mixture(self) -> bool:
        return self.options.get("kernel") == "gmm"


def ddim_samplers() -> list[Sampler]:
    """The paper's variants (§3.1): RAND and ORTHO with the diagonal variance, ORTHO-VUB, its step-shared ``*``
    form, and the exact-covariance kernel of this package."""
    gmm = dict(kernel="gmm", gmm_components=8)
    return [
        Sampler("DDIM"),
        Sampler("DDIM-GMM-RAND", options={**gmm, "gmm_offsets": "rand", "gmm_variance": "diag"}),
        Sampler("DDIM-GMM-ORTHO", options={**gmm, "gmm_offsets": "ortho", "gmm_variance": "diag"}),
        Sampler("DDIM-GMM-ORTHO-VUB", options={**gmm, "gmm_variance": "vub", "gmm_clip_variance": True}),
        Sampler("DDIM-GMM-ORTHO-VUB*", options={**gmm, "gmm_variance": "vub", "gmm_clip_variance": True,
                                                 "gmm_shared": True}),
        Sampler("DDIM-GMM-ORTHO-EXACT", options={**gmm, "gmm_variance": "exact"}),
    ]


def flow_samplers() -> list[Sampler]:
    gmm = dict(kernel="gmm", gmm_components=8, gmm_variance="vub", gmm_clip_variance=True)
    return [Sampler("RFIM", "flow"), Sampler("RFIM-GMM-ORTHO-VUB", "flow", gmm)]


def scheduler_for(sampler: Sampler, scale: float, eta: float = 0.0):
    opts = dict(sampler.options)
    if sampler.is_mixture:
        opts["gmm_scale"] = scale
    if sampler.family == "flow":
        from ..schedulers.flow import GMMFlowMatchScheduler

        return GMMFlowMatchScheduler(eta=eta, **opts)  # flow pipelines never pass η to step: it is config
    from ..schedulers.ddim import GMMDDIMScheduler

    return GMMDDIMScheduler(clip_sample=False, **opts)


def exact_scale_limit(sampler: Sampler, steps: int, eta: float) -> float:
    """The largest gmm_scale the "exact" variance accepts on this schedule (ORTHO offsets: λ = s²/K ∝ s²)."""
    from ..coefficients import COL_FINAL, COL_VAR
    from ..mixture import build_mixture

    sched = scheduler_for(sampler, 1.0, eta)
    sched.set_timesteps(steps)
    K = sched.config.gmm_components
    need1 = float(build_mixture(K, 1, components=K, scale=1.0, variance="exact").max_offset_variance.max())
    rows = sched._table.host[sched._timesteps_host] if sampler.family == "ddim" else sched._table.host
    applies = (rows[:, COL_FINAL] == 0) | bool(sched.config.gmm_offset_final)
    sigma2 = eta**2 * rows[applies, COL_VAR]
    return math.sqrt(float(sigma2.min()) / need1) if len(sigma2) else 0.0


def sample(data, sampler: Sampler, *, steps: int, eta: float, n: int, seed: int, scale: float = 0.3,
           device="cpu", batch: int = 4096, model=None) -> torch.Tensor:
    """n samples of ``data``'s oracle (or of ``model``, a diffusers-style model) with ``sampler`` (η, steps),
    deterministic in ``seed``."""
    sched = scheduler_for(sampler, scale, eta)
    sched.set_timesteps(steps, device=device)
    if model is None and sampler.family == "flow":
        model = MixtureDenoiser(data, schedule="flow", num_train_timesteps=sched.config.num_train_timesteps)
    elif model is None:
        model = MixtureDenoiser(data, alphas_cumprod=sched.alphas_cumprod)
    gen_device = "cpu" if torch.device(device).type == "cpu" else device
    out = []
    for start in range(0, n, batch):
        g = torch.Generator(gen_device).manual_seed(seed * 1_000_003 + start)
        x = torch.randn((min(batch, n - start), *data.shape), generator=g, device=device)
        if sampler.family == "flow":
            sched.set_timesteps(steps, device=device)
            for t in sched.timesteps:
                x = sched.step(model(x, t).sample, t, x, generator=g).prev_sample
        else:
            for t in sched.timesteps:
                x = sched.step(model(x, t).sample, t, x, eta=eta, generator=g).prev_sample
        out.append(x)
    return torch.cat(out)


def metrics_row(data, sampler, steps, eta, n, seeds, scale, device, reference, model=None):
    """Metrics averaged over seeds (with their spread) and samples/s (``model``: see ``sample``)."""
    per_seed, secs = [], 0.0
    for seed in seeds:
        if device != "cpu":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        x = sample(data, sampler, steps=steps, eta=eta, n=n, seed=seed, scale=scale, device=device, model=model)
        if device != "cpu":
            torch.cuda.synchronize()
        secs += time.perf_counter() - t0
        per_seed.append(evaluate(x, data, reference=reference))
    row = {k: sum(r[k] for r in per_seed) / len(per_seed) for k in METRICS}
    row["fd_std"] = (sum((r["fd"] - row["fd"]) ** 2 for r in per_seed) / max(len(per_seed) - 1, 1)) ** 0.5
    row["samples_per_s"] = n * len(seeds) / secs
    return row, x
