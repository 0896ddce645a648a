"""One source of truth for what the Triton kernel, the C++ twin and reference.py agree on (issue 11, item 14)."""
from pathlib import Path

from gmm_triton import contract

ROOT = Path(__file__).resolve().parents[1]


def test_cpp_header_is_generated_from_contract():
    committed = (ROOT / "csrc" / "contract.h").read_text()
    assert committed == contract.header(), "csrc/contract.h is stale: run `make contract`"


def test_no_literal_codes_left_in_the_kernels():
    """The kernels index the table and pick modes through the contract's names, never bare numbers."""
    cpp = (ROOT / "csrc" / "step.cpp").read_text()
    assert '#include "contract.h"' in cpp
    for literal in ("c[0]", "c[4]", "c[5]", "c[6]", "row * 8", "uniform_at(a.seed, 1,", "normals(a.seed, 0,"):
        assert literal not in cpp, literal
    tri = (ROOT / "gmm_triton" / "kernels" / "step.py").read_text()
    for literal in ("cp + 0", "cp + 5", "cp + 6", "row * 8", "PRED == 0", "NOISE == 1", "VAR_MODE == 3"):
        assert literal not in tri, literal


def test_codes_are_distinct_and_dense():
    for codes in (contract.PRED_CODES, contract.VAR_CODES, contract.NOISE_CODES):
        assert sorted(codes.values()) == list(range(len(codes)))
    streams = [contract.STREAM_NOISE, contract.STREAM_CHOICE, contract.STREAM_TABLE, contract.STREAM_LATENT]
    assert len(set(streams)) == len(streams)
