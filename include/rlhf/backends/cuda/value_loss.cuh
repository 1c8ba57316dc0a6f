/// @file value_loss.cuh
/// @brief The CUDA backend's clipped value loss kernel: loss statistics and the gradient w.r.t. the new values
/// in one read of the inputs and one write of the gradient.
///
/// Same contract as the row-weighted path of rlhf::clipped_value_loss (found by argument-dependent lookup as
/// `rlhf_specialized_clipped_value_loss`; arguments validated, the aggregation's row weights computed). The row
/// kernel of cuda/row_loss.cuh (one block per row) with each valid token computed by
/// `rlhf::detail::value_loss_math` and summed by `value_token_sums_of` (rlhf/backends/value_loss_math.hpp, the
/// functions the generic path uses). The generic path on this backend made one element pass for the gradient
/// and a row reduction for the sums; here it is one pass, like the PPO-clip kernel's. (The two losses stay two
/// launches: InstructGPT's value model is separate from the policy, so they read different tensors and share
/// only the mask.)
///
/// CPU reference: `value_loss_generic` (rlhf/losses/value_loss.hpp); the GPU test holds this kernel to the
/// reference backend.
#pragma once

#include <cstddef>

#include "rlhf/backends/cuda.cuh"
#include "rlhf/backends/cuda/row_loss.cuh"
#include "rlhf/backends/value_loss_math.hpp"
#include "rlhf/backends/view.hpp"

namespace rlhf::backends {

namespace cuda_kernels {

/// One valid token of the clipped value loss: its gradient and its row sums.
struct value_loss_terms {
  rlhf::detail::value_loss_math math;
  struct result {
    double grad;
    rlhf::detail::value_row_sums sums;
  };
  __device__ result operator()(double value, double old_value, double ret) const {
    const rlhf::detail::value_token k = math(value, old_value, ret);
    return {k.grad, rlhf::detail::value_token_sums_of(k, value, ret)};
  }
};

}  // namespace cuda_kernels

/// rlhf::clipped_value_loss (given the row weights) on the CUDA backend: one block per row, then one fold of
/// the rows' sums (see the file comment).
template <class T>
void rlhf_specialized_clipped_value_loss(const cuda_backend& b, matrix_view<const T, cuda_space> values,
                                         matrix_view<const T, cuda_space> old_values,
                                         matrix_view<const T, cuda_space> returns,
                                         matrix_view<const mask_type, cuda_space> mask,
                                         vector_view<const double, cuda_space> w, matrix_view<T, cuda_space> d_values,
                                         double clip, double& loss, double& tokens, double& clipped, double& value,
                                         double& ret, double& sq) {
  const rlhf::detail::value_row_sums s = cuda_kernels::weighted_row_loss<rlhf::detail::value_row_sums>(
      b, values, old_values, returns, mask, w, d_values,
      cuda_kernels::value_loss_terms{rlhf::detail::value_loss_math{clip}}, "rlhf::clipped_value_loss (CUDA kernel)");
  loss = s.loss;
  tokens = s.tokens;
  clipped = s.clipped;
  value = s.value;
  ret = s.ret;
  sq = s.sq;
}

}  // namespace rlhf::backends
