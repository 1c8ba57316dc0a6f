/// @file ppo_clip_loss.hpp
/// @brief The Eigen backend's fused PPO-clip kernel (Schulman et al. 2017, PPO, eq. 7): forward, gradient
///        and statistics in one pass over [B, T], in the element type, rows in parallel.
///
/// Same contract as the generic path of rlhf/losses/ppo_clip_loss.hpp, found by argument-dependent lookup
/// as `rlhf_specialized_ppo_clip_loss_aggregated` (computes the aggregation's row weights w_r itself) and
/// `rlhf_specialized_ppo_clip_loss` (given w_r); arguments are validated by rlhf::ppo_clip_loss. The
/// generic path runs the weight passes, then two element passes (gradient, then loss and statistics) with
/// a scalar double `exp` per element; this kernel counts the mask once and then reads each input once and
/// writes the gradient once:
///
/// - Each row is cut into chunks of `ppo_chunk` elements. Per chunk, a first loop forms the log-ratio
///   (and its clamp) into an L1 buffer, Eigen's packet `exp` turns it into the ratio, a second,
///   branch-free loop (selects by bit masks, detail::eigen_select) forms the loss, the gradient
///   w_r * (-A rho) and the masked per-element terms, and a third loop sums those in double (GCC 12 does not
///   vectorize a select loop with double reductions, so the work is split this way; all three run on
///   L1-resident data).
/// - Per-element arithmetic is in T (float stays float: 16 lanes per AVX-512 vector); every sum is
///   accumulated in double, per row. Rows are folded in row order, so the result does not depend on
///   the thread count (the same rule as eigen_backend's reductions).
/// - Masked positions are never selected, whatever they hold (NaN included): they get gradient 0 and
///   contribute nothing.
/// - Where the log-ratio clamp bites, the ratio e^(+-clamp) can be far from 1 (e^20 = 4.9e8) and its
///   float rounding would show in the loss; those rare positions are summed by a scalar double fix-up,
///   as the generic path does. Their gradient is 0 either way.
///
/// Differences from the generic path (which works in double) are rounding only: for float input the
/// log-ratio, the ratio, the per-token loss and the gradient carry a few 1e-7 relative error. Without a
/// log-ratio clamp, a float ratio overflows to +inf beyond a log-ratio of ~88 where the double path stays
/// finite (the default clamp of 20 rules this out; PyTorch peers computing in float behave the same).
#pragma once

#include <Eigen/Core>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <vector>

#include "rlhf/backends/eigen.hpp"
#include "rlhf/backends/eigen/loss_aggregation.hpp"
#include "rlhf/backends/view.hpp"

namespace rlhf::backends {

namespace detail {

/// Chunk length of the fused PPO kernel: its seven scratch buffers (14 KiB for float, 28 KiB for double)
/// and the chunk's inputs stay in L1/L2.
inline constexpr std::size_t ppo_chunk = 512;

/// Per-row sums of the fused PPO kernel (the loss still unweighted).
struct ppo_eigen_row {
  double loss = 0, tokens = 0, clipped = 0, approx_kl = 0, policy_kl = 0, ratio = 0, dual = 0;
};

/// Hyper-parameters of the kernel in the element type (and in double for the clamp fix-up).
template <class T>
struct ppo_eigen_params {
  T lo, hi, dual_c, clamp;
  bool use_clamp, use_dual;
  double lo_d, hi_d, dual_d, clamp_d;  // the same in double, for the clamped positions
};

/// Per-thread L1 scratch of the fused PPO kernel: the log-ratio, the ratio, and the masked per-element
/// terms handed from the select loop to the summing loop.
template <class T>
struct ppo_eigen_scratch {
  alignas(64) T raw[ppo_chunk];
  alignas(64) T ratio[ppo_chunk];
  alignas(64) T loss[ppo_chunk];
  alignas(64) T flags[4][ppo_chunk];  // valid, clipped, dual, clamped (and valid) as 0/1
};

/// One row: loss, gradient (when Grad) and statistics, chunk by chunk (see the file comment).
template <bool Grad, class T>
ppo_eigen_row ppo_eigen_row_pass(const T* __restrict lp, const T* __restrict old, const T* __restrict adv,
                                 const mask_type* __restrict m, T* __restrict d, std::size_t n, T w,
                                 const ppo_eigen_params<T>& p, ppo_eigen_scratch<T>& sc) {
  using array_map = Eigen::Map<Eigen::Array<T, Eigen::Dynamic, 1>, Eigen::Aligned64>;
  double s_loss = 0, s_akl = 0, s_pkl = 0, s_ratio = 0;
  double s_tok = 0, s_clip = 0, s_dual = 0;
  const T lo = p.lo, hi = p.hi, dual_c = p.dual_c;
  const double lo_d = p.lo_d, hi_d = p.hi_d, dual_d = p.dual_d, clamp_d = p.clamp_d;
  // Branch-free forms of the switches: a < dual_cap is never true when the dual clip is off, and
  // |log-ratio| > clamp_lim never true when the clamp is off.
  const T dual_cap = p.use_dual ? T(0) : -std::numeric_limits<T>::infinity();
  const T clamp_lim = p.use_clamp ? p.clamp : std::numeric_limits<T>::infinity();
  T* __restrict raw_buf = sc.raw;
  T* __restrict ratio_buf = sc.ratio;
  T* __restrict loss_buf = sc.loss;
  T* __restrict valid_buf = sc.flags[0];
  T* __restrict clip_buf = sc.flags[1];
  T* __restrict dual_buf = sc.flags[2];
  T* __restrict clamp_buf = sc.flags[3];
  for (std::size_t c0 = 0; c0 < n; c0 += ppo_chunk) {
    const std::size_t len = std::min(ppo_chunk, n - c0);
    const T* __restrict lpc = lp + c0;
    const T* __restrict oc = old + c0;
    const T* __restrict ac = adv + c0;
    const mask_type* __restrict mc = m + c0;
    // Log-ratio, clamped before exp (the clamp only guards exp against overflow).
    for (std::size_t i = 0; i < len; ++i) {
      const T raw = lpc[i] - oc[i];
      raw_buf[i] = raw;
      ratio_buf[i] = std::min(std::max(raw, -clamp_lim), clamp_lim);
    }
    array_map ratio(ratio_buf, static_cast<Eigen::Index>(len));
    ratio = ratio.exp();
    // Schulman et al. 2017, eq. 7 as a loss: max(-A rho, -A clip(rho)); the clipped term is active only
    // when strictly larger (rho outside the clip range, gradient 0); dual clip min(., -c A) for A < 0.
    // Every select by bits (detail::eigen_select / eigen_keep_if): as ternaries or std::min / max, GCC 12
    // vectorized this loop only for AVX-512 (see eigen_select). Masked positions are replaced by 0 here, so
    // NaN there never reaches a sum.
    for (std::size_t i = 0; i < len; ++i) {
      const T a = ac[i], rho = ratio_buf[i], raw = raw_buf[i];
      const bool ok = mc[i] != 0;
      const T l1 = -a * rho;
      const T rho_low = eigen_select(rho < lo, lo, rho);
      const T l2 = -a * eigen_select(rho_low > hi, hi, rho_low);
      const bool clip_active = l2 > l1;
      const T l12 = eigen_select(clip_active, l2, l1);
      const T l3 = -dual_c * a;
      const bool dual_active = (a < dual_cap) & (l12 > l3);
      const T loss = eigen_select(dual_active, l3, l12);
      const bool clamp_active = std::fabs(raw) > clamp_lim;
      if constexpr (Grad) {
        // 0 where the clipped term is active, where the clamp bites (the ratio is constant) or the dual clip.
        const bool flat = clip_active | clamp_active | dual_active;
        d[c0 + i] = eigen_keep_if(w * l1, ok & !flat);
      }
      // Clamped positions are summed in double by the fix-up below.
      const bool keep = ok & !clamp_active;
      loss_buf[i] = eigen_keep_if(loss, keep);
      raw_buf[i] = eigen_keep_if(raw, ok);
      ratio_buf[i] = eigen_keep_if(rho, keep);
      clamp_buf[i] = eigen_keep_if(T(1), ok & clamp_active);
      valid_buf[i] = eigen_keep_if(T(1), ok);
      clip_buf[i] = eigen_keep_if(T(1), ok & clip_active);
      dual_buf[i] = eigen_keep_if(T(1), ok & dual_active);
    }
    // Sums in double (a separate select-free loop: GCC 12 does not vectorize a double reduction fed
    // by a select). Counts are exact in T (chunk length < 2^24).
    T c_tok = 0, c_clip = 0, c_dual = 0, c_clamp = 0;
#if defined(_OPENMP)
#pragma omp simd reduction(+ : s_loss, s_akl, s_pkl, s_ratio, c_tok, c_clip, c_dual, c_clamp)
#endif
    for (std::size_t i = 0; i < len; ++i) {
      const double rd = static_cast<double>(raw_buf[i]);
      s_loss += static_cast<double>(loss_buf[i]);
      s_akl += 0.5 * rd * rd;
      s_pkl -= rd;
      s_ratio += static_cast<double>(ratio_buf[i]);
      c_tok += valid_buf[i];
      c_clip += clip_buf[i];
      c_dual += dual_buf[i];
      c_clamp += clamp_buf[i];
    }
    if (c_clamp > T(0)) {
      // Where the clamp bites the ratio is e^(+-clamp), possibly far from 1: its loss and ratio are
      // summed in double (as the generic path does), not rounded to T. Rare: a scalar loop.
      for (std::size_t i = 0; i < len; ++i) {
        if (clamp_buf[i] == T(0)) continue;
        const double raw = static_cast<double>(lpc[i]) - static_cast<double>(oc[i]);
        const double a = static_cast<double>(ac[i]);
        const double rho = std::exp(raw > 0 ? clamp_d : -clamp_d);
        const double l1 = -a * rho, l2 = -a * std::min(std::max(rho, lo_d), hi_d);
        double loss = std::max(l1, l2);
        if (dual_buf[i] != T(0)) loss = -dual_d * a;
        s_loss += loss;
        s_ratio += rho;
      }
    }
    s_tok += static_cast<double>(c_tok);
    s_clip += static_cast<double>(c_clip);
    s_dual += static_cast<double>(c_dual);
  }
  return {s_loss, s_tok, s_clip, s_akl, s_pkl, s_ratio, s_dual};
}

}  // namespace detail

/// rlhf::ppo_clip_loss's specialization for rlhf::eigen_backend (found by argument-dependent lookup).
/// Arguments are validated and the row weights computed by rlhf::ppo_clip_loss.
///
/// @tparam T float or double
/// @param b the backend (thread count)
/// @param logp [B, T] log-probs under the current policy
/// @param old_logp [B, T] log-probs under the sampling policy
/// @param adv [B, T] advantages
/// @param mask [B, T], non-zero = valid
/// @param w [B] row weights of the aggregation (rlhf::aggregation_row_weights)
/// @param d_logp [B, T] gradient output, or empty (forward only)
/// @param eps_low lower clip range
/// @param eps_high upper clip range
/// @param dual_clip dual-clip constant, 0 = off
/// @param clamp log-ratio clamp, 0 = off
/// @param loss output: sum_r w_r sum_t m l
/// @param tokens output: valid tokens
/// @param clipped output: valid tokens where the clipped term is strictly active
/// @param approx_kl output: sum of 0.5 (logp - old_logp)^2 over valid tokens
/// @param policy_kl output: sum of old_logp - logp over valid tokens
/// @param ratio output: sum of the (clamped) ratio over valid tokens
/// @param dual output: valid tokens where the dual clip is active
template <class T>
void rlhf_specialized_ppo_clip_loss(const eigen_backend& b, matrix_view<const T, host_space> logp,
                                    matrix_view<const T, host_space> old_logp, matrix_view<const T, host_space> adv,
                                    matrix_view<const mask_type, host_space> mask, vector_view<const double, host_space> w,
                                    matrix_view<T, host_space> d_logp, double eps_low, double eps_high, double dual_clip,
                                    double clamp, double& loss, double& tokens, double& clipped, double& approx_kl,
                                    double& policy_kl, double& ratio, double& dual) {
  const std::size_t rows = logp.rows, cols = logp.cols;
  const detail::ppo_eigen_params<T> p{static_cast<T>(1.0 - eps_low), static_cast<T>(1.0 + eps_high),
                                      static_cast<T>(dual_clip), static_cast<T>(clamp), clamp > 0, dual_clip > 0,
                                      1.0 - eps_low, 1.0 + eps_high, dual_clip, clamp};
  const bool grad = d_logp.data != nullptr;
  // Per-row partials folded in row order below: the same bits on any thread count.
  std::vector<detail::ppo_eigen_row> partial(rows);
  b.parallel_ranges(rows, rows * cols, [&](std::size_t rb, std::size_t re) {
    detail::ppo_eigen_scratch<T> sc;
    for (std::size_t r = rb; r < re; ++r) {
      const std::size_t base = r * cols;
      const T wr = static_cast<T>(w.data[r]);
      partial[r] = grad ? detail::ppo_eigen_row_pass<true, T>(logp.data + base, old_logp.data + base, adv.data + base,
                                                              mask.data + base, d_logp.data + base, cols, wr, p, sc)
                        : detail::ppo_eigen_row_pass<false, T>(logp.data + base, old_logp.data + base,
                                                               adv.data + base, mask.data + base, nullptr, cols, wr,
                                                               p, sc);
    }
  });
  loss = tokens = clipped = approx_kl = policy_kl = ratio = dual = 0;
  for (std::size_t r = 0; r < rows; ++r) {
    const detail::ppo_eigen_row& s = partial[r];
    loss += w.data[r] * s.loss;
    tokens += s.tokens;
    clipped += s.clipped;
    approx_kl += s.approx_kl;
    policy_kl += s.policy_kl;
    ratio += s.ratio;
    dual += s.dual;
  }
}

/// rlhf::ppo_clip_loss's one-call specialization for rlhf::eigen_backend: computes the aggregation's row
/// weights itself (a vectorized integer count of each mask row, then the same rule as
/// rlhf::aggregation_row_weights) and runs the fused kernel above. Saves the generic weight passes,
/// whose double accumulation along each row is a dependent chain, and the [B] scratch buffer.
///
/// @tparam T float or double
/// @param b the backend (thread count)
/// @param logp [B, T] log-probs under the current policy
/// @param old_logp [B, T] log-probs under the sampling policy
/// @param adv [B, T] advantages
/// @param mask [B, T], non-zero = valid
/// @param d_logp [B, T] gradient output, or empty (forward only)
/// @param eps_low lower clip range
/// @param eps_high upper clip range
/// @param dual_clip dual-clip constant, 0 = off
/// @param clamp log-ratio clamp, 0 = off
/// @param mode rlhf::aggregation_mode as int (0 token_mean, 1 seq_mean_token_mean, 2 seq_mean_token_sum,
///        3 seq_mean_token_sum_norm)
/// @param global_tokens token count for token_mean; 0 = this batch's
/// @param global_sequences sequence count for the sequence modes; 0 = this batch's non-empty rows
/// @param norm_length length divisor of seq_mean_token_sum_norm; 0 = the column count
/// @param loss output, as rlhf_specialized_ppo_clip_loss
/// @param tokens output, as rlhf_specialized_ppo_clip_loss
/// @param clipped output, as rlhf_specialized_ppo_clip_loss
/// @param approx_kl output, as rlhf_specialized_ppo_clip_loss
/// @param policy_kl output, as rlhf_specialized_ppo_clip_loss
/// @param ratio output, as rlhf_specialized_ppo_clip_loss
/// @param dual output, as rlhf_specialized_ppo_clip_loss
template <class T>
void rlhf_specialized_ppo_clip_loss_aggregated(
    const eigen_backend& b, matrix_view<const T, host_space> logp, matrix_view<const T, host_space> old_logp,
    matrix_view<const T, host_space> adv, matrix_view<const mask_type, host_space> mask,
    matrix_view<T, host_space> d_logp, double eps_low, double eps_high, double dual_clip, double clamp, int mode,
    double global_tokens, double global_sequences, double norm_length, double& loss, double& tokens, double& clipped,
    double& approx_kl, double& policy_kl, double& ratio, double& dual) {
  const std::size_t rows = mask.rows, cols = mask.cols;
  std::vector<double> w(rows);
  detail::eigen_valid_counts(b, mask, w.data());  // valid tokens per row (integer sums: exact and vectorized)
  double local_tokens = 0, local_sequences = 0;
  for (std::size_t r = 0; r < rows; ++r) local_tokens += w[r], local_sequences += w[r] > 0 ? 1.0 : 0.0;
  const double n_tok = global_tokens > 0 ? global_tokens : local_tokens;
  const double n_seq = global_sequences > 0 ? global_sequences : local_sequences;
  const double length = norm_length > 0 ? norm_length : static_cast<double>(cols);
  for (std::size_t r = 0; r < rows; ++r) {
    const double n = w[r];
    double wr = 0;  // rows without a valid token contribute nothing
    if (n > 0) {
      switch (mode) {
        case 0: wr = 1.0 / n_tok; break;
        case 1: wr = 1.0 / (n * n_seq); break;
        case 2: wr = 1.0 / n_seq; break;
        default: wr = 1.0 / (n_seq * length); break;
      }
    }
    w[r] = wr;
  }
  rlhf_specialized_ppo_clip_loss<T>(b, logp, old_logp, adv, mask, vector_view<const double, host_space>{w.data(), rows},
                                    d_logp, eps_low, eps_high, dual_clip, clamp, loss, tokens, clipped, approx_kl,
                                    policy_kl, ratio, dual);
}

}  // namespace rlhf::backends
