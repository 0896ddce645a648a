"""Benchmarks of the fused step: `gmm-triton bench`,
`python -m gmm_triton.tools.bench`.

What each number is:

- **median µs**: one call of :func:`gmm_triton.ops.ddim_step` (writing prev and x̂₀) on fresh random inputs.
  CUDA: ``triton.testing.do_bench(warmup=25, rep=100, return_mode="median")`` (events; L2 flushed before each
  call). CPU (the C++ twin): median ``time.perf_counter`` over rounds, run round-robin with the baseline.
- **floor bytes**: each input read once and each output written once, B·D·elt·(2 [+1 for the second CFG half]
  + 2), plus the mixture tables one launch must read (see :func:`mixture_bytes`). **GB/s** = floor bytes /
  median time; **% copy** = GB/s over the copy bandwidth measured in the same process (CUDA: do_bench of
  ``y.copy_(x)`` on 2^28 bytes; CPU: median wall time of the same copy on 256 MiB; bytes = read + write);
  **floor µs** = floor bytes / copy bandwidth.
- **step µs**: wall time of ``scheduler.step`` per step in a 50-step Python loop without syncs (one sync at
  the end), ours (``GMMDDIMScheduler``) and diffusers' ``DDIMScheduler``; ratio = diffusers / ours.
- **compile µs**: the same DDIM maths in plain torch under ``torch.compile`` (default mode), timed like the op;
  ratio = compile / ours.
- **end to end**: the share of a 50-step sampling loop (small random UNet2DModel, and the exact Gaussian-
  mixture denoiser of ``oracle.py``) spent in the scheduler: 1 − loop(step = no-op) / loop.

Outputs under ``--out``: bench.csv (kernel table), e2e.csv, throughput.png, meta.json.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import datetime
import functools
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch

from .. import ops
from ..coefficients import COL_ALPHA, COL_ALPHA_PREV, COL_S, COL_S_PREV2, COL_VAR, ddim_table, flow_table
from ..mixture import MixtureTensors, build_mixture

SIZES = ((1, 4, 64, 64), (1, 4, 128, 128), (2, 4, 128, 128), (16, 3, 256, 256), (64, 4, 128, 128), (64, 3, 256, 256))
QUICK_SIZES = ((1, 4, 32, 32), (2, 4, 64, 64))
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
QUICK_DTYPES = ("fp32", "bf16")
NUM_STEPS = 50      # every schedule, table and loop here has 50 steps
DDIM_ROW = 500      # the DDIM table row the kernel table times: mid-schedule, on the 50-step grid
FLOW_ROW = 25       # the flow table row (the middle step)
COMPONENTS = 8
GUIDANCE = 7.5
SEED = 1234


@dataclass(frozen=True)
class Variant:
    """One row kind of the kernel table."""
    key: str                          # --variants name
    name: str                         # table label
    eta: float
    prediction_type: str = "epsilon"
    guidance: Optional[float] = None  # fused classifier-free guidance: model_output holds 2B samples
    mixture: Optional[str] = None     # the mixture's variance mode, or None for the Gaussian kernel
    loop_kernel: Optional[str] = None  # GMMDDIMScheduler kernel timed in the step() loop, or None
    compiled: bool = False            # has a torch.compile baseline (plain-torch DDIM)


VARIANTS = (
    Variant("ddim0", "ddim η=0", 0.0, loop_kernel="gaussian", compiled=True),
    Variant("ddim1", "ddim η=1", 1.0, loop_kernel="gaussian", compiled=True),
    Variant("gmm-diag", "gmm-diag η=1", 1.0, mixture="diag", loop_kernel="gmm"),
    Variant("gmm-vub", "gmm-vub η=1", 1.0, mixture="vub"),
    Variant("gmm-exact", "gmm-exact η=1", 1.0, mixture="exact"),
    Variant("cfg", "cfg η=1", 1.0, guidance=GUIDANCE),
    Variant("flow", "flow η=0.5", 0.5, prediction_type="flow"),
)
VARIANTS_BY_KEY = {v.key: v for v in VARIANTS}

KERNEL_COLUMNS = ("device", "shape", "batch", "dim", "dtype", "variant", "floor_bytes", "median_us", "gbps",
                  "pct_copy", "floor_us", "step_us_ours", "step_us_diffusers", "ratio_diffusers", "compile_us",
                  "ratio_compile", "error")
E2E_COLUMNS = ("device", "model", "shape", "dtype", "eta", "scheduler", "mode", "loop_ms", "noop_loop_ms",
               "sched_share_pct", "sched_us_per_step", "note")


class BenchError(RuntimeError):
    """A configuration the benchmark refuses to measure (wrong backend, missing device)."""


# ------------------------------------------------------------------------------------------------
# inputs
# ------------------------------------------------------------------------------------------------
def ddim_rows() -> torch.Tensor:
    """The [1000, 8] table of diffusers' default DDIM schedule (linear β) with 50 steps (host, float64)."""
    from diffusers import DDIMScheduler

    s = DDIMScheduler(clip_sample=False)
    s.set_timesteps(NUM_STEPS)
    return ddim_table(s.alphas_cumprod, float(s.final_alpha_cumprod), s.config.num_train_timesteps, s.timesteps)


def mixture_scale(table: torch.Tensor) -> float:
    """s with s²/K = 0.81 σ² at ``DDIM_ROW`` and η = 1, so the "exact" variance is valid on the timed row."""
    return 0.9 * math.sqrt(COMPONENTS * float(table[DDIM_ROW, COL_VAR]))


def mixture_bytes(mix: MixtureTensors, batch: int) -> int:
    """Bytes of the mixture tables one launch needs: the offsets of the drawn components (at most
    min(B, K) rows of D: every sample reads its own component's row), the cdf and 1/(Kπ) weights, and the
    variance data of the mode (diag: one row of D; vub: K×K bounds; exact: the step's basis and eigenvalues)."""
    D = mix.dim
    n = min(batch, mix.k) * D * mix.delta.element_size()
    n += mix.cdf.numel() * mix.cdf.element_size() + mix.component_weight.numel() * mix.component_weight.element_size()
    if mix.variance_mode == "diag":
        n += D * mix.var_table.element_size()
    elif mix.variance_mode == "vub":
        n += mix.var_table.numel() * mix.var_table.element_size()
    else:
        n += mix.kp * (D * mix.basis.element_size() + mix.eigvals.element_size())
    return n


def floor_bytes(variant: Variant, shape, dtype: str, mixture: Optional[MixtureTensors] = None) -> int:
    """Bytes the step must move at least: sample and model output (both CFG halves) read once, prev and x̂₀
    written once, plus :func:`mixture_bytes` for a mixture variant."""
    B, D = int(shape[0]), math.prod(shape[1:])
    reads = 3 if variant.guidance is not None else 2
    n = B * D * DTYPES[dtype].itemsize * (reads + 2)
    if variant.mixture is not None:
        if mixture is None:
            raise ValueError(f"{variant.name}: floor bytes need the mixture")
        n += mixture_bytes(mixture, B)
    return n


def _ddim_torch(x, eps, a: float, s: float, a_prev: float, c_eps: float, sigma: float):
    """DDIM in plain torch, the torch.compile baseline: x̂₀ = (x − s ε)/a, prev = a' x̂₀ + c ε + σ z."""
    x0 = (x - s * eps) / a
    prev = a_prev * x0 + c_eps * eps
    if sigma > 0:
        prev = prev + sigma * torch.randn_like(x)
    return prev, x0


_compiled_ddim = None


def compiled_ddim():
    global _compiled_ddim
    if _compiled_ddim is None:
        _compiled_ddim = torch.compile(_ddim_torch)
    return _compiled_ddim


@dataclass
class Case:
    """One configuration of the kernel table: inputs on the device and the calls that time them."""
    shape: tuple
    dtype: str
    variant: Variant
    run: Callable[[], object]                  # one op call, writing prev and x̂₀
    floor_bytes: int
    compiled: Optional[Callable[[], object]]   # the torch.compile baseline on the same inputs, or None


def make_case(shape, dtype: str, variant: Variant, device, *, tables: Optional[dict] = None,
              mixtures: Optional[dict] = None, with_compile: bool = False) -> Case:
    """Builds fresh random inputs for one configuration. ``tables``/``mixtures``: caches shared across cases
    (keyed by kind / (D, variance)); the mixture has S = 50 per-step tables, K = 8, ORTHO offsets."""
    dev = torch.device(device)
    tables = {} if tables is None else tables
    mixtures = {} if mixtures is None else mixtures
    shape = tuple(int(n) for n in shape)
    B, D = shape[0], math.prod(shape[1:])
    dt = DTYPES[dtype]
    if "ddim" not in tables:
        tables["ddim"] = ddim_rows()
        tables["flow"] = flow_table(torch.linspace(1, 0, NUM_STEPS + 1))
    kind = "flow" if variant.prediction_type == "flow" else "ddim"
    host = tables[kind]
    if (kind, dev) not in tables:
        tables[(kind, dev)] = host.to(dev)
    table = tables[(kind, dev)]
    row = FLOW_ROW if kind == "flow" else DDIM_ROW

    mix = None
    if variant.mixture is not None:
        key = (D, variant.mixture, dev)
        if key not in mixtures:
            mixtures[key] = build_mixture(D, NUM_STEPS, components=COMPONENTS, scale=mixture_scale(tables["ddim"]),
                                          variance=variant.mixture, clip_variance=variant.mixture == "vub",
                                          seed=SEED, device=dev)
        mix = mixtures[key]

    x = torch.randn(shape, device=dev, dtype=dt)
    m = torch.randn(((2 * B) if variant.guidance is not None else B,) + shape[1:], device=dev, dtype=dt)
    seed = torch.tensor([SEED], dtype=torch.int64)  # a host seed, as a CPU generator gives: read without a sync

    def run():
        return ops.ddim_step(x, m, row, table, prediction_type=variant.prediction_type, eta=variant.eta,
                             guidance_scale=variant.guidance, seed=seed, mixture=mix, return_pred_original=True)

    baseline = None
    if with_compile and variant.compiled:
        c = host[row].tolist()
        sigma = variant.eta * math.sqrt(c[COL_VAR])
        coef = (c[COL_ALPHA], c[COL_S], c[COL_ALPHA_PREV], math.sqrt(max(c[COL_S_PREV2] - sigma * sigma, 0.0)),
                sigma)
        baseline = functools.partial(compiled_ddim(), x, m, *coef)

    return Case(shape, dtype, variant, run, floor_bytes(variant, shape, dtype, mix), baseline)


# ------------------------------------------------------------------------------------------------
# timing
# ------------------------------------------------------------------------------------------------
def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def interleaved(fns: dict, dev: torch.device, *, budget_s: float, min_rounds: int, max_rounds: int,
                warm: Optional[dict] = None, warm_calls: int = 1) -> dict:
    """Median wall seconds of each callable (synced after each call), run round-robin so that the machine's
    drift (page-fault storms, frequency changes) hits every callable alike. ``warm``: the warm-up callables
    (default: ``fns`` themselves, ``warm_calls`` times each). Rounds: as many as ``budget_s`` allows
    after the first, within [min_rounds, max_rounds]."""
    for f in (warm or fns).values():
        for _ in range(warm_calls):
            f()
    sync(dev)
    samples = {k: [] for k in fns}

    def one_round():
        for k, f in fns.items():
            t0 = time.perf_counter()
            f()
            sync(dev)
            samples[k].append(time.perf_counter() - t0)

    one_round()
    first = sum(v[0] for v in samples.values())
    rounds = max(min_rounds, min(max_rounds, int(budget_s / max(first, 1e-9))))
    for _ in range(rounds - 1):
        one_round()
    return {k: statistics.median(v) for k, v in samples.items()}


def time_calls(fns: dict, dev: torch.device, budget_s: float) -> dict:
    """Median µs of each call: do_bench on CUDA, interleaved wall time on the CPU."""
    if dev.type == "cuda":
        from triton.testing import do_bench

        return {k: do_bench(f, warmup=25, rep=100, return_mode="median") * 1e3 for k, f in fns.items()}
    return {k: v * 1e6 for k, v in interleaved(fns, dev, budget_s=budget_s, min_rounds=5, max_rounds=200,
                                                warm_calls=2).items()}


def copy_bandwidth(dev: torch.device) -> float:
    """Device copy bandwidth in GB/s (bytes read + written) of ``y.copy_(x)``: 2^28 bytes on CUDA (do_bench
    median), 256 MiB on the CPU (median wall time)."""
    n = 2**28 // 4
    x = torch.randn(n, device=dev)
    y = torch.empty_like(x)
    if dev.type == "cuda":
        from triton.testing import do_bench

        sec = do_bench(lambda: y.copy_(x), warmup=25, rep=100, return_mode="median") * 1e-3
    else:
        sec = interleaved({"copy": lambda: y.copy_(x)}, dev, budget_s=1.0, min_rounds=9, max_rounds=30,
                          warm_calls=2)["copy"]
    return 2 * x.numel() * x.element_size() / sec / 1e9


def step_loop(step, timesteps, m, x_init):
    """A 50-step loop ``x = step(m, t, x)`` as a pipeline runs it (no sync inside)."""
    def run():
        x = x_init
        for t in timesteps:
            x = step(m, t, x)
        return x
    return run


def schedulers(variant: Variant, dev) -> dict:
    """{"ours": (scheduler, step), "diffusers": (scheduler, step)} for a step() loop of ``variant``:
    ``GMMDDIMScheduler(clip_sample=False)`` (kernel ``variant.loop_kernel``; the mixture with diag variances)
    and diffusers' ``DDIMScheduler(clip_sample=False)``, both with 50 steps on ``dev``;
    ``step(m, t, x)`` returns prev_sample at the variant's η."""
    from diffusers import DDIMScheduler

    from ..schedulers import GMMDDIMScheduler

    ours = GMMDDIMScheduler(clip_sample=False, kernel=variant.loop_kernel or "gaussian", gmm_variance="diag")
    theirs = DDIMScheduler(clip_sample=False)
    for s in (ours, theirs):
        s.set_timesteps(NUM_STEPS, device=dev)
    eta = variant.eta
    return {"ours": (ours, lambda m, t, x: ours.step(m, t, x, eta=eta).prev_sample),
            "diffusers": (theirs, lambda m, t, x: theirs.step(m, t, x, eta=eta).prev_sample)}


def step_latency(variant: Variant, shape, dtype: str, dev: torch.device, budget_s: float) -> tuple:
    """(ours, diffusers): wall µs per step() in a 50-step loop, timed round-robin, one sync per loop."""
    dt = DTYPES[dtype]
    x = torch.randn(shape, device=dev, dtype=dt)
    m = torch.randn(shape, device=dev, dtype=dt)
    pair = schedulers(variant, dev)
    loops = {k: step_loop(f, s.timesteps, m, x) for k, (s, f) in pair.items()}
    # CPU: warm up on two steps only (a full diffusers loop on large latents takes seconds)
    warm = loops if dev.type == "cuda" else {k: step_loop(f, s.timesteps[:2], m, x) for k, (s, f) in pair.items()}
    med = interleaved(loops, dev, budget_s=budget_s, min_rounds=3 if dev.type == "cuda" else 1,
                      max_rounds=20 if dev.type == "cuda" else 10, warm=warm)
    return med["ours"] * 1e6 / NUM_STEPS, med["diffusers"] * 1e6 / NUM_STEPS


# ------------------------------------------------------------------------------------------------
# end to end
# ------------------------------------------------------------------------------------------------
def _unet(dev: torch.device, quick: bool):
    from diffusers import UNet2DModel

    size = 16 if quick else (64 if dev.type == "cuda" else 32)
    batch = 8 if (dev.type == "cuda" and not quick) else 1
    torch.manual_seed(0)
    model = UNet2DModel(sample_size=size, in_channels=4, out_channels=4, layers_per_block=1,
                        block_out_channels=(32, 64), down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                        up_block_types=("AttnUpBlock2D", "UpBlock2D"), norm_num_groups=8)
    return model.to(dev).eval(), (batch, 4, size, size)


def _oracle(dev: torch.device, quick: bool, alphas_cumprod):
    from ..lab.oracle import MixtureDenoiser, digits_mixture

    batch = 4 if quick else (256 if dev.type == "cuda" else 32)
    return MixtureDenoiser(digits_mixture(16, device=dev), alphas_cumprod=alphas_cumprod), (batch, 1, 16, 16)


def _capture(run, dev):
    """A CUDA graph of ``run`` (warmed up on a side stream first); returns its replay."""
    side = torch.cuda.Stream(dev)
    side.wait_stream(torch.cuda.current_stream(dev))
    with torch.cuda.stream(side):
        run()
    torch.cuda.current_stream(dev).wait_stream(side)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        run()
    return g.replay


def _e2e_row(dev, model, shape, eta, scheduler, mode, loop_s=None, noop_s=None, note=""):
    row = dict(device=dev.type, model=model, shape="x".join(map(str, shape)), dtype="fp32", eta=eta,
               scheduler=scheduler, mode=mode, loop_ms="", noop_loop_ms="", sched_share_pct="",
               sched_us_per_step="", note=note)
    if loop_s is not None:
        row.update(loop_ms=loop_s * 1e3, noop_loop_ms=noop_s * 1e3, sched_share_pct=100 * (1 - noop_s / loop_s),
                   sched_us_per_step=(loop_s - noop_s) * 1e6 / NUM_STEPS)
    return row


def sampling_loop(model, x_init, timesteps, step):
    """The sampling loop a pipeline runs: ``x = step(model(x, t).sample, t, x)`` over ``timesteps``, no grad."""
    def run():
        with torch.no_grad():
            x = x_init
            for t in timesteps:
                x = step(model(x, t).sample, t, x)
        return x
    return run


def end_to_end(dev: torch.device, quick: bool, etas=(0.0, 1.0)) -> list:
    """Scheduler share of a 50-step sampling loop, ours and diffusers', for a small random UNet2DModel and
    the exact mixture denoiser; on CUDA also ours with the whole loop captured in a CUDA graph. A model that
    fails gives one row whose note starts with "error"."""
    from diffusers import DDIMScheduler

    from ..schedulers import GMMDDIMScheduler

    rows = []
    ours, theirs = GMMDDIMScheduler(clip_sample=False), DDIMScheduler(clip_sample=False)
    for s in (ours, theirs):
        s.set_timesteps(NUM_STEPS, device=dev)
    builders = {"unet": lambda: _unet(dev, quick), "oracle": lambda: _oracle(dev, quick, theirs.alphas_cumprod)}
    for name, build in builders.items():
        shape = ()
        try:
            model, shape = build()
            x_init = torch.randn(shape, device=dev)
            steps = {"noop": (ours, lambda m, t, x: x)}
            for eta in etas:
                steps[("ours", eta)] = (ours, lambda m, t, x, e=eta: ours.step(m, t, x, eta=e).prev_sample)
                steps[("diffusers", eta)] = (theirs, lambda m, t, x, e=eta: theirs.step(m, t, x, eta=e).prev_sample)
            fns = {k: sampling_loop(model, x_init, s.timesteps, f) for k, (s, f) in steps.items()}
            warm = {k: sampling_loop(model, x_init, s.timesteps[:2], f) for k, (s, f) in steps.items()}
            med = interleaved(fns, dev, budget_s=1.0 if quick else 5.0, min_rounds=1 if quick else 3,
                              max_rounds=10 if quick else 20, warm=warm)
            for eta in etas:
                for who in ("ours", "diffusers"):
                    rows.append(_e2e_row(dev, name, shape, eta, who, "eager", med[(who, eta)], med["noop"]))
            if dev.type == "cuda" and name == "oracle":
                rows.append(_e2e_row(dev, name, shape, "", "ours", "cuda-graph",
                                     note="not capturable: the oracle's forward syncs (torch.unique, nonzero)"))
            elif dev.type == "cuda":
                graphs = {"noop": _capture(fns["noop"], dev)}
                for eta in etas:
                    graphs[("ours", eta)] = _capture(fns[("ours", eta)], dev)
                medg = interleaved(graphs, dev, budget_s=1.0 if quick else 3.0, min_rounds=3, max_rounds=20)
                for eta in etas:
                    rows.append(_e2e_row(dev, name, shape, eta, "ours", "cuda-graph", medg[("ours", eta)],
                                         medg["noop"]))
                rows.append(_e2e_row(dev, name, shape, "", "diffusers", "cuda-graph",
                                     note="not capturable: DDIMScheduler.step reads the device timestep on the host"))
        except ImportError as e:
            rows.append(_e2e_row(dev, name, shape, "", "", "", note=f"skipped: {e}"))
        except Exception as e:  # a model that breaks must not lose the other's rows
            rows.append(_e2e_row(dev, name, shape, "", "", "", note=f"error: {type(e).__name__}: {e}"[:300]))
    return rows


# ------------------------------------------------------------------------------------------------
# reporting
# ------------------------------------------------------------------------------------------------
def _fmt(v, digits=1, suffix=""):
    if v == "" or v is None:
        return ""
    if isinstance(v, str):
        return v
    if not math.isfinite(v):
        return "nan"
    return f"{v:.{digits}f}{suffix}"


def format_table(header, rows) -> str:
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) if rows else len(str(h)) for i, h in enumerate(header)]
    line = lambda cells: "  ".join(str(c).rjust(w) for c, w in zip(cells, widths))  # noqa: E731
    return "\n".join([line(header), line("-" * w for w in widths)] + [line(r) for r in rows])


def kernel_table(rows) -> str:
    header = ("shape", "dtype", "variant", "median µs", "GB/s", "% copy", "floor µs", "step µs", "diffusers µs",
              "×diffusers", "compile µs", "×compile")
    body = [(r["shape"], r["dtype"], r["variant"], _fmt(r["median_us"]), _fmt(r["gbps"]), _fmt(r["pct_copy"], 0),
             _fmt(r["floor_us"]), _fmt(r["step_us_ours"]), _fmt(r["step_us_diffusers"]),
             _fmt(r["ratio_diffusers"], 2), _fmt(r["compile_us"]), _fmt(r["ratio_compile"], 2)) for r in rows]
    return format_table(header, body)


def e2e_table(rows) -> str:
    header = ("model", "shape", "η", "scheduler", "mode", "loop ms", "no-op ms", "sched %", "sched µs/step", "note")
    body = [(r["model"], r["shape"], r["eta"], r["scheduler"], r["mode"], _fmt(r["loop_ms"], 2),
             _fmt(r["noop_loop_ms"], 2), _fmt(r["sched_share_pct"]), _fmt(r["sched_us_per_step"]), r["note"])
            for r in rows]
    return format_table(header, body)


def plot_throughput(rows, copy_gbps: float, path: Path, title: str) -> None:
    """GB/s against floor bytes: one panel per dtype, one line per variant, the copy bandwidth as a line."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    groups = {}
    for r in rows:
        if r["median_us"] != "" and math.isfinite(r["gbps"]):
            groups.setdefault(r["dtype"], {}).setdefault(r["variant"], []).append((r["floor_bytes"], r["gbps"]))
    dtypes = [d for d in DTYPES if d in groups] or ["none"]
    fig = Figure(figsize=(5 * len(dtypes), 4.6))
    FigureCanvasAgg(fig)
    colors = {v.name: f"C{i}" for i, v in enumerate(VARIANTS)}
    axes = fig.subplots(1, len(dtypes), sharey=True, squeeze=False)[0]
    for ax, dtype in zip(axes, dtypes):
        for variant, pts in groups.get(dtype, {}).items():
            pts.sort()
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ms=3, color=colors.get(variant, "k"),
                    label=variant)
        ax.axhline(copy_gbps, color="k", linewidth=1, label=f"copy {copy_gbps:.0f} GB/s")
        ax.set_xscale("log")
        ax.set_xlabel("floor bytes per step")
        ax.set_title(dtype, fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=6, loc="best")
    axes[0].set_ylabel("GB/s (floor bytes / median time)")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def _git(*args) -> Optional[str]:
    try:
        r = subprocess.run(["git", *args], cwd=Path(__file__).resolve().parent, capture_output=True, text=True,
                           timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return r.stdout.strip() if r.returncode == 0 else None


def device_name(dev: torch.device) -> str:
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), model)
    except OSError:
        pass
    return f"{model} ({torch.get_num_threads()} torch threads, {os.cpu_count()} CPUs)"


def environment(dev: torch.device, copy_gbps: float) -> dict:
    import diffusers
    import triton

    commit = _git("rev-parse", "--short", "HEAD") or os.environ.get("GMM_TRITON_COMMIT")
    status = _git("status", "--porcelain", "--untracked-files=no")
    return dict(device=dev.type, device_name=device_name(dev), torch=torch.__version__, triton=triton.__version__,
                diffusers=diffusers.__version__, python=platform.python_version(), commit=commit,
                tracked_changes=None if status is None else bool(status),
                cpu_backend=ops.cpu_backend() if dev.type == "cpu" else None,
                cuda=torch.version.cuda if dev.type == "cuda" else None, copy_gbps=copy_gbps,
                date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                load_average_at_start=_load_average())


def _load_average():
    """The host's 1/5/15-minute load: CPU timings on a shared machine are only as good as this was."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


# ------------------------------------------------------------------------------------------------
# command line
# ------------------------------------------------------------------------------------------------
def _parse_sizes(text: str):
    sizes = []
    for item in text.replace("×", "x").split(","):
        dims = tuple(int(n) for n in item.strip().lower().split("x") if n)
        if len(dims) < 2 or any(n < 1 for n in dims):
            raise argparse.ArgumentTypeError(f"a size is B x dims..., e.g. 2x4x128x128; got {item!r}")
        sizes.append(dims)
    return tuple(sizes)


def _parse_choice(allowed):
    def parse(text: str):
        items = tuple(s.strip() for s in text.split(",") if s.strip())
        bad = [s for s in items if s not in allowed]
        if bad or not items:
            raise argparse.ArgumentTypeError(f"choose from {', '.join(allowed)}; got {text!r}")
        return items
    return parse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `gmm-triton bench` / `python -m gmm_triton.tools.bench`."""
    parser.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto",
                        help="auto: cuda if available, else cpu (the C++ twin)")
    parser.add_argument("--quick", action="store_true",
                        help=f"a tiny subset: sizes {', '.join('x'.join(map(str, s)) for s in QUICK_SIZES)}, "
                             f"dtypes {', '.join(QUICK_DTYPES)}, tiny end-to-end models; no torch.compile on the CPU")
    parser.add_argument("--out", type=Path, default=Path("gmm_triton_out/bench"),
                        help="output folder for bench.csv, e2e.csv, throughput.png, meta.json")
    parser.add_argument("--sizes", type=_parse_sizes, default=None,
                        help="comma-separated shapes BxCxHxW, e.g. 1x4x64x64,64x4x128x128 (default: the full list)")
    parser.add_argument("--dtypes", type=_parse_choice(tuple(DTYPES)), default=None,
                        help="comma-separated from fp32,fp16,bf16 (default: all)")
    parser.add_argument("--variants", type=_parse_choice(tuple(VARIANTS_BY_KEY)), default=None,
                        help=f"comma-separated from {','.join(VARIANTS_BY_KEY)} (default: all)")
    parser.add_argument("--no-e2e", action="store_true", help="skip the end-to-end sampling loops")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile baseline")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise BenchError("--device cuda: torch sees no CUDA device")
        if os.environ.get("TRITON_INTERPRET") == "1":
            raise BenchError("TRITON_INTERPRET=1 is set: the Triton kernels would run in the interpreter, "
                             "which is never benchmarked; unset it")
        return torch.device("cuda", torch.cuda.current_device())
    backend = ops.cpu_backend()
    if backend != "cpp":
        raise BenchError(f"the CPU op runs on the {backend!r} backend; CPU benchmarks measure the C++ twin "
                         "(gmm_triton._C) only: build it with `pip install --no-build-isolation -e .` and unset "
                         "GMM_TRITON_CPU_BACKEND")
    return torch.device("cpu")


def _dynamo_limits(n: int):
    """Room for the compile baseline's recompiles (dtypes × η × static/dynamic shapes) without eager fallback."""
    import torch._dynamo

    cfg = torch._dynamo.config
    names = [k for k in ("recompile_limit", "cache_size_limit") if hasattr(cfg, k)]
    return cfg.patch(**{names[0]: max(n, getattr(cfg, names[0]))}) if names else contextlib.nullcontext()


def _write_csv(path: Path, columns, rows) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=columns)
        w.writeheader()
        w.writerows(rows)


def main(args) -> int:
    """Runs the benchmark described by ``args`` (see :func:`add_arguments`); 0 if every cell was measured."""
    from tqdm import tqdm

    try:
        dev = resolve_device(args.device)
    except BenchError as e:
        print(f"gmm-triton bench: {e}", file=sys.stderr)
        return 2
    t_start = time.perf_counter()
    quick = bool(args.quick)
    sizes = args.sizes or (QUICK_SIZES if quick else SIZES)
    dtypes = args.dtypes or (QUICK_DTYPES if quick else tuple(DTYPES))
    variants = tuple(VARIANTS_BY_KEY[k] for k in args.variants) if args.variants else VARIANTS
    with_compile = not args.no_compile and not (quick and dev.type == "cpu")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    kernel_budget, loop_budget = (0.2, 0.3) if quick else (1.0, 2.0)

    copy_gbps = copy_bandwidth(dev)
    meta = environment(dev, copy_gbps)
    print(f"gmm-triton bench on {meta['device_name']} | torch {meta['torch']} | triton {meta['triton']} | "
          f"diffusers {meta['diffusers']} | commit {meta['commit']} | copy bandwidth {copy_gbps:.1f} GB/s")

    tables, mixtures, rows, errors = {}, {}, [], []
    configs = [(s, d, v) for s in sizes for d in dtypes for v in variants]
    bar = tqdm(configs, desc="bench", unit="cfg", file=sys.stderr, mininterval=0.5 if sys.stderr.isatty() else 15)
    csv_file = open(out / "bench.csv", "w", newline="", encoding="utf-8")  # rows land as they are measured
    writer = csv.DictWriter(csv_file, fieldnames=KERNEL_COLUMNS)
    writer.writeheader()
    try:
        with _dynamo_limits(64):
            for shape, dtype, variant in bar:
                label = f"{'x'.join(map(str, shape))} {dtype} {variant.name}"
                bar.set_postfix_str(label)
                row = dict.fromkeys(KERNEL_COLUMNS, "")
                row.update(device=dev.type, shape="x".join(map(str, shape)), batch=shape[0], dim=math.prod(shape[1:]),
                           dtype=dtype, variant=variant.name)
                try:
                    case = make_case(shape, dtype, variant, dev, tables=tables, mixtures=mixtures,
                                     with_compile=with_compile)
                    fns = {"ours": case.run}
                    if case.compiled is not None:
                        fns["compile"] = case.compiled
                    med = time_calls(fns, dev, kernel_budget)
                    gbps = case.floor_bytes / (med["ours"] * 1e-6) / 1e9
                    row.update(floor_bytes=case.floor_bytes, median_us=med["ours"], gbps=gbps,
                               pct_copy=100 * gbps / copy_gbps, floor_us=case.floor_bytes / (copy_gbps * 1e9) * 1e6)
                    if "compile" in med:
                        row.update(compile_us=med["compile"], ratio_compile=med["compile"] / med["ours"])
                    del case, fns
                    if variant.loop_kernel is not None:
                        ours_us, theirs_us = step_latency(variant, shape, dtype, dev, loop_budget)
                        row.update(step_us_ours=ours_us, step_us_diffusers=theirs_us,
                                   ratio_diffusers=theirs_us / ours_us)
                except Exception as e:  # one broken cell must not lose the rest of the table
                    row["error"] = f"{type(e).__name__}: {e}".replace("\n", " ")[:300]
                    errors.append(f"{label}: {row['error']}")
                    tqdm.write(f"error in {label}: {row['error']}", file=sys.stderr)
                rows.append(row)
                writer.writerow(row)
                csv_file.flush()
    finally:
        bar.close()
        csv_file.close()
    mixtures.clear()

    e2e_rows = []
    if not args.no_e2e:
        e2e_rows = end_to_end(dev, quick)
        for r in e2e_rows:
            if r["note"].startswith("error"):
                errors.append(f"end to end, {r['model']}: {r['note']}")
                print(f"{r['model']} end to end: {r['note']}", file=sys.stderr)
        _write_csv(out / "e2e.csv", E2E_COLUMNS, e2e_rows)

    title = (f"{meta['device_name']}, torch {meta['torch']}, triton {meta['triton']}, commit {meta['commit']}, "
             f"{meta['date'][:10]}")
    try:
        plot_throughput(rows, copy_gbps, out / "throughput.png", title)
    except ImportError as e:
        errors.append(f"throughput.png not written: {e}")
    meta.update(quick=quick, sizes=["x".join(map(str, s)) for s in sizes], dtypes=list(dtypes),
                variants=[v.name for v in variants], compile_baseline=with_compile, num_steps=NUM_STEPS,
                ddim_row=DDIM_ROW, flow_row=FLOW_ROW, mixture_components=COMPONENTS, errors=errors,
                elapsed_s=round(time.perf_counter() - t_start, 1), load_average_at_end=_load_average())
    (out / "meta.json").write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")

    print(f"\n=== kernel table ({meta['device_name']}, copy {copy_gbps:.1f} GB/s, commit {meta['commit']}) ===")
    print(kernel_table(rows))
    if e2e_rows:
        print(f"\n=== end to end: scheduler share of a {NUM_STEPS}-step loop ===")
        print(e2e_table(e2e_rows))
    print(f"\nwrote {out}/ (bench.csv{', e2e.csv' if not args.no_e2e else ''}, throughput.png, meta.json) "
          f"in {meta['elapsed_s']:.0f} s" + (f"; {len(errors)} error(s)" if errors else ""))
    return 1 if errors else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m gmm_triton.tools.bench", description=__doc__.split("\n")[0])
    add_arguments(parser)
    return parser


if __name__ == "__main__":
    sys.exit(main(build_parser().parse_args()))
