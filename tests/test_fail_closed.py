"""Kernels fail closed (issue 18, item 3): an unknown prediction, variance-mode or noise code is an error in the
Triton kernel (tl.static_assert: under the interpreter here, and in a GPU compile), the C++ twin (TORCH_CHECK) and
the reference (ValueError) — never another code's maths (the flow step used to be every unknown prediction's)."""
import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gmm_triton import backends, build_mixture, contract, ddim_table, reference
from gmm_triton.backends import StepArgs
from gmm_triton.gddim import ops as gops
from gmm_triton.mixture import MixtureTensors

ROOT = Path(__file__).resolve().parents[1]
BOGUS = 97  # a code no implementation knows
ERRORS = {"triton": Exception, "cpp": RuntimeError, "reference": ValueError}
MESSAGES = {"triton": "unknown", "cpp": "unknown", "reference": "unknown|must be one of"}


@pytest.fixture(scope="module")
def tab():
    acp = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64), 0)
    return ddim_table(acp, 1.0, 1000, torch.arange(999, -1, -100))


def _args(tab, *, pred="epsilon", noise_mode=contract.NOISE_PHILOX, mixture=None, noise=None):
    x = torch.randn(2, 64)
    return StepArgs(x=x, m=x.clone(), out=torch.empty(2, 64), x0=torch.empty(2, 64), coef=tab, timesteps=None,
                    timestep=500, seed=torch.tensor([3]), sample_offset=None, noise=noise, threshold=None,
                    mixture=mixture, prediction_type=pred, eta=1.0, clip=None, clipped_eps=False, guidance=None,
                    offset_final=False, write_x0=True, noise_mode=noise_mode, layout=None, B=2, D=64)


def _run(backend, args):
    with pytest.raises(ERRORS[backend], match=MESSAGES[backend]):
        backends.RUNNERS["ddim_step"][backend](args)


@pytest.mark.parametrize("backend", ["triton", "cpp", "reference"])
def test_unknown_prediction_code(backend, tab, monkeypatch):
    monkeypatch.setitem(contract.PRED_CODES, "bogus", BOGUS)  # as if the contract gained a code before the kernels
    _run(backend, _args(tab, pred="bogus"))


@pytest.mark.parametrize("backend", ["triton", "cpp", "reference"])
def test_unknown_variance_mode_code(backend, tab, monkeypatch):
    monkeypatch.setitem(contract.VAR_CODES, "bogus", BOGUS)
    mix = build_mixture(64, 10, components=2, scale=0.1, variance="diag", seed=0)
    _run(backend, _args(tab, mixture=MixtureTensors.from_op_tensors(mix.op_tensors(), "bogus")))


@pytest.mark.parametrize("backend", ["triton", "cpp"])  # the reference takes a noise tensor or a seed, not a code
def test_unknown_noise_code(backend, tab, monkeypatch):
    _run(backend, _args(tab, noise_mode=BOGUS, noise=torch.randn(2, 64)))


@pytest.mark.parametrize("backend", ["triton", "cpp"])
@pytest.mark.parametrize("family", ["cld_step", "blur_step"])
def test_unknown_gddim_noise_code(backend, family):
    x = torch.randn(1, 2, 8, 8)
    coef = torch.zeros((3, contract.CLD_COLS) if family == "cld_step" else (3, contract.BLUR_PLANES, 8, 8),
                       dtype=torch.float64)
    a = gops.GddimArgs(sample=x, eps=[x], coef=coef, basis=torch.eye(8, dtype=torch.float64) if family == "blur_step"
                       else None, timesteps=None, timestep=1, seed=torch.tensor([1]), noise=torch.randn_like(x),
                       noise_mode=BOGUS, out=torch.empty_like(x))
    with pytest.raises(ERRORS[backend], match="unknown noise code"):
        backends.RUNNERS[family][backend](a)


_COMPILE = """
import dataclasses, sys
from gmm_triton.tools import aot, aot_cases
case = next(c for c in aot_cases.ddim_step_cases() if c.name == "main-fp16-eps-philox-x0")
(launch,) = aot.capture(case, "sm_90a")
path, spec = next((p, v) for p, v in launch.constexprs.items() if dataclasses.is_dataclass(v))
for field in sys.argv[1:]:
    bad = aot.Launch(**{**launch.__dict__, "constexprs": {**launch.constexprs,
                                                          path: dataclasses.replace(spec, **{field: 97})}})
    try:
        aot.compile_launch(bad, "sm_90a")
    except Exception as e:
        text = repr(e) + repr(e.__cause__)
        print(field, "rejected" if "unknown" in text else "other error: " + text[:300])
    else:
        print(field, "compiled")
"""


def test_unknown_codes_fail_the_gpu_compile():
    """The GPU compile (triton.compile for sm_90a of the main case's launch, one constexpr changed) rejects each
    unknown code at the frontend, before ptxas."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in [env.get("PYTHONPATH")] if p])
    proc = subprocess.run([sys.executable, "-c", _COMPILE, "PRED", "VAR_MODE", "NOISE"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split("\n")[:3] == ["PRED rejected", "VAR_MODE rejected", "NOISE rejected"], proc.stdout


def test_reference_rejects_unknown_names(tab):
    x = torch.randn(2, 64)
    with pytest.raises(ValueError, match="prediction_type must be one of"):
        reference.fused_step(x, x, 500, tab, prediction_type="bogus")
    mix = build_mixture(64, 10, components=2, scale=0.1, variance="diag", seed=0)
    bogus = dataclasses.replace(mix, variance_mode="bogus")
    with pytest.raises(ValueError, match="unknown mixture variance mode 'bogus'"):
        reference.fused_step(x, x, 500, tab, eta=0.0, seed=1, mixture=bogus)
