/// @file rms_norm.hpp
/// @brief RMSNorm (Zhang & Sennrich 2019) as used by Llama and llama2.c: forward and hand-written backward.
///
/// For one row x of D elements, with r = 1 / sqrt(mean(x^2) + eps):
///
///     out_j = w_j * (r * x_j)                                   (Zhang & Sennrich 2019, eq. 4)
///
/// The backward, with g = d out (one row):
///
///     d x_k = r * (w_k g_k - x_k * r^2 * (1/D) sum_j g_j w_j x_j)
///     d w_j += sum over rows of g_j * r * x_j
///
/// The forward saves r per row (`inv_rms`) for the backward. Sums of squares and the backward's dot
/// products are accumulated in double for float and double inputs. The product is formed in the order
/// of llama2.c's `rmsnorm` (weight times (r times x)). The weight gradient loops over columns in parallel
/// and over rows in order inside one column, so it is deterministic without atomics. The row and column
/// steps live in rlhf/backends/rms_norm_rows.hpp, shared with the CUDA kernels.
#pragma once

#include <cstddef>
#include <string_view>
#include <type_traits>

#include "rlhf/backends/checks.hpp"
#include "rlhf/backends/concepts.hpp"
#include "rlhf/backends/rms_norm_rows.hpp"
#include "rlhf/backends/view.hpp"
#include "rlhf/config.hpp"
#include "rlhf/error.hpp"

namespace rlhf {

namespace detail {

template <class B, class T>
void rms_norm_forward_generic(const B& b, backend_matrix<B, const T> x, backend_vector<B, const T> weight,
                              backend_matrix<B, T> out, backend_vector<B, T> inv_rms, double eps) {
  for_each_weighted_index(b, x.rows, x.cols,
                          rms_norm_forward_row<T, typename B::memory_space>{x, weight, out, inv_rms, eps});
}

template <class B, class T>
void rms_norm_backward_generic(const B& b, backend_matrix<B, const T> x, backend_vector<B, const T> weight,
                               backend_vector<B, const T> inv_rms, backend_matrix<B, const T> d_out,
                               backend_matrix<B, T> d_x, backend_vector<B, T> d_weight) {
  using S = typename B::memory_space;
  // The weight gradient first: d_x may overwrite d_out or x, which it reads.
  if (!d_weight.empty())
    for_each_weighted_index(b, x.cols, x.rows, rms_norm_weight_grad_column<T, S>{x, inv_rms, d_out, d_weight});
  if (!d_x.empty())
    for_each_weighted_index(b, x.rows, x.cols, rms_norm_backward_row<T, S>{x, weight, inv_rms, d_out, d_x});
}

template <class T, class S>
bool rms_norm_is_none(vector_view<T, S> v) {
  return v.data == nullptr && v.size == 0;
}
template <class T, class S>
bool rms_norm_is_none(matrix_view<T, S> m) {
  return m.data == nullptr && m.rows == 0 && m.cols == 0;
}

}  // namespace detail

/// RMSNorm forward: `out(n, j) = weight[j] * (inv_rms[n] * x(n, j))`, `inv_rms[n] = 1/sqrt(mean_j x(n, j)^2 + eps)`.
///
/// @tparam B a reduce_backend (for_each_index; transform_reduce for the opt-in finite check).
/// @tparam T float or double, deduced from `out`.
/// @param b the backend.
/// @param x [N, D] input rows.
/// @param weight [D] gain (llama2.c `rms_att_weight` / `rms_ffn_weight` / `rms_final_weight` of one layer).
/// @param out out [N, D] (may be the same memory as `x`).
/// @param inv_rms out [N]: 1/rms of each row, saved for rlhf::rms_norm_backward; an empty view (data ==
///   nullptr, size 0) means not wanted (inference).
/// @param eps added to the mean square; finite and > 0. llama2.c and Llama: 1e-5.
/// @note Throws rlhf::invalid_argument on a shape mismatch or a bad eps.
template <class B, class T>
void rms_norm_forward(const B& b, std::type_identity_t<backend_matrix<B, const T>> x,
                      std::type_identity_t<backend_vector<B, const T>> weight, backend_matrix<B, T> out,
                      std::type_identity_t<backend_vector<B, T>> inv_rms, double eps = 1e-5) {
  detail::check_reduce_backend<B>();
  constexpr std::string_view fn = "rlhf::rms_norm_forward";
  static_assert(std::is_floating_point_v<T>, "rlhf::rms_norm_forward: T must be float or double");
  detail::check_size(fn, "weight", weight, x.cols, "(the columns of 'x')");
  detail::check_same_shape(fn, "out", out, "x", x);
  if (!detail::rms_norm_is_none(inv_rms)) {
    detail::check_size(fn, "inv_rms", inv_rms, x.rows, "(one per row of 'x', or empty for not wanted)");
  }
  detail::check_positive(fn, "eps", eps);
  detail::check_finite(b, fn, "x", x);
  detail::check_finite(b, fn, "weight", weight);
  if (x.rows == 0) return;
  if (x.cols == 0) {
    detail::throw_argument_error(fn, "x", "at least one column when it has rows", shape_string(x));
  }
  if constexpr (requires { rlhf_specialized_rms_norm_forward(b, x, weight, out, inv_rms, eps); })
    rlhf_specialized_rms_norm_forward(b, x, weight, out, inv_rms, eps);
  else
    detail::rms_norm_forward_generic<B, T>(b, x, weight, out, inv_rms, eps);
}

/// Backward of rlhf::rms_norm_forward.
///
/// With r = inv_rms[n] and g = d_out(n, :):
///
///     d_x(n, k)    = r * (weight[k] g_k - x(n, k) r^2 (1/D) sum_j g_j weight[j] x(n, j))   (written)
///     d_weight[j] += sum_n g_j r x(n, j)                                                   (accumulated)
///
/// @tparam B a reduce_backend.
/// @tparam T float or double, deduced from `d_x`.
/// @param b the backend.
/// @param x [N, D] the forward's input.
/// @param weight [D] the forward's gain.
/// @param inv_rms [N] saved by the forward.
/// @param d_out [N, D] gradient of the loss w.r.t. the forward's output.
/// @param d_x out [N, D]: gradient w.r.t. x (may be the same memory as `d_out` or `x`); an empty view means
///   not wanted.
/// @param d_weight in/out [D]: the weight gradient is added to it; an empty view means not wanted.
/// @note Throws rlhf::invalid_argument on a shape mismatch.
template <class B, class T>
void rms_norm_backward(const B& b, std::type_identity_t<backend_matrix<B, const T>> x,
                       std::type_identity_t<backend_vector<B, const T>> weight,
                       std::type_identity_t<backend_vector<B, const T>> inv_rms,
                       std::type_identity_t<backend_matrix<B, const T>> d_out, backend_matrix<B, T> d_x,
                       std::type_identity_t<backend_vector<B, T>> d_weight) {
  detail::check_reduce_backend<B>();
  constexpr std::string_view fn = "rlhf::rms_norm_backward";
  static_assert(std::is_floating_point_v<T>, "rlhf::rms_norm_backward: T must be float or double");
  detail::check_size(fn, "weight", weight, x.cols, "(the columns of 'x')");
  detail::check_size(fn, "inv_rms", inv_rms, x.rows, "(one per row of 'x', saved by the forward)");
  detail::check_same_shape(fn, "d_out", d_out, "x", x);
  if (!detail::rms_norm_is_none(d_x)) detail::check_same_shape(fn, "d_x", d_x, "x", x);
  if (!detail::rms_norm_is_none(d_weight)) {
    detail::check_size(fn, "d_weight", d_weight, x.cols, "(the columns of 'x', or empty for not wanted)");
  }
  detail::check_finite(b, fn, "x", x);
  detail::check_finite(b, fn, "weight", weight);
  detail::check_finite(b, fn, "inv_rms", inv_rms);
  detail::check_finite(b, fn, "d_out", d_out);
  if (x.rows == 0 || x.cols == 0) return;
  if constexpr (requires { rlhf_specialized_rms_norm_backward(b, x, weight, inv_rms, d_out, d_x, d_weight); })
    rlhf_specialized_rms_norm_backward(b, x, weight, inv_rms, d_out, d_x, d_weight);
  else
    detail::rms_norm_backward_generic<B, T>(b, x, weight, inv_rms, d_out, d_x, d_weight);
}

}  // namespace rlhf
