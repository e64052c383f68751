// The CPU kernel's entry points (csrc/kkattn_cpu.cpp), registered as torch ops in kkattn_cpu_bindings.cpp.
#pragma once

#include <ATen/ATen.h>

#include <string>

namespace kkattn {
namespace cpu {

void forward(const at::Tensor& k, const at::Tensor& v, const c10::optional<at::Tensor>& sigma, int64_t grid_w,
             int64_t num_prefix, double scale, at::Tensor& out, at::Tensor& lse, const c10::optional<at::Tensor>& out_off,
             const c10::optional<at::Tensor>& p_off);
void backward(const at::Tensor& dout, const at::Tensor& k, const at::Tensor& v, const at::Tensor& lse,
              const at::Tensor& delta, const at::Tensor& delta_diag, const at::Tensor& p_diag,
              const c10::optional<at::Tensor>& sigma, int64_t grid_w, int64_t num_prefix, double scale, bool need_dsigma,
              at::Tensor& dk, at::Tensor& dv, at::Tensor& dsigma);
at::Tensor smoother_spread(const at::Tensor& k, bool prior, int64_t num_prefix, double scale);
double smoother_max_spread();
std::string half_precision_path(const std::string& dtype, int64_t head_dim);
std::string vector_isa();

}  // namespace cpu
}  // namespace kkattn
