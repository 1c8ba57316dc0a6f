/// @file ranking_loss.hpp
/// @brief Reward-model losses: the pairwise ranking loss of InstructGPT over K ranked responses per prompt
///        (Ouyang et al. 2022, eq. 1) and the K-way "pick the best" softmax loss (Ziegler et al. 2019).
///
/// Layout (ragged K per prompt, no host containers so a device backend can run it):
/// - `rewards` [P, K_max]: the reward model's scalar output, one per response (one forward per response,
///   not per pair: all C(K,2) comparisons of a prompt are one batch element, as InstructGPT prescribes).
/// - `ranks` [P, K_max] (`std::int32_t`): 0 is the best response; equal ranks are a tie.
/// - `counts` [P] (`std::int32_t`): row p holds K_p valid responses, 2 <= K_p <= K_max; entries at
///   columns >= K_p are ignored and may hold anything (even NaN).
/// Gradients are with respect to every response's reward, [P, K_max], zero beyond K_p.
#pragma once

#include <cmath>
#include <cstddef>
#include <type_traits>
#include <cstdint>
#include <string>

#include "rlhf/backends/checks.hpp"
#include "rlhf/backends/concepts.hpp"
#include "rlhf/backends/memory.hpp"
#include "rlhf/backends/ranking_math.hpp"
#include "rlhf/backends/view.hpp"
#include "rlhf/config.hpp"
#include "rlhf/error.hpp"

namespace rlhf {

/// How the pairwise loss of one prompt is normalized.
enum class pair_normalization : unsigned char {
  /// Divide by C(K_p, 2), the number of all pairs, whether or not they were compared (InstructGPT eq. 1).
  /// Tie pairs contribute 0 but still count in the denominator.
  all_pairs,
  /// Divide by the number of non-tie pairs of the prompt (a prompt whose responses all tie contributes 0).
  compared_pairs,
};

/// Form of the optional reward-centering penalty (Eisenstein et al. 2023, "Helping or herding").
enum class centering_form : unsigned char {
  /// c * mean_i r_i^2 over the prompt's K_p responses.
  squared_rewards,
  /// c * mean over the C(K_p, 2) pairs of (r_i + r_j)^2; for K = 2 this is TRL's
  /// `center_rewards_coefficient * (r_chosen + r_rejected)^2`.
  pair_sums,
};

/// Hyper-parameters of rlhf::ranking_loss. The defaults are InstructGPT's loss (no margin, no centering,
/// normalization by C(K, 2)).
struct ranking_loss_options {
  /// m >= 0, subtracted inside the sigmoid: -log sigma(r_better - r_worse - m) (TRL/ORL margin).
  double margin = 0.0;
  /// c >= 0, weight of the centering penalty (0 = off). TRL recommends 0.01.
  double center_coefficient = 0.0;
  /// Form of the centering penalty.
  centering_form centering = centering_form::squared_rewards;
  /// Denominator of each prompt's pair sum.
  pair_normalization normalization = pair_normalization::all_pairs;

  /// Ouyang et al. 2022 (IGPT), eq. 1: the defaults.
  static ranking_loss_options instructgpt() { return {}; }
  /// TRL0/TRL1 `RewardTrainer` (K = 2): margin `m` inside the sigmoid, centering
  /// c * (r_c + r_r)^2 when `center_coefficient` > 0 (TRL default: off; its docs recommend 0.01).
  static ranking_loss_options trl(double margin = 0.0, double center_coefficient = 0.0) {
    return {margin, center_coefficient, centering_form::pair_sums, pair_normalization::all_pairs};
  }
  /// ORL `PairWiseLoss` (K = 2) with an optional margin.
  static ranking_loss_options orl(double margin = 0.0) { return {margin, 0.0, centering_form::squared_rewards, pair_normalization::all_pairs}; }
  /// NEMO: mean over the valid (compared) pairs.
  static ranking_loss_options nemo() {
    return {0.0, 0.0, centering_form::squared_rewards, pair_normalization::compared_pairs};
  }
};

/// Statistics of rlhf::ranking_loss (accumulated in double).
struct ranking_loss_stats {
  /// Mean over prompts of (pair loss + centering penalty): the value whose gradient is `d_rewards`.
  double loss = 0.0;
  /// Mean over prompts of the pair term alone.
  double pair_loss = 0.0;
  /// Mean over prompts of the centering penalty alone (0 when off).
  double center_loss = 0.0;
  /// Fraction of non-tie pairs, pooled over all prompts, whose better response has the strictly larger
  /// reward (0 when no pair was compared).
  double accuracy = 0.0;
  /// Mean over the pooled non-tie pairs of r_better - r_worse (0 when no pair was compared).
  double mean_margin = 0.0;
  /// Number of non-tie pairs over all prompts.
  double compared_pairs = 0.0;
};

/// Hyper-parameters of rlhf::best_of_k_loss. Defaults reproduce ZGL's `best_of_4` labels.
struct best_of_k_options {
  /// c >= 0: optional c * mean_i r_i^2 centering penalty per prompt (the softmax loss is shift-invariant too).
  double center_coefficient = 0.0;
  /// Ziegler et al. 2019 (ZGL `PickBest`): plain softmax cross-entropy.
  static best_of_k_options zgl() { return {}; }
};

/// Statistics of rlhf::best_of_k_loss (accumulated in double).
struct best_of_k_stats {
  /// Mean over prompts of -log softmax(r_p)[best_p] (+ centering).
  double loss = 0.0;
  /// Mean over prompts of the centering penalty alone.
  double center_loss = 0.0;
  /// Fraction of prompts whose argmax reward (first index among equal maxima) is the labelled best.
  double accuracy = 0.0;
  /// Mean over prompts of the softmax probability of the labelled best response.
  double mean_best_probability = 0.0;
};

namespace detail {

// Rows of the per-prompt scratch matrix [ranking_scratch_rows, P] (double). The validation pass uses the
// same rows for (error kind, prompt, response, value).
inline constexpr std::size_t ranking_scratch_rows = 5;
inline constexpr double ranking_no_error = 4.0;  // error kinds: 1 counts, 2 ranks/best, 3 non-finite reward

struct ranking_first_error {
  double kind = ranking_no_error, prompt = 0, response = 0, value = 0;
};
struct ranking_first_error_op {
  // Lexicographic minimum on (kind, prompt): argument errors before the finite check, then the first prompt.
  RLHF_HOST_DEVICE ranking_first_error operator()(ranking_first_error a, ranking_first_error b) const {
    if (a.kind != b.kind) return a.kind < b.kind ? a : b;
    return a.prompt <= b.prompt ? a : b;
  }
};
struct ranking_first_error_map {
  RLHF_HOST_DEVICE ranking_first_error operator()(double kind, double prompt, double response, double value) const {
    return {kind, prompt, response, value};
  }
};

// Validation pass: one index per prompt; records the first problem of the prompt in the scratch rows.
// `labels` holds ranks [P, K_max] (pairwise) or the best index [P] (best-of-K, labels_are_best).
template <class T, class S>
struct validate_ranked_rows {
  matrix_view<const T, S> rewards;
  matrix_view<const std::int32_t, S> ranks;   // empty for best-of-K
  vector_view<const std::int32_t, S> best;    // empty for pairwise
  vector_view<const std::int32_t, S> counts;
  matrix_view<double, S> scratch;
  bool check_finite;

  RLHF_HOST_DEVICE void operator()(std::size_t p) const {
    double kind = ranking_no_error, response = 0, value = 0;
    const std::int32_t k = counts[p];
    const std::size_t kmax = rewards.cols;
    if (k < 2 || static_cast<std::size_t>(k) > kmax) {
      kind = 1;
      value = static_cast<double>(k);
    } else {
      const std::size_t kp = static_cast<std::size_t>(k);
      if (best.data != nullptr) {
        const std::int32_t b = best[p];
        if (b < 0 || b >= k) kind = 2, value = static_cast<double>(b);
      } else {
        for (std::size_t i = 0; i < kp; ++i) {
          const std::int32_t r = ranks(p, i);
          if (r < 0 || r >= k) {
            kind = 2, response = static_cast<double>(i), value = static_cast<double>(r);
            break;
          }
        }
      }
      if (kind == ranking_no_error && check_finite) {
        for (std::size_t i = 0; i < kp; ++i) {
          const T x = rewards(p, i);
          if (!(x - x == x - x)) {
            kind = 3, response = static_cast<double>(i);
            break;
          }
        }
      }
    }
    scratch(0, p) = kind;
    scratch(1, p) = static_cast<double>(p);
    scratch(2, p) = response;
    scratch(3, p) = value;
  }
};

// Runs the validation pass and throws the first problem found, if any.
template <class B, class T>
void validate_ranked_rows_or_throw(const B& b, const char* function, backend_matrix<B, const T> rewards,
                                   backend_matrix<B, const std::int32_t> ranks,
                                   backend_vector<B, const std::int32_t> best,
                                   backend_vector<B, const std::int32_t> counts, backend_matrix<B, double> scratch) {
  using S = typename B::memory_space;
  const std::size_t P = rewards.rows;
  b.for_each_index(P, validate_ranked_rows<T, S>{rewards, ranks, best, counts, scratch, finite_checks_enabled()});
  const ranking_first_error e = b.transform_reduce(ranking_first_error{}, ranking_first_error_op{}, ranking_first_error_map{}, scratch.row(0),
                                           scratch.row(1), scratch.row(2), scratch.row(3));
  if (e.kind == ranking_no_error) return;
  const std::string at = " at prompt " + std::to_string(static_cast<std::size_t>(e.prompt));
  const std::string kmax = std::to_string(rewards.cols);
  if (e.kind == 1) {
    throw_argument_error(function, "counts", "every count in [2, " + kmax + "] (K_max = columns of 'rewards')",
                         to_display_string(e.value) + at);
  }
  if (e.kind == 2) {
    if (best.data != nullptr) {
      throw_argument_error(function, "best", "an index in [0, counts[p]) for every prompt p",
                           to_display_string(e.value) + at);
    }
    throw_argument_error(function, "ranks", "ranks in [0, counts[p]) for the valid responses of every prompt p",
                         to_display_string(e.value) + at + ", response " +
                             std::to_string(static_cast<std::size_t>(e.response)));
  }
  throw non_finite_error(argument_message(function, "rewards", "finite values (the opt-in finite check is on)",
                                          "NaN/Inf" + at + ", response " +
                                              std::to_string(static_cast<std::size_t>(e.response))));
}

// Per-prompt pairwise kernel (Ouyang et al. 2022, eq. 1). Writes the prompt's loss terms into the scratch
// columns and, when wanted, its gradient row (scaled by 1/P: the total loss is the mean over prompts).
template <class T, class S>
struct pairwise_prompt_kernel {
  matrix_view<const T, S> rewards;
  matrix_view<const std::int32_t, S> ranks;
  vector_view<const std::int32_t, S> counts;
  matrix_view<T, S> d_rewards;  // empty: forward only
  matrix_view<double, S> scratch;
  double margin, center, inv_prompts;
  bool center_pair_sums, compared_only;

  RLHF_HOST_DEVICE void operator()(std::size_t p) const {
    const std::size_t k = static_cast<std::size_t>(counts[p]);
    const std::size_t all = k * (k - 1) / 2;
    std::size_t compared = 0, correct = 0;
    double margin_sum = 0, pair_sum = 0;
    for (std::size_t i = 0; i < k; ++i) {
      for (std::size_t j = 0; j < k; ++j) {
        if (ranks(p, i) < ranks(p, j)) {  // i is better than j; ties (equal ranks) are skipped
          const double gap = static_cast<double>(rewards(p, i)) - static_cast<double>(rewards(p, j));
          ++compared;
          correct += gap > 0 ? 1u : 0u;
          margin_sum += gap;
          pair_sum += ranking_neg_log_sigmoid(gap - margin);
        }
      }
    }
    const double denom = compared_only ? static_cast<double>(compared) : static_cast<double>(all);
    const double w = denom > 0 ? 1.0 / denom : 0.0;
    const T* row = rewards.data + p * rewards.cols;
    const double center_term = center > 0 ? ranking_center_penalty(row, k, center, center_pair_sums) : 0.0;
    scratch(0, p) = w * pair_sum;
    scratch(1, p) = static_cast<double>(correct);
    scratch(2, p) = static_cast<double>(compared);
    scratch(3, p) = margin_sum;
    scratch(4, p) = center_term;
    if (d_rewards.data == nullptr) return;
    double row_sum = 0;
    if (center > 0 && center_pair_sums)
      for (std::size_t i = 0; i < k; ++i) row_sum += static_cast<double>(rewards(p, i));
    const std::int32_t* row_ranks = ranks.data + p * ranks.cols;
    for (std::size_t i = 0; i < k; ++i) {
      const double g = ranking_response_gradient(row, row_ranks, i, k, margin, w, center, center_pair_sums, row_sum);
      d_rewards(p, i) = static_cast<T>(g * inv_prompts);
    }
    for (std::size_t i = k; i < d_rewards.cols; ++i) d_rewards(p, i) = T(0);
  }
};

// Per-prompt best-of-K kernel (Ziegler et al. 2019, `PickBest`): -log softmax(r)[best] with a stable
// logsumexp; gradient (softmax - onehot(best)) / P.
template <class T, class S>
struct best_of_k_prompt_kernel {
  matrix_view<const T, S> rewards;
  vector_view<const std::int32_t, S> best;
  vector_view<const std::int32_t, S> counts;
  matrix_view<T, S> d_rewards;
  matrix_view<double, S> scratch;
  double center, inv_prompts;

  RLHF_HOST_DEVICE void operator()(std::size_t p) const {
    const std::size_t k = static_cast<std::size_t>(counts[p]);
    const std::size_t bi = static_cast<std::size_t>(best[p]);
    double mx = static_cast<double>(rewards(p, 0));
    std::size_t arg = 0;
    for (std::size_t i = 1; i < k; ++i) {
      const double r = static_cast<double>(rewards(p, i));
      if (r > mx) mx = r, arg = i;
    }
    double z = 0;
    for (std::size_t i = 0; i < k; ++i) z += std::exp(static_cast<double>(rewards(p, i)) - mx);
    const double lse = mx + std::log(z);
    double center_term = 0;
    if (center > 0) {
      double s = 0;
      for (std::size_t i = 0; i < k; ++i) s += static_cast<double>(rewards(p, i)) * static_cast<double>(rewards(p, i));
      center_term = center * s / static_cast<double>(k);
    }
    scratch(0, p) = lse - static_cast<double>(rewards(p, bi));
    scratch(1, p) = arg == bi ? 1.0 : 0.0;
    scratch(2, p) = std::exp(static_cast<double>(rewards(p, bi)) - lse);
    scratch(3, p) = 0.0;
    scratch(4, p) = center_term;
    if (d_rewards.data == nullptr) return;
    for (std::size_t i = 0; i < k; ++i) {
      const double r = static_cast<double>(rewards(p, i));
      double g = std::exp(r - lse) - (i == bi ? 1.0 : 0.0);
      if (center > 0) g += center * 2.0 * r / static_cast<double>(k);
      d_rewards(p, i) = static_cast<T>(g * inv_prompts);
    }
    for (std::size_t i = k; i < d_rewards.cols; ++i) d_rewards(p, i) = T(0);
  }
};

struct ranking_sums {
  double loss = 0, correct = 0, compared = 0, margin = 0, center = 0;
};
struct ranking_sums_op {
  RLHF_HOST_DEVICE ranking_sums operator()(ranking_sums a, ranking_sums b) const {
    return {a.loss + b.loss, a.correct + b.correct, a.compared + b.compared, a.margin + b.margin, a.center + b.center};
  }
};
struct ranking_sums_map {
  RLHF_HOST_DEVICE ranking_sums operator()(double l, double c, double n, double m, double ce) const {
    return {l, c, n, m, ce};
  }
};

template <class B>
ranking_sums sum_ranking_scratch(const B& b, backend_matrix<B, double> s) {
  return b.transform_reduce(ranking_sums{}, ranking_sums_op{}, ranking_sums_map{}, s.row(0), s.row(1), s.row(2),
                            s.row(3), s.row(4));
}

template <class B, class T>
void check_ranked_shapes(const char* function, backend_matrix<B, const T> rewards,
                         backend_vector<B, const std::int32_t> counts, backend_matrix<B, T> d_rewards) {
  if (rewards.rows == 0 || rewards.cols < 2) {
    throw_argument_error(function, "rewards", "shape [P, K_max] with P >= 1 and K_max >= 2", shape_string(rewards));
  }
  check_size(function, "counts", counts, rewards.rows, "(the rows of 'rewards')");
  if (!(d_rewards.data == nullptr && d_rewards.size() == 0)) {
    check_same_shape(function, "d_rewards", d_rewards, "rewards", rewards);
    // A prompt's gradient entries each read every reward of the prompt: writing them over the rewards would
    // feed later entries with gradients (and on a GPU, in an order that depends on the threads).
    const T* r0 = rewards.data;
    const T* d0 = d_rewards.data;
    if (d0 < r0 + rewards.size() && r0 < d0 + d_rewards.size()) {
      throw_argument_error(function, "d_rewards", "storage separate from 'rewards'", "a view overlapping 'rewards'");
    }
  }
}

}  // namespace detail

/// Pairwise ranking loss of a reward model over K_p ranked responses per prompt
/// (Ouyang et al. 2022, InstructGPT, eq. 1, with TRL's optional margin and centering):
///
///     loss_p = 1/D_p * sum_{(i,j): rank_i < rank_j} softplus(-(r_i - r_j - m)) + center_p
///     loss   = mean_p loss_p
///
/// where D_p = C(K_p, 2) (`pair_normalization::all_pairs`, tie pairs contribute 0 but still count) or the
/// number of non-tie pairs (`compared_pairs`), and center_p is the optional centering penalty. Each prompt is
/// one batch element: one reward per response, every pair of the prompt computed from those.
///
/// @tparam B a reduce backend.
/// @tparam T float or double.
/// @param b the backend.
/// @param rewards [P, K_max] rewards; columns >= counts[p] are ignored.
/// @param ranks [P, K_max] ranks, 0 = best, equal = tie; must lie in [0, counts[p]) for valid entries.
/// @param counts [P] number of valid responses per prompt, in [2, K_max].
/// @param d_rewards [P, K_max] output: d loss / d rewards (zeros beyond counts[p]); empty view = forward only;
///        must not overlap `rewards`.
/// @param options margin, centering, normalization (defaults: InstructGPT).
/// @return loss, its pair and centering parts, pooled pair accuracy and mean reward gap of compared pairs.
/// @note Allocates one 5 x P double scratch buffer per call on the backend.
template <class B, class T>
ranking_loss_stats ranking_loss(const B& b, std::type_identity_t<backend_matrix<B, const T>> rewards,
                                backend_matrix<B, const std::int32_t> ranks,
                                backend_vector<B, const std::int32_t> counts, backend_matrix<B, T> d_rewards,
                                const ranking_loss_options& options = {}) {
  detail::check_reduce_backend<B>();
  constexpr const char* fn = "rlhf::ranking_loss";
  detail::check_ranked_shapes<B, T>(fn, rewards, counts, d_rewards);
  detail::check_same_shape(fn, "ranks", ranks, "rewards", rewards);
  detail::check_non_negative(fn, "options.margin", options.margin);
  detail::check_non_negative(fn, "options.center_coefficient", options.center_coefficient);
  const std::size_t P = rewards.rows;
  auto scratch_buf = b.template allocate<double>(detail::ranking_scratch_rows, P);
  const backend_matrix<B, double> scratch = scratch_buf.view();
  // Counts, ranks and (opt-in) finiteness of the valid rewards, in one pass on the backend.
  detail::validate_ranked_rows_or_throw<B, T>(b, fn, rewards, ranks, {}, counts, scratch);

  const bool pair_sums = options.centering == centering_form::pair_sums;
  const bool compared_only = options.normalization == pair_normalization::compared_pairs;
  const double inv_p = 1.0 / static_cast<double>(P);
  if constexpr (requires {
                  rlhf_specialized_ranking_loss(b, rewards, ranks, counts, d_rewards, scratch, options.margin,
                                                options.center_coefficient, pair_sums, compared_only);
                }) {
    rlhf_specialized_ranking_loss(b, rewards, ranks, counts, d_rewards, scratch, options.margin,
                                  options.center_coefficient, pair_sums, compared_only);
  } else {
    b.for_each_index(P, detail::pairwise_prompt_kernel<T, typename B::memory_space>{
                            rewards, ranks, counts, d_rewards, scratch, options.margin, options.center_coefficient,
                            inv_p, pair_sums, compared_only});
  }
  const detail::ranking_sums s = detail::sum_ranking_scratch(b, scratch);
  ranking_loss_stats st;
  st.pair_loss = s.loss * inv_p;
  st.center_loss = s.center * inv_p;
  st.loss = st.pair_loss + st.center_loss;
  st.compared_pairs = s.compared;
  st.accuracy = s.compared > 0 ? s.correct / s.compared : 0.0;
  st.mean_margin = s.compared > 0 ? s.margin / s.compared : 0.0;
  return st;
}

/// K-way "pick the best" loss of Ziegler et al. 2019 (ZGL `best_of_4` labels): softmax cross-entropy
/// of the labelled best response against the prompt's K_p rewards,
///
///     loss_p = logsumexp_{i < K_p}(r_i) - r_best  (+ c * mean_i r_i^2),   loss = mean_p loss_p,
///
/// with gradient (softmax(r_p) - onehot(best_p)) / P (+ 2 c r_i / (K_p P)).
///
/// @tparam B a reduce backend.
/// @tparam T float or double.
/// @param b the backend.
/// @param rewards [P, K_max] rewards; columns >= counts[p] are ignored.
/// @param best [P] index of the chosen response of each prompt, in [0, counts[p]).
/// @param counts [P] number of valid responses per prompt, in [2, K_max].
/// @param d_rewards [P, K_max] output gradient (zeros beyond counts[p]); empty view = forward only.
/// @param options optional centering (default: none, as ZGL).
/// @return loss, centering part, accuracy (argmax == best) and mean probability of the best response.
/// @note Allocates one 5 x P double scratch buffer per call on the backend.
template <class B, class T>
best_of_k_stats best_of_k_loss(const B& b, std::type_identity_t<backend_matrix<B, const T>> rewards,
                               backend_vector<B, const std::int32_t> best,
                               backend_vector<B, const std::int32_t> counts, backend_matrix<B, T> d_rewards,
                               const best_of_k_options& options = {}) {
  detail::check_reduce_backend<B>();
  constexpr const char* fn = "rlhf::best_of_k_loss";
  detail::check_ranked_shapes<B, T>(fn, rewards, counts, d_rewards);
  detail::check_size(fn, "best", best, rewards.rows, "(the rows of 'rewards')");
  detail::check_non_negative(fn, "options.center_coefficient", options.center_coefficient);
  const std::size_t P = rewards.rows;
  auto scratch_buf = b.template allocate<double>(detail::ranking_scratch_rows, P);
  const backend_matrix<B, double> scratch = scratch_buf.view();
  // A non-null 'best' view selects the best-index check in the shared validation pass.
  detail::validate_ranked_rows_or_throw<B, T>(b, fn, rewards, {}, best, counts, scratch);

  const double inv_p = 1.0 / static_cast<double>(P);
  if constexpr (requires {
                  rlhf_specialized_best_of_k_loss(b, rewards, best, counts, d_rewards, scratch,
                                                  options.center_coefficient);
                }) {
    rlhf_specialized_best_of_k_loss(b, rewards, best, counts, d_rewards, scratch, options.center_coefficient);
  } else {
    b.for_each_index(P, detail::best_of_k_prompt_kernel<T, typename B::memory_space>{
                            rewards, best, counts, d_rewards, scratch, options.center_coefficient, inv_p});
  }
  const detail::ranking_sums s = detail::sum_ranking_scratch(b, scratch);
  best_of_k_stats st;
  st.center_loss = s.center * inv_p;
  st.loss = s.loss * inv_p + st.center_loss;
  st.accuracy = s.correct * inv_p;
  st.mean_best_probability = s.compared * inv_p;
  return st;
}

}  // namespace rlhf
