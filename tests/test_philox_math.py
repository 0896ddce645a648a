"""The GPU's code path runs on the CPU, and every implementation meets the stated normal bounds (issue 19, items 1-2).

The Triton kernels take one control flow on the GPU and in the interpreter; they differ only in four leaves (the wide
multiply, rcp, sqrt, cos/sin: kernels/philox.py). Under ``emulated_gpu_math`` the interpreter runs the GPU branch with
each hardware leaf at its documented worst error, so these tests execute the GPU's Philox words, lane order, range
reduction and sign handling:
- the words are bit-identical between the emulated GPU branch, the interpreter branch, the C++ twin and numpy;
- every normal lands on the element the contract assigns it (its group and lane, integers), in every kernel path;
- the normals of every implementation are within its bound (reference.NORMAL_BOUNDS) of a long-double truth, at the
  adversarial words and over a structured sample of 10⁶ pairs (all 2²⁴ words per axis in the ``slow`` test).
"""
import numpy as np
import pytest
import torch

from gmm_triton import build_mixture, ops, reference, rng
from gmm_triton.kernels.common import emulated_gpu_math

BOUND = reference.NORMAL_BOUNDS
# the worst words of kernels/philox.py's analysis: a (radius): r largest (0, 1), the largest |Δr| with accurate leaves
# (2789) and with the PTX leaves (1577), the largest bound per a (8, 22); b (angle): the largest float32 φ error
# (113), the interpreter's old worst (14622219), the quadrant edges and the ends of [−π, π)
WORST_A = [0, 1, 8, 22, 1577, 2789, (1 << 23) - 1, 1 << 23, (1 << 24) - 2, (1 << 24) - 1]
WORST_B = [0, 1, 113, 14622219, (1 << 22) - 1, 1 << 22, 1 << 23, 3 << 22, (1 << 24) - 1]
IMPLEMENTATIONS = {"cpp": "cpp", "interpreter": "interpreter", "emulated GPU": "gpu"}


def _run(impl, fn):
    if impl == "cpp":
        with ops.use_cpu_backend("cpp"):
            return fn()
    with ops.use_cpu_backend("triton"):
        if impl == "emulated GPU":
            with emulated_gpu_math():
                return fn()
        return fn()


def _words(values24, low=0):
    """24-bit word values (w >> 8) as int32 words, with the low 8 bits set to ``low`` (they must not matter)."""
    return torch.from_numpy((np.asarray(values24, dtype=np.uint32) << np.uint32(8) | np.uint32(low)).view(np.int32))


def _truth(a24, b24):
    """BoxMuller of the 24-bit values in long double: the float64 reference's own error is checked against it."""
    ld = np.longdouble
    u_open = (np.asarray(a24, dtype=ld) + 1) * ld(2.0) ** -24
    theta = 2 * ld("3.14159265358979323846264338327950288") * np.asarray(b24, dtype=ld) * ld(2.0) ** -24
    r = np.sqrt(-2 * np.log(u_open))
    return np.stack([r * np.cos(theta), r * np.sin(theta)], 1)


def _structured_pairs():
    """~10⁶ word pairs: the adversarial values crossed, and a set of a (small, near the exponent steps of U°, near
    U° = 1, a stride over the range) each paired with b values near the quadrant edges and a stride over [0, 2²⁴)."""
    a_set = np.unique(np.concatenate([np.arange(4096), np.arange((1 << 23) - 512, (1 << 23) + 512),
                                      np.arange((1 << 24) - 2048, 1 << 24), np.arange(0, 1 << 24, 4099), WORST_A]))
    edges = np.concatenate([q * (1 << 22) + np.arange(-256, 256) for q in range(5)])
    b_set = np.unique(np.concatenate([edges[(edges >= 0) & (edges < 1 << 24)], np.arange(0, 1 << 24, 8191),
                                      WORST_B]))
    rng_ = np.random.default_rng(0)
    a = np.concatenate([np.repeat(WORST_A, len(WORST_B)), np.repeat(a_set, 96)])
    b = np.concatenate([np.tile(WORST_B, len(WORST_A)), rng_.choice(b_set, len(a_set) * 96)])
    return a.astype(np.uint32), b.astype(np.uint32)


# ---------------------------------------------------------------------------------------------------
# the integers: bit for bit
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("stream, start", [(0, 0), (1, 2**33 - 7), (3, 2**40 + 1)])
def test_words_are_bit_identical_in_every_implementation(stream, start):
    want = reference.philox4x32(2**63 + 17, np.arange(start, start + 3000, dtype=np.uint64), stream)
    want = torch.from_numpy(np.stack(want, 1).view(np.int32))
    for impl in IMPLEMENTATIONS:
        got = _run(impl, lambda: rng.philox_words(3000, seed=2**63 + 17, stream=stream, start=start))
        assert torch.equal(got, want), impl


def _lands_on(z, seed, stream, start):
    """For each produced normal: the (group, lane) of the contract's normal it matches, as integers. A normal lands on
    the nearest of the 12 lanes of its element's group and the two around it, which must be unambiguous: within the
    GPU bound, while every other candidate is ≥ 1e-3 away."""
    n = z.numel()
    g_lo = max(start // 4 - 1, 0)
    lanes = reference.philox_normal(seed, 4 * (n // 4 + 4), stream, 4 * g_lo).reshape(-1, 4)  # groups g_lo, …
    idx = np.arange(start, start + n)
    rows = idx[:, None] // 4 - g_lo + np.array([-1, 0, 1])                                      # [n, 3] groups
    ok = (rows >= 0) & (rows < len(lanes))
    cand = lanes[np.clip(rows, 0, len(lanes) - 1)]                                              # [n, 3, 4]
    d = np.where(ok[:, :, None], np.abs(cand - z.double().numpy()[:, None, None]), np.inf).reshape(n, 12)
    best = d.argmin(1)
    d.sort(1)
    clear = d[:, 1] >= 100 * BOUND["gpu"]  # two candidates closer than that (~0.3 % of elements) prove nothing
    assert (d[:, 0] <= BOUND["gpu"]).all() and clear.mean() > 0.99
    lands = np.stack([g_lo + rows[np.arange(n), best // 4], best % 4], 1)
    return np.where(clear[:, None], lands, -1)


def _contract_lanes(start, n, lands):
    """The (group, lane) the contract assigns elements start..start+n−1, where ``lands`` identified one."""
    idx = np.arange(start, start + n)
    return np.where(lands >= 0, np.stack([idx // 4, idx % 4], 1), -1)


@pytest.mark.parametrize("start", [0, 3, 4096 * 5 + 2])  # whole Philox groups, and not (a shifted tile)
def test_each_normal_lands_on_its_element(start):
    """normal_fill (normal_block with ROW 4, aligned or shifted by start % 4): the (group, lane) of every element's
    normal is bit-identical between the emulated GPU branch, the interpreter branch and the C++ twin — the
    contract's."""
    n = 9000
    for impl in IMPLEMENTATIONS:
        z = _run(impl, lambda: rng.philox_normal((n,), seed=77, stream=0, start=start))
        lands = _lands_on(z, 77, 0, start)
        assert np.array_equal(lands, _contract_lanes(start, n, lands)), impl


@pytest.mark.parametrize("row", [4, 8])
@pytest.mark.parametrize("start", [0, 1, 2, 3, 2**33 + 5])
def test_a_shifted_tile_draws_every_elements_own_normal(row, start):
    """normal_block at a tile start ≢ 0 (mod 4) known only at run time (kernels/philox.py _shifted: the rows' own
    groups, the next row's first group by a gather, the last row's from group start/4 + BLOCK/4, then a shift by
    s = start % 4): every shift, both row widths, tiles of 64 (R = 16 or 8 rows, so the gather's wrap and the
    last row's extra group are exercised in every tile) and a partial last tile, in the emulated GPU branch and
    the interpreter branch: bit for bit the normals of the aligned tiles that start s elements earlier (every
    element its own counter's normal), each on the contract's (group, lane)."""
    from gmm_triton.kernels.philox import normal_fill
    n, s = 64 * 5 + 17, start % 4
    for impl in ("interpreter", "emulated GPU"):
        got = _run(impl, lambda: normal_fill(torch.empty(n), 99, 2, start, block=64, row=row))
        aligned = _run(impl, lambda: normal_fill(torch.empty(n + s), 99, 2, start - s, block=64, row=row))
        assert torch.equal(got, aligned[s:]), impl
        lands = _lands_on(got, 99, 2, start)
        assert np.array_equal(lands, _contract_lanes(start, n, lands)), impl


def _step_noise(dtype, layout, offset, impl, table):
    """The step's noise σz (x = m = 0 makes prev = σ z) as fp32, in logical order."""
    shape = (3, 4, 12, 12)
    x = m = torch.zeros(shape, dtype=dtype)
    if layout == "channels_last":
        x = m = x.to(memory_format=torch.channels_last)
    elif layout == "m_cl":  # a mixed launch: pixel tiles in logical order
        m = m.to(memory_format=torch.channels_last)
    sigma = 1.0 * float(table[500, 4]) ** 0.5
    prev, _ = _run(impl, lambda: ops.ddim_step(x, m, 500, table, eta=1.0, seed=123, sample_offset=offset))
    return prev.float().contiguous().reshape(-1) / sigma


@pytest.mark.parametrize("dtype, layout, offset", [
    (torch.float16, "contiguous", 0),       # normal_block, rows of 8 (two Philox groups joined per thread)
    (torch.float32, "contiguous", 1),       # rows of 4; offset·D ≡ 0 (mod 4)
    (torch.float16, "channels_last", 0),    # pixel tiles: rows of 8 in logical order, transposed to channels_last
    (torch.float32, "channels_last", 3),    # pixel tiles: rows of 4; counters from 3·D
    (torch.float32, "m_cl", 0),             # pixel tiles in logical order (a channels_last model output)
])
def test_the_steps_noise_lands_on_its_elements(dtype, layout, offset, table):
    """The fused step's own noise paths under every implementation: element i of the batch takes lane i % 4 of
    Philox group i // 4 (global counters from offset·D)."""
    D = 4 * 12 * 12
    start = offset * D
    for impl in IMPLEMENTATIONS:
        z = _step_noise(dtype, layout, offset, impl, table)
        if dtype == torch.float16:  # fp16 rounding (≤ 2⁻¹¹ of |z| ≤ 5.77) hides the bound; a wrong lane is O(1) off
            ref = reference.philox_normal(123, 3 * D, 0, start)
            assert np.abs(z.double().numpy() - ref).max() <= 6 * 2.0**-11, impl
            continue
        lands = _lands_on(z, 123, 0, start)
        assert np.array_equal(lands, _contract_lanes(start, 3 * D, lands)), impl


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])  # rows of 4 and of 8
def test_the_mixtures_split_noise_is_the_contracts(dtype, table):
    """A diag mixture (each lane's ρ² split into its own Box–Muller square root) against the float64 reference:
    within the GPU bound at fp32, within fp16's rounding (a lane off would be O(σ) off) at fp16."""
    x = torch.zeros(2, 4, 8, 8, dtype=dtype)
    mix = build_mixture(256, 10, components=4, scale=0.3, variance="diag", seed=5)
    want, _ = reference.fused_step(x, x, 501, table, eta=1.0, seed=9, mixture=mix)
    tol = BOUND["gpu"] + 1e-6 if dtype == torch.float32 else 2.0**-10 * (1 + want.abs().max().item())
    for impl in IMPLEMENTATIONS:
        got, _ = _run(impl, lambda: ops.ddim_step(x, x, 501, table, eta=1.0, seed=9, mixture=mix))
        assert (got.double() - want).abs().max() <= tol, impl


# ---------------------------------------------------------------------------------------------------
# the floats: within the stated bounds, at the adversarial words and over a structured sample
# ---------------------------------------------------------------------------------------------------
def _max_error(impl, a24, b24):
    got = _run(impl, lambda: rng.box_muller_words(_words(a24, 0x5A), _words(b24, 0xA5)))
    return float(np.abs(got.double().numpy() - _truth(a24, b24)).max())


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_normals_within_the_bound_at_adversarial_and_structured_words(impl):
    a, b = _structured_pairs()
    assert len(a) > 10**6 - 10**5
    err = _max_error(impl, a, b)
    assert err <= BOUND[IMPLEMENTATIONS[impl]], (impl, err)
    # the old interpreter's worst pair alone (issue 19): 1.42e-6 then
    assert _max_error(impl, [1], [14622219]) <= BOUND[IMPLEMENTATIONS[impl]]


def test_the_derived_bounds_hold_over_every_word():
    """kernels/philox.py's derivation, computed over all 2²⁴ words of each axis (tools/normal_bounds.py), is within
    the stated bounds — the interpreter's with its exact angle, the GPU's at the PTX leaves' worst."""
    from gmm_triton.tools.normal_bounds import bounds

    b = bounds()
    assert b["bound_interpreter"] <= BOUND["interpreter"] and b["bound_gpu"] <= BOUND["gpu"], b
    assert b["phi_worst_b"] in WORST_B and b["bound_interpreter_worst_a"] in WORST_A and \
        b["bound_gpu_worst_a"] in WORST_A  # the adversarial words above are this analysis's


def test_the_reference_is_the_truth_to_float64():
    a, b = _structured_pairs()
    got = np.stack(reference.box_muller(a << np.uint32(8), b << np.uint32(8)), 1)
    assert np.abs(got - _truth(a, b)).max() <= 1e-14


@pytest.mark.slow
@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_normals_within_the_bound_over_every_word_of_each_axis(impl):
    """Every 24-bit a at the worst angle words, and every 24-bit b at the largest radius: 2 × 2²⁴ × |worst| pairs."""
    every = np.arange(1 << 24, dtype=np.uint32)
    for b in WORST_B[2:4]:
        assert _max_error(impl, every, np.full_like(every, b)) <= BOUND[IMPLEMENTATIONS[impl]], (impl, "a", b)
    for a in WORST_A[:2]:
        assert _max_error(impl, np.full_like(every, a), every) <= BOUND[IMPLEMENTATIONS[impl]], (impl, "b", a)
