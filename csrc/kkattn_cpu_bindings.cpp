// The kkattn_C torch ops: the CPU kernel (csrc/kkattn_cpu.cpp) and what this build holds.
#include <torch/library.h>

#include <string>

#include "kkattn_cpu.h"

// What this build holds: "cpu", or "cpu+cuda" when csrc/kkattn_cuda.cu was compiled in (setup.py
// defines KKATTN_WITH_CUDA then).  kkattn.available_backends() reads it.
std::string build_info() {
#ifdef KKATTN_WITH_CUDA
  return "cpu+cuda";
#else
  return "cpu";
#endif
}

TORCH_LIBRARY(kkattn_C, m) {
  m.def("build_info() -> str", &build_info);
  m.def("smoother_max_spread() -> float", &kkattn::cpu::smoother_max_spread);
  m.def("half_precision_path(str dtype, int head_dim) -> str", &kkattn::cpu::half_precision_path);
  m.def("vector_isa() -> str", &kkattn::cpu::vector_isa);
  m.def("smoother_spread(Tensor k, bool prior, int num_prefix_tokens, float scale) -> Tensor");
  m.def(
      "forward(Tensor k, Tensor v, Tensor? sigma, int grid_w, int num_prefix_tokens, float scale, "
      "Tensor(a!) out, Tensor(b!) lse, Tensor(c!)? out_off, Tensor(d!)? p_off) -> ()");
  m.def(
      "backward(Tensor dout, Tensor k, Tensor v, Tensor lse, Tensor delta, Tensor delta_diag, Tensor p_diag, "
      "Tensor? sigma, int grid_w, "
      "int num_prefix_tokens, float scale, bool need_dsigma, Tensor(a!) dk, Tensor(b!) dv, Tensor(c!) dsigma) -> ()");
}

TORCH_LIBRARY_IMPL(kkattn_C, CPU, m) {
  m.impl("forward", &kkattn::cpu::forward);
  m.impl("backward", &kkattn::cpu::backward);
  m.impl("smoother_spread", &kkattn::cpu::smoother_spread);
}
