"""Sample-quality metrics against a known Gaussian mixture (``oracle.GaussianMixture``); no downloaded weights.

All metrics flatten samples [n, *shape] to [n, D], work in float64 on the samples' (or the mixture's) device, and
return Python floats, one table row per call of :func:`evaluate`:

    fd         Fréchet distance between the samples' Gaussian fit and the exact data moments (m, Σ)     (0 ideal)
    coverage   fraction of modes (labels) that receive at least one sample                              (1 ideal)
    tv         total variation between the empirical mode frequencies and the true mode weights         (0 ideal)
    precision  fraction of samples within the 99% chi-square ball of their assigned component         (0.99 ideal)
    sw2        sliced Wasserstein-2 distance to a reference sample (fresh exact samples by default)     (0 ideal)
    nll        average negative log-likelihood per dimension under p0, in nats. Its ideal is the entropy
               h(p0)/D, not 0, and samples collapsed onto the means score *below* it: read it with coverage.

Finite-sample floors: with n exact samples fd ≈ tr(Σ)/n + O(D tr(Σ)/n), tv ≈ ½ √(M/n) at most (M modes),
precision 0.99 ± √(0.99·0.01/n), and sw2² = O(Var·log n / n) per projection, so compare rows at equal n.
"""
from __future__ import annotations

import math

import torch


def _flat64(samples, device=None):
    return samples.reshape(samples.shape[0], -1).to(device or samples.device, torch.float64)


def gaussian_moments(samples):
    """Sample mean [D] and unbiased sample covariance [D, D] (float64)."""
    x = _flat64(samples)
    mean = x.mean(0)
    centred = x - mean
    return mean, centred.T @ centred / (x.shape[0] - 1)


def _psd_sqrt(S):
    """Symmetric square root of a (numerically) PSD matrix; tiny negative eigenvalues are clipped to 0."""
    lam, U = torch.linalg.eigh(0.5 * (S + S.T))
    return (U * lam.clamp_min(0).sqrt()) @ U.T


def frechet_distance_from_moments(mean1, cov1, mean2, cov2):
    """‖m1 − m2‖² + tr(S1 + S2 − 2 (S1^½ S2 S1^½)^½), via symmetric eigendecompositions (float64)."""
    mean1, cov1 = mean1.double(), cov1.double()
    mean2, cov2 = mean2.to(mean1.device, torch.float64), cov2.to(cov1.device, torch.float64)
    r1 = _psd_sqrt(cov1)
    cross = r1 @ cov2 @ r1
    tr_sqrt = torch.linalg.eigvalsh(0.5 * (cross + cross.T)).clamp_min(0).sqrt().sum()
    fd = ((mean1 - mean2) ** 2).sum() + cov1.trace() + cov2.trace() - 2 * tr_sqrt
    return max(float(fd), 0.0)


def frechet_distance(samples, mean, cov):
    """Fréchet distance between the Gaussian fit of ``samples`` (mean, unbiased covariance) and (mean, cov)."""
    return frechet_distance_from_moments(*gaussian_moments(samples), mean, cov)


def chi2_quantile(q, df):
    """The q-quantile of the chi-square distribution with ``df`` degrees of freedom (bisection on the regularised
    incomplete gamma function; accurate to ~1e-10 relative, the accuracy of torch.special.gammainc)."""
    if not 0 < q < 1:
        raise ValueError(f"q must lie in (0, 1), got {q}")
    half_df = torch.tensor(df / 2, dtype=torch.float64)
    lo, hi = 0.0, df + 20 * math.sqrt(2 * df) + 100            # P(χ² > hi) is far below 1e-12
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        if float(torch.special.gammainc(half_df, torch.tensor(mid / 2, dtype=torch.float64))) < q:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def mode_metrics(samples, data, quantile=0.99):
    """Mode coverage, mode-weight TV and a precision proxy.

    Each sample is assigned to its most likely component under p0 (argmax of the t = 0 posterior) and thereby to
    that component's mode (label). coverage: fraction of modes hit; tv: ½ Σ_m |freq_m − Σ_{k in m} π_k|;
    precision: fraction of samples whose Mahalanobis distance² to the assigned component, Σ_d (x_d − μ_kd)²/c_kd²,
    is at most the ``quantile`` chi-square quantile with D degrees of freedom. Exact data samples thus score
    ≈ ``quantile`` (0.99), not 1 (slightly more where components overlap, since the assigned component is the
    closest in likelihood); samples off the data manifold (noisy, blurred, between modes) score lower.
    """
    x = _flat64(samples, data.means.device)
    comp = data.assign(x)
    freq = torch.bincount(data.labels[comp], minlength=data.num_modes).double() / x.shape[0]
    maha = ((x - data.means.double()[comp]) ** 2 / data.variances.double()[comp]).sum(1)
    return {
        "coverage": float((freq > 0).double().mean()),
        "tv": float(0.5 * (freq - data.mode_weights()).abs().sum()),
        "precision": float((maha <= chi2_quantile(quantile, x.shape[1])).double().mean()),
    }


def sliced_wasserstein(samples, reference, generator: torch.Generator, n_projections=128):
    """Sliced Wasserstein-2 distance (E_θ W2²(θᵀX, θᵀY))^½ over ``n_projections`` random unit directions θ.

    Each 1-D W2² is exact between the two empirical distributions, also for unequal sample counts n ≠ m: both
    quantile functions are step functions, constant between the merged breakpoints {i/n} ∪ {j/m}, so the
    integral ∫₀¹ (F⁻¹(u) − G⁻¹(u))² du is a finite weighted sum. The directions come from ``generator`` (required,
    on the samples' device): rows compared in one table must share their projections, which the global RNG would
    not give them.
    """
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator (the projections' source), got {type(generator).__name__}")
    x = _flat64(samples)
    y = _flat64(reference, x.device)
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"samples have D = {x.shape[1]}, reference has D = {y.shape[1]}")
    theta = torch.randn(x.shape[1], n_projections, generator=generator, device=x.device, dtype=torch.float64)
    theta = theta / theta.norm(dim=0)
    px, py = (x @ theta).sort(0).values, (y @ theta).sort(0).values       # [n, P], [m, P]
    n, m = px.shape[0], py.shape[0]
    ramp = lambda k: torch.arange(1, k + 1, device=x.device, dtype=torch.float64) / k  # noqa: E731
    levels = torch.cat([ramp(n), ramp(m)]).sort().values
    widths = torch.diff(levels, prepend=levels.new_zeros(1))
    mid = levels - 0.5 * widths                                           # inside each interval of positive width
    i = (mid * n).long().clamp_max(n - 1)
    j = (mid * m).long().clamp_max(m - 1)
    w2 = (widths[:, None] * (px[i] - py[j]) ** 2).sum(0)                 # [P]
    return float(w2.mean().sqrt())


def nll(samples, data):
    """Average negative log-likelihood per dimension under p0, in nats (exact mixture density)."""
    x = _flat64(samples, data.means.device)
    return float(-data.log_prob(x).mean() / x.shape[1])


def evaluate(samples, data, reference=None, generator=None, n_projections=128, projection_seed=0):
    """All metrics as one table row: fd, coverage, tv, precision, sw2, nll.

    reference: samples for sw2; by default ``len(samples)`` fresh exact samples from ``data`` drawn with
    ``generator`` (which then must live on the mixture's device). sw2's directions are drawn from
    ``projection_seed`` on the samples' device, so every row evaluated with one seed uses the same projections
    (identical samples give identical sw2).
    """
    if reference is None:
        reference = data.sample(samples.shape[0], generator=generator)
    dev = _flat64(samples).device
    projections = torch.Generator(dev).manual_seed(projection_seed)
    return {
        "fd": frechet_distance(samples, data.mean(), data.covariance()),
        **mode_metrics(samples, data),
        "sw2": sliced_wasserstein(samples, reference, projections, n_projections),
        "nll": nll(samples, data),
    }
