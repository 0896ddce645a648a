"""The compile matrix's cases for the fused DDIM step and the Philox helpers (see aot.py).

A covering design, not the full product: every constexpr value the launcher can produce appears at least once
(dtypes, prediction types, noise sources, mixture variances, shared tables, CFG, clip, threshold, clipped ε,
device / per-sample timesteps, device / host seeds of both integer widths, per-sample seeds, x̂₀ on and off,
aligned, D % 16 ≠ 0 and D % 4 ≠ 0 sizes, one-block samples, sample offsets, permuted (channels_last) and strided-row
layouts), and ``tests/test_compile_matrix.py`` checks that it does. The ``main-*`` cases (D = 4·128·128) are the ones RESULTS.md tracks across commits.

A new kernel family adds a function decorated with :func:`aot.register_cases` (here or in a module listed in
``aot.CASE_MODULES``) that returns its cases.
"""
from __future__ import annotations

import functools
import math

from dataclasses import dataclass
from typing import Optional

import torch

from ..mixture import VARIANCES
from . import aot

MAIN_SHAPE = (4, 128, 128)
SEED64 = 2**40 + 1          # a generator-drawn seed: an i64 kernel argument
SEED32 = 3                  # a small explicit seed: an i32 argument (another signature)
_LABEL = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32", torch.float64: "fp64"}
_PRED = {"epsilon": "eps", "sample": "sample", "v_prediction": "vpred", "flow": "flow"}


@dataclass(frozen=True)
class Step:
    """One ``ops.ddim_step`` call on CUDA-like inputs [batch, *shape]."""

    dtype: torch.dtype
    shape: tuple = MAIN_SHAPE
    batch: int = 2
    pred: str = "epsilon"
    eta: float = 1.0
    noise: Optional[torch.dtype] = None      # a caller's noise tensor of this dtype
    x0: bool = True
    seed: str = "host"                       # "host" (i64), "host32", "device", "per_sample" (a device [B])
    timestep: str = "int"                    # "int", "device" (one value), "per_sample"
    clip: bool = False
    clipped_eps: bool = False
    threshold: bool = False
    cfg: bool = False
    expand: bool = False                     # batch-broadcast inputs (batch stride 0)
    mixture: Optional[str] = None            # "diag", "vub", "exact"
    shared: bool = False
    mixture_dtype: torch.dtype = torch.float32
    offset_final: bool = False
    sample_offset: str = "none"              # "none", "host" (an int), "device" (an int64 tensor)
    components: int = 8                      # the mixture's K
    layout: str = "contiguous"               # "channels_last" (both); "x_cl" / "m_cl": only the sample / only the
                                             # model output channels_last (a noise tensor follows the sample);
                                             # "row_view": rows of a [B, D + 3] buffer

    @property
    def D(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n

    def bytes_per_element(self, kernel: str) -> float:
        """DRAM floor per element, as benchmarks/RESULTS.md counts it."""
        e = torch.empty((), dtype=self.dtype).element_size()
        z = torch.empty((), dtype=self.noise).element_size() if self.noise is not None else 0
        kp, mix = 1 << (self.components - 1).bit_length(), torch.empty((), dtype=self.mixture_dtype).element_size()
        basis = kp * mix / self.batch  # the step's basis rows, read by every sample of the batch
        # the exact mode's Philox noise is drawn once, by the projection pass, which writes it (fp32) for the step
        if self.mixture == "exact" and self.noise is None and self.eta > 0:
            z = 4
        if kernel == "_project_kernel":
            return z + basis
        b = e * (3 + self.cfg + self.x0) + z
        if self.mixture:  # the drawn component's offsets, and the mode's tables of the step, read once per batch
            b += mix + _mixture(self).variance_bytes_per_step() / (self.batch * self.D)
        return b


    def work(self, kernel: str, cx: dict, grid: tuple) -> aot.Work:
        """The launch's tiles as kernels/step.py's ``_tile`` lays them out: grid (B, n_blk), tile blk of sample b at
        start = blk·BLOCK − (b·D mod ALIGN); a full tile lies inside [0, D), an edge tile does not. FLAT: grid
        (n_blk, 1) over the flat [B·D] array, one sample of extent B·D."""
        if cx.get("FLAT"):
            return Step(self.dtype, shape=(self.batch * self.D,), batch=1).work(kernel, {**cx, "FLAT": False},
                                                                               (1, grid[0]))
        B, n_blk = grid[0], grid[1]
        block, align, D = int(cx["BLOCK"]), int(cx["ALIGN"]), self.D
        full = sum(1 for b in range(B) for blk in range(n_blk)
                   if 0 <= blk * block - (b * D) % align and blk * block - (b * D) % align + block <= D)
        # the exact mode's loop over the basis rows (projection pass; the step where it draws noise)
        from ..contract import NOISE_NONE, VAR_CODES

        exact = kernel == "_project_kernel" or (cx.get("MIX") and cx.get("VAR_MODE") == VAR_CODES["exact"]
                                                 and cx.get("NOISE") != NOISE_NONE)
        return aot.Work(B * D, {"full": full, "edge": B * n_blk - full}, (int(cx["KP"]),) if exact else ())


def _table(rows_for_flow: bool):
    from ..coefficients import ddim_table, flow_table

    if rows_for_flow:
        return flow_table(torch.linspace(1.0, 0.0, 51, dtype=torch.float64))
    acp = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64), 0).float()
    return ddim_table(acp, 1.0, 1000, torch.arange(999, -1, -100))


@functools.lru_cache(maxsize=None)
def _mixture(s: Step):
    from ..mixture import build_mixture

    # Built for real on the CPU (once per case), then seen as CUDA tensors of the same layout. build_mixture
    # cannot run on fake CUDA tensors in a CPU-only torch (it copies host tensors to the device).
    return build_mixture(s.D, 4, components=s.components, scale=0.1, offsets="rand", variance=s.mixture, shared=s.shared,
                         seed=1, dtype=s.mixture_dtype, clip_variance=True)


def _drive_step(s: Step):
    table, mix = _table(s.pred == "flow"), _mixture(s) if s.mixture else None

    def drive(fx: aot.FakeCuda):
        shape = (1 if s.expand else s.batch, *s.shape)
        x = fx.tensor(shape, s.dtype)
        m = fx.tensor(((2 if s.cfg else 1) * shape[0], *s.shape), s.dtype)
        if s.expand:
            x, m = x.expand(s.batch, *s.shape), m.expand(s.batch, *s.shape)
        if s.layout in ("channels_last", "x_cl", "m_cl"):
            cl = lambda t: fx.like(torch.empty(t.shape, dtype=t.dtype, device="meta").to(  # noqa: E731
                memory_format=torch.channels_last))
            x = cl(x) if s.layout != "m_cl" else x
            m = cl(m) if s.layout != "x_cl" else m
        elif s.layout == "row_view":  # each sample's block contiguous, batch stride D + 3
            x, m = (fx.like(torch.empty((t.shape[0], s.D + 3), dtype=s.dtype, device="meta")[:, :s.D]) for t in (x, m))
        noise = fx.tensor((s.batch, *s.shape), s.noise) if s.noise is not None else None
        if noise is not None and s.layout in ("channels_last", "x_cl"):
            noise = cl(noise)
        t = {"int": 7, "device": fx.tensor((1,), torch.int64), "per_sample": fx.tensor((s.batch,), torch.int64)}
        seed = {"host": SEED64, "host32": SEED32, "device": fx.tensor((1,), torch.int64),
                "per_sample": fx.tensor((s.batch,), torch.int64)}[s.seed]
        mixture = None
        if mix is not None:
            mixture = type(mix)(**{**mix.__dict__, **{k: fx.like(v) for k, v in mix.__dict__.items()
                                                      if isinstance(v, torch.Tensor) and k != "priors"
                                                      and k != "max_offset_variance"}})
        aot.host().ddim_step(
            x, m, t[s.timestep], fx.like(table), prediction_type=s.pred, eta=s.eta,
            clip_sample_range=1.0 if s.clip else None, thresholding=(0.995, 1.5) if s.threshold else None,
            use_clipped_model_output=s.clipped_eps, guidance_scale=7.5 if s.cfg else None,
            noise=noise,
            seed=seed, mixture=mixture, offset_final=s.offset_final, return_pred_original=s.x0,
            sample_offset={"none": None, "host": 5, "device": fx.tensor((1,), torch.int64)}[s.sample_offset])

    return drive


def _step_case(name: str, s: Step, targets=aot.TARGETS) -> aot.Case:
    return aot.Case(name, _LABEL[s.dtype], _drive_step(s), s.bytes_per_element, s.work, targets)


@aot.register_cases
def ddim_step_cases() -> list[aot.Case]:
    cases = []
    for dt in (torch.float16, torch.bfloat16, torch.float32):
        for x0 in (False, True):
            cases.append(_step_case(f"main-{_LABEL[dt]}-eps-philox{'-x0' if x0 else ''}", Step(dt, x0=x0)))
    h, b, f, d = torch.float16, torch.bfloat16, torch.float32, torch.float64
    mix_shape = (4, 64, 64)
    steps = [
        ("eta0-fp16-eps-x0", Step(h, eta=0.0)),
        ("eta0-fp32-eps-x0", Step(f, eta=0.0)),
        ("fp64-vpred-philox-clip-pertimestep-x0", Step(d, pred="v_prediction", eta=0.5, clip=True,
                                                       timestep="per_sample")),
        ("bf16-sample-noise-clippedeps", Step(b, pred="sample", noise=b, clip=True, clipped_eps=True, x0=False)),
        ("fp32-flow-cfg-devseed-devtimestep-x0", Step(f, pred="flow", cfg=True, seed="device", timestep="device")),
        ("fp16-eps-philox-threshold-pertimestep-x0", Step(h, threshold=True, timestep="per_sample")),
        ("fp32-eps-noise64-expand", Step(f, noise=d, expand=True, x0=False)),
        ("fp16-eps-philox-seed32-d1000-x0", Step(h, shape=(10, 10, 10), seed="host32")),
        ("fp16-eps-philox-d1001-x0", Step(h, shape=(7, 11, 13))),
        ("fp16-eps-philox-d13467-x0", Step(h, shape=(3, 67, 67))),  # ragged, with full (vector) tiles
        ("fp16-eps-philox-d1001-devoffset", Step(h, shape=(7, 11, 13), sample_offset="device", x0=False)),
        ("fp16-eps-philox-d4800-hostoffset-x0", Step(h, shape=(3, 40, 40), sample_offset="host")),
        # a per-sample row keeps per-sample tiles (not FLAT): D % 16 == 0, so its masks are whole vectors (MASKED)
        ("fp16-eps-philox-d4800-pertimestep-x0", Step(h, shape=(3, 40, 40), timestep="per_sample")),
        ("bf16-eps-philox-channelslast-x0", Step(b, shape=(4, 32, 32), layout="channels_last")),
        # mixed layouts on pixel tiles: a channels_last model output for a contiguous sample (logical compute order),
        # and a channels_last sample and noise for a contiguous model output
        ("fp16-eps-philox-mcl-x0", Step(h, shape=(4, 32, 32), layout="m_cl")),
        # three channels (not a power of two): no pixel tiles, the permuted layout's per-element gather (PERMUTED)
        ("fp32-eps-philox-channelslast-c3-x0", Step(f, shape=(3, 32, 32), layout="channels_last")),
        ("bf16-sample-noise-xcl", Step(b, shape=(4, 32, 32), pred="sample", noise=b, layout="x_cl", x0=False)),
        ("fp32-eps-philox-rowview", Step(f, shape=(1000,), layout="row_view", x0=False)),
        ("gmm-diag-fp16-eps-philox-x0", Step(h, shape=mix_shape, mixture="diag")),
        ("gmm-vub-bf16-eps-eta0-shared-offsetfinal-x0", Step(b, shape=mix_shape, eta=0.0, mixture="vub", shared=True,
                                                             mixture_dtype=torch.bfloat16, offset_final=True)),
        ("gmm-vub-fp32-vpred-philox-devseed", Step(f, shape=mix_shape, pred="v_prediction", mixture="vub",
                                                   seed="device", x0=False)),
        ("gmm-exact-fp32-eps-philox-pertimestep-x0", Step(f, shape=mix_shape, mixture="exact",
                                                          timestep="per_sample")),
        ("gmm-exact-fp16-eps-noise-shared", Step(h, shape=mix_shape, noise=h, mixture="exact", shared=True,
                                                 x0=False)),
        ("gmm-exact-bf16-eps-philox-k16-x0", Step(b, shape=mix_shape, mixture="exact", components=16)),
        # per-sample seeds (one generator per sample); with D % 4 != 0 each sample's counters start off its tiles'
        # Philox groups (every sample at offset·D), so the ragged case draws one group per element (ALIGNED4 off)
        ("fp16-eps-philox-perseed-x0", Step(h, seed="per_sample")),
        ("gmm-exact-bf16-eps-philox-perseed", Step(b, shape=mix_shape, mixture="exact", seed="per_sample")),
        ("fp16-eps-philox-perseed-d1001", Step(h, shape=(7, 11, 13), seed="per_sample", x0=False)),
    ]
    # every variance mode the mixture builder offers is compiled: one case for each mode no case above launches
    launched = {s.mixture for _, s in steps}
    steps += [(f"gmm-{mode}-fp16-eps-philox-x0", Step(h, shape=mix_shape, mixture=mode))
              for mode in VARIANCES if mode not in launched]
    return cases + [_step_case(n, s) for n, s in steps] + cliff_cases({n for n, _ in steps})


def cliff_cases(have) -> list[aot.Case]:
    """Issue 19's launches that fell off the roofline, each beside the contiguous, aligned case it is held to:
    ragged D at B = 64, channels_last and mixed layouts (Gaussian and every mixture mode), the exact mode up to
    K = 64 (channels_last too), a device sample offset with a ragged D. On sm_90a, the target of the predictions:
    the covering cases compile every constexpr value these use for all three targets. ``have``: the names of the
    covering cases (a mode's contiguous case is added here only where none of them is it)."""
    h, b = torch.float16, torch.bfloat16
    mix_shape = (4, 64, 64)
    cases = []
    for D, shape in ((1000, (10, 10, 10)), (1001, (7, 11, 13)), (13467, (3, 67, 67))):
        cases.append((f"ragged-fp16-d{D}-b64-x0", Step(h, shape=shape, batch=64)))
    cases.append(("ragged-fp16-d1001-b64-devoffset-x0", Step(h, shape=(7, 11, 13), batch=64, sample_offset="device")))
    # a mixture's ρ² rides inside each element's square root: shifted tiles shift the Box–Muller parts (RHO)
    for off in ("none", "device"):
        cases.append((f"ragged-gmm-diag-fp16-d1001-b64{'-devoffset' if off == 'device' else ''}-x0",
                      Step(h, shape=(7, 11, 13), batch=64, mixture="diag", sample_offset=off)))
    for dt in (h, b):
        cases.append((f"cl-{_LABEL[dt]}-eps-philox-x0", Step(dt, layout="channels_last")))
    for lay in ("m_cl", "x_cl"):  # mixed layouts: one of sample / model output channels_last
        cases.append((f"{lay.replace('_', '')}-fp16-eps-philox-x0", Step(h, layout=lay)))
        for var in VARIANCES:
            cases.append((f"{lay.replace('_', '')}-gmm-{var}-fp16-eps-philox-x0", Step(h, shape=mix_shape, mixture=var,
                                                                                      layout=lay)))
    for var in VARIANCES:  # each mode's contiguous case beside its channels_last one
        if f"gmm-{var}-fp16-eps-philox-x0" not in have:
            cases.append((f"gmm-{var}-fp16-eps-philox-x0", Step(h, shape=mix_shape, mixture=var)))
        cases.append((f"cl-gmm-{var}-fp16-eps-philox-x0", Step(h, shape=mix_shape, mixture=var,
                                                              layout="channels_last")))
    for k in (32, 64):
        cases.append((f"gmm-exact-fp16-eps-philox-k{k}-x0", Step(h, shape=mix_shape, mixture="exact", components=k)))
    cases.append(("cl-gmm-exact-fp16-eps-philox-k64-x0", Step(h, shape=mix_shape, mixture="exact", components=64,
                                                              layout="channels_last")))
    return [_step_case(n, s, ("sm_90a",)) for n, s in cases]


@aot.register_cases
def philox_cases() -> list[aot.Case]:
    def mixture_offsets(fx):  # gmm_triton.philox_normal on a GPU, at the size of a mixture's offset draw
        aot.host().philox_normal((4, 8, 4 * 64 * 64), seed=1, stream=2, device="cuda")

    def offset_normals(fx):
        aot.host().philox_normal((1 << 16,), seed=9, stream=0, start=3, device="cuda")

    def words(fx):
        aot.host().philox_words(1 << 16, seed=SEED64, stream=1, start=2**33 - 7, device="cuda")

    def elements(n):  # n real elements over the launch's programs
        return lambda kernel, cx, grid: aot.Work(n, {"any": math.prod(grid)})

    return [
        aot.Case("philox-normal-stream2", "fp32", mixture_offsets, lambda k: 4.0, elements(4 * 8 * 4 * 64 * 64)),
        aot.Case("philox-normal-start3", "fp32", offset_normals, lambda k: 4.0, elements(1 << 16)),
        # each counter writes 4 int32 words: an element is a word
        aot.Case("philox-words", "int32", words, lambda k: 4.0, elements(4 << 16)),
    ]
