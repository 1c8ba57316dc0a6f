/// @file kl_penalized_advantages.hpp
/// @brief The rollout's whole advantage computation in one call: KL-penalized per-token rewards
///        (Ouyang et al. 2022, InstructGPT, eq. 2), advantages and returns by GAE (Schulman et al. 2016,
///        eq. 16) and the masked moments of the advantages that whitening needs.
///
/// ```
/// kl         = k(logp - ref_logp)                 on valid tokens (rlhf::kl_penalty)
/// rewards    = -beta * kl (+ shaped score at the placement's token)   (rlhf::kl_penalized_rewards)
/// advantages, returns = GAE(rewards, values)                           (rlhf::gae)
/// moments    = count, mean, m2 of the advantages over valid tokens     (rlhf::compute_masked_moments)
/// ```
/// The result is that of the four calls in that order, with the same validation and the same outputs; what a
/// backend gains is one pass: a backend that provides the hook `rlhf_specialized_k1_kl_penalized_advantages`
/// computes InstructGPT's k1 KL, the rewards, GAE and the moments while each row is read once (the CUDA
/// backend: one warp per row, rlhf/backends/cuda/kl_penalized_advantages.cuh). The hook is taken for k1 and
/// k1_straight_through without a clamp and with the opt-in finite checks off; every other case, and every
/// backend without the hook, runs the four calls. (On the CPU the Eigen backend's four kernels are as fast as
/// a fused row pass was: its GAE sweep is bound by the recurrence's latency, not by memory; docs/benchmarks.md.)
///
/// Whitening then takes the moments: `rlhf::whiten(b, adv, mask, adv, options, &stats.advantages)` (across
/// ranks, merge them first: rlhf::global_masked_moments).
#pragma once

#include <cstddef>
#include <string>
#include <string_view>
#include <type_traits>

#include "rlhf/advantages/gae.hpp"
#include "rlhf/advantages/kl_penalized_rewards.hpp"
#include "rlhf/backends/checks.hpp"
#include "rlhf/backends/concepts.hpp"
#include "rlhf/backends/masked_moments.hpp"
#include "rlhf/backends/view.hpp"
#include "rlhf/ops/kl_estimators.hpp"
#include "rlhf/ops/whitening.hpp"

namespace rlhf {

/// Options of rlhf::kl_penalized_advantages: those of the calls it stands for. Defaults: InstructGPT (k1,
/// beta = 0.02, score on the last response token, gamma = 1, lambda = 0.95).
struct kl_penalized_advantages_options {
  kl_estimator_options kl{};
  kl_penalized_rewards_options rewards{};
  gae_options gae{};
};

/// What rlhf::kl_penalized_advantages returns.
struct kl_penalized_advantages_stats {
  /// As rlhf::kl_penalized_rewards returns them.
  kl_penalized_rewards_stats rewards;
  /// Count, mean and m2 of the advantages over the valid tokens (the input of rlhf::whiten's `global`).
  masked_moments advantages;
};

namespace detail {

// A backend whose kernel computes k1, the rewards, GAE and the advantages' moments in one pass.
template <class B, class T>
concept k1_kl_advantages_backend =
    requires(const B& b, backend_matrix<B, const T> in, backend_matrix<B, T> out,
             backend_matrix<B, const mask_type> mask, backend_vector<B, const T> scores, T x, double& d,
             std::size_t& n, masked_moments& m) {
      rlhf_specialized_k1_kl_penalized_advantages(b, in, in, in, mask, scores, out, out, out, out, x, 0, x, x, d, n, d,
                                                  n, m);
    };

}  // namespace detail

/// KL-penalized rewards, GAE advantages and returns, and the advantages' masked moments, in one call (see the
/// file comment): the rollout half of a PPO iteration after the forward passes.
///
/// @tparam B a backend satisfying rlhf::scan_backend
/// @tparam T float or double
/// @param b the backend
/// @param logp log pi_theta of the sampled tokens (the rollout policy), [B, T]
/// @param ref_logp log pi_ref of the same tokens (the SFT model), [B, T]
/// @param scores reward-model score per row, [B]
/// @param values the value model's V_t, [B, T]; read at valid positions only
/// @param mask response mask, [B, T], non-zero = valid (an action)
/// @param has_eos per-row ended flag, [B] (0: truncated, gets `missing_eos_penalty`), or empty: every row ended
/// @param kl output: the KL estimate used, [B, T] (0 on masked positions)
/// @param rewards output: per-token rewards, [B, T]
/// @param advantages output A, [B, T]; 0 on masked positions
/// @param returns output R = A + V, [B, T]; 0 on masked positions; an empty view: not wanted
/// @param options the KL estimator, the rewards' beta, clip, penalty and placement, GAE's gamma and lambda
/// @return the rewards' statistics and the advantages' moments
/// @throws rlhf::argument_error on a shape or option that does not fit, naming the argument; the outputs must
///         not alias each other or an input.
template <class B, class T>
kl_penalized_advantages_stats kl_penalized_advantages(
    const B& b, std::type_identity_t<backend_matrix<B, const T>> logp,
    std::type_identity_t<backend_matrix<B, const T>> ref_logp, std::type_identity_t<backend_vector<B, const T>> scores,
    std::type_identity_t<backend_matrix<B, const T>> values, backend_matrix<B, const mask_type> mask,
    backend_vector<B, const mask_type> has_eos, backend_matrix<B, T> kl, std::type_identity_t<backend_matrix<B, T>> rewards,
    std::type_identity_t<backend_matrix<B, T>> advantages, std::type_identity_t<backend_matrix<B, T>> returns,
    const kl_penalized_advantages_options& options = {}) {
  static_assert(std::is_floating_point_v<T>, "rlhf::kl_penalized_advantages: T must be float or double");
  detail::check_scan_backend<B>();
  constexpr std::string_view fn = "rlhf::kl_penalized_advantages";
  // Everything validated before anything is written, under this function's name.
  detail::check_same_shape(fn, "ref_logp", ref_logp, "logp", logp);
  detail::check_size(fn, "scores", scores, logp.rows, "(the rows of 'logp')");
  detail::check_same_shape(fn, "values", values, "logp", logp);
  detail::check_same_shape(fn, "mask", mask, "logp", logp);
  if (!has_eos.empty()) detail::check_size(fn, "has_eos", has_eos, logp.rows, "(the rows of 'logp', or empty)");
  detail::check_same_shape(fn, "kl", kl, "logp", logp);
  detail::check_same_shape(fn, "rewards", rewards, "logp", logp);
  detail::check_same_shape(fn, "advantages", advantages, "logp", logp);
  if (!(returns.data == nullptr && returns.empty())) detail::check_same_shape(fn, "returns", returns, "logp", logp);
  detail::check_kl_estimator_options(fn, options.kl, "options.kl");
  detail::check_rewards_options(fn, options.rewards, "options.rewards");
  detail::check_gae_options(fn, options.gae.gamma, options.gae.lambda, "options.gae");

  kl_penalized_advantages_stats stats;
  if constexpr (detail::k1_kl_advantages_backend<B, T>) {
    if (detail::k1_kl_in_rewards_pass(options.kl)) {
      if (logp.rows == 0) return stats;
      auto shaped_buf = detail::shape_scores<B, T>(b, scores, has_eos, options.rewards);
      double kl_total = 0;
      std::size_t valid_tokens = 0;
      detail::rewards_scored_sum scored;
      rlhf_specialized_k1_kl_penalized_advantages(
          b, logp, ref_logp, values, mask, as_const(shaped_buf.view().flat()), kl, rewards, advantages, returns,
          static_cast<T>(options.rewards.beta), static_cast<int>(options.rewards.placement),
          static_cast<T>(options.gae.gamma), static_cast<T>(options.gae.lambda), kl_total, valid_tokens, scored.sum,
          scored.count, stats.advantages);
      stats.rewards = detail::rewards_stats<B, T>(b, scores, options.rewards, kl_total, valid_tokens, scored);
      return stats;
    }
  }
  stats.rewards =
      kl_penalized_rewards<B, T>(b, logp, ref_logp, scores, mask, has_eos, kl, rewards, options.kl, options.rewards);
  gae<B, T>(b, as_const(rewards), values, mask, advantages, returns, options.gae);
  stats.advantages = compute_masked_moments(b, as_const(advantages), mask);
  return stats;
}

}  // namespace rlhf
