/// @file kl_penalized_rewards.hpp
/// @brief The Eigen backend's kernels for rlhf::kl_penalized_rewards: rewards, the score placement and the
/// KL statistics in one pass per row, rows in parallel; and the same pass computing InstructGPT's k1 KL from
/// the log-probs on the way (the overload that takes logp and ref_logp).
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

namespace detail {

// One row's loop: rewards, the masked KL sum and the valid count. K1: the KL is a - b (logp - ref_logp, the k1
// estimator), written to kl_out; else it is a.
template <bool K1, class T>
void eigen_kl_rewards_row(const T* __restrict a, const T* __restrict b, T* __restrict kl_out,
                          const mask_type* __restrict m, T* __restrict out, std::size_t cols, T neg_beta,
                          double& sum_out, std::uint32_t& count_out) {
  double sum = 0;
  std::uint32_t count = 0;
  RLHF_SIMD_LOOP(reduction(+ : sum, count))
  for (std::size_t t = 0; t < cols; ++t) {
    const bool valid = m[t] != 0;
    const T kept = eigen_keep_if(K1 ? a[t] - b[t] : a[t], valid);
    if constexpr (K1) kl_out[t] = kept;
    out[t] = eigen_keep_if(kept * neg_beta, valid);  // +0 where masked (the product alone gives -0)
    sum += static_cast<double>(kept);
    count += valid ? 1u : 0u;
  }
  sum_out = sum;
  count_out = count;
}

// The rows' pass of both entry points below: the KL read from kl_or_logp, or (ref_logp given) the k1 KL
// kl_or_logp - ref_logp computed on the way and written to kl_out.
template <class T>
void eigen_kl_rewards_rows(const eigen_backend& b, std::size_t rows, std::size_t cols, const T* kl_or_logp,
                           const T* ref_logp, T* kl_out, const mask_type* mask,
                           vector_view<const T, host_space> shaped_scores, T* rewards, T beta, int placement,
                           double& kl_total, std::size_t& valid_tokens, double& scored_sum, std::size_t& scored_rows) {
  struct row_result {
    double kl = 0;
    std::size_t count = 0;
    bool scored = false;
  };
  std::vector<row_result> per_row(rows);
  const T neg_beta = -beta;
  b.parallel_ranges(rows, rows * cols / eigen_backend::light_elements_per_work, [&](std::size_t rb, std::size_t re) {
    for (std::size_t r = rb; r < re; ++r) {
      const std::size_t begin = r * cols;
      const mask_type* m = mask + begin;
      double sum = 0;
      std::uint32_t count32 = 0;
      if (ref_logp == nullptr) {
        eigen_kl_rewards_row<false, T>(kl_or_logp + begin, nullptr, nullptr, m, rewards + begin, cols, neg_beta, sum,
                                       count32);
      } else {
        eigen_kl_rewards_row<true, T>(kl_or_logp + begin, ref_logp + begin, kl_out + begin, m, rewards + begin, cols,
                                      neg_beta, sum, count32);
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
      rewards[begin + target] += shaped_scores.data[r];
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

}  // namespace detail

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
  detail::eigen_kl_rewards_rows<T>(b, kl.rows, kl.cols, kl.data, nullptr, nullptr, mask.data, shaped_scores,
                                   rewards.data, beta, placement, kl_total, valid_tokens, scored_sum, scored_rows);
}

/// The same pass with InstructGPT's k1 KL (logp - ref_logp, no clamp) computed on the way and written to `kl`
/// (+0 where masked, as rlhf::kl_penalty writes it): the logp overload of rlhf::kl_penalized_rewards calls it
/// for k1 and k1_straight_through without clamps. The KL is neither stored by one pass nor loaded by the next
/// ([256, 1024], one thread: 106 -> 70 us). Other estimators keep the two passes: with the estimator's functor
/// inside this loop, GCC 12 did not vectorize it.
template <class T>
void rlhf_specialized_k1_kl_penalized_rewards(const eigen_backend& b, matrix_view<const T, host_space> logp,
                                              matrix_view<const T, host_space> ref_logp, matrix_view<T, host_space> kl,
                                              matrix_view<const mask_type, host_space> mask,
                                              vector_view<const T, host_space> shaped_scores,
                                              matrix_view<T, host_space> rewards, T beta, int placement,
                                              double& kl_total, std::size_t& valid_tokens, double& scored_sum,
                                              std::size_t& scored_rows) {
  detail::eigen_kl_rewards_rows<T>(b, logp.rows, logp.cols, logp.data, ref_logp.data, kl.data, mask.data,
                                   shaped_scores, rewards.data, beta, placement, kl_total, valid_tokens, scored_sum,
                                   scored_rows);
}

}  // namespace rlhf::backends
