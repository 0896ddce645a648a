"""``gmm-triton train``: the learned denoiser (models.ResidualMLP) trained on fresh samples of the digits oracle.

Each iteration draws a fresh batch x0 ~ p0 (the exact 16×16 digits mixture), t ~ U{0, …, T−1} on diffusers'
default linear 1000-step schedule, ε ~ N(0, I), x_t = √ᾱ_t x0 + √(1 − ᾱ_t) ε, and takes an Adam step on

    L = mean ‖ε̂(x_t, t/T) − ε‖² + mean ‖x̂₀(x_t, t/T) − x0‖²

(each head regresses its conditional expectation; the ε term weights low noise, the x̂₀ term high noise). The
exponential moving average of the weights (decay 0.999) is the model that is saved and used. Nothing is ever
resampled from a finite training set: the only error left is the network's (capacity and optimisation).

Output folder: ``checkpoint.pt`` (resumable state), ``model.pt`` (the finished model; a rerun with the same
configuration and budget returns it at once: the cache ``make distill`` relies on) and ``train.json`` (the log).
Both ``.pt`` files hold only tensors and plain values, loaded with ``weights_only=True`` (``files.load_torch``).
"""
from __future__ import annotations

import os

import torch

from ..files import load_torch, save_torch
from ..models import MODEL_KEYS, DiffusionMLP, ResidualMLP, load_network
from ..oracle import default_alphas_cumprod
from ...provenance import commit
from .loop import EMA, budget, iterations_for, run_loop, single_threaded, write_json
from .testbeds import dataset

# iterations per CPU second of one thread on the reference 2-core machine (batch 256, width 384, depth 2; measured
# 41.8 with the other core running the acceptance's second worker, 36.9–38.5 with other users' load as well)
ITERATIONS_PER_SECOND = 38.0
# the default budget (≈ 5.5 CPU minutes): the model of `make distill`, the demo's rows and the README
DEFAULT_ITERATIONS = 12_600
NETWORK = dict(width=384, depth=2, time_dim=128)


@single_threaded
def train_teacher(out: str, *, minutes: float | None = None, iterations: int | None = None, seed: int = 0,
                  batch: int = 256, lr: float = 1e-3, ema_decay: float = 0.999, progress: bool = True,
                  **network) -> str:
    """Trains (or resumes, or finds finished) the learned digits denoiser in ``out``; returns the model's path.

    The budget is ``iterations`` if given, else ``minutes`` of wall clock (``loop.py``; the iterations that ran are
    recorded in ``model.pt`` and ``train.json``), else ``DEFAULT_ITERATIONS``.
    """
    limit = budget(DEFAULT_ITERATIONS if iterations is None and minutes is None else iterations, minutes)
    net_cfg = {**NETWORK, **network}
    config = dict(dataset="digits", seed=seed, batch=batch, lr=lr, ema_decay=ema_decay, **net_cfg)
    model_path = os.path.join(out, "model.pt")
    if os.path.exists(model_path):
        saved = load_torch(model_path, "model file of `gmm-triton train`", MODEL_KEYS)
        if saved["config"] == config and saved.get("budget", {"iterations": saved["iterations"]}) == limit:
            return model_path
    os.makedirs(out, exist_ok=True)
    data = dataset("digits")
    sqrt_ac, sqrt_1m = (v.float() for v in (default_alphas_cumprod().sqrt(), (1 - default_alphas_cumprod()).sqrt()))
    T = sqrt_ac.numel()
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        net = ResidualMLP(data.dim, **net_cfg)
    ema = EMA(net, ema_decay)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)

    def noisy_batch(g, n):
        x0 = data.sample(n, generator=g).reshape(n, -1)
        t = torch.randint(0, T, (n,), generator=g)
        eps = torch.randn(n, data.dim, generator=g)
        return sqrt_ac[t, None] * x0 + sqrt_1m[t, None] * eps, t, eps, x0

    val = noisy_batch(torch.Generator().manual_seed(10_000 + seed), 2048)

    def step(i):
        xt, t, eps, x0 = noisy_batch(gen, batch)
        out_ = net(xt, t.float() / T)
        loss_eps = (out_["epsilon"] - eps).pow(2).mean()
        loss_x0 = (out_["sample"] - x0).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        (loss_eps + loss_x0).backward()
        opt.step()
        ema.update(net)
        return {"loss_eps": loss_eps.item(), "loss_x0": loss_x0.item()}

    @torch.no_grad()
    def evaluate():
        xt, t, eps, x0 = val
        o = ema.module(xt, t.float() / T)
        return {"val_eps": float((o["epsilon"] - eps).pow(2).mean()), "val_x0": float((o["sample"] - x0).pow(2).mean())}

    expected = limit.get("iterations") or iterations_for(limit["minutes"], ITERATIONS_PER_SECOND)
    state = run_loop(os.path.join(out, "checkpoint.pt"), config=config, objects={"model": net, "ema": ema, "opt": opt},
                     generator=gen, step=step, evaluate=evaluate, eval_every=max(1, expected // 20),
                     desc="train: learned digits denoiser", progress=progress, **limit)
    save_torch({"config": config, "network_config": net.config, "model": net.state_dict(), "ema": ema.state_dict(),
                "iterations": state["iteration"], "budget": limit, "seconds": state["seconds"]}, model_path)
    write_json({"config": config, "budget": limit, "iterations": state["iteration"],
                "seconds": round(state["seconds"], 2), "loop_seconds": round(state["loop_seconds"], 2),
                "commit": commit(), "log": state["log"]},
               os.path.join(out, "train.json"))
    return model_path


def learned_model(path: str, prediction_type: str = "sample") -> DiffusionMLP:
    """The trained model at ``path`` as a diffusers-style model returning the ``prediction_type`` head."""
    return DiffusionMLP(load_network(path), prediction_type=prediction_type)


def learned_demo_rows(net: ResidualMLP, data, reference, *, steps: int, n: int, seeds, scale: float,
                      device: str = "cpu") -> list[dict]:
    """The demo table's rows for the learned network ``net`` (``models.load_network``; its ε head): DDIM and
    DDIM-GMM-ORTHO-VUB at η = 0 and 1, as the oracle's rows but with model error."""
    from ..sampling import ddim_samplers, metrics_row

    model = DiffusionMLP(net, prediction_type="epsilon").to(device)
    rows = []
    for eta in (0.0, 1.0):
        for sampler in (s for s in ddim_samplers() if s.name in ("DDIM", "DDIM-GMM-ORTHO-VUB")):
            row, _ = metrics_row(data, sampler, steps, eta, n, seeds, scale, device, reference, model=model)
            rows.append({"sampler": f"{sampler.name} (learned)", "eta": f"{eta:g}",
                         "scale": f"{scale:.3g}" if sampler.is_mixture else "—", **row})
    return rows
