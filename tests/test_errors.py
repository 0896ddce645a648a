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
    assert sched.step(x.half(), 500, x).prev_sample.dtype == torch.float32  # promoted, as diffusers does
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


# ---------------------------------------------------------------------------------------------------
# op arguments (issue 11, items 1, 2, 5): each was silently accepted or failed deep inside before
# ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tab50():
    from diffusers import DDIMScheduler

    d = DDIMScheduler()
    d.set_timesteps(50)
    return ddim_table(d.alphas_cumprod, 1.0, 1000, d.timesteps)


@pytest.mark.parametrize("t, err, match", [
    (500.7, TypeError, "timestep must be an int"), (True, TypeError, "timestep must be an int"),
    ("500", TypeError, "timestep must be an int"), (torch.tensor(500.0), TypeError, "timestep must be an integer"),
])
def test_timestep_values(tab50, t, err, match):
    x = torch.randn(2, 8)
    with pytest.raises(err, match=match):
        ops.ddim_step(x, x, t, tab50)
    assert torch.equal(ops.ddim_step(x, x, 500.0, tab50)[0], ops.ddim_step(x, x, 500, tab50)[0])  # integral float


@pytest.mark.parametrize("seed, err, match", [
    (torch.tensor([5.0]), TypeError, "seed must be an integer tensor"),
    (torch.tensor([True]), TypeError, "seed must be an integer tensor"),
    (torch.tensor([1, 2, 3]), ValueError, r"one seed or one per sample \(2\)"),
    ([1, 2, 3], ValueError, r"one seed or one per sample \(2\)"), ([], ValueError, "seed is an empty sequence"),
    ([1, 2.5], TypeError, r"seed\[1\] must be an int"),
    (2**64, ValueError, r"seed must be in \[0, 2\*\*64\)"), (-1, ValueError, r"seed must be in \[0, 2\*\*64\)"),
    (1.5, TypeError, "seed must be an int"), (torch.tensor([5], device="meta"), ValueError, "seed is on meta"),
])
def test_seed_values(tab50, seed, err, match):
    x = torch.randn(2, 8)
    with pytest.raises(err, match=match):
        ops.ddim_step(x, x, 500, tab50, eta=1.0, seed=seed)


def test_seed_above_2_63_is_its_64_bits(tab50):
    x = torch.randn(2, 8)
    big = 2**63 + 12345
    a, _ = ops.ddim_step(x, x, 500, tab50, eta=1.0, seed=big)
    b, _ = ops.ddim_step(x, x, 500, tab50, eta=1.0, seed=torch.tensor([big - 2**64]))
    c, _ = ops.ddim_step(x, x, 500, tab50, eta=1.0, seed=12345)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_seed_read_properly_from_any_device(tab50, monkeypatch):
    """A seed tensor not on the CPU (a CUDA generator's, with CPU latents) used to become seed 0 in the C++ and
    reference backends; it is now read (rng.host_seed). Here the "device" seed is a CPU tensor the host path must
    read through .item(), as it would a CUDA one."""
    from gmm_triton import rng

    x = torch.randn(2, 8)
    outs = [ops.ddim_step(x, x, 500, tab50, eta=1.0, seed=torch.tensor([s]))[0] for s in (5, 123456)]
    assert not torch.equal(outs[0], outs[1])
    assert rng.host_seed(torch.tensor([-2])) == -2 and rng.host_seed(torch.tensor([[7]])) == 7


@pytest.mark.parametrize("kwargs, err, match", [
    (dict(thresholding=(0.9,)), ValueError, "thresholding must be"),
    (dict(thresholding=(1.5, 2.0)), ValueError, "ratio must be in"),
    (dict(thresholding=(0.9, 0.0)), ValueError, "sample_max_value must be finite and > 0"),
    (dict(mixture="gmm"), TypeError, "mixture must be a MixtureTensors"),
    (dict(generator=42, eta=1.0), TypeError, "generator must be a torch.Generator"),
    (dict(generator=[torch.Generator()] * 3, eta=1.0), ValueError, r"one per sample \(2\), got 3"),
    (dict(generator=[torch.Generator(), 1, 2], eta=1.0), ValueError, r"one per sample \(2\), got 3"),
    (dict(sample_offset=-3), ValueError, r"sample_offset must be an int in \[0, 2\*\*63\)"),
    (dict(sample_offset=torch.tensor([1.0])), TypeError, "sample_offset must be an integer tensor"),
])
def test_op_argument_values(tab50, kwargs, err, match):
    x = torch.randn(2, 8)
    with pytest.raises(err, match=match):
        ops.ddim_step(x, x, 500, tab50, **kwargs)


def test_eta_above_one_warns(tab50):
    x = torch.randn(2, 8)
    with pytest.warns(UserWarning, match="eta=1.5 > 1"):
        out, _ = ops.ddim_step(x, x, 500, tab50, eta=1.5, seed=1)
    assert torch.isfinite(out).all()


def test_mixture_with_too_few_step_tables_is_rejected(tab50):
    """build_mixture(64, 2) with a 50-step schedule used to read past the offset table at step 21 (~1e37)."""
    from gmm_triton import build_mixture

    x = torch.randn(2, 64)
    mix = build_mixture(64, 2, components=2, scale=0.1, variance="diag", seed=0)
    t21 = 999 - 21 * 20  # the 22nd timestep of the 50-step leading grid
    with pytest.raises(ValueError, match="the mixture has 2 step tables but the coefficient table's schedule has 50"):
        ops.ddim_step(x, x, t21, tab50, eta=1.0, seed=1, mixture=mix)
    ok, _ = ops.ddim_step(x, x, t21, tab50, eta=1.0, seed=1, mixture=build_mixture(64, 50, components=2, seed=0))
    assert torch.isfinite(ok).all()


@pytest.mark.parametrize("backend", ["cpp", "triton", "reference"])
def test_kernels_guard_the_mixture_step_table(tab50, backend):
    """Below the op's host check (a device table it cannot read): the kernels clamp the step-table index and
    poison only the affected sample with NaN."""
    from gmm_triton import backends, build_mixture
    from gmm_triton.mixture import MixtureTensors

    x = torch.randn(2, 64)
    mix = build_mixture(64, 2, components=2, scale=0.1, variance="diag", seed=0)
    rows = torch.tensor([999, 999 - 21 * 20])  # steps 0 (has a table) and 21 (does not)
    out, x0 = torch.empty(2, 64), torch.empty(2, 64)
    with ops.use_cpu_backend(backend):
        backends.RUNNERS[backend](backends.StepArgs(
            x=x, m=x, out=out, x0=x0, coef=tab50, timesteps=rows, timestep=0, seed=torch.tensor([1]),
            sample_offset=None, noise=None, threshold=None,
            mixture=MixtureTensors.from_op_tensors(mix.op_tensors(), "diag"), prediction_type="epsilon", eta=1.0,
            clip=None, clipped_eps=False, guidance=None, offset_final=False, write_x0=True, noise_mode=1,
            layout=None, B=2, D=64))
    assert torch.isfinite(out[0]).all() and torch.isnan(out[1]).all() and torch.isnan(x0[1]).all()


@pytest.mark.parametrize("kwargs, err, match", [
    (dict(components=2.7), TypeError, "components must be an int"), (dict(components=True), TypeError, "components"),
    (dict(seed=-1), ValueError, r"seed must be in \[0, 2\*\*64\)"), (dict(seed=2**64), ValueError, "seed must be"),
    (dict(seed="abc"), TypeError, "seed must be an int"), (dict(scale="1"), TypeError, "scale must be a number"),
    (dict(num_steps=0), ValueError, "num_steps must be >= 1"),
])
def test_build_mixture_argument_values(kwargs, err, match):
    from gmm_triton import build_mixture

    args = dict(dim=16, num_steps=4, components=2)
    args.update(kwargs)
    with pytest.raises(err, match=match):
        build_mixture(args.pop("dim"), args.pop("num_steps"), **args)


def test_build_mixture_takes_64_bit_seeds():
    from gmm_triton import build_mixture

    a = build_mixture(16, 2, components=2, seed=2**64 - 1)
    b = build_mixture(16, 2, components=2, seed=2**63)
    assert torch.isfinite(a.delta).all() and not torch.equal(a.delta, b.delta)
