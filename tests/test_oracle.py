"""The exact mixture denoiser (gmm_triton.lab.oracle) against independent float64 statements of the maths."""
import math

import pytest
import torch

from gmm_triton.lab.oracle import GaussianMixture, MixtureDenoiser, default_alphas_cumprod, digits_mixture

diffusers = pytest.importorskip("diffusers")

VP_TIMESTEPS = (0, 1, 50, 250, 500, 999)


def alphas_cumprod():
    return diffusers.DDIMScheduler().alphas_cumprod


def small_mixture(diagonal, seed=0, dtype=torch.float64):
    return GaussianMixture.random(5, (2, 3), std=0.3, diagonal=diagonal, seed=seed, dtype=dtype)


# -- naive references: explicit [n, K, D] tensors, no expansion into matmuls ----------------------------------------
def naive_logits(data, x, a, s):
    x = x.reshape(len(x), -1).double()
    mu = data.means.double()
    var = data.variances.double().expand_as(mu)
    v = a * a * var + s * s
    diff = x[:, None, :] - a * mu
    return data.weights.double().log() - 0.5 * ((diff ** 2 / v).sum(-1) + torch.log(2 * math.pi * v).sum(-1))


def naive_log_pt(data, x, a, s):
    return torch.logsumexp(naive_logits(data, x, a, s), dim=1)


def naive_posterior_mean(data, x, a, s):
    x = x.reshape(len(x), -1).double()
    mu = data.means.double()
    var = data.variances.double().expand_as(mu)
    w = torch.softmax(naive_logits(data, x, a, s), dim=1)
    per_component = mu + a * var / (a * a * var + s * s) * (x[:, None, :] - a * mu)
    return (w[..., None] * per_component).sum(1)


def noised(data, n, a, s, seed):
    g = torch.Generator().manual_seed(seed)
    x0 = data.sample(n, generator=g)
    return a * x0 + s * torch.randn(x0.shape, generator=g, dtype=x0.dtype)


def vp_coefficients(t):
    ac = alphas_cumprod()[t].double()
    return float(ac.sqrt()), float((1 - ac).sqrt())


# -- GaussianMixture -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, match", [
    (dict(weights=[0.5, 0.6, -0.1]), "weights"),
    (dict(weights=[0.5, 0.2, 0.2]), "weights"),
    (dict(stds=torch.ones(2)), "stds"),
    (dict(stds=torch.zeros(3)), "stds"),
    (dict(shape=(2, 3)), "shape"),
    (dict(labels=torch.zeros(3)), "labels"),
])
def test_mixture_validation(kwargs, match):
    args = dict(means=torch.zeros(3, 4), stds=torch.ones(3)) | kwargs
    with pytest.raises(ValueError, match=match):
        GaussianMixture(**args)


@pytest.mark.parametrize("diagonal", [False, True])
def test_mixture_moments_density_and_sampling(diagonal):
    data = GaussianMixture.random(6, 5, std=0.4, diagonal=diagonal, num_modes=3, seed=1, dtype=torch.float64)
    pi, mu = data.weights, data.means
    var = data.variances.expand_as(mu)
    m = pi @ mu
    cov = sum(pi[k] * (torch.diag(var[k]) + torch.outer(mu[k], mu[k])) for k in range(6)) - torch.outer(m, m)
    torch.testing.assert_close(data.mean(), m, rtol=0, atol=1e-12)
    torch.testing.assert_close(data.covariance(), cov, rtol=0, atol=1e-12)
    assert data.num_modes == 3
    torch.testing.assert_close(data.mode_weights(), torch.stack([pi[k::3].sum() for k in range(3)]))

    x = noised(data, 50, 0.7, 0.5, seed=2)
    for a, s in [(1.0, 0.0), (0.7, 0.5), (0.0, 1.0)]:
        torch.testing.assert_close(data.log_prob(x, a, s, chunk_size=7), naive_log_pt(data, x, a, s),
                                   rtol=1e-12, atol=1e-10)
    post = data.component_log_posterior(x, 0.7, 0.5)
    torch.testing.assert_close(post.exp().sum(1), torch.ones(50, dtype=torch.float64))
    assert torch.equal(data.assign(x, 0.7, 0.5, chunk_size=7), post.argmax(1))

    # Exact sampling: each coordinate's sample mean lies within 5 standard errors of m (σ_d/√n), and the
    # component frequencies within 5 binomial standard errors of π.
    n = 20000
    x, k = data.sample(n, generator=torch.Generator().manual_seed(3), return_components=True)
    assert x.shape == (n, 5) and k.shape == (n,)
    assert ((x.mean(0) - m).abs() <= 5 * cov.diagonal().sqrt() / math.sqrt(n)).all()
    freq = torch.bincount(k, minlength=6).double() / n
    assert ((freq - pi).abs() <= 5 * (pi * (1 - pi) / n).sqrt()).all()


def test_digits_mixture():
    from sklearn.datasets import load_digits

    data = digits_mixture(size=8, std=0.1)
    assert data.shape == (1, 8, 8) and data.means.shape == (1797, 64) and data.isotropic
    assert data.means.min() >= -1 and data.means.max() <= 1 and data.num_modes == 10
    target = torch.as_tensor(load_digits().target)
    assert torch.equal(data.labels, target)
    torch.testing.assert_close(data.mode_weights(), torch.bincount(target).double() / 1797)
    # size 8 is the identity resize: the means are the raw images scaled by 1/8 - 1
    torch.testing.assert_close(data.means[0], torch.as_tensor(load_digits().images[0]).flatten().float() / 8 - 1)
    assert digits_mixture(size=12).means.shape == (1797, 144)

    model = MixtureDenoiser(data, prediction_type="sample")
    x = data.sample(64, generator=torch.Generator().manual_seed(0))
    a, s = model.coefficients(0)
    x0 = model(a * x + s * torch.randn_like(x), 0).sample
    # at t = 0 (s = 0.01, c = 0.1) the posterior mean sits within ~1% of the noisy input; it must be finite
    # and recover the clean images to within the added noise (‖s ε‖ ≈ 0.08 for D = 64)
    assert torch.isfinite(x0).all() and (x0 - x).flatten(1).norm(dim=1).max() < 0.2
    assert torch.isfinite(model(torch.randn(64, 1, 8, 8), 999).sample).all()


# -- the denoiser ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("diagonal", [False, True])
def test_epsilon_is_minus_s_times_finite_difference_score(diagonal):
    data = small_mixture(diagonal)
    model = MixtureDenoiser(data, alphas_cumprod(), dtype=torch.float64)
    h = 1e-5
    for t in VP_TIMESTEPS:
        a, s = vp_coefficients(t)
        x = noised(data, 8, a, s, seed=t).reshape(8, -1)
        e = torch.eye(6, dtype=torch.float64) * h
        plus = naive_log_pt(data, (x[:, None] + e).reshape(-1, 6), a, s).reshape(8, 6)
        minus = naive_log_pt(data, (x[:, None] - e).reshape(-1, 6), a, s).reshape(8, 6)
        score = (plus - minus) / (2 * h)
        eps = model(x.reshape(8, 2, 3), t).sample.reshape(8, -1)
        # central differences in float64: truncation O(h² ∂³log p) plus rounding O(1e-16 |log p| / h), ≈ 1e-10 here
        torch.testing.assert_close(eps, -s * score, rtol=1e-7, atol=1e-8, msg=f"t={t}")


@pytest.mark.parametrize("diagonal", [False, True])
def test_prediction_types_are_consistent(diagonal):
    data = small_mixture(diagonal, seed=4)
    models = {p: MixtureDenoiser(data, alphas_cumprod(), prediction_type=p, dtype=torch.float64)
              for p in ("epsilon", "sample", "v_prediction")}
    for t in VP_TIMESTEPS:
        a, s = vp_coefficients(t)
        x = noised(data, 32, a, s, seed=t)
        eps, x0, v = (models[p](x, t).sample for p in ("epsilon", "sample", "v_prediction"))
        torch.testing.assert_close(x0.reshape(32, -1), naive_posterior_mean(data, x, a, s), rtol=1e-9, atol=1e-10)
        torch.testing.assert_close(a * x0 + s * eps, x, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(v, a * eps - s * x0, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(a * x - s * v, x0, rtol=1e-9, atol=1e-10)      # a² + s² = 1 (VP)


@pytest.mark.parametrize("diagonal", [False, True])
def test_flow_schedule(diagonal):
    data = small_mixture(diagonal, seed=5)
    flow = MixtureDenoiser(data, schedule="flow", dtype=torch.float64)
    eps_model = MixtureDenoiser(data, schedule="flow", prediction_type="epsilon", dtype=torch.float64)
    assert flow.prediction_type == "flow"
    for timestep in (1.0, 250.0, 500.5, 999.0):
        t = timestep / 1000
        x = noised(data, 32, 1 - t, t, seed=int(timestep))
        u = flow(x, timestep).sample
        # x0 = x − t u and ε = x + (1 − t) u (x1 = ε), against the VP-style formula with a = 1 − t, s = t
        torch.testing.assert_close((x - t * u).reshape(32, -1), naive_posterior_mean(data, x, 1 - t, t),
                                   rtol=1e-9, atol=1e-10)
        torch.testing.assert_close(x + (1 - t) * u, eps_model(x, timestep).sample, rtol=1e-9, atol=1e-10)
    # the end points: t = 0 gives E[x1 − x0 | x0 = x] = −x, t = 1 (zero SNR) gives x − E[x0]
    x = noised(data, 32, 1.0, 0.0, seed=6)
    torch.testing.assert_close(flow(x, 0).sample, -x, rtol=0, atol=1e-12)
    torch.testing.assert_close(flow(x, 1000).sample, x - data.mean().reshape(2, 3), rtol=0, atol=1e-12)


def test_finite_and_float32_accurate_at_every_timestep():
    data = small_mixture(diagonal=True, seed=7, dtype=torch.float32)
    t = torch.arange(1000)
    a, s = MixtureDenoiser(data, alphas_cumprod()).coefficients(t)
    x = noised(data, 1000, a[:, None, None], s[:, None, None], seed=8)
    for p in ("epsilon", "sample", "v_prediction"):
        out32 = MixtureDenoiser(data, alphas_cumprod(), prediction_type=p)(x, t).sample
        out64 = MixtureDenoiser(data, alphas_cumprod(), prediction_type=p, dtype=torch.float64)(x.double(), t).sample
        assert out32.dtype == torch.float32 and torch.isfinite(out32).all()
        torch.testing.assert_close(out32.double(), out64, rtol=1e-4, atol=1e-4)  # observed ≈ 1e-6
    # a zero-SNR table (ᾱ_T = 0): x̂0 is the data mean, ε̂ = x
    ac = alphas_cumprod().clone()
    ac[-1] = 0.0
    x0, eps = MixtureDenoiser(data, ac).posterior(x[:4], 999)
    torch.testing.assert_close(x0, data.mean().float().reshape(2, 3).expand(4, 2, 3))
    torch.testing.assert_close(eps, x[:4])


def test_tower_property_with_per_sample_timesteps():
    # E[E[x0 | x_t]] = E[x0] = m and E[E[ε | x_t]] = 0. The Monte-Carlo mean of n posterior means has standard error
    # std/√n per coordinate; allow 5 standard errors (two-sided tail ≈ 6e-7 per coordinate).
    data = GaussianMixture.random(6, 8, std=0.3, diagonal=True, seed=9, dtype=torch.float64)
    model = MixtureDenoiser(data, alphas_cumprod(), dtype=torch.float64)
    n = 20000
    g = torch.Generator().manual_seed(10)
    t = torch.tensor([10, 300, 600, 900])[torch.randint(0, 4, (n,), generator=g)]
    a, s = model.coefficients(t)
    x = a[:, None] * data.sample(n, generator=g) + s[:, None] * torch.randn(n, 8, generator=g, dtype=torch.float64)
    x0, eps = model.posterior(x, t)
    for est, target in ((x0, data.mean()), (eps, torch.zeros(8, dtype=torch.float64))):
        se = est.std(0) / math.sqrt(n)
        assert ((est.mean(0) - target).abs() <= 5 * se).all(), (est.mean(0) - target) / se


def test_chunking_and_per_sample_timesteps():
    data = GaussianMixture.random(7, 10, std=0.3, diagonal=True, seed=11, dtype=torch.float64)
    x = noised(data, 40, 0.8, 0.6, seed=12)
    t = torch.tensor([5, 700, 5, 300] * 10)
    out = MixtureDenoiser(data, alphas_cumprod(), dtype=torch.float64)(x, t).sample
    chunked = MixtureDenoiser(data, alphas_cumprod(), dtype=torch.float64, chunk_size=3)(x, t).sample
    torch.testing.assert_close(chunked, out, rtol=1e-13, atol=1e-13)
    model = MixtureDenoiser(data, alphas_cumprod(), dtype=torch.float64)
    one_by_one = torch.cat([model(x[i:i + 1], int(t[i])).sample for i in range(40)])
    torch.testing.assert_close(one_by_one, out, rtol=1e-13, atol=1e-13)
    # a scalar, a 0-d tensor, a [1] tensor and a python float give the same result as a [B] tensor
    full = model(x, torch.full((40,), 300)).sample
    for t_scalar in (300, torch.tensor(300), torch.tensor([300]), 300.0):
        torch.testing.assert_close(model(x, t_scalar).sample, full, rtol=0, atol=0)
    with pytest.raises(ValueError, match="integer"):
        model(x, 300.5)
    with pytest.raises(ValueError, match="timestep"):
        model(x, torch.zeros(3, dtype=torch.long))


def test_diffusers_interface_and_ddim_loop():
    from gmm_triton.lab.metrics import mode_metrics

    data = GaussianMixture.random(8, (1, 4, 4), std=0.2, num_modes=4, seed=13)
    for prediction_type in ("epsilon", "v_prediction"):
        scheduler = diffusers.DDIMScheduler(prediction_type=prediction_type, clip_sample=False)
        model = MixtureDenoiser(data, scheduler.alphas_cumprod, prediction_type=prediction_type)
        assert model.dtype == torch.float32 and model.device.type == "cpu"
        assert (model.config.sample_size, model.config.in_channels) == (4, 1)
        scheduler.set_timesteps(20)
        x = torch.randn(512, 1, 4, 4, generator=torch.Generator().manual_seed(14))
        for t in scheduler.timesteps:
            out = model(x, t, encoder_hidden_states=None, cross_attention_kwargs={}).sample
            x = scheduler.step(out, t, x).prev_sample
        assert torch.isfinite(x).all()
        # an exact denoiser with 20 deterministic steps lands on the data: every mode hit, nearly all samples
        # inside the 99% ball of a component (DDIM slightly contracts towards the means, raising this)
        metrics = mode_metrics(x, data)
        assert metrics["coverage"] == 1.0 and metrics["precision"] > 0.9, metrics

    out = model(x.to(torch.bfloat16), 10, return_dict=False)
    assert isinstance(out, tuple) and out[0].dtype == torch.bfloat16 and out[0].shape == x.shape


def test_flow_match_euler_loop():
    data = GaussianMixture.random(8, 16, std=0.2, seed=15)
    scheduler = diffusers.FlowMatchEulerDiscreteScheduler()
    scheduler.set_timesteps(20)
    model = MixtureDenoiser(data, schedule="flow")
    x = torch.randn(512, 16, generator=torch.Generator().manual_seed(16))
    for t in scheduler.timesteps:
        x = scheduler.step(model(x, t).sample, t, x).prev_sample
    assert torch.isfinite(x).all()
    # 20 Euler steps of the exact velocity end near the data: the mean log-density per dimension is far above that
    # of the initial noise under p0
    start = data.log_prob(torch.randn(512, 16, generator=torch.Generator().manual_seed(16))).mean() / 16
    assert data.log_prob(x).mean() / 16 > start + 1.0


def test_default_alphas_cumprod_matches_diffusers():
    torch.testing.assert_close(default_alphas_cumprod(), alphas_cumprod().double(), rtol=1e-5, atol=1e-6)
