"""Moment-matching distillation: the student's sampler against a direct float64 implementation, the training
posterior draw, the time draw, the loss pieces, the exact teacher, the instant variant's parameter-space gradient
(double backprop against a finite difference in θ, stationarity of the oracle on data pairs, the preconditioner),
and tiny end-to-end runs of both variants with resume."""
import json
import math
import os

import pytest
import torch

from gmm_triton.lab.distill import mm
from gmm_triton.lab.distill.teacher import train_teacher
from gmm_triton.lab.models import load_network
from gmm_triton.lab.distill.testbeds import ExactDenoiser, dataset, mixture_posterior
from gmm_triton.lab.oracle import GaussianMixture, MixtureDenoiser
from gmm_triton.ops import ddim_step


def _acp():
    """diffusers' default ᾱ in the float32 the scheduler holds, as float64."""
    return mm.scheduler(1).alphas_cumprod.double()


def _ancestral_f64(predict, grid, n, dim, g):
    """B.1 written out in float64: x̃ = predict(z, t); z_s ~ N(μ, σ²) with μ = (a_{t|s} s_s²/s_t²) z +
    (a_s s_{t|s}²/s_t²) x̃, σ² = s_{t|s}² s_s²/s_t²; the last step returns x̃. Noise: the generator's float32
    normals in the scheduler's order (x_T, then one draw per step)."""
    acp = _acp()
    z = torch.randn(n, dim, generator=g).double()
    for j, t in enumerate(grid):
        x_tilde = predict(z, torch.tensor(t))
        noise = torch.randn(n, dim, generator=g).double()
        if j == len(grid) - 1:
            z = x_tilde
            continue
        s = grid[j + 1]
        a_t, a_s, st2, ss2 = acp[t].sqrt(), acp[s].sqrt(), 1 - acp[t], 1 - acp[s]
        a_ts = a_t / a_s
        s_ts2 = st2 - a_ts**2 * ss2
        z = (a_ts * ss2 / st2) * z + (a_s * s_ts2 / st2) * x_tilde + (s_ts2 * ss2 / st2).sqrt() * noise
    return z


@pytest.mark.parametrize("steps", [1, 2, 8])
def test_student_sampler_is_the_ancestral_posterior(steps):
    dim = 12
    W = torch.randn(dim, dim, generator=torch.Generator().manual_seed(3), dtype=torch.float64) / math.sqrt(dim)

    def predict(x, t):  # a smooth, time-dependent stand-in for a student network
        return torch.tanh(x.double() @ W + float(t) / 1000).to(x.dtype)

    ours = mm.sample(predict, steps, 64, dim, eta=1.0, seed=5, noise_source="torch")
    grid = mm.scheduler(steps).timesteps.tolist()
    assert grid[0] == 999 and (steps != 8 or grid == [999, 874, 749, 624, 499, 374, 249, 124])
    direct = _ancestral_f64(predict, grid, 64, dim, torch.Generator().manual_seed(5))
    torch.testing.assert_close(ours.double(), direct, atol=2e-5, rtol=2e-5)
    if steps == 1:  # one step: the output is the prediction at t = 999
        g = torch.Generator().manual_seed(5)
        torch.testing.assert_close(ours, predict(torch.randn(64, dim, generator=g), 999))


def test_student_sampler_is_deterministic_in_its_seed():
    f = lambda x, t: 0.5 * x  # noqa: E731
    a = mm.sample(f, 4, 32, 8, eta=1.0, seed=1)
    assert torch.equal(a, mm.sample(f, 4, 32, 8, eta=1.0, seed=1))
    assert not torch.equal(a, mm.sample(f, 4, 32, 8, eta=1.0, seed=2))


@pytest.mark.parametrize("steps", [1, 8])
def test_posterior_draw_through_the_op(steps):
    """ddim_step on posterior_table at per-sample timesteps s is q(z_s | z_t(s), x̃) for every s."""
    sched = mm.scheduler(steps)
    table = mm.posterior_table(sched)
    grid = sched.timesteps.tolist()
    s = torch.tensor([0, 1, 57, 123, 124, 125, 500, 873, 874, 998])
    t = torch.tensor([min(g for g in grid if g > v) for v in s.tolist()])
    g = torch.Generator().manual_seed(0)
    z_t, x0, noise = (torch.randn(10, 5, generator=g, dtype=torch.float64) for _ in range(3))
    ours = ddim_step(z_t, x0, s, table, prediction_type="sample", eta=1.0, noise=noise)[0]
    acp = _acp()
    a_t, a_s, st2, ss2 = (v[:, None] for v in (acp[t].sqrt(), acp[s].sqrt(), 1 - acp[t], 1 - acp[s]))
    a_ts = a_t / a_s
    s_ts2 = st2 - a_ts**2 * ss2
    direct = (a_ts * ss2 / st2) * z_t + (a_s * s_ts2 / st2) * x0 + (s_ts2 * ss2 / st2).sqrt() * noise
    torch.testing.assert_close(ours, direct, rtol=1e-12, atol=1e-12)


def test_time_draw():
    """t uniform on the grid; s uniform on {t_{i+1}, …, t − 1} (on {0, …, t − 1} for the last t): chi-square."""
    grid = mm.scheduler(4).timesteps                      # 999, 749, 499, 249
    n = 40_000
    t, s = mm.draw_times(grid, n, torch.Generator().manual_seed(0))
    lower = {999: 749, 749: 499, 499: 249, 249: 0}
    assert set(t.tolist()) == set(grid.tolist())
    assert all(lower[a] <= b < a for a, b in zip(t.tolist()[:2000], s.tolist()[:2000]))
    assert bool(((s >= torch.tensor([lower[v] for v in t.tolist()])) & (s < t)).all())
    # i ~ U{0..3}: counts within 5 standard deviations
    counts = torch.stack([(t == v).sum() for v in grid]).double()
    assert bool(((counts - n / 4).abs() < 5 * math.sqrt(n / 4 * 0.75)).all())
    # s within the last interval, in 10 equal bins of 24.9 timesteps: chi-square with 9 dof, 99.9% quantile 27.9
    last = s[t == 249].double()
    hist = torch.histc(last, bins=10, min=0, max=249)
    expected = len(last) / 10
    assert float(((hist - expected) ** 2 / expected).sum()) < 27.9


def test_loss_pieces():
    g = torch.Generator().manual_seed(1)
    B, D = 6, 4
    x_tilde, aux_out, x_teacher = (torch.randn(B, D, generator=g, dtype=torch.float64, requires_grad=True)
                                   for _ in range(3))
    s = torch.tensor([0, 3, 10, 200, 600, 999])
    acp = _acp()
    w = mm.loss_weight(acp, s, 10.0).double()
    torch.testing.assert_close(w, torch.tensor([min(1 / (1 - float(acp[v])), 10.0) for v in s], dtype=torch.float64),
                               rtol=1e-6, atol=0)
    assert float(w[0]) == 10.0 and float(w[-1]) < 1.001
    # auxiliary loss: value and gradient (only to g), minimiser (x̃ + x̂_T)/2
    la = mm.auxiliary_loss(x_tilde, aux_out, x_teacher, w)
    with torch.no_grad():
        direct = sum(float(w[b]) * sum((x_tilde[b, d] - aux_out[b, d]) ** 2 + (x_teacher[b, d] - aux_out[b, d]) ** 2
                                       for d in range(D)) for b in range(B)) / (B * D)
    assert abs(la.item() - direct.item()) < 1e-12
    grad_g, grad_x = torch.autograd.grad(la, [aux_out, x_tilde], allow_unused=True)
    assert grad_x is None
    torch.testing.assert_close(grad_g, (w[:, None] * 2 * (2 * aux_out - x_tilde - x_teacher) / (B * D)).detach())
    at_min = mm.auxiliary_loss(x_tilde, ((x_tilde + x_teacher) / 2).detach().requires_grad_(True), x_teacher, w)
    assert at_min.item() < la.item()
    # student loss: gradient only through x̃, equal to w (g − x̂_T) / (B D)
    ls = mm.student_loss(x_tilde, aux_out, x_teacher, w)
    grads = torch.autograd.grad(ls, [x_tilde, aux_out, x_teacher], allow_unused=True)
    torch.testing.assert_close(grads[0], (w[:, None] * (aux_out - x_teacher) / (B * D)).detach())
    assert grads[1] is None and grads[2] is None


def test_exact_teacher_matches_the_oracle():
    """testbeds.ExactDenoiser (per-sample a, s) against oracle.MixtureDenoiser (one integer timestep per group),
    on the digits mixture and on a mixture with unequal stds and weights."""
    for data in (dataset("digits"), GaussianMixture.random(5, 7, std=0.3, seed=2)):
        exact, oracle = ExactDenoiser(data), MixtureDenoiser(data, dtype=torch.float64)
        t = torch.tensor([0, 3, 100, 500, 900, 999] * 2)
        x = torch.randn(len(t), data.dim, generator=torch.Generator().manual_seed(4))
        a, s = oracle.coefficients(t)
        x0, eps = exact(x, a.float(), s.float())
        ref = [oracle.posterior(x[i:i + 1].double(), int(t[i])) for i in range(len(t))]
        torch.testing.assert_close(x0.double(), torch.cat([r[0] for r in ref]), atol=2e-4, rtol=1e-4)
        torch.testing.assert_close(eps.double(), torch.cat([r[1] for r in ref]), atol=2e-4, rtol=1e-4)


def test_tiny_one_step_run_end_to_end_and_resume(tmp_path):
    model = train_teacher(str(tmp_path / "model"), iterations=3, progress=False, width=32, depth=1, time_dim=16)
    kw = dict(steps=1, teacher="learned", model_path=model, eval_every=2, eval_samples=200,
              progress=False)
    straight = mm.distill_mm(str(tmp_path / "a"), iterations=6, **kw)
    for key in ("fd", "mode_tv", "nll", "teacher_ddim_fd", "teacher_ancestral_fd", "seconds", "iterations"):
        assert key in straight and math.isfinite(straight[key])
    assert straight["iterations"] == 6 and [r["iteration"] for r in straight["log"]] == [0, 2, 4, 6]
    assert os.path.getsize(tmp_path / "a" / "fd_vs_time.png") > 0
    assert json.load(open(tmp_path / "a" / "result.json"))["fd"] == straight["fd"]
    mm.distill_mm(str(tmp_path / "b"), iterations=3, **kw)
    resumed = mm.distill_mm(str(tmp_path / "b"), iterations=6, **kw)
    assert resumed["fd"] == straight["fd"]
    by_iteration = {r["iteration"]: r["fd"] for r in resumed["log"]}      # the resumed log also holds iteration 3
    assert all(by_iteration[r["iteration"]] == r["fd"] for r in straight["log"])
    with pytest.raises(ValueError, match="teacher"):
        mm.distill_mm(str(tmp_path / "c"), iterations=1, **{**kw, "teacher": "exact"})
    with pytest.raises(ValueError, match="steps"):
        mm.distill_mm(str(tmp_path / "c"), iterations=1, **{**kw, "steps": 0})


# ---------------------------------------------------------------------------------------------------
# the instant variant
# ---------------------------------------------------------------------------------------------------
class _SmallMixtureTeacher:
    """The parametric oracle on a small float64 mixture: what mm.Teacher(parametric=True) is for the digits."""

    def __init__(self, data, acp):
        e = ExactDenoiser(data)
        self.mean = e.mean.double()
        self.parameters = [e.means.double().requires_grad_(True), e.var.double().log().requires_grad_(True),
                           e.log_weights.double().requires_grad_(True)]
        self.a, self.s = acp.sqrt(), (1 - acp).sqrt()

    def x0_of_parameters(self, x, t, params=None):
        means, log_var, log_w = params or self.parameters
        return mixture_posterior(x, self.a[t], self.s[t], self.mean, means, log_var.exp(), log_w)[0]


def test_instant_gradient_is_the_double_backprop_of_the_teacher_gradient():
    """∂/∂x̃_b of L = g_A · (c ⊙ g_B) (b in minibatch A) is −2 w_b / (|A| D) · J_θ x̂_θ(z_b) (c ⊙ g_B): the teacher's
    output moved along the preconditioned direction of the other minibatch's gradient. Checked against a central
    difference of x̂_θ in θ (float64, small mixture), so the autograd plumbing (create_graph, the gradient through
    x̃ only) is tested against the formula, not against itself."""
    data = GaussianMixture.random(4, 5, std=0.4, seed=1)
    teacher = _SmallMixtureTeacher(data, _acp())
    g = torch.Generator().manual_seed(0)
    B = 6
    z = torch.randn(2 * B, data.dim, generator=g, dtype=torch.float64)
    s = torch.tensor([10, 200, 500, 700, 900, 999] * 2)
    w = mm.loss_weight(_acp(), s, 10.0).double()
    x_tilde = torch.randn(2 * B, data.dim, generator=g, dtype=torch.float64, requires_grad=True)
    ga = mm.teacher_gradient(teacher, x_tilde[:B], z[:B], s[:B], w[:B])
    gb = mm.teacher_gradient(teacher, x_tilde[B:], z[B:], s[B:], w[B:])
    scale = [torch.rand(p.shape, generator=g, dtype=torch.float64) + 0.5 for p in teacher.parameters]
    loss = mm.instant_loss(ga, gb, scale)
    (grad,) = torch.autograd.grad(loss, x_tilde)
    direction = [c * b.detach() for c, b in zip(scale, gb)]
    h = 1e-6
    with torch.no_grad():
        plus = teacher.x0_of_parameters(z[:B], s[:B], [p + h * d for p, d in zip(teacher.parameters, direction)])
        minus = teacher.x0_of_parameters(z[:B], s[:B], [p - h * d for p, d in zip(teacher.parameters, direction)])
    jvp = (plus - minus) / (2 * h)
    expected = -2 * w[:B, None] / (B * data.dim) * jvp
    torch.testing.assert_close(grad[:B], expected, rtol=1e-5, atol=1e-12)
    assert grad[:B].abs().max() > 1e-6                                   # not vacuous


def test_oracle_parameters_are_stationary_on_data_pairs():
    """The digits oracle is the teacher family's member at the true (μ, log c², log π): on pairs drawn from the data
    (x̃ = x, z_s its noised version) E ∇_θ ℓ = 0, so the unbiased estimate g_A · g_B averages to 0 within its
    standard error; on pairs whose x̃ is shifted (a "student" with a bias) it is far above. The parametric x̂₀ is the
    exact denoiser's."""
    teacher = mm.Teacher("oracle", _acp(), parametric=True)
    data = dataset("digits")
    g = torch.Generator().manual_seed(0)
    z_probe = torch.randn(8, data.dim, generator=g)
    t_probe = torch.tensor([0, 50, 300, 600, 999, 7, 123, 999])
    torch.testing.assert_close(teacher.x0_of_parameters(z_probe, t_probe).detach(), teacher.x0(z_probe, t_probe),
                               rtol=1e-4, atol=1e-5)
    estimates = {"data": [], "shifted": []}
    for _ in range(8):
        x = data.sample(256, generator=g).reshape(256, -1)
        s = torch.full((256,), 100)
        z_s = teacher.sqrt_ac[s, None] * x + teacher.sqrt_1m[s, None] * torch.randn(x.shape, generator=g)
        w = torch.ones(256)
        for name, x_tilde in (("data", x), ("shifted", x + 0.1)):
            ga = mm.teacher_gradient(teacher, x_tilde[:128], z_s[:128], s[:128], w[:128])
            gb = mm.teacher_gradient(teacher, x_tilde[128:], z_s[128:], s[128:], w[128:])
            estimates[name].append(float(mm.instant_loss(ga, gb, [torch.ones_like(p) for p in ga]).detach()))
    mean = {k: sum(v) / len(v) for k, v in estimates.items()}
    se = {k: (sum((e - mean[k]) ** 2 for e in v) / (len(v) - 1) / len(v)) ** 0.5 for k, v in estimates.items()}
    assert abs(mean["data"]) < 4 * se["data"], (mean, se)                  # measured 1e-10 ± 3e-10
    assert mean["shifted"] > 5 * se["shifted"] and mean["shifted"] > 10 * (abs(mean["data"]) + 4 * se["data"]), \
        (mean, se)


def test_diagonal_preconditioner():
    p = [torch.zeros(3), torch.zeros(2, 2)]
    pre = mm.DiagonalPreconditioner(p, beta=0.5, eps=0.0)
    with pytest.raises(ValueError, match="update"):
        pre.scale()
    a, b = [torch.tensor([1.0, 2.0, 0.5]), torch.ones(2, 2)], [torch.tensor([3.0, 0.0, 0.5]), torch.ones(2, 2)]
    pre.update(a, b)
    # one update: v = (1 − β)(a² + b²)/2, bias-corrected by 1 − β: (a² + b²)/2 exactly
    torch.testing.assert_close(pre.scale()[0], 1 / torch.tensor([5.0, 2.0, 0.25]).sqrt())
    pre.update(b, b)
    v = 0.5 * (0.5 * torch.tensor([5.0, 2.0, 0.25])) + 0.5 * torch.tensor([9.0, 0.0, 0.25])
    torch.testing.assert_close(pre.scale()[0], 1 / (v / 0.75).sqrt())
    again = mm.DiagonalPreconditioner(p, beta=0.5, eps=0.0)
    again.load_state_dict(pre.state_dict())
    assert all(torch.equal(x, y) for x, y in zip(again.scale(), pre.scale()))


@pytest.mark.parametrize("teacher", ["learned", "oracle"])
def test_tiny_instant_run_end_to_end_and_resume(tmp_path, teacher):
    model = train_teacher(str(tmp_path / "model"), iterations=3, progress=False, width=32, depth=1, time_dim=16)
    kw = dict(steps=2, teacher=teacher, variant="instant", model_path=model, eval_every=2, eval_samples=200,
              batch=16, progress=False)
    straight = mm.distill_mm(str(tmp_path / "a"), iterations=4, **kw)
    assert straight["config"]["variant"] == "instant" and straight["iterations"] == 4
    for key in ("fd", "mode_tv", "nll", "teacher_ddim_fd", "teacher_ancestral_fd"):
        assert math.isfinite(straight[key])
    ckpt = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=False)
    assert set(ckpt["objects"]) == {"student", "ema", "opt_student", "precond"} and ckpt["objects"]["precond"]["count"] == 4
    mm.distill_mm(str(tmp_path / "b"), iterations=2, **kw)
    resumed = mm.distill_mm(str(tmp_path / "b"), iterations=4, **kw)
    assert resumed["fd"] == straight["fd"]
    initial = load_network(model).state_dict()                           # the instant gradient reached the student
    assert any(not torch.equal(initial[k], v) for k, v in ckpt["objects"]["ema"].items())
    with pytest.raises(ValueError, match="variant"):
        mm.distill_mm(str(tmp_path / "c"), iterations=1, **{**kw, "variant": "both"})
    with pytest.raises(ValueError, match="batch"):
        mm.distill_mm(str(tmp_path / "c"), iterations=1, **{**kw, "batch": 15})
