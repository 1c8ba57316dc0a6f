/// @file linear.hpp
/// @brief Bias-free linear layer y = x W^T through the backend's GEMM: forward and backward.
///
/// Weights are stored as llama2.c stores them, [out, in] row-major (PyTorch's nn.Linear layout), so
///
///     y   = x W^T                  (forward;  x [N, in], W [out, in], y [N, out])
///     d_x = d_y W                  (written)
///     d_W += d_y^T x               (accumulated: GEMM with beta = 1)
///
/// Each is one call of `b.gemm`, so a backend's BLAS does all the work. Every projection of the Llama
/// decoder (attention wq, wk, wv, wo; MLP w1, w2, w3; the classifier) is one of these.
#pragma once

#include <cstddef>
#include <string_view>
#include <type_traits>

#include "rlhf/backends/checks.hpp"
#include "rlhf/backends/concepts.hpp"
#include "rlhf/backends/view.hpp"
#include "rlhf/config.hpp"
#include "rlhf/error.hpp"

namespace rlhf {

namespace detail {

template <class B, class T>
void linear_forward_generic(const B& b, backend_matrix<B, const T> x, backend_matrix<B, const T> w,
                            backend_matrix<B, T> y) {
  b.gemm(transpose::no, transpose::yes, T(1), x, w, T(0), y);
}

template <class B, class T>
void linear_backward_generic(const B& b, backend_matrix<B, const T> x, backend_matrix<B, const T> w,
                             backend_matrix<B, const T> d_y, backend_matrix<B, T> d_x, backend_matrix<B, T> d_w) {
  if (!d_w.empty()) b.gemm(transpose::yes, transpose::no, T(1), d_y, x, T(1), d_w);
  if (!d_x.empty()) b.gemm(transpose::no, transpose::no, T(1), d_y, w, T(0), d_x);
}

template <class T, class S>
bool linear_is_none(matrix_view<T, S> m) {
  return m.data == nullptr && m.rows == 0 && m.cols == 0;
}

}  // namespace detail

/// Linear forward: `y = x w^T` (no bias), one GEMM.
///
/// @tparam B a blas_backend (gemm); the opt-in finite check also uses transform_reduce when available.
/// @tparam T float or double, deduced from `y`.
/// @param b the backend.
/// @param x [N, in] input rows.
/// @param w [out, in] weight (llama2.c / PyTorch layout).
/// @param y out [N, out]; must not overlap `x` or `w`.
/// @note Throws rlhf::invalid_argument on a shape mismatch.
template <class B, class T>
void linear_forward(const B& b, std::type_identity_t<backend_matrix<B, const T>> x,
                    std::type_identity_t<backend_matrix<B, const T>> w, backend_matrix<B, T> y) {
  detail::check_blas_backend<B>();
  constexpr std::string_view fn = "rlhf::linear_forward";
  static_assert(std::is_floating_point_v<T>, "rlhf::linear_forward: T must be float or double");
  detail::check_shape(fn, "w", w, w.rows, x.cols, "(columns = the columns of 'x')");
  detail::check_shape(fn, "y", y, x.rows, w.rows, "(rows of 'x', rows of 'w')");
  if constexpr (detail::has_transform_reduce<B>) {
    detail::check_finite(b, fn, "x", x);
    detail::check_finite(b, fn, "w", w);
  }
  if (y.empty()) return;
  if constexpr (requires { rlhf_specialized_linear_forward(b, x, w, y); })
    rlhf_specialized_linear_forward(b, x, w, y);
  else
    detail::linear_forward_generic<B, T>(b, x, w, y);
}

/// Backward of rlhf::linear_forward: `d_x = d_y w` (written) and `d_w += d_y^T x` (accumulated).
///
/// @tparam B a blas_backend.
/// @tparam T float or double, deduced from `d_w`.
/// @param b the backend.
/// @param x [N, in] the forward's input.
/// @param w [out, in] the forward's weight.
/// @param d_y [N, out] gradient of the loss w.r.t. y.
/// @param d_x out [N, in]: gradient w.r.t. x; an empty view (data == nullptr, size 0) means not wanted
///   (for example the first layer's input). Must not overlap the other arguments.
/// @param d_w in/out [out, in]: the weight gradient is added to it; an empty view means not wanted
///   (a frozen weight).
/// @note Throws rlhf::invalid_argument on a shape mismatch.
template <class B, class T>
void linear_backward(const B& b, std::type_identity_t<backend_matrix<B, const T>> x,
                     std::type_identity_t<backend_matrix<B, const T>> w,
                     std::type_identity_t<backend_matrix<B, const T>> d_y,
                     std::type_identity_t<backend_matrix<B, T>> d_x, backend_matrix<B, T> d_w) {
  detail::check_blas_backend<B>();
  constexpr std::string_view fn = "rlhf::linear_backward";
  static_assert(std::is_floating_point_v<T>, "rlhf::linear_backward: T must be float or double");
  detail::check_shape(fn, "w", w, w.rows, x.cols, "(columns = the columns of 'x')");
  detail::check_shape(fn, "d_y", d_y, x.rows, w.rows, "(rows of 'x', rows of 'w')");
  if (!detail::linear_is_none(d_x)) detail::check_same_shape(fn, "d_x", d_x, "x", x);
  if (!detail::linear_is_none(d_w)) detail::check_same_shape(fn, "d_w", d_w, "w", w);
  if constexpr (detail::has_transform_reduce<B>) {
    detail::check_finite(b, fn, "x", x);
    detail::check_finite(b, fn, "w", w);
    detail::check_finite(b, fn, "d_y", d_y);
  }
  if (x.rows == 0 && w.rows == 0) return;
  if constexpr (requires { rlhf_specialized_linear_backward(b, x, w, d_y, d_x, d_w); })
    rlhf_specialized_linear_backward(b, x, w, d_y, d_x, d_w);
  else
    detail::linear_backward_generic<B, T>(b, x, w, d_y, d_x, d_w);
}

}  // namespace rlhf
