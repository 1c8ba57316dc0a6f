/// @file ppo_clip_loss.cuh
/// @brief The CUDA backend's fused PPO-clip kernel: loss statistics and the gradient in one read of the
/// inputs and one write of the gradient.
///
/// Same contract as the row-weighted path of rlhf::ppo_clip_loss (found by argument-dependent lookup as
/// `rlhf_specialized_ppo_clip_loss`; arguments already validated, the aggregation's row weights `w`
/// already computed). The row kernel of cuda/row_loss.cuh (one block per row) with each valid token computed
/// by `rlhf::detail::ppo_clip_math` and summed by `ppo_token_sums_of` (rlhf/backends/ppo_clip_math.hpp, the
/// functions the generic path uses).
///
/// CPU reference: `ppo_clip_loss_generic` (rlhf/losses/ppo_clip_loss.hpp); the GPU test holds this kernel to
/// the reference backend.
#pragma once

#include <cstddef>

#include "rlhf/backends/cuda.cuh"
#include "rlhf/backends/cuda/row_loss.cuh"
#include "rlhf/backends/ppo_clip_math.hpp"
#include "rlhf/backends/view.hpp"

namespace rlhf::backends {

namespace cuda_kernels {

/// One valid token of PPO-clip: its gradient and its row sums.
struct ppo_clip_terms {
  rlhf::detail::ppo_clip_math math;
  struct result {
    double grad;
    rlhf::detail::ppo_row_sums sums;
  };
  __device__ result operator()(double logp, double old_logp, double adv) const {
    const rlhf::detail::ppo_token k = math(logp, old_logp, adv);
    return {k.grad, rlhf::detail::ppo_token_sums_of(k)};
  }
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
  const rlhf::detail::ppo_row_sums s = cuda_kernels::weighted_row_loss<rlhf::detail::ppo_row_sums>(
      b, logp, old_logp, adv, mask, w, d_logp,
      cuda_kernels::ppo_clip_terms{rlhf::detail::ppo_clip_math{eps_low, eps_high, dual_clip, log_ratio_clamp}},
      "rlhf::ppo_clip_loss (CUDA kernel)");
  loss = s.loss;
  tokens = s.tokens;
  clipped = s.clipped;
  approx_kl = s.approx_kl;
  policy_kl = s.policy_kl;
  ratio = s.ratio;
  dual = s.dual;
}

}  // namespace rlhf::backends
