// The CPU twin of kernels/cld_step.py and kernels/blur_step.py: the gDDIM steps, same table layouts, same Philox
// stream (gmm::normals). The maths is stated in gmm_triton/gddim/reference.py. Registered here as
// torch.ops.gmm_triton_cpp.cld_step / blur_step (a fragment of the namespace csrc/module.cpp opens).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "contract.h"
#include "philox.h"

namespace gmm {
namespace {

constexpr int64_t kChunk = 16384;  // pairs per task
constexpr int kLane = 1024;        // pairs per stage tile

// The noise sources this file implements (contract.NOISE_CODES): any other code is an error, never another source.
void check_noise_code(int noise_mode) {
  TORCH_CHECK(noise_mode == kNoiseNone || noise_mode == kNoisePhilox || noise_mode == kNoiseTensor,
              "gmm_triton: unknown noise code ", noise_mode, " (contract.NOISE_CODES)");
}

template <typename T, typename A>
inline void load(const T* __restrict p, int64_t n, A* __restrict o) {
  for (int64_t i = 0; i < n; ++i) o[i] = static_cast<A>(p[i]);
}

// n values of a caller's noise tensor (any floating dtype) from element offset `off`, as A.
template <typename A>
void load_any(const at::Tensor& t, int64_t off, int64_t n, A* __restrict o) {
  switch (t.scalar_type()) {
    case at::kFloat: load(t.data_ptr<float>() + off, n, o); break;
    case at::kDouble: load(t.data_ptr<double>() + off, n, o); break;
    case at::kHalf: load(t.data_ptr<c10::Half>() + off, n, o); break;
    default: load(t.data_ptr<c10::BFloat16>() + off, n, o);
  }
}

// The table row of sample b (NaN-poisoned when outside [0, R)).
struct Row {
  const double* c;
  bool valid;
};

Row row_of(const at::Tensor& coef, const std::optional<at::Tensor>& rows, int64_t row, int64_t b, int64_t width) {
  const int64_t R = coef.size(0);
  int64_t r = row;
  if (rows) r = rows->data_ptr<int64_t>()[rows->numel() == 1 ? 0 : b];
  const bool valid = r >= 0 && r < R;
  return {coef.data_ptr<double>() + (valid ? r : 0) * width, valid};
}

template <typename T, typename A>
void cld_impl(const at::Tensor& u, at::TensorList eps, const at::Tensor& coef, const std::optional<at::Tensor>& rows,
              int64_t row, uint64_t seed, const std::optional<at::Tensor>& noise, at::Tensor& out, int noise_mode) {
  const int64_t B = out.size(0), D = out.numel() / (2 * B);
  const int64_t n_chunks = (D + kChunk - 1) / kChunk;
  const int64_t ne = static_cast<int64_t>(eps.size());
  at::parallel_for(0, B * n_chunks, 1, [&](int64_t begin, int64_t end) {
    alignas(64) A x[kLane], v[kLane], ox[kLane], ov[kLane], ex[kLane], ev[kLane];
    alignas(64) float nz[2][kLane];
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / n_chunks, ch = task % n_chunks;
      const Row r = row_of(coef, rows, row, b, kCldCols);
      const double* c = r.c;
      const A bad = r.valid ? A(0) : std::numeric_limits<A>::quiet_NaN();
      const A p00 = static_cast<A>(c[kCldPsi]), p01 = static_cast<A>(c[kCldPsi + 1]), p10 = static_cast<A>(c[kCldPsi + 2]),
              p11 = static_cast<A>(c[kCldPsi + 3]);
      const T* U = u.data_ptr<T>() + b * u.stride(0);
      T* O = out.data_ptr<T>() + b * 2 * D;
      for (int64_t d0 = ch * kChunk; d0 < std::min(D, (ch + 1) * kChunk); d0 += kLane) {
        const int n = static_cast<int>(std::min<int64_t>(kLane, D - d0));
        load(U + d0, n, x);
        load(U + D + d0, n, v);
        for (int i = 0; i < n; ++i) { ox[i] = p00 * x[i] + p01 * v[i]; ov[i] = p10 * x[i] + p11 * v[i]; }
        for (int64_t j = 0; j < ne; ++j) {
          const double* cj = c + kCldEps + 4 * j;
          const A c00 = static_cast<A>(cj[0]), c01 = static_cast<A>(cj[1]), c10 = static_cast<A>(cj[2]), c11 = static_cast<A>(cj[3]);
          const T* E = eps[j].data_ptr<T>() + b * eps[j].stride(0);
          load(E + d0, n, ex);
          load(E + D + d0, n, ev);
          for (int i = 0; i < n; ++i) { ox[i] += c00 * ex[i] + c01 * ev[i]; ov[i] += c10 * ex[i] + c11 * ev[i]; }
        }
        if (noise_mode != kNoiseNone) {
          const A l00 = static_cast<A>(c[kCldChol]), l10 = static_cast<A>(c[kCldChol + 1]), l11 = static_cast<A>(c[kCldChol + 2]);
          if (noise_mode == kNoisePhilox) {  // counters: the flat index over [B, 2, D]
            normals(seed, kStreamNoise, b * 2 * D + d0, n, nz[0]);
            normals(seed, kStreamNoise, b * 2 * D + D + d0, n, nz[1]);
            load(nz[0], n, ex);
            load(nz[1], n, ev);
          } else {  // kNoiseTensor (check_noise_code)
            const int64_t off = b * noise->stride(0) + d0;
            load_any(*noise, off, n, ex);
            load_any(*noise, off + D, n, ev);
          }
          for (int i = 0; i < n; ++i) { ox[i] += l00 * ex[i]; ov[i] += l10 * ex[i] + l11 * ev[i]; }
        }
        for (int i = 0; i < n; ++i) { O[d0 + i] = static_cast<T>(ox[i] + bad); O[D + d0 + i] = static_cast<T>(ov[i] + bad); }
      }
    }
  });
}

// out[N, N] = a[N, N] @ b[N, N] (row-major; the inner loop runs over contiguous rows and vectorises).
template <typename A>
inline void matmul(const A* __restrict a, const A* __restrict b, int64_t N, A* __restrict out) {
  std::fill(out, out + N * N, A(0));
  for (int64_t i = 0; i < N; ++i)
    for (int64_t k = 0; k < N; ++k) {
      const A aik = a[i * N + k];
      for (int64_t j = 0; j < N; ++j) out[i * N + j] += aik * b[k * N + j];
    }
}

template <typename T, typename A>
void blur_impl(const at::Tensor& x, at::TensorList eps, const at::Tensor& coef, const at::Tensor& basis,
               const std::optional<at::Tensor>& rows, int64_t row, uint64_t seed, const std::optional<at::Tensor>& noise,
               at::Tensor& out, int noise_mode) {
  const int64_t B = out.size(0), C = out.size(1), N = out.size(2), P = N * N;
  std::vector<A> v(P), vt(P);
  const double* V = basis.data_ptr<double>();
  for (int64_t i = 0; i < N; ++i)
    for (int64_t j = 0; j < N; ++j) { v[i * N + j] = static_cast<A>(V[i * N + j]); vt[j * N + i] = static_cast<A>(V[i * N + j]); }
  const int64_t ne = static_cast<int64_t>(eps.size());
  at::parallel_for(0, B * C, 1, [&](int64_t begin, int64_t end) {
    std::vector<A> p(P), t(P), f(P), y(P);
    std::vector<float> nz(noise_mode == kNoisePhilox ? P : 0);
    // f = V p Vᵀ
    auto to_freq = [&]() { matmul(v.data(), p.data(), N, t.data()); matmul(t.data(), vt.data(), N, f.data()); };
    for (int64_t plane = begin; plane < end; ++plane) {
      const int64_t b = plane / C, ch = plane % C;
      const Row r = row_of(coef, rows, row, b, kBlurPlanes * P);
      const A bad = r.valid ? A(0) : std::numeric_limits<A>::quiet_NaN();
      load(x.data_ptr<T>() + b * x.stride(0) + ch * P, P, p.data());
      to_freq();
      for (int64_t k = 0; k < P; ++k) y[k] = static_cast<A>(r.c[k]) * f[k];
      for (int64_t j = 0; j < ne; ++j) {
        load(eps[j].data_ptr<T>() + b * eps[j].stride(0) + ch * P, P, p.data());
        to_freq();
        const double* cj = r.c + (1 + j) * P;
        for (int64_t k = 0; k < P; ++k) y[k] += static_cast<A>(cj[k]) * f[k];
      }
      if (noise_mode != kNoiseNone) {  // counters: the flat index over [B, C, N, N]
        if (noise_mode == kNoisePhilox) {
          normals(seed, kStreamNoise, plane * P, P, nz.data());
          load(nz.data(), P, p.data());
        } else {  // kNoiseTensor (check_noise_code)
          load_any(*noise, b * noise->stride(0) + ch * P, P, p.data());
        }
        const double* s = r.c + (kBlurPlanes - 1) * P;  // the noise std plane, last
        for (int64_t k = 0; k < P; ++k) y[k] += static_cast<A>(s[k]) * p[k];
      }
      matmul(vt.data(), y.data(), N, t.data());  // out = Vᵀ y V
      matmul(t.data(), v.data(), N, f.data());
      T* O = out.data_ptr<T>() + plane * P;
      for (int64_t k = 0; k < P; ++k) O[k] = static_cast<T>(f[k] + bad);
    }
  });
}

void check_common(const at::Tensor& s, at::TensorList eps, const at::Tensor& coef, const std::optional<at::Tensor>& rows,
                  const std::optional<at::Tensor>& noise, const at::Tensor& out, int64_t noise_mode) {
  check_noise_code(static_cast<int>(noise_mode));
  TORCH_CHECK(noise_mode != kNoiseTensor || noise.has_value(), "the tensor noise source needs a noise tensor");
  TORCH_CHECK(coef.scalar_type() == at::kDouble && coef.is_contiguous(), "coef must be contiguous float64");
  TORCH_CHECK(out.is_contiguous() && out.sizes() == s.sizes() && out.scalar_type() == s.scalar_type(), "out must match the sample");
  TORCH_CHECK(s.size(0) <= 1 || s[0].is_contiguous(), "sample rows must be contiguous");
  TORCH_CHECK(!eps.empty() && eps.size() <= 3, "1 to 3 eps buffers");
  for (const auto& e : eps) {
    TORCH_CHECK(e.sizes() == s.sizes() && e.scalar_type() == s.scalar_type(), "eps must match the sample");
    TORCH_CHECK(e.size(0) <= 1 || e[0].is_contiguous(), "eps rows must be contiguous");
  }
  if (rows) TORCH_CHECK(rows->scalar_type() == at::kLong && rows->is_contiguous(), "rows must be contiguous int64");
  if (noise) TORCH_CHECK(noise->sizes() == s.sizes() && (noise->size(0) <= 1 || (*noise)[0].is_contiguous()), "noise rows must be contiguous");
}

#define GMM_DISPATCH(dtype, CALL)                                             \
  switch (dtype) {                                                            \
    case at::kFloat: { using T = float; using A = float; CALL; break; }      \
    case at::kDouble: { using T = double; using A = double; CALL; break; }   \
    case at::kHalf: { using T = c10::Half; using A = float; CALL; break; }   \
    case at::kBFloat16: { using T = c10::BFloat16; using A = float; CALL; break; } \
    default: TORCH_CHECK(false, "gmm_triton: unsupported dtype ", dtype);     \
  }

void cld_step_cpu(const at::Tensor& u, at::TensorList eps, const at::Tensor& coef, const std::optional<at::Tensor>& rows,
                  int64_t row, int64_t seed, const std::optional<at::Tensor>& noise, at::Tensor& out, int64_t noise_mode) {
  check_common(u, eps, coef, rows, noise, out, noise_mode);
  TORCH_CHECK(u.dim() >= 2 && u.size(1) == 2 && coef.dim() == 2 && coef.size(1) == kCldCols, "cld_step: u [B, 2, ...], coef [R, 24]");
  if (out.numel() == 0) return;
  GMM_DISPATCH(u.scalar_type(), (cld_impl<T, A>(u, eps, coef, rows, row, static_cast<uint64_t>(seed), noise, out,
                                                static_cast<int>(noise_mode))));
}

void blur_step_cpu(const at::Tensor& x, at::TensorList eps, const at::Tensor& coef, const at::Tensor& basis,
                   const std::optional<at::Tensor>& rows, int64_t row, int64_t seed, const std::optional<at::Tensor>& noise,
                   at::Tensor& out, int64_t noise_mode) {
  check_common(x, eps, coef, rows, noise, out, noise_mode);
  TORCH_CHECK(x.dim() == 4 && x.size(2) == x.size(3), "blur_step: x [B, C, N, N]");
  const int64_t N = x.size(2);
  TORCH_CHECK(basis.scalar_type() == at::kDouble && basis.is_contiguous() && basis.dim() == 2 && basis.size(0) == N &&
                  basis.size(1) == N, "basis must be contiguous float64 [N, N]");
  TORCH_CHECK(coef.dim() == 4 && coef.size(1) == kBlurPlanes && coef.size(2) == N && coef.size(3) == N, "coef must be [R, 5, N, N]");
  if (out.numel() == 0) return;
  GMM_DISPATCH(x.scalar_type(), (blur_impl<T, A>(x, eps, coef, basis, rows, row, static_cast<uint64_t>(seed), noise, out,
                                                 static_cast<int>(noise_mode))));
}

}  // namespace
}  // namespace gmm

TORCH_LIBRARY_FRAGMENT(gmm_triton_cpp, m) {
  m.def("cld_step(Tensor u, Tensor[] eps, Tensor coef, Tensor? rows, int row, int seed, Tensor? noise, Tensor(a!) out, "
        "int noise_mode) -> ()");
  m.def("blur_step(Tensor x, Tensor[] eps, Tensor coef, Tensor basis, Tensor? rows, int row, int seed, Tensor? noise, "
        "Tensor(a!) out, int noise_mode) -> ()");
}

TORCH_LIBRARY_IMPL(gmm_triton_cpp, CPU, m) {
  m.impl("cld_step", &gmm::cld_step_cpu);
  m.impl("blur_step", &gmm::blur_step_cpu);
}
