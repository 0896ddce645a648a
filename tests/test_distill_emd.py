"""EM distillation: the E-step's stationary distribution on a linear-Gaussian problem (known in closed form),
noise cancellation and the VSD reduction, the exact teacher score, the mode metrics, a tiny run with resume."""
import math
import os

import pytest
import torch

from gmm_triton.lab.distill import emd
from gmm_triton.lab.distill.testbeds import ExactDenoiser, dataset, mode_report, two_d_four


def _linear_gaussian(a, s):
    """Teacher data N(m, C), generator g(z) = A z + b (z ~ N(0, I)); returns the generator, Δ = s^T − s_θ of the
    noisy marginals and the exact mean and covariance of π(ε, z) ∝ N(ε) N(z) p^T(x)/p^θ(x), x = a g(z) + s ε.

    π is the law of (ε, z) when x ~ p^T = N(a m, S_T) and z | x is the linear-Gaussian posterior
    N(K (x − a b), Σ_z), Σ_z = (I + a² AᵀA/s²)⁻¹, K = Σ_z a Aᵀ/s²; then ε = (x − a A z − a b)/s, a linear map of
    (x, ξ) with ξ ~ N(0, Σ_z) independent of x."""
    d = 2
    m = torch.tensor([1.0, -0.5], dtype=torch.float64)
    C = torch.tensor([[1.5, 0.4], [0.4, 0.6]], dtype=torch.float64)
    A = torch.tensor([[0.5, 0.0], [0.3, 0.8]], dtype=torch.float64)
    b = torch.tensor([-0.3, 0.2], dtype=torch.float64)
    I = torch.eye(d, dtype=torch.float64)
    S_T = a * a * C + s * s * I
    S_G = a * a * A @ A.T + s * s * I
    P_T, P_G = torch.linalg.inv(S_T), torch.linalg.inv(S_G)

    def delta(x):
        return -(x.double() - a * m) @ P_T + (x.double() - a * b) @ P_G

    Sz = torch.linalg.inv(I + a * a * A.T @ A / (s * s))
    K = Sz @ (a * A.T) / (s * s)
    # (ε, z) = M [x − a b; ξ]:  z = K (x − a b) + ξ,  ε = ((x − a b) − a A z)/s
    Mz = torch.cat([K, I], dim=1)
    Me = (torch.cat([I, torch.zeros(d, d, dtype=torch.float64)], dim=1) - a * A @ Mz) / s
    M = torch.cat([Me, Mz], dim=0)
    mean_in = torch.cat([a * m - a * b, torch.zeros(d, dtype=torch.float64)])
    cov_in = torch.block_diag(S_T, Sz)
    generator = torch.nn.Linear(d, d).double()
    with torch.no_grad():
        generator.weight.copy_(A)
        generator.bias.copy_(b)
    return generator, delta, M @ mean_in, M @ cov_in @ M.T


def test_e_step_samples_the_joint_on_a_gaussian():
    """K Langevin steps from the generator's own (ε, z) ~ N(0, I) reach the stationary law π(ε, z): mean and
    covariance against the closed form, tolerance 5 standard errors (n chains) plus 1 % (mean) and 2 % (covariance)
    of the scale for the O(γ) bias of the unadjusted Langevin step (≈ γ λ_max / 4 = 0.5 %, λ_max ≈ 1.1 the
    largest precision of π) and what is left of the start after 1000 steps (e^(−γ λ_min · 1000 / 2) ≈ 0.2 %)."""
    a, s = 0.6, 0.8                              # s²/a² > 1: γ_z is not preconditioned down
    generator, delta, mean, cov = _linear_gaussian(a, s)
    n, gamma = 8000, 0.02
    rng = torch.Generator().manual_seed(0)
    eps = torch.randn(n, 2, generator=rng, dtype=torch.float64)
    z = torch.randn(n, 2, generator=rng, dtype=torch.float64)
    aa, ss = torch.full((n, 1), a, dtype=torch.float64), torch.full((n, 1), s, dtype=torch.float64)
    eps_k, z_k, _ = emd.e_step(eps, z, aa, ss, generator, delta, steps=1000, gamma_eps=gamma, gamma_z=gamma, rng=rng)
    y = torch.cat([eps_k, z_k], dim=1)
    emp_mean, emp_cov = y.mean(0), torch.cov(y.T)
    sd = cov.diagonal().sqrt()
    assert bool(((emp_mean - mean).abs() <= 5 * sd / math.sqrt(n) + 0.01 * sd).all()), (emp_mean, mean)
    tol = 5 * torch.sqrt((cov**2 + torch.outer(cov.diagonal(), cov.diagonal())) / n) + 0.02 * torch.outer(sd, sd)
    assert bool(((emp_cov - cov).abs() <= tol).all()), (emp_cov, cov)
    # and π is far from where the chains started, N(0, I): the test can tell them apart
    assert float(mean.abs().max()) > 0.8 and float((cov - torch.eye(4, dtype=cov.dtype)).abs().max()) > 0.3


def test_noise_cancellation_and_the_vsd_reduction():
    """ε_K = c_K + d_K with c the injected noise alone; with K = 1 and γ_z = 0, d_1 = (γ/2) s Δ(x_0)."""
    a, s = 0.6, 0.8
    generator, delta, _, _ = _linear_gaussian(a, s)
    n, gamma = 7, 0.3
    g0 = torch.Generator().manual_seed(1)
    eps, z = torch.randn(n, 2, generator=g0, dtype=torch.float64), torch.randn(n, 2, generator=g0, dtype=torch.float64)
    aa, ss = torch.full((n, 1), a, dtype=torch.float64), torch.full((n, 1), s, dtype=torch.float64)
    eps_k, z_k, drift = emd.e_step(eps, z, aa, ss, generator, delta, steps=5, gamma_eps=gamma, gamma_z=0.0,
                                   rng=torch.Generator().manual_seed(2))
    assert torch.equal(z_k, z)
    replay = torch.Generator().manual_seed(2)
    c = eps.clone()
    for _ in range(5):
        c = (1 - gamma / 2) * c + math.sqrt(gamma) * torch.randn(n, 2, generator=replay, dtype=torch.float64)
    torch.testing.assert_close(eps_k - drift, c, rtol=1e-12, atol=1e-12)
    _, _, d1 = emd.e_step(eps, z, aa, ss, generator, delta, steps=1, gamma_eps=gamma, gamma_z=0.0,
                          rng=torch.Generator().manual_seed(3))
    with torch.no_grad():
        x0 = a * generator(z) + s * eps
    torch.testing.assert_close(d1, 0.5 * gamma * s * delta(x0))


def test_exact_teacher_score_is_the_gradient_of_the_log_density():
    """ε̂ = −s ∇ log p_t(x) for the 2-D testbed, with ∇ log p_t by autograd of GaussianMixture.log_prob (float64)."""
    data = two_d_four()
    exact = ExactDenoiser(data)
    x = torch.randn(16, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 2
    for a, s in ((0.99, 0.14), (0.6, 0.8), (0.05, 0.9987)):
        xr = x.clone().requires_grad_(True)
        (score,) = torch.autograd.grad(data.log_prob(xr, a, s).sum(), xr)
        _, eps = exact(x.float(), torch.full((16,), a), torch.full((16,), s))
        torch.testing.assert_close(eps.double(), -s * score, atol=5e-5, rtol=1e-4)


def test_mode_report_on_exact_and_collapsed_samples():
    data = dataset("8d8")
    n = 20_000
    x = data.sample(n, generator=torch.Generator().manual_seed(0))
    rep = mode_report(x, data)
    assert rep["modes_covered"] == 8
    # TV of exact samples: E ≤ ½ Σ √(π(1 − π)/n) ≈ 0.009 at n = 20000
    floor = 0.5 * float((data.weights * (1 - data.weights) / n).sqrt().sum())
    assert rep["mode_tv"] < 3 * floor
    assert abs(rep["precision"] - 0.99) < 5 * math.sqrt(0.99 * 0.01 / n)
    assert all(r > 0.9 for r in rep["recall"])
    # all samples from the two heaviest modes: 2 covered, TV = 1 − π_0 − π_1 exactly in expectation
    comp = torch.multinomial(torch.tensor([2.0, 1.0]), n, replacement=True, generator=torch.Generator().manual_seed(1))
    y = data.means[comp] + 0.3 * torch.randn(n, 8, generator=torch.Generator().manual_seed(2))
    rep = mode_report(y, data)
    assert rep["modes_covered"] == 2 and rep["recall"][2:] == [0.0] * 6
    assert abs(rep["mode_tv"] - 0.4) < 5 * math.sqrt(2 / 9 / n)


@pytest.mark.parametrize("method", ["emd", "vsd"])
def test_tiny_run_end_to_end_and_resume(tmp_path, method):
    kw = dict(dataset_name="2d4", method=method, eval_every=2, eval_samples=500, init_iterations=5, batch=32,
              progress=False)
    straight = emd.distill_emd(str(tmp_path / "a"), iterations=4, **kw)
    for key in ("mode_tv", "modes_covered", "seconds", "iterations", "recall"):
        assert key in straight
    assert straight["config"]["langevin_steps"] == (8 if method == "emd" else 1)
    assert os.path.getsize(tmp_path / "a" / "modes.png") > 0
    emd.distill_emd(str(tmp_path / "b"), iterations=2, **kw)
    resumed = emd.distill_emd(str(tmp_path / "b"), iterations=4, **kw)
    assert resumed["mode_tv"] == straight["mode_tv"] and resumed["fd"] == straight["fd"]
    with pytest.raises(ValueError, match="dataset"):
        emd.distill_emd(str(tmp_path / "c"), dataset_name="3d3", iterations=1)
    with pytest.raises(ValueError, match="method"):
        emd.distill_emd(str(tmp_path / "c"), method="dmd", iterations=1)
