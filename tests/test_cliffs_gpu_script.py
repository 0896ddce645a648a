"""benchmarks/cliffs_gpu.py runs only where a GPU is lent, rarely: every row's op call is built and run here on the
CPU (at a batch of 2, the C++ twin), so that a GPU session is not spent on a broken row."""
import dataclasses
import importlib.util
import math
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def _script():
    spec = importlib.util.spec_from_file_location("cliffs_gpu", ROOT / "benchmarks" / "cliffs_gpu.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_every_row_of_the_gpu_script_runs_on_the_cpu():
    mod = _script()
    rows = mod._rows()
    names = [name for name, _ in rows]
    assert len(names) == len(set(names))
    # issue 19's launches: ragged D, channels_last, mixtures, CLD, blur with one and three buffers
    for part in ("ragged-fp16-d1001", "devoffset", "cl-fp16", "gmm-exact", "cld-bf16-order2",
                 "blur-fp32-n64-philox", "blur-fp32-n64-order2-philox-stochastic"):
        assert any(part in n for n in names), part
    for name, spec in rows:
        small = dataclasses.replace(spec, batch=2)
        out = mod._call(small, torch.device("cpu"))()
        out = out[0] if isinstance(out, tuple) else out  # the step returns (x_prev, x̂₀)
        assert out.shape[0] == 2 and torch.isfinite(out.float()).all(), name
        # the DRAM floor: the compile matrix's bytes per element, times the elements
        assert mod._floor_bytes(small) >= 2 * math.prod(spec.shape) * 2, name
