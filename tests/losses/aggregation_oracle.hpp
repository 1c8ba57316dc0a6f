// Test oracle shared by the loss tests: the row weights of the four aggregation modes, written out
// from the definitions in docs/algorithms.md (loss = sum_r w_r * sum_t m_rt * l_rt).
#pragma once

#include <cstddef>
#include <vector>

#include "rlhf/losses/loss_aggregation.hpp"

namespace rlhf::test {
// Row weights of the four aggregation modes, written out.
inline std::vector<double> naive_weights(const std::vector<rlhf::mask_type>& m, std::size_t rows, std::size_t cols,
                                  const rlhf::loss_aggregation& agg) {
  std::vector<double> n(rows, 0);
  double tokens = 0, seqs = 0;
  for (std::size_t r = 0; r < rows; ++r) {
    for (std::size_t c = 0; c < cols; ++c) n[r] += m[r * cols + c] ? 1 : 0;
    tokens += n[r];
    seqs += n[r] > 0 ? 1 : 0;
  }
  if (agg.global_token_count > 0) tokens = agg.global_token_count;
  if (agg.global_sequence_count > 0) seqs = agg.global_sequence_count;
  const double L = agg.norm_length > 0 ? agg.norm_length : static_cast<double>(cols);
  std::vector<double> w(rows, 0);
  for (std::size_t r = 0; r < rows; ++r) {
    if (n[r] == 0) continue;
    switch (agg.mode) {
      case rlhf::aggregation_mode::token_mean: w[r] = 1 / tokens; break;
      case rlhf::aggregation_mode::seq_mean_token_mean: w[r] = 1 / (n[r] * seqs); break;
      case rlhf::aggregation_mode::seq_mean_token_sum: w[r] = 1 / seqs; break;
      case rlhf::aggregation_mode::seq_mean_token_sum_norm: w[r] = 1 / (seqs * L); break;
    }
  }
  return w;
}
}  // namespace rlhf::test
