/// @file rope.hpp
/// @brief Rotary position embedding (Su et al. 2021, RoFormer, eq. 34) in llama2.c's convention.
///
/// A row of `x` holds H heads of `head_dim` elements. Within each head the pairs (2i, 2i+1),
/// i = 0 .. head_dim/2 - 1, are rotated by the angle `pos * theta^(-2i / head_dim)`:
///
///     out_{2i}   = x_{2i} cos(a) - x_{2i+1} sin(a)
///     out_{2i+1} = x_{2i} sin(a) + x_{2i+1} cos(a)
///
/// This is llama2.c's `run.c` (adjacent pairs; Meta's Llama uses the same pairing through complex
/// numbers, Hugging Face's checkpoints permute wq/wk to use half-split pairs instead). A rotation is
/// orthogonal, so the backward is the rotation by -a applied to the output gradient.
///
/// Numerics: the frequency and the angle are computed in the element type, in llama2.c's order
/// (`1 / pow(theta, 2i / head_dim)`, then `pos * freq`), so float results match the reference program's
/// bit for bit wherever the platform's pow/sin/cos do; in double they are accurate to a few ulps.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <type_traits>

#include "rlhf/backends/checks.hpp"
#include "rlhf/backends/concepts.hpp"
#include "rlhf/backends/view.hpp"
#include "rlhf/config.hpp"
#include "rlhf/error.hpp"

namespace rlhf {

namespace detail {

/// Rotates pair p of the whole matrix (p = row * cols/2 + k) by `sign * angle`. out may alias x: the
/// pair is read before it is written.
template <class T, class S>
struct rope_rotate_pair {
  matrix_view<const T, S> x;
  vector_view<const std::int32_t, S> positions;
  matrix_view<T, S> out;
  std::size_t head_dim;
  T theta;
  T sign;  // +1 forward, -1 backward (the inverse rotation)

  RLHF_HOST_DEVICE void operator()(std::size_t p) const {
    const std::size_t half_cols = x.cols / 2;
    const std::size_t r = p / half_cols;
    const std::size_t c = 2 * (p - r * half_cols);  // even column of the pair
    const std::size_t i2 = c % head_dim;             // 2i within the head
    const T freq = T(1) / std::pow(theta, static_cast<T>(i2) / static_cast<T>(head_dim));
    const T angle = static_cast<T>(positions[r]) * freq;
    const T cs = std::cos(angle);
    const T sn = sign * std::sin(angle);
    const T x0 = x(r, c), x1 = x(r, c + 1);
    out(r, c) = x0 * cs - x1 * sn;
    out(r, c + 1) = x0 * sn + x1 * cs;
  }
};

template <class B, class T>
void rope_generic(const B& b, backend_matrix<B, const T> x, backend_vector<B, const std::int32_t> positions,
                  std::size_t head_dim, backend_matrix<B, T> out, double theta, bool inverse) {
  // A pair costs a pow, a cos and a sin: about 16 element operations of work.
  for_each_weighted_index(b, x.rows * (x.cols / 2), 16,
                   rope_rotate_pair<T, typename B::memory_space>{x, positions, out, head_dim, static_cast<T>(theta),
                                                                 inverse ? T(-1) : T(1)});
}

template <class T, class S>
void rope_check_arguments(std::string_view fn, std::string_view x_name, matrix_view<T, S> x,
                          vector_view<const std::int32_t, S> positions, std::size_t head_dim,
                          double theta) {
  if (head_dim == 0 || head_dim % 2 != 0) {
    throw_argument_error(fn, "head_dim", "an even number > 0 (elements are rotated in pairs)",
                         std::to_string(head_dim));
  }
  if (x.cols % head_dim != 0) {
    throw_argument_error(fn, x_name,
                         "a multiple of 'head_dim' (" + std::to_string(head_dim) + ") columns (whole heads)",
                         shape_string(x));
  }
  check_size(fn, "positions", positions, x.rows, "(one per row of '" + std::string(x_name) + "')");
  check_positive(fn, "theta", theta);
}

}  // namespace detail

/// Rotary position embedding, forward: rotates each head's pairs (2i, 2i+1) of row n by
/// `positions[n] * theta^(-2i / head_dim)`.
///
/// @tparam B a reduce_backend (for_each_index; transform_reduce for the opt-in finite check).
/// @tparam T float or double, deduced from `out`.
/// @param b the backend.
/// @param x [N, H * head_dim] query or key rows (any number of heads H).
/// @param positions [N] the position of each row in its sequence (any int32; 0 is the first token).
/// @param head_dim elements per head; even and > 0, dividing the columns of `x`.
/// @param out out [N, H * head_dim]; may be the same memory as `x` (in place).
/// @param theta the frequency base; finite and > 0. Llama and llama2.c: 10000.
/// @note Throws rlhf::invalid_argument on a shape mismatch, an odd head_dim, or a bad theta.
template <class B, class T>
void rope_forward(const B& b, std::type_identity_t<backend_matrix<B, const T>> x,
                  backend_vector<B, const std::int32_t> positions, std::size_t head_dim, backend_matrix<B, T> out,
                  double theta = 10000.0) {
  detail::check_reduce_backend<B>();
  constexpr std::string_view fn = "rlhf::rope_forward";
  static_assert(std::is_floating_point_v<T>, "rlhf::rope_forward: T must be float or double");
  detail::rope_check_arguments(fn, "x", x, positions, head_dim, theta);
  detail::check_same_shape(fn, "out", out, "x", x);
  detail::check_finite(b, fn, "x", x);
  if (x.empty()) return;
  if constexpr (requires { rlhf_specialized_rope_forward(b, x, positions, head_dim, out, theta); })
    rlhf_specialized_rope_forward(b, x, positions, head_dim, out, theta);
  else
    detail::rope_generic<B, T>(b, x, positions, head_dim, out, theta, false);
}

/// Backward of rlhf::rope_forward: the rotation is orthogonal, so `d_x` is `d_out` rotated by the
/// opposite angle.
///
/// @tparam B a reduce_backend.
/// @tparam T float or double, deduced from `d_x`.
/// @param b the backend.
/// @param d_out [N, H * head_dim] gradient of the loss w.r.t. the forward's output.
/// @param positions [N] the forward's positions.
/// @param head_dim the forward's head_dim.
/// @param d_x out [N, H * head_dim]; may be the same memory as `d_out` (in place).
/// @param theta the forward's theta.
/// @note Throws rlhf::invalid_argument on a shape mismatch, an odd head_dim, or a bad theta.
template <class B, class T>
void rope_backward(const B& b, std::type_identity_t<backend_matrix<B, const T>> d_out,
                   backend_vector<B, const std::int32_t> positions, std::size_t head_dim, backend_matrix<B, T> d_x,
                   double theta = 10000.0) {
  detail::check_reduce_backend<B>();
  constexpr std::string_view fn = "rlhf::rope_backward";
  static_assert(std::is_floating_point_v<T>, "rlhf::rope_backward: T must be float or double");
  detail::rope_check_arguments(fn, "d_out", d_out, positions, head_dim, theta);
  detail::check_same_shape(fn, "d_x", d_x, "d_out", d_out);
  detail::check_finite(b, fn, "d_out", d_out);
  if (d_out.empty()) return;
  if constexpr (requires { rlhf_specialized_rope_backward(b, d_out, positions, head_dim, d_x, theta); })
    rlhf_specialized_rope_backward(b, d_out, positions, head_dim, d_x, theta);
  else
    detail::rope_generic<B, T>(b, d_out, positions, head_dim, d_x, theta, true);
}

}  // namespace rlhf
