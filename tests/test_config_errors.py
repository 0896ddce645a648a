"""Bad scheduler config is rejected at construction; each error names its key."""
import pytest
from diffusers import DDIMScheduler, FlowMatchEulerDiscreteScheduler

from gmm_triton import GMMDDIMScheduler, GMMFlowMatchScheduler

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
    ("gmm_seed", 2**64, ValueError, r"gmm_seed must be in \[0, 2\*\*63\)"),
    ("gmm_seed", 2**63, ValueError, r"gmm_seed must be in \[0, 2\*\*63\)"),
    ("gmm_seed", -1, ValueError, r"gmm_seed must be in \[0, 2\*\*63\)"),
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
        s = GMMDDIMScheduler.from_config(src.config, kernel="gmm", gmm_priors=[0.5] + [0.5 / 7] * 7, gmm_seed=2**63 - 1,
                                         gmm_scale=10, gmm_components=8)
        assert s.config.gmm_scale == 10 and s.config.steps_offset == src.config.steps_offset
    f = GMMFlowMatchScheduler.from_config(FlowMatchEulerDiscreteScheduler(shift=3.0).config, kernel="gmm", eta=1,
                                          gmm_priors="random")
    assert f.config.eta == 1 and f.config.shift == 3.0
