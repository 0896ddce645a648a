"""gmm_triton's k-diffusion-convention samplers against the installed k-diffusion (0.1.1.post1, sampling.py alone).

A run passes when, against the same sampler run by k-diffusion in float64 (the truth),
    |ours − truth|∞ ≤ 2 |k-diffusion − truth|∞ + 1e-6 (1 + |truth|∞)
with ours and k-diffusion both in float32 on the same denoiser, σ grid and pre-drawn noise: ours must be as accurate
as k-diffusion's own float32 arithmetic (the fp32 same-dtype bound of the project's tests).
"""
import inspect
import math
import subprocess
import sys

import numpy as np
import pytest
import torch

import kdiffusion_ref
from gmm_triton import GMMDDIMScheduler, GMMFlowMatchScheduler, sample_ddim, sample_ddim_gmm, sample_rfim, \
    sample_rfim_gmm
from gmm_triton.samplers import rf_ancestral_eta
from gmm_triton.samplers.k_diffusion import step_seed

K = kdiffusion_ref.load()
SHAPE = (2, 3, 8, 8)
SIGMA_MIN, SIGMA_MAX = 0.0292, 14.6146  # Stable Diffusion's range


def ddpm_sigmas(n):
    """A DDPM-discretized grid: σ_t = √((1 − ᾱ_t)/ᾱ_t) of SD's scaled-linear β at n evenly spaced timesteps, then 0."""
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    acp = torch.cumprod(1 - betas, 0)
    t = torch.linspace(999, 0, n).round().long()
    return torch.cat([((1 - acp[t]) / acp[t]).sqrt(), torch.zeros(1, dtype=torch.float64)]).float()


GRIDS = {
    "karras": lambda n: K.get_sigmas_karras(n, SIGMA_MIN, SIGMA_MAX),
    "exponential": lambda n: K.get_sigmas_exponential(n, SIGMA_MIN, SIGMA_MAX),
    "ddpm": ddpm_sigmas,
}


def denoiser(x, sigma):
    """x̂₀ of a smooth non-linear stand-in for a network (the posterior mean of N(0.3, 0.5²) data, bent by tanh)."""
    s = sigma.reshape(-1, *([1] * (x.dim() - 1))).to(x.dtype)
    return (0.25 * x + 0.3 * s * s) / (0.25 + s * s) + 0.05 * torch.tanh(x) / (1 + s)


def flow_denoiser(x, sigma):
    """x̂₀ of a rectified flow on the same data: x = (1 − σ) x₀ + σ ε."""
    s = sigma.reshape(-1, *([1] * (x.dim() - 1))).to(x.dtype)
    a = 1 - s
    return (0.25 * a * x + 0.3 * s * s) / (0.25 * a * a + s * s) + 0.05 * torch.tanh(x) * (1 - s)


def noise_list(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(SHAPE, generator=g, dtype=torch.float64) for _ in range(n)]


def sampler_of(noises, dtype):
    """A noise_sampler handing out the pre-drawn noises in order (recording its calls)."""
    it = iter(noises)
    calls = []

    def ns(sigma, sigma_next):
        calls.append((float(sigma), float(sigma_next)))
        return next(it).to(dtype)

    ns.calls = calls
    return ns


def judge(ours, kd, truth, what):
    assert truth.dtype == torch.float64 and torch.isfinite(truth).all(), f"{what}: the float64 truth is not finite"
    o, d = (ours.double() - truth).abs().max().item(), (kd.double() - truth).abs().max().item()
    bound = 2 * d + 1e-6 * (1 + truth.abs().max().item())
    assert o <= bound, f"{what}: |ours-truth|={o:.3g} > {bound:.3g} (|k-diffusion-truth|={d:.3g})"


def run_three(kd_fn, ours_fn, model, sigmas, x, n_noise, **kw):
    """(ours fp32, k-diffusion fp32, k-diffusion fp64) on the same noise."""
    noises = noise_list(n_noise)
    kd = kd_fn(model, x, sigmas, disable=True, noise_sampler=sampler_of(noises, torch.float32), **kw)
    truth = kd_fn(model, x.double(), sigmas.double(), disable=True, noise_sampler=sampler_of(noises, torch.float64),
                  **kw)
    ours = ours_fn(model, x, sigmas, disable=True, noise_sampler=sampler_of(noises, torch.float32), **kw)
    return ours, kd, truth


def initial(sigmas, seed=1):
    return torch.randn(SHAPE, generator=torch.Generator().manual_seed(seed)) * sigmas[0]


@pytest.mark.parametrize("grid", list(GRIDS))
@pytest.mark.parametrize("n", [5, 10, 50])
@pytest.mark.parametrize("eta", [0.0, 0.3, 1.0])
def test_ddim_equals_euler_ancestral(grid, n, eta):
    sigmas = GRIDS[grid](n)
    ours, kd, truth = run_three(K.sample_euler_ancestral, sample_ddim, denoiser, sigmas, initial(sigmas), n, eta=eta)
    assert ours.dtype == torch.float32
    judge(ours, kd, truth, f"{grid} n={n} eta={eta}")


@pytest.mark.parametrize("eta, s_noise", [(1.0, 0.7), (0.5, 1.3), (1.7, 1.0)])
def test_ddim_s_noise_and_eta_above_one_follow_k_diffusion(eta, s_noise):
    """s_noise scales the noise only (σ_down keeps the unscaled σ_up); η > 1 takes k-diffusion's min(σ', ·) clamp."""
    sigmas = GRIDS["karras"](10)
    ours, kd, truth = run_three(K.sample_euler_ancestral, sample_ddim, denoiser, sigmas, initial(sigmas), 10,
                                eta=eta, s_noise=s_noise)
    judge(ours, kd, truth, f"eta={eta} s_noise={s_noise}")


@pytest.mark.parametrize("grid", list(GRIDS))
def test_ddim_at_eta_zero_equals_euler(grid):
    sigmas = GRIDS[grid](10)
    x = initial(sigmas)
    kd = K.sample_euler(denoiser, x, sigmas, disable=True)
    truth = K.sample_euler(denoiser, x.double(), sigmas.double(), disable=True)
    judge(sample_ddim(denoiser, x, sigmas, eta=0.0, disable=True), kd, truth, grid)


@pytest.mark.parametrize("n", [5, 20])
def test_rfim_at_eta_zero_equals_euler_on_a_flow(n):
    """On CONST sigmas (1 → 0, shifted as SD3/Flux), RFIM at η = 0 is k-diffusion's Euler step."""
    t = torch.linspace(1, 0, n + 1, dtype=torch.float64)
    sigmas = (3 * t / (1 + 2 * t)).float()  # shift 3
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(2))
    kd = K.sample_euler(flow_denoiser, x, sigmas, disable=True)
    truth = K.sample_euler(flow_denoiser, x.double(), sigmas.double(), disable=True)
    judge(sample_rfim(flow_denoiser, x, sigmas, eta=0.0, disable=True), kd, truth, f"n={n}")


def test_noise_sampler_is_called_once_per_noisy_step_with_its_sigmas():
    sigmas = GRIDS["karras"](6)
    ns = sampler_of(noise_list(6), torch.float32)
    sample_ddim(denoiser, initial(sigmas), sigmas, eta=1.0, noise_sampler=ns, disable=True)
    assert ns.calls == [(float(sigmas[i]), float(sigmas[i + 1])) for i in range(5)]  # not the step onto σ = 0
    ns0 = sampler_of(noise_list(6), torch.float32)
    sample_ddim(denoiser, initial(sigmas), sigmas, eta=0.0, noise_sampler=ns0, disable=True)
    assert ns0.calls == []  # η = 0 adds no noise


def test_callback_and_extra_args_follow_k_diffusion():
    sigmas = GRIDS["karras"](4)
    seen, infos = [], []

    def model(x, sigma, **kw):
        seen.append(kw)
        return denoiser(x, sigma)

    sample_ddim(model, initial(sigmas), sigmas, extra_args={"cond": "c", "seed": 5}, callback=infos.append,
                disable=True)
    assert seen == [{"cond": "c", "seed": 5}] * 4  # extra_args reach the model untouched, seed included
    assert [i["i"] for i in infos] == [0, 1, 2, 3]
    for info in infos:
        assert set(info) == {"x", "i", "sigma", "sigma_hat", "denoised"}
        assert float(info["sigma"]) == float(info["sigma_hat"]) == float(sigmas[info["i"]])


def test_philox_seed_sources_agree_and_reproduce():
    sigmas = GRIDS["karras"](8)
    x = initial(sigmas)
    a = sample_ddim(denoiser, x, sigmas, seed=7, disable=True)
    b = sample_ddim(lambda x, s, seed: denoiser(x, s), x, sigmas, extra_args={"seed": 7}, disable=True)
    c = sample_ddim(denoiser, x, sigmas, seed=torch.tensor([7]), disable=True)
    d = sample_ddim(denoiser, x, sigmas, seed=8, disable=True)
    assert torch.equal(a, b) and torch.equal(a, c)
    assert not torch.equal(a, d)
    torch.manual_seed(0)
    e = sample_ddim(denoiser, x, sigmas, disable=True)
    torch.manual_seed(0)
    assert torch.equal(e, sample_ddim(denoiser, x, sigmas, disable=True))  # no seed: torch's global RNG


def test_philox_noise_is_the_documented_stream():
    """One noisy step with a seed: z is Philox stream 0 of key seed + h(0) (gmm_triton.philox_normal)."""
    from gmm_triton import philox_normal
    from gmm_triton.contract import STREAM_NOISE

    sigmas = torch.tensor([2.0, 1.0])
    x = initial(sigmas)
    z = philox_normal(SHAPE, seed=step_seed(11, 0), stream=STREAM_NOISE)
    ours = sample_ddim(denoiser, x, sigmas, seed=11, disable=True)
    want = sample_ddim(denoiser, x, sigmas, noise_sampler=lambda s, t: z, disable=True)
    assert torch.equal(ours, want)


def test_step_seed_of_int_and_tensor_agree():
    for seed in (0, 5, 2**63 + 3, 2**64 - 1):
        for i in (0, 1, 49):
            t = step_seed(torch.tensor([seed - 2**64 if seed >= 2**63 else seed]), i)
            assert int(t) % 2**64 == step_seed(seed, i)
    assert len({step_seed(5, i) for i in range(100)} | {step_seed(6, i) for i in range(100)}) == 200


@pytest.mark.parametrize("flow", [False, True])
def test_gmm_with_zero_scale_or_one_component_is_gaussian_bit_for_bit(flow):
    sigmas = torch.tensor([0.9, 0.7, 0.4, 0.0]) if flow else GRIDS["karras"](6)
    model = flow_denoiser if flow else denoiser
    gauss, gmm = (sample_rfim, sample_rfim_gmm) if flow else (sample_ddim, sample_ddim_gmm)
    x = initial(sigmas)
    for eta in (0.0, 0.5):
        ref = gauss(model, x, sigmas, eta=eta, seed=3, disable=True)
        assert torch.equal(gmm(model, x, sigmas, eta=eta, seed=3, gmm_scale=0.0, disable=True), ref)
        assert torch.equal(gmm(model, x, sigmas, eta=eta, seed=3, gmm_components=1, disable=True), ref)
        ns = noise_list(6)
        ref_n = gauss(model, x, sigmas, eta=eta, noise_sampler=sampler_of(ns, torch.float32), seed=3, disable=True)
        assert torch.equal(gmm(model, x, sigmas, eta=eta, noise_sampler=sampler_of(ns, torch.float32), seed=3,
                               gmm_scale=0.0, disable=True), ref_n)
    assert not torch.equal(gmm(model, x, sigmas, eta=0.5, seed=3, disable=True), ref)


@pytest.mark.parametrize("flow", [False, True])
def test_one_gmm_step_matches_ddim_mean_and_covariance(flow):
    """Monte Carlo over B samples of one step from the same x: the mixture ("exact" variance) has DDIM's mean and
    covariance; the tolerances are 5 standard errors of the estimates."""
    B, D, comps = 40000, 8, 4
    sig = torch.tensor([0.8, 0.5]) if flow else torch.tensor([3.0, 1.5])
    x1 = torch.randn(1, D, generator=torch.Generator().manual_seed(4)) * sig[0]
    x = x1.expand(B, D).contiguous()
    def model(x, s):
        return torch.tanh(x)

    eta, sn = 1.0, 0.9
    up = eta * sig[1] if flow else min(sig[1], eta * (sig[1] ** 2 * (sig[0] ** 2 - sig[1] ** 2) / sig[0] ** 2).sqrt())
    var = float((sn * up) ** 2)
    scale = 0.9 * math.sqrt(var * comps)  # the "exact" mode needs s²/K ≤ σ²
    fn = sample_rfim_gmm if flow else sample_ddim_gmm
    out = fn(model, x, sig, eta=eta, s_noise=sn, seed=9, gmm_components=comps, gmm_scale=scale,
             gmm_variance="exact", disable=True).double()
    gauss = (sample_rfim if flow else sample_ddim)(model, x, sig, eta=eta, s_noise=sn, seed=9, disable=True).double()
    x0 = torch.tanh(x1).double()
    a, ap = (1 - sig[0].double(), 1 - sig[1].double()) if flow else (1.0, 1.0)
    eps = (x1.double() - a * x0) / sig[0].double()
    c_eps = float(((sig[1].double() ** 2 - up.double() ** 2)).clamp(min=0).sqrt())
    mean = ap * x0 + c_eps * eps
    se = math.sqrt(var / B)
    assert (out.mean(0) - mean[0]).abs().max() < 5 * se
    dev = out - out.mean(0)
    prods = dev[:, :, None] * dev[:, None, :]  # the covariance's terms; their spread gives its standard error
    se_cov = prods.std(0) / math.sqrt(B)
    assert ((prods.mean(0) - var * torch.eye(D, dtype=torch.float64)).abs() < 5 * se_cov).all()
    assert (gauss.mean(0) - mean[0]).abs().max() < 5 * se
    # the mixture is not the Gaussian: along an offset direction its samples cluster around ± the offsets
    assert not torch.allclose(out, gauss)


def test_mixture_options_and_defaults_are_the_schedulers():
    for fn in (sample_ddim_gmm, sample_rfim_gmm):
        params = {k: v.default for k, v in inspect.signature(fn).parameters.items() if k.startswith("gmm_")}
        for sched in (GMMDDIMScheduler, GMMFlowMatchScheduler):
            want = {k: v.default for k, v in inspect.signature(sched.__init__).parameters.items()
                    if k.startswith("gmm_")}
            assert params == want, (fn.__name__, sched.__name__)


def test_errors_name_the_argument():
    sigmas = GRIDS["karras"](4)
    x = initial(sigmas)
    cases = [
        (dict(eta=-0.1), "eta"), (dict(s_noise=-1.0), "s_noise"), (dict(gmm_variance="full"), "gmm_variance"),
        (dict(gmm_components=0), "gmm_components"), (dict(gmm_scale=float("nan")), "gmm_scale"),
        (dict(seed=-1), "seed"), (dict(eta=[0.5, 0.5]), "eta"),
    ]
    for kw, name in cases:
        with pytest.raises((ValueError, TypeError), match=name):
            sample_ddim_gmm(denoiser, x, sigmas, disable=True, **kw)
    with pytest.raises(ValueError, match="sigmas"):
        sample_ddim(denoiser, x, torch.tensor([1.0, 0.0, 0.5, 0.0]), disable=True)
    with pytest.raises(ValueError, match="sigmas"):
        sample_ddim(denoiser, x, torch.tensor([1.0, float("nan"), 0.0]), disable=True)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        sample_rfim(flow_denoiser, x, torch.tensor([1.5, 0.5, 0.0]), disable=True)
    with pytest.raises(ValueError, match="eta"):
        sample_rfim(flow_denoiser, x, torch.tensor([1.0, 0.5, 0.0]), eta=1.2, disable=True)
    with pytest.raises(ValueError, match="gmm_scale"):  # "exact" needs s²/K ≤ σ², named with its bound
        sample_ddim_gmm(denoiser, x, sigmas, gmm_variance="exact", gmm_scale=50.0, seed=0, disable=True)


def test_rf_ancestral_eta_endpoints():
    sigmas = torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0])
    assert torch.equal(rf_ancestral_eta(sigmas, 0.0), torch.zeros(4, dtype=torch.float64))
    e = rf_ancestral_eta(sigmas, 1.0)
    assert e[-1] == 0 and ((e[:-1] > 0) & (e[:-1] <= 1)).all()


def test_one_sigma_returns_x_and_no_model_call():
    x = initial(torch.tensor([1.0]))
    assert torch.equal(sample_ddim(lambda *a: pytest.fail("model called"), x, torch.tensor([1.0]), disable=True), x)


def test_importable_without_k_diffusion_or_diffusers():
    code = ("import sys; sys.modules['k_diffusion'] = None; sys.modules['diffusers'] = None\n"
            "import torch; from gmm_triton import sample_ddim_gmm\n"
            "x = torch.zeros(1, 8); s = torch.tensor([1.0, 0.5, 0.0])\n"
            "y = sample_ddim_gmm(lambda x, s: x * 0.5, x, s, seed=0, disable=True)\n"
            "assert torch.isfinite(y).all() and 'diffusers' not in [m.split('.')[0] for m in sys.modules if sys.modules[m]]\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_device_seed_tensor_is_never_read_on_the_host(monkeypatch):
    """A seed tensor stays a tensor through the per-step keys (no int() of it), so on a GPU nothing syncs."""
    import gmm_triton.samplers.k_diffusion as kd

    seeds = []
    real = kd.ddim_step

    def spy(*a, **kw):
        seeds.append(kw["seed"])
        return real(*a, **kw)

    monkeypatch.setattr(kd, "ddim_step", spy)
    sigmas = GRIDS["karras"](3)
    sample_ddim(denoiser, initial(sigmas), sigmas, seed=torch.tensor([3]), disable=True)
    assert all(isinstance(s, torch.Tensor) for s in seeds) and len(seeds) == 3


def test_fp16_and_bf16_latents_stay_finite_and_close():
    sigmas = GRIDS["karras"](10)
    x = initial(sigmas)
    ref = sample_ddim(denoiser, x, sigmas, seed=1, disable=True)
    for dt, tol in ((torch.float16, 2e-2), (torch.bfloat16, 1e-1)):
        y = sample_ddim(denoiser, x.to(dt), sigmas, seed=1, disable=True)
        assert y.dtype == dt and torch.isfinite(y).all()
        assert (y.float() - ref).abs().max() < tol * (1 + ref.abs().max())
    np.testing.assert_array_equal(ref.shape, SHAPE)
