/// @file eigen.hpp
/// @brief The Eigen backend: the default CPU backend. Vectorized loops, Eigen::Map for BLAS, OpenMP.
///
/// Buffers are rlhf::host_buffer (64-byte aligned), viewed through Eigen::Map where Eigen does the work
/// (gemm and the specialized kernels under backends/eigen/). Element maps are plain loops the compiler
/// vectorizes; loops are split across OpenMP threads when the library is compiled with OpenMP
/// (the rlhf::eigen CMake target links OpenMP when it is found).
///
/// Reductions are deterministic and independent of the thread count: the input is cut into fixed
/// blocks of `reduce_block` elements, each block is folded left to right, and the block results are
/// folded in block order.
#pragma once

#include <Eigen/Core>

#include <algorithm>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#if defined(_OPENMP)
#include <omp.h>
#endif

#include "rlhf/backends/concepts.hpp"
#include "rlhf/backends/host_buffer.hpp"
#include "rlhf/backends/reference.hpp"
#include "rlhf/backends/view.hpp"

#if !EIGEN_VERSION_AT_LEAST(3, 4, 0)
#error "rlhf::eigen_backend needs Eigen 3.4 or newer (Debian: apt-get install libeigen3-dev)."
#endif

namespace rlhf::backends {

/// The Eigen backend. Satisfies rlhf::complete_backend. A copyable handle holding the thread count.
struct eigen_backend {
  using memory_space = host_space;
  template <class T>
  using buffer = host_buffer<T>;
  static constexpr const char* name = "eigen";

  /// Elements per reduction block; fixes the summation order (see the file comment).
  static constexpr std::size_t reduce_block = 4096;
  /// Below this much work (elements, or rows x cols) a loop stays on the calling thread. A parallel region
  /// costs a fork and a join, tens of microseconds where OpenMP threads sleep between regions
  /// (OMP_WAIT_POLICY=passive): at 2^15 elements the hot paths ran 2-4x slower on two threads than on one
  /// (docs/benchmarks.md), at 2^18 they gain. Tests set it to 1 to run the parallel paths on small shapes.
  std::size_t parallel_threshold = std::size_t(1) << 17;
  /// Elements of a light streaming loop (a few vectorized operations per element: element maps (`transform`),
  /// the masked moments, the whitening's normalize pass, the KL-penalized rewards) that count as one unit of
  /// work toward parallel_threshold: such loops ran slower on two threads than on one at 2^18 elements (the
  /// k1 KL map 67 us against 38, the rewards with it 166 against 125) and gained from 2^19
  /// (docs/benchmarks.md).
  static constexpr std::size_t light_elements_per_work = 4;
  /// Multiply-adds from which a GEMM uses the backend's threads (below: one thread).
  static constexpr double parallel_gemm_work = double(1 << 24);

  /// Threads for parallel loops; 0 means OpenMP's default (OMP_NUM_THREADS or the core count).
  int num_threads = 0;

  eigen_backend() = default;
  explicit eigen_backend(int threads) : num_threads(threads) {}
  /// @param threads as num_threads
  /// @param min_parallel_work as parallel_threshold
  eigen_backend(int threads, std::size_t min_parallel_work) : parallel_threshold(min_parallel_work), num_threads(threads) {}

  /// The number of threads parallel loops use.
  int threads() const {
#if defined(_OPENMP)
    return num_threads > 0 ? num_threads : omp_get_max_threads();
#else
    return 1;
#endif
  }

  /// Runs body(begin, end) over [0, n) split into `chunks` contiguous ranges, possibly concurrently.
  template <class Body>
  void parallel_ranges(std::size_t n, std::size_t work, Body body) const {
    const int t = threads();
    if (t <= 1 || work < parallel_threshold || n < 2) {
      body(std::size_t(0), n);
      return;
    }
#if defined(_OPENMP)
    const std::ptrdiff_t chunks = static_cast<std::ptrdiff_t>(std::min<std::size_t>(n, static_cast<std::size_t>(t)));
#pragma omp parallel for schedule(static) num_threads(t)
    for (std::ptrdiff_t k = 0; k < chunks; ++k) {
      const std::size_t begin = n * static_cast<std::size_t>(k) / static_cast<std::size_t>(chunks);
      const std::size_t end = n * static_cast<std::size_t>(k + 1) / static_cast<std::size_t>(chunks);
      body(begin, end);
    }
#else
    body(std::size_t(0), n);
#endif
  }

  template <class T>
  buffer<T> allocate(std::size_t rows, std::size_t cols) const {
    return buffer<T>(rows, cols);
  }

  template <class T>
  void copy(std::type_identity_t<vector_view<const T, host_space>> src, vector_view<T, host_space> dst) const {
    detail::check_same_sizes("rlhf::eigen_backend::copy", src.size, dst.size);
    if (src.size != 0 && src.data != dst.data) std::memmove(dst.data, src.data, src.size * sizeof(T));
  }

  template <class T, class U>
  void fill(vector_view<T, host_space> v, U value) const {
    const T x = static_cast<T>(value);
    parallel_ranges(v.size, v.size, [&](std::size_t b, std::size_t e) { std::fill(v.data + b, v.data + e, x); });
  }

  void synchronize() const {}

  template <class Out, class F, class... In>
  void transform(vector_view<Out, host_space> out, F f, vector_view<In, host_space>... in) const {
    detail::check_same_sizes("rlhf::eigen_backend::transform", out.size, in.size...);
    // An element map is a light streaming loop (see light_elements_per_work).
    parallel_ranges(out.size, out.size / light_elements_per_work, [&](std::size_t b, std::size_t e) {
      Out* __restrict o = out.data;
      // A local copy of the functor: read through the closure's reference, its scalar members (a clamp, a
      // coefficient) could alias the stores to `o` as far as the compiler knows, which kept it from hoisting
      // them and from vectorizing the loop.
      const F fn = f;
#if defined(_OPENMP)
#pragma omp simd
#endif
      for (std::size_t i = b; i < e; ++i) o[i] = fn(in.data[i]...);
    });
  }

  template <class F>
  void for_each_index(std::size_t n, F f) const {
    for_each_index(n, f, 1);
  }

  /// for_each_index where one index costs about `work_per_index` element operations (the optional work hint,
  /// see rlhf::for_each_weighted_index): the loop is split across threads once n * work_per_index reaches
  /// parallel_threshold, so a few thousand heavy rows (attention queries, RMSNorm rows) use every thread.
  template <class F>
  void for_each_index(std::size_t n, F f, std::size_t work_per_index) const {
    const std::size_t w = std::max<std::size_t>(work_per_index, 1);
    constexpr std::size_t most = std::numeric_limits<std::size_t>::max();
    const std::size_t work = n > most / w ? most : n * w;
    parallel_ranges(n, work, [&](std::size_t b, std::size_t e) {
      const F fn = f;  // local copy: see transform
      for (std::size_t i = b; i < e; ++i) fn(i);
    });
  }

  template <class Acc, class Op, class F, class In0, class... In>
  Acc transform_reduce(Acc init, Op op, F f, vector_view<In0, host_space> in0, vector_view<In, host_space>... in) const {
    detail::check_same_sizes("rlhf::eigen_backend::transform_reduce", in0.size, in.size...);
    const std::size_t n = in0.size;
    const std::size_t blocks = (n + reduce_block - 1) / reduce_block;
    if (blocks <= 1) {
      Acc acc = init;
      for (std::size_t i = 0; i < n; ++i) acc = op(acc, f(in0.data[i], in.data[i]...));
      return acc;
    }
    // Each block starts from its first element so that `init` is applied exactly once.
    std::vector<Acc> partial(blocks, init);
    parallel_ranges(blocks, n, [&](std::size_t bb, std::size_t be) {
      for (std::size_t k = bb; k < be; ++k) {
        const std::size_t b = k * reduce_block, e = std::min(n, b + reduce_block);
        Acc acc = f(in0.data[b], in.data[b]...);
        for (std::size_t i = b + 1; i < e; ++i) acc = op(acc, f(in0.data[i], in.data[i]...));
        partial[k] = acc;
      }
    });
    Acc acc = init;
    for (const Acc& p : partial) acc = op(acc, p);
    return acc;
  }

  template <class Acc, class Op, class F, class In0, class... In>
  void reduce_rows(vector_view<Acc, host_space> out, Acc init, Op op, F f, matrix_view<In0, host_space> in0,
                   matrix_view<In, host_space>... in) const {
    detail::check_same_sizes("rlhf::eigen_backend::reduce_rows", in0.rows, out.size, in.rows...);
    detail::check_same_sizes("rlhf::eigen_backend::reduce_rows", in0.cols, in.cols...);
    const std::size_t cols = in0.cols;
    parallel_ranges(in0.rows, in0.rows * cols, [&](std::size_t rb, std::size_t re) {
      for (std::size_t r = rb; r < re; ++r) {
        const std::size_t base = r * cols;
        Acc acc = init;
        for (std::size_t c = 0; c < cols; ++c) acc = op(acc, f(c, in0.data[base + c], in.data[base + c]...));
        out.data[r] = acc;
      }
    });
  }

  template <class T>
  void reverse_linear_recurrence(matrix_view<T, host_space> out,
                                 std::type_identity_t<matrix_view<const T, host_space>> a,
                                 std::type_identity_t<matrix_view<const T, host_space>> x) const {
    detail::check_same_sizes("rlhf::eigen_backend::reverse_linear_recurrence", out.rows, a.rows, x.rows);
    detail::check_same_sizes("rlhf::eigen_backend::reverse_linear_recurrence", out.cols, a.cols, x.cols);
    const std::size_t cols = out.cols;
    parallel_ranges(out.rows, out.rows * cols, [&](std::size_t rb, std::size_t re) {
      for (std::size_t r = rb; r < re; ++r) {
        const T* ar = a.data + r * cols;
        const T* xr = x.data + r * cols;
        T* o = out.data + r * cols;
        T carry = T(0);
        for (std::size_t t = cols; t-- > 0;) {
          carry = xr[t] + ar[t] * carry;
          o[t] = carry;
        }
      }
    });
  }

  template <class T>
  void gemm(transpose op_a, transpose op_b, std::type_identity_t<T> alpha,
            std::type_identity_t<matrix_view<const T, host_space>> a,
            std::type_identity_t<matrix_view<const T, host_space>> b, std::type_identity_t<T> beta,
            matrix_view<T, host_space> c) const {
    detail::check_gemm_shapes("rlhf::eigen_backend::gemm", op_a, op_b, a, b, c);
    using matrix = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
    using const_map = Eigen::Map<const matrix>;
    const auto rows_of = [](auto v) { return static_cast<Eigen::Index>(v.rows); };
    const auto cols_of = [](auto v) { return static_cast<Eigen::Index>(v.cols); };
    const_map am(a.data, rows_of(a), cols_of(a));
    const_map bm(b.data, rows_of(b), cols_of(b));
    Eigen::Map<matrix> cm(c.data, rows_of(c), cols_of(c));
    if (c.rows == 0 || c.cols == 0) return;
#if defined(_OPENMP)
    // Eigen's product parallelizes itself with OpenMP over omp_get_max_threads() unless told otherwise;
    // it must use this backend's thread count, and one thread for small products, whose fork/join costs
    // more than it saves (the small GEMMs of a 260K-parameter model ran 30x slower on 2 busy cores).
    const double work = static_cast<double>(c.rows) * static_cast<double>(c.cols) *
                        static_cast<double>(op_a == transpose::no ? a.cols : a.rows);
    Eigen::setNbThreads(work >= parallel_gemm_work ? threads() : 1);
#endif
    if (beta == T(0)) {
      cm.setZero();  // beta == 0 must not propagate NaN from uninitialised C (BLAS semantics).
    } else if (beta != T(1)) {
      cm *= beta;
    }
    if (op_a == transpose::no && op_b == transpose::no) cm.noalias() += alpha * am * bm;
    else if (op_a == transpose::yes && op_b == transpose::no) cm.noalias() += alpha * am.transpose() * bm;
    else if (op_a == transpose::no && op_b == transpose::yes) cm.noalias() += alpha * am * bm.transpose();
    else cm.noalias() += alpha * am.transpose() * bm.transpose();
  }
};

static_assert(complete_backend<eigen_backend>);

namespace detail {
/// The unsigned integer as wide as float or double: the bits of a value, or a mask over them.
template <class T>
using eigen_bits = std::conditional_t<sizeof(T) == 4, std::uint32_t, std::uint64_t>;

/// All ones when valid, else all zeros: a mask over the bits of a T (see eigen_keep_if).
template <class T>
RLHF_FORCE_INLINE eigen_bits<T> eigen_keep_mask(bool valid) {
  return eigen_bits<T>(0) - eigen_bits<T>(valid);
}

/// `c ? a : b` by bit masks, for float or double, both arms already evaluated. A kernel loop whose ternaries
/// hold arithmetic in an arm (or feed a value only that arm uses) vectorizes under GCC 12 only with AVX-512:
/// under its default -ftrapping-math it moves that arithmetic into the arm and may then not execute it
/// unconditionally, which a vector loop must; AVX-512's masked operations can, SSE and AVX2 cannot, so the
/// loop stays scalar there. Bit operations leave no arm to move anything into.
///
/// One exception: doubles on x86-64 below SSE4.1 (a default `-march=x86-64` build). There GCC 12 vectorizes
/// neither form (it has no 64-bit lane mask from a bool without SSE4.1), and the ternary's scalar code ran the
/// value-loss kernel 3x faster than the bit form's, so the ternary it is.
template <class T>
RLHF_FORCE_INLINE T eigen_select(bool c, T a, T b) {
  static_assert(sizeof(T) == 4 || sizeof(T) == 8, "rlhf::detail::eigen_select: T must be float or double");
#if defined(__x86_64__) && !defined(__SSE4_1__)
  if constexpr (sizeof(T) == 8) return c ? a : b;
#endif
  const eigen_bits<T> mask = eigen_keep_mask<T>(c);
  return std::bit_cast<T>((std::bit_cast<eigen_bits<T>>(a) & mask) | (std::bit_cast<eigen_bits<T>>(b) & ~mask));
}

/// `valid ? x : +0` by a bit mask (eigen_select), for float or double. Branch-free, so the kernels' masked sums
/// vectorize (GCC 12 kept `sum += valid ? x : 0` scalar and branching), and NaN or Inf at a masked position never
/// gets through (a multiply by the mask as 0/1 would let them: 0 * NaN = NaN).
template <class T>
RLHF_FORCE_INLINE T eigen_keep_if(T x, bool valid) {
  return eigen_select(valid, x, T(0));
}

/// counts[r] = number of non-zero mask entries of row r: integer sums (exact and vectorized), rows in parallel.
/// Used by the kernels' row weights (eigen/loss_aggregation.hpp, eigen/ppo_clip_loss.hpp).
inline void eigen_valid_counts(const eigen_backend& b, matrix_view<const mask_type, host_space> mask, double* counts) {
  const std::size_t rows = mask.rows, cols = mask.cols;
  b.parallel_ranges(rows, rows * cols, [&](std::size_t rb, std::size_t re) {
    for (std::size_t r = rb; r < re; ++r) {
      const mask_type* __restrict m = mask.data + r * cols;
      std::uint32_t n = 0;
      for (std::size_t c = 0; c < cols; ++c) n += m[c] != 0 ? 1u : 0u;
      counts[r] = static_cast<double>(n);
    }
  });
}
}  // namespace detail

}  // namespace rlhf::backends

namespace rlhf {
using backends::eigen_backend;
}  // namespace rlhf

// The Eigen backend's specialized kernels (found by argument-dependent lookup, see docs/backends.md).
// Included after eigen_backend is complete; each of them includes this header for its own use.
#include "rlhf/backends/eigen/causal_attention.hpp"
#include "rlhf/backends/eigen/decode_attention.hpp"
#include "rlhf/backends/eigen/gae.hpp"
#include "rlhf/backends/eigen/kl_penalized_rewards.hpp"
#include "rlhf/backends/eigen/loss_aggregation.hpp"
#include "rlhf/backends/eigen/token_logprobs.hpp"
#include "rlhf/backends/eigen/value_loss.hpp"
#include "rlhf/backends/eigen/whitening.hpp"
#include "rlhf/backends/eigen/ppo_clip_loss.hpp"
#include "rlhf/backends/eigen/ranking_loss.hpp"
#include "rlhf/backends/eigen/rms_norm.hpp"
#include "rlhf/backends/eigen/rope.hpp"
#include "rlhf/backends/eigen/swiglu.hpp"
