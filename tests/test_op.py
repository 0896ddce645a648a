"""The fused op against the float64 reference, on every CPU backend (the C++ twin and the Triton kernel
under TRITON_INTERPRET=1); the same tests run on the GPU with `-m cuda` (tests/test_cuda.py)."""
import numpy as np
import pytest
import torch

import gmm_triton.kernels.step as kstep
from gmm_triton import backends, ops, reference
from gmm_triton.kernels.step import LaunchConfig

BACKENDS = ["cpp", "triton"]


@pytest.fixture(params=BACKENDS)
def backend(request):
    with ops.use_cpu_backend(request.param):
        yield request.param


def lowp_error(x, m, row, table, dtype, pred, eta, noise):
    """The error of the same DDIM maths done in torch at ``dtype`` (every op rounded), vs float64."""
    c = table[row]
    al, s_t, alp, s_prev2, var = (torch.tensor(float(v), dtype=dtype) for v in c[:5])
    xl, ml, zl = x.to(dtype), m.to(dtype), noise.to(dtype)
    if pred == "epsilon":
        x0, e = (xl - s_t * ml) / al, ml
    else:
        x0, e = al * xl - s_t * ml, al * ml + s_t * xl
    sigma = eta * var.sqrt()
    prev = alp * x0 + (s_prev2 - sigma**2).clamp(min=0).sqrt() * e + sigma * zl
    truth, _ = reference.fused_step(x.to(dtype), m.to(dtype), row, table, prediction_type=pred, eta=eta,
                                    noise=zl)
    return (prev.double() - truth).abs().max().item()


@pytest.mark.parametrize("shape", [(3, 5, 7, 11), (2, 4, 16, 16)], ids=["D385-unaligned", "D1024"])
@pytest.mark.parametrize("pred", ["epsilon", "sample", "v_prediction", "flow"])
@pytest.mark.parametrize("eta", [0.0, 0.8])
def test_fp32_matches_reference(backend, table, shape, pred, eta):
    x, m = torch.randn(shape), torch.randn(shape)
    prev, x0 = ops.ddim_step(x, m, 600, table, prediction_type=pred, eta=eta, seed=11, clip_sample_range=1.5,
                             use_clipped_model_output=pred == "sample")
    rp, rx0 = reference.fused_step(x, m, 600, table, prediction_type=pred, eta=eta, seed=11, clip_sample_range=1.5,
                                   use_clipped_model_output=pred == "sample")
    # fp32 arithmetic (~1e-7 relative) plus the float32 Box-Muller's ~1e-6 on |z| <= 5.8
    assert (prev.double() - rp).abs().max() <= 2e-6 * (1 + rp.abs().max())
    assert (x0.double() - rx0).abs().max() <= 1e-6 * (1 + rx0.abs().max())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("pred", ["epsilon", "v_prediction"])
def test_low_precision_within_2x_torch_error(backend, table, dtype, pred):
    shape = (2, 4, 16, 16)
    for row in (900, 400, 20):
        x, m, z = torch.randn(shape), torch.randn(shape), torch.randn(shape)
        xl, ml, zl = x.to(dtype), m.to(dtype), z.to(dtype)
        prev, _ = ops.ddim_step(xl, ml, row, table, prediction_type=pred, eta=0.7, noise=zl)
        assert prev.dtype == dtype
        truth, _ = reference.fused_step(xl, ml, row, table, prediction_type=pred, eta=0.7, noise=zl)
        err = (prev.double() - truth).abs().max().item()
        assert err <= 2 * lowp_error(x, m, row, table, dtype, pred, 0.7, z), (row, err)


def test_fp64_inputs_compute_in_fp64(backend, table):
    x, m, z = (torch.randn(2, 3, 8, 8, dtype=torch.float64) for _ in range(3))
    prev, _ = ops.ddim_step(x, m, 500, table, eta=1.0, noise=z)
    rp, _ = reference.fused_step(x, m, 500, table, eta=1.0, noise=z)
    assert prev.dtype == torch.float64 and (prev - rp).abs().max() < 1e-12


def test_per_sample_timesteps(backend, table):
    x, m = torch.randn(4, 3, 6, 6), torch.randn(4, 3, 6, 6)
    rows = torch.tensor([999, 500, 3, 0])
    prev, x0 = ops.ddim_step(x, m, rows, table, eta=1.0, seed=3)
    rp, rx0 = reference.fused_step(x, m, rows, table, eta=1.0, seed=3)
    # fp32: a few roundings relative to the values (x̂₀ reaches ~60 at t = 999, where √ᾱ = 0.07)
    assert (prev.double() - rp).abs().max() <= 2e-6 * (1 + rp.abs().max())
    assert (x0.double() - rx0).abs().max() <= 1e-6 * (1 + rx0.abs().max())


def test_cfg_fused_equals_unfused(backend, table):
    x = torch.randn(3, 4, 8, 8)
    u, c = torch.randn_like(x), torch.randn_like(x)
    fused, _ = ops.ddim_step(x, torch.cat([u, c]), 700, table, guidance_scale=7.5, eta=1.0, seed=9)
    plain, _ = ops.ddim_step(x, u + 7.5 * (c - u), 700, table, eta=1.0, seed=9)
    assert (fused - plain).abs().max() < 1e-5


def test_non_contiguous_inputs(backend, table):
    base = torch.randn(2, 4, 10, 10)
    m = torch.randn(2, 4, 10, 10)
    ref, _ = ops.ddim_step(base.contiguous(), m, 300, table, eta=0.5, seed=1)
    cl = base.to(memory_format=torch.channels_last)                 # inner dims permuted: copied
    strided = torch.randn(4, 4, 10, 10)[::2].copy_(base)            # batch stride only: read in place
    transposed = base.transpose(2, 3).contiguous().transpose(2, 3)  # non-contiguous view of the same values
    for v in (cl, strided, transposed):
        out, _ = ops.ddim_step(v, m, 300, table, eta=0.5, seed=1)
        assert torch.equal(out, ref)
    one = torch.randn(1, 4, 10, 10)
    out, _ = ops.ddim_step(one.expand(2, -1, -1, -1), m, 300, table, eta=0.5, seed=1)  # batch stride 0
    ref2, _ = ops.ddim_step(one.repeat(2, 1, 1, 1), m, 300, table, eta=0.5, seed=1)
    assert torch.equal(out, ref2)


def test_inputs_not_modified(backend, table):
    x, m, z = torch.randn(2, 8, 8), torch.randn(2, 8, 8), torch.randn(2, 8, 8)
    xc, mc, zc = x.clone(), m.clone(), z.clone()
    ops.ddim_step(x, m, 10, table, eta=1.0, noise=z, clip_sample_range=1.0)
    assert torch.equal(x, xc) and torch.equal(m, mc) and torch.equal(z, zc)


def test_dynamic_thresholding(backend, table):
    x, m = 3 * torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8)
    prev, x0 = ops.ddim_step(x, m, 50, table, thresholding=(0.9, 2.0), prediction_type="sample")
    q = reference.dynamic_threshold_scale(m, 0.9, 2.0)
    rp, rx0 = reference.fused_step(x, m, 50, table, prediction_type="sample", threshold_scale=q)
    assert (x0.double() - rx0).abs().max() < 1e-6 and (prev.double() - rp).abs().max() < 1e-5
    assert x0.abs().max() <= 1.0 + 1e-6


def test_out_of_table_timestep(backend, table):
    """Host-visible timesteps off the table raise; one the host cannot see (a device tensor) poisons only its
    own sample with NaN in the kernel instead of reading out of bounds (exercised here below the op's check)."""
    x, m = torch.randn(2, 16), torch.randn(2, 16)
    with pytest.raises(ValueError, match="outside the coefficient table"):
        ops.ddim_step(x, m, torch.tensor([5, 1000]), table)
    out, x0 = torch.empty(2, 16), torch.empty(2, 16)
    backends.RUNNERS[backend](backends.StepArgs(
        x=x, m=m, out=out, x0=x0, coef=table, timesteps=torch.tensor([5, 1000]), timestep=0, seed=None,
        sample_offset=None, noise=None, threshold=None, mixture=None, prediction_type="epsilon", eta=0.0, clip=None,
        clipped_eps=False, guidance=None, offset_final=False, write_x0=True, noise_mode=0, layout=None, B=2, D=16))
    assert torch.isfinite(out[0]).all() and torch.isnan(out[1]).all() and torch.isnan(x0[1]).all()


def test_block_size_does_not_change_the_stream(table, monkeypatch):
    """Noise is keyed by (seed, element index) only: two block sizes (and so grids) give the same bits."""
    x, m = torch.randn(2, 3, 17, 19), torch.randn(2, 3, 17, 19)  # D = 969: several blocks, ragged tail
    outs = []
    with ops.use_cpu_backend("triton"):
        for block in (256, 1024):
            monkeypatch.setattr(kstep, "default_config", lambda D, dev, b=block: LaunchConfig(b, 4))
            outs.append(ops.ddim_step(x, m, 400, table, eta=1.0, seed=77)[0])
    with ops.use_cpu_backend("cpp"):
        outs.append(ops.ddim_step(x, m, 400, table, eta=1.0, seed=77)[0])
    assert torch.equal(outs[0], outs[1])
    assert (outs[0] - outs[2]).abs().max() < 1e-5  # the C++ twin: same stream, its own float rounding


# ---------------------------------------------------------------------------------------------------
# RNG contract
# ---------------------------------------------------------------------------------------------------
def test_philox_known_answers():
    """Random123's published known-answer vectors for Philox4x32-10."""
    kat = [
        ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
        ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
        ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
         (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
    ]
    for ctr, key, expect in kat:
        got = reference.philox4x32_rounds(*(np.uint32(c) for c in ctr), *key)
        assert tuple(int(w) for w in got) == expect


@pytest.mark.parametrize("seed,stream,start", [(0, 0, 0), (2**40 + 5, 1, 2**33 - 3), (2**62 - 1, 2, 12345)])
def test_philox_integers_bit_exact(backend, seed, stream, start):
    w = ops.philox_words(300, seed=seed, stream=stream, start=start).numpy()
    r = np.stack(reference.philox4x32(seed, np.arange(start, start + 300, dtype=np.uint64), stream), 1)
    assert np.array_equal(w.view(np.uint32), r)


@pytest.mark.parametrize("start", [0, 3, 2**32 + 1])
def test_philox_normals_within_contract(backend, start):
    z = ops.philox_normal((5000,), seed=1234, stream=0, start=start).double().numpy()
    r = reference.philox_normal(1234, 5000, 0, start)
    assert np.abs(z - r).max() < 1e-5


def test_noise_is_standard_normal():
    """The stream is N(0, 1): per-seed KS p-values are themselves uniform over 100 seeds (a single fixed-seed
    KS test is one deterministic draw of a p-value), and 4M draws have moments within 5 standard errors."""
    from scipy import stats

    ps = [stats.kstest(ops.philox_normal((20_000,), seed=s, stream=0).double().numpy(), "norm").pvalue
          for s in range(100)]
    assert stats.kstest(ps, "uniform").pvalue > 1e-3
    z = ops.philox_normal((4_000_000,), seed=1, stream=0).double().numpy()
    n = z.size
    assert abs(z.mean()) < 5 / np.sqrt(n) and abs(z.var() - 1) < 5 * np.sqrt(2 / n)
    assert abs(stats.skew(z)) < 5 * np.sqrt(6 / n) and abs(stats.kurtosis(z)) < 5 * np.sqrt(24 / n)


def test_step_noise_is_the_contract_stream(backend, table):
    """prev − (its η = 0 value) = σ z with z the Philox normals at the flat element index."""
    x, m = torch.randn(3, 50), torch.randn(3, 50)
    noisy, _ = ops.ddim_step(x, m, 500, table, eta=1.0, seed=99)
    det, _ = ops.ddim_step(x, m, 500, table, eta=0.0)
    row = table[500]
    sigma = float(row[4]) ** 0.5
    c_eta1 = max(float(row[3]) - sigma**2, 0) ** 0.5
    c_eta0 = float(row[3]) ** 0.5
    eps = m.double()
    z = (noisy.double() - det.double() - (c_eta1 - c_eta0) * eps) / sigma
    assert (z.reshape(-1) - torch.from_numpy(reference.philox_normal(99, 150))).abs().max() < 1e-4


# ---------------------------------------------------------------------------------------------------
# torch.library, compile
# ---------------------------------------------------------------------------------------------------
def test_opcheck(backend, table):
    x, m = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    seed = torch.tensor([5])
    args = (x, m, table, torch.tensor([300, 20]), 0, seed, torch.tensor([3]), None, None, None, None, None, None,
            None, None, "epsilon", "none", 1.0, 1.0, False, None, False, True)
    torch.library.opcheck(torch.ops.gmm_triton.ddim_step.default, args)


def test_compile_fullgraph_loop_matches_eager(table):
    x0 = torch.randn(2, 4, 8, 8)

    def loop(x, seed):
        for t in (900, 600, 300, 0):
            m = torch.tanh(x)
            x, _ = ops.ddim_step(x, m, t, table, eta=0.5, seed=seed + t)
        return x

    seed = torch.tensor([123])
    eager = loop(x0, seed)
    compiled = torch.compile(loop, fullgraph=True)(x0, seed)
    assert torch.allclose(eager, compiled, atol=1e-6)


def test_compile_fullgraph_scheduler_loop():
    from gmm_triton import GMMDDIMScheduler

    s = GMMDDIMScheduler(clip_sample=False)
    s.set_timesteps(5)
    ts = [int(t) for t in s.timesteps]

    def loop(x):
        for t in ts:
            x = s.step(torch.tanh(x), t, x, eta=0.0).prev_sample
        return x

    x = torch.randn(2, 3, 8, 8)
    assert torch.allclose(loop(x), torch.compile(loop, fullgraph=True)(x), atol=1e-6)


@pytest.mark.slow  # peaks at ~8.6 GB of RAM: `make test-slow`
def test_large_index_beyond_2_31(table):
    """B·D > 2³¹: int64 offsets and 64-bit Philox counters (C++ twin; the Triton kernel is checked on the GPU).

    sample and model_output are expanded views (no memory); only the fp16 output is materialised (4.3 GB).
    The last sample's noise starts at flat index (B-1)·D > 2³¹, so a 32-bit index would wrap.
    """
    B, D = 2, 2**30 + 7
    x = torch.randn(1, D).to(torch.float16).expand(B, D)
    m = torch.randn(1, D).to(torch.float16).expand(B, D)
    with ops.use_cpu_backend("cpp"):
        prev, _ = ops.ddim_step(x, m, 500, table, eta=1.0, seed=4, return_pred_original=False)
    tail = slice(D - 4096, D)
    rp, _ = reference.fused_step(x[:1, tail], m[:1, tail], 500, table, eta=1.0,
                                 noise=torch.from_numpy(reference.philox_normal(4, 4096, 0, (B - 1) * D + D - 4096))[None])
    got = prev[B - 1, tail].double()
    assert (got - rp[0]).abs().max() <= 2 * torch.finfo(torch.float16).eps * (1 + rp.abs().max())
    del prev


def test_out_buffers_and_in_place(backend, table):
    x, m = torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8)
    ref, ref_x0 = ops.ddim_step(x, m, 500, table, eta=1.0, seed=2)
    out, x0 = torch.full_like(x, float("nan")), torch.full_like(x, float("nan"))
    r = ops.ddim_step(x, m, 500, table, eta=1.0, seed=2, out=out, pred_original_out=x0)
    assert r[0] is out and r[1] is x0 and torch.equal(out, ref) and torch.equal(x0, ref_x0)
    xi = x.clone()
    ops.ddim_step(xi, m, 500, table, eta=1.0, seed=2, out=xi)  # in place on the sample
    assert torch.equal(xi, ref)
    with pytest.raises(ValueError, match="out must match sample"):
        ops.ddim_step(x, m, 500, table, out=torch.empty(2, 3, 8))
    with pytest.raises(ValueError, match="out must be dense"):
        ops.ddim_step(x, m, 500, table, out=torch.empty(2, 3, 8, 16)[..., ::2])
    tr = torch.empty(2, 3, 8, 8).transpose(2, 3)  # a permuted dense buffer is written in its own layout
    ops.ddim_step(x, m, 500, table, eta=1.0, seed=2, out=tr)
    assert tr.stride() == (192, 64, 1, 8) and torch.equal(tr, ref)
    args = (torch.empty_like(x), None, x, m, table, None, 500, torch.tensor([5]), None, None, None, None, None,
            None, None, None, None, "epsilon", "none", 1.0, None, False, None, False)
    torch.library.opcheck(torch.ops.gmm_triton.ddim_step_out.default, args)
