"""Dense layouts are read and written in place (issue 11, item 7) and a sample's randomness is a function of its
global index (issue 13): the same numbers whatever the layout, the batch or the offset, on every CPU backend."""
import pytest
import torch

from gmm_triton import build_mixture, initial_noise, ops, reference
from gmm_triton.contract import STREAM_LATENT
from gmm_triton.mixture import VARIANCES

BACKENDS = ["cpp", "triton", "reference"]


@pytest.fixture(params=BACKENDS)
def backend(request):
    with ops.use_cpu_backend(request.param):
        yield request.param


ROWS = torch.tensor([901, 501, 101])


@pytest.mark.parametrize("variance", [None, *VARIANCES])
def test_channels_last_in_place_same_numbers(backend, table, variance):
    x, m = torch.randn(3, 4, 6, 5), torch.randn(3, 4, 6, 5)
    mix = build_mixture(120, 10, components=4, scale=0.01, variance=variance, seed=3) if variance else None
    ref, ref_x0 = ops.ddim_step(x, m, ROWS, table, eta=1.0, seed=7, mixture=mix)
    xc, mc = x.to(memory_format=torch.channels_last), m.to(memory_format=torch.channels_last)
    out, x0 = ops.ddim_step(xc, mc, ROWS, table, eta=1.0, seed=7, mixture=mix)
    assert out.is_contiguous(memory_format=torch.channels_last) and not out.is_contiguous()
    assert x0.stride() == out.stride()
    tol = 1e-9 if variance == "exact" else 0.0  # the exact mode's projection sums in another order
    assert (out - ref).abs().max() <= tol and torch.equal(x0, ref_x0)


def test_channels_last_inputs_are_not_copied(table):
    xc = torch.randn(2, 4, 6, 5).to(memory_format=torch.channels_last)
    mc = torch.randn(2, 4, 6, 5).to(memory_format=torch.channels_last)
    layout, (x, m, z), pixels, cl = ops._layout_of(ops._like_sample(xc), (xc, mc, None))
    assert x is xc and m is mc and z is None
    assert layout.sizes == (1, 30, 4) and layout.lstrides == (0, 1, 30)  # (h·w, c) in memory; d = c·30 + hw
    assert pixels == 4 and cl == (True, True, False)  # the step's pixel tiles, 4 channels


def test_mixed_layouts_are_not_copied(table):
    """Pixel tiles read a channels_last stream and a contiguous one alike: neither is copied into the other's
    layout, whichever of them the sample (and so out) has."""
    x, m = torch.randn(2, 4, 6, 5), torch.randn(2, 4, 6, 5)
    xc, mc = x.to(memory_format=torch.channels_last), m.to(memory_format=torch.channels_last)
    for xs, ms, cl in ((x, mc, (False, True, False)), (xc, m, (True, False, False))):
        layout, (x_in, m_in, _), pixels, stream_cl = ops._layout_of(ops._like_sample(xs), (xs, ms, None))
        assert x_in is xs and m_in is ms and pixels == 4 and stream_cl == cl
        assert (layout is None) == (xs is x)


@pytest.mark.parametrize("variance", [None, "diag", "vub", "exact"])
@pytest.mark.parametrize("dtype, shape", [(torch.float16, (2, 4, 8, 8)),    # whole Philox groups, rows of 8
                                          (torch.float32, (2, 8, 4, 6)),    # rows of 4, 16-byte vectors
                                          (torch.float32, (2, 16, 3, 3))])  # ragged pixels: one group per element
def test_pixel_tiles_draw_what_contiguous_tiles_draw(backend, table, variance, dtype, shape):
    """channels_last and both mixed layouts (kernels/step.py's pixel tiles on the Triton backend; the C++ twin
    conforms a mixed input to out's layout): the same numbers, bit for bit, as the contiguous launch — the noise and
    the mixture rows follow the logical index whatever order the streams are stored in."""
    D = shape[1] * shape[2] * shape[3]
    mix = build_mixture(D, 10, components=4, scale=0.01, variance=variance, seed=3) if variance else None
    x, m = torch.randn(shape).to(dtype), torch.randn(shape).to(dtype)
    ref, ref_x0 = ops.ddim_step(x, m, ROWS[:2], table, eta=1.0, seed=7, mixture=mix)
    cl = lambda t: t.to(memory_format=torch.channels_last)  # noqa: E731
    for xs, ms in ((cl(x), cl(m)), (x, cl(m)), (cl(x), m)):
        out, x0 = ops.ddim_step(xs, ms, ROWS[:2], table, eta=1.0, seed=7, mixture=mix)
        assert out.stride() == xs.stride() and x0.stride() == xs.stride()
        # the exact mode's projection sums in another order (float32 partial sums of the basis rows)
        tol = 2 * float(ref.abs().max()) * torch.finfo(dtype).eps if variance == "exact" else 0.0
        assert (out.double() - ref.double()).abs().max() <= tol and torch.equal(x0, ref_x0)


def test_mixed_layouts_and_cfg(backend, table):
    """A channels_last sample with a contiguous [uncond; cond] model output (one is copied into the other's layout)
    and a 3-D permutation that merges to two dimensions."""
    x, m2 = torch.randn(2, 3, 4, 5), torch.randn(4, 3, 4, 5)
    ref, _ = ops.ddim_step(x, m2, 500, table, eta=0.7, seed=2, guidance_scale=3.0)
    out, _ = ops.ddim_step(x.to(memory_format=torch.channels_last), m2, 500, table, eta=0.7, seed=2,
                           guidance_scale=3.0)
    assert out.is_contiguous(memory_format=torch.channels_last) and torch.equal(out, ref)
    xp = x.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)  # the same memory order, built by hand
    z = torch.randn_like(x)
    out2, _ = ops.ddim_step(xp, m2[:2].permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2), 500, table, eta=0.7,
                            noise=z)
    assert torch.equal(out2, ops.ddim_step(x, m2[:2], 500, table, eta=0.7, noise=z)[0])


@pytest.mark.parametrize("variance", [None, "diag", "exact"])
def test_sample_offset_makes_noise_batch_invariant(backend, table, variance):
    x, m = torch.randn(4, 3, 5, 7), torch.randn(4, 3, 5, 7)
    mix = build_mixture(105, 10, components=4, scale=0.01, variance=variance, seed=3) if variance else None
    whole, _ = ops.ddim_step(x, m, 501, table, eta=1.0, seed=9, mixture=mix)
    parts = [ops.ddim_step(x[i:i + 2], m[i:i + 2], 501, table, eta=1.0, seed=9, mixture=mix, sample_offset=off)[0]
             for i, off in ((0, 0), (2, torch.tensor([2])))]
    tol = 1e-9 if variance == "exact" else 0.0
    assert (torch.cat(parts) - whole).abs().max() <= tol
    shifted, _ = ops.ddim_step(x[2:], m[2:], 501, table, eta=1.0, seed=9, mixture=mix)
    assert not torch.equal(shifted, whole[2:])  # without the offset, samples 2, 3 would reuse samples 0, 1's noise


@pytest.mark.parametrize("variance", [None, "diag", "vub"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])  # rows of 4 and of 8
def test_shifted_tiles_draw_what_each_element_draws(table, variance, dtype):
    """A device offset with D % 4 ≠ 0: each sample's tiles start s = (o + b)·D mod 4 into a Philox group, known only
    on the device (kernels/philox.py _shifted; with a mixture's ρ² the Box–Muller parts are shifted before their
    square roots). D = 1023 fills a tile of 1024 up to its last row, so the next-row lanes and the program's extra
    group are used. The same logical launch stored channels_last with C = 3 takes the per-element path
    (PERMUTED: normal_at): the outputs are bit-identical, for every sample's s."""
    shape = (4, 3, 11, 31)
    D = 3 * 11 * 31
    mix = build_mixture(D, 10, components=4, scale=0.3, variance=variance, seed=3) if variance else None
    x, m = torch.randn(shape).to(dtype), torch.randn(shape).to(dtype)
    off = torch.tensor([5])
    assert sorted((5 + b) * D % 4 for b in range(4)) == [0, 1, 2, 3]
    with ops.use_cpu_backend("triton"):
        flat, x0 = ops.ddim_step(x, m, 501, table, eta=1.0, seed=7, mixture=mix, sample_offset=off)
        cl = lambda t: t.to(memory_format=torch.channels_last)  # noqa: E731
        per, x0p = ops.ddim_step(cl(x), cl(m), 501, table, eta=1.0, seed=7, mixture=mix, sample_offset=off)
    assert torch.equal(flat, per.contiguous()) and torch.equal(x0, x0p.contiguous())


def test_sample_offset_against_numpy_philox(table):
    """Sample b at offset o draws stream 0 from counter (o + b)·D: checked against the numpy Philox directly."""
    B, D, off = 2, 40, 1000003
    x, m = torch.randn(B, D), torch.zeros(B, D)
    out, _ = ops.ddim_step(x, m, 500, table, eta=1.0, seed=4, sample_offset=off)
    z = torch.from_numpy(reference.philox_normal(4, B * D, start=off * D)).reshape(B, D)
    ref, _ = reference.fused_step(x, m, 500, table, eta=1.0, noise=z)
    assert (out.double() - ref).abs().max() < 2e-6


def test_initial_noise_is_batch_and_offset_invariant():
    whole = initial_noise((5, 3, 4, 4), seed=11)
    parts = torch.cat([initial_noise((2, 3, 4, 4), seed=11), initial_noise((3, 3, 4, 4), seed=11, sample_offset=2)])
    assert torch.equal(whole, parts)
    ref = torch.from_numpy(reference.philox_normal(11, 5 * 48, stream=STREAM_LATENT)).reshape(5, 3, 4, 4)
    assert (whole.double() - ref).abs().max() < 2e-6
    assert initial_noise((1, 8), seed=11, dtype=torch.float16).dtype == torch.float16
    with pytest.raises(ValueError, match="sample_offset must be an int >= 0"):
        initial_noise((1, 8), seed=1, sample_offset=-1)


@pytest.mark.parametrize("kind", ["ddim", "ddim-gmm", "flow-gmm"])
def test_scheduler_sample_offset_gives_batch_invariant_trajectories(kind):
    """Two batches of 2 with offsets 0 and 2 give the same samples as one batch of 4, when each batch's generator is
    seeded alike (every step then draws the same seed) and the initial latents come from initial_noise."""
    from gmm_triton import GMMDDIMScheduler, GMMFlowMatchScheduler

    def make():
        if kind == "flow-gmm":
            return GMMFlowMatchScheduler(kernel="gmm", eta=1.0, gmm_scale=0.1, gmm_variance="vub",
                                         gmm_clip_variance=True)
        return GMMDDIMScheduler(kernel="gmm" if kind == "ddim-gmm" else "gaussian", gmm_scale=0.1, clip_sample=False)

    def run(first, n):
        s = make()
        s.set_timesteps(4)
        s.set_sample_offset(first)
        g = torch.Generator().manual_seed(5)
        x = initial_noise((n, 3, 4, 4), seed=5, sample_offset=first)
        for t in s.timesteps:
            x = (s.step(torch.tanh(x), t, x, generator=g) if kind == "flow-gmm"
                 else s.step(torch.tanh(x), t, x, eta=1.0, generator=g)).prev_sample
        return x

    whole = run(0, 4)
    assert torch.equal(torch.cat([run(0, 2), run(2, 2)]), whole)
    with pytest.raises(ValueError, match="sample_offset must be"):
        make().set_sample_offset(-1)


def test_out_buffers_must_hold_samples_one_after_another(backend, table):
    """An out= view whose batch stride is not D (a slice of a wider buffer, or a stride-0 expand) was accepted and
    written at b·D: wrong values, and writes past the view."""
    x, m = torch.randn(3, 2, 4, 4), torch.randn(3, 2, 4, 4)
    for bad in (torch.zeros(3, 4, 4, 4)[:, :2], torch.zeros(32).view(1, 2, 4, 4).expand(3, 2, 4, 4)):
        with pytest.raises(ValueError, match="samples one after another"):
            ops.ddim_step(x, m, 500, table, out=bad)


def test_strided_tables_are_read_as_what_they_hold(backend, table):
    """A coefficient table or mixture tensor that is a view with gaps: the Triton path read it as packed."""
    x, m = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    wide = torch.zeros(table.shape[0], 16, dtype=torch.float64)
    wide[:, :8] = table
    ref, _ = ops.ddim_step(x, m, torch.tensor([900, 100]), table, eta=1.0, seed=3)
    out, _ = ops.ddim_step(x, m, torch.tensor([900, 100]), wide[:, :8], eta=1.0, seed=3)
    assert torch.equal(out, ref)
    mix = build_mixture(256, 10, components=4, scale=0.05, variance="diag", seed=1)
    t = mix.delta.transpose(1, 2).contiguous().transpose(1, 2)  # same values, strided
    mix2 = type(mix)(**{**mix.__dict__, "delta": t})
    a, _ = ops.ddim_step(x, m, 500, table, eta=1.0, seed=3, mixture=mix)
    b, _ = ops.ddim_step(x, m, 500, table, eta=1.0, seed=3, mixture=mix2)
    assert torch.equal(a, b)


@pytest.mark.parametrize("variance", ["diag", "vub"])
def test_fp64_with_a_mixture(backend, table, variance):
    x, m = (torch.randn(2, 64, dtype=torch.float64) for _ in range(2))
    mix = build_mixture(64, 10, components=4, scale=0.05, variance=variance, seed=1)
    out, _ = ops.ddim_step(x, m, 500, table, eta=1.0, seed=3, mixture=mix)
    ref, _ = reference.fused_step(x, m, 500, table, eta=1.0, seed=3, mixture=mix)
    assert out.dtype == torch.float64 and (out - ref).abs().max() < 2e-6


@pytest.mark.parametrize("be", ["cpp", "reference"])
def test_fp64_scalars_stay_fp64(be, table):
    """η, the clip range and the guidance scale reach an fp64 step as fp64. (The Triton kernel declares them fp64,
    which tests/test_compile_matrix.py checks in the compiled signature and tests/test_cuda.py on a GPU; the
    interpreter turns Python floats into fp32 constants whatever the declaration, so it is not run here.)"""
    x, m, z = (torch.randn(2, 64, dtype=torch.float64) for _ in range(3))
    m2 = torch.randn(4, 64, dtype=torch.float64)
    for kw in (dict(guidance_scale=7.1, model_output=m2), dict(eta=0.3, noise=z), dict(clip_sample_range=0.3)):
        mo = kw.pop("model_output", m)
        with ops.use_cpu_backend(be):
            out, _ = ops.ddim_step(x, mo, 500, table, **kw)
        ref, _ = reference.fused_step(x, mo, 500, table, **kw)
        assert (out - ref).abs().max() < 1e-12, kw


def test_sample_offset_values(table):
    x = torch.randn(2, 8)
    for bad in (torch.tensor([-1]), -1, 2**63):
        with pytest.raises(ValueError, match="sample_offset must be"):
            ops.ddim_step(x, x, 500, table, eta=1.0, seed=1, sample_offset=bad)


@pytest.mark.parametrize("offset", [0, 7, "device"])
def test_flat_tiles_of_a_ragged_batch_draw_what_per_sample_tiles_draw(table, offset):
    """A ragged D with one timestep and one seed runs on tiles of the flat [B·D] array (kernels/step.py FLAT: a tile
    crosses samples); a per-sample timestep tensor (same rows) keeps per-sample tiles. Both must give every element
    the noise of its logical counter (offset + b)·D + d: bit-identical outputs, and the numpy Philox's numbers."""
    B, D = 5, 1001  # D % 4 != 0: tiles cross samples mid-group; offset 7: 7·D ≢ 0 (mod 4)
    x, m = torch.randn(B, D), torch.randn(B, D)
    off = torch.tensor([3]) if offset == "device" else offset
    with ops.use_cpu_backend("triton"):
        flat, x0f = ops.ddim_step(x, m, 501, table, eta=1.0, seed=11, sample_offset=off)
        per, x0p = ops.ddim_step(x, m, torch.full((B,), 501), table, eta=1.0, seed=11, sample_offset=off)
    assert torch.equal(flat, per) and torch.equal(x0f, x0p)
    o = 3 if offset == "device" else offset
    z = torch.from_numpy(reference.philox_normal(11, B * D, start=o * D)).reshape(B, D)
    ref, _ = reference.fused_step(x, m, 501, table, eta=1.0, noise=z)
    assert (flat.double() - ref).abs().max() < 2e-6
