/// @file value_loss.hpp
/// @brief The Eigen backend's fused kernel for rlhf::clipped_value_loss: the loss statistics and the gradient
/// in one read of the inputs and one write of the gradient, rows in parallel.
///
/// The generic path makes an element pass for the gradient and a row reduction for the statistics, each
/// evaluating the per-token math in scalar double. This kernel walks each row in chunks that stay in L1:
/// a branch-free loop (selects only, which GCC 12 vectorizes) evaluates the same double arithmetic as the
/// generic `value_loss_math` (so every clip decision is identical), writes `w_r * grad` (0 at masked
/// positions, selected out, so NaN there never leaks) and stores the per-token terms, then eight double
/// lanes sum them. Rows are folded in row order after the parallel region: identical bits on any thread
/// count.
#pragma once

#include <algorithm>
#include <cstddef>
#include <vector>

#include "rlhf/backends/eigen.hpp"
#include "rlhf/backends/view.hpp"

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
  constexpr std::size_t chunk = 256, lanes = 8, terms = 6;
  const std::size_t rows = values.rows, cols = values.cols;
  std::vector<double> per_row(rows * terms, 0.0);
  const bool want_grad = d_values.data != nullptr;
  const double clip_on = clip > 0 ? 1.0 : 0.0;  // clip = 0: the plain squared error
  b.parallel_ranges(rows, rows * cols, [&](std::size_t rb, std::size_t re) {
    alignas(64) double buf[terms][chunk];  // per token: loss, valid, clipped, value, return, squared error
    // Locals, not the captured references: stores to the double buffers could alias a captured double as far
    // as the compiler knows, which kept the loops below scalar.
    const double clip_v = clip, clip_flag = clip_on;
    for (std::size_t r = rb; r < re; ++r) {
      const std::size_t base = r * cols;
      const double wr = w.data[r];
      double acc[terms][lanes] = {};
      for (std::size_t c0 = 0; c0 < cols; c0 += chunk) {
        const std::size_t len = std::min(chunk, cols - c0);
        const T* __restrict vp = values.data + base + c0;
        const T* __restrict op = old_values.data + base + c0;
        const T* __restrict rp = returns.data + base + c0;
        const mask_type* __restrict mp = mask.data + base + c0;
        T* __restrict dp = want_grad ? d_values.data + base + c0 : nullptr;
        // (1) Inputs as double (plain conversion loops vectorize).
        alignas(64) double vv[chunk], ov[chunk], rv[chunk], gv[chunk];
        for (std::size_t i = 0; i < len; ++i) buf[1][i] = mp[i] != 0 ? 1.0 : 0.0;
        for (std::size_t i = 0; i < len; ++i) vv[i] = static_cast<double>(vp[i]);
        for (std::size_t i = 0; i < len; ++i) ov[i] = static_cast<double>(op[i]);
        for (std::size_t i = 0; i < len; ++i) rv[i] = static_cast<double>(rp[i]);
        // (2) value_loss_math (rlhf/losses/value_loss.hpp) in double, selects on double only: 1/2 max(d1^2,
        // d2^2) where V' - V is clipped, the gradient d1 where the unclipped term is active.
        // Masked positions may hold NaN: every output is selected on `valid` (never multiplied by it).
        for (std::size_t i = 0; i < len; ++i) {
          const double valid = buf[1][i], v = vv[i], vo = ov[i], rt = rv[i];
          const double d1 = v - rt;
          const double diff = v - vo;
          const double low = diff < -clip_v ? -clip_v : diff;  // ternaries, not std::min/max (references
          const double clamped = low > clip_v ? clip_v : low;  // to temporaries kept GCC from vectorizing)
          const double d2 = vo + clamped - rt;
          const double above = diff > clip_v ? 1.0 : 0.0;
          const double outside = diff < -clip_v ? 1.0 : above;
          const double sq1 = d1 * d1, sq2 = d2 * d2;
          const double use2 = sq2 > sq1 ? outside * clip_flag : 0.0;
          const double l = 0.5 * (use2 != 0.0 ? sq2 : sq1);
          const double g = wr * (use2 != 0.0 ? 0.0 : d1);
          const bool ok = valid != 0.0;
          buf[0][i] = ok ? l : 0.0;
          buf[2][i] = ok ? use2 : 0.0;
          buf[3][i] = ok ? v : 0.0;
          buf[4][i] = ok ? rt : 0.0;
          buf[5][i] = ok ? sq1 : 0.0;
          gv[i] = ok ? g : 0.0;
        }
        if (want_grad) {
          for (std::size_t i = 0; i < len; ++i) dp[i] = static_cast<T>(gv[i]);
        }
        for (std::size_t k = 0; k < terms; ++k) {
          std::size_t i = 0;
          for (; i + lanes <= len; i += lanes) {
            for (std::size_t j = 0; j < lanes; ++j) acc[k][j] += buf[k][i + j];
          }
          for (std::size_t j = 0; i < len; ++i, ++j) acc[k][j] += buf[k][i];
        }
      }
      for (std::size_t k = 0; k < terms; ++k) {
        double s = 0;
        for (std::size_t j = 0; j < lanes; ++j) s += acc[k][j];
        per_row[r * terms + k] = s;
      }
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
