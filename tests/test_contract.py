"""One source of truth for what the Triton kernels, the C++ twin and reference.py agree on (issues 11 and 18): every
code comes from gmm_triton/contract.py (csrc/contract.h is generated from it), no kernel or C++ file holds a literal
code, and an unknown code is an error in every implementation (tests/test_fail_closed.py)."""
import ast
import re
from pathlib import Path

import pytest

from gmm_triton import contract

ROOT = Path(__file__).resolve().parents[1]
KERNELS = sorted((ROOT / "gmm_triton" / "kernels").glob("*.py"))
# and the op modules, where gDDIM's noise codes were once defined a fourth time
PY = KERNELS + [ROOT / "gmm_triton" / p for p in ("ops.py", "backends.py", "door.py", "gddim/ops.py")]
CPP = sorted(p for p in (ROOT / "csrc").iterdir() if p.suffix in (".cpp", ".h") and p.name != "contract.h")
# parameters and names that carry a contract code: a number in their place is a literal code
CODE_PARAMS = {"PRED", "NOISE", "VAR_MODE", "STREAM"}
CODE_WORDS = re.compile(r"PRED|NOISE|VAR|STREAM")


def test_cpp_header_is_generated_from_contract():
    committed = (ROOT / "csrc" / "contract.h").read_text()
    assert committed == contract.header(), "csrc/contract.h is stale: run `make contract`"


def _number(node) -> bool:
    return isinstance(node, ast.Constant) and type(node.value) is int or \
        isinstance(node, ast.Tuple) and bool(node.elts) and all(_number(e) for e in node.elts)


def _tail(node) -> str:
    return node.id if isinstance(node, ast.Name) else node.attr if isinstance(node, ast.Attribute) else ""


def python_literal_codes(text: str, params: dict) -> list:
    """Literal codes in a kernel module: a code parameter compared with a number, a number passed as a code
    parameter (``params``: {function: its parameter names}), a code-named global assigned a number."""
    bad = []
    tree = ast.parse(text)
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            sides = [node.left, *node.comparators]
            if any(_tail(s) in CODE_PARAMS for s in sides) and any(_number(s) for s in sides):
                bad.append(f"line {node.lineno}: {ast.unparse(node)}")
        elif isinstance(node, ast.Call):
            names = params.get(_tail(node.func), [])
            passed = list(zip(names, node.args)) + [(k.arg, k.value) for k in node.keywords]
            bad += [f"line {node.lineno}: {ast.unparse(node)[:80]}" for name, arg in passed
                    if name in CODE_PARAMS and _number(arg)]
    for node in tree.body:
        if isinstance(node, ast.Assign) and _number(node.value):
            names = [n.id for t in node.targets for n in ast.walk(t) if isinstance(n, ast.Name)]
            if any(CODE_WORDS.search(n) for n in names):
                bad.append(f"line {node.lineno}: {ast.unparse(node)}")
    return bad


def cpp_literal_codes(text: str) -> list:
    """Literal codes in a C++ file: a code variable compared with a number, a numbered ``case``, an enum of its own,
    a Philox stream given as a number."""
    patterns = [r"\b(pred|var_mode|noise_mode)\s*[!=]=\s*\d", r"\bcase\s+\d+\s*:", r"\benum\b[^{;]*\{[^}]*=\s*\d",
                r"\b(normals|normals_at|uniform_at|philox_tile|philox_scalar|philox_counters)\(\s*[^,()]+,\s*\d",
                r"\bc\[\d\]", r"\brow \* \d"]
    return [m.group(0) for p in patterns for m in re.finditer(p, text)]


def _kernel_params() -> dict:
    params = {}
    for path in KERNELS:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef):
                params[node.name] = [a.arg for a in node.args.args]
    return params


@pytest.mark.parametrize("path", PY, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_literal_codes_in_the_triton_kernels(path):
    assert python_literal_codes(path.read_text(), _kernel_params()) == []


@pytest.mark.parametrize("path", CPP, ids=lambda p: p.name)
def test_no_literal_codes_in_the_cpp_twin(path):
    text = path.read_text()
    if re.search(r"\bk(Pred|Var|Noise|Stream|Col|Cld|Blur)[A-Z]", text):
        assert '#include "contract.h"' in text
    assert cpp_literal_codes(text) == []


def test_the_checks_catch_literal_codes():
    """Each pattern above on the code it forbids (the forms issue 18 found: gddim's own noise enum, a stream 0, a
    comparison with 1, a flow branch behind a default)."""
    params = {"normal_block": ["seed", "start", "BLOCK", "STREAM"]}
    py = ["NOISE_NONE, NOISE_PHILOX, NOISE_TENSOR = 0, 1, 2", "if NOISE == 1:\n    pass",
          "if S.PRED != 3:\n    pass", "x = normal_block(seed, start, BLOCK, 0)", "x = normal_block(seed, 0, 8, STREAM=1)"]
    for snippet in py:
        assert python_literal_codes(snippet, params), snippet
    cpp = ["enum NoiseMode { kNoNoise = 0, kPhilox = 1 };", "if (noise_mode == 1) {", "case 3: break;",
           "normals(seed, 0, b * D, n, out);", "uniform_at(a.seed, 1, g)", "s.al = c[0];"]
    for snippet in cpp:
        assert cpp_literal_codes(snippet), snippet
    assert not python_literal_codes("if NOISE == NOISE_PHILOX:\n    pass\nBLOCK = 4", params)
    assert not cpp_literal_codes("normals(s.seed, kStreamNoise, base, n, tmp); if (a.pred == kPredFlow) {}")


def test_codes_are_distinct_and_dense():
    for codes in (contract.PRED_CODES, contract.VAR_CODES, contract.NOISE_CODES):
        assert sorted(codes.values()) == list(range(len(codes)))
    streams = [contract.STREAM_NOISE, contract.STREAM_CHOICE, contract.STREAM_TABLE, contract.STREAM_LATENT]
    assert len(set(streams)) == len(streams)


def test_mixture_variance_modes_are_the_contracts():
    """The mixture's modes (mixture.VarianceMode, spelled out for type checkers; the schedulers' gmm_variance) are the
    contract's variance codes but the Gaussian's, in order: every other list of modes (the command line, the ComfyUI
    node, the tests' parametrisations, the compile matrix) derives from one of the two (issue 18, item 4)."""
    from gmm_triton import mixture

    assert mixture.VARIANCES == contract.MIXTURE_VARIANCES == tuple(m for m in contract.VAR_CODES if m != "none")
