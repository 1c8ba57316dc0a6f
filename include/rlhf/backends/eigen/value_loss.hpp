/// @file value_loss.hpp
/// @brief The Eigen backend's fused kernel for rlhf::clipped_value_loss: the loss statistics and the gradient
/// in one read of the inputs and one write of the gradient, rows in parallel.
///
/// The generic path makes an element pass for the gradient and a row reduction for the statistics, each
/// evaluating the per-token math in scalar double. This kernel makes one branch-free loop per row (selects
/// only, vectorized with its six sums by RLHF_SIMD_LOOP) that evaluates the same double arithmetic as the
/// generic `value_loss_math` (so every clip decision is identical), writes `w_r * grad` (+0 at masked
/// positions, masked by bits, so NaN there never leaks) and sums the per-token terms. Rows are folded in row
/// order after the parallel region: identical bits on any thread count.
#pragma once

#include <cstddef>
#include <vector>

#include "rlhf/backends/eigen.hpp"
#include "rlhf/backends/view.hpp"
#include "rlhf/config.hpp"

namespace rlhf::backends {

/// rlhf::clipped_value_loss's specialization for rlhf::eigen_backend (found by argument-dependent lookup;
/// arguments validated and the aggregation's row weights `w` computed by the caller). Outputs the sums of
/// the weighted loss, valid tokens, clipped tokens, values, returns and squared errors.
template <class T>
void rlhf_specialized_clipped_value_loss(const eigen_backend& b, matrix_view<const T, host_space> values,
                                         matrix_view<const T, host_space> old_values,
                                         matrix_view<const T, host_space> returns,
                                         matrix_view<const mask_type, host_space> mask,
                                         vector_view<const double, host_space> w, matrix_view<T, host_space> d_values,
                                         double clip, double& loss, double& tokens, double& clipped, double& value,
                                         double& ret, double& sq) {
  constexpr std::size_t terms = 6;
  const std::size_t rows = values.rows, cols = values.cols;
  std::vector<double> per_row(rows * terms, 0.0);
  const bool want_grad = d_values.data != nullptr;
  const double clip_on = clip > 0 ? 1.0 : 0.0;  // clip = 0: the plain squared error
  // One row: sums of the per-token loss, valid, clipped, value, return and squared error; the gradient if
  // Grad. Locals, not captured references: the stores could alias a captured double as far as the compiler
  // knows, which kept the loop scalar.
  const auto row_pass = [&]<bool Grad>(std::size_t r) {
    const std::size_t base = r * cols;
    const double wr = w.data[r], clip_v = clip, clip_flag = clip_on;
    const T* __restrict vp = values.data + base;
    const T* __restrict op = old_values.data + base;
    const T* __restrict rp = returns.data + base;
    const mask_type* __restrict mp = mask.data + base;
    T* __restrict dp = Grad ? d_values.data + base : nullptr;
    double s_loss = 0, s_valid = 0, s_clipped = 0, s_value = 0, s_return = 0, s_sq = 0;
    RLHF_SIMD_LOOP(reduction(+ : s_loss, s_valid, s_clipped, s_value, s_return, s_sq))
    for (std::size_t i = 0; i < cols; ++i) {
      // value_loss_math (rlhf/losses/value_loss.hpp) in double: 1/2 max(d1^2, d2^2) where V' - V is clipped,
      // the gradient d1 where the unclipped term is active. Masked positions may hold NaN: every output is
      // masked by bits (detail::eigen_keep_if), never multiplied.
      const bool ok = mp[i] != 0;
      const double v = static_cast<double>(vp[i]), vo = static_cast<double>(op[i]), rt = static_cast<double>(rp[i]);
      const double d1 = v - rt;
      const double diff = v - vo;
      // Every select by bits (detail::eigen_select, not ternaries or std::min / max): so the loop vectorizes
      // for SSE4 and AVX2 too, not only AVX-512.
      const double low = detail::eigen_select(diff < -clip_v, -clip_v, diff);
      const double clamped = detail::eigen_select(low > clip_v, clip_v, low);
      const double d2 = vo + clamped - rt;
      const double outside = detail::eigen_select((diff < -clip_v) | (diff > clip_v), 1.0, 0.0);
      const double sq1 = d1 * d1, sq2 = d2 * d2;
      const double use2 = detail::eigen_keep_if(outside * clip_flag, sq2 > sq1);
      const double l = 0.5 * detail::eigen_select(use2 != 0.0, sq2, sq1);
      s_loss += detail::eigen_keep_if(l, ok);
      s_valid += detail::eigen_keep_if(1.0, ok);
      s_clipped += detail::eigen_keep_if(use2, ok);
      s_value += detail::eigen_keep_if(v, ok);
      s_return += detail::eigen_keep_if(rt, ok);
      s_sq += detail::eigen_keep_if(sq1, ok);
      if constexpr (Grad) {
        dp[i] = static_cast<T>(detail::eigen_keep_if(wr * detail::eigen_keep_if(d1, use2 == 0.0), ok));
      }
    }
    double* out = per_row.data() + r * terms;
    out[0] = s_loss;
    out[1] = s_valid;
    out[2] = s_clipped;
    out[3] = s_value;
    out[4] = s_return;
    out[5] = s_sq;
  };
  b.parallel_ranges(rows, rows * cols, [&](std::size_t rb, std::size_t re) {
    for (std::size_t r = rb; r < re; ++r) {
      if (want_grad) row_pass.template operator()<true>(r);
      else row_pass.template operator()<false>(r);
    }
  });
  loss = tokens = clipped = value = ret = sq = 0;
  for (std::size_t r = 0; r < rows; ++r) {  // row order: independent of the thread count
    const double* p = per_row.data() + r * terms;
    loss += w.data[r] * p[0];
    tokens += p[1];
    clipped += p[2];
    value += p[3];
    ret += p[4];
    sq += p[5];
  }
}

}  // namespace rlhf::backends
