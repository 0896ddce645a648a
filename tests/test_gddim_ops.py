"""The fused gDDIM ops against the float64 reference on both CPU backends (the C++ twin and the Triton kernels
under TRITON_INTERPRET=1), plus the op conventions: dtypes, per-sample rows, noise sources, strides, no in-place
writes, opcheck, torch.compile tracing."""
import itertools

import numpy as np
import pytest
import torch
import triton
import triton.language as tl

from gmm_triton import ops, reference
from gmm_triton.gddim import engine as E
from gmm_triton.gddim import ops as gops
from gmm_triton.gddim import reference as gref
from gmm_triton.gddim.blur import BlurProcess
from gmm_triton.gddim.cld import CLD
from gmm_triton.gddim.tables import blur_table, cld_table
from gmm_triton.kernels.blur_step import _kperm, _mm, _tf32

BACKENDS = ["cpp", "triton"]


@pytest.fixture(params=BACKENDS)
def backend(request):
    with ops.use_cpu_backend(request.param):
        yield request.param


@pytest.fixture(scope="module")
def cld_tables():
    g = E.time_grid(6, 1.0, 1e-3)
    return {r: cld_table(E.gddim_coefficients(CLD(), g, r, 0.0, "R")) for r in (0, 1, 2)} | {
        "lam": cld_table(E.gddim_coefficients(CLD(), g, 0, 0.7, "R")),
        "lam2": cld_table(E.gddim_coefficients(CLD(), g, 2, 0.7, "R"))}


def blur_tables(N, lam_order=0):
    p = BlurProcess(N)
    g = E.time_grid(5, p.rho2t(80), 1e-5)
    return (blur_table(E.gddim_coefficients(p, g, 2, 0.0), N),
            blur_table(E.gddim_coefficients(p, g, lam_order, 1.0 if lam_order == 0 else 0.5), N), p.dct())


def magnitude(fn, state, eps, table, *args, noise):
    """The float64 reference on |inputs| and |table|: a bound on every term's size, the scale of rounding."""
    return fn(state.abs(), [e.abs() for e in eps], table.abs(), *args, noise=None if noise is None else noise.abs())


def philox(seed, shape):
    return torch.from_numpy(reference.philox_normal(seed, int(np.prod(shape)))).reshape(shape)


# ---------------------------------------------------------------------------------------------------
# CLD
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(3, 2, 5, 7), (2, 2, 4, 16)], ids=["D35-unaligned", "D64"])
@pytest.mark.parametrize("order", [0, 1, 2])
def test_cld_fp32_matches_reference(backend, cld_tables, shape, order):
    u = torch.randn(shape)
    eps = [torch.randn(shape) for _ in range(order + 1)]
    rows = torch.tensor([3, 5, 1][: shape[0]])
    out = gops.cld_step(u, eps, rows, cld_tables[order])
    ref = gref.cld_step(u, eps, cld_tables[order], rows)
    bound = magnitude(gref.cld_step, u, eps, cld_tables[order], rows, noise=None)
    assert out.dtype == torch.float32
    assert ((out.double() - ref).abs() <= 4e-7 * (1 + bound)).all()


def test_cld_philox_noise_matches_reference(backend, cld_tables):
    u = torch.randn(3, 2, 6, 6)
    eps = [torch.randn_like(u)]
    out = gops.cld_step(u, eps, 2, cld_tables["lam"], stochastic=True, seed=31)
    ref = gref.cld_step(u, eps, cld_tables["lam"], 2, seed=31)
    bound = magnitude(gref.cld_step, u, eps, cld_tables["lam"], 2, noise=philox(31, u.shape))
    # fp32 arithmetic plus the float32 Box-Muller's ~1e-6 on |z| <= 5.8
    assert ((out.double() - ref).abs() <= 2e-6 * (1 + bound)).all()
    # the counter layout: x noise at b·2D + d, v noise at b·2D + D + d (the flat index over [B, 2, D])
    out_z = gops.cld_step(u, eps, 2, cld_tables["lam"], stochastic=True, noise=philox(31, u.shape).float())
    assert (out - out_z).abs().max() < 1e-5


@pytest.mark.parametrize("shape", [(3, 2, 5, 7), (2, 2, 4, 16)], ids=["D35-unaligned", "D64"])
def test_cld_stochastic_multistep_matches_reference(backend, cld_tables, shape):
    """λ > 0 with order 2 (stochastic multistep): three buffers and in-kernel noise in one launch, per-sample rows."""
    u = torch.randn(shape)
    eps = [torch.randn(shape) for _ in range(3)]
    rows = torch.tensor([4, 5, 3][: shape[0]])
    out = gops.cld_step(u, eps, rows, cld_tables["lam2"], stochastic=True, seed=11)
    ref = gref.cld_step(u, eps, cld_tables["lam2"], rows, seed=11)
    bound = magnitude(gref.cld_step, u, eps, cld_tables["lam2"], rows, noise=philox(11, u.shape))
    assert ((out.double() - ref).abs() <= 2e-6 * (1 + bound)).all()
    assert (ref - gref.cld_step(u, eps, cld_tables["lam2"], rows)).abs().max() > 1e-3   # the noise is there


def test_cld_fp64_computes_in_fp64(backend, cld_tables):
    u = torch.randn(2, 2, 40, dtype=torch.float64)
    eps = [torch.randn_like(u) for _ in range(3)]
    z = torch.randn_like(u)
    out = gops.cld_step(u, eps, 4, cld_tables[2])
    assert out.dtype == torch.float64 and (out - gref.cld_step(u, eps, cld_tables[2], 4)).abs().max() < 1e-12
    out = gops.cld_step(u, eps[:1], 4, cld_tables["lam"], stochastic=True, noise=z)
    assert (out - gref.cld_step(u, eps[:1], cld_tables["lam"], 4, noise=z)).abs().max() < 1e-12


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_cld_low_precision_within_2x_torch_error(backend, cld_tables, dtype):
    """The kernel computes in fp32 and rounds once; the same maths done in torch at ``dtype`` rounds every op."""
    u, e0, e1 = (torch.randn(2, 2, 256).to(dtype) for _ in range(3))
    out = gops.cld_step(u, [e0, e1], 3, cld_tables[1])
    assert out.dtype == dtype
    truth = gref.cld_step(u, [e0, e1], cld_tables[1], 3)
    c = cld_tables[1][3].to(dtype)
    blocks = [c[4 * k:4 * k + 4].reshape(2, 2) for k in range(3)]
    lowp = sum(torch.einsum("ij,bjd->bid", blk, t) for blk, t in zip(blocks, (u, e0, e1)))
    assert (out.double() - truth).abs().max() <= 2 * (lowp.double() - truth).abs().max()


def test_cld_strided_and_not_modified(backend, cld_tables):
    base = torch.randn(4, 2, 6, 5)
    u, e = base[::2], torch.randn(2, 2, 6, 5).transpose(2, 3).contiguous().transpose(2, 3)  # batch-strided; permuted
    uc, ec = u.clone(), e.clone()
    out = gops.cld_step(u, [e], 1, cld_tables[0])
    assert torch.equal(out, gops.cld_step(u.contiguous(), [e.contiguous()], 1, cld_tables[0]))
    assert torch.equal(u, uc) and torch.equal(e, ec)


def test_cld_rows_outside_the_table(backend, cld_tables):
    """Host-visible rows off the table raise; a device row the host cannot see poisons only its sample (NaN)."""
    u = torch.randn(2, 2, 16)
    with pytest.raises(ValueError, match="outside the coefficient table"):
        gops.cld_step(u, [u], torch.tensor([1, 6]), cld_tables[0])
    out = torch.empty_like(u)
    rows = torch.tensor([1, 6])
    if backend == "cpp":
        torch.ops.gmm_triton_cpp.cld_step(u, [u], cld_tables[0], rows, 0, 0, None, out, 0)
    else:
        from gmm_triton.kernels.cld_step import launch_cld_step

        launch_cld_step(u=u, eps=[u], out=out, coef=cld_tables[0], t_tensor=rows, t_value=0, seed_tensor=None,
                        seed_value=0, noise=None, noise_mode=0, B=2, D=16)
    assert torch.isfinite(out[0]).all() and torch.isnan(out[1]).all()


def test_cld_bad_arguments(cld_tables):
    u = torch.randn(2, 2, 8)
    with pytest.raises(ValueError, match=r"\[B, 2, \.\.\.\]"):
        gops.cld_step(torch.randn(2, 3, 8), [torch.randn(2, 3, 8)], 0, cld_tables[0])
    with pytest.raises(ValueError, match=r"model_outputs\[1\] must match"):
        gops.cld_step(u, [u, u[:1]], 1, cld_tables[1])
    with pytest.raises(ValueError, match="1 to 3"):
        gops.cld_step(u, [u] * 4, 1, cld_tables[1])
    with pytest.raises(ValueError, match="float64"):
        gops.cld_step(u, [u], 0, cld_tables[0].float())
    with pytest.raises(TypeError, match="integer tensor"):
        gops.cld_step(u, [u], torch.tensor(0.5), cld_tables[0])


def test_cld_opcheck(backend, cld_tables):
    u = torch.randn(2, 2, 3, 4)
    for args in [(u, [torch.randn_like(u), torch.randn_like(u)], cld_tables[1], torch.tensor([2, 4]), 0, None, None),
                 (u, [torch.randn_like(u)], cld_tables["lam"], None, 3, torch.tensor([7]), None)]:
        torch.library.opcheck(torch.ops.gmm_triton.cld_step.default, args)


def test_compile_fullgraph_traces_both_ops(cld_tables):
    """Both ops trace through their fake kernels in one graph (aot_eager: no C++ compiler needed)."""
    bt, _, basis = blur_tables(8)

    def loop(u, x):
        for i in range(3):
            u = gops.cld_step(u, [torch.tanh(u)], i, cld_tables[0])
            x = gops.blur_step(x, [torch.tanh(x)], i, bt, basis)
        return u, x

    u, x = torch.randn(2, 2, 16), torch.randn(2, 1, 8, 8)
    eager = loop(u, x)
    compiled = torch.compile(loop, fullgraph=True, backend="aot_eager")(u, x)
    assert all(torch.equal(a, b) for a, b in zip(eager, compiled))


# ---------------------------------------------------------------------------------------------------
# Blur
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("N", [8, 6, 5, 4, 3, 2, 1, 16, 12, 10],
                         ids=["N8-kron", "N6-kron-padded", "N5-kron-odd", "N4-kron-16-wide", "N3-kron-16-wide-padded",
                              "N2-kron-4-planes-a-row", "N1-kron-16-planes-a-row", "N16-planes", "N12-planes-padded",
                              "N10-planes-unaligned-noise"])
def test_blur_fp32_matches_reference(backend, N):
    bt, bt_lam, basis = blur_tables(N)
    x = torch.randn(2, 3, N, N)
    eps = [torch.randn_like(x) for _ in range(3)]
    rows = torch.tensor([2, 4])
    out = gops.blur_step(x, eps, rows, bt, basis)
    ref = gref.blur_step(x, eps, bt, basis, rows)
    # rounding is bounded by the same maths on |inputs|, |table| and |V| (two transforms each way)
    bound = magnitude(gref.blur_step, x, eps, bt, basis.abs(), rows, noise=None)
    assert ((out.double() - ref).abs() <= 4e-7 * bound).all()
    out = gops.blur_step(x, eps[:1], 3, bt_lam, basis, stochastic=True, seed=17)
    ref = gref.blur_step(x, eps[:1], bt_lam, basis, 3, seed=17)
    bound = magnitude(gref.blur_step, x, eps[:1], bt_lam, basis.abs(), 3, noise=philox(17, x.shape))
    assert ((out.double() - ref).abs() <= 2e-6 * bound).all()


@pytest.mark.parametrize("N", [8, 6, 3, 2, 16, 33, pytest.param(64, marks=pytest.mark.slow)],
                         ids=["N8-broadcast", "N6-padded", "N3-kron-16-wide", "N2-kron-16-wide", "N16-dot",
                              "N33-slices-padded", "N64-slices"])
def test_blur_stochastic_multistep_matches_reference(backend, N):
    """λ = 0.5 with order 2: three ε/history planes and in-kernel noise (N = 3, 6 and 33: through the noise
    pre-pass; N = 2, 3: Kronecker rows 16 wide, lo truncated; N = 33 and 64: the per-plane products in four slices of
    16, the noise joining Y slice by slice)."""
    _, bt, basis = blur_tables(N, lam_order=2)
    x = torch.randn(2, 3, N, N)
    eps = [torch.randn_like(x) for _ in range(3)]
    rows = torch.tensor([2, 4])
    out = gops.blur_step(x, eps, rows, bt, basis, stochastic=True, seed=5)
    ref = gref.blur_step(x, eps, bt, basis, rows, seed=5)
    bound = magnitude(gref.blur_step, x, eps, bt, basis.abs(), rows, noise=philox(5, x.shape))
    assert ((out.double() - ref).abs() <= 2e-6 * bound).all()
    assert (ref - gref.blur_step(x, eps, bt, basis, rows)).abs().max() > 1e-3


@pytest.mark.parametrize("N", [20, 17], ids=["N20-philox-in-kernel", "N17-noise-prepass"])
def test_blur_plane_forms_both_match_the_reference(monkeypatch, N):
    """The per-plane kernel's two forms (plane_sliced: by slices through scratch tiles for three buffers at T >= 32,
    whole operands otherwise) are one launch choice: each, forced for one, two and three buffers, meets the float64
    reference within the fp32 bound (in-kernel noise at N = 20, the noise pre-pass at N = 17). The grid form is
    turned off: one buffer on a [32, 32] plane is what sm_80 and launches of fewer planes than a grid tile run."""
    from gmm_triton.kernels import blur_step as K

    monkeypatch.setattr(K, "grid_form", lambda n, neps: False)
    _, bt, basis = blur_tables(N, lam_order=2)
    x = torch.randn(2, 3, N, N)
    eps = [torch.randn_like(x) for _ in range(3)]
    rows = torch.tensor([1, 3])
    for k in (1, 2, 3):  # (two take the sliced form at T = 64: plane_sliced)
        ref = gref.blur_step(x, eps[:k], bt, basis, rows, seed=7)
        bound = magnitude(gref.blur_step, x, eps[:k], bt, basis.abs(), rows, noise=philox(7, x.shape))
        for sliced in (False, True):
            monkeypatch.setattr(K, "plane_sliced", lambda neps, T, N, arch=90, s=sliced: s)
            with ops.use_cpu_backend("triton"):
                out = gops.blur_step(x, eps[:k], rows, bt, basis, stochastic=True, seed=7)
            assert ((out.double() - ref).abs() <= 2e-6 * bound).all(), (k, sliced)


@pytest.mark.parametrize("N", [33, 40], ids=["N33-noise-prepass", "N40-philox-in-kernel"])
def test_blur_sliced_plane_leaves_out_the_slices_past_n(monkeypatch, N):
    """The sliced plane (three buffers at T = 64 where N is not a multiple of 16) runs its sliced products' contraction
    only to N rounded up to 16 (sliced_extent: 48 here, of 64): the slices it leaves out hold only zeros of the padded
    matrices, so the output equals, bit for bit, that of all four slices, and meets the float64 reference, with the
    noise pre-pass (N = 33) and in-kernel Philox (N = 40); launched as on sm_90 (the first products by slices, the
    second whole: plane_held) and on sm_80 (every product by slices)."""
    from gmm_triton.kernels import blur_step as K

    assert K.plane_sliced(3, 64, N) and K.sliced_extent(N) == 48
    _, bt, basis = blur_tables(N, lam_order=2)
    x = torch.randn(1, 2, N, N)
    eps = [torch.randn_like(x) for _ in range(3)]
    rows = torch.tensor([2])
    ref = gref.blur_step(x, eps, bt, basis, rows, seed=12)
    bound = magnitude(gref.blur_step, x, eps, bt, basis.abs(), rows, noise=philox(12, x.shape))
    real_extent = K.sliced_extent
    for arch in (90, 80):
        outs, seen = [], []
        for extent in (real_extent, lambda n: 64):
            monkeypatch.setattr(K, "_arch", lambda device, a=arch: a)
            monkeypatch.setattr(K, "sliced_extent", lambda n, f=extent: seen.append(f(n)) or seen[-1])
            with ops.use_cpu_backend("triton"):
                outs.append(gops.blur_step(x, eps, rows, bt, basis, stochastic=True, seed=12))
            monkeypatch.undo()
        assert seen == [48, 64], arch
        assert torch.equal(outs[0], outs[1]), arch
        assert ((outs[0].double() - ref).abs() <= 2e-6 * bound).all(), arch


@pytest.mark.parametrize("N, k", [(33, 2), (40, 3)], ids=["N33-2-buffers-noise-prepass", "N40-3-buffers-philox"])
def test_blur_sliced_plane_holds_the_first_product_on_wgmma(monkeypatch, N, k):
    """On wgmma GPUs (sm_90, sm_100) the sliced plane at T = 64 runs only each transform's first product by slices and
    takes its accumulator, held in registers, as the whole first operand of the second (plane_held: HELD, one scratch
    tile a plane, Y's); sm_80 keeps both products by slices through a staging tile. Two planes a launch (each
    program's scratch tile its own), two and three buffers, the noise pre-pass (N = 33) and in-kernel Philox (N =
    40): each launch meets the float64 reference within the fp32 bound, and the two forms differ only within it
    (the same sums in another order, _kperm)."""
    from gmm_triton.kernels import blur_step as K

    _, bt, basis = blur_tables(N, lam_order=2)
    x = torch.randn(2, 1, N, N)
    eps = [torch.randn_like(x) for _ in range(k)]
    rows = torch.tensor([1, 4])
    ref = gref.blur_step(x, eps, bt, basis, rows, seed=9)
    bound = magnitude(gref.blur_step, x, eps, bt, basis.abs(), rows, noise=philox(9, x.shape))
    real_held, real_empty = K.plane_held, torch.empty
    outs = {}
    for arch in (90, 100, 80):
        seen, scratch = [], []
        monkeypatch.setattr(K, "_arch", lambda device, a=arch: a)
        monkeypatch.setattr(K, "plane_held", lambda *a: seen.append(real_held(*a)) or seen[-1])
        monkeypatch.setattr(K.torch, "empty", lambda *a, **kw: scratch.append(a) or real_empty(*a, **kw))
        with ops.use_cpu_backend("triton"):
            outs[arch] = gops.blur_step(x, eps, rows, bt, basis, stochastic=True, seed=9)
        monkeypatch.undo()
        assert K.plane_sliced(k, 64, N, arch)
        assert seen == [arch != 80], (arch, seen)
        assert ((2, 1, 1 if arch != 80 else 2, 64, 64),) in scratch, (arch, scratch)
        assert ((outs[arch].double() - ref).abs() <= 2e-6 * bound).all(), arch
    assert not torch.equal(outs[90], outs[80])  # another order of the same sums: not bit for bit
    # only tf32x3 at T = 64 on wgmma: fp64 (DMMA) and T = 32 (sm_80's three buffers) keep both products sliced
    assert [K.plane_held(T, a, t) for T, a, t in ((64, 90, True), (64, 100, True), (64, 90, False), (32, 90, True),
                                                   (64, 80, True))] == [True, True, False, False, False]


@pytest.mark.parametrize("N", [33, 48], ids=["N33-noise-prepass", "N48-philox-in-kernel"])
def test_blur_sm80_takes_the_sliced_plane_for_one_buffer_at_t64(monkeypatch, N):
    """On sm_80 (mma.sync) one buffer at T = 64 runs the sliced plane with 8 warps (plane_sliced, plane_warps: the
    whole-operand form spilled 1.8-2.3 KB in every variant there), while sm_90 keeps the whole-operand form with 4.
    The launch an A100 makes (the launcher told arch 80) meets the float64 reference within the fp32 bound, as the
    sm_90 launch does, with the stochastic step's in-kernel noise (N = 48) and the noise pre-pass (N = 33)."""
    from gmm_triton.kernels import blur_step as K

    _, bt, basis = blur_tables(N, lam_order=2)
    x = torch.randn(2, 2, N, N)
    eps = [torch.randn_like(x)]
    rows = torch.tensor([1, 3])
    ref = gref.blur_step(x, eps, bt, basis, rows, seed=5)
    bound = magnitude(gref.blur_step, x, eps, bt, basis.abs(), rows, noise=philox(5, x.shape))
    real_warps = K.plane_warps
    for arch, sliced, warps in ((80, True, 8), (90, False, 4)):
        seen = []
        monkeypatch.setattr(K, "_arch", lambda device, a=arch: a)
        monkeypatch.setattr(K, "plane_warps", lambda T, a, s: seen.append((T, a, s)) or real_warps(T, a, s))
        with ops.use_cpu_backend("triton"):
            out = gops.blur_step(x, eps, rows, bt, basis, stochastic=True, seed=5)
        assert seen == [(64, arch, sliced)] and real_warps(*seen[0]) == warps, seen
        assert ((out.double() - ref).abs() <= 2e-6 * bound).all(), arch


@pytest.mark.parametrize("N", [8, 3, 1])
def test_blur_kron_rows_move_no_number(monkeypatch, N):
    """The Kronecker tile's height (kron_rows: 64 rows, or 16 or 32 where 64 spill) is a launch choice over independent
    planes: both give the same bits, at order 0 and at the stochastic order 2 (the unmasked tile of 64 whole rows
    with B·C = 64·G, and masked tails). The grid form is turned off (it takes N = 3 from 210 planes; the Kronecker
    rows run on sm_80 and below a grid tile)."""
    from gmm_triton.kernels import blur_step as K

    monkeypatch.setattr(K, "grid_form", lambda n, neps: False)
    _, bt, basis = blur_tables(N, lam_order=2)
    for batch in (2, -(-64 * K.kron_planes(N) // 3)):
        x = torch.randn(batch, 3, N, N)
        eps = [torch.randn_like(x) for _ in range(3)]
        outs = {}
        for rows in (K.KRON_ROWS, K.KRON_ROWS_SMALL):
            monkeypatch.setattr(K, "kron_rows", lambda neps, arch, per_sample=False, T=64, planes=0, G=1, rows=rows: rows)
            with ops.use_cpu_backend("triton"):
                outs[rows] = [gops.blur_step(x, eps[:k], 3, bt, basis, stochastic=True, seed=9) for k in (1, 3)]
        assert all(torch.equal(a, b) for a, b in zip(*outs.values()))


@pytest.mark.parametrize("N", [1, 4], ids=["N1-16-planes-a-row", "N4-one-plane-a-row"])
def test_blur_kron_launch_masks_only_its_last_program(monkeypatch, N):
    """Whole Kronecker rows but not whole programs (SPLIT): the full programs load unmasked, the last one masked in
    its own copy of the body. With 64·G + 2 planes (one channel, so that the planes are the samples) the launch is
    SPLIT, its first 64·G planes equal bit for bit the launch of those planes alone (whole programs: EVEN), and
    every plane meets the float64 reference within the fp32 bound, stochastic order 2 with in-kernel Philox; a
    launch of one program (fewer planes) is masked, not SPLIT. Under the interpreter both sides of the fork run."""
    from gmm_triton.kernels import blur_step as K

    G = K.kron_planes(N)
    PB = K.kron_rows(3, 90, False, K.tile_size(N))
    assert G * N * N == K.tile_size(N)  # whole rows
    _, bt, basis = blur_tables(N, lam_order=2)
    x = torch.randn(PB * G + 2, 1, N, N)
    eps = [torch.randn_like(x) for _ in range(3)]
    seen, kron = [], K._blur_kron_kernel
    monkeypatch.setattr(K, "_blur_kron_kernel", type("Spy", (), {"__getitem__": lambda self, grid: (
        lambda *a, **kw: (seen.append((grid, kw["EVEN"], kw["SPLIT"])), kron[grid](*a, **kw))[1])})())
    with ops.use_cpu_backend("triton"):
        out = gops.blur_step(x, eps, 3, bt, basis, stochastic=True, seed=6)
        whole = gops.blur_step(x[:PB * G], [e[:PB * G] for e in eps], 3, bt, basis, stochastic=True, seed=6)
        one = gops.blur_step(x[:G + 1], [e[:G + 1] for e in eps], 3, bt, basis, stochastic=True, seed=6)
    assert seen == [((2,), False, True), ((1,), True, False), ((1,), False, False)], seen
    assert torch.equal(out[:PB * G], whole)
    ref = gref.blur_step(x, eps, bt, basis, 3, seed=6)
    bound = magnitude(gref.blur_step, x, eps, bt, basis.abs(), 3, noise=philox(6, x.shape))
    assert ((out.double() - ref).abs() <= 2e-6 * bound).all()
    assert torch.equal(one, out[:G + 1])


@pytest.mark.parametrize("N", [1, 4], ids=["N1-16-planes-a-row", "N4-one-plane-a-row"])
def test_blur_kron_programs_take_more_rows_at_scale(monkeypatch, N):
    """Rows 16 wide with one buffer and one timestep: a launch that keeps ≥ MIN_PROGRAMS programs takes 2 or 4 tiles
    of KRON_ROWS rows a program (kron_row_tiles), fewer programs; sm_80 and several buffers keep one. With
    MIN_PROGRAMS lowered so that a launch of 4·64·G + 64·G planes (one channel) takes 256 rows a program (two
    programs, the second partial: SPLIT), the output equals, bit for bit, the launch of 64 rows a program, and meets
    the float64 reference; stochastic (in-kernel Philox) and deterministic."""
    from gmm_triton.kernels import blur_step as K

    G = K.kron_planes(N)
    assert K.kron_row_tiles(2 * 4 * 64 * G * K.MIN_PROGRAMS, G) == 4 and K.kron_row_tiles(2 * 64 * G * 1024, G) == 2
    assert K.kron_row_tiles(2 * 64 * G * 1024 - 1, G) == 1
    assert K.kron_rows(1, 90, False, 16, 10**9, G) == 256 and K.kron_rows(1, 100, False, 16, 10**9, G) == 256
    assert K.kron_rows(1, 80, False, 16, 10**9, G) == 32 and K.kron_rows(2, 90, False, 16, 10**9, G) == 64
    assert K.kron_rows(1, 90, True, 16, 10**9, G) == 64
    det, bt, basis = blur_tables(N, lam_order=0)
    x = torch.randn(5 * 64 * G, 1, N, N)
    eps = [torch.randn_like(x)]
    seen, kron = [], K._blur_kron_kernel
    monkeypatch.setattr(K, "_blur_kron_kernel", type("Spy", (), {"__getitem__": lambda self, grid: (
        lambda *a, **kw: (seen.append((grid, kw["PB"], kw["SPLIT"])), kron[grid](*a, **kw))[1])})())
    for table, kw in ((bt, dict(stochastic=True, seed=3)), (det, {})):
        outs = []
        for least in (1, 10**9):
            monkeypatch.setattr(K, "MIN_PROGRAMS", least)
            with ops.use_cpu_backend("triton"):
                outs.append(gops.blur_step(x, eps, 3, table, basis, **kw))
        assert torch.equal(outs[0], outs[1])
        ref = gref.blur_step(x, eps, table, basis, 3, seed=kw.get("seed"))
        bound = magnitude(gref.blur_step, x, eps, table, basis.abs(), 3, noise=philox(3, x.shape) if kw else None)
        assert ((outs[0].double() - ref).abs() <= (2e-6 if kw else 4e-7) * bound).all()
    assert seen == [((2,), 256, True), ((5,), 64, False)] * 2, seen


@pytest.mark.parametrize("N", [1, 2, 3, 4])
def test_blur_kron_widths_meet_the_reference_alike(monkeypatch, N):
    """Kronecker rows 16 wide (tile_size at N ≤ 4) and 64 wide (what these sizes took before issue 19's last change)
    run the same products but for zero terms: both within the float64 reference's bound, and within it of each other,
    with one and three buffers (three: lo truncated 16 wide, rounded 64 wide), per-sample rows, and the stochastic
    order 2 with in-kernel noise (N = 1, 2, 4) or the pre-pass (N = 3); 111 planes, the last program's rows partial."""
    from gmm_triton.kernels import blur_step as K

    monkeypatch.setattr(K, "grid_form", lambda n, neps: False)
    det, bt, basis = blur_tables(N, lam_order=2)
    x = torch.randn(37, 3, N, N)
    eps = [torch.randn_like(x) for _ in range(3)]
    rows = torch.randint(0, 5, (37,))
    real = K.tile_size
    cases = [(1, det, rows, {}, 4e-7), (3, det, rows, {}, 4e-7), (3, bt, 3, dict(stochastic=True, seed=4), 2e-6)]
    outs = {}
    for width in (16, 64):
        monkeypatch.setattr(K, "tile_size", lambda n, w=width: w if K.kron_form(n) else real(n))
        monkeypatch.setattr(K, "_DERIVED", {})  # the basis parts are kept per basis tensor, not per width
        assert K.basis_parts(basis, True).shape[-1] == width
        for i, (k, table, r, kw, _) in enumerate(cases):
            with ops.use_cpu_backend("triton"):
                outs[width, i] = gops.blur_step(x, eps[:k], r, table, basis, **kw)
    assert real(N) == 16
    for i, (k, table, r, kw, tol) in enumerate(cases):
        ref = gref.blur_step(x, eps[:k], table, basis, r, seed=kw.get("seed"))
        bound = tol * magnitude(gref.blur_step, x, eps[:k], table, basis.abs(), r,
                                noise=philox(4, x.shape) if kw else None)
        for width in (16, 64):
            assert ((outs[width, i].double() - ref).abs() <= bound).all(), (width, i)
        assert ((outs[16, i].double() - outs[64, i].double()).abs() <= bound).all(), i


@pytest.mark.parametrize("N", [1, 2, 3, 4, 5, 6, 8])
def test_blur_kron_rows_with_a_timestep_per_sample_meet_the_reference(monkeypatch, N):
    """A timestep per sample in the Kronecker rows: each (row, plane)'s sample found once and spread over the plane's
    columns (N = 1, 2: rows of 16 and 4 planes spanning samples; N = 3, 4, 6, 8: a plane a row, padded at 3 and 6),
    or per element (N = 5), with one and two buffers, 23 samples of 3 channels (a partial last tile) at random
    timesteps, against the float64 reference. The grid form is turned off (it takes N = 3, 6, 8 here)."""
    from gmm_triton.kernels import blur_step as K

    monkeypatch.setattr(K, "grid_form", lambda n, neps: False)
    _, bt, basis = blur_tables(N, lam_order=2)
    x = torch.randn(23, 3, N, N)
    eps = [torch.randn_like(x) for _ in range(2)]
    rows = torch.randint(0, bt.shape[0], (23,))
    assert rows.unique().numel() > 1
    for k in (1, 2):
        ref = gref.blur_step(x, eps[:k], bt, basis, rows, seed=3)
        bound = magnitude(gref.blur_step, x, eps[:k], bt, basis.abs(), rows, noise=philox(3, x.shape))
        with ops.use_cpu_backend("triton"):
            out = gops.blur_step(x, eps[:k], rows, bt, basis, stochastic=True, seed=3)
        assert ((out.double() - ref).abs() <= 2e-6 * bound).all(), k


def test_blur_planes_per_program_policy():
    """Several planes a program (the transform matrices read once for them) only for the whole-operand tf32x3
    planes at T = 16, and only while the launch keeps MIN_PROGRAMS programs."""
    from gmm_triton.kernels import blur_step as K

    m = K.MIN_PROGRAMS
    assert [K.planes_per_program(n, 16, False, True) for n in (1, 2 * m - 1, 2 * m, 4 * m, 8 * m, 16 * m, 32 * m,
                                                               10**6)] == [1, 1, 2, 4, 8, 16, 16, 16]
    assert K.planes_per_program(10**6, 32, False, True) == K.planes_per_program(10**6, 64, False, True) == 1
    assert K.planes_per_program(10**6, 16, True, True) == K.planes_per_program(10**6, 16, False, False) == 1


def test_blur_div_magic_divides_every_plane_index():
    """The per-plane kernel's division of a plane index by the channel count (div_magic: a multiply and a shift) is
    exact for every index below 2³¹: each divisor up to 64 and some large ones, at the indices where it is most
    likely to fail (multiples of d and their neighbours near 2³¹, and a random sample); the kernels' own use runs in
    test_blur_planes_per_program_move_no_number (several planes a program) with C = 3."""
    from gmm_triton.kernels import blur_step as K

    gen = np.random.default_rng(0)
    for d in list(range(1, 65)) + [97, 1000, 2**16 + 1, 2**30 - 1, 2**31 - 1]:
        m, k = K.div_magic(d)
        assert 0 < m < 2**32
        top = (2**31 - 1) // d * d
        w = min(2 * d, 512)
        near_top = top + np.arange(-w, min(2**31 - top, w))
        n = np.concatenate([np.arange(0, 2 * w), near_top, gen.integers(0, 2**31, 4096)])
        n = n[(n >= 0) & (n < 2**31)].astype(object)  # Python integers: no 64-bit overflow in the check
        assert all(x * m >> k == x // d for x in n), d
    with pytest.raises(ValueError, match="divisor"):
        K.div_magic(0)


@pytest.mark.parametrize("N", [16, 32, 64], ids=["N16-planes-a-program", "N32-one-plane", "N64-one-plane"])
def test_blur_full_plane_moves_no_number(monkeypatch, N):
    """N = T compiles as a constant (plane_full: no masks, shifts for offsets) and gives the bits of N at run time:
    fp32 and fp16 buffers, one buffer with in-kernel noise; N = 16 with several planes a program (and V's parts
    held, fp16), N = 32 one plane (fewer planes than a grid tile: the per-plane form on sm_90). The policy: not for
    fp64, the sliced plane, N < T, nor N = 32 on sm_8x."""
    from gmm_triton.kernels import blur_step as K

    assert K.plane_full(16, 16, False, True, 90) and K.plane_full(64, 64, False, True, 80)
    assert not any((K.plane_full(48, 64, False, True, 90), K.plane_full(64, 64, True, True, 90),
                    K.plane_full(16, 16, False, False, 90), K.plane_full(32, 32, False, True, 80),
                    K.plane_full(32, 32, False, True, 86)))
    assert K.plane_full(32, 32, False, True, 90)
    if N == 16:
        monkeypatch.setattr(K, "MIN_PROGRAMS", 1)
    _, bt, basis = blur_tables(N, lam_order=2)
    real, seen = K.plane_full, []
    B, C = (2, 3) if N == 16 else (1, 1 if N == 32 else 3)
    for dtype in (torch.float32, torch.float16):
        x = torch.randn(B, C, N, N).to(dtype)
        e = [torch.randn_like(x)]
        outs = []
        for full in (True, False):
            monkeypatch.setattr(K, "plane_full", lambda *a, f=full: seen.append(f and real(*a)) or seen[-1])
            with ops.use_cpu_backend("triton"):
                outs.append(gops.blur_step(x, e, torch.tensor([1, 3][:B]), bt, basis, stochastic=True, seed=5))
        assert torch.equal(*outs), dtype
    assert seen == [True, False, True, False]  # the launch asked, and compiled N as a constant where told to


@pytest.mark.parametrize("N, dtype", [(16, torch.float32), (13, torch.float32), (7, torch.float32),
                                      (16, torch.float16)],
                         ids=["N16-masked", "N13-clamped", "N7-noise-prepass", "N16-fp16-buffers"])
def test_blur_planes_per_program_move_no_number(monkeypatch, N, dtype):
    """Planes a program (planes_per_program, with MIN_PROGRAMS lowered so that a small launch takes 2, 4 and 8)
    give the bits of one plane a program: 5 samples × 3 channels, so the last programs repeat the last plane; one
    buffer and three, in-kernel noise (N = 16) and the noise pre-pass (N = 13, 7; fewer planes than a grid tile at
    N = 7); and meet the float64 reference. With 16-bit buffers at N = 16 several planes a program hold V's parts as
    accumulators (_held): V's and Vᵀ's with noise, V's alone without (the fp16 case runs both)."""
    from gmm_triton.kernels import blur_step as K

    _, bt, basis = blur_tables(N, lam_order=2)
    x = torch.randn(5, 3, N, N).to(dtype)
    eps = [torch.randn_like(x) for _ in range(3)]
    rows = torch.randint(0, 5, (5,))
    seen, outs = [], {}
    real = K.planes_per_program
    monkeypatch.setattr(K, "planes_per_program", lambda *a: seen.append(real(*a)) or seen[-1])
    for m in (10**9, 4, 2, 1):  # 15 planes: PP = 1, 2, 4, 8 (the largest PP ≤ 8 with 15 ≥ PP·m)
        monkeypatch.setattr(K, "MIN_PROGRAMS", m)
        with ops.use_cpu_backend("triton"):
            outs[m] = [gops.blur_step(x, eps[:k], rows, bt, basis, stochastic=True, seed=4) for k in (1, 3)]
            if dtype == torch.float16:  # no noise: V's parts alone held
                outs[m].append(gops.blur_step(x, eps[:1], rows, bt, basis))
    assert seen == [pp for pp in (1, 2, 4, 8) for _ in outs[1]]
    assert all(torch.equal(a, b) for o in outs.values() for a, b in zip(outs[10**9], o))
    out = outs[1][1]
    assert out.dtype == dtype
    ref = gref.blur_step(x, eps, bt, basis, rows, seed=4)
    bound = magnitude(gref.blur_step, x, eps, bt, basis.abs(), rows, noise=philox(4, x.shape))
    rounding = 0 if dtype == torch.float32 else 2.0**-11 * ref.abs() + 2.0**-24  # fp16's, once, at the store
    assert ((out.double() - ref).abs() <= 2e-6 * bound + rounding).all()


@pytest.mark.parametrize("N, dtype, k, noise, want", [(16, torch.float16, 2, "philox", 1),
                                                      (16, torch.float16, 1, "tensor", 2),
                                                      (16, torch.float32, 2, "philox", 2),
                                                      (13, torch.float16, 2, "philox", 2),
                                                      (13, torch.float32, 1, "philox", 2),
                                                      (13, torch.float32, 3, "tensor", 2)],
                         ids=["N16-fp16-as-is", "N16-fp16-noise-tensor-reordered", "N16-fp32-reordered",
                              "N13-fp16-reordered", "N13-fp32-reordered", "N13-fp32-3-buffers-reordered"])
def test_blur_transposed_y_meets_the_reference(monkeypatch, N, dtype, k, noise, want):
    """The whole-operand plane at T = 16 computes Y transposed (plane_transposed_y: as is for 16-bit buffers at N = 16
    with in-kernel noise, reordered with Vᵀ's columns otherwise); with Y as before (YT = 0) too, both meet the float64
    reference. The table is random, no symmetry between a frequency (u, v) and (v, u) (the blur process's tables have
    it, and would hide a plane left untransposed); ``k`` buffers; in-kernel noise (N = 16), the noise pre-pass
    (N = 13) or a noise tensor; one plane a program and several (V's parts, and Vᵀ's with noise, held at N = 16 with
    16-bit buffers: plane_hold); the policy's other answers."""
    from gmm_triton.kernels import blur_step as K

    P, Z = K.NOISE_PHILOX, K.NOISE_TENSOR
    assert K.plane_transposed_y(16, 16, False, True, True, 1, K.NOISE_NONE) == 2  # 16-bit, no noise
    assert not any((K.plane_transposed_y(16, 16, False, False, False, 1, P),  # fp64
                    K.plane_transposed_y(20, 32, False, True, False, 1, P),
                    K.plane_transposed_y(33, 64, True, True, False, 1, P),
                    K.plane_transposed_y(13, 16, False, True, False, 2, Z),  # fp32, two buffers
                    K.plane_transposed_y(13, 16, False, True, False, 3, P)))  # three, N % 4 = 0: in-kernel noise
    _, bt, basis = blur_tables(N)
    bt = torch.rand(bt.shape, dtype=torch.float64) * 2 - 1  # no (u, v) ↔ (v, u) symmetry
    assert not torch.equal(bt, bt.transpose(-1, -2))
    x = torch.randn(3, 3, N, N).to(dtype)
    eps = [torch.randn_like(x) for _ in range(k)]
    rows = torch.randint(0, bt.shape[0], (3,))
    z = philox(6, x.shape)
    kw = dict(seed=6) if noise == "philox" else dict(noise=z.to(dtype))
    ref = gref.blur_step(x, eps, bt, basis, rows, noise=z if noise == "philox" else z.to(dtype).double())
    bound = magnitude(gref.blur_step, x, eps, bt, basis.abs(), rows, noise=z)
    rounding = 0 if dtype == torch.float32 else 2.0**-11 * ref.abs() + 2.0**-24  # fp16's, once, at the store
    real_yt, real_pp, real_hold, seen = K.plane_transposed_y, K.planes_per_program, K.plane_hold, []
    monkeypatch.setattr(K, "planes_per_program", lambda *a: seen.append(("pp", real_pp(*a))) or seen[-1][1])
    monkeypatch.setattr(K, "plane_hold", lambda *a: seen.append(("hold", real_hold(*a))) or seen[-1][1])
    def yt(*a, force):  # the policy's answer recorded, the forced one (if any) used
        seen.append(("yt", real_yt(*a)))
        return seen[-1][1] if force is None else force

    for least in (10**9, 1):  # one plane a program; several
        monkeypatch.setattr(K, "MIN_PROGRAMS", least)
        for force in (None, 0):
            monkeypatch.setattr(K, "plane_transposed_y", lambda *a, f=force: yt(*a, force=f))
            with ops.use_cpu_backend("triton"):
                out = gops.blur_step(x, eps, rows, bt, basis, stochastic=True, **kw)
            assert ((out.double() - ref).abs() <= 2e-6 * bound + rounding).all(), (least, force)
    hold = 2 if dtype == torch.float16 and N == 16 else 0
    assert seen == [("pp", 1), ("hold", 0), ("yt", want)] * 2 + [("pp", 8), ("hold", hold), ("yt", want)] * 2


def _grid_and_other_form_meet(monkeypatch, K, real, launched, args, kw, err_bound, ref, label):
    """gops.blur_step(*args, **kw) with the grid form as grid_form (``real``) says, then turned off: the grid kernel
    (spied on through ``launched``) runs only where the form says so, and each output is within ``err_bound`` of
    ``ref``."""
    for grid in (True, False):
        monkeypatch.setattr(K, "grid_form", lambda n, neps, g=grid: g and real(n, neps))
        before = len(launched)
        with ops.use_cpu_backend("triton"):
            out = gops.blur_step(*args, **kw)
        assert len(launched) == before + grid  # the grid kernel ran (only) where the form says so
        assert ((out.double() - ref).abs() <= err_bound).all(), (label, grid)


@pytest.mark.parametrize("N", [3, 7, 10, 12, 20], ids=["N3-21x10-planes-not-kronecker", "N7-9x4-planes-noise-prepass",
                                                   "N10-6x3", "N12-5x2-philox-coefficient-runs-wrap",
                                                   "N20-3x1-philox"])
def test_blur_grid_form_matches_the_reference_and_one_plane_a_program(monkeypatch, N):
    """The grid form (grid_form: GR × GC planes on one [64, 32] tile) against the float64 reference, and against one
    plane a program or Kronecker rows (N = 3; grid_form turned off) within the same bound, at one and two buffers
    (and three at N = 20, against the sliced plane, one tile a program):
    deterministic with per-sample rows (planes of different samples share a tile), stochastic (in-kernel Philox at N
    = 12 and 20, with one timestep: the coefficients' runs of four, asserted under the interpreter, their padding
    columns wrapping in the second plane column at N = 12; the noise pre-pass at 3, 7 and 10) and with a noise
    tensor; 2 channels of 110, 22, 11, 7 and 4 samples (220, 44, 22, 14 and 8 planes), so that the last tile is
    partial (210, 36, 18, 10 and 3 planes a tile); a sample batch with a stride (the launcher makes it contiguous)."""
    from gmm_triton.kernels import blur_step as K

    assert K.grid_form(N, 2) and K.grid_form(N, 3) == (N >= 17)  # three buffers: N = 17 … 32 only
    bt, bt_lam, basis = blur_tables(N)
    bt_lam2 = blur_tables(N, lam_order=2)[1]  # stochastic order 2: every B_j plane non-zero
    B = {3: 110, 7: 22, 10: 11, 12: 7, 20: 4}[N]  # the interpreter's time goes with the planes
    x = torch.randn(B, 5, N, N)[:, 1:3]
    eps = [torch.randn(B, 2, N, N) for _ in range(3)]
    rows, z = torch.randint(0, 5, (B,)), torch.randn(B, 2, N, N)
    real, launched = K.grid_form, []
    grid_kernel = K._blur_grid_kernel
    monkeypatch.setattr(K, "_blur_grid_kernel", type("Spy", (), {"__getitem__": lambda self, grid: (
        launched.append(grid), grid_kernel[grid])[1]})())
    for k in (1, 2, 3) if N >= 17 else (1, 2):
        lam = bt_lam if k == 1 else bt_lam2
        for table, r, kw, tol in [(bt, rows, {}, 4e-7), (lam, 3, dict(stochastic=True, seed=21), 2e-6),
                                  (lam, rows, dict(stochastic=True, noise=z), 2e-6)]:
            noise = z if "noise" in kw else philox(21, x.shape) if "seed" in kw else None
            ref = gref.blur_step(x, eps[:k], table, basis, r, seed=kw.get("seed"), noise=kw.get("noise"))
            bound = magnitude(gref.blur_step, x, eps[:k], table, basis.abs(), r, noise=noise)
            _grid_and_other_form_meet(monkeypatch, K, real, launched, (x, eps[:k], r, table, basis), kw,
                                      tol * bound, ref, (k, kw.keys()))
    assert set(launched) == {(-(-2 * B // ((64 // N) * (32 // N))),)}


@pytest.mark.parametrize("N, B", [(8, 3), (5, 30)], ids=["N8-a-partial-tile", "N5-two-tiles-noise-prepass"])
def test_blur_three_buffers_on_the_grid_below_the_kronecker_sizes(monkeypatch, N, B):
    """Two and three buffers at N = 5, 6, 8 take the grid at any launch size (grid_form, launches_grid: their
    Kronecker rows spilled): deterministic with per-sample rows and stochastic (order-2 table, in-kernel Philox at
    N = 8, the pre-pass at 5) against the float64 reference and the Kronecker rows (grid_form off) within the same
    bound; N = 8 with 9 planes (a partial tile of 32), N = 5 with 90 (72 a tile)."""
    from gmm_triton.kernels import blur_step as K

    assert all(K.grid_form(n, 3) for n in (5, 6, 8)) and not any(K.grid_form(n, 3) for n in (1, 2, 3, 4, 7, 9, 16))
    assert K.launches_grid(N, 3, 3, True, 90) and not K.launches_grid(N, 3, 3 * B, True, 80)
    bt, _, basis = blur_tables(N)
    bt_lam2 = blur_tables(N, lam_order=2)[1]
    x = torch.randn(B, 3, N, N)
    eps = [torch.randn_like(x) for _ in range(3)]
    rows = torch.randint(0, 5, (B,))
    real, launched = K.grid_form, []
    grid_kernel = K._blur_grid_kernel
    monkeypatch.setattr(K, "_blur_grid_kernel", type("Spy", (), {"__getitem__": lambda self, grid: (
        launched.append(grid), grid_kernel[grid])[1]})())
    for (table, r, kw, tol), k in itertools.product(
            [(bt, rows, {}, 4e-7), (bt_lam2, 3, dict(stochastic=True, seed=4), 2e-6)], (3, 2)):
        noise = philox(4, x.shape) if kw else None
        ref = gref.blur_step(x, eps[:k], table, basis, r, seed=kw.get("seed"))
        bound = magnitude(gref.blur_step, x, eps[:k], table, basis.abs(), r, noise=noise)
        _grid_and_other_form_meet(monkeypatch, K, real, launched, (x, eps[:k], r, table, basis), kw, tol * bound,
                                  ref, (k, kw.keys()))
    assert set(launched) == {(-(-3 * B // ((64 // N) * (32 // N))),)}


@pytest.mark.parametrize("N, C", [(20, 1), (17, 2)], ids=["N20-one-plane-philox", "N17-two-planes-noise-prepass"])
def test_blur_three_buffers_take_the_grid_from_one_plane(monkeypatch, N, C):
    """Three buffers at N = 17 … 32 take the grid on sm_90 / sm_100 below one tile of planes too (launches_grid: the
    other form is the sliced plane), one program; one and two buffers keep one plane a program there, and sm_80 the
    sliced plane. Stochastic order 2 (in-kernel Philox at N = 20, the pre-pass at 17) against the float64 reference,
    and against the sliced plane (grid_form off), within the fp32 bound."""
    from gmm_triton.kernels import blur_step as K

    tile = (64 // N) * (32 // N)
    assert C < tile and K.launches_grid(N, 3, C, True, 90) and K.launches_grid(N, 3, C, True, 100)
    assert not any(K.launches_grid(N, k, C, True, 90) for k in (1, 2)) and not K.launches_grid(N, 3, C, True, 80)
    _, bt, basis = blur_tables(N, lam_order=2)
    x = torch.randn(1, C, N, N)
    eps = [torch.randn_like(x) for _ in range(3)]
    ref = gref.blur_step(x, eps, bt, basis, 3, seed=9)
    bound = magnitude(gref.blur_step, x, eps, bt, basis.abs(), 3, noise=philox(9, x.shape))
    real, launched = K.grid_form, []
    grid_kernel = K._blur_grid_kernel
    monkeypatch.setattr(K, "_blur_grid_kernel", type("Spy", (), {"__getitem__": lambda self, grid: (
        launched.append(grid), grid_kernel[grid])[1]})())
    _grid_and_other_form_meet(monkeypatch, K, real, launched, (x, eps, 3, bt, basis), dict(stochastic=True, seed=9),
                              2e-6 * bound, ref, N)
    assert launched == [(1,)]


@triton.jit
def _kperm_tile(src, dst, R: tl.constexpr, C: tl.constexpr):
    o = tl.arange(0, R)[:, None] * C + tl.arange(0, C)[None, :]
    tl.store(dst + o, _kperm(tl.load(src + o)))


def test_kperm_reorders_a_tiles_columns_as_the_host_twin_does():
    """The kernel's _kperm (run by the interpreter) and the host's kperm_order, by which the grid's V_R is built
    (basis_parts with kperm), give one order: a product with both reordered is the product (the sum over the
    contraction in another order); a mismatch fails every grid test. A [64, 32] tile of distinct values comes out
    as kperm_order orders its columns, t'[:, 8b + 4e + c] = t[:, 8b + 2c + e]."""
    from gmm_triton.kernels import blur_step as K

    t = torch.arange(64 * 32, dtype=torch.float32).reshape(64, 32)
    out = torch.empty_like(t)
    _kperm_tile[(1,)](t, out, R=64, C=32)
    assert K.kperm_order(torch.arange(8), 0).tolist() == [0, 2, 4, 6, 1, 3, 5, 7]
    assert torch.equal(out, K.kperm_order(t, 1))


def _tf32_reference(x: np.ndarray, ties_even: bool) -> np.ndarray:
    """fp32 values rounded to tf32 (11 significant bits, fp32's exponent range) in float64 arithmetic, not on their
    bits: the quantum 2^(e - 11) of x = m·2^e (0.5 ≤ m < 1), 2^-136 below fp32's normals; ties to even or away
    from zero; past fp32's largest value ±inf; NaN and ±inf as they are."""
    a = np.abs(x.astype(np.float64))
    e = np.frexp(a)[1]
    q = np.exp2(np.maximum(e - 11, -136).astype(np.float64))
    y = a / q                                      # exact: at most 24 significant bits
    fl = np.floor(y)
    frac = y - fl
    if ties_even:
        r = np.where(frac > 0.5, fl + 1, np.where(frac < 0.5, fl, fl + np.mod(fl, 2)))
    else:
        r = np.where(frac >= 0.5, fl + 1, fl)
    with np.errstate(over="ignore", invalid="ignore"):
        out = np.copysign(r * q, x.astype(np.float64)).astype(np.float32)  # ≥ 2^128 becomes ±inf
    return np.where(np.isfinite(x), out, x)


@triton.jit
def _tf32_words(src, dst, n, MODE: tl.constexpr, BLOCK: tl.constexpr, KEEP_NAN: tl.constexpr = False):
    o = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    tl.store(dst + o, _tf32(tl.load(src + o, mask=o < n), MODE, KEEP_NAN), mask=o < n)


def _tf32_run(words: np.ndarray, mode: int, keep_nan: bool = False, device: str = "cpu") -> np.ndarray:
    """_tf32 (MODE ``mode``, KEEP_NAN) on fp32 words, through _tf32_words on ``device``; the words back on the host."""
    src = torch.from_numpy(np.ascontiguousarray(words)).to(device)
    out = torch.empty_like(src)
    _tf32_words[(triton.cdiv(src.numel(), 1024),)](src, out, src.numel(), MODE=mode, BLOCK=1024, KEEP_NAN=keep_nan)
    return out.cpu().numpy()


def _tf32_inputs() -> np.ndarray:
    """fp32 words: every sign, exponents from subnormal to the largest, mantissas' kept bits at their ends, and the
    13 dropped bits at each side of half a unit (ties with the last kept bit 0 and 1); 2¹⁶ random finite words."""
    low = [0, 1, 0xFFF, 0x1000, 0x1001, 0x1FFF, 0x2000, 0x2FFF, 0x3000, 0x3001]
    high = [0, 1 << 13, 0x7FC000, 0x7FE000]
    words = [(s << 31) | (ex << 23) | h | lo for s in (0, 1) for ex in (0, 1, 2, 100, 127, 253, 254)
             for h in high for lo in low]
    rnd = np.random.default_rng(7).integers(0, 2**32, 2**16, dtype=np.uint64).astype(np.uint32)
    rnd = rnd[(rnd & 0x7F800000) != 0x7F800000]
    return np.concatenate([np.array(words, np.uint32), rnd]).view(np.float32)


@pytest.mark.parametrize("mode", ["rn", "rna"])
def test_tf32_rounding_leaf_against_float64(mode):
    """_tf32, the kernels' fp32 → tf32 rounding, as the CPU runs it, against the rounding done in float64
    (_tf32_reference): TF32_RN, ties to even (sm_90 and later: cvt.rn.tf32.f32 on a GPU, this emulation under the
    interpreter), and TF32_RNA, ties away (sm_80), bit for bit on the words of _tf32_inputs (560 structured, ties
    included, and 2¹⁶ random); the two differ on those ties; ±inf stay and the largest values round to ±inf. A NaN:
    TF32_RN keeps it NaN (quiet, a GPU's canonical 0x7FFFFFFF too); TF32_RNA carries 0x7FFFFFFF into the sign, -0.0,
    but with KEEP_NAN (a rounded lo's: _mm_slice's ROUND) keeps every positive NaN (and every other word as without
    it); a negative NaN at the top, 0xFFFFFFFF, still wraps to +0.0 (the documented limit)."""
    from gmm_triton.kernels import blur_step as K

    MODE = K.TF32_RN.value if mode == "rn" else K.TF32_RNA.value
    x = _tf32_inputs()

    def run(words, keep_nan=False):
        return _tf32_run(words, MODE, keep_nan)

    got = run(x)
    want = _tf32_reference(x, mode == "rn")
    bad = np.flatnonzero(got.view(np.uint32) != want.view(np.uint32))
    assert bad.size == 0, x[bad[:5]].view(np.uint32)
    ties = (x.view(np.uint32) & 0x1FFF) == 0x1000
    assert ties.sum() > 100 and not np.array_equal(want[ties], _tf32_reference(x[ties], mode != "rn"))
    assert np.all(got.view(np.uint32) & 0x1FFF == 0)
    big = np.array([3.4028235e38, -3.4028235e38, np.inf, -np.inf], np.float32)
    assert np.array_equal(run(big), np.array([np.inf, -np.inf, np.inf, -np.inf], np.float32))
    nans = np.array([0x7FFFFFFF, 0x7FFFF000, 0x7FC00000, 0xFFC01001, 0xFFFFFFFF], np.uint32).view(np.float32)
    if mode == "rn":
        assert np.all(np.isnan(run(nans)))
    else:  # the canonical NaN's carry; KEEP_NAN clamps the positive NaNs below it (not the negative at the top)
        assert run(nans)[0].view(np.uint32) == 0x80000000
        kept = run(nans, True)
        assert np.all(np.isnan(kept[:4])) and kept[4].view(np.uint32) == 0
        assert np.array_equal(run(x, True).view(np.uint32), got.view(np.uint32))


@triton.jit
def _tf32x3_left_product(t_ptr, bp, out_ptr, T: tl.constexpr, ROUND: tl.constexpr, MODE: tl.constexpr):
    o = tl.arange(0, T)[:, None] * T + tl.arange(0, T)[None, :]
    tl.store(out_ptr + o, _mm(tl.load(t_ptr + o), bp, 0, True, MODE, T, False, ROUND))


@pytest.mark.parametrize("mode", ["rn", "rna"])
def test_the_interpreter_multiplies_what_a_tensor_core_reads(mode):
    """A tf32x3 product (_mm, V @ t) run by the interpreter equals, bit for bit, the same sums of products of what a
    tensor core reads of each operand: an fp32 register's top 19 bits (tf32). On a GPU the kernels hand lo = t - hi
    to the tensor core as it is (its low 13 bits ignored: the truncation, without an instruction); where lo is
    rounded (ROUND) both hand it lo rounded to tf32; hi rounded in the mode (TF32_RN: ties to even, sm_90 and later;
    TF32_RNA: ties away, sm_80), both parts ties away where lo is rounded (ROUND), as the kernels do, modelled by the
    rounding done in float64 (_tf32_reference; t holds exact ties, where the modes differ); the
    interpreter's tl.dot multiplies whole fp32 values, so the kernels clear lo's bits themselves there
    (_TC_READS_TF32): the CPU runs the products the GPU runs. The products are
    taken as the interpreter takes them (numpy, fp32, in _mm_slice's order); a model that multiplies lo unread
    differs, so the test would see an interpreter that did not clear them."""
    from gmm_triton.kernels import blur_step as K

    T = 16
    basis = torch.from_numpy(np.linalg.qr(np.random.default_rng(3).standard_normal((T, T)))[0])
    bp = K.basis_parts(basis, True)
    t = torch.randn(T, T, generator=torch.Generator().manual_seed(5)) * 3

    def bits(x, f):
        return f(x.contiguous().view(torch.int32)).view(torch.float32)

    def read(x):  # what a tensor core reads of an fp32 operand
        return bits(x, lambda b: b & ~0x1FFF)

    # a quarter of the entries exact ties of the high part's rounding (the last kept bit 0 and 1): the modes differ
    w = t.view(torch.int32)
    w[::2, ::2] = (w[::2, ::2] & ~0x3FFF) | 0x1000
    w[1::2, 1::2] = (w[1::2, 1::2] & ~0x3FFF) | 0x3000
    MODE = K.TF32_RN.value if mode == "rn" else K.TF32_RNA.value

    def rounded(x, even):  # the split's rounding, done in float64 (_tf32_reference)
        return torch.from_numpy(_tf32_reference(x.numpy(), even))

    for ROUND in (False, True):
        hi = rounded(t, mode == "rn" and not ROUND)  # where lo is rounded too, both ties away in either mode
        lo_passed = rounded(t - hi, False) if ROUND else t - hi  # the GPU's operand
        out = torch.empty_like(t)
        _tf32x3_left_product[(1,)](t, bp, out, T=T, ROUND=ROUND, MODE=MODE)
        models = []
        other = rounded(t, mode != "rn")  # the other mode's high part
        for h, lo in ((hi, read(lo_passed)), (hi, t - hi), (other, read(t - other))):
            acc = np.zeros((T, T), np.float32)
            for a, b in ((bp[0, 0], lo), (bp[1, 0], h), (bp[0, 0], h)):
                acc = np.matmul(a.numpy(), b.numpy(), dtype=np.float32) + acc
            models.append(torch.from_numpy(acc))
        assert torch.equal(out, models[0]), ROUND
        if not ROUND:  # the mode matters at these values
            assert not torch.equal(models[0], models[2])
        assert not torch.equal(models[0], models[1])  # the reading matters at these values


def test_blur_tiles_per_program_policy():
    """Several grid tiles a program (their offsets and masks computed once) only while the launch keeps
    MIN_PROGRAMS programs, up to TILES_PER_PROGRAM, for one buffer and one timestep a launch; two and three buffers,
    and per-sample timesteps, take one tile a program (more spilled on sm_90a: tiles_per_program)."""
    from gmm_triton.kernels import blur_step as K

    m = K.MIN_PROGRAMS
    tiles = (1, 2 * m - 1, 2 * m, 4 * m - 1, 4 * m, 8 * m, 10**6)
    assert [K.tiles_per_program(n, 1) for n in tiles] == [1, 1, 2, 2, 4, 4, 4]
    for neps in (2, 3):
        assert [K.tiles_per_program(n, neps) for n in tiles] == [1] * len(tiles)
    assert [K.tiles_per_program(n, 1, per_sample=True) for n in tiles] == [1] * len(tiles)


def test_blur_forms_where_the_other_spilled():
    """The launch choices that keep every variant of issue 19's sweeps (benchmarks/blur_spill_sweep.py) from
    spilling on sm_90a: the grid from two buffers at N = 5, 6, 8 (their Kronecker rows spilled), one buffer at N =
    5, 8 keeping the Kronecker rows (they held there, and predicted more than the grid at N = 5); Kronecker rows 16
    wide at N ≤ 4, whatever the buffers (rows 64 wide spilled at N = 1, 2, 3), 64 of them (32 on sm_80 with one
    buffer); rows 64 wide: 64 of them only for one buffer and one timestep a launch on wgmma GPUs, 16 otherwise."""
    from gmm_triton.kernels import blur_step as K

    assert all(K.grid_form(n, k) for n in (5, 6, 8) for k in (2, 3))
    assert not any(K.grid_form(n, 1) for n in (1, 2, 4, 5, 8)) and K.grid_form(6, 1)
    assert not any(K.grid_form(n, k) for n in (1, 2, 4) for k in (1, 2, 3))
    assert [K.tile_size(n) for n in (1, 2, 3, 4, 5, 6, 8)] == [16, 16, 16, 16, 64, 64, 64]
    assert [K.kron_planes(n) for n in (1, 2, 3, 4, 5, 8)] == [16, 4, 1, 1, 2, 1]
    assert all(K.kron_rows(k, a, per_sample=p, T=16) == 64 for k in (1, 2, 3) for a in (90, 100) for p in (0, 1))
    assert all(K.kron_rows(k, 80, per_sample=p, T=16) == (32 if k == 1 else 64) for k in (1, 2, 3) for p in (0, 1))
    assert K.kron_rows(1, 90) == K.kron_rows(1, 100) == K.KRON_ROWS == 64
    assert K.kron_rows(1, 90, per_sample=True) == K.kron_rows(2, 90) == K.kron_rows(3, 90) == K.kron_rows(1, 80) \
        == K.KRON_ROWS_SMALL == 16


@pytest.mark.parametrize("N, B, C", [(7, 37, 3), (20, 17, 1)],
                         ids=["N7-4-tiles-noise-prepass", "N20-6-tiles-philox"])
def test_blur_tiles_per_program_move_no_number(monkeypatch, N, B, C):
    """Grid tiles a program (tiles_per_program, with MIN_PROGRAMS lowered so that a small launch takes 2 and 4) give
    the bits of one tile a program: 4 tiles at N = 7 (111 planes, 36 a tile) and 6 at N = 20 (17 planes, 3 a tile),
    the last tile partial (at N = 20 with 4 tiles a program the last program's tiles past the last repeat it); one
    buffer (and two, one tile a program whatever MIN_PROGRAMS: tiles_per_program), one timestep a launch (per-sample
    rows take one tile a program),
    in-kernel noise (N = 20) and the noise pre-pass (N = 7); and meet the float64 reference."""
    from gmm_triton.kernels import blur_step as K

    _, bt, basis = blur_tables(N)
    x = torch.randn(B, C, N, N)
    eps = [torch.randn_like(x) for _ in range(2)]
    rows = 3  # one timestep a launch (per-sample rows keep one tile a program)
    seen, outs = [], {}
    real = K.tiles_per_program
    monkeypatch.setattr(K, "tiles_per_program", lambda *a: seen.append(real(*a)) or seen[-1])
    for m in (10**9, 2, 1):  # 4 or 6 tiles: TP = 1, 2, 4
        monkeypatch.setattr(K, "MIN_PROGRAMS", m)
        with ops.use_cpu_backend("triton"):
            outs[m] = [gops.blur_step(x, eps[:k], rows, bt, basis, stochastic=True, seed=5) for k in (1, 2)]
    assert seen == [1, 1, 2, 1, 4, 1]
    assert all(torch.equal(a, b) for o in outs.values() for a, b in zip(outs[10**9], o))
    out = outs[1][1]
    ref = gref.blur_step(x, eps, bt, basis, rows, seed=5)
    bound = magnitude(gref.blur_step, x, eps, bt, basis.abs(), rows, noise=philox(5, x.shape))
    assert ((out.double() - ref).abs() <= 2e-6 * bound).all()


def test_blur_grid_tiles_of_a_launch_of_more_than_2_31_elements(monkeypatch):
    """The grid kernel's first program in a launch of 2³² elements (N = 20, 3 planes a tile, 4 tiles a program)
    computes what a launch of just its 12 planes computes: the tiles' offsets stay in 32 bits. Only program 0 is
    launched, so the buffers hold just its planes. (With the tile's last plane unclamped, (planes left) · N²
    wrapped in 32 bits and the tiles were read elsewhere: this test failed.)"""
    from gmm_triton.kernels import blur_step as K
    from gmm_triton.kernels.common import NOISE_NONE

    N, big = 20, 2**32 // 400
    bt, _, basis = blur_tables(N)
    x, e = torch.randn(12, 1, N, N), torch.randn(12, 1, N, N)
    real, launched = K._blur_grid_kernel, []
    monkeypatch.setattr(K, "_blur_grid_kernel", type("First", (), {"__getitem__": lambda self, grid: (
        launched.append(grid), real[grid if grid[0] < 1000 else (1,)])[1]})())  # the big launch: program 0 only

    def run(B):
        out = torch.zeros_like(x)
        with ops.use_cpu_backend("triton"):
            K.launch_blur_step(x=x, eps=[e], out=out, coef=bt, basis=basis, t_tensor=None, t_value=3,
                               seed_tensor=None, seed_value=0, noise=None, noise_mode=NOISE_NONE, B=B, C=1, N=N)
        return out

    small = run(12)
    assert torch.equal(run(big), small)
    assert launched == [(4,), (-(-big // 12),)]  # one tile a program; four a program
    assert ((small.double() - gref.blur_step(x, [e], bt, basis, 3)).abs() <= 4e-7 * magnitude(
        gref.blur_step, x, [e], bt, basis.abs(), 3, noise=None)).all()


@pytest.mark.parametrize("N", [7, 4, 2, 1], ids=["N7-grid", "N4-kron-1-plane-a-row", "N2-kron-4-planes-a-row",
                                                 "N1-kron-16-planes-a-row"])
def test_blur_an_invalid_device_row_poisons_only_its_sample(N):
    """A device row outside the table (the host cannot see it) makes its sample NaN and no other, though the tile's
    products mix the planes of several samples (the grid's 36 planes a tile at N = 7; the Kronecker tiles of 64
    rows of 1, 4 and 16 planes at N = 4, 2, 1, whose rows of 4 and 16 planes hold planes of two to six samples,
    their samples found per row and plane and spread over the plane's columns): the poison joins after the
    products."""
    from gmm_triton.kernels.blur_step import launch_blur_step

    bt, _, basis = blur_tables(N)
    x, e = torch.randn(13, 3, N, N), torch.randn(13, 3, N, N)
    rows = torch.randint(0, 5, (13,))
    rows[4] = 99
    out = torch.empty_like(x)
    with ops.use_cpu_backend("triton"):
        launch_blur_step(x=x, eps=[e], out=out, coef=bt, basis=basis, t_tensor=rows, t_value=0, seed_tensor=None,
                         seed_value=0, noise=None, noise_mode=0, B=13, C=3, N=N)
    assert torch.isnan(out[4]).all()
    assert torch.isfinite(out[torch.arange(13) != 4]).all()


@pytest.mark.parametrize("N", [48, 36])
def test_blur_a_gpu_nan_in_the_data_reaches_the_output_through_the_rounded_split(N):
    """One plane at T = 64 rounds both parts of its split (ROUND, ties away in integers): a GPU's canonical NaN
    0x7FFFFFFF in fp32 data carried into the sign there (-0.0 for hi and for lo), so that the NaN vanished and the
    plane came out finite; lo's rounding keeps a NaN (_tf32's KEEP_NAN). The interpreter's arithmetic carries this
    NaN's payload as a GPU makes it, so the CPU sees what a GPU would: the plane with the NaN element NaN
    everywhere, the other planes finite. (Without KEEP_NAN: the NaN plane finite, the test fails.)"""
    from gmm_triton.kernels.blur_step import launches_grid, tile_size

    assert tile_size(N) == 64 and not launches_grid(N, 1, 6, True, 90)
    bt, _, basis = blur_tables(N)
    x, e = torch.randn(2, 3, N, N), torch.randn(2, 3, N, N)
    x.view(torch.int32)[1, 2, N // 3, N // 2] = 0x7FFFFFFF
    with ops.use_cpu_backend("triton"):
        out = gops.blur_step(x, [e], 2, bt, basis)
    assert torch.isnan(out[1, 2]).all()
    out[1, 2] = 0
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("N,dtype,noise", [(7, torch.float32, 0), (28, torch.bfloat16, 1), (12, torch.float32, 1),
                                           (4, torch.float32, 0), (16, torch.float32, 1)],
                         ids=["N7-grid", "N28-grid-bf16-philox", "N12-grid-philox", "N4-kron", "N16-plane-philox"])
def test_blur_one_invalid_device_timestep_makes_every_output_nan(N, dtype, noise):
    """One device timestep for the launch (a one-element tensor the host does not read) outside the table: every
    output NaN, on each form; the grid reads its table's NaN row there (_grid_table; no per-element poison), whose
    NaN the products carry to every output, its Y split for the inverse (tf32x3) included. A valid timestep on the
    same launch: finite. (Broken on purpose, the grid's invalid launch reading row 0: the NaN test fails.)"""
    from gmm_triton.kernels.blur_step import launch_blur_step, launches_grid

    bt, _, basis = blur_tables(N)
    x, e = torch.randn(13, 3, N, N).to(dtype), torch.randn(13, 3, N, N).to(dtype)
    assert launches_grid(N, 1, 39, True, 90) == (N in (7, 12, 28))
    for row, bad in ((torch.tensor([99]), True), (torch.tensor([-1]), True), (torch.tensor([2]), False)):
        out = torch.empty_like(x)
        with ops.use_cpu_backend("triton"):
            launch_blur_step(x=x, eps=[e], out=out, coef=bt, basis=basis, t_tensor=row, t_value=0,
                             seed_tensor=None, seed_value=5, noise=None, noise_mode=noise, B=13, C=3, N=N)
        assert (torch.isnan(out).all() if bad else torch.isfinite(out).all()), (row, out.float().isnan().sum())


@pytest.mark.parametrize("N", [8, 20], ids=["N8-kron", "N20-planes"])
def test_blur_fp64_and_noise_tensor(backend, N):
    bt, bt_lam, basis = blur_tables(N)
    x = torch.randn(3, 2, N, N, dtype=torch.float64)
    e, z = torch.randn_like(x), torch.randn_like(x)
    out = gops.blur_step(x, [e], 1, bt_lam, basis, stochastic=True, noise=z)
    assert out.dtype == torch.float64
    assert (out - gref.blur_step(x, [e], bt_lam, basis, 1, noise=z)).abs().max() < 1e-11


def test_blur_low_precision(backend):
    bt, _, basis = blur_tables(8)
    x, e0 = torch.randn(2, 2, 8, 8).to(torch.bfloat16), torch.randn(2, 2, 8, 8).to(torch.bfloat16)
    out = gops.blur_step(x, [e0], 4, bt, basis)
    truth = gref.blur_step(x, [e0], bt, basis, 4)
    assert out.dtype == torch.bfloat16
    # one rounding of the fp32 result to bf16 (plus fp32 noise far below it)
    assert ((out.double() - truth).abs() <= 2 * 2**-8 * truth.abs() + 1e-4 * truth.abs().max()).all()


def test_blur_rows_outside_the_table_and_not_modified(backend):
    bt, _, basis = blur_tables(4)
    x, e = torch.randn(2, 1, 4, 4), torch.randn(2, 1, 4, 4)
    xc, ec = x.clone(), e.clone()
    with pytest.raises(ValueError, match="outside the coefficient table"):
        gops.blur_step(x, [e], 5, bt, basis)
    gops.blur_step(x, [e], 2, bt, basis)
    assert torch.equal(x, xc) and torch.equal(e, ec)


def test_blur_bad_arguments():
    bt, _, basis = blur_tables(8)
    x = torch.randn(2, 1, 8, 8)
    with pytest.raises(ValueError, match="square images"):
        gops.blur_step(torch.randn(2, 1, 8, 4), [torch.randn(2, 1, 8, 4)], 0, bt, basis)
    with pytest.raises(ValueError, match="basis"):
        gops.blur_step(x, [x], 0, bt, basis.float())
    with pytest.raises(ValueError, match=r"\[steps, 5, 8, 8\]"):
        gops.blur_step(x, [x], 0, bt[:, :3], basis)


def test_blur_launcher_refuses_32_bit_overflows():
    """The launcher's own limits, which the op cannot see: 2³¹ planes (plane indices divided in 32 bits) and a table of
    2³¹ values (the Kronecker rows' per-sample offsets in 32 bits); stride-0 views, so that nothing is allocated."""
    from gmm_triton.kernels.blur_step import launch_blur_step

    bt, _, basis = blur_tables(2)
    x = torch.zeros(1, 1, 2, 2)
    kw = dict(x=x, eps=[x], out=x.clone(), basis=basis, t_tensor=torch.tensor([0]), t_value=0, seed_tensor=None,
              seed_value=0, noise=None, noise_mode=0, N=2)
    with pytest.raises(ValueError, match="planes"):
        launch_blur_step(coef=bt, B=2**16, C=2**15, **kw)
    huge = bt[:1].expand(2**31 // 20 + 1, 5, 2, 2)
    assert huge.numel() >= 2**31
    with pytest.raises(ValueError, match="coefficient table of"):
        launch_blur_step(coef=huge, B=1, C=1, **kw)


@pytest.mark.parametrize("N, k, yscr", [(48, 2, True), (48, 3, True), (40, 2, False)],
                         ids=["N48-2-buffers", "N48-3-buffers", "N40-2-buffers-sliced"])
def test_blur_t64_whole_plane_holds_y_in_scratch(monkeypatch, N, k, yscr):
    """Two and three buffers at T = 64 where N is a multiple of 16 (48, 64) take the whole-operand plane on sm_90 with
    Y in a scratch plane between the buffers' products (plane_y_scratch; the sliced form ran there at about half the
    predicted throughput), and two buffers on sm_100 (three spilled in some variants there); at other N they keep the
    sliced plane (the whole form spilled), and sm_80 slices them all.
    Each launch, and the sliced plane forced on sm_90, meets the float64 reference within the fp32 bound, with the
    stochastic step's in-kernel noise (N = 48) and the noise pre-pass (N = 40)."""
    from gmm_triton.kernels import blur_step as K

    _, bt, basis = blur_tables(N, lam_order=2)
    x = torch.randn(1, 2, N, N)
    eps = [torch.randn_like(x) for _ in range(k)]
    rows = torch.tensor([2])
    ref = gref.blur_step(x, eps, bt, basis, rows, seed=11)
    bound = magnitude(gref.blur_step, x, eps, bt, basis.abs(), rows, noise=philox(11, x.shape))
    real = K.plane_sliced
    for arch, force, want in ((90, None, yscr), (100, None, yscr and k == 2), (80, None, False), (90, True, False)):
        seen = []
        monkeypatch.setattr(K, "_arch", lambda device, a=arch: a)
        monkeypatch.setattr(K, "plane_sliced", lambda *a, f=force: real(*a) if f is None else f)
        monkeypatch.setattr(K, "plane_y_scratch", lambda *a, r=K.plane_y_scratch: seen.append(r(*a)) or seen[-1])
        with ops.use_cpu_backend("triton"):
            out = gops.blur_step(x, eps, rows, bt, basis, stochastic=True, seed=11)
        monkeypatch.undo()
        assert seen == [want], (arch, force, seen)
        assert ((out.double() - ref).abs() <= 2e-6 * bound).all(), (arch, force)


def _descriptors_against_pointers(monkeypatch, kernel, policy, N, k, B):
    """A stochastic blur step of B samples of 2 planes with k ε buffers (table rows 1, 4, 3), run by the interpreter
    with the TMA descriptors its launch takes (the CPU suite reports sm_90) and with ``policy`` (a blur_step function)
    answering False: each within the fp32 bound of the float64 reference, and equal bit for bit. Returns the launch of
    ``kernel`` each took, {True: (args, kwargs), False: …}."""
    from gmm_triton.kernels import blur_step as K

    _, bt, basis = blur_tables(N, lam_order=2)
    x = torch.randn(B, 2, N, N)
    eps = [torch.randn_like(x) for _ in range(k)]
    rows = torch.tensor([1, 4, 3][:B])
    ref = gref.blur_step(x, eps, bt, basis, rows, seed=5)
    bound = magnitude(gref.blur_step, x, eps, bt, basis.abs(), rows, noise=philox(5, x.shape))
    real_kernel, outs, launches = getattr(K, kernel), {}, {}
    for tma in (True, False):
        args = []

        class Spy:  # the launch's arguments, then the real kernel
            def __getitem__(self, grid):
                return lambda *a, **kw: args.append((a, kw)) or real_kernel[grid](*a, **kw)

        monkeypatch.setattr(K, kernel, Spy())
        if not tma:
            monkeypatch.setattr(K, policy, lambda *a: False)
        with ops.use_cpu_backend("triton"):
            outs[tma] = gops.blur_step(x, eps, rows, bt, basis, stochastic=True, seed=5)
        monkeypatch.undo()
        (launches[tma],) = args
        assert ((outs[tma].double() - ref).abs() <= 2e-6 * bound).all(), tma
    assert torch.equal(outs[True], outs[False])
    return launches


@pytest.mark.parametrize("N, k, B", [(33, 3, 2), (40, 2, 3), (48, 2, 1), (64, 3, 1)],
                         ids=["N33-sliced-3-buffers-noise-prepass", "N40-sliced-2-buffers-philox",
                              "N48-whole-y-scratch", "N64-whole-y-scratch-3-buffers"])
def test_blur_tma_descriptors_move_no_number(monkeypatch, N, k, B):
    """At T = 64 with two or three buffers on sm_90 (basis_tma) the products read V's parts through TMA descriptors
    (tma_descriptor; _basis_part), and the held sliced plane its table's planes and Y's tile too (_whole): the
    interpreter runs the descriptors' loads, which the CPU suite takes wherever the launch does (it reports sm_90). The
    same values reach the same products: bit for bit the numbers of the pointers' loads, which meet the float64
    reference within the fp32 bound. 2-6 planes a launch (each its own scratch tile), different table rows (each
    plane's sample's). (Y's copy after its stores needs a proxy fence on a GPU: test_compile_matrix.py.)"""
    from gmm_triton.kernels import blur_step as K
    from triton.tools.tensor_descriptor import TensorDescriptor

    launches = _descriptors_against_pointers(monkeypatch, "_blur_step_kernel", "basis_tma", N, k, B)
    sliced = K.plane_sliced(k, 64, N, 90)
    for tma, (a, _) in launches.items():
        descs = [isinstance(v, TensorDescriptor) for v in a[7:11]]  # bp, br, ct, yd
        assert descs == ([True, True, sliced, sliced] if tma else [False] * 4), (tma, descs)
    # the policy: sm_90, tf32x3, T = 64, two or three buffers; but the whole-operand plane's three of 16-bit storage
    assert [K.basis_tma(a, t, T, n) for a, t, T, n in ((90, True, 64, 2), (90, True, 64, 3), (90, True, 64, 1),
                                                       (90, True, 32, 3), (90, False, 64, 3), (80, True, 64, 3),
                                                       (100, True, 64, 3))] == [True, True] + [False] * 5
    assert [K.basis_tma(90, True, 64, n, sl, h) for n, sl, h in ((3, False, True), (3, True, True), (2, False, True),
                                                                 (3, False, False))] == [False, True, True, True]


@pytest.mark.parametrize("N, k, B", [(28, 1, 2), (20, 3, 2), (8, 2, 3)],
                         ids=["N28-one-buffer-two-planes-a-tile", "N20-three-buffers-two-pairs", "N8-two-buffers"])
def test_blur_grid_tma_moves_no_number(monkeypatch, N, k, B):
    """The grid form with one tile a program on sm_90 reads V_L's parts through a TMA descriptor (grid_tma;
    _basis_part), which the interpreter runs where the CPU suite's launch takes it (it reports sm_90): bit for bit the
    numbers of the pointers' loads, within the fp32 bound of the float64 reference. Its buffers' first products run
    two at a time (_pair_left): one buffer and its ε, three buffers in two pairs, two in a pair and one on its own;
    different table rows (each plane's sample's)."""
    from gmm_triton.kernels import blur_step as K
    from triton.tools.tensor_descriptor import TensorDescriptor

    launches = _descriptors_against_pointers(monkeypatch, "_blur_grid_kernel", "grid_tma", N, k, B)
    for tma, (a, kw) in launches.items():
        assert kw["TP"] == 1 and kw["NEPS"] == k, kw
        assert [isinstance(v, TensorDescriptor) for v in a[6:8]] == [tma, False], tma  # bl, br
    # the policy: one tile a program, tf32x3, sm_90
    assert [K.grid_tma(a, t, tp) for a, t, tp in ((90, True, 1), (90, True, 2), (90, True, 4), (90, False, 1),
                                                  (80, True, 1), (100, True, 1))] == [True] + [False] * 5


def test_blur_opcheck(backend):
    bt, bt_lam, basis = blur_tables(4)
    x = torch.randn(2, 2, 4, 4)
    for args in [(x, [torch.randn_like(x)] * 3, bt, basis, torch.tensor([2, 4]), 0, None, None),
                 (x, [torch.randn_like(x)], bt_lam, basis, None, 3, torch.tensor([7]), None)]:
        torch.library.opcheck(torch.ops.gmm_triton.blur_step.default, args)


@pytest.mark.parametrize("N, k, B", [(8, 1, 37), (4, 3, 37), (3, 1, 37), (12, 2, 9), (16, 1, 5), (13, 3, 3),
                                     (20, 3, 1), (33, 3, 1)],
                         ids=["N8-kron", "N4-kron-3-buffers", "N3-grid", "N12-grid-2-buffers", "N16-plane",
                              "N13-plane-3-buffers", "N20-sliced", "N33-sliced"])
def test_blur_16bit_buffers_skip_the_split_bit_for_bit(monkeypatch, N, k, B):
    """fp16 and bf16 values are tf32 values: a 16-bit buffer's first product runs two tf32 products where fp32
    storage runs three (_mm_slice's EXACT), leaving out only the product with its low part, all exact zeros. So the
    output equals, bit for bit, that of the same values stored in fp32, in every form (Kronecker rows, grid, one plane
    with whole operands, the sliced plane) and with one to three buffers, the one plane's Y in the same orientation
    (plane_transposed_y); the 16-bit launch writes fp32 here, so that no rounding of the output hides a difference.
    (Not N = 2: its transform's entries are ±1/2, whose low parts are zero, so that leaving out the other product
    would pass too.) N = 20 is launched as on sm_80, where three buffers take the sliced plane (sm_90 and sm_100 take
    the grid from one plane: launches_grid)."""
    from gmm_triton.kernels import blur_step as K

    if N == 20:
        monkeypatch.setattr(K, "_arch", lambda device: 80)
        assert not K.launches_grid(N, k, 2, True, 80) and K.launches_grid(N, k, 2, True, 90)
    # both storages take Y in the 16-bit launch's orientation (fp32 at N = 13 with three buffers takes it as is, 16-bit
    # storage transposed: plane_transposed_y)
    real = K.plane_transposed_y
    monkeypatch.setattr(K, "plane_transposed_y", lambda N, T, s, tf, sixteen, *a: real(N, T, s, tf, True, *a))
    table, _, basis = blur_tables(N)
    rows = torch.randint(0, 5, (B,))
    for dt in (torch.float16, torch.bfloat16):
        x = torch.randn(B, 3 if B > 1 else 2, N, N).to(dt)
        eps = [torch.randn_like(x) for _ in range(k)]
        outs = []
        for store in (dt, torch.float32):
            out = torch.empty(x.shape, dtype=torch.float32)
            with ops.use_cpu_backend("triton"):
                K.launch_blur_step(x=x.to(store), eps=[e.to(store) for e in eps], out=out, coef=table, basis=basis,
                                   t_tensor=rows, t_value=0, seed_tensor=None, seed_value=0, noise=None, noise_mode=0,
                                   B=B, C=x.shape[1], N=N)
            outs.append(out)
        assert torch.isfinite(outs[0]).all()
        assert torch.equal(outs[0], outs[1]), (dt, (outs[0] - outs[1]).abs().max())
