"""GPU tests (`pytest -m cuda`, or benchmarks/run_gpu.sh): the compiled Triton kernel against the float64
reference, the RNG contract on the device, no host syncs, CUDA-graph capture and torch.compile."""
import numpy as np
import pytest
import torch

import gmm_triton.kernels.step as kstep
from gmm_triton import GMMDDIMScheduler, build_mixture, contract, ddim_table, ops, reference
from gmm_triton.kernels.step import LaunchConfig
from gmm_triton.mixture import VARIANCES

pytestmark = pytest.mark.cuda
DEV = "cuda"


@pytest.fixture(scope="module")
def table():
    from diffusers import DDIMScheduler

    s = DDIMScheduler(beta_schedule="scaled_linear")
    s.set_timesteps(10)
    return ddim_table(s.alphas_cumprod, float(s.final_alpha_cumprod), 1000, s.timesteps).to(DEV)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("pred", ["epsilon", "sample", "v_prediction", "flow"])
@pytest.mark.parametrize("shape", [(3, 5, 7, 11), (4, 4, 64, 64)])
def test_matches_reference(table, dtype, pred, shape):
    x, m = torch.randn(shape, device=DEV).to(dtype), torch.randn(shape, device=DEV).to(dtype)
    rows = torch.randint(0, 1000, (shape[0],), device=DEV)
    prev, x0 = ops.ddim_step(x, m, rows, table, prediction_type=pred, eta=0.8, seed=3, clip_sample_range=2.0)
    rp, rx0 = reference.fused_step(x, m, rows.cpu(), table.cpu(), prediction_type=pred, eta=0.8, seed=3,
                                   clip_sample_range=2.0)
    eps = torch.finfo(dtype).eps
    tol = (2e-6 if dtype == torch.float32 else eps) * (1 + rp.abs().max())  # one rounding of the output
    assert (prev.double().cpu() - rp).abs().max() <= tol
    assert (x0.double().cpu() - rx0).abs().max() <= (1e-6 if dtype == torch.float32 else eps) * (1 + rx0.abs().max())


@pytest.mark.parametrize("variance", VARIANCES)
def test_mixture_matches_reference(table, variance):
    D = 4 * 32 * 32
    mix = build_mixture(D, 10, components=8, scale=0.05, variance=variance, priors="random", seed=2, device=DEV)
    x, m = torch.randn(6, 4, 32, 32, device=DEV), torch.randn(6, 4, 32, 32, device=DEV)
    rows = torch.tensor([999, 900, 500, 300, 100, 0], device=DEV)
    out, _ = ops.ddim_step(x, m, rows, table, eta=1.0, seed=5, mixture=mix)
    ref, _ = reference.fused_step(x, m, rows.cpu(), table.cpu(), eta=1.0, seed=5, mixture=mix.to("cpu"))
    assert (out.double().cpu() - ref).abs().max() < 1e-5


def test_mixture_built_on_gpu_matches_cpu_build():
    a = build_mixture(4096, 5, seed=3, device=DEV)
    b = build_mixture(4096, 5, seed=3, device="cpu")
    assert (a.delta.cpu() - b.delta).abs().max() < 1e-5  # same Philox stream; QR up to rounding


def test_philox_bit_exact_on_gpu():
    w = ops.philox_words(1 << 16, seed=2**40 + 1, stream=1, start=2**33 - 7, device=DEV).cpu().numpy()
    r = np.stack(reference.philox4x32(2**40 + 1, np.arange(2**33 - 7, 2**33 - 7 + (1 << 16), dtype=np.uint64), 1), 1)
    assert np.array_equal(w.view(np.uint32), r)
    z = ops.philox_normal((1 << 16,), seed=9, stream=0, start=3, device=DEV).double().cpu().numpy()
    assert np.abs(z - reference.philox_normal(9, 1 << 16, 0, 3)).max() <= reference.NORMAL_BOUNDS["gpu"]


def test_gpu_stream_equals_cpu_stream(table):
    x, m = torch.randn(3, 4, 33, 33), torch.randn(3, 4, 33, 33)
    with ops.use_cpu_backend("cpp"):
        cpu, _ = ops.ddim_step(x, m, 500, table.cpu(), eta=1.0, seed=42)
    gpu, _ = ops.ddim_step(x.to(DEV), m.to(DEV), 500, table, eta=1.0, seed=42)
    assert (gpu.cpu() - cpu).abs().max() < 1e-5


def test_block_size_independent_on_gpu(table, monkeypatch):
    x, m = torch.randn(4, 3, 37, 41, device=DEV), torch.randn(4, 3, 37, 41, device=DEV)
    outs = []
    for cfg in (LaunchConfig(256, 2), LaunchConfig(4096, 8)):
        monkeypatch.setattr(kstep, "default_config", lambda D, dev, c=cfg: c)
        outs.append(ops.ddim_step(x, m, 400, table, eta=1.0, seed=7)[0])
    # the noise is keyed by (seed, element) only; an element may sit in a full tile in one grid and in an edge tile
    # (a separately compiled copy of the same maths) in the other, hence a tolerance of a couple of roundings
    assert (outs[0] - outs[1]).abs().max() <= 4e-7 * (1 + outs[0].abs().max())


def test_large_index_beyond_2_31(table):
    B, D = 2, 2**30 + 7
    x = torch.randn(1, D, device=DEV, dtype=torch.float16).expand(B, D)
    m = torch.randn(1, D, device=DEV, dtype=torch.float16).expand(B, D)
    prev, _ = ops.ddim_step(x, m, 500, table, eta=1.0, seed=4, return_pred_original=False)
    tail = slice(D - 4096, D)
    z = torch.from_numpy(reference.philox_normal(4, 4096, 0, (B - 1) * D + D - 4096))[None]
    rp, _ = reference.fused_step(x[:1, tail].cpu(), m[:1, tail].cpu(), 500, table.cpu(), eta=1.0, noise=z)
    assert (prev[B - 1, tail].double().cpu() - rp[0]).abs().max() <= 2 * torch.finfo(torch.float16).eps * (1 + rp.abs().max())


@pytest.mark.parametrize("kernel", ["gaussian", "gmm"])
def test_step_makes_no_host_sync(kernel):
    s = GMMDDIMScheduler(kernel=kernel, gmm_variance="diag", gmm_scale=0.1, clip_sample=False)
    s.set_timesteps(50, device=DEV)
    x = torch.randn(1, 4, 64, 64, device=DEV, dtype=torch.float16)
    s.step(x, s.timesteps[0], x, eta=1.0)  # warm-up: compile, build the mixture
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for t in s.timesteps:
            x = s.step(torch.tanh(x), t, x, eta=1.0).prev_sample
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert torch.isfinite(x).all()


def test_cuda_graph_captures_a_50_step_loop_with_fresh_noise():
    s = GMMDDIMScheduler(clip_sample=False)
    s.set_timesteps(50, device=DEV)
    static_x = torch.randn(1, 4, 64, 64, device=DEV)
    start = static_x.clone()

    def loop():
        x = static_x
        for t in s.timesteps:
            x = s.step(0.5 * x, t, x, eta=1.0).prev_sample
        return x

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        loop()  # warm-up outside the capture
    torch.cuda.current_stream().wait_stream(side)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        out = loop()
    results = []
    for _ in range(2):
        static_x.copy_(start)
        g.replay()
        results.append(out.clone())
    assert torch.isfinite(results[0]).all()
    assert not torch.equal(results[0], results[1])  # the seed is drawn on the device at each replay


def test_compile_fullgraph_on_gpu(table):
    def loop(x, seed):
        for t in (900, 600, 300, 0):
            x, _ = ops.ddim_step(x, torch.tanh(x), t, table, eta=0.5, seed=seed)
        return x

    x, seed = torch.randn(2, 4, 32, 32, device=DEV), torch.tensor([3], device=DEV)
    assert torch.allclose(loop(x, seed), torch.compile(loop, fullgraph=True)(x, seed), atol=1e-6)


def test_opcheck_on_gpu(table):
    x, m = torch.randn(2, 3, 4, 4, device=DEV), torch.randn(2, 3, 4, 4, device=DEV)
    args = (x, m, table, torch.tensor([300, 20], device=DEV), 0, torch.tensor([5], device=DEV),
            torch.tensor([7], device=DEV), None, None, [], "epsilon", "none", 1.0, 1.0, False, None, False, True)
    torch.library.opcheck(torch.ops.gmm_triton.ddim_step.default, args)


def test_compile_matrix_binds_launches_as_the_gpu_does(table):
    """aot.py (the CPU compile matrix) captures a case the way Triton's launcher binds a real launch: its compile
    of the main fp16 case has the cache key of the kernel that the same call compiled on this GPU."""
    from triton.backends.nvidia.compiler import sm_arch_from_capability

    from gmm_triton.tools import aot, aot_cases

    x = torch.randn(2, *aot_cases.MAIN_SHAPE, device=DEV, dtype=torch.float16)
    ops.ddim_step(x, torch.randn_like(x), 7, table, eta=1.0, seed=aot_cases.SEED64)
    real = {k.hash for k in kstep._ddim_step_kernel.device_caches[torch.cuda.current_device()][0].values()}
    major, minor = torch.cuda.get_device_capability()
    (case,) = [c for c in aot.all_cases() if c.name == "main-fp16-eps-philox-x0"]
    (launch,) = aot.capture(case, sm_arch_from_capability(10 * major + minor))
    assert aot.compile_launch(launch, sm_arch_from_capability(10 * major + minor)).hash in real


@pytest.mark.parametrize("variance", [None, *VARIANCES])
def test_layouts_offsets_and_mixtures_match_the_cpp_twin(table, variance):
    """channels_last latents, a device sample offset and each mixture mode: the GPU kernel against the C++ twin (same
    Philox stream; normals within the 5e-6 of the GPU's hardware sin/cos)."""
    D = 4 * 16 * 16
    mix = build_mixture(D, 10, components=4, scale=0.01, variance=variance, seed=3) if variance else None
    x, m = torch.randn(3, 4, 16, 16), torch.randn(3, 4, 16, 16)
    rows = torch.tensor([901, 501, 101])
    with ops.use_cpu_backend("cpp"):
        cpu, _ = ops.ddim_step(x, m, rows, table.cpu(), eta=1.0, seed=5, mixture=mix, sample_offset=11)
    xg, mg = (t.to(DEV).to(memory_format=torch.channels_last) for t in (x, m))
    gpu, _ = ops.ddim_step(xg, mg, rows.to(DEV), table, eta=1.0, seed=torch.tensor([5], device=DEV),
                           mixture=mix.to(DEV) if mix is not None else None,
                           sample_offset=torch.tensor([11], device=DEV))
    assert gpu.is_contiguous(memory_format=torch.channels_last)
    assert (gpu.cpu() - cpu).abs().max() < 2e-5


@pytest.mark.parametrize("variance", VARIANCES)
def test_one_component_is_ddim_on_gpu(table, variance):
    """diag / vub: bit for bit (ρ² = 1 enters the same square root). exact: its first pass stores −σz rounded to
    float32 for the step, where the Gaussian step fuses σz into its last multiply-add: one rounding apart."""
    x, m = torch.randn(3, 4096, device=DEV), torch.randn(3, 4096, device=DEV)
    ddim, _ = ops.ddim_step(x, m, 500, table, eta=1.0, seed=21)
    out, _ = ops.ddim_step(x, m, 500, table, eta=1.0, seed=21,
                           mixture=build_mixture(4096, 10, components=1, scale=2.0, variance=variance, device=DEV))
    if variance == "exact":
        assert (out - ddim).abs().max() <= 2 * torch.finfo(torch.float32).eps * (1 + ddim.abs().max())
    else:
        assert torch.equal(out, ddim)


def test_fp64_scalars_stay_fp64_on_gpu(table):
    x, m2 = torch.randn(2, 64, dtype=torch.float64, device=DEV), torch.randn(4, 64, dtype=torch.float64, device=DEV)
    out, _ = ops.ddim_step(x, m2, 500, table, guidance_scale=7.1, clip_sample_range=0.3)
    ref, _ = reference.fused_step(x.cpu(), m2.cpu(), 500, table.cpu(), guidance_scale=7.1, clip_sample_range=0.3)
    assert (out.cpu() - ref).abs().max() < 1e-12


def _cpp_and_gpu(fn):
    with ops.use_cpu_backend("cpp"):
        cpu = fn("cpu")
    return cpu, fn(DEV)


@pytest.mark.parametrize("case", ["contiguous", "channels_last", "x-channels_last", "m-channels_last",
                                  "d1000-b64", "d1001-b64", "d13467-b64", "d1001-b64-device-offset",
                                  "d1001-b64-device-offset-s2", "d1001-b64-device-offset-s3",
                                  "d1001-b64-device-offset-fp16", "d1001-per-sample-seeds"])
def test_noise_matches_the_cpp_twin(table, case):
    """The GPU's normals against the C++ twin's, element by element, on the issue-19 launches (layouts, ragged D on
    flat tiles, a device offset, per-sample seeds): with x = m = 0 (ε-prediction) the step returns σ·z exactly, so
    prev / σ is the noise itself; the GPU's normals are the contract's within 5e-6 (kernels/philox.py). A device
    offset with D % 4 ≠ 0 runs the shifted tiles (kernels/philox.py _shifted) at s = offset·D mod 4 = 1, 2, 3, in
    rows of 4 (fp32) and of 8 (fp16, compared within fp16's rounding)."""
    shape = {"d1000-b64": (64, 10, 10, 10), "d1001-b64": (64, 7, 11, 13), "d13467-b64": (64, 3, 67, 67),
             "d1001-per-sample-seeds": (8, 7, 11, 13)}.get(case, (64, 7, 11, 13) if "offset" in case else
                                                                (3, 4, 33, 33))
    B = shape[0]
    seed = list(range(100, 100 + B)) if case == "d1001-per-sample-seeds" else 42
    offset = {"s2": 6, "s3": 7}.get(case.rsplit("-", 1)[-1], 5) if "offset" in case else 0  # 1001·o ≡ o (mod 4)
    dtype = torch.float16 if case.endswith("fp16") else torch.float32

    def run(dev):
        x, m = torch.zeros(shape, device=dev, dtype=dtype), torch.zeros(shape, device=dev, dtype=dtype)
        if dev == DEV and "channels_last" in case:
            cl = lambda t: t.to(memory_format=torch.channels_last)  # noqa: E731
            x = cl(x) if case != "m-channels_last" else x
            m = cl(m) if case != "x-channels_last" else m
        off = torch.tensor([offset], device=dev) if dev == DEV and "device" in case else offset
        s = torch.tensor(seed, device=dev) if isinstance(seed, list) else seed
        return ops.ddim_step(x, m, 500, table.to(dev), eta=1.0, seed=s, sample_offset=off)[0]

    cpu, gpu = _cpp_and_gpu(run)
    sigma = float(table[500, contract.COL_VAR].sqrt())  # η = 1: σ = √(table variance) of the row
    dz = (gpu.cpu().double() - cpu.double()).abs().max().item() / sigma
    print(f"{case}: max |z_gpu - z_cpp| = {dz:.2e}")
    assert dz <= (6e-6 if dtype == torch.float32 else 6 * 2.0**-11)  # fp16: |z| ≤ 5.77, one rounding


@pytest.mark.parametrize("order", [0, 1, 2])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_cld_matches_the_cpp_twin(order, dtype):
    from gmm_triton.gddim import engine as E, ops as gops
    from gmm_triton.gddim.cld import CLD
    from gmm_triton.gddim.tables import cld_table

    stochastic = order == 0  # (noise at order 0; the multistep tables are deterministic)
    tab = cld_table(E.gddim_coefficients(CLD(), E.time_grid(6, 1.0, 1e-3), order, 0.7 if stochastic else 0.0, "R"))
    u = torch.randn(8, 2, 4, 32, 33).to(dtype)  # D = 4224 pairs: ragged against the 4096-pair tile
    eps = [torch.randn_like(u) for _ in range(order + 1)]

    def run(dev):
        return gops.cld_step(u.to(dev), [e.to(dev) for e in eps], 3, tab.to(dev), stochastic=stochastic, seed=17)

    cpu, gpu = _cpp_and_gpu(run)
    tol = 1e-5 if dtype == torch.float32 else 2 * torch.finfo(dtype).eps
    assert ((gpu.cpu().double() - cpu.double()).abs() <= tol * (1 + cpu.double().abs())).all()


@pytest.mark.parametrize("N", [1, 2, 3, 5, 6, 7, 8, 9, 10, 11, 12, 16, 17, 20, 28, 32, 33, 48, 64])
@pytest.mark.parametrize("buffers", [1, 2, 3])
def test_blur_on_tensor_cores_meets_the_fp32_bound(N, buffers):
    """The blur step's tf32x3 products (kernels/blur_step.py) against the float64 reference, within the bound the
    CPU tests hold every fp32 implementation to (4e-7 × the same maths on |inputs|), at every form and size: one ε
    buffer (the grid form at N = 3, 6, 7, 9 … 12, 17, 20, 28, 32 on sm_90 / sm_100: 213 planes at N = 3 and 51 at 6,
    a tile of planes and a partial one), two (the grid's pair and one more) and three (the grid, one tile a program,
    two pairs, at N = 5, 6, 8, 17, 20, 28, 32 on
    sm_90 / sm_100; one plane a program; Kronecker tiles of 16 rows at N = 1 … 3 and on sm_80; the sliced plane at N
    = 33, each transform's first product held for its second on sm_90 / sm_100: plane_held; on sm_90 at N = 33, 48,
    64 with three buffers V's parts through TMA descriptors, and at N = 33 the table's planes and Y's tile, read back
    after a proxy fence: basis_tma; the grid's V_L with one tile a program on sm_90, every grid launch here: grid_tma;
    the grid's buffers' first products two at a time: _pair_left)."""
    from gmm_triton.gddim import engine as E, ops as gops, reference as gref
    from gmm_triton.gddim.blur import BlurProcess
    from gmm_triton.gddim.tables import blur_table

    p = BlurProcess(N)
    bt, basis = blur_table(E.gddim_coefficients(p, E.time_grid(5, p.rho2t(80), 1e-5), 2, 0.0), N), p.dct()
    B = {3: 71, 6: 17}.get(N, 13)
    x = torch.randn(B, 3, N, N)
    eps = [torch.randn_like(x) for _ in range(buffers)]
    rows = torch.randint(0, 5, (B,))
    out = gops.blur_step(x.to(DEV), [e.to(DEV) for e in eps], rows.to(DEV), bt.to(DEV), basis.to(DEV)).cpu()
    ref = gref.blur_step(x, eps, bt, basis, rows)
    bound = gref.blur_step(x.abs(), [e.abs() for e in eps], bt.abs(), basis.abs(), rows)
    assert ((out.double() - ref).abs() <= 4e-7 * bound).all()


@pytest.mark.parametrize("N", [20, 28, 32])
@pytest.mark.parametrize("buffers", [1, 2, 3])
def test_blur_grid_16bit_buffers_on_the_gpu(N, buffers):
    """bf16 buffers on the grid (sm_90 / sm_100; kernels/blur_step.py): their first products without a split
    (EXACT), two at a time (_pair_left), V_L through TMA with one tile a program on sm_90 (grid_tma), against the
    float64 reference on the same bf16 values: within the fp32 bound plus the output's rounding to bf16, allowed two
    half-ulps of |reference| as in test_gddim_ops.py's test_blur_low_precision (the interpreter's conversion took
    up to 1.96 of them on these inputs; a GPU's rounds to nearest)."""
    from gmm_triton.gddim import engine as E, ops as gops, reference as gref
    from gmm_triton.gddim.blur import BlurProcess
    from gmm_triton.gddim.tables import blur_table

    p = BlurProcess(N)
    bt, basis = blur_table(E.gddim_coefficients(p, E.time_grid(5, p.rho2t(80), 1e-5), 2, 0.0), N), p.dct()
    x = torch.randn(13, 3, N, N).bfloat16()
    eps = [torch.randn_like(x) for _ in range(buffers)]
    rows = torch.randint(0, 5, (13,))
    out = gops.blur_step(x.to(DEV), [e.to(DEV) for e in eps], rows.to(DEV), bt.to(DEV), basis.to(DEV)).cpu()
    assert out.dtype == torch.bfloat16
    ref = gref.blur_step(x.double(), [e.double() for e in eps], bt, basis, rows)
    bound = gref.blur_step(x.double().abs(), [e.double().abs() for e in eps], bt.abs(), basis.abs(), rows)
    tol = 4e-7 * bound + 2 * 2**-8 * ref.abs()
    assert ((out.double() - ref).abs() <= tol).all()

def test_tf32_rounding_instruction_is_the_cpu_emulation():
    """cvt.rn.tf32.f32 (kernels/blur_step.py _tf32 with TF32_RN: the tf32x3 split's high part on sm_90 and later)
    on the GPU, on the words test_gddim_ops.py's test_tf32_rounding_leaf_against_float64 gives the interpreter's
    emulation: bit for bit the rounding done in float64, ties to even, its low 13 bits zeros (lo = t - hi takes the
    whole register: a bit left there would be an error of up to 2^-10 |t|, not 2^-22), ±inf kept, the largest values
    to ±inf, a NaN a NaN (the PTX manual does not say; this is the check)."""
    if torch.cuda.get_device_capability()[0] < 9:
        pytest.skip("cvt.rn.tf32.f32 needs sm_90 (sm_80 rounds in integers: TF32_RNA)")
    from test_gddim_ops import _tf32_inputs, _tf32_reference, _tf32_run

    from gmm_triton.kernels import blur_step as K

    def run(words):
        return _tf32_run(words, K.TF32_RN.value, device=DEV)

    x = _tf32_inputs()
    got, want = run(x), _tf32_reference(x, True)
    bad = got.view(np.uint32) != want.view(np.uint32)
    assert not bad.any(), x[bad][:5].view(np.uint32)
    big = np.array([3.4028235e38, -3.4028235e38, np.inf, -np.inf], np.float32)
    assert np.array_equal(run(big), np.array([np.inf, -np.inf, np.inf, -np.inf], np.float32))
    nans = np.array([0x7FFFFFFF, 0xFFFFFFFF, 0x7FC00000, 0xFFC01001], np.uint32).view(np.float32)
    assert np.isnan(run(nans)).all()


@pytest.mark.parametrize("N,dtype", [(7, torch.float32), (12, torch.float32), (28, torch.bfloat16),
                                     (16, torch.float32), (48, torch.float32)])
def test_blur_one_invalid_device_timestep_on_the_gpu(N, dtype):
    """One device timestep for the launch outside the table: every output NaN (the grid at N = 7, 12, bf16 28 reads
    its table's NaN row, which the products and the inverse's split carry on the tensor cores; one plane a program
    at N = 16 and 48 adds the poison in Y, a GPU's canonical NaN once added, through the rounded split at N = 48:
    _tf32's KEEP_NAN); a valid one finite (test_gddim_ops.py's test on the CPU)."""
    from gmm_triton.gddim import engine as E
    from gmm_triton.gddim.blur import BlurProcess
    from gmm_triton.gddim.tables import blur_table
    from gmm_triton.kernels.blur_step import launch_blur_step

    p = BlurProcess(N)
    bt, basis = blur_table(E.gddim_coefficients(p, E.time_grid(5, p.rho2t(80), 1e-5), 2, 0.0), N), p.dct()
    x, e = torch.randn(13, 3, N, N, device=DEV).to(dtype), torch.randn(13, 3, N, N, device=DEV).to(dtype)
    for row, bad in ((99, True), (-1, True), (2, False)):
        out = torch.empty_like(x)
        launch_blur_step(x=x, eps=[e], out=out, coef=bt.to(DEV), basis=basis.to(DEV),
                         t_tensor=torch.tensor([row], device=DEV), t_value=0, seed_tensor=None, seed_value=5,
                         noise=None, noise_mode=contract.NOISE_PHILOX, B=13, C=3, N=N)
        assert (torch.isnan(out).all() if bad else torch.isfinite(out).all()).item(), (row, out.isnan().sum())


@pytest.mark.parametrize("N", [36, 48, 64])
def test_blur_a_nan_in_the_data_reaches_the_output_on_the_gpu(N):
    """A GPU's canonical NaN (0x7FFFFFFF) in fp32 data, one plane a program at T = 64, whose split rounds both parts
    (ROUND): its plane NaN everywhere, the others finite (without _tf32's KEEP_NAN the integer rounding made it -0.0
    and the plane finite; test_gddim_ops.py's test on the CPU)."""
    from gmm_triton.gddim import engine as E, ops as gops
    from gmm_triton.gddim.blur import BlurProcess
    from gmm_triton.gddim.tables import blur_table

    p = BlurProcess(N)
    bt, basis = blur_table(E.gddim_coefficients(p, E.time_grid(5, p.rho2t(80), 1e-5), 2, 0.0), N), p.dct()
    x, e = torch.randn(2, 3, N, N), torch.randn(2, 3, N, N)
    x.view(torch.int32)[1, 2, N // 3, N // 2] = 0x7FFFFFFF
    out = gops.blur_step(x.to(DEV), [e.to(DEV)], 2, bt.to(DEV), basis.to(DEV)).cpu()
    assert torch.isnan(out[1, 2]).all()
    out[1, 2] = 0
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("N", [1, 4])
def test_blur_kron_launch_masks_only_its_last_program_on_the_gpu(N):
    """Whole Kronecker rows but not whole programs (SPLIT: the full programs load unmasked, the last masked in its own
    copy): 64·G + 2 planes of one channel; the first 64·G planes equal bit for bit their launch alone (whole
    programs), and every plane meets the float64 reference, stochastic order 2 with in-kernel Philox."""
    from gmm_triton.gddim import ops as gops, reference as gref
    from gmm_triton.gddim import engine as E
    from gmm_triton.gddim.blur import BlurProcess
    from gmm_triton.gddim.tables import blur_table
    from gmm_triton.kernels import blur_step as K

    G, PB = K.kron_planes(N), K.kron_rows(3, K._arch(torch.device(DEV)), False, K.tile_size(N))
    p = BlurProcess(N)
    bt, basis = blur_table(E.gddim_coefficients(p, E.time_grid(5, p.rho2t(80), 1e-5), 2, 1.0), N), p.dct()
    x = torch.randn(PB * G + 2, 1, N, N)
    eps = [torch.randn_like(x) for _ in range(3)]
    run = lambda n: gops.blur_step(x[:n].to(DEV), [e[:n].to(DEV) for e in eps], 3, bt.to(DEV),  # noqa: E731
                                   basis.to(DEV), stochastic=True, seed=6).cpu()
    out, whole = run(len(x)), run(PB * G)
    assert torch.equal(out[:PB * G], whole)
    ref = gref.blur_step(x, eps, bt, basis, 3, seed=6)
    noise = torch.from_numpy(reference.philox_normal(6, x.numel())).reshape(x.shape)
    bound = gref.blur_step(x.abs(), [e.abs() for e in eps], bt.abs(), basis.abs(), 3, noise=noise.abs())
    assert ((out.double() - ref).abs() <= 2e-6 * bound).all()


def _blur_many_tiles_against_one(N, B, programs_take_several):
    """A stochastic blur step on [B, 3, N, N] whose programs each take several planes or tiles
    (``programs_take_several()`` checks the launch policy) gives the bits of one a program (MIN_PROGRAMS raised)
    and meets the float64 reference."""
    from gmm_triton.gddim import engine as E, ops as gops, reference as gref
    from gmm_triton.gddim.blur import BlurProcess
    from gmm_triton.gddim.tables import blur_table
    from gmm_triton.kernels import blur_step as K

    p = BlurProcess(N)
    bt, basis = blur_table(E.gddim_coefficients(p, E.time_grid(5, p.rho2t(80), 1e-5), 0, 1.0), N), p.dct()
    x, e = torch.randn(B, 3, N, N), torch.randn(B, 3, N, N)
    assert programs_take_several()
    run = lambda: gops.blur_step(x.to(DEV), [e.to(DEV)], 3, bt.to(DEV), basis.to(DEV), stochastic=True,  # noqa: E731
                                 seed=8).cpu()
    many = run()
    saved, K.MIN_PROGRAMS = K.MIN_PROGRAMS, 10**9
    try:
        one = run()
    finally:
        K.MIN_PROGRAMS = saved
    assert torch.equal(many, one)
    ref = gref.blur_step(x, [e], bt, basis, 3, seed=8)
    noise = torch.from_numpy(reference.philox_normal(8, x.numel())).reshape(x.shape)
    bound = gref.blur_step(x.abs(), [e.abs()], bt.abs(), basis.abs(), 3, noise=noise.abs())
    assert ((many.double() - ref).abs() <= 2e-6 * bound).all()


@pytest.mark.parametrize("N", [13, 16])
def test_blur_planes_per_program_on_the_gpu(N):
    """Launches large enough that a per-plane program takes several planes (planes_per_program: 4203 planes, 4 a
    program, the last program repeating the last plane) give the bits of one plane a program, with the noise
    pre-pass (N = 13) and in-kernel noise (N = 16), and meet the float64 reference."""
    from gmm_triton.kernels import blur_step as K

    _blur_many_tiles_against_one(N, 1401, lambda: K.planes_per_program(1401 * 3, 16, False, True) == 4)


@pytest.mark.parametrize("N", [1, 4])
def test_blur_kron_row_tiles_on_the_gpu(N):
    """Launches large enough that a Kronecker program 16 wide takes four tiles of 64 rows (kron_row_tiles: 2048·4·64·G
    planes and one more row, the last program partial) give the bits of 64 rows a program, with in-kernel noise, and
    meet the float64 reference."""
    from gmm_triton.kernels import blur_step as K

    G = K.kron_planes(N)
    if K._arch(torch.device(DEV)) // 10 not in (9, 10):
        pytest.skip("rows of 64 a program on sm_80 (kron_rows)")
    B = -(-(2 * 4 * 64 * G * K.MIN_PROGRAMS + G) // 3)
    _blur_many_tiles_against_one(N, B, lambda: K.kron_rows(1, 90, False, 16, 3 * B, G) == 256)


@pytest.mark.parametrize("N, B", [(7, 98305), (20, 8193)])
def test_blur_tiles_per_program_on_the_gpu(N, B):
    """Launches large enough that a grid program takes four tiles (tiles_per_program: 8193 tiles, the last partial,
    the last program repeating it) give the bits of one tile a program, with the noise pre-pass (N = 7) and
    in-kernel noise (N = 20), and meet the float64 reference."""
    from gmm_triton.kernels import blur_step as K

    if not K.launches_grid(N, 1, 3 * B, True, K._arch(torch.device(DEV))):
        pytest.skip("the grid form runs on sm_90 and sm_100")
    tile = (K.GRID_ROWS // N) * (K.GRID_COLS // N)
    _blur_many_tiles_against_one(N, B, lambda: K.tiles_per_program(-(-3 * B // tile), 1) == 4)
