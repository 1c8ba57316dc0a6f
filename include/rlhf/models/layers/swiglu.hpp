/// @file swiglu.hpp
/// @brief The SwiGLU gate of the Llama MLP (Shazeer 2020, "GLU Variants Improve Transformer", eq. 6):
/// forward and backward.
///
/// The MLP is `w2(silu(w1 x) * (w3 x))`; this layer is the element-wise middle part. With
/// `s = sigmoid(gate)`:
///
///     out    = silu(gate) * up = gate * s * up
///     d_gate = d_out * up * s * (1 + gate * (1 - s))      (d silu(g)/dg = s + g s (1 - s))
///     d_up   = d_out * gate * s
///
/// The sigmoid is evaluated in the stable form (e^g / (1 + e^g) for g < 0), so no intermediate
/// overflows; arithmetic is in double for float and double inputs.
#pragma once

#include <cmath>
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

/// The logistic sigmoid without overflow: exp is only taken of a non-positive number.
RLHF_HOST_DEVICE inline double swiglu_sigmoid(double g) {
  if (g >= 0.0) return 1.0 / (1.0 + exp(-g));
  const double e = exp(g);
  return e / (1.0 + e);
}

/// Forward element: out = silu(gate) * up. Reads both inputs before writing (out may alias either).
struct swiglu_forward_element {
  template <class T>
  RLHF_HOST_DEVICE T operator()(T gate, T up) const {
    const double g = static_cast<double>(gate);
    return static_cast<T>(g * swiglu_sigmoid(g) * static_cast<double>(up));
  }
};

/// Backward element i: both gradients from one read of gate, up and d_out (d_gate may alias gate, d_up up).
template <class T, class S>
struct swiglu_backward_element {
  vector_view<const T, S> gate;
  vector_view<const T, S> up;
  vector_view<const T, S> d_out;
  vector_view<T, S> d_gate;
  vector_view<T, S> d_up;

  RLHF_HOST_DEVICE void operator()(std::size_t i) const {
    const double g = static_cast<double>(gate[i]);
    const double u = static_cast<double>(up[i]);
    const double d = static_cast<double>(d_out[i]);
    const double s = swiglu_sigmoid(g);
    d_gate[i] = static_cast<T>(d * u * s * (1.0 + g * (1.0 - s)));
    d_up[i] = static_cast<T>(d * g * s);
  }
};

template <class B, class T>
void swiglu_forward_generic(const B& b, backend_matrix<B, const T> gate, backend_matrix<B, const T> up,
                            backend_matrix<B, T> out) {
  b.transform(out.flat(), swiglu_forward_element{}, gate.flat(), up.flat());
}

template <class B, class T>
void swiglu_backward_generic(const B& b, backend_matrix<B, const T> gate, backend_matrix<B, const T> up,
                             backend_matrix<B, const T> d_out, backend_matrix<B, T> d_gate, backend_matrix<B, T> d_up) {
  b.for_each_index(gate.size(), swiglu_backward_element<T, typename B::memory_space>{gate.flat(), up.flat(),
                                                                                    d_out.flat(), d_gate.flat(),
                                                                                    d_up.flat()});
}

}  // namespace detail

/// SwiGLU forward: `out = silu(gate) * up`, element-wise (llama2.c's `hb = silu(hb) * hb2`).
///
/// @tparam B a reduce_backend (transform; transform_reduce for the opt-in finite check).
/// @tparam T float or double, deduced from `out`.
/// @param b the backend.
/// @param gate [N, F] the w1 projection.
/// @param up [N, F] the w3 projection.
/// @param out out [N, F]; may be the same memory as `gate` or `up`.
/// @note Throws rlhf::invalid_argument on a shape mismatch.
template <class B, class T>
void swiglu_forward(const B& b, std::type_identity_t<backend_matrix<B, const T>> gate,
                    std::type_identity_t<backend_matrix<B, const T>> up, backend_matrix<B, T> out) {
  detail::check_reduce_backend<B>();
  constexpr std::string_view fn = "rlhf::swiglu_forward";
  static_assert(std::is_floating_point_v<T>, "rlhf::swiglu_forward: T must be float or double");
  detail::check_same_shape(fn, "up", up, "gate", gate);
  detail::check_same_shape(fn, "out", out, "gate", gate);
  detail::check_finite(b, fn, "gate", gate);
  detail::check_finite(b, fn, "up", up);
  if (gate.empty()) return;
  if constexpr (requires { rlhf_specialized_swiglu_forward(b, gate, up, out); })
    rlhf_specialized_swiglu_forward(b, gate, up, out);
  else
    detail::swiglu_forward_generic<B, T>(b, gate, up, out);
}

/// Backward of rlhf::swiglu_forward, both gradients written:
/// `d_gate = d_out * up * s * (1 + gate (1 - s))`, `d_up = d_out * silu(gate)`, s = sigmoid(gate).
///
/// @tparam B a reduce_backend.
/// @tparam T float or double, deduced from `d_gate`.
/// @param b the backend.
/// @param gate [N, F] the forward's gate.
/// @param up [N, F] the forward's up.
/// @param d_out [N, F] gradient of the loss w.r.t. the forward's output.
/// @param d_gate out [N, F]; may be the same memory as `gate` or `d_out`.
/// @param d_up out [N, F]; may be the same memory as `up` or `d_out` (not as `d_gate`).
/// @note Throws rlhf::invalid_argument on a shape mismatch.
template <class B, class T>
void swiglu_backward(const B& b, std::type_identity_t<backend_matrix<B, const T>> gate,
                     std::type_identity_t<backend_matrix<B, const T>> up,
                     std::type_identity_t<backend_matrix<B, const T>> d_out, backend_matrix<B, T> d_gate,
                     std::type_identity_t<backend_matrix<B, T>> d_up) {
  detail::check_reduce_backend<B>();
  constexpr std::string_view fn = "rlhf::swiglu_backward";
  static_assert(std::is_floating_point_v<T>, "rlhf::swiglu_backward: T must be float or double");
  detail::check_same_shape(fn, "up", up, "gate", gate);
  detail::check_same_shape(fn, "d_out", d_out, "gate", gate);
  detail::check_same_shape(fn, "d_gate", d_gate, "gate", gate);
  detail::check_same_shape(fn, "d_up", d_up, "gate", gate);
  detail::check_finite(b, fn, "gate", gate);
  detail::check_finite(b, fn, "up", up);
  detail::check_finite(b, fn, "d_out", d_out);
  if (gate.empty()) return;
  if constexpr (requires { rlhf_specialized_swiglu_backward(b, gate, up, d_out, d_gate, d_up); })
    rlhf_specialized_swiglu_backward(b, gate, up, d_out, d_gate, d_up);
  else
    detail::swiglu_backward_generic<B, T>(b, gate, up, d_out, d_gate, d_up);
}

}  // namespace rlhf
