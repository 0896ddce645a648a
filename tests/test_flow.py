"""GMMFlowMatchScheduler (RFIM / RFIM-GMM): diffusers parity, the kernel's law, an oracle sampling loop, config, errors.

Parity is differential against the pip-installed FlowMatchEulerDiscreteScheduler at η = 0 (Gaussian kernel), where
RFIM is its Euler step x_s = x + (s − t) v. Per step, fed the same inputs,
    |ours − diffusers|∞ ≤ 1e-5 (1 + |x|∞ + |v|∞):
both round in fp32, ours as (1 − s)(x − t v) + s (x + (1 − t) v), diffusers as x + (s − t) v, so their difference is a
few ulps of the operands' magnitude, not of the (possibly tiny) result; a bare 1e-5 would fail on large latents for
no fault of either. Ours is also checked against the float64 truth.
"""
import math

import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from gmm_triton import GMMFlowMatchScheduler
from gmm_triton.lab.oracle import GaussianMixture, MixtureDenoiser
from gmm_triton.schedulers import flow

SHAPE = (2, 4, 8, 8)

CONFIGS = [  # (scheduler config, set_timesteps kwargs)
    (dict(shift=1.0), {}),
    (dict(shift=3.0), {}),
    (dict(use_dynamic_shifting=True), dict(mu=0.8)),
    (dict(use_dynamic_shifting=True, time_shift_type="linear"), dict(mu=1.5)),
    (dict(shift=3.0, use_karras_sigmas=True), {}),
    (dict(shift=3.0, use_exponential_sigmas=True), {}),
    (dict(use_beta_sigmas=True), {}),
    (dict(shift=3.0, shift_terminal=0.1), {}),
]


def _pair(cfg, n, stkw, **ours):
    d, o = FlowMatchEulerDiscreteScheduler(**cfg), GMMFlowMatchScheduler(**cfg, **ours)
    for s in (d, o):
        s.set_timesteps(n, **stkw)
    assert torch.equal(d.sigmas, o.sigmas) and torch.equal(d.timesteps, o.timesteps)
    return d, o


def _euler64(sched, x, v):
    """The float64 truth of the step the scheduler has just taken."""
    i = sched.step_index - 1
    t, s = sched.sigmas[i].double(), sched.sigmas[i + 1].double()
    return x.double() + (s - t) * v.double()


# ---------------------------------------------------------------------------------------------------
# diffusers parity (η = 0, Gaussian kernel)
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("begin", [False, True], ids=["search", "begin_index"])
@pytest.mark.parametrize("n", [1, 4, 28])
@pytest.mark.parametrize("case", range(len(CONFIGS)), ids=[f"c{i}" for i in range(len(CONFIGS))])
def test_euler_parity_over_configs(case, n, begin):
    cfg, stkw = CONFIGS[case]
    if n == 1 and cfg.get("shift_terminal"):
        pytest.skip("diffusers' shift_terminal divides by 1 - sigma_0 = 0 for one step (NaN sigmas)")
    d, o = _pair(cfg, n, stkw)
    if begin:
        d.set_begin_index(0)
        o.set_begin_index(0)
    g = torch.Generator().manual_seed(case * 100 + n)
    x = 2 * torch.randn(SHAPE, generator=g)
    for t in d.timesteps:  # the scheduler's own 0-d tensor entries
        v = 1.5 * torch.randn(SHAPE, generator=g) + 0.5 * x
        scale = 1 + x.abs().max().item() + v.abs().max().item()
        xd = d.step(v, t, x).prev_sample
        xo = o.step(v, t, x).prev_sample
        assert o.step_index == d.step_index and o.begin_index == d.begin_index
        assert xo.dtype == xd.dtype == torch.float32
        assert (xo - xd).abs().max().item() <= 1e-5 * scale
        assert (xo.double() - _euler64(d, x, v)).abs().max().item() <= 1e-6 * scale
        x = xd
    assert o.step_index == n


@pytest.mark.parametrize("begin", [3, 5])
def test_begin_index_midway_and_host_timesteps(begin):
    """img2img: the loop starts at timesteps[begin:], with python-float timesteps (what some pipelines pass)."""
    d, o = _pair(dict(shift=3.0), 8, {})
    d.set_begin_index(begin)
    o.set_begin_index(begin)
    x = torch.randn(SHAPE)
    for t in d.timesteps[begin:].tolist():
        v = torch.randn(SHAPE)
        xd, xo = d.step(v, t, x).prev_sample, o.step(v, t, x, return_dict=False)[0]
        assert o.step_index == d.step_index and (xo - xd).abs().max() <= 1e-5 * (1 + x.abs().max() + v.abs().max())
        x = xd
    assert o.step_index == 8


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_low_precision_dtypes_follow_diffusers(dtype):
    """Same output dtype as diffusers; error to the float64 truth within 2× diffusers' own (rounded once, not twice)."""
    d, o = _pair(dict(shift=3.0), 6, {})
    x = torch.randn(SHAPE).to(dtype)
    for t in d.timesteps:
        v = torch.randn(SHAPE).to(dtype)
        xd, xo = d.step(v, t, x).prev_sample, o.step(v, t, x).prev_sample
        truth = _euler64(d, x, v)
        assert xo.dtype == xd.dtype == dtype
        ed, eo = (xd.double() - truth).abs().max().item(), (xo.double() - truth).abs().max().item()
        assert eo <= 2 * ed + 1e-6
        x = xd
    # mixed: a float32 latent with a half-precision prediction returns the prediction's dtype, as diffusers does
    d, o = _pair(dict(shift=3.0), 2, {})
    x, v = torch.randn(SHAPE), torch.randn(SHAPE).to(dtype)
    xd, xo = d.step(v, d.timesteps[0], x).prev_sample, o.step(v, o.timesteps[0], x).prev_sample
    assert xo.dtype == xd.dtype == dtype
    assert torch.allclose(xo.float(), xd.float(), rtol=1e-2, atol=1e-2)


def test_stochastic_sampling_is_rfim_eta_one():
    """diffusers' stochastic_sampling, x_s = (1 − s) x̂₀ + s z, is RFIM at η = 1: same samples with torch noise."""
    d = FlowMatchEulerDiscreteScheduler(shift=3.0, stochastic_sampling=True)
    ours = [GMMFlowMatchScheduler(shift=3.0, stochastic_sampling=True, noise_source="torch"),
            GMMFlowMatchScheduler(shift=3.0, eta=1.0, noise_source="torch")]
    for s in (d, *ours):
        s.set_timesteps(5)
    assert all(o.effective_eta == 1.0 for o in ours)
    x = torch.randn(SHAPE)
    for i, t in enumerate(d.timesteps):
        v = torch.randn(SHAPE)
        xd = d.step(v, t, x, generator=torch.Generator().manual_seed(i)).prev_sample
        for o in ours:
            xo = o.step(v, t, x, generator=torch.Generator().manual_seed(i)).prev_sample
            assert (xo - xd).abs().max() <= 1e-5 * (1 + x.abs().max() + v.abs().max())
        x = xd


def test_philox_noise_is_seeded_and_eta_zero_leaves_the_generator_alone():
    o = GMMFlowMatchScheduler(eta=0.5)
    x, v = torch.randn(SHAPE), torch.randn(SHAPE)

    def one(seed):
        o.set_timesteps(4)
        return o.step(v, o.timesteps[0], x, generator=torch.Generator().manual_seed(seed)).prev_sample

    assert torch.equal(one(1), one(1)) and not torch.equal(one(1), one(2))
    det = GMMFlowMatchScheduler()
    det.set_timesteps(4)
    g = torch.Generator().manual_seed(3)
    state = g.get_state()
    det.step(v, det.timesteps[0], x, generator=g)
    assert torch.equal(g.get_state(), state)  # as diffusers: the Euler step draws nothing


def test_fallbacks_to_diffusers_step():
    # per_token_timesteps: diffusers' own step (float32 output, as diffusers returns it)
    d, o = _pair(dict(shift=3.0), 4, {})
    x, v = torch.randn(2, 6, 3).half(), torch.randn(2, 6, 3).half()
    ptt = d.timesteps[1] * torch.linspace(0.5, 1.0, 6).expand(2, 6)
    rd = d.step(v, d.timesteps[1], x, per_token_timesteps=ptt).prev_sample
    ro = o.step(v, o.timesteps[1], x, per_token_timesteps=ptt).prev_sample
    assert torch.equal(rd, ro) and ro.dtype == torch.float32 and o.step_index == d.step_index
    gm = GMMFlowMatchScheduler(kernel="gmm")
    gm.set_timesteps(4)
    with pytest.raises(NotImplementedError, match="per_token_timesteps"):
        gm.step(v, gm.timesteps[0], x, per_token_timesteps=ptt)
    # invert_sigmas (Mochi): diffusers' step with the Gaussian kernel at η = 0, rejected otherwise
    d, o = _pair(dict(invert_sigmas=True), 4, {})
    x = torch.randn(SHAPE)
    for t in d.timesteps:
        v = torch.randn(SHAPE)
        xd, xo = d.step(v, t, x).prev_sample, o.step(v, t, x).prev_sample
        assert torch.equal(xd, xo)
        x = xd
    for bad in (dict(kernel="gmm"), dict(eta=0.2)):
        with pytest.raises(ValueError, match="invert_sigmas"):
            GMMFlowMatchScheduler(invert_sigmas=True, **bad)


def test_public_attributes_match_diffusers():
    d, o = _pair(dict(shift=3.0), 10, {})
    assert isinstance(o, FlowMatchEulerDiscreteScheduler) and flow.SchedulerMixin is not None
    assert o.order == d.order == 1 and len(o) == len(d) and o.shift == d.shift and o.init_noise_sigma == 1.0
    assert o.sigma_min == d.sigma_min and o.sigma_max == d.sigma_max
    x, z = torch.randn(SHAPE), torch.randn(SHAPE)
    ts = d.timesteps[[2, 5]]
    assert torch.equal(d.scale_noise(x, ts, z), o.scale_noise(x, ts, z))
    for s in (d, o):
        s.set_begin_index(4)
    assert torch.equal(d.scale_noise(x, ts[:1], z), o.scale_noise(x, ts[:1], z))


# ---------------------------------------------------------------------------------------------------
# the law of one step: many independent draws (each sample has its own noise counters and component)
# ---------------------------------------------------------------------------------------------------
N_MC, D = 40_000, 64


def _draws(eta, row, **kw):
    o = GMMFlowMatchScheduler(eta=eta, **kw)
    o.set_timesteps(10)
    o.set_begin_index(row)
    g = torch.Generator().manual_seed(5)
    x, v = torch.randn(1, D, generator=g), torch.randn(1, D, generator=g)
    out = o.step(v.expand(N_MC, D), o.timesteps[row], x.expand(N_MC, D),
                 generator=torch.Generator().manual_seed(7)).prev_sample
    t, s = o.sigmas[row].double(), o.sigmas[row + 1].double()
    sigma2 = (eta * s) ** 2
    x0, x1 = x[0].double() - t * v[0].double(), x[0].double() + (1 - t) * v[0].double()
    mean = (1 - s) * x0 + torch.sqrt(s * s - sigma2) * x1  # RFIM's mean, paper Eq. 20
    return out.double(), mean, float(sigma2)


def _check_moments(out, mean, sigma2):
    se = out.std(0) / math.sqrt(N_MC)
    assert ((out.mean(0) - mean).abs() / se).max() < 4.5  # 64 dims: P(any > 4.5 SE) ≈ 4e-4
    # sample-variance SE ≈ σ² √(2/N) for a (near-)Gaussian law
    assert ((out.var(0) - sigma2).abs() / (sigma2 * math.sqrt(2 / N_MC))).max() < 5


@pytest.mark.parametrize("noise_source", ["philox", "torch"])
@pytest.mark.parametrize("eta", [0.5, 1.0])
def test_gaussian_kernel_moments(eta, noise_source):
    _check_moments(*_draws(eta, row=3, noise_source=noise_source))


@pytest.mark.parametrize("offsets", ["ortho", "rand"])
def test_gmm_diag_kernel_moments(offsets):
    """Uniform priors, "diag" (Eq. 11): per-dimension variance is the Gaussian kernel's σ² = (η s)² when nothing
    clips, i.e. s_gmm²/K < σ² (the largest diagonal entry of C is at most its top eigenvalue s_gmm²/K)."""
    o = GMMFlowMatchScheduler()
    o.set_timesteps(10)
    eta, row, K = 0.6, 3, 4
    sigma2 = (eta * float(o.sigmas[row + 1])) ** 2
    scale = 0.8 * math.sqrt(K * sigma2)
    out, mean, s2 = _draws(eta, row, kernel="gmm", gmm_components=K, gmm_scale=scale, gmm_variance="diag",
                           gmm_offsets=offsets)
    assert s2 == pytest.approx(sigma2)
    _check_moments(out, mean, sigma2)


# ---------------------------------------------------------------------------------------------------
# sampling the oracle: RFIM and RFIM-GMM on exact Gaussian-mixture data
# ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def oracle():
    data = GaussianMixture.random(4, (1, 4, 4), std=0.2, seed=0)
    return data, MixtureDenoiser(data, schedule="flow")


def _sample(model, n=12, batch=64, **kw):
    s = GMMFlowMatchScheduler(shift=3.0, **kw)
    s.set_timesteps(n)
    s.set_begin_index(0)
    x = torch.randn(batch, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(1)
    for t in s.timesteps:
        x = s.step(model(x, t).sample, t, x, generator=g).prev_sample
    return x


def test_oracle_sampling_rfim_and_rfim_gmm(oracle):
    data, model = oracle
    rfim = _sample(model)
    rfim_sde = _sample(model, eta=0.5)
    gmm = _sample(model, kernel="gmm", gmm_scale=1.0, gmm_components=4, gmm_variance="vub", gmm_clip_variance=True)
    gmm_eta = _sample(model, kernel="gmm", eta=0.5, gmm_scale=0.5, gmm_components=4, gmm_variance="diag")
    zero = _sample(model, kernel="gmm", gmm_scale=0.0, gmm_components=4)
    for x in (rfim, rfim_sde, gmm, gmm_eta, zero):
        assert torch.isfinite(x).all()
    assert not torch.allclose(gmm, rfim, atol=1e-3)  # η = 0, yet the offsets act
    assert torch.equal(zero, rfim)                   # zero offsets: exactly RFIM
    # the deterministic sampler of the exact denoiser lands on the data: every sample is likely under p0
    nll = -data.log_prob(rfim.reshape(len(rfim), -1)) / data.dim
    assert nll.max() < 2.0


# ---------------------------------------------------------------------------------------------------
# config: save / load, from_config, mixture cache
# ---------------------------------------------------------------------------------------------------
def _strip(c):
    return {k: v for k, v in c.items() if k != "_use_default_values"}


def test_save_load_round_trip(tmp_path):
    o = GMMFlowMatchScheduler(shift=3.0, kernel="gmm", eta=0.3, noise_source="torch", gmm_scale=2.0,
                              gmm_variance="vub", gmm_clip_variance=True, gmm_priors=[0.5, 0.5], gmm_components=2)
    o.save_pretrained(tmp_path)
    r = GMMFlowMatchScheduler.from_pretrained(tmp_path)
    assert type(r) is GMMFlowMatchScheduler and _strip(r.config) == _strip(o.config)


@pytest.mark.parametrize("cfg", [dict(shift=3.0),  # SD3
                                 dict(use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                      base_image_seq_len=256, max_image_seq_len=4096)])  # Flux
def test_from_config_of_flow_match_euler(cfg):
    src = FlowMatchEulerDiscreteScheduler(**cfg)
    o = GMMFlowMatchScheduler.from_config(src.config)
    for k, v in _strip(src.config).items():
        assert o.config[k] == v, k
    assert o.config.kernel == "gaussian" and o.config.eta == 0.0 and o.config.noise_source == "philox"
    mu = 0.9 if cfg.get("use_dynamic_shifting") else None
    for s in (src, o):
        s.set_timesteps(20, mu=mu)
    assert torch.equal(src.sigmas, o.sigmas) and torch.equal(src.timesteps, o.timesteps)
    g = GMMFlowMatchScheduler.from_config(src.config, kernel="gmm", eta=0.2)
    assert g.config.kernel == "gmm" and g.config.eta == 0.2
    back = FlowMatchEulerDiscreteScheduler.from_config(g.config)  # the extra keys are ignored by diffusers
    assert type(back) is FlowMatchEulerDiscreteScheduler


@pytest.mark.parametrize("eta", [0.0, 0.5])
def test_generator_list_seeds_the_mixture(eta):
    """As for DDIM: the component seeds come from the list's generators, not torch's global RNG."""
    o = GMMFlowMatchScheduler(kernel="gmm", eta=eta, gmm_scale=0.5, gmm_components=4)

    def run(global_seed, seeds=(1, 2)):
        torch.manual_seed(global_seed)
        gens = [torch.Generator().manual_seed(k) for k in seeds]
        o.set_timesteps(4)
        x = torch.ones(2, 16)
        for t in o.timesteps:
            x = o.step(0.5 * x, t, x, generator=gens).prev_sample
        return x

    a = run(10)
    assert torch.equal(a, run(20))
    assert not torch.equal(a, run(10, seeds=(3, 2)))


def test_mixture_cache_per_shape_rebuilt_after_set_timesteps():
    o = GMMFlowMatchScheduler(kernel="gmm", gmm_components=4)
    o.set_timesteps(4)
    x = torch.randn(SHAPE)
    o.step(x, o.timesteps[0], x)
    (mix,) = o._mixture_cache.mixtures.values()
    assert mix.dim == x[0].numel() and mix.num_tables == 4
    o.step(x, o.timesteps[1], x)
    assert next(iter(o._mixture_cache.mixtures.values())) is mix
    o.step(x[:, :2], o.timesteps[2], x[:, :2])  # another latent size: its own mixture
    assert len(o._mixture_cache.mixtures) == 2
    o.set_timesteps(6)
    assert not o._mixture_cache.mixtures
    o.step(x, o.timesteps[0], x)
    assert next(iter(o._mixture_cache.mixtures.values())).num_tables == 6


# ---------------------------------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs,match", [
    (dict(kernel="mixture"), "kernel must be one of"),
    (dict(noise_source="numpy"), "noise_source must be one of"),
    (dict(gmm_variance="full"), "gmm_variance must be one of"),
    (dict(gmm_offsets="svd"), "gmm_offsets must be one of"),
    (dict(gmm_priors="skewed"), "gmm_priors must be one of"),
    (dict(gmm_dtype="float16"), "gmm_dtype must be one of"),
    (dict(gmm_components=0), "gmm_components"),
    (dict(gmm_scale=-1.0), "gmm_scale"),
    (dict(gmm_scale=float("inf")), "gmm_scale"),
    (dict(eta=-0.1), r"eta must be in \[0, 1\]"),
    (dict(eta=1.5), r"eta must be in \[0, 1\]"),
    (dict(eta=float("nan")), r"eta must be in \[0, 1\]"),
    (dict(stochastic_sampling=True, eta=0.5), "stochastic_sampling"),
])
def test_bad_config(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GMMFlowMatchScheduler(**kwargs)


def test_bad_step_calls():
    o = GMMFlowMatchScheduler()
    x = torch.randn(SHAPE)  # (a step before set_timesteps takes the default schedule: test_diffusers_accepts)
    o.set_timesteps(2)
    with pytest.raises(ValueError, match="integer indices"):
        o.step(x, 0, x)
    with pytest.raises(ValueError, match="integer indices"):
        o.step(x, torch.tensor(0), x)
    for t in o.timesteps:
        o.step(x, t, x)
    with pytest.raises(IndexError, match="past the last step"):
        o.step(x, o.timesteps[-1], x)
    with pytest.raises(ValueError, match="mu"):
        GMMFlowMatchScheduler(use_dynamic_shifting=True).set_timesteps(4)


def test_exact_variance_scale_too_large_names_the_step():
    eta, K, scale = 0.5, 4, 0.6
    o = GMMFlowMatchScheduler(kernel="gmm", gmm_variance="exact", gmm_components=K, gmm_scale=scale, eta=eta)
    o.set_timesteps(10)
    s_next = o.sigmas[1:-1].double().numpy()  # the mixture acts on every step but the last
    first_bad = int(np.argmax((eta * s_next) ** 2 < scale**2 / K))
    assert first_bad > 0
    x = torch.randn(SHAPE)
    with pytest.raises(ValueError, match=rf"too large for the 'exact' mixture variance at step {first_bad} "):
        o.step(x, o.timesteps[0], x)
    # η = 0 leaves no variance at all to absorb the offsets: step 0 already fails
    o0 = GMMFlowMatchScheduler(kernel="gmm", gmm_variance="exact", gmm_components=K, gmm_scale=scale)
    o0.set_timesteps(10)
    with pytest.raises(ValueError, match="at step 0 "):
        o0.step(x, o0.timesteps[0], x)
