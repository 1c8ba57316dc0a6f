/// @file kl_estimators.hpp
/// @brief Per-token estimators of KL(pi_theta || pi_ref) from sampled tokens, and their gradients.
///
/// Tokens are sampled from the policy pi_theta, and `logr_t = logp_t - ref_logp_t` is the log-ratio of the
/// sampled token under the policy and the reference (SFT) model. Every estimator below is a function
/// `k(logr)` of that one number; its derivative with respect to `logp` is `k'(logr)` (and `-k'(logr)` with
/// respect to `ref_logp`, which is usually frozen).
///
/// | estimator              | value k(logr)              | d k / d logp                  | E_pi_theta[value]              |
/// |------------------------|----------------------------|-------------------------------|--------------------------------|
/// | k1                     | logr                       | 1                             | KL (unbiased, high variance)   |
/// | abs                    | abs(logr)                  | sign(logr)                    | >= KL (biased)                 |
/// | k2                     | logr^2 / 2                 | logr                          | ~KL to second order (biased)   |
/// | k3                     | exp(-logr) - 1 + logr      | 1 - exp(-logr)                | KL (unbiased, low variance, >= 0) |
/// | k1_straight_through    | logr                       | logr (the gradient of k2)     | KL                             |
/// | k3_straight_through    | exp(-logr) - 1 + logr      | logr (the gradient of k2)     | KL                             |
///
/// (Schulman 2020, "Approximating KL divergence"; Ouyang et al. 2022, InstructGPT, eq. 2 uses k1.)
///
/// Gradient bias when an estimator is used as a loss (the KL term of a GRPO-style loss, differentiated
/// only through logp, without a score-function term). The expected gradient is
/// `E_pi_theta[k'(logr) * grad logp]`, while the true gradient of the reverse KL is
/// `grad KL(pi_theta || pi_ref) = E_pi_theta[logr * grad logp]`:
/// - k1: `E[grad logp] = 0`: the gradient has zero mean, it is pure noise and does not pull towards pi_ref.
/// - k2: `E[logr * grad logp]` is exactly the gradient of the reverse KL: the right gradient.
/// - k3: `E_pi_theta[(1 - pi_ref/pi_theta) grad logp] = -E_pi_ref[grad logp] = grad KL(pi_ref || pi_theta)`: the
///   gradient of the *forward* KL, not of the reverse KL whose value k3 estimates (verl PR #2953, OpenRLHF
///   PR #1101).
/// - abs: `E[sign(logr) grad logp]`, no KL's gradient.
/// - the straight-through variants report the value of k1 / k3 and take the gradient of k2: an unbiased
///   reverse-KL gradient with the familiar value (verl's `k1+` / `k3+`).
/// When the KL only shapes the reward (InstructGPT: `r_t = -beta * KL_t`, no gradient through it), only the
/// bias of the value matters: k1 and k3 are unbiased, k2 and abs are not.
#pragma once

#include <cmath>
#include <cstddef>
#include <string>
#include <string_view>
#include <type_traits>

#include "rlhf/backends/checks.hpp"
#include "rlhf/backends/concepts.hpp"
#include "rlhf/backends/view.hpp"
#include "rlhf/config.hpp"
#include "rlhf/error.hpp"

namespace rlhf {

/// Which per-token estimator of KL(pi_theta || pi_ref) to use; `logr = logp - ref_logp`. See the file comment
/// for each one's value, gradient and bias.
enum class kl_estimator : unsigned char {
  k1,                   ///< logr (TRL "kl", verl "kl"/"k1", InstructGPT, ZGL, DSC, OpenRLHF default)
  abs,                  ///< |logr| (TRL "abs", verl "abs", NeMo-Aligner default)
  k2,                   ///< logr^2 / 2 (TRL "mse", verl "mse"/"k2", OpenRLHF "k2")
  k3,                   ///< exp(-logr) - 1 + logr (TRL1 "k3", verl "low_var_kl", OpenRLHF "k3")
  k1_straight_through,  ///< value of k1, gradient of k2 (verl "k1+")
  k3_straight_through,  ///< value of k3, gradient of k2 (verl "k3+" / "low_var_kl+")
};

/// Name of an estimator, for messages and logs ("k1", "abs", "k2", "k3", "k1+", "k3+").
inline const char* to_string(kl_estimator e) {
  switch (e) {
    case kl_estimator::k1: return "k1";
    case kl_estimator::abs: return "abs";
    case kl_estimator::k2: return "k2";
    case kl_estimator::k3: return "k3";
    case kl_estimator::k1_straight_through: return "k1+";
    case kl_estimator::k3_straight_through: return "k3+";
  }
  return "unknown";
}

/// Options of rlhf::kl_penalty and rlhf::kl_penalty_backward. Defaults: InstructGPT (k1, no clamp).
struct kl_estimator_options {
  /// The estimator (see rlhf::kl_estimator).
  kl_estimator estimator = kl_estimator::k1;
  /// 0: no clamp. Otherwise the estimate is clamped to [-clamp, clamp] and its gradient is zero where the
  /// clamp is active (OpenRLHF clamps every estimator to +-10; verl clamps k3 to +-10). For the
  /// straight-through estimators the clamp applies to the reported value only; their gradient stays logr.
  double clamp = 0;
  /// 0: none. Otherwise, inside k3, logr is clamped to [-log_ratio_clamp, log_ratio_clamp] before exp so one
  /// very unlikely token cannot overflow it (verl clamps at 20); the gradient is zero where active.
  double log_ratio_clamp = 20;

  /// InstructGPT (Ouyang et al. 2022, eq. 2): k1 = log(pi_RL / pi_SFT), no clamp.
  static kl_estimator_options instructgpt() { return {}; }
  /// openai/lm-human-preferences (ZGL): k1.
  static kl_estimator_options zgl() { return {}; }
  /// TRL v0.11 `PPOTrainer` default `kl_penalty="kl"`: k1.
  static kl_estimator_options trl0() { return {}; }
  /// TRL v0.11 `kl_penalty="abs"`.
  static kl_estimator_options trl0_abs() { return {kl_estimator::abs, 0, 20}; }
  /// TRL v0.11 `kl_penalty="mse"`: k2.
  static kl_estimator_options trl0_mse() { return {kl_estimator::k2, 0, 20}; }
  /// TRL HEAD PPO default `kl_estimator="k1"`.
  static kl_estimator_options trl1() { return {}; }
  /// TRL HEAD PPO `kl_estimator="k3"` (no clamps in TRL).
  static kl_estimator_options trl1_k3() { return {kl_estimator::k3, 0, 0}; }
  /// DeepSpeed-Chat: k1.
  static kl_estimator_options dsc() { return {}; }
  /// OpenRLHF default: k1 clamped to [-10, 10] (`compute_approx_kl`).
  static kl_estimator_options orl() { return {kl_estimator::k1, 10, 0}; }
  /// OpenRLHF `k3` (clamped to [-10, 10]).
  static kl_estimator_options orl_k3() { return {kl_estimator::k3, 10, 0}; }
  /// verl `kl_penalty="kl"`: k1.
  static kl_estimator_options verl() { return {}; }
  /// verl `low_var_kl`: k3 with logr clamped to +-20 and the estimate clamped to +-10.
  static kl_estimator_options verl_low_var() { return {kl_estimator::k3, 10, 20}; }
  /// verl `low_var_kl+`: value of the clamped k3, gradient of k2.
  static kl_estimator_options verl_low_var_straight_through() { return {kl_estimator::k3_straight_through, 10, 20}; }
  /// NeMo-Aligner `use_absolute_kl: True`: |logr|.
  static kl_estimator_options nemo() { return {kl_estimator::abs, 0, 20}; }
};

namespace detail {

// Clamp that keeps NaN (fmin/fmax would silently replace it by a bound).
template <class T>
RLHF_HOST_DEVICE RLHF_FORCE_INLINE T kl_clamp_keep_nan(T x, T bound) {
  return x > bound ? bound : (x < -bound ? -bound : x);
}

/// The estimate k(logr) of one token (device-callable). `clamp` and `log_ratio_clamp` as in
/// rlhf::kl_estimator_options (0 = none), already converted to T.
template <class T>
RLHF_HOST_DEVICE RLHF_FORCE_INLINE T kl_value(T logr, kl_estimator e, T clamp, T log_ratio_clamp) {
  using std::expm1;
  using std::fabs;
  T v;
  switch (e) {
    case kl_estimator::abs: v = fabs(logr); break;
    case kl_estimator::k2: v = T(0.5) * logr * logr; break;
    case kl_estimator::k3:
    case kl_estimator::k3_straight_through: {
      const T c = log_ratio_clamp > T(0) ? kl_clamp_keep_nan(logr, log_ratio_clamp) : logr;
      // r - 1 - log r with r = pi_ref / pi_theta = exp(-logr). expm1 rather than exp(-c) - 1: near logr = 0
      // the latter rounds exp to 1 and returns c itself, which is negative for c < 0; expm1(-c) >= -c holds
      // after rounding too, so the estimate stays >= 0.
      v = expm1(-c) + c;
      break;
    }
    case kl_estimator::k1:
    case kl_estimator::k1_straight_through:
    default: v = logr; break;
  }
  return clamp > T(0) ? kl_clamp_keep_nan(v, clamp) : v;
}

/// d kl_value / d logp at one token (device-callable); d / d ref_logp is its negative.
template <class T>
RLHF_HOST_DEVICE RLHF_FORCE_INLINE T kl_gradient(T logr, kl_estimator e, T clamp, T log_ratio_clamp) {
  using std::expm1;
  T g;
  switch (e) {
    case kl_estimator::k1_straight_through:
    case kl_estimator::k3_straight_through: return logr;  // gradient of k2; clamps affect the value only
    case kl_estimator::abs: g = logr > T(0) ? T(1) : (logr < T(0) ? T(-1) : logr * T(0)); break;
    case kl_estimator::k2: g = logr; break;
    case kl_estimator::k3:
      if (log_ratio_clamp > T(0) && (logr > log_ratio_clamp || logr < -log_ratio_clamp)) {
        g = T(0);
      } else {
        g = -expm1(-logr);  // 1 - pi_ref / pi_theta
      }
      break;
    case kl_estimator::k1:
    default: g = T(1) + logr * T(0); break;  // logr * 0 keeps NaN
  }
  if (clamp > T(0)) {
    const T v = kl_value(logr, e, T(0), log_ratio_clamp);
    if (v > clamp || v < -clamp) g = T(0);
  }
  return g;
}

// kl = mask ? k(logp - ref_logp) : 0.
template <class T>
struct kl_value_functor {
  kl_estimator estimator;
  T clamp;
  T log_ratio_clamp;
  RLHF_HOST_DEVICE T operator()(T logp, T ref_logp, mask_type m) const {
    return m ? kl_value(logp - ref_logp, estimator, clamp, log_ratio_clamp) : T(0);
  }
};

// The same with the estimator fixed at compile time (what rlhf::kl_penalty runs).
template <class T, kl_estimator E>
struct kl_value_fixed {
  T clamp;
  T log_ratio_clamp;
  RLHF_HOST_DEVICE T operator()(T logp, T ref_logp, mask_type m) const {
    return m ? kl_value(logp - ref_logp, E, clamp, log_ratio_clamp) : T(0);
  }
};

// `name`: how the caller's documentation spells the options ("options", or "options.kl" inside a larger struct).
inline void check_kl_estimator_options(std::string_view function, const kl_estimator_options& o,
                                       std::string_view name = "options") {
  const auto field = [&](const char* f) { return std::string(name) + "." + f; };
  switch (o.estimator) {
    case kl_estimator::k1:
    case kl_estimator::abs:
    case kl_estimator::k2:
    case kl_estimator::k3:
    case kl_estimator::k1_straight_through:
    case kl_estimator::k3_straight_through: break;
    default:
      throw_argument_error(function, field("estimator"), "one of k1, abs, k2, k3, k1_straight_through, k3_straight_through",
                           std::to_string(static_cast<int>(o.estimator)));
  }
  check_non_negative(function, field("clamp"), o.clamp);
  check_non_negative(function, field("log_ratio_clamp"), o.log_ratio_clamp);
}

}  // namespace detail

/// Per-token KL estimate `kl[b, t] = k(logp[b, t] - ref_logp[b, t])` on valid positions, 0 on masked ones
/// (whatever logp holds there, NaN included).
///
/// @tparam B a backend satisfying rlhf::elementwise_backend
/// @tparam T float or double
/// @param b the backend
/// @param logp log pi_theta of the sampled tokens, [B, T]
/// @param ref_logp log pi_ref of the same tokens, [B, T]
/// @param mask response mask, [B, T], non-zero = valid
/// @param kl output, [B, T]; may alias neither input
/// @param options the estimator and its clamps (default: InstructGPT's k1)
/// @note Ouyang et al. 2022 (InstructGPT) eq. 2 penalty `beta * log(pi_RL / pi_SFT)` is k1.
template <class B, class T>
void kl_penalty(const B& b, std::type_identity_t<backend_matrix<B, const T>> logp,
                std::type_identity_t<backend_matrix<B, const T>> ref_logp, backend_matrix<B, const mask_type> mask,
                backend_matrix<B, T> kl, const kl_estimator_options& options = {}) {
  static_assert(std::is_floating_point_v<T>, "rlhf::kl_penalty: T must be float or double");
  detail::check_elementwise_backend<B>();
  constexpr std::string_view fn = "rlhf::kl_penalty";
  detail::check_same_shape(fn, "ref_logp", ref_logp, "logp", logp);
  detail::check_same_shape(fn, "mask", mask, "logp", logp);
  detail::check_same_shape(fn, "kl", kl, "logp", logp);
  detail::check_kl_estimator_options(fn, options);
  detail::check_finite_where_valid(b, fn, "logp", logp, mask);
  detail::check_finite_where_valid(b, fn, "ref_logp", ref_logp, mask);
  // The estimator is made a compile-time constant of the element functor, so the per-token switch folds
  // away and the loop vectorizes (a run-time switch inside the functor kept the Eigen loop scalar).
  const T clamp = static_cast<T>(options.clamp), log_ratio_clamp = static_cast<T>(options.log_ratio_clamp);
  const auto run = [&]<kl_estimator E>() {
    b.transform(kl.flat(), detail::kl_value_fixed<T, E>{clamp, log_ratio_clamp}, logp.flat(), ref_logp.flat(),
                mask.flat());
  };
  switch (options.estimator) {
    case kl_estimator::abs: run.template operator()<kl_estimator::abs>(); break;
    case kl_estimator::k2: run.template operator()<kl_estimator::k2>(); break;
    case kl_estimator::k3: run.template operator()<kl_estimator::k3>(); break;
    case kl_estimator::k3_straight_through: run.template operator()<kl_estimator::k3_straight_through>(); break;
    case kl_estimator::k1_straight_through: run.template operator()<kl_estimator::k1_straight_through>(); break;
    case kl_estimator::k1:
    default: run.template operator()<kl_estimator::k1>(); break;
  }
}

/// Backward of rlhf::kl_penalty: `d_logp[b, t] = d_kl[b, t] * dk/dlogp` on valid positions, 0 on masked ones.
/// The gradient with respect to ref_logp is `-d_logp` (the reference is frozen in RLHF, so it is not formed).
///
/// @tparam B a backend satisfying rlhf::elementwise_backend
/// @tparam T float or double
/// @param b the backend
/// @param logp log pi_theta, [B, T]
/// @param ref_logp log pi_ref, [B, T]
/// @param mask response mask, [B, T]
/// @param d_kl upstream gradient of the loss with respect to kl, [B, T]
/// @param d_logp output, [B, T]; may alias d_kl
/// @param options the same options as the forward call
/// @note See the file comment for what each estimator's gradient means as a loss (k1: zero-mean; k3: gradient
///       of the forward KL; straight-through: logr, the gradient of the reverse KL; verl PR #2953).
template <class B, class T>
void kl_penalty_backward(const B& b, std::type_identity_t<backend_matrix<B, const T>> logp,
                         std::type_identity_t<backend_matrix<B, const T>> ref_logp,
                         backend_matrix<B, const mask_type> mask, std::type_identity_t<backend_matrix<B, const T>> d_kl,
                         backend_matrix<B, T> d_logp, const kl_estimator_options& options = {}) {
  static_assert(std::is_floating_point_v<T>, "rlhf::kl_penalty_backward: T must be float or double");
  detail::check_elementwise_backend<B>();
  constexpr std::string_view fn = "rlhf::kl_penalty_backward";
  detail::check_same_shape(fn, "ref_logp", ref_logp, "logp", logp);
  detail::check_same_shape(fn, "mask", mask, "logp", logp);
  detail::check_same_shape(fn, "d_kl", d_kl, "logp", logp);
  detail::check_same_shape(fn, "d_logp", d_logp, "logp", logp);
  detail::check_kl_estimator_options(fn, options);
  detail::check_finite_where_valid(b, fn, "logp", logp, mask);
  detail::check_finite_where_valid(b, fn, "ref_logp", ref_logp, mask);
  detail::check_finite_where_valid(b, fn, "d_kl", d_kl, mask);
  const kl_estimator e = options.estimator;
  const T clamp = static_cast<T>(options.clamp), lrc = static_cast<T>(options.log_ratio_clamp);
  // One pass over B*T with a functor reading the four views (transform takes at most three inputs).
  const auto lp = logp.flat(), rp = ref_logp.flat(), dk = d_kl.flat();
  const auto m = mask.flat();
  const auto out = d_logp.flat();
  b.for_each_index(out.size, [=] RLHF_HOST_DEVICE(std::size_t i) {
    // Read everything before writing: d_logp may alias d_kl.
    const T g = m[i] ? dk[i] * detail::kl_gradient(lp[i] - rp[i], e, clamp, lrc) : T(0);
    out[i] = g;
  });
}

}  // namespace rlhf
