// Philox4x32-10 and the normal/uniform conversions of gmm_triton's RNG contract (see reference.py):
//   key = (lo32(seed), hi32(seed)), counter = (lo32(c), hi32(c), stream, 0)
//   U(w) = (w >> 8) 2^-24,  U°(w) = ((w >> 8) + 1) 2^-24,
//   BoxMuller(a, b) = (r cos θ, r sin θ), r = sqrt(-2 ln U°(a)), θ = 2π U(b)
// The loops are written over small arrays so that gcc vectorises them: the 10 rounds unroll, the 32x32->64
// products become vpmuludq, and log / sincos are branch-free polynomials (no libm calls, which would not
// vectorise without -ffast-math; fast-math would also break the step's NaN semantics). The normals are within the
// contract's 1e-6 of the float64 reference (reference.NORMAL_BOUNDS; 7.9e-7 at worst over the adversarial and
// structured words of tests/test_philox_math.py); the integers are bit-exact.
#pragma once
#include <cstdint>
#include <cstring>
#ifdef __AVX2__
#include <immintrin.h>
#endif

namespace gmm {

constexpr int kTile = 256;  // Philox groups per tile: 1024 normals, 4 KiB, stays in L1

inline void philox_scalar(uint64_t seed, uint32_t stream, uint64_t g0, int n, uint32_t* __restrict o0,
                          uint32_t* __restrict o1, uint32_t* __restrict o2, uint32_t* __restrict o3) {
  const uint32_t key0 = static_cast<uint32_t>(seed), key1 = static_cast<uint32_t>(seed >> 32);
#pragma GCC ivdep
  for (int i = 0; i < n; ++i) {
    const uint64_t c = g0 + static_cast<uint64_t>(i);
    uint32_t c0 = static_cast<uint32_t>(c), c1 = static_cast<uint32_t>(c >> 32), c2 = stream, c3 = 0;
    uint32_t k0 = key0, k1 = key1;
#pragma GCC unroll 10
    for (int r = 0; r < 10; ++r) {
      const uint64_t p0 = static_cast<uint64_t>(0xD2511F53u) * c0;
      const uint64_t p1 = static_cast<uint64_t>(0xCD9E8D57u) * c2;
      const uint32_t n0 = static_cast<uint32_t>(p1 >> 32) ^ c1 ^ k0;
      const uint32_t n2 = static_cast<uint32_t>(p0 >> 32) ^ c3 ^ k1;
      c1 = static_cast<uint32_t>(p1);
      c3 = static_cast<uint32_t>(p0);
      c0 = n0;
      c2 = n2;
      k0 += 0x9E3779B9u;
      k1 += 0xBB67AE85u;
    }
    o0[i] = c0;
    o1[i] = c1;
    o2[i] = c2;
    o3[i] = c3;
  }
}

#ifdef __AVX2__
// High 32 bits of the eight 32x32 products a*m: even lanes from one vpmuludq, odd lanes from another.
inline __m256i mulhi_epu32(__m256i a, __m256i m) {
  const __m256i even = _mm256_srli_epi64(_mm256_mul_epu32(a, m), 32);
  const __m256i odd = _mm256_mul_epu32(_mm256_srli_epi64(a, 32), m);
  return _mm256_blend_epi32(even, odd, 0xAA);
}
#endif

// Philox4x32-10 of counters g0 .. g0+n-1 (counter words lo32, hi32, stream, 0): four output words each.
inline void philox_tile(uint64_t seed, uint32_t stream, uint64_t g0, int n, uint32_t* __restrict o0,
                        uint32_t* __restrict o1, uint32_t* __restrict o2, uint32_t* __restrict o3) {
  int i = 0;
#ifdef __AVX2__
  const __m256i MA = _mm256_set1_epi32(static_cast<int>(0xD2511F53u));
  const __m256i MB = _mm256_set1_epi32(static_cast<int>(0xCD9E8D57u));
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  for (; i + 8 <= n; i += 8) {
    const uint64_t c = g0 + static_cast<uint64_t>(i);
    // lo32 of c + lane may wrap into hi32 within the vector: compute both words per lane.
    const __m256i lo = _mm256_add_epi32(_mm256_set1_epi32(static_cast<int>(static_cast<uint32_t>(c))), lane);
    const __m256i carry = _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(0x80000000u ^ static_cast<uint32_t>(c))),
                                             _mm256_xor_si256(lo, _mm256_set1_epi32(static_cast<int>(0x80000000u))));
    __m256i c0 = lo;
    __m256i c1 = _mm256_sub_epi32(_mm256_set1_epi32(static_cast<int>(static_cast<uint32_t>(c >> 32))), carry);
    __m256i c2 = _mm256_set1_epi32(static_cast<int>(stream));
    __m256i c3 = _mm256_setzero_si256();
    uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
    for (int r = 0; r < 10; ++r) {
      const __m256i hi0 = mulhi_epu32(c0, MA), lo0 = _mm256_mullo_epi32(c0, MA);
      const __m256i hi1 = mulhi_epu32(c2, MB), lo1 = _mm256_mullo_epi32(c2, MB);
      c0 = _mm256_xor_si256(_mm256_xor_si256(hi1, c1), _mm256_set1_epi32(static_cast<int>(k0)));
      c2 = _mm256_xor_si256(_mm256_xor_si256(hi0, c3), _mm256_set1_epi32(static_cast<int>(k1)));
      c1 = lo1;
      c3 = lo0;
      k0 += 0x9E3779B9u;
      k1 += 0xBB67AE85u;
    }
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(o0 + i), c0);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(o1 + i), c1);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(o2 + i), c2);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(o3 + i), c3);
  }
#endif
  if (i < n) philox_scalar(seed, stream, g0 + static_cast<uint64_t>(i), n - i, o0 + i, o1 + i, o2 + i, o3 + i);
}

inline float uniform24(uint32_t w) { return static_cast<float>(static_cast<int32_t>(w >> 8)) * 5.9604644775390625e-08f; }

// ln(x) for x in (0, 1]: x = 2^e f with f in [√½, √2), ln f = 2 atanh(t), t = (f-1)/(f+1), |t| < 0.172.
inline float log_unit(float x) {
  int32_t ix;
  std::memcpy(&ix, &x, 4);
  ix += 0x3f800000 - 0x3f3504f3;
  const int32_t e = (ix >> 23) - 127;
  ix = (ix & 0x007fffff) + 0x3f3504f3;
  float f;
  std::memcpy(&f, &ix, 4);
  const float t = (f - 1.0f) / (f + 1.0f), t2 = t * t;
  const float p = t * (2.0f + t2 * (0.6666666667f + t2 * (0.4f + t2 * (0.2857142857f + t2 * 0.2222222222f))));
  return static_cast<float>(e) * 0.69314718056f + p;
}

// sin and cos of 2πu for u in [0, 1): quadrant from 4u (exact), Taylor on |r| <= π/4.
inline void sincos_2pi(float u, float& s, float& c) {
  const float y = 4.0f * u;
  const int q = static_cast<int>(y + 0.5f);
  const float r = (y - static_cast<float>(q)) * 1.5707963267948966f, r2 = r * r;
  const float sr = r * (1.0f + r2 * (-1.6666666667e-1f + r2 * (8.3333333333e-3f + r2 * (-1.9841269841e-4f + r2 * 2.7557319224e-6f))));
  const float cr = 1.0f + r2 * (-0.5f + r2 * (4.1666666667e-2f + r2 * (-1.3888888889e-3f + r2 * 2.4801587302e-5f)));
  const int qm = q & 3;
  const float sa = (qm & 1) ? cr : sr, ca = (qm & 1) ? sr : cr;
  s = (qm >= 2) ? -sa : sa;
  c = ((qm == 1) | (qm == 2)) ? -ca : ca;
}

// The Box-Muller radius √(-2 ln U°(w)) of a word, U°(w) = ((w >> 8) + 1) 2^-24 ∈ (0, 1].
inline float bm_radius(uint32_t w) {
  return __builtin_sqrtf(-2.0f * log_unit(static_cast<float>(static_cast<int32_t>(w >> 8) + 1) * 5.9604644775390625e-08f));
}

// Normals of flat indices [start, start + n) of `stream`, written to out[0..n).
inline void normals(uint64_t seed, uint32_t stream, int64_t start, int64_t n, float* __restrict out) {
  alignas(64) uint32_t w0[kTile], w1[kTile], w2[kTile], w3[kTile];
  alignas(64) float buf[4 * kTile];
  int64_t g = start >> 2;
  const int64_t g_end = (start + n + 3) >> 2;
  while (g < g_end) {
    const int cnt = static_cast<int>(g_end - g < kTile ? g_end - g : kTile);
    philox_tile(seed, stream, static_cast<uint64_t>(g), cnt, w0, w1, w2, w3);
#pragma GCC ivdep
    for (int i = 0; i < cnt; ++i) {
      const float r01 = bm_radius(w0[i]), r23 = bm_radius(w2[i]);
      float s01, c01, s23, c23;
      sincos_2pi(uniform24(w1[i]), s01, c01);
      sincos_2pi(uniform24(w3[i]), s23, c23);
      buf[4 * i + 0] = r01 * c01;
      buf[4 * i + 1] = r01 * s01;
      buf[4 * i + 2] = r23 * c23;
      buf[4 * i + 3] = r23 * s23;
    }
    // copy the lanes that fall in [start, start + n)
    const int64_t first = g * 4, last = (g + cnt) * 4;
    const int64_t lo = first > start ? first : start, hi = last < start + n ? last : start + n;
    std::memcpy(out + (lo - start), buf + (lo - first), sizeof(float) * (hi - lo));
    g += cnt;
  }
}

// Philox4x32-10 of arbitrary counters c[0..n): the per-element path of permuted layouts.
inline void philox_counters(uint64_t seed, uint32_t stream, const uint64_t* __restrict c, int n,
                            uint32_t* __restrict o0, uint32_t* __restrict o1, uint32_t* __restrict o2,
                            uint32_t* __restrict o3) {
  for (int i = 0; i < n; ++i) philox_scalar(seed, stream, c[i], 1, o0 + i, o1 + i, o2 + i, o3 + i);
}

// The normals of flat indices base + idx[i], i < n <= 4 * kTile: each element computes its group (base + idx) / 4
// and takes lane (base + idx) % 4 of it, so any order of indices gives the contract's numbers.
inline void normals_at(uint64_t seed, uint32_t stream, uint64_t base, const int64_t* __restrict idx, int n,
                       float* __restrict out) {
  alignas(64) uint64_t g[4 * kTile];
  alignas(64) uint32_t w0[4 * kTile], w1[4 * kTile], w2[4 * kTile], w3[4 * kTile];
  for (int i = 0; i < n; ++i) g[i] = (base + static_cast<uint64_t>(idx[i])) >> 2;
  philox_counters(seed, stream, g, n, w0, w1, w2, w3);
  for (int i = 0; i < n; ++i) {
    const int lane = static_cast<int>((base + static_cast<uint64_t>(idx[i])) & 3);
    const uint32_t wa = lane < 2 ? w0[i] : w2[i], wb = lane < 2 ? w1[i] : w3[i];
    const float r = bm_radius(wa);
    float s, c;
    sincos_2pi(uniform24(wb), s, c);
    out[i] = r * ((lane & 1) ? s : c);
  }
}

inline float uniform_at(uint64_t seed, uint32_t stream, uint64_t index) {
  uint32_t a, b, c, d;
  philox_tile(seed, stream, index, 1, &a, &b, &c, &d);
  return uniform24(a);
}

}  // namespace gmm
