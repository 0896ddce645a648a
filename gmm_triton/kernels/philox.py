"""Philox helpers shared by the fused kernels (the RNG contract is stated in reference.py).

The rounds are Philox4x32-10 (tested bit-exactly against ``reference.philox4x32``). The integer → normal conversion
is ours, so the stream does not move if triton's ``tl.rand``/``tl.randn`` formulas change, and the C++ twin computes
the same function:

    z₀, z₁ = r cos θ, r sin θ,   r = √(−2 ln U°(a)),   θ = 2π U(b)          (Box–Muller)

**One control flow, three sets of leaves.** The GPU and the interpreter run the same code (the Philox rounds, the lane
order, the radius series, θ = φ + π with φ = k·2π·2⁻²⁴ ∈ [−π, π), k = (b >> 8) − 2²³, the sign folding, the
joins into rows) and differ only in four leaf functions, chosen by the math mode ``FAST`` (kernels/common.py):

| leaf | MATH_GPU (PTX) | MATH_ACCURATE (interpreter) | MATH_EMULATED (interpreter) |
|---|---|---|---|
| ``_mul_wide`` 32×32 → 64 | ``mul.wide.u32`` (exact) | the 64-bit product (exact) | the same (exact) |
| ``_rcp`` | ``rcp.approx.ftz.f32``: ≤ 1 ulp | 1/y, correctly rounded | 1/y rounded up: < 1 ulp |
| ``_sqrt`` | ``sqrt.approx.ftz.f32``: ≤ 2⁻²³ relative | ``sqrt_rn`` | √x rounded up: < 1 ulp ≤ 2⁻²³ rel. |
| ``_cos_sin`` of k | φ = fl(k · fl(2π·2⁻²⁴)), then ``cos/sin.approx.ftz.f32``: ≤ 2⁻²⁰·⁹ absolute on [−π, π] (PTX ISA) | cos, sin of the exact angle (float64), rounded | the GPU's float32 φ, then cos, sin of it + (2⁻²⁰·⁹ − 2⁻²⁵), rounded: ≤ 2⁻²⁰·⁹ |

So the CPU suite runs the GPU branch (MATH_EMULATED, tests/test_philox_math.py) with every hardware leaf at its
documented worst error, and the GPU's lane order and range reduction are executed, not only compiled.

**Error bounds** (|z − z_exact| over every pair of 24-bit words; z_exact the float64 reference). Write
z = fl(r̃ c̃), r̃ = r + Δr, c̃ = c + Δc (c for cos or sin). Then |z − r c| ≤ |Δr| + r |Δc| + ½ ulp(z), and
r ≤ √(48 ln 2) = 5.768. The radius leaves (``_radius2``'s series, ``_rcp``, ``_sqrt``) are the same function of the
24-bit word a for every pair, so |Δr(a)| is computed for all 2²⁴ words (``python -m gmm_triton.tools.normal_bounds``,
a float32 model of this file): ≤ 4.61e-7 with accurate leaves, ≤ 7.0e-7 with the PTX leaves at their worst (rounded
up). The angle:
- accurate: |Δc| ≤ 2⁻²⁵ = 2.98e-8 (one rounding of the exact value);
- GPU: φ's float32 error |k|·|fl(C) − C| + ½ ulp(φ) ≤ 2²³ · 1.04e-14 + 1.19e-7 = 2.07e-7 (max over all 2²⁴ k:
  2.066e-7 at b = 113), plus the instruction's 2⁻²⁰·⁹ = 5.11e-7: |Δc| ≤ 7.18e-7.
Maximising |Δr(a)| + r(a)·|Δc| + ½ ulp(z) over all a: **8.24e-7 (interpreter, at a = 2789) ≤ 1e-6** and
**4.74e-6 (GPU, at a = 8) ≤ 5e-6**. (The interpreter once evaluated cos / sin at the GPU's float32 φ: 2.1e-7 × 5.77
≈ 1.2e-6 from the angle alone, and 1.42e-6 at a = 1, b = 14622219 — over its stated 1e-6; its angle leaf now takes
the exact angle. An earlier comment here cited 2⁻²⁰·⁵ for the PTX sin/cos, which would give 5.46e-6 > 5e-6; the
PTX ISA states 2⁻²⁰·⁹.) The C++ twin reduces the angle to a quadrant exactly (csrc/philox.h) and meets 1e-6 as well.
Every implementation is tested at the adversarial words and over a structured sample of 10⁶ pairs
(tests/test_philox_math.py: at most 7.9e-7 for the interpreter and the C++ twin, 3.97e-6 for the emulated GPU).

ln U° comes from the float's exponent and a series in t = (f − 1)/(f + 1), f ∈ [√½, √2): relative error < 2e-7 for
every U° ∈ (0, 1], including U° → 1, where r → 0 and a hardware log2 (absolute error ~1e-7) would not be relatively
accurate (the same algorithm as csrc/philox.h's ``log_unit``).
"""
import triton
import triton.language as tl
from triton.language.extra import libdevice

from .common import MATH_ACCURATE, MATH_EMULATED, MATH_GPU, fast_math

_INV_2_24 = tl.constexpr(5.9604644775390625e-08)  # 2**-24
_TWO_PI_2_24 = tl.constexpr(6.283185307179586 * 5.9604644775390625e-08)  # 2π · 2⁻²⁴ (rounded to float32 on the GPU)
_TRIG_ERR = tl.constexpr(2.0**-20.9 - 2.0**-25)  # cos/sin.approx's stated error, less the emulation's final rounding
_M2LN2 = tl.constexpr(-2.0 * 0.6931471805599453)
_SQRT_HALF_BITS = tl.constexpr(0x3F3504F3)  # √½ as float32 bits
_ONE_BITS = tl.constexpr(0x3F800000)
_ROUND_A = tl.constexpr(0xD2511F53)  # Philox4x32 multipliers and Weyl key increments (Salmon et al. 2011)
_ROUND_B = tl.constexpr(0xCD9E8D57)
_KEY_A = tl.constexpr(0x9E3779B9)
_KEY_B = tl.constexpr(0xBB67AE85)
_MUL_A_ASM = tl.constexpr(f"{{ .reg .u64 t; mul.wide.u32 t, $2, {_ROUND_A.value}; mov.b64 {{$0, $1}}, t; }}")
_MUL_B_ASM = tl.constexpr(f"{{ .reg .u64 t; mul.wide.u32 t, $2, {_ROUND_B.value}; mov.b64 {{$0, $1}}, t; }}")


# ------------------------------------------------------------------------------------------------
# the leaves: the only code that differs between the GPU and the interpreter
# ------------------------------------------------------------------------------------------------
@triton.jit
def _mul_wide(a, M: tl.constexpr, ASM: tl.constexpr, FAST: tl.constexpr):
    """(low, high) 32-bit words of the 64-bit product a·M (a uint32): exact in every mode.

    On the GPU one ``mul.wide.u32`` (IMAD.WIDE.U32), opaque to LLVM: written as a 64-bit multiply, LLVM merges a
    round's 32-bit XORs into 64-bit ones and then multiplies 64×64 (several IMADs per product)."""
    if FAST == MATH_GPU:
        return tl.inline_asm_elementwise(ASM, "=r,=r,r", [a], dtype=(tl.uint32, tl.uint32), is_pure=True, pack=1)
    else:
        p = a.to(tl.uint64) * M
        return p.to(tl.uint32), (p >> 32).to(tl.uint32)


@triton.jit
def _round_up(v):
    """v (float64, > 0) rounded up to float32: below 1 ulp above v, the worst a ≤ 1-ulp instruction may return."""
    r = v.to(tl.float32)
    return tl.where(r.to(tl.float64) < v, (r.to(tl.int32, bitcast=True) + 1).to(tl.float32, bitcast=True), r)


@triton.jit
def _rcp(y, FAST: tl.constexpr):
    """1/y, y ∈ [1.7, 2.5] (never denormal): MUFU.RCP alone on the GPU (rcp.approx.ftz: ≤ 1 ulp)."""
    if FAST == MATH_GPU:
        return tl.inline_asm_elementwise("rcp.approx.ftz.f32 $0, $1;", "=r,r", [y], dtype=tl.float32, is_pure=True,
                                         pack=1)
    elif FAST == MATH_EMULATED:
        return _round_up(1.0 / y.to(tl.float64))
    else:
        return 1.0 / y


@triton.jit
def _sqrt(x, FAST: tl.constexpr):
    """√x, x ≥ 0: MUFU.SQRT on the GPU (sqrt.approx.ftz: ≤ 2⁻²³ relative)."""
    if FAST == MATH_GPU:
        return tl.sqrt(x)
    elif FAST == MATH_EMULATED:
        return _round_up(tl.sqrt(x.to(tl.float64)))
    else:
        return tl.sqrt_rn(x)


@triton.jit
def _cos_sin(k, FAST: tl.constexpr):
    """(cos φ, sin φ), φ = k·2π·2⁻²⁴ ∈ [−π, π) for the int32 angle index k ∈ [−2²³, 2²³): on the GPU φ in float32 and
    one MUFU.COS / MUFU.SIN each (no range reduction needed on [−π, π]); the interpreter evaluates the exact angle."""
    if FAST == MATH_ACCURATE:
        phi = k.to(tl.float64) * _TWO_PI_2_24
        return tl.cos(phi).to(tl.float32), tl.sin(phi).to(tl.float32)
    else:
        phi = k.to(tl.float32) * _TWO_PI_2_24
        if FAST == MATH_GPU:
            return libdevice.fast_cosf(phi), libdevice.fast_sinf(phi)
        else:
            p = phi.to(tl.float64)
            return (tl.cos(p) + _TRIG_ERR).to(tl.float32), (tl.sin(p) + _TRIG_ERR).to(tl.float32)


@triton.jit
def _check_math(FAST: tl.constexpr):
    tl.static_assert(FAST == MATH_ACCURATE or FAST == MATH_GPU or FAST == MATH_EMULATED,
                     "unknown math mode (kernels/common.py MATH_*)")


# ------------------------------------------------------------------------------------------------
# the control flow every mode runs
# ------------------------------------------------------------------------------------------------
@triton.jit
def _words(seed, counter, STREAM: tl.constexpr, FAST: tl.constexpr = MATH_ACCURATE):
    """Philox4x32-10 of the counters (lo32(counter), hi32(counter), STREAM, 0) under the key (lo32(seed),
    hi32(seed)): the contract's integers."""
    c = counter.to(tl.int64).to(tl.uint64, bitcast=True)
    return _philox(seed, (c & 0xFFFFFFFF).to(tl.uint32), (c >> 32).to(tl.uint32), STREAM, FAST)


@triton.jit
def _words_from(seed, g0, j, STREAM: tl.constexpr, FAST: tl.constexpr):
    """_words of the counters g0 + j (g0 an int64 scalar, j a small int32 tensor)."""
    g = (g0 + j).to(tl.uint64, bitcast=True)
    return _philox(seed, (g & 0xFFFFFFFF).to(tl.uint32), (g >> 32).to(tl.uint32), STREAM, FAST)


@triton.jit
def _philox(seed, c0, c1, STREAM: tl.constexpr, FAST: tl.constexpr):
    """Philox4x32-10 of (c0, c1, STREAM, 0) (uint32 tensors) under the 64-bit ``seed``: per round two 32×32 → 64
    products (one IMAD.WIDE.U32 each on the GPU, where ``tl.philox`` issues IMAD.HI and IMAD) and two 3-way XORs."""
    s = seed.to(tl.uint64)
    k0 = (s & 0xFFFFFFFF).to(tl.uint32)
    k1 = (s >> 32).to(tl.uint32)
    c2 = c0 * 0 + STREAM
    c3 = c0 * 0
    for _ in tl.static_range(10):
        a_lo, a_hi = _mul_wide(c0, _ROUND_A, _MUL_A_ASM, FAST)
        b_lo, b_hi = _mul_wide(c2, _ROUND_B, _MUL_B_ASM, FAST)
        c0, c1, c2, c3 = b_hi ^ c1 ^ k0, b_lo, a_hi ^ c3 ^ k1, a_lo
        k0 = k0 + _KEY_A
        k1 = k1 + _KEY_B
    return c0, c1, c2, c3


@triton.jit
def _uniform(w):
    """U(w) = (w >> 8)·2⁻²⁴ ∈ [0, 1), exact in float32."""
    return (w >> 8).to(tl.int32).to(tl.float32) * _INV_2_24


@triton.jit
def _radius2(w, scale, FAST: tl.constexpr):
    """scale²·r² = −2 scale² ln U°(w), U°(w) = ((w >> 8) + 1)·2⁻²⁴ ∈ (0, 1].

    With x = (w >> 8) + 1 (exact in float32) = 2^e f, f ∈ [√½, √2): ln U° = (e − 24) ln 2 + ln f, and
    ln f = 2 atanh t = 2t (1 + t²/3 + t⁴/5 + t⁶/7), t = (f − 1)/(f + 1), |t| ≤ 0.1716 (truncation ≤ t⁸/9 < 1e-7
    relative). r² ≥ 0 exactly: e < 0 gives r² > 0.69, and e = 0 has f ≤ 1, so t ≤ 0 (f − 1 is exact). scale² is
    folded into the constants (per-program scalars), not multiplied per pair."""
    s2 = scale * scale
    x = ((w >> 8).to(tl.int32) + 1).to(tl.float32)
    ix = x.to(tl.int32, bitcast=True) + (_ONE_BITS - _SQRT_HALF_BITS)
    f = ((ix & 0x007FFFFF) + _SQRT_HALF_BITS).to(tl.float32, bitcast=True)
    t = (f - 1.0) * _rcp(f + 1.0, FAST)
    t2 = t * t
    # −2 (e − 24) ln 2, e − 24 = the exponent field − 151 taken exactly in integers: folding the bias into a float
    # constant would cancel ~209 against ~209 at U° → 1 and lose r² (~6e-6 absolute) where r² → 0
    e_term = ((ix >> 23) - (127 + 24)).to(tl.float32) * (s2 * _M2LN2)
    return t * (s2 * -4.0 + t2 * (s2 * -1.3333333333333333 + t2 * (s2 * -0.8 + t2 * (s2 * -0.5714285714285714)))) \
        + e_term


@triton.jit
def _pair(wa, wb, scale, FAST: tl.constexpr):
    """The parts of a Box–Muller pair before its square root: (scale² r², cos φ, sin φ), φ = θ − π (_box_muller)."""
    _check_math(FAST)
    r2 = _radius2(wa, scale, FAST)
    c, s = _cos_sin((wb >> 8).to(tl.int32) - (1 << 23), FAST)
    return r2, c, s


@triton.jit
def _group_parts(seed, g0, j, scale, STREAM: tl.constexpr, FAST: tl.constexpr):
    """The _pair parts of Philox groups g0 + j: (r² of lanes 0-1, r² of lanes 2-3, cos/sin of lanes 0, 1, 2, 3)."""
    w0, w1, w2, w3 = _words_from(seed, g0, j, STREAM, FAST)
    ra, c0, s0 = _pair(w0, w1, scale, FAST)
    rb, c1, s1 = _pair(w2, w3, scale, FAST)
    return ra, rb, c0, s0, c1, s1


@triton.jit
def _box_muller(wa, wb, scale, rho2_c, rho2_s, RHO: tl.constexpr, FAST: tl.constexpr):
    """−scale·(r cos θ, r sin θ), θ = 2π U(wb): NEGATED normals, computed as scale·r·(cos φ, sin φ) with
    φ = θ − π ∈ [−π, π) (no range reduction; cos θ = −cos φ, sin θ = −sin φ). Consumers subtract them, which folds
    the sign into their multiply-add. ``scale`` (≥ 0) rides on r² (_radius2). With RHO, each of the two normals
    is further scaled by √rho2 (≥ 0), inside its own square root: √(rho2·r²) is one MUFU.SQRT, where √rho2 · r
    would be two, and rho2 = 1 leaves the normal bit for bit as without it."""
    r2, c, s = _pair(wa, wb, scale, FAST)
    if RHO:
        return _sqrt(r2 * rho2_c, FAST) * c, _sqrt(r2 * rho2_s, FAST) * s
    else:
        r = _sqrt(r2, FAST)
        return r * c, r * s


@triton.jit
def _group(seed, g0, j, scale, p0, p1, p2, p3, RHO: tl.constexpr, STREAM: tl.constexpr, FAST: tl.constexpr):
    """The four normals of Philox groups g0 + j (lanes 0..3), times −scale (and √p_lane with RHO)."""
    w0, w1, w2, w3 = _words_from(seed, g0, j, STREAM, FAST)
    n0, n1 = _box_muller(w0, w1, scale, p0, p1, RHO, FAST)
    n2, n3 = _box_muller(w2, w3, scale, p2, p3, RHO, FAST)
    return n0, n1, n2, n3


@triton.jit
def _rows8(c0, c1, c2, c3, c4, c5, c6, c7):
    """[..., 2, 2, 2]: element 4h + 2j + k of a row of eight ← c_{4h+2j+k}; flattened, rows of 8 consecutive
    elements, each row held by one thread (the layout of a 16-byte fp16 / bf16 access)."""
    cos = tl.join(tl.join(c0, c4), tl.join(c2, c6))
    sin = tl.join(tl.join(c1, c5), tl.join(c3, c7))
    return tl.join(cos, sin)


@triton.jit
def _rows4(c0, c1, c2, c3):
    """[..., 2, 2]: element 2j + k of a row of four ← c_{2j+k} (a 16-byte fp32 access)."""
    return tl.join(tl.join(c0, c2), tl.join(c1, c3))


@triton.jit
def _split8(rho2, shape: tl.constexpr):
    """rho2 reshaped to ``shape`` + [2, 2, 2] and split into the eight lanes of _rows8 (its inverse)."""
    rc, rs = tl.split(tl.reshape(rho2, shape + (2, 2, 2)))
    rc0, rc1 = tl.split(rc)
    rs0, rs1 = tl.split(rs)
    p0, p4 = tl.split(rc0)
    p2, p6 = tl.split(rc1)
    p1, p5 = tl.split(rs0)
    p3, p7 = tl.split(rs1)
    return p0, p1, p2, p3, p4, p5, p6, p7


@triton.jit
def _split4(rho2, shape: tl.constexpr):
    """rho2 reshaped to ``shape`` + [2, 2] and split into the four lanes of _rows4 (its inverse)."""
    rc, rs = tl.split(tl.reshape(rho2, shape + (2, 2)))
    p0, p2 = tl.split(rc)
    p1, p3 = tl.split(rs)
    return p0, p1, p2, p3


@triton.jit
def _aligned(seed, g0, j, scale, rho2, shape: tl.constexpr, STREAM: tl.constexpr, FAST: tl.constexpr,
             ROW: tl.constexpr, RHO: tl.constexpr):
    """Rows of ROW (4 or 8) elements, row r ← groups g0 + j[r] (ROW = 4) or g0 + j[r] and g0 + j[r] + 1 (ROW = 8),
    as _rows4 / _rows8 lay them out (j: int32 of ``shape``; rho2: the rows' ratios with RHO)."""
    if ROW == 8:
        if RHO:
            p0, p1, p2, p3, p4, p5, p6, p7 = _split8(rho2, shape)
        else:
            p0, p1, p2, p3, p4, p5, p6, p7 = 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0
        a0, a1, a2, a3 = _group(seed, g0, j, scale, p0, p1, p2, p3, RHO, STREAM, FAST)
        b0, b1, b2, b3 = _group(seed, g0, j + 1, scale, p4, p5, p6, p7, RHO, STREAM, FAST)
        return _rows8(a0, a1, a2, a3, b0, b1, b2, b3)
    else:
        if RHO:
            p0, p1, p2, p3 = _split4(rho2, shape)
        else:
            p0, p1, p2, p3 = 1.0, 1.0, 1.0, 1.0
        n0, n1, n2, n3 = _group(seed, g0, j, scale, p0, p1, p2, p3, RHO, STREAM, FAST)
        return _rows4(n0, n1, n2, n3)


@triton.jit
def normal_block(seed, start, BLOCK: tl.constexpr, STREAM: tl.constexpr, ALIGNED4: tl.constexpr,
                 FAST: tl.constexpr, ROW: tl.constexpr = 4, scale=1.0, rho2=1.0, RHO: tl.constexpr = False):
    """−scale times the normals of flat element indices start .. start+BLOCK-1 of ``STREAM`` (float32), each also
    times √rho2 (a [BLOCK] tensor ≥ 0) with RHO: negated, so that a consumer's ``acc − z`` absorbs the Box–Muller
    sign (normal_fill negates back).

    Element i takes lane i % 4 of Philox group i // 4. With ALIGNED4 (start % 4 == 0) one Philox call serves four
    elements; the lanes are joined in registers into rows of ROW (4 or 8) consecutive elements, one or two groups,
    each row held by one thread. ROW = the elements of a 16-byte access (8 for fp16 / bf16, 4 for fp32) lays the
    noise out exactly as the kernel's vector loads lay out their data, so no shuffle through shared memory is needed
    (rho2 is split into lanes by the inverse joins). Without ALIGNED4: :func:`_shifted`.
    """
    if ALIGNED4:
        R: tl.constexpr = BLOCK // ROW
        j = (ROW // 4) * tl.arange(0, R)
        return tl.reshape(_aligned(seed, start // 4, j, scale, rho2, (R,), STREAM, FAST, ROW, RHO), (BLOCK,))
    else:
        return _shifted(seed, start, BLOCK, STREAM, FAST, ROW, scale, rho2, RHO)


@triton.jit
def _shift_rows(s, l0, l1, l2, l3, l4, l5, l6, l7, l8, l9, l10, ROW: tl.constexpr):
    """Rows of ROW elements (_rows8 / _rows4, flattened), element k of a row ← l_{k+s}: a branch per value of the
    program's s (a switch on the GPU), each a compile-time lane order, so register moves and no per-element select.
    Rows of 4 read l0..l6."""
    if ROW == 8:
        if s == 0:
            rows = _rows8(l0, l1, l2, l3, l4, l5, l6, l7)
        elif s == 1:
            rows = _rows8(l1, l2, l3, l4, l5, l6, l7, l8)
        elif s == 2:
            rows = _rows8(l2, l3, l4, l5, l6, l7, l8, l9)
        else:
            rows = _rows8(l3, l4, l5, l6, l7, l8, l9, l10)
    else:
        if s == 0:
            rows = _rows4(l0, l1, l2, l3)
        elif s == 1:
            rows = _rows4(l1, l2, l3, l4)
        elif s == 2:
            rows = _rows4(l2, l3, l4, l5)
        else:
            rows = _rows4(l3, l4, l5, l6)
    return tl.reshape(rows, (l0.shape[0] * ROW,))


@triton.jit
def _next_row(v, h, nxt, last):
    """v's value in the next row (another thread's: a gather through shared memory, or a warp shuffle), h in the
    last row."""
    return tl.where(last, h, tl.gather(v, nxt, 0))


@triton.jit
def _shifted(seed, start, BLOCK: tl.constexpr, STREAM: tl.constexpr, FAST: tl.constexpr, ROW: tl.constexpr, scale,
             rho2, RHO: tl.constexpr):
    """normal_block where s = start % 4 is known only on the device (a sample offset or per-sample seeds read from a
    tensor, with D % 4 ≠ 0). Element k of row r (ROW consecutive elements, laid out as the aligned rows) has
    counter 4 g0 + ROW·r + s + k, g0 = start // 4: it is element s + k of the list L_r = (the lanes of the row's
    own groups g0 + (ROW/4)·r + …, then lanes 0..2 of the next row's first group).

    - The rows' own groups are drawn as in the aligned tile (the same Philox and Box–Muller work).
    - The next row's first group is another thread's: one gather of three [R] lane tensors (on the GPU 4 STS + 4
      LDS per thread and lane, through 4 KB of shared memory at BLOCK = 8192); the last row takes group
      g0 + BLOCK/4 instead, drawn once per program (the one group a shifted tile adds: 1/32 of a thread's
      groups at 32 elements per thread).
    - The shift by s is a branch on s (uniform over the program; a ``BRX`` switch on the GPU) into four
      compile-time lane orders (_shift_rows): register moves, no per-element select.
    - With RHO (a mixture's per-element variance ratio, which rides inside the square root of each element's own
      normal) the lanes are shifted before their square roots, as (r², cos / sin) parts (five gathered lanes):
      each element then takes √(r²·ρ²)·cos of its own pair and its own ρ², as ``normal_at`` does.

    Bit for bit the normals of the per-element path (and of the aligned tile that starts s elements earlier):
    tests/test_philox_math.py. Static cost on sm_90a: benchmarks/RESULTS.md (issue 19, the device offset)."""
    R: tl.constexpr = BLOCK // ROW
    g0 = start >> 2
    s = (start & 3).to(tl.int32)
    r = tl.arange(0, R)
    ja = (ROW // 4) * r
    if RHO:
        hr0, hr1, hc0, hs0, hc1, _ = _group_parts(seed, g0 + BLOCK // 4, 0, scale, STREAM, FAST)
        ra0, ra1, ac0, as0, ac1, as1 = _group_parts(seed, g0, ja, scale, STREAM, FAST)
        nxt = (r + 1) & (R - 1)
        last = r == R - 1
        nr0 = _next_row(ra0, hr0, nxt, last)
        nr1 = _next_row(ra1, hr1, nxt, last)
        nc0 = _next_row(ac0, hc0, nxt, last)
        ns0 = _next_row(as0, hs0, nxt, last)
        nc1 = _next_row(ac1, hc1, nxt, last)
        if ROW == 8:
            rb0, rb1, bc0, bs0, bc1, bs1 = _group_parts(seed, g0, ja + 1, scale, STREAM, FAST)
            r2 = _shift_rows(s, ra0, ra0, ra1, ra1, rb0, rb0, rb1, rb1, nr0, nr0, nr1, ROW)
            cs = _shift_rows(s, ac0, as0, ac1, as1, bc0, bs0, bc1, bs1, nc0, ns0, nc1, ROW)
        else:
            r2 = _shift_rows(s, ra0, ra0, ra1, ra1, nr0, nr0, nr1, nr1, nr1, nr1, nr1, ROW)
            cs = _shift_rows(s, ac0, as0, ac1, as1, nc0, ns0, nc1, nc1, nc1, nc1, nc1, ROW)
        return _sqrt(r2 * rho2, FAST) * cs
    else:
        h0, h1, h2, _ = _group(seed, g0 + BLOCK // 4, 0, scale, 1.0, 1.0, 1.0, 1.0, False, STREAM, FAST)
        a0, a1, a2, a3 = _group(seed, g0, ja, scale, 1.0, 1.0, 1.0, 1.0, False, STREAM, FAST)
        nxt = (r + 1) & (R - 1)
        last = r == R - 1
        n0 = _next_row(a0, h0, nxt, last)
        n1 = _next_row(a1, h1, nxt, last)
        n2 = _next_row(a2, h2, nxt, last)
        if ROW == 8:
            b0, b1, b2, b3 = _group(seed, g0, ja + 1, scale, 1.0, 1.0, 1.0, 1.0, False, STREAM, FAST)
            return _shift_rows(s, a0, a1, a2, a3, b0, b1, b2, b3, n0, n1, n2, ROW)
        else:
            return _shift_rows(s, a0, a1, a2, a3, n0, n1, n2, n2, n2, n2, n2, ROW)


@triton.jit
def normal_at(seed, i, STREAM: tl.constexpr, FAST: tl.constexpr, scale=1.0, rho2=1.0, RHO: tl.constexpr = False):
    """−scale (·√rho2 with RHO) times the normals of arbitrary flat element indices i (int64): each element computes
    its own group i // 4 and takes lane i % 4 (4x the Philox work of an aligned block, same numbers)."""
    w0, w1, w2, w3 = _words(seed, i >> 2, STREAM, FAST)
    lane = i & 3
    hi = lane >= 2
    n_cos, n_sin = _box_muller(tl.where(hi, w2, w0), tl.where(hi, w3, w1), scale, rho2, rho2, RHO, FAST)
    return tl.where((lane & 1) == 0, n_cos, n_sin)


@triton.jit
def uniform_at(seed, index, STREAM: tl.constexpr, FAST: tl.constexpr = MATH_ACCURATE):
    """One uniform for ``index`` of ``STREAM`` (word 0 of its Philox block)."""
    w0, _, _, _ = _words(seed, index, STREAM, FAST)
    return _uniform(w0)


@triton.jit(do_not_specialize=["seed"])  # a seed of 1 must not become a compile-time constant
def _normal_fill_kernel(out_ptr, n, seed, start, STREAM: tl.constexpr, BLOCK: tl.constexpr,
                        ALIGNED4: tl.constexpr, FAST: tl.constexpr, ROW: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    z = -normal_block(seed, start + pid * BLOCK, BLOCK, STREAM, ALIGNED4, FAST, ROW)
    tl.store(out_ptr + offs, z.to(out_ptr.dtype.element_ty), mask=offs < n)


def normal_fill(out, seed: int, stream: int, start: int = 0, block: int = 4096, row: int = 4):
    """Fills the contiguous tensor ``out`` with the Philox normals of elements start.. of ``stream`` (``row``:
    normal_block's rows, 4 or 8 elements per thread; the numbers do not depend on it)."""
    n = out.numel()
    if n == 0:
        return out
    _normal_fill_kernel[(triton.cdiv(n, block),)](out, n, seed, start, stream, block, start % 4 == 0,
                                                  fast_math(out.device), row)
    return out


@triton.jit(do_not_specialize=["seed"])
def _words_kernel(out_ptr, n, seed, start, STREAM: tl.constexpr, BLOCK: tl.constexpr, FAST: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    w0, w1, w2, w3 = _words(seed, start + offs, STREAM, FAST)
    m = offs < n
    tl.store(out_ptr + offs * 4 + 0, w0.to(tl.int32, bitcast=True), mask=m)
    tl.store(out_ptr + offs * 4 + 1, w1.to(tl.int32, bitcast=True), mask=m)
    tl.store(out_ptr + offs * 4 + 2, w2.to(tl.int32, bitcast=True), mask=m)
    tl.store(out_ptr + offs * 4 + 3, w3.to(tl.int32, bitcast=True), mask=m)


def philox_words(out, seed: int, stream: int, start: int = 0, block: int = 1024):
    """out [n, 4] int32 ← the Philox words of counters start..start+n-1 (the integers of the RNG contract)."""
    n = out.shape[0]
    _words_kernel[(triton.cdiv(n, block),)](out, n, seed, start, stream, block, fast_math(out.device))
    return out


@triton.jit
def _box_muller_kernel(wa_ptr, wb_ptr, out_ptr, n, FAST: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = offs < n
    wa = tl.load(wa_ptr + offs, mask=m, other=0).to(tl.uint32, bitcast=True)
    wb = tl.load(wb_ptr + offs, mask=m, other=0).to(tl.uint32, bitcast=True)
    n_cos, n_sin = _box_muller(wa, wb, 1.0, 1.0, 1.0, False, FAST)
    tl.store(out_ptr + 2 * offs, -n_cos, mask=m)  # _box_muller's normals are negated
    tl.store(out_ptr + 2 * offs + 1, -n_sin, mask=m)


def box_muller(wa, wb, out, block: int = 4096):
    """out [n, 2] float32 ← BoxMuller(wa[i], wb[i]) of the int32 word pairs: the contract's normal transform at
    chosen words (how tests/test_philox_math.py evaluates it at adversarial inputs)."""
    n = wa.numel()
    _box_muller_kernel[(triton.cdiv(n, block),)](wa, wb, out, n, fast_math(out.device), block)
    return out


@triton.jit
def normal_rows(seed, row_start, COLS: tl.constexpr, STREAM: tl.constexpr, ALIGNED4: tl.constexpr,
                FAST: tl.constexpr, ROW: tl.constexpr = 4, scale=1.0, rho2=1.0, RHO: tl.constexpr = False):
    """−scale (·√rho2 with RHO, an [R, COLS] tensor ≥ 0) times the normals of flat element indices row_start +
    [0, COLS) for each row (row_start: an [R, 1] int64 tensor), as an [R, COLS] tensor: a tile whose rows are runs
    of the flat index (an image plane's rows, a stack of planes, the channels of a channels_last pixel tile); or,
    with ALIGNED4, of runs of four (row_start [R, COLS // 4]: each run's first index, ROW = 4: a tile of several
    planes side by side, whose rows change plane every N columns). With
    ALIGNED4 (every row_start % 4 == 0) one Philox call serves four elements of a row, joined in registers into
    runs of ROW (4 or 8) elements per thread exactly as normal_block joins them; otherwise each element draws its
    own group."""
    R: tl.constexpr = row_start.shape[0]
    if ALIGNED4 and row_start.shape[1] > 1:  # a start per run of four: [R, COLS // 4], each a multiple of 4
        rows = _aligned(seed, row_start >> 2, 0, scale, rho2, (R, COLS // 4), STREAM, FAST, 4, RHO)
        return tl.reshape(rows, (R, COLS))
    elif ALIGNED4:
        j = (ROW // 4) * tl.arange(0, COLS // ROW)[None, :]
        rows = _aligned(seed, row_start >> 2, j, scale, rho2, (R, COLS // ROW), STREAM, FAST, ROW, RHO)
        return tl.reshape(rows, (R, COLS))
    else:
        return normal_at(seed, row_start + tl.arange(0, COLS)[None, :], STREAM, FAST, scale, rho2, RHO)
