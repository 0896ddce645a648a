"""A generator list (one per sample, as diffusers pipelines pass it) gives each sample its own randomness: a batched
run with [g0, g1, g2] equals the single runs with g0, g1, g2, for both schedulers, the Gaussian and the mixture
kernel, Philox and torch noise (diffusers' promise that test_inference_batch_single_identical checks)."""
import pytest
import torch

from gmm_triton import GMMDDIMScheduler, GMMFlowMatchScheduler

SEEDS = (10, 11, 12)


def _loop(make, x, generators, step_kw):
    s = make()
    s.set_timesteps(5)
    for t in s.timesteps:
        x = s.step(0.5 * torch.tanh(x), t, x, generator=generators, **step_kw).prev_sample
    return x


@pytest.mark.parametrize("noise_source", ["philox", "torch"])
@pytest.mark.parametrize("kernel", ["gaussian", "gmm"])
@pytest.mark.parametrize("family", ["ddim", "flow"])
def test_batch_equals_single_runs(family, kernel, noise_source):
    if family == "ddim":
        def make():
            return GMMDDIMScheduler(kernel=kernel, noise_source=noise_source, clip_sample=False, gmm_scale=0.5,
                                    gmm_components=4)
        step_kw = dict(eta=1.0)
    else:
        def make():
            return GMMFlowMatchScheduler(kernel=kernel, noise_source=noise_source, eta=0.7, gmm_scale=0.5,
                                         gmm_components=4)
        step_kw = {}
    x = torch.randn(3, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    batch = _loop(make, x, [torch.Generator().manual_seed(k) for k in SEEDS], step_kw)
    singles = [_loop(make, x[b:b + 1], torch.Generator().manual_seed(k), step_kw) for b, k in enumerate(SEEDS)]
    assert torch.equal(batch, torch.cat(singles))
    # and each sample follows its own generator only
    other = _loop(make, x, [torch.Generator().manual_seed(k) for k in (10, 99, 12)], step_kw)
    assert torch.equal(other[0], batch[0]) and torch.equal(other[2], batch[2]) and not torch.equal(other[1], batch[1])
