"""Bad input gets a clear error that names the argument (scheduler and op)."""
import pytest
import torch

from gmm_triton import GMMDDIMScheduler, ddim_table, ops


@pytest.fixture
def sched():
    s = GMMDDIMScheduler(clip_sample=False)
    s.set_timesteps(10)
    return s


def test_step_before_set_timesteps():
    s = GMMDDIMScheduler()
    x = torch.randn(1, 4)
    with pytest.raises(ValueError, match="set_timesteps"):
        s.step(x, 10, x)


@pytest.mark.parametrize("n,err,match", [(0, ValueError, r"num_inference_steps must be in \[1, 1000\]"),
                                         (1001, ValueError, "num_inference_steps"),
                                         (2.5, TypeError, "num_inference_steps must be an int")])
def test_num_inference_steps_out_of_range(n, err, match):
    with pytest.raises(err, match=match):
        GMMDDIMScheduler().set_timesteps(n)


@pytest.mark.parametrize("key,value", [("prediction_type", "eps"), ("timestep_spacing", "uniform"),
                                       ("kernel", "mixture"), ("noise_source", "numpy"),
                                       ("prev_timestep_rule", "next"), ("gmm_variance", "full"),
                                       ("gmm_offsets", "svd"), ("gmm_priors", "skewed")])
def test_unknown_config_values(key, value):
    with pytest.raises(ValueError, match=f"{key} must be one of"):
        GMMDDIMScheduler(**{key: value})


def test_shape_dtype_device_mismatch(sched):
    x = torch.randn(2, 3, 4, 4)
    with pytest.raises(ValueError, match="model_output shape"):
        sched.step(torch.randn(2, 3, 4, 5), 500, x)
    with pytest.raises(TypeError, match="model_output dtype torch.float16 does not match sample dtype torch.float32"):
        sched.step(x.half(), 500, x)
    with pytest.raises(TypeError, match="sample must be a floating-point tensor"):
        sched.step(x, 500, x.long())
    with pytest.raises(TypeError, match="model_output must be a floating-point tensor"):
        sched.step(x.int(), 500, x)
    with pytest.raises(ValueError, match="noise shape"):
        sched.step(x, 500, x, eta=1.0, variance_noise=torch.randn(2, 3, 4))
    if torch.device("meta") != x.device:
        with pytest.raises(ValueError, match="model_output is on meta"):
            sched.step(torch.empty(2, 3, 4, 4, device="meta"), 500, x)


@pytest.mark.parametrize("t", [1000, -1, 5000])
def test_timestep_outside_table(sched, t):
    x = torch.randn(1, 8)
    with pytest.raises(ValueError, match=f"timestep {t} is outside the training table"):
        sched.step(x, t, x)
    with pytest.raises(ValueError, match="outside the training table"):
        sched.step(torch.randn(2, 8), torch.tensor([5, t]), torch.randn(2, 8))


def test_non_integer_timesteps(sched):
    x = torch.randn(1, 8)
    with pytest.raises(TypeError, match="timestep must be an integer"):
        sched.step(x, torch.tensor(500.5), x)
    with pytest.raises(TypeError, match="timestep must be an int"):
        sched.step(x, "500", x)


def test_generator_and_variance_noise_together(sched):
    x = torch.randn(1, 8)
    with pytest.raises(ValueError, match="Cannot pass both generator and variance_noise"):
        sched.step(x, 500, x, eta=1.0, generator=torch.Generator(), variance_noise=torch.randn(1, 8))


def test_zero_snr_epsilon_at_the_terminal_timestep():
    s = GMMDDIMScheduler(rescale_betas_zero_snr=True, timestep_spacing="trailing", clip_sample=False)
    s.set_timesteps(10)
    x = torch.randn(1, 8)
    with pytest.raises(ValueError, match="zero terminal SNR"):
        s.step(x, 999, x)


def test_op_level_errors():
    from diffusers import DDIMScheduler

    d = DDIMScheduler()
    d.set_timesteps(10)
    tab = ddim_table(d.alphas_cumprod, 1.0, 1000, d.timesteps)
    x = torch.randn(2, 8)
    with pytest.raises(ValueError, match="coefficient table must be float64"):
        ops.ddim_step(x, x, 5, tab.float())
    with pytest.raises(ValueError, match="guidance_scale, model_output must hold the"):
        ops.ddim_step(x, x, 5, tab, guidance_scale=3.0)
    with pytest.raises(ValueError, match="one value per sample"):
        ops.ddim_step(x, x, torch.tensor([1, 2, 3]), tab)
    with pytest.raises(ValueError, match="eta must be finite"):
        ops.ddim_step(x, x, 5, tab, eta=-1.0)
    with pytest.raises(ValueError, match="prediction_type must be one of"):
        ops.ddim_step(x, x, 5, tab, prediction_type="score")
    with pytest.raises(ValueError, match="mixture offsets must be"):
        from gmm_triton import build_mixture

        ops.ddim_step(x, x, 5, tab, mixture=build_mixture(16, 10, components=2), seed=1)
