"""Builds csrc/ into gmm_triton._C, the C++ CPU twin of the fused step.

Build against the torch you run with (no build isolation):  pip install --no-build-isolation -e .
Set GMM_TRITON_SKIP_CPP=1 to install without the extension (the CPU op then tells you how to build it),
and GMM_TRITON_PORTABLE=1 to build without -march=native (for a wheel that runs on other x86-64 CPUs).
Built from a git checkout, it records the commit in gmm_triton/_build_info.py (gmm_triton/provenance.py).
"""
import os
import sys

from setuptools import setup

HERE = os.path.dirname(os.path.abspath(__file__))


def _write_build_info():
    """gmm_triton/_build_info.py: the commit this build comes from, read from this checkout's own .git files
    (provenance.head_commit; no git process, so no enclosing repository or hook is involved)."""
    sys.path.insert(0, HERE)
    try:
        from gmm_triton.provenance import head_commit  # stdlib only: importing it loads neither torch nor triton
    finally:
        sys.path.pop(0)
    sha = head_commit(HERE)
    if sha is not None:
        with open(os.path.join(HERE, "gmm_triton", "_build_info.py"), "w") as f:
            f.write(f'"""Written by setup.py at build time (gmm_triton/provenance.py reads it)."""\nCOMMIT = "{sha}"\n')


_write_build_info()

ext_modules, cmdclass = [], {}
if os.environ.get("GMM_TRITON_SKIP_CPP") != "1":
    from torch.utils.cpp_extension import BuildExtension, CppExtension

    # -fno-math-errno lets sqrt vectorise (errno only; IEEE results and NaNs unchanged)
    cflags = ["-O3", "-fno-math-errno", "-fopenmp", "-DPy_LIMITED_API=0x03090000", "-std=c++17"]
    if os.environ.get("GMM_TRITON_PORTABLE") != "1" and sys.platform.startswith("linux"):
        cflags.append("-march=native")  # the Philox and Box-Muller loops vectorise with AVX2/AVX-512
    ext_modules = [
        CppExtension(
            "gmm_triton._C",
            sources=["csrc/step.cpp", "csrc/gddim.cpp", "csrc/module.cpp"],
            extra_compile_args={"cxx": cflags},
            extra_link_args=["-fopenmp"],
            py_limited_api=True,
        )
    ]
    cmdclass = {"build_ext": BuildExtension}

setup(
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    options={"bdist_wheel": {"py_limited_api": "cp39"}} if ext_modules else {},
)
