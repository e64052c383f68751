// Runs the CUDA kernels of csrc/kkattn_cuda_kernels.cuh on the host (cuda_shim.h), launched as
// csrc/kkattn_cuda.cu launches them, on tensors exchanged as raw little-endian files in a folder:
//
//   emulate forward  DTYPE B H N D GRID_W PREFIX SCALE HAS_SIGMA WITH_STATS CONCURRENT DIR
//     reads  k, v [DTYPE (B,H,N,D)], sigma [f32 (H,)]
//     writes out [DTYPE], lse [f32 (B,H,N)], and with WITH_STATS out_off [f32 (B,H,N,D)], p_off [f32 (B,H,N)]
//   emulate backward DTYPE B H N D GRID_W PREFIX SCALE HAS_SIGMA NEED_DSIGMA CONCURRENT DIR
//     reads  k, v, dout [DTYPE], lse, delta, delta_diag, p_diag [f32 (B,H,N)], sigma [f32 (H,)]
//     writes dk, dv [DTYPE], dsigma_part [f32 (B,H,blocks)]
//
// DTYPE is fp16 or bf16.  Every output buffer starts NaN-filled (all-ones bytes), so an element a
// kernel never writes shows up.  Exit status 0 on success, 2 on bad arguments; the emulator aborts
// on a CUDA rule the kernels break (misaligned WMMA pointer, access outside shared memory, ...).
#include "cuda_shim.h"  // first: the kernels header sees the emulated CUDA

#include "kkattn_cuda_kernels.cuh"

#include <cstdio>
#include <string>

namespace {

using namespace kkattn::cuda;

std::vector<unsigned char> read_file(const std::string& path, size_t bytes) {
  std::vector<unsigned char> data(bytes);
  FILE* f = std::fopen(path.c_str(), "rb");
  if (!f || std::fread(data.data(), 1, bytes, f) != bytes) {
    std::fprintf(stderr, "emulate: cannot read %zu bytes from %s\n", bytes, path.c_str());
    std::exit(2);
  }
  std::fclose(f);
  return data;
}

void write_file(const std::string& path, const void* data, size_t bytes) {
  FILE* f = std::fopen(path.c_str(), "wb");
  if (!f || std::fwrite(data, 1, bytes, f) != bytes) {
    std::fprintf(stderr, "emulate: cannot write %s\n", path.c_str());
    std::exit(2);
  }
  std::fclose(f);
}

// A device buffer: aligned like cudaMalloc's (256 bytes), NaN-filled.
struct Buffer {
  unsigned char* data = nullptr;
  size_t bytes = 0;
  explicit Buffer(size_t n) : bytes(n) {
    if (posix_memalign(reinterpret_cast<void**>(&data), 256, n ? n : 1) != 0) std::exit(3);
    std::memset(data, 0xFF, n);
  }
  Buffer(const std::string& path, size_t n) : Buffer(n) {
    const auto content = read_file(path, n);
    std::memcpy(data, content.data(), n);
  }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  ~Buffer() { free(data); }
  template <typename T>
  T* as() const { return reinterpret_cast<T*>(data); }
};

struct Args {
  std::string mode, dtype, dir;
  int64_t B, H, N, D, grid_w, prefix;
  float scale;
  bool has_sigma, flag;  // flag: WITH_STATS (forward) or NEED_DSIGMA (backward)
  unsigned concurrent;
};

template <typename T, int D>
int run(const Args& a) {
  const size_t elems = size_t(a.B * a.H * a.N * D), rows = size_t(a.B * a.H * a.N);
  const std::string dir = a.dir + "/";
  const Buffer k(dir + "k", elems * sizeof(T)), v(dir + "v", elems * sizeof(T));
  const Buffer sigma = a.has_sigma ? Buffer(dir + "sigma", size_t(a.H) * 4) : Buffer(0);
  const float* sig = a.has_sigma ? sigma.as<float>() : nullptr;
  const int H = static_cast<int>(a.H);
  if (a.mode == "forward") {
    Buffer out(elems * sizeof(T)), lse(rows * 4), out_off(a.flag ? elems * 4 : 0), p_off(a.flag ? rows * 4 : 0);
    kkemu::launch(forward_kernel<T, D>, kkemu::Dim3{unsigned(forward_blocks(a.N)), unsigned(a.B * a.H), 1}, kThreads,
                  forward_smem<T, D>(), a.concurrent, k.as<const T>(), v.as<const T>(), out.as<T>(), lse.as<float>(),
                  a.flag ? out_off.as<float>() : nullptr, a.flag ? p_off.as<float>() : nullptr, sig, a.N, H,
                  a.grid_w, a.prefix, a.scale);
    write_file(dir + "out", out.data, out.bytes);
    write_file(dir + "lse", lse.data, lse.bytes);
    if (a.flag) {
      write_file(dir + "out_off", out_off.data, out_off.bytes);
      write_file(dir + "p_off", p_off.data, p_off.bytes);
    }
    return 0;
  }
  const Buffer dout(dir + "dout", elems * sizeof(T)), lse(dir + "lse", rows * 4), delta(dir + "delta", rows * 4);
  const Buffer delta_diag(dir + "delta_diag", rows * 4), p_diag(dir + "p_diag", rows * 4);
  const int64_t blocks = backward_blocks(a.N);
  Buffer dk(elems * sizeof(T)), dv(elems * sizeof(T)), part(size_t(a.B * a.H * blocks) * 4);
  std::memset(part.data, 0, part.bytes);  // as the host code's at::zeros
  kkemu::launch(backward_kernel<T, D>, kkemu::Dim3{unsigned(blocks), unsigned(a.B * a.H), 1}, kThreads,
                backward_smem<T, D>(), a.concurrent, k.as<const T>(), v.as<const T>(), dout.as<const T>(),
                lse.as<const float>(), delta.as<const float>(), delta_diag.as<const float>(), p_diag.as<const float>(),
                sig, dk.as<T>(), dv.as<T>(), part.as<float>(), a.N, H, a.grid_w, a.prefix, a.scale,
                a.flag && a.has_sigma);
  write_file(dir + "dk", dk.data, dk.bytes);
  write_file(dir + "dv", dv.data, dv.bytes);
  write_file(dir + "dsigma_part", part.data, part.bytes);
  return 0;
}

template <typename T>
int by_head_dim(const Args& a) {
  if (a.D == 32) return run<T, 32>(a);
  if (a.D == 64) return run<T, 64>(a);
  if (a.D == 128) return run<T, 128>(a);
  std::fprintf(stderr, "emulate: head dim %ld is not one the kernels are built for\n", long(a.D));
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 14) {
    std::fprintf(stderr, "usage: emulate forward|backward fp16|bf16 B H N D GRID_W PREFIX SCALE HAS_SIGMA "
                         "WITH_STATS|NEED_DSIGMA CONCURRENT DIR\n");
    return 2;
  }
  Args a{argv[1], argv[2], argv[13], std::atol(argv[3]), std::atol(argv[4]), std::atol(argv[5]), std::atol(argv[6]),
         std::atol(argv[7]), std::atol(argv[8]), std::strtof(argv[9], nullptr), std::atoi(argv[10]) != 0,
         std::atoi(argv[11]) != 0, static_cast<unsigned>(std::atoi(argv[12]))};
  if ((a.mode != "forward" && a.mode != "backward") || a.concurrent == 0) {
    std::fprintf(stderr, "emulate: bad mode or concurrency\n");
    return 2;
  }
  if (a.dtype == "fp16") return by_head_dim<half>(a);
  if (a.dtype == "bf16") return by_head_dim<__nv_bfloat16>(a);
  std::fprintf(stderr, "emulate: dtype must be fp16 or bf16, got %s\n", a.dtype.c_str());
  return 2;
}
