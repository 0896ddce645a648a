"""Multistep moment-matching distillation (Salimans et al., arXiv 2406.04103) on the digits mixture, in both of the
paper's variants: ``alternating`` (an auxiliary denoiser, seeds note B.3) and ``instant`` (moment matching in the
teacher's parameter space, no auxiliary network, B.4); ``gmm-triton distill mm --variant alternating|instant``.

Process: diffusers' default linear 1000-step VP schedule, z_t = a_t x + s_t ε with (a_t, s_t) = (√ᾱ_t, √(1−ᾱ_t)).
Student grid: k *trailing* timesteps t_1 > … > t_k (k = 8: 999, 874, …, 124; k = 1: 999).

**Student sampler** (B.1): z ~ N(0, I) at t_1; at each grid step x̃ = g_η(z_t, t), then
z_s ~ q(z_s | z_t, x = x̃) = N(μ, σ²) with, for s = the next grid timestep,

    μ = (a_{t|s} s_s² / s_t²) z_t + (a_s s_{t|s}² / s_t²) x̃,   σ² = s_{t|s}² s_s² / s_t²,
    a_{t|s} = a_t / a_s,  s_{t|s}² = s_t² − a_{t|s}² s_s²,

and the last step returns x̃ (s = −1, ᾱ = 1). This is the ancestral DDIM step (η = 1) on an x̂₀ prediction, i.e.
``GMMDDIMScheduler(prediction_type="sample", timestep_spacing="trailing", prev_timestep_rule="grid")`` stepped
at η = 1 (:func:`sample`; the tests check it against a direct float64 implementation).

**Training** (one iteration; even iterations update the auxiliary denoiser g_φ, odd ones the student g_η):
draw fresh data x ~ p0; per sample a grid index i, t = t_i and s ~ U{t_{i+1}, …, t − 1} (U{0, …, t − 1} on the
last interval); z_t = a_t x + s_t ε; x̃ = g_η(z_t, t); z_s ~ q(z_s | z_t, x̃) (no gradient; drawn by the package's
op, :func:`posterior_table`); x̂_T = the teacher's x̂₀(z_s, s); w(s) = min(1/s_s², 10);

    L(φ) = E w(s) [‖x̃ − g_φ(z_s, s)‖² + ‖x̂_T − g_φ(z_s, s)‖²] / D     (g_φ learns E_g[x̃ | z_s], pulled to x̂_T)
    L(η) = E w(s) x̃ · sg[g_φ(z_s, s) − x̂_T] / D                      (gradient only through x̃)

At the optimum g_φ = (E_g[x̃ | z_s] + x̂_T) / 2, so L(η)'s gradient pushes the student's conditional mean of
x̃ given z_s toward the teacher's: the moment-matching condition E_g[x̃ | z_s] = x̂_T(z_s) on the student's own
trajectory. Both networks start from the learned digits model (``gmm-triton train``); Adam β = (0, 0.99),
lr 1e-4, batch 256; the student is evaluated with an EMA of its weights (decay 0.99). The teacher is either
the exact oracle (``oracle``) or the learned model itself (``learned``, frozen).

**Instant variant** (every iteration updates the student; the same draws of x, t, s, z_t, x̃, z_s): the teacher's
own denoising loss on the student's pairs, ℓ(θ; x̃, z_s) = w(s) ‖x̃ − x̂_θ(z_s, s)‖² / D, has a gradient in the
teacher's parameters θ whose expectation vanishes at θ = θ_T when the student's conditional mean matches the
teacher's (in the directions the teacher's parametrisation can express): E_g[x̃ | z_s] = x̂_θ(z_s). The student
minimises its squared norm under a diagonal preconditioner, estimated without bias from the two halves of the
batch, A and B (independent draws):

    L(η) = Σ_p g_A,p g_B,p / (√v̂_p + 1e-8),   g_X = ∇_θ mean_{b ∈ X} ℓ(θ; x̃_b, z_s,b) at θ = θ_T,

v̂ = the bias-corrected exponential average (decay 0.99) of (g_A² + g_B²)/2 (Adam's second moment, not
differentiated). E[g_A · g_B] = ‖E g‖² because the halves are independent; ‖g_A‖² would add the gradient's
variance. ∇_η L is a double backward: g_X is built with ``create_graph=True``, and the gradient reaches η through
x̃ only (z_s is drawn without gradient, as in the alternating variant). This is the alternating scheme with the
auxiliary denoiser replaced by one infinitesimal preconditioned step of the teacher from θ_T on ℓ. θ of the
learned teacher: its network's parameters (those the x̂₀ head depends on, 1.06 M). θ of the exact oracle: the
mixture's own parameters, means μ_k (centred at the data mean; 1797 × 256), log-variances log c_k² and
log-weights log π_k — the oracle is the teacher family's member at the true values, where E_data ∇_θ ℓ = 0 exactly
(the posterior mean minimises the denoising loss), so the instant condition is exact moment matching projected
on the mixture's parameter directions.
"""
from __future__ import annotations

import os
import time

import torch

from ...coefficients import ddim_table
from ..metrics import frechet_distance
from ..models import ResidualMLP, load_network, trained_with
from ...ops import ddim_step
from ...schedulers import GMMDDIMScheduler
from ..files import savefig
from ...provenance import commit
from .loop import EMA, budget, cached_result, iterations_for, pyplot, run_loop, single_threaded, write_json
from .testbeds import ExactDenoiser, dataset, digits_metrics, mixture_posterior

TEACHERS = ("oracle", "learned")
VARIANTS = ("alternating", "instant")
# iterations per CPU second of one thread on the reference 2-core machine (batch 256), the lower end of what was
# measured: spaces the evaluations of a --minutes run (loop.py). alternating: 22.7–28.5 (k = 8 and 4, either
# teacher, with and without other load); instant (a double backward through the teacher every iteration): 9.5 with
# the oracle teacher (its 460 k mixture parameters), 13.8 with the learned one (k = 8, under load)
ITERATIONS_PER_SECOND = {"alternating": 23.0, "instant": 9.0}
SCHEDULE = dict(timestep_spacing="trailing", prev_timestep_rule="grid", clip_sample=False)


def scheduler(steps: int, prediction_type: str = "sample", noise_source: str = "philox") -> GMMDDIMScheduler:
    """The k-step trailing-grid scheduler of the students and of the teachers' baselines."""
    sched = GMMDDIMScheduler(prediction_type=prediction_type, noise_source=noise_source, **SCHEDULE)
    sched.set_timesteps(steps)
    return sched


@torch.no_grad()
def sample(predict, steps: int, n: int, dim: int, *, eta: float, seed: int, prediction_type: str = "sample",
           noise_source: str = "philox") -> torch.Tensor:
    """n samples [n, dim] of ``steps`` scheduler steps on ``predict(x, t) -> model output`` (t a 0-d integer
    tensor), deterministic in ``seed``: x_T ~ N(0, I) and every step's noise come from one generator
    (``noise_source``: the scheduler's, "philox" in the kernel or "torch" as diffusers draws it)."""
    sched = scheduler(steps, prediction_type, noise_source)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, dim, generator=g)
    for t in sched.timesteps:
        x = sched.step(predict(x, t), t, x, eta=eta, generator=g).prev_sample
    return x


def posterior_table(sched: GMMDDIMScheduler) -> torch.Tensor:
    """The op's coefficient table for the training draws z_s ~ q(z_s | z_t, x̃) (DDIM at η = 1 from t to s).

    Row s ∈ [0, t_1) is the row of timestep t(s) = the smallest grid timestep above s in ``ddim_table`` built
    for the two-point schedule (t(s), s), i.e. the step t(s) → s; ``ddim_step`` with ``timestep = s`` (one per
    sample) then draws every sample's posterior in one call.
    """
    grid = sched.timesteps.tolist()
    T = sched.config.num_train_timesteps
    rows = []
    for s in range(grid[0]):
        t = min(g for g in grid if g > s)
        rows.append(ddim_table(sched.alphas_cumprod, 1.0, T, torch.tensor([t, s]), "grid")[t])
    return torch.stack(rows)


class Teacher:
    """x̂₀ of the oracle (exact) or of the learned model at per-sample integer timesteps; with ``parametric``, also
    as a function of the teacher's parameters θ (:attr:`parameters`, :meth:`x0_of_parameters`; the instant
    variant's module docstring says what θ is for each teacher)."""

    def __init__(self, kind: str, alphas_cumprod: torch.Tensor, model_path: str | None = None,
                 parametric: bool = False):
        if kind not in TEACHERS:
            raise ValueError(f"teacher must be one of {TEACHERS}, got {kind!r}")
        self.kind, self.T = kind, alphas_cumprod.numel()
        self.sqrt_ac = alphas_cumprod.double().sqrt().float()
        self.sqrt_1m = (1 - alphas_cumprod.double()).sqrt().float()
        self.parameters: list[torch.Tensor] = []
        if kind == "oracle":
            self.exact = ExactDenoiser(dataset("digits"))
            if parametric:  # θ = (centred means, log c², log π) at their true values
                e = self.exact
                self.parameters = [e.means.clone().requires_grad_(True), e.var.log().requires_grad_(True),
                                   e.log_weights.clone().requires_grad_(True)]
        else:
            self.net = load_network(model_path)
            if parametric:
                self.parameters = [p.requires_grad_(True) for p in _trainable(self.net)]

    @torch.no_grad()
    def x0(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        t = t.reshape(-1).long().expand(x.shape[0])
        if self.kind == "oracle":
            return self.exact(x, self.sqrt_ac[t], self.sqrt_1m[t])[0]
        return self.net(x, t.float() / self.T, head="sample")

    def x0_of_parameters(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x̂₀ [B, D] as a differentiable function of :attr:`parameters` (:meth:`x0` up to float rounding)."""
        if not self.parameters:
            raise ValueError("x0_of_parameters needs a Teacher built with parametric=True")
        t = t.reshape(-1).long().expand(x.shape[0])
        if self.kind == "oracle":
            means, log_var, log_weights = self.parameters
            return mixture_posterior(x, self.sqrt_ac[t], self.sqrt_1m[t], self.exact.mean, means, log_var.exp(),
                                     log_weights)[0]
        return self.net(x, t.float() / self.T, head="sample")


def baselines(teacher: Teacher, steps: int, n: int, seed: int, data) -> dict:
    """The teacher's own k-step samplers on the student's grid: DDIM (η = 0) and ancestral (η = 1)."""
    out = {}
    for name, eta in (("ddim", 0.0), ("ancestral", 1.0)):
        m = digits_metrics(sample(teacher.x0, steps, n, data.dim, eta=eta, seed=seed), data)
        out.update({f"teacher_{name}_{k}": v for k, v in m.items()})
    return out


@single_threaded
def many_step_baseline(out: str, *, teacher: str, model_path: str, steps: int = 50, seeds=(0, 1, 2),
                       n: int = 4000) -> dict:
    """The teacher's DDIM with many steps (default 50) over sampling ``seeds``: what the paper's "the 8-step
    student beats its many-step teacher" compares against. Writes ``out/<teacher>_ddim<steps>.json`` (cached)."""
    path = os.path.join(out, f"{teacher}_ddim{steps}.json")
    config = dict(teacher=teacher, model=os.path.abspath(model_path), model_trained=trained_with(model_path),
                  steps=steps, seeds=list(seeds), n=n)
    cached = cached_result(path, config)
    if cached:
        return cached
    os.makedirs(out, exist_ok=True)
    data = dataset("digits")
    teach = Teacher(teacher, scheduler(steps).alphas_cumprod, model_path)
    rows = [digits_metrics(sample(teach.x0, steps, n, data.dim, eta=0.0, seed=seed), data) for seed in seeds]
    result = {"config": config, "per_seed": rows, **{k: sum(r[k] for r in rows) / len(rows) for k in rows[0]},
              "commit": commit()}
    write_json(result, path)
    return result


@single_threaded
def distill_mm(out: str, *, steps: int, teacher: str = "learned", model_path: str, variant: str = "alternating",
               minutes: float | None = 2.0, iterations: int | None = None, seed: int = 0, batch: int = 256,
               lr: float = 1e-4, ema_decay: float = 0.99, weight_cap: float = 10.0, eval_every: int | None = None,
               eval_samples: int = 4000, progress: bool = True) -> dict:
    """Trains (or resumes) a k-step moment-matching student in ``out``; writes and returns ``result.json``.

    model_path: the learned model (``gmm-triton train``) that initialises the student (and the alternating
    variant's auxiliary denoiser) and, for ``teacher="learned"``, is the teacher. variant: "alternating" or
    "instant" (the module docstring). Budget: ``iterations``, else ``minutes`` of wall clock (``loop.py``; the
    iterations that ran are recorded as ``iterations``).
    Every evaluation (the FD curve and the final metrics) uses ``eval_samples`` samples drawn with sampling seed
    ``seed``, as do the teacher's baselines: common initial noise and step noise, so the comparisons are paired.
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= 1000:
        raise ValueError(f"steps must be an int in [1, 1000], got {steps!r}")
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    if variant == "instant" and (isinstance(batch, bool) or batch < 2 or batch % 2):
        raise ValueError(f"the instant variant splits the batch in two halves: batch must be even and >= 2, "
                         f"got {batch!r}")
    limit = budget(iterations, minutes)
    eval_every = eval_every or max(
        1, (limit.get("iterations") or iterations_for(minutes, ITERATIONS_PER_SECOND[variant])) // 8)
    config = dict(method="mm", variant=variant, steps=steps, teacher=teacher, seed=seed, batch=batch, lr=lr,
                  ema_decay=ema_decay, weight_cap=weight_cap, model=os.path.abspath(model_path),
                  model_trained=trained_with(model_path), eval_samples=eval_samples)
    cached = cached_result(os.path.join(out, "result.json"), {**config, "budget": limit})
    if cached:
        return cached
    os.makedirs(out, exist_ok=True)
    data = dataset("digits")
    sched = scheduler(steps)
    acp = sched.alphas_cumprod.double()
    T = acp.numel()
    grid = sched.timesteps.clone()
    table = posterior_table(sched)
    teach = Teacher(teacher, acp, model_path, parametric=variant == "instant")
    sqrt_ac, sqrt_1m = teach.sqrt_ac, teach.sqrt_1m
    student = load_network(model_path).train().requires_grad_(True)
    ema = EMA(student, ema_decay)
    opt_student = torch.optim.Adam(_trainable(student), lr=lr, betas=(0.0, 0.99))
    objects = {"student": student, "ema": ema, "opt_student": opt_student}
    if variant == "alternating":
        aux = load_network(model_path).train().requires_grad_(True)
        opt_aux = torch.optim.Adam(_trainable(aux), lr=lr, betas=(0.0, 0.99))
        objects |= {"aux": aux, "opt_aux": opt_aux}
    else:
        precond = DiagonalPreconditioner(teach.parameters)
        objects["precond"] = precond
    gen = torch.Generator().manual_seed(seed)
    D = data.dim

    def student_pairs():
        """Fresh data, (t, s), z_t, x̃ = g_η(z_t, t) (with gradient), z_s ~ q(z_s | z_t, x̃) (without), w(s)."""
        x = data.sample(batch, generator=gen).reshape(batch, D)
        t, s = draw_times(grid, batch, gen)
        eps = torch.randn(batch, D, generator=gen)
        z_t = sqrt_ac[t, None] * x + sqrt_1m[t, None] * eps
        x_tilde = student(z_t, t.float() / T, head="sample")
        z_s = ddim_step(z_t, x_tilde.detach(), s, table, prediction_type="sample", eta=1.0, generator=gen,
                        return_pred_original=False)[0]
        return x_tilde, z_s, s, loss_weight(acp, s, weight_cap)

    def alternating_step(it):
        train_student = it % 2 == 1
        with torch.set_grad_enabled(train_student):
            x_tilde, z_s, s, w = student_pairs()
        x_teacher = teach.x0(z_s, s)
        with torch.set_grad_enabled(not train_student):
            g = aux(z_s, s.float() / T, head="sample")
        if train_student:
            loss, opt = student_loss(x_tilde, g, x_teacher, w), opt_student
        else:
            loss, opt = auxiliary_loss(x_tilde, g, x_teacher, w), opt_aux
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if train_student:
            ema.update(student)
        return {"loss_student" if train_student else "loss_aux": loss.item()}

    def instant_step(it):
        x_tilde, z_s, s, w = student_pairs()
        half = batch // 2
        grads = [teacher_gradient(teach, x_tilde[h], z_s[h], s[h], w[h])
                 for h in (slice(0, half), slice(half, batch))]
        precond.update(*grads)
        loss = instant_loss(*grads, precond.scale())
        opt_student.zero_grad(set_to_none=True)
        params = _trainable(student)
        for p, g in zip(params, torch.autograd.grad(loss, params)):
            p.grad = g
        opt_student.step()
        ema.update(student)
        return {"loss_instant": loss.item()}

    def predict_ema(x, t):
        return ema.module(x, t.float() / T, head="sample")

    def evaluate():
        x = sample(predict_ema, steps, eval_samples, D, eta=1.0, seed=seed)
        return {"fd": frechet_distance(x, data.mean(), data.covariance())}

    state = run_loop(os.path.join(out, "checkpoint.pt"), config=config, objects=objects, generator=gen,
                     step=alternating_step if variant == "alternating" else instant_step,
                     evaluate=evaluate, eval_every=eval_every,
                     desc=f"distill mm {variant} k={steps} teacher={teacher} seed={seed}", progress=progress, **limit)
    t0 = time.perf_counter()
    final = digits_metrics(sample(predict_ema, steps, eval_samples, D, eta=1.0, seed=seed), data)
    base = baselines(teach, steps, eval_samples, seed, data)
    result = {**final, "teacher_ddim_fd": base["teacher_ddim_fd"], "teacher_ancestral_fd": base["teacher_ancestral_fd"],
              "baselines": base, "seconds": round(state["seconds"], 2),
              "cpu_seconds": round(state["cpu_seconds"], 2),
              "loop_seconds": round(state["loop_seconds"], 2), "iterations": state["iteration"],
              "eval_seconds": round(time.perf_counter() - t0, 2), "config": {**config, "budget": limit},
              "calibration_iterations_per_second": ITERATIONS_PER_SECOND[variant], "commit": commit(),
              "log": state["log"]}
    write_json(result, os.path.join(out, "result.json"))
    plot_fd_curve(result, os.path.join(out, "fd_vs_time.png"))
    return result


def teacher_gradient(teacher: Teacher, x_tilde, z_s, s, w) -> tuple:
    """g = ∇_θ mean_b w_b ‖x̃_b − x̂_θ(z_s,b, s_b)‖² / D at the teacher's θ, as a differentiable function of x̃
    (``create_graph``): the instant variant's per-minibatch gradient."""
    x_hat = teacher.x0_of_parameters(z_s, s)
    loss = (w * (x_tilde - x_hat).pow(2).sum(1)).mean() / x_tilde.shape[1]
    return torch.autograd.grad(loss, teacher.parameters, create_graph=True)


def instant_loss(grads_a, grads_b, scale) -> torch.Tensor:
    """Σ_p g_A,p g_B,p scale_p over the parameter tensors: an unbiased estimate of ‖E g‖² under the preconditioner
    ``scale`` when the two gradients come from independent minibatches."""
    return sum((a * b * c).sum() for a, b, c in zip(grads_a, grads_b, scale))


class DiagonalPreconditioner:
    """Adam's second moment of the teacher gradients: v ← β v + (1 − β)(g_A² + g_B²)/2 (β = 0.99), and
    scale = 1/(√(v / (1 − β^k)) + eps) after k updates. Checkpointable (state_dict / load_state_dict)."""

    def __init__(self, parameters, beta: float = 0.99, eps: float = 1e-8):
        self.v = [torch.zeros_like(p, requires_grad=False) for p in parameters]
        self.beta, self.eps, self.count = beta, eps, 0

    @torch.no_grad()
    def update(self, grads_a, grads_b) -> None:
        self.count += 1
        for v, a, b in zip(self.v, grads_a, grads_b):
            v.mul_(self.beta).add_(0.5 * (a * a + b * b), alpha=1 - self.beta)

    @torch.no_grad()
    def scale(self) -> list[torch.Tensor]:
        if self.count == 0:
            raise ValueError("the preconditioner has no second moments yet: call update first")
        corr = 1 - self.beta ** self.count
        return [1.0 / ((v / corr).sqrt() + self.eps) for v in self.v]

    def state_dict(self) -> dict:
        return {"v": self.v, "count": self.count}

    def load_state_dict(self, state: dict) -> None:
        self.v, self.count = [v.clone() for v in state["v"]], int(state["count"])


def draw_times(grid: torch.Tensor, n: int, rng: torch.Generator):
    """Per sample: t = t_i for i ~ U{0, …, k−1}, and s ~ U{t_{i+1}, …, t − 1} (U{0, …, t − 1} for i = k − 1)."""
    lower = torch.cat([grid[1:], grid.new_zeros(1)])
    i = torch.randint(0, grid.numel(), (n,), generator=rng)
    t, lo = grid[i], lower[i]
    return t, lo + (torch.rand(n, generator=rng, dtype=torch.float64) * (t - lo)).long()


def loss_weight(alphas_cumprod: torch.Tensor, s: torch.Tensor, cap: float) -> torch.Tensor:
    """w(s) = min(1/s_s², cap) = min(1/(1 − ᾱ_s), cap), float32 [B]."""
    return (1.0 / (1 - alphas_cumprod.double()[s])).clamp_max(cap).float()


def auxiliary_loss(x_tilde, g, x_teacher, w):
    """L(φ) = mean_b w_b (‖x̃_b − g_b‖² + ‖x̂_T,b − g_b‖²) / D; the gradient reaches only g = g_φ(z_s)."""
    return (w * ((x_tilde.detach() - g).pow(2).sum(1) + (x_teacher - g).pow(2).sum(1))).mean() / g.shape[1]


def student_loss(x_tilde, g, x_teacher, w):
    """L(η) = mean_b w_b x̃_b · sg[g_b − x̂_T,b] / D; its gradient with respect to x̃_b is
    w_b (g_b − x̂_T,b) / (B D)."""
    return (w * (x_tilde * (g - x_teacher).detach()).sum(1)).mean() / x_tilde.shape[1]


def _trainable(net: ResidualMLP):
    """The parameters that the x̂₀ head depends on (the ε head is never used by students)."""
    return [p for name, p in net.named_parameters() if not name.startswith("heads.epsilon")]


def plot_fd_curve(result: dict, path: str) -> None:
    """FD of the student (EMA) against training seconds, with the teacher's same-step baselines."""
    plt = pyplot()
    log = result["log"]
    fig, ax = plt.subplots(figsize=(5.2, 3.6))
    ax.plot([r["cpu_seconds"] for r in log], [r["fd"] for r in log], marker="o", label="student (EMA)")
    cfg = result["config"]
    for key, style in (("teacher_ddim_fd", "--"), ("teacher_ancestral_fd", ":")):
        ax.axhline(result[key], linestyle=style, color="gray",
                   label=f"teacher {key.split('_')[1]} ({cfg['steps']} steps)")
    ax.set_yscale("log")
    ax.set_xlabel("training CPU seconds (one thread)")
    ax.set_ylabel(f"FD to the data moments (n={cfg['eval_samples']})")
    ax.set_title(f"moment matching, k={cfg['steps']}, teacher={cfg['teacher']}, seed={cfg['seed']}", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    savefig(fig, path, dpi=90)
    plt.close(fig)
