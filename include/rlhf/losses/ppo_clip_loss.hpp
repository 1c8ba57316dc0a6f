/// @file ppo_clip_loss.hpp
/// @brief The PPO clipped surrogate policy loss (Schulman et al. 2017, PPO, eq. 7), with asymmetric
///        clipping, dual clip and a log-ratio clamp, fused with its gradient w.r.t. the new log-probs.
#pragma once

#include <cmath>
#include <cstddef>
#include <string_view>
#include <type_traits>

#include "rlhf/backends/checks.hpp"
#include "rlhf/backends/concepts.hpp"
#include "rlhf/backends/ppo_clip_math.hpp"
#include "rlhf/backends/view.hpp"
#include "rlhf/config.hpp"
#include "rlhf/error.hpp"
#include "rlhf/losses/loss_aggregation.hpp"

namespace rlhf {

/// Options of rlhf::ppo_clip_loss. Defaults: InstructGPT (PPO-clip, eps = 0.2) with the ±20 log-ratio
/// clamp, which only guards exp() against overflow.
struct ppo_clip_options {
  /// Lower clip range: the ratio is clipped below at 1 - eps_low. In [0, 1).
  double eps_low = 0.2;
  /// Upper clip range: the ratio is clipped above at 1 + eps_high (DAPO "clip-higher" raises it). >= 0.
  double eps_high = 0.2;
  /// Dual clip constant c (Ye et al. 2020): for A < 0 the loss is min(L_clip, -c * A), bounding the
  /// loss of very large ratios. 0 = off; otherwise c > 1.
  double dual_clip = 0;
  /// logp - old_logp is clamped to [-clamp, clamp] before exp (ORL/VERL use 20); 0 = no clamp.
  double log_ratio_clamp = 20;

  /// InstructGPT (Ouyang et al. 2022; PPO-clip, eps 0.2).
  static ppo_clip_options instructgpt() { return {}; }
  /// ZGL (`cliprange 0.2`, no clamp).
  static ppo_clip_options zgl() { return {0.2, 0.2, 0, 0}; }
  /// TRL v0.11 (`cliprange 0.2`, no clamp).
  static ppo_clip_options trl0() { return {0.2, 0.2, 0, 0}; }
  /// TRL HEAD experimental PPO (`cliprange 0.2`, no clamp).
  static ppo_clip_options trl1() { return {0.2, 0.2, 0, 0}; }
  /// DeepSpeed-Chat (`cliprange 0.2`, no clamp).
  static ppo_clip_options dsc() { return {0.2, 0.2, 0, 0}; }
  /// OpenRLHF (`eps_clip_low_high` (0.2, 0.2), log-ratio clamp 20, `--actor.dual_clip` off by default;
  /// pass `dual` > 1 to turn it on).
  static ppo_clip_options orl(double low = 0.2, double high = 0.2, double dual = 0) { return {low, high, dual, 20}; }
  /// verl (`clip_ratio` 0.2, dual clip `clip_ratio_c` 3.0 always on, log-ratio clamp 20).
  static ppo_clip_options verl() { return {0.2, 0.2, 3.0, 20}; }
  /// NeMo-Aligner (`ratio_eps 0.2`, no clamp).
  static ppo_clip_options nemo() { return {0.2, 0.2, 0, 0}; }
};

/// Scalars returned by rlhf::ppo_clip_loss. Means are over the valid tokens of this call.
struct ppo_clip_stats {
  double loss = 0;                ///< the aggregated loss
  double clip_fraction = 0;       ///< fraction of valid tokens where the clipped term is strictly the larger
  double approx_kl = 0;           ///< mean of 0.5 (logp - old_logp)^2 (TRL0 `approxkl`)
  double policy_kl = 0;           ///< mean of old_logp - logp (TRL0 `policykl`, ORL/VERL `ppo_kl`)
  double mean_ratio = 0;          ///< mean of the ratio (after the log-ratio clamp)
  double dual_clip_fraction = 0;  ///< fraction of valid tokens where the dual clip is active
  double token_count = 0;         ///< valid tokens in this call
};

namespace detail {
template <class T>
struct ppo_token_sums {
  ppo_clip_math math;
  RLHF_HOST_DEVICE ppo_row_sums operator()(std::size_t, T logp, T old_logp, T adv, mask_type m) const {
    if (!m) return {};
    return ppo_token_sums_of(math(static_cast<double>(logp), static_cast<double>(old_logp), static_cast<double>(adv)));
  }
};

template <class B, class T>
ppo_row_sums ppo_clip_loss_generic(const B& b, backend_matrix<B, const T> logp, backend_matrix<B, const T> old_logp,
                                   backend_matrix<B, const T> adv, backend_matrix<B, const mask_type> mask,
                                   backend_vector<B, const double> w, backend_matrix<B, T> d_logp,
                                   ppo_clip_math math) {
  return clipped_token_loss_generic<ppo_row_sums>(b, logp, old_logp, adv, mask, w, d_logp, math,
                                                  ppo_token_sums<T>{math});
}
}  // namespace detail

/// PPO-clip policy loss (Schulman et al. 2017, PPO, eq. 7, written as a loss to minimise):
///
///     rho   = exp(clamp(logp - old_logp, -c_lr, c_lr))
///     l_t   = max(-A rho, -A clip(rho, 1 - eps_low, 1 + eps_high))
///     l_t   = min(l_t, -c A)        if dual_clip = c > 0 and A < 0
///     loss  = aggregate(l, mask)    (rlhf::loss_aggregation)
///
/// Gradient w.r.t. logp (written to `d_logp` when it is not empty): w_r * (-A rho) where the unclipped
/// term is active, and 0 where the clipped term is strictly active, where the dual clip is active, or
/// where the log-ratio clamp bites; 0 on masked positions.
///
/// Passes (generic path): the row weights (one reduce over the mask), one element pass for the gradient,
/// one row reduction for the loss and statistics. Allocates two [B] scratch vectors. A backend may
/// provide `rlhf_specialized_ppo_clip_loss_aggregated` (computes the row weights itself; the Eigen
/// backend's fused kernel) or `rlhf_specialized_ppo_clip_loss` (given the row weights).
/// @tparam B backend (rlhf::reduce_backend)
/// @tparam TX element type of logp: float or double, const or not
/// @param b backend handle
/// @param logp log-probs of the taken actions under the current policy [B, T]
/// @param old_logp log-probs under the policy that sampled them [B, T]
/// @param advantages advantages [B, T] (usually whitened)
/// @param mask action mask [B, T]
/// @param d_logp gradient output [B, T], or an empty view for the forward pass only
/// @param options clip ranges, dual clip, log-ratio clamp
/// @param aggregation how per-token losses are reduced
/// @return the loss and diagnostics
template <class B, class TX>
ppo_clip_stats ppo_clip_loss(const B& b, matrix_view<TX, detail::space_of<B>> logp,
                             std::type_identity_t<backend_matrix<B, const std::remove_const_t<TX>>> old_logp,
                             std::type_identity_t<backend_matrix<B, const std::remove_const_t<TX>>> advantages,
                             backend_matrix<B, const mask_type> mask,
                             std::type_identity_t<backend_matrix<B, std::remove_const_t<TX>>> d_logp,
                             const ppo_clip_options& options = {}, const loss_aggregation& aggregation = {}) {
  using T = std::remove_const_t<TX>;
  static_assert(std::is_floating_point_v<T>, "rlhf::ppo_clip_loss: log-probs must be float or double");
  detail::check_reduce_backend<B>();
  constexpr std::string_view fn = "rlhf::ppo_clip_loss";
  const backend_matrix<B, const T> lp = logp;
  detail::check_same_shape(fn, "old_logp", old_logp, "logp", lp);
  detail::check_same_shape(fn, "advantages", advantages, "logp", lp);
  detail::check_same_shape(fn, "mask", mask, "logp", lp);
  detail::agg_check_optional_output(fn, "d_logp", d_logp, "mask", mask);
  if (!(std::isfinite(options.eps_low) && options.eps_low >= 0 && options.eps_low < 1)) {
    detail::throw_argument_error(fn, "options.eps_low", "a finite value in [0, 1)",
                                 detail::to_display_string(options.eps_low));
  }
  detail::check_non_negative(fn, "options.eps_high", options.eps_high);
  if (!(std::isfinite(options.dual_clip) && (options.dual_clip == 0 || options.dual_clip > 1))) {
    detail::throw_argument_error(fn, "options.dual_clip", "0 (off) or a finite value > 1",
                                 detail::to_display_string(options.dual_clip));
  }
  detail::check_non_negative(fn, "options.log_ratio_clamp", options.log_ratio_clamp);
  detail::check_aggregation(fn, aggregation);
  detail::check_finite(b, fn, "logp", lp);
  detail::check_finite(b, fn, "old_logp", old_logp);
  detail::check_finite(b, fn, "advantages", advantages);

  detail::ppo_row_sums s{};
  if constexpr (requires(double& x) {
                  rlhf_specialized_ppo_clip_loss_aggregated(
                      b, lp, old_logp, advantages, mask, d_logp, options.eps_low, options.eps_high, options.dual_clip,
                      options.log_ratio_clamp, static_cast<int>(aggregation.mode), aggregation.global_token_count,
                      aggregation.global_sequence_count, aggregation.norm_length, x, x, x, x, x, x, x);
                }) {
    // The backend computes the row weights itself (same rule as rlhf::aggregation_row_weights), so
    // the whole loss is one call: no scratch allocation, no separate weight passes.
    rlhf_specialized_ppo_clip_loss_aggregated(
        b, lp, old_logp, advantages, mask, d_logp, options.eps_low, options.eps_high, options.dual_clip,
        options.log_ratio_clamp, static_cast<int>(aggregation.mode), aggregation.global_token_count,
        aggregation.global_sequence_count, aggregation.norm_length, s.loss, s.tokens, s.clipped, s.approx_kl,
        s.policy_kl, s.ratio, s.dual);
  } else {
    auto wbuf = detail::allocate_row_weights(b, lp.rows);
    detail::row_weights_unchecked(b, mask, aggregation, wbuf.view().flat());
    const backend_vector<B, const double> w = wbuf.view().flat();
    if constexpr (requires(double& x) {
                    rlhf_specialized_ppo_clip_loss(b, lp, old_logp, advantages, mask, w, d_logp, options.eps_low,
                                                   options.eps_high, options.dual_clip, options.log_ratio_clamp, x, x,
                                                   x, x, x, x, x);
                  }) {
      rlhf_specialized_ppo_clip_loss(b, lp, old_logp, advantages, mask, w, d_logp, options.eps_low, options.eps_high,
                                     options.dual_clip, options.log_ratio_clamp, s.loss, s.tokens, s.clipped,
                                     s.approx_kl, s.policy_kl, s.ratio, s.dual);
    } else {
      s = detail::ppo_clip_loss_generic(
          b, lp, old_logp, advantages, mask, w, d_logp,
          detail::ppo_clip_math{options.eps_low, options.eps_high, options.dual_clip, options.log_ratio_clamp});
    }
  }
  ppo_clip_stats out{};
  out.loss = s.loss;
  out.token_count = s.tokens;
  if (s.tokens > 0) {
    out.clip_fraction = s.clipped / s.tokens;
    out.approx_kl = s.approx_kl / s.tokens;
    out.policy_kl = s.policy_kl / s.tokens;
    out.mean_ratio = s.ratio / s.tokens;
    out.dual_clip_fraction = s.dual / s.tokens;
  }
  return out;
}

}  // namespace rlhf
