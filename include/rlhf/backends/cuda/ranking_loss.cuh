/// @file ranking_loss.cuh
/// @brief The CUDA backend's pairwise ranking loss kernel (Ouyang et al. 2022, InstructGPT, eq. 1): one warp
/// per prompt, the prompt's pairs spread over the lanes.
///
/// Same contract as the generic per-prompt kernel of rlhf/losses/ranking_loss.hpp (found by argument-dependent
/// lookup as `rlhf_specialized_ranking_loss`; arguments validated; rlhf::ranking_loss sums the scratch
/// columns). The generic path runs one thread per prompt, which walks the prompt's K^2 ordered pairs and then
/// its K responses' gradients alone (81 + 81 transcendental-heavy steps for K = 9). Here, per prompt:
/// - the K x K ordered pairs are dealt to the 32 lanes (pair q = i K + j to lane q mod 32); each lane sums its
///   compared pairs' softplus (`ranking_neg_log_sigmoid`), gaps, and counts; the warp merges them by shuffles;
/// - lane i < K computes response i's gradient with `ranking_response_gradient` (rlhf/backends/ranking_math.hpp,
///   the function the generic path calls: the same expression in the same order over j);
/// - lane 0 adds the centering penalty (`ranking_center_penalty`, likewise shared) and writes the scratch
///   column; lanes zero the gradient beyond K.
/// The pair sums are associated differently from the generic path, and the device's exp / log1p and its fused
/// multiply-adds round differently from the host's: rounding-level differences only.
///
/// CPU reference: `pairwise_prompt_kernel` (rlhf/losses/ranking_loss.hpp); the GPU test holds this kernel to
/// the reference backend.
#pragma once

#include <cstddef>
#include <cstdint>

#include "rlhf/backends/cuda.cuh"
#include "rlhf/backends/ranking_math.hpp"
#include "rlhf/backends/view.hpp"

namespace rlhf::backends {

namespace cuda_kernels {

template <class T, unsigned WarpsPerBlock>
__global__ void __launch_bounds__(WarpsPerBlock * warp_size)
    ranking_prompts(matrix_view<const T, cuda_space> rewards, matrix_view<const std::int32_t, cuda_space> ranks,
                    vector_view<const std::int32_t, cuda_space> counts, matrix_view<T, cuda_space> d_rewards,
                    matrix_view<double, cuda_space> scratch, double margin, double center, double inv_prompts,
                    bool pair_sums, bool compared_only) {
  const unsigned lane = threadIdx.x % warp_size;
  const std::size_t p = static_cast<std::size_t>(blockIdx.x) * WarpsPerBlock + threadIdx.x / warp_size;
  if (p >= rewards.rows) return;  // the whole warp leaves together
  const std::size_t k = static_cast<std::size_t>(counts.data[p]);
  const T* r = rewards.data + p * rewards.cols;
  const std::int32_t* rk = ranks.data + p * ranks.cols;
  double compared = 0, correct = 0, margin_sum = 0, pair_sum = 0;
  for (std::size_t q = lane; q < k * k; q += warp_size) {
    const std::size_t i = q / k, j = q % k;
    if (rk[i] < rk[j]) {  // i is better than j; ties (equal ranks) are skipped
      const double gap = static_cast<double>(r[i]) - static_cast<double>(r[j]);
      compared += 1.0;
      correct += gap > 0 ? 1.0 : 0.0;
      margin_sum += gap;
      pair_sum += rlhf::detail::ranking_neg_log_sigmoid(gap - margin);
    }
  }
  for (unsigned offset = warp_size / 2; offset > 0; offset /= 2) {
    compared += __shfl_down_sync(full_warp, compared, offset);
    correct += __shfl_down_sync(full_warp, correct, offset);
    margin_sum += __shfl_down_sync(full_warp, margin_sum, offset);
    pair_sum += __shfl_down_sync(full_warp, pair_sum, offset);
  }
  // Every lane needs the prompt's weight w for its gradient: lane 0 holds the pair count.
  compared = __shfl_sync(full_warp, compared, 0);
  const double denom = compared_only ? compared : static_cast<double>(k * (k - 1) / 2);
  const double w = denom > 0 ? 1.0 / denom : 0.0;
  if (lane == 0) {
    scratch.data[0 * scratch.cols + p] = w * pair_sum;
    scratch.data[1 * scratch.cols + p] = correct;
    scratch.data[2 * scratch.cols + p] = compared;
    scratch.data[3 * scratch.cols + p] = margin_sum;
    scratch.data[4 * scratch.cols + p] =
        center > 0 ? rlhf::detail::ranking_center_penalty(r, k, center, pair_sums) : 0.0;
  }
  if (d_rewards.data == nullptr) return;
  double row_sum = 0;  // the pair_sums centering's sum of the prompt's rewards, in the generic path's order
  if (center > 0 && pair_sums)
    for (std::size_t i = 0; i < k; ++i) row_sum += static_cast<double>(r[i]);
  T* d = d_rewards.data + p * d_rewards.cols;
  for (std::size_t i = lane; i < d_rewards.cols; i += warp_size) {
    d[i] = i < k ? static_cast<T>(rlhf::detail::ranking_response_gradient(r, rk, i, k, margin, w, center, pair_sums,
                                                                          row_sum) *
                                  inv_prompts)
                 : T(0);
  }
}

}  // namespace cuda_kernels

/// rlhf::ranking_loss's per-prompt terms on the CUDA backend: one warp per prompt, 8 prompts per block (see
/// the file comment).
template <class T>
void rlhf_specialized_ranking_loss(const cuda_backend& b, matrix_view<const T, cuda_space> rewards,
                                   matrix_view<const std::int32_t, cuda_space> ranks,
                                   vector_view<const std::int32_t, cuda_space> counts, matrix_view<T, cuda_space> d_rewards,
                                   matrix_view<double, cuda_space> scratch, double margin, double center, bool pair_sums,
                                   bool compared_only) {
  constexpr unsigned warps = 8;
  const std::size_t prompts = rewards.rows;
  if (prompts == 0) return;
  const unsigned blocks = detail::grid_blocks((prompts + warps - 1) / warps, "rlhf::ranking_loss (CUDA kernel)");
  cuda_kernels::ranking_prompts<T, warps><<<blocks, warps * cuda_kernels::warp_size, 0, b.stream()>>>(
      rewards, ranks, counts, d_rewards, scratch, margin, center, 1.0 / static_cast<double>(prompts), pair_sums,
      compared_only);
  detail::cuda_check(cudaGetLastError(), "rlhf::ranking_loss (CUDA kernel)", "ranking_prompts<<<>>>");
}

}  // namespace rlhf::backends
