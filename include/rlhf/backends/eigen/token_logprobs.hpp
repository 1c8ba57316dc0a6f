/// @file token_logprobs.hpp
/// @brief The Eigen backend's kernels for rlhf::token_logprobs, rlhf::full_kl and their backwards.
///
/// Same contract as the generic path of rlhf/ops/token_logprobs.hpp (found by argument-dependent
/// lookup as `rlhf_specialized_token_logprobs[_backward]` and `rlhf_specialized_full_kl[_backward]`; the
/// arguments are already validated).
/// Rows are split across threads (eigen_backend::parallel_ranges); each row is read once, in chunks of
/// 8 KiB (2048 floats, 1024 doubles) that stay in L1 while they are used twice: once for the chunk's
/// maximum, once for the vectorized `exp` (Eigen's packet exp) and its sums. The running state is the
/// online logsumexp (Milakov & Gimelshein 2018) merged chunk by chunk:
///
///     m' = max(m, max chunk),  s' = s e^((m - m')/t) + sum_chunk e^((z - m')/t),
///     w' = e^((m - m')/t) (w + s (m - m')/t) + sum_chunk e^((z - m')/t) (z - m')/t
///
/// with the chunk sums in T and the running sums in double. Eigen's vectorized exp returns a tiny
/// positive number (about 1e-308 for double, 3e-39 for float) instead of 0 far below the maximum, so
/// exponents are clamped at -1000 before they multiply: every such term is then below 1e-300 in
/// absolute value (0 in the generic path), far under any tolerance, and -inf logits never make NaN.
///
/// bfloat16 logits (float outputs) take the float kernels: each chunk is widened into a float buffer as it is
/// read, and the backward's float gradient chunk is rounded once to bfloat16 as it is written (the token's
/// column gets its + g/t first).
#pragma once

#include <Eigen/Core>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <limits>
#include <type_traits>

#include "rlhf/backends/bfloat16.hpp"
#include "rlhf/backends/eigen.hpp"
#include "rlhf/backends/view.hpp"

namespace rlhf::backends {

namespace detail {

/// Chunk length: 8 KiB of T, so a chunk and the kernels' two temporaries fit in a 32 KiB L1.
template <class T>
inline constexpr std::size_t logp_chunk = 8192 / sizeof(T);

/// Exponents below this are clamped (see the file comment).
inline constexpr double logp_exponent_floor = -1000.0;

template <class T>
using logp_array = Eigen::Array<T, Eigen::Dynamic, 1>;
template <class T>
using logp_const_map = Eigen::Map<const Eigen::Array<T, Eigen::Dynamic, 1>>;
template <class T>
using logp_mut_map = Eigen::Map<Eigen::Array<T, Eigen::Dynamic, 1>>;

/// The chunk [c0, c0 + n) of a row as T: the row itself, or (bfloat16 logits, T = float) its elements widened
/// into `buf` (exact), so that the rest of the kernel is the float kernel.
template <class T, class L>
logp_const_map<T> logp_chunk_as(const L* row, std::size_t c0, Eigen::Index n, logp_array<T>& buf) {
  if constexpr (std::is_same_v<L, T>) {
    return logp_const_map<T>(row + c0, n);
  } else {
    T* w = buf.data();
    for (Eigen::Index j = 0; j < n; ++j) w[j] = static_cast<T>(row[c0 + static_cast<std::size_t>(j)]);
    return logp_const_map<T>(w, n);
  }
}

/// The logit types the kernels take for outputs of type T: T itself, or bfloat16 for float outputs.
template <class T, class L>
inline constexpr bool logp_eigen_logits = std::is_same_v<L, T> || (std::is_same_v<L, bfloat16> && std::is_same_v<T, float>);

/// Online state of one row: m in logit units, s and w as in the file comment.
struct logp_eigen_state {
  double m = -std::numeric_limits<double>::infinity();
  double s = 0.0;
  double w = 0.0;
  bool nan = false;
};

/// One read of a row: the online logsumexp (and the entropy's weighted sum when Entropy). `widened`: the
/// chunk buffer of bfloat16 rows (unused when L = T).
template <bool Entropy, class T, class L>
logp_eigen_state logp_eigen_row_state(const L* row, std::size_t v, double inv_t, logp_array<T>& d, logp_array<T>& e,
                                      logp_array<T>& widened) {
  constexpr T minus_inf = -std::numeric_limits<T>::infinity();
  logp_eigen_state st;
  const T it = static_cast<T>(inv_t);
  for (std::size_t c0 = 0; c0 < v; c0 += logp_chunk<T>) {
    const Eigen::Index n = static_cast<Eigen::Index>(std::min(logp_chunk<T>, v - c0));
    const logp_const_map<T> z = logp_chunk_as<T>(row, c0, n, widened);
    const T cmax = z.template maxCoeff<Eigen::PropagateNaN>();
    if (cmax != cmax || cmax == -minus_inf) {  // NaN or +inf logit: the row's results are NaN
      st.nan = true;
      return st;
    }
    if (cmax == minus_inf) continue;  // every entry filtered: probability 0, nothing to add
    if (static_cast<double>(cmax) > st.m) {
      if (st.s > 0.0) {
        const double dm = (st.m - static_cast<double>(cmax)) * inv_t;
        const double r = std::exp(dm);
        st.w = r * (st.w + st.s * dm);
        st.s *= r;
      }
      st.m = static_cast<double>(cmax);
    }
    const T mt = static_cast<T>(st.m);  // a logit value: exact in T
    if constexpr (Entropy) {
      auto ds = d.head(n);
      auto es = e.head(n);
      ds = ((z - mt) * it).max(static_cast<T>(logp_exponent_floor));
      es = ds.exp();
      st.s += static_cast<double>(es.sum());
      st.w += static_cast<double>((es * ds).sum());
    } else {
      st.s += static_cast<double>(((z - mt) * it).exp().sum());
    }
  }
  return st;
}

template <bool Entropy, class T, class L>
void logp_eigen_forward_rows(std::size_t rb, std::size_t re, matrix_view<const L, host_space> logits,
                             vector_view<const token_type, host_space> tokens,
                             vector_view<const mask_type, host_space> mask, vector_view<T, host_space> logprobs,
                             vector_view<T, host_space> logsumexp, vector_view<T, host_space> entropy, double inv_t) {
  const std::size_t v = logits.cols;
  const std::size_t len = std::min(v, logp_chunk<T>);
  logp_array<T> d(static_cast<Eigen::Index>(Entropy ? len : 0)), e(static_cast<Eigen::Index>(Entropy ? len : 0));
  logp_array<T> widened(static_cast<Eigen::Index>(std::is_same_v<L, T> ? 0 : len));
  const double qnan = std::numeric_limits<double>::quiet_NaN();
  for (std::size_t r = rb; r < re; ++r) {
    if (!mask.empty() && mask[r] == 0) {
      logprobs[r] = T(0);
      if (!logsumexp.empty()) logsumexp[r] = T(0);
      if (!entropy.empty()) entropy[r] = T(0);
      continue;
    }
    const L* row = logits.data + r * v;
    const logp_eigen_state st = logp_eigen_row_state<Entropy, T>(row, v, inv_t, d, e, widened);
    const double log_s = st.nan ? qnan : std::log(st.s);
    const double zy = static_cast<double>(row[static_cast<std::size_t>(tokens[r])]);
    logprobs[r] = static_cast<T>((zy - st.m) * inv_t - log_s);
    if (!logsumexp.empty()) logsumexp[r] = static_cast<T>(st.m * inv_t + log_s);
    if constexpr (Entropy) entropy[r] = static_cast<T>(log_s - st.w / st.s);
  }
}

template <bool Entropy, class T, class L>
void logp_eigen_backward_rows(std::size_t rb, std::size_t re, matrix_view<const L, host_space> logits,
                              vector_view<const token_type, host_space> tokens,
                              vector_view<const mask_type, host_space> mask,
                              vector_view<const T, host_space> logsumexp, vector_view<const T, host_space> d_logprobs,
                              vector_view<const T, host_space> entropy, vector_view<const T, host_space> d_entropy,
                              matrix_view<L, host_space> dlogits, double temperature) {
  constexpr bool widen = !std::is_same_v<L, T>;
  const std::size_t v = logits.cols;
  const double inv_t = 1.0 / temperature;
  const T it = static_cast<T>(inv_t);
  const std::size_t len = std::min(v, logp_chunk<T>);
  logp_array<T> lp(static_cast<Eigen::Index>(len)), p(static_cast<Eigen::Index>(len));
  // bfloat16 rows: the chunk widened, and its gradient in float before it is rounded once.
  logp_array<T> widened(static_cast<Eigen::Index>(widen ? len : 0)), grad(static_cast<Eigen::Index>(widen ? len : 0));
  for (std::size_t r = rb; r < re; ++r) {
    const L* row = logits.data + r * v;
    L* out = dlogits.data + r * v;
    if (!mask.empty() && mask[r] == 0) {
      for (std::size_t j = 0; j < v; ++j) out[j] = L(0.0f);
      continue;
    }
    const double g = d_logprobs.empty() ? 0.0 : static_cast<double>(d_logprobs[r]);
    const T gt = static_cast<T>(g * inv_t);
    // log p_j = (z_j - lse t) / t: subtracting in logit units first keeps z_j - lse t exact at t = 1.
    const T shift = static_cast<T>(static_cast<double>(logsumexp[r]) * temperature);
    T ght = T(0), h = T(0);
    if constexpr (Entropy) {
      ght = static_cast<T>(static_cast<double>(d_entropy[r]) * inv_t);
      h = entropy[r];
    }
    const std::size_t y = static_cast<std::size_t>(tokens[r]);
    for (std::size_t c0 = 0; c0 < v; c0 += logp_chunk<T>) {
      const Eigen::Index n = static_cast<Eigen::Index>(std::min(logp_chunk<T>, v - c0));
      const logp_const_map<T> z = logp_chunk_as<T>(row, c0, n, widened);
      T* o_data = nullptr;  // the gradient's chunk: the output itself, or the float buffer of a bfloat16 row
      if constexpr (widen) o_data = grad.data();
      else o_data = out + c0;
      logp_mut_map<T> o(o_data, n);
      auto lps = lp.head(n);
      auto ps = p.head(n);
      lps = ((z - shift) * it).max(static_cast<T>(logp_exponent_floor));  // reads z before o overwrites it
      ps = lps.exp();
      // d logp_y / d u_j = 1[j == y] - p_j;  d H / d u_j = -p_j (log p_j + H)  (then times 1/t).
      if constexpr (Entropy) {
        o = -gt * ps - ght * ps * (lps + h);
      } else {
        o = -gt * ps;
      }
      if constexpr (widen) {
        // The token's column gets its + g/t in float before the one rounding: rounding -g p_y to bf16 first
        // would leave an error of g 2^-8 in g (1 - p_y).
        if (y >= c0 && y - c0 < static_cast<std::size_t>(n)) {
          T& gy = grad[static_cast<Eigen::Index>(y - c0)];
          gy = static_cast<T>(static_cast<double>(gy) + g * inv_t);
        }
        for (Eigen::Index j = 0; j < n; ++j) out[c0 + static_cast<std::size_t>(j)] = L(grad[j]);
      }
    }
    if constexpr (!widen) out[y] = static_cast<T>(static_cast<double>(out[y]) + g * inv_t);
  }
}


/// The full KL of one row pair, chunked (see rlhf/ops/token_logprobs.hpp, full_kl_row, for the state):
/// returns KL and sets the two logsumexps. Chunks are half as long as for the log-probs (three temporaries).
template <class T>
double logp_eigen_kl_row(const T* zp, const T* zq, std::size_t v, double inv_t, logp_array<T>& a, logp_array<T>& bq,
                         logp_array<T>& e, double& lse_p, double& lse_q) {
  constexpr T minus_inf = -std::numeric_limits<T>::infinity();
  constexpr std::size_t chunk = logp_chunk<T> / 2;
  const T it = static_cast<T>(inv_t);
  const T floor = static_cast<T>(logp_exponent_floor);
  double mp = -std::numeric_limits<double>::infinity(), sp = 0.0, mq = mp, sq = 0.0, w = 0.0;
  bool q_zero = false;
  for (std::size_t c0 = 0; c0 < v; c0 += chunk) {
    const Eigen::Index n = static_cast<Eigen::Index>(std::min(chunk, v - c0));
    const logp_const_map<T> p(zp + c0, n), q(zq + c0, n);
    const T pmax = p.template maxCoeff<Eigen::PropagateNaN>();
    const T qmax = q.template maxCoeff<Eigen::PropagateNaN>();
    if (pmax != pmax || qmax != qmax) {
      lse_p = lse_q = std::numeric_limits<double>::quiet_NaN();
      return lse_p;
    }
    const bool p_any = pmax != minus_inf;
    // q_v = 0 where p_v > 0: KL = +inf (tested only when the chunk has a -inf in q).
    if (p_any && !q_zero && q.minCoeff() == minus_inf) q_zero = ((q == minus_inf) && (p > minus_inf)).any();
    auto as = a.head(n);
    auto bs = bq.head(n);
    auto es = e.head(n);
    if (qmax != minus_inf) {
      if (static_cast<double>(qmax) > mq) {
        if (sq > 0.0) {
          const double d = (mq - static_cast<double>(qmax)) * inv_t;
          sq *= std::exp(d);
          if (sp > 0.0) w -= sp * d;  // every b_v in w moves by (mq - mq') / t
        }
        mq = static_cast<double>(qmax);
      }
      bs = ((q - static_cast<T>(mq)) * it).max(floor);
      sq += static_cast<double>(bs.exp().sum());
    }
    if (!p_any) continue;
    if (static_cast<double>(pmax) > mp) {
      if (sp > 0.0) {
        const double d = (mp - static_cast<double>(pmax)) * inv_t;
        const double r = std::exp(d);
        w = r * (w + sp * d);
        sp *= r;
      }
      mp = static_cast<double>(pmax);
    }
    as = ((p - static_cast<T>(mp)) * it).max(floor);
    es = as.exp();
    sp += static_cast<double>(es.sum());
    if (qmax != minus_inf) w += static_cast<double>((es * (as - bs)).sum());  // else q_zero is set
  }
  const double log_sp = std::log(sp), log_sq = std::log(sq);
  lse_p = mp * inv_t + log_sp;
  lse_q = mq * inv_t + log_sq;
  double kl = w / sp - log_sp + log_sq;
  if (q_zero) kl = std::numeric_limits<double>::infinity();
  if (kl < 0.0) kl = 0.0;  // KL >= 0; NaN stays NaN
  return kl;
}

}  // namespace detail

/// Eigen kernel of rlhf::token_logprobs (arguments validated by the caller; empty optional outputs are
/// skipped). Parallel over rows, one chunked pass per row.
/// T: float or double outputs; L: the logits, T or (float outputs) bfloat16, widened chunk by chunk.
template <class T, class L>
  requires detail::logp_eigen_logits<T, L>
void rlhf_specialized_token_logprobs(const eigen_backend& b, matrix_view<const L, host_space> logits,
                                     vector_view<const token_type, host_space> tokens,
                                     vector_view<const mask_type, host_space> mask, vector_view<T, host_space> logprobs,
                                     vector_view<T, host_space> logsumexp, vector_view<T, host_space> entropy,
                                     double temperature) {
  const double inv_t = 1.0 / temperature;
  b.parallel_ranges(logits.rows, logits.rows * logits.cols, [&](std::size_t rb, std::size_t re) {
    if (entropy.empty())
      detail::logp_eigen_forward_rows<false, T>(rb, re, logits, tokens, mask, logprobs, logsumexp, entropy, inv_t);
    else
      detail::logp_eigen_forward_rows<true, T>(rb, re, logits, tokens, mask, logprobs, logsumexp, entropy, inv_t);
  });
}

/// Eigen kernel of rlhf::token_logprobs_backward (arguments validated by the caller). `dlogits` may
/// alias `logits`: each chunk is read into a temporary before its gradient is written. bfloat16 logits (float
/// statistics) get a bfloat16 gradient, computed in float and rounded once.
template <class T, class L>
  requires detail::logp_eigen_logits<T, L>
void rlhf_specialized_token_logprobs_backward(const eigen_backend& b, matrix_view<const L, host_space> logits,
                                              vector_view<const token_type, host_space> tokens,
                                              vector_view<const mask_type, host_space> mask,
                                              vector_view<const T, host_space> logsumexp,
                                              vector_view<const T, host_space> d_logprobs,
                                              vector_view<const T, host_space> entropy,
                                              vector_view<const T, host_space> d_entropy,
                                              matrix_view<L, host_space> dlogits, double temperature) {
  b.parallel_ranges(logits.rows, logits.rows * logits.cols, [&](std::size_t rb, std::size_t re) {
    if (d_entropy.empty())
      detail::logp_eigen_backward_rows<false, T>(rb, re, logits, tokens, mask, logsumexp, d_logprobs, entropy, d_entropy,
                                              dlogits, temperature);
    else
      detail::logp_eigen_backward_rows<true, T>(rb, re, logits, tokens, mask, logsumexp, d_logprobs, entropy, d_entropy,
                                             dlogits, temperature);
  });
}

/// Eigen kernel of rlhf::full_kl (arguments validated by the caller). Parallel over rows, one chunked pass
/// over both logit rows.
template <class T>
void rlhf_specialized_full_kl(const eigen_backend& b, matrix_view<const T, host_space> logits_p,
                              matrix_view<const T, host_space> logits_q, vector_view<const mask_type, host_space> mask,
                              vector_view<T, host_space> kl, vector_view<T, host_space> logsumexp_p,
                              vector_view<T, host_space> logsumexp_q, double temperature) {
  const double inv_t = 1.0 / temperature;
  const std::size_t v = logits_p.cols;
  b.parallel_ranges(logits_p.rows, 2 * logits_p.rows * v, [&](std::size_t rb, std::size_t re) {
    const auto len = static_cast<Eigen::Index>(std::min(v, detail::logp_chunk<T> / 2));
    detail::logp_array<T> a(len), bq(len), e(len);
    for (std::size_t r = rb; r < re; ++r) {
      double lse_p = 0.0, lse_q = 0.0, value = 0.0;
      if (mask.empty() || mask[r] != 0)
        value = detail::logp_eigen_kl_row(logits_p.data + r * v, logits_q.data + r * v, v, inv_t, a, bq, e, lse_p, lse_q);
      kl[r] = static_cast<T>(value);
      if (!logsumexp_p.empty()) logsumexp_p[r] = static_cast<T>(lse_p);
      if (!logsumexp_q.empty()) logsumexp_q[r] = static_cast<T>(lse_q);
    }
  });
}

/// Eigen kernel of rlhf::full_kl_backward (arguments validated by the caller). `dlogits_p` may alias
/// `logits_p`: each chunk is read into temporaries before its gradient is written.
template <class T>
void rlhf_specialized_full_kl_backward(const eigen_backend& b, matrix_view<const T, host_space> logits_p,
                                       matrix_view<const T, host_space> logits_q,
                                       vector_view<const mask_type, host_space> mask,
                                       vector_view<const T, host_space> kl,
                                       vector_view<const T, host_space> logsumexp_p,
                                       vector_view<const T, host_space> logsumexp_q,
                                       vector_view<const T, host_space> d_kl, matrix_view<T, host_space> dlogits_p,
                                       double temperature) {
  const double inv_t = 1.0 / temperature;
  const T it = static_cast<T>(inv_t);
  const T floor = static_cast<T>(detail::logp_exponent_floor);
  const std::size_t v = logits_p.cols;
  b.parallel_ranges(logits_p.rows, 2 * logits_p.rows * v, [&](std::size_t rb, std::size_t re) {
    const auto len = static_cast<Eigen::Index>(std::min(v, detail::logp_chunk<T> / 2));
    detail::logp_array<T> lp(len), lq(len), pp(len);
    for (std::size_t r = rb; r < re; ++r) {
      T* out = dlogits_p.data + r * v;
      if (!mask.empty() && mask[r] == 0) {
        detail::logp_mut_map<T>(out, static_cast<Eigen::Index>(v)).setZero();
        continue;
      }
      // log p_j = (z_p,j - lse_p t) / t, likewise for q; both clamped so -inf logits give no NaN.
      const T cp = static_cast<T>(static_cast<double>(logsumexp_p[r]) * temperature);
      const T cq = static_cast<T>(static_cast<double>(logsumexp_q[r]) * temperature);
      const T k = kl[r];
      const T g = static_cast<T>(static_cast<double>(d_kl[r]) * inv_t);
      for (std::size_t c0 = 0; c0 < v; c0 += detail::logp_chunk<T> / 2) {
        const Eigen::Index n = static_cast<Eigen::Index>(std::min(detail::logp_chunk<T> / 2, v - c0));
        const detail::logp_const_map<T> zp(logits_p.data + r * v + c0, n), zq(logits_q.data + r * v + c0, n);
        detail::logp_mut_map<T> o(out + c0, n);
        auto lps = lp.head(n);
        auto lqs = lq.head(n);
        auto ps = pp.head(n);
        lps = ((zp - cp) * it).max(floor);
        lqs = ((zq - cq) * it).max(floor);
        ps = lps.exp();
        // d KL / d z_p,j = p_j ((log p_j - log q_j) - KL) / t
        o = g * ps * ((lps - lqs) - k);
      }
    }
  });
}

}  // namespace rlhf::backends
