"""The gDDIM table on the embedded oracle (``gmm-triton demo --family cld|blur|gddim``): no weights, no training.

Data: scikit-learn's 8×8 digits as a 1797-component mixture (std 0.1, digit class = mode), with its exact
ε-targets (``oracle.CLDMixtureDenoiser``, ``oracle.BlurMixtureDenoiser``), so every difference between samplers is
discretisation error. All samplers of a table start from the same exact samples of the marginal at t_max.

**CLD.** Probability-flow Euler, Euler–Maruyama (λ = 1), gDDIM-L and gDDIM-R at orders 0–2, at NFE 5/10/20/50 on
the quadratic grid from 1 to 1e-3. Metrics of the position x at t = 1e-3: RMSE against a tight probability-flow ODE
solve (scipy DOP853, rtol = atol = 1e-8) from the same noise, the fraction of samples whose mode (digit of the most
likely component) agrees with the reference endpoint's, and the Fréchet distance (FD) to the data's exact moments.
The claim under test (gDDIM, §A.3 of the reference note): the R parameterisation is what makes the DDIM-type step
work on CLD, and higher orders pay once NFE ≳ 20.

Stochastic gDDIM-R (λ = 0.5) at orders 0–2 (the data-prediction history) and at order 2 with the official code's
raw-ε history, against a tight solve of the same SDE on the same Brownian path (order-0 λ-gDDIM with
``SDE_SUBSTEPS`` steps per step; the coarse noises are its noises aggregated, :func:`brownian_maps`): the median
per-sample RMSE of x (samples that end in another digit than the reference, error 0.2–0.5, dominate a mean), the
mode agreement with the reference and the FD. The question: does the error fall with the order at fixed NFE, as
for the deterministic orders?

**BDM.** BDM's own sampler, ancestral (λ = 1: per frequency the forward posterior q(y_t | y_s, ŷ₀)) on its uniform
time grid, at 10–500 steps, against deterministic gDDIM (orders 0–2) at 5–50 NFE on the quadratic grid, from
rho2t(80) to 1e-5; the ancestral sampler on the quadratic grid is the control that separates the grid from the
update rule. FD for all, RMSE and mode agreement against the probability-flow ODE for the deterministic ones. The
">20×" claim is read off the NFE each sampler needs to reach an FD threshold (log-log interpolation along its
sweep), down to the floor: the FD of exact data samples at this n, mean + 2 std over 10 draws.

Also ``step_cost``: the C++ twin's CLD step against the DDIM step on the same number of elements.
"""
from __future__ import annotations

import json
import math
import os
import time

import numpy as np
import torch

from ..provenance import commit
from .files import atomic_write, savefig
from .metrics import frechet_distance
from .oracle import BlurMixtureDenoiser, CLDMixtureDenoiser, digits_mixture
from ..gddim.schedulers import GDDIMBlurScheduler, GDDIMCLDScheduler

CLD_NFES = (5, 10, 20, 50)
CLD_SAMPLERS = (
    ("PF-Euler", dict(solver="euler")),
    ("Euler–Maruyama", dict(solver="euler", lam=1.0)),
    ("gDDIM-L o0", dict(parameterization="L", order=0)),
    ("gDDIM-L o1", dict(parameterization="L", order=1)),
    ("gDDIM-L o2", dict(parameterization="L", order=2)),
    ("gDDIM-R o0", dict(order=0)),
    ("gDDIM-R o1", dict(order=1)),
    ("gDDIM-R o2", dict(order=2)),
)
CLD_LAMBDA = 0.5
CLD_STOCHASTIC = (
    ("gDDIM-R λ=0.5 o0", dict(order=0)),
    ("gDDIM-R λ=0.5 o1", dict(order=1)),
    ("gDDIM-R λ=0.5 o2", dict(order=2)),
    ("gDDIM-R λ=0.5 o2, raw-ε history (official)", dict(order=2, history="eps")),
)
SDE_SUBSTEPS = 16
BLUR_ANCESTRAL_STEPS = (10, 20, 50, 100, 200, 500)
BLUR_CONTROL_STEPS = (10, 20, 50, 100)
BLUR_GDDIM_NFES = (5, 10, 20, 50)
ANCESTRAL = "ancestral (BDM: uniform grid)"
BLUR_SAMPLERS = (
    (ANCESTRAL, dict(lam=1.0, timestep_spacing="uniform"), BLUR_ANCESTRAL_STEPS),
    ("ancestral, quadratic grid", dict(lam=1.0), BLUR_CONTROL_STEPS),
    ("gDDIM o0", dict(order=0), BLUR_GDDIM_NFES),
    ("gDDIM o1", dict(order=1), BLUR_GDDIM_NFES),
    ("gDDIM o2", dict(order=2), BLUR_GDDIM_NFES),
    ("gDDIM λ=0.5 o0", dict(lam=0.5), BLUR_GDDIM_NFES),
    ("gDDIM λ=0.5 o1", dict(lam=0.5, order=1), BLUR_GDDIM_NFES),
    ("gDDIM λ=0.5 o2", dict(lam=0.5, order=2), BLUR_GDDIM_NFES),
)
FAMILIES = ("cld", "blur", "gddim")


def _run(scheduler, model, x, seed, noises=None):
    """Samples from x (the state at the scheduler's t_max) through every step, with the model's ε (and the step
    noises ``noises`` if given, else Philox noise seeded from ``seed``)."""
    g = torch.Generator().manual_seed(seed)
    for i, t in enumerate(scheduler.timesteps):
        x = scheduler.step(model(x, t), t, x, generator=g,
                           variance_noise=None if noises is None else noises[i]).prev_sample
    return x


def _ode(rhs, x0, t0, t1, desc):
    """A tight DOP853 solve of dx/dt = rhs(x, t) for the whole batch (a torch float64 state)."""
    from scipy.integrate import solve_ivp
    from tqdm.auto import tqdm

    bar = tqdm(desc=desc, unit=" evals", leave=False)

    def f(t, y):
        bar.update()
        return rhs(torch.from_numpy(y).reshape(x0.shape), t).reshape(-1).numpy()

    sol = solve_ivp(f, (t0, t1), x0.reshape(-1).numpy(), method="DOP853", rtol=1e-8, atol=1e-8)
    bar.close()
    if sol.status != 0:
        raise RuntimeError(f"the reference ODE solve failed: {sol.message}")
    return torch.from_numpy(sol.y[:, -1]).reshape(x0.shape), sol.nfev


def _metrics(x, ref, data, deterministic):
    """RMSE to the reference endpoint and mode agreement (deterministic samplers only), FD to the data."""
    n = x.shape[0]
    x, ref = x.reshape(n, -1).double(), ref.reshape(n, -1).double()
    row = {"fd": frechet_distance(x, data.mean(), data.covariance()) if torch.isfinite(x).all() else float("inf")}
    if deterministic:
        row["rmse"] = float(((x - ref) ** 2).mean().sqrt())
        same = data.labels[data.assign(x)] == data.labels[data.assign(ref)]
        row["mode"] = float(same.double().mean()) if torch.isfinite(x).all() else 0.0
    return row


def run_cld(n=400, nfes=CLD_NFES, seed=0):
    """The CLD table's rows: {sampler: {nfe: metrics}}, plus the reference endpoint's FD and the solve's NFE."""
    from tqdm.auto import tqdm

    data = digits_mixture(8, std=0.1, dtype=torch.float64)
    models = {k: CLDMixtureDenoiser(data, parameterization=k) for k in ("R", "L")}
    u0 = models["R"].marginal_sample(data, n, 1.0, generator=torch.Generator().manual_seed(seed))
    proc = models["R"].process
    F, g2 = proc.F(0.0), float(proc.GG(0.0)[1, 1])

    def pf(u, t):  # du/dt = F u − ½ GGᵀ ∇log p_t(u); GGᵀ = diag(0, 2Γβ)
        s = models["R"].score(u, t).reshape(n, 2, -1)
        du = torch.einsum("ij,bjd->bid", F, u.reshape(n, 2, -1))
        du[:, 1] -= 0.5 * g2 * s[:, 1]
        return du

    ref, ref_nfe = _ode(pf, u0, 1.0, 1e-3, "CLD reference ODE")
    rows = {}
    jobs = [(name, opts, nfe) for name, opts in CLD_SAMPLERS for nfe in nfes]
    for name, opts, nfe in tqdm(jobs, desc="CLD samplers"):
        sched = GDDIMCLDScheduler(**opts)
        sched.set_timesteps(nfe)
        u = _run(sched, models[opts.get("parameterization", "R")], u0, seed + 1)
        rows.setdefault(name, {})[nfe] = _metrics(u[:, 0], ref[:, 0], data, not sched.stochastic)
    for nfe in tqdm(nfes, desc=f"CLD λ={CLD_LAMBDA} vs the SDE"):
        fine = GDDIMCLDScheduler(lam=CLD_LAMBDA)
        fine.set_timesteps(nfe * SDE_SUBSTEPS)
        sde_ref, noises = sde_reference(fine, models["R"], u0, SDE_SUBSTEPS, cld_map, seed + 3)
        for name, opts in CLD_STOCHASTIC:
            sched = GDDIMCLDScheduler(lam=CLD_LAMBDA, **opts)
            sched.set_timesteps(nfe)
            u = _run(sched, models["R"], u0, seed, noises)
            row = _metrics(u[:, 0], sde_ref[:, 0], data, True)
            per = (u[:, 0] - sde_ref[:, 0]).reshape(n, -1).pow(2).mean(1).sqrt()
            row["median"] = float(per.median()) if torch.isfinite(per).all() else float("inf")
            rows.setdefault(name, {})[nfe] = row
    floor = frechet_distance(data.sample(n, generator=torch.Generator().manual_seed(seed + 2)), data.mean(),
                             data.covariance())
    return {"rows": rows, "ref_fd": _metrics(ref[:, 0], ref[:, 0], data, False)["fd"], "ref_nfe": ref_nfe,
            "data_fd": floor, "n": n}


def run_blur(n=500, samplers=BLUR_SAMPLERS, seed=0):
    """The BDM curves {sampler: {nfe: metrics}}, the FD floor and the NFE each sampler needs per FD threshold."""
    from tqdm.auto import tqdm

    data = digits_mixture(8, std=0.1, dtype=torch.float64)
    model = BlurMixtureDenoiser(data)
    proc = model.process
    probe = GDDIMBlurScheduler()
    probe.set_timesteps(1)
    t_max, t_min = probe.grid[0], probe.grid[-1]
    x0 = proc.marginal_sample(data.sample(n, generator=torch.Generator().manual_seed(seed)), t_max,
                              generator=torch.Generator().manual_seed(seed + 1))
    v = proc.dct()

    def pf(x, t):  # per frequency dy/dt = F_f y + ½ G_f² ε_y / σ_t, mapped back to pixels
        y = v @ x @ v.T
        ey = v @ model(x, t) @ v.T
        tt = np.float64(t)
        f = torch.from_numpy(proc._F(tt)[..., 0, 0].reshape(proc.image_size, -1))
        gg = torch.from_numpy(proc._GG(tt)[..., 0, 0].reshape(proc.image_size, -1))
        return v.T @ (f * y + 0.5 * gg * ey / float(proc.sigma(t))) @ v

    ref, ref_nfe = _ode(pf, x0, t_max, t_min, "BDM reference ODE")
    curves = {}
    jobs = [(name, opts, k) for name, opts, ks in samplers for k in ks]
    for name, opts, k in tqdm(jobs, desc="BDM samplers"):
        sched = GDDIMBlurScheduler(**opts)
        sched.set_timesteps(k)
        x = _run(sched, model, x0, seed + 2)
        curves.setdefault(name, {})[k] = _metrics(x, ref, data, not sched.stochastic)
    floors = [frechet_distance(data.sample(n, generator=torch.Generator().manual_seed(seed + 10 + i)), data.mean(),
                               data.covariance()) for i in range(10)]
    floor = float(np.mean(floors) + 2 * np.std(floors))
    thresholds = (1.0, 0.5, floor)
    reach = {name: [nfe_to_reach(c, thr) for thr in thresholds] for name, c in curves.items()}
    return {"curves": curves, "thresholds": thresholds, "reach": reach, "floor_fds": floors,
            "ref_fd": _metrics(ref, ref, data, False)["fd"], "ref_nfe": ref_nfe, "n": n}


def brownian_maps(process, fine_grid, substeps: int, lam: float) -> np.ndarray:
    """The linear maps from a fine λ-chain's step noises to the noises of the coarse chain on the same Brownian
    path, for stochastic gDDIM on ``fine_grid`` whose every ``substeps``-th node is the coarse grid: [N, M, C, n, n].

    A step's noise Λ n is ∫ Ψ̂(t, τ) λ G dw̄ over the step (covariance P). Over a coarse step t_i → t_{i+1} made of
    fine steps τ_k → τ_{k+1}, the same integral is Σ_k Ψ̂(t_{i+1}, τ_{k+1}) Λ_k z_k (Ψ̂ is a transition: it composes),
    whose covariance is the coarse P by the same composition; so the coarse standard normal is
    n_i = Σ_k G_ik z_k with G_ik = Λ_i⁻¹ Ψ̂(t_{i+1}, τ_{k+1}) Λ_k, Ψ̂(t, τ) = R_t Φ(t, τ) R_τ⁻¹."""
    from ..gddim.engine import gddim_coefficients, inv_small, phi_lambda

    fine = np.asarray(fine_grid, dtype=np.float64)
    N = (len(fine) - 1) // substeps
    if N * substeps != len(fine) - 1:
        raise ValueError(f"the fine grid's {len(fine) - 1} steps are not {substeps} per coarse step")
    lam_f = gddim_coefficients(process, fine, 0, lam).chol                          # Λ_k [NM, C, n, n]
    lam_c = gddim_coefficients(process, fine[::substeps], 0, lam).chol              # Λ_i [N, C, n, n]
    maps = np.empty((N, substeps) + lam_f.shape[1:])
    for i in range(N):
        t_end = fine[(i + 1) * substeps]
        inner = fine[i * substeps + 1:(i + 1) * substeps]                           # τ_{k+1} before t_end
        psi_hat = np.broadcast_to(np.eye(process.n), (substeps,) + lam_f.shape[1:]).copy()
        if len(inner):
            phi = phi_lambda(process, np.full(len(inner), t_end), inner, lam)
            psi_hat[:-1] = process._R(np.array([t_end]))[0] @ phi @ inv_small(process._R(inner))
        maps[i] = inv_small(lam_c[i]) @ psi_hat @ lam_f[i * substeps:(i + 1) * substeps]
    return maps


def sde_reference(fine, model, x0, substeps: int, apply_map, seed: int):
    """A tight solve of the λ-SDE from x0: ``fine`` (a stochastic order-0 gDDIM scheduler whose grid has
    ``substeps`` steps per coarse step) driven by fresh float64 normals, and the coarse chain's noises on the same
    Brownian path (:func:`brownian_maps`, applied by ``apply_map(map [C, n, n], z)``). Returns (x at the end,
    [coarse noise per coarse step])."""
    maps = brownian_maps(fine.process if hasattr(fine, "process") else fine.process_for(x0.shape[-1]), fine.grid,
                         substeps, fine.config.lam)
    g = torch.Generator().manual_seed(seed)
    x, noises, acc = x0, [], 0.0
    for k, t in enumerate(fine.timesteps):
        z = torch.randn(x.shape, generator=g, dtype=torch.float64)
        x = fine.step(model(x, t), t, x, variance_noise=z).prev_sample
        i, j = divmod(k, substeps)
        acc = acc + apply_map(maps[i, j], z)
        if j == substeps - 1:
            noises.append(acc)
            acc = 0.0
    return x, noises


def cld_map(m, z):
    """A [1, 2, 2] noise map applied to every (x, v) pair of z [B, 2, ...]."""
    return torch.einsum("ij,bj...->bi...", torch.from_numpy(m[0]), z)


def nfe_to_reach(curve: dict, threshold: float) -> tuple[str, float]:
    """The NFE at which a sampler's FD first falls to ``threshold`` along its sweep {nfe: metrics}: ("=", n) by
    log-log interpolation between the two swept counts that bracket the crossing, ("≤", smallest count) if the
    first run already meets it, (">", largest count) if no run does."""
    ks = sorted(curve)
    fds = [curve[k]["fd"] for k in ks]
    if fds[0] <= threshold:
        return "≤", float(ks[0])
    for (k0, f0), (k1, f1) in zip(zip(ks, fds), zip(ks[1:], fds[1:])):
        if f1 <= threshold:
            w = (math.log(f0) - math.log(threshold)) / (math.log(f0) - math.log(f1))
            return "=", math.exp(math.log(k0) + w * (math.log(k1) - math.log(k0)))
    return ">", float(ks[-1])


def step_cost(batch=16, numel=3 * 64 * 64, repeats=15) -> list[dict]:
    """Median wall time of the C++ twin's CLD step ([B, 2, D]) against the DDIM step on the same number of elements
    ([B, 2D]), fp32, in one process. Bytes: each buffer is B·2D·4."""
    from ..coefficients import ddim_table
    from ..ops import ddim_step, use_cpu_backend
    from ..gddim.cld import CLD
    from ..gddim.engine import gddim_coefficients, time_grid
    from ..gddim.ops import cld_step
    from ..gddim.tables import cld_table

    u = torch.randn(batch, 2, numel)
    eps = [torch.randn_like(u) for _ in range(3)]
    x, m = u.reshape(batch, -1), eps[0].reshape(batch, -1)
    grid = time_grid(10, 1.0, 1e-3)
    tables = {(r, lam): cld_table(gddim_coefficients(CLD(), grid, r, lam)) for r, lam in ((0, 0.0), (2, 0.0), (0, 0.5))}
    acp = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64), 0)
    dtab = ddim_table(acp, 1.0, 1000, torch.arange(999, -1, -100))
    cases = [
        ("DDIM η=0", 3, lambda: ddim_step(x, m, 500, dtab, return_pred_original=False)),
        ("DDIM η=1 (Philox)", 3, lambda: ddim_step(x, m, 500, dtab, eta=1.0, seed=1, return_pred_original=False)),
        ("CLD order 0", 3, lambda: cld_step(u, eps[:1], 5, tables[(0, 0.0)])),
        ("CLD order 2", 5, lambda: cld_step(u, eps, 5, tables[(2, 0.0)])),
        ("CLD λ=0.5 (Philox)", 3, lambda: cld_step(u, eps[:1], 5, tables[(0, 0.5)], stochastic=True, seed=1)),
    ]
    rows = []
    with use_cpu_backend("cpp"):
        for name, buffers, fn in cases:
            fn()
            ts = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                fn()
                ts.append(time.perf_counter() - t0)
            ms = 1e3 * float(np.median(ts))
            rows.append({"step": name, "shape": f"{batch} × 2 × {numel}", "ms": ms,
                         "GB/s": buffers * u.numel() * 4 / ms / 1e6})
    base = rows[0]["ms"]
    for r in rows:
        r["vs DDIM η=0"] = r["ms"] / base
    return rows


# ------------------------------------------------------------------------------------------------
# tables, plot, the CLI entry point
# ------------------------------------------------------------------------------------------------
def _cell(v, fmt="{:.3g}"):
    return "—" if v is None else ("∞" if v == float("inf") else fmt.format(v))


def cld_markdown(res) -> str:
    nfes = sorted(next(iter(res["rows"].values())))
    stochastic = {name for name, _ in CLD_STOCHASTIC}
    out = [f"CLD on the digits oracle (8×8, n = {res['n']}): x at t = 1e-3 against a DOP853 probability-flow solve "
           f"({res['ref_nfe']} evaluations); FD of the reference endpoint {res['ref_fd']:.3g}, of exact data samples "
           f"{res['data_fd']:.3g}."]
    for key, title in (("rmse", "trajectory RMSE ↓"), ("mode", "mode agreement ↑"), ("fd", "FD ↓")):
        out += ["", f"| {title} | " + " | ".join(f"NFE {k}" for k in nfes) + " |",
                "| --- |" + " --- |" * len(nfes)]
        for name, by in res["rows"].items():
            if name not in stochastic:
                out.append(f"| {name} | " + " | ".join(_cell(by[k].get(key)) for k in nfes) + " |")
    out += ["", f"Stochastic, λ = {CLD_LAMBDA}: against a solve of the same SDE on the same Brownian path "
            f"({SDE_SUBSTEPS} order-0 steps per step).", "",
            "| median per-sample RMSE ↓ / mode agreement ↑ / FD ↓ | " + " | ".join(f"NFE {k}" for k in nfes) + " |",
            "| --- |" + " --- |" * len(nfes)]
    for name, by in res["rows"].items():
        if name in stochastic:
            out.append(f"| {name} | " + " | ".join(
                f"{_cell(by[k]['median'])} / {_cell(by[k]['mode'], '{:.2f}')} / {_cell(by[k]['fd'])}" for k in nfes)
                + " |")
    return "\n".join(out)


def speed_up(base, other) -> str:
    """" (k_base / k×)" for two ``nfe_to_reach`` results, with the bound their qualifiers allow ("" if none)."""
    (qb, kb), (q, k) = base, other
    lower = qb == ">" or q == "≤"   # the ancestral count can only be larger, or this sampler's smaller
    upper = qb == "≤"
    if q == ">" or (lower and upper):
        return ""
    return f" ({'≥' if lower else '≤' if upper else ''}{kb / k:.1f}×)"


def blur_markdown(res) -> str:
    curves = res["curves"]
    nfes = sorted({k for c in curves.values() for k in c})
    floors = res["floor_fds"]
    out = [f"BDM on the digits oracle (8×8, n = {res['n']}): FD of exact data samples {np.mean(floors):.3g} ± "
           f"{np.std(floors):.2g} (10 draws), of the probability-flow reference endpoint {res['ref_fd']:.3g} "
           f"({res['ref_nfe']} evaluations).", "",
           "| FD ↓ | " + " | ".join(f"NFE {k}" for k in nfes) + " |", "| --- |" + " --- |" * len(nfes)]
    for name, c in curves.items():
        out.append(f"| {name} | " + " | ".join(_cell(c[k]["fd"]) if k in c else "" for k in nfes) + " |")
    det = {name: c for name, c in curves.items() if "rmse" in next(iter(c.values()))}
    dn = sorted({k for c in det.values() for k in c})
    out += ["", "| gDDIM: RMSE to the ODE ↓ / mode agreement ↑ | " + " | ".join(f"NFE {k}" for k in dn) + " |",
            "| --- |" + " --- |" * len(dn)]
    for name, c in det.items():
        out.append(f"| {name} | " + " | ".join(f"{c[k]['rmse']:.3g} / {c[k]['mode']:.3g}" for k in dn) + " |")
    labels = [f"FD ≤ {t:.3g}" for t in res["thresholds"][:-1]] + [f"FD ≤ {res['thresholds'][-1]:.3g} (floor)"]
    out += ["", "| NFE to reach | " + " | ".join(labels) + " |", "| --- |" + " --- |" * len(labels)]
    base = res["reach"][ANCESTRAL]
    for name, r in res["reach"].items():
        cells = [f"{q} {k:.0f}".replace("= ", "") + ("" if name == ANCESTRAL else speed_up(b, (q, k)))
                 for (q, k), b in zip(r, base)]
        out.append(f"| {name} | " + " | ".join(cells) + " |")
    out.append("")
    out.append("(×: the uniform-grid ancestral sampler's NFE over this sampler's, for the same FD.)")
    return "\n".join(out)


def _int_keys(d: dict) -> dict:
    """{nfe: metrics} with the integer keys JSON turned into strings restored."""
    return {int(k): v for k, v in d.items()}


def render_cld(results: dict) -> str:
    """The README's CLD tables from the demo's ``gddim.json``: the deterministic samplers against the ODE solve
    (RMSE / mode agreement), the stochastic ones against the SDE solve on the same Brownian path."""
    res = results["cld"]
    rows = {name: _int_keys(by) for name, by in res["rows"].items()}
    nfes = sorted(next(iter(rows.values())))
    stochastic = {name for name, _ in CLD_STOCHASTIC}
    head = " | ".join(f"NFE {k}" for k in nfes)
    out = [f"| RMSE to the ODE ↓ / mode agreement ↑ | {head} |", "| --- |" + " --- |" * len(nfes)]
    out += [f"| {name} | " + " | ".join(f"{_cell(by[k]['rmse'])} / {_cell(by[k]['mode'], '{:.2f}')}" for k in nfes)
            + " |" for name, by in rows.items() if name not in stochastic and "rmse" in by[nfes[0]]]
    out += ["", f"| λ = {CLD_LAMBDA}: median per-sample RMSE to the SDE ↓ / mode agreement ↑ / FD ↓ | {head} |",
            "| --- |" + " --- |" * len(nfes)]
    out += [f"| {name} | " + " | ".join(f"{_cell(by[k]['median'])} / {_cell(by[k]['mode'], '{:.2f}')} / "
                                          f"{_cell(by[k]['fd'])}" for k in nfes) + " |"
            for name, by in rows.items() if name in stochastic]
    fd = [f"{name} {', '.join(_cell(by[k]['fd']) for k in nfes)}" for name, by in rows.items()
          if name not in stochastic and "rmse" not in by[nfes[0]]]
    out += ["", f"n = {res['n']}; reference ODE: {res['ref_nfe']} evaluations; FD of exact data samples "
            f"{res['data_fd']:.3g}, of the ODE reference endpoint {res['ref_fd']:.3g}; FD at NFE "
            f"{', '.join(map(str, nfes))}: " + "; ".join(fd) + f" (commit {results['commit']})."]
    return "\n".join(out) + "\n"


def render_blur(results: dict) -> str:
    """The README's BDM table from the demo's ``gddim.json``: the NFE each sampler needs to reach an FD level."""
    res = results["blur"]
    labels = [f"FD ≤ {t:.3g}" for t in res["thresholds"][:-1]] + [f"FD ≤ {res['thresholds'][-1]:.3g} (floor)"]
    out = ["| NFE to reach | " + " | ".join(labels) + " |", "| --- |" + " --- |" * len(labels)]
    base = res["reach"][ANCESTRAL]
    for name, r in res["reach"].items():
        cells = [f"{q} {k:.0f}".replace("= ", "") + ("" if name == ANCESTRAL else speed_up(b, (q, k)))
                 for (q, k), b in zip(r, base)]
        out.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(out) + f"\n\nn = {res['n']} (commit {results['commit']}).\n"


def cost_markdown(rows) -> str:
    out = [f"| step (C++ twin, fp32, {rows[0]['shape']}) | ms | GB/s | vs DDIM η=0 |", "| --- | --- | --- | --- |"]
    out += [f"| {r['step']} | {r['ms']:.2f} | {r['GB/s']:.1f} | {r['vs DDIM η=0']:.2f} |" for r in rows]
    return "\n".join(out)


def _plot(cld, blur, path):
    from .demo import _plt

    plt = _plt()
    panels = [p for p in (cld, blur) if p is not None]
    fig, axes = plt.subplots(1, len(panels), figsize=(5.6 * len(panels), 4.0), squeeze=False)
    ax_i = 0
    if cld is not None:
        ax = axes[0, ax_i]
        ax_i += 1
        stochastic = {name for name, _ in CLD_STOCHASTIC}  # measured against another reference: the table only
        for name, by in cld["rows"].items():
            if name in stochastic:
                continue
            pts = [(k, r["rmse"]) for k, r in sorted(by.items()) if "rmse" in r and math.isfinite(r["rmse"])]
            if pts:
                ax.plot(*zip(*pts), marker="o", label=name, linestyle="-" if "R" in name else "--")
        ax.set(xscale="log", yscale="log", xlabel="NFE", ylabel="RMSE of x vs the ODE solve (↓)",
               title=f"CLD, digits oracle (n={cld['n']})")
        ax.set_xticks(CLD_NFES, [str(k) for k in CLD_NFES])
        ax.xaxis.set_minor_formatter(plt.NullFormatter())
        ax.legend(fontsize=7)
    if blur is not None:
        ax = axes[0, ax_i]
        for name, c in blur["curves"].items():
            ks = sorted(c)
            anc = name.startswith("ancestral")
            ax.plot(ks, [c[k]["fd"] for k in ks], marker="s" if anc else "o", label=name,
                    color="black" if name == ANCESTRAL else None, linestyle="--" if anc else "-")
        ax.axhline(blur["thresholds"][-1], color="gray", linestyle=":", label="floor: exact samples, mean + 2 std")
        ax.set(xscale="log", yscale="log", xlabel="NFE", ylabel="FD to the data moments (↓)",
               title=f"BDM, digits oracle (n={blur['n']})")
        ax.legend(fontsize=7)
    fig.tight_layout()
    savefig(fig, path, dpi=110)
    plt.close(fig)


def run_gddim_demo(out_dir="gmm_triton_out/gddim", *, family="gddim", n=None, quick=False) -> dict:
    """Runs the CLD and/or BDM comparison (``family`` "cld", "blur" or "gddim" for both) and the CPU step cost;
    prints the tables and writes them (markdown, JSON) with a plot to ``out_dir``."""
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")
    os.makedirs(out_dir, exist_ok=True)
    t0 = time.perf_counter()
    cld = blur = None
    parts = []
    if family in ("cld", "gddim"):
        cld = run_cld(n=n or (40 if quick else 400), nfes=(5, 10) if quick else CLD_NFES)
        parts.append(cld_markdown(cld))
    if family in ("blur", "gddim"):
        samplers = tuple((name, opts, ks[:2]) for name, opts, ks in BLUR_SAMPLERS) if quick else BLUR_SAMPLERS
        blur = run_blur(n=n or (40 if quick else 500), samplers=samplers)
        parts.append(blur_markdown(blur))
    cost = step_cost(batch=2, numel=1024, repeats=3) if quick else step_cost()
    parts.append(cost_markdown(cost))
    secs = time.perf_counter() - t0
    text = "\n\n".join(parts) + f"\n\n({secs:.0f} s, torch {torch.__version__}, {torch.get_num_threads()} threads)"
    print(text)
    paths = {"table": os.path.join(out_dir, "gddim_table.md"), "json": os.path.join(out_dir, "gddim.json"),
             "plot": os.path.join(out_dir, "gddim.png")}
    atomic_write(paths["table"], lambda f: f.write((text + "\n").encode()))
    settings = {"family": family, "quick": quick, "n_cld": cld and cld["n"], "n_blur": blur and blur["n"],
                "threads": torch.get_num_threads(), "torch": torch.__version__}
    # the README's tables are generated from a committed copy of this file (make tables)
    data = json.dumps({"command": "gmm-triton demo --family " + family, "commit": commit(), "settings": settings,
                       "cld": cld, "blur": blur, "cost": cost, "seconds": secs}, indent=1, default=str).encode()
    atomic_write(paths["json"], lambda f: f.write(data))
    _plot(cld, blur, paths["plot"])
    print("wrote", ", ".join(paths.values()))
    return {"cld": cld, "blur": blur, "cost": cost, "paths": paths, "seconds": secs}
