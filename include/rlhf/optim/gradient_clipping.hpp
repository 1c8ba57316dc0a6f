/// @file gradient_clipping.hpp
/// @brief Global-norm gradient clipping over a parameter list, the gradient norm, and zeroing gradients.
///
/// Clipping by the global L2 norm (Pascanu et al. 2013, Alg. 2, applied to all parameters at once):
///
///     norm = sqrt(sum over every parameter and element of g^2)        (accumulated in double)
///     if norm > max_norm:  g <- g * max_norm / (norm + 1e-6)          (every gradient, same factor)
///
/// The 1e-6 keeps the factor finite and matches PyTorch's `clip_grad_norm_`, which every peer uses
/// (TRL0/TRL1 and ORL via `max_grad_norm` / `max_norm` 1.0, DSC via DeepSpeed `gradient_clipping` 1.0).
///
/// A non-finite norm (a NaN or Inf gradient) is never used to scale: that would turn every gradient into
/// NaN or 0. The gradients are left untouched and the result says `finite == false`; the caller should
/// skip the optimizer step (`skip_step()`), as DSC does on overflow. `error_if_non_finite` throws instead.
#pragma once

#include <cmath>
#include <cstddef>
#include <limits>
#include <string>

#include "rlhf/backends/checks.hpp"
#include "rlhf/backends/concepts.hpp"
#include "rlhf/backends/view.hpp"
#include "rlhf/config.hpp"
#include "rlhf/error.hpp"
#include "rlhf/models/parameters.hpp"
#include "rlhf/optim/optimizer.hpp"

namespace rlhf {

/// Options of rlhf::clip_gradient_norm. The default max_norm 1.0 is every peer's (TRL0, TRL1, DSC, ORL,
/// VERL `grad_clip` 1.0).
struct gradient_clip_options {
  double max_norm = 1.0;             ///< clip threshold, > 0
  bool error_if_non_finite = false;  ///< throw rlhf::non_finite_error on a NaN/Inf norm instead of reporting it

  /// PyTorch's behaviour with error_if_nonfinite=True: a non-finite norm throws.
  static gradient_clip_options strict(double max_norm = 1.0) { return {max_norm, true}; }
};

/// Outcome of rlhf::clip_gradient_norm.
struct gradient_clip_result {
  double norm = 0.0;    ///< global L2 norm of the gradients before clipping (NaN/Inf when some gradient is)
  double scale = 1.0;   ///< factor every gradient was multiplied by (1 when not clipped)
  bool clipped = false; ///< whether the gradients were scaled
  bool finite = true;   ///< whether the norm is finite

  /// True when the norm is not finite: the gradients were left as they are and the optimizer step should
  /// be skipped (the usual overflow handling of mixed-precision training).
  bool skip_step() const { return !finite; }
};

namespace detail {
struct grad_square_fn {
  template <class T>
  RLHF_HOST_DEVICE double operator()(T x) const {
    const double d = static_cast<double>(x);
    return d * d;
  }
};
struct grad_plus_fn {
  RLHF_HOST_DEVICE double operator()(double a, double b) const { return a + b; }
};
template <class T>
struct grad_scale_fn {
  T scale;
  RLHF_HOST_DEVICE T operator()(T g) const { return g * scale; }
};

// Sum of squares of one gradient tensor, in double.
template <class B, class T, class S>
double gradient_square_sum(const B& b, matrix_view<T, S> grad) {
  if (grad.size() == 0) return 0.0;
  return b.transform_reduce(0.0, grad_plus_fn{}, grad_square_fn{}, as_const(grad.flat()));
}
}  // namespace detail

/// The global L2 norm of every gradient of `params` (frozen parameters, with an empty grad, are skipped).
///
/// @tparam B a reduce backend.
/// @tparam T float or double.
/// @param b the backend.
/// @param params the parameters whose gradients are measured.
/// @return sqrt of the sum of squares, accumulated in double; NaN/Inf when a gradient holds NaN/Inf.
/// @note Squares are taken in double: float gradients cannot overflow; double gradients above ~1e154 in
///       magnitude do, and read as an Inf norm.
template <class B, class T>
double gradient_norm(const B& b, const parameter_list<T, typename B::memory_space>& params) {
  detail::check_reduce_backend<B>();
  detail::check_parameter_list("rlhf::gradient_norm", params, /*allow_frozen=*/true);
  double sum = 0.0;
  for (const auto& p : params) {
    if (!detail::is_frozen(p)) sum += detail::gradient_square_sum(b, p.grad);
  }
  return std::sqrt(sum);
}

/// Clips the gradients of `params` in place to a global L2 norm of at most `options.max_norm`
/// (Pascanu et al. 2013): if norm > max_norm, every gradient is multiplied by max_norm / (norm + 1e-6).
///
/// @tparam B a reduce backend.
/// @tparam T float or double.
/// @param b the backend.
/// @param params the parameters whose gradients are clipped (frozen ones, with an empty grad, skipped).
/// @param options max_norm (> 0) and the non-finite policy.
/// @return the pre-clip norm, the factor applied, and whether it was finite. A non-finite norm leaves the
///         gradients untouched and sets `finite = false` (skip the step), or throws rlhf::non_finite_error
///         naming the first non-finite gradient when `options.error_if_non_finite`.
template <class B, class T>
gradient_clip_result clip_gradient_norm(const B& b, const parameter_list<T, typename B::memory_space>& params,
                                        const gradient_clip_options& options = {}) {
  detail::check_reduce_backend<B>();
  constexpr const char* fn = "rlhf::clip_gradient_norm";
  detail::check_positive(fn, "options.max_norm", options.max_norm);
  detail::check_parameter_list(fn, params, /*allow_frozen=*/true);

  double sum = 0.0;
  std::size_t first_bad = params.size();
  for (std::size_t i = 0; i < params.size(); ++i) {
    if (detail::is_frozen(params[i])) continue;
    const double s = detail::gradient_square_sum(b, params[i].grad);
    if (!std::isfinite(s) && first_bad == params.size()) first_bad = i;
    sum += s;
  }
  gradient_clip_result r;
  r.norm = std::sqrt(sum);
  r.finite = std::isfinite(r.norm);
  if (!r.finite) {
    if (options.error_if_non_finite) {
      const std::string arg = first_bad < params.size()
                                  ? "params[" + std::to_string(first_bad) + "].grad ('" + params[first_bad].name + "')"
                                  : std::string("params");
      throw non_finite_error(detail::argument_message(
          fn, arg, "finite gradients (options.error_if_non_finite is set)",
          "a gradient norm of " + detail::to_display_string(r.norm)));
    }
    return r;
  }
  if (r.norm > options.max_norm) {
    r.scale = options.max_norm / (r.norm + 1e-6);
    r.clipped = true;
    const T scale = static_cast<T>(r.scale);
    for (const auto& p : params) {
      if (detail::is_frozen(p) || p.grad.size() == 0) continue;
      b.transform(p.grad.flat(), detail::grad_scale_fn<T>{scale}, as_const(p.grad.flat()));
    }
  }
  return r;
}

/// Sets every gradient of `params` to zero (before accumulating the next backward passes). Frozen
/// parameters (empty grad) are skipped.
/// @param b the backend.
/// @param params the parameters whose gradients are cleared.
template <class B, class T>
void zero_gradients(const B& b, const parameter_list<T, typename B::memory_space>& params) {
  detail::check_backend<B>();
  detail::check_parameter_list("rlhf::zero_gradients", params, /*allow_frozen=*/true);
  for (const auto& p : params) {
    if (!detail::is_frozen(p) && p.grad.size() != 0) b.fill(p.grad.flat(), T(0));
  }
}

}  // namespace rlhf
