""""Step i of a schedule uses mixture table i": the rule that ties the coefficient table's step column to the
mixture's per-step offset tables, pinned against the schedule itself (not against the code that builds the column).

At η = 0 with clipped VUB variances the mixture step is DDIM's mean plus δ_k exactly (σ = 0: no noise), so the
difference between a GMM step and a Gaussian step on the same inputs must be one of the K offsets of table i — the
table of the step's position i in ``scheduler.timesteps`` — and of no other table.
"""
import pytest
import torch

from gmm_triton import GMMDDIMScheduler, GMMFlowMatchScheduler, ddim_step
from gmm_triton.coefficients import step_index_of

SHAPE = (3, 2, 4, 4)
GMM = dict(kernel="gmm", gmm_components=4, gmm_scale=1.0, gmm_variance="vub", gmm_clip_variance=True,
           gmm_offset_final=True)


def _table_of(residual: torch.Tensor, delta: torch.Tensor):
    """The indices i of the tables [S, K, D] one of whose offsets equals each sample's residual [B, D]."""
    err = (residual[:, None, None, :] - delta.double()[None]).abs().amax(-1)  # [B, S, K]
    hits = (err < 1e-5).any(-1)                                                  # [B, S]
    return [tuple(torch.nonzero(h).flatten().tolist()) for h in hits]


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
def test_ddim_step_i_uses_table_i(spacing):
    gauss = GMMDDIMScheduler(timestep_spacing=spacing, clip_sample=False)
    gmm = GMMDDIMScheduler(timestep_spacing=spacing, clip_sample=False, **GMM)
    for s in (gauss, gmm):
        s.set_timesteps(7)
    x, m = torch.randn(SHAPE, dtype=torch.float64), torch.randn(SHAPE, dtype=torch.float64)
    for i, t in enumerate(gauss.timesteps):
        r = gmm.step(m, t, x, eta=0.0).prev_sample - gauss.step(m, t, x, eta=0.0).prev_sample
        (mix,) = gmm._mixture_cache.mixtures.values()
        assert mix.num_tables == 7
        assert _table_of(r.reshape(SHAPE[0], -1), mix.delta) == [(i,)] * SHAPE[0], (spacing, i, int(t))


def test_off_grid_timesteps_use_the_table_of_the_largest_grid_timestep_at_or_below_them():
    """Every t ∈ [0, T) has a row: t uses the table of the largest grid timestep ≤ t (step 0 above the grid, the last
    step below it), so grid timestep t_i uses table i and t_i ± 1 (off the grid) use tables i and i + 1."""
    ts = torch.tensor([901, 701, 501, 301, 101])
    idx = step_index_of(1000, ts.numpy())
    for i, t in enumerate(ts.tolist()):
        assert (idx[t], idx[t + 1], idx[t - 1]) == (i, i, min(i + 1, 4)), t
    assert idx[999] == 0 and idx[0] == 4 and idx[650] == 2


def test_per_sample_timesteps_use_each_samples_table():
    """One launch, three samples at three different steps: each gets its own step's table."""
    gmm = GMMDDIMScheduler(clip_sample=False, **GMM)
    gmm.set_timesteps(7)
    x, m = torch.randn(SHAPE, dtype=torch.float64), torch.randn(SHAPE, dtype=torch.float64)
    gmm.step(m, gmm.timesteps[0], x, eta=0.0)  # builds the mixture
    (mix,) = gmm._mixture_cache.mixtures.values()
    table = gmm._table.on(x.device)
    positions = [5, 0, 3]
    t = gmm.timesteps[positions]
    with_mix, _ = ddim_step(x, m, t, table, mixture=mix, seed=3, offset_final=True)
    plain, _ = ddim_step(x, m, t, table)
    assert _table_of((with_mix - plain).reshape(SHAPE[0], -1), mix.delta) == [(p,) for p in positions]


def test_flow_step_i_uses_table_i():
    gauss = GMMFlowMatchScheduler(eta=0.0)
    gmm = GMMFlowMatchScheduler(eta=0.0, **GMM)
    for s in (gauss, gmm):
        s.set_timesteps(6)
    x, m = torch.randn(SHAPE, dtype=torch.float64), torch.randn(SHAPE, dtype=torch.float64)
    for i, t in enumerate(gauss.timesteps):
        r = gmm.step(m, t, x).prev_sample - gauss.step(m, t, x).prev_sample
        (mix,) = gmm._mixture_cache.mixtures.values()
        assert _table_of(r.reshape(SHAPE[0], -1), mix.delta) == [(i,)] * SHAPE[0], (i, float(t))
