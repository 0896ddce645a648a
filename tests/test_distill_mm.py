"""Moment-matching distillation: the student's sampler against a direct float64 implementation, the training
posterior draw, the time draw, the loss pieces, the exact teacher, and a tiny end-to-end run with resume."""
import json
import math
import os

import pytest
import torch

from gmm_triton.lab.distill import mm
from gmm_triton.lab.distill.teacher import train_teacher
from gmm_triton.lab.distill.testbeds import ExactDenoiser, dataset
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
