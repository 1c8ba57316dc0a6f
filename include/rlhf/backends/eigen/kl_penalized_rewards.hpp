/// @file kl_penalized_rewards.hpp
/// @brief The Eigen backend's kernel for rlhf::kl_penalized_rewards: rewards, the score placement and the
/// KL statistics in one pass per row, rows in parallel.
///
/// The generic path makes two row reductions, two element passes and four reductions over [B, T]; this kernel
/// reads kl and the mask once and writes the rewards once (Ouyang et al. 2022, InstructGPT, eq. 2, per
/// token): per row, `rewards = valid ? -beta kl : 0` with the row's masked KL sum kept in eight double lanes
/// (independent add chains the compiler vectorizes, instead of one dependent chain), the last valid column
/// found from the row's end, and the shaped score added at the placement's column. Row results are folded
/// in row order after the parallel region: the result does not depend on the thread count. Masked
/// positions are selected out, never multiplied, so NaN there never reaches the rewards (verl PR #6361).
#pragma once

#include <Eigen/Core>

#include <cstddef>
#include <cstdint>
#include <vector>

#include "rlhf/backends/eigen.hpp"
#include "rlhf/backends/view.hpp"

namespace rlhf::backends {

/// rlhf::kl_penalized_rewards's specialization for rlhf::eigen_backend (found by argument-dependent lookup;
/// arguments validated and the scores already shaped by the caller).
///
/// @param kl [B, T], read at valid positions only
/// @param mask [B, T]
/// @param shaped_scores [B], the score as added (clipped, penalized)
/// @param rewards output [B, T]
/// @param beta the KL coefficient
/// @param placement rlhf::score_placement as int: 0 last valid token, 1 last column, 2 one past the last valid
/// @param kl_total out: sum of kl over valid positions
/// @param valid_tokens out: number of valid positions
/// @param scored_sum out: sum of the shaped scores of rows with a valid token
/// @param scored_rows out: number of such rows
template <class T>
void rlhf_specialized_kl_penalized_rewards(const eigen_backend& b, matrix_view<const T, host_space> kl,
                                           matrix_view<const mask_type, host_space> mask,
                                           vector_view<const T, host_space> shaped_scores,
                                           matrix_view<T, host_space> rewards, T beta, int placement, double& kl_total,
                                           std::size_t& valid_tokens, double& scored_sum, std::size_t& scored_rows) {
  const std::size_t rows = kl.rows, cols = kl.cols;
  struct row_result {
    double kl = 0;
    std::size_t count = 0;
    bool scored = false;
  };
  std::vector<row_result> per_row(rows);
  constexpr std::size_t lanes = 8;
  using array_t = Eigen::Array<T, Eigen::Dynamic, 1>;
  b.parallel_ranges(rows, rows * cols, [&](std::size_t rb, std::size_t re) {
    std::vector<T> valid_t, kept;  // per-thread row scratch
    for (std::size_t r = rb; r < re; ++r) {
      const T* __restrict k = kl.data + r * cols;
      const mask_type* __restrict m = mask.data + r * cols;
      T* __restrict out = rewards.data + r * cols;
      // The mask as T (a uint8 -> T loop the compiler vectorizes), then Eigen's vectorized select: loops that
      // mixed the uint8 mask with T loads stayed scalar under GCC 12. Masked positions are selected out, so
      // NaN there never reaches the rewards or the sum.
      if (valid_t.size() < cols) valid_t.resize(cols), kept.resize(cols);
      std::uint32_t count32 = 0;
      for (std::size_t t = 0; t < cols; ++t) {
        valid_t[t] = m[t] != 0 ? T(1) : T(0);
        count32 += m[t] != 0 ? 1u : 0u;
      }
      const std::size_t count = count32;
      const auto n = static_cast<Eigen::Index>(cols);
      const Eigen::Map<const array_t> kv(k, n), vv(valid_t.data(), n);
      Eigen::Map<array_t> kept_v(kept.data(), n);
      kept_v = (vv != T(0)).select(kv, T(0));
      Eigen::Map<array_t>(out, n) = kept_v * (-beta);
      double acc[lanes] = {};
      std::size_t t = 0;
      for (; t + lanes <= cols; t += lanes) {
        for (std::size_t j = 0; j < lanes; ++j) acc[j] += static_cast<double>(kept[t + j]);
      }
      for (std::size_t j = 0; t < cols; ++t, ++j) acc[j] += static_cast<double>(kept[t]);
      double sum = 0;
      for (std::size_t j = 0; j < lanes; ++j) sum += acc[j];
      row_result& res = per_row[r];
      res.kl = sum;
      res.count = count;
      if (count == 0) continue;  // no valid token: no score
      std::size_t last = cols;
      for (std::size_t c = cols; c-- > 0;) {
        if (m[c]) {
          last = c;
          break;
        }
      }
      std::size_t target = last;
      if (placement == 1) target = cols - 1;
      else if (placement == 2) target = last + 1 < cols ? last + 1 : cols - 1;
      out[target] += shaped_scores.data[r];
      res.scored = true;
    }
  });
  kl_total = 0;
  valid_tokens = 0;
  scored_sum = 0;
  scored_rows = 0;
  for (std::size_t r = 0; r < rows; ++r) {  // in row order: independent of the thread count
    kl_total += per_row[r].kl;
    valid_tokens += per_row[r].count;
    if (per_row[r].scored) {
      scored_sum += static_cast<double>(shaped_scores.data[r]);
      ++scored_rows;
    }
  }
}

}  // namespace rlhf::backends
