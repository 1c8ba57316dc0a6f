/// @file token_logprobs.hpp
/// @brief Token log-probabilities, entropy and exact full-vocabulary KL from logits, fused, one pass per row.
///
/// For a row of logits z (one position of one sequence, V vocabulary entries) and temperature t,
/// `u = z / t`, `lse = logsumexp(u)`, and
///
///     logp(y) = u_y - lse                                   (log-softmax gathered at the token y)
///     H       = lse - sum_v softmax(u)_v * u_v              (entropy of the sampling distribution)
///     KL(p||q)= sum_v p_v (log p_v - log q_v)               (exact, over the whole vocabulary)
///
/// Each is computed in one read of the row with the online (running max, rescaled sum) logsumexp
/// (Milakov & Gimelshein 2018, "Online normalizer calculation for softmax"): no [rows, V] temporary is
/// made, the extra memory is O(rows). The generic path reads a float row twice instead (its maximum, then
/// the sums with a vectorizable float exp, rlhf/backends/polynomial_exp.hpp), which is 7x faster than the
/// online pass's double exp per element; double rows and the backends' kernels keep the online pass. The
/// backward of each is one more pass that reads the row and writes its gradient (the output may alias the
/// logits). docs/algorithms.md has the derivations.
///
/// The policy log-probabilities `log pi(a_t|s_t)` of Ouyang et al. 2022 (InstructGPT), eq. 2, and the
/// PPO ratio (Schulman et al. 2017, PPO, eq. 6) are built from `logp`; the entropy bonus from `H`.
///
/// Numerics: sums are accumulated in double for float and double inputs (the generic float path adds float
/// partial sums of 64 terms into double, and its exp is within 1.5e-7 of exact); the running maximum is kept
/// in logit units so `z - max` is formed before scaling by 1/t (exact for nearby values), and the
/// entropy's weighted sum is kept relative to the maximum, so logits of magnitude 1e4 neither overflow
/// nor lose the small differences that matter. `-inf` logits (top-k / top-p filtered vocabulary
/// entries) contribute probability 0 and never produce `0 * inf` NaNs. A valid row whose logits are
/// all `-inf` has no distribution: its results are NaN. NaN or `+inf` logits give NaN; the opt-in
/// finite check (rlhf::set_finite_checks) rejects them while still accepting `-inf`.
#pragma once

#include <cmath>
#include <cstddef>
#include <limits>
#include <string>
#include <string_view>
#include <type_traits>

#include "rlhf/backends/bfloat16.hpp"
#include "rlhf/backends/checks.hpp"
#include "rlhf/backends/concepts.hpp"
#include "rlhf/backends/online_logsumexp.hpp"
#include "rlhf/backends/polynomial_exp.hpp"
#include "rlhf/backends/view.hpp"
#include "rlhf/config.hpp"
#include "rlhf/error.hpp"

namespace rlhf {

/// Options of rlhf::token_logprobs and rlhf::token_logprobs_backward.
struct token_logprob_options {
  /// Softmax temperature t: logits are divided by t before the log-softmax. Finite and > 0.
  /// InstructGPT (and the log-probs of every peer by default): 1.
  double temperature = 1.0;

  /// InstructGPT (Ouyang et al. 2022) and ZGL, TRL0, DSC, ORL, VERL, NEMO defaults: temperature 1.
  static token_logprob_options instructgpt() { return {}; }
  /// TRL1 (`trl/experimental/ppo`): logits divided by `temperature + 1e-7` with temperature 0.7, so the
  /// log-probs (and the KL built from them) are those of the sampling distribution.
  static token_logprob_options trl1() { return {0.7 + 1e-7}; }
  /// A given sampling temperature (ORL `log_probs_from_logits(..., temperature)`, VERL `rollout.temperature`).
  static token_logprob_options with_temperature(double t) { return {t}; }
};

/// Options of rlhf::full_kl and rlhf::full_kl_backward.
struct full_kl_options {
  /// Temperature t applied to both logit sets (p = softmax(z_p / t), q = softmax(z_q / t)). Finite, > 0.
  double temperature = 1.0;

  /// InstructGPT has no full-vocabulary KL; TRL0's `kl_penalty="full"` uses temperature 1.
  static full_kl_options instructgpt() { return {}; }
  /// TRL0 `kl_penalty="full"`: `F.kl_div(ref_logprob, logprob, log_target=True).sum(-1)` at temperature 1.
  static full_kl_options trl0() { return {}; }
  /// TRL1 temperature convention (0.7 + 1e-7) applied to both logit sets.
  static full_kl_options trl1() { return {0.7 + 1e-7}; }
};

/// What rlhf::token_logprobs returns.
struct token_logprob_stats {
  /// Number of valid rows (mask non-zero, or all rows when the mask is empty). Computed by the token-id
  /// validation at no extra cost; handy as the denominator of a token mean.
  std::size_t valid_rows = 0;
};

namespace detail {

/// Device-callable check for the opt-in finite check on logits: NaN and +inf are bad, -inf is allowed
/// (a filtered vocabulary entry).
struct logp_count_nan_or_pos_inf {
  template <class T>
  RLHF_HOST_DEVICE std::size_t operator()(T x) const {
    return ((x - x == x - x) || x < T(0)) ? 0 : 1;  // finite, or -inf: fine
  }
  RLHF_HOST_DEVICE std::size_t operator()(bfloat16 x) const { return (*this)(static_cast<float>(x)); }
};

template <class B, class T, class S>
void logp_check_logits_finite(const B& b, std::string_view function, std::string_view argument,
                              matrix_view<const T, S> logits) {
  if (!finite_checks_enabled()) return;
  const std::size_t bad = b.transform_reduce(std::size_t(0), add_sizes{}, logp_count_nan_or_pos_inf{}, logits.flat());
  if (bad != 0) {
    throw non_finite_error(argument_message(function, argument,
                                            "values that are finite or -inf (the opt-in finite check is on)",
                                            std::to_string(bad) + " NaN/+inf element(s)"));
  }
}

/// Accumulator of the token-id validation: valid rows and valid rows whose id is outside [0, V).
struct logp_token_count {
  std::size_t valid = 0;
  std::size_t bad = 0;
};
struct logp_token_count_add {
  RLHF_HOST_DEVICE logp_token_count operator()(logp_token_count a, logp_token_count c) const {
    return {a.valid + c.valid, a.bad + c.bad};
  }
};
struct logp_token_check {
  std::size_t vocab = 0;
  RLHF_HOST_DEVICE logp_token_count operator()(token_type y) const {
    return {1, (y < 0 || static_cast<std::size_t>(y) >= vocab) ? std::size_t(1) : std::size_t(0)};
  }
  RLHF_HOST_DEVICE logp_token_count operator()(token_type y, mask_type k) const {
    if (k == 0) return {0, 0};  // masked rows may hold pads such as -100
    return (*this)(y);
  }
};

/// Validates token ids of valid rows (one transform_reduce over rows); returns the valid-row count.
template <class B, class S>
std::size_t logp_check_tokens(const B& b, std::string_view function, vector_view<const token_type, S> tokens,
                              vector_view<const mask_type, S> mask, std::size_t vocab) {
  if (tokens.size == 0) return 0;
  const logp_token_count c =
      mask.empty() ? b.transform_reduce(logp_token_count{}, logp_token_count_add{}, logp_token_check{vocab}, tokens)
                   : b.transform_reduce(logp_token_count{}, logp_token_count_add{}, logp_token_check{vocab}, tokens,
                                        mask);
  if (c.bad != 0) {
    throw_argument_error(function, "tokens",
                         "ids in [0, " + std::to_string(vocab) + ") (the vocabulary size, columns of 'logits') at valid rows",
                         std::to_string(c.bad) + " id(s) out of range");
  }
  return c.valid;
}

template <class T, class S>
void logp_check_optional_size(std::string_view function, std::string_view argument, vector_view<T, S> v,
                              std::size_t rows) {
  if (v.data == nullptr && v.size == 0) return;
  check_size(function, argument, v, rows, "(one per row of 'logits', or empty for none)");
}

template <class T, class S>
void logp_check_vocab(std::string_view function, std::string_view argument, matrix_view<T, S> logits) {
  if (logits.rows != 0 && logits.cols == 0) {
    throw_argument_error(function, argument, "at least one column (the vocabulary)", shape_string(logits));
  }
}

// ---------------------------------------------------------------------------------------------------
// Generic per-row functors (one self-contained row loop each: a device backend runs one row per block).

/// Columns per float partial sum of the generic float rows: each float sum adds at most 64 positive terms
/// (relative error under 64 float ulps, in practice a few), and the partial sums go to double.
inline constexpr std::size_t logp_float_chunk = 64;

/// The generic forward of a float row in two vectorizable passes: the maximum m, then
/// s = sum_v e^((z_v - m) / t) and w = sum_v e^(...) (z_v - m) / t with rlhf::detail::polynomial_exp, in float
/// over chunks of logp_float_chunk columns added into double. The online pass's double exp per element kept
/// this path at 0.17 G elements/s (docs/benchmarks.md). Returns false, leaving the row to the online pass,
/// when m is not finite (all -inf, +inf, or no comparison succeeded because of NaN): there that pass gives
/// the documented NaN results. A NaN among finite logits makes s NaN here too.
/// bfloat16 rows take the same passes, each element widened to float as it is read.
template <class L>
RLHF_HOST_DEVICE inline bool logp_row_two_pass(const L* row, std::size_t v, double inv_t, double& s_out,
                                               double& w_out, double& max_out) {
  constexpr float inf = std::numeric_limits<float>::infinity();
  float m = -inf;
  RLHF_SIMD_LOOP(reduction(max : m))
  for (std::size_t j = 0; j < v; ++j) {
    const float x = logit_as_float(row[j]);
    m = x > m ? x : m;
  }
  if (!(m > -inf && m < inf)) return false;
  const float it = static_cast<float>(inv_t);
  double s = 0.0, w = 0.0;
  for (std::size_t j0 = 0; j0 < v; j0 += logp_float_chunk) {
    const std::size_t j1 = j0 + logp_float_chunk < v ? j0 + logp_float_chunk : v;
    float cs = 0.0f, cw = 0.0f;
    RLHF_SIMD_LOOP(reduction(+ : cs, cw))
    for (std::size_t j = j0; j < j1; ++j) {
      const float d = (logit_as_float(row[j]) - m) * it;  // the difference of raw logits first, as in the online pass
      const float e = polynomial_exp(d);
      cs += e;
      cw += e > 0.0f ? e * d : 0.0f;  // a -inf logit: e = 0, d = -inf, and no 0 * inf
    }
    s += static_cast<double>(cs);
    w += static_cast<double>(cw);
  }
  s_out = s;
  w_out = w;
  max_out = static_cast<double>(m);
  return true;
}

/// Forward: logp, logsumexp and entropy of row r in one pass. L: the logits' element type (T, or bfloat16
/// with T = float).
template <class T, class S, class L = T>
struct token_logprobs_row {
  matrix_view<const L, S> logits;
  vector_view<const token_type, S> tokens;
  vector_view<const mask_type, S> mask;
  vector_view<T, S> logprobs;
  vector_view<T, S> logsumexp;
  vector_view<T, S> entropy;
  double inv_t;

  RLHF_HOST_DEVICE void operator()(std::size_t r) const {
    if (!mask.empty() && mask[r] == 0) {
      logprobs[r] = T(0);
      if (!logsumexp.empty()) logsumexp[r] = T(0);
      if (!entropy.empty()) entropy[r] = T(0);
      return;
    }
    const std::size_t v = logits.cols;
    const L* row = logits.data + r * v;
    logp_online_state st;
    bool done = false;
    if constexpr (std::is_same_v<L, float> || std::is_same_v<L, bfloat16>) {
      done = logp_row_two_pass(row, v, inv_t, st.s, st.w, st.m);
    }
    if (!done) {
      for (std::size_t j = 0; j < v; ++j) st.add(static_cast<double>(row[j]), inv_t);
    }
    double lp = 0.0, lse = 0.0, h = 0.0;
    st.finish(static_cast<double>(row[static_cast<std::size_t>(tokens[r])]), inv_t, lp, lse, h);
    logprobs[r] = static_cast<T>(lp);
    if (!logsumexp.empty()) logsumexp[r] = static_cast<T>(lse);
    if (!entropy.empty()) entropy[r] = static_cast<T>(h);
  }
};

/// Backward: d logits of row r in one pass (may write over the logits). L: the logits' and their gradient's
/// element type (T, or bfloat16 with T = float: the gradient is computed in float and rounded once).
template <class T, class S, class L = T>
struct token_logprobs_backward_row {
  matrix_view<const L, S> logits;
  vector_view<const token_type, S> tokens;
  vector_view<const mask_type, S> mask;
  vector_view<const T, S> logsumexp;
  vector_view<const T, S> d_logprobs;
  vector_view<const T, S> entropy;
  vector_view<const T, S> d_entropy;
  matrix_view<L, S> dlogits;
  double inv_t;

  RLHF_HOST_DEVICE void operator()(std::size_t r) const {
    const std::size_t v = logits.cols;
    const L* row = logits.data + r * v;
    L* out = dlogits.data + r * v;
    if (!mask.empty() && mask[r] == 0) {
      for (std::size_t j = 0; j < v; ++j) out[j] = L(0.0f);
      return;
    }
    const double g = d_logprobs.empty() ? 0.0 : static_cast<double>(d_logprobs[r]);
    const double gh = d_entropy.empty() ? 0.0 : static_cast<double>(d_entropy[r]);
    const double h = entropy.empty() ? 0.0 : static_cast<double>(entropy[r]);
    const double lse = static_cast<double>(logsumexp[r]);
    const std::size_t y = static_cast<std::size_t>(tokens[r]);
    if constexpr (std::is_same_v<L, float> || std::is_same_v<L, bfloat16>) {
      const double zy = static_cast<double>(row[y]);  // read first: out may be the logits
      backward_float(row, out, v, lse, g, gh, h);
      out[y] = static_cast<L>(logp_backward_element(zy, true, lse, g, gh, h, inv_t));
    } else {
      for (std::size_t j = 0; j < v; ++j) {
        out[j] = static_cast<L>(logp_backward_element(static_cast<double>(row[j]), j == y, lse, g, gh, h, inv_t));
      }
    }
  }

  // logp_backward_float (rlhf/backends/online_logsumexp.hpp) over every column, vectorizable; the caller
  // redoes the token's column in double.
  RLHF_HOST_DEVICE void backward_float(const L* row, L* out, std::size_t v, double lse, double g, double gh,
                                       double h) const {
    const logp_backward_float element = logp_backward_float::of(lse, g, gh, h, inv_t);
    RLHF_SIMD_LOOP()
    for (std::size_t j = 0; j < v; ++j) out[j] = static_cast<L>(element(logit_as_float(row[j])));
  }
};

/// Forward of the full KL of row r: one pass over both logit rows.
/// Keeps the online state of p (mp, sp) and q (mq, sq) and w = sum_v e^(a_v) (a_v - b_v) with
/// a_v = (zp_v - mp) / t, b_v = (zq_v - mq) / t, so KL = w / sp - log sp + log sq: every term is bounded
/// by the spread of the logits, not their magnitude. An entry with q_v = 0 (zq_v = -inf) where
/// p_v > 0 makes KL = +inf; it is recorded by a flag rather than folded into w.
template <class T, class S>
struct full_kl_row {
  matrix_view<const T, S> logits_p;
  matrix_view<const T, S> logits_q;
  vector_view<const mask_type, S> mask;
  vector_view<T, S> kl;
  vector_view<T, S> logsumexp_p;
  vector_view<T, S> logsumexp_q;
  double inv_t;

  RLHF_HOST_DEVICE void operator()(std::size_t r) const {
    if (!mask.empty() && mask[r] == 0) {
      kl[r] = T(0);
      if (!logsumexp_p.empty()) logsumexp_p[r] = T(0);
      if (!logsumexp_q.empty()) logsumexp_q[r] = T(0);
      return;
    }
    const std::size_t v = logits_p.cols;
    const T* zp = logits_p.data + r * v;
    const T* zq = logits_q.data + r * v;
    double mp = -logp_inf, sp = 0.0, mq = -logp_inf, sq = 0.0, w = 0.0;
    bool q_zero = false;
    for (std::size_t j = 0; j < v; ++j) {
      const double x = static_cast<double>(zp[j]);
      const double y = static_cast<double>(zq[j]);
      const bool y_minus_inf = y == -logp_inf;
      double b = 0.0;
      if (y_minus_inf) {
        if (!(x == -logp_inf)) q_zero = true;
      } else if (y > mq) {
        if (sq > 0.0) {
          const double d = (mq - y) * inv_t;
          sq *= exp(d);
          w -= sp * d;  // every b_v of the terms in w moves by (mq - y) / t
        }
        sq += 1.0;
        mq = y;
      } else {
        b = (y - mq) * inv_t;
        sq += exp(b);
      }
      if (x > mp) {
        if (sp > 0.0) {
          const double d = (mp - x) * inv_t;
          const double rr = exp(d);
          w = rr * (w + sp * d);
          sp *= rr;
        }
        sp += 1.0;
        mp = x;
        if (!y_minus_inf) w += -b;  // a = 0, weight 1
      } else if (!(x == -logp_inf)) {
        const double a = (x - mp) * inv_t;
        const double e = exp(a);
        sp += e;
        if (e > 0.0 && !y_minus_inf) w += e * (a - b);
      }
    }
    const double log_sp = log(sp), log_sq = log(sq);
    double value = w / sp - log_sp + log_sq;
    if (q_zero) value = logp_inf;
    if (value < 0.0) value = 0.0;  // KL >= 0; clears rounding below zero (NaN stays NaN)
    kl[r] = static_cast<T>(value);
    if (!logsumexp_p.empty()) logsumexp_p[r] = static_cast<T>(mp * inv_t + log_sp);
    if (!logsumexp_q.empty()) logsumexp_q[r] = static_cast<T>(mq * inv_t + log_sq);
  }
};

/// Backward of the full KL w.r.t. logits_p, row r, one pass: d KL / d zp_j = p_j ((log p_j - log q_j) - KL) / t.
template <class T, class S>
struct full_kl_backward_row {
  matrix_view<const T, S> logits_p;
  matrix_view<const T, S> logits_q;
  vector_view<const mask_type, S> mask;
  vector_view<const T, S> kl;
  vector_view<const T, S> logsumexp_p;
  vector_view<const T, S> logsumexp_q;
  vector_view<const T, S> d_kl;
  matrix_view<T, S> dlogits_p;
  double inv_t;

  RLHF_HOST_DEVICE void operator()(std::size_t r) const {
    const std::size_t v = logits_p.cols;
    const T* zp = logits_p.data + r * v;
    const T* zq = logits_q.data + r * v;
    T* out = dlogits_p.data + r * v;
    if (!mask.empty() && mask[r] == 0) {
      for (std::size_t j = 0; j < v; ++j) out[j] = T(0);
      return;
    }
    const double g = static_cast<double>(d_kl[r]) * inv_t;
    const double lse_p = static_cast<double>(logsumexp_p[r]);
    const double shift = static_cast<double>(logsumexp_q[r]) - lse_p;  // log p - log q = (zp - zq)/t + shift
    const double k = static_cast<double>(kl[r]);
    for (std::size_t j = 0; j < v; ++j) {
      const double x = static_cast<double>(zp[j]);
      const double p = exp(x * inv_t - lse_p);
      double d = 0.0;
      if (p > 0.0) d = g * p * (((x - static_cast<double>(zq[j])) * inv_t + shift) - k);
      out[j] = static_cast<T>(d);
    }
  }
};

template <class B, class T, class L>
void token_logprobs_generic(const B& b, backend_matrix<B, const L> logits, backend_vector<B, const token_type> tokens,
                            backend_vector<B, const mask_type> mask, backend_vector<B, T> logprobs,
                            backend_vector<B, T> logsumexp, backend_vector<B, T> entropy, double temperature) {
  for_each_weighted_index(b, logits.rows, logits.cols, token_logprobs_row<T, typename B::memory_space, L>{
                                    logits, tokens, mask, logprobs, logsumexp, entropy, 1.0 / temperature});
}

template <class B, class T, class L>
void token_logprobs_backward_generic(const B& b, backend_matrix<B, const L> logits,
                                     backend_vector<B, const token_type> tokens, backend_vector<B, const mask_type> mask,
                                     backend_vector<B, const T> logsumexp, backend_vector<B, const T> d_logprobs,
                                     backend_vector<B, const T> entropy, backend_vector<B, const T> d_entropy,
                                     backend_matrix<B, L> dlogits, double temperature) {
  for_each_weighted_index(b, logits.rows, logits.cols, token_logprobs_backward_row<T, typename B::memory_space, L>{
                                    logits, tokens, mask, logsumexp, d_logprobs, entropy, d_entropy, dlogits,
                                    1.0 / temperature});
}

template <class B, class T>
void full_kl_generic(const B& b, backend_matrix<B, const T> logits_p, backend_matrix<B, const T> logits_q,
                     backend_vector<B, const mask_type> mask, backend_vector<B, T> kl, backend_vector<B, T> logsumexp_p,
                     backend_vector<B, T> logsumexp_q, double temperature) {
  for_each_weighted_index(b, logits_p.rows, 2 * logits_p.cols,
                          full_kl_row<T, typename B::memory_space>{logits_p, logits_q, mask, kl, logsumexp_p,
                                                                   logsumexp_q, 1.0 / temperature});
}

template <class B, class T>
void full_kl_backward_generic(const B& b, backend_matrix<B, const T> logits_p, backend_matrix<B, const T> logits_q,
                              backend_vector<B, const mask_type> mask, backend_vector<B, const T> kl,
                              backend_vector<B, const T> logsumexp_p, backend_vector<B, const T> logsumexp_q,
                              backend_vector<B, const T> d_kl, backend_matrix<B, T> dlogits_p, double temperature) {
  for_each_weighted_index(b, logits_p.rows, 2 * logits_p.cols, full_kl_backward_row<T, typename B::memory_space>{
                                      logits_p, logits_q, mask, kl, logsumexp_p, logsumexp_q, d_kl, dlogits_p,
                                      1.0 / temperature});
}

template <class B, class T, class L>
token_logprob_stats token_logprobs_impl(const B& b, backend_matrix<B, const L> logits,
                                        backend_vector<B, const token_type> tokens,
                                        backend_vector<B, const mask_type> mask, backend_vector<B, T> logprobs,
                                        backend_vector<B, T> logsumexp, backend_vector<B, T> entropy,
                                        const token_logprob_options& options) {
  static_assert(is_logit_type_v<L>, "rlhf::token_logprobs: logits must hold float, double or rlhf::bfloat16");
  detail::check_reduce_backend<B>();
  constexpr std::string_view fn = "rlhf::token_logprobs";
  const std::size_t rows = logits.rows;
  detail::logp_check_vocab(fn, "logits", logits);
  detail::check_size(fn, "tokens", tokens, rows, "(one per row of 'logits')");
  detail::logp_check_optional_size(fn, "mask", mask, rows);
  detail::check_size(fn, "logprobs", logprobs, rows, "(one per row of 'logits')");
  detail::logp_check_optional_size(fn, "logsumexp", logsumexp, rows);
  detail::logp_check_optional_size(fn, "entropy", entropy, rows);
  detail::check_positive(fn, "options.temperature", options.temperature);
  const std::size_t valid = detail::logp_check_tokens(b, fn, tokens, mask, logits.cols);
  detail::logp_check_logits_finite(b, fn, "logits", logits);
  if (rows == 0) return {0};
  const double t = options.temperature;
  if constexpr (requires { rlhf_specialized_token_logprobs(b, logits, tokens, mask, logprobs, logsumexp, entropy, t); })
    rlhf_specialized_token_logprobs(b, logits, tokens, mask, logprobs, logsumexp, entropy, t);
  else
    detail::token_logprobs_generic<B, T, L>(b, logits, tokens, mask, logprobs, logsumexp, entropy, t);
  return {valid};
}

template <class B, class T, class L>
void token_logprobs_backward_impl(const B& b, backend_matrix<B, const L> logits,
                                  backend_vector<B, const token_type> tokens, backend_vector<B, const mask_type> mask,
                                  backend_vector<B, const T> logsumexp, backend_vector<B, const T> d_logprobs,
                                  backend_vector<B, const T> entropy, backend_vector<B, const T> d_entropy,
                                  backend_matrix<B, L> dlogits, const token_logprob_options& options) {
  static_assert(is_logit_type_v<L>,
                "rlhf::token_logprobs_backward: logits must hold float, double or rlhf::bfloat16");
  detail::check_reduce_backend<B>();
  constexpr std::string_view fn = "rlhf::token_logprobs_backward";
  const std::size_t rows = logits.rows;
  detail::logp_check_vocab(fn, "logits", logits);
  detail::check_size(fn, "tokens", tokens, rows, "(one per row of 'logits')");
  detail::logp_check_optional_size(fn, "mask", mask, rows);
  detail::check_size(fn, "logsumexp", logsumexp, rows, "(one per row of 'logits', saved by the forward)");
  detail::logp_check_optional_size(fn, "d_logprobs", d_logprobs, rows);
  detail::logp_check_optional_size(fn, "d_entropy", d_entropy, rows);
  if (!d_entropy.empty()) {
    detail::check_size(fn, "entropy", entropy, rows, "(one per row of 'logits', saved by the forward, since 'd_entropy' is given)");
  } else {
    detail::logp_check_optional_size(fn, "entropy", entropy, rows);
  }
  detail::check_same_shape(fn, "dlogits", dlogits, "logits", logits);
  detail::check_positive(fn, "options.temperature", options.temperature);
  detail::logp_check_tokens(b, fn, tokens, mask, logits.cols);
  detail::logp_check_logits_finite(b, fn, "logits", logits);
  if (rows == 0) return;
  const double t = options.temperature;
  if constexpr (requires {
                  rlhf_specialized_token_logprobs_backward(b, logits, tokens, mask, logsumexp, d_logprobs, entropy,
                                                           d_entropy, dlogits, t);
                })
    rlhf_specialized_token_logprobs_backward(b, logits, tokens, mask, logsumexp, d_logprobs, entropy, d_entropy,
                                             dlogits, t);
  else
    detail::token_logprobs_backward_generic<B, T, L>(b, logits, tokens, mask, logsumexp, d_logprobs, entropy,
                                                     d_entropy, dlogits, t);
}

}  // namespace detail

/// Token log-probabilities (and optionally logsumexp and entropy) from logits, fused: one pass per row.
///
/// For each valid row r: `u = logits(r, :) / t`, `logprobs[r] = u[tokens[r]] - logsumexp(u)`,
/// `logsumexp[r] = logsumexp(u)`, `entropy[r] = logsumexp(u) - sum_v softmax(u)_v u_v`. Masked rows get 0 in
/// every output and their token id is not read (it may be a pad such as -100). No [rows, V] temporary is
/// made. A valid row whose logits are all -inf gives NaN; a valid row whose own token has logit -inf gives
/// logprobs -inf (a finite entropy).
///
/// @tparam B a reduce_backend (uses for_each_index and transform_reduce).
/// @tparam T float or double, deduced from `logprobs` (bfloat16 logits: the overload below, float outputs).
/// @param b the backend.
/// @param logits [rows, V] logits (V >= 1 when rows > 0); -inf entries are filtered vocabulary entries.
/// @param tokens [rows] token ids; at valid rows each must lie in [0, V) (checked, one reduction over rows).
/// @param mask [rows] non-zero = valid row, or empty (data == nullptr, size 0) for all rows valid.
/// @param logprobs out [rows]: log p(tokens[r]).
/// @param logsumexp optional out [rows] (empty = not wanted): logsumexp(u), needed by the backward.
/// @param entropy optional out [rows] (empty = not wanted): the softmax entropy H in nats.
/// @param options the temperature.
/// @return the number of valid rows.
/// @note Throws rlhf::invalid_argument on a shape mismatch, an out-of-range token id at a valid row, or a
///   temperature that is not finite and > 0.
template <class B, class T>
token_logprob_stats token_logprobs(const B& b, std::type_identity_t<backend_matrix<B, const T>> logits,
                                   backend_vector<B, const token_type> tokens, backend_vector<B, const mask_type> mask,
                                   backend_vector<B, T> logprobs, std::type_identity_t<backend_vector<B, T>> logsumexp = {},
                                   std::type_identity_t<backend_vector<B, T>> entropy = {},
                                   const token_logprob_options& options = {}) {
  static_assert(std::is_floating_point_v<T>, "rlhf::token_logprobs: T must be float or double");
  return detail::token_logprobs_impl<B, T, T>(b, logits, tokens, mask, logprobs, logsumexp, entropy, options);
}

/// rlhf::token_logprobs of bfloat16 logits (a model that computes its LM head in bf16): every element is
/// widened to float as it is read, sums are accumulated as for float logits (float partial sums of 64 terms
/// into double), and the outputs are float. Same contract and arguments otherwise; no float copy of the
/// logits is made.
template <class B>
token_logprob_stats token_logprobs(const B& b, backend_matrix<B, const bfloat16> logits,
                                   backend_vector<B, const token_type> tokens, backend_vector<B, const mask_type> mask,
                                   backend_vector<B, float> logprobs, backend_vector<B, float> logsumexp = {},
                                   backend_vector<B, float> entropy = {}, const token_logprob_options& options = {}) {
  return detail::token_logprobs_impl<B, float, bfloat16>(b, logits, tokens, mask, logprobs, logsumexp, entropy,
                                                          options);
}

/// Backward of rlhf::token_logprobs: d loss / d logits in one pass per row.
///
/// With `p = softmax(u)`, `u = logits / t`, for each valid row:
///
///     dlogits(r, j) = ( d_logprobs[r] * (1[j == tokens[r]] - p_j)
///                     + d_entropy[r] * (-p_j * (log p_j + H)) ) / t
///
/// (the entropy term is 0 where p_j = 0, e.g. -inf logits). Masked rows get a zero gradient.
/// `dlogits` may be the same memory as `logits` (in-place): each element is read before it is written.
///
/// @tparam B a reduce_backend.
/// @tparam T float or double, deduced from `dlogits`.
/// @param b the backend.
/// @param logits [rows, V] the logits given to the forward.
/// @param tokens [rows] the token ids given to the forward (checked again).
/// @param mask [rows] or empty, as in the forward.
/// @param logsumexp [rows] the logsumexp saved by the forward.
/// @param d_logprobs [rows] gradient of the loss w.r.t. logprobs, or empty for none (entropy gradient only).
/// @param entropy [rows] the entropy saved by the forward, or empty when `d_entropy` is empty.
/// @param d_entropy [rows] gradient of the loss w.r.t. the entropy, or empty for none.
/// @param dlogits out [rows, V] (may alias `logits`).
/// @param options the temperature (the forward's).
/// @note For float logits of magnitude M the saved float logsumexp is rounded by about M * 6e-8, which
///   is the relative error of every p_j; use double logits when |logits| / t is in the thousands.
template <class B, class T>
void token_logprobs_backward(const B& b, std::type_identity_t<backend_matrix<B, const T>> logits,
                             backend_vector<B, const token_type> tokens, backend_vector<B, const mask_type> mask,
                             std::type_identity_t<backend_vector<B, const T>> logsumexp,
                             std::type_identity_t<backend_vector<B, const T>> d_logprobs,
                             std::type_identity_t<backend_vector<B, const T>> entropy,
                             std::type_identity_t<backend_vector<B, const T>> d_entropy, backend_matrix<B, T> dlogits,
                             const token_logprob_options& options = {}) {
  static_assert(std::is_floating_point_v<T>, "rlhf::token_logprobs_backward: T must be float or double");
  detail::token_logprobs_backward_impl<B, T, T>(b, logits, tokens, mask, logsumexp, d_logprobs, entropy, d_entropy,
                                                dlogits, options);
}

/// rlhf::token_logprobs_backward of bfloat16 logits: the float statistics of the bf16 forward in, the
/// gradient computed in float per element and rounded once to bfloat16 (to nearest even) out. `dlogits` may
/// alias `logits`.
template <class B>
void token_logprobs_backward(const B& b, backend_matrix<B, const bfloat16> logits,
                             backend_vector<B, const token_type> tokens, backend_vector<B, const mask_type> mask,
                             backend_vector<B, const float> logsumexp, backend_vector<B, const float> d_logprobs,
                             backend_vector<B, const float> entropy, backend_vector<B, const float> d_entropy,
                             backend_matrix<B, bfloat16> dlogits, const token_logprob_options& options = {}) {
  detail::token_logprobs_backward_impl<B, float, bfloat16>(b, logits, tokens, mask, logsumexp, d_logprobs, entropy,
                                                           d_entropy, dlogits, options);
}

/// Exact KL(p || q) over the whole vocabulary, per row, in one pass over both logit sets.
///
/// `p = softmax(logits_p / t)` (the policy), `q = softmax(logits_q / t)` (the reference);
/// `kl[r] = sum_v p_v (log p_v - log q_v)` for valid rows, 0 for masked rows. Always >= 0 (rounding
/// below zero is cleared), +inf when q_v = 0 (logit -inf) where p_v > 0, NaN for a valid row whose
/// `logits_p` are all -inf. This is TRL0's `kl_penalty="full"` (rlhf-math.md section 2.3), computed
/// without the [rows, V] log-softmax temporaries.
///
/// @tparam B a reduce_backend.
/// @tparam T float or double, deduced from `kl`.
/// @param b the backend.
/// @param logits_p [rows, V] logits of p (the distribution the expectation is under).
/// @param logits_q [rows, V] logits of q (same shape).
/// @param mask [rows] non-zero = valid row, or empty for all rows valid.
/// @param kl out [rows].
/// @param logsumexp_p optional out [rows]: logsumexp(logits_p / t), needed by the backward.
/// @param logsumexp_q optional out [rows]: logsumexp(logits_q / t), needed by the backward.
/// @param options the temperature.
template <class B, class T>
void full_kl(const B& b, std::type_identity_t<backend_matrix<B, const T>> logits_p,
             std::type_identity_t<backend_matrix<B, const T>> logits_q, backend_vector<B, const mask_type> mask,
             backend_vector<B, T> kl, std::type_identity_t<backend_vector<B, T>> logsumexp_p = {},
             std::type_identity_t<backend_vector<B, T>> logsumexp_q = {}, const full_kl_options& options = {}) {
  detail::check_reduce_backend<B>();
  constexpr std::string_view fn = "rlhf::full_kl";
  static_assert(std::is_floating_point_v<T>, "rlhf::full_kl: T must be float or double");
  const std::size_t rows = logits_p.rows;
  detail::logp_check_vocab(fn, "logits_p", logits_p);
  detail::check_same_shape(fn, "logits_q", logits_q, "logits_p", logits_p);
  detail::logp_check_optional_size(fn, "mask", mask, rows);
  detail::check_size(fn, "kl", kl, rows, "(one per row of 'logits_p')");
  detail::logp_check_optional_size(fn, "logsumexp_p", logsumexp_p, rows);
  detail::logp_check_optional_size(fn, "logsumexp_q", logsumexp_q, rows);
  detail::check_positive(fn, "options.temperature", options.temperature);
  detail::logp_check_logits_finite(b, fn, "logits_p", logits_p);
  detail::logp_check_logits_finite(b, fn, "logits_q", logits_q);
  if (rows == 0) return;
  const double t = options.temperature;
  if constexpr (requires { rlhf_specialized_full_kl(b, logits_p, logits_q, mask, kl, logsumexp_p, logsumexp_q, t); })
    rlhf_specialized_full_kl(b, logits_p, logits_q, mask, kl, logsumexp_p, logsumexp_q, t);
  else
    detail::full_kl_generic<B, T>(b, logits_p, logits_q, mask, kl, logsumexp_p, logsumexp_q, t);
}

/// Backward of rlhf::full_kl with respect to `logits_p` (the reference logits get no gradient):
///
///     dlogits_p(r, j) = d_kl[r] * p_j * ((log p_j - log q_j) - kl[r]) / t
///
/// one pass per row, 0 where p_j = 0 and on masked rows. `dlogits_p` may alias `logits_p`. Undefined
/// (NaN) on rows whose KL is +inf.
///
/// @tparam B a reduce_backend.
/// @tparam T float or double, deduced from `dlogits_p`.
/// @param b the backend.
/// @param logits_p [rows, V] as given to the forward.
/// @param logits_q [rows, V] as given to the forward.
/// @param mask [rows] or empty, as in the forward.
/// @param kl [rows] the forward's result.
/// @param logsumexp_p [rows] saved by the forward.
/// @param logsumexp_q [rows] saved by the forward.
/// @param d_kl [rows] gradient of the loss w.r.t. kl.
/// @param dlogits_p out [rows, V] (may alias `logits_p`).
/// @param options the temperature (the forward's).
template <class B, class T>
void full_kl_backward(const B& b, std::type_identity_t<backend_matrix<B, const T>> logits_p,
                      std::type_identity_t<backend_matrix<B, const T>> logits_q, backend_vector<B, const mask_type> mask,
                      std::type_identity_t<backend_vector<B, const T>> kl,
                      std::type_identity_t<backend_vector<B, const T>> logsumexp_p,
                      std::type_identity_t<backend_vector<B, const T>> logsumexp_q,
                      std::type_identity_t<backend_vector<B, const T>> d_kl, backend_matrix<B, T> dlogits_p,
                      const full_kl_options& options = {}) {
  detail::check_reduce_backend<B>();
  constexpr std::string_view fn = "rlhf::full_kl_backward";
  static_assert(std::is_floating_point_v<T>, "rlhf::full_kl_backward: T must be float or double");
  const std::size_t rows = logits_p.rows;
  detail::logp_check_vocab(fn, "logits_p", logits_p);
  detail::check_same_shape(fn, "logits_q", logits_q, "logits_p", logits_p);
  detail::logp_check_optional_size(fn, "mask", mask, rows);
  detail::check_size(fn, "kl", kl, rows, "(one per row of 'logits_p', from the forward)");
  detail::check_size(fn, "logsumexp_p", logsumexp_p, rows, "(one per row of 'logits_p', saved by the forward)");
  detail::check_size(fn, "logsumexp_q", logsumexp_q, rows, "(one per row of 'logits_p', saved by the forward)");
  detail::check_size(fn, "d_kl", d_kl, rows, "(one per row of 'logits_p')");
  detail::check_same_shape(fn, "dlogits_p", dlogits_p, "logits_p", logits_p);
  detail::check_positive(fn, "options.temperature", options.temperature);
  detail::logp_check_logits_finite(b, fn, "logits_p", logits_p);
  detail::logp_check_logits_finite(b, fn, "logits_q", logits_q);
  if (rows == 0) return;
  const double t = options.temperature;
  if constexpr (requires {
                  rlhf_specialized_full_kl_backward(b, logits_p, logits_q, mask, kl, logsumexp_p, logsumexp_q, d_kl,
                                                    dlogits_p, t);
                })
    rlhf_specialized_full_kl_backward(b, logits_p, logits_q, mask, kl, logsumexp_p, logsumexp_q, d_kl, dlogits_p, t);
  else
    detail::full_kl_backward_generic<B, T>(b, logits_p, logits_q, mask, kl, logsumexp_p, logsumexp_q, d_kl, dlogits_p,
                                           t);
}

}  // namespace rlhf
