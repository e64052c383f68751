// The subset of CUDA that csrc/kkattn_cuda_kernels.cuh uses, emulated on the host, so that the
// unchanged device code runs (and is checked) on a machine without a GPU.
//
//  * A block is blockDim.x OS threads; threadIdx/blockIdx are thread-local.  __syncthreads and
//    __syncwarp are pthread barriers (which order memory, as on the device).
//  * Dynamic shared memory is one buffer per block, filled with 0xFF bytes (NaN in fp32, fp16 and
//    bf16), so a read of a shared value nobody wrote shows up in the results.
//  * Warp shuffles and WMMA (16×16×16, fp32 accumulate) are warp-collectives: lanes exchange values
//    through a per-warp scratch area between two barriers.  On the device they do not order memory,
//    so under ThreadSanitizer that exchange is hidden from happens-before: a missing __syncwarp
//    between a shared-memory write and another lane's read is reported as a race.
//  * WMMA loads and stores check what the hardware requires: a 256-bit aligned pointer inside the
//    block's shared memory and a leading dimension that is a multiple of 16 bytes.  A fragment's
//    elements are split over lanes in an order the kernel cannot rely on (lane l owns e ≡ l mod 32).
//  * half and __nv_bfloat16 store the exact 16-bit patterns and convert with round-to-nearest-even,
//    like the device's _rn intrinsics.
// Not emulated: timing, bank conflicts, registers, partial warp masks (rejected), the real scheduler.
#pragma once

#include <pthread.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __restrict__ __restrict
#define __align__(n) alignas(n)

namespace kkemu {

struct Dim3 {
  unsigned x = 1, y = 1, z = 1;
};

[[noreturn]] inline void fail(const char* what);

// ThreadSanitizer: what happens inside a warp-collective exchange must not create happens-before.
#if defined(__SANITIZE_THREAD__)
extern "C" void AnnotateIgnoreSyncBegin(const char*, int);
extern "C" void AnnotateIgnoreSyncEnd(const char*, int);
extern "C" void AnnotateIgnoreReadsBegin(const char*, int);
extern "C" void AnnotateIgnoreReadsEnd(const char*, int);
extern "C" void AnnotateIgnoreWritesBegin(const char*, int);
extern "C" void AnnotateIgnoreWritesEnd(const char*, int);
struct Unordered {
  Unordered() {
    AnnotateIgnoreSyncBegin(__FILE__, __LINE__);
    AnnotateIgnoreReadsBegin(__FILE__, __LINE__);
    AnnotateIgnoreWritesBegin(__FILE__, __LINE__);
  }
  ~Unordered() {
    AnnotateIgnoreWritesEnd(__FILE__, __LINE__);
    AnnotateIgnoreReadsEnd(__FILE__, __LINE__);
    AnnotateIgnoreSyncEnd(__FILE__, __LINE__);
  }
};
#else
struct Unordered {
  Unordered() {}  // user-provided: no unused-variable warning where it only marks a scope
};
#endif

constexpr int kMaxWarps = 32;

// One emulated thread block.
struct Block {
  pthread_barrier_t all;                  // __syncthreads
  pthread_barrier_t warp[kMaxWarps];      // __syncwarp
  pthread_barrier_t exchange[kMaxWarps];  // inside shuffles and WMMA
  float scratch[kMaxWarps][3][256];       // a warp's exchanged values (A, B, C tiles; shuffles use [0])
  unsigned char* shared = nullptr;
  size_t shared_bytes = 0;
};

inline thread_local Block* current = nullptr;

}  // namespace kkemu

inline thread_local kkemu::Dim3 threadIdx, blockIdx;
inline kkemu::Dim3 blockDim, gridDim;

[[noreturn]] inline void kkemu::fail(const char* what) {
  std::fprintf(stderr, "cuda emulator: %s (block %u,%u thread %u)\n", what, blockIdx.x, blockIdx.y, threadIdx.x);
  std::abort();
}

#define KKATTN_SHARED_MEMORY(name) unsigned char* name = kkemu::current->shared

inline void __syncthreads() { pthread_barrier_wait(&kkemu::current->all); }
inline void __syncwarp(unsigned mask = 0xffffffffu) {
  if (mask != 0xffffffffu) kkemu::fail("__syncwarp with a partial mask is not emulated");
  pthread_barrier_wait(&kkemu::current->warp[threadIdx.x / 32]);
}

namespace kkemu {
inline void exchange_barrier() { pthread_barrier_wait(&current->exchange[threadIdx.x / 32]); }
inline int warp_id() { return static_cast<int>(threadIdx.x / 32); }
inline int lane_id() { return static_cast<int>(threadIdx.x % 32); }
}  // namespace kkemu

inline float __shfl_xor_sync(unsigned mask, float value, int lane_mask) {
  if (mask != 0xffffffffu) kkemu::fail("a shuffle with a partial mask is not emulated");
  const kkemu::Unordered unordered;
  float* slots = kkemu::current->scratch[kkemu::warp_id()][0];
  slots[kkemu::lane_id()] = value;
  kkemu::exchange_barrier();
  const float got = slots[(kkemu::lane_id() ^ lane_mask) & 31];
  kkemu::exchange_barrier();
  return got;
}

inline float __expf(float x) { return std::exp(x); }

// ------------------------------------------------------------------------------- 16-bit floats
struct half {
  uint16_t bits;
};
struct __nv_bfloat16 {
  uint16_t bits;
};

inline float __half2float(half h) {
  _Float16 f;
  std::memcpy(&f, &h.bits, sizeof f);
  return static_cast<float>(f);
}
inline half __float2half_rn(float x) {
  const _Float16 f = static_cast<_Float16>(x);  // IEEE round to nearest even
  half h;
  std::memcpy(&h.bits, &f, sizeof f);
  return h;
}
inline float __bfloat162float(__nv_bfloat16 b) {
  const uint32_t u = static_cast<uint32_t>(b.bits) << 16;
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}
inline __nv_bfloat16 __float2bfloat16_rn(float x) {
  uint32_t u;
  std::memcpy(&u, &x, sizeof u);
  if ((u & 0x7fffffffu) > 0x7f800000u) return {static_cast<uint16_t>((u >> 16) | 0x40u)};  // NaN stays NaN
  u += 0x7fffu + ((u >> 16) & 1u);  // round to nearest, ties to even
  return {static_cast<uint16_t>(u >> 16)};
}

namespace kkemu {
inline float widen(half x) { return __half2float(x); }
inline float widen(__nv_bfloat16 x) { return __bfloat162float(x); }
inline float widen(float x) { return x; }
}  // namespace kkemu

struct alignas(16) uint4 {
  unsigned x, y, z, w;
};
inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { return {x, y, z, w}; }

// ----------------------------------------------------------------------------------------- WMMA
namespace nvcuda {
namespace wmma {
struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };

template <typename Use, int M, int N, int K, typename T, typename Layout = void>
struct fragment {
  static_assert(M == 16 && N == 16 && K == 16, "only 16x16x16 fragments are emulated");
  static constexpr int num_elements = 8;
  float x[8];  // lane l holds tile elements l, l + 32, …, l + 224 (row-major index)
};

namespace detail {
inline void check_access(const void* p, unsigned ldm, size_t elem_bytes, size_t span_elems) {
  if (reinterpret_cast<uintptr_t>(p) % 32 != 0) kkemu::fail("WMMA pointer is not 256-bit aligned");
  if ((ldm * elem_bytes) % 16 != 0) kkemu::fail("WMMA leading dimension is not a multiple of 16 bytes");
  const auto* first = static_cast<const unsigned char*>(p);
  const auto* base = kkemu::current->shared;
  if (first < base || first + span_elems * elem_bytes > base + kkemu::current->shared_bytes)
    kkemu::fail("WMMA access outside the block's shared memory");
}
// Offset of row-major tile element e in memory laid out with leading dimension ldm.
inline size_t offset(int e, unsigned ldm, bool row_major_memory) {
  const int r = e / 16, c = e % 16;
  return row_major_memory ? size_t(r) * ldm + c : size_t(c) * ldm + r;
}
}  // namespace detail

template <typename Use, typename T, typename Layout>
inline void load_matrix_sync(fragment<Use, 16, 16, 16, T, Layout>& f, const T* p, unsigned ldm) {
  static_assert(!std::is_same_v<Use, accumulator>, "accumulators take a layout argument");
  const bool row = std::is_same_v<Layout, row_major>;
  detail::check_access(p, ldm, sizeof(T), 15 * size_t(ldm) + 16);
  for (int q = 0; q < 8; ++q) f.x[q] = kkemu::widen(p[detail::offset(kkemu::lane_id() + 32 * q, ldm, row)]);
}
inline void load_matrix_sync(fragment<accumulator, 16, 16, 16, float>& f, const float* p, unsigned ldm, layout_t layout) {
  detail::check_access(p, ldm, sizeof(float), 15 * size_t(ldm) + 16);
  for (int q = 0; q < 8; ++q) f.x[q] = p[detail::offset(kkemu::lane_id() + 32 * q, ldm, layout == mem_row_major)];
}
inline void store_matrix_sync(float* p, const fragment<accumulator, 16, 16, 16, float>& f, unsigned ldm, layout_t layout) {
  detail::check_access(p, ldm, sizeof(float), 15 * size_t(ldm) + 16);
  for (int q = 0; q < 8; ++q) p[detail::offset(kkemu::lane_id() + 32 * q, ldm, layout == mem_row_major)] = f.x[q];
}
template <typename Use, typename T, typename Layout>
inline void fill_fragment(fragment<Use, 16, 16, 16, T, Layout>& f, float value) {
  for (float& x : f.x) x = value;
}
// D = A·B + C for the warp: every lane publishes its elements, then computes its own of D.
template <typename TA, typename LA, typename TB, typename LB>
inline void mma_sync(fragment<accumulator, 16, 16, 16, float>& d, const fragment<matrix_a, 16, 16, 16, TA, LA>& a,
                     const fragment<matrix_b, 16, 16, 16, TB, LB>& b, const fragment<accumulator, 16, 16, 16, float>& c) {
  const kkemu::Unordered unordered;
  float(*tiles)[256] = kkemu::current->scratch[kkemu::warp_id()];
  for (int q = 0; q < 8; ++q) {
    const int e = kkemu::lane_id() + 32 * q;
    tiles[0][e] = a.x[q];
    tiles[1][e] = b.x[q];
    tiles[2][e] = c.x[q];
  }
  kkemu::exchange_barrier();
  float result[8];
  for (int q = 0; q < 8; ++q) {
    const int e = kkemu::lane_id() + 32 * q, r = e / 16, col = e % 16;
    float acc = tiles[2][e];
    for (int k = 0; k < 16; ++k) acc += tiles[0][r * 16 + k] * tiles[1][k * 16 + col];
    result[q] = acc;
  }
  kkemu::exchange_barrier();
  for (int q = 0; q < 8; ++q) d.x[q] = result[q];
}
}  // namespace wmma
}  // namespace nvcuda

// --------------------------------------------------------------------------------------- launch
namespace kkemu {

// Runs kernel<<<grid, threads, shared_bytes>>>(args...), `concurrent` blocks at a time.
template <typename... Params, typename... Args>
void launch(void (*kernel)(Params...), Dim3 grid, unsigned threads, size_t shared_bytes, unsigned concurrent,
            Args... args) {
  if (threads == 0 || threads % 32 != 0 || threads / 32 > kMaxWarps) fail("block size must be a multiple of 32, at most 1024");
  if (grid.y > 65535) fail("gridDim.y above 65535");
  blockDim = {threads, 1, 1};
  gridDim = grid;
  std::vector<Dim3> blocks;
  for (unsigned y = 0; y < grid.y; ++y)
    for (unsigned x = 0; x < grid.x; ++x) blocks.push_back({x, y, 1});
  for (size_t first = 0; first < blocks.size(); first += concurrent) {
    const size_t count = std::min<size_t>(concurrent, blocks.size() - first);
    std::vector<Block*> running;
    std::vector<std::thread> pool;
    for (size_t i = 0; i < count; ++i) {
      auto* block = new Block;
      pthread_barrier_init(&block->all, nullptr, threads);
      for (unsigned w = 0; w < threads / 32; ++w) {
        pthread_barrier_init(&block->warp[w], nullptr, 32);
        pthread_barrier_init(&block->exchange[w], nullptr, 32);
      }
      void* memory = nullptr;
      if (posix_memalign(&memory, 128, shared_bytes ? shared_bytes : 1) != 0) fail("out of host memory");
      std::memset(memory, 0xFF, shared_bytes);  // NaN poison
      block->shared = static_cast<unsigned char*>(memory);
      block->shared_bytes = shared_bytes;
      running.push_back(block);
      const Dim3 where = blocks[first + i];
      for (unsigned t = 0; t < threads; ++t)
        pool.emplace_back([=]() {
          threadIdx = {t, 0, 0};
          blockIdx = where;
          current = block;
          kernel(args...);
        });
    }
    for (auto& thread : pool) thread.join();
    for (Block* block : running) {
      free(block->shared);
      pthread_barrier_destroy(&block->all);
      for (unsigned w = 0; w < threads / 32; ++w) {
        pthread_barrier_destroy(&block->warp[w]);
        pthread_barrier_destroy(&block->exchange[w]);
      }
      delete block;
    }
  }
}

}  // namespace kkemu
