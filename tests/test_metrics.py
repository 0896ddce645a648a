"""Sample-quality metrics (gmm_triton.lab.metrics): ideal values on exact samples, clearly worse on perturbed ones.

Tolerances on exact samples come from the sample size n (each test says how); the perturbations are chosen so
that the perturbed value clears that tolerance by a wide margin.
"""
import math

import pytest
import torch

from gmm_triton.lab.metrics import (chi2_quantile, evaluate, frechet_distance, frechet_distance_from_moments,
                                gaussian_moments, mode_metrics, nll, sliced_wasserstein)
from gmm_triton.lab.oracle import GaussianMixture, digits_mixture

N = 20000
D = 16


@pytest.fixture(scope="module")
def data():
    return GaussianMixture.random(12, D, std=0.3, num_modes=4, seed=3, dtype=torch.float64)


@pytest.fixture(scope="module")
def exact(data):
    return data.sample(N, generator=torch.Generator().manual_seed(0), return_components=True)


def random_spd(d, seed, rank=None):
    a = torch.randn(d, rank or d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return a @ a.T / d + (0 if rank else 0.1 * torch.eye(d, dtype=torch.float64))


def test_chi2_quantile_matches_scipy():
    stats = pytest.importorskip("scipy.stats")
    for q, df in [(0.99, 1), (0.99, 16), (0.5, 64), (0.999, 256)]:
        assert chi2_quantile(q, df) == pytest.approx(stats.chi2.ppf(q, df), rel=1e-9)   # torch's gammainc: ~1e-10


def test_frechet_from_moments():
    g = torch.Generator().manual_seed(1)
    m1, m2 = torch.randn(8, generator=g, dtype=torch.float64), torch.randn(8, generator=g, dtype=torch.float64)
    s1, s2 = random_spd(8, 2), random_spd(8, 3)
    assert frechet_distance_from_moments(m1, s1, m1, s1) == pytest.approx(0, abs=1e-10)
    assert frechet_distance_from_moments(m1, s1, m2, s2) == pytest.approx(
        frechet_distance_from_moments(m2, s2, m1, s1), rel=1e-10)
    # commuting (diagonal) covariances: ‖m1 − m2‖² + Σ (√a − √b)²
    a, b = torch.rand(8, generator=g, dtype=torch.float64), torch.rand(8, generator=g, dtype=torch.float64)
    expected = ((m1 - m2) ** 2).sum() + ((a.sqrt() - b.sqrt()) ** 2).sum()
    fd = frechet_distance_from_moments(m1, torch.diag(a), m2, torch.diag(b))
    assert fd == pytest.approx(float(expected), rel=1e-10)
    # against scipy's general matrix square root
    linalg = pytest.importorskip("scipy.linalg")
    cross = linalg.sqrtm((s1 @ s2).numpy()).real.trace()
    expected = float(((m1 - m2) ** 2).sum() + s1.trace() + s2.trace()) - 2 * cross
    assert frechet_distance_from_moments(m1, s1, m2, s2) == pytest.approx(expected, rel=1e-8)
    # rank-deficient covariances (tiny negative eigenvalues) stay finite, non-negative and ≈ 0 against themselves
    low = random_spd(8, 4, rank=3)
    assert frechet_distance_from_moments(m1, low, m1, low) == pytest.approx(0, abs=1e-7)
    assert math.isfinite(frechet_distance_from_moments(m1, low, m2, s2))


def test_frechet_distance_on_samples(data, exact):
    x, _ = exact
    mean, cov = data.mean(), data.covariance()
    m_hat, c_hat = gaussian_moments(x)
    assert torch.allclose(m_hat, x.mean(0), rtol=0, atol=1e-14)
    assert torch.allclose(c_hat, torch.cov(x.T), rtol=1e-12, atol=1e-12)
    # Expected value for n exact samples: E‖m̂ − m‖² = tr Σ / n, and the covariance term (Bures metric, Gaussian
    # fourth moments) ≈ (1/2n) Σ_ij λ_i λ_j (1 + δ_ij) / (λ_i + λ_j) ≤ tr Σ (D + 1) / (4n); so E[fd] ≲ tr Σ (D + 5)/(4n).
    # Allow 3× that for fluctuations and non-Gaussian fourth moments (observed: 0.7× the bound).
    tol = 3 * float(cov.trace()) * (D + 5) / (4 * N)
    fd = frechet_distance(x, mean, cov)
    assert fd <= tol
    shift = torch.full((D,), 0.5, dtype=torch.float64)
    assert frechet_distance(x + shift, mean, cov) >= 0.9 * float(shift @ shift) > 100 * tol    # ‖δ‖² = 4
    noisy = x + 0.3 * torch.randn(x.shape, generator=torch.Generator().manual_seed(1), dtype=x.dtype)
    assert frechet_distance(noisy, mean, cov) > 5 * tol


def test_mode_metrics(data, exact):
    x, comp = exact
    M = data.num_modes
    # tv: E|f_m − p_m| ≤ √(p_m(1 − p_m)/n), so E[tv] ≤ ½ √(M/n) (Cauchy–Schwarz); one sample moves tv by at most 1/n,
    # so (bounded differences) deviations above the mean beyond 3/√n have probability < e^{-18}.
    tv_tol = 0.5 * math.sqrt(M / N) + 3 / math.sqrt(N)
    # precision: Binomial(n, 0.99)/n has standard error √(0.99·0.01/n) ≈ 7e-4; allow 4 of them.
    prec_tol = 4 * math.sqrt(0.99 * 0.01 / N)
    exact_metrics = mode_metrics(x, data)
    assert exact_metrics["coverage"] == 1.0
    assert exact_metrics["tv"] <= tv_tol
    assert abs(exact_metrics["precision"] - 0.99) <= prec_tol
    # well-separated components: the assignment recovers the true component
    assert (data.assign(x) == comp).double().mean() > 0.999

    noisy = x + 0.3 * torch.randn(x.shape, generator=torch.Generator().manual_seed(2), dtype=x.dtype)
    assert mode_metrics(noisy, data)["precision"] < 0.99 - 100 * prec_tol          # ≈ 0.66
    dropped_mode = data.labels[comp] != 0
    dropped = mode_metrics(x[dropped_mode], data)
    p0 = float(data.mode_weights()[0])                                              # tv → p0 ≈ 0.25
    assert dropped["coverage"] == 1 - 1 / M
    assert dropped["tv"] >= p0 - tv_tol and dropped["tv"] > 5 * tv_tol


def test_mode_metrics_digits():
    data = digits_mixture(size=8, std=0.1)
    n = 4000
    x = data.sample(n, generator=torch.Generator().manual_seed(3))
    metrics = mode_metrics(x, data)
    tv_tol = 0.5 * math.sqrt(10 / n) + 3 / math.sqrt(n)                           # as in test_mode_metrics
    assert metrics["coverage"] == 1.0 and metrics["tv"] <= tv_tol
    assert abs(metrics["precision"] - 0.99) <= 4 * math.sqrt(0.99 * 0.01 / n)
    # blurring towards the mean image leaves the modes hit but the samples off every component
    blurred = 0.7 * x + 0.3 * data.mean().float().reshape(1, 1, 8, 8)
    assert mode_metrics(blurred, data)["precision"] < 0.5


def test_sliced_wasserstein_exact_cases():
    g = torch.Generator().manual_seed(4)
    x = torch.randn(300, 5, generator=g, dtype=torch.float64)
    assert sliced_wasserstein(x, x, g) == 0.0
    assert sliced_wasserstein(x, x.repeat(3, 1), g) == pytest.approx(0, abs=1e-12)   # unequal counts, same law
    # one dimension: a shift by c moves every quantile by c
    y = torch.randn(300, 1, generator=g, dtype=torch.float64)
    assert sliced_wasserstein(y, y + 0.7, g) == pytest.approx(0.7, rel=1e-12)
    # unequal counts n = 6, m = 4 against the equal-weight expansion (each x repeated 4×, each y 6×)
    a, b = torch.randn(6, 1, generator=g, dtype=torch.float64), torch.randn(4, 1, generator=g, dtype=torch.float64)
    expected = ((a.repeat(4, 1).sort(0).values - b.repeat(6, 1).sort(0).values) ** 2).mean().sqrt()
    assert sliced_wasserstein(a, b, g) == pytest.approx(float(expected), rel=1e-12)
    with pytest.raises(TypeError, match="generator"):
        sliced_wasserstein(a, b, None)


def test_evaluate_uses_the_same_projections_for_every_row(data, exact):
    """Two evaluations of the same samples give the same sw2, whatever the global RNG did in between (the ORTHO and
    ORTHO-VUB rows at η = 0 are the same samples and must score the same); another projection seed moves it."""
    x, _ = exact
    reference = data.sample(N, generator=torch.Generator().manual_seed(5))
    first = evaluate(x, data, reference=reference)["sw2"]
    torch.randn(1000)
    assert evaluate(x, data, reference=reference)["sw2"] == first
    assert evaluate(x, data, reference=reference, projection_seed=1)["sw2"] != first


def test_sliced_wasserstein_on_samples(data, exact):
    x, _ = exact
    reference = data.sample(N, generator=torch.Generator().manual_seed(5))
    # For two independent n-samples of these smooth 1-D projections, W2² decays like Var · O(log n)/n; allow
    # 10 · Var · log(n)/n with Var = tr Σ / D the mean projected variance (≈ 10× the observed W2²).
    tol = math.sqrt(10 * float(data.covariance().trace()) / D * math.log(N) / N)
    gen = torch.Generator().manual_seed(6)
    assert sliced_wasserstein(x, reference, gen) <= tol
    assert sliced_wasserstein(x[: N // 2], reference, gen) <= tol               # unequal counts
    # a shift δ adds E_θ (θ·δ)² = ‖δ‖²/D to every projected W2²: sw2 ≈ 0.5
    assert sliced_wasserstein(x + 0.5, reference, gen) > 0.45 > 5 * tol


def test_nll(data, exact):
    x, _ = exact
    # For well-separated components h(p0) = H(π) + Σ_k π_k ½ Σ_d log(2πe c_kd²) − H(K | X) with H(K | X) ≈ 0
    # (checked below); the Monte-Carlo mean of −log p0 has standard error std/√n: allow 5 of them.
    pi, var = data.weights, data.variances.expand(-1, D)
    entropy = -(pi * pi.log()).sum() + (pi * 0.5 * torch.log(2 * math.pi * math.e * var).sum(1)).sum()
    log_post = data.component_log_posterior(x)
    assert -(log_post.exp() * log_post).nansum(1).mean() < 1e-3                       # H(K | X)
    se = float(data.log_prob(x).std()) / math.sqrt(N) / D
    value = nll(x, data)
    assert abs(value - float(entropy) / D) <= 5 * se + 1e-3 / D
    noisy = x + 0.3 * torch.randn(x.shape, generator=torch.Generator().manual_seed(7), dtype=x.dtype)
    assert nll(noisy, data) > value + 100 * se                                        # ≈ +0.45 nats/dim


def test_evaluate(data, exact):
    x, comp = exact
    g = torch.Generator().manual_seed(8)
    good = evaluate(x, data, generator=g)
    assert set(good) == {"fd", "coverage", "tv", "precision", "sw2", "nll"}
    assert all(isinstance(v, float) and math.isfinite(v) for v in good.values())
    # noisier samples with one mode missing are worse on every metric
    keep = data.labels[comp] != 0
    bad = evaluate(x[keep] + 0.2 * torch.randn(x[keep].shape, generator=g, dtype=x.dtype), data, generator=g)
    # observed: fd 0.003 → 2.1, sw2 0.018 → 0.25, tv 0.007 → 0.25, coverage 1 → 0.75, precision 0.99 → 0.86,
    # nll 0.48 → 0.67 (stronger noise would land samples on the dropped mode's components and restore coverage)
    assert bad["fd"] > 100 * good["fd"] and bad["sw2"] > 5 * good["sw2"] and bad["tv"] > 10 * good["tv"]
    assert bad["coverage"] == 0.75 and bad["precision"] < good["precision"] - 0.08
    assert bad["nll"] > good["nll"] + 0.1
