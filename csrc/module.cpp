// Registers the C++ twin as torch.ops.gmm_triton_cpp.* (an internal namespace: the public op is the
// custom_op gmm_triton::ddim_step in gmm_triton/ops.py, whose CPU kernel calls these).
#include <Python.h>
#include <torch/library.h>

#include "step.h"

namespace {

void ddim_step_cpu(const at::Tensor& x, const at::Tensor& m, const at::Tensor& coef,
                   const std::optional<at::Tensor>& rows, int64_t row, int64_t seed,
                   const std::optional<at::Tensor>& seeds, int64_t offset,
                   const std::optional<at::Tensor>& noise, const std::optional<at::Tensor>& threshold,
                   const std::optional<at::Tensor>& delta, const std::optional<at::Tensor>& cdf,
                   const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& var,
                   const std::optional<at::Tensor>& basis, const std::optional<at::Tensor>& eig, at::Tensor& out,
                   at::Tensor& x0, int64_t pred, int64_t var_mode, int64_t noise_mode, double eta, double clip,
                   bool clip_on, bool clipped_eps, double guidance, bool cfg, bool offset_final, bool write_x0,
                   at::IntArrayRef perm) {
  gmm::StepArgs a;
  a.x = x; a.m = m; a.coef = coef.contiguous();
  TORCH_CHECK(a.coef.scalar_type() == at::kDouble && a.coef.dim() == 2 && a.coef.size(1) == 8, "coef must be f64 [R, 8]");
  if (rows) { a.rows = rows->contiguous(); TORCH_CHECK(a.rows.scalar_type() == at::kLong, "rows must be int64"); }
  a.row = row;
  a.B = out.size(0);
  a.D = a.B ? out.numel() / a.B : 0;
  // perm = (n0, n1, n2, l0, l1, l2) for a permuted dense layout (backends.Layout), empty otherwise; the op checked
  // that every tensor's blocks are dense in that one order
  TORCH_CHECK(perm.empty() || perm.size() == 6, "perm must be empty or (n0, n1, n2, l0, l1, l2)");
  a.permuted = !perm.empty();
  if (a.permuted) { a.n1 = perm[1]; a.n2 = perm[2]; a.l0 = perm[3]; a.l1 = perm[4]; a.l2 = perm[5]; }
  TORCH_CHECK(a.permuted || (out.is_contiguous() && (!write_x0 || x0.is_contiguous())), "outputs must be contiguous");
  TORCH_CHECK(a.permuted || x.size(0) == 1 || x[0].is_contiguous(), "sample rows must be contiguous");
  TORCH_CHECK(a.permuted || m.size(0) == 1 || m[0].is_contiguous(), "model_output rows must be contiguous");
  if (noise) {
    a.noise = *noise;
    TORCH_CHECK(a.permuted || noise->size(0) == 1 || (*noise)[0].is_contiguous(), "noise rows must be contiguous");
  }
  if (threshold) a.threshold = threshold->contiguous();
  a.mixed = delta.has_value();
  if (a.mixed) {
    a.delta = delta->contiguous(); a.cdf = cdf->contiguous(); a.weight = weight->contiguous();
    for (auto* t : {&a.cdf, &a.weight})
      TORCH_CHECK(t->scalar_type() == at::kFloat, "mixture cdf and weights must be float32");
    TORCH_CHECK(a.delta.scalar_type() == at::kFloat || a.delta.scalar_type() == at::kBFloat16,
                "mixture offsets must be float32 or bfloat16");
    if (var) a.var = var->contiguous();
    if (basis) {
      a.basis = basis->contiguous();
      TORCH_CHECK(a.basis.scalar_type() == at::kFloat || a.basis.scalar_type() == at::kBFloat16,
                  "mixture basis must be float32 or bfloat16");
    }
    if (eig) a.eig = eig->contiguous();
  }
  a.out = out; a.x0 = x0;
  a.seed = static_cast<uint64_t>(seed);
  if (seeds) {
    a.seeds = seeds->contiguous();
    TORCH_CHECK(a.seeds.scalar_type() == at::kLong && a.seeds.numel() == a.B, "seeds must be int64 [B]");
  }
  a.offset = static_cast<uint64_t>(offset);
  a.pred = static_cast<int>(pred); a.var_mode = static_cast<int>(var_mode); a.noise_mode = static_cast<int>(noise_mode);
  a.eta = eta; a.clip = clip; a.guidance = guidance;
  a.clip_on = clip_on; a.clipped_eps = clipped_eps; a.cfg = cfg; a.offset_final = offset_final; a.write_x0 = write_x0;
  gmm::ddim_step(a);
}

void philox_normal_cpu(at::Tensor& out, int64_t seed, int64_t stream, int64_t start) {
  gmm::philox_normal(out, seed, stream, start);
}

}  // namespace

TORCH_LIBRARY(gmm_triton_cpp, m) {
  m.def("ddim_step(Tensor x, Tensor m, Tensor coef, Tensor? rows, int row, int seed, Tensor? seeds, int offset, "
        "Tensor? noise, Tensor? threshold, Tensor? delta, Tensor? cdf, Tensor? weight, Tensor? var, Tensor? basis, "
        "Tensor? eig, Tensor(a!) out, Tensor(b!) x0, int pred, int var_mode, int noise_mode, float eta, float clip, "
        "bool clip_on, bool clipped_eps, float guidance, bool cfg, bool offset_final, bool write_x0, int[] perm) -> ()");
  m.def("philox_normal_(Tensor(a!) out, int seed, int stream, int start) -> ()");
  m.def("philox_words_(Tensor(a!) out, int seed, int stream, int start) -> ()");
}

TORCH_LIBRARY_IMPL(gmm_triton_cpp, CPU, m) {
  m.impl("ddim_step", &ddim_step_cpu);
  m.impl("philox_normal_", &philox_normal_cpu);
  m.impl("philox_words_", &gmm::philox_words);
}

// An importable module with no Python API: importing gmm_triton._C runs the registrations above.
extern "C" PyObject* PyInit__C(void) {
  static struct PyModuleDef def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&def);
}
