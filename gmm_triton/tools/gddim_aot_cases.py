"""The compile matrix's cases for the gDDIM kernels (see gmm_triton/tools/aot.py): the CLD step over (x, v) pairs and
the blur step (planes as rows of a Kronecker product for N ≤ 8, one plane per program above), driven through the
public ops ``gddim.ops.cld_step`` / ``blur_step`` with CUDA-like fake tensors.

A covering design: storage dtypes fp16 / bf16 / fp32 / fp64, orders 0–2 (1–3 ε buffers), Philox / caller / no
noise (Philox with three buffers: the stochastic multistep step, λ > 0 with order 2), host / device / per-sample
timesteps, host / device seeds, D % 4 = 0 and ≠ 0 (CLD), both blur kernels with N a power of two and not (blur); and
sweeps on sm_90a: CLD fp16 / bf16 at orders 0–2, the blur step at every specialisation N = 1 … MAX_SIZE launches.
"""
from __future__ import annotations

import math

from dataclasses import dataclass
from typing import Optional

import torch

from . import aot
from ..contract import BLUR_PLANES, CLD_COLS

_LABEL = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32", torch.float64: "fp64"}


@dataclass(frozen=True)
class Gddim:
    kind: str                                 # "cld" or "blur"
    dtype: torch.dtype
    shape: tuple                              # the per-sample shape after the batch: (2, ...) CLD, (C, N, N) blur
    batch: int = 2
    order: int = 0                            # ε buffers = order + 1
    noise: str = "philox"                     # "philox", "tensor", "none"
    timestep: str = "int"                     # "int", "device", "per_sample"
    seed: str = "host"                        # "host", "device"

    def bytes_per_element(self, kernel: str) -> float:
        if kernel == "_noise_fill_kernel":
            return 4.0
        e = torch.empty((), dtype=self.dtype).element_size()
        z = e if self.noise == "tensor" else (4 if self._noise_pass(kernel) else 0)
        return e * (2 + self.order + 1) + z   # u, the ε buffers, out (+ noise)

    def _noise_pass(self, kernel: str) -> bool:
        """Whether the blur launch whose main kernel is ``kernel`` draws its normals in a pre-pass and reads them:
        its tile rows are not whole Philox groups (the kernel names the form, on any target)."""
        from ..kernels.blur_step import rows_aligned4

        return self.kind == "blur" and self.noise == "philox" and not rows_aligned4(self.shape[-1],
                                                                                    kernel == "_blur_kron_kernel")

    def work(self, kernel: str, cx: dict, grid: tuple) -> aot.Work:
        """Every element of the [B, ...] sample (CLD: both halves of each pair; blur: the N² pixels of each plane,
        not its NP² tile) over the launch's programs."""
        n = self.batch
        for s in self.shape:
            n *= s
        # the per-plane kernel's programs loop over PP planes (kernels/blur_step.py planes_per_program)
        loops = (cx["PP"],) if kernel == "_blur_step_kernel" and cx.get("PP", 1) > 1 else \
            (cx["TP"],) if kernel == "_blur_grid_kernel" and cx.get("TP", 1) > 1 else ()
        if kernel == "_blur_kron_kernel" and cx.get("SPLIT"):  # only the last program masks its loads (an edge path)
            return aot.Work(n, {"full": math.prod(grid) - 1, "edge": 1}, loops)
        return aot.Work(n, {"any": math.prod(grid)}, loops)


def _drive(c: Gddim):
    from ..gddim import ops

    def drive(fx: aot.FakeCuda):
        shape = (c.batch, *c.shape)
        u = fx.tensor(shape, c.dtype)
        eps = [fx.tensor(shape, c.dtype) for _ in range(c.order + 1)]
        t = {"int": 3, "device": fx.tensor((1,), torch.int64), "per_sample": fx.tensor((c.batch,), torch.int64)}
        seed = {"host": 2**40 + 3, "device": fx.tensor((1,), torch.int64)}[c.seed]
        noise = fx.tensor(shape, c.dtype) if c.noise == "tensor" else None
        kw = dict(stochastic=c.noise != "none", seed=seed if c.noise == "philox" else None, noise=noise)
        if c.kind == "cld":
            ops.cld_step(u, eps, t[c.timestep], fx.tensor((10, CLD_COLS), torch.float64), **kw)
        else:
            n = c.shape[-1]
            ops.blur_step(u, eps, t[c.timestep], fx.tensor((10, BLUR_PLANES, n, n), torch.float64),
                          fx.tensor((n, n), torch.float64), **kw)

    return drive


def blur_case(n: int, dtype=torch.float32) -> aot.Case:
    """The blur step on [B, 3, n, n] planes with Philox noise: B = 64; or, in the grid form, for the most tiles a
    program takes (tiles_per_program: 8192 tiles of GR·GC planes); in Kronecker rows 16 wide (N ≤ 4), for the most
    rows a program takes (kron_row_tiles: 2049 whole programs of 4·KRON_ROWS rows of G planes); in rows 64 wide, three
    whole programs (KRON_ROWS rows of G planes each: B = KRON_ROWS·G; B = ⌈4·KRON_ROWS·G / 3⌉ had made a fifth program
    of two rows, charged to the per-element numbers as 1.24x the instructions an element); or, one plane a program
    on a [16, 16] tile, for the most planes a program takes (planes_per_program: 5462 samples, 16386 planes).
    Smaller launches take one plane or tile a program: the specialisations of blur-fp32-n16-order2-philox-stochastic's T = 16 and of blur-fp32-n9-philox-devtimestep's grid."""
    from ..kernels.blur_step import GRID_COLS, GRID_ROWS, KRON_ROW_TILES, KRON_ROWS, KRON_T_SMALL, MIN_PROGRAMS, \
        PLANES_PER_PROGRAM, TILES_PER_PROGRAM, grid_form, kron_form, kron_planes, tile_size

    if grid_form(n, 1):
        batch = -(-2 * TILES_PER_PROGRAM * MIN_PROGRAMS * (GRID_ROWS // n) * (GRID_COLS // n) // 3)
    elif kron_form(n) and tile_size(n) == KRON_T_SMALL:  # the most rows a program takes: 2049 whole programs
        batch = KRON_ROW_TILES * KRON_ROWS * kron_planes(n) * -(-2 * MIN_PROGRAMS // 3)
    elif kron_form(n):  # three whole programs: 3·B planes, KRON_ROWS·G a program
        batch = KRON_ROWS * kron_planes(n)
    elif tile_size(n) == 16:
        batch = -(-2 * PLANES_PER_PROGRAM * MIN_PROGRAMS // 3)
    else:
        batch = 64
    c = Gddim("blur", dtype, (3, n, n), batch=batch)
    return aot.Case(f"blur-{_LABEL[dtype]}-n{n}-philox", _LABEL[dtype], _drive(c), c.bytes_per_element, c.work,
                    targets=("sm_90a",))


@aot.register_cases
def gddim_cases() -> list[aot.Case]:
    h, b, f, d = torch.float16, torch.bfloat16, torch.float32, torch.float64
    cases = {
        "cld-fp16-order0-philox": Gddim("cld", h, (2, 4, 32, 32)),
        "cld-bf16-order2-none-pertimestep": Gddim("cld", b, (2, 4, 32, 32), order=2, noise="none",
                                                  timestep="per_sample"),
        "cld-fp32-order1-tensor-devtimestep": Gddim("cld", f, (2, 3, 7, 11), order=1, noise="tensor",
                                                    timestep="device"),
        "cld-fp64-order0-philox-devseed-d77": Gddim("cld", d, (2, 7, 11), seed="device"),
        "blur-fp32-n32-philox": Gddim("blur", f, (3, 32, 32)),
        "blur-fp16-n8-order2-tensor": Gddim("blur", h, (3, 8, 8), order=2, noise="tensor"),
        "blur-bf16-n28-philox-devseed": Gddim("blur", b, (3, 28, 28), seed="device"),
        "blur-fp64-n16-none-pertimestep": Gddim("blur", d, (1, 16, 16), noise="none", timestep="per_sample"),
        # noise pass; the grid form (21 planes a tile) on sm_90a / sm_100a, one plane a program (T = 16) on sm_80
        "blur-fp32-n9-philox-devtimestep": Gddim("blur", f, (3, 9, 9), batch=7, timestep="device"),
        # N = 3 and 6 below one grid tile of planes (210, 50): the grid all the same on sm_90a / sm_100a
        # (launches_grid), the Kronecker rows on sm_80
        "blur-fp32-n3-philox-below-a-tile": Gddim("blur", f, (3, 3, 3), batch=64),
        "blur-fp32-n6-philox-below-a-tile": Gddim("blur", f, (3, 6, 6), batch=16),
        # stochastic multistep (λ > 0, order 2): three buffers and in-kernel noise in one launch, on every target
        "cld-fp32-order2-philox-stochastic": Gddim("cld", f, (2, 4, 32, 32), order=2),
        # B = 64: 192 planes, whole tiles of kron_rows on sm_80 (B = 2 charged its 6 planes for a whole tile's idle
        # rows); six grid tiles on sm_90a / sm_100a (grid_form: three buffers at N = 8)
        "blur-fp32-n8-order2-philox-stochastic": Gddim("blur", f, (3, 8, 8), batch=64, order=2),
        "blur-fp32-n16-order2-philox-stochastic": Gddim("blur", f, (3, 16, 16), order=2),
        # issue 19: three buffers at every tile side (T = 32: 17, 28, 32, the grid on sm_90a / sm_100a, the sliced
        # plane on sm_80; T = 64: 33, 48, 64, sliced), unaligned rows (17, 33: the noise pre-pass) and whole ones, and
        # 16-bit storage at the largest tile
        **{f"blur-fp32-n{n}-order2-philox-stochastic": Gddim("blur", f, (3, n, n), batch=64, order=2)
           for n in (17, 28, 32, 33, 48, 64)},
        "blur-fp16-n64-order2-tensor": Gddim("blur", h, (3, 64, 64), batch=64, order=2, noise="tensor"),
        # on sm_90 / sm_100 three buffers at N = 17 … 32 take the grid (grid_form) from one plane (launches_grid: one
        # plane on the sliced form predicted 0.6× the grid's % of copy); sm_80 runs the sliced plane
        "blur-fp32-n20-order2-philox-oneplane": Gddim("blur", f, (1, 20, 20), batch=1, order=2),
        # issue 19's sweeps (benchmarks/blur_spill_sweep.py) of one and two buffers: at 64 Kronecker rows two
        # buffers spilled (N = 2, 4, 8), and one with per-sample rows (N = 1, 2); on the grid two buffers spilled
        # at 2 and 4 tiles a program (N = 12 at 42000 planes, below). The forms that hold them: the grid at N = 8
        # from two buffers, Kronecker rows 16 wide at N ≤ 4 (tile_size), one tile a program
        "blur-fp32-n8-order1-tensor-pertimestep": Gddim("blur", f, (3, 8, 8), batch=64, order=1, noise="tensor",
                                                        timestep="per_sample"),
        "blur-fp32-n2-order1-philox": Gddim("blur", f, (3, 2, 2), batch=64, order=1),
        "blur-fp32-n2-philox-pertimestep": Gddim("blur", f, (3, 2, 2), batch=64, timestep="per_sample"),
        # one channel: C is then a constant of the launch (triton specialises an integer argument equal to 1); 1024
        # planes, four whole tiles (kron_rows)
        "blur-fp32-n2-c1-philox-pertimestep": Gddim("blur", f, (1, 2, 2), batch=1024, timestep="per_sample"),
        # whole Kronecker rows, not whole programs (SPLIT): the full programs' loads unmasked, the last program's
        # masked in its own copy; 65538 planes, 64 full programs of 1024 and one of 2 on sm_90a (128 + 1 on sm_80)
        "blur-fp16-n1-philox-split": Gddim("blur", h, (3, 1, 1), batch=21846),
        # three buffers in Kronecker rows 64 wide spilled at N = 2, 3 (4-16 B on sm_90a); 16 wide they hold
        "blur-fp32-n2-order2-tensor-pertimestep": Gddim("blur", f, (3, 2, 2), batch=1024, order=2, noise="tensor",
                                                        timestep="per_sample"),
        "blur-fp32-n3-order2-philox-stochastic": Gddim("blur", f, (3, 3, 3), batch=1024, order=2),
        # two buffers at T = 64: the whole-operand plane spilled 72-228 B; at N = 48 (and 64) it holds with Y in a
        # scratch plane on sm_90a (plane_y_scratch); the sliced form on sm_80 and sm_100a (plane_sliced)
        "blur-fp32-n48-order1-philox": Gddim("blur", f, (3, 48, 48), batch=64, order=1),
        # one buffer at T = 64: the whole-operand plane on wgmma; on sm_80 the sliced form (plane_sliced: whole, it
        # spilled 1.8-2.3 KB there in every variant)
        "blur-bf16-n40-philox": Gddim("blur", b, (3, 40, 40), batch=64),
    }
    covering = [aot.Case(name, _LABEL[c.dtype], _drive(c), c.bytes_per_element, c.work) for name, c in cases.items()]
    sweep = {}
    for dt in (h, b):  # issue 19: CLD at ≥ 90 % of copy for fp16 / bf16, orders 0–2 (fp16 order 0: above)
        for order in (0, 1, 2) if dt == b else (1, 2):
            sweep[f"cld-{_LABEL[dt]}-order{order}-philox"] = Gddim("cld", dt, (2, 4, 32, 32), order=order)
    # (the grid's tiles a program: sm_90a only, as the other sweeps; sm_80 runs N = 12 one plane a program)
    sweep["blur-fp32-n12-order1-philox-tiles"] = Gddim("blur", f, (3, 12, 12), batch=14000, order=1)
    for n in range(17, 33):  # issue 19: three buffers on the grid, one tile a program, at each of its N
        if f"blur-fp32-n{n}-order2-philox-stochastic" not in cases:
            sweep[f"blur-fp32-n{n}-order2-philox-stochastic"] = Gddim("blur", f, (3, n, n), batch=64, order=2)
    # 16-bit storage (its data's first product without the split: blur_step.py's EXACT) in the forms the 16-bit
    # rows above do not take: Kronecker rows 16 wide; one plane a program at T = 16, eight planes a program
    sixteen = [blur_case(4, b), blur_case(16, h)]
    return covering + [aot.Case(name, _LABEL[c.dtype], _drive(c), c.bytes_per_element, c.work, targets=("sm_90a",))
                       for name, c in sweep.items()] + [blur_case(n) for n in BLUR_SIZES if f"blur-fp32-n{n}-philox"
                                                        not in cases] + sixteen


# One N for each distinct specialisation of the blur kernels over 1 ≤ N ≤ MAX_SIZE (tests/test_compile_matrix.py
# captures every N and checks that this set covers them all)
BLUR_SIZES = (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 16, *range(17, 34), 36, 48, 64)
