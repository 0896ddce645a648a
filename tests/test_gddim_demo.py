"""The gDDIM demo end to end on a tiny configuration, and its crossover arithmetic."""
import math
import os

import pytest

from gmm_triton.lab.gddim_demo import nfe_to_reach, run_gddim_demo, speed_up


@pytest.mark.slow  # ~6 s with one BLAS thread; minutes where a loaded machine starves a second thread
def test_gddim_demo_end_to_end(tmp_path):
    out = run_gddim_demo(str(tmp_path), family="gddim", n=16, quick=True)
    for p in out["paths"].values():
        assert os.path.getsize(p) > 0
    text = open(out["paths"]["table"]).read()
    for name in ("PF-Euler", "Euler–Maruyama", "gDDIM-L o2", "gDDIM-R o0", "ancestral", "CLD order 2"):
        assert name in text
    rows = out["cld"]["rows"]
    # the paper's point, which even 16 samples resolve: at NFE 10 the R step tracks the ODE and the L step does not
    assert rows["gDDIM-R o0"][10]["rmse"] < 0.1 * rows["gDDIM-L o0"][10]["rmse"]
    assert "rmse" not in rows["Euler–Maruyama"][10]          # stochastic: no trajectory error
    for name, curve in out["blur"]["curves"].items():
        assert all(math.isfinite(r["fd"]) for r in curve.values())
        assert name.startswith("ancestral") or all(0 <= r["mode"] <= 1 for r in curve.values())


def test_nfe_to_reach_interpolates_the_sweep():
    curve = {50: {"fd": 8.0}, 100: {"fd": 4.0}, 200: {"fd": 2.0}}
    assert nfe_to_reach(curve, 4.0) == ("=", pytest.approx(100.0))
    assert nfe_to_reach(curve, 2.0 * math.sqrt(2)) == ("=", pytest.approx(100 * math.sqrt(2)))  # log-log midpoint
    assert nfe_to_reach(curve, 1.0) == (">", 200.0)   # no run reaches it
    assert nfe_to_reach(curve, 9.0) == ("≤", 50.0)    # the shortest run already does
    assert speed_up(("=", 400.0), ("=", 20.0)) == " (20.0×)"
    assert speed_up((">", 500.0), ("=", 20.0)) == " (≥25.0×)"
    assert speed_up(("≤", 10.0), ("≤", 5.0)) == ""
