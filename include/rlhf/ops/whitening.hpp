/// @file whitening.hpp
/// @brief Masked mean/variance (mergeable partial statistics) and masked whitening of rewards and advantages.
///
/// Statistics are accumulated in double by two passes (the mean, then the squared deviations from it),
/// and partial statistics merge by Chan et al.'s parallel formula (Chan, Golub, LeVeque 1979), so they
/// never suffer the catastrophic cancellation of `E[x^2] - E[x]^2` (NeMo-RL PR #4158). Masked positions never enter the statistics, whatever they hold (NaN included).
/// The partial statistics are exposed (`masked_moments`) so that ranks can merge theirs before whitening
/// with the global values (NeMo/TRLX style global whitening).
#pragma once

#include <cmath>
#include <cstddef>
#include <string_view>
#include <type_traits>

#include "rlhf/backends/checks.hpp"
#include "rlhf/backends/concepts.hpp"
#include "rlhf/backends/masked_moments.hpp"
#include "rlhf/backends/view.hpp"
#include "rlhf/config.hpp"
#include "rlhf/error.hpp"

namespace rlhf {

/// Options of rlhf::whiten.
///
/// Defaults follow ZGL (Ziegler et al. 2019's code, the InstructGPT lineage): subtract the mean,
/// biased variance, eps = 1e-8. Presets reproduce the peers' advantage (or reward) whitening; the
/// scope (minibatch, batch, global) is the caller's choice of what it passes, plus `global` moments.
struct whiten_options {
  /// true: out = (x - mean) / sqrt(var + eps) (advantages). false: out = (x - mean) / sqrt(var + eps) + mean,
  /// i.e. rescale only, keeping the mean (ZGL reward whitening).
  bool shift_mean = true;
  /// Variance estimator (see rlhf::variance_kind).
  variance_kind variance = variance_kind::biased;
  /// Added to the variance under the square root. Must be finite and > 0.
  double eps = 1e-8;

  /// InstructGPT / ZGL advantages (`whiten(advantages)`, biased, eps 1e-8). ZGL itself does not mask
  /// (fixed-length responses): pass an all-ones mask to reproduce it.
  static whiten_options instructgpt() { return {}; }
  /// ZGL advantages (same as the default).
  static whiten_options zgl() { return {}; }
  /// ZGL reward whitening (`whiten(rewards, shift_mean=False)`).
  static whiten_options zgl_rewards() { return {false, variance_kind::biased, 1e-8}; }
  /// TRL v0.11 (`masked_whiten`, `masked_var(unbiased=True)`).
  static whiten_options trl0() { return {true, variance_kind::bessel, 1e-8}; }
  /// TRL HEAD experimental PPO (same masked whitening as TRL0).
  static whiten_options trl1() { return {true, variance_kind::bessel, 1e-8}; }
  /// OpenRLHF (biased masked variance). ORL clamps the variance from below, `rsqrt(max(var, 1e-8))`,
  /// instead of adding eps; the two differ only when var is within a few eps of 0.
  static whiten_options orl() { return {true, variance_kind::biased, 1e-8}; }
  /// verl (`masked_whiten`, Bessel).
  static whiten_options verl() { return {true, variance_kind::bessel, 1e-8}; }
  /// NeMo-Aligner (`masked_global_mean_var`, biased; pass the all-reduced moments as `global`).
  static whiten_options nemo() { return {true, variance_kind::biased, 1e-8}; }
};

namespace detail {
struct moments_count_sum {
  double count = 0, sum = 0;
};
struct moments_add_count_sum {
  RLHF_HOST_DEVICE moments_count_sum operator()(moments_count_sum a, moments_count_sum b) const { return {a.count + b.count, a.sum + b.sum}; }
};
struct moments_masked_count_sum {
  template <class T>
  RLHF_HOST_DEVICE moments_count_sum operator()(T x, mask_type m) const {
    return m ? moments_count_sum{1.0, static_cast<double>(x)} : moments_count_sum{};
  }
};
struct moments_masked_deviation {
  double mean;
  template <class T>
  RLHF_HOST_DEVICE moments_count_sum operator()(T x, mask_type m) const {
    if (!m) return {};
    const double d = static_cast<double>(x) - mean;
    return {d, d * d};  // reuses moments_count_sum as {sum d, sum d^2}
  }
};

template <class T>
struct whiten_element {
  double mean, scale, add_back;
  RLHF_HOST_DEVICE T operator()(T x, mask_type m) const {
    return m ? static_cast<T>((static_cast<double>(x) - mean) * scale + add_back) : T(0);
  }
};

// The corrected two-pass algorithm (Chan, Golub, LeVeque 1983): the mean, then the deviations d from it,
// m2 = sum d^2 - (sum d)^2 / n. An error e in the first mean changes m2 only at second order, so m2
// keeps full relative precision even for data like 1e8 + N(0, 1) (where E[x^2] - E[x]^2 loses every
// digit and one-pass Welford keeps about eight), and a constant input gives m2 = 0 exactly.
template <class B, class T>
masked_moments masked_moments_generic(const B& b, backend_matrix<B, const T> x, backend_matrix<B, const mask_type> mask) {
  const moments_count_sum cs = b.transform_reduce(moments_count_sum{}, moments_add_count_sum{}, moments_masked_count_sum{}, x.flat(), mask.flat());
  if (cs.count == 0) return {};
  const double mean = cs.sum / cs.count;
  const moments_count_sum dev = b.transform_reduce(moments_count_sum{}, moments_add_count_sum{}, moments_masked_deviation{mean}, x.flat(), mask.flat());
  const double correction = dev.count / cs.count;  // dev.count holds sum d
  const double m2 = dev.sum - dev.count * correction;
  return {cs.count, mean + correction, m2 > 0 ? m2 : 0.0};
}

template <class B, class T>
masked_moments masked_moments_dispatch(const B& b, backend_matrix<B, const T> x,
                                       backend_matrix<B, const mask_type> mask) {
  if constexpr (requires(double& c, double& mu, double& m2) { rlhf_specialized_masked_moments(b, x, mask, c, mu, m2); }) {
    masked_moments r{};
    rlhf_specialized_masked_moments(b, x, mask, r.count, r.mean, r.m2);
    return r;
  } else {
    return masked_moments_generic(b, x, mask);
  }
}

template <class B, class T>
void whiten_check_mask(std::string_view fn, backend_matrix<B, const mask_type> mask, std::string_view ref_name,
                     backend_matrix<B, const T> ref) {
  check_same_shape(fn, "mask", mask, ref_name, ref);
}
}  // namespace detail

/// Masked count, mean and sum of squared deviations of `x` (any shape, viewed as a matrix).
///
/// Two passes accumulated in double: the masked mean, then the masked sum of squared deviations from
/// it (never `E[x^2] - E[x]^2`). Positions with mask 0 are ignored whatever they hold.
/// @tparam B backend (rlhf::reduce_backend)
/// @tparam TX element type of `x`: float or double, const or not
/// @param b backend handle
/// @param x values [R, C]
/// @param mask validity [R, C] (non-zero = valid)
/// @return the partial statistics; merge them across ranks with rlhf::combine
template <class B, class TX>
masked_moments compute_masked_moments(const B& b, matrix_view<TX, detail::space_of<B>> x,
                                      backend_matrix<B, const mask_type> mask) {
  using T = std::remove_const_t<TX>;
  static_assert(std::is_floating_point_v<T>, "rlhf::compute_masked_moments: x must hold float or double");
  detail::check_reduce_backend<B>();
  constexpr std::string_view fn = "rlhf::compute_masked_moments";
  const backend_matrix<B, const T> cx = x;
  detail::whiten_check_mask<B, T>(fn, mask, "x", cx);
  detail::check_finite(b, fn, "x", cx);
  return detail::masked_moments_dispatch(b, cx, mask);
}

/// Masked whitening (Ziegler et al. 2019 `whiten`; used on advantages before the PPO loss and,
/// rescale-only, on rewards):
///
///     out = (x - mean) / sqrt(var + eps)          (+ mean when !shift_mean)   where mask != 0
///     out = 0                                                                 where mask == 0
///
/// with mean and var the masked statistics of `x` (or `*global` when given).
///
/// Fewer than two valid values (count < 2): the variance is undefined, so no scaling is applied
/// (out = x - mean, or x when !shift_mean; with the local statistics and count == 1 that is 0 or x),
/// and count == 0 gives all zeros. Never NaN (ROLL issue #475). `out` may alias `x`.
/// @tparam B backend (rlhf::reduce_backend)
/// @tparam TX element type of `x`: float or double, const or not
/// @param b backend handle
/// @param x values [R, C]
/// @param mask validity [R, C]
/// @param out whitened values [R, C] (caller-allocated; may be `x` itself)
/// @param options centring, variance estimator, eps
/// @param global when not null, these statistics are used instead of computing them from `x`
///        (multi-rank: each rank computes its moments, merges them with rlhf::combine, then whitens)
/// @return the statistics used
template <class B, class TX>
masked_moments whiten(const B& b, matrix_view<TX, detail::space_of<B>> x, backend_matrix<B, const mask_type> mask,
                      backend_matrix<B, std::remove_const_t<TX>> out, const whiten_options& options = {},
                      const masked_moments* global = nullptr) {
  using T = std::remove_const_t<TX>;
  static_assert(std::is_floating_point_v<T>, "rlhf::whiten: x must hold float or double");
  detail::check_reduce_backend<B>();
  constexpr std::string_view fn = "rlhf::whiten";
  const backend_matrix<B, const T> cx = x;
  detail::whiten_check_mask<B, T>(fn, mask, "x", cx);
  detail::check_same_shape(fn, "out", out, "x", cx);
  detail::check_positive(fn, "options.eps", options.eps);
  if (global != nullptr) {
    if (!(std::isfinite(global->count) && global->count >= 0 && std::isfinite(global->mean) &&
          std::isfinite(global->m2) && global->m2 >= 0)) {
      detail::throw_argument_error(fn, "global", "finite moments with count >= 0 and m2 >= 0",
                                   "count " + detail::to_display_string(global->count) + ", mean " +
                                       detail::to_display_string(global->mean) + ", m2 " +
                                       detail::to_display_string(global->m2));
    }
  }
  detail::check_finite(b, fn, "x", cx);

  const masked_moments mom = global != nullptr ? *global : detail::masked_moments_dispatch(b, cx, mask);
  // count < 2: no spread to normalise by (see above); the mean is still removed.
  const double scale = mom.count >= 2 ? 1.0 / std::sqrt(mom.variance(options.variance) + options.eps) : 1.0;
  const double add_back = options.shift_mean ? 0.0 : mom.mean;
  if constexpr (requires { rlhf_specialized_whiten(b, cx, mask, out, mom.mean, scale, add_back); }) {
    rlhf_specialized_whiten(b, cx, mask, out, mom.mean, scale, add_back);
  } else {
    b.transform(out.flat(), detail::whiten_element<T>{mom.mean, scale, add_back}, cx.flat(), mask.flat());
  }
  return mom;
}

}  // namespace rlhf
