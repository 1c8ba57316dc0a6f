/// @file kl_penalized_rewards.hpp
/// @brief Per-token rewards of RLHF: the KL penalty on every response token plus the reward-model score
///        on one token (Ouyang et al. 2022, InstructGPT, eq. 2; Ziegler et al. 2019, eq. 2).
///
/// ```
/// rewards[b, t] = -beta * kl[b, t]                       on valid tokens (mask != 0)
///               + s_b                                    at t = place(b)
///               = 0                                      elsewhere
/// s_b = clip(score_b, -score_clip, score_clip) - missing_eos_penalty * (has_eos_b == 0)
/// ```
/// `place(b)` is the last valid token of row b by default: the action that ended the episode receives
/// the episode's reward, so with gamma = 1 every valid token's return contains the score exactly once and
/// the number of non-zero advantages equals the response length (trl #1893, DeepSpeedExamples PR #672).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <type_traits>

#include "rlhf/backends/checks.hpp"
#include "rlhf/backends/concepts.hpp"
#include "rlhf/backends/memory.hpp"
#include "rlhf/backends/view.hpp"
#include "rlhf/config.hpp"
#include "rlhf/error.hpp"
#include "rlhf/ops/kl_estimators.hpp"

namespace rlhf {

/// Which token of a row receives the reward-model score.
enum class score_placement : unsigned char {
  /// The last valid (mask != 0) token: the action that ended the episode. Default; TRL v0.11, OpenRLHF,
  /// verl, NeMo-Aligner.
  last_valid_token,
  /// The last column, T - 1, whatever the mask (openai/lm-human-preferences, fixed-length responses).
  last_position,
  /// One past the last valid token, min(last + 1, T - 1): reproduces DeepSpeed-Chat (`ends` off by one,
  /// DeepSpeedExamples PR #672) and TRL HEAD (`sequence_lengths + 1`, trl #1893 / #3750). That slot is
  /// usually padding: with rlhf::gae over the action mask the score is then never seen, and with a mask
  /// extended by one slot (as those projects do) it reaches the last action one step late, scaled by
  /// lambda. For reproducing those profiles only.
  one_past_last_valid,
};

/// Options of rlhf::kl_penalized_rewards. Defaults: InstructGPT (beta = 0.02, score on the last token).
struct kl_penalized_rewards_options {
  /// KL coefficient beta >= 0 (Ouyang et al. 2022, eq. 2: 0.02).
  double beta = 0.02;
  /// 0: no clip. Otherwise the score is clipped to [-score_clip, score_clip] before it is added.
  double score_clip = 0;
  /// Subtracted from the score of rows whose `has_eos` flag is 0 (truncated responses); >= 0.
  double missing_eos_penalty = 0;
  /// Where the score goes.
  score_placement placement = score_placement::last_valid_token;

  /// InstructGPT: beta = 0.02.
  static kl_penalized_rewards_options instructgpt() { return {}; }
  /// openai/lm-human-preferences: beta = 0.2 (initial value of the adaptive controller), score at T - 1.
  /// ZGL's -1 score for responses without the truncation token is `missing_eos_penalty` relative to the
  /// score; set it per task.
  static kl_penalized_rewards_options zgl() { return {0.2, 0, 0, score_placement::last_position}; }
  /// TRL v0.11 `PPOTrainer`: init_kl_coef = 0.2, score on the last non-masked token, no clip.
  static kl_penalized_rewards_options trl0() { return {0.2, 0, 0, score_placement::last_valid_token}; }
  /// TRL HEAD PPO: kl_coef = 0.05, score one slot past the last real token (trl #1893).
  static kl_penalized_rewards_options trl1() { return {0.05, 0, 0, score_placement::one_past_last_valid}; }
  /// DeepSpeed-Chat: kl_ctl = 0.1, clip_reward_value = 5, score one past the last action (PR #672).
  static kl_penalized_rewards_options dsc() { return {0.1, 5, 0, score_placement::one_past_last_valid}; }
  /// OpenRLHF: init_kl_coef = 0.01, reward clip range +-10, score on the last action.
  static kl_penalized_rewards_options orl() { return {0.01, 10, 0, score_placement::last_valid_token}; }
  /// verl (when the KL is in the reward): kl_coef = 0.001, score at valid_response_length - 1.
  static kl_penalized_rewards_options verl() { return {0.001, 0, 0, score_placement::last_valid_token}; }
  /// NeMo-Aligner: initial_policy_kl_penalty = 0.01, score on the last action.
  static kl_penalized_rewards_options nemo() { return {0.01, 0, 0, score_placement::last_valid_token}; }
};

/// Statistics of one rlhf::kl_penalized_rewards call, accumulated in double. They describe the KL that
/// entered the rewards (log and control that one: trl #1161, fixed by trl PR #1180).
struct kl_penalized_rewards_stats {
  /// Mean over the scored rows of the score as added (after the clip and the missing-EOS penalty).
  double mean_score = 0;
  /// Mean over all rows of the raw input score.
  double mean_raw_score = 0;
  /// Mean of kl over valid tokens (0 if there are none).
  double mean_kl = 0;
  /// Mean over all rows of the per-row sum of kl over valid tokens (nats per sequence with k1).
  double mean_kl_sum = 0;
  /// -beta * mean_kl_sum: the mean per-sequence KL part of the return.
  double mean_non_score_reward = 0;
  /// Number of valid tokens.
  std::size_t valid_tokens = 0;
  /// Number of rows that received a score (rows with at least one valid token).
  std::size_t scored_rows = 0;
};

namespace detail {

struct rewards_max_index_op {
  RLHF_HOST_DEVICE std::int64_t operator()(std::int64_t a, std::int64_t b) const { return a > b ? a : b; }
};
// Column index where valid, -1 elsewhere: folded with max, the last valid column (-1 for an empty row).
struct rewards_valid_column {
  RLHF_HOST_DEVICE std::int64_t operator()(std::size_t c, mask_type m) const {
    return m ? static_cast<std::int64_t>(c) : std::int64_t(-1);
  }
};
struct rewards_plus {
  RLHF_HOST_DEVICE double operator()(double a, double b) const { return a + b; }
};
template <class T>
struct rewards_masked_as_double {
  RLHF_HOST_DEVICE double operator()(std::size_t, T x, mask_type m) const { return m ? static_cast<double>(x) : 0.0; }
};
struct rewards_mask_count {
  RLHF_HOST_DEVICE std::size_t operator()(mask_type m) const { return m ? 1 : 0; }
};
struct rewards_double_of {
  template <class T>
  RLHF_HOST_DEVICE double operator()(T x) const { return static_cast<double>(x); }
};
struct rewards_scored_sum {
  double sum = 0;
  std::size_t count = 0;
};
struct rewards_scored_sum_op {
  RLHF_HOST_DEVICE rewards_scored_sum operator()(rewards_scored_sum a, rewards_scored_sum b) const { return {a.sum + b.sum, a.count + b.count}; }
};
template <class T>
struct rewards_scored_term {
  RLHF_HOST_DEVICE rewards_scored_sum operator()(T s, std::int64_t last) const {
    return last >= 0 ? rewards_scored_sum{static_cast<double>(s), 1} : rewards_scored_sum{};
  }
};

// The score as added: clipped, minus the penalty when the row has no EOS (has_eos empty: every row ended).
template <class T, class S>
struct rewards_shape_score {
  vector_view<const mask_type, S> has_eos;
  T clip;
  T penalty;
  vector_view<const T, S> scores;
  vector_view<T, S> out;
  RLHF_HOST_DEVICE void operator()(std::size_t r) const {
    T s = scores[r];
    if (clip > T(0)) s = kl_clamp_keep_nan(s, clip);
    if (!has_eos.empty() && has_eos[r] == 0) s -= penalty;
    out[r] = s;
  }
};

template <class T, class S>
struct rewards_assemble {
  matrix_view<const T, S> kl;
  matrix_view<const mask_type, S> mask;
  vector_view<const T, S> shaped;
  vector_view<const std::int64_t, S> last;
  matrix_view<T, S> rewards;
  T beta;
  score_placement placement;
  RLHF_HOST_DEVICE void operator()(std::size_t i) const {
    const std::size_t cols = rewards.cols;
    const std::size_t r = i / cols, c = i % cols;
    // Select rather than multiply: a NaN kl at a masked position must not leak (verl PR #6361).
    T v = mask.data[i] ? -beta * kl.data[i] : T(0);
    const std::int64_t l = last[r];
    if (l >= 0) {
      std::size_t target = static_cast<std::size_t>(l);
      if (placement == score_placement::last_position) {
        target = cols - 1;
      } else if (placement == score_placement::one_past_last_valid) {
        target = target + 1 < cols ? target + 1 : cols - 1;
      }
      if (c == target) v += shaped[r];
    }
    rewards.data[i] = v;
  }
};

// `name`: how the caller's documentation spells the options ("options", or "options.rewards").
inline void check_rewards_options(std::string_view fn, const kl_penalized_rewards_options& o,
                                  std::string_view name = "options") {
  const auto field = [&](const char* f) { return std::string(name) + "." + f; };
  check_non_negative(fn, field("beta"), o.beta);
  check_non_negative(fn, field("score_clip"), o.score_clip);
  check_non_negative(fn, field("missing_eos_penalty"), o.missing_eos_penalty);
  switch (o.placement) {
    case score_placement::last_valid_token:
    case score_placement::last_position:
    case score_placement::one_past_last_valid: break;
    default:
      throw_argument_error(fn, field("placement"), "one of last_valid_token, last_position, one_past_last_valid",
                           std::to_string(static_cast<int>(o.placement)));
  }
}

// The log-probs of the k1 KL when the backend computes it inside the rewards pass (see
// k1_kl_rewards_backend); kl_penalized_rewards_impl reads the KL from memory without it.
template <class B, class T>
struct k1_kl_source {
  backend_matrix<B, const T> logp, ref_logp;
  backend_matrix<B, T> kl;  // written by the pass
};

// A backend whose rewards pass can compute InstructGPT's k1 KL (logp - ref_logp, no clamp) on the way
// (backends/eigen/kl_penalized_rewards.hpp has the Eigen backend's).
template <class B, class T>
concept k1_kl_rewards_backend =
    requires(const B& b, backend_matrix<B, const T> in, backend_matrix<B, T> out,
             backend_matrix<B, const mask_type> mask, backend_vector<B, const T> scores, T beta, double& d,
             std::size_t& n) {
      rlhf_specialized_k1_kl_penalized_rewards(b, in, in, out, mask, scores, out, beta, 0, d, n, d, n);
    };

// The score as added to each row (clipped, minus the missing-EOS penalty), [rows], on the backend.
template <class B, class T>
auto shape_scores(const B& b, backend_vector<B, const T> scores, backend_vector<B, const mask_type> has_eos,
                  const kl_penalized_rewards_options& options) {
  using S = typename B::memory_space;
  auto shaped_buf = allocate<T>(b, scores.size);
  b.for_each_index(scores.size, rewards_shape_score<T, S>{has_eos, static_cast<T>(options.score_clip),
                                                            static_cast<T>(options.missing_eos_penalty), scores,
                                                            shaped_buf.view().flat()});
  return shaped_buf;
}

// The statistics from the pass's totals: the KL summed over valid tokens, the valid count, and the sum and
// count of the scores that were placed.
template <class B, class T>
kl_penalized_rewards_stats rewards_stats(const B& b, backend_vector<B, const T> scores,
                                         const kl_penalized_rewards_options& options, double kl_total,
                                         std::size_t valid_tokens, rewards_scored_sum scored) {
  kl_penalized_rewards_stats stats;
  const std::size_t rows = scores.size;
  if (rows == 0) return stats;
  const double raw = b.transform_reduce(0.0, rewards_plus{}, rewards_double_of{}, scores);
  stats.valid_tokens = valid_tokens;
  stats.scored_rows = scored.count;
  stats.mean_score = scored.count ? scored.sum / static_cast<double>(scored.count) : 0.0;
  stats.mean_raw_score = raw / static_cast<double>(rows);
  stats.mean_kl = valid_tokens ? kl_total / static_cast<double>(valid_tokens) : 0.0;
  stats.mean_kl_sum = kl_total / static_cast<double>(rows);
  stats.mean_non_score_reward = -options.beta * stats.mean_kl_sum;
  return stats;
}

// Whether the KL of these options is InstructGPT's k1 (value logp - ref_logp, no clamp), which a backend may
// compute inside its rewards pass (log_ratio_clamp acts inside k3 only). With the opt-in finite checks on,
// the separate calls run instead, so that every check of each happens as documented.
inline bool k1_kl_in_rewards_pass(const kl_estimator_options& o) {
  return (o.estimator == kl_estimator::k1 || o.estimator == kl_estimator::k1_straight_through) && o.clamp == 0 &&
         !finite_checks_enabled();
}

template <class B, class T>
kl_penalized_rewards_stats kl_penalized_rewards_impl(const B& b, backend_matrix<B, const T> kl,
                                                     backend_vector<B, const T> scores,
                                                     backend_matrix<B, const mask_type> mask,
                                                     backend_vector<B, const mask_type> has_eos,
                                                     backend_matrix<B, T> rewards,
                                                     const kl_penalized_rewards_options& options,
                                                     const k1_kl_source<B, T>* k1 = nullptr) {
  using S = typename B::memory_space;
  const std::size_t rows = kl.rows;
  if (rows == 0) return {};
  auto shaped_buf = shape_scores<B, T>(b, scores, has_eos, options);
  const auto shaped = shaped_buf.view().flat();

  double kl_total = 0;
  std::size_t valid_tokens = 0;
  rewards_scored_sum sc;
  if (k1 != nullptr) {
    if constexpr (k1_kl_rewards_backend<B, T>) {  // the caller passes k1 only then
      rlhf_specialized_k1_kl_penalized_rewards(b, k1->logp, k1->ref_logp, k1->kl, mask, as_const(shaped), rewards,
                                               static_cast<T>(options.beta), static_cast<int>(options.placement),
                                               kl_total, valid_tokens, sc.sum, sc.count);
    }
  } else if constexpr (requires(double& d, std::size_t& n) {
                  rlhf_specialized_kl_penalized_rewards(b, kl, mask, as_const(shaped), rewards, static_cast<T>(options.beta),
                                                        static_cast<int>(options.placement), d, n, d, n);
                }) {
    // One pass per row on the backend (rewards, placement and the KL statistics).
    rlhf_specialized_kl_penalized_rewards(b, kl, mask, as_const(shaped), rewards, static_cast<T>(options.beta),
                                          static_cast<int>(options.placement), kl_total, valid_tokens, sc.sum,
                                          sc.count);
  } else {
    // Last valid column per row (reduce_rows with the column index), -1 for rows without valid tokens.
    auto last_buf = allocate<std::int64_t>(b, rows);
    const auto last = last_buf.view().flat();
    b.reduce_rows(last, std::int64_t(-1), rewards_max_index_op{}, rewards_valid_column{}, mask);
    b.for_each_index(rewards.size(), rewards_assemble<T, S>{kl, mask, as_const(shaped), as_const(last), rewards,
                                                            static_cast<T>(options.beta), options.placement});
    // Statistics, in double.
    auto row_kl_buf = allocate<double>(b, rows);
    const auto row_kl = row_kl_buf.view().flat();
    b.reduce_rows(row_kl, 0.0, rewards_plus{}, rewards_masked_as_double<T>{}, kl, mask);
    kl_total = b.transform_reduce(0.0, rewards_plus{}, rewards_double_of{}, as_const(row_kl));
    valid_tokens = b.transform_reduce(std::size_t(0), add_sizes{}, rewards_mask_count{}, mask.flat());
    sc = b.transform_reduce(rewards_scored_sum{}, rewards_scored_sum_op{}, rewards_scored_term<T>{}, as_const(shaped),
                            as_const(last));
  }
  return rewards_stats<B, T>(b, scores, options, kl_total, valid_tokens, sc);
}

}  // namespace detail

/// KL-penalized per-token rewards (Ouyang et al. 2022, InstructGPT, eq. 2, per token as in Ziegler et al.
/// 2019, eq. 2 and Stiennon et al. 2020, eq. 1): `rewards = -beta * kl` on valid tokens, 0 on masked ones,
/// plus the (clipped, penalized) score at the token chosen by `options.placement`. A row without any valid
/// token receives no score (its rewards are all 0).
///
/// @tparam B a backend satisfying rlhf::reduce_backend
/// @tparam T float or double
/// @param b the backend
/// @param kl per-token KL estimate, [B, T] (e.g. from rlhf::kl_penalty, or an exact full-vocabulary KL);
///        read only at valid positions
/// @param scores reward-model score per row, [B]
/// @param mask response mask, [B, T], non-zero = valid
/// @param has_eos per-row flag, [B]: 0 marks a truncated response that gets `missing_eos_penalty`
///        subtracted; an empty view means every row ended
/// @param rewards output, [B, T]; must not alias kl
/// @param options beta, score clip, missing-EOS penalty and placement (default InstructGPT)
/// @return statistics of the KL that entered the rewards and of the scores
template <class B, class T>
kl_penalized_rewards_stats kl_penalized_rewards(const B& b, std::type_identity_t<backend_matrix<B, const T>> kl,
                                                std::type_identity_t<backend_vector<B, const T>> scores,
                                                backend_matrix<B, const mask_type> mask,
                                                backend_vector<B, const mask_type> has_eos,
                                                backend_matrix<B, T> rewards,
                                                const kl_penalized_rewards_options& options = {}) {
  static_assert(std::is_floating_point_v<T>, "rlhf::kl_penalized_rewards: T must be float or double");
  detail::check_reduce_backend<B>();
  constexpr std::string_view fn = "rlhf::kl_penalized_rewards";
  detail::check_size(fn, "scores", scores, kl.rows, "(the rows of 'kl')");
  detail::check_same_shape(fn, "mask", mask, "kl", kl);
  if (!has_eos.empty()) detail::check_size(fn, "has_eos", has_eos, kl.rows, "(the rows of 'kl', or empty)");
  detail::check_same_shape(fn, "rewards", rewards, "kl", kl);
  detail::check_rewards_options(fn, options);
  detail::check_finite_where_valid(b, fn, "kl", kl, mask);
  detail::check_finite(b, fn, "scores", scores);
  return detail::kl_penalized_rewards_impl<B, T>(b, kl, scores, mask, has_eos, rewards, options);
}

/// rlhf::kl_penalized_rewards with every row ended (no missing-EOS penalty).
template <class B, class T>
kl_penalized_rewards_stats kl_penalized_rewards(const B& b, std::type_identity_t<backend_matrix<B, const T>> kl,
                                                std::type_identity_t<backend_vector<B, const T>> scores,
                                                backend_matrix<B, const mask_type> mask, backend_matrix<B, T> rewards,
                                                const kl_penalized_rewards_options& options = {}) {
  return kl_penalized_rewards<B, T>(b, kl, scores, mask, backend_vector<B, const mask_type>{}, rewards, options);
}

/// Convenience: computes the per-token KL with rlhf::kl_penalty into `kl`, then the rewards.
///
/// @param b the backend (rlhf::reduce_backend)
/// @param logp log pi_theta of the sampled tokens, [B, T]
/// @param ref_logp log pi_ref of the same tokens, [B, T]
/// @param scores reward-model score per row, [B]
/// @param mask response mask, [B, T]
/// @param has_eos per-row ended flag, [B], or empty
/// @param kl output: the KL estimate used, [B, T] (0 on masked positions)
/// @param rewards output, [B, T]
/// @param kl_options the estimator (see rlhf::kl_estimator_options)
/// @param options as above
/// @return statistics of the KL used in the rewards
template <class B, class T>
kl_penalized_rewards_stats kl_penalized_rewards(const B& b, std::type_identity_t<backend_matrix<B, const T>> logp,
                                                std::type_identity_t<backend_matrix<B, const T>> ref_logp,
                                                std::type_identity_t<backend_vector<B, const T>> scores,
                                                backend_matrix<B, const mask_type> mask,
                                                backend_vector<B, const mask_type> has_eos, backend_matrix<B, T> kl,
                                                backend_matrix<B, T> rewards, const kl_estimator_options& kl_options,
                                                const kl_penalized_rewards_options& options = {}) {
  detail::check_reduce_backend<B>();
  constexpr std::string_view fn = "rlhf::kl_penalized_rewards";
  // Validate everything before writing `kl`, under this function's name.
  detail::check_same_shape(fn, "ref_logp", ref_logp, "logp", logp);
  detail::check_size(fn, "scores", scores, logp.rows, "(the rows of 'logp')");
  detail::check_same_shape(fn, "mask", mask, "logp", logp);
  if (!has_eos.empty()) detail::check_size(fn, "has_eos", has_eos, logp.rows, "(the rows of 'logp', or empty)");
  detail::check_same_shape(fn, "kl", kl, "logp", logp);
  detail::check_same_shape(fn, "rewards", rewards, "logp", logp);
  detail::check_kl_estimator_options(fn, kl_options);
  detail::check_rewards_options(fn, options);
  // InstructGPT's k1 on a backend that computes it inside the rewards pass: one pass, the KL not read back.
  if constexpr (detail::k1_kl_rewards_backend<B, T>) {
    if (detail::k1_kl_in_rewards_pass(kl_options)) {
      const detail::k1_kl_source<B, T> source{logp, ref_logp, kl};
      return detail::kl_penalized_rewards_impl<B, T>(b, as_const(kl), scores, mask, has_eos, rewards, options, &source);
    }
  }
  kl_penalty<B, T>(b, logp, ref_logp, mask, kl, kl_options);
  return kl_penalized_rewards<B, T>(b, as_const(kl), scores, mask, has_eos, rewards, options);
}

}  // namespace rlhf
