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
/// - the weight gradient runs rows in order over a range of columns, vectorized across the columns: every
///   column's sum has the generic path's order and terms (the same bits), and column ranges split across
///   threads without changing them;
/// - the weight gradient is complete before d_x is written, as in the generic path, because d_x may be
///   d_out or x.
///
/// Results do not depend on the thread count (tests/backends/eigen_test.cpp).
#pragma once

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
  if (d_weight.data != nullptr) {
    // d_weight[j] += sum_r (g(r, j) * r_r) * x(r, j), rows in order for every column.
    b.parallel_ranges(d, rows * d, [&](std::size_t c0, std::size_t c1) {
      std::vector<double> acc(c1 - c0, 0.0);
      double* a = acc.data();
      for (std::size_t r = 0; r < rows; ++r) {
        const T* g = d_out.data + r * d + c0;
        const T* xr = x.data + r * d + c0;
        const double inv = static_cast<double>(inv_rms.data[r]);
        RLHF_SIMD_LOOP()
        for (std::size_t j = 0; j < c1 - c0; ++j)
          a[j] += static_cast<double>(g[j]) * inv * static_cast<double>(xr[j]);
      }
      for (std::size_t j = c0; j < c1; ++j)
        d_weight.data[j] = static_cast<T>(static_cast<double>(d_weight.data[j]) + acc[j - c0]);
    });
  }
  if (d_x.data == nullptr) return;
  b.parallel_ranges(rows, rows * d, [&](std::size_t first, std::size_t last) {
    const T* w = weight.data;
    for (std::size_t r = first; r < last; ++r) {
      const T* xr = x.data + r * d;
      const T* g = d_out.data + r * d;
      T* dx = d_x.data + r * d;
      const double inv = static_cast<double>(inv_rms.data[r]);
      double dot = 0.0;  // sum_j g_j w_j x_j
      RLHF_SIMD_LOOP(reduction(+ : dot))
      for (std::size_t j = 0; j < d; ++j)
        dot += static_cast<double>(g[j]) * static_cast<double>(w[j]) * static_cast<double>(xr[j]);
      const double c = inv * inv * dot / static_cast<double>(d);
      // d_x may be d_out or x: each element is read before it is written.
      RLHF_SIMD_LOOP()
      for (std::size_t j = 0; j < d; ++j)
        dx[j] = static_cast<T>(inv * (static_cast<double>(w[j]) * static_cast<double>(g[j]) -
                                      static_cast<double>(xr[j]) * c));
    }
  });
}

}  // namespace rlhf::backends
