"""Ahead-of-time compilation of the package's Triton kernels for NVIDIA targets, on a machine without a GPU.

The compile matrix behind ``gmm-triton inspect`` and ``tests/test_compile_matrix.py``:

1. **Cases** (:func:`all_cases`): each registered case builder returns :class:`Case` objects whose ``drive``
   calls the package's public host path once (``ops.ddim_step``, the Philox helpers) with CUDA-like
   ``FakeTensor`` inputs. Other kernels add a builder with :func:`register_cases`.
2. **Capture** (:func:`capture`): the op's dispatcher hop is bypassed so its real CUDA branch and launcher run;
   each ``kernel[grid](...)`` goes through Triton's own ``JITFunction.run`` (binder, ``==1`` specialisation,
   16-divisibility hints, launcher keyword checks) against a stub driver that reports the target, with the
   fake tensors replaced by stand-ins carrying their dtype and a 16-aligned ``data_ptr`` (plus the view's
   offset, as a real allocation would). ``_do_compile`` is intercepted: what it receives (signature,
   constexprs, attributes, options) is the specialisation a real launch would compile.
3. **Compile** each distinct specialisation with ``triton.compile`` for the target (the wheel's ptxas:
   ``ptxas`` up to sm_90a, ``ptxas-blackwell`` for sm_100a), in worker processes, through Triton's cache
   (``TRITON_CACHE_DIR``, default ``<cache>/triton``); the parsed statistics are cached too (``<cache>/aot``,
   keyed by the kernel's source hash, the specialisation, the target, the triton version and this file).
4. **Static statistics** of each cubin: ``ptxas -v`` on the kernel's PTX (registers, spill bytes; the cubin is
   checked to hold the same code as triton's), ``metadata.shared`` (shared memory the launch requests), and
   the SASS from ``nvdisasm``.

**Instructions per element on the hot path** (:func:`hot_paths`): one thread's walk from the entry to an
unpredicated ``EXIT``, in program order. Every instruction on the walk counts, predicated ones too (they take
an issue slot whether or not their predicate holds). A runtime loop (a conditional branch back to an instruction on
the walk) is walked once; its body counts as often as the case's :class:`Work` says it runs. An unconditional ``BRA`` is followed. A conditional
branch (``@P BRA``, a uniform-predicate or ``.DIV`` branch) is taken only when it skips a slow path: its
target is the ``BSYNC`` that closes a ``BSSY`` region, or it jumps forward over a ``CALL``. That is how ptxas
guards the paths that a kernel with in-range inputs never runs (libdevice's Payne–Hanek reduction in
sinf/cosf, IEEE division fix-ups, fp64 square root's out-of-line medium path). A forward conditional branch
whose two continuations never meet again before their ``EXIT`` is a **fork** (a kernel's ``if``/``else`` over
whole copies of its body, e.g. the step's unmasked full tiles and masked edge tiles): both sides are walked,
giving one path per side; the side with more predicated thread-indexed global accesses is the ``edge`` side,
the other the ``full`` side. Every other conditional branch falls through, so a loop body is walked once. A
``CALL`` still on a walk counts as one instruction and is not followed (reported as ``calls``). An indirect
branch (``BRX``: a switch over a uniform value) is followed into its longest case.

**Per element** (:meth:`Result.sass_per_element`): the instructions the launch issues over the elements it
really produces. The case says how many programs take each kind of tile (:class:`Work`: full and edge tiles
for the step, from its tiling of the launch's D), a program issues its path's count on each of its
32 · num_warps threads, and the sum is divided by the launch's real elements (B · D, not the padded tiles):
so a ragged D is charged for its masked copy and for the lanes its edge tiles leave idle.

**Pipes** (:func:`pipe_counts`): each walked instruction is also charged to the sm_80–sm_100 execution pipe
that runs it (the pipe names of Nsight Compute): ``fma`` (FP32 FFMA/FADD/FMUL, FP16x2; shared by the
fmaheavy and fmalite halves), ``imad`` (IMAD/IMUL/IDP: fmaheavy only; a 64-bit result, ``IMAD.WIDE`` /
``IMAD.HI``, counts two), ``alu`` (integer and logic, compares, selects, min/max, moves, ``I2FP``,
``F2FP`` packs), ``xu`` (MUFU, the other conversions ``F2F``/``I2F``/``F2I``, ``POPC``/``FLO``/``BREV``),
``fp64`` (DADD/DMUL/DFMA...), ``lsu`` (global/shared/local memory and shuffles, in 32-bit lane slots: a
128-bit access counts 4; and the bytes a TMA copy writes to shared memory, which take the same 128 B a clock of
the SM's L1/shared data path: a copy of b bytes, announced by its ``SYNCS.ARRIVE.TRANS64`` expect-tx arrive, counts
b / 4 lane slots over the program's threads, :func:`pipe_counts`) and ``tensor`` (multiply-accumulates of
HMMA/HGMMA/DMMA per thread, by input type).
Uniform-datapath, control and constant-cache instructions only take an issue slot (``issue`` counts all).
The rates of each pipe are the model's (tools/inspect.py).

**Access widths**: ``load_bits`` / ``store_bits`` are the width of most global loads / stores on the hot path
whose address depends on the thread index (ties go to the narrower): the width of the element streams.
Per-program scalars (the table row, the seed) are excluded: their addresses do not involve ``SR_TID``
(a forward taint of the registers derived from it along the walk).
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import importlib
import json
import math
import os
import re
import struct
import subprocess
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

TARGETS = ("sm_80", "sm_90a", "sm_100a")
CASE_MODULES = ("gmm_triton.tools.aot_cases", "gmm_triton.tools.gddim_aot_cases")  # their import registers case builders


# ------------------------------------------------------------------------------------------------
# cases
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Work:
    """What one launch does: the real ``elements`` it produces and its ``programs`` by tile kind
    (``"full"`` / ``"edge"``: the sides of the kernel's fork, see :func:`hot_paths`; ``"any"``: one path)."""

    elements: int
    programs: dict
    loops: tuple = ()  # the trip counts of the kernel's runtime loops, in program order (walked once, run this often)


def _block_work(kernel: str, cx: dict, grid: tuple) -> Work:
    """Default: every program produces BLOCK elements on one path."""
    n = math.prod(grid)
    return Work(n * int(cx["BLOCK"]), {"any": n})


@dataclass(frozen=True)
class Case:
    """One call of the host path. ``drive(fx)`` makes the call with :class:`FakeCuda` tensors.

    ``bytes_per_element(kernel)``: DRAM bytes a launch of ``kernel`` moves per element it produces (the floor of
    benchmarks/RESULTS.md). ``work(kernel, constexprs, grid)``: the :class:`Work` of one launch (default: BLOCK
    elements per program, one kind of tile). ``targets``: the targets it is compiled for (default all; a sweep
    whose specialisations the covering cases already compile everywhere may stay on sm_90a, the one the
    predictions are for).
    """

    name: str
    dtype: str
    drive: Callable[["FakeCuda"], None]
    bytes_per_element: Callable[[str], float]
    work: Callable[[str, dict, tuple], Work] = _block_work
    targets: tuple = TARGETS


_BUILDERS: list[Callable[[], list[Case]]] = []


def register_cases(builder: Callable[[], list[Case]]):
    """Decorator: ``builder()`` returns the cases of one kernel family (called once per matrix run)."""
    _BUILDERS.append(builder)
    return builder


def all_cases() -> list[Case]:
    for mod in CASE_MODULES:
        importlib.import_module(mod)
    cases = [c for b in _BUILDERS for c in b()]
    names = Counter(c.name for c in cases)
    dup = [n for n, k in names.items() if k > 1]
    if dup:
        raise ValueError(f"case names must be unique: {dup}")
    return cases


def host():
    """The package's CUDA host path as the cases drive it: the one place to update when these move.

    ``dispatch`` is the (module, name) of every op's dispatcher shortcut ``call(impl, op, x, m, *args)``, which
    capture replaces by ``impl(*args)`` so that the op's real CUDA branch runs instead of its fake kernel.
    """
    from types import SimpleNamespace

    from .. import door, ops, rng

    return SimpleNamespace(ddim_step=ops.ddim_step, philox_normal=rng.philox_normal, philox_words=rng.philox_words,
                           dispatch=(door, "call"))


class FakeCuda:
    """Makes CUDA-like fake tensors (shape, dtype, strides, device "cuda"; no data) for a case's drive."""

    def __init__(self, mode):
        self.mode = mode

    def tensor(self, shape, dtype=None):
        import torch

        return self.like(torch.empty(tuple(shape), dtype=dtype or torch.float32, device="meta"))

    def like(self, t):
        """A fake CUDA copy of ``t`` (same shape, dtype and strides; the values are not kept)."""
        import torch
        from torch._subclasses.fake_tensor import FakeTensor

        return FakeTensor(self.mode, t.to("meta"), torch.device("cuda"))


# ------------------------------------------------------------------------------------------------
# capture: the host path through Triton's own launcher, against a stub driver
# ------------------------------------------------------------------------------------------------
@dataclass
class Launch:
    """What a real launch would compile: the arguments JITFunction.run hands to ``_do_compile``."""

    module: str
    qualname: str
    signature: dict
    constexprs: dict          # {path: value}, as triton passes them
    attrs: dict               # {path: [[attribute, value]]}: tt.divisibility hints
    options: dict
    source_key: str           # the JITFunction's cache_key: its source and its dependencies'
    arg_names: list
    grid: tuple = ()          # the launch's grid (programs along x, y, z)

    @property
    def kernel(self) -> str:
        return self.qualname

    @property
    def named(self) -> dict:
        """{parameter: value} of the top-level constexprs (including ``==1`` specialised integers); a launch spec
        (a dataclass constexpr, e.g. kernels.step.StepSpec) contributes its fields."""
        out = {}
        for p, v in self.constexprs.items():
            if len(p) != 1:
                continue
            if dataclasses.is_dataclass(v):
                out.update((f.name, getattr(v, f.name)) for f in dataclasses.fields(v))
            else:
                out[self.arg_names[p[0]]] = v
        return out

    def describe(self) -> dict:
        """The specialisation as JSON: parameter types, constexpr values, parameters hinted divisible by 16."""
        return {"signature": self.signature, "constexprs": {k: str(v) for k, v in self.named.items()},
                "divisible_by_16": [self.arg_names[p[0]] for p, a in self.attrs.items()
                                    if ["tt.divisibility", 16] in [list(x) for x in a]],
                "num_warps": self.options["num_warps"]}


class LaunchError(Exception):
    """The launcher itself rejected a launch (before any compile)."""

    def __init__(self, kernel: str):
        super().__init__(f"the launcher rejected {kernel}")
        self.kernel = kernel


class _StandIn:
    """A fake tensor as the binder sees it: dtype and an address (16-aligned base + the view's offset)."""

    BASE = 1 << 32

    def __init__(self, t):
        self.dtype = t.dtype
        self._ptr = self.BASE + t.storage_offset() * t.element_size()

    def data_ptr(self):
        return self._ptr


class _StubDriver:
    """The part of triton's driver interface that JITFunction.run uses before compiling."""

    def __init__(self, target):
        self.target = target

    def get_current_device(self):
        return self.target.arch  # one binder cache per target

    def get_current_stream(self, device=None):
        return 0

    def get_current_target(self):
        return self.target


def gpu_target(name: str):
    """``"sm_90a"`` → GPUTarget("cuda", 90, 32) (triton compiles capability ≥ 90 as the ``a`` variant)."""
    from triton.backends.compiler import GPUTarget
    from triton.backends.nvidia.compiler import sm_arch_from_capability

    m = re.fullmatch(r"sm_(\d+)a?", name)
    if not m or sm_arch_from_capability(int(m.group(1))) != name:
        hint = f" (capability {m.group(1)} is {sm_arch_from_capability(int(m.group(1)))!r} to triton)" if m else ""
        raise ValueError(f"target {name!r} is not a triton target name like sm_80, sm_90a, sm_100a{hint}")
    return GPUTarget("cuda", int(m.group(1)), 32)


def require_jit():
    """Raises if this process runs Triton's interpreter (``@triton.jit`` then makes interpreter objects)."""
    from triton import knobs

    if knobs.runtime.interpret:
        raise RuntimeError("the compile matrix needs Triton's JIT, but gmm_triton was imported with TRITON_INTERPRET=1 "
                           "(its kernels are interpreter objects): run it in a process without TRITON_INTERPRET")


@contextlib.contextmanager
def _capturing(target, launches: list):
    import torch
    from torch._subclasses.fake_tensor import FakeTensorMode
    from triton.runtime import driver
    from triton.runtime.jit import JITFunction

    run, do_compile, active = JITFunction.run, JITFunction._do_compile, driver._active
    grids = []
    hooks = host()
    patches = {hooks.dispatch: lambda impl, op, x, m, *args: impl(*args)}
    saved = {k: getattr(*k) for k in patches}

    def fake_run(self, *args, grid, warmup, **kwargs):
        si = lambda a: _StandIn(a) if isinstance(a, torch.Tensor) else a  # noqa: E731
        grids.append(tuple(int(g) for g in (grid if isinstance(grid, tuple) else (grid,))))
        try:
            return run(self, *map(si, args), grid=grid, warmup=True, **{k: si(v) for k, v in kwargs.items()})
        except Exception as e:
            raise LaunchError(self.fn.__qualname__) from e

    def record(self, key, signature, device, constexprs, options, attrs, warmup):
        launches.append(Launch(self.fn.__module__, self.fn.__qualname__, dict(signature), dict(constexprs),
                               dict(attrs), dict(options.__dict__), self.cache_key, list(self.arg_names), grids[-1]))
        return None  # JITFunction.run returns without launching

    JITFunction.run, JITFunction._do_compile = fake_run, record
    for (mod, name), f in patches.items():
        setattr(mod, name, f)
    driver.set_active(_StubDriver(target))
    try:
        with FakeTensorMode(allow_non_fake_inputs=True) as mode:
            yield FakeCuda(mode)
    finally:
        JITFunction.run, JITFunction._do_compile = run, do_compile
        for (mod, name), f in saved.items():
            setattr(mod, name, f)
        driver.set_active(active)


def capture(case: Case, target: str) -> list[Launch]:
    """The launches ``case`` makes on a CUDA device of ``target``, as Triton's launcher specialises them."""
    require_jit()
    launches: list[Launch] = []
    with _capturing(gpu_target(target), launches) as fx:
        case.drive(fx)
    if not launches:
        raise RuntimeError(f"case {case.name!r} launched no kernel")
    return launches


# ------------------------------------------------------------------------------------------------
# compile and analyse (in worker processes)
# ------------------------------------------------------------------------------------------------
def _tool(name: str) -> str:
    import triton

    return str(Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name)


def _job(launch: Launch, target: str, dump: Optional[str] = None) -> dict:
    """A compile job as plain data (it crosses to a worker process)."""
    return dict(module=launch.module, qualname=launch.qualname, signature=launch.signature,
                constexprs=launch.constexprs, attrs=launch.attrs, options=launch.options, target=target, dump=dump)


def _compile(job: dict):
    import triton
    from triton.compiler import ASTSource

    fn = functools.reduce(getattr, job["qualname"].split("."), importlib.import_module(job["module"]))
    src = ASTSource(fn, job["signature"], job["constexprs"], job["attrs"])
    return triton.compile(src, target=gpu_target(job["target"]), options=job["options"])


def compile_launch(launch: Launch, target: str):
    """``triton.compile`` of a captured launch for ``target``: the CompiledKernel a real launch would get."""
    return _compile(_job(launch, target))


PTXAS_TRIES = 24


def _ptxas_report(ptx: str, cubin: bytes, target: str, options: dict) -> dict:
    """Registers and spills of triton's cubin: the registers from the cubin itself (``cuobjdump
    --dump-resource-usage``), the spill bytes from ``ptxas -v`` run as triton runs it (same tool, flags and PTX)."""
    from triton.backends.nvidia.compiler import get_ptxas

    arch = gpu_target(target).arch
    want = _code_sections(cubin)
    with tempfile.TemporaryDirectory() as d:
        src, out = Path(d, "k.ptx"), Path(d, "k.cubin")
        src.write_text(ptx)
        out.write_bytes(cubin)
        usage = subprocess.run([_tool("cuobjdump"), "--dump-resource-usage", str(out)], check=True,
                               capture_output=True, text=True).stdout
        regs, stack = (int(re.search(rf"{key}:(\d+)", usage).group(1)) for key in ("REG", "STACK"))
        fmad = [] if options.get("enable_fp_fusion", True) else ["--fmad=false"]
        # ptxas is not always deterministic (the blur grid kernel: several schedules of one PTX on sm_90a and
        # sm_100a): run it again until it writes triton's code, whose report this then is
        for _ in range(PTXAS_TRIES):
            log = subprocess.run([get_ptxas(arch).path, "-lineinfo", *fmad, "-v", f"--gpu-name={target}", str(src),
                                  "-o", str(out)], check=True, capture_output=True, text=True).stderr
            if _code_sections(out.read_bytes()) == want:
                spill = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log)
                return {"registers": regs, "spill_bytes": int(spill.group(1)) if spill else 0}
    if stack == 0:  # no stack frame: nothing can have been spilled
        return {"registers": regs, "spill_bytes": 0}
    raise RuntimeError(f"ptxas -v produced different code from triton's in {PTXAS_TRIES} runs, and triton's has a "
                       f"stack frame of {stack} B: its spill is unknown")


def _code_sections(elf: bytes) -> dict:
    """The kernel code and its resource notes (``.text.*``, ``.nv.info.*``) of a cubin: what ptxas compiled.
    (Debug sections differ with the name of the PTX file.)"""
    shoff, = struct.unpack_from("<Q", elf, 0x28)
    entsize, count, names_index = struct.unpack_from("<HHH", elf, 0x3A)
    heads = [struct.unpack_from("<IIQQQQ", elf, shoff + i * entsize) for i in range(count)]
    names_at = heads[names_index][4]
    name = lambda off: elf[names_at + off:elf.index(b"\0", names_at + off)].decode()  # noqa: E731
    return {name(h[0]): elf[h[4]:h[4] + h[5]] for h in heads if name(h[0]).startswith((".text.", ".nv.info."))}


def _worker_init(cache_dir: str):
    os.environ.setdefault("TRITON_CACHE_DIR", str(Path(cache_dir, "triton")))


def compile_and_analyse(job: dict) -> dict:
    """Compiles one specialisation for one target; returns its static statistics or ``{"error": ...}``."""
    try:
        k = _compile(job)
        stats = _ptxas_report(k.asm["ptx"], k.asm["cubin"], job["target"], job["options"])
        with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
            f.write(k.asm["cubin"])
            f.flush()
            sass = subprocess.run([_tool("nvdisasm"), "-c", f.name], check=True, capture_output=True,
                                  text=True).stdout
            if job.get("dump"):
                stem = Path(job["dump"])
                stem.parent.mkdir(parents=True, exist_ok=True)
                stem.with_suffix(".cubin").write_bytes(k.asm["cubin"])
                stem.with_suffix(".ptx").write_text(k.asm["ptx"])
                stem.with_suffix(".sass").write_text(subprocess.run(
                    [_tool("nvdisasm"), "-c", "-gi", f.name], check=True, capture_output=True, text=True).stdout)
        ins, labels = parse_sass(sass)
        paths = hot_paths(ins, labels)
        if job.get("dump"):
            Path(job["dump"]).with_suffix(".hot.sass").write_text("".join(
                f"// path {n}: {kind}, {len(p)} instructions\n" + "".join(i.text + "\n" for i in p)
                for n, (kind, p) in enumerate(paths)))
        stats["paths"] = []
        threads = 32 * job["options"]["num_warps"]
        for kind, p in paths:
            ld, st = access_widths(p)
            stats["paths"].append(dict(kind=kind, hot_path=len(p), load_bits=ld, store_bits=st,
                                       calls=sum(i.base == "CALL" for i in p), pipes=pipe_counts(p, threads),
                                       loops=[dict(hot_path=len(body), pipes=pipe_counts(body, threads, p))
                                              for body in loop_bodies(ins, labels, p)]))
        stats.update(shared_bytes=int(k.metadata.shared), sass_total=len(ins))
        return stats
    except Exception as e:  # noqa: BLE001 - every failure is a result row
        return {"error": _describe_error(e)}


def _describe_error(e: BaseException) -> str:
    """The exception and its causes, innermost last (a CompilationError's root cause is in its chain)."""
    parts = []
    while e is not None:
        parts.append(f"{type(e).__name__}: {e}".strip())
        e = e.__cause__
    return "\ncaused by ".join(parts)


# ------------------------------------------------------------------------------------------------
# SASS: parse, walk the hot path, access widths
# ------------------------------------------------------------------------------------------------
_INS = re.compile(r"^\s*/\*([0-9a-f]+)\*/\s+(?:(@!?U?P[0-9T])\s+)?([A-Z][A-Za-z0-9_.]*)\s*(.*?)\s*;")
_LABEL = re.compile(r"^\s*([.$\w]+):\s*$")
_REG = re.compile(r"\bR(\d+)\b")
_PRED_OPERAND = re.compile(r"^!?U?P[0-9T]$")


@dataclass
class Ins:
    pred: str
    op: str
    operands: list
    text: str

    @property
    def base(self) -> str:
        return self.op.split(".")[0]


def parse_sass(text: str):
    """(instructions, {label: index}) of the ``nvdisasm -c`` listing of a single-kernel cubin."""
    ins, labels = [], {}
    for line in text.splitlines():
        m = _INS.match(line)
        if m:
            ops = [o.strip() for o in re.split(r",(?![^\[]*\])", m.group(4)) if o.strip()]
            ins.append(Ins(m.group(2) or "", m.group(3), ops, line.strip()))
            continue
        m = _LABEL.match(line)
        if m:
            labels[m.group(1)] = len(ins)
    return ins, labels


def _label(i: Ins):
    """The label a branch or call names (`(.L_x_0)`), or None (an address, a register)."""
    m = re.search(r"`\(([^)]+)\)", " ".join(i.operands))
    return m.group(1) if m else None


def _branch_target(i: Ins, labels) -> int:
    name = _label(i)
    if name is None:
        raise ValueError(f"branch without a label target: {i.text}")
    return labels[name]


def _calls_exit(i: Ins, ins: list, labels: dict) -> bool:
    """Whether ``i`` is a relative call to a label in this listing whose first instruction is EXIT (any other call:
    an absolute one, to a function or an address, is not a way out of a loop)."""
    t = labels.get(_label(i)) if i.base == "CALL" and ".REL" in i.op else None
    return t is not None and t < len(ins) and ins[t].base == "EXIT"


def _conditional(i: Ins) -> bool:
    return bool(i.pred) or ".DIV" in i.op or any(_PRED_OPERAND.match(o) for o in i.operands)


def _skips_slow_path(ins: list, k: int, t: int) -> bool:
    return t < len(ins) and ins[t].base == "BSYNC" or any(j.base == "CALL" for j in ins[k + 1:t])


def _switch_case(ins: list, labels: dict, k: int) -> int:
    """Where a walk goes at the indirect branch ``BRX`` at ``k`` (a switch over a uniform value, e.g. normal_block's
    shift by s): into its longest case. A case runs from its target to its unconditional ``BRA`` to the join; the
    target that is the join itself is the empty case."""
    m = re.search(r'BRANCH_TARGETS ([^"]+)"', ins[k].text)
    if not m:
        raise ValueError(f"indirect branch without its targets: {ins[k].text}")
    cases = {}
    for t in (labels[name.strip()] for name in m.group(1).split(",")):
        j = t
        while j < len(ins) and not (ins[j].base == "BRA" and not _conditional(ins[j])):
            j += 1
        cases[t] = (j - t + 1, _branch_target(ins[j], labels) if j < len(ins) else None)
    joins = {join for _, join in cases.values()}
    return max(cases, key=lambda t: 0 if t in joins else cases[t][0])


def _walk(ins: list, labels: dict, k: int, seen: frozenset = frozenset()) -> list:
    """The indices one thread walks from ``k`` (forks fall through: the rule of :func:`hot_path`)."""
    out, seen = [], set(seen)
    while k < len(ins) and k not in seen:
        seen.add(k)
        out.append(k)
        i = ins[k]
        if i.base == "EXIT" and not i.pred:
            break
        if i.base == "BRX":
            k = _switch_case(ins, labels, k)
            continue
        if i.base == "BRA":
            t = _branch_target(i, labels)
            if not _conditional(i) or _skips_slow_path(ins, k, t):
                k = t
                continue
        k += 1
    return out


def hot_path(ins: list, labels: dict) -> list:
    """One thread's straight-line walk, falling through every fork (the rule is in the module docstring)."""
    return [ins[k] for k in _walk(ins, labels, 0)]


def _edge_weight(ins: list, idx: list) -> int:
    """Predicated thread-indexed global accesses on a walk from the entry (the masked copy of a kernel has
    many)."""
    path = [ins[k] for k in idx]
    return sum(1 for i in _thread_indexed(path) if i.pred)


def _kind(kind: str, mine: int, other: int) -> str:
    """The kind of a fork's side with ``mine`` predicated accesses against ``other`` on the other side."""
    if kind == "edge" or mine > other:
        return "edge"
    return "full" if mine < other or kind == "full" else "any"


def hot_paths(ins: list, labels: dict, max_forks: int = 4) -> list:
    """Every path through the kernel's forks (module docstring; at most ``max_forks`` forks deep, beyond which
    they fall through), as ``[(kind, [Ins])]``: ``kind`` is "edge" if the path took the edge side of a fork,
    "full" if it took a full side and no edge side, else "any" (no fork, or sides with as many predicated
    accesses as each other)."""
    out = []

    def explore(k: int, prefix: list, kind: str, seen: set, forks: int):
        idx = list(prefix)
        while k < len(ins) and k not in seen:
            seen.add(k)
            idx.append(k)
            i = ins[k]
            if i.base == "EXIT" and not i.pred:
                break
            if i.base == "BRX":
                k = _switch_case(ins, labels, k)
                continue
            if i.base == "BRA":
                t = _branch_target(i, labels)
                if not _conditional(i) or _skips_slow_path(ins, k, t):
                    k = t
                    continue
                if t > k and forks < max_forks:
                    fall, taken = _walk(ins, labels, k + 1, frozenset(seen)), _walk(ins, labels, t, frozenset(seen))
                    if fall and taken and not set(fall) & set(taken):  # a fork: both sides, never rejoining
                        wf, wt = _edge_weight(ins, idx + fall), _edge_weight(ins, idx + taken)
                        explore(k + 1, idx, _kind(kind, wf, wt), set(seen), forks + 1)
                        explore(t, idx, _kind(kind, wt, wf), set(seen), forks + 1)
                        return
            k += 1
        out.append((kind, [ins[j] for j in idx]))

    explore(0, [], "any", set(), 0)
    return out


def loop_bodies(ins: list, labels: dict, path: list) -> list:
    """The bodies of the runtime loops on ``path`` (walked once), in program order: for each conditional branch
    back to an instruction on the path (or an unconditional one with a conditional EXIT, or a conditional relative
    call to an EXIT, on the way), the instructions from its target to the branch. A barrier's polling loop (nothing
    but an mbarrier phase check, ``SYNCS.*``, and the branch back to it) is a wait, not work: not a loop here. A loop with work in it is one,
    mbarrier waits in its body or not (on sm_100 a tile loop waits for its tcgen05 products: excluding every loop
    with a ``SYNCS`` in it dropped such a loop, and the case's trip count then had no loop to go with)."""
    where = {id(i): k for k, i in enumerate(ins)}
    pos = {id(i): n for n, i in enumerate(path)}
    out = []
    for n, i in enumerate(path):
        if i.base == "BRA":
            t = _branch_target(i, labels)
            if t < where[id(i)] and id(ins[t]) in pos:
                body = path[pos[id(ins[t])]:n + 1]
                # a conditional branch back, or an unconditional one below a conditional exit (ptxas's forms of
                # a loop whose end test is the program's last instruction: a predicated EXIT, or a predicated
                # CALL.REL.NOINC to an EXIT, as sm_80's blur planes loop compiled with N a constant)
                test = _conditional(i) or any(j.pred and (j.base == "EXIT" or _calls_exit(j, ins, labels))
                                              for j in body)
                if test and not all(j.base in ("SYNCS", "BRA", "NOP") for j in body):
                    out.append(body)
    return out


# (base opcode -> pipe) on sm_80..sm_100; see the module docstring. Unlisted opcodes only take an issue slot.
_PIPES = {
    **dict.fromkeys(("FFMA", "FADD", "FMUL", "FFMA32I", "FADD32I", "FMUL32I", "FSWZADD", "HFMA2", "HADD2", "HMUL2"), "fma"),
    **dict.fromkeys(("IMAD", "IMUL", "IDP", "IMAD32I", "IMUL32I", "IMADSP"), "imad"),
    **dict.fromkeys(("IADD3", "IADD", "IADD32I", "VIADD", "LOP3", "LOP", "LOP32I", "SHF", "SHL", "SHR", "ISETP",
                     "FSETP", "DSETP", "HSETP2", "ISCADD", "LEA", "SEL", "FSEL", "IMNMX", "VIMNMX", "FMNMX", "HMNMX2",
                     "IABS", "PRMT", "MOV", "MOV32I", "P2R", "R2P", "PLOP3", "BMSK", "SGXT", "I2FP", "F2FP", "FSET",
                     "ISET", "CSET", "CSETP", "BFE", "BFI", "FCHK", "VOTE"), "alu"),
    **dict.fromkeys(("MUFU", "F2F", "F2I", "I2F", "FRND", "POPC", "FLO", "BREV", "I2I"), "xu"),
    **dict.fromkeys(("DADD", "DMUL", "DFMA", "DMNMX"), "fp64"),
    **dict.fromkeys(("LDG", "STG", "LDS", "STS", "LDL", "STL", "LD", "ST", "ATOM", "ATOMS", "ATOMG", "RED", "SHFL",
                     "LDSM", "STSM", "LDGSTS"), "lsu"),
}
_MMA_SHAPE = re.compile(r"^(16|8)(8)(\d+)$|^(\d+)x(\d+)x(\d+)$")  # 16816 = m16n8k16, 884, 64x64x16


def _mma(i: Ins):
    """(kind, multiply-accumulates per thread) of a tensor-core instruction, or None. HMMA / DMMA are warp-wide
    (m·n·k over 32 threads); HGMMA is warpgroup-wide (m·n·k over 128)."""
    if i.base not in ("HMMA", "HGMMA", "DMMA", "IMMA"):
        return None
    mods = i.op.split(".")[1:]
    shape = next((_MMA_SHAPE.match(m) for m in mods if _MMA_SHAPE.match(m)), None)
    if shape is None:
        raise ValueError(f"tensor-core instruction without a shape: {i.text}")
    g = shape.groups()
    m, n, k = (int(x) for x in (g[:3] if g[0] else g[3:]))
    threads = 128 if i.base == "HGMMA" else 32
    typ = "f64" if i.base == "DMMA" else "int8" if i.base == "IMMA" else "tf32" if "TF32" in mods else "f16"
    return ("wgmma_" if i.base == "HGMMA" else "mma_") + typ, m * n * k / threads


_IMM_MOVE = re.compile(r"^(?:MOV|MOV32I|UMOV|IMAD\.MOV\.U32|IMAD\.MOV)$")
_IMM = re.compile(r"0x[0-9a-f]+|\d+")
_ANY_REG = re.compile(r"(U?R)(\d+)")  # a general or a uniform register


def _tma_bytes(path: list, k: int, context: Optional[list] = None) -> int:
    """The bytes that the expect-tx arrive ``path[k]`` (``SYNCS.ARRIVE.TRANS64… RZ, [bar], b``) announces: b itself
    (an immediate; RZ: none), or the immediate last moved into the register b on the path (ptxas sets it just ahead of
    the arrive; for a loop body, on the ``context`` path that holds the body). Raises where that last write is not a
    move of an immediate (a wider write covering b included): a TMA copy whose bytes the model cannot see would go
    uncounted. It finds writes through an instruction's first operand (``_dest_count`` registers of it, a tensor-core
    accumulator's whole range included): a write of b in another place (a second destination) would go unseen, and
    an older move be taken; ptxas sets the bytes with a move just ahead of each arrive, and every arrive of the matrix
    resolves so."""
    if context is not None:
        k, path = next(j for j, i in enumerate(context) if i is path[k]), context
    b = path[k].operands[-1]
    if b in ("RZ", "URZ"):
        return 0
    if _IMM.fullmatch(b):
        return int(b, 0)
    m = _ANY_REG.fullmatch(b)
    for i in reversed(path[:k]) if m else ():
        d = _ANY_REG.fullmatch(i.operands[0]) if i.operands and i.base not in _NO_DEST else None
        if not d or d.group(1) != m.group(1) or not 0 <= int(m.group(2)) - int(d.group(2)) < _dest_count(i):
            continue
        if _IMM_MOVE.match(i.op) and _dest_count(i) == 1 and _IMM.fullmatch(i.operands[-1]):
            return int(i.operands[-1], 0)
        break
    raise ValueError(f"a TMA expect-tx arrive whose byte count is not an immediate on the path: {path[k].text}")


def pipe_counts(path: list, threads: int = 128, context: Optional[list] = None) -> dict:
    """Instructions of ``path`` per pipe (module docstring); ``tensor:<kind>`` holds multiply-accumulates; ``threads``:
    the program's (a TMA copy's bytes are the program's, shared by its threads' walks); ``context``: the path that
    holds ``path`` (a loop body)."""
    c = Counter()
    for k, i in enumerate(path):
        if i.op.startswith("SYNCS.ARRIVE.TRANS64") and len(i.operands) == 3:  # an arrive with its expect-tx bytes
            c["lsu"] += _tma_bytes(path, k, context) / 4 / threads
        c["issue"] += 1
        mma = _mma(i)
        if mma:
            c["tensor:" + mma[0]] += mma[1]
            continue
        pipe = _PIPES.get(i.base)
        if pipe == "imad":
            c[pipe] += 2 if any(m in ("WIDE", "HI") for m in i.op.split(".")[1:]) else 1
        elif pipe == "lsu":
            c[pipe] += max(32, _width(i.op)) / 32
        elif pipe:
            c[pipe] += 1
    return dict(c)


_NO_DEST = {"STG", "STS", "STL", "ST", "RED", "BRA", "BAR", "BSSY", "BSYNC", "EXIT", "CALL", "RET", "NOP",
            "WARPSYNC", "MEMBAR", "DEPBAR", "ERRBAR", "CCTL", "FENCE", "YIELD"}


def _dest_count(i: Ins) -> int:
    """Registers written through the first operand (vector loads, 64-bit results, a tensor-core accumulator: a
    wgmma's 64 × N over its 128 threads, N / 2 registers of fp32, N / 4 of fp16 pairs; an mma.sync's m16n8 tile, 4
    registers of 32-bit sums, 2 of fp16 pairs; a DMMA's m8n8 fp64, 2; an ldmatrix, its matrix count)."""
    mods = i.op.split(".")[1:]
    if i.base == "HGMMA":  # HGMMA.64xNxK.<accumulator type>
        n = int(_MMA_SHAPE.match(mods[0]).group(5))
        return n // 4 if mods[1] == "F16" else n // 2
    if i.base in ("HMMA", "IMMA"):
        return 2 if mods[1] == "F16" else 4
    if i.base == "DMMA":
        return 2
    if i.base == "LDSM":
        return int(mods[-1]) if mods[-1] in ("2", "4") else 1
    if "128" in mods:
        return 4
    if "64" in mods or "WIDE" in mods or i.base in ("DADD", "DMUL", "DFMA", "DMNMX"):
        return 2
    if i.base in ("F2F", "I2F", "F2I", "I2I"):  # the first type names the result: F2F.F32.F64 writes one register
        types = [m for m in mods if re.fullmatch(r"[FSU]\d+", m)]
        return 2 if types and types[0].endswith("64") else 1
    return 1


def _address_regs(i: Ins) -> set:
    regs = set()
    for o in i.operands:
        for inner in re.findall(r"\[([^\]]*)\]", o):
            regs.update(int(r) for r in _REG.findall(inner))
    return regs


def _width(op: str) -> int:
    for tok in op.split(".")[1:]:
        if tok in ("128", "64"):
            return int(tok)
        if tok in ("U16", "S16", "16"):
            return 16
        if tok in ("U8", "S8", "8"):
            return 8
    return 32


def _thread_indexed(path: list) -> list:
    """The global loads and stores on ``path`` whose address depends on the thread index (a forward taint of
    the registers derived from ``SR_TID`` / ``SR_LANEID`` along the walk)."""
    tainted: set = set()
    out = []
    for i in path:
        if i.base in ("LDG", "STG") and _address_regs(i) & tainted:
            out.append(i)
        if i.base in _NO_DEST or not i.operands:
            continue
        dest = _REG.fullmatch(i.operands[0].split(".")[0])
        sources = " ".join(i.operands[1:])
        dirty = "SR_TID" in sources or "SR_LANEID" in sources or any(int(r) in tainted for r in _REG.findall(sources))
        if dest:
            regs = range(int(dest.group(1)), int(dest.group(1)) + _dest_count(i))
            if dirty:
                tainted.update(regs)
            elif not i.pred:
                tainted.difference_update(regs)
    return out


def access_widths(path: list):
    """(load_bits, store_bits) of the thread-indexed global accesses on ``path`` (module docstring)."""
    widths = {"LDG": [], "STG": []}
    for i in _thread_indexed(path):
        widths[i.base].append(_width(i.op))

    def mode(ws):
        if not ws:
            return None
        c = Counter(ws)
        return min(c, key=lambda w: (-c[w], w))

    return mode(widths["LDG"]), mode(widths["STG"])


# ------------------------------------------------------------------------------------------------
# the matrix
# ------------------------------------------------------------------------------------------------
@dataclass
class Result:
    """One compiled launch of one case on one target."""

    case: Case
    target: str
    launch: Optional[Launch]
    stats: dict = field(default_factory=dict)
    error: Optional[str] = None
    rejected_kernel: str = "?"   # the kernel whose launch the launcher rejected (no Launch then)

    @property
    def kernel(self) -> str:
        return self.launch.kernel if self.launch else self.rejected_kernel

    @property
    def work(self) -> Work:
        return self.case.work(self.kernel, self.launch.named, self.launch.grid)

    def _per_path_kind(self) -> list:
        """[(programs, path stats)]: each tile kind of the launch's work on the worst path of that kind (any path
        where the kernel has no fork)."""
        paths, out = self.stats["paths"], []
        for kind, n in self.work.programs.items():
            if n:
                same = [p for p in paths if p["kind"] == kind] or paths
                out.append((n, max(same, key=lambda p: p["hot_path"])))
        return out

    def per_element(self, count) -> float:
        """``count(path stats)`` issued per thread (its loops' bodies as often as the case says they run),
        summed over the launch's programs and threads, per real element."""
        threads, work = 32 * self.launch.options["num_warps"], self.work

        def issued(p):
            if len(p["loops"]) != len(work.loops):
                raise ValueError(f"{self.case.name} {self.kernel}: {len(p['loops'])} runtime loops on a path, the case "
                                 f"gives {len(work.loops)} trip counts (Work.loops)")
            return count(p) + sum((trips - 1) * count(body) for trips, body in zip(work.loops, p["loops"]))

        return sum(n * issued(p) for n, p in self._per_path_kind()) * threads / work.elements

    @property
    def sass_per_element(self) -> Optional[float]:
        return self.per_element(lambda p: p["hot_path"]) if self.ok else None

    @property
    def pipes_per_element(self) -> Optional[dict]:
        if not self.ok:
            return None
        names = {k for _, p in self._per_path_kind() for k in p["pipes"]}
        return {k: self.per_element(lambda p, k=k: p["pipes"].get(k, 0.0)) for k in sorted(names)}

    def _width(self, key: str) -> Optional[int]:
        ws = [p[key] for _, p in self._per_path_kind() if p[key] is not None]
        return min(ws) if ws else None

    @property
    def load_bits(self) -> Optional[int]:
        """The narrowest element-stream load width over the paths the launch runs."""
        return self._width("load_bits") if self.ok else None

    @property
    def store_bits(self) -> Optional[int]:
        return self._width("store_bits") if self.ok else None

    @property
    def edge_share(self) -> Optional[float]:
        """The share of the launch's programs that take an edge path (0 where the kernel has no fork)."""
        if not self.ok or not any(p["kind"] == "edge" for p in self.stats["paths"]):
            return 0.0 if self.ok else None
        progs = self.work.programs
        return progs.get("edge", 0) / max(1, sum(progs.values()))

    @property
    def ok(self) -> bool:
        return self.error is None


def _analysis_version() -> str:
    return hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:16]


def _job_key(launch: Launch, target: str) -> str:
    import triton

    blob = json.dumps([launch.module, launch.qualname, launch.source_key, launch.signature,
                       sorted((str(k), repr(v)) for k, v in launch.constexprs.items()),
                       sorted((str(k), v) for k, v in launch.attrs.items()),
                       sorted((k, repr(v)) for k, v in launch.options.items() if k != "extern_libs"),
                       target, triton.__version__, _analysis_version()], default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def _stem(case: str, kernel: str, target: str) -> str:
    return f"{case}__{kernel.strip('_')}__{target}"


def run_matrix(targets=TARGETS, *, cases: Optional[list[Case]] = None, jobs: int = 2, cache_dir=".cache",
               dump_dir=None, progress: Callable[[str], None] = lambda s: None) -> list[Result]:
    """Captures every case on every target, compiles each distinct specialisation once, returns one
    :class:`Result` per (case, launch, target)."""
    cases = all_cases() if cases is None else cases
    cache = Path(cache_dir, "aot")
    cache.mkdir(parents=True, exist_ok=True)
    results, todo = [], {}
    for case in cases:
        for target in (t for t in targets if t in case.targets):
            try:
                launches = capture(case, target)
            except LaunchError as e:  # e.g. a launcher keyword clash: a row of that kernel
                results.append(Result(case, target, None, error=_describe_error(e), rejected_kernel=e.kernel))
                continue
            except Exception as e:  # noqa: BLE001 - a host-path failure is a row too
                results.append(Result(case, target, None, error=f"host path: {_describe_error(e)}"))
                continue
            for launch in launches:
                r = Result(case, target, launch)
                results.append(r)
                key = _job_key(launch, target)
                if dump_dir is None and (cache / f"{key}.json").exists():
                    r.stats = json.loads((cache / f"{key}.json").read_text())
                    continue
                dump = str(Path(dump_dir, _stem(case.name, launch.kernel, target))) if dump_dir else None
                # identical specialisations compile once (with --dump, once per file)
                todo.setdefault((key, dump), (key, _job(launch, target, dump), []))[2].append(r)
    progress(f"{len(results)} launches, {len(todo)} to compile")
    _worker_init(str(cache_dir))
    todo = list(todo.values())
    if len(todo) > 1 and jobs > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"), initializer=_worker_init,
                                 initargs=(str(cache_dir),)) as pool:
            _collect(todo, pool.map(compile_and_analyse, (job for _, job, _ in todo)), cache, progress)
    else:
        _collect(todo, map(compile_and_analyse, (job for _, job, _ in todo)), cache, progress)
    for r in results:
        if r.error is None and "error" in r.stats:
            r.error = r.stats["error"]
    return results


def _collect(todo, outs, cache: Path, progress):
    for n, ((key, job, rs), stats) in enumerate(zip(todo, outs), 1):
        if "error" not in stats:  # failures are retried on the next run
            (cache / f"{key}.json").write_text(json.dumps(stats))
        for r in rs:
            r.stats = stats
        progress(f"[{n}/{len(todo)}] {rs[0].case.name} {rs[0].kernel} {job['target']}: "
                 f"{'error' if 'error' in stats else 'ok'}")
