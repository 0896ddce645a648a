// Arguments of the fused CPU step, resolved by gmm_triton/ops.py (shapes and devices are checked there).
#pragma once
#include <ATen/ATen.h>

namespace gmm {

struct StepArgs {
  at::Tensor x, m, coef, rows, noise, threshold;            // x, m: [B(,2B), D] blocks dense; coef [R, 8] f64
  at::Tensor delta, cdf, weight, var, basis, eig;           // mixture, undefined when off
  at::Tensor out, x0;                                       // outputs: block b at b*D, dense
  int64_t B = 0, D = 0, row = 0;                            // row: used when `rows` is undefined
  uint64_t seed = 0, offset = 0;                            // offset: global index of sample 0 (RNG counters)
  at::Tensor seeds;  // int64 [B]: one Philox key per sample, each sample at global index `offset` (undefined: seed)
  // permuted dense layout (gmm_triton/backends.py Layout): memory position j of a block holds logical element
  // ((j / n2) / n1) * l0 + ((j / n2) % n1) * l1 + (j % n2) * l2; the RNG and mixture tables use logical indices
  bool permuted = false;
  int64_t n1 = 1, n2 = 1, l0 = 0, l1 = 0, l2 = 1;
  int pred = 0, var_mode = 0, noise_mode = 0;
  double eta = 0.0, clip = 0.0, guidance = 0.0;
  bool clip_on = false, clipped_eps = false, cfg = false, offset_final = false, write_x0 = false, mixed = false;
};

void ddim_step(const StepArgs& a);
void philox_normal(at::Tensor& out, int64_t seed, int64_t stream, int64_t start);
void philox_words(at::Tensor& out, int64_t seed, int64_t stream, int64_t start);

}  // namespace gmm
