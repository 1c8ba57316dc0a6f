/// @file gae.hpp
/// @brief The Eigen backend's fused GAE kernel: one reverse pass per row, rows in parallel.
///
/// The generic rlhf::gae makes two reverse scans and five element passes over [B, T]; this kernel carries
/// the next valid value and advantage in registers and writes A and R in one reverse sweep per row
/// (Schulman et al. 2016, GAE, eq. 16, with masked steps skipped). O(B * T), parallel over rows (verl PR #2132,
/// slime PR #2205 measured the Python loop as the bottleneck).
#pragma once

#include <cstddef>

#include "rlhf/backends/eigen.hpp"
#include "rlhf/backends/view.hpp"

namespace rlhf::backends {

/// rlhf::gae's specialization for rlhf::eigen_backend (found by argument-dependent lookup). Arguments are
/// validated by rlhf::gae; `returns` may be empty (not wanted).
///
/// @tparam T float or double
/// @param b the backend (thread count)
/// @param rewards [B, T], read at valid positions only
/// @param values [B, T], read at valid positions only
/// @param mask [B, T], non-zero = valid
/// @param gamma discount in [0, 1]
/// @param lambda GAE lambda in [0, 1]
/// @param advantages output, [B, T], 0 at masked positions
/// @param returns output A + V, [B, T], 0 at masked positions; empty: not written
template <class T>
void rlhf_specialized_gae(const eigen_backend& b, matrix_view<const T, host_space> rewards,
                          matrix_view<const T, host_space> values, matrix_view<const mask_type, host_space> mask,
                          T gamma, T lambda, matrix_view<T, host_space> advantages,
                          matrix_view<T, host_space> returns) {
  const std::size_t rows = rewards.rows, cols = rewards.cols;
  if (rows * cols == 0) return;
  const T gl = gamma * lambda;
  const bool want_returns = !returns.empty();
  b.parallel_ranges(rows, rows * cols, [&](std::size_t rb, std::size_t re) {
    for (std::size_t r = rb; r < re; ++r) {
      const std::size_t base = r * cols;
      const T* rw = rewards.data + base;
      const T* v = values.data + base;
      const mask_type* m = mask.data + base;
      T* a = advantages.data + base;
      T* ret = want_returns ? returns.data + base : nullptr;
      T next_value = T(0), next_advantage = T(0);  // of the next valid step; 0 past the end of the row
      for (std::size_t t = cols; t-- > 0;) {
        if (m[t]) {
          const T vt = v[t];
          const T delta = rw[t] + gamma * next_value - vt;
          next_advantage = delta + gl * next_advantage;
          next_value = vt;
          a[t] = next_advantage;
          if (ret) ret[t] = next_advantage + vt;
        } else {
          a[t] = T(0);
          if (ret) ret[t] = T(0);
        }
      }
    }
  });
}

}  // namespace rlhf::backends
