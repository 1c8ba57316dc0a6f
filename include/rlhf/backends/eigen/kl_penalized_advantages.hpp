/// @file kl_penalized_advantages.hpp
/// @brief The Eigen backend's kernel for rlhf::kl_penalized_advantages: per row, InstructGPT's k1 KL and the
/// rewards in one vectorized loop, then the row's GAE sweep while the row is still in cache; rows in parallel;
/// then the advantages' moments by the backend's masked-moments kernel.
///
/// The separate calls write the rewards to memory and read them back in the GAE pass; here the sweep reads
/// them from cache. The moments stay a second pass (the corrected two-pass sums of rlhf::compute_masked_moments,
/// the same numbers whitening computes; merging per-row statistics instead lost precision at large offsets).
/// Results are bit-identical to kl_penalty + kl_penalized_rewards + gae + compute_masked_moments on this
/// backend: the same row functions in the same order.
#pragma once

#include <cstddef>

#include "rlhf/backends/eigen.hpp"
#include "rlhf/backends/eigen/gae.hpp"
#include "rlhf/backends/eigen/kl_penalized_rewards.hpp"
#include "rlhf/backends/eigen/whitening.hpp"
#include "rlhf/backends/masked_moments.hpp"
#include "rlhf/backends/view.hpp"

namespace rlhf::backends {

/// rlhf::kl_penalized_advantages's specialization for rlhf::eigen_backend (found by argument-dependent lookup;
/// arguments validated and the scores shaped by the caller; taken for the k1 KL without clamp only).
///
/// @param logp, ref_logp [B, T]: the KL is logp - ref_logp, written to `kl` (+0 where masked)
/// @param values [B, T], read at valid positions only
/// @param mask [B, T]
/// @param shaped_scores [B], the score as added (clipped, penalized)
/// @param kl, rewards, advantages outputs [B, T]; returns output [B, T] or empty (not written)
/// @param beta the KL coefficient; placement rlhf::score_placement as int; gamma, lambda GAE's
/// @param kl_total, valid_tokens, scored_sum, scored_rows out: as rlhf_specialized_kl_penalized_rewards's
/// @param moments out: count, mean, m2 of the advantages over the valid positions
template <class T>
void rlhf_specialized_k1_kl_penalized_advantages(
    const eigen_backend& b, matrix_view<const T, host_space> logp, matrix_view<const T, host_space> ref_logp,
    matrix_view<const T, host_space> values, matrix_view<const mask_type, host_space> mask,
    vector_view<const T, host_space> shaped_scores, matrix_view<T, host_space> kl, matrix_view<T, host_space> rewards,
    matrix_view<T, host_space> advantages, matrix_view<T, host_space> returns, T beta, int placement, T gamma,
    T lambda, double& kl_total, std::size_t& valid_tokens, double& scored_sum, std::size_t& scored_rows,
    masked_moments& moments) {
  const detail::eigen_rows_gae<T> gae{values.data, advantages.data, returns.empty() ? nullptr : returns.data, gamma,
                                      gamma * lambda};
  detail::eigen_kl_rewards_rows<T>(b, logp.rows, logp.cols, logp.data, ref_logp.data, kl.data, mask.data,
                                   shaped_scores, rewards.data, beta, placement, kl_total, valid_tokens, scored_sum,
                                   scored_rows, &gae);
  moments = {};
  rlhf_specialized_masked_moments<T>(b, as_const(advantages), mask, moments.count, moments.mean, moments.m2);
}

}  // namespace rlhf::backends
