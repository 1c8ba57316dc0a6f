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
#include <limits>

#include "rlhf/config.hpp"

namespace rlhf::detail {

inline constexpr double logp_inf = std::numeric_limits<double>::infinity();

/// Online logsumexp of one row with the entropy's weighted sum (Milakov & Gimelshein 2018).
/// State after elements x_1..x_n (raw logits; u = x * inv_t):
///   m = max_i x_i,   s = sum_i e^(u_i - m inv_t),   w = sum_i e^(u_i - m inv_t) (u_i - m inv_t),
/// so logsumexp(u) = m inv_t + log s and H = log s - w / s. A new maximum x' rescales by
/// r = e^((m - x') inv_t): s' = r s, w' = r (w + s (m - x') inv_t). Elements equal to -inf are skipped
/// (probability 0); the state starts at m = -inf, s = w = 0.
struct logp_online_state {
  double m = -logp_inf;
  double s = 0.0;
  double w = 0.0;

  RLHF_HOST_DEVICE RLHF_FORCE_INLINE void add(double x, double inv_t) {
    if (x > m) {
      if (s > 0.0) {
        const double d = (m - x) * inv_t;
        const double r = exp(d);
        w = r * (w + s * d);
        s = r * s;
      }
      s += 1.0;  // the new maximum contributes e^0 = 1 and (u - max) = 0 to w
      m = x;
    } else if (!(x == -logp_inf)) {  // NaN falls through here and poisons s: NaN in, NaN out.
      const double d = (x - m) * inv_t;
      const double e = exp(d);
      s += e;
      if (e > 0.0) w += e * d;
    }
  }

  /// Folds in the state `o` of another part of the same row (any split, any order): the result is the
  /// state of the union, up to rounding. With both parts rescaled to the larger maximum M,
  /// s = s_a e^((m_a - M) inv_t) + s_b e^((m_b - M) inv_t), and each part's w moves by s (m - M) inv_t
  /// before the same scaling. Parallel kernels give each thread a strided part of the row and merge the
  /// states in a tree (rlhf/backends/cuda/token_logprobs.cuh). An empty state (s == 0) changes nothing; a
  /// NaN sum propagates.
  RLHF_HOST_DEVICE RLHF_FORCE_INLINE void merge(const logp_online_state& o, double inv_t) {
    if (o.s == 0.0) return;
    if (s == 0.0) {
      *this = o;
      return;
    }
    if (o.m > m) {  // rescale this part to the other's maximum
      const double d = (m - o.m) * inv_t;
      const double r = exp(d);
      w = o.w + r * (w + s * d);
      s = o.s + r * s;
      m = o.m;
    } else {
      const double d = (o.m - m) * inv_t;
      const double r = exp(d);
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

}  // namespace rlhf::detail
