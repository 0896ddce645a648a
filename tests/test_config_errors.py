"""Bad scheduler config is rejected at construction, and bad command lines by argparse; each error names its key."""
import re
import sys

import pytest
from diffusers import DDIMScheduler, FlowMatchEulerDiscreteScheduler

from gmm_triton import GMMDDIMScheduler, GMMFlowMatchScheduler, cli

SCHEDULERS = [GMMDDIMScheduler, GMMFlowMatchScheduler]


# ---------------------------------------------------------------------------------------------------
# scheduler config
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("cls", SCHEDULERS, ids=["ddim", "flow"])
@pytest.mark.parametrize("key,value,err,match", [
    ("gmm_components", 2.7, TypeError, "gmm_components must be an int"),
    ("gmm_components", True, TypeError, "gmm_components must be an int"),
    ("gmm_components", 0, ValueError, "gmm_components must be >= 1"),
    ("gmm_seed", "abc", TypeError, "gmm_seed must be an int"),
    ("gmm_seed", 2**64, ValueError, r"gmm_seed must be in \[0, 2\*\*64\)"),
    ("gmm_seed", -1, ValueError, r"gmm_seed must be in \[0, 2\*\*64\)"),
    ("gmm_offset_final", "no", TypeError, "gmm_offset_final must be True or False"),
    ("gmm_shared", 1, TypeError, "gmm_shared must be True or False"),
    ("gmm_clip_variance", "yes", TypeError, "gmm_clip_variance must be True or False"),
    ("gmm_scale", "big", TypeError, "gmm_scale must be a number"),
    ("gmm_scale", True, TypeError, "gmm_scale must be a number"),
    ("gmm_scale", -0.1, ValueError, "gmm_scale must be finite and >= 0"),
    ("gmm_scale", float("inf"), ValueError, "gmm_scale must be finite and >= 0"),
    ("gmm_priors", [0.5, 0.5], ValueError, "gmm_priors has 2 values but gmm_components K=8"),
    ("gmm_priors", ["a"] * 8, TypeError, "gmm_priors must be"),
    ("gmm_priors", [0.25] * 8, ValueError, "gmm_priors must sum to 1"),
])
def test_bad_mixture_config_named_at_construction(cls, key, value, err, match):
    with pytest.raises(err, match=match):
        cls(kernel="gmm", **{key: value})


@pytest.mark.parametrize("value,err,match", [("0.5", TypeError, "eta must be a number"),
                                             (True, TypeError, "eta must be a number"),
                                             (1.5, ValueError, r"eta must be in \[0, 1\]"),
                                             (float("nan"), ValueError, r"eta must be in \[0, 1\]")])
def test_flow_eta_checked_at_construction(value, err, match):
    with pytest.raises(err, match=match):
        GMMFlowMatchScheduler(eta=value)


@pytest.mark.parametrize("value,err,match", [(-1, ValueError, "steps_offset must be in"),
                                             (1000, ValueError, "steps_offset must be in"),
                                             (0.5, TypeError, "steps_offset must be an int")])
def test_steps_offset_checked_at_construction(value, err, match):
    with pytest.raises(err, match=match):
        GMMDDIMScheduler(steps_offset=value)


def test_steps_offset_beyond_the_schedule_named_in_set_timesteps():
    # leading spacing with 10 steps: timesteps 0, 100, …, 900 (+ offset); the last valid offset is 99
    s = GMMDDIMScheduler(steps_offset=150)
    with pytest.raises(ValueError, match=r"steps_offset=150 .* timestep at 1050 .* steps_offset <= 99"):
        s.set_timesteps(10)
    ok = GMMDDIMScheduler(steps_offset=99)
    ok.set_timesteps(10)
    assert int(ok.timesteps[0]) == 999
    trailing = GMMDDIMScheduler(steps_offset=150, timestep_spacing="trailing")  # diffusers ignores it there
    trailing.set_timesteps(10)
    assert int(trailing.timesteps[0]) == 999


def test_valid_configs_still_load():
    """Existing configs (diffusers' own, saved ones) and the paper's settings construct unchanged."""
    for src in (DDIMScheduler(beta_schedule="scaled_linear", steps_offset=1), GMMDDIMScheduler(kernel="gmm")):
        s = GMMDDIMScheduler.from_config(src.config, kernel="gmm", gmm_priors=[0.5] + [0.5 / 7] * 7, gmm_seed=2**64 - 1,
                                         gmm_scale=10, gmm_components=8)
        assert s.config.gmm_scale == 10 and s.config.steps_offset == src.config.steps_offset
    f = GMMFlowMatchScheduler.from_config(FlowMatchEulerDiscreteScheduler(shift=3.0).config, kernel="gmm", eta=1,
                                          gmm_priors="random")
    assert f.config.eta == 1 and f.config.shift == 3.0


# ---------------------------------------------------------------------------------------------------
# command line
# ---------------------------------------------------------------------------------------------------
@pytest.fixture
def no_work(monkeypatch):
    """Every command's work replaced by a failure: a bad command line must stop before any of it."""
    from gmm_triton.lab import demo
    from gmm_triton.tools import bench

    def started(*a, **k):
        raise AssertionError("the command started working")

    for mod, name in ((demo, "run_demo"), (demo, "run_eval"), (bench, "main"), (cli, "run_sample")):
        monkeypatch.setattr(mod, name, started)


@pytest.mark.parametrize("argv,match", [
    (["demo", "--samples", "0"], "--samples: must be a positive integer, got '0'"),
    (["demo", "--steps", "0"], "--steps: must be a positive integer, got '0'"),
    (["demo", "--scale", "-1"], "--scale: must be a finite number >= 0, got '-1'"),
    (["demo", "--scale", "nan"], "--scale: must be a finite number >= 0, got 'nan'"),
    (["demo", "--seeds", "0,x"], "--seeds: must be comma-separated integers >= 0, got '0,x'"),
    (["eval", "--families", "ddim,foo"], "--families: must be comma-separated names from ddim, flow, got 'ddim,foo'"),
    (["eval", "--steps", "5,0"], "--steps: must be comma-separated positive integers, got '5,0'"),
    (["eval", "--etas", "0,1.5"], r"--etas: must be comma-separated numbers in \[0, 1\], got '0,1.5'"),
    (["eval", "--scales", ""], "--scales: must be comma-separated finite numbers >= 0, got ''"),
    (["eval", "--samples", "-3"], "--samples: must be a positive integer, got '-3'"),
    (["sample", "--pipeline", "p", "--steps", "0"], "--steps: must be a positive integer"),
    (["sample", "--pipeline", "p", "--gmm-scale", "-2"], "--gmm-scale: must be a finite number >= 0"),
    (["sample", "--pipeline", "p", "--num-images", "0"], "--num-images: must be a positive integer"),
    (["sample", "--pipeline", "p", "--gmm-components", "0"], "--gmm-components: must be a positive integer"),
])
def test_bad_command_lines_are_usage_errors(argv, match, capsys, no_work):
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    assert e.value.code == 2
    assert re.search(match, capsys.readouterr().err)


@pytest.mark.parametrize("argv,missing", [(["demo", "--quick"], "matplotlib"), (["demo"], "sklearn"),
                                          (["eval"], "matplotlib"), (["bench", "--quick"], "matplotlib"),
                                          (["bench", "--quick"], "sklearn")])
def test_missing_optional_dependency_is_named_before_any_work(argv, missing, monkeypatch, capsys, no_work):
    monkeypatch.setitem(sys.modules, missing, None)  # what `import` and find_spec see for an absent package
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert missing.replace("sklearn", "scikit-learn") in err and 'pip install "gmm-triton[demo]"' in err


def test_bench_without_end_to_end_does_not_need_scikit_learn(monkeypatch):
    from gmm_triton.tools import bench

    ran = []
    monkeypatch.setattr(bench, "main", lambda args: ran.append(args.no_e2e) or 0)
    monkeypatch.setitem(sys.modules, "sklearn", None)  # the end-to-end loops are what use the digits data
    assert cli.main(["bench", "--quick", "--no-e2e"]) == 0 and ran == [True]


def test_missing_dependency_is_reported_before_torch_is_imported():
    """`gmm-triton demo` without matplotlib fails before any heavy import (the check is a lookup; gmm_triton's
    import is lazy), so the user hears about it at once, not after the sampling."""
    import subprocess

    code = ("import sys; sys.modules['matplotlib'] = None\n"
            "from gmm_triton import cli\n"
            "try:\n    cli.main(['demo'])\nexcept SystemExit as e:\n    print('exit', e.code)\n"
            "print('torch' in sys.modules, 'diffusers' in sys.modules, 'triton' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.split() == ["exit", "2", "False", "False", "False"], out.stdout + out.stderr
    assert 'pip install "gmm-triton[demo]"' in out.stderr
