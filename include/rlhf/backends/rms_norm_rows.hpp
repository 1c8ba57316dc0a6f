/// @file rms_norm_rows.hpp
/// @brief RMSNorm's row and column steps (Zhang & Sennrich 2019, eq. 4), written once for every path: the
///        generic path of rlhf/models/layers/rms_norm.hpp runs them one row per index, the CUDA kernels
///        (rlhf/backends/cuda/rms_norm.cuh) split a row across the threads of a warp or a block.
///
/// For one row x of D elements, with r = 1 / sqrt(mean(x^2) + eps) and g = d out:
///
///     out_j  = w_j * (r * x_j)
///     d x_k  = r * (w_k g_k - x_k * r^2 * (1/D) sum_j g_j w_j x_j)
///     d w_j += sum over rows of g_j * r * x_j
///
/// A row step comes in two parts so that a group of threads can share a row: `partial_sum(r, first, step)`
/// sums the row's elements first, first + step, ... (in double), and `write(r, total, first, step)` writes
/// those elements once the group has added its partial sums. `operator()(r)` is the whole row on one thread
/// (first 0, step 1): the generic path. Each element is read before it is written, so the outputs may alias
/// the inputs the contract allows (out = x; d_x = d_out or x).
///
/// The weight gradient is a sum down each column. The generic path takes one column per index, rows in
/// order (`rms_norm_weight_grad_column`); on a GPU that leaves D threads each walking N rows, so the CUDA
/// backend sums fixed chunks of `rms_norm_weight_grad_chunk` rows per (chunk, column) index first and then
/// folds the chunks of each column in order (`rms_norm_weight_grad_chunks`, `rms_norm_weight_grad_fold`).
/// The Eigen backend's one-pass backward sums the same chunks in the same order. Both orders are fixed by
/// the shape alone, so either result is deterministic; they differ by rounding.
#pragma once

#include <cmath>
#include <cstddef>

#include "rlhf/backends/view.hpp"
#include "rlhf/config.hpp"

namespace rlhf::detail {

/// r = 1 / sqrt(sum_squares / d + eps): the inverse root mean square of a row of d elements.
RLHF_HOST_DEVICE inline double rms_norm_inverse(double sum_squares, std::size_t d, double eps) {
  return 1.0 / sqrt(sum_squares / static_cast<double>(d) + eps);
}

/// Forward of row r: out = w * (r * x); saves r in `inv_rms` unless it is empty.
template <class T, class S>
struct rms_norm_forward_row {
  matrix_view<const T, S> x;
  vector_view<const T, S> weight;
  matrix_view<T, S> out;
  vector_view<T, S> inv_rms;
  double eps;

  /// Sum of x_j^2 over the row's elements first, first + step, ...
  RLHF_HOST_DEVICE double partial_sum(std::size_t r, std::size_t first, std::size_t step) const {
    const T* xr = x.data + r * x.cols;
    double ss = 0.0;
    for (std::size_t j = first; j < x.cols; j += step) ss += static_cast<double>(xr[j]) * static_cast<double>(xr[j]);
    return ss;
  }

  /// Writes the row's elements first, first + step, ... from the whole row's sum of squares (and r, by the
  /// part with first == 0).
  RLHF_HOST_DEVICE void write(std::size_t r, double sum_squares, std::size_t first, std::size_t step) const {
    const std::size_t d = x.cols;
    const T inv = static_cast<T>(rms_norm_inverse(sum_squares, d, eps));
    const T* xr = x.data + r * d;
    T* o = out.data + r * d;
    // Read x_j before writing out_j: out may alias x.
    for (std::size_t j = first; j < d; j += step) o[j] = weight[j] * (inv * xr[j]);
    if (first == 0 && !inv_rms.empty()) inv_rms[r] = inv;
  }

  RLHF_HOST_DEVICE void operator()(std::size_t r) const { write(r, partial_sum(r, 0, 1), 0, 1); }
};

/// Backward of row r into d_x (may alias d_out or x).
template <class T, class S>
struct rms_norm_backward_row {
  matrix_view<const T, S> x;
  vector_view<const T, S> weight;
  vector_view<const T, S> inv_rms;
  matrix_view<const T, S> d_out;
  matrix_view<T, S> d_x;

  /// Sum of g_j w_j x_j over the row's elements first, first + step, ...
  RLHF_HOST_DEVICE double partial_sum(std::size_t r, std::size_t first, std::size_t step) const {
    const std::size_t d = x.cols;
    const T* xr = x.data + r * d;
    const T* g = d_out.data + r * d;
    double dot = 0.0;
    for (std::size_t j = first; j < d; j += step)
      dot += static_cast<double>(g[j]) * static_cast<double>(weight[j]) * static_cast<double>(xr[j]);
    return dot;
  }

  /// Writes d_x at the row's elements first, first + step, ... from the whole row's dot product.
  RLHF_HOST_DEVICE void write(std::size_t r, double dot, std::size_t first, std::size_t step) const {
    const std::size_t d = x.cols;
    const T* xr = x.data + r * d;
    const T* g = d_out.data + r * d;
    T* dx = d_x.data + r * d;
    const double inv = static_cast<double>(inv_rms[r]);
    const double c = inv * inv * dot / static_cast<double>(d);
    for (std::size_t j = first; j < d; j += step) {
      dx[j] = static_cast<T>(
          inv * (static_cast<double>(weight[j]) * static_cast<double>(g[j]) - static_cast<double>(xr[j]) * c));
    }
  }

  RLHF_HOST_DEVICE void operator()(std::size_t r) const { write(r, partial_sum(r, 0, 1), 0, 1); }
};

/// g(r, j) * r_r * x(r, j) summed over rows [r0, r1) of column j, in order.
template <class T, class S>
RLHF_HOST_DEVICE inline double rms_norm_weight_grad_sum(const matrix_view<const T, S>& x,
                                                        const vector_view<const T, S>& inv_rms,
                                                        const matrix_view<const T, S>& d_out, std::size_t j,
                                                        std::size_t r0, std::size_t r1) {
  double acc = 0.0;
  for (std::size_t r = r0; r < r1; ++r)
    acc += static_cast<double>(d_out(r, j)) * static_cast<double>(inv_rms[r]) * static_cast<double>(x(r, j));
  return acc;
}

/// Weight gradient of column j: d_weight[j] += sum_r d_out(r, j) * inv_rms[r] * x(r, j), rows in order.
template <class T, class S>
struct rms_norm_weight_grad_column {
  matrix_view<const T, S> x;
  vector_view<const T, S> inv_rms;
  matrix_view<const T, S> d_out;
  vector_view<T, S> d_weight;

  RLHF_HOST_DEVICE void operator()(std::size_t j) const {
    const double acc = rms_norm_weight_grad_sum(x, inv_rms, d_out, j, 0, x.rows);
    d_weight[j] = static_cast<T>(static_cast<double>(d_weight[j]) + acc);
  }
};

/// Rows per chunk of the chunked weight gradient: enough that the partial sums (one double per chunk and
/// column, an eighth of a float input's bytes) stay small, few enough that a [N, D] gradient gives N / 64
/// times D independent sums.
inline constexpr std::size_t rms_norm_weight_grad_chunk = 64;

/// The number of chunks of `rms_norm_weight_grad_chunk` rows (the last may be shorter) in `rows` rows.
RLHF_HOST_DEVICE inline std::size_t rms_norm_weight_grad_chunk_count(std::size_t rows) {
  return (rows + rms_norm_weight_grad_chunk - 1) / rms_norm_weight_grad_chunk;
}

/// Index i = c * D + j: partial(c, j) = the weight gradient of column j summed over chunk c's rows, in order.
template <class T, class S>
struct rms_norm_weight_grad_chunks {
  matrix_view<const T, S> x;
  vector_view<const T, S> inv_rms;
  matrix_view<const T, S> d_out;
  double* partial;  // [chunks, D]

  RLHF_HOST_DEVICE void operator()(std::size_t i) const {
    const std::size_t c = i / x.cols, j = i % x.cols;
    const std::size_t r0 = c * rms_norm_weight_grad_chunk;
    const std::size_t r1 = r0 + rms_norm_weight_grad_chunk < x.rows ? r0 + rms_norm_weight_grad_chunk : x.rows;
    partial[i] = rms_norm_weight_grad_sum(x, inv_rms, d_out, j, r0, r1);
  }
};

/// Index j: d_weight[j] += the chunks' partial sums of column j, chunks in order.
template <class T, class S>
struct rms_norm_weight_grad_fold {
  const double* partial;  // [chunks, D]
  std::size_t chunks;
  vector_view<T, S> d_weight;

  RLHF_HOST_DEVICE void operator()(std::size_t j) const {
    double acc = 0.0;
    for (std::size_t c = 0; c < chunks; ++c) acc += partial[c * d_weight.size + j];
    d_weight[j] = static_cast<T>(static_cast<double>(d_weight[j]) + acc);
  }
};

}  // namespace rlhf::detail
