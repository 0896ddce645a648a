"""The three layers (runtime library, tools, lab) and their one-way arrows, read from the source (every import
statement, at module level or inside a function) and checked at run time for the pipeline's imports."""
import ast
import pathlib
import subprocess
import sys

import gmm_triton

ROOT = pathlib.Path(gmm_triton.__file__).parent


def _module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict:
    return {_module_name(p): p for p in ROOT.rglob("*.py")}


def _imports(name: str, path: pathlib.Path, known) -> set:
    """The package modules that ``name`` imports (``from a import b`` counts a.b when it is a module, else a)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("gmm_triton")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            elif node.module and node.module.startswith("gmm_triton"):
                mod = node.module
            else:
                continue
            for a in node.names:
                out.add(f"{mod}.{a.name}" if f"{mod}.{a.name}" in known else mod)
    return {m for m in out if m in known and m != name}


def _layer(module: str) -> str:
    parts = module.split(".")
    if len(parts) > 1 and parts[1] in ("lab", "tools", "cli"):
        return parts[1]
    return "library"


GRAPH = {n: _imports(n, p, set(_modules())) for n, p in _modules().items()}
ALLOWED = {"library": {"library"}, "lab": {"library", "lab"}, "tools": {"library", "tools", "lab"},
           "cli": {"library", "lab", "tools", "cli"}}


def test_arrows_point_one_way():
    """The library imports neither the tools nor the lab (nor the CLI); the lab never imports the tools."""
    bad = sorted(f"{a} -> {b}" for a, deps in GRAPH.items() for b in deps if _layer(b) not in ALLOWED[_layer(a)])
    assert not bad, bad


def test_no_import_circles():
    """No module reaches itself through imports (Tarjan's strongly connected components)."""
    index, low, stack, on, comps, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in GRAPH[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                comps.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in GRAPH:
        if v not in index:
            visit(v)
    assert not comps, comps


def test_the_checker_sees_a_wrong_arrow_and_a_circle(tmp_path):
    """The two checks above on a planted tree: a library module importing the lab, and two modules importing each
    other inside functions, are both found."""
    planted = {"gmm_triton.ops": {"gmm_triton.lab.demo"}, "gmm_triton.lab.demo": set(),
               "gmm_triton.a": {"gmm_triton.b"}, "gmm_triton.b": {"gmm_triton.a"}}
    bad = [f"{a} -> {b}" for a, deps in planted.items() for b in deps if _layer(b) not in ALLOWED[_layer(a)]]
    assert bad == ["gmm_triton.ops -> gmm_triton.lab.demo"]
    src = tmp_path / "gmm_triton"
    src.mkdir()
    (src / "__init__.py").write_text("")
    (src / "a.py").write_text("def f():\n    from . import b\n")
    (src / "b.py").write_text("from .a import f\n")
    known = {"gmm_triton", "gmm_triton.a", "gmm_triton.b"}
    global ROOT
    old, ROOT = ROOT, src
    try:
        assert _imports("gmm_triton.a", src / "a.py", known) == {"gmm_triton.b"}
        assert _imports("gmm_triton.b", src / "b.py", known) == {"gmm_triton.a"}
    finally:
        ROOT = old


_PIPELINE = r"""
import sys, torch
from diffusers import DDIMScheduler, FlowMatchEulerDiscreteScheduler  # what diffusers loads itself (scipy, here)
before = set(sys.modules)
import gmm_triton
from gmm_triton import GMMDDIMScheduler, GMMFlowMatchScheduler, GDDIMCLDScheduler, ddim_step, build_mixture
for kernel in ("gaussian", "gmm"):
    s = GMMDDIMScheduler(kernel=kernel)
    s.set_timesteps(4)
    x = torch.randn(2, 1, 4, 4)
    for t in s.timesteps:
        x = s.step(torch.randn_like(x), t, x, eta=1.0).prev_sample
f = GMMFlowMatchScheduler(kernel="gmm")
f.set_timesteps(3)
y = torch.randn(2, 1, 4, 4)
for t in f.timesteps:
    y = f.step(torch.randn_like(y), t, y).prev_sample
c = GDDIMCLDScheduler()
c.set_timesteps(3)
u = torch.randn(2, 2, 4)
for t in c.timesteps:
    u = c.step(torch.randn_like(u), t, u).prev_sample
bad = sorted(m for m in set(sys.modules) - before if m.startswith(("gmm_triton.lab", "gmm_triton.tools",
                                                                   "gmm_triton.cli", "matplotlib", "sklearn", "scipy")))
print(bad)
"""


def test_a_pipeline_imports_only_the_library():
    """Schedulers of every family stepping through the op load no lab, tools, matplotlib, scikit-learn or scipy
    (beyond what diffusers' own schedulers load: diffusers 0.42 imports scipy when it is installed)."""
    r = subprocess.run([sys.executable, "-c", _PIPELINE], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip().splitlines()[-1] == "[]", r.stdout
