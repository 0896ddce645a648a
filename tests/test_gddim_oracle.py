"""The gDDIM oracles: the CLD posterior score and the BDM denoiser against finite differences of log p_t, and
the ε-targets' defining identities."""
import pytest
import torch

from gmm_triton.gddim.cld import CLD
from gmm_triton.lab.oracle import BlurMixtureDenoiser, CLDMixtureDenoiser, GaussianMixture


def fd_grad(log_prob, x, h=1e-6):
    flat = x.reshape(x.shape[0], -1)
    g = torch.zeros_like(flat)
    for j in range(flat.shape[1]):
        e = torch.zeros_like(flat)
        e[:, j] = h
        g[:, j] = (log_prob((flat + e).reshape(x.shape)) - log_prob((flat - e).reshape(x.shape))) / (2 * h)
    return g.reshape(x.shape)


@pytest.mark.parametrize("diagonal", [False, True], ids=["isotropic", "diagonal"])
@pytest.mark.parametrize("t", [1e-3, 0.05, 0.5, 1.0])
def test_cld_score_is_the_gradient_of_log_p(diagonal, t):
    data = GaussianMixture.random(5, (1, 2, 3), std=0.3, diagonal=diagonal, dtype=torch.float64)
    model = CLDMixtureDenoiser(data)
    u = model.marginal_sample(data, 3, t, generator=torch.Generator().manual_seed(1))
    score = model.score(u, t)
    fd = fd_grad(lambda v: model.log_prob(v, t), u)
    assert (fd - score).abs().max() < 1e-6 * (1 + score.abs().max())


def test_cld_eps_targets_under_R_and_L():
    """ε_K = −K_tᵀ ∇log p_t: the two parameterisations differ by ε_L = L⁻¹ R ε_R, and E[ε_K(u_t)] = 0 over exact
    marginal samples (E ∇log p_t = 0), within 5 standard errors."""
    data = GaussianMixture.random(4, 6, std=0.2, dtype=torch.float64)
    p = CLD()
    mr, ml = CLDMixtureDenoiser(data, p, "R"), CLDMixtureDenoiser(data, p, "L")
    t = 0.3
    u = mr.marginal_sample(data, 20000, t, generator=torch.Generator().manual_seed(0))
    er, el = mr(u, t), ml(u, t)
    assert torch.allclose(el, torch.einsum("ij,bjd->bid", torch.linalg.inv(p.L(t)) @ p.R(t), er), atol=1e-10)
    n = u.shape[0]
    assert (er.mean(0).abs() <= 5 * er.std(0) / n**0.5).all()


@pytest.mark.parametrize("t", [1e-5, 0.3, 0.99])
def test_blur_eps_is_the_scaled_gradient_of_log_p(t):
    """ε = −σ_t ∇_x log p_t(x) (pixel space; the orthonormal DCT keeps densities)."""
    data = GaussianMixture.random(5, (2, 3, 3), std=0.3, dtype=torch.float64)
    model = BlurMixtureDenoiser(data)
    x = model.process.marginal_sample(data.sample(3, generator=torch.Generator().manual_seed(2)), t,
                                      generator=torch.Generator().manual_seed(3))
    score = -model(x, t) / float(model.process.sigma(t))
    fd = fd_grad(lambda v: model.log_prob(v, t), x)
    assert (fd - score).abs().max() < 1e-6 * (1 + score.abs().max())


def test_oracle_bad_inputs():
    data = GaussianMixture.random(3, (1, 4, 4), std=0.3, diagonal=True)
    with pytest.raises(ValueError, match="isotropic"):
        BlurMixtureDenoiser(data)
    with pytest.raises(ValueError, match="parameterization"):
        CLDMixtureDenoiser(data, parameterization="Q")
    with pytest.raises(ValueError, match=r"\[B, 2, \.\.\.\]"):
        CLDMixtureDenoiser(data)(torch.zeros(2, 3, 16), 0.5)
