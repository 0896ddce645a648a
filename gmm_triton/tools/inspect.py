"""``gmm-triton inspect``: compiles every kernel specialisation the package launches on CUDA, for NVIDIA targets,
without a GPU, and prints its static numbers and the bandwidth they predict (the method is in aot.py).

Issue model (predicted % of copy bandwidth). An elementwise kernel runs at the slower of two rates:
memory, ``bytes_per_element / copy_bandwidth``, and instruction issue, ``sass_per_element / issue_rate``, with

    issue_rate = SMs × schedulers × 32 lanes × clock × issue efficiency

(one warp-instruction per scheduler per clock on Hopper; no dual issue). H100 SXM and H200 are the same GH100
chip: 132 SMs × 4 schedulers; clock 1.755 GHz, the sustained clock under load (1.98 GHz is the boost limit);
copy bandwidth 3.0 TB/s (H100 SXM, a measured copy) and 4.8 TB/s (H200, nominal: its measured copy will
be lower, which only raises the prediction). Issue efficiency 0.8: the hot path is 16 independent element chains
per thread, and 16–24 warps per SM at ≤ 80–128 registers hide latency, but issue slots are still lost to the
long-latency DRAM loads at each program's start and to MUFU (quarter rate) and barrier stalls; 0.8 is an
assumption to be replaced by the first measured run of benchmarks/run_gpu.sh. Then

    predicted % of copy = 100 × min(1, (bytes_per_element / copy_bandwidth) / (sass_per_element / issue_rate)).

Per-pipe model (the second prediction): the same memory time against the busiest of the SM's pipes, each at
its sm_90 rate per SM per clock (CUDA C++ Programming Guide, arithmetic instruction throughput, compute
capability 9.0; the pipe split of GH100: FP32 on the fmaheavy and fmalite halves, IMAD on fmaheavy only):

    issue 128 × 0.8 (the issue model's dispatch, so the per-pipe prediction is never the more optimistic one),
    fma 128 (FP32 and IMAD together), imad 64 (IMAD.WIDE / IMAD.HI count two), alu 64, xu 16 (MUFU and
    conversions), fp64 64, lsu 32 lane slots of 32 bits (128 B/clock of L1/shared data),
    tensor cores in multiply-accumulates: wgmma 2048 (f16/bf16) and 1024 (tf32), mma.sync assumed half of
    that (1024 / 512: the A100 rate per SM; Hopper's full rate needs wgmma), DMMA (fp64) 128,

    time(pipe) = Σ_elements count(pipe) / (rate × SMs × clock),
    predicted % of copy = 100 × min(1, memory time / max over pipes of time(pipe)).

The counts come from the SASS of the paths the launch runs, weighted by the programs on each path (aot.py).

Static limits: ``--limits FILE`` checks every row against a JSON table (``tests/static_limits.json``, enforced by
``tests/test_compile_matrix.py``); ``--write-limits FILE`` writes today's numbers plus a small margin into it: the
whole matrix rewrites the table, a run of some cases (``--cases``) or targets updates their entries and keeps the
others (a new case's limits are one command).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Optional

from . import aot

DEVICES = {  # name: (SMs, schedulers per SM, clock GHz, copy bandwidth TB/s)
    "H100": (132, 4, 1.755, 3.0),
    "H200": (132, 4, 1.755, 4.8),
}
ISSUE_EFFICIENCY = 0.8
# thread-instructions (tensor: multiply-accumulates) per SM per clock on sm_90 (module docstring)
PIPE_RATES = {"issue": 128 * ISSUE_EFFICIENCY, "fma": 128, "imad": 64, "alu": 64, "xu": 16, "fp64": 64, "lsu": 32,
              "tensor:wgmma_f16": 2048, "tensor:wgmma_tf32": 1024, "tensor:mma_f16": 1024, "tensor:mma_tf32": 512,
              "tensor:mma_f64": 128, "tensor:mma_int8": 2048}
# row key -> direction of its limit: "max": the row may not exceed it, "min": may not fall below it
LIMIT_KEYS = {"registers": "max", "spill_bytes": "max", "shared_bytes": "max", "sass_per_element": "max",
              "load_bits": "min", "store_bits": "min"}


def predicted_pct_copy(sass_per_element: float, bytes_per_element: float) -> dict:
    """The issue model: {device: predicted % of copy bandwidth}."""
    out = {}
    for name, (sms, sched, ghz, tbs) in DEVICES.items():
        issue_rate = sms * sched * 32 * ghz * 1e9 * ISSUE_EFFICIENCY
        t_mem, t_issue = bytes_per_element / (tbs * 1e12), sass_per_element / issue_rate
        out[name] = round(100 * min(1.0, t_mem / t_issue), 1)
    return out


def pipe_times(pipes_per_element: dict, ghz: float, sms: int) -> dict:
    """{pipe: seconds per element} of the per-pipe model; ``fma`` carries the IMADs it shares with FP32."""
    per = dict(pipes_per_element)
    per["fma"] = per.get("fma", 0.0) + per.get("imad", 0.0)
    return {k: v / (PIPE_RATES[k] * sms * ghz * 1e9) for k, v in per.items() if k in PIPE_RATES}


def predicted_pct_copy_pipes(pipes_per_element: dict, bytes_per_element: float) -> tuple:
    """The per-pipe model: ({device: predicted % of copy}, the slowest pipe). Raises on a pipe without a rate."""
    unknown = [k for k in pipes_per_element if k not in PIPE_RATES]
    if unknown:
        raise ValueError(f"no sm_90 rate for pipes {unknown}: add them to PIPE_RATES")
    out, bound = {}, None
    for name, (sms, _, ghz, tbs) in DEVICES.items():
        times = pipe_times(pipes_per_element, ghz, sms)
        bound = max(times, key=times.get)
        out[name] = round(100 * min(1.0, bytes_per_element / (tbs * 1e12) / times[bound]), 1)
    return out, bound


def roofline_pct_copy(pipes_per_element: dict, bytes_per_element: float) -> Optional[dict]:
    """For a kernel on tensor cores: {device: % of copy} at the roofline max(memory time, tensor-core time of the
    multiply-accumulates its SASS issues), the bound its other instructions would have to stay under; None
    without tensor-core instructions."""
    if not any(k.startswith("tensor:") for k in pipes_per_element):
        return None
    out = {}
    for name, (sms, _, ghz, tbs) in DEVICES.items():
        times = pipe_times({k: v for k, v in pipes_per_element.items() if k.startswith("tensor:")}, ghz, sms)
        out[name] = round(100 * min(1.0, bytes_per_element / (tbs * 1e12) / sum(times.values())), 1)
    return out


def row(r: aot.Result) -> dict:
    """The JSON row of one result: ``predicted_pct_copy`` is {device: %} of the issue model, ``pipe_pct_copy``
    of the per-pipe model (``bound``: its slowest pipe), ``pipes``: instructions per element per pipe,
    ``edge_share``: the share of programs on an edge path, ``roofline_pct_copy``: the tensor-core roofline
    (kernels on tensor cores only)."""
    s = r.stats if r.ok else {}
    spe = round(r.sass_per_element, 2) if r.ok else None
    bpe = round(r.case.bytes_per_element(r.kernel), 3)
    pipes = {k: round(v, 3) for k, v in r.pipes_per_element.items()} if r.ok else None
    pipe_pct, bound = predicted_pct_copy_pipes(r.pipes_per_element, bpe) if r.ok else (None, None)
    return {
        "kernel": r.kernel, "case": r.case.name, "dtype": r.case.dtype, "target": r.target, "ok": r.ok,
        "error": r.error, "registers": s.get("registers"), "spill_bytes": s.get("spill_bytes"),
        "shared_bytes": s.get("shared_bytes"), "load_bits": r.load_bits if r.ok else None,
        "store_bits": r.store_bits if r.ok else None, "sass_per_element": spe, "bytes_per_element": bpe,
        "predicted_pct_copy": predicted_pct_copy(spe, bpe) if r.ok else None,
        "pipe_pct_copy": pipe_pct, "bound": bound, "pipes": pipes,
        "edge_share": round(r.edge_share, 4) if r.ok else None,
        "roofline_pct_copy": roofline_pct_copy(r.pipes_per_element, bpe) if r.ok else None,
    }


def limit_key(rw: dict) -> str:
    return f"{rw['case']} | {rw['kernel']} | {rw['target']}"


def check_limits(rows: list, table: dict) -> list[str]:
    """Violations of a limits table (a missing entry is one) by the rows that compiled."""
    limits, bad = table["limits"], []
    for rw in rows:
        if not rw["ok"]:
            continue
        lim = limits.get(limit_key(rw))
        if lim is None:
            bad.append(f"{limit_key(rw)}: no static limit (add one: gmm-triton inspect --write-limits FILE)")
            continue
        for k, direction in LIMIT_KEYS.items():
            v, l = rw[k], lim.get(k)
            if l is None:
                continue
            if v is None or (v > l if direction == "max" else v < l):
                bad.append(f"{limit_key(rw)}: {k} = {v}, limit {'<=' if direction == 'max' else '>='} {l}")
    return bad


def limits_from(rows: list) -> dict:
    """Today's numbers plus a small margin: +4 registers (ptxas allocates in steps), +3% or at least
    +1 instruction per element; spills, shared memory and access widths exactly."""
    out = {}
    for rw in sorted(rows, key=limit_key):
        if rw["ok"]:
            out[limit_key(rw)] = {
                "registers": rw["registers"] + 4, "spill_bytes": rw["spill_bytes"],
                "shared_bytes": rw["shared_bytes"], "load_bits": rw["load_bits"], "store_bits": rw["store_bits"],
                "sass_per_element": round(rw["sass_per_element"] + max(1.0, 0.03 * rw["sass_per_element"]), 1),
            }
    return out


def merge_limits(table: dict, rows: list) -> dict:
    """The limits of ``table`` (a limits file's contents) with the compiled ``rows``' entries replaced by today's
    numbers (:func:`limits_from`), in key order as :func:`limits_from` writes them."""
    import triton

    if table["triton"] != triton.__version__:
        raise ValueError(f"the limits table was measured with triton {table['triton']}, this is {triton.__version__}: "
                         f"rewrite it from the whole matrix (no --cases, every target)")
    merged = {**table["limits"], **limits_from(rows)}
    return {k: merged[k] for k in sorted(merged)}


def write_limits(path: str, limits: dict) -> None:
    """``{"triton": version, "limits": {"case | kernel | target": {...}}}``, one entry per line so that a diff
    shows which limits moved. The numbers hold for the triton (and bundled ptxas) they were measured with."""
    import triton

    lines = [f"  {json.dumps(k)}: {json.dumps(v)}" for k, v in limits.items()]
    with open(path, "w", encoding="utf-8") as f:
        f.write(f'{{"triton": {json.dumps(triton.__version__)}, "limits": {{\n' + ",\n".join(lines) + "\n}}\n")


def _fmt(v, spec=""):
    return "-" if v is None else format(v, spec)


def print_table(rows: list, file=sys.stdout) -> None:
    hdr = (f"{'kernel':<18} {'case':<46} {'target':<7} {'ok':<3} {'regs':>4} {'spill':>5} {'smem':>6} {'ld':>4} "
           f"{'st':>4} {'edge':>4} {'sass/el':>7} {'B/el':>6} {'H100%':>5} {'H200%':>5} {'bound':>12} {'pH100':>5} "
           f"{'pH200':>5}")
    print(hdr, file=file)
    print("-" * len(hdr), file=file)
    for rw in rows:
        p = rw["predicted_pct_copy"] or {}
        q = rw["pipe_pct_copy"] or {}
        edge = None if rw["edge_share"] is None else round(100 * rw["edge_share"])
        print(f"{rw['kernel']:<18} {rw['case']:<46} {rw['target']:<7} {'ok' if rw['ok'] else 'ERR':<3} "
              f"{_fmt(rw['registers']):>4} {_fmt(rw['spill_bytes']):>5} {_fmt(rw['shared_bytes']):>6} "
              f"{_fmt(rw['load_bits']):>4} {_fmt(rw['store_bits']):>4} {_fmt(edge):>4} "
              f"{_fmt(rw['sass_per_element'], '.1f'):>7} {_fmt(rw['bytes_per_element'], '.2f'):>6} "
              f"{_fmt(p.get('H100'), '.0f'):>5} {_fmt(p.get('H200'), '.0f'):>5} {_fmt(rw['bound']):>12} "
              f"{_fmt(q.get('H100'), '.0f'):>5} {_fmt(q.get('H200'), '.0f'):>5}", file=file)
    for rw in rows:
        if not rw["ok"]:
            last = [ln for ln in rw["error"].splitlines() if ln.strip()]
            print(f"\nerror in {rw['case']} {rw['kernel']} {rw['target']}: {last[0][:300]}"
                  + (f"\n  ... {last[-1][:300]}" if len(last) > 1 else ""), file=file)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--targets", default=",".join(aot.TARGETS), help="comma-separated, e.g. sm_80,sm_90a,sm_100a")
    p.add_argument("--json", metavar="FILE", help="write one row per case, kernel and target")
    p.add_argument("--dump", metavar="DIR", help="write each cubin, its PTX, SASS (with line info) and hot path")
    p.add_argument("--cases", default=None, help="only cases whose name contains this string")
    p.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1), help="compile worker processes")
    p.add_argument("--cache-dir", default=".cache", help="triton's cache and the parsed statistics go here")
    p.add_argument("--limits", metavar="FILE", help="check the rows against this static-limits table")
    p.add_argument("--write-limits", metavar="FILE", help="write today's numbers (+ margin) as the limits table")
    p.add_argument("--results", metavar="FILE", help="write the rows with the command, commit and settings: the "
                                                     "results file of RESULTS.md's generated table (make tables)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m gmm_triton.tools.inspect", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    return parser


def results_file(rows: list, targets: list, cases: Optional[str]) -> dict:
    """What ``--results`` writes: the rows stamped with the command, the commit and the settings they depend on."""
    import triton

    from ..provenance import commit

    command = "gmm-triton inspect --targets " + ",".join(targets) + (f" --cases {cases}" if cases else "")
    return {"command": command, "commit": commit(),
            "settings": {"targets": targets, "cases": cases, "triton": triton.__version__, "devices": DEVICES,
                         "issue_efficiency": ISSUE_EFFICIENCY, "pipe_rates": PIPE_RATES},
            "rows": rows}


def render_results(results: dict) -> str:
    """The Markdown table of a ``--results`` file (``make tables``): one line per case and kernel and target."""
    st = results["settings"]
    lines = [f"`{results['command']}` at commit `{results['commit']}` (triton {st['triton']}, issue efficiency "
             f"{st['issue_efficiency']}; % of copy on an H100 / H200 by the issue model and by the per-pipe model, "
             f"whose slowest pipe is *bound*; edge: % of programs on an edge path). {len(results['rows'])} rows.",
             "",
             "| case | kernel | target | regs | spill B | smem B | ld/st bits | edge % | SASS/elem | B/elem "
             "| issue % H100 / H200 | per-pipe % H100 / H200 | bound |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for rw in results["rows"]:
        if not rw["ok"]:
            lines.append(f"| {rw['case']} | {rw['kernel']} | {rw['target']} | compile error |  |  |  |  |  |  |  |  | |")
            continue
        p, q = rw["predicted_pct_copy"], rw["pipe_pct_copy"]
        edge = round(100 * rw["edge_share"])
        lines.append(f"| {rw['case']} | {rw['kernel'].strip('_')} | {rw['target']} | {rw['registers']} "
                     f"| {rw['spill_bytes']} | {rw['shared_bytes']} | {_fmt(rw['load_bits'])}/{_fmt(rw['store_bits'])} "
                     f"| {edge} | {rw['sass_per_element']:.1f} | {rw['bytes_per_element']:g} "
                     f"| {p['H100']:.0f} / {p['H200']:.0f} | {q['H100']:.0f} / {q['H200']:.0f} | {rw['bound']} |")
    return "\n".join(lines) + "\n"


def main(args) -> int:
    """Runs ``gmm-triton inspect``: 0 if every case compiled (and met ``--limits``)."""
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    try:
        for t in targets:
            aot.gpu_target(t)
        aot.require_jit()
    except (ValueError, RuntimeError) as e:
        print(f"gmm-triton inspect: {e}", file=sys.stderr)
        return 2
    cases = [c for c in aot.all_cases() if args.cases is None or args.cases in c.name]
    if not cases:
        print(f"no case matches {args.cases!r}", file=sys.stderr)
        return 2
    t0 = time.time()
    results = aot.run_matrix(targets, cases=cases, jobs=args.jobs, cache_dir=args.cache_dir, dump_dir=args.dump,
                             progress=lambda s: print(s, file=sys.stderr, flush=True))
    rows = [row(r) for r in results]
    print_table(rows)
    model = "; ".join(f"{k}: {v[0]} SMs × {v[1]} schedulers × 32 @ {v[2]} GHz, copy {v[3]} TB/s"
                      for k, v in DEVICES.items())
    print(f"\n{sum(r['ok'] for r in rows)}/{len(rows)} ok ({len(cases)} cases × {len(targets)} targets, "
          f"{time.time() - t0:.0f} s). Issue model: {model}; issue efficiency {ISSUE_EFFICIENCY}. Per-pipe model "
          f"(pH100, pH200; bound = the slowest pipe): rates per SM per clock {PIPE_RATES}. edge = % of programs on "
          f"an edge path.")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(rows, f, indent=1)
    if args.write_limits:
        limits = limits_from(rows)
        if (args.cases is not None or set(targets) != set(aot.TARGETS)) and os.path.exists(args.write_limits):
            with open(args.write_limits, encoding="utf-8") as f:
                limits = merge_limits(json.load(f), rows)
        write_limits(args.write_limits, limits)
    if args.results:
        with open(args.results, "w", encoding="utf-8") as f:
            json.dump(results_file(rows, targets, args.cases), f, indent=1)
            f.write("\n")
    rc = 0 if all(r["ok"] for r in rows) else 1
    if args.limits:
        with open(args.limits, encoding="utf-8") as f:
            bad = check_limits(rows, json.load(f))
        print("\n".join(["", f"{len(bad)} static-limit violations:"] + bad) if bad else "static limits: all met")
        rc = rc or (1 if bad else 0)
    return rc


if __name__ == "__main__":
    sys.exit(main(build_parser().parse_args()))
