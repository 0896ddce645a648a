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


def _gens(*seeds):
    return [torch.Generator().manual_seed(k) for k in seeds]


def _ddim_pair(**kw):
    """Stock diffusers' DDIMScheduler and ours (diffusers' noise) on one schedule."""
    from diffusers import DDIMScheduler

    stock, ours = DDIMScheduler(clip_sample=False), GMMDDIMScheduler(clip_sample=False, noise_source="torch", **kw)
    for s in (stock, ours):
        s.set_timesteps(5)
    return stock, ours


@pytest.mark.parametrize("seeds", [(10,), (10, 11, 12, 13)])
def test_a_list_of_one_or_longer_than_the_batch_reads_as_in_diffusers(seeds):
    """diffusers' randn_tensor takes a list of one as that generator for the whole batch, and a longer list as one
    generator per sample, the rest unused (Marigold passes every ensemble member's generator to each chunk of its
    batch): stock and ours (torch noise) give the same step; with Philox noise the step equals that of the
    generator(s) diffusers would read."""
    x = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    eps = 0.5 * torch.tanh(x)
    stock, ours = _ddim_pair()
    t = stock.timesteps[1]
    want = stock.step(eps, t, x, eta=1.0, generator=_gens(*seeds)).prev_sample
    got = ours.step(eps, t, x, eta=1.0, generator=_gens(*seeds)).prev_sample
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    for family in ("ddim", "flow"):
        make = (lambda: GMMDDIMScheduler(clip_sample=False)) if family == "ddim" else \
            (lambda: GMMFlowMatchScheduler(eta=0.7))
        kw = dict(eta=1.0) if family == "ddim" else {}
        read = _gens(*seeds)[0] if len(seeds) == 1 else _gens(*seeds[:2])  # fresh: a run advances its generators
        assert torch.equal(_loop(make, x, _gens(*seeds), kw), _loop(make, x, read, kw)), family


def test_a_list_shorter_than_the_batch_is_refused_only_when_the_step_draws():
    x = torch.randn(3, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    for make, kw in ((lambda: GMMDDIMScheduler(clip_sample=False), dict(eta=1.0)),
                     (lambda: GMMFlowMatchScheduler(eta=0.7), {})):
        with pytest.raises(ValueError, match=r"generator: a list of 2 generators for a batch of 3"):
            _loop(make, x, _gens(1, 2), kw)
    # η = 0, Gaussian: nothing is drawn, and diffusers ignores the generator; so do we
    det = lambda: GMMDDIMScheduler(clip_sample=False)  # noqa: E731
    assert torch.equal(_loop(det, x, _gens(1, 2), dict(eta=0.0)), _loop(det, x, None, dict(eta=0.0)))
