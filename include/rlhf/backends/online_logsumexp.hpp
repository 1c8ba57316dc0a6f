/// @file online_logsumexp.hpp
/// @brief The online logsumexp state of one row of logits (running maximum, rescaled sum, entropy sum),
/// shared by the generic token log-prob path (rlhf/ops/token_logprobs.hpp) and the backends' kernels.
///
/// Milakov & Gimelshein 2018, "Online normalizer calculation for softmax": one read of a row gives its
/// logsumexp; the same rescaling keeps the entropy's weighted sum. `add` folds one element, `merge` folds
/// the state of another part of the row (so a parallel kernel can split a row across threads and combine
/// the parts in any tree), `finish` turns the state into log p(y), logsumexp and entropy. Every function is
/// host-and-device code: the CPU tests exercise exactly what the GPU kernels run.
#pragma once

#include <cmath>
#include <cstddef>
#include <limits>
#include <type_traits>

#include "rlhf/backends/bfloat16.hpp"
#include "rlhf/backends/polynomial_exp.hpp"
#include "rlhf/config.hpp"

namespace rlhf::detail {

inline constexpr double logp_inf = std::numeric_limits<double>::infinity();

/// Online logsumexp of one row with the entropy's weighted sum (Milakov & Gimelshein 2018).
/// State after elements x_1..x_n (raw logits; u = x * inv_t):
///   m = max_i x_i,   s = sum_i e^(u_i - m inv_t),   w = sum_i e^(u_i - m inv_t) (u_i - m inv_t),
/// so logsumexp(u) = m inv_t + log s and H = log s - w / s. A new maximum x' rescales by
/// r = e^((m - x') inv_t): s' = r s, w' = r (w + s (m - x') inv_t). Elements equal to -inf are skipped
/// (probability 0); the state starts at m = -inf, s = w = 0.
///
/// Acc is the arithmetic: double (`logp_online_state`, what every path finishes in), or float for the runs of
/// float and bfloat16 logits that a GPU thread folds before widening them (logp_strided_partial below):
/// float's exp is rlhf::detail::polynomial_exp, double's the library exp.
template <class Acc>
struct logp_online_state_of {
  static constexpr Acc inf = std::numeric_limits<Acc>::infinity();
  Acc m = -inf;
  Acc s = 0;
  Acc w = 0;

  RLHF_HOST_DEVICE RLHF_FORCE_INLINE static Acc exp_of(Acc x) {
    if constexpr (std::is_same_v<Acc, float>) {
      return polynomial_exp(x);
    } else {
      return exp(x);
    }
  }

  RLHF_HOST_DEVICE RLHF_FORCE_INLINE void add(Acc x, Acc inv_t) {
    if (x > m) {
      if (s > Acc(0)) {
        const Acc d = (m - x) * inv_t;
        const Acc r = exp_of(d);
        w = r * (w + s * d);
        s = r * s;
      }
      s += Acc(1);  // the new maximum contributes e^0 = 1 and (u - max) = 0 to w
      m = x;
    } else if (!(x == -inf)) {  // NaN falls through here and poisons s: NaN in, NaN out.
      const Acc d = (x - m) * inv_t;
      const Acc e = exp_of(d);
      s += e;
      if (e > Acc(0)) w += e * d;
    }
  }

  /// Folds in the state `o` of another part of the same row (any split, any order): the result is the
  /// state of the union, up to rounding. With both parts rescaled to the larger maximum M,
  /// s = s_a e^((m_a - M) inv_t) + s_b e^((m_b - M) inv_t), and each part's w moves by s (m - M) inv_t
  /// before the same scaling. Parallel kernels give each thread a strided part of the row and merge the
  /// states in a tree (rlhf/backends/cuda/token_logprobs.cuh). An empty state (s == 0) changes nothing; a
  /// NaN sum propagates.
  RLHF_HOST_DEVICE RLHF_FORCE_INLINE void merge(const logp_online_state_of& o, Acc inv_t) {
    if (o.s == Acc(0)) return;
    if (s == Acc(0)) {
      *this = o;
      return;
    }
    if (o.m > m) {  // rescale this part to the other's maximum
      const Acc d = (m - o.m) * inv_t;
      const Acc r = exp_of(d);
      w = o.w + r * (w + s * d);
      s = o.s + r * s;
      m = o.m;
    } else {
      const Acc d = (o.m - m) * inv_t;
      const Acc r = exp_of(d);
      w += r * (o.w + o.s * d);
      s += r * o.s;
    }
  }

  /// The row's results from its final state and its token's raw logit z_y: log p(y), logsumexp(u) and the
  /// entropy H (see the file comment).
  RLHF_HOST_DEVICE RLHF_FORCE_INLINE void finish(double zy, double inv_t, double& logp, double& lse,
                                                 double& entropy) const {
    // A +inf logit leaves no finite distribution: NaN results, like a NaN logit (a finite s would give -inf).
    const double log_s = m == logp_inf ? logp_inf - logp_inf : log(s);
    // logp = u_y - (m inv_t + log s) = (z_y - m) inv_t - log s: the difference of raw logits first.
    logp = (zy - m) * inv_t - log_s;
    lse = m * inv_t + log_s;
    entropy = log_s - w / s;
  }
};

/// The state every path finishes in.
using logp_online_state = logp_online_state_of<double>;

/// Elements of a row a float run of logp_strided_partial folds before it is merged into double: each float
/// sum adds at most 64 terms (as the generic float rows' chunks of rlhf/ops/token_logprobs.hpp).
inline constexpr std::size_t logp_float_run = 64;

/// The state of elements first, first + stride, first + 2 stride, ... of a row of v raw logits: what one thread
/// of a parallel kernel folds before the threads' states are merged (rlhf/backends/cuda/token_logprobs.cuh
/// calls it with its thread index and block size). double logits are folded in double; float and bfloat16
/// logits in float (widened as read), logp_float_run elements per run, each run's state merged into the
/// double result, so the per-element work is float arithmetic (a GPU's float rate, not its double rate)
/// while no float sum holds more than 64 terms.
template <class L>
RLHF_HOST_DEVICE inline logp_online_state logp_strided_partial(const L* row, std::size_t v, std::size_t first,
                                                               std::size_t stride, double inv_t) {
  logp_online_state st;
  if constexpr (std::is_same_v<L, double>) {
    for (std::size_t j = first; j < v; j += stride) st.add(row[j], inv_t);
  } else {
    const float it = static_cast<float>(inv_t);
    for (std::size_t j = first; j < v;) {
      logp_online_state_of<float> run;
      for (std::size_t n = 0; n < logp_float_run && j < v; ++n, j += stride) run.add(logit_as_float(row[j]), it);
      st.merge({static_cast<double>(run.m), static_cast<double>(run.s), static_cast<double>(run.w)}, inv_t);
    }
  }
  return st;
}

/// d loss / d z_j for one element of a row in the backward of the token log-probs, from the forward's
/// logsumexp (and entropy H): with log p_j = z_j / t - logsumexp,
///   (g (1[j == y] - p_j) - gh p_j (log p_j + H)) / t,
/// the entropy term 0 where p_j = 0 (a -inf logit). g = d loss / d log p(y), gh = d loss / d H.
/// Shared by the generic row functor and the kernels, so both compute the same expression.
RLHF_HOST_DEVICE RLHF_FORCE_INLINE double logp_backward_element(double z, bool is_token, double lse, double g,
                                                                double gh, double h, double inv_t) {
  const double lp = z * inv_t - lse;  // log p_j
  const double p = exp(lp);
  double d = -g * p;
  if (p > 0.0) d -= gh * p * (lp + h);
  if (is_token) d += g;
  return d * inv_t;
}

/// logp_backward_element in float, for the columns other than the token's of float and bfloat16 logits (the
/// generic backward row and the CUDA kernel use it; the token's column stays in double). log p_j =
/// (z_j - c) / t + corr with c = lse t rounded to float and corr = c / t - lse formed once in double, so
/// z_j - c is exact for the logits near the top that carry the probability (also at magnitude 1e4, where
/// z_j / t - lse in float would lose three digits), and p_j = polynomial_exp(log p_j).
struct logp_backward_float {
  float c, corr, inv_t, g, gh, h;

  /// The row's constants from its logsumexp, the gradients g = d loss / d log p(y) and gh = d loss / d H, the
  /// entropy H and 1 / t.
  RLHF_HOST_DEVICE RLHF_FORCE_INLINE static logp_backward_float of(double lse, double g, double gh, double h,
                                                                  double inv_t) {
    const float c = static_cast<float>(lse / inv_t);
    return {c, static_cast<float>(static_cast<double>(c) * inv_t - lse), static_cast<float>(inv_t),
            static_cast<float>(g), static_cast<float>(gh), static_cast<float>(h)};
  }

  /// d loss / d z for a column that is not the token's.
  RLHF_HOST_DEVICE RLHF_FORCE_INLINE float operator()(float z) const {
    const float lp = (z - c) * inv_t + corr;
    const float p = polynomial_exp(lp);
    const float entropy_term = p > 0.0f ? gh * p * (lp + h) : 0.0f;  // 0 where p = 0 (a -inf logit)
    return (-g * p - entropy_term) * inv_t;
  }
};

}  // namespace rlhf::detail
