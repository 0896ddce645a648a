"""The gDDIM demo end to end on a tiny configuration, and its crossover arithmetic."""
import math
import os

import pytest

import numpy as np

from gmm_triton.gddim.blur import BlurProcess
from gmm_triton.gddim.cld import CLD
from gmm_triton.gddim.engine import time_grid
from gmm_triton.lab.gddim_demo import brownian_maps, nfe_to_reach, run_gddim_demo, speed_up


@pytest.mark.slow  # ~6 s with one BLAS thread; minutes where a loaded machine starves a second thread
def test_gddim_demo_end_to_end(tmp_path):
    out = run_gddim_demo(str(tmp_path), family="gddim", n=16, quick=True)
    for p in out["paths"].values():
        assert os.path.getsize(p) > 0
    text = open(out["paths"]["table"]).read()
    for name in ("PF-Euler", "Euler–Maruyama", "gDDIM-L o2", "gDDIM-R o0", "ancestral", "CLD order 2",
                 "gDDIM-R λ=0.5 o2", "raw-ε history (official)", "gDDIM λ=0.5 o1"):
        assert name in text
    rows = out["cld"]["rows"]
    # the paper's point, which even 16 samples resolve: at NFE 10 the R step tracks the ODE and the L step does not
    assert rows["gDDIM-R o0"][10]["rmse"] < 0.1 * rows["gDDIM-L o0"][10]["rmse"]
    assert "rmse" not in rows["Euler–Maruyama"][10]          # stochastic: no trajectory error
    # λ = 0.5 rows against the SDE solve on the same Brownian path: order 1 tracks it better than order 0
    assert rows["gDDIM-R λ=0.5 o1"][10]["median"] < rows["gDDIM-R λ=0.5 o0"][10]["median"]
    for name, curve in out["blur"]["curves"].items():
        assert all(math.isfinite(r["fd"]) for r in curve.values())
        stochastic = name.startswith("ancestral") or "λ" in name
        assert all(("mode" in r) != stochastic for r in curve.values())
        assert all(0 <= r["mode"] <= 1 for r in curve.values() if "mode" in r)


def test_nfe_to_reach_interpolates_the_sweep():
    curve = {50: {"fd": 8.0}, 100: {"fd": 4.0}, 200: {"fd": 2.0}}
    assert nfe_to_reach(curve, 4.0) == ("=", pytest.approx(100.0))
    assert nfe_to_reach(curve, 2.0 * math.sqrt(2)) == ("=", pytest.approx(100 * math.sqrt(2)))  # log-log midpoint
    assert nfe_to_reach(curve, 1.0) == (">", 200.0)   # no run reaches it
    assert nfe_to_reach(curve, 9.0) == ("≤", 50.0)    # the shortest run already does
    assert speed_up(("=", 400.0), ("=", 20.0)) == " (20.0×)"
    assert speed_up((">", 500.0), ("=", 20.0)) == " (≥25.0×)"
    assert speed_up(("≤", 10.0), ("≤", 5.0)) == ""


def test_brownian_maps_compose_the_coarse_noise_exactly():
    """The coarse step noise Σ_k G_ik z_k built from the fine steps' normals is standard normal: Σ_k G_ik G_ikᵀ = I
    for every coarse step (the transition Ψ̂ and the noise covariance P compose), on CLD and blur, λ ∈ {0.5, 1}."""
    blur = BlurProcess(4)
    for p, t_max, t_min in ((CLD(), 1.0, 1e-3), (blur, blur.rho2t(80), 1e-5)):
        for lam in (0.5, 1.0):
            maps = brownian_maps(p, time_grid(5 * 6, t_max, t_min), 6, lam)
            assert maps.shape == (5, 6, p.classes, p.n, p.n)
            gram = np.einsum("ikcab,ikcdb->icad", maps, maps)
            assert np.abs(gram - np.eye(p.n)).max() < 1e-8, (type(p).__name__, lam, np.abs(gram - np.eye(p.n)).max())
