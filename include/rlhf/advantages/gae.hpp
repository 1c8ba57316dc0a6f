/// @file gae.hpp
/// @brief Generalized advantage estimation and discounted returns over masked token sequences
///        (Schulman et al. 2016, "High-Dimensional Continuous Control Using GAE", eq. 16).
///
/// Masked steps are skipped, not zeroed: for a valid position t let n(t) be the next valid position after
/// t (none past the end of the row). Then
/// ```
/// delta_t = r_t + gamma * V_{n(t)} - V_t              (V_{n(t)} = 0 when there is no next valid step)
/// A_t     = delta_t + gamma * lambda * A_{n(t)}       (A_{n(t)} = 0 likewise)
/// R_t     = A_t + V_t                                 (the value target, before advantage whitening)
/// A_t = R_t = 0 on masked positions
/// ```
/// With a right-padded mask this is the textbook recursion on the response. With interior holes (multi-turn
/// responses whose tool / observation tokens are masked out) the holes are invisible: the steps on either
/// side are consecutive steps of the same episode (verl's `compute_gae_advantage_return`). Rewards and values
/// at masked positions are never read into the result, whatever they hold (100.0, NaN): the scan masks
/// them first (verl PR #50, ROLL PR #447).
#pragma once

#include <cstddef>
#include <string>
#include <string_view>
#include <type_traits>

#include "rlhf/backends/checks.hpp"
#include "rlhf/backends/concepts.hpp"
#include "rlhf/backends/memory.hpp"
#include "rlhf/backends/view.hpp"
#include "rlhf/config.hpp"
#include "rlhf/error.hpp"

namespace rlhf {

/// Options of rlhf::gae. Defaults: InstructGPT (gamma = 1; lambda = 0.95 as in its PPO setup from Ziegler et
/// al. 2019).
struct gae_options {
  /// Discount gamma in [0, 1].
  double gamma = 1.0;
  /// GAE lambda in [0, 1]: 0 gives the one-step TD error, 1 the Monte-Carlo return minus V.
  double lambda = 0.95;

  /// InstructGPT: gamma = 1, lambda = 0.95.
  static gae_options instructgpt() { return {}; }
  /// openai/lm-human-preferences: gamma = 1, lambda = 0.95.
  static gae_options zgl() { return {1.0, 0.95}; }
  /// TRL v0.11 `PPOTrainer`: gamma = 1, lam = 0.95.
  static gae_options trl0() { return {1.0, 0.95}; }
  /// TRL HEAD PPO: gamma = 1, lam = 0.95.
  static gae_options trl1() { return {1.0, 0.95}; }
  /// TRL (either version): gamma = 1, lambda = 0.95.
  static gae_options trl() { return {1.0, 0.95}; }
  /// DeepSpeed-Chat: gamma = 1, lambda = 0.95.
  static gae_options dsc() { return {1.0, 0.95}; }
  /// OpenRLHF (since v0.5.7): gamma = 1, lambda = 1.
  static gae_options orl() { return {1.0, 1.0}; }
  /// verl: gamma = 1, lam = 1.
  static gae_options verl() { return {1.0, 1.0}; }
  /// trlx: gamma = 1, lam = 0.95.
  static gae_options trlx() { return {1.0, 0.95}; }
  /// NeMo-Aligner: discount_factor = 1, gae_lambda = 0.95.
  static gae_options nemo() { return {1.0, 0.95}; }
};

namespace detail {


// a = 1 on masked steps (carry through), 0 on valid ones (restart).
template <class T>
struct gae_carry_coefficient {
  RLHF_HOST_DEVICE T operator()(mask_type m) const { return m ? T(0) : T(1); }
};
// x * m, by selection so that NaN at masked positions does not leak.
template <class T>
struct gae_select_valid {
  RLHF_HOST_DEVICE T operator()(T x, mask_type m) const { return m ? x : T(0); }
};
// a = c on valid steps, 1 on masked ones.
template <class T>
struct gae_step_coefficient {
  T c;
  RLHF_HOST_DEVICE T operator()(mask_type m) const { return m ? c : T(1); }
};
// returns = m ? A + V : 0.
template <class T>
struct gae_masked_return {
  RLHF_HOST_DEVICE T operator()(T a, T v, mask_type m) const { return m ? a + v : T(0); }
};

// delta_t = r_t + gamma * carry(t + 1) - V_t on valid steps, 0 elsewhere; carry(t + 1) is the value of the next
// valid step after t (0 at the end of the row).
template <class T, class S>
struct gae_td_error {
  matrix_view<const T, S> rewards;
  matrix_view<const T, S> values;
  matrix_view<const mask_type, S> mask;
  matrix_view<const T, S> next_value_carry;
  matrix_view<T, S> delta;
  T gamma;
  RLHF_HOST_DEVICE void operator()(std::size_t i) const {
    const std::size_t cols = delta.cols;
    const std::size_t c = i % cols;
    if (!mask.data[i]) {
      delta.data[i] = T(0);
      return;
    }
    const T next_v = c + 1 < cols ? next_value_carry.data[i + 1] : T(0);
    delta.data[i] = rewards.data[i] + gamma * next_v - values.data[i];
  }
};

/// GAE over the backend primitives: two reverse linear recurrences and three element maps.
template <class B, class T>
void gae_generic(const B& b, backend_matrix<B, const T> rewards, backend_matrix<B, const T> values,
                 backend_matrix<B, const mask_type> mask, T gamma, T lambda, backend_matrix<B, T> advantages,
                 backend_matrix<B, T> returns) {
  using S = typename B::memory_space;
  const std::size_t rows = rewards.rows, cols = rewards.cols;
  if (rows * cols == 0) return;
  auto a_buf = allocate<T>(b, rows, cols);
  auto x_buf = allocate<T>(b, rows, cols);
  auto carry_buf = allocate<T>(b, rows, cols);
  const auto a = a_buf.view(), x = x_buf.view(), carry = carry_buf.view();
  // (1) carry(t) = V_t on valid steps, carry(t + 1) on masked ones: the value of the first valid step >= t.
  b.transform(a.flat(), gae_carry_coefficient<T>{}, mask.flat());
  b.transform(x.flat(), gae_select_valid<T>{}, values.flat(), mask.flat());
  b.reverse_linear_recurrence(carry, as_const(a), as_const(x));
  // (2) TD errors (Schulman et al. 2016, eq. 16's delta) into x.
  b.for_each_index(rows * cols, gae_td_error<T, S>{rewards, values, mask, as_const(carry), x, gamma});
  // (3) A_t = delta_t + gamma * lambda * A_{t+1} on valid steps, A_t = A_{t+1} on masked ones.
  b.transform(a.flat(), gae_step_coefficient<T>{gamma * lambda}, mask.flat());
  b.reverse_linear_recurrence(advantages, as_const(a), as_const(x));
  // (4) Returns before masking A (A + V at valid steps), then zero the masked advantages.
  if (!returns.empty()) b.transform(returns.flat(), gae_masked_return<T>{}, as_const(advantages).flat(), values.flat(), mask.flat());
  b.transform(advantages.flat(), gae_select_valid<T>{}, as_const(advantages).flat(), mask.flat());
}

/// Discounted returns over the primitives: A with V = 0 and lambda = 1.
template <class B, class T>
void discounted_returns_generic(const B& b, backend_matrix<B, const T> rewards, backend_matrix<B, const mask_type> mask,
                                T gamma, backend_matrix<B, T> returns) {
  const std::size_t rows = rewards.rows, cols = rewards.cols;
  if (rows * cols == 0) return;
  auto a_buf = allocate<T>(b, rows, cols);
  auto x_buf = allocate<T>(b, rows, cols);
  const auto a = a_buf.view(), x = x_buf.view();
  b.transform(a.flat(), gae_step_coefficient<T>{gamma}, mask.flat());
  b.transform(x.flat(), gae_select_valid<T>{}, rewards.flat(), mask.flat());
  b.reverse_linear_recurrence(returns, as_const(a), as_const(x));
  b.transform(returns.flat(), gae_select_valid<T>{}, as_const(returns).flat(), mask.flat());
}

// `name`: how the caller's documentation spells the options ("options", or "options.gae").
inline void check_gae_options(std::string_view fn, double gamma, double lambda, std::string_view name = "options") {
  check_in_range(fn, std::string(name) + ".gamma", gamma, 0.0, 1.0);
  check_in_range(fn, std::string(name) + ".lambda", lambda, 0.0, 1.0);
}

}  // namespace detail

/// Generalized advantage estimation with masked steps skipped (Schulman et al. 2016, GAE, eq. 16); see the file
/// comment for the recursion. Also writes the returns `R = A + V` (the value-loss target, before any
/// whitening of A).
///
/// @tparam B a backend satisfying rlhf::scan_backend
/// @tparam T float or double
/// @param b the backend
/// @param rewards per-token rewards, [B, T] (e.g. from rlhf::kl_penalized_rewards); read at valid positions only
/// @param values old value estimates V_t, [B, T]; read at valid positions only
/// @param mask action mask, [B, T], non-zero = valid; interior zeros are skipped steps
/// @param advantages output A, [B, T]; 0 at masked positions. May not alias an input.
/// @param returns output R = A + V, [B, T]; 0 at masked positions. An empty view means "not wanted".
/// @param options gamma and lambda, each finite in [0, 1] (default InstructGPT: 1, 0.95)
/// @note O(B * T) work, sequential along T and parallel over rows. gamma = lambda = 1 gives the reverse
///       cumulative sum of rewards minus V (the Monte-Carlo advantage).
template <class B, class T>
void gae(const B& b, std::type_identity_t<backend_matrix<B, const T>> rewards,
         std::type_identity_t<backend_matrix<B, const T>> values, backend_matrix<B, const mask_type> mask,
         backend_matrix<B, T> advantages, std::type_identity_t<backend_matrix<B, T>> returns,
         const gae_options& options = {}) {
  static_assert(std::is_floating_point_v<T>, "rlhf::gae: T must be float or double");
  detail::check_scan_backend<B>();
  constexpr std::string_view fn = "rlhf::gae";
  detail::check_same_shape(fn, "values", values, "rewards", rewards);
  detail::check_same_shape(fn, "mask", mask, "rewards", rewards);
  detail::check_same_shape(fn, "advantages", advantages, "rewards", rewards);
  if (!(returns.data == nullptr && returns.empty())) detail::check_same_shape(fn, "returns", returns, "rewards", rewards);
  detail::check_gae_options(fn, options.gamma, options.lambda);
  detail::check_finite_where_valid(b, fn, "rewards", rewards, mask);
  detail::check_finite_where_valid(b, fn, "values", values, mask);
  const T gamma = static_cast<T>(options.gamma), lambda = static_cast<T>(options.lambda);
  if constexpr (requires { rlhf_specialized_gae(b, rewards, values, mask, gamma, lambda, advantages, returns); }) {
    rlhf_specialized_gae(b, rewards, values, mask, gamma, lambda, advantages, returns);
  } else {
    detail::gae_generic<B, T>(b, rewards, values, mask, gamma, lambda, advantages, returns);
  }
}

/// Discounted returns with masked steps skipped: `R_t = r_t + gamma * R_{n(t)}` on valid steps (n(t) the next
/// valid step), 0 on masked ones: rlhf::gae with V = 0 and lambda = 1 (REINFORCE-style returns).
///
/// @tparam B a backend satisfying rlhf::scan_backend
/// @tparam T float or double
/// @param b the backend
/// @param rewards per-token rewards, [B, T]; read at valid positions only
/// @param mask action mask, [B, T]
/// @param returns output, [B, T]; may not alias rewards
/// @param gamma discount, finite in [0, 1] (default 1: the reverse cumulative sum of the valid rewards)
template <class B, class T>
void discounted_returns(const B& b, std::type_identity_t<backend_matrix<B, const T>> rewards,
                        backend_matrix<B, const mask_type> mask, backend_matrix<B, T> returns, double gamma = 1.0) {
  static_assert(std::is_floating_point_v<T>, "rlhf::discounted_returns: T must be float or double");
  detail::check_scan_backend<B>();
  constexpr std::string_view fn = "rlhf::discounted_returns";
  detail::check_same_shape(fn, "mask", mask, "rewards", rewards);
  detail::check_same_shape(fn, "returns", returns, "rewards", rewards);
  detail::check_in_range(fn, "gamma", gamma, 0.0, 1.0);
  detail::check_finite_where_valid(b, fn, "rewards", rewards, mask);
  detail::discounted_returns_generic<B, T>(b, rewards, mask, static_cast<T>(gamma), returns);
}

}  // namespace rlhf
