"""Philox helpers shared by the fused kernels (the RNG contract is stated in reference.py).

The rounds are triton's ``tl.philox`` (standard Philox4x32-10; the tests check it bit-exactly against
``reference.philox4x32``). The integer → uniform and Box-Muller conversions are ours, so the stream does
not move if triton's ``tl.rand``/``tl.randn`` formulas change, and the C++ twin can match them.
"""
import triton
import triton.language as tl

# Globals read inside @triton.jit must be constexpr objects (a GPU compile rejects plain floats; the
# interpreter does not), and triton does not accept the `NAME: tl.constexpr = v` annotation form for globals.
TWO_PI = tl.constexpr(6.283185307179586)
INV_2_24 = tl.constexpr(5.9604644775390625e-08)  # 2**-24


@triton.jit
def _words(seed, counter, STREAM: tl.constexpr):
    """Philox4x32-10 of (lo32(counter), hi32(counter), STREAM, 0) under the 64-bit ``seed``."""
    c = counter.to(tl.int64)
    lo = (c & 0xFFFFFFFF).to(tl.uint32)
    hi = ((c >> 32) & 0xFFFFFFFF).to(tl.uint32)
    return tl.philox(seed, lo, hi, lo * 0 + STREAM, lo * 0)


@triton.jit
def _uniform(w):
    """U(w) = (w >> 8)·2⁻²⁴ ∈ [0, 1), exact in float32."""
    return (w >> 8).to(tl.int32).to(tl.float32) * INV_2_24


@triton.jit
def _box_muller(wa, wb):
    """(r cos θ, r sin θ) with r = √(-2 ln U°(wa)) and θ = 2π U(wb); U°(w) = ((w >> 8) + 1)·2⁻²⁴ ∈ (0, 1]."""
    u = ((wa >> 8).to(tl.int32) + 1).to(tl.float32) * INV_2_24
    r = tl.sqrt(-2.0 * tl.log(u))
    th = TWO_PI * _uniform(wb)
    return r * tl.cos(th), r * tl.sin(th)


@triton.jit
def normal_block(seed, start, BLOCK: tl.constexpr, STREAM: tl.constexpr, ALIGNED4: tl.constexpr):
    """Normals of flat element indices start .. start+BLOCK-1 of ``STREAM`` (float32).

    Element i takes lane i % 4 of Philox group i // 4. With ALIGNED4 (start % 4 == 0) one Philox call
    serves four elements and the lanes are interleaved into place; otherwise each element computes its
    own group and picks its lane (4x the Philox work, same numbers).
    """
    if ALIGNED4:
        g = start // 4 + tl.arange(0, BLOCK // 4)
        w0, w1, w2, w3 = _words(seed, g, STREAM)
        n0, n1 = _box_muller(w0, w1)
        n2, n3 = _box_muller(w2, w3)
        return tl.interleave(tl.interleave(n0, n2), tl.interleave(n1, n3))
    else:
        i = start + tl.arange(0, BLOCK).to(tl.int64)
        w0, w1, w2, w3 = _words(seed, i >> 2, STREAM)
        n0, n1 = _box_muller(w0, w1)
        n2, n3 = _box_muller(w2, w3)
        lane = i & 3
        return tl.where(lane == 0, n0, tl.where(lane == 1, n1, tl.where(lane == 2, n2, n3)))


@triton.jit
def uniform_at(seed, index, STREAM: tl.constexpr):
    """One uniform for ``index`` of ``STREAM`` (word 0 of its Philox block)."""
    w0, _, _, _ = _words(seed, index, STREAM)
    return _uniform(w0)


@triton.jit
def _normal_fill_kernel(out_ptr, n, seed, start, STREAM: tl.constexpr, BLOCK: tl.constexpr,
                        ALIGNED4: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    z = normal_block(seed, start + pid * BLOCK, BLOCK, STREAM, ALIGNED4)
    tl.store(out_ptr + offs, z.to(out_ptr.dtype.element_ty), mask=offs < n)


def normal_fill(out, seed: int, stream: int, start: int = 0, block: int = 4096):
    """Fills the contiguous tensor ``out`` with the Philox normals of elements start.. of ``stream``."""
    n = out.numel()
    if n == 0:
        return out
    _normal_fill_kernel[(triton.cdiv(n, block),)](out, n, seed, start, STREAM=stream, BLOCK=block,
                                                  ALIGNED4=start % 4 == 0)
    return out


@triton.jit
def _words_kernel(out_ptr, n, seed, start, STREAM: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    w0, w1, w2, w3 = _words(seed, start + offs, STREAM)
    m = offs < n
    tl.store(out_ptr + offs * 4 + 0, w0.to(tl.int32, bitcast=True), mask=m)
    tl.store(out_ptr + offs * 4 + 1, w1.to(tl.int32, bitcast=True), mask=m)
    tl.store(out_ptr + offs * 4 + 2, w2.to(tl.int32, bitcast=True), mask=m)
    tl.store(out_ptr + offs * 4 + 3, w3.to(tl.int32, bitcast=True), mask=m)


def philox_words(out, seed: int, stream: int, start: int = 0, block: int = 1024):
    """out [n, 4] int32 ← the Philox words of counters start..start+n-1 (the integers of the RNG contract)."""
    n = out.shape[0]
    _words_kernel[(triton.cdiv(n, block),)](out, n, seed, start, STREAM=stream, BLOCK=block)
    return out
