"""One door for every op family (issue 18, item 2): one backend registry, one path of host checks and argument
resolution (gmm_triton/door.py), shared kernel helpers imported by name."""
import ast
from pathlib import Path

import pytest
import torch

import gmm_triton.gddim.ops  # noqa: F401  (registers the gDDIM ops' backends)
from gmm_triton import backends, ops

ROOT = Path(__file__).resolve().parents[1] / "gmm_triton"
DOOR_MODULES = ["ops.py", "backends.py", "door.py", "gddim/ops.py", *(f"kernels/{p.name}" for p in
                                                                      (ROOT / "kernels").glob("*.py"))]


def test_every_op_family_registers_every_backend():
    assert set(backends.RUNNERS) == {"ddim_step", "cld_step", "blur_step"}
    for family, runners in backends.RUNNERS.items():
        assert set(runners) == {"triton", *backends.CPU_BACKENDS}, family


@pytest.mark.parametrize("module", DOOR_MODULES)
def test_the_op_modules_import_no_private_names(module):
    """No op module reaches into another module's privates (``from ..ops import _rowwise``); the only dispatch is
    backends.run (no module but backends.py asks backend_for which implementation to run)."""
    tree = ast.parse((ROOT / module).read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level > 0:
            private = [a.name for a in node.names if a.name.startswith("_") and a.name != "_C"]
            assert not private, f"{module} imports {private} from {node.module}"
    if module != "backends.py":
        assert "backend_for" not in (ROOT / module).read_text(), f"{module} dispatches on its own"


def test_the_families_share_the_checks():
    """The same argument error reads the same in every family (door.check_*): a float timestep tensor, a seed of the
    wrong count, noise of the wrong shape."""
    from gmm_triton.gddim import ops as gops

    x = torch.randn(2, 2, 4)
    cld_table = torch.zeros(3, 24, dtype=torch.float64)
    ddim_table = torch.zeros(3, 8, dtype=torch.float64)
    calls = {"ddim_step": lambda timestep, **kw: ops.ddim_step(x, x, timestep, ddim_table, **kw),
             "cld_step": lambda timestep, **kw: gops.cld_step(x, [x], timestep, cld_table, stochastic=True, **kw)}
    for op, call in calls.items():
        with pytest.raises(TypeError, match=f"{op}: timestep must be an integer tensor"):
            call(timestep=torch.tensor([1.0]), seed=1)
        with pytest.raises(ValueError, match=f"{op}: noise shape"):
            call(timestep=1, noise=torch.randn(2, 2, 5), **({"eta": 1.0} if op == "ddim_step" else {}))
    with pytest.raises(ValueError, match="cld_step: seed must hold exactly one value"):
        gops.cld_step(x, [x], 1, cld_table, stochastic=True, seed=[1, 2])
