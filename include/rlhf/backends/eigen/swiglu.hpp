/// @file swiglu.hpp
/// @brief The Eigen backend's SwiGLU gate (Shazeer 2020, eq. 6), forward and backward, with a vectorized
///        sigmoid.
///
/// Same contract and formulas as rlhf::swiglu_forward / _backward (rlhf/models/layers/swiglu.hpp; found by
/// argument-dependent lookup as `rlhf_specialized_swiglu_forward` and `_backward`, arguments validated). The
/// generic element map calls a scalar double `exp` behind a branch per element, which no compiler
/// vectorizes. Here each block of `swiglu_block` elements takes e = exp(-|g|) with Eigen's packet exp (in T:
/// float for float inputs), the stable sigmoid s = 1 / (1 + e) for g >= 0 and e / (1 + e) otherwise as a
/// select, then one plain loop that reads gate, up (and d_out) of an element before it writes its outputs,
/// so every aliasing the contract allows stays valid. Results agree with the generic path to rounding in T
/// (tests/backends/eigen_test.cpp).
#pragma once

#include <Eigen/Core>

#include <algorithm>
#include <cstddef>

#include "rlhf/backends/eigen.hpp"
#include "rlhf/backends/view.hpp"
#include "rlhf/config.hpp"

namespace rlhf::backends {

namespace detail {

/// Elements per block: the block's sigmoids stay in L1 between the two passes.
inline constexpr std::size_t swiglu_block = 1024;

/// s[i] = sigmoid(g[i]) for i < n, without overflow (exp only of -|g|).
template <class T>
void swiglu_sigmoid_block(const T* g, std::size_t n, Eigen::Array<T, Eigen::Dynamic, 1>& s) {
  const auto len = static_cast<Eigen::Index>(n);
  const Eigen::Map<const Eigen::Array<T, Eigen::Dynamic, 1>> gm(g, len);
  auto sm = s.head(len);
  sm = (-gm.abs()).exp();
  sm = (gm >= T(0)).select(T(1) / (T(1) + sm), sm / (T(1) + sm));
}

/// Runs body(begin, length, s) over [0, n) in blocks of swiglu_block elements from 0, whole blocks split
/// across the backend's threads, with s holding the sigmoids of the block's gates.
///
/// The blocks start at multiples of swiglu_block whatever the thread count: Eigen's exp takes a block's last
/// length % packet-size elements by its scalar path, whose bits differ from the packet path's, so blocks cut at
/// the threads' boundaries gave different results on 1 and 2 threads (seen with AVX-512's 16 floats a packet).
template <class T, class Body>
void swiglu_blocks(const eigen_backend& b, const T* gate, std::size_t n, Body body) {
  const std::size_t blocks = (n + swiglu_block - 1) / swiglu_block;
  // An element costs an exp and a division: more than a light map, less than a log-prob row.
  b.parallel_ranges(blocks, n, [&](std::size_t first, std::size_t last) {
    Eigen::Array<T, Eigen::Dynamic, 1> s(static_cast<Eigen::Index>(swiglu_block));
    for (std::size_t k = first; k < last; ++k) {
      const std::size_t i0 = k * swiglu_block, len = std::min(swiglu_block, n - i0);
      swiglu_sigmoid_block(gate + i0, len, s);
      body(i0, len, s.data());
    }
  });
}

}  // namespace detail

/// rlhf::swiglu_forward's specialization for rlhf::eigen_backend: out = gate * s * up (see the file comment).
template <class T>
void rlhf_specialized_swiglu_forward(const eigen_backend& b, matrix_view<const T, host_space> gate,
                                     matrix_view<const T, host_space> up, matrix_view<T, host_space> out) {
  const T* g = gate.data;
  const T* u = up.data;
  T* o = out.data;
  detail::swiglu_blocks(b, g, gate.size(), [g, u, o](std::size_t i0, std::size_t len, const T* s) {
    RLHF_SIMD_LOOP()
    for (std::size_t k = 0; k < len; ++k) {
      const std::size_t i = i0 + k;
      o[i] = g[i] * s[k] * u[i];
    }
  });
}

/// rlhf::swiglu_backward's specialization for rlhf::eigen_backend:
/// d_gate = d_out * up * s * (1 + gate (1 - s)), d_up = d_out * gate * s (see the file comment).
template <class T>
void rlhf_specialized_swiglu_backward(const eigen_backend& b, matrix_view<const T, host_space> gate,
                                      matrix_view<const T, host_space> up, matrix_view<const T, host_space> d_out,
                                      matrix_view<T, host_space> d_gate, matrix_view<T, host_space> d_up) {
  const T* g = gate.data;
  const T* u = up.data;
  const T* d = d_out.data;
  T* dg = d_gate.data;
  T* du = d_up.data;
  detail::swiglu_blocks(b, g, gate.size(), [g, u, d, dg, du](std::size_t i0, std::size_t len, const T* s) {
    // No __restrict: d_gate may be gate or d_out, d_up may be up or d_out; every element's inputs are read
    // before its outputs are written.
    RLHF_SIMD_LOOP()
    for (std::size_t k = 0; k < len; ++k) {
      const std::size_t i = i0 + k;
      const T gi = g[i], ui = u[i], di = d[i], si = s[k];
      dg[i] = di * ui * si * (T(1) + gi * (T(1) - si));
      du[i] = di * gi * si;
    }
  });
}

}  // namespace rlhf::backends
