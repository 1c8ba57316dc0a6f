/// @file kl_penalized_advantages.cuh
/// @brief The CUDA backend's one-pass kernel for rlhf::kl_penalized_advantages: InstructGPT's k1 KL, the
/// KL-penalized rewards with the score placed, GAE advantages and returns, and the statistics (the KL sum, the
/// valid count, the placed scores, the advantages' masked moments) in one read of logp, ref_logp, values and
/// the mask and one write of each output.
///
/// Same contract as the k1 path of rlhf::kl_penalized_advantages (found by argument-dependent lookup as
/// `rlhf_specialized_k1_kl_penalized_advantages`; arguments validated and the scores shaped by the caller).
/// It is the GAE kernel of cuda/gae.cuh (one warp per row, tiles of 32 x 4 steps from the row's end, the step
/// maps scanned across the warp) with a reward source that computes each step's reward instead of reading it:
/// - begin_row: the warp finds the row's last valid column from the row's end (one ballot per 32 mask bytes,
///   usually one; cuda/kl_penalized_rewards.cuh) and, from it and the placement, the column that receives the
///   shaped score (rlhf::detail::kl_rewards_score_column);
/// - reward: kl = logp - ref_logp (T, +0 where masked), reward = valid ? kl * -beta : +0, plus the score at that
///   column, both written; the lane adds the valid kl to its double sum and counts the step (Ouyang et al. 2022,
///   eq. 2, per token);
/// - advantage: each valid A_t (as stored, in T) enters the lane's masked_moments one value at a time (Chan's
///   merge, rlhf/backends/masked_moments.hpp, the function whitening merges ranks with);
/// - end_row: the lanes' sums and moments are merged by shuffles (a fixed tree) and lane 0 stores the row's.
/// The rows' results are folded by the backend's transform_reduce (a fixed order): the result does not depend
/// on the launch.
///
/// CPU reference: kl_penalty + kl_penalized_rewards + gae + compute_masked_moments on the reference backend
/// (the generic path of rlhf::kl_penalized_advantages). The rewards, KL and advantages agree to rounding (the
/// GAE scan associates differently, as cuda/gae.cuh says); the moments are merged per value here and by the
/// corrected two-pass sums there, equal to ~1e-12 relative for data of unit scale
/// (tests/backends/masked_moments_test.cpp holds both groupings to the two-pass sums).
#pragma once

#include <cstddef>

#include "rlhf/backends/cuda.cuh"
#include "rlhf/backends/cuda/gae.cuh"
#include "rlhf/backends/cuda/kl_penalized_rewards.cuh"
#include "rlhf/backends/kl_rewards_rows.hpp"
#include "rlhf/backends/masked_moments.hpp"
#include "rlhf/backends/view.hpp"

namespace rlhf::backends {

namespace cuda_kernels {

/// One row's statistics of the one-pass advantages kernel.
struct advantages_row_sums {
  double kl = 0;         // sum of the KL over valid tokens
  double valid = 0;      // number of valid tokens
  double scored = 0;     // 1 when the row received its score
  double score = 0;      // the score it received
  masked_moments moments;  // of the row's advantages over valid tokens

  RLHF_HOST_DEVICE advantages_row_sums operator+(const advantages_row_sums& o) const {
    return {kl + o.kl, valid + o.valid, scored + o.scored, score + o.score, combine(moments, o.moments)};
  }
};

struct add_advantages_row_sums {
  RLHF_HOST_DEVICE advantages_row_sums operator()(const advantages_row_sums& a, const advantages_row_sums& b) const {
    return a + b;
  }
};
struct same_advantages_row_sums {
  RLHF_HOST_DEVICE advantages_row_sums operator()(const advantages_row_sums& s) const { return s; }
};

__device__ inline masked_moments shfl_down_moments(const masked_moments& m, unsigned offset) {
  return {__shfl_down_sync(full_warp, m.count, offset), __shfl_down_sync(full_warp, m.mean, offset),
          __shfl_down_sync(full_warp, m.m2, offset)};
}

/// The reward source of the GAE sweep (cuda/gae.cuh) for rlhf::kl_penalized_advantages (see the file comment).
/// Each thread holds its own copy: the row's score column and the lane's running sums.
template <class T>
struct k1_kl_penalized_reward_source {
  matrix_view<const T, cuda_space> logp, ref_logp;
  matrix_view<const mask_type, cuda_space> mask;
  vector_view<const T, cuda_space> shaped_scores;
  matrix_view<T, cuda_space> kl, rewards;
  T neg_beta;
  int placement;  // rlhf::score_placement: 0 last valid token, 1 last column, 2 one past the last valid
  advantages_row_sums* row_sums;

  long long target = -1;  // the column that receives the score (-1: none, the row has no valid token)
  T score = T(0);
  double kl_sum = 0, valid = 0;
  masked_moments moments;

  __device__ void begin_row(std::size_t row, unsigned lane) {
    const long long cols = static_cast<long long>(mask.cols);
    const long long last = warp_last_valid_column(mask.data + row * mask.cols, cols, lane);
    target = rlhf::detail::kl_rewards_score_column(last, cols, placement);
    if (target >= 0) score = shaped_scores.data[row];
  }

  __device__ T reward(std::size_t i, long long t, bool valid_step) {
    // Selected, never multiplied by the mask: NaN at masked positions does not leak (verl PR #6361); +0 there,
    // as rlhf::kl_penalty and rlhf::kl_penalized_rewards write it.
    const T k = valid_step ? logp.data[i] - ref_logp.data[i] : T(0);
    T r = valid_step ? k * neg_beta : T(0);
    if (t == target) r += score;
    kl.data[i] = k;
    rewards.data[i] = r;
    if (valid_step) {
      kl_sum += static_cast<double>(k);
      valid += 1.0;
    }
    return r;
  }

  __device__ void advantage(T a, bool valid_step) {
    if (valid_step) moments = combine(moments, masked_moments{1.0, static_cast<double>(a), 0.0});
  }

  __device__ void end_row(std::size_t row, unsigned lane) {
    for (unsigned offset = warp_size / 2; offset > 0; offset /= 2) {
      kl_sum += __shfl_down_sync(full_warp, kl_sum, offset);
      valid += __shfl_down_sync(full_warp, valid, offset);
      moments = combine(moments, shfl_down_moments(moments, offset));
    }
    if (lane == 0) {
      const bool scored = target >= 0;
      row_sums[row] = {kl_sum, valid, scored ? 1.0 : 0.0, scored ? static_cast<double>(score) : 0.0, moments};
    }
  }
};

}  // namespace cuda_kernels

/// rlhf::kl_penalized_advantages (k1 KL) on the CUDA backend: one warp per row, 8 rows per block, then one fold
/// of the rows' statistics (see the file comment).
template <class T>
void rlhf_specialized_k1_kl_penalized_advantages(
    const cuda_backend& b, matrix_view<const T, cuda_space> logp, matrix_view<const T, cuda_space> ref_logp,
    matrix_view<const T, cuda_space> values, matrix_view<const mask_type, cuda_space> mask,
    vector_view<const T, cuda_space> shaped_scores, matrix_view<T, cuda_space> kl, matrix_view<T, cuda_space> rewards,
    matrix_view<T, cuda_space> advantages, matrix_view<T, cuda_space> returns, T beta, int placement, T gamma,
    T lambda, double& kl_total, std::size_t& valid_tokens, double& scored_sum, std::size_t& scored_rows,
    masked_moments& moments) {
  using sums = cuda_kernels::advantages_row_sums;
  const std::size_t rows = logp.rows;
  kl_total = scored_sum = 0;
  valid_tokens = scored_rows = 0;
  moments = {};
  if (rows == 0) return;
  auto row_sums = b.allocate<sums>(1, rows);
  constexpr unsigned items = cuda_kernels::gae_items, warps = cuda_kernels::gae_warps_per_block;
  const unsigned blocks =
      detail::grid_blocks((rows + warps - 1) / warps, "rlhf::kl_penalized_advantages (CUDA kernel)");
  // Every member named, the running state too (a -Wextra build of a user's .cu would flag the rest).
  const cuda_kernels::k1_kl_penalized_reward_source<T> source{
      logp, ref_logp, mask, shaped_scores, kl, rewards, static_cast<T>(-beta), placement, row_sums.data(),
      -1, T(0), 0.0, 0.0, masked_moments{}};
  cuda_kernels::gae_rows<T, items, warps><<<blocks, warps * cuda_kernels::warp_size, 0, b.stream()>>>(
      source, values, mask, gamma, gamma * lambda, advantages, returns);
  detail::cuda_check(cudaGetLastError(), "rlhf::kl_penalized_advantages (CUDA kernel)", "gae_rows<<<>>>");
  const vector_view<const sums, cuda_space> all{row_sums.data(), rows};
  const sums s = b.transform_reduce(sums{}, cuda_kernels::add_advantages_row_sums{},
                                    cuda_kernels::same_advantages_row_sums{}, all);
  kl_total = s.kl;
  valid_tokens = static_cast<std::size_t>(s.valid);
  scored_sum = s.score;
  scored_rows = static_cast<std::size_t>(s.scored);
  moments = s.moments;
}

}  // namespace rlhf::backends
