/// @file kl_penalized_rewards.cuh
/// @brief The CUDA backend's one-pass kernel for rlhf::kl_penalized_rewards: the KL-penalized rewards with the
/// score placed and the KL statistics in one read of the KL (or of logp and ref_logp for InstructGPT's k1 KL,
/// computed on the way and written) and the mask, and one write of the rewards.
///
/// Same contract as rlhf::kl_penalized_rewards (found by argument-dependent lookup as
/// `rlhf_specialized_kl_penalized_rewards` and `rlhf_specialized_k1_kl_penalized_rewards`; arguments validated
/// and the scores shaped by the caller). One warp per row, eight rows per block: the warp finds the row's last
/// valid column from the row's end (one ballot per 32 mask bytes, usually one), then lane l takes the row's
/// elements l, l + 32, ... (coalesced) through rlhf::detail::kl_rewards_rows (rlhf/backends/kl_rewards_rows.hpp),
/// the lanes' sums are added by shuffles and lane 0 stores the row's. The rows' statistics are folded by the
/// backend's transform_reduce (a fixed order; rlhf::detail::kl_rewards_by_rows): the result does not depend
/// on the launch. The generic path made two row reductions, two element passes and four reductions over
/// [B, T] (Thrust launches).
///
/// CPU reference: the generic path of rlhf::kl_penalized_rewards (and the Eigen kernel);
/// tests/backends/kl_rewards_rows_test.cpp replays this kernel's split of the rows and its order of sums on the
/// host against it, and the GPU test holds it to the reference backend.
#pragma once

#include <cstddef>

#include "rlhf/backends/cuda.cuh"
#include "rlhf/backends/cuda/row_groups.cuh"
#include "rlhf/backends/kl_rewards_rows.hpp"
#include "rlhf/backends/view.hpp"

namespace rlhf::backends {

namespace cuda_kernels {

/// Rows (warps) per block of the rewards kernel.
inline constexpr unsigned kl_rewards_warps_per_block = 8;

/// The last column of a row whose mask is set, or -1: the warp reads 32 mask bytes at a time from the row's end.
__device__ inline long long warp_last_valid_column(const mask_type* row_mask, long long cols, unsigned lane) {
  for (long long end = cols; end > 0; end -= warp_size) {
    const long long t = end - static_cast<long long>(warp_size) + lane;
    const unsigned bits = __ballot_sync(full_warp, t >= 0 && row_mask[t] != 0);
    if (bits != 0) return end - static_cast<long long>(warp_size) + (31 - __clz(bits));  // the highest lane set
  }
  return -1;
}

template <class T, unsigned WarpsPerBlock>
__global__ void __launch_bounds__(WarpsPerBlock * warp_size)
    kl_rewards_row_kernel(rlhf::detail::kl_rewards_rows<T, cuda_space> rows, std::size_t count) {
  const unsigned lane = threadIdx.x % warp_size;
  const std::size_t r = static_cast<std::size_t>(blockIdx.x) * WarpsPerBlock + threadIdx.x / warp_size;
  if (r >= count) return;  // the whole warp leaves together
  const long long cols = static_cast<long long>(rows.mask.cols);
  const long long target = rows.target(warp_last_valid_column(rows.mask.data + r * rows.mask.cols, cols, lane));
  const rlhf::detail::kl_rewards_row_sums sums = warp_sum_fields(rows.write(r, target, lane, warp_size));
  if (lane == 0) rows.finish(r, target, sums);
}

/// The kernel as kl_rewards_by_rows's row runner: a warp per row on b's stream.
struct kl_rewards_warp_rows {
  const cuda_backend& b;
  template <class T>
  void operator()(const rlhf::detail::kl_rewards_rows<T, cuda_space>& rows, std::size_t count) const {
    constexpr unsigned warps = kl_rewards_warps_per_block;
    const unsigned blocks =
        detail::grid_blocks((count + warps - 1) / warps, "rlhf::kl_penalized_rewards (CUDA kernel)");
    kl_rewards_row_kernel<T, warps><<<blocks, warps * warp_size, 0, b.stream()>>>(rows, count);
    detail::cuda_check(cudaGetLastError(), "rlhf::kl_penalized_rewards (CUDA kernel)", "kl_rewards_row_kernel<<<>>>");
  }
};

}  // namespace cuda_kernels

/// rlhf::kl_penalized_rewards's specialization for rlhf::cuda_backend (see the file comment; the parameters
/// as the Eigen backend's hook documents them).
template <class T>
void rlhf_specialized_kl_penalized_rewards(const cuda_backend& b, matrix_view<const T, cuda_space> kl,
                                           matrix_view<const mask_type, cuda_space> mask,
                                           vector_view<const T, cuda_space> shaped_scores,
                                           matrix_view<T, cuda_space> rewards, T beta, int placement, double& kl_total,
                                           std::size_t& valid_tokens, double& scored_sum, std::size_t& scored_rows) {
  rlhf::detail::kl_rewards_by_rows<cuda_backend, T>(
      b, {kl, {}, {}, mask, shaped_scores, rewards, static_cast<T>(-beta), placement, nullptr},
      cuda_kernels::kl_rewards_warp_rows{b}, kl_total, valid_tokens, scored_sum, scored_rows);
}

/// The same pass with InstructGPT's k1 KL (logp - ref_logp, no clamp) computed on the way and written to `kl`
/// (+0 where masked): the logp overload of rlhf::kl_penalized_rewards calls it for k1 and k1_straight_through
/// without clamps.
template <class T>
void rlhf_specialized_k1_kl_penalized_rewards(const cuda_backend& b, matrix_view<const T, cuda_space> logp,
                                              matrix_view<const T, cuda_space> ref_logp, matrix_view<T, cuda_space> kl,
                                              matrix_view<const mask_type, cuda_space> mask,
                                              vector_view<const T, cuda_space> shaped_scores,
                                              matrix_view<T, cuda_space> rewards, T beta, int placement,
                                              double& kl_total, std::size_t& valid_tokens, double& scored_sum,
                                              std::size_t& scored_rows) {
  rlhf::detail::kl_rewards_by_rows<cuda_backend, T>(
      b, {logp, ref_logp, kl, mask, shaped_scores, rewards, static_cast<T>(-beta), placement, nullptr},
      cuda_kernels::kl_rewards_warp_rows{b}, kl_total, valid_tokens, scored_sum, scored_rows);
}

}  // namespace rlhf::backends
