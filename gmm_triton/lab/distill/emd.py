"""EM distillation (Xie et al., arXiv 2405.16852) of a one-step generator, and the Diff-Instruct/VSD baseline, on
imbalanced low-dimensional mixtures with an exact teacher score (seeds note C); ``gmm-triton distill emd``.

Process: continuous VP-cosine, x_u = a_u x0 + s_u ε with (a, s) = (cos(πu/2), sin(πu/2)), u ~ U[0.02, 0.98].
The teacher's score is exact, s^T(x) = −ε_T(x)/s (testbeds.ExactDenoiser). Generator x = g_θ(z), z ~ N(0, I_d),
an MLP (3 × 128, SiLU); its noisy marginal p^θ_u has the score s_ψ = −ε_ψ/s of a "fake" ε-network
(models.ResidualMLP, width 128) trained by denoising score matching on fresh generator samples (two updates per
generator update). Adam, learning rates 1e-3 (generator) and 1e-3 (fake), batch 256. Δ = s^T − s_ψ = (ε_ψ − ε_T)/s.

**E-step** (MCMC on the reparametrised joint π(ε, z) ∝ N(ε; 0, I) N(z; 0, I) p^T_u(x) / p^θ_u(x),
x = a g_θ(z) + s ε): start from exact generator samples (ε, z) ~ N(0, I) and take K Langevin steps

    ε ← ε + (γ_ε/2)(−ε + s Δ(x)) + √γ_ε n,       z ← z + (γ_z'/2)(−z + a J_gᵀ Δ(x)) + √γ_z' n',

with γ_z' = γ_z · min(1, s²/a²) per sample (one vector-Jacobian product through g per step). **Noise
cancellation**: ε is linear in its injected noise, ε_K = c_K + d_K with c the noise part (c_0 = ε_0,
c ← (1 − γ_ε/2) c + √γ_ε n) and d the drift part (d_0 = 0, d ← (1 − γ_ε/2) d + (γ_ε/2) s Δ(x)); the M-step uses d_K.

**M-step**: ascend E w(u) log N(x; a g_θ(z_K), s² I) at the E-step's (x, z_K), with w = s²/a²: its gradient with
respect to g_θ(z_K) is (s/a) ε_K, replaced by (s/a) d_K, so the loss is −E (s/a) d_K · g_θ(z_K). Since
s Δ = ε_ψ − ε_T = (a/s)(x̂_T − x̂_ψ), (s/a) d_K is a discounted sum of x̂₀-space differences (γ_ε/2)(x̂_T − x̂_ψ).

**VSD baseline** (``method="vsd"``): the same code with K = 1 and γ_z = 0: d_1 = (γ_ε/2) s Δ at the generator's
own sample, so the generator moves along E (γ_ε/2)(s²/a) J_θᵀ (s^T − s_ψ)(x), the Diff-Instruct/VSD gradient of
the reverse (mode-seeking) KL, E w(u) a J_θᵀ (s^T − s_ψ), with weight w = (γ_ε/2) s²/a². More Langevin steps, and
the z moves, tilt the samples toward π, the forward-KL (mode-covering) EM target.

Initialisation: g_θ is regressed onto the teacher's x̂₀ at log-SNR λ* = −6 of its input (x_u = z), which
collapses onto a mode-weighted average (the paper's informative start); the fake network is pre-trained on it.
"""
from __future__ import annotations

import math
import os
import time

import torch
from torch import nn

from ..metrics import frechet_distance
from ..models import ResidualMLP, noise_coefficients
from ..files import savefig
from ...provenance import commit
from .loop import budget, cached_result, iterations_for, pyplot, run_loop, single_threaded, write_json
from .testbeds import DATASETS, ExactDenoiser, dataset, mode_report

METHODS = ("emd", "vsd")
# iterations per CPU second of one thread on the reference 2-core machine, per (dataset, method) (batch 256, K = 8
# Langevin steps for EMD; measured in acceptance runs with other load; 20–32 % more without): spaces the
# evaluations of a --minutes run (loop.py)
ITERATIONS_PER_SECOND = {("2d4", "emd"): 33.0, ("2d4", "vsd"): 73.0, ("8d8", "emd"): 28.0, ("8d8", "vsd"): 62.0}
TV_TARGET = 0.05


def generator_network(dim: int, width: int = 128, depth: int = 3) -> nn.Sequential:
    """z ↦ x: ``depth`` SiLU layers of ``width`` and a linear output."""
    layers, d = [], dim
    for _ in range(depth):
        layers += [nn.Linear(d, width), nn.SiLU()]
        d = width
    return nn.Sequential(*layers, nn.Linear(d, dim))


def e_step(eps, z, a, s, generator, delta, *, steps: int, gamma_eps: float, gamma_z: float, rng):
    """K = ``steps`` Langevin steps on π(ε, z); returns (ε_K, z_K, d_K) with d_K the noise-cancelled drift of ε.

    eps, z: [B, d] starting points; a, s: [B, 1]; generator: z ↦ x; delta: x ↦ Δ(x) = s^T(x) − s_ψ(x), [B, d];
    rng: the torch.Generator of the injected noise.
    """
    drift = torch.zeros_like(eps)
    gz = gamma_z * (s * s / (a * a)).clamp_max(1.0)
    for _ in range(steps):
        if gamma_z > 0:
            z = z.detach().requires_grad_(True)
            gz_out = generator(z)
            d = delta(a * gz_out.detach() + s * eps)
            (vjp,) = torch.autograd.grad(gz_out, z, grad_outputs=a * d)
            z = z.detach()
            z = z + 0.5 * gz * (vjp - z) + gz.sqrt() * torch.randn(z.shape, generator=rng, dtype=z.dtype)
        else:
            with torch.no_grad():
                d = delta(a * generator(z) + s * eps)
        drift = (1 - 0.5 * gamma_eps) * drift + 0.5 * gamma_eps * s * d
        noise = torch.randn(eps.shape, generator=rng, dtype=eps.dtype)
        eps = eps + 0.5 * gamma_eps * (s * d - eps) + math.sqrt(gamma_eps) * noise
    return eps, z.detach(), drift


@single_threaded
def distill_emd(out: str, *, dataset_name: str = "2d4", method: str = "emd", minutes: float | None = 1.0,
                iterations: int | None = None, seed: int = 0, batch: int = 256, lr_generator: float = 1e-3,
                lr_fake: float = 1e-3, langevin_steps: int = 8, gamma_eps: float = 0.3, gamma_z: float = 0.01,
                fake_updates: int = 2, init_iterations: int = 400, u_range=(0.02, 0.98), log_snr_init: float = -6.0,
                eval_every: int | None = None, eval_samples: int = 5000, progress: bool = True) -> dict:
    """Trains (or resumes) a one-step generator by EMD or VSD in ``out``; writes and returns ``result.json``.

    Budget: ``iterations`` (generator updates), else ``minutes`` of wall clock (``loop.py``; the iterations that
    ran are recorded as ``iterations``).
    ``method="vsd"`` overrides langevin_steps = 1 and gamma_z = 0.
    """
    if dataset_name not in DATASETS:
        raise ValueError(f"dataset must be one of {DATASETS}, got {dataset_name!r}")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if method == "vsd":
        langevin_steps, gamma_z = 1, 0.0
    limit = budget(iterations, minutes)
    expected = limit.get("iterations") or iterations_for(minutes, ITERATIONS_PER_SECOND[(dataset_name, method)])
    eval_every = eval_every or max(1, expected // 80)
    config = dict(method=method, dataset=dataset_name, seed=seed, batch=batch, lr_generator=lr_generator,
                  lr_fake=lr_fake, langevin_steps=langevin_steps, gamma_eps=gamma_eps, gamma_z=gamma_z,
                  fake_updates=fake_updates, init_iterations=init_iterations, u_range=list(u_range),
                  log_snr_init=log_snr_init, eval_samples=eval_samples)
    cached = cached_result(os.path.join(out, "result.json"), {**config, "budget": limit})
    if cached:
        return cached
    os.makedirs(out, exist_ok=True)
    data = dataset(dataset_name)
    d = data.dim
    teacher = ExactDenoiser(data)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        gen_net = generator_network(d)
        fake = ResidualMLP(d, width=128, depth=2, time_dim=64, schedule="cosine")
    opt_g = torch.optim.Adam(gen_net.parameters(), lr=lr_generator)
    opt_f = torch.optim.Adam(fake.parameters(), lr=lr_fake)
    rng = torch.Generator().manual_seed(seed)
    lo, hi = u_range

    def noise_level(n):
        u = lo + (hi - lo) * torch.rand(n, generator=rng)
        a, s = noise_coefficients("cosine", u)
        return u, a[:, None], s[:, None]

    def fake_update():
        with torch.no_grad():
            x0 = gen_net(torch.randn(batch, d, generator=rng))
        u, a, s = noise_level(batch)
        eps = torch.randn(batch, d, generator=rng)
        loss = (fake(a * x0 + s * eps, u, head="epsilon") - eps).pow(2).mean()
        opt_f.zero_grad(set_to_none=True)
        loss.backward()
        opt_f.step()
        return loss.item()

    ckpt = os.path.join(out, "checkpoint.pt")
    if not os.path.exists(ckpt):
        _initialise(gen_net, teacher, d, batch, log_snr_init, init_iterations, rng)
        for _ in range(init_iterations):
            fake_update()

    def step(it):
        loss_fake = sum(fake_update() for _ in range(fake_updates)) / fake_updates
        u, a, s = noise_level(batch)
        z = torch.randn(batch, d, generator=rng)
        eps = torch.randn(batch, d, generator=rng)

        def delta(x):
            with torch.no_grad():
                eps_fake = fake(x, u, head="epsilon")
            return (eps_fake - teacher(x, a, s)[1]) / s

        _, z_k, drift = e_step(eps, z, a, s, gen_net, delta, steps=langevin_steps, gamma_eps=gamma_eps,
                               gamma_z=gamma_z, rng=rng)
        loss = -((s / a) * drift * gen_net(z_k)).sum(1).mean()
        opt_g.zero_grad(set_to_none=True)
        loss.backward()
        opt_g.step()
        return {"loss_fake": loss_fake}

    z_eval = torch.randn(eval_samples, d, generator=torch.Generator().manual_seed(1_000_000 + seed))

    @torch.no_grad()
    def evaluate():
        x = gen_net(z_eval)
        rep = mode_report(x, data)
        return {"mode_tv": rep["mode_tv"], "modes_covered": rep["modes_covered"], "precision": rep["precision"],
                "recall": rep["recall"]}

    state = run_loop(ckpt, config=config, objects={"generator": gen_net, "fake": fake, "opt_g": opt_g, "opt_f": opt_f},
                     generator=rng, step=step, evaluate=evaluate, eval_every=eval_every,
                     desc=f"distill {method} {dataset_name} seed={seed}", progress=progress, **limit)
    with torch.no_grad():
        x = gen_net(z_eval)
    final = mode_report(x, data)
    hit = next((r for r in state["log"] if r["mode_tv"] <= TV_TARGET), None)
    result = {**final, "fd": frechet_distance(x, data.mean(), data.covariance()),
              "iterations_to_tv": hit["iteration"] if hit else None, "seconds_to_tv": hit["seconds"] if hit else None,
              "cpu_seconds_to_tv": hit["cpu_seconds"] if hit else None, "tv_target": TV_TARGET,
              "seconds": round(state["seconds"], 2), "cpu_seconds": round(state["cpu_seconds"], 2),
              "loop_seconds": round(state["loop_seconds"], 2),
              "iterations": state["iteration"],
              "config": {**config, "budget": limit}, "commit": commit(),
              "true_weights": [round(float(w), 4) for w in data.weights], "log": state["log"]}
    write_json(result, os.path.join(out, "result.json"))
    plot_run(result, os.path.join(out, "modes.png"))
    return result


def _initialise(gen_net, teacher, d, batch, log_snr, iterations, rng):
    """Regresses g_θ(z) onto the teacher's x̂₀(x_u = z) at log-SNR ``log_snr`` (a² = sigmoid(λ), s² = 1 − a²)."""
    a2 = 1.0 / (1.0 + math.exp(-log_snr))
    a, s = math.sqrt(a2), math.sqrt(1 - a2)
    opt = torch.optim.Adam(gen_net.parameters(), lr=1e-3)
    for _ in range(iterations):
        z = torch.randn(batch, d, generator=rng)
        target = teacher(z, torch.full((batch,), a), torch.full((batch,), s))[0]
        loss = (gen_net(z) - target).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


def plot_run(result: dict, path: str) -> None:
    """Mode TV and per-mode recall against iterations and training seconds."""
    plt = pyplot()
    log = result["log"]
    its, secs = [r["iteration"] for r in log], [r["cpu_seconds"] for r in log]
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.2))
    for ax, xs, label in ((axes[0], its, "iterations"), (axes[1], secs, "training CPU seconds (one thread)")):
        ax.plot(xs, [r["mode_tv"] for r in log], marker=".")
        ax.axhline(result["tv_target"], color="gray", linestyle=":")
        ax.set_yscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel("mode-weight TV")
    recall = list(zip(*[r["recall"] for r in log]))
    for m, rs in enumerate(recall):
        axes[2].plot(its, rs, label=f"mode {m} (π={result['true_weights'][m]:g})")
    axes[2].set_xlabel("iterations")
    axes[2].set_ylabel("recall per mode")
    axes[2].legend(fontsize=6)
    cfg = result["config"]
    fig.suptitle(f"{cfg['method']} on {cfg['dataset']}, seed {cfg['seed']}", fontsize=9)
    fig.tight_layout()
    savefig(fig, path, dpi=80)
    plt.close(fig)
