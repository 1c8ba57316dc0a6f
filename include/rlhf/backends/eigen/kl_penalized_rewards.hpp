/// @file kl_penalized_rewards.hpp
/// @brief The Eigen backend's kernel for rlhf::kl_penalized_rewards: rewards, the score placement and the
/// KL statistics in one pass per row, rows in parallel.
///
/// The generic path makes two row reductions, two element passes and four reductions over [B, T]; this kernel
/// reads the KL and the mask once and writes the rewards once (Ouyang et al. 2022, InstructGPT, eq. 2, per
/// token): per row, one vectorized loop (RLHF_SIMD_LOOP) writes `rewards = valid ? -beta kl : +0`, sums the
/// row's masked KL in double and counts the valid tokens; the last valid column is found from the row's end
/// and the shaped score added at the placement's column. Row results are folded in row order after the
/// parallel region: the result does not depend on the thread count. Masked positions are masked by bits
/// (detail::eigen_keep_if), never multiplied, so NaN there never reaches the rewards (verl PR #6361).
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <vector>

#include "rlhf/backends/eigen.hpp"
#include "rlhf/backends/view.hpp"
#include "rlhf/config.hpp"

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
  const T neg_beta = -beta;
  b.parallel_ranges(rows, rows * cols / eigen_backend::light_elements_per_work, [&](std::size_t rb, std::size_t re) {
    for (std::size_t r = rb; r < re; ++r) {
      const T* __restrict k = kl.data + r * cols;
      const mask_type* __restrict m = mask.data + r * cols;
      T* __restrict out = rewards.data + r * cols;
      double sum = 0;
      std::uint32_t count32 = 0;
      RLHF_SIMD_LOOP(reduction(+ : sum, count32))
      for (std::size_t t = 0; t < cols; ++t) {
        const bool valid = m[t] != 0;
        const T kept = detail::eigen_keep_if(k[t], valid);
        out[t] = detail::eigen_keep_if(kept * neg_beta, valid);  // +0 where masked (the product alone gives -0)
        sum += static_cast<double>(kept);
        count32 += valid ? 1u : 0u;
      }
      row_result& res = per_row[r];
      res.kl = sum;
      res.count = count32;
      if (count32 == 0) continue;  // no valid token: no score
      // The last valid column, from the row's end eight mask bytes at a time (a max reduction over the columns
      // in the loop above cost a third of the kernel; the padding after a response is usually short).
      std::size_t end = cols;
      for (std::uint64_t word = 0; end >= 8; end -= 8) {
        std::memcpy(&word, m + end - 8, sizeof word);
        if (word != 0) break;
      }
      while (m[end - 1] == 0) --end;  // stops: the row has a valid column
      const std::size_t last = end - 1;
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
