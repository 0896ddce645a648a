"""README's "Use it in any diffusers pipeline" / "Use it with k-diffusion" snippets run as written, and its table of
diffusers' own test results is the one integrations/diffusers/run.py makes from the committed results.json."""
import json
import pathlib
import re
import sys
import types

import torch
from diffusers import DDIMScheduler, FlowMatchEulerDiscreteScheduler

from gmm_triton import GMMDDIMScheduler, GMMFlowMatchScheduler

REPO = pathlib.Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()


def _snippet(heading: str) -> str:
    section = README.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_k_diffusion_snippet_runs():
    ns = {}
    exec(_snippet("Use it with k-diffusion"), ns)
    assert ns["a"].shape == ns["b"].shape == (2, 4, 8, 8)
    assert torch.isfinite(ns["a"]).all() and torch.isfinite(ns["b"]).all() and not torch.equal(ns["a"], ns["b"])


def test_diffusers_snippet_swaps_either_scheduler_keeping_its_config():
    code = _snippet("Use it in any diffusers pipeline")
    for stock, ours in ((DDIMScheduler(steps_offset=1, clip_sample=False), GMMDDIMScheduler),
                        (FlowMatchEulerDiscreteScheduler(shift=3.0), GMMFlowMatchScheduler)):
        ns = {"pipe": types.SimpleNamespace(scheduler=stock)}
        exec(code, ns)
        s = ns["pipe"].scheduler
        assert type(s) is ours and s.config.noise_source == "torch"
        for k, v in stock.config.items():
            assert k.startswith("_") or s.config[k] == v, k


def test_readme_table_is_generated_from_results_json():
    sys.path.insert(0, str(REPO))
    from integrations.diffusers import run

    results = json.loads(run.RESULTS.read_text())
    block = README.split(run.BEGIN, 1)[1].split(run.END, 1)[0]
    assert block.strip() == run.table(results).strip()


def test_only_listed_philox_differences_are_explained():
    """run.py --check tolerates, in Philox mode only, the value tests against diffusers' own noise and the listed
    noise-sensitive tolerances; anything else, and any torch-mode regression, is a regression. The committed results
    have none."""
    sys.path.insert(0, str(REPO))
    from integrations.diffusers import run

    tol = next(iter(run.PHILOX_NOISE_TOLERANCE))
    other = "tests.pipelines.x.test_x.XTests::test_attention_slicing_forward_pass"
    entry = {"torch": {"regressions": []}, "philox": {"regressions": [tol, "tests.a.A::test_inference", other]}}
    assert run.unexplained({"selections": {"s": entry}}) == [f"s [philox] {other}"]
    entry = {"torch": {"regressions": [tol]}, "philox": {"regressions": []}}
    assert run.unexplained({"selections": {"s": entry}}) == [f"s [torch] {tol}"]
    assert run.unexplained(json.loads(run.RESULTS.read_text())) == []
