"""``gmm-triton train --dataset mnist5k``: a diffusers ``UNet2DModel`` trained on the 4000 MNIST-5k training digits,
saved as a diffusers pipeline folder.

Two objectives on the same network (:data:`UNET`), each iteration a batch x₀ drawn with replacement from the
training split, ε ~ N(0, I):

    "epsilon"  t ~ U{0, …, 999} on diffusers' default linear-β schedule (DDPM), x_t = √ᾱ_t x₀ + √(1 − ᾱ_t) ε,
               L = ‖ε̂(x_t, t) − ε‖²                     → ``DDIMPipeline`` with a ``DDIMScheduler`` config
    "flow"     τ ~ U(0, 1), x_τ = (1 − τ) x₀ + τ ε (rectified flow, data at τ = 0), network time 1000 τ,
               L = ‖v̂(x_τ, 1000 τ) − (ε − x₀)‖²         → ``DDPMPipeline`` with a ``FlowMatchEulerDiscreteScheduler``
                                                           (its constructor, unlike DDIMPipeline's, keeps the scheduler)

Adam (lr with a linear warm-up), gradient norm clipped at 1, and an exponential moving average of the weights whose
decay warms up as diffusers' ``EMAModel`` does, d_i = min(0.999, (1 + i) / (10 + i)) at iteration i, so that the
average forgets the random initialisation (a fixed 0.999 keeps 0.999³⁰⁰⁰ ≈ 5 % of it after 3000 iterations, 37 %
after 1000): the EMA weights are the saved model. The DDIM config uses "trailing" timestep spacing (the first
step starts at t = 999 for any step count, which few-step sampling needs) and clips x̂₀ to [−1, 1], the data range.

Output folder: ``checkpoint.pt`` (the resumable state: plain state dicts, configs and the generator's state; see
``distill.loop.run_loop``), ``pipeline/`` (``save_pretrained``; loads with ``DiffusionPipeline.from_pretrained``,
``gmm-triton generate --pipeline`` and ``gmm-triton sample --pipeline``) and ``train.json`` (commit, settings,
iterations, wall and CPU seconds, the loss log). A rerun with the same settings and iterations returns at once.
"""
from __future__ import annotations

import json
import os

import torch

from ..distill.loop import EMA, run_loop, single_threaded, write_json
from .data import SIZE, mnist5k

OBJECTIVES = ("epsilon", "flow")
# The network of the evidence run (267 k parameters, three levels 28 → 14 → 7, no attention): measured on the 2-core
# machine with one thread, 0.26 CPU s per training iteration at batch 64 and 1.7 CPU ms per image forward (the
# budget in evidence/__init__.py; sized so that the whole run fits the shared machine, see there).
UNET = dict(sample_size=SIZE, in_channels=1, out_channels=1, layers_per_block=1, block_out_channels=(16, 32, 32),
            down_block_types=("DownBlock2D",) * 3, up_block_types=("UpBlock2D",) * 3, norm_num_groups=8)
# the --quick network (tests, smoke runs): 2 levels, 8 and 16 channels
QUICK_UNET = dict(sample_size=SIZE, in_channels=1, out_channels=1, layers_per_block=1, block_out_channels=(8, 16),
                  down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                  norm_num_groups=4)
DDIM_CONFIG = dict(num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02, beta_schedule="linear",
                   clip_sample=True, timestep_spacing="trailing")
FLOW_CONFIG = dict(num_train_timesteps=1000, shift=1.0)
CPU_SECONDS_PER_ITERATION = 0.26  # UNET at batch 64, one thread (measured; the module's budget)
DEFAULT_ITERATIONS = 3000         # the evidence run's (sweep.FULL)
DEFAULTS = dict(batch=64, lr=1e-3, warmup=200, ema_decay=0.999, ema_warmup=True, grad_clip=1.0)


def _scheduler(objective: str):
    from diffusers import DDIMScheduler, FlowMatchEulerDiscreteScheduler

    return DDIMScheduler(**DDIM_CONFIG) if objective == "epsilon" else FlowMatchEulerDiscreteScheduler(**FLOW_CONFIG)


def pipeline_class(objective: str):
    from diffusers import DDIMPipeline, DDPMPipeline

    return DDIMPipeline if objective == "epsilon" else DDPMPipeline


def noisy_batch(objective: str, x0: torch.Tensor, g: torch.Generator, alphas_cumprod: torch.Tensor):
    """(x_t, network timestep, regression target) for a batch x₀ (the module docstring's two objectives)."""
    n = x0.shape[0]
    eps = torch.randn(x0.shape, generator=g)
    if objective == "epsilon":
        t = torch.randint(0, alphas_cumprod.numel(), (n,), generator=g)
        a = alphas_cumprod[t].float().view(n, 1, 1, 1)
        return a.sqrt() * x0 + (1 - a).sqrt() * eps, t, eps
    tau = torch.rand(n, generator=g)
    tv = tau.view(n, 1, 1, 1)
    return (1 - tv) * x0 + tv * eps, tau * 1000, eps - x0


def iterations_for_minutes(minutes: float) -> int:
    """The iteration budget of ``minutes`` CPU minutes of one thread at the measured rate."""
    return max(1, round(minutes * 60 / CPU_SECONDS_PER_ITERATION))


@single_threaded
def train_unet(out: str, *, objective: str = "epsilon", iterations: int = DEFAULT_ITERATIONS, seed: int = 0,
               quick: bool = False, progress: bool = True, **overrides) -> str:
    """Trains (or resumes, or finds finished) the MNIST-5k UNet in ``out``; returns the pipeline folder's path.

    ``overrides``: any of :data:`DEFAULTS` (batch, lr, warmup, ema_decay, ema_warmup, grad_clip).
    """
    from diffusers import UNet2DModel

    from ..generate import _commit

    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
        raise ValueError(f"iterations must be a positive int, got {iterations!r}")
    unknown = set(overrides) - set(DEFAULTS)
    if unknown:
        raise TypeError(f"unknown training settings {sorted(unknown)}; known: {sorted(DEFAULTS)}")
    opts = {**DEFAULTS, **overrides}
    unet_cfg = QUICK_UNET if quick else UNET
    config = dict(dataset="mnist5k", split="train", objective=objective, seed=seed, unet=_jsonable(unet_cfg), **opts)
    pipe_dir, record = os.path.join(out, "pipeline"), os.path.join(out, "train.json")
    if os.path.exists(record) and os.path.isdir(pipe_dir):
        with open(record) as f:
            done = json.load(f)
        if done["config"] == config and done["iterations"] == iterations:
            return pipe_dir
    os.makedirs(out, exist_ok=True)
    data, _ = mnist5k("train")
    sched = _scheduler(objective)
    alphas_cumprod = getattr(sched, "alphas_cumprod", torch.ones(1))
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        net = UNet2DModel(**unet_cfg)
    ema = EMA(net, opts["ema_decay"])
    opt = torch.optim.Adam(net.parameters(), lr=opts["lr"])
    warmup = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: min(1.0, (i + 1) / opts["warmup"]))
    gen = torch.Generator().manual_seed(seed)
    g_val = torch.Generator().manual_seed(10_000 + seed)
    val = noisy_batch(objective, data[torch.randint(0, len(data), (256,), generator=g_val)], g_val, alphas_cumprod)

    def step(i):
        x0 = data[torch.randint(0, len(data), (opts["batch"],), generator=gen)]
        xt, t, target = noisy_batch(objective, x0, gen, alphas_cumprod)
        loss = (net(xt, t).sample - target).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), opts["grad_clip"])
        opt.step()
        warmup.step()
        ema.decay = min(opts["ema_decay"], (1 + i) / (10 + i)) if opts["ema_warmup"] else opts["ema_decay"]
        ema.update(net)
        return {"loss": loss.item()}

    @torch.no_grad()
    def evaluate():  # the EMA model's loss on a fixed batch: at the start, every max(50, iterations / 20), the end
        xt, t, target = val
        return {"val_loss": float((ema.module(xt, t).sample - target).pow(2).mean())}

    state = run_loop(os.path.join(out, "checkpoint.pt"), config=config,
                     objects={"model": net, "ema": ema, "opt": opt, "lr": warmup}, generator=gen,
                     iterations=iterations, step=step, evaluate=evaluate, eval_every=max(50, iterations // 20),
                     desc=f"train mnist5k {objective} UNet", progress=progress)
    pipe = pipeline_class(objective)(unet=ema.module.eval(), scheduler=sched)
    pipe.save_pretrained(pipe_dir)
    write_json({"config": config, "iterations": state["iteration"],
                "parameters": sum(p.numel() for p in net.parameters()), "seconds": round(state["seconds"], 2), "cpu_seconds": round(state["cpu_seconds"], 2),
                "threads": torch.get_num_threads(), "commit": _commit(), "torch": torch.__version__,
                "log": state["log"]}, record)
    return pipe_dir


def _jsonable(cfg: dict) -> dict:
    """Tuples as lists, as the config reads back from JSON."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()}
