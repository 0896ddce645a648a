"""DDIM-GMM: construction, geometry, exact moments by Monte Carlo, component law, backend agreement, errors."""
import math

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler
from scipy import stats

from gmm_triton import GMMDDIMScheduler, build_mixture, ddim_table, ops, reference
from gmm_triton.mixture import VARIANCES

D = 64


@pytest.fixture(scope="module")
def sched_table():
    s = DDIMScheduler(clip_sample=False)
    s.set_timesteps(10)
    return s, ddim_table(s.alphas_cumprod, float(s.final_alpha_cumprod), 1000, s.timesteps)


def _sigma2(table, row, eta):
    return eta**2 * float(table[row, 4])


# ---------------------------------------------------------------------------------------------------
# construction
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("offsets", ["ortho", "rand"])
@pytest.mark.parametrize("priors", ["uniform", "random"])
def test_offsets_are_centred(offsets, priors):
    """Σ_k π_k δ_k = 0 (Eq. 8): exactly for ORTHO; to first order in 1/√D for RAND, which normalises after centring
    (Eq. 9: c_k = O_k − Σ_l π_l O_l, δ_k = s c_k / ‖c_k‖). A coordinate of c_k has variance v_k = 1 − 2π_k + Σπ², so
    ‖c_k‖ = √(D v_k) (1 + ε_k) with ε_k ≈ N(0, 1/(2D)), and as Σ_k π_k c_k = 0,
        Σ_k π_k √v_k δ_k = (s/√D) Σ_k π_k c_k / (1 + ε_k) ≈ −(s/√D) Σ_k π_k c_k ε_k,
    a χ-like vector norm with mean square u² = s² Σ_k π_k² v_k / (2D) over at most K − 1 directions: below 4u with
    probability > 1 − 1e-4 (2000 independent draws of Eq. 9, D = 64: largest 2.4u). Offsets normalised without the
    centring leave s ‖Σ_k π_k √v_k O_k / ‖O_k‖‖ ≈ s √(Σ_k π_k² v_k) = √(2D) u ≈ 11u (those draws: smallest 8.2u)."""
    K, s = 8, 2.0
    mix = build_mixture(D, 5, components=K, scale=s, offsets=offsets, priors=priors, seed=3)
    pi, delta = mix.priors, mix.delta.double()
    if offsets == "ortho":
        assert torch.einsum("k,skd->sd", pi, delta).norm(dim=1).max() < 1e-5
        return
    w = pi * (1 - 2 * pi + (pi**2).sum()).sqrt()
    u = s * math.sqrt(float((w**2).sum()) / (2 * D))
    assert torch.einsum("k,skd->sd", w, delta).norm(dim=1).max() < 4 * u
    assert torch.allclose(mix.delta.norm(dim=2), torch.full((5, K), s), atol=1e-5)


def test_ortho_offsets_form_a_regular_simplex():
    K, s = 8, 3.0
    mix = build_mixture(D, 4, components=K, scale=s, offsets="ortho", seed=1)
    for S in range(4):
        G = mix.delta[S].double() @ mix.delta[S].double().T
        assert torch.allclose(G.diagonal(), torch.full((K,), s * s * (1 - 1 / K), dtype=torch.float64), rtol=1e-5)
        off = G[~torch.eye(K, dtype=torch.bool)]
        assert torch.allclose(off, torch.full_like(off, -s * s / K), atol=1e-5 * s * s)


def test_deterministic_in_seed_and_shared_variant():
    a = build_mixture(D, 6, seed=11)
    b = build_mixture(D, 6, seed=11)
    c = build_mixture(D, 6, seed=12)
    assert torch.equal(a.delta, b.delta) and not torch.equal(a.delta, c.delta)
    shared = build_mixture(D, 6, seed=11, shared=True)
    assert shared.delta.shape == (1, 8, D) and a.delta.shape == (6, 8, D)


def test_random_priors_law_and_table_memory():
    mix = build_mixture(D, 10, components=5, priors="random", seed=4)
    assert (mix.priors > 0).all() and abs(float(mix.priors.sum()) - 1) < 1e-12
    assert mix.cdf.numel() == 8 and (mix.cdf[4:] == 1).all()
    expected = 10 * 5 * D * 4 + 8 * 4 + 8 * 4 + 5 * 5 * 4  # offsets, cdf, weights, vub bounds (fp32)
    assert mix.nbytes == expected and "MiB" in repr(mix)
    bf = build_mixture(D, 10, components=5, dtype=torch.bfloat16)
    assert bf.delta.dtype == torch.bfloat16 and bf.nbytes < mix.nbytes


def test_exact_basis_diagonalises_the_offset_covariance():
    mix = build_mixture(D, 3, components=6, scale=2.0, variance="exact", priors="random", seed=2)
    pi = mix.priors
    for S in range(3):
        C = torch.einsum("k,kd,ke->de", pi, mix.delta[S].double(), mix.delta[S].double())
        Q, lam = mix.basis[S].double(), mix.eigvals[S].double()
        assert torch.allclose(Q @ Q.T, torch.diag((lam > 0).double()), atol=1e-5)  # orthonormal where used
        assert torch.allclose(Q.T @ torch.diag(lam) @ Q, C, atol=1e-5)


# ---------------------------------------------------------------------------------------------------
# the kernel: reduction to DDIM, agreement across backends
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("variance", VARIANCES)
@pytest.mark.parametrize("backend", ["cpp", "triton"])
def test_one_component_or_zero_scale_is_ddim(sched_table, variance, backend):
    _, table = sched_table
    x, m = torch.randn(3, D), torch.randn(3, D)
    with ops.use_cpu_backend(backend):
        ddim, _ = ops.ddim_step(x, m, 500, table, eta=1.0, seed=21)
        for k, s in ((1, 2.0), (8, 0.0)):
            mix = build_mixture(D, 10, components=k, scale=s, variance=variance)
            out, _ = ops.ddim_step(x, m, 500, table, eta=1.0, seed=21, mixture=mix)
            assert torch.equal(out, ddim), (k, s)


@pytest.mark.parametrize("variance", VARIANCES)
@pytest.mark.parametrize("shared", [False, True])
def test_backends_and_reference_agree(sched_table, variance, shared):
    _, table = sched_table
    mix = build_mixture(D, 10, components=5, scale=0.2, variance=variance, shared=shared, priors="random", seed=8)
    x, m = torch.randn(4, 4, 4, 4), torch.randn(4, 4, 4, 4)
    rows = torch.tensor([900, 500, 100, 0])
    ref, _ = reference.fused_step(x, m, rows, table, eta=0.9, seed=33, mixture=mix)
    for backend in ("cpp", "triton"):
        with ops.use_cpu_backend(backend):
            out, _ = ops.ddim_step(x, m, rows, table, eta=0.9, seed=33, mixture=mix)
        assert (out.double() - ref).abs().max() < 5e-6, backend


def test_eta_zero_still_draws_a_component(sched_table):
    _, table = sched_table
    mix = build_mixture(D, 10, components=8, scale=1.0, variance="diag")
    x, m = torch.randn(6, D), torch.randn(6, D)
    ddim, _ = ops.ddim_step(x, m, 500, table)
    out, _ = ops.ddim_step(x, m, 500, table, seed=5, mixture=mix)
    k = reference.choose_components(5, 6, mix.cdf.numpy())
    step = int(table[500, 6])
    assert torch.allclose(out - ddim, mix.delta[step, k], atol=1e-6)


def test_final_step_offset_option(sched_table):
    _, table = sched_table
    mix = build_mixture(D, 10, components=8, scale=1.0, variance="diag")
    x, m = torch.randn(2, D), torch.randn(2, D)
    final_row = 0  # prev_t < 0: lands on ᾱ_prev = final_alpha_cumprod
    assert table[final_row, 5] == 1
    ddim, _ = ops.ddim_step(x, m, final_row, table)
    off, _ = ops.ddim_step(x, m, final_row, table, seed=1, mixture=mix)
    on, _ = ops.ddim_step(x, m, final_row, table, seed=1, mixture=mix, offset_final=True)
    assert torch.equal(off, ddim) and not torch.allclose(on, ddim)


# ---------------------------------------------------------------------------------------------------
# the law: Monte Carlo over many draws of one step (C++ twin: fast)
# ---------------------------------------------------------------------------------------------------
N_MC = 40_000


def _draws(table, mix, eta, row=500, seed=7):
    x = torch.randn(1, D).expand(N_MC, D)  # one sample, N_MC independent draws (different counters)
    m = torch.randn(1, D).expand(N_MC, D)
    with ops.use_cpu_backend("cpp"):
        out, _ = ops.ddim_step(x, m, row, table, eta=eta, seed=seed, mixture=mix)
    mu, _ = reference.fused_step(x[:1], m[:1], row, table, eta=eta)  # DDIM's mean μ_t(η): no noise drawn
    return out.double(), mu[0]


def _expected_var(mix, sigma2, row_step, scale):
    """Per-dimension variance of the mixture law, E[within] + Var[means], from the law's definition (π, δ, s) and not
    from the tables the kernel reads. Component k's variance in dimension d, clipped at 0:
        diag: σ² − C_dd / (K π_k),  C_dd = Σ_l π_l δ_ld²                                    (Eq. 11)
        vub:  σ² − s² / (K π_k) · b_d on the first K coordinates, σ² elsewhere, with Golub's eigenvalue upper bounds
              b = (π₍₁₎, π₍₁₎, π₍₂₎, …, π₍K−1₎), π sorted descending                      (App. A.2)
    """
    pi = mix.priors
    K = len(pi)
    delta = mix.delta[row_step].double()
    if mix.variance_mode == "diag":
        c_diag = (pi[:, None] * delta**2).sum(0)
        within = (sigma2 - c_diag[None, :] / (K * pi[:, None])).clamp(min=0)
    else:
        desc = sorted(pi.tolist(), reverse=True)
        bounds = torch.tensor(desc[:1] + desc[:-1], dtype=torch.float64)
        within = torch.full((K, D), sigma2, dtype=torch.float64)
        within[:, :K] = (sigma2 - scale**2 / (K * pi[:, None]) * bounds[None, :]).clamp(min=0)
    return (pi[:, None] * within).sum(0) + (pi[:, None] * delta**2).sum(0) - ((pi[:, None] * delta).sum(0)) ** 2


@pytest.mark.parametrize("variance", ["diag", "vub"])
@pytest.mark.parametrize("priors", ["uniform", "random"])
def test_mean_and_per_dimension_variance(sched_table, variance, priors):
    _, table = sched_table
    row, eta = 500, 1.0
    sigma2 = _sigma2(table, row, eta)
    K = 4
    scale = 0.8 * math.sqrt(K * sigma2)  # s²/K < σ²: no clipping, so the mixture matches DDIM's moments
    mix = build_mixture(D, 10, components=K, scale=scale, variance=variance, priors=priors, seed=3)
    out, mu = _draws(table, mix, eta, row)
    se = out.std(0) / math.sqrt(N_MC)
    assert ((out.mean(0) - mu).abs() / se).max() < 4.5      # 64 dims: P(any > 4.5 SE) ≈ 4e-4
    var = out.var(0)
    expect = _expected_var(mix, sigma2, int(table[row, 6]), scale)
    # sample variance SE ≈ v √((κ−1)/N); the mixture is near-Gaussian (κ ≈ 3)
    assert ((var - expect).abs() / (expect * math.sqrt(2 / N_MC))).max() < 5
    if priors == "uniform" and variance == "diag":  # Eq. 11 per dimension: the variance is DDIM's σ²
        assert ((var - sigma2).abs() / (sigma2 * math.sqrt(2 / N_MC))).max() < 5


@pytest.mark.parametrize("priors", ["uniform", [0.5, 0.0, 0.25, 0.0, 0.25, 0.0]], ids=["uniform", "zero-priors"])
def test_exact_covariance_equals_ddim(sched_table, priors):
    """With zero priors among the K, the component weights must be 1/(K₊ π_k), K₊ the positive ones: 1/(K π_k)
    made Σ_k π_k Δ_k = (K₊/K) C and left the span's variance at ~1.4 σ² for these priors."""
    _, table = sched_table
    row, eta, K = 500, 1.0, 6
    sigma2 = _sigma2(table, row, eta)
    kpos = K if priors == "uniform" else 3
    scale = 0.95 * math.sqrt(kpos * sigma2) * (1.0 if priors == "uniform" else 0.5)  # within the exact condition
    mix = build_mixture(D, 10, components=K, scale=scale, variance="exact", priors=priors, seed=9)
    out, mu = _draws(table, mix, eta, row)
    centred = out - mu
    S = int(table[row, 6])
    g = torch.Generator().manual_seed(0)
    rand_dirs = torch.randn(8, D, generator=g, dtype=torch.float64)
    span = mix.basis[S][mix.eigvals[S] > 0].double()               # the K₊-1 directions of span{δ}
    assert span.shape[0] == kpos - 1
    dirs = torch.cat([span, rand_dirs / rand_dirs.norm(dim=1, keepdim=True)])
    proj = centred @ dirs.T
    var = proj.var(0)
    assert ((var - sigma2).abs() / (sigma2 * math.sqrt(2 / N_MC))).max() < 5
    if priors != "uniform":
        return
    # the non-exact modes over-disperse along span{δ} where they clip or drop off-diagonal terms: "diag"
    # keeps only diag(C), so the span's variance exceeds σ² by about (1 − 1/D)·s²/K
    mix_d = build_mixture(D, 10, components=K, scale=scale, variance="diag", priors="uniform", seed=9)
    out_d, _ = _draws(table, mix_d, eta, row)
    var_d = ((out_d - mu) @ span.T).var(0)
    assert (var_d.mean() - sigma2) / (sigma2 * math.sqrt(2 / N_MC)) > 5


def test_component_frequencies_chi_square(sched_table):
    _, table = sched_table
    mix = build_mixture(D, 10, components=6, scale=1.0, variance="diag", priors="random", seed=12)
    out, mu = _draws(table, mix, 0.0)  # η = 0: x_prev − μ = δ_k exactly
    S = int(table[500, 6])
    k = ((out - mu)[:, None, :] - mix.delta[S].double()[None]).norm(dim=2).argmin(1)
    counts = torch.bincount(k, minlength=6).numpy()
    expected = mix.priors.numpy() * N_MC
    assert stats.chisquare(counts, expected).pvalue > 1e-3
    assert np.array_equal(k.numpy(), reference.choose_components(7, N_MC, mix.cdf.numpy()))


def test_zero_prior_component_is_never_drawn(sched_table):
    _, table = sched_table
    mix = build_mixture(D, 10, components=4, scale=1.0, variance="diag", priors=[0.5, 0.0, 0.5, 0.0], seed=1)
    out, mu = _draws(table, mix, 0.0)
    S = int(table[500, 6])
    k = ((out - mu)[:, None, :] - mix.delta[S].double()[None]).norm(dim=2).argmin(1)
    assert set(k.unique().tolist()) == {0, 2}


# ---------------------------------------------------------------------------------------------------
# the scheduler and bad input
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("variance", VARIANCES)
@pytest.mark.parametrize("offsets", ["ortho", "rand"])
def test_scheduler_variants_run(variance, offsets):
    # "exact" needs s²/K <= σ_t² at every step; the step into t = 0 has σ² ≈ 1e-4 here
    scale = 0.005 if variance == "exact" else 0.05
    s = GMMDDIMScheduler(kernel="gmm", gmm_variance=variance, gmm_offsets=offsets, gmm_scale=scale,
                         gmm_clip_variance=True, clip_sample=False, gmm_components=4)
    s.set_timesteps(5)
    x = torch.randn(2, 1, 4, 4)
    g = torch.Generator().manual_seed(0)
    for t in s.timesteps:
        x = s.step(0.5 * x, t, x, eta=1.0, generator=g).prev_sample
    assert torch.isfinite(x).all()


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_generator_list_seeds_the_mixture(eta):
    """A per-sample generator list reproduces the mixture's samples whatever torch's global RNG holds: each sample's
    component and noise seed comes from its own generator (tests/test_generator_lists.py: batch = single runs)."""
    s = GMMDDIMScheduler(kernel="gmm", gmm_scale=0.5, clip_sample=False)
    s.set_timesteps(5)

    def run(global_seed, seeds=(1, 2)):
        torch.manual_seed(global_seed)
        gens = [torch.Generator().manual_seed(k) for k in seeds]
        x = torch.ones(2, 16)
        for t in s.timesteps:
            x = s.step(0.5 * x, t, x, eta=eta, generator=gens).prev_sample
        return x

    a = run(10)
    assert torch.equal(a, run(20))
    assert not torch.equal(a, run(10, seeds=(3, 2)))  # and it follows the generators


def test_one_default_per_mixture_knob():
    """The schedulers, build_mixture and `gmm-triton sample` default to one mixture: ORTHO-VUB, K = 8, s = 0.3,
    clipped as the paper does (the measurements behind s = 0.3 are in GMMDDIMScheduler's docstring)."""
    import inspect

    from gmm_triton import GMMFlowMatchScheduler, cli

    expected = dict(components=8, scale=0.3, offsets="ortho", variance="vub", clip_variance=True, shared=False,
                    priors="uniform")
    params = inspect.signature(build_mixture).parameters
    assert {k: params[k].default for k in expected} == expected
    for cls in (GMMDDIMScheduler, GMMFlowMatchScheduler):
        config = cls().config
        assert {k: config[f"gmm_{k}"] for k in expected} == expected, cls.__name__
    args = vars(cli.build_parser().parse_args(["sample", "--pipeline", "p"]))
    assert {k: args[f"gmm_{k}"] for k in expected if k != "priors"} == {k: v for k, v in expected.items()
                                                                        if k != "priors"}


@pytest.mark.parametrize("opts,scale", [(dict(gmm_scale=10.0, gmm_variance="vub", gmm_clip_variance=True), 10.0),
                                        ({}, 0.3)], ids=["paper", "defaults"])
def test_paper_settings_and_defaults_from_config(opts, scale):
    """from_config with the paper's 10-step settings or the defaults: at η = 0 every step but the last lands at DDIM's
    point plus one ORTHO offset, of norm s √(1 − 1/K); at η = 1 the VUB variances clip (s²/K > σ_t²) instead of
    raising."""
    base = DDIMScheduler(clip_sample=False).config
    gmm, ddim = GMMDDIMScheduler.from_config(base, kernel="gmm", **opts), GMMDDIMScheduler.from_config(base)
    assert gmm.config.gmm_scale == scale and gmm.config.gmm_variance == "vub" and gmm.config.gmm_clip_variance
    for s in (gmm, ddim):
        s.set_timesteps(10)
    x = torch.randn(4, D)
    for t in gmm.timesteps[:-1]:
        shift = gmm.step(0.5 * x, t, x).prev_sample - ddim.step(0.5 * x, t, x).prev_sample
        assert torch.allclose(shift.norm(dim=1), torch.full((4,), scale * math.sqrt(1 - 1 / 8)), rtol=1e-4), int(t)
    assert torch.isfinite(gmm.step(0.5 * x, gmm.timesteps[0], x, eta=1.0).prev_sample).all()


def test_scheduler_mixture_cache_rebuilt_after_set_timesteps():
    s = GMMDDIMScheduler(kernel="gmm", gmm_variance="diag", clip_sample=False)
    s.set_timesteps(10)
    x = torch.randn(1, 16)
    s.step(x, s.timesteps[0], x)
    first = next(iter(s._mixture_cache.mixtures.values()))
    s.step(x, s.timesteps[1], x)
    assert next(iter(s._mixture_cache.mixtures.values())) is first            # cached per (shape, device, dtype)
    s.set_timesteps(20)
    s.step(x, s.timesteps[0], x)
    assert next(iter(s._mixture_cache.mixtures.values())).delta.shape[0] == 20  # rebuilt for the new schedule


def test_scale_too_large_names_the_step_and_bound():
    s = GMMDDIMScheduler(kernel="gmm", gmm_variance="vub", gmm_scale=10.0, gmm_clip_variance=False, clip_sample=False)
    s.set_timesteps(10)
    x = torch.randn(1, 64)
    with pytest.raises(ValueError, match=r"gmm_scale=10.0 is too large .*'vub'.* at step \d+ \(timestep \d+\).*bound: gmm_scale <= "):
        s.step(x, s.timesteps[0], x, eta=1.0)
    ok = GMMDDIMScheduler(kernel="gmm", gmm_variance="vub", gmm_scale=10.0, gmm_clip_variance=True, clip_sample=False)
    ok.set_timesteps(10)
    ok.step(x, ok.timesteps[0], x, eta=1.0)  # the paper's clipping, when asked for
    ex = GMMDDIMScheduler(kernel="gmm", gmm_variance="exact", gmm_scale=10.0, gmm_clip_variance=True, clip_sample=False)
    ex.set_timesteps(10)
    with pytest.raises(ValueError, match="'exact'"):
        ex.step(x, ex.timesteps[0], x, eta=1.0)


def test_bound_message_is_a_working_bound():
    """Lowering gmm_scale to the bound the error names clears that step (later steps may be tighter)."""
    import re

    s = GMMDDIMScheduler(kernel="gmm", gmm_variance="exact", gmm_scale=5.0, clip_sample=False)
    s.set_timesteps(10)
    x = torch.randn(1, 64)
    with pytest.raises(ValueError) as e:
        s.step(x, s.timesteps[0], x, eta=1.0)
    step = int(re.search(r"at step (\d+)", str(e.value)).group(1))
    bound = float(re.search(r"gmm_scale <= ([0-9.e+-]+)", str(e.value)).group(1))
    s2 = GMMDDIMScheduler(kernel="gmm", gmm_variance="exact", gmm_scale=bound * 0.999, clip_sample=False)
    s2.set_timesteps(10)
    try:
        s2.step(x, s2.timesteps[0], x, eta=1.0)
    except ValueError as e2:
        assert int(re.search(r"at step (\d+)", str(e2)).group(1)) > step


@pytest.mark.parametrize("kwargs,match", [
    (dict(components=0), "gmm_components must be >= 1"),
    (dict(components=65), "must not exceed the latent size"),
    (dict(priors=[0.5, 0.6, -0.1, 0.0]), "non-negative"),
    (dict(priors=[0.5, float("nan"), 0.25, 0.25]), "finite"),
    (dict(priors=[0.5, 0.2, 0.2, 0.2]), "sum to 1"),
    (dict(priors=[0.5, 0.5]), "gmm_components K=4"),
    (dict(offsets="svd"), "gmm_offsets"),
    (dict(variance="full"), "gmm_variance"),
    (dict(scale=-1.0), "gmm_scale"),
])
def test_bad_mixture_arguments(kwargs, match):
    args = dict(components=4)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        build_mixture(64, 10, **args)


@pytest.mark.parametrize("variance", ["diag", "exact"])
def test_bfloat16_tables_read_in_place(sched_table, variance):
    """bf16-stored offsets and basis: both backends read them directly and agree with the reference."""
    _, table = sched_table
    mix = build_mixture(D, 10, components=4, scale=0.2, variance=variance, dtype=torch.bfloat16, seed=3)
    assert mix.delta.dtype == torch.bfloat16 and (variance != "exact" or mix.basis.dtype == torch.bfloat16)
    x, m = torch.randn(3, D), torch.randn(3, D)
    ref, _ = reference.fused_step(x, m, 500, table, eta=1.0, seed=4, mixture=mix)
    for backend in ("cpp", "triton"):
        with ops.use_cpu_backend(backend):
            out, _ = ops.ddim_step(x, m, 500, table, eta=1.0, seed=4, mixture=mix)
        assert (out.double() - ref).abs().max() < 5e-6, backend
