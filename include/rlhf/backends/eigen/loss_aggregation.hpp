/// @file loss_aggregation.hpp
/// @brief The Eigen backend's count of valid tokens per row, the input of every loss aggregation's row weights
/// (rlhf::aggregation_row_weights).
///
/// The generic path folds the mask into a double per row with reduce_rows: a dependent chain of double adds,
/// about 3 cycles per element, which made the row weights cost as much as a whole fused loss. Here each row
/// is an integer sum of `m != 0` (exact and vectorized), rows in parallel (`detail::eigen_valid_counts`,
/// defined in rlhf/backends/eigen.hpp because the PPO kernel uses it too).
#pragma once

#include "rlhf/backends/eigen.hpp"
#include "rlhf/backends/view.hpp"

namespace rlhf::backends {

/// The valid-token count per row for rlhf::eigen_backend (found by argument-dependent lookup from the loss
/// aggregation; `counts` has one element per row of `mask`).
inline void rlhf_specialized_valid_counts(const eigen_backend& b, matrix_view<const mask_type, host_space> mask,
                                          vector_view<double, host_space> counts) {
  detail::eigen_valid_counts(b, mask, counts.data);
}

}  // namespace rlhf::backends
