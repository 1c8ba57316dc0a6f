/// @file rms_norm.hpp
/// @brief The Eigen backend's RMSNorm (Zhang & Sennrich 2019, eq. 4), forward and backward, with vectorized
///        double sums.
///
/// Same contract and formulas as rlhf::rms_norm_forward / _backward (rlhf/models/layers/rms_norm.hpp; found
/// by argument-dependent lookup as `rlhf_specialized_rms_norm_forward` and `_backward`, arguments
/// validated). The generic row functors accumulate each row's sum of squares and the backward's dot product
/// in one dependent chain of doubles, which the compiler may not reorder, and the weight gradient walks one
/// column down all rows per loop index. Here:
///
/// - the row sums are `RLHF_SIMD_LOOP` reductions (still in double; reassociated, so they differ from the
///   generic path by rounding only), rows in parallel;
/// - the backward reads each row once for both gradients: rows go in the fixed chunks of 64 of
///   rlhf/backends/rms_norm_rows.hpp (chunks across threads); per row, the dot product, then one loop that
///   adds each element's weight-gradient term to the chunk's column sums and writes its d_x (d_x may be
///   d_out or x: each element is read before it is written); then each column's chunk sums are added in
///   chunk order. The generic path reads x and d_out
///   twice (a column loop for the weight gradient first, then the rows); the sums here are the CUDA
///   kernel's, in the same order, and differ from the generic path's by rounding.
///
/// Results do not depend on the thread count (tests/backends/eigen_test.cpp).
#pragma once

#include <algorithm>
#include <cstddef>
#include <vector>

#include "rlhf/backends/eigen.hpp"
#include "rlhf/backends/rms_norm_rows.hpp"
#include "rlhf/backends/view.hpp"
#include "rlhf/config.hpp"

namespace rlhf::backends {

/// rlhf::rms_norm_forward's specialization for rlhf::eigen_backend (see the file comment).
template <class T>
void rlhf_specialized_rms_norm_forward(const eigen_backend& b, matrix_view<const T, host_space> x,
                                       vector_view<const T, host_space> weight, matrix_view<T, host_space> out,
                                       vector_view<T, host_space> inv_rms, double eps) {
  const std::size_t d = x.cols;
  b.parallel_ranges(x.rows, x.rows * d, [&](std::size_t first, std::size_t last) {
    const T* w = weight.data;
    for (std::size_t r = first; r < last; ++r) {
      const T* xr = x.data + r * d;
      T* o = out.data + r * d;
      double ss = 0.0;
      RLHF_SIMD_LOOP(reduction(+ : ss))
      for (std::size_t j = 0; j < d; ++j) ss += static_cast<double>(xr[j]) * static_cast<double>(xr[j]);
      const T inv = static_cast<T>(rlhf::detail::rms_norm_inverse(ss, d, eps));
      // out may be x: each element is read before it is written.
      RLHF_SIMD_LOOP()
      for (std::size_t j = 0; j < d; ++j) o[j] = w[j] * (inv * xr[j]);
      if (inv_rms.data != nullptr) inv_rms.data[r] = inv;
    }
  });
}

/// rlhf::rms_norm_backward's specialization for rlhf::eigen_backend (see the file comment).
template <class T>
void rlhf_specialized_rms_norm_backward(const eigen_backend& b, matrix_view<const T, host_space> x,
                                        vector_view<const T, host_space> weight,
                                        vector_view<const T, host_space> inv_rms,
                                        matrix_view<const T, host_space> d_out, matrix_view<T, host_space> d_x,
                                        vector_view<T, host_space> d_weight) {
  const std::size_t rows = x.rows, d = x.cols;
  const bool want_dw = d_weight.data != nullptr, want_dx = d_x.data != nullptr;
  constexpr std::size_t chunk = rlhf::detail::rms_norm_weight_grad_chunk;
  const std::size_t chunks = rlhf::detail::rms_norm_weight_grad_chunk_count(rows);
  // partial(c, j): the weight gradient of column j over chunk c's rows, in row order.
  std::vector<double> partial(want_dw ? chunks * d : 0);
  b.parallel_ranges(chunks, rows * d, [&](std::size_t c0, std::size_t c1) {
    const T* w = weight.data;
    for (std::size_t c = c0; c < c1; ++c) {
      double* __restrict part = want_dw ? partial.data() + c * d : nullptr;
      if (want_dw) std::fill(part, part + d, 0.0);
      for (std::size_t r = c * chunk; r < std::min(rows, (c + 1) * chunk); ++r) {
        const T* xr = x.data + r * d;
        const T* g = d_out.data + r * d;
        const double inv = static_cast<double>(inv_rms.data[r]);
        if (!want_dx) {
          RLHF_SIMD_LOOP()
          for (std::size_t j = 0; j < d; ++j) part[j] += static_cast<double>(g[j]) * inv * static_cast<double>(xr[j]);
          continue;
        }
        double dot = 0.0;  // sum_j g_j w_j x_j
        RLHF_SIMD_LOOP(reduction(+ : dot))
        for (std::size_t j = 0; j < d; ++j)
          dot += static_cast<double>(g[j]) * static_cast<double>(w[j]) * static_cast<double>(xr[j]);
        const double cr = inv * inv * dot / static_cast<double>(d);
        T* dx = d_x.data + r * d;
        // d_x may be d_out or x: each element's weight-gradient term is taken before d_x is written over it.
        if (want_dw) {
          RLHF_SIMD_LOOP()
          for (std::size_t j = 0; j < d; ++j) {
            const double gj = static_cast<double>(g[j]), xj = static_cast<double>(xr[j]);
            part[j] += gj * inv * xj;
            dx[j] = static_cast<T>(inv * (static_cast<double>(w[j]) * gj - xj * cr));
          }
        } else {
          RLHF_SIMD_LOOP()
          for (std::size_t j = 0; j < d; ++j)
            dx[j] = static_cast<T>(inv * (static_cast<double>(w[j]) * static_cast<double>(g[j]) -
                                          static_cast<double>(xr[j]) * cr));
        }
      }
    }
  });
  if (!want_dw) return;
  // d_weight[j] += the chunks' sums of column j, chunks in order; column ranges across threads.
  b.parallel_ranges(d, chunks * d, [&](std::size_t j0, std::size_t j1) {
    std::vector<double> acc(j1 - j0, 0.0);
    double* __restrict a = acc.data();
    for (std::size_t c = 0; c < chunks; ++c) {
      const double* __restrict part = partial.data() + c * d + j0;
      RLHF_SIMD_LOOP()
      for (std::size_t j = 0; j < j1 - j0; ++j) a[j] += part[j];
    }
    for (std::size_t j = j0; j < j1; ++j)
      d_weight.data[j] = static_cast<T>(static_cast<double>(d_weight.data[j]) + acc[j - j0]);
  });
}

}  // namespace rlhf::backends
