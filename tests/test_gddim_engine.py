"""The gDDIM coefficient engine against independent statements of the same maths: scipy's expm and ODE solvers,
the note's reference value of R(1), the λ = 1 closed form, and the DCT of scipy.fft."""
import math

import numpy as np
import pytest
import scipy.fft
from scipy.integrate import solve_ivp
from scipy.linalg import expm

from gmm_triton.gddim import engine as E
from gmm_triton.gddim.blur import BlurProcess, dct_matrix
from gmm_triton.gddim.cld import CLD

PROCESSES = [CLD(), CLD(m_inv=2.0, beta=1.5, gamma=0.1), CLD(m_inv=9.0)]
IDS = ["defaults", "minv2-beta1.5", "minv9"]


def a(x):
    return np.asarray(x, dtype=np.float64)


def F_bar(p):
    return np.array([[0.0, p.m_inv], [-1.0, -p.Gamma * p.m_inv]])


@pytest.mark.parametrize("p", PROCESSES, ids=IDS)
def test_psi_matches_expm(p):
    for t, s in [(0.3, 0.0), (1.0, 0.2), (1e-3, 0.05), (0.2, 0.9)]:  # forward and backward transitions
        assert np.allclose(p.psi(t, s).numpy(), expm(p.beta * (t - s) * F_bar(p)), rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("p", PROCESSES, ids=IDS)
def test_sigma_matches_lyapunov_ode(p):
    F, GG = p.beta * F_bar(p), np.diag([0.0, 2 * p.Gamma * p.beta])
    ts = [1e-4, 1e-3, 0.05, 0.4, 1.0]

    def rhs(t, y):
        S = y.reshape(2, 2)
        return (F @ S + S @ F.T + GG).ravel()

    sol = solve_ivp(rhs, (0, 1), np.diag([p.var_x0, p.var_v0]).ravel(), method="DOP853", rtol=1e-12, atol=1e-16,
                    t_eval=ts)
    for k, t in enumerate(ts):
        ref = sol.y[:, k].reshape(2, 2)
        assert np.allclose(p.sigma(t).numpy(), ref, rtol=1e-9, atol=1e-14), t


@pytest.mark.parametrize("p", PROCESSES, ids=IDS)
def test_R_and_L_are_square_roots_of_sigma(p):
    ts = a([1e-6, 1e-3, 0.02, 0.3, 1.0, 2.0])
    S, R, L = p.sigma(ts).numpy(), p.R(ts).numpy(), p.L(ts).numpy()
    assert np.allclose(R @ np.swapaxes(R, -1, -2), S, rtol=1e-12, atol=1e-16)
    assert np.allclose(L @ np.swapaxes(L, -1, -2), S, rtol=1e-12, atol=1e-16)
    assert np.all(L[:, 0, 1] == 0) and np.all(L[:, 0, 0] > 0) and np.all(L[:, 1, 1] > 0)
    assert np.allclose(p.R(0.0).numpy(), np.diag(np.sqrt([p.var_x0, p.var_v0])), rtol=1e-12)  # R_0 = Σ_0^½


def test_R_solves_the_gddim_ode():
    """R_t = L_t Rot(θ_t) against a direct stiff solve of dR/dt = (F + ½ GGᵀ Σ⁻¹) R, R_0 = Σ_0^½."""
    p = CLD()
    F, GG = p.beta * F_bar(p), np.diag([0.0, 2 * p.Gamma * p.beta])
    A = lambda t: F + 0.5 * GG @ np.linalg.inv(p._sigma(t)[0])  # noqa: E731

    ts = [0.001, 0.05, 0.3, 1.0]
    R0 = np.diag(np.sqrt([p.var_x0, p.var_v0])).ravel()
    sol = solve_ivp(lambda t, y: (A(t) @ y.reshape(2, 2)).ravel(), (0, 1), R0, method="LSODA",
                    jac=lambda t, y: np.kron(A(t), np.eye(2)), rtol=1e-12, atol=1e-14, t_eval=ts)
    for k, t in enumerate(ts):
        assert np.allclose(p.R(t).numpy(), sol.y[:, k].reshape(2, 2), rtol=1e-7, atol=1e-8), t


def test_R_at_one_matches_the_reference_note():
    # other_seeds.md §A.7: R(1.0) ≈ [[0.99662, −0.082057], [0.041036, 0.49831]] for the code defaults
    ref = np.array([[0.99662, -0.082057], [0.041036, 0.49831]])
    assert np.abs(CLD().R(1.0).numpy() - ref).max() < 6e-6


@pytest.mark.parametrize("param", ["R", "L"])
@pytest.mark.parametrize("order", [0, 1, 2])
def test_multistep_weights_integrate_polynomial_eps_exactly(param, order):
    """Σ_j C_j ε(t_{i−j}) for ε polynomial of degree ≤ r in τ is the exact solution of the linear ODE
    u' = F u + ½ GGᵀ K⁻ᵀ ε(τ), u(t_i) = 0, at t_{i+1} (scipy, independent of the engine's Ψ and quadrature)."""
    p = CLD()
    rng = np.random.default_rng(order)
    coef = rng.normal(size=(order + 1, 2))                     # ε(τ) = Σ_k coef_k τ^k
    eps = lambda tau: sum(c * tau**k for k, c in enumerate(coef))  # noqa: E731
    F, GG = p.beta * F_bar(p), np.diag([0.0, 2 * p.Gamma * p.beta])
    for nodes, t_to in [((0.3, 0.45, 0.6), 0.2), ((0.004, 0.01, 0.02), 1e-3)]:
        nodes = nodes[::-1][: order + 1]                        # t_i, t_{i−1}, …
        w = E.exponential_weights(p, t_to, nodes[0], nodes, param)[:, 0]
        got = sum(w[j] @ eps(nodes[j]) for j in range(order + 1))
        sol = solve_ivp(lambda t, u: F @ u + 0.5 * GG @ np.linalg.inv(p._K(t, param)[0]).T @ eps(t), (nodes[0], t_to),
                        np.zeros(2), method="DOP853", rtol=1e-12, atol=1e-14)
        assert np.allclose(got, sol.y[:, -1], rtol=1e-7, atol=1e-9), (nodes, got, sol.y[:, -1])


def test_order0_R_weight_is_the_closed_form():
    p = CLD()
    for t, s in [(1e-3, 0.05), (0.5, 1.0), (0.2, 0.3)]:
        w = E.exponential_weights(p, t, s, [s], "R")[0, 0]
        exact = p.R(t).numpy() - p.psi(t, s).numpy() @ p.R(s).numpy()
        assert np.abs(w - exact).max() <= 1e-12 * (1 + np.abs(p.psi(t, s).numpy()).max())


def test_lambda_one_transition_is_the_forward_posterior():
    """At λ = 1, Ψ̂(t, s) = Σ_t Ψ(s, t)ᵀ Σ_s⁻¹ and P = Σ_t − Ψ̂ Σ_s Ψ̂ᵀ (the covariance of u_t given u_s)."""
    p = CLD()
    grid = E.time_grid(5, 1.0, 1e-3)
    c = E.gddim_coefficients(p, grid, 0, 1.0, "R")
    for i in range(5):
        t, s = grid[i + 1], grid[i]
        St, Ss, Rs = p.sigma(t).numpy(), p.sigma(s).numpy(), p.R(s).numpy()
        psi_hat = c.eps[i, 0, 0] @ np.linalg.inv(Rs) + c.psi[i, 0]
        closed = St @ p.psi(s, t).numpy().T @ np.linalg.inv(Ss)
        assert np.abs(psi_hat - closed).max() < 1e-8
        P = c.chol[i, 0] @ c.chol[i, 0].T
        assert np.allclose(P, St - closed @ Ss @ closed.T, atol=1e-9)


@pytest.mark.parametrize("lam", [0.3, 0.8])
def test_noise_covariance_solves_its_ode(lam):
    """P_st from dP/dτ = F̂P + PF̂ᵀ − λ²GGᵀ, F̂ = F + (1+λ²)/2 GGᵀΣ⁻¹, integrated from s down to t with P_ss = 0
    (the note's definition), against the engine's R_t(I − ΦΦᵀ)R_tᵀ."""
    p = CLD()
    F, GG = p.beta * F_bar(p), np.diag([0.0, 2 * p.Gamma * p.beta])
    grid = E.time_grid(4, 1.0, 1e-3)
    c = E.gddim_coefficients(p, grid, 0, lam, "R")

    Fh = lambda t: F + 0.5 * (1 + lam**2) * GG @ np.linalg.inv(p._sigma(t)[0])  # noqa: E731

    def rhs(t, y):
        P = y.reshape(2, 2)
        return (Fh(t) @ P + P @ Fh(t).T - lam**2 * GG).ravel()

    def jac(t, y):  # vec(F̂P + PF̂ᵀ) = (F̂ ⊗ I + I ⊗ F̂) vec(P), row-major
        return np.kron(Fh(t), np.eye(2)) + np.kron(np.eye(2), Fh(t))

    for i in range(4):
        sol = solve_ivp(rhs, (grid[i], grid[i + 1]), np.zeros(4), method="LSODA", jac=jac, rtol=1e-11, atol=1e-14)
        P = c.chol[i, 0] @ c.chol[i, 0].T
        assert np.allclose(P, sol.y[:, -1].reshape(2, 2), rtol=1e-6, atol=1e-9), i
        # and the marginal identity Σ_t = Ψ̂ Σ_s Ψ̂ᵀ + P that makes Gaussian data keep their marginals
        psi_hat = c.eps[i, 0, 0] @ np.linalg.inv(p.R(grid[i]).numpy()) + c.psi[i, 0]
        Ss, St = p.sigma(grid[i]).numpy(), p.sigma(grid[i + 1]).numpy()
        assert np.allclose(psi_hat @ Ss @ psi_hat.T + P, St, atol=1e-9)


# ---------------------------------------------------------------------------------------------------
# stochastic multistep (λ > 0, order r > 0)
# ---------------------------------------------------------------------------------------------------
def _step(c, i, u, eps_i, past):
    """psi u + eps[0] ε_i + Σ_j eps[j] h_{i-j} for one step of StepCoefficients (one class, 2-vectors)."""
    out = c.psi[i, 0] @ u + c.eps[i, 0, 0] @ eps_i
    return out + sum(c.eps[i, j, 0] @ h for j, h in enumerate(past, start=1))


@pytest.mark.parametrize("lam", [0.5, 1.0])
@pytest.mark.parametrize("order", [1, 2])
def test_stochastic_weights_integrate_a_polynomial_data_prediction_exactly(order, lam):
    """With x̂₀(τ) = Σ_k a_k τ^k of degree ≤ r (the augmented (x₀, v₀) per pair), the mean of a data-history step is the
    exact solution at t_{i+1} of u' = F̂ u − (1+λ²)/2 GGᵀ Σ⁻¹ Ψ(τ, 0) x̂₀(τ), F̂ = F + (1+λ²)/2 GGᵀ Σ⁻¹, from u(t_i)
    (scipy LSODA, independent of the engine's Φ, R and quadrature). The official raw-ε coefficients are the same
    weights D_ij times K_{t_i}: D_ij = −eps_data[i, j] Ψ(t_{i−j}, t_i) = eps_official[i, j] K_{t_i}⁻¹."""
    p = CLD()
    F, GG = p.beta * F_bar(p), np.diag([0.0, 2 * p.Gamma * p.beta])
    rng = np.random.default_rng(order)
    coef = rng.normal(size=(order + 1, 2))
    x0 = lambda tau: sum(c * tau**k for k, c in enumerate(coef))  # noqa: E731
    mean = lambda tau: p._psi(a([tau]), a([0.0]))[0, 0] @ x0(tau)  # noqa: E731
    k = 0.5 * (1 + lam**2)
    Fh = lambda t: F + k * GG @ np.linalg.inv(p._sigma(t)[0])  # noqa: E731
    grid = E.time_grid(8, 1.0, 1e-3)
    data = E.gddim_coefficients(p, grid, order, lam, "R", history="data")
    official = E.gddim_coefficients(p, grid, order, lam, "R", history="eps")
    assert np.all(data.orders == np.minimum(np.arange(8), order)) and official.history is None
    assert np.allclose(data.history[:, 0], p.R(grid[:-1]).numpy(), rtol=1e-12, atol=0)
    for i in (order, 4, 7):
        t_i, t_to = grid[i], grid[i + 1]
        u = rng.normal(size=2) * np.sqrt(np.diag(p._sigma(t_i)[0])) + mean(t_i)
        eps_i = np.linalg.solve(p._R(a([t_i]))[0, 0], u - mean(t_i))
        got = _step(data, i, u, eps_i, [mean(grid[i - j]) for j in range(1, order + 1)])
        sol = solve_ivp(lambda t, y: Fh(t) @ y - k * GG @ np.linalg.solve(p._sigma(t)[0], mean(t)), (t_i, t_to), u,
                        method="LSODA", jac=lambda t, y: Fh(t), rtol=1e-12, atol=1e-14)
        assert np.allclose(got, sol.y[:, -1], rtol=1e-7, atol=1e-9), (i, got, sol.y[:, -1])
        k_inv = np.linalg.inv(p._R(a([t_i]))[0, 0])
        for j in range(1, order + 1):
            d_j = -data.eps[i, j, 0] @ p._psi(a([grid[i - j]]), a([t_i]))[0, 0]
            assert np.allclose(d_j, official.eps[i, j, 0] @ k_inv, rtol=1e-9, atol=1e-12)
        assert np.allclose(official.psi[i], p._psi(a([t_to]), a([t_i]))[0], rtol=1e-14)


def _dirac_moments(p, c, m0, eps_of):
    """Exact mean and covariance, per class, of u_{i+1} along the whole chain of StepCoefficients ``c`` started at
    the marginal N(m_0, Σ_{t_0}) of Dirac data (data at m0, so p_t = N(Ψ(t, 0) m0, Σ_t) and the exact
    ε = K_t⁻¹(u − m_t)): the state and its history are jointly Gaussian and every map is affine. ``eps_of`` maps
    (u, t) moments to the K⁻¹ used by the model (K = R). Returns per step (mean error, covariance error) relative
    to (Ψ(t, 0) m0, Σ_t)."""
    n, C = p.n, p.classes
    grid, r_max = c.grid, c.eps.shape[1] - 1
    width = n * (r_max + 1)                               # (u_i, u_{i-1}, …, u_{i-r}) per class
    mean = np.zeros((C, width))
    cov = np.zeros((C, width, width))
    m_t = lambda t: (p._psi(a([t]), a([0.0]))[0] @ m0[..., None])[..., 0]  # noqa: E731
    mean[:, :n] = m_t(grid[0])
    cov[:, :n, :n] = p._sigma(a([grid[0]]))[0]
    errors = []
    for i in range(len(grid) - 1):
        # u_{i+1} = A (u_i, …) + b + Λ n, with ε_k = K_k⁻¹(u_k − m_k) and h_k = u_k − H_k ε_k (or ε_k)
        A = np.zeros((C, n, width))
        b = np.zeros((C, n))
        kinv = eps_of(grid[i])
        A[:, :, :n] = c.psi[i] + c.eps[i, 0] @ kinv
        b -= (c.eps[i, 0] @ kinv @ m_t(grid[i])[..., None])[..., 0]
        for j in range(1, c.orders[i] + 1):
            kj = eps_of(grid[i - j])
            hu = np.eye(n) - c.history[i - j] @ kj if c.history is not None else kj    # h = hu u + hb
            hb = (c.history[i - j] @ kj @ m_t(grid[i - j])[..., None])[..., 0] if c.history is not None else \
                -(kj @ m_t(grid[i - j])[..., None])[..., 0]
            A[:, :, n * j:n * (j + 1)] += c.eps[i, j] @ hu
            b += (c.eps[i, j] @ hb[..., None])[..., 0]
        new_mean = (A @ mean[..., None])[..., 0] + b
        new_cov = A @ cov @ np.swapaxes(A, -1, -2) + c.chol[i] @ np.swapaxes(c.chol[i], -1, -2)
        cross = A @ cov                                                       # cov(u_{i+1}, state)
        shifted_mean, shifted = np.zeros_like(mean), np.zeros_like(cov)
        shifted_mean[:, :n], shifted_mean[:, n:] = new_mean, mean[:, :width - n]
        shifted[:, :n, :n], shifted[:, n:, n:] = new_cov, cov[:, :width - n, :width - n]
        shifted[:, :n, n:] = cross[:, :, :width - n]
        shifted[:, n:, :n] = np.swapaxes(shifted[:, :n, n:], -1, -2)
        mean, cov = shifted_mean, shifted
        sig = p._sigma(a([grid[i + 1]]))[0]
        errors.append((np.abs(new_mean - m_t(grid[i + 1])).max(), (np.abs(new_cov - sig) / np.abs(sig).max()).max()))
    return errors


@pytest.mark.parametrize("lam", [0.5, 1.0])
@pytest.mark.parametrize("family", ["cld", "blur"])
def test_stochastic_multistep_keeps_gaussian_marginals_exactly(family, lam):
    """Dirac data (exact ε): the data-history chain of order 2 keeps mean Ψ(t, 0) m0 and covariance Σ_t at every step
    to rounding (computed exactly, not sampled). The official raw-ε history (same weights) keeps the mean but not
    the covariance, which grows by orders of magnitude."""
    if family == "cld":
        p, m0, grid = CLD(), np.array([[1.3, 0.0]]), E.time_grid(20, 1.0, 1e-3)
    else:
        p = BlurProcess(4)
        m0, grid = np.random.default_rng(0).normal(size=(16, 1)), E.time_grid(20, p.rho2t(80), 1e-5)
    kinv = lambda t: E.inv_small(p._R(a([t]))[0])  # noqa: E731
    data = _dirac_moments(p, E.gddim_coefficients(p, grid, 2, lam, "R", history="data"), m0, kinv)
    assert max(e for e, _ in data) < 1e-9 and max(e for _, e in data) < 1e-9, data
    official = _dirac_moments(p, E.gddim_coefficients(p, grid, 2, lam, "R", history="eps"), m0, kinv)
    assert max(e for e, _ in official) < 1e-9                                  # the mean is kept
    assert official[-1][1] > 1e3, official       # measured: 8e12 (CLD, λ = 0.5) to 1e4 (blur, λ = 0.5) × max Σ_t


def test_blur_drift_and_diffusion_are_consistent():
    """F_f = d/dt log(α d_f), G_f² = dσ²/dt − 2 F_f σ² ≥ 0 (central differences), Ψ the ratio of signal scales."""
    p = BlurProcess(6)
    ts, h = np.linspace(0.01, 0.98, 25), 1e-6
    num_F = (np.log(p._a(ts + h)) - np.log(p._a(ts - h))) / (2 * h)
    assert np.allclose(p._F(ts)[..., 0, 0], num_F, rtol=1e-6, atol=1e-6)
    s2 = lambda t: p.sigma(t).numpy() ** 2  # noqa: E731
    num_GG = ((s2(ts + h) - s2(ts - h)) / (2 * h))[:, None] - 2 * num_F * s2(ts)[:, None]
    assert np.allclose(p._GG(ts)[..., 0, 0], num_GG, rtol=1e-6, atol=1e-6)
    assert p._GG(ts).min() > 0


@pytest.mark.parametrize("lam", [0.5, 1.0])
def test_magnus_phi_matches_the_scalar_closed_form(lam):
    """For n = 1, Φ(t, s) = exp(−½λ² ∫_t^s G²/σ² dτ) = (SNR_t / SNR_s)^(−λ²/2) per frequency."""
    p = BlurProcess(8)
    grid = E.time_grid(10, p.rho2t(80), 1e-5)
    t, s = grid[1:], grid[:-1]
    phi = E.phi_lambda(p, t, s, lam)[..., 0, 0]
    snr = lambda x: p._a(x) ** 2 / p.sigma(x).numpy()[:, None] ** 2  # noqa: E731
    assert np.allclose(phi, (snr(t) / snr(s)) ** (-(lam**2) / 2), rtol=1e-7, atol=1e-12)


def test_dct_matrix_is_scipys_orthonormal_dct():
    x = np.random.default_rng(0).normal(size=(7, 7))
    V = dct_matrix(7)
    assert np.allclose(V @ x @ V.T, scipy.fft.dctn(x, norm="ortho"), atol=1e-13)
    assert np.allclose(V @ V.T, np.eye(7), atol=1e-14)


def test_blur_start_time_has_noise_to_signal_80():
    t = BlurProcess.rho2t(80.0)
    p = BlurProcess(4)
    assert math.isclose(float(p.sigma(t) / p.alpha(t)), 80.0, rel_tol=1e-12)


def test_quadratic_grid_is_the_official_one():
    g = E.time_grid(4, 1.0, 1e-3)
    assert np.allclose(g, np.linspace(1.0, math.sqrt(1e-3), 5) ** 2) and g[0] == 1.0 and g[-1] == 1e-3


@pytest.mark.parametrize("kwargs, name", [
    (dict(order=3), "order"), (dict(lam=-0.1), "lam"), (dict(lam=0.5, order=1, history="x0"), "history"),
    (dict(parameterization="Q"), "parameterization"), (dict(solver="heun"), "solver"),
    (dict(solver="euler", order=2), "one-step"),
])
def test_bad_solver_options_name_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=name):
        E.gddim_coefficients(CLD(), E.time_grid(3, 1.0, 1e-3), **kwargs)


def test_bad_process_arguments_name_the_argument():
    for kw, name in [(dict(m_inv=0.0), "m_inv"), (dict(numerical_eps=0.0), "numerical_eps"),
                     (dict(gamma=-1.0), "gamma"), (dict(beta=float("nan")), "beta")]:
        with pytest.raises(ValueError, match=name):
            CLD(**kw)
    with pytest.raises(ValueError, match="min_scale"):
        BlurProcess(8, min_scale=0.0)
    with pytest.raises(ValueError, match="image_size"):
        BlurProcess(0)
