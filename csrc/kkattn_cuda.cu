// Launch code and op registration of the CUDA kernels in kkattn_cuda_kernels.cuh (device code:
// the design notes are there): input checks, output checks, the shared-memory opt-in, the launch on
// the current stream, and the fixed-order dσ reduction.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cstdint>
#include <type_traits>
#include <vector>

#include "kkattn_cuda_kernels.cuh"

namespace kkattn {
namespace cuda {

// ---------------------------------------------------------------------------------------- host side
void check_cuda_inputs(const at::Tensor& k, const at::Tensor& v, const c10::optional<at::Tensor>& sigma,
                       int64_t grid_w, int64_t num_prefix) {
  TORCH_CHECK(k.is_cuda() && v.is_cuda(), "kkattn cuda kernels: k and v must be CUDA tensors");
  TORCH_CHECK(k.dim() == 4 && v.sizes() == k.sizes(), "kkattn cuda kernels: k and v must be (B, H, N, D) of one shape");
  TORCH_CHECK(k.scalar_type() == v.scalar_type() &&
                  (k.scalar_type() == at::kHalf || k.scalar_type() == at::kBFloat16),
              "kkattn cuda kernels take float16 or bfloat16 k/v, got ", k.scalar_type());
  const int64_t D = k.size(3), N = k.size(2);
  TORCH_CHECK(D == 32 || D == 64 || D == 128, "kkattn cuda kernels take head dims 32, 64, 128, got ", D);
  TORCH_CHECK(grid_w > 0 && num_prefix >= 0 && num_prefix <= N && (N - num_prefix) % grid_w == 0,
              "kkattn cuda kernels: N − num_prefix_tokens must be a multiple of the grid width");
  TORCH_CHECK(k.size(0) * k.size(1) <= 65535, "kkattn cuda kernels: B·H must be at most 65535");
  if (sigma.has_value()) {
    TORCH_CHECK(sigma->is_cuda() && sigma->device() == k.device() && sigma->scalar_type() == at::kFloat &&
                    sigma->dim() == 1 && sigma->size(0) == k.size(1),
                "kkattn cuda kernels: sigma must be a float32 (H,) tensor on k's device");
  }
}

void check_out(const at::Tensor& t, at::IntArrayRef shape, at::ScalarType dtype, const at::Tensor& like, const char* name) {
  TORCH_CHECK(t.sizes() == shape && t.scalar_type() == dtype && t.is_contiguous() && t.device() == like.device(),
              "kkattn cuda kernels: ", name, " must be a contiguous ", dtype, " tensor of shape ", shape,
              " on k's device");
}

template <typename Launch>
void dispatch(at::ScalarType dtype, int64_t D, Launch&& launch) {
  auto by_dim = [&](auto tag) {
    using T = decltype(tag);
    if (D == 32) launch(T{}, std::integral_constant<int, 32>{});
    else if (D == 64) launch(T{}, std::integral_constant<int, 64>{});
    else launch(T{}, std::integral_constant<int, 128>{});
  };
  if (dtype == at::kHalf) by_dim(half{});
  else by_dim(__nv_bfloat16{});
}

// Raises the kernel's dynamic shared-memory limit (above 48 KB needs it), launches it on the current
// stream, and checks the launch.
template <typename... Params, typename... Args>
void launch(void (*kernel)(Params...), dim3 grid, size_t smem, Args... args) {
  C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
  kernel<<<grid, kThreads, smem, at::cuda::getCurrentCUDAStream()>>>(args...);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename T>
T* ptr(const at::Tensor& t) {
  return reinterpret_cast<T*>(t.data_ptr());
}

// The kernels load rows in 16-byte vectors (load_tile): a view whose data starts mid-vector (a slice
// at an odd offset) is copied to a fresh, aligned buffer first.
at::Tensor aligned16(const at::Tensor& t) {
  const at::Tensor dense = t.contiguous();
  return reinterpret_cast<uintptr_t>(dense.data_ptr()) % 16 == 0 ? dense : dense.clone();
}

// Dynamic shared memory (bytes) of the forward and backward kernels for head dim D: the same for
// fp16 and bf16.  available_backends() compares it with the device's opt-in limit per block.
std::vector<int64_t> shared_memory(int64_t D) {
  TORCH_CHECK(D == 32 || D == 64 || D == 128, "kkattn cuda kernels take head dims 32, 64, 128, got ", D);
  std::vector<int64_t> bytes;
  dispatch(at::kHalf, D, [&](auto t, auto d) {
    using T = decltype(t);
    constexpr int kD = decltype(d)::value;
    bytes = {static_cast<int64_t>(forward_smem<T, kD>()), static_cast<int64_t>(backward_smem<T, kD>())};
  });
  return bytes;
}

// out: k's dtype, contiguous (B, H, N, D); lse: float32 (B, H, N); when given, the off-diagonal
// output out_off (B, H, N, D) and weight p_off (B, H, N), float32.
void forward(const at::Tensor& k_in, const at::Tensor& v_in, const c10::optional<at::Tensor>& sigma, int64_t grid_w,
             int64_t num_prefix, double scale, at::Tensor& out, at::Tensor& lse,
             const c10::optional<at::Tensor>& out_off, const c10::optional<at::Tensor>& p_off) {
  check_cuda_inputs(k_in, v_in, sigma, grid_w, num_prefix);
  const c10::cuda::CUDAGuard guard(k_in.device());
  const auto k = aligned16(k_in), v = aligned16(v_in);
  const int64_t B = k.size(0), H = k.size(1), N = k.size(2), D = k.size(3);
  check_out(out, k.sizes(), k.scalar_type(), k, "out");
  check_out(lse, {B, H, N}, at::kFloat, k, "lse");
  TORCH_CHECK(out_off.has_value() == p_off.has_value(), "kkattn cuda kernels: out_off and p_off go together");
  if (out_off.has_value()) {
    check_out(*out_off, k.sizes(), at::kFloat, k, "out_off");
    check_out(*p_off, {B, H, N}, at::kFloat, k, "p_off");
  }
  if (N == 0 || B * H == 0) return;
  const float* sig = sigma.has_value() ? sigma->data_ptr<float>() : nullptr;
  float* oop = out_off.has_value() ? out_off->data_ptr<float>() : nullptr;
  float* pop = p_off.has_value() ? p_off->data_ptr<float>() : nullptr;
  const dim3 grid(forward_blocks(N), B * H);
  dispatch(k.scalar_type(), D, [&](auto t, auto d) {
    using T = decltype(t);
    constexpr int kD = decltype(d)::value;
    launch(forward_kernel<T, kD>, grid, forward_smem<T, kD>(), ptr<const T>(k), ptr<const T>(v), ptr<T>(out),
           lse.data_ptr<float>(), oop, pop, sig, N, static_cast<int>(H), grid_w, num_prefix, static_cast<float>(scale));
  });
}

// dk, dv: k's dtype, contiguous; dsigma: float32 (H,) = Σ dS·G·d² (zeros unless need_dsigma).
// lse, delta, delta_diag, p_diag: (B, H, N) row statistics (kkattn/_ops.py).
void backward(const at::Tensor& dout_in, const at::Tensor& k_in, const at::Tensor& v_in, const at::Tensor& lse_in,
              const at::Tensor& delta_in, const at::Tensor& delta_diag_in, const at::Tensor& p_diag_in,
              const c10::optional<at::Tensor>& sigma, int64_t grid_w, int64_t num_prefix,
              double scale, bool need_dsigma, at::Tensor& dk, at::Tensor& dv, at::Tensor& dsigma) {
  check_cuda_inputs(k_in, v_in, sigma, grid_w, num_prefix);
  TORCH_CHECK(dout_in.sizes() == k_in.sizes(), "kkattn cuda kernels: dout must have k's shape");
  const c10::cuda::CUDAGuard guard(k_in.device());
  const auto k = aligned16(k_in), v = aligned16(v_in);
  const auto dout = aligned16(dout_in.to(k.scalar_type()));
  const auto row_stat = [&](const at::Tensor& t, const char* name) {
    TORCH_CHECK(t.sizes() == k_in.sizes().slice(0, 3) && t.device() == k_in.device(), "kkattn cuda kernels: ", name,
                " must be (B, H, N) on k's device");
    return t.to(at::kFloat).contiguous();
  };
  const auto lse = row_stat(lse_in, "lse"), delta = row_stat(delta_in, "delta");
  const auto delta_diag = row_stat(delta_diag_in, "delta_diag"), p_diag = row_stat(p_diag_in, "p_diag");
  const int64_t B = k.size(0), H = k.size(1), N = k.size(2), D = k.size(3);
  check_out(dk, k.sizes(), k.scalar_type(), k, "dk");
  check_out(dv, k.sizes(), k.scalar_type(), k, "dv");
  check_out(dsigma, {H}, at::kFloat, k, "dsigma");
  need_dsigma = need_dsigma && sigma.has_value();
  dsigma.zero_();
  if (N == 0 || B * H == 0) return;
  const int64_t blocks = backward_blocks(N);
  auto part = at::zeros({B, H, blocks}, k.options().dtype(at::kFloat));
  const float* sig = sigma.has_value() ? sigma->data_ptr<float>() : nullptr;
  const dim3 grid(blocks, B * H);
  dispatch(k.scalar_type(), D, [&](auto t, auto d) {
    using T = decltype(t);
    constexpr int kD = decltype(d)::value;
    launch(backward_kernel<T, kD>, grid, backward_smem<T, kD>(), ptr<const T>(k), ptr<const T>(v), ptr<const T>(dout),
           lse.data_ptr<float>(), delta.data_ptr<float>(), delta_diag.data_ptr<float>(), p_diag.data_ptr<float>(), sig,
           ptr<T>(dk), ptr<T>(dv), part.data_ptr<float>(), N,
           static_cast<int>(H), grid_w, num_prefix, static_cast<float>(scale), need_dsigma);
  });
  if (need_dsigma) dsigma.copy_(part.to(at::kDouble).sum({0, 2}));  // fixed-shape reduction: deterministic
}

}  // namespace cuda
}  // namespace kkattn

TORCH_LIBRARY_FRAGMENT(kkattn_C, m) {
  m.def("cuda_shared_memory(int head_dim) -> int[]", &kkattn::cuda::shared_memory);
}

TORCH_LIBRARY_IMPL(kkattn_C, CUDA, m) {
  m.impl("forward", &kkattn::cuda::forward);
  m.impl("backward", &kkattn::cuda::backward);
}
