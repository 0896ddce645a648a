"""Our scheduler inside a real diffusers pipeline (tiny random UNet built from a config, no download)."""
import json

import numpy as np
import pytest
import torch
from diffusers import DDIMPipeline, DDIMScheduler, DDPMPipeline, DiffusionPipeline, UNet2DModel

from gmm_triton import GMMDDIMScheduler


@pytest.fixture(scope="module")
def unet():
    torch.manual_seed(0)
    return UNet2DModel(sample_size=16, in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=(16, 32),
                       down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
                       norm_num_groups=8).eval()


def _run(pipe, eta, seed=3):
    return pipe(batch_size=2, num_inference_steps=8, eta=eta, generator=torch.Generator().manual_seed(seed),
                output_type="np").images


def _truth(unet, eta, seed=3, n=8):
    """DDIMPipeline's loop in float64 (UNet and tables), consuming the generator exactly as the pipeline does."""
    import copy

    from diffusers.utils.torch_utils import randn_tensor

    unet64 = copy.deepcopy(unet).double()
    sched = DDIMScheduler()
    sched.alphas_cumprod = sched.alphas_cumprod.double()
    sched.final_alpha_cumprod = sched.final_alpha_cumprod.double()
    sched.set_timesteps(n)
    g = torch.Generator().manual_seed(seed)
    image = randn_tensor((2, 3, 16, 16), generator=g, dtype=torch.float32).double()
    with torch.no_grad():
        for t in sched.timesteps:
            out = unet64(image, t).sample
            z = randn_tensor(out.shape, generator=g, dtype=torch.float32).double() if eta > 0 else None
            image = sched.step(out, t, image, eta=eta, variance_noise=z).prev_sample
    return (image / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()


@pytest.mark.parametrize("eta", [0.0, 0.7])
def test_ddim_pipeline_same_images(unet, eta):
    pipe = DDIMPipeline(unet=unet, scheduler=DDIMScheduler())
    ref = _run(pipe, eta)
    # DDIMPipeline's constructor converts any scheduler to DDIMScheduler: assign after construction.
    pipe.scheduler = GMMDDIMScheduler.from_config(pipe.scheduler.config, noise_source="torch")
    assert isinstance(pipe.scheduler, GMMDDIMScheduler)
    out = _run(pipe, eta)
    truth = _truth(unet, eta)
    # The same rule as the scheduler tests, on the final images: within 2x diffusers' own fp32 error.
    err_diff, err_ours = abs(ref - truth).max(), abs(out - truth).max()
    assert err_ours <= 2 * err_diff + 1e-6, (err_ours, err_diff)
    assert abs(out - ref).max() < 1e-4


def test_pipeline_with_philox_noise_is_reproducible(unet):
    pipe = DDIMPipeline(unet=unet, scheduler=DDIMScheduler())
    pipe.scheduler = GMMDDIMScheduler.from_config(pipe.scheduler.config)
    a, b, c = _run(pipe, 1.0, 3), _run(pipe, 1.0, 3), _run(pipe, 1.0, 4)
    assert (a == b).all() and abs(a - c).max() > 1e-3


def test_pipeline_gmm_kernel_acts(unet):
    """At η = 0 DDIM draws nothing after the initial latents, so with the same generator any change is the mixture's:
    the images move away from DDIM's and stay finite."""
    pipe = DDIMPipeline(unet=unet, scheduler=DDIMScheduler())
    pipe.scheduler = GMMDDIMScheduler.from_config(pipe.scheduler.config)
    ddim = _run(pipe, 0.0)
    pipe.scheduler = GMMDDIMScheduler.from_config(pipe.scheduler.config, kernel="gmm", gmm_scale=2.0,
                                                  gmm_variance="diag")
    gmm = _run(pipe, 0.0)
    assert np.isfinite(gmm).all() and abs(gmm - ddim).max() > 1e-2


def test_saved_pipeline_reloads_our_scheduler(unet, tmp_path):
    """model_index.json names our scheduler's module; DiffusionPipeline.from_pretrained resolves it (gmm_triton is
    imported) and gives GMMDDIMScheduler back, with its config, to a pipeline that keeps the scheduler it is given."""
    pipe = DDPMPipeline(unet=unet, scheduler=GMMDDIMScheduler(kernel="gmm", gmm_scale=2.0, gmm_variance="diag"))
    run = lambda p: p(batch_size=2, num_inference_steps=8, generator=torch.Generator().manual_seed(3),  # noqa: E731
                      output_type="np").images
    ref = run(pipe)
    pipe.save_pretrained(tmp_path)
    index = json.loads((tmp_path / "model_index.json").read_text())
    assert index["scheduler"] == ["gmm_triton.schedulers.ddim", "GMMDDIMScheduler"]
    loaded = DiffusionPipeline.from_pretrained(tmp_path)
    assert type(loaded) is DDPMPipeline and type(loaded.scheduler) is GMMDDIMScheduler
    assert loaded.scheduler.config.kernel == "gmm" and loaded.scheduler.config.gmm_scale == 2.0
    assert (run(loaded) == ref).all()


def test_reloaded_ddim_pipeline_reattaches_our_scheduler(unet, tmp_path):
    """DDIMPipeline's constructor converts any scheduler to DDIMScheduler, on reload too (diffusers' code); its config
    keeps our keys, so the README's one line re-attaches ours with the saved settings and the same images."""
    pipe = DDIMPipeline(unet=unet, scheduler=DDIMScheduler())
    pipe.scheduler = GMMDDIMScheduler.from_config(pipe.scheduler.config, kernel="gmm", gmm_scale=2.0,
                                                  gmm_variance="diag")
    ref = _run(pipe, 0.5)
    pipe.save_pretrained(tmp_path)
    loaded = DiffusionPipeline.from_pretrained(tmp_path)
    assert type(loaded.scheduler) is DDIMScheduler
    loaded.scheduler = GMMDDIMScheduler.from_config(loaded.scheduler.config)
    assert type(loaded.scheduler) is GMMDDIMScheduler and loaded.scheduler.config.gmm_scale == 2.0
    assert (_run(loaded, 0.5) == ref).all()
