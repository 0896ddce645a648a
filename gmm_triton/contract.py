"""What the Triton kernels, the C++ twin and reference.py must agree on, stated once.

The integer codes that select a kernel's behaviour, the columns of the per-step coefficient table and the
Philox stream ids live here. The Triton kernels import them (as ``tl.constexpr``), ``reference.py`` and the
op import them, and ``csrc/contract.h`` is generated from this file (``make contract``); a test regenerates
the header and fails if the committed one differs, and no kernel or C++ file may hold a literal code
(tests/test_contract.py). Each implementation lists the codes it implements and rejects any other
(tests/test_fail_closed.py): a code added here is an error until every implementation has its branch.
"""
from __future__ import annotations

# prediction types: how the model output m becomes (x̂₀, ε̂)
PRED_CODES = {"epsilon": 0, "sample": 1, "v_prediction": 2, "flow": 3}
# mixture variance modes (mixture.py); "none" is the Gaussian kernel
VAR_CODES = {"none": 0, "diag": 1, "vub": 2, "exact": 3}
# where a step's noise comes from (every op family: DDIM / flow, CLD, blur)
NOISE_CODES = {"none": 0, "philox": 1, "tensor": 2}
NOISE_NONE, NOISE_PHILOX, NOISE_TENSOR = (NOISE_CODES[k] for k in ("none", "philox", "tensor"))

# the mixture's tensors as the op takes them, one list in this order (mixture.MixtureTensors.op_tensors; None where a
# variance mode has no such table): offsets δ [S, K, D], cdf [KP], 1/(K₊π_k) [KP], the variance table ("diag" [S, D],
# "vub" [K, K]), the basis Q [S, KP, D] and eigenvalues [S, KP] ("exact")
MIX_TENSORS = ("delta", "cdf", "weight", "var", "basis", "eig")
MIX_DELTA, MIX_CDF, MIX_WEIGHT, MIX_VAR, MIX_BASIS, MIX_EIG = range(len(MIX_TENSORS))

# Philox streams (the third counter word): noise, the per-sample mixture component, the mixture's offset
# tables, and the initial latents of a sampling run (gmm_triton.initial_noise)
STREAM_NOISE, STREAM_CHOICE, STREAM_TABLE, STREAM_LATENT = 0, 1, 2, 3

# the coefficient table (coefficients.py): one float64 row of N_COLS per timestep (DDIM) or step (flow), for
# x_t = α x₀ + s ε: α, s (VP: √(1 − ᾱ_t); flow: t), α_prev, s_prev², var (σ² at η = 1), final, step.
# σ means one thing everywhere: the step's η-scaled noise std σ = η √var; s is the noise coefficient of x_t.
N_COLS = 8
COL_ALPHA, COL_S, COL_ALPHA_PREV, COL_S_PREV2, COL_VAR, COL_FINAL, COL_STEP = range(7)

# gDDIM tables (gddim/tables.py). CLD: one row of CLD_COLS float64 per step: Ψ (row-major 2×2) at CLD_PSI, the
# ε-coefficient blocks C_0..C_2 at CLD_EPS + 4j, the noise factor Λ = [[l00, 0], [l10, l11]] at CLD_CHOL..+2.
# Blur: BLUR_PLANES float64 planes [N, N] per step: A = Ψ_f, B_0..B_2, then the noise std S.
CLD_COLS, CLD_PSI, CLD_EPS, CLD_CHOL = 24, 0, 4, 16
BLUR_PLANES = 5

# the highest inner (non-batch) rank of a permuted dense layout the kernels index without a copy
MAX_PERMUTED_RANK = 3

PREDICTION_TYPES = tuple(PRED_CODES)
VARIANCE_MODES = tuple(VAR_CODES)
# the mixture's variance modes (mixture.VarianceMode, the schedulers' gmm_variance): every code but the Gaussian's.
# Torch-free, for the command line and the integrations; every list of modes derives from here or from the mixture
MIXTURE_VARIANCES = tuple(m for m in VAR_CODES if m != "none")


def header() -> str:
    """The text of csrc/contract.h."""
    lines = [
        "// Generated from gmm_triton/contract.py by `make contract`.",
        "// Do not edit: tests/test_contract.py fails when this file and contract.py disagree.",
        "#pragma once",
        "#include <cstdint>",
        "",
        "namespace gmm {",
        "",
    ]

    def enum(name, prefix, codes):
        body = ", ".join(f"{prefix}{k.title().replace('_', '')} = {v}" for k, v in codes.items())
        lines.append(f"enum {name} : int {{ {body} }};")

    enum("Pred", "kPred", PRED_CODES)
    enum("Var", "kVar", VAR_CODES)
    enum("Noise", "kNoise", NOISE_CODES)
    lines.append("")
    for name in ("STREAM_NOISE", "STREAM_CHOICE", "STREAM_TABLE", "STREAM_LATENT", "N_COLS", "COL_ALPHA",
                 "COL_S", "COL_ALPHA_PREV", "COL_S_PREV2", "COL_VAR", "COL_FINAL", "COL_STEP",
                 "CLD_COLS", "CLD_PSI", "CLD_EPS", "CLD_CHOL", "BLUR_PLANES", "MAX_PERMUTED_RANK", "MIX_DELTA",
                 "MIX_CDF", "MIX_WEIGHT", "MIX_VAR", "MIX_BASIS", "MIX_EIG"):
        lines.append(f"constexpr int k{name.title().replace('_', '')} = {globals()[name]};")
    lines.append(f"constexpr int kMixTensors = {len(MIX_TENSORS)};")
    lines += ["", "}  // namespace gmm", ""]
    return "\n".join(lines)

