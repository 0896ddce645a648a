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

**Instructions per element on the hot path** (:func:`hot_path`): one thread's walk from the entry to the
unpredicated ``EXIT``, in program order. Every instruction on the walk counts, predicated ones too (they take
an issue slot whether or not their predicate holds). An unconditional ``BRA`` is followed. A conditional
branch (``@P BRA``, a uniform-predicate or ``.DIV`` branch) is taken only when it skips a slow path: its
target is the ``BSYNC`` that closes a ``BSSY`` region, or it jumps forward over a ``CALL``. That is how ptxas
guards the paths that a kernel with in-range inputs never runs (libdevice's Payne–Hanek reduction in
sinf/cosf, IEEE division fix-ups, fp64 square root's out-of-line medium path); every other conditional branch
falls through, so a loop body is walked once. A ``CALL`` still on the walk counts as one instruction and is not
followed (reported as ``calls``). The count divided by the elements one thread handles
(elements per program / (32 · num_warps); BLOCK / 256 = 16 for 4096 / 8 warps) is ``sass_per_element``.

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
class Case:
    """One call of the host path. ``drive(fx)`` makes the call with :class:`FakeCuda` tensors.

    ``bytes_per_element(kernel)``: DRAM bytes a launch of ``kernel`` moves per element it produces (the floor of
    benchmarks/RESULTS.md). ``elements_per_program(kernel, constexprs)``: elements one program produces
    (default: its BLOCK).
    """

    name: str
    dtype: str
    drive: Callable[["FakeCuda"], None]
    bytes_per_element: Callable[[str], float]
    elements_per_program: Callable[[str, dict], int] = lambda kernel, cx: cx["BLOCK"]


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

    ``dispatch`` is the (module, name) of the op's dispatcher shortcut ``_call(impl, op, x, m, *args)``, which
    capture replaces by ``impl(*args)`` so that the op's real CUDA branch runs instead of its fake kernel.
    """
    from types import SimpleNamespace

    from .. import ops, rng

    return SimpleNamespace(ddim_step=ops.ddim_step, philox_normal=rng.philox_normal, philox_words=rng.philox_words,
                           dispatch=(ops, "_call"))


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
    hooks = host()
    patches = {hooks.dispatch: lambda impl, op, x, m, *args: impl(*args)}
    saved = {k: getattr(*k) for k in patches}

    def fake_run(self, *args, grid, warmup, **kwargs):
        si = lambda a: _StandIn(a) if isinstance(a, torch.Tensor) else a  # noqa: E731
        try:
            return run(self, *map(si, args), grid=grid, warmup=True, **{k: si(v) for k, v in kwargs.items()})
        except Exception as e:
            raise LaunchError(self.fn.__qualname__) from e

    def record(self, key, signature, device, constexprs, options, attrs, warmup):
        launches.append(Launch(self.fn.__module__, self.fn.__qualname__, dict(signature), dict(constexprs),
                               dict(attrs), dict(options.__dict__), self.cache_key, list(self.arg_names)))
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


def _ptxas_report(ptx: str, cubin: bytes, target: str, options: dict) -> dict:
    """Registers and spills from ``ptxas -v``, run as triton runs it (same tool, flags and PTX)."""
    from triton.backends.nvidia.compiler import get_ptxas

    arch = gpu_target(target).arch
    with tempfile.TemporaryDirectory() as d:
        src, out = Path(d, "k.ptx"), Path(d, "k.cubin")
        src.write_text(ptx)
        fmad = [] if options.get("enable_fp_fusion", True) else ["--fmad=false"]
        log = subprocess.run([get_ptxas(arch).path, "-lineinfo", *fmad, "-v", f"--gpu-name={target}", str(src),
                              "-o", str(out)], check=True, capture_output=True, text=True).stderr
        if _code_sections(out.read_bytes()) != _code_sections(cubin):
            raise RuntimeError("ptxas -v produced different code from triton's: its report would not describe it")
    regs = re.search(r"Used (\d+) registers", log)
    spill = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log)
    return {"registers": int(regs.group(1)), "spill_bytes": int(spill.group(1)) if spill else 0}


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
            sass = subprocess.run([_tool("nvdisasm"), "-c", "-ndf", f.name], check=True, capture_output=True,
                                  text=True).stdout
            if job.get("dump"):
                stem = Path(job["dump"])
                stem.parent.mkdir(parents=True, exist_ok=True)
                stem.with_suffix(".cubin").write_bytes(k.asm["cubin"])
                stem.with_suffix(".ptx").write_text(k.asm["ptx"])
                stem.with_suffix(".sass").write_text(subprocess.run(
                    [_tool("nvdisasm"), "-c", "-gi", f.name], check=True, capture_output=True, text=True).stdout)
        ins, labels = parse_sass(sass)
        path = hot_path(ins, labels)
        if job.get("dump"):
            Path(job["dump"]).with_suffix(".hot.sass").write_text("".join(i.text + "\n" for i in path))
        ld, st = access_widths(path)
        stats.update(shared_bytes=int(k.metadata.shared), load_bits=ld, store_bits=st, hot_path=len(path),
                     calls=sum(i.base == "CALL" for i in path), sass_total=len(ins))
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
_INS = re.compile(r"^\s*/\*([0-9a-f]+)\*/\s+(?:(@!?U?P[0-9T])\s+)?([A-Z][A-Z0-9_.]*)\s*(.*?)\s*;")
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


def _branch_target(i: Ins, labels) -> int:
    m = re.search(r"`\(([^)]+)\)", " ".join(i.operands))
    if not m:
        raise ValueError(f"branch without a label target: {i.text}")
    return labels[m.group(1)]


def hot_path(ins: list, labels: dict) -> list:
    """One thread's straight-line walk (the rule is in the module docstring)."""
    path, seen, k = [], set(), 0
    while k < len(ins) and k not in seen:
        seen.add(k)
        i = ins[k]
        path.append(i)
        if i.base == "EXIT" and not i.pred:
            break
        if i.base == "BRA":
            t = _branch_target(i, labels)
            conditional = bool(i.pred) or ".DIV" in i.op or any(_PRED_OPERAND.match(o) for o in i.operands)
            skips_slow_path = t < len(ins) and ins[t].base == "BSYNC" or any(j.base == "CALL" for j in ins[k + 1:t])
            if not conditional or skips_slow_path:
                k = t
                continue
        k += 1
    return path


_NO_DEST = {"STG", "STS", "STL", "ST", "RED", "BRA", "BAR", "BSSY", "BSYNC", "EXIT", "CALL", "RET", "NOP",
            "WARPSYNC", "MEMBAR", "DEPBAR", "ERRBAR", "CCTL", "FENCE", "YIELD"}


def _dest_count(i: Ins) -> int:
    """Registers written through the first operand (vector loads, 64-bit results)."""
    mods = i.op.split(".")[1:]
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


def access_widths(path: list):
    """(load_bits, store_bits) of the thread-indexed global accesses on ``path`` (module docstring)."""
    tainted: set = set()
    widths = {"LDG": [], "STG": []}
    for i in path:
        if i.base in widths and _address_regs(i) & tainted:
            widths[i.base].append(_width(i.op))
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
    def elements_per_thread(self) -> float:
        per_program = self.case.elements_per_program(self.kernel, self.launch.named)
        return per_program / (32 * self.launch.options["num_warps"])

    @property
    def sass_per_element(self) -> Optional[float]:
        return self.stats["hot_path"] / self.elements_per_thread if "hot_path" in self.stats else None

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
        for target in targets:
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
