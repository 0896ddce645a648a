"""gDDIM's defining properties through the schedulers (and so the fused ops): one R step is exact on "Dirac" data
while the L step is not; λ-stochastic steps keep Gaussian marginals; on VP, λ = 1 is DDPM's ancestral step and
order 0 is DDIM; the diffusers scheduler contract (config round trips, timesteps, step output, errors)."""
import math

import numpy as np
import pytest
import torch
from scipy.integrate import solve_ivp

from gmm_triton import GDDIMBlurScheduler, GDDIMCLDScheduler
from gmm_triton.gddim import engine as E
from gmm_triton.gddim.cld import CLD


def dirac_mean(p, m, t):
    """m_t = Ψ(t, 0) (m, 0) per pair: [2, D]."""
    psi = p.psi(t, 0.0).numpy()
    return np.stack([psi[0, 0] * m, psi[1, 0] * m])


def dirac_eps(p, m, param):
    """The exact ε of Dirac data (x0 = m, v0 ~ N(0, γM)): p_t = N(m_t, Σ_t), so ε_K = K_t⁻¹ (u − m_t)."""
    def model(u, t):
        t = float(t)
        k = (p.R(t) if param == "R" else p.L(t)).to(u.dtype)
        return torch.einsum("ij,bjd->bid", torch.linalg.inv(k), u - torch.from_numpy(dirac_mean(p, m, t)).to(u.dtype))
    return model


def pf_ode_endpoint(p, m, u0, t0, t1):
    """Tight DOP853 solve of du/dt = F u + ½ GGᵀ Σ_t⁻¹ (u − m_t) for Dirac data (each pair independent)."""
    F, GG = p._F(0.0)[0], p._GG(0.0)[0]

    def rhs(t, y):
        u = y.reshape(2, -1)
        return (F @ u + 0.5 * GG @ np.linalg.solve(p._sigma(t)[0], u - dirac_mean(p, m, t))).ravel()

    sol = solve_ivp(rhs, (t0, t1), u0.ravel(), method="DOP853", rtol=1e-12, atol=1e-12)
    return sol.y[:, -1].reshape(u0.shape)


def test_one_R_step_is_exact_on_dirac_data_and_L_is_not():
    p, rng = CLD(), np.random.default_rng(0)
    m = rng.normal(size=6)
    u1 = dirac_mean(p, m, 1.0) + p.R(1.0).numpy() @ rng.normal(size=(2, 6))
    ref = pf_ode_endpoint(p, m, u1, 1.0, 1e-3)
    errs = {}
    for param in ("R", "L"):
        s = GDDIMCLDScheduler(parameterization=param)
        s.set_timesteps(1)
        u = torch.from_numpy(u1)[None]
        out = s.step(dirac_eps(p, m, param)(u, s.timesteps[0]), s.timesteps[0], u).prev_sample
        errs[param] = np.abs(out[0].numpy() - ref).max()
    assert errs["R"] < 1e-7            # float64 state: exact to the tables' and the ODE solver's accuracy
    assert errs["L"] > 1e-2            # ε_L drifts along the trajectory: freezing it misses


@pytest.mark.parametrize("lam, order", [(0.5, 0), (1.0, 0), (0.5, 2), (1.0, 1)])
def test_stochastic_steps_keep_gaussian_marginals(lam, order):
    """Dirac data, exact ε, 5 steps of λ-gDDIM (orders > 0: the data-prediction history) with in-kernel noise: at
    every grid time the 40000 pairs (minus m_t) have mean 0 and covariance Σ_t within 5 standard errors."""
    p = CLD()
    B, D = 100, 400
    m = torch.linspace(-1.5, 1.5, D, dtype=torch.float64).numpy()
    s = GDDIMCLDScheduler(lam=lam, order=order)
    s.set_timesteps(5)
    g = torch.Generator().manual_seed(0)
    u = torch.from_numpy(dirac_mean(p, m, 1.0))[None] + torch.einsum(
        "ij,bjd->bid", p.R(1.0), torch.randn(B, 2, D, generator=g, dtype=torch.float64))
    u = u.float()
    model = dirac_eps(p, m, "R")
    n = B * D
    for i, t in enumerate(s.timesteps):
        u = s.step(model(u, t), t, u, generator=g).prev_sample
        t_next = s.grid[i + 1]
        r = (u.double() - torch.from_numpy(dirac_mean(p, m, t_next))).permute(1, 0, 2).reshape(2, n)
        sig = p.sigma(t_next)
        se_mean = (sig.diagonal() / n).sqrt()
        assert (r.mean(1).abs() <= 5 * se_mean).all(), (i, r.mean(1), se_mean)
        cov = r @ r.T / n
        se_cov = ((sig.diagonal()[:, None] * sig.diagonal()[None, :] + sig**2) / n).sqrt()
        assert ((cov - sig).abs() <= 5 * se_cov).all(), (i, cov, sig)


def test_blur_one_step_is_exact_on_dirac_data():
    """BDM has R = L = σ_t; for Dirac data ε = (y − a_t ⊙ ỹ0)/σ_t is constant along the flow, so one step lands on
    the marginal mean path exactly: y_ε − a_ε ỹ0 = (σ_ε/σ_T)(y_T − a_T ỹ0) per frequency."""
    s = GDDIMBlurScheduler()
    s.set_timesteps(1)
    N = 8
    p = s.process_for(N)
    v = p.dct()
    x0 = torch.randn(1, 1, N, N, dtype=torch.float64)
    y0 = v @ x0 @ v.T
    T, eps_t = s.grid[0], s.grid[-1]
    a = lambda t: p.blur_scale(t) * p.alpha(t)  # noqa: E731
    yT = a(T) * y0 + p.sigma(T) * torch.randn_like(y0)
    xT = v.T @ yT @ v
    model_eps = v.T @ ((yT - a(T) * y0) / p.sigma(T)) @ v
    out = s.step(model_eps, s.timesteps[0], xT).prev_sample
    y_out = v @ out @ v.T
    expect = a(eps_t) * y0 + p.sigma(eps_t) / p.sigma(T) * (yT - a(T) * y0)
    assert (y_out - expect).abs().max() < 1e-9 * (1 + expect.abs().max())


# ---------------------------------------------------------------------------------------------------
# VP: gDDIM is DDIM (order 0) and DDPM (λ = 1)
# ---------------------------------------------------------------------------------------------------
T_TRAIN = 1000


def vp_alphas(vp):
    """ᾱ of the continuous VP at the training timesteps k ↔ t = (k+1)/T, float64."""
    return torch.from_numpy(np.exp(vp.log_alpha_bar((np.arange(T_TRAIN) + 1) / T_TRAIN)))


def vp_step(vp, k, k_prev, lam, x, eps, z):
    c = E.gddim_coefficients(vp, [(k + 1) / T_TRAIN, (k_prev + 1) / T_TRAIN], 0, lam, "R")
    return float(c.psi[0, 0, 0, 0]) * x + float(c.eps[0, 0, 0, 0, 0]) * eps + float(c.chol[0, 0, 0, 0]) * z


def test_vp_lambda_one_is_ddpm_ancestral_sampling():
    from diffusers import DDPMScheduler

    vp = E.VP()
    s = DDPMScheduler(num_train_timesteps=T_TRAIN, clip_sample=False, variance_type="fixed_small")
    s.alphas_cumprod = vp_alphas(vp)  # the same ᾱ as the continuous process at the grid times
    s.set_timesteps(10)
    x, eps = torch.randn(4, 3, 8, 8, dtype=torch.float64), torch.randn(4, 3, 8, 8, dtype=torch.float64)
    for k in (900, 500, 100):
        ddpm = s.step(eps, k, x, generator=torch.Generator().manual_seed(k)).prev_sample
        z = torch.randn(x.shape, generator=torch.Generator().manual_seed(k), dtype=torch.float64)
        ours = vp_step(vp, k, k - 100, 1.0, x, eps, z)
        assert (ours - ddpm).abs().max() < 1e-8, k
        assert (vp_step(vp, k, k - 100, 0.8, x, eps, z) - ddpm).abs().max() > 1e-4  # λ matters: 10⁴ × the tolerance


def test_vp_order_zero_is_our_ddim_eta_zero_step():
    from gmm_triton import GMMDDIMScheduler

    vp = E.VP()
    s = GMMDDIMScheduler(clip_sample=False)
    s.alphas_cumprod = vp_alphas(vp)
    s.set_timesteps(10)
    x, eps = torch.randn(4, 3, 8, 8, dtype=torch.float64), torch.randn(4, 3, 8, 8, dtype=torch.float64)
    for k in (900, 500, 100):
        ddim = s.step(eps, k, x, eta=0.0).prev_sample
        ours = vp_step(vp, k, k - 100, 0.0, x, eps, torch.zeros_like(x))
        assert (ours - ddim).abs().max() < 1e-12, k


# ---------------------------------------------------------------------------------------------------
# the diffusers contract
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("cls, kw", [(GDDIMCLDScheduler, dict(order=2, parameterization="L", sampling_eps=2e-3)),
                                     (GDDIMBlurScheduler, dict(lam=1.0, sigma_blur_max=5.0, t_max=0.9))])
def test_config_round_trips(tmp_path, cls, kw):
    s = cls(**kw)
    s.save_pretrained(tmp_path)
    public = lambda c: {k: v for k, v in c.items() if not k.startswith("_")}  # noqa: E731
    for t in (cls.from_pretrained(tmp_path), cls.from_config(s.config)):
        assert {k: t.config[k] for k in kw} == kw and public(t.config) == public(s.config)


def test_cld_scheduler_timesteps_and_step():
    s = GDDIMCLDScheduler(order=1)
    s.set_timesteps(4)
    assert torch.allclose(s.timesteps, torch.from_numpy(np.linspace(1.0, math.sqrt(1e-3), 5)[:-1] ** 2))
    assert s.timesteps.dtype == torch.float64 and len(s) == 4 and s.order == 1 and s.config.order == 1
    u = torch.randn(2, 2, 3, 3)
    out = s.step(torch.zeros_like(u), s.timesteps[0], u)
    assert out.prev_sample.shape == u.shape and out.prev_sample.dtype == u.dtype
    with pytest.raises(ValueError, match="needs its steps in order"):
        s.step(torch.zeros_like(u), s.timesteps[2], u)
    with pytest.raises(ValueError, match="not on the schedule"):
        s.step(torch.zeros_like(u), 0.5, u)
    with pytest.raises(ValueError, match="set_timesteps"):
        GDDIMCLDScheduler().step(u, 1.0, u)


def test_scheduler_config_errors_name_the_key():
    for kw, name in [(dict(order=3), "order"), (dict(lam=0.5, order=1, history="x0"), "history"),
                     (dict(parameterization="X"), "parameterization"), (dict(sampling_eps=2.0), "sampling_eps"),
                     (dict(m_inv=-1.0), "m_inv"), (dict(solver="rk4"), "solver")]:
        with pytest.raises(ValueError, match=name):
            GDDIMCLDScheduler(**kw)
    with pytest.raises(ValueError, match="timestep_spacing"):
        GDDIMCLDScheduler(timestep_spacing="cosine").set_timesteps(3)
    with pytest.raises(ValueError, match="square images"):
        s = GDDIMBlurScheduler()
        s.set_timesteps(2)
        s.step(torch.zeros(1, 1, 4, 6), s.timesteps[0], torch.zeros(1, 1, 4, 6))


# ---------------------------------------------------------------------------------------------------
# stochastic multistep (λ > 0, order > 0)
# ---------------------------------------------------------------------------------------------------
def _chain(sched, model, x, steps, noise_seed, noises=None):
    sched.set_timesteps(steps)
    g = torch.Generator().manual_seed(noise_seed)
    for i, t in enumerate(sched.timesteps):
        x = sched.step(model(x, t), t, x, generator=g,
                       variance_noise=None if noises is None else noises[i]).prev_sample
    return x


@pytest.mark.parametrize("family", ["cld", "blur"])
def test_stochastic_multistep_steps_through_the_fused_op_on_every_backend(family):
    """GDDIMCLDScheduler(order=2, lam=0.5) and GDDIMBlurScheduler(order=2, lam=0.5), in-kernel Philox noise, float64
    state (fp32 rounding, amplified by the blur chain's transient growth, would hide a difference): the C++
    twin and the Triton kernel (interpreter) agree with the float64 reference backend along 6 steps (three buffers
    per step, the data-prediction history carried by the scheduler), and the history matters (order 0 differs)."""
    from gmm_triton.ops import use_cpu_backend

    if family == "cld":
        make = lambda **kw: GDDIMCLDScheduler(lam=0.5, **kw)  # noqa: E731
        x0 = torch.randn(2, 2, 3, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        r_inv = lambda t: torch.linalg.inv(CLD().R(float(t)))  # noqa: E731
        # near the exact ε of data at 0 (R_t⁻¹ u), so the state stays O(√Σ_t) as in sampling
        model = lambda u, t: torch.einsum("ij,bj...->bi...", r_inv(t), u) + 0.3 * torch.tanh(u.flip(1))  # noqa: E731
    else:
        make = lambda **kw: GDDIMBlurScheduler(lam=0.5, **kw)  # noqa: E731
        sigma = make().process_for(8).sigma
        x0 = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        # near the exact ε of data at 0 (x / σ_t), so the state stays O(σ_t) as in sampling
        model = lambda x, t: x / float(sigma(float(t))) + 0.3 * torch.tanh(x.flip(-1))  # noqa: E731
    out = {}
    for backend in ("reference", "cpp", "triton"):
        with use_cpu_backend(backend):
            out[backend] = _chain(make(order=2), model, x0, 6, 7)
    scale = out["reference"].abs().max()
    for backend in ("cpp", "triton"):
        assert out[backend].dtype == torch.float64
        # the only difference left: the backends' float32 Box-Muller normals (agreeing to ~1e-6, test_gddim_ops)
        # times the noise factor; measured 4e-9 (CLD)
        assert (out[backend] - out["reference"]).abs().max() <= 1e-7 * scale, backend
    assert (_chain(make(order=0), model, x0, 6, 7) - out["cpp"]).abs().max() > 1e-3 * scale


@pytest.fixture
def one_thread():
    """Small float64 matmuls: one thread is ~15× faster than two on a loaded 2-core machine (measured 7 s vs 117 s)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_stochastic_multistep_error_falls_with_order_on_the_cld_oracle(one_thread):
    """The CLD digits oracle (8×8, exact ε), λ = 0.5, 20 steps: against a tight solve of the same SDE on the same
    Brownian path (order-0 λ-gDDIM with 16 sub-steps per step; the coarse noises are its noises aggregated,
    ``gddim_demo.brownian_maps``), the typical per-sample error of x at t = 1e-3 falls from order 0 to orders 1 and 2,
    and the official raw-ε history diverges. Typical: the lower quartile over the 32 samples, as 12–17 of them end
    far from the reference (error > 0.1: another digit) under every order (measured 0.034 → 0.019, 0.022; the
    median, 0.185 → 0.021, 0.024, jumps when half the samples are off; on other noise seeds 0.035 → 0.020, 0.023)."""
    from gmm_triton.lab.gddim_demo import cld_map, sde_reference
    from gmm_triton.lab.oracle import CLDMixtureDenoiser, digits_mixture

    data = digits_mixture(8, std=0.1, dtype=torch.float64)
    model = CLDMixtureDenoiser(data)
    n, steps, sub = 32, 20, 16
    u0 = model.marginal_sample(data, n, 1.0, generator=torch.Generator().manual_seed(0))
    fine = GDDIMCLDScheduler(lam=0.5)
    fine.set_timesteps(steps * sub)
    ref, noises = sde_reference(fine, model, u0, sub, cld_map, seed=1)
    err = {}
    for name, kw in (("o0", {}), ("o1", dict(order=1)), ("o2", dict(order=2)), ("o2-eps", dict(order=2, history="eps"))):
        u = _chain(GDDIMCLDScheduler(lam=0.5, **kw), model, u0, steps, 0, noises)
        err[name] = float((u[:, 0] - ref[:, 0]).reshape(n, -1).pow(2).mean(1).sqrt().quantile(0.25))
    assert err["o1"] < 0.7 * err["o0"] and err["o2"] < 0.7 * err["o0"], err
    assert err["o2-eps"] > 100 * err["o0"], err
