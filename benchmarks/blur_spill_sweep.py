"""Compiles the blur step's launch variants for one target (triton's compiler and the wheel's ptxas, as
`gmm-triton inspect`) and prints registers and spill per variant: what the compile matrix's one case per size
cannot show. Variants: N × storage dtype (fp32, bf16, fp16) × noise / timestep (in-kernel Philox with one timestep,
a noise tensor / no noise / Philox with per-sample timesteps) × grid tiles a program, TP (1: a batch of 64 samples
of 3 planes; more: enough grid tiles for TP a program, TP forced over kernels/blur_step.py:tiles_per_program, which
gives two or three buffers, and per-sample timesteps, one; the printed TP is the launch's). BATCH, if given, replaces
the batch of 64 at TP = 1. Each line also gives the launch's SASS per element, its per-pipe % of copy on an H100
(bound) and its roofline % (`gmm-triton inspect`'s columns).

    python benchmarks/blur_spill_sweep.py SIZES [ORDER] [TP] [TARGET] [BATCH]
    e.g. python benchmarks/blur_spill_sweep.py 17,18,19,20,21,22,23,24,25,26,27,28,29,30,31,32 2 1 sm_90a

Exit status 1 if any variant spills or fails to compile (benchmarks/RESULTS.md quotes its runs, issue 19).
"""
import itertools
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv) -> int:
    import torch
    from gmm_triton.kernels import blur_step as K
    from gmm_triton.kernels.blur_step import GRID_COLS, GRID_ROWS, MIN_PROGRAMS, TILES_PER_PROGRAM
    from gmm_triton.tools import aot
    from gmm_triton.tools.gddim_aot_cases import _LABEL, Gddim, _drive
    from gmm_triton.tools.inspect import row

    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    sizes = [int(x) for x in argv[0].split(",")]
    order = int(argv[1]) if len(argv) > 1 else 2
    tps = [int(x) for x in argv[2].split(",")] if len(argv) > 2 else [1, TILES_PER_PROGRAM]
    target = argv[3] if len(argv) > 3 else "sm_90a"
    batch1 = int(argv[4]) if len(argv) > 4 else 64
    variants = (("philox", "int"), ("tensor", "per_sample"), ("none", "per_sample"), ("philox", "per_sample"))
    cases = []
    for n, dt, (noise, ts), tp in itertools.product(sizes, (torch.float32, torch.bfloat16, torch.float16), variants,
                                                    tps):
        tile = (GRID_ROWS // n) * (GRID_COLS // n) if n <= GRID_COLS else 1
        batch = batch1 if tp == 1 else -(-2 * tp * MIN_PROGRAMS * tile // 3)
        c = Gddim("blur", dt, (3, n, n), batch=batch, order=order, noise=noise, timestep=ts)
        cases.append(aot.Case(f"{_LABEL[dt]}-n{n}-order{order}-{noise}-{ts}-tp{tp}", _LABEL[dt],
                              _forcing_tp(K, _drive(c), tp), c.bytes_per_element, c.work, targets=(target,)))
    cache = str(Path(__file__).resolve().parents[1] / ".cache")
    results = aot.run_matrix([target], cases=cases, jobs=2, cache_dir=cache, dump_dir=None,
                             progress=lambda s: print(s, file=sys.stderr, flush=True))  # minutes: show each compile
    bad = total = 0
    for r in results:
        if r.kernel == "_noise_fill_kernel":
            continue
        total += 1
        s = r.stats if r.ok else {}
        bad += (not r.ok) or bool(s.get("spill_bytes"))
        tp = r.launch.named.get("TP", "-") if r.launch is not None else "-"
        if not r.ok:
            print(f"{r.case.name:44s} {r.kernel:18s} TP {tp} error: {r.error[:200]}")
            continue
        w = row(r)
        roof = w["roofline_pct_copy"]
        print(f"{r.case.name:44s} {r.kernel:18s} TP {tp} {s.get('registers'):>4} regs {s.get('spill_bytes'):>5} B spill "
              f"{w['sass_per_element']:7.1f} SASS/elem {w['pipe_pct_copy']['H100']:5.1f} % H100 ({w['bound']}) "
              f"roofline {roof['H100'] if roof else '-'}")
    print(f"{bad} of {total} variants spill or fail ({target})")
    return 1 if bad else 0


def _forcing_tp(K, drive, tp: int):
    """The case's drive with tiles_per_program forced to ``tp`` (capture runs the drives in this process)."""
    def forced(fx):
        real = K.tiles_per_program
        K.tiles_per_program = lambda tiles, neps, per_sample=False: tp
        try:
            return drive(fx)
        finally:
            K.tiles_per_program = real
    return forced


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
