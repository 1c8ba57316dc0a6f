/// @file rope.hpp
/// @brief The Eigen backend's rotary position embedding (Su et al. 2021, RoFormer, eq. 34), forward and
///        backward: each row's rotation computed once and applied to every head.
///
/// Same contract as rlhf::rope_forward / _backward (rlhf/models/layers/rope.hpp; found by argument-dependent
/// lookup as `rlhf_specialized_rope_forward` and `_backward`, arguments validated). The generic path runs one
/// index per rotated pair and evaluates, for every pair of every head, `pow` for the frequency and `cos` and
/// `sin` of the angle: H times per row what the row needs, since every head of a row turns by the same
/// angles. Here the head_dim / 2 frequencies are computed once per call and the cos / sin once per row, with
/// the same expressions in T as the generic functor, so the angles are the generic path's bit for bit; the
/// rotation of the row's heads is then a plain loop, equal to the generic one up to the compiler's choice of
/// contracting its multiply-adds into FMAs (tests/backends/eigen_test.cpp). `out` may be `x`.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "rlhf/backends/eigen.hpp"
#include "rlhf/backends/view.hpp"

namespace rlhf::backends {

namespace detail {

/// Rotates every head of every row of x by its position's angles, `sign` = +1 forward, -1 backward.
template <class T>
void rope_eigen(const eigen_backend& b, matrix_view<const T, host_space> x,
                vector_view<const std::int32_t, host_space> positions, std::size_t head_dim,
                matrix_view<T, host_space> out, double theta, T sign) {
  const std::size_t half = head_dim / 2, cols = x.cols;
  // theta^(-2i / head_dim), exactly as rope_rotate_pair computes it.
  std::vector<T> freq(half);
  const T theta_t = static_cast<T>(theta);
  for (std::size_t p = 0; p < half; ++p)
    freq[p] = T(1) / std::pow(theta_t, static_cast<T>(2 * p) / static_cast<T>(head_dim));
  // A row costs head_dim / 2 cos and sin (about 16 element operations each) and a rotation of its columns.
  b.parallel_ranges(x.rows, x.rows * (cols + 16 * head_dim), [&](std::size_t first, std::size_t last) {
    std::vector<T> cs(half), sn(half);
    for (std::size_t r = first; r < last; ++r) {
      const T pos = static_cast<T>(positions[r]);
      for (std::size_t p = 0; p < half; ++p) {
        const T angle = pos * freq[p];
        cs[p] = std::cos(angle);
        sn[p] = sign * std::sin(angle);
      }
      const T* xr = x.data + r * cols;
      T* o = out.data + r * cols;
      for (std::size_t h0 = 0; h0 < cols; h0 += head_dim) {
        for (std::size_t p = 0; p < half; ++p) {
          const T x0 = xr[h0 + 2 * p], x1 = xr[h0 + 2 * p + 1];
          o[h0 + 2 * p] = x0 * cs[p] - x1 * sn[p];
          o[h0 + 2 * p + 1] = x0 * sn[p] + x1 * cs[p];
        }
      }
    }
  });
}

}  // namespace detail

/// rlhf::rope_forward's specialization for rlhf::eigen_backend (see the file comment).
template <class T>
void rlhf_specialized_rope_forward(const eigen_backend& b, matrix_view<const T, host_space> x,
                                   vector_view<const std::int32_t, host_space> positions, std::size_t head_dim,
                                   matrix_view<T, host_space> out, double theta) {
  detail::rope_eigen(b, x, positions, head_dim, out, theta, T(1));
}

/// rlhf::rope_backward's specialization for rlhf::eigen_backend: the inverse rotation (see the file comment).
template <class T>
void rlhf_specialized_rope_backward(const eigen_backend& b, matrix_view<const T, host_space> d_out,
                                    vector_view<const std::int32_t, host_space> positions, std::size_t head_dim,
                                    matrix_view<T, host_space> d_x, double theta) {
  detail::rope_eigen(b, d_out, positions, head_dim, d_x, theta, T(-1));
}

}  // namespace rlhf::backends
