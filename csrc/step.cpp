// The CPU twin of kernels/step.py: the same fused step, same table layout, same Philox stream.
// Work is split into (sample, chunk) tasks run by at::parallel_for (OpenMP). Within a chunk the maths runs
// in stages over L1-resident tiles (load -> convert -> clip -> combine -> noise -> store), each a simple loop
// gcc vectorises, instead of one loop whose body branches on a dozen runtime flags.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "contract.h"
#include "philox.h"
#include "step.h"
#ifdef __F16C__
#include <immintrin.h>
#endif

namespace gmm {
namespace {

constexpr int64_t kChunk = 16384;  // elements per task
constexpr int kLane = 1024;        // elements per stage tile

struct SampleScalars {
  bool valid;    // the timestep row (and the mixture step table) exist: otherwise the sample is NaN
  double al, s_t, alp, s_prev2, sigma, c_eps;
  uint64_t seed;  // the sample's Philox key: the launch's seed, or its own (per-sample seeds)
  uint64_t base;  // the RNG counter of the sample's element 0: g * D, g its global index
  bool apply;    // mixture applies at this step
  int64_t srow;  // mixture table row
  int64_t k;     // component
};

// Logical indices of memory positions [j0, j0 + n) of a sample's block, for permuted layouts only (StepArgs);
// otherwise a tile's logical indices are j0, j0 + 1, ... and nothing is written.
inline void logical_tile(const StepArgs& a, int64_t j0, int n, int64_t* __restrict idx) {
  if (!a.permuted) return;
  for (int i = 0; i < n; ++i) {
    const int64_t j = j0 + i, t = j / a.n2;
    idx[i] = (t / a.n1) * a.l0 + (t % a.n1) * a.l1 + (j % a.n2) * a.l2;
  }
}

template <typename T>
inline void load_tile(const T* __restrict p, int n, float* __restrict o) {
  for (int i = 0; i < n; ++i) o[i] = static_cast<float>(p[i]);
}
inline void load_tile(const double* __restrict p, int n, double* __restrict o) { std::memcpy(o, p, n * sizeof(double)); }
template <typename T>
inline void load_tile(const T* __restrict p, int n, double* __restrict o) {
  for (int i = 0; i < n; ++i) o[i] = static_cast<double>(p[i]);
}

template <typename T, typename A>
inline void store_tile(const A* __restrict v, int n, A bad, T* __restrict p) {
  for (int i = 0; i < n; ++i) p[i] = static_cast<T>(v[i] + bad);
}

#ifdef __F16C__
// c10::Half converts one element at a time through bit manipulation that gcc does not vectorise; F16C does
// eight per instruction, with the same round-to-nearest-even as torch.
inline void load_tile(const c10::Half* __restrict p, int n, float* __restrict o) {
  int i = 0;
  for (; i + 8 <= n; i += 8)
    _mm256_storeu_ps(o + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + i))));
  for (; i < n; ++i) o[i] = static_cast<float>(p[i]);
}

inline void store_tile(const float* __restrict v, int n, float bad, c10::Half* __restrict p) {
  int i = 0;
  const __m256 b = _mm256_set1_ps(bad);
  for (; i + 8 <= n; i += 8)
    _mm_storeu_si128(reinterpret_cast<__m128i*>(p + i),
                     _mm256_cvtps_ph(_mm256_add_ps(_mm256_loadu_ps(v + i), b), _MM_FROUND_TO_NEAREST_INT));
  for (; i < n; ++i) p[i] = static_cast<c10::Half>(v[i] + bad);
}
#endif

// Noise of sample b (scalars s) at memory positions [d0, d0 + n) (logical indices idx): Philox stream 0 under its
// key at flat index s.base + idx, or the caller's tensor (stored in the same layout as the sample).
template <typename A>
inline void noise_tile(const StepArgs& a, int64_t b, const SampleScalars& s, int64_t d0, const int64_t* idx, int n,
                       A* __restrict z) {
  if (a.noise_mode == kNoisePhilox) {
    alignas(64) float tmp[kLane];
    if (a.permuted) {
      normals_at(s.seed, kStreamNoise, s.base, idx, n, tmp);
    } else {
      normals(s.seed, kStreamNoise, static_cast<int64_t>(s.base) + d0, n, tmp);
    }
    for (int i = 0; i < n; ++i) z[i] = static_cast<A>(tmp[i]);
    return;
  }
  const int64_t off = b * a.noise.stride(0) + d0;
  switch (a.noise.scalar_type()) {  // the caller's noise may come in any floating dtype
    case at::kFloat: load_tile(a.noise.data_ptr<float>() + off, n, z); break;
    case at::kDouble: load_tile(a.noise.data_ptr<double>() + off, n, z); break;
    case at::kHalf: load_tile(a.noise.data_ptr<c10::Half>() + off, n, z); break;
    default: load_tile(a.noise.data_ptr<c10::BFloat16>() + off, n, z);
  }
}

// n elements of a mixture table (float32, or the bfloat16 storage build_mixture offers) at the tile's logical
// indices off + (d0, d0 + 1, ...) or, permuted, off + idx[i], as float: converted a tile at a time, so a bf16 table
// is never copied whole.
inline void table_tile(const StepArgs& a, const at::Tensor& t, int64_t off, int64_t d0, const int64_t* idx, int n,
                       float* __restrict o) {
  const bool bf16 = t.scalar_type() == at::kBFloat16;
  if (!a.permuted) {  // a contiguous run
    if (bf16) load_tile(t.data_ptr<c10::BFloat16>() + off + d0, n, o);
    else std::memcpy(o, t.data_ptr<float>() + off + d0, n * sizeof(float));
    return;
  }
  if (bf16) {
    const c10::BFloat16* p = t.data_ptr<c10::BFloat16>() + off;
    for (int i = 0; i < n; ++i) o[i] = static_cast<float>(p[idx[i]]);
  } else {
    const float* p = t.data_ptr<float>() + off;
    for (int i = 0; i < n; ++i) o[i] = p[idx[i]];
  }
}

SampleScalars sample_scalars(const StepArgs& a, int64_t b) {
  SampleScalars s{};
  const int64_t R = a.coef.size(0);
  int64_t row = !a.rows.defined() ? a.row : a.rows.data_ptr<int64_t>()[a.rows.numel() == 1 ? 0 : b];
  s.valid = row >= 0 && row < R;
  if (!s.valid) row = 0;
  const double* c = a.coef.data_ptr<double>() + row * kNCols;
  s.al = c[kColAlpha];
  s.s_t = c[kColS];
  s.alp = c[kColAlphaPrev];
  s.s_prev2 = c[kColSPrev2];
  s.sigma = a.eta * std::sqrt(c[kColVar]);
  s.c_eps = std::sqrt(std::max(s.s_prev2 - s.sigma * s.sigma, 0.0));
  // the sample's key and global index: the launch's seed at offset + b, or its own seed at offset (as if it were
  // sample 0 of its own run)
  const bool own = a.seeds.defined();
  s.seed = own ? static_cast<uint64_t>(a.seeds.data_ptr<int64_t>()[b]) : a.seed;
  const uint64_t g = a.offset + (own ? 0 : static_cast<uint64_t>(b));
  s.base = g * static_cast<uint64_t>(a.D);
  if (a.mixed) {
    s.apply = c[kColFinal] == 0.0 || a.offset_final;
    const int64_t S = a.delta.size(0);
    s.srow = S == 1 ? 0 : static_cast<int64_t>(c[kColStep]);
    if (s.srow < 0 || s.srow >= S) {  // a step beyond the mixture's tables: NaN, never a read past them
      s.valid = false;
      s.srow = 0;
    }
    const float u = uniform_at(s.seed, kStreamChoice, g);
    const float* cdf = a.cdf.data_ptr<float>();
    int64_t k = 0;
    for (int64_t j = 0; j < a.cdf.numel(); ++j) k += cdf[j] <= u;
    s.k = std::min<int64_t>(k, a.delta.size(1) - 1);
  }
  return s;
}

// part[b, chunk, j] = sum over the chunk of Q[srow, j, d] z[b, d]  (the "exact" mode's projection)
void project(const StepArgs& a, int64_t n_chunks, std::vector<double>& part) {
  const int64_t KP = a.cdf.numel();
  at::parallel_for(0, a.B * n_chunks, 1, [&](int64_t begin, int64_t end) {
    alignas(64) double z[kLane];
    alignas(64) float q[kLane];
    alignas(64) int64_t idx[kLane];
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / n_chunks, ch = task % n_chunks;
      const SampleScalars s = sample_scalars(a, b);
      double* out = part.data() + task * KP;
      std::fill(out, out + KP, 0.0);
      const int64_t q0 = s.srow * KP * a.D;  // this sample's basis rows
      for (int64_t d0 = ch * kChunk; d0 < std::min(a.D, (ch + 1) * kChunk); d0 += kLane) {
        const int n = static_cast<int>(std::min<int64_t>(kLane, a.D - d0));
        logical_tile(a, d0, n, idx);
        noise_tile(a, b, s, d0, idx, n, z);
        for (int64_t j = 0; j < KP; ++j) {
          table_tile(a, a.basis, q0 + j * a.D, d0, idx, n, q);
          double acc = 0.0;
          for (int i = 0; i < n; ++i) acc += static_cast<double>(q[i]) * z[i];
          out[j] += acc;
        }
      }
    }
  });
}

template <typename T, typename A>
void step_impl(const StepArgs& a) {
  const int64_t n_chunks = (a.D + kChunk - 1) / kChunk;
  const int64_t KP = a.mixed ? a.cdf.numel() : 1;
  std::vector<double> part;
  if (a.mixed && a.var_mode == kVarExact && a.noise_mode != kNoiseNone) {
    part.resize(a.B * n_chunks * KP);
    project(a, n_chunks, part);
  }
  const T* X = a.x.data_ptr<T>();
  const T* M = a.m.data_ptr<T>();
  T* OUT = a.out.data_ptr<T>();
  T* X0 = a.write_x0 ? a.x0.data_ptr<T>() : nullptr;
  const int64_t xbs = a.x.stride(0), mbs = a.m.stride(0), mhalf = a.B * a.m.stride(0);
  const A clip = static_cast<A>(a.clip), g = static_cast<A>(a.guidance);
  const A* thr = nullptr;
  std::vector<A> thr_a;
  if (a.threshold.defined()) {
    thr_a.resize(a.B);
    for (int64_t b = 0; b < a.B; ++b) thr_a[b] = static_cast<A>(a.threshold.data_ptr<float>()[b]);
    thr = thr_a.data();
  }

  at::parallel_for(0, a.B * n_chunks, 1, [&](int64_t begin, int64_t end) {
    alignas(64) A xv[kLane], mv[kLane], x0v[kLane], ev[kLane], pv[kLane];
    alignas(64) A z[kLane];
    alignas(64) float aux[kLane], tab[kLane];
    alignas(64) int64_t idx[kLane];
    std::vector<double> proj(KP, 0.0), cj(KP, 0.0);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / n_chunks, ch = task % n_chunks;
      const SampleScalars s = sample_scalars(a, b);
      const A al = static_cast<A>(s.al), s_t = static_cast<A>(s.s_t), alp = static_cast<A>(s.alp);
      const A c_eps = static_cast<A>(s.c_eps), sigma = static_cast<A>(s.sigma);
      const A bad = s.valid ? A(0) : std::numeric_limits<A>::quiet_NaN();
      int64_t delta0 = 0, q0 = 0;  // offsets of this sample's offset row and basis rows
      if (a.mixed) {
        delta0 = (s.srow * a.delta.size(1) + s.k) * a.D;
        if (a.var_mode == kVarExact && a.noise_mode != kNoiseNone) {
          // Σ over this sample's chunks in a fixed order: deterministic for any thread count.
          std::fill(proj.begin(), proj.end(), 0.0);
          for (int64_t c = 0; c < n_chunks; ++c)
            for (int64_t j = 0; j < KP; ++j) proj[j] += part[(b * n_chunks + c) * KP + j];
          const float* lam = a.eig.data_ptr<float>() + s.srow * KP;
          const double wk = a.weight.data_ptr<float>()[s.k];
          for (int64_t j = 0; j < KP; ++j) {
            const double sub = wk * lam[j];  // no-op directions keep σ exactly (K = 1, s = 0 is DDIM bit for bit)
            cj[j] = sub > 0 ? (std::sqrt(std::max(s.sigma * s.sigma - sub, 0.0)) - s.sigma) * proj[j] : 0.0;
          }
          q0 = s.srow * KP * a.D;
        }
      }
      for (int64_t d0 = ch * kChunk; d0 < std::min(a.D, (ch + 1) * kChunk); d0 += kLane) {
        const int n = static_cast<int>(std::min<int64_t>(kLane, a.D - d0));
        logical_tile(a, d0, n, idx);
        load_tile(X + b * xbs + d0, n, xv);
        load_tile(M + b * mbs + d0, n, mv);
        if (a.cfg) {
          load_tile(M + mhalf + b * mbs + d0, n, ev);
          for (int i = 0; i < n; ++i) mv[i] += g * (ev[i] - mv[i]);
        }
        switch (a.pred) {
          case kPredEpsilon:
            for (int i = 0; i < n; ++i) { x0v[i] = (xv[i] - s_t * mv[i]) / al; ev[i] = mv[i]; }
            break;
          case kPredSample:
            for (int i = 0; i < n; ++i) { x0v[i] = mv[i]; ev[i] = (xv[i] - al * mv[i]) / s_t; }
            break;
          case kPredVPrediction:
            for (int i = 0; i < n; ++i) { x0v[i] = al * xv[i] - s_t * mv[i]; ev[i] = al * mv[i] + s_t * xv[i]; }
            break;
          default:
            for (int i = 0; i < n; ++i) { x0v[i] = xv[i] - s_t * mv[i]; ev[i] = xv[i] + al * mv[i]; }
        }
        if (thr) {
          const A q = thr[b];
          for (int i = 0; i < n; ++i) x0v[i] = std::min(std::max(x0v[i], -q), q) / q;
        } else if (a.clip_on) {
          for (int i = 0; i < n; ++i) x0v[i] = std::min(std::max(x0v[i], -clip), clip);
        }
        if (a.clipped_eps)
          for (int i = 0; i < n; ++i) ev[i] = (xv[i] - al * x0v[i]) / s_t;
        for (int i = 0; i < n; ++i) pv[i] = alp * x0v[i] + c_eps * ev[i];
        if (a.mixed && s.apply) {
          table_tile(a, a.delta, delta0, d0, idx, n, tab);
          for (int i = 0; i < n; ++i) pv[i] += static_cast<A>(tab[i]);
        }
        if (a.noise_mode != kNoiseNone) {
          noise_tile(a, b, s, d0, idx, n, z);
          const bool mix_var = a.mixed && s.apply && a.var_mode != kVarNone;
          if (!mix_var) {
            for (int i = 0; i < n; ++i) pv[i] += sigma * z[i];
          } else if (a.var_mode == kVarDiag) {
            table_tile(a, a.var, s.srow * a.D, d0, idx, n, tab);
            const A wk = static_cast<A>(a.weight.data_ptr<float>()[s.k]), s2 = sigma * sigma;
            for (int i = 0; i < n; ++i) {  // root computed unconditionally, then selected: vectorises
              const A sub = wk * static_cast<A>(tab[i]);
              const A root = std::sqrt(std::max(s2 - sub, A(0)));
              pv[i] += (sub > A(0) ? root : sigma) * z[i];
            }
          } else if (a.var_mode == kVarVub) {
            const int64_t K = a.delta.size(1);
            const float* ub = a.var.data_ptr<float>() + s.k * K;
            const A s2 = sigma * sigma;
            // the bounds live on the first K (logical) coordinates only: a head of the tile unless permuted
            const int head = a.permuted ? n : static_cast<int>(std::max<int64_t>(0, std::min<int64_t>(K - d0, n)));
            for (int i = 0; i < head; ++i) {
              const int64_t l = a.permuted ? idx[i] : d0 + i;
              const A sub = l < K ? static_cast<A>(ub[l]) : A(0);
              pv[i] += (sub > A(0) ? std::sqrt(std::max(s2 - sub, A(0))) : sigma) * z[i];
            }
            for (int i = head; i < n; ++i) pv[i] += sigma * z[i];
          } else {  // exact
            std::fill(aux, aux + n, 0.0f);
            for (int64_t j = 0; j < KP; ++j) {
              const float c = static_cast<float>(cj[j]);
              table_tile(a, a.basis, q0 + j * a.D, d0, idx, n, tab);
              for (int i = 0; i < n; ++i) aux[i] += tab[i] * c;
            }
            // σz exactly as the Gaussian path computes it, then the span correction (no FMA across the two)
            for (int i = 0; i < n; ++i) pv[i] += sigma * z[i];
            for (int i = 0; i < n; ++i) pv[i] += static_cast<A>(aux[i]);
          }
        }
        store_tile(pv, n, bad, OUT + b * a.D + d0);
        if (X0) store_tile(x0v, n, bad, X0 + b * a.D + d0);
      }
    }
  });
}

}  // namespace

void ddim_step(const StepArgs& a) {
  switch (a.x.scalar_type()) {
    case at::kFloat: step_impl<float, float>(a); break;
    case at::kDouble: step_impl<double, double>(a); break;
    case at::kHalf: step_impl<c10::Half, float>(a); break;
    case at::kBFloat16: step_impl<c10::BFloat16, float>(a); break;
    default: TORCH_CHECK(false, "gmm_triton: unsupported dtype ", a.x.scalar_type());
  }
}

void philox_normal(at::Tensor& out, int64_t seed, int64_t stream, int64_t start) {
  TORCH_CHECK(out.is_contiguous() && out.scalar_type() == at::kFloat, "philox_normal_: out must be contiguous float32");
  float* o = out.data_ptr<float>();
  const int64_t n = out.numel();
  at::parallel_for(0, (n + kChunk - 1) / kChunk, 1, [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      const int64_t s = c * kChunk, len = std::min(kChunk, n - s);
      normals(static_cast<uint64_t>(seed), static_cast<uint32_t>(stream), start + s, len, o + s);
    }
  });
}

void philox_words(at::Tensor& out, int64_t seed, int64_t stream, int64_t start) {
  TORCH_CHECK(out.is_contiguous() && out.scalar_type() == at::kInt && out.dim() == 2 && out.size(1) == 4,
              "philox_words_: out must be contiguous int32 [n, 4]");
  const int64_t n = out.size(0);
  uint32_t* o = reinterpret_cast<uint32_t*>(out.data_ptr<int32_t>());
  for (int64_t i = 0; i < n; ++i) {
    uint32_t w[4];
    philox_tile(static_cast<uint64_t>(seed), static_cast<uint32_t>(stream), static_cast<uint64_t>(start + i), 1,
                &w[0], &w[1], &w[2], &w[3]);
    for (int j = 0; j < 4; ++j) o[4 * i + j] = w[j];
  }
}

}  // namespace gmm
