"""The fused gDDIM step for blurring diffusion: image planes through the DCT and back on tensor cores, one pass
over memory.

Per plane (b, c) of an N×N image: Y = A ⊙ (V X Vᵀ) + Σ_j B_j ⊙ (V E_j Vᵀ) + S ⊙ n, out = Vᵀ Y V (V the orthonormal
DCT-II matrix; A, B_j, S the per-frequency planes of the sample's table row; n standard normal in frequency space:
Philox stream 0 at the flat index of [B, C, N, N], or a caller's tensor). Each buffer is read once and ``out``
written once. The maths is stated in ``gddim/reference.py``. Three layouts of the same products, all ``tl.dot``
(the tile's FORM: KRON, GRID, PLANE):

- N ≤ KRON_MAX (N² ≤ 64; N ≠ 7, :func:`kron_form`): a program holds PB (:func:`kron_rows`) rows of G planes each
  (G·N² ≤ T, zero-padded; T = 16 for N ≤ 4, 64 above: :func:`tile_size`), and the 2-D transform of a row is one
  product with the block-diagonal Kronecker matrix, G copies of W[(i, j), (u, v)] = V[u, i] V[v, j]: Y = X W,
  out = Y Wᵀ (every tile dimension ≥ 16, as ``tl.dot`` needs, with little padding even for N = 1 or 2; N = 1 is the
  identity, no product);
- the grid (:func:`grid_form`: one or two buffers at N = 3, 6, 7, 9 … 12, 17 … 32, two or three at N = 5, 6, 8,
  three at N = 17 … 32,
  on wgmma GPUs, launches of at least a tile of planes but where the other form is the Kronecker rows or (three
  buffers) the sliced plane: :func:`launches_grid`): GR × GC planes side by side on a [64, 32] tile, V_L X V_Rᵀ with
  block-diagonal V_L (GR copies of V) and V_R (GC copies), on wgmma: the tile is 42-100 % planes where a Kronecker
  row filled 56 % (N = 3, 6) or one plane a program padded to [16, 16] or [32, 32] filled 19-100 % on mma.sync; a
  program takes up to 4 tiles in turn (:func:`tiles_per_program`; one with two or three buffers, or a timestep per
  sample); the buffers' first products two at a time, as one of twice the width (_pair_left), and V_L's parts
  through TMA with one tile a program on sm_90 (:func:`grid_tma`); 16-bit data read in runs of four and written
  in pairs; an invalid timestep of the launch through a NaN row of the grid's table (_blur_grid_kernel);
- otherwise: one plane per program on a [T, T] tile (T = next power of two ≥ N), V X Vᵀ as two products, in one of
  two forms (:func:`plane_sliced`):
  - whole operands (_step): every product takes its [T, T] operands from registers; up to two buffers (orders 0 and 1,
    and order 2 at T = 16; one at T = 64 but on sm_80) this holds without spill, and at T = 64 within 80 % of its
    roofline. At T = 64 two and three buffers hold too where N is a multiple of 16 (48, 64) on sm_90 (two on sm_100),
    with Y in a scratch plane of the program's own between the buffers' products (:func:`plane_y_scratch`), not in
    registers. At T = 16 a program takes up to 16 planes in turn (:func:`planes_per_program`), reading the transform's
    parts once, and computes Y transposed, so that the inverse takes it from the accumulator's registers
    (:func:`plane_transposed_y`);
  - sliced (_plane_step), for three buffers at T = 32 and two or three at T = 64 (where the grid does not take them:
    T = 64, sm_80, fp64; not at N = 48, 64 on sm_90, nor with two buffers there on sm_100), and for one at T = 64 on
    sm_80 (8 warps), where the whole-operand form spilled (three buffers: 24–568 B at sm_90a for N = 17 … 64; two at
    T = 64: 72–228 B; one on sm_80: 1.8-2.3 KB; with Y in scratch at other N than 48 and 64: 8-180 B, on sm_100a with
    three buffers 8 B; benchmarks/RESULTS.md, issue 19): each product runs over slices of 16 of its contraction, up to
    N (:func:`sliced_extent`), loaded from memory just before their product (the plane's rows or columns, or
    those of a T×T scratch tile of the program's own where V X waits for Vᵀ), the buffers one at a time into Y,
    which waits in a second scratch tile: the registers hold one accumulator and one slice's operands, never a whole
    operand. The scratch tiles (2·T² values a plane) are written and read back by the same program, from L2; the
    price is memory-instruction work (the launch is LSU-bound), paid only where the other form spills. On wgmma GPUs at
    T = 64 with tf32x3 (:func:`plane_held`) only each transform's first product runs by slices: its accumulator, held in
    registers, is the whole first operand of the second (as in the whole-operand form, _kperm), which spares the staging
    tile and its round trip through memory (one scratch tile, Y's, a plane).

In the grid and the whole-operand plane forms the second product of each transform takes the first's accumulator as
its first operand, with the columns of each group of eight in the order a tf32 accumulator holds them (_kperm) and
the right matrix's rows in that order too (basis_parts with ``kperm``): the same sums, taken in another order, and
no instruction to move the accumulator into the operand's registers (it took a SEL, a SHFL and an FSEL an element).
The Kronecker rows 16 wide take Y (the forward product's accumulator, scaled and summed in its registers) into the
inverse product Y Wᵀ the same way, Wᵀ's rows in that order (:func:`kron_kperm`). The matrices that are only ever a
product's right operand (the grid's V_R, one plane's right matrix, the Kronecker rows' W and Wᵀ) are stored
transposed (basis_parts with ``bt``) and read along their contraction, so that they reach shared memory K-major in
16-byte stores (_basis_part with BT).

Precision. fp64 runs on the fp64 tensor cores (DMMA). Every other dtype computes in fp32 with three tf32
products per fp32 product (tf32x3): each operand is split into a high and a low part, each tf32-exact (11
significant bits), and a·b ≈ a_lo·b_hi + a_hi·b_lo + a_hi·b_hi (the products of tf32 values are exact in the fp32
accumulator). The transform matrices' parts are rounded to nearest, once per basis tensor on the host
(:func:`basis_parts`), and read by each product from L2 (or once per program: _preload; at T = 64 with two or three
buffers on sm_90 through TMA descriptors, but three of 16-bit storage in the whole-operand plane, :func:`basis_tma`,
and the held sliced plane its table's planes and Y's tile too); the data's are split in
registers, hi = t rounded to nearest and lo = t − hi truncated to tf32 (its low 13 bits dropped; truncating hi too
biased the errors: 1.7·10⁻⁷ against 1.2·10⁻⁷ × the bound's scale at N = 3): the dropped a_lo·b_lo and lo's
truncation are ≤ 2⁻²² relative, and the measured errors are those of rounding both (benchmarks/RESULTS.md, "Blur
precision"). A tensor core reads a tf32 operand's top 19 bits of the fp32 register (sign, exponent, 10 mantissa
bits) and ignores the low 13 (triton's own tf32 products hand it fp32 registers unconverted, and its tf32x3 hands it
a − cvt.rna(a) as is): so on a GPU lo goes to it as it is and the tensor core truncates it, 3 instructions an
element on sm_80 (hi: add, mask; lo: subtract), where clearing the bits first took a fourth (_TC_READS_TF32), and 2
on sm_90 and later, whose ``cvt.rn.tf32.f32`` rounds hi in one instruction (ties to even, where the integer
rounding ties away from zero: the same half-unit bound; TF32X3 = TF32_RN, :func:`_tf32`). The
interpreter's tl.dot multiplies whole fp32 values, so there the kernels clear them themselves: the CPU tests run the
products the tensor cores run, tf32-exact parts multiplied exactly (test_gddim_ops.py), and check the split
arithmetic too. Where a tile fills 255 registers either way and this split's schedule spilled (a whole [64, 64]
plane, a Kronecker tile of three buffers at T = 64) lo is rounded too (ROUND), as before. A 16-bit buffer needs no
split: fp16 (11 significant bits) and bf16 (8) values are tf32 values, so that hi = t and lo = 0, and the first
product of its transform runs two tf32 products, not three (EXACT, _mm_slice): the one left out adds exact zeros,
so the numbers are the same, bit for bit, as those of the same values in fp32 with Y in the same orientation
(test_gddim_ops.py; the launch's may differ: plane_transposed_y), for a third less of that product's tensor work
and no split or low-part operand to stage (benchmarks/RESULTS.md, issue 19).
"""
import weakref

import torch
import triton
import triton.language as tl

from .. import contract
from .philox import normal_block, normal_rows
from .common import INTERPRETING, NOISE_NONE, NOISE_PHILOX, NOISE_TENSOR, STREAM_NOISE, check_noise_code, \
    fast_math, launch_scalar, sample_row

_PLANES = tl.constexpr(contract.BLUR_PLANES)  # A, B_0..B_2, S per step (contract.py)
_TF32_HALF = tl.constexpr(0x1000)   # half a unit of the 13 bits below a tf32 mantissa
_TF32_MASK = tl.constexpr(0xFFFFE000)
TF32_RNA, TF32_RN = (tl.constexpr(v) for v in (1, 2))  # TF32X3's rounding (_tf32); 0: fp64, no split
# whether tl.dot's tf32 operands are read by a tensor core (a GPU compile), which takes an fp32 register's sign,
# exponent and top 10 mantissa bits and ignores the low 13; the interpreter's tl.dot multiplies the whole fp32 value
_TC_READS_TF32 = tl.constexpr(not INTERPRETING)
# the interpreter's tl.trans is numpy's transposed view, and numpy's matmul summed such an operand in another order at
# some row counts (the Kronecker rows' bits moved with their height): there a transposed block is copied in C order
_C_ORDER = tl.constexpr(INTERPRETING)
_CHECK_HINTS = tl.constexpr(INTERPRETING)  # the compiler hints' facts checked where the kernels run on the CPU
# a GPU compile: the threads' global stores reach a TMA copy's reads only through a proxy fence (_async_proxy_fence);
# the interpreter runs every access in order
_PROXY_FENCE = tl.constexpr(not INTERPRETING)
_PTX = tl.constexpr(not INTERPRETING)  # inline PTX, which the interpreter refuses (_tf32 emulates it there)
_KC = tl.constexpr(16)  # the per-plane products' slices of the contraction (tl.dot's smallest K)
# the layouts of a tile (FORM): one plane (padded to T×T); planes as rows of a Kronecker product; N = 1 (the identity);
# planes side by side on a grid (V_L X V_Rᵀ with block-diagonal V_L, V_R: bp is the pair of their parts)
PLANE, KRON, IDENTITY, GRID = (tl.constexpr(v) for v in range(4))

MAX_SIZE = 64  # largest N: one [64, 64] plane per program
KRON_MAX = 8   # N ≤ 8: planes as rows of one Kronecker product
KRON_ROWS = 64  # rows of a Kronecker tile: [64, 64], one warpgroup's wgmma tile
KRON_ROWS_SMALL = 16  # ... where that tile spills (kron_rows)
KRON_T_SMALL = 16  # the Kronecker rows' width for N ≤ 4 (tile_size)


@triton.jit
def _tf32(t, MODE: tl.constexpr, KEEP_NAN: tl.constexpr = False):
    """t rounded to tf32 (11 significant bits), as fp32 with its low 13 bits zeros: exact on the tensor cores; within
    half a tf32 unit either way. MODE TF32_RN: to nearest, ties to even, by ``cvt.rn.tf32.f32`` (sm_90 and later: one
    F2FP instruction, where the integer rounding below takes two; emulated under the interpreter, bit for bit but a
    NaN's payload: a NaN stays NaN); TF32_RNA (sm_80, which has no cvt.rn.tf32; and both parts where lo is rounded
    too, ROUND in _mm_slice): ties away from zero, half a unit added to the bits and the low 13 cleared. That
    addition carries a NaN whose mantissa is all ones, a GPU's canonical NaN 0x7FFFFFFF, into the sign: -0.0. As an
    operand's high part that is harmless (lo = t - hi is still NaN); a rounded lo (ROUND) takes KEEP_NAN, which
    clamps those positive NaNs below the carry (one instruction more): a NaN in the data, or the one an invalid row
    adds to a plane's Y, reaches the output on a GPU (under the interpreter numpy's NaN, 0x7FC00000, survives either
    way). A negative NaN at the top (0xFFFFF000 and up: the canonical NaN with its sign flipped) still wraps to +0.0."""
    u = t.to(tl.uint32, bitcast=True)
    if MODE == TF32_RN:
        if _PTX:
            return tl.inline_asm_elementwise("cvt.rn.tf32.f32 $0, $1;", "=r,r", [t], dtype=tl.float32, is_pure=True,
                                             pack=1)
        else:  # half a unit less one, and the one where the last kept bit (13) is 1: ties go to the even neighbour
            r = ((u + (_TF32_HALF - 1) + ((u >> 13) & 1)) & _TF32_MASK).to(tl.float32, bitcast=True)
            return tl.where(t != t, t, r)
    else:
        if KEEP_NAN:  # the positive NaNs that the half unit would carry into the sign (0x7FFFF000 and up, a GPU's
            # canonical NaN among them) clamped below the carry: one integer min (a compare and a select spilled
            # 56 B on sm_90a at N = 40 and 56 with a timestep per sample)
            u = tl.minimum(u.to(tl.int32, bitcast=True), 0x7FFFEFFF).to(tl.uint32, bitcast=True)
        return ((u + _TF32_HALF) & _TF32_MASK).to(tl.float32, bitcast=True)


@triton.jit
def _trunc32(t):
    """t truncated to tf32 (its low 13 bits cleared; one instruction): exact on the tensor cores."""
    return (t.to(tl.uint32, bitcast=True) & _TF32_MASK).to(tl.float32, bitcast=True)


@triton.jit
def _t(t):
    """tl.trans(t); under the interpreter copied in C order (_C_ORDER)."""
    out = tl.trans(t)
    if _C_ORDER:
        out = tl.reshape(tl.reshape(out, [t.shape[0] * t.shape[1]]), [t.shape[1], t.shape[0]])
    return out


@triton.jit
def _basis_part(bp, part, which, T: tl.constexpr, R0, C0, R: tl.constexpr, C: tl.constexpr, PRE: tl.constexpr,
                BT: tl.constexpr = False):
    """The [R, C] block at row R0, column C0 of part ``part`` of matrix ``which`` (0: V or W, 1: its transpose) of
    the [PARTS, 2, T, T] basis parts; PRE: ``bp`` holds the whole matrices already (:func:`_preload`). BT: the
    parts are stored transposed (basis_parts with ``bt``), for a right operand: its [C, R] block of the transpose is
    read along the contraction (K = R) and transposed in registers, so that the operand goes to shared memory
    K-major, as wgmma's tf32 operands are, in 16-byte stores (read as stored, a thread's four consecutive columns
    became four scalar stores: 1-5 % fewer instructions an element on the sm_90a blur rows, RESULTS.md)."""
    if PRE:
        out = bp[which][part]
    elif isinstance(bp, tl.core.tensor_descriptor_base):  # a TMA descriptor of the parts (basis_tma), [R, C] blocks
        if BT:                                            # ([C, R] with BT): copied to shared memory by the TMA unit
            out = _t(bp.load([(part * 2 + which) * T + C0, R0]))
        else:
            out = bp.load([(part * 2 + which) * T + R0, C0])
    elif BT:
        i = C0 + tl.arange(0, C)[:, None]
        j = R0 + tl.arange(0, R)[None, :]
        out = _t(tl.load(bp + ((part * 2 + which) * T + i) * T + j))
    else:
        i = R0 + tl.arange(0, R)[:, None]
        j = C0 + tl.arange(0, C)[None, :]
        out = tl.load(bp + ((part * 2 + which) * T + i) * T + j)
    return out


@triton.jit
def _mm_slice(acc, t, bp, k0, which, LEFT: tl.constexpr, TF32X3: tl.constexpr, T: tl.constexpr,
              PRE: tl.constexpr = False, ROUND: tl.constexpr = False, EXACT: tl.constexpr = False,
              BT: tl.constexpr = False):
    """acc + basis[which][:, k0:k0+K] @ t (LEFT: t the rows k0 … k0+K-1 of the data, [K, T]) or acc + t @
    basis[which][k0:k0+K, :] (t the columns k0 …, [T, K]): tf32x3 on fp32 tiles (module docstring; the small cross
    products first; t's low part truncated, or with ROUND rounded), one product in the tile's type (fp64) otherwise.
    PRE: ``bp`` holds the whole matrices' parts (_preload); BT: stored transposed (_basis_part; right operands).
    EXACT: t's values are tf32 values already (a 16-bit buffer's: :func:`_tf32_exact`), so that its split is hi = t,
    lo = 0: the product with lo, whose terms are all exact zeros, and the split are left out: the same sums, bit for
    bit, in two tf32 products."""
    K: tl.constexpr = t.shape[0] if LEFT else t.shape[1]
    if TF32X3 and EXACT:  # the sums below with hi = t and the (zero) lo product left out
        if _CHECK_HINTS:  # t's bits below tf32 are zeros: the interpreter's products would not show them dropped
            tl.assume((t.to(tl.uint32, bitcast=True) & (_TF32_MASK ^ 0xFFFFFFFF)) == 0)
        if LEFT:
            acc = tl.dot(_basis_part(bp, 1, which, T, 0, k0, T, K, PRE), t, acc, input_precision="tf32")
            return tl.dot(_basis_part(bp, 0, which, T, 0, k0, T, K, PRE), t, acc, input_precision="tf32")
        else:
            acc = tl.dot(t, _basis_part(bp, 1, which, T, k0, 0, K, T, PRE, BT), acc, input_precision="tf32")
            return tl.dot(t, _basis_part(bp, 0, which, T, k0, 0, K, T, PRE, BT), acc, input_precision="tf32")
    elif TF32X3:
        if ROUND:  # the integer rounding, either mode: with cvt.rn this schedule spilled (28 B at N = 48, sm_90a);
            hi = _tf32(t, TF32_RNA)  # a NaN kept in lo (_tf32)
            lo = _tf32(t - hi, TF32_RNA, True)
        elif _TC_READS_TF32:  # a GPU: the tensor core reads lo's tf32 bits, its low 13 ignored (module docstring)
            hi = _tf32(t, TF32X3)
            lo = t - hi
        else:  # the interpreter multiplies in full fp32: lo truncated here, as the tensor core reads it
            hi = _tf32(t, TF32X3)
            lo = _trunc32(t - hi)
        if LEFT:
            b_hi = _basis_part(bp, 0, which, T, 0, k0, T, K, PRE)
            b_lo = _basis_part(bp, 1, which, T, 0, k0, T, K, PRE)
            acc = tl.dot(b_hi, lo, acc, input_precision="tf32")
            acc = tl.dot(b_lo, hi, acc, input_precision="tf32")
            return tl.dot(b_hi, hi, acc, input_precision="tf32")
        else:
            b_hi = _basis_part(bp, 0, which, T, k0, 0, K, T, PRE, BT)
            b_lo = _basis_part(bp, 1, which, T, k0, 0, K, T, PRE, BT)
            # hi·b_lo first: b_hi's two products then run back to back on its shared-memory descriptors, which
            # ptxas juggled between uniform and general registers (the grid: 1-6 % fewer instructions, RESULTS.md)
            acc = tl.dot(hi, b_lo, acc, input_precision="tf32")
            acc = tl.dot(lo, b_hi, acc, input_precision="tf32")
            return tl.dot(hi, b_hi, acc, input_precision="tf32")
    else:
        if LEFT:
            return tl.dot(_basis_part(bp, 0, which, T, 0, k0, T, K, PRE), t, acc, input_precision="ieee",
                          out_dtype=acc.dtype)
        else:
            return tl.dot(t, _basis_part(bp, 0, which, T, k0, 0, K, T, PRE, BT), acc, input_precision="ieee",
                          out_dtype=acc.dtype)


@triton.jit
def _mm(t, bp, which, LEFT: tl.constexpr, TF32X3: tl.constexpr, T: tl.constexpr, PRE: tl.constexpr,
        ROUND: tl.constexpr, EXACT: tl.constexpr = False, BT: tl.constexpr = False):
    """basis[which] @ t (LEFT, t [T, C]) or t @ basis[which] (t [R, T]), t in registers (EXACT: _mm_slice)."""
    shape: tl.constexpr = (T, t.shape[1]) if LEFT else (t.shape[0], T)
    return _mm_slice(tl.zeros(shape, dtype=t.dtype), t, bp, 0, which, LEFT, TF32X3, T, PRE, ROUND, EXACT, BT)


@triton.jit
def _tf32_exact(ptr):
    """Whether a buffer's values are tf32 values once in fp32 (EXACT of _mm_slice): fp16 (11 significant bits) and
    bf16 (8) are, subnormals included (tf32: 11 significant bits, fp32's exponent range); fp32 is not."""
    return ptr.dtype.element_ty.primitive_bitwidth == 16


@triton.jit
def _kperm(t):
    """t [R, C] with the columns of each group of eight reordered, t'[:, 8b + 4e + c] = t[:, 8b + 2c + e] (c < 4, e < 2;
    the host's twin: :func:`kperm_order`), for a product t @ M whose M has its rows in the same order (basis_parts
    with ``kperm``): the same sum over the contraction, taken in another order. Why: t is an accumulator (the
    product before it) and becomes the first operand here, and in a tf32 mma / wgmma a thread's accumulator holds
    the columns 2c, 2c + 1 of each group of eight where its first operand wants c, c + 4: converting cost a SEL, a
    SHFL and an FSEL per element (~100 instructions a transform a thread, and 32 shuffles on the LSU). In this order
    the accumulator's registers already are the operand's: no instruction (counted: the grid's loop body at N = 17,
    1631 → 1344 instructions a tile)."""
    R: tl.constexpr = t.shape[0]
    C: tl.constexpr = t.shape[1]
    return tl.reshape(tl.permute(tl.reshape(t, (R, C // 8, 4, 2)), (0, 1, 3, 2)), (R, C))


@triton.jit
def _operand(acc, TF32X3: tl.constexpr):
    """The accumulator of a tile's first product as the first operand of its second: reordered (_kperm) for tf32x3,
    whose second matrix has its rows in that order; fp64 (DMMA) as is, its matrix too."""
    if TF32X3:
        return _kperm(acc)
    else:
        return acc


@triton.jit
def _fwd(t, bp, FORM: tl.constexpr, TF32X3: tl.constexpr, T: tl.constexpr, PRE: tl.constexpr,
         ROUND: tl.constexpr, EXACT: tl.constexpr = False):
    """The DCT of a tile (FORM): planes-as-rows X W, V X Vᵀ of one plane, or V_L X V_Rᵀ of a grid of planes (t
    [TR, TC]). The last two are two products, bp the parts of the left and of the right matrices (the right's rows in
    _kperm's order: _operand); for the Kronecker rows bp holds W's parts and Wᵀ's (_inv). PRE says they are held
    (_preload), but for the grid's V_L, [64, 64], read by each product (held for a program's tiles they took 255
    registers). N = 1's 1×1 DCT is the identity (V = [1]): no product. EXACT: t holds a 16-bit buffer's values
    (_tf32_exact): its product (the first) skips the split. (The grid's buffers take their first products two at a
    time: _pair_left.)"""
    if FORM == IDENTITY:
        return t
    elif FORM == KRON:
        return _mm(t, bp[0], 0, False, TF32X3, T, PRE, ROUND, EXACT, BT=True)
    else:
        first = _mm(t, bp[0], 0, True, TF32X3, t.shape[0], PRE and FORM == PLANE, ROUND, EXACT)
        return _fwd_right(first, bp, TF32X3, PRE, ROUND)


@triton.jit
def _fwd_right(first, bp, TF32X3: tl.constexpr, PRE: tl.constexpr, ROUND: tl.constexpr):
    """The second product of a DCT in two (_fwd): the first's accumulator times the right matrix's transpose."""
    return _mm(_operand(first, TF32X3), bp[1], 1, False, TF32X3, first.shape[1], PRE, ROUND, BT=True)


@triton.jit
def _pair_left(p, q, bp, TF32X3: tl.constexpr, ROUND: tl.constexpr, EXACT: tl.constexpr):
    """The grid's first products of two buffers' tiles p, q [R, C] as one: V_L [p | q] ([R, 2C]), returned as its
    halves V_L p and V_L q. Why: a wgmma instruction takes 8 of the contraction at any width up to 256, so that the
    two products of width C took twice the instructions (with their descriptors and fences) of this one of width 2C:
    6-13 % fewer instructions an element on the sm_90a grid rows with one tile a program, 2-6 % with four, 6-14 % on
    sm_100a (RESULTS.md, issue 19). Each
    column's sums are the same, in the same order; both halves of a row of the accumulator are in the same thread's
    registers, so that joining and splitting move no value. (Joined along a new last dimension and reshaped, [p | q]
    interleaved column by column, the compiler refused the operand's shared layout: hence the permute.)"""
    R: tl.constexpr = p.shape[0]
    C: tl.constexpr = p.shape[1]
    both = _mm(tl.reshape(tl.permute(tl.join(p, q), (0, 2, 1)), (R, 2 * C)), bp[0], 0, True, TF32X3, R, False, ROUND,
               EXACT)
    return tl.split(tl.permute(tl.reshape(both, (R, 2, C)), (0, 2, 1)))


@triton.jit
def _inv(y, bp, FORM: tl.constexpr, TF32X3: tl.constexpr, T: tl.constexpr, PRE: tl.constexpr,
         ROUND: tl.constexpr, KPERM: tl.constexpr = False, YT: tl.constexpr = 0):
    """The inverse DCT (FORM): Y Wᵀ, Vᵀ Y V, V_Lᵀ Y V_R (as _fwd), or the identity (N = 1). KPERM (the Kronecker
    rows, as the launcher's kron_kperm sets it): Y enters reordered (_kperm), Wᵀ's rows in that order. YT (one plane,
    :func:`plane_transposed_y`): ``y`` holds Yᵀ, whose transpose enters Vᵀ Y as its second operand as is (1) or
    reordered (2: Yᵀ's columns, so Y's rows, in _kperm's order, Vᵀ's columns in that order)."""
    if FORM == IDENTITY:
        return y
    elif FORM == KRON:
        return _mm(_operand(y, KPERM), bp[1], 1, False, TF32X3, T, PRE, ROUND, BT=True)
    else:
        if YT == 2:
            y = _t(_kperm(y))
        elif YT == 1:
            y = _t(y)
        first = _mm(y, bp[0], 1, True, TF32X3, y.shape[0], PRE and FORM == PLANE, ROUND)
        return _mm(_operand(first, TF32X3), bp[1], 0, False, TF32X3, y.shape[1], PRE, ROUND, BT=True)


@triton.jit
def _load(p, m2, LMASK: tl.constexpr):
    if LMASK:
        return tl.load(p, mask=m2, other=0.0)
    else:
        return tl.load(p)


@triton.jit
def _block(base, R0, C0, R: tl.constexpr, C: tl.constexpr, N):
    """Offsets (from ``base``) and mask of the [R, C] block at (R0, C0) of a tile over an N×N plane. ``base`` is
    part of each offset so that the blocks of different buffers are different values, computed where they are
    loaded, not one tile of offsets held in registers from the first load to the last."""
    i = R0 + tl.arange(0, R)[:, None]
    j = C0 + tl.arange(0, C)[None, :]
    return base + (i * N + j), (i < N) & (j < N)


@triton.jit
def _product(src, base, bp, which, N, LEFT: tl.constexpr, PLANE: tl.constexpr, TF32X3: tl.constexpr,
             T: tl.constexpr, CT: tl.constexpr, KN: tl.constexpr):
    """basis[which] @ S (LEFT) or S @ basis[which], S the N×N plane at src + base (PLANE: a buffer's, zero-padded
    to T×T by masked loads) or the T×T scratch tile at src, as T / _KC products of slices of the contraction, each
    loaded from memory just before its product: the registers hold the accumulator and one slice's operands, never
    a whole operand (a [64, 64] tf32x3 product's operands, held whole, spilled: benchmarks/RESULTS.md). Only the
    slices below KN (N rounded up to _KC: _blur_step_kernel): past N the contraction's terms are all zeros of the
    padded matrices."""
    acc = tl.zeros((T, T), dtype=CT)
    for k0 in tl.static_range(0, KN, _KC):
        tl.debug_barrier()  # the slice's loads after the last one's products (ptxas hoists them: spills on sm_80)
        if PLANE:
            if LEFT:
                off, m = _block(base, k0, 0, _KC, T, N)
            else:
                off, m = _block(base, 0, k0, T, _KC, N)
            t = tl.load(src + off, mask=m, other=0.0).to(CT)
        elif LEFT:
            t = tl.load(src + (k0 + tl.arange(0, _KC)[:, None]) * T + tl.arange(0, T)[None, :])
        else:
            t = tl.load(src + tl.arange(0, T)[:, None] * T + k0 + tl.arange(0, _KC)[None, :])
        acc = _mm_slice(acc, t, bp, k0, which, LEFT, TF32X3, T, EXACT=PLANE and _tf32_exact(src))
    return acc


@triton.jit
def _stage(scr, t, T: tl.constexpr):
    """Writes tile t to the program's T×T scratch tile, between barriers: every thread has read what the scratch
    held before, and reads what it holds now only after every thread wrote it. Its padding (rows and columns ≥ N)
    is zero or meets the zero rows and columns of the padded transform matrices (module docstring)."""
    tl.debug_barrier()
    tl.store(scr + _tile(T), t)
    tl.debug_barrier()


@triton.jit
def _padded(cp, k, R0, R: tl.constexpr, T: tl.constexpr):
    """Rows R0 … R0+R-1 of plane k of a table row zero-padded to T×T planes (constant offsets: no tile of them is
    held in registers)."""
    i = R0 + tl.arange(0, R)[:, None]
    return tl.load(cp + (k * T + i) * T + tl.arange(0, T)[None, :])


@triton.jit
def _tile(T: tl.constexpr):
    """Offsets of a T×T tile."""
    return tl.arange(0, T)[:, None] * T + tl.arange(0, T)[None, :]


@triton.jit
def _async_proxy_fence():
    """``fence.proxy.async.global`` (SASS FENCE.VIEW.ASYNC.G): this thread's global stores before it are seen by the
    TMA copies (the async proxy) that a CTA barrier after it orders after them, as the PTX memory model asks of a
    location written by the threads (the generic proxy) and then read by a copy; triton fences shared memory only. The
    interpreter runs every access in order: nothing there."""
    if _PROXY_FENCE:
        tl.inline_asm_elementwise("fence.proxy.async.global; mov.u32 $0, 0;", "=r", [], dtype=tl.int32, is_pure=False,
                                  pack=1)


@triton.jit
def _whole(src, k, T: tl.constexpr, WRITTEN: tl.constexpr = False):
    """Tile k of ``src`` = (pointer, descriptor, row): the [T, T] tile at pointer + k·T² (_padded), or, where the
    descriptor is a TMA descriptor (the held sliced plane's table and Y: basis_tma), its rows row + k·T …, which the TMA
    unit copies to shared memory and the threads read from there in the layout of the accumulator they meet (a tile the
    threads load goes through shared memory too, to change layout: a global load, a store and a load; RESULTS.md, issue
    19).
    WRITTEN: the program's threads stored the tile before (Y between its terms): each fences its stores for the copy
    (_async_proxy_fence), then a barrier orders every thread's before the copy's issue."""
    if isinstance(src[1], tl.core.tensor_descriptor_base):
        if WRITTEN:
            _async_proxy_fence()
            tl.debug_barrier()
        return src[1].load([src[2] + k * T, 0])
    else:
        return _padded(src[0], k, 0, T, T)


@triton.jit
def _plane_term(ptr, base, cp, k, bp, br, scr, ys, N, poison, TF32X3: tl.constexpr, T: tl.constexpr,
                CT: tl.constexpr, KN: tl.constexpr, HELD: tl.constexpr, tab=None, yd=None):
    """Y (the tile at ys, the scratch's last; ``poison`` for k = 0, where it is not yet written) += (plane k of the
    table row) ⊙ V X Vᵀ, X the buffer's plane at ptr + base: V X from X's rows, staged through the scratch's first tile,
    times Vᵀ; with HELD (:func:`plane_held`) V X held in registers, the whole first operand of its product with Vᵀ (its
    parts at br, rows in _kperm's order), no staging; and the table's plane read as ``tab``'s tile k, Y as ``yd``'s
    (_whole: through TMA descriptors where basis_tma, Y's after a proxy fence). Y stays in memory between the buffers (a
    tile in registers through every product spilled on mma.sync, and with HELD 96-148 B on sm_90a; 212 B with the
    descriptors)."""
    w = _product(ptr, base, bp, 0, N, True, True, TF32X3, T, CT, KN)  # V X
    if HELD:
        g = _mm(_operand(w, TF32X3), br, 1, False, TF32X3, T, False, False, BT=True)
        tl.debug_barrier()  # the table plane's loads below the products (registers, as in _term)
        f = _whole(tab, k, T).to(CT) * g
    else:
        _stage(scr, w, T)
        f = _padded(cp, k, 0, T, T).to(CT) * _product(scr, 0, bp, 1, N, False, False, TF32X3, T, CT, KN)
    y = ys + _tile(T)
    if k == 0:
        tl.store(y, f + poison)
    elif HELD:
        tl.store(y, _whole(yd, 0, T, True) + f)
    else:
        tl.store(y, tl.load(y) + f)


@triton.jit
def _plane_step(x_ptr, e0_ptr, e1_ptr, e2_ptr, z_ptr, out_ptr, scr, bp, br, seed, x_off, e0_off, e1_off, e2_off,
                z_off, p_off, cp, poison, N, NEPS: tl.constexpr, NOISE: tl.constexpr, ALIGNED4: tl.constexpr,
                FAST: tl.constexpr, TF32X3: tl.constexpr, T: tl.constexpr, CT: tl.constexpr, KN: tl.constexpr,
                HELD: tl.constexpr, ct=None, crow=0, yd=None, yrow=0):
    """One N×N plane (b, c): Y = A ⊙ V X Vᵀ + Σ_j B_j ⊙ V ε_j Vᵀ, the buffers one at a time (one transform's
    registers live at once), then out = Vᵀ (Y + S ⊙ n) V, the noise joining Y slice by slice as the first inverse
    product loads it (a slice of normals at a time, not a tile held through the products). ``scr``: the program's
    two T×T scratch tiles (a staged product, Y), one (Y) with HELD, where each transform's second product takes the
    first's accumulator from registers (_plane_term; its right matrix's parts at br). ``p_off``: the plane's flat
    index (the noise's counters, the output's offset); ``cp``: the sample's row of the padded table; ``poison`` (NaN
    for an invalid row) rides through every product. With HELD, ``ct`` and ``yd``: TMA descriptors of the padded table
    and of the scratch as [·, T] matrices (basis_tma; or unused pointers), the sample's table row at row ``crow`` of
    ct, Y's tile at ``yrow`` of yd."""
    ys = scr + (0 if HELD else T * T)  # Y's tile: the last of the plane's scratch
    tab = (cp, ct, crow)
    yt = (ys, yd, yrow)
    _plane_term(x_ptr, x_off, cp, 0, bp, br, scr, ys, N, poison, TF32X3, T, CT, KN, HELD, tab, yt)
    _plane_term(e0_ptr, e0_off, cp, 1, bp, br, scr, ys, N, poison, TF32X3, T, CT, KN, HELD, tab, yt)
    if NEPS > 1:
        _plane_term(e1_ptr, e1_off, cp, 2, bp, br, scr, ys, N, poison, TF32X3, T, CT, KN, HELD, tab, yt)
    if NEPS > 2:
        _plane_term(e2_ptr, e2_off, cp, 3, bp, br, scr, ys, N, poison, TF32X3, T, CT, KN, HELD, tab, yt)
    tl.debug_barrier()
    acc = tl.zeros((T, T), dtype=CT)  # Vᵀ (Y + S ⊙ n), by slices of Y's rows below KN
    for k0 in tl.static_range(0, KN, _KC):
        tl.debug_barrier()  # as in _product
        t = tl.load(ys + (k0 + tl.arange(0, _KC)[:, None]) * T + tl.arange(0, T)[None, :])
        if NOISE != NOISE_NONE:
            if NOISE == NOISE_PHILOX:  # normal_rows's normals come negated
                n = -normal_rows(seed, p_off + (k0 + tl.arange(0, _KC)[:, None]) * N, T, STREAM_NOISE, ALIGNED4,
                                 FAST).to(CT)
            else:
                off, m = _block(z_off, k0, 0, _KC, T, N)
                n = tl.load(z_ptr + off, mask=m, other=0.0).to(CT)
            t += _padded(cp, _PLANES - 1, k0, _KC, T).to(CT) * n  # zero outside the plane
        acc = _mm_slice(acc, t, bp, k0, 1, True, TF32X3, T)
    if HELD:  # (Vᵀ (Y + S ⊙ n)) V, the first product's accumulator the second's whole first operand
        out = _mm(_operand(acc, TF32X3), br, 0, False, TF32X3, T, False, False, BT=True)
    else:
        _stage(scr, acc, T)
        out = _product(scr, 0, bp, 0, N, False, False, TF32X3, T, CT, KN)
    tl.debug_barrier()
    off, m = _block(p_off, 0, 0, T, T, N)
    tl.store(out_ptr + off, out.to(out_ptr.dtype.element_ty), mask=m)


@triton.jit
def _check_runs(off, L: tl.constexpr):
    """Under the interpreter, where compiler hints do nothing: asserts what the caller hints for ``off`` [R, C]
    (tl.max_contiguous and tl.multiple_of by [1, L], written at the call site: a hint on a function's result does not
    reach its caller): whole runs of L along the columns, each contiguous, its first offset a multiple of L."""
    if _CHECK_HINTS:
        R: tl.constexpr = off.shape[0]
        C: tl.constexpr = off.shape[1]
        runs = tl.reshape(off, (R, C // L, L))
        first = tl.min(runs, axis=2, keep_dims=True)
        # (the interpreter's tl.assume asserts its condition; its device_assert needs a debug build)
        tl.assume((first % L == 0) & (runs - first == tl.arange(0, L)[None, None, :]))


@triton.jit
def _run_starts(ld):
    """[R, C // 4]: the first of each run of four columns of the [R, C] tile ``ld`` (its registers; no new tile of
    counters held through the products)."""
    R: tl.constexpr = ld.shape[0]
    C: tl.constexpr = ld.shape[1]
    first, _ = tl.split(tl.reshape(ld, (R, C // 4, 2, 2)))
    first, _ = tl.split(first)
    return first


@triton.jit
def _term(ptr, off, ld, cp, cld, m2, bp, LMASK: tl.constexpr, FORM: tl.constexpr, TF32X3: tl.constexpr,
          T: tl.constexpr, CT: tl.constexpr, PRE: tl.constexpr, ROUND: tl.constexpr, YT: tl.constexpr = 0):
    """(the table plane at cp + cld) ⊙ DCT(the buffer's tile at ptr + off + ld), both transposed with YT (_step);
    the plane loaded after the products (_planed)."""
    f = _fwd(_yt(_load(ptr + off + ld, m2, LMASK).to(CT), YT), bp, FORM, TF32X3, T, PRE, ROUND, _tf32_exact(ptr))
    return _planed(cp, cld, m2, LMASK, CT, f, YT)


@triton.jit
def _planed(cp, cld, m2, LMASK: tl.constexpr, CT: tl.constexpr, f, YT: tl.constexpr = 0):
    """(the table plane at cp + cld, transposed with YT) ⊙ f, the plane loaded where f is ready: loaded ahead of
    the products before it (whose barriers keep it here) it would hold registers through them."""
    return _yt(_load(cp + cld, m2, LMASK).to(CT), YT) * f


@triton.jit
def _yt(t, YT: tl.constexpr):
    """t transposed with YT (_step), else t."""
    if YT:
        return _t(t)
    else:
        return t


@triton.jit
def _noise_term(z_ptr, z_off, ld, cp, cld, cstride, flat, m2, seed, LMASK: tl.constexpr, NOISE: tl.constexpr,
                ALIGNED4: tl.constexpr, FAST: tl.constexpr, FORM: tl.constexpr, CT: tl.constexpr,
                YT: tl.constexpr = 0):
    """S ⊙ n on a tile (_step): the table's last plane times the noise (normal_rows' counters from ``flat``, or the
    noise tensor at z_off + ld), transposed with YT; zeros without noise."""
    if NOISE == NOISE_PHILOX and FORM == GRID:  # flat: the tile's first element; runs of four from the offsets
        n = -normal_rows(seed, flat + _run_starts(ld), ld.shape[1], STREAM_NOISE, ALIGNED4, FAST).to(CT)
    elif NOISE == NOISE_PHILOX and YT == 1:  # normal_rows's normals come negated
        # runs of 8 a thread: transposed, they reach the accumulator's layout through shared memory (stmatrix,
        # ldmatrix) where runs of 4 took shuffles and selects: 3-8 % fewer instructions an element (RESULTS.md)
        n = -normal_rows(seed, flat, ld.shape[1], STREAM_NOISE, ALIGNED4, FAST, 8).to(CT)
    elif NOISE == NOISE_PHILOX:
        n = -normal_rows(seed, flat, ld.shape[1], STREAM_NOISE, ALIGNED4, FAST).to(CT)
    elif NOISE == NOISE_TENSOR:
        n = _load(z_ptr + z_off + ld, m2, LMASK).to(CT)
    else:
        n = tl.zeros(ld.shape, CT)
    return _yt(_load(cp + (_PLANES - 1) * cstride + cld, m2, LMASK).to(CT) * n, YT)


@triton.jit
def _step(x_ptr, e0_ptr, e1_ptr, e2_ptr, z_ptr, out_ptr, bp, seed, x_off, e0_off, e1_off, e2_off, z_off, out_off,
          ld, pos, cp, cld, cstride, flat, m2, poison, LMASK: tl.constexpr, NEPS: tl.constexpr, NOISE: tl.constexpr,
          ALIGNED4: tl.constexpr, FAST: tl.constexpr, FORM: tl.constexpr, TF32X3: tl.constexpr, T: tl.constexpr,
          CT: tl.constexpr, PRE: tl.constexpr = False, KPERM: tl.constexpr = False, scr=None,
          YSCR: tl.constexpr = False, YT: tl.constexpr = 0):
    """out = inverse DCT of Y = A ⊙ F(x) + Σ_j B_j ⊙ F(ε_j) + S ⊙ n on a tile (whole operands). Loads at ``*_off + ld`` and
    ``cp + k·cstride + cld`` (the table's plane k; offsets, not a tile of pointers, which would hold two registers
    per element throughout) are masked by ``m2`` with LMASK; without it every tile position addresses a real
    element (a tile without padding, or padding positions clamped onto the plane: what they hold is multiplied by
    the zero rows and columns of the padded transform matrices). The store (``out_off + pos``) is masked by m2.
    ``flat``: the tile rows' first flat index (the noise's counters). ``poison`` (NaN for an invalid row) rides
    through every product of a plane (PLANE) and is added to the output of the other forms, whose tiles hold planes of
    several samples: a NaN in Y would reach every plane of the tile through the zero blocks of its matrices (None:
    none added; the grid with one timestep a launch reads a NaN row of its table instead, _blur_grid_kernel). KPERM:
    _inv's (the Kronecker rows). YSCR (one plane, two or three buffers: plane_y_scratch): Y goes to the plane's
    scratch at ``scr`` (N×N, at ld, masked) after the first two buffers' products and is read back before the
    inverse, so that no Y is held through the later buffers' products; with three buffers and noise the later
    buffers' sum joins it there before the noise too. YT (one plane: :func:`plane_transposed_y`): every term is
    computed transposed, Yᵀ = Aᵀ ⊙ V Xᵀ Vᵀ + …, the data's and the table's tiles transposed in registers as loaded,
    so that _inv takes Y into Vᵀ Y from the accumulator's registers."""
    # the split of the data (_mm_slice): lo truncated, but rounded where the tile fills 255 registers either way and
    # the truncating split's schedule spilled: a whole [64, 64] plane (40-64 B on sm_90a at N = 48 and 64) and a
    # Kronecker tile with three buffers at T = 64 (8 B on sm_80); at T = 16 (N ≤ 4) such a tile takes 72-139
    # registers and truncating saves 10-18 instructions an element (RESULTS.md, issue 19)
    ROUND: tl.constexpr = T == 64 and (FORM == PLANE or (FORM == KRON and NEPS == 3))
    tl.static_assert(not (YSCR and FORM == GRID))
    if FORM == GRID:  # the buffers' first products two at a time (_pair_left); the terms summed in the same order
        fx, fe = _pair_left(_load(x_ptr + x_off + ld, m2, LMASK).to(CT), _load(e0_ptr + e0_off + ld, m2, LMASK).to(CT),
                            bp, TF32X3, ROUND, _tf32_exact(x_ptr) and _tf32_exact(e0_ptr))
        y = _planed(cp, cld, m2, LMASK, CT, _fwd_right(fx, bp, TF32X3, PRE, ROUND))
        y += _planed(cp + cstride, cld, m2, LMASK, CT, _fwd_right(fe, bp, TF32X3, PRE, ROUND))
        if NEPS > 2:
            f1, f2 = _pair_left(_load(e1_ptr + e1_off + ld, m2, LMASK).to(CT),
                                _load(e2_ptr + e2_off + ld, m2, LMASK).to(CT), bp, TF32X3, ROUND,
                                _tf32_exact(e1_ptr) and _tf32_exact(e2_ptr))
            y += _planed(cp + 2 * cstride, cld, m2, LMASK, CT, _fwd_right(f1, bp, TF32X3, PRE, ROUND))
            y += _planed(cp + 3 * cstride, cld, m2, LMASK, CT, _fwd_right(f2, bp, TF32X3, PRE, ROUND))
        elif NEPS > 1:
            y += _term(e1_ptr, e1_off, ld, cp + 2 * cstride, cld, m2, bp, LMASK, FORM, TF32X3, T, CT, PRE, ROUND, YT)
    else:
        y = _term(x_ptr, x_off, ld, cp, cld, m2, bp, LMASK, FORM, TF32X3, T, CT, PRE, ROUND, YT)
        if FORM == PLANE:  # one plane, one sample: NaN rides through every product
            y += poison
        y += _term(e0_ptr, e0_off, ld, cp + cstride, cld, m2, bp, LMASK, FORM, TF32X3, T, CT, PRE, ROUND, YT)
    # YSCR: Y through the scratch (the plane's N² elements at ld, masked) between the buffers' products; the barriers
    # keep each buffer's loads below the products before it (as in _term) and the scratch's load below its store (the
    # same thread's addresses, but a load hoisted above the products would hold its registers)
    if YSCR:
        tl.store(scr + ld, y, mask=m2)
        tl.debug_barrier()
        y = _term(e1_ptr, e1_off, ld, cp + 2 * cstride, cld, m2, bp, LMASK, FORM, TF32X3, T, CT, PRE, ROUND, YT)
    elif NEPS > 1 and FORM != GRID:
        y += _term(e1_ptr, e1_off, ld, cp + 2 * cstride, cld, m2, bp, LMASK, FORM, TF32X3, T, CT, PRE, ROUND, YT)
    if NEPS > 2 and FORM != GRID:
        if YSCR:
            tl.debug_barrier()
        y += _term(e2_ptr, e2_off, ld, cp + 3 * cstride, cld, m2, bp, LMASK, FORM, TF32X3, T, CT, PRE, ROUND, YT)
        if YSCR and NOISE != NOISE_NONE:  # the noise with two buffers' Y held spilled 24-64 B (sm_90a): to scratch
            tl.debug_barrier()
            tl.store(scr + ld, y + tl.load(scr + ld, mask=m2, other=0.0), mask=m2)
            tl.debug_barrier()
            y = tl.zeros(y.shape, y.dtype)
    if NOISE != NOISE_NONE:
        tl.debug_barrier()  # keeps the noise and its plane below the products above (registers, as in _term)
        y += _noise_term(z_ptr, z_off, ld, cp, cld, cstride, flat, m2, seed, LMASK, NOISE, ALIGNED4, FAST, FORM, CT,
                         YT)
    if YSCR:
        tl.debug_barrier()
        y += tl.load(scr + ld, mask=m2, other=0.0)
    out = _inv(y, bp, FORM, TF32X3, T, PRE, ROUND, KPERM, YT)
    if FORM != PLANE and poison is not None:  # the planes of a tile share its products (0 · NaN is NaN): an invalid
        out += poison                            # row poisons only its own (None: the grid's NaN row, _blur_grid_kernel)
    tl.store(out_ptr + out_off + pos, out.to(out_ptr.dtype.element_ty), mask=m2)


@triton.jit
def _spread(v, plane: tl.constexpr):
    """[R, G] → [R, G·plane]: each value over its plane's columns ([R, 1] stays, broadcast by its use)."""
    R: tl.constexpr = v.shape[0]
    G: tl.constexpr = v.shape[1]
    if G == 1:
        return v
    else:
        return tl.reshape(tl.broadcast_to(v[:, :, None], (R, G, plane)), (R, G * plane))


@triton.jit(do_not_specialize=["t_value", "seed_value"])
def _blur_kron_kernel(
    x_ptr, e0_ptr, e1_ptr, e2_ptr, z_ptr, out_ptr, bp, br,
    coef_ptr, n_rows, t_ptr, t_value, seed_ptr, seed_value,
    C, n_planes,
    CT: tl.constexpr, NEPS: tl.constexpr, NOISE: tl.constexpr, T_FROM_PTR: tl.constexpr,
    T_PER_SAMPLE: tl.constexpr, SEED_FROM_PTR: tl.constexpr, ALIGNED4: tl.constexpr, FAST: tl.constexpr,
    TF32X3: tl.constexpr, T: tl.constexpr, N: tl.constexpr, G: tl.constexpr, PB: tl.constexpr, EVEN: tl.constexpr,
    KPERM: tl.constexpr, SPLIT: tl.constexpr = False,
):
    """N ≤ KRON_MAX: PB rows per program, each G consecutive planes of N² pixels / frequencies (plane g of row r at
    columns g·N² + i·N + j; padded to T). Every buffer is contiguous (the launcher sees to it), so one row offset
    r·G·N² serves them all (per-buffer row offsets, replicated over a thread's rows, spilled). N is a compile-time
    constant here (eight values): the plane of a column, q // N², is then a multiply and a shift. The products take
    W's parts at bp, Wᵀ's at br (its rows in _kperm's order where KPERM, the launcher's kron_kperm, says so).
    Loads are masked but where every row of the launch is whole (EVEN); with whole rows in all but the last program
    (SPLIT), in that program alone."""
    check_noise_code(NOISE)
    plane: tl.constexpr = N * N
    run: tl.constexpr = G * plane
    r = tl.program_id(0).to(tl.int64) * PB + tl.arange(0, PB)[:, None]      # the tile's rows [PB, 1]
    q = tl.arange(0, T)[None, :]
    g = q // plane                                                           # plane of the row [1, T]
    m2 = (q < run) & (g < n_planes - r * G)                                  # (no [PB, T] int64 plane index)
    # each plane's sample (read only by per-sample steps) in 32 bits: the launcher keeps the planes < 2³¹, and the
    # rows are clamped first, so that rp·G does not overflow (in int64: 164 against 155 instructions an element at
    # N = 2, per-sample rows, sm_90a); and it keeps the table's values < 2³¹, so that row·5·N² does not either
    rp = tl.minimum(tl.program_id(0) * PB + tl.arange(0, PB)[:, None], (n_planes - 1) // G)
    if T_PER_SAMPLE and (G == 1 or G * plane == T):
        # per (row, plane), [PB, G], spread over the plane's columns (_spread) where G·N² fills the row: found per
        # element (the division, the table's gathers), a timestep per sample cost 49 instructions an element over one
        # timestep a launch at N = 2, here 24 (sm_90a; RESULTS.md, issue 19). G = 1: a row's padding columns (N = 3,
        # 6) take its sample; they are masked. Unsigned: rp·G + gg < 2³² does not overflow, and the division is
        # shorter
        gg = tl.arange(0, G)[None, :]
        b = (tl.minimum(tl.cast(rp * G, tl.uint32) + gg, tl.cast(n_planes - 1, tl.uint32)) // tl.cast(C, tl.uint32))
        b = b.to(tl.int32)  # (tl.cast: C and n_planes may come as constants, specialised at 1)
        row, valid = sample_row(coef_ptr, n_rows, t_ptr, t_value, b, T_FROM_PTR, T_PER_SAMPLE)
        cp = coef_ptr
        cld = _spread(row.to(tl.int32) * (_PLANES * plane), plane) + q - g * plane
        if G > 1:  # a plane's coefficients: runs of N² (a power of two here) from a multiple of N², which the
            _check_runs(cld, plane)  # spread hides from the compiler (32-bit loads without the hint)
            cld = tl.max_contiguous(tl.multiple_of(cld, [1, plane]), [1, plane])
        poison = _spread(tl.where(valid, 0.0, float("nan")).to(CT), plane)
    else:
        row, valid = sample_row(coef_ptr, n_rows, t_ptr, t_value, (tl.minimum(rp * G, n_planes - 1 - g) + g) // C,
                                T_FROM_PTR, T_PER_SAMPLE)
        cp = coef_ptr + row * _PLANES * plane
        cld = q - g * plane
        poison = tl.where(valid, 0.0, float("nan")).to(CT)
    seed = launch_scalar(seed_ptr, seed_value, SEED_FROM_PTR)
    off = r * run
    # rows are runs of the contiguous buffers: masked loads, unless every row of the launch is whole (EVEN); where
    # the rows fill their width but the launch's last program has rows past the last plane (SPLIT), only that
    # program masks them, in its own copy of the body (a fork, as the DDIM step's edge tiles: sm_90a, in SASS an
    # element of a full program, fp32 N = 1 80.9 masked against 38.9, bf16 N = 4 74.2 against 67.4; RESULTS.md)
    ptrs = (x_ptr, e0_ptr, e1_ptr, e2_ptr, z_ptr, out_ptr, (bp, br))
    rows = (seed, off, q, cp, cld, plane, m2, poison)
    form: tl.constexpr = IDENTITY if N == 1 else KRON
    if SPLIT:
        if tl.program_id(0) < n_planes // (PB * G):  # a full program (no (k + 1)·PB·G: it overflows near 2³¹)
            _kron_step(ptrs, rows, False, NEPS, NOISE, ALIGNED4, FAST, form, TF32X3, T, CT, KPERM)
        else:
            _kron_step(ptrs, rows, True, NEPS, NOISE, ALIGNED4, FAST, form, TF32X3, T, CT, KPERM)
    else:
        _kron_step(ptrs, rows, not EVEN, NEPS, NOISE, ALIGNED4, FAST, form, TF32X3, T, CT, KPERM)


@triton.jit
def _kron_step(ptrs, rows, LMASK: tl.constexpr, NEPS: tl.constexpr, NOISE: tl.constexpr, ALIGNED4: tl.constexpr,
               FAST: tl.constexpr, FORM: tl.constexpr, TF32X3: tl.constexpr, T: tl.constexpr, CT: tl.constexpr,
               KPERM: tl.constexpr):
    """_step on a Kronecker tile (_blur_kron_kernel): ``ptrs`` the buffers and W's parts, ``rows`` the tile's seed,
    row offsets, columns, coefficients and masks; every buffer at the same row offsets."""
    seed, off, q, cp, cld, plane, m2, poison = rows
    _step(ptrs[0], ptrs[1], ptrs[2], ptrs[3], ptrs[4], ptrs[5], ptrs[6], seed, 0, 0, 0, 0, 0, off, off + q, q, cp,
          cld, plane, off, m2, poison, LMASK, NEPS, NOISE, ALIGNED4, FAST, FORM, TF32X3, T, CT, False, KPERM)


@triton.jit
def _held(bp, part, which, T: tl.constexpr):
    """Part ``part`` of left matrix ``which`` ([T, T] at bp) in the registers of an mma accumulator, for _preload's
    HOLD: M = M I (I the identity; exact: each sum is one product of a tf32 value by 1, and zeros). Why: the planes'
    first products take it as their first operand, and where triton gives that operand two columns a register (a
    16-bit buffer's product, its second operand widened from 16-bit pairs, and the inverse's) an accumulator's
    registers are the operand's, held through the program's planes; read from shared memory by every product it
    took two 8-byte loads and four register moves a tf32 mma (benchmarks/RESULTS.md, issue 19)."""
    i = tl.arange(0, T)[:, None]
    j = tl.arange(0, T)[None, :]
    return tl.dot(tl.load(bp + ((part * 2 + which) * T + i) * T + j), tl.where(i == j, 1.0, 0.0),
                  input_precision="tf32")


@triton.jit
def _preload(bp, T: tl.constexpr, PRE: tl.constexpr, BT: tl.constexpr = False, HOLD: tl.constexpr = 0):
    """PRE: the whole transform matrices at bp, ((V_hi, V_lo), (Vᵀ_hi, Vᵀ_lo)), read once by a program for all of
    its planes or tiles (_basis_part with PRE; the per-plane form's left and right matrices, the grid form's V_R;
    BT: stored transposed, the right ones); otherwise bp, the pointer the products read them from. HOLD (the
    per-plane form's left matrices, _blur_step_kernel): V's parts (1), and Vᵀ's too (2), held as accumulators
    (_held; never the right matrices, stored transposed)."""
    tl.static_assert(HOLD == 0 or not BT)
    if PRE and HOLD > 0:
        if HOLD == 2:
            vt = (_held(bp, 0, 1, T), _held(bp, 1, 1, T))
        else:
            vt = (_basis_part(bp, 0, 1, T, 0, 0, T, T, False, BT), _basis_part(bp, 1, 1, T, 0, 0, T, T, False, BT))
        out = ((_held(bp, 0, 0, T), _held(bp, 1, 0, T)), vt)
    elif PRE:
        out = ((_basis_part(bp, 0, 0, T, 0, 0, T, T, False, BT), _basis_part(bp, 1, 0, T, 0, 0, T, T, False, BT)),
               (_basis_part(bp, 0, 1, T, 0, 0, T, T, False, BT), _basis_part(bp, 1, 1, T, 0, 0, T, T, False, BT)))
    else:
        out = bp
    return out


@triton.jit(do_not_specialize=["t_value", "seed_value"])
def _blur_step_kernel(
    x_ptr, e0_ptr, e1_ptr, e2_ptr, z_ptr, out_ptr, scr_ptr, bp, br, ct, yd,
    coef_ptr, n_rows, t_ptr, t_value, seed_ptr, seed_value,
    C, N, x_bs, e0_bs, e1_bs, e2_bs, z_bs, n_planes, c_magic, c_shift,
    CT: tl.constexpr, NEPS: tl.constexpr, NOISE: tl.constexpr, T_FROM_PTR: tl.constexpr,
    T_PER_SAMPLE: tl.constexpr, SEED_FROM_PTR: tl.constexpr, ALIGNED4: tl.constexpr, FAST: tl.constexpr,
    TF32X3: tl.constexpr, T: tl.constexpr, LMASK: tl.constexpr, SLICED: tl.constexpr, PP: tl.constexpr,
    YSCR: tl.constexpr = False, KN: tl.constexpr = 0, HELD: tl.constexpr = False, FULL: tl.constexpr = False,
    HOLD: tl.constexpr = 0, YT: tl.constexpr = 0,
):
    """N > KRON_MAX (and N = 7): planes PP·k … PP·k + PP - 1 (flat index b·C + c) of program k, one at a time on a
    [T, T] tile. SLICED (:func:`plane_sliced`): the products by slices (_plane_step), with two T×T scratch tiles of
    the plane's own at scr_ptr and the table's planes zero-padded to T×T (_table), the contractions' slices only
    below KN (N rounded up to 16: at T = 64 the last slice, past N ≤ 48, is all zeros); HELD (:func:`plane_held`):
    only the first product of each transform by slices, one scratch tile (Y) a plane. Otherwise whole operands
    (_step): masked loads (LMASK) where N is a multiple of 16, clamped addresses otherwise, N the constant T with FULL
    (:func:`plane_full`); scr_ptr is read only with YSCR (:func:`plane_y_scratch`; one plane a program), an N×N plane a
    program;
    the products take V's parts from the left at bp, from the right at br (its rows in _kperm's order for tf32x3:
    _fwd; the sliced form reads br only with HELD), pointers or TMA descriptors (basis_tma), and the held sliced plane
    its table's planes and Y's tile through ``ct`` and ``yd`` where they are TMA descriptors (else unused); PRE: the
    transform matrices read once for all the program's planes (:func:`_preload`), V's parts and Vᵀ's held as
    accumulators with HOLD (:func:`plane_hold`); YT: Y transposed (:func:`plane_transposed_y`, _step)."""
    check_noise_code(NOISE)
    if FULL:  # N = T (plane_full): a constant, so that the tile's masks fold away and its offsets are shifts
        if _CHECK_HINTS:  # (the interpreter's tl.assume asserts its condition; its device_assert needs a debug build)
            tl.assume(N == T)
        N = T
    plane = N * N
    seed = launch_scalar(seed_ptr, seed_value, SEED_FROM_PTR)
    p0 = tl.program_id(0).to(tl.int64) * PP
    # the whole-operand products take V from the left at bp, from the right at br (rows in _kperm's order: _fwd)
    pre: tl.constexpr = PP > 1 and not SLICED and TF32X3 > 0
    tl.static_assert(HOLD == 0 or pre)
    tl.static_assert(YT == 0 or (TF32X3 > 0 and not SLICED and not YSCR))
    basis = (_preload(bp, T, pre, False, HOLD), _preload(br, T, pre, True))
    # a runtime loop, rolled and not software-pipelined: one plane's registers and buffers at a time
    for q in tl.range(0, PP, loop_unroll_factor=1, num_stages=1):
        # the last program's planes past the end repeat the last plane (same values to the same places): no
        # branch around the body
        # (one plane a program: the grid is the planes, no clamp, and ptxas re-reads the program id where it spilled
        # the clamped plane, 4 B with Y in scratch)
        if PP == 1:
            p = p0 + q
            b = (p.to(tl.int32) // C).to(tl.int64)  # planes < 2³¹ (launch_blur_step): a 32-bit division
            c = p - b * C
        else:  # in 32 bits, the division by C a multiply and a shift (div_magic): 21 fewer instructions a plane
            # (no overflow: planes < 2³¹ and PP a power of two ≤ 16 divides 2³¹, so the programs' last index, their
            # count ⌈planes / PP⌉ times PP less one, is below 2³¹)
            p32 = tl.minimum(tl.program_id(0) * PP + q, n_planes - 1)
            b32 = ((p32.to(tl.uint32).to(tl.uint64) * c_magic.to(tl.uint64)) >> c_shift).to(tl.int32)
            c = (p32 - b32 * C).to(tl.int64)
            b = b32.to(tl.int64)
            p = p32.to(tl.int64)
        row, valid = sample_row(coef_ptr, n_rows, t_ptr, t_value, b, T_FROM_PTR, T_PER_SAMPLE)
        poison = tl.where(valid, 0.0, float("nan")).to(CT)
        if SLICED:
            _plane_step(x_ptr, e0_ptr, e1_ptr, e2_ptr, z_ptr, out_ptr, scr_ptr + p * (1 if HELD else 2) * T * T, bp,
                        br, seed, b * x_bs + c * plane, b * e0_bs + c * plane, b * e1_bs + c * plane,
                        b * e2_bs + c * plane, b * z_bs + c * plane, p * plane, coef_ptr + row * _PLANES * T * T,
                        poison, N, NEPS, NOISE, ALIGNED4, FAST, TF32X3, T, CT, KN, HELD,
                        ct, (row * _PLANES * T).to(tl.int32), yd, p.to(tl.int32) * T)
        else:
            ii = tl.arange(0, T)[:, None]
            jj = tl.arange(0, T)[None, :]
            m2 = (ii < N) & (jj < N)
            if LMASK:  # N a multiple of 16: masks constant over whole vectors
                ld = ii * N + jj
            else:  # padding positions clamped onto the plane (_step): no load masks
                ld = tl.minimum(ii, N - 1) * N + tl.minimum(jj, N - 1)
            _step(x_ptr, e0_ptr, e1_ptr, e2_ptr, z_ptr, out_ptr, basis, seed, b * x_bs + c * plane,
                  b * e0_bs + c * plane, b * e1_bs + c * plane, b * e2_bs + c * plane, b * z_bs + c * plane,
                  p * plane, ld, ii * N + jj, coef_ptr + row * _PLANES * plane, ld, plane, p * plane + ii * N, m2,
                  poison, LMASK, NEPS, NOISE, ALIGNED4, FAST, PLANE, TF32X3, T, CT, PP > 1 and TF32X3 > 0, False,
                  scr_ptr + tl.program_id(0) * plane, YSCR, YT)


@triton.jit(do_not_specialize=["t_value", "seed_value"])
def _blur_grid_kernel(
    x_ptr, e0_ptr, e1_ptr, e2_ptr, z_ptr, out_ptr, bl, br,
    coef_ptr, n_rows, t_ptr, t_value, seed_ptr, seed_value,
    C, n_planes,
    CT: tl.constexpr, NEPS: tl.constexpr, NOISE: tl.constexpr, T_FROM_PTR: tl.constexpr,
    T_PER_SAMPLE: tl.constexpr, SEED_FROM_PTR: tl.constexpr, ALIGNED4: tl.constexpr, FAST: tl.constexpr,
    TF32X3: tl.constexpr, T: tl.constexpr, TC: tl.constexpr, N: tl.constexpr, GR: tl.constexpr, GC: tl.constexpr,
    TP: tl.constexpr,
):
    """GR × GC planes of N×N side by side on a [T, TC] tile (grid_form), TP tiles a program in turn
    (tiles_per_program): tile k holds planes k·GR·GC …, its plane q at rows (q // GC)·N …, columns (q % GC)·N …
    The transforms are the per-plane products with block-diagonal matrices, V_L X V_Rᵀ (V_L: GR copies of V,
    [T, T], parts at bl; V_R: GC copies, [TC, TC], at br, its rows in _kperm's order): every plane of the tile at
    once. Every buffer is contiguous (the launcher sees to it): element (i, j) of plane p at p·N² + i·N + j in
    each; the table is the grid table (_grid_table), so that one offset tile serves data and coefficients.
    Positions outside the planes are clamped onto a plane's element for the loads (no load masks; what they hold
    meets the zero rows and columns of the padded matrices); in the launch's last tile, planes past the last are
    clamped onto the last plane's end (whole blocks of the tile, transformed on their own) and not stored (the
    store's mask); a program's tiles past the last repeat the last tile (same values to the same places: no
    branch around the body). With several tiles V_R's parts are read once (_preload), V_L's by every product (bl: a
    pointer, or a TMA descriptor of its [T, T] parts: grid_tma). The buffers' first products run two at a time,
    V_L [X | E] (_pair_left).
    Where N is a multiple of 4 (and the launch has one timestep, so that a tile's coefficients are one table row's),
    the coefficient planes are read 16 bytes at a time (VEC4): the padding columns wrap onto their plane's row and
    the planes past the last move onto the last plane, so that every run of four columns starting at a multiple of 4
    is four consecutive elements starting at a multiple of 4, which the compiler is told (and the interpreter
    checks: _check_runs). fp32 data keep 4-byte loads: as the first product's right operand they go to shared
    memory K-major, where a thread's four consecutive columns became four scattered stores (RESULTS.md); 16-bit
    data there are read in runs of four and the output written in pairs (RUNS). An invalid table row: with a
    timestep per sample its NaN is added to its planes' output (``poison``, _step); with one for the launch the
    tile reads the grid table's NaN row (_grid_table) instead, which the products carry to every output."""
    check_noise_code(NOISE)
    plane: tl.constexpr = N * N
    TILE: tl.constexpr = GR * GC
    # N a multiple of 4: every run of four columns that starts at a multiple of 4 lies in one row of one plane, at a
    # flat offset that is a multiple of 4 (and so are the tile's first element and the grid table's planes)
    VEC4: tl.constexpr = N % 4 == 0 and not T_PER_SAMPLE
    # 16-bit buffers there: the data read in runs of four too (lv: 8 bytes an access, where each element took a
    # 2-byte load and an address of its own) and the output written in pairs (pos: 4 bytes an access; RESULTS.md,
    # issue 19). Not fp32 (tried): K-major in the first product's operand, its runs became four scattered stores
    # each, where its 4-byte loads go as they are (fp32 rows with four tiles a program fell to 73 %; its stores in
    # runs to 79.9 %)
    RUNS: tl.constexpr = VEC4 and x_ptr.dtype.element_ty.primitive_bitwidth == 16
    r = tl.arange(0, T)[:, None]
    c = tl.arange(0, TC)[None, :]
    gr = tl.minimum(r // N, GR - 1)  # the tile's plane row and column of each row and column; i, j within it
    gc = tl.minimum(c // N, GC - 1)
    i = tl.minimum(r - gr * N, N - 1)
    if VEC4:  # padding columns wrap onto the plane's row: whole runs of four, as inside it
        j = (c - gc * N) % N
    else:
        j = tl.minimum(c - gc * N, N - 1)
    q = gr * GC + gc                                # [T, TC] plane of the tile
    ld = q * plane + i * N + j                      # < GR·GC·N² ≤ T·TC: 32 bits, from the tile's first element
    inside = (r < GR * N) & (c < GC * N)
    seed = launch_scalar(seed_ptr, seed_value, SEED_FROM_PTR)
    n_tiles = tl.cdiv(n_planes, TILE)
    basis = (bl, _preload(br, TC, TP > 1 and TF32X3 > 0, True))
    # the tile offsets, planes and masks are the loop's invariants; a rolled loop, not software-pipelined: one tile's
    # registers at a time
    for k in tl.range(0, TP, loop_unroll_factor=1, num_stages=1):
        # the tile's first plane and its last (the launch's last, if it ends here; at most TILE - 1, so that the
        # offsets below stay in 32 bits when the launch's elements do not): planes < 2³¹ (launch_blur_step), so
        # 32-bit arithmetic, not 64 (1-2 % fewer instructions an element on the grid rows, RESULTS.md)
        p0 = tl.minimum(tl.program_id(0) * TP + k, n_tiles - 1) * TILE
        last = tl.minimum(n_planes - 1 - p0, TILE - 1)
        lt = tl.minimum(ld, (last + 1) * plane - 1)  # (a no-op but in the launch's last tile)
        if VEC4:  # the coefficients: planes past the last onto the last plane, so that runs of four stay whole
            lv = ld - tl.maximum(q - last, 0) * plane
            _check_runs(lv, 4)
            lv = tl.max_contiguous(tl.multiple_of(lv, [1, 4]), [1, 4])
        else:
            lv = lt
        m2 = inside & (q <= last)
        base = p0.to(tl.int64) * plane
        # the sample of each element (per-sample steps only; a 32-bit division)
        row, valid = sample_row(coef_ptr, n_rows, t_ptr, t_value, (p0 + tl.minimum(q, last)) // C,
                                T_FROM_PTR, T_PER_SAMPLE)
        if T_PER_SAMPLE:  # an invalid sample's NaN added to its planes' output (_step)
            poison = tl.where(valid, 0.0, float("nan")).to(CT)
        else:  # one row for the launch: an invalid one reads the grid table's NaN row (_grid_table), whose NaN
            # reaches every output through the products (the split keeps it: lo = NaN - hi), where adding it took an
            # instruction an element (bf16 N = 28: 1.3 SASS an element, sm_90a)
            row = tl.where(valid, row, n_rows)
            poison = None
        if RUNS:  # the offsets' pairs, each in one row of one plane: the accumulator's own pairs of columns,
            _check_runs(ld, 2)  # stored from its registers (in runs of four they went through shared memory)
            pos = tl.max_contiguous(tl.multiple_of(ld, [1, 2]), [1, 2])
        else:
            pos = ld
        _step(x_ptr, e0_ptr, e1_ptr, e2_ptr, z_ptr, out_ptr, basis, seed, base, base, base, base, base, base,
              lv if RUNS else lt, pos, coef_ptr + row * _PLANES * TILE * plane, lv, TILE * plane, base, m2, poison,
              False, NEPS, NOISE, ALIGNED4, FAST, GRID, TF32X3, T, CT, TP > 1 and TF32X3 > 0)


@triton.jit(do_not_specialize=["seed_value"])
def _noise_fill_kernel(z_ptr, n, seed_ptr, seed_value, SEED_FROM_PTR: tl.constexpr, FAST: tl.constexpr,
                       BLOCK: tl.constexpr):
    """z[k] = normal k of Philox stream 0, k < n (the seed from a pointer or a value)."""
    start = tl.program_id(0).to(tl.int64) * BLOCK
    z = -normal_block(launch_scalar(seed_ptr, seed_value, SEED_FROM_PTR), start, BLOCK, STREAM_NOISE, True, FAST)
    offs = start + tl.arange(0, BLOCK)
    tl.store(z_ptr + offs, z, mask=offs < n)


def kron_form(N: int) -> bool:
    """The Kronecker form for N ≤ KRON_MAX, except N = 7: one plane of 49 a row and its noise from a buffer (49 is
    odd), where ptxas spills (16 B at sm_90a); it takes the per-plane form instead."""
    return N <= KRON_MAX and N != 7


GRID_ROWS, GRID_COLS = 64, 32  # grid_form's tiles: one warpgroup's wgmma rows; [64, 64] spilled (16-136 B, sm_90a)


def grid_form(N: int, neps: int) -> bool:
    """The grid form (_blur_grid_kernel: GRID_ROWS // N × GRID_COLS // N planes on a [64, 32] tile) for up to two
    buffers where its planes fill ≥ 1.2× the share of its tile that the form it replaces fills (a Kronecker row:
    G·N² of 64 columns; one plane of its own [T, T] tile), and wherever that form is one plane of a [32, 32] tile
    (on mma.sync, two warps; the grid's two or three planes run on wgmma): N = 3, 6, 7, 9 … 12 and 17 … 32 (N = 3:
    92 % against 56 %; N = 9: 83 % against 32 %; N = 11: 59 % against 47 %; N = 17: 42 % against 28 %; N = 22 … 32:
    equal fill). There it predicts 1.1-4× the throughput of the other form (benchmarks/RESULTS.md, issue 19); at N =
    5 (88 % against 78 %) and 13 … 16 (equal fill, one plane a program at T = 16 with several planes a program) the
    other form predicted more. Three buffers take the grid, one tile a program (tiles_per_program), where the other
    form is the sliced plane (plane_sliced at T = 32: N = 17 … 32; 81-100 % of the roofline against 39-40 %); two
    and three buffers take it at N = 5, 6, 8, where the Kronecker rows of T = 64 spilled (three buffers: 4-24 B in 6
    of 48 variants on sm_90a, fp32 N = 8 77 → 88 % of its roofline on the grid; two, at 64 rows: 12-396 B at N = 8;
    at N = 5 rows of T = 32 spilled too: 8-96 B); no spill in any variant there (RESULTS.md). At T = 16 the
    whole-operand plane holds them; at N ≤ 4 the Kronecker rows of T = 16 (tile_size) keep them, no spill, and at
    N = 4 they predict more than the grid (fp32 100 % of copy against 76-100 % with two and three buffers). As in the
    Kronecker form, a non-finite input value reaches every plane of its tile (0 · inf is NaN in the zero blocks of
    the products); an invalid table row poisons only its sample (_step)."""
    if neps > 3 or N > GRID_COLS:
        return False
    if N in (5, 6, 8) and neps >= 2:
        return True
    if neps == 3:
        return not kron_form(N) and plane_sliced(neps, tile_size(N), N)
    grid = (GRID_ROWS // N) * (GRID_COLS // N) * N * N / (GRID_ROWS * GRID_COLS)
    other = kron_planes(N) * N * N / tile_size(N) if kron_form(N) else N * N / tile_size(N) ** 2
    # one plane of a [32, 32] tile runs on mma.sync (two warps); the grid's wgmma at equal fill predicted 1.3-1.4×
    return grid >= 1.2 * other or (not kron_form(N) and tile_size(N) == 32)


def launches_grid(N: int, neps: int, planes: int, tf32x3: bool, arch: int) -> bool:
    """Whether a launch takes the grid form: grid_form's sizes, for tf32x3 (fp64, no GPU sampling dtype, keeps the
    other forms), on wgmma GPUs (sm_90, sm_100; on sm_80's mma.sync its tile spilled 64 B), with at least one tile
    of planes where the other form is one whole-operand plane a program (fewer: that form, as many programs); at any
    size where it is the Kronecker rows (N = 3, 6; and 5, 6, 8 with two or three buffers, whose Kronecker rows
    spilled): at N = 3 and 6 their programs take more planes than a grid tile (256 against 210, 64 against 50); and
    where it is the sliced plane (three buffers at N = 17 … 32, grid_form): there one plane on the grid, its tile
    mostly padding, still predicted 1.6× the sliced plane's % of copy on sm_90a (N = 17, 20, 28, 32: 11.0, 12.8,
    25.2, 32.9 → 18.6, 20.1, 40.0, 53.7 %) and, for one program alone (a launch of one plane is latency), 0.62×
    the instructions a thread (N = 20: 3979 over two warps → 2455 over four), where one and two buffers' whole
    [32, 32] plane kept the lead (N = 20, one buffer: 26.0 against 16.5 %; benchmarks/RESULTS.md, issue 19)."""
    tile = (GRID_ROWS // N) * (GRID_COLS // N)
    return tf32x3 and grid_form(N, neps) and arch // 10 in (9, 10) and (planes >= tile or kron_form(N) or neps == 3)


def rows_aligned4(N: int, kron: bool) -> bool:
    """Whether the rows of a launch's tiles are whole Philox groups (in-kernel noise; else the noise pre-pass):
    Kronecker rows of G·N² (``kron``), or a plane's rows of N (one plane a program, and the grid's runs of four)."""
    return (kron_planes(N) * N * N if kron else N) % 4 == 0


def tile_size(N: int) -> int:
    """T: the side of a plane's tile, or the width of the Kronecker form's rows of G planes: KRON_T_SMALL (16,
    tl.dot's smallest) where a plane fits in it (N ≤ 4), else 64 = KRON_MAX². A row's product with W costs T
    multiply-adds an element and W's parts 2·T² values a program: at N = 1 … 4, rows of 64 held [64, 64] W parts
    beside three buffers' tiles and spilled (4-16 B at N = 2, 3 on sm_90a; 8 B at N = 1 on sm_100a) where rows of 16
    take 32-139 registers, and predict up to 2.9× the % of copy (N = 1, no product, 6 % less: 1024 elements a
    program where 4096 shared its per-program work; RESULTS.md, issue 19). The padding columns are zeros
    of W: no number moves but by the order of the sums' zero terms."""
    if kron_form(N):
        return KRON_T_SMALL if N * N <= KRON_T_SMALL else KRON_MAX * KRON_MAX
    return max(16, triton.next_power_of_2(N))


def kron_kperm(T: int, tf32x3: bool) -> bool:
    """Whether Kronecker rows of width T take Y into the inverse product Y Wᵀ reordered (_kperm, Wᵀ's rows in the same
    order: the same sums in another order), as the grid and the plane take their first product's accumulator into the
    second: tf32x3 rows 16 wide (KRON_T_SMALL; the kernel's KPERM), where it saves the SEL, SHFL and FSEL an element
    that move Y into the operand's registers (sm_90a: 6-10 % of the instructions an element at N = 2 … 4). At T = 64 the
    reordered Y held beside W's parts took fp32 N = 8 to 255 registers and 8 B of spill (RESULTS.md, issue 19)."""
    return tf32x3 and T == KRON_T_SMALL


def kron_planes(N: int) -> int:
    """G: the planes of a Kronecker row, as many as fit in T, preferring a row of whole Philox groups (G·N² a
    multiple of 4, so that the noise is drawn in-kernel); 1 (a plane) in the per-plane form."""
    if not kron_form(N):
        return 1
    fit = tile_size(N) // (N * N)
    return next((g for g in range(fit, 0, -1) if g * N * N % 4 == 0), fit)


def kron_rows(neps: int, arch: int, per_sample: bool = False, T: int = 64, planes: int = 0, G: int = 1) -> int:
    """PB: the rows of a Kronecker tile of width ``T`` (tile_size) for ``neps`` ε buffers on a GPU of compute
    capability ``arch`` (90 for 9.0), with a timestep per sample (``per_sample``) or one a launch. Rows 16 wide
    (N ≤ 4): KRON_ROWS on sm_90 and sm_100 whatever the buffers and timesteps (with one buffer and one timestep, ×
    kron_row_tiles for a launch of ``planes`` in rows of G), and on sm_80 for two or three buffers;
    32 on sm_80 for one (64 spilled 4 B there, fp16 / bf16 N = 2; at 32 and 16 rows ptxas spilled 4 B in two
    variants of three buffers, capping the registers at 128 and 96); no spill in any variant of the sweeps at N = 1 …
    4 (RESULTS.md, issue 19).
    Rows 64 wide: KRON_ROWS (64, one warpgroup's wgmma tile)
    for one buffer and one timestep a launch on sm_90 and sm_100; KRON_ROWS_SMALL otherwise: on sm_80 mma.sync holds
    the operands of each [64, 64] product in registers (ptxas spilled 760 B at N = 8 with one buffer); with three
    buffers (stochastic or deterministic order 2) the transform's tf32 parts, the running Y and the next buffer's
    tile do not fit 255 registers on any target (80 B at sm_100a to 3.4 KB at sm_80); at 64 rows two buffers spilled
    4-512 B on sm_90a at N = 2, 4, 8 (every variant with per-sample rows, and Philox even with one timestep at N = 2,
    4 and, at some launch sizes, 8), and one buffer with per-sample rows 20-332 B at N = 1, 2
    (benchmarks/blur_spill_sweep.py, RESULTS.md).
    At 16 rows none of those spill (the grid takes N = 5, 6, 8 from two buffers, grid_form). The rows of a tile are
    independent planes, so the choice moves no number."""
    if T == KRON_T_SMALL:
        if arch // 10 in (9, 10) and neps == 1 and not per_sample:
            return KRON_ROWS * kron_row_tiles(planes, G)
        return KRON_ROWS if arch // 10 in (9, 10) or neps > 1 else 32
    return KRON_ROWS if neps == 1 and not per_sample and arch // 10 in (9, 10) else KRON_ROWS_SMALL


KRON_ROW_TILES = 4  # the most wgmma row tiles (KRON_ROWS each) of a Kronecker program 16 wide (kron_row_tiles)


def kron_row_tiles(planes: int, G: int) -> int:
    """How many tiles of KRON_ROWS rows (G planes a row) a Kronecker program 16 wide takes at once (kron_rows: one
    buffer, one timestep a launch, sm_90 / sm_100): 2 or 4 where the launch of ``planes`` keeps ≥ MIN_PROGRAMS
    programs, else 1 (a small launch's time is latency: more programs serve it better). A program's own work (its
    rows' offsets and samples, W's parts, the seed, the products' set-up) is then shared by 2048 or 4096 elements,
    not 1024: sm_90a bf16 N = 4 67.4 → 53.8 → 47.7 SASS an element, 70 → 88 → 100 % of copy; fp16 N = 1 44.8 → 38.9
    → 36.2 (RESULTS.md, issue 19). The rows are independent planes: no number moves."""
    f = 1
    while f < KRON_ROW_TILES and planes >= 2 * f * KRON_ROWS * G * MIN_PROGRAMS:
        f *= 2
    return f


def plane_sliced(neps: int, T: int, N: int, arch: int = 90) -> bool:
    """Whether a per-plane launch (tile side T, N×N planes, on a GPU of compute capability ``arch``) runs its products
    by slices (_plane_step), where the whole-operand form spills:
    - three buffers (order 2, or stochastic order 1 … with its history) at T = 32 (on sm_90 / sm_100 the grid takes
      them from one tile of planes: grid_form; the whole form filled exactly 255 registers and spilled 12-252 B for in-
      kernel noise, no noise or 16-bit storage, and with Y in scratch 4-24 B at N = 32);
    - two and three at T = 64, but where N is a multiple of 16 on sm_90, and with two buffers on sm_100: the whole
      form spilled 72-228 B (two buffers) and 24-568 B (three), and with Y in scratch (plane_y_scratch) still 8-180 B
      in 84 of 96 variants of N = 33, 36, 40, 63 (clamped addresses: a 64-bit address an element). Where N is 48 or
      64 the loads are masked 16-byte vectors and Y in scratch holds on sm_90a; on sm_100a with two buffers in all
      54 variants swept (fp32, bf16, fp16 × nine noise and timestep variants), with three it spilled 8 B in 4 of 54
      (16-bit storage, a noise tensor and one timestep by value), so that three buffers keep the sliced form there
      (RESULTS.md, issue 19);
    - on sm_80 (mma.sync) every launch at T = 64 (one buffer too: every warp holds each product's whole [64, 64]
      second operand in registers, and the whole form spilled 1804-2280 B in every variant of N = 33 … 64) and three
      buffers at T = 32.
    With one buffer, or at T = 16 (one slice is the whole operand), the whole-operand form holds without spill, and at
    T = 64 stays within 80 % of its roofline, which the sliced form, bound by its memory instructions, does not (43.8 %
    against 70.6 % of copy at N = 64, order 0; with Y in scratch, two and three buffers at N = 48 and 64: 83-90 % of
    their roofline against 44-51 %). ``arch`` defaults to 90, the target the predictions are for."""
    if T == 64 and (arch // 10 == 9 or (arch // 10 == 10 and neps == 2)):
        return neps > 1 and N % 16 != 0  # N = 48, 64: the whole-operand plane with Y in scratch (plane_y_scratch)
    return (neps == 3 and T > 16) or (neps == 2 and T == 64) or (T == 64 and arch // 10 == 8)


def sliced_extent(N: int) -> int:
    """KN: how far the sliced plane's products run along their contraction, N rounded up to a slice (16): past N
    every term is a zero of the padded matrices (rows and columns ≥ N of V, of the zero-padded plane and of the
    staged products' padding), so that at T = 64 and N ≤ 48 the last of the four slices is left out of each
    product: sm_90a fp32 N = 33, three buffers, 617.1 → 530.8 SASS an element, 13.2 → 15.4 % of copy; on sm_80 N =
    33's 8 B of spill gone (RESULTS.md, issue 19). Zero terms left out: no number moves."""
    return -(-N // 16) * 16


def plane_held(T: int, arch: int, tf32x3: bool) -> bool:
    """Whether the sliced plane (plane_sliced) holds each transform's first product in registers as the whole first
    operand of its second (_plane_term's HELD; the whole-operand form's _kperm, V's parts in its order), only the first
    product by slices: at T = 64 on wgmma GPUs (sm_90, sm_100) for tf32x3. The staged product's round trip through the
    program's scratch tile (stores, loads of its slices, and their layout conversions through shared memory) is gone:
    sm_90a fp32 N = 33, three buffers, 530.8 → 485.9 SASS an element, LSU 384 → 315 lane slots, 15.4 → 18.8 % of copy
    (44.0 → 62.7 % of its roofline, whose tensor time grew with the whole second product's padded contraction); no spill
    in any of the 96 variants of N = 33, 40, 47, 63 with two and three buffers (sm_90a: 58-68 % of their roofline, 40-52
    % before) nor in 72 of sm_100a (RESULTS.md, issue 19). On mma.sync (sm_80) a whole second operand is every warp's,
    in registers (one buffer's whole form spilled 1.8-2.3 KB there); fp64 keeps the slices too. The same sums over the
    contraction in another order (_kperm) and zero terms past N added: the numbers move within rounding (both forms meet
    the float64 reference within the fp32 bound)."""
    return tf32x3 and T == 64 and arch // 10 in (9, 10)


def plane_full(N: int, T: int, sliced: bool, tf32x3: bool, arch: int) -> bool:
    """Whether the whole-operand plane compiles N as the constant T (_blur_step_kernel's FULL): N = T (16, 32, 64),
    tf32x3, but N = 32 on sm_8x. The tile's masks fold away (its loads and stores unmasked, no zeroing ahead of them)
    and the plane's offsets become shifts: 2-11 % fewer instructions an element across the variants of N = 16 on
    sm_80, sm_90a, sm_100a and of N = 64 on sm_90a and sm_100a (sm_90a fp32-n16-order2 155.5 → 141.3,
    fp16-n16 86.6 → 82.8), no spill in any of them; on sm_80 at N = 32 one variant (fp32, noise tensor, a timestep per
    sample, 255 registers either way) spilled 4 B. fp64 on sm_100a spilled 8 B (fp64 is no GPU sampling dtype: it keeps
    N at run time). The sliced plane has its own constant extent (sliced_extent). The same numbers (test_gddim_ops.py,
    RESULTS.md, issue 19)."""
    return N == T and not sliced and tf32x3 and not (arch // 10 == 8 and T == 32)


def div_magic(d: int) -> tuple:
    """(m, k) with ⌊n / d⌋ = ⌊n·m / 2^k⌋ for every 0 ≤ n < 2³¹ (d ≥ 1): k = 31 + ⌈log₂ d⌉, m = ⌈2^k / d⌉ < 2³², so
    that the per-plane kernel divides a plane index by the channel count with one 32 × 32 → 64-bit multiply and a
    shift. Why exact: m·d = 2^k + e with 0 ≤ e < d ≤ 2^⌈log₂ d⌉, so n·m / 2^k = n / d + n·e / (d·2^k), and
    n·e < 2³¹·2^⌈log₂ d⌉ = 2^k keeps the excess below 1/d, short of the next multiple of 1/d past n / d."""
    if d < 1:
        raise ValueError(f"div_magic: divisor {d} < 1")
    k = 31 + (d - 1).bit_length()
    return -(-(1 << k) // d), k


def plane_hold(N: int, T: int, sixteen_bit: bool, noise: bool, pp: int) -> int:
    """HOLD of _blur_step_kernel (_preload): where a program takes several planes (``pp`` > 1) of 16-bit buffers at
    N = 16 (T = 16, unmasked vectors), V's parts (1), and Vᵀ's too with ``noise`` (2), are held as accumulators
    (_held): 9-19 % fewer instructions an element (sm_80, sm_90a, sm_100a). At N = 13 … 15, and with fp32 buffers,
    their products take operands one column a register and the held parts cost shuffles (2-11 % more); without
    noise, Vᵀ held too spilled 8 B (RESULTS.md, issue 19). 0: neither."""
    if not (sixteen_bit and T == 16 and N == 16 and pp > 1):
        return 0
    return 2 if noise else 1


def plane_transposed_y(N: int, T: int, sliced: bool, tf32x3: bool, sixteen_bit: bool, neps: int, noise: int) -> int:
    """YT of _blur_step_kernel (_step): whether the whole-operand plane computes Y transposed, Yᵀ = Aᵀ ⊙ V Xᵀ Vᵀ + …,
    the data's and the table's tiles transposed in registers as loaded, so that the inverse's first product Vᵀ Y
    takes Y from the accumulator's registers where it converted them (a SEL, a SHFL and an FSEL an element, for Y's
    high part and its low part). Y = (Yᵀ)ᵀ: a thread's accumulator holds columns 2c, 2c + 1 of a row of Yᵀ, which are
    rows 2c, 2c + 1 of a column of Y, where the second operand of a tf32 mma wants rows c, c + 4: so (2) Yᵀ's columns
    are reordered first (_kperm) and Vᵀ's columns with them (basis_parts with ``kperm_t``), the same sums in another
    order; but as is (1) for 16-bit buffers at N = 16 with in-kernel noise (``noise``, the kernel's NOISE), whose
    products triton gives operands of two rows a register, the pairs an accumulator holds (reordered cost 2-5 % more
    there; with a noise tensor as is spilled 8 B, bf16 with two buffers on sm_90a). Only at T = 16 (N = 7, 9 … 16),
    tf32x3. Swept at 8 planes a program (4096 samples), orders 0-2, on sm_80, sm_90a and sm_100a: 16-bit buffers, and
    fp32 at N = 16, up to 17 % fewer instructions an element (a few variants up to 4 % more: 16-bit N = 12 with three
    buffers, sm_80 N = 16 with a noise tensor), and the three-buffer launches' spills on sm_90a gone (16-bit, 12 B);
    fp32 at N < 16 with one buffer up to 5 % fewer (sm_80 N = 12: 3 % more), with two or three 2-9 % more: Y as is
    there (0), but for three buffers with a noise tensor (the pre-pass's too), whose 4 B spill with one timestep
    (sm_90a, sm_100a) the transposed Y removes at 4 % more instructions (5 % with a timestep per sample, which takes
    it too: how the timestep is given moves no number). 0 too at other sizes, for the sliced plane and fp64
    (RESULTS.md, issue 19). The order of the sums (the rows' transform before the columns') moves the numbers within
    rounding: the last bits depend on the buffers' dtype, on their number and on the noise's source (in-kernel or a
    tensor), not on the planes a program nor on the timestep's form."""
    if sliced or not tf32x3 or T != 16:
        return 0
    if sixteen_bit:
        return 1 if N == 16 and noise == NOISE_PHILOX else 2
    if N == 16 or neps == 1 or (neps == 3 and noise == NOISE_TENSOR):
        return 2
    return 0


def plane_y_scratch(neps: int, T: int, N: int, arch: int = 90) -> bool:
    """Whether a per-plane launch with two or three buffers at T = 64 runs the whole-operand form with Y in a scratch
    plane between the buffers' products (_step's YSCR): where it is not sliced (plane_sliced: N = 48, 64 on sm_90,
    and with two buffers on sm_100).
    The scratch is an N×N plane a program (one plane a program at T = 64: planes_per_program), in the
    compute type."""
    return neps > 1 and T == 64 and not plane_sliced(neps, T, N, arch)


def plane_warps(T: int, arch: int, sliced: bool) -> int:
    """The warps of a per-plane program: a tile of T² elements over 32·warps threads, one warp per 16 rows up to a
    warpgroup (4: wgmma on sm_90, more warps would duplicate its work); sliced (plane_sliced) on mma.sync (sm_80;
    sm_100 too, which ptxas spilled on at 4) 8 warps for T = 64, where each warp holds the whole width of every
    product's second operand and 4 warps spilled (benchmarks/RESULTS.md). The warps split the same products: no
    number moves."""
    return 8 if sliced and T == 64 and arch // 10 != 9 else max(1, min(4, T // 16))


PLANES_PER_PROGRAM = 16  # the most planes a per-plane program takes (planes_per_program)
MIN_PROGRAMS = 1024      # ... while keeping at least this many programs: ~8 per SM of a 132-SM H100


def planes_per_program(planes: int, T: int, sliced: bool, tf32x3: bool) -> int:
    """PP, the planes each per-plane program takes in turn (_blur_step_kernel), the transform matrices read once
    for them all (_preload): 2, 4, 8 or 16 where the launch keeps ≥ MIN_PROGRAMS programs, for the whole-operand
    form at T = 16 with tf32x3 (N = 7, 9 … 16); 1 otherwise. One plane a program read the matrices' parts from L2
    and staged them through shared memory for every product, half the memory instructions at N = 16
    (benchmarks/RESULTS.md); at T = 32 and 64 the matrices do not fit beside the planes' registers (ptxas spilled
    370-410 B at N = 17 … 28), and fp64 has no parts to share. Small launches keep one plane a program: their time
    is latency, and more programs in flight serve it better. The planes are independent: PP moves no number. Up to
    16 (8 before): the program's start (the matrices' parts, held as accumulators at N = 16 with 16-bit buffers)
    spread over twice the planes, 2 instructions an element fewer (sm_90a fp16-n16; RESULTS.md, issue 19)."""
    if sliced or T != 16 or not tf32x3:
        return 1
    pp = 1
    while pp < PLANES_PER_PROGRAM and planes >= 2 * pp * MIN_PROGRAMS:
        pp *= 2
    return pp


TILES_PER_PROGRAM = 4  # the most grid tiles a program takes (tiles_per_program)


def tiles_per_program(tiles: int, neps: int, per_sample: bool = False) -> int:
    """TP, the grid tiles (_blur_grid_kernel) each program takes in turn: 2 or 4 where the launch keeps ≥ MIN_PROGRAMS
    programs, else 1; always 1 for two or three (``neps``) buffers and for a timestep per sample (``per_sample``),
    where V_R's parts held for several tiles spilled on sm_90a: with three buffers 56-220 B (N = 3 … 32), with two
    4-68 B at TP = 2 and 12-84 B at TP = 4 (N = 3 with per-sample rows, 4, 8, 12), with one and per-sample rows 60 B
    at TP = 4 (N = 28, 16-bit storage: RESULTS.md). Each program computes its tiles' offsets, planes and masks once
    (~17 % of one tile's instructions at N = 7) and reads V_R's parts once; a launch too small to fill the GPU twice
    keeps one tile a program (its time is latency). The tiles are independent: TP moves no number
    (benchmarks/RESULTS.md, issue 19: N = 7 at 74 → 88 % of copy, with N a compile-time constant)."""
    tp = 1
    while neps == 1 and not per_sample and tp < TILES_PER_PROGRAM and tiles >= 2 * tp * MIN_PROGRAMS:
        tp *= 2
    return tp


def _arch(device: torch.device) -> int:
    """The compute capability kron_rows and plane_warps see: the launching GPU's, as triton's driver reports it (the
    compile matrix's stub driver reports its target); 90 under the interpreter, the target the predictions are for,
    so that the CPU tests run both tile heights (one buffer and one timestep a launch: 64 rows; otherwise 16)."""
    if device.type != "cuda" or INTERPRETING:
        return 90
    return triton.runtime.driver.active.get_current_target().arch


def _tf32_round(m: torch.Tensor) -> torch.Tensor:
    """Host twin of the kernels' ``_tf32`` with TF32_RNA (fp32 → fp32 with 11 significant bits, ties away from zero):
    the transform matrices' parts, rounded once on the host (basis_parts), in either mode."""
    bits = m.contiguous().view(torch.int32)
    return ((bits + 0x1000) & ~0x1FFF).view(torch.float32)


_DERIVED: dict = {}  # (what, id(tensor), version) -> (weakref to the tensor, derived tensor)


def _derived(what: str, t: torch.Tensor, build):
    """build(t), computed once per tensor (keyed by identity and version) and kept while t lives: the schedulers
    pass the same table and DCT matrix on every step."""
    key = (what, id(t), t._version)
    hit = _DERIVED.get(key)
    if hit is not None and hit[0]() is t:
        return hit[1]
    for k in [k for k, (ref, _) in _DERIVED.items() if ref() is None]:  # forget the dead
        del _DERIVED[k]
    out = build(t)
    _DERIVED[key] = (weakref.ref(t), out)
    return out


def kperm_order(m: torch.Tensor, dim: int) -> torch.Tensor:
    """m with its entries along ``dim`` in the order _kperm gives a tile's columns: position 8b + 4e + c holds entry
    8b + 2c + e (c < 4, e < 2). The matrix that a reordered tile multiplies takes its rows in this order. (Shape
    operations only, no index tensor: the inspect tool builds the matrices from fake CUDA tensors.)"""
    S = m.shape[dim]
    return m.unflatten(dim, (S // 8, 4, 2)).transpose(dim + 1, dim + 2).flatten(dim, dim + 2)


def basis_parts(basis: torch.Tensor, tf32x3: bool, size: int = 0, copies: int = 1,
                kperm: bool = False, bt: bool = False, kperm_t: bool = False) -> torch.Tensor:
    """The transform matrices the kernels multiply by, [PARTS, 2, S, S]: [:, 0] V (or W = the Kronecker matrix for
    N ≤ KRON_MAX, module docstring; or ``copies`` of V on the diagonal, the grid form's V_L and V_R), [:, 1] its
    transpose, zero-padded to S (``size``, or tile_size); as tf32 (high, low) parts in fp32 with ``tf32x3``, else
    fp64 as is; ``kperm``: the rows of both in _kperm's order (:func:`kperm_order`; [:, 1] is then no longer [:, 0]
    transposed), for matrices that only ever multiply a reordered tile from the right (the grid's V_R, one plane's
    ``br``); ``bt``: each [S, S] matrix stored transposed, for matrices that are only ever the right operand of the
    whole-operand products (_basis_part with BT); ``kperm_t``: the transpose's columns in _kperm's order (the
    inverse's first product Vᵀ Y, Y entering reordered: plane_transposed_y). Built once per basis tensor and shape
    (:func:`_derived`)."""
    N = basis.shape[0]
    S = size or tile_size(N)

    def build(basis):
        v = basis.double()
        if kron_form(N) and not size:  # W[(i, j), (u, v)] = V[u, i] V[v, j], once per plane of a Kronecker row
            m = torch.block_diag(*[torch.kron(v, v).T] * kron_planes(N))
        else:
            m = torch.block_diag(*[v] * copies)
        # bt: each matrix transposed, so its rows (the order kperm sets) are the stored columns (m is square)
        pad2 = (0, S - m.shape[1], 0, S - m.shape[0])
        pair = [torch.nn.functional.pad(t, pad2) for t in ([m.T, m] if bt else [m, m.T])]
        if kperm_t:
            pair[1] = kperm_order(pair[1], 1)
        pad = torch.stack(pair)
        if kperm:
            pad = kperm_order(pad, 2 if bt else 1)
        if not tf32x3:
            return pad.unsqueeze(0)
        hi = _tf32_round(pad.float())
        return torch.stack([hi, _tf32_round(pad.float() - hi)])

    return _derived(f"basis-tf32x3={tf32x3}-{size}-{copies}-{kperm}-{bt}-{kperm_t}", basis, build)


def basis_tma(arch: int, tf32x3: bool, T: int, neps: int, sliced: bool = True, sixteen_bit: bool = False) -> bool:
    """Whether the per-plane products read the transform matrices' parts through TMA descriptors
    (:func:`tma_descriptor`; _basis_part): at T = 64 with two or three buffers (the sliced plane, held on wgmma:
    plane_held, which reads its table's planes and Y's tile through them too; and the whole-operand plane with Y in
    scratch, plane_y_scratch, but three buffers of 16-bit storage, which spilled 20 B at N = 48 with in-kernel noise),
    tf32x3, on sm_90. Loaded by the threads, a part crossed the LSU twice, a global load into registers and a store to
    shared memory, where wgmma reads its operands: those launches were bound by their memory instructions, the parts
    most of them (sm_90a fp32 N = 33, three buffers: 1120 of 2680 lane slots a thread). The TMA unit writes the block
    to shared memory itself, one instruction a program; but each copy takes its barrier's set-up, arrive, wait and
    release, ~40 instructions a thread, where a [64, 64] part by the threads took ~20: elsewhere (the Kronecker rows,
    T = 16 and 32, one buffer at T = 64, sm_100a, whose launches are bound by their issue) the descriptors cost 1-25 %
    more instructions an element, and one buffer at T = 64 spilled 32-64 B (RESULTS.md, issue 19; the grid:
    :func:`grid_tma`). The same values into the same products: no number moves. sm_80 has no TMA unit; fp64 (DMMA)
    keeps the pointers."""
    if not (tf32x3 and arch // 10 == 9 and T == 64 and neps > 1):
        return False
    return sliced or neps == 2 or not sixteen_bit


def grid_tma(arch: int, tf32x3: bool, tp: int) -> bool:
    """Whether the grid form (_blur_grid_kernel) reads V_L's parts through a TMA descriptor (:func:`tma_descriptor`;
    _basis_part): with one tile a program (tiles_per_program), tf32x3, on sm_90. There the [64, 64] parts, loaded and
    stored by the threads for each product, were half the launch's lane slots on the LSU (bf16 N = 28 at batch 2:
    256 of 558 a thread), which bound the rows that held their instructions down (after _pair_left): the copies cost
    ~36 instructions a thread each (their barrier's set-up, arrive, wait and release) where the threads' took ~20,
    and take the LSU's slots down by half. Against the pairs alone: six sm_90a rows rise (bf16 N = 28 65.8 → 73.9 %
    of its roofline, five others to 87.7-100 %), two fall 2.3 and 0.2 points (to 86.3 and 99.8 %); in the sweeps of
    one tile a program the variants below 80 % went 120 → 65 of 288, the most one fell 8 points (bf16 N = 20, three
    buffers, a timestep per sample: 89.8 → 81.8 %: the issue-bound lose; RESULTS.md, issue 19). With several tiles a
    program the copies repeat in every tile's products and rows bound by their issue fell 1-3 points (fp32 N = 12,
    20, 24, 28; registers up to 255): pointers there, and on sm_80 (no TMA unit) and sm_100a (issue-bound in the
    model). (The grid is tf32x3's only: launches_grid.)"""
    return tf32x3 and arch // 10 == 9 and tp == 1


def tma_descriptor(t: torch.Tensor, block: tuple):
    """A TMA descriptor of the contiguous tensor t as a [numel / S, S] matrix (S its last dimension), read in
    ``block`` [R, C] blocks: basis parts [PARTS, 2, S, S] (_basis_part: a left operand's [R, C] block, a right one's
    [C, R] of its transposed storage), the padded table and the sliced plane's scratch (_whole)."""
    from triton.tools.tensor_descriptor import TensorDescriptor

    flat = t.view(-1, t.shape[-1])
    return TensorDescriptor(flat, list(flat.shape), list(flat.stride()), list(block))


def _table(coef: torch.Tensor, tf32x3: bool, pad) -> torch.Tensor:
    """The coefficient table the kernels read, made once per table (_derived): fp32 for fp32 compute (fp64 planes
    take twice the registers, and the large or padded tiles spilled); its planes zero-padded to pad×pad for the
    per-plane kernel (constant offsets, and zeros where the tile leaves the plane)."""
    if pad is None:
        return _derived("float32", coef, lambda t: t.float()) if tf32x3 else coef
    n = coef.shape[-1]
    dt = torch.float32 if tf32x3 else torch.float64
    return _derived(f"padded-{pad}-{dt}", coef,
                    lambda t: torch.nn.functional.pad(t.to(dt), (0, pad - n, 0, pad - n)).contiguous())


def _grid_table(coef: torch.Tensor, tf32x3: bool, planes: int) -> torch.Tensor:
    """The table for the grid form, made once per table (_derived): each coefficient plane repeated for the
    ``planes`` of a tile, [rows + 1, PLANES, planes·N²], so that a tile's coefficients sit at the offsets of its data
    (one offset tile, not two: with a second, ptxas spilled 168-204 B at N = 12 … 32); the last row all NaN, read by
    a launch whose one timestep is not a row (_blur_grid_kernel)."""
    dt = torch.float32 if tf32x3 else torch.float64

    def build(t):  # (a pad, not a concatenation: the inspect tool builds it from fake CUDA tensors)
        rows = t.to(dt).flatten(2).repeat(1, 1, planes)
        return torch.nn.functional.pad(rows, (0, 0, 0, 0, 0, 1), value=float("nan")).contiguous()

    return _derived(f"grid-{planes}-{dt}", coef, build)


def launch_blur_step(*, x, eps, out, coef, basis, t_tensor, t_value, seed_tensor, seed_value, noise, noise_mode,
                     B, C, N):
    """One launch: ceil(B·C / (GR·GC·TP)) programs of TP tiles of GR·GC planes in the grid form (launches_grid; TP:
    tiles_per_program), else ceil(B·C / (G·PB)) programs of G·PB planes in the Kronecker form (kron_form; PB:
    kron_rows), else ceil(B·C / PP) programs of PP planes taken in turn (planes_per_program); after a noise pass for
    sizes whose tile rows are not whole Philox groups. ``x``,
    ``eps``, ``noise``: [B, C, N, N] with contiguous per-sample blocks (any batch stride; copied to contiguous for
    the Kronecker and grid forms); ``out`` contiguous. All checks are the op's (gddim/ops.py), but the planes'
    count (< 2³¹: the kernels divide plane indices in 32 bits) and the table's values (< 2³¹: 32-bit offsets)."""
    if B * C >= 2**31:  # the kernels divide plane indices in 32 bits
        raise ValueError(f"blur_step: {B * C} planes (batch × channels): more than 2³¹ - 1")
    if coef.numel() >= 2**31:  # the Kronecker rows' per-sample table offsets are 32-bit (one rule for every form)
        raise ValueError(f"blur_step: a coefficient table of {coef.numel()} values: more than 2³¹ - 1")
    tf32x3 = x.dtype != torch.float64
    arch, per_sample = _arch(x.device), t_tensor is not None and t_tensor.numel() > 1
    split = (TF32_RN if arch >= 90 else TF32_RNA).value if tf32x3 else 0  # the kernels' TF32X3 (_tf32)
    grid = launches_grid(N, len(eps), B * C, tf32x3, arch)
    kron = kron_form(N) and not grid
    T = GRID_ROWS if grid else tile_size(N)
    # rows of the tile that are whole Philox groups (the plane's rows, or whole planes as rows, or the grid's runs of
    # four in a plane's row) draw in-kernel; other sizes would draw a group per element (4x the Philox work, and the
    # registers spill): they draw the same normals (same counters) into a buffer first, read as a noise tensor
    G = kron_planes(N) if kron else 1
    GR, GC = (GRID_ROWS // N, GRID_COLS // N) if grid else (1, 1)
    aligned4 = rows_aligned4(N, kron)
    if noise_mode == NOISE_PHILOX and not aligned4:
        n = B * C * N * N
        noise = torch.empty((B, C, N, N), device=x.device, dtype=torch.float32)
        _noise_fill_kernel[(triton.cdiv(n, 1024),)](noise, n, seed_tensor if seed_tensor is not None else coef,
                                                    seed_value, SEED_FROM_PTR=seed_tensor is not None,
                                                    FAST=fast_math(x.device), BLOCK=1024)
        noise_mode = NOISE_TENSOR
    sliced = not kron and not grid and plane_sliced(len(eps), T, N, arch)
    kperm = kron and kron_kperm(T, tf32x3)  # one switch for Wᵀ's row order and the kernel's (KPERM)
    # Kronecker tiles of PB·T elements: 8 a thread up to one warpgroup (wgmma; more warps duplicate its work)
    PB = kron_rows(len(eps), arch, per_sample, T=T, planes=B * C, G=G) if kron else 1
    warps = max(1, min(4, PB * T // 256)) if kron else plane_warps(T, arch, sliced)
    if kron or grid:  # one offset for every buffer (_blur_kron_kernel, _blur_grid_kernel); the op's are contiguous
        x, eps, noise = x.contiguous(), [t.contiguous() for t in eps], None if noise is None else noise.contiguous()
    e = list(eps) + [eps[0]] * (3 - len(eps))
    common = dict(
        CT=tl.float64 if x.dtype == torch.float64 else tl.float32, NEPS=len(eps), NOISE=noise_mode,
        T_FROM_PTR=t_tensor is not None, T_PER_SAMPLE=per_sample,
        SEED_FROM_PTR=seed_tensor is not None, FAST=fast_math(x.device), TF32X3=split, T=T)
    # the left and right matrices of the grid and of one plane; the right ones only multiply _kperm's reordered
    # tiles from the right (tf32x3): their rows in that order
    if grid:
        tp = tiles_per_program(triton.cdiv(B * C, GR * GC), len(eps), per_sample)
        bp = (basis_parts(basis, tf32x3, GRID_ROWS, GR),
              basis_parts(basis, tf32x3, GRID_COLS, GC, kperm=tf32x3, bt=True))
        if grid_tma(arch, tf32x3, tp):  # V_L's [64, 64] parts
            bp = (tma_descriptor(bp[0], (GRID_ROWS, GRID_ROWS)), bp[1])
    elif kron:  # W as is (X W); Wᵀ for Y Wᵀ, its rows in _kperm's order where Y is reordered (kron_kperm, _inv)
        bp = (basis_parts(basis, tf32x3, bt=True), basis_parts(basis, tf32x3, kperm=kperm, bt=True))
    else:  # Vᵀ's columns reordered where Y enters Vᵀ Y reordered (plane_transposed_y)
        pp = planes_per_program(B * C, T, sliced, tf32x3)
        hold = plane_hold(N, T, x.dtype.itemsize == 2, noise_mode != NOISE_NONE, pp)
        yt = plane_transposed_y(N, T, sliced, tf32x3, x.dtype.itemsize == 2, len(eps), noise_mode)
        bp = (basis_parts(basis, tf32x3, kperm_t=yt == 2), basis_parts(basis, tf32x3, kperm=tf32x3, bt=True))
        held = sliced and plane_held(T, arch, tf32x3)  # the sliced plane's scratch: Y's tile, and a staging tile
        # (TMA coordinates are 32-bit: V's rows are < 4·T, the table's < its rows · 5 · 64 ≤ coef.numel() < 2³¹, the
        # scratch's B·C·T: past 2³¹ its 2³⁹ bytes could not be allocated)
        tma = basis_tma(arch, tf32x3, T, len(eps), sliced, x.dtype.itemsize == 2) and B * C * T < 2**31
        if tma:  # V's [T, 16] slices (sliced) or [T, T] blocks; the right one whole
            assert pp == 1 and (held or not sliced), (pp, sliced, held)
            bp = (tma_descriptor(bp[0], (T, _KC.value if sliced else T)), tma_descriptor(bp[1], (T, T)))
    ptrs = (x, e[0], e[1], e[2], noise if noise is not None else coef, out, *bp,
            _grid_table(coef, tf32x3, GR * GC) if grid else _table(coef, tf32x3, T if sliced else None), coef.shape[0],
            t_tensor if t_tensor is not None else coef, t_value,
            seed_tensor if seed_tensor is not None else coef, seed_value)
    strides = (x.stride(0), e[0].stride(0), e[1].stride(0), e[2].stride(0), noise.stride(0) if noise is not None else 0)
    if grid:
        _blur_grid_kernel[(triton.cdiv(B * C, GR * GC * tp),)](*ptrs, C, B * C, ALIGNED4=aligned4, TC=GRID_COLS, N=N,
                                                                GR=GR, GC=GC, TP=tp, num_warps=4, **common)
    elif kron:
        _blur_kron_kernel[(triton.cdiv(B * C, G * PB),)](
            *ptrs, C, B * C, ALIGNED4=aligned4, N=N, G=G, PB=PB, num_warps=warps,
            EVEN=G * N * N == T and B * C % (G * PB) == 0, KPERM=kperm, **common,
            SPLIT=G * N * N == T and B * C % (G * PB) != 0 and B * C > G * PB)  # (one program: no full program)
    else:
        # each plane's two scratch tiles (_plane_step; one, Y's, where it holds its first products: plane_held), or a
        # program's plane for Y (plane_y_scratch), in the compute type; the whole-operand form reads none otherwise
        yscr = plane_y_scratch(len(eps), T, N, arch)
        assert not yscr or pp == 1, pp  # (the kernel addresses the scratch by program)
        scr = torch.empty((B, C, 1 if held else 2, T, T) if sliced else (B, C, N, N), device=x.device,
                          dtype=torch.float32 if tf32x3 else torch.float64) if sliced or yscr else coef
        # the held sliced plane reads its table's planes and Y's tile through TMA descriptors too (_whole)
        ct, yd = (tma_descriptor(ptrs[8], (T, T)), tma_descriptor(scr, (T, T))) if tma and held else (ptrs[8], scr)
        _blur_step_kernel[(triton.cdiv(B * C, pp),)](
            *ptrs[:6], scr, *ptrs[6:8], ct, yd, *ptrs[8:], C, N, *strides, B * C, *div_magic(C), ALIGNED4=aligned4,
            num_warps=warps, LMASK=N % 16 == 0, SLICED=sliced, PP=pp, YSCR=yscr, KN=sliced_extent(N) if sliced else 0,
            HELD=held, FULL=plane_full(N, T, sliced, tf32x3, arch), HOLD=hold, YT=yt, **common)
