// Arguments of the fused CPU step, resolved by gmm_triton/ops.py (shapes and devices are checked there).
#pragma once
#include <ATen/ATen.h>

namespace gmm {

struct StepArgs {
  at::Tensor x, m, coef, rows, noise, threshold;            // x, m: [B(,2B), D] rows contiguous; coef [R, 8] f64
  at::Tensor delta, cdf, weight, var, basis, eig;           // mixture (float32), undefined when off
  at::Tensor out, x0;                                       // contiguous outputs
  int64_t B = 0, D = 0, row = 0;                            // row: used when `rows` is undefined
  uint64_t seed = 0;
  int pred = 0, var_mode = 0, noise_mode = 0;
  double eta = 0.0, clip = 0.0, guidance = 0.0;
  bool clip_on = false, clipped_eps = false, cfg = false, offset_final = false, write_x0 = false, mixed = false;
};

void ddim_step(const StepArgs& a);
void philox_normal(at::Tensor& out, int64_t seed, int64_t stream, int64_t start);
void philox_words(at::Tensor& out, int64_t seed, int64_t stream, int64_t start);

}  // namespace gmm
