/// @file cuda.cuh
/// @brief The CUDA backend: the Thrust backend on the CUDA system bound to a stream, cuBLAS GEMM, and
/// hand-written kernels for the hot paths (rlhf/backends/cuda/), each beside its CPU reference.
///
/// `rlhf::cuda_backend` derives from `rlhf::thrust_backend` with Thrust's CUDA system, so every primitive
/// of the backend concept runs on the GPU as a Thrust algorithm, and overrides what pays:
/// - `gemm` calls cuBLAS (`cublasSgemm` / `cublasDgemm`) for float and double; other element types use the
///   Thrust tiles;
/// - `transform_reduce` and `reduce_rows` fold each range on a block of threads in an order-preserving tree
///   (rlhf/backends/cuda/reduce.cuh) instead of Thrust's one thread per range;
/// - the specialized kernels in `rlhf/backends/cuda/*.cuh` (found by argument-dependent lookup, like the
///   Eigen backend's) replace an algorithm's generic path; each kernel's arithmetic is a host-and-device
///   function of the ops layer that the CPU tests exercise, and the GPU tests hold the kernel to the
///   reference backend.
///
/// Streams and synchronization. A backend is bound to one CUDA stream (the legacy default stream unless
/// one is given); copies of the backend share it and one cuBLAS handle. Every primitive and kernel is
/// enqueued on that stream and returns without waiting, except those that hand data to the host:
/// `copy` to or from host memory and `transform_reduce` (which returns a host value) wait for the stream.
/// Call `synchronize()` before device memory written by the backend is read by other streams or by
/// host code through other means.
///
/// Memory. Buffers (`allocate`, and so every kernel's scratch) are stream-ordered allocations from the
/// device's current memory pool (`cudaMallocAsync` / `cudaFreeAsync` on the backend's stream), as Thrust's
/// own temporary storage is: a buffer's release is enqueued on the stream instead of waiting for the whole
/// device as `cudaFree` does, and its memory is handed to the next allocation on that stream. So that
/// released memory stays in the pool across synchronizations rather than going back to the driver, the
/// first allocation on a device raises the default pool's release threshold from 0 to unlimited (a
/// threshold or a pool the program set itself is left alone; `cudaMemPoolTrimTo` gives the memory back,
/// and an allocation that fails for want of memory trims the pool and tries once more). A buffer
/// used by another stream must be synchronized with before it is destroyed. Where the device or platform
/// has no memory pools, buffers fall back to `cudaMalloc` / `cudaFree`.
///
/// This header is CUDA code: include it from a `.cu` file compiled by nvcc with `--extended-lambda`
/// (the rlhf::cuda CMake target sets it).
#pragma once

#if !defined(__CUDACC__)
#error "rlhf/backends/cuda.cuh is CUDA code: include it from a .cu file compiled by nvcc (CMake: link rlhf::cuda)"
#endif

#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <thrust/system/cuda/execution_policy.h>

#include <atomic>
#include <climits>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <type_traits>
#include <vector>

#include "rlhf/backends/concepts.hpp"
#include "rlhf/backends/cuda/reduce.cuh"
#include "rlhf/backends/thrust.hpp"
#include "rlhf/backends/view.hpp"
#include "rlhf/error.hpp"

namespace rlhf {

/// The number of CUDA devices this process can use: 0 when there is none, or no driver.
inline int cuda_device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    (void)cudaGetLastError();  // clear the sticky "no device" error
    return 0;
  }
  return n;
}

namespace backends {

namespace detail {

inline void cuda_check(cudaError_t status, const char* function, const char* call) {
  if (status != cudaSuccess) {
    throw rlhf::cuda_error(std::string(function) + ": " + call + " failed: " + cudaGetErrorName(status) + " (" +
                           cudaGetErrorString(status) + ")");
  }
}

inline const char* cublas_status_name(cublasStatus_t status) {
  switch (status) {
    case CUBLAS_STATUS_SUCCESS: return "CUBLAS_STATUS_SUCCESS";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_ALLOC_FAILED: return "CUBLAS_STATUS_ALLOC_FAILED";
    case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_ARCH_MISMATCH: return "CUBLAS_STATUS_ARCH_MISMATCH";
    case CUBLAS_STATUS_MAPPING_ERROR: return "CUBLAS_STATUS_MAPPING_ERROR";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "CUBLAS_STATUS_EXECUTION_FAILED";
    case CUBLAS_STATUS_INTERNAL_ERROR: return "CUBLAS_STATUS_INTERNAL_ERROR";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED";
    default: return "an unknown cuBLAS status";
  }
}

/// cuBLAS takes sizes and leading dimensions as int: a larger one would wrap. Throws naming the value.
inline void check_cublas_extent(const char* function, std::size_t extent) {
  if (extent > static_cast<std::size_t>(INT_MAX)) {
    throw rlhf::cuda_error(std::string(function) + ": a matrix extent of " + std::to_string(extent) +
                           " exceeds cuBLAS's int range (" + std::to_string(INT_MAX) + ")");
  }
}
/// check_cublas_extent for each of `extents`.
template <class... Extents>
void check_cublas_extents(const char* function, Extents... extents) {
  (check_cublas_extent(function, static_cast<std::size_t>(extents)), ...);
}

/// A launch's block count as CUDA's gridDim.x (at most 2^31 - 1): throws naming the kernel beyond it, where a
/// cast would wrap and skip rows.
inline unsigned grid_blocks(std::size_t blocks, const char* function) {
  if (blocks > static_cast<std::size_t>(INT_MAX)) {
    throw rlhf::cuda_error(std::string(function) + ": " + std::to_string(blocks) +
                           " blocks exceed CUDA's grid limit of 2^31 - 1");
  }
  return static_cast<unsigned>(blocks);
}

/// x -> s x (the k == 0 case of gemm).
template <class T>
struct cuda_scale {
  T s;
  RLHF_HOST_DEVICE T operator()(T x) const { return s * x; }
};

inline void cublas_check(cublasStatus_t status, const char* function, const char* call) {
  if (status != CUBLAS_STATUS_SUCCESS) {
    throw rlhf::cuda_error(std::string(function) + ": " + call + " failed: " + cublas_status_name(status));
  }
}

/// What copies of one cuda_backend share: the stream and a cuBLAS handle, created on first use (so that a
/// backend can be constructed, copied and destroyed on a machine without a GPU).
struct cuda_shared_state {
  explicit cuda_shared_state(cudaStream_t s) : stream(s) {}
  cuda_shared_state(const cuda_shared_state&) = delete;
  cuda_shared_state& operator=(const cuda_shared_state&) = delete;
  ~cuda_shared_state() {
    if (cublas != nullptr) cublasDestroy(cublas);
  }
  cudaStream_t stream;
  std::once_flag cublas_once;
  cublasHandle_t cublas = nullptr;
  bool tf32 = false;  // cuBLAS math mode of the handle (set_tf32)
};

}  // namespace detail

/// The Thrust execution policy of the CUDA backend: Thrust's CUDA system on a stream, without the
/// synchronization Thrust would otherwise add after each algorithm.
using cuda_stream_policy = ::thrust::cuda_cub::execute_on_stream_nosync;

namespace detail {

/// Raises the release threshold of `device`'s default memory pool from 0 (give freed memory back to the
/// driver at every synchronization) to unlimited, once per device and process, so that the stream-ordered
/// buffers of cuda_backend are reused instead of re-mapped after every `synchronize()`.
inline void retain_pool_memory(int device) {
  static std::atomic<std::uint64_t> done{0};  // one bit per device (devices past 63 are set every time)
  const std::uint64_t bit = device < 64 ? std::uint64_t{1} << device : 0;
  if (bit != 0 && (done.load(std::memory_order_acquire) & bit) != 0) return;
  cudaMemPool_t pool = nullptr;
  std::uint64_t threshold = 0;
  if (cudaDeviceGetDefaultMemPool(&pool, device) != cudaSuccess ||
      cudaMemPoolGetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &threshold) != cudaSuccess) {
    (void)cudaGetLastError();  // no pools on this device (allocations fall back to cudaMalloc): clear our error only
  } else if (threshold == 0) {
    threshold = UINT64_MAX;
    if (cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &threshold) != cudaSuccess) {
      (void)cudaGetLastError();
    }
  }
  done.fetch_or(bit, std::memory_order_release);
}

}  // namespace detail

/// The CUDA backend's buffers: stream-ordered allocations on the policy's stream (see the file comment).
template <>
struct thrust_buffer_memory<cuda_stream_policy> {
  template <class T>
  static T* allocate(cuda_stream_policy& policy, std::size_t n) {
    constexpr const char* fn = "rlhf::cuda_backend::allocate";
    if (n > SIZE_MAX / sizeof(T)) {
      throw rlhf::cuda_error(std::string(fn) + ": " + std::to_string(n) + " elements of " +
                             std::to_string(sizeof(T)) + " bytes exceed the address space");
    }
    const cudaStream_t stream = get_stream(policy);
    int device = 0;  // the stream's device, whose pool cudaMallocAsync draws from (not necessarily the current one)
#if CUDART_VERSION >= 12080
    detail::cuda_check(cudaStreamGetDevice(stream, &device), fn, "cudaStreamGetDevice");
#else
    detail::cuda_check(cudaGetDevice(&device), fn, "cudaGetDevice");  // no cudaStreamGetDevice before CUDA 12.8
#endif
    detail::retain_pool_memory(device);
    const std::size_t bytes = n * sizeof(T);
    void* data = nullptr;
    cudaError_t status = cudaMallocAsync(&data, bytes, stream);
    if (status == cudaErrorMemoryAllocation) {
      // The pool may hold released memory in pieces too small for this request: wait for the stream's
      // pending releases, give the pool's unused memory back to the driver, and try once more. Not while the
      // stream is being captured into a graph, where waiting is illegal.
      (void)cudaGetLastError();
      cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
      cudaMemPool_t pool = nullptr;
      if (cudaStreamIsCapturing(stream, &capture) == cudaSuccess && capture == cudaStreamCaptureStatusNone) {
        detail::cuda_check(cudaStreamSynchronize(stream), fn, "cudaStreamSynchronize (before retrying an allocation)");
        if (cudaDeviceGetMemPool(&pool, device) == cudaSuccess) {
          (void)cudaMemPoolTrimTo(pool, 0);
          status = cudaMallocAsync(&data, bytes, stream);
        }
      }
    }
    if (status == cudaErrorNotSupported) {  // no memory pools here: plain allocation
      (void)cudaGetLastError();
      status = cudaMalloc(&data, bytes);
    }
    if (status != cudaSuccess) {
      (void)cudaGetLastError();
      std::size_t free_bytes = 0, total_bytes = 0;
      (void)cudaMemGetInfo(&free_bytes, &total_bytes);
      (void)cudaGetLastError();
      throw rlhf::cuda_error(std::string(fn) + ": " + std::to_string(bytes) + " bytes (" +
                             std::to_string(n) + " elements) on device " + std::to_string(device) + " failed: " +
                             cudaGetErrorName(status) + " (" + cudaGetErrorString(status) + "); the device has " +
                             std::to_string(free_bytes) + " of " + std::to_string(total_bytes) + " bytes free");
    }
    return static_cast<T*>(data);
  }
  template <class T>
  static void release(cuda_stream_policy& policy, T* data) noexcept {
    if (cudaFreeAsync(data, get_stream(policy)) != cudaSuccess) {
      (void)cudaGetLastError();
      (void)cudaFree(data);  // memory from the cudaMalloc fallback
      (void)cudaGetLastError();
    }
  }
};

/// The CUDA backend. Satisfies rlhf::complete_backend; memory is device memory (`cuda_space`).
struct cuda_backend : thrust_backend<cuda_stream_policy, cuda_space> {
  using base_backend = thrust_backend<cuda_stream_policy, cuda_space>;
  static constexpr const char* name = "cuda";
  /// Threads per block of the row kernels (one block per row).
  static constexpr unsigned row_block_threads = 256;

  /// On the legacy default stream.
  cuda_backend() : cuda_backend(cudaStream_t{}) {}
  /// On `stream` (not owned: it must outlive the backend, every copy of it and every buffer they allocated).
  explicit cuda_backend(cudaStream_t stream)
      : base_backend(cuda_stream_policy(stream)), state_(std::make_shared<detail::cuda_shared_state>(stream)) {}

  cudaStream_t stream() const { return state_->stream; }

  /// Waits until everything enqueued on the backend's stream has finished.
  void synchronize() const {
    detail::cuda_check(cudaStreamSynchronize(stream()), "rlhf::cuda_backend::synchronize", "cudaStreamSynchronize");
  }

  /// The backend's cuBLAS handle, bound to its stream (created on first use, in the math mode of set_tf32).
  cublasHandle_t cublas() const {
    std::call_once(state_->cublas_once, [s = state_.get()] {
      // Set up in a local handle, published only once bound to the stream (a failure destroys it, and
      // call_once lets a later call try again).
      constexpr const char* fn = "rlhf::cuda_backend::cublas";
      cublasHandle_t h = nullptr;
      detail::cublas_check(cublasCreate(&h), fn, "cublasCreate");
      const cublasStatus_t bound = cublasSetStream(h, s->stream);
      const cublasStatus_t mode =
          bound == CUBLAS_STATUS_SUCCESS
              ? cublasSetMathMode(h, s->tf32 ? CUBLAS_TF32_TENSOR_OP_MATH : CUBLAS_DEFAULT_MATH)
              : bound;
      if (mode != CUBLAS_STATUS_SUCCESS) {
        cublasDestroy(h);
        detail::cublas_check(mode, fn, bound != CUBLAS_STATUS_SUCCESS ? "cublasSetStream" : "cublasSetMathMode");
      }
      s->cublas = h;
    });
    return state_->cublas;
  }

  /// Lets cuBLAS run the float products (`gemm`: the model's linear layers; the attention's strided-batched
  /// products) on tensor cores in TF32: inputs rounded to a 10-bit mantissa, fp32 accumulation, several
  /// times the fp32 throughput on A100 / H100, at about 1e-3 relative error per product instead of fp32's
  /// rounding. Off by default, so results match the CPU backends to fp32 rounding (what the tests check).
  /// double products are unaffected. The setting belongs to the cuBLAS handle that the backend's copies
  /// share; change it between steps, not while another thread issues products on the backend.
  void set_tf32(bool on) const {
    state_->tf32 = on;
    if (state_->cublas != nullptr) {
      detail::cublas_check(cublasSetMathMode(state_->cublas, on ? CUBLAS_TF32_TENSOR_OP_MATH : CUBLAS_DEFAULT_MATH),
                           "rlhf::cuda_backend::set_tf32", "cublasSetMathMode");
    }
  }
  /// Whether float products may use TF32 tensor cores (set_tf32).
  bool tf32() const { return state_->tf32; }

  /// Folds f(in[i]...) into init with the associative op and returns the result on the host: each range of
  /// `reduce_block` elements on a block of 256 threads (contiguous slices combined in order,
  /// cuda/reduce.cuh), the ranges' results folded on the host in order after one copy, which waits for the
  /// stream. The grouping depends only on the length, so results are reproducible; accumulators over 128
  /// bytes take the Thrust backend's fold.
  template <class Acc, class Op, class F, class In0, class... In>
  Acc transform_reduce(Acc init, Op op, F f, vector_view<In0, cuda_space> in0, vector_view<In, cuda_space>... in) const {
    if constexpr (sizeof(Acc) > cuda_kernels::ordered_reduce_max_bytes) {
      return base_backend::transform_reduce(init, op, f, in0, in...);
    } else {
      constexpr const char* fn = "rlhf::cuda_backend::transform_reduce";
      detail::check_same_sizes(fn, in0.size, in.size...);
      const std::size_t n = in0.size;
      if (n == 0) return init;
      const std::size_t blocks = (n + reduce_block - 1) / reduce_block;
      auto device_partial = allocate<Acc>(1, blocks);
      constexpr unsigned threads = detail::ordered_reduce_threads;
      cuda_kernels::ordered_transform_reduce_blocks<Acc, threads><<<detail::grid_blocks(blocks, fn), threads, 0, stream()>>>(
          device_partial.data(), init, op, f, detail::make_pointer_pack(in0.data, in.data...), n, reduce_block);
      detail::cuda_check(cudaGetLastError(), fn, "ordered_transform_reduce_blocks<<<>>>");
      std::vector<Acc> partial(blocks, init);
      copy(vector_view<const Acc, cuda_space>{device_partial.data(), blocks},
           vector_view<Acc, host_space>{partial.data(), blocks});
      Acc acc = init;
      for (const Acc& p : partial) acc = op(acc, p);
      return acc;
    }
  }

  /// out[r] = init op f(0, in(r, 0)...) op f(1, in(r, 1)...) ...: a block of 256 threads per row, contiguous
  /// slices combined in order (cuda/reduce.cuh); enqueued on the stream. Accumulators over 128 bytes take the
  /// Thrust backend's one-thread-per-row fold.
  template <class Acc, class Op, class F, class In0, class... In>
  void reduce_rows(vector_view<Acc, cuda_space> out, Acc init, Op op, F f, matrix_view<In0, cuda_space> in0,
                   matrix_view<In, cuda_space>... in) const {
    if constexpr (sizeof(Acc) > cuda_kernels::ordered_reduce_max_bytes) {
      base_backend::reduce_rows(out, init, op, f, in0, in...);
    } else {
      constexpr const char* fn = "rlhf::cuda_backend::reduce_rows";
      detail::check_same_sizes(fn, in0.rows, out.size, in.rows...);
      detail::check_same_sizes(fn, in0.cols, in.cols...);
      if (in0.rows == 0) return;
      constexpr unsigned threads = detail::ordered_reduce_threads;
      cuda_kernels::ordered_reduce_rows<Acc, threads><<<detail::grid_blocks(in0.rows, fn), threads, 0, stream()>>>(
          out.data, init, op, f, detail::make_pointer_pack(in0.data, in.data...), in0.cols);
      detail::cuda_check(cudaGetLastError(), fn, "ordered_reduce_rows<<<>>>");
    }
  }

  /// Row-major C = alpha op(A) op(B) + beta C. For float and double: cuBLAS, which is column-major, computes
  /// the transpose C^T = op(B)^T op(A)^T, since a row-major matrix read as column-major is its transpose.
  template <class T>
  void gemm(transpose op_a, transpose op_b, std::type_identity_t<T> alpha,
            std::type_identity_t<matrix_view<const T, cuda_space>> a,
            std::type_identity_t<matrix_view<const T, cuda_space>> b, std::type_identity_t<T> beta,
            matrix_view<T, cuda_space> c) const {
    if constexpr (std::is_same_v<T, float> || std::is_same_v<T, double>) {
      detail::check_gemm_shapes<T>("rlhf::cuda_backend::gemm", op_a, op_b, {nullptr, a.rows, a.cols},
                                   {nullptr, b.rows, b.cols}, {nullptr, c.rows, c.cols});
      if (c.rows == 0 || c.cols == 0) return;
      const std::size_t k = op_a == transpose::no ? a.cols : a.rows;
      if (k == 0) {  // C = beta C, without asking cuBLAS about an empty inner dimension
        const vector_view<T, cuda_space> cv = c.flat();
        if (beta == T(0)) {
          this->fill(cv, T(0));
        } else {
          this->transform(cv, detail::cuda_scale<T>{beta}, as_const(cv));
        }
        return;
      }
      detail::check_cublas_extents("rlhf::cuda_backend::gemm", c.rows, c.cols, k, a.cols, b.cols);
      const auto op = [](transpose t) { return t == transpose::no ? CUBLAS_OP_N : CUBLAS_OP_T; };
      const auto ld = [](std::size_t cols) { return static_cast<int>(cols == 0 ? 1 : cols); };
      const int m_cm = static_cast<int>(c.cols), n_cm = static_cast<int>(c.rows), k_cm = static_cast<int>(k);
      const T al = alpha, be = beta;
      cublasStatus_t status;
      if constexpr (std::is_same_v<T, float>) {
        status = cublasSgemm(cublas(), op(op_b), op(op_a), m_cm, n_cm, k_cm, &al, b.data, ld(b.cols), a.data,
                             ld(a.cols), &be, c.data, ld(c.cols));
      } else {
        status = cublasDgemm(cublas(), op(op_b), op(op_a), m_cm, n_cm, k_cm, &al, b.data, ld(b.cols), a.data,
                             ld(a.cols), &be, c.data, ld(c.cols));
      }
      detail::cublas_check(status, "rlhf::cuda_backend::gemm", std::is_same_v<T, float> ? "cublasSgemm" : "cublasDgemm");
    } else {
      base_backend::gemm<T>(op_a, op_b, alpha, a, b, beta, c);
    }
  }

 private:
  std::shared_ptr<detail::cuda_shared_state> state_;
};

static_assert(complete_backend<cuda_backend>);

/// The hand-written kernels (rlhf/backends/cuda/*.cuh) and what they share.
namespace cuda_kernels {
inline constexpr unsigned warp_size = 32;
inline constexpr unsigned full_warp = 0xffffffffu;
}  // namespace cuda_kernels

}  // namespace backends

using backends::cuda_backend;

}  // namespace rlhf

// The CUDA backend's hand-written kernels (argument-dependent lookup, see docs/backends.md).
#include "rlhf/backends/cuda/causal_attention.cuh"
#include "rlhf/backends/cuda/embedding_backward.cuh"
#include "rlhf/backends/cuda/gae.cuh"
#include "rlhf/backends/cuda/kl_penalized_advantages.cuh"
#include "rlhf/backends/cuda/kl_penalized_rewards.cuh"
#include "rlhf/backends/cuda/ppo_clip_loss.cuh"
#include "rlhf/backends/cuda/ranking_loss.cuh"
#include "rlhf/backends/cuda/rms_norm.cuh"
#include "rlhf/backends/cuda/value_loss.cuh"
#include "rlhf/backends/cuda/token_logprobs.cuh"
