/// @file ppo_clip_loss.cuh
/// @brief The CUDA backend's fused PPO-clip kernel: loss statistics and the gradient in one read of the
/// inputs and one write of the gradient.
///
/// Same contract as the row-weighted path of rlhf::ppo_clip_loss (found by argument-dependent lookup as
/// `rlhf_specialized_ppo_clip_loss`; arguments already validated, the aggregation's row weights `w`
/// already computed). One block per row: each thread takes a strided slice of the row (coalesced), computes
/// every valid token with `rlhf::detail::ppo_clip_math` (rlhf/backends/ppo_clip_math.hpp, the function the
/// generic path uses), writes `w_r * grad` (0 at masked positions, which are never read), and accumulates
/// the row's `ppo_row_sums` in double. The block's sums are merged by warp shuffles and then across warps;
/// thread 0 stores the row's sums with the loss weighted by `w_r`. The rows' sums are folded on the backend
/// with `transform_reduce`, whose order is fixed (thrust_backend: blocks of rows in order), so the result
/// does not depend on the launch.
///
/// CPU reference: `ppo_clip_loss_generic` (rlhf/losses/ppo_clip_loss.hpp) with the same per-token function;
/// the GPU test holds this kernel to the reference backend through the conformance suite.
#pragma once

#include <cstddef>

#include "rlhf/backends/cuda.cuh"
#include "rlhf/backends/ppo_clip_math.hpp"
#include "rlhf/backends/view.hpp"

namespace rlhf::backends {

namespace cuda_kernels {

__device__ inline rlhf::detail::ppo_row_sums warp_sum(rlhf::detail::ppo_row_sums s) {
  for (unsigned offset = warp_size / 2; offset > 0; offset /= 2) {
    rlhf::detail::ppo_row_sums o;
    o.loss = __shfl_down_sync(full_warp, s.loss, offset);
    o.tokens = __shfl_down_sync(full_warp, s.tokens, offset);
    o.clipped = __shfl_down_sync(full_warp, s.clipped, offset);
    o.approx_kl = __shfl_down_sync(full_warp, s.approx_kl, offset);
    o.policy_kl = __shfl_down_sync(full_warp, s.policy_kl, offset);
    o.ratio = __shfl_down_sync(full_warp, s.ratio, offset);
    o.dual = __shfl_down_sync(full_warp, s.dual, offset);
    s = s + o;
  }
  return s;
}

template <class T, unsigned Threads>
__global__ void __launch_bounds__(Threads)
    ppo_clip_rows(matrix_view<const T, cuda_space> logp, matrix_view<const T, cuda_space> old_logp,
                  matrix_view<const T, cuda_space> adv, matrix_view<const mask_type, cuda_space> mask,
                  vector_view<const double, cuda_space> w, matrix_view<T, cuda_space> d_logp,
                  rlhf::detail::ppo_clip_math math, rlhf::detail::ppo_row_sums* row_sums) {
  static_assert(Threads % warp_size == 0 && Threads <= warp_size * warp_size, "ppo_clip_rows: whole warps, at most 32");
  constexpr unsigned warps = Threads / warp_size;
  const std::size_t r = blockIdx.x, cols = logp.cols, base = r * cols;
  const double wr = w.data[r];
  const bool want_grad = d_logp.data != nullptr;
  rlhf::detail::ppo_row_sums s;
  for (std::size_t t = threadIdx.x; t < cols; t += Threads) {
    const std::size_t i = base + t;
    if (!mask.data[i]) {
      if (want_grad) d_logp.data[i] = T(0);
      continue;
    }
    const rlhf::detail::ppo_token k =
        math(static_cast<double>(logp.data[i]), static_cast<double>(old_logp.data[i]), static_cast<double>(adv.data[i]));
    if (want_grad) d_logp.data[i] = static_cast<T>(wr * k.grad);
    s = s + rlhf::detail::ppo_row_sums{k.loss,     1.0,       k.clipped ? 1.0 : 0.0, 0.5 * k.log_ratio * k.log_ratio,
                                       -k.log_ratio, k.ratio, k.dual ? 1.0 : 0.0};
  }
  // Plain arrays: a __shared__ variable cannot have a constructor.
  __shared__ double shared[7][warps];
  const unsigned lane = threadIdx.x % warp_size, warp = threadIdx.x / warp_size;
  s = warp_sum(s);
  if (lane == 0) {
    shared[0][warp] = s.loss;
    shared[1][warp] = s.tokens;
    shared[2][warp] = s.clipped;
    shared[3][warp] = s.approx_kl;
    shared[4][warp] = s.policy_kl;
    shared[5][warp] = s.ratio;
    shared[6][warp] = s.dual;
  }
  __syncthreads();
  if (warp == 0) {
    rlhf::detail::ppo_row_sums total;
    if (lane < warps) {
      total = {shared[0][lane], shared[1][lane], shared[2][lane], shared[3][lane],
               shared[4][lane], shared[5][lane], shared[6][lane]};
    }
    total = warp_sum(total);
    if (lane == 0) {
      total.loss *= wr;  // the aggregation's row weight (rlhf::aggregation_row_weights)
      row_sums[r] = total;
    }
  }
}

struct add_ppo_row_sums {
  RLHF_HOST_DEVICE rlhf::detail::ppo_row_sums operator()(const rlhf::detail::ppo_row_sums& a,
                                                         const rlhf::detail::ppo_row_sums& b) const {
    return a + b;
  }
};
struct same_ppo_row_sums {
  RLHF_HOST_DEVICE rlhf::detail::ppo_row_sums operator()(rlhf::detail::ppo_row_sums s) const { return s; }
};

}  // namespace cuda_kernels

/// rlhf::ppo_clip_loss (given the row weights) on the CUDA backend: one block per row, then one fold of the
/// rows' sums (see the file comment).
template <class T>
void rlhf_specialized_ppo_clip_loss(const cuda_backend& b, matrix_view<const T, cuda_space> logp,
                                    matrix_view<const T, cuda_space> old_logp, matrix_view<const T, cuda_space> adv,
                                    matrix_view<const mask_type, cuda_space> mask, vector_view<const double, cuda_space> w,
                                    matrix_view<T, cuda_space> d_logp, double eps_low, double eps_high, double dual_clip,
                                    double log_ratio_clamp, double& loss, double& tokens, double& clipped,
                                    double& approx_kl, double& policy_kl, double& ratio, double& dual) {
  using sums = rlhf::detail::ppo_row_sums;
  const std::size_t rows = logp.rows;
  loss = tokens = clipped = approx_kl = policy_kl = ratio = dual = 0.0;
  if (rows == 0) return;
  auto row_sums = b.allocate<sums>(1, rows);
  constexpr unsigned threads = cuda_backend::row_block_threads;
  cuda_kernels::ppo_clip_rows<T, threads><<<static_cast<unsigned>(rows), threads, 0, b.stream()>>>(
      logp, old_logp, adv, mask, w, d_logp, rlhf::detail::ppo_clip_math{eps_low, eps_high, dual_clip, log_ratio_clamp},
      row_sums.data());
  detail::cuda_check(cudaGetLastError(), "rlhf::ppo_clip_loss (CUDA kernel)", "ppo_clip_rows<<<>>>");
  const vector_view<const sums, cuda_space> all{row_sums.data(), rows};
  const sums s = b.transform_reduce(sums{}, cuda_kernels::add_ppo_row_sums{}, cuda_kernels::same_ppo_row_sums{}, all);
  loss = s.loss;
  tokens = s.tokens;
  clipped = s.clipped;
  approx_kl = s.approx_kl;
  policy_kl = s.policy_kl;
  ratio = s.ratio;
  dual = s.dual;
}

}  // namespace rlhf::backends
