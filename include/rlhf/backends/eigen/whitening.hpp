/// @file whitening.hpp
/// @brief The Eigen backend's kernel for the masked moments of rlhf::whiten and rlhf::compute_masked_moments.
///
/// The same corrected two-pass algorithm as the generic path (Chan, Golub, LeVeque 1983: the masked mean,
/// then the deviations d from it, m2 = sum d^2 - (sum d)^2 / n), with each pass over fixed blocks of
/// `eigen_backend::reduce_block` elements run in parallel and, inside a block, eight double lanes (independent
/// add chains the compiler vectorizes) instead of one dependent chain of double adds. Block results are folded
/// in block order: the result does not depend on the thread count. Masked positions are selected out, so NaN
/// there never enters the sums.
#pragma once

#include <algorithm>
#include <cstddef>
#include <utility>
#include <vector>

#include "rlhf/backends/eigen.hpp"
#include "rlhf/backends/view.hpp"

namespace rlhf::backends {

namespace detail {

// Sums f(x[i], m[i]) -> {a, b} over [begin, end) in eight lanes; returns the two lane totals.
template <class T, class F>
void eigen_masked_lane_sums(const T* x, const mask_type* m, std::size_t begin, std::size_t end, F f, double& a,
                            double& b) {
  constexpr std::size_t lanes = 8;
  double sa[lanes] = {}, sb[lanes] = {};
  std::size_t i = begin;
  for (; i + lanes <= end; i += lanes) {
    for (std::size_t j = 0; j < lanes; ++j) f(x[i + j], m[i + j] != 0, sa[j], sb[j]);
  }
  for (std::size_t j = 0; i < end; ++i, ++j) f(x[i], m[i] != 0, sa[j], sb[j]);
  a = 0;
  b = 0;
  for (std::size_t j = 0; j < lanes; ++j) {
    a += sa[j];
    b += sb[j];
  }
}

}  // namespace detail

/// The masked moments' specialization for rlhf::eigen_backend (found by argument-dependent lookup; arguments
/// validated by the caller): count, mean and m2 of x over the valid positions.
template <class T>
void rlhf_specialized_masked_moments(const eigen_backend& b, matrix_view<const T, host_space> x,
                                     matrix_view<const mask_type, host_space> mask, double& count, double& mean,
                                     double& m2) {
  const std::size_t n = x.rows * x.cols;
  const std::size_t block = eigen_backend::reduce_block;
  const std::size_t blocks = (n + block - 1) / block;
  count = mean = m2 = 0;
  if (n == 0) return;
  std::vector<double> pa(blocks), pb(blocks);
  const auto pass = [&](auto f) {
    b.parallel_ranges(blocks, n, [&](std::size_t kb, std::size_t ke) {
      for (std::size_t k = kb; k < ke; ++k) {
        detail::eigen_masked_lane_sums(x.data, mask.data, k * block, std::min(n, (k + 1) * block), f, pa[k], pb[k]);
      }
    });
    double a = 0, c = 0;
    for (std::size_t k = 0; k < blocks; ++k) {  // block order: independent of the thread count
      a += pa[k];
      c += pb[k];
    }
    return std::pair<double, double>{a, c};
  };
  // Pass 1: count and sum.
  const auto [cnt, sum] = pass([](T v, bool valid, double& c, double& s) {
    c += valid ? 1.0 : 0.0;
    s += valid ? static_cast<double>(v) : 0.0;
  });
  if (cnt == 0) return;
  const double mu = sum / cnt;
  // Pass 2: sum of deviations and of their squares.
  const auto [sum_d, sum_d2] = pass([mu](T v, bool valid, double& sd, double& sd2) {
    const double d = valid ? static_cast<double>(v) - mu : 0.0;
    sd += d;
    sd2 += d * d;
  });
  const double correction = sum_d / cnt;
  const double ss = sum_d2 - sum_d * correction;
  count = cnt;
  mean = mu + correction;
  m2 = ss > 0 ? ss : 0.0;
}

}  // namespace rlhf::backends
