/// @file loss_aggregation.hpp
/// @brief How per-token losses [B, T] become one scalar: token-mean and the three sequence-mean modes,
///        with global token / sequence counts for micro-batch and multi-rank invariance.
///
/// Every mode is a weighted sum with one weight per row:
///
///     loss = sum_r w_r * sum_t m_rt * l_rt
///
/// so a loss and its gradient (d loss / d l_rt = w_r * m_rt) come from the same weights. The weights
/// depend only on the mask, so they are computed first and every loss then runs one fused pass.
#pragma once

#include <cstddef>
#include <string_view>
#include <type_traits>

#include "rlhf/backends/checks.hpp"
#include "rlhf/backends/concepts.hpp"
#include "rlhf/backends/view.hpp"
#include "rlhf/config.hpp"
#include "rlhf/error.hpp"

namespace rlhf {

/// Aggregation modes (names follow verl's `loss_agg_mode`). With n_r the valid tokens of row r,
/// N = sum_r n_r, S the number of rows with n_r > 0 and L a fixed length:
/// - `token_mean`: sum_rt m l / N (every valid token weighs the same; ZGL, TRL, DSC, ORL, VERL default)
/// - `seq_mean_token_mean`: (1/S) sum_r (1/n_r) sum_t m l (every sequence weighs the same)
/// - `seq_mean_token_sum`: (1/S) sum_r sum_t m l
/// - `seq_mean_token_sum_norm`: (1/S) sum_r (1/L) sum_t m l (Dr. GRPO: a constant length divisor)
enum class aggregation_mode : unsigned char { token_mean, seq_mean_token_mean, seq_mean_token_sum, seq_mean_token_sum_norm };

/// Loss aggregation settings, shared by every loss of the library.
///
/// Micro-batch / multi-rank invariance: when one optimizer step accumulates gradients over several
/// micro-batches (or ranks), set `global_token_count` (token_mean) or `global_sequence_count` (sequence
/// modes) to the total over all of them; the summed (not averaged) micro-batch losses then equal the
/// full-batch loss exactly (ORL/VERL style). With the defaults (0), each call normalises by its own
/// counts: the mean of per-micro-batch means, which differs when micro-batches hold different token counts.
struct loss_aggregation {
  /// How per-token losses are reduced.
  aggregation_mode mode = aggregation_mode::token_mean;
  /// N for token_mean; 0 = this batch's valid-token count. Must be finite and >= 0.
  double global_token_count = 0;
  /// S for the sequence modes; 0 = this batch's count of rows with at least one valid token.
  double global_sequence_count = 0;
  /// L for seq_mean_token_sum_norm; 0 = T (the column count). verl divides the batch's token sum by
  /// L without averaging over sequences: set global_sequence_count = 1 to reproduce that.
  double norm_length = 0;

  /// Masked token mean (InstructGPT/ZGL, TRL, DSC, NEMO per micro-batch).
  static loss_aggregation token_mean() { return {}; }
  /// Token mean over a global token count (ORL/VERL `token-mean` with the DP-wide count).
  static loss_aggregation token_mean_global(double tokens) { return {aggregation_mode::token_mean, tokens, 0, 0}; }
  /// verl `seq-mean-token-mean`.
  static loss_aggregation seq_mean_token_mean() { return {aggregation_mode::seq_mean_token_mean, 0, 0, 0}; }
  /// verl `seq-mean-token-sum`.
  static loss_aggregation seq_mean_token_sum() { return {aggregation_mode::seq_mean_token_sum, 0, 0, 0}; }
  /// verl `seq-mean-token-sum-norm` (Dr. GRPO); `length` 0 = T.
  static loss_aggregation seq_mean_token_sum_norm(double length = 0) {
    return {aggregation_mode::seq_mean_token_sum_norm, 0, 0, length};
  }
};

/// Local counts of one batch, as returned by rlhf::aggregation_row_weights (all-reduce them to get the
/// global counts of loss_aggregation).
struct aggregation_counts {
  double tokens = 0;     ///< valid tokens, sum_r n_r
  double sequences = 0;  ///< rows with at least one valid token
};

namespace detail {
struct agg_count_valid {
  RLHF_HOST_DEVICE double operator()(std::size_t, mask_type m) const { return m ? 1.0 : 0.0; }
};
struct agg_plus {
  RLHF_HOST_DEVICE double operator()(double a, double b) const { return a + b; }
};
struct agg_add_counts {
  RLHF_HOST_DEVICE aggregation_counts operator()(aggregation_counts a, aggregation_counts b) const {
    return {a.tokens + b.tokens, a.sequences + b.sequences};
  }
};
struct agg_counts_of_row {
  RLHF_HOST_DEVICE aggregation_counts operator()(double n) const { return {n, n > 0 ? 1.0 : 0.0}; }
};
struct agg_row_weight {
  aggregation_mode mode;
  double tokens, sequences, length;
  RLHF_HOST_DEVICE double operator()(double n) const {
    if (!(n > 0)) return 0.0;  // fully masked rows contribute nothing and are not counted
    switch (mode) {
      case aggregation_mode::token_mean: return 1.0 / tokens;
      case aggregation_mode::seq_mean_token_mean: return 1.0 / (n * sequences);
      case aggregation_mode::seq_mean_token_sum: return 1.0 / sequences;
      case aggregation_mode::seq_mean_token_sum_norm: return 1.0 / (sequences * length);
    }
    return 0.0;
  }
};

inline void check_aggregation(std::string_view fn, const loss_aggregation& agg) {
  if (agg.mode != aggregation_mode::token_mean && agg.mode != aggregation_mode::seq_mean_token_mean &&
      agg.mode != aggregation_mode::seq_mean_token_sum && agg.mode != aggregation_mode::seq_mean_token_sum_norm) {
    throw_argument_error(fn, "aggregation.mode", "one of the rlhf::aggregation_mode values",
                         std::to_string(static_cast<int>(agg.mode)));
  }
  check_non_negative(fn, "aggregation.global_token_count", agg.global_token_count);
  check_non_negative(fn, "aggregation.global_sequence_count", agg.global_sequence_count);
  check_non_negative(fn, "aggregation.norm_length", agg.norm_length);
}

// Shape/size checks shared by aggregation_row_weights and every loss.
template <class T, class S>
void agg_check_optional_output(std::string_view fn, std::string_view arg, matrix_view<T, S> out,
                           std::string_view ref_name, matrix_view<const mask_type, S> ref) {
  if (out.data == nullptr && out.size() == 0) return;  // empty view: not wanted
  check_same_shape(fn, arg, out, ref_name, ref);
}

// Row weights without argument checks (callers validated). weights.size == mask.rows.
template <class B>
aggregation_counts row_weights_unchecked(const B& b, backend_matrix<B, const mask_type> mask,
                                         const loss_aggregation& agg, backend_vector<B, double> weights) {
  // Valid tokens per row; a backend may count them itself (the Eigen backend: integer sums).
  if constexpr (requires { rlhf_specialized_valid_counts(b, mask, weights); }) {
    rlhf_specialized_valid_counts(b, mask, weights);
  } else {
    b.reduce_rows(weights, 0.0, agg_plus{}, agg_count_valid{}, mask);
  }
  const backend_vector<B, const double> cw = weights;
  const aggregation_counts local = b.transform_reduce(aggregation_counts{}, agg_add_counts{}, agg_counts_of_row{}, cw);
  const double tokens = agg.global_token_count > 0 ? agg.global_token_count : local.tokens;
  const double sequences = agg.global_sequence_count > 0 ? agg.global_sequence_count : local.sequences;
  const double length = agg.norm_length > 0 ? agg.norm_length : static_cast<double>(mask.cols);
  b.transform(weights, agg_row_weight{agg.mode, tokens, sequences, length}, cw);
  return local;
}

// Scratch [B] vector of doubles for the row weights (the only allocation of a loss call).
template <class B>
auto allocate_row_weights(const B& b, std::size_t rows) {
  return b.template allocate<double>(1, rows);
}

// Per-row partial sums folded by reduce_rows, then weighted by w_r: S must have a `loss` member and
// an RLHF_HOST_DEVICE operator+.
template <class S>
struct add_row_sums {
  RLHF_HOST_DEVICE S operator()(const S& a, const S& b) const { return a + b; }
};
template <class S>
struct weight_row_sums {
  RLHF_HOST_DEVICE S operator()(double w, S s) const {
    s.loss *= w;
    return s;
  }
};

// sum_r w_r * (row sums of f): one reduce_rows over [B, T], one reduce over [B].
template <class S, class B, class F, class... M>
S weighted_row_sums(const B& b, backend_vector<B, const double> weights, F f, M... in) {
  auto rows = b.template allocate<S>(1, weights.size);
  b.reduce_rows(rows.view().flat(), S{}, add_row_sums<S>{}, f, in...);
  const backend_vector<B, const S> crows = rows.view().flat();
  return b.transform_reduce(S{}, add_row_sums<S>{}, weight_row_sums<S>{}, weights, crows);
}

// The generic path of the clipped per-token losses (PPO-clip, the clipped value loss): `math(x, x_old,
// target)`, in double, gives a token's terms with its gradient `.grad`; when d_x is not empty one element
// pass writes w_r * grad (0 on masked positions), then the row sums of `token_sums` are weighted by w.
template <class S, class B, class T, class Math, class TokenSums>
S clipped_token_loss_generic(const B& b, backend_matrix<B, const T> x, backend_matrix<B, const T> x_old,
                             backend_matrix<B, const T> target, backend_matrix<B, const mask_type> mask,
                             backend_vector<B, const double> w, backend_matrix<B, T> d_x, Math math,
                             TokenSums token_sums) {
  if (d_x.data != nullptr) {
    const std::size_t cols = x.cols;
    b.for_each_index(x.size(), [=] RLHF_HOST_DEVICE(std::size_t i) {
      if (!mask.data[i]) {
        d_x.data[i] = T(0);
        return;
      }
      const auto k = math(static_cast<double>(x.data[i]), static_cast<double>(x_old.data[i]),
                          static_cast<double>(target.data[i]));
      d_x.data[i] = static_cast<T>(w.data[i / cols] * k.grad);
    });
  }
  return weighted_row_sums<S>(b, w, token_sums, x, x_old, target, mask);
}

// Partial sums of a loss linear in its input: coefficient * sum w m x.
struct linear_row_sums {
  double loss = 0, value = 0, tokens = 0;
  RLHF_HOST_DEVICE linear_row_sums operator+(const linear_row_sums& o) const {
    return {loss + o.loss, value + o.value, tokens + o.tokens};
  }
};
template <class T>
struct linear_token_sums {
  RLHF_HOST_DEVICE linear_row_sums operator()(std::size_t, T x, mask_type m) const {
    if (!m) return {};
    const double v = static_cast<double>(x);
    return {v, v, 1.0};
  }
};

// loss = coefficient * sum_r w_r sum_t m x; d_x = coefficient * w_r * m (written when d_x is not empty).
// Shared by rlhf::aggregate, the entropy bonus, SFT and PTX. Returns the sums (loss already scaled).
template <class B, class T>
linear_row_sums linear_loss_generic(const B& b, backend_matrix<B, const T> x, backend_matrix<B, const mask_type> mask,
                                    backend_matrix<B, T> d_x, double coefficient, const loss_aggregation& agg) {
  auto wbuf = allocate_row_weights(b, x.rows);
  row_weights_unchecked(b, mask, agg, wbuf.view().flat());
  const backend_vector<B, const double> w = wbuf.view().flat();
  if (d_x.data != nullptr) {
    const std::size_t cols = x.cols;
    b.for_each_index(x.size(), [=] RLHF_HOST_DEVICE(std::size_t i) {
      d_x.data[i] = mask.data[i] ? static_cast<T>(coefficient * w.data[i / cols]) : T(0);
    });
  }
  linear_row_sums s = weighted_row_sums<linear_row_sums>(b, w, linear_token_sums<T>{}, x, mask);
  s.loss *= coefficient;
  return s;
}

template <class B, class T>
linear_row_sums linear_loss_dispatch(const B& b, backend_matrix<B, const T> x, backend_matrix<B, const mask_type> mask,
                                     backend_matrix<B, T> d_x, double coefficient, const loss_aggregation& agg) {
  if constexpr (requires(double& l, double& v, double& n) {
                  rlhf_specialized_linear_loss(b, x, mask, d_x, coefficient, static_cast<int>(agg.mode),
                                               agg.global_token_count, agg.global_sequence_count, agg.norm_length,
                                               l, v, n);
                }) {
    linear_row_sums s{};
    rlhf_specialized_linear_loss(b, x, mask, d_x, coefficient, static_cast<int>(agg.mode), agg.global_token_count,
                                 agg.global_sequence_count, agg.norm_length, s.loss, s.value, s.tokens);
    return s;
  } else {
    return linear_loss_generic(b, x, mask, d_x, coefficient, agg);
  }
}
}  // namespace detail

/// Per-row weights of the aggregation: loss = sum_r weights[r] * sum_t mask[r, t] * l[r, t] for any
/// per-token loss l. Rows without a valid token get weight 0 and are not counted as sequences.
/// @tparam B backend (rlhf::reduce_backend)
/// @param b backend handle
/// @param mask validity [B, T]
/// @param agg aggregation mode and optional global counts
/// @param weights output [B] (caller-allocated)
/// @return this batch's valid-token and non-empty-sequence counts (all-reduce them for global counts)
template <class B>
aggregation_counts aggregation_row_weights(const B& b, backend_matrix<B, const mask_type> mask,
                                           const loss_aggregation& agg, backend_vector<B, double> weights) {
  detail::check_reduce_backend<B>();
  constexpr std::string_view fn = "rlhf::aggregation_row_weights";
  detail::check_aggregation(fn, agg);
  detail::check_size(fn, "weights", weights, mask.rows, "(the rows of 'mask')");
  return detail::row_weights_unchecked(b, mask, agg, weights);
}

/// Aggregates a per-token loss [B, T] into one scalar with the given mode (see rlhf::aggregation_mode).
/// Allocates a [B] scratch vector of doubles for the row weights.
/// @tparam B backend (rlhf::reduce_backend)
/// @tparam TX element type of the loss: float or double, const or not
/// @param b backend handle
/// @param per_token_loss l [B, T]
/// @param mask validity [B, T]; masked positions are ignored whatever they hold
/// @param agg aggregation mode and optional global counts
/// @return sum_r w_r sum_t m_rt l_rt (0 when no position is valid)
template <class B, class TX>
double aggregate(const B& b, matrix_view<TX, detail::space_of<B>> per_token_loss,
                 backend_matrix<B, const mask_type> mask, const loss_aggregation& agg = {}) {
  using T = std::remove_const_t<TX>;
  static_assert(std::is_floating_point_v<T>, "rlhf::aggregate: the loss must hold float or double");
  detail::check_reduce_backend<B>();
  constexpr std::string_view fn = "rlhf::aggregate";
  const backend_matrix<B, const T> l = per_token_loss;
  detail::check_same_shape(fn, "mask", mask, "per_token_loss", l);
  detail::check_aggregation(fn, agg);
  detail::check_finite(b, fn, "per_token_loss", l);
  return detail::linear_loss_dispatch(b, l, mask, backend_matrix<B, T>{}, 1.0, agg).loss;
}

}  // namespace rlhf
