"""The bookkeeping of the diffusers swap harness (integrations/diffusers/): the causes swap.py records for a failure
(the hub repository a test asked for offline), the ids it keys them by, whether a test stepped through the swapped
scheduler, and how run.py sums them per file into results.json's exclusions."""
import pathlib
import sys

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, UNet2DModel

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "integrations" / "diffusers"))
sys.path.insert(0, str(REPO))
import run  # noqa: E402
import swap  # noqa: E402

# transformers is installed by `make test-integrations` (requirements-integrations.txt), not by `make test`
pytestmark = pytest.mark.integrations
transformers = pytest.importorskip("transformers", reason="installed by make test-integrations")


def _raised(fn):
    with pytest.raises(Exception) as info:
        fn()
    return info.value


@pytest.mark.parametrize("load", [
    lambda cache: transformers.AutoTokenizer.from_pretrained("hf-internal-testing/tiny-random-t5", cache_dir=cache,
                                                             local_files_only=True),
    lambda cache: transformers.T5EncoderModel.from_pretrained("hf-internal-testing/tiny-random-t5", cache_dir=cache,
                                                              local_files_only=True),
    lambda cache: UNet2DModel.from_pretrained("hf-internal-testing/tiny-random-t5", cache_dir=cache,
                                              local_files_only=True),
], ids=["transformers-tokenizer", "transformers-model", "diffusers-model"])
def test_an_offline_hub_load_is_recorded_with_its_repository(load, tmp_path):
    # transformers' offline message names no repository: the id comes from the frames it raised through
    assert swap._cause(_raised(lambda: load(tmp_path))) == {"hub": ["hf-internal-testing/tiny-random-t5"]}


def test_other_failures_keep_their_type_and_first_line():
    assert swap._cause(ValueError("bad value\nmore")) == {"error": "ValueError: bad value"}
    # a local path that exists is no hub repository, even when a hub error names it
    assert "hub" not in swap._cause(_raised(lambda: UNet2DModel.from_pretrained(str(REPO / "tests"))))


def test_junit_ids_match_the_junit_xml():
    assert swap._junit_id("tests/pipelines/a/test_b.py::C::test_d") == "tests.pipelines.a.test_b.C::test_d"
    assert swap._junit_id("tests/p/test_b.py::test_f[x/y-1]") == "tests.p.test_b::test_f[x/y-1]"


def test_a_swapped_step_records_that_the_test_stepped():
    cls = swap._swapped("FlowMatchEulerDiscreteScheduler", FlowMatchEulerDiscreteScheduler,
                        {"stochastic_sampling": True}, force_eta=False)
    sched = cls()
    assert sched.config.stochastic_sampling
    sched.set_timesteps(2)
    swap._current["stepped"] = False
    x = torch.zeros(1, 2, 2)
    sched.step(torch.zeros_like(x), sched.timesteps[0], x, generator=torch.Generator().manual_seed(0))
    assert swap._current["stepped"]


def test_results_sum_failure_causes_and_exclusions_per_file():
    outcomes = {"a.A::t1": "passed", "a.A::t2": "failed", "a.A::t3": "failed", "b.B::t1": "failed",
                "b.B::t2": "passed", "c.C::t1": "passed"}
    log = {"nodeids": {"a.A::t1": "a.py::A::t1", "a.A::t2": "a.py::A::t2", "a.A::t3": "a.py::A::t3",
                       "b.B::t1": "b.py::B::t1", "b.B::t2": "b.py::B::t2", "c.C::t1": "c.py::C::t1"},
           "failed": {"a.A::t2": {"hub": ["org/tok"]}, "a.A::t3": {"hub": ["org/tok", "org/enc"]},
                      "b.B::t1": {"error": "TypeError: x"}}}
    causes = run.stock_failures(outcomes, log)
    assert causes == {"a.py": {"hub": {"org/enc": 1, "org/tok": 2}}, "b.py": {"errors": {"TypeError: x": 1}}}
    entry = {"files": ["a.py", "b.py", "c.py", "d.py"],
             "excluded": {"a.py": causes["a.py"], "b.py": causes["b.py"], "c.py": {}}}
    line = run.excluded_summary(entry)
    assert line.startswith("3 of 4 files have no stock pass that steps the scheduler")
    assert "`org/tok` 1" in line and "`org/enc` 1" in line and "TypeError: x 1" in line
    assert "no failure (its tests pass without calling step) 1" in line
