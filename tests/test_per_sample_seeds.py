"""Per-sample seeds: a batch drawn with seeds [s0, s1, s2] (or generators [g0, g1, g2]) equals the three single-sample
runs with s0, s1, s2 (g0, g1, g2), on every CPU backend (the C++ twin, the Triton kernel under TRITON_INTERPRET=1,
the float64 reference), for the Gaussian kernel and each mixture variance mode, at sample offsets 0 and 5."""
import pytest
import torch

import gmm_triton.kernels.step as kstep
from gmm_triton import build_mixture, ops, reference, rng
from gmm_triton.kernels.step import LaunchConfig
from gmm_triton.mixture import VARIANCES

SEEDS = [11, 2**63 + 5, 7]   # one above 2⁶³: its 64 bits, as a single run takes it
ROWS = [901, 501, 101]       # each sample at its own timestep (its own mixture step table)


@pytest.fixture(params=["cpp", "triton", "reference"])
def backend(request, monkeypatch):
    if request.param == "triton":  # several tiles per sample, so that the tiles' alignment differs between samples
        monkeypatch.setattr(kstep, "default_config", lambda D, dev: LaunchConfig(32, 4))
    with ops.use_cpu_backend(request.param):
        yield request.param


def _runs(table, shape, mixture, offset, **kw):
    x, m = torch.randn(shape), torch.randn(shape)
    batch = ops.ddim_step(x, m, torch.tensor(ROWS), table, eta=1.0, seed=SEEDS, mixture=mixture,
                          sample_offset=offset, **kw)
    single = [ops.ddim_step(x[b:b + 1], m[b:b + 1], ROWS[b], table, eta=1.0, seed=SEEDS[b], mixture=mixture,
                            sample_offset=offset, **kw) for b in range(3)]
    return batch, single


@pytest.mark.parametrize("mode", [None, *VARIANCES])
@pytest.mark.parametrize("offset", [0, 5])
@pytest.mark.parametrize("shape", [(3, 4, 6, 6), (3, 5, 7, 3)], ids=["D144", "D105"])  # D % 4 == 0 and != 0
def test_batch_of_seeds_equals_the_single_runs(backend, table, mode, offset, shape):
    D = shape[1] * shape[2] * shape[3]
    mix = build_mixture(D, 10, components=4, scale=0.05, variance=mode, seed=3) if mode else None
    (prev, x0), single = _runs(table, shape, mix, offset)
    for b, (p1, x01) in enumerate(single):
        assert torch.equal(x0[b:b + 1], x01), b
        if mode == "exact":  # the projection's sum over a sample's tiles: another tile split, another sum order
            assert (prev[b:b + 1] - p1).abs().max() <= 1e-6 * (1 + p1.abs().max()), b
        else:
            assert torch.equal(prev[b:b + 1], p1), b
    # and they are the contract's numbers: the float64 reference with the same per-sample seeds
    x, m = torch.randn(shape), torch.randn(shape)
    got, _ = ops.ddim_step(x, m, torch.tensor(ROWS), table, eta=1.0, seed=SEEDS, mixture=mix, sample_offset=offset)
    want, _ = reference.fused_step(x, m, torch.tensor(ROWS), table, eta=1.0, seed=SEEDS, mixture=mix,
                                   sample_offset=offset)
    assert (got.double() - want).abs().max() <= 2e-6 * (1 + want.abs().max())


def test_per_sample_seeds_draw_distinct_samples(table):
    """The seeds matter (not the batch position): equal inputs under distinct seeds differ, under equal seeds agree."""
    x = torch.randn(1, 64).expand(3, 64)
    prev, _ = ops.ddim_step(x, x, 500, table, eta=1.0, seed=[4, 9, 4])
    assert torch.equal(prev[0], prev[2]) and not torch.equal(prev[0], prev[1])


def test_generator_list_equals_single_generators(table):
    """rng.draw_seed draws one seed per generator of a list, each as a single draw from it; ddim_step with a list of
    generators equals the single runs with each generator."""
    gens = lambda: [torch.Generator().manual_seed(s) for s in (1, 2, 3)]  # noqa: E731
    seeds = rng.draw_seed(gens())
    assert seeds.shape == (3,) and seeds.dtype == torch.int64
    assert torch.equal(seeds, torch.cat([rng.draw_seed(g) for g in gens()]))
    shape = (3, 4, 8, 8)
    x, m = torch.randn(shape), torch.randn(shape)
    mix = build_mixture(256, 10, components=4, scale=0.05, variance="diag", seed=3)
    batch, _ = ops.ddim_step(x, m, 501, table, eta=1.0, generator=gens(), mixture=mix)
    single = [ops.ddim_step(x[b:b + 1], m[b:b + 1], 501, table, eta=1.0, generator=g, mixture=mix)[0]
              for b, g in enumerate(gens())]
    assert torch.equal(batch, torch.cat(single))


def test_draw_seed_rejects_bad_lists():
    with pytest.raises(ValueError, match="empty list"):
        rng.draw_seed([])
    with pytest.raises(TypeError, match=r"generator\[1\] must be a torch.Generator"):
        rng.draw_seed([torch.Generator(), 3])


def test_opcheck_with_per_sample_seeds(table):
    x, m = torch.randn(3, 2, 4, 4), torch.randn(3, 2, 4, 4)
    args = (x, m, table, torch.tensor([300, 20, 5]), 0, torch.tensor([5, 6, 7]), torch.tensor([3]), None, None, [],
            "epsilon", "none", 1.0, 1.0, False, None, False, True)
    for backend in ("cpp", "triton"):
        with ops.use_cpu_backend(backend):
            torch.library.opcheck(torch.ops.gmm_triton.ddim_step.default, args)
