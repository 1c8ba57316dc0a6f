/// @file whitening.hpp
/// @brief The Eigen backend's kernels for rlhf::whiten: the masked moments (also rlhf::compute_masked_moments)
/// and the normalize pass.
///
/// The same corrected two-pass algorithm as the generic path (Chan, Golub, LeVeque 1983: the masked mean,
/// then the deviations d from it, m2 = sum d^2 - (sum d)^2 / n), with each pass over fixed blocks of
/// `eigen_backend::reduce_block` elements run in parallel and, inside a block, eight double lanes (independent
/// add chains the compiler vectorizes) instead of one dependent chain of double adds. Block results are folded
/// in block order: the result does not depend on the thread count. Masked positions are selected out, so NaN
/// there never enters the sums.
#pragma once

#include <Eigen/Core>

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

/// rlhf::whiten's normalize pass for rlhf::eigen_backend: out = valid ? (x - mean) scale + add_back : 0, in T
/// with the mean split into T(mean) and a correction (the generic path rounds a double result to T: the two
/// differ by a few ulps of the result), as Eigen's
/// vectorized select over chunks whose mask was converted to T; chunks in parallel. `out` may be `x`.
template <class T>
void rlhf_specialized_whiten(const eigen_backend& b, matrix_view<const T, host_space> x,
                             matrix_view<const mask_type, host_space> mask, matrix_view<T, host_space> out, double mean,
                             double scale, double add_back) {
  using array_t = Eigen::Array<T, Eigen::Dynamic, 1>;
  constexpr std::size_t chunk = 1024;
  const std::size_t n = x.rows * x.cols;
  // mean = mu + corr with mu = T(mean): x - mu is exact in T when x is within a factor of 2 of mu (Sterbenz),
  // so (x - mu) - corr keeps the precision of the double path even for data like 1000 + N(0, 1) in float.
  const T mu = static_cast<T>(mean), corr = static_cast<T>(mean - static_cast<double>(mu));
  const T sc = static_cast<T>(scale), add = static_cast<T>(add_back);
  const std::size_t chunks = (n + chunk - 1) / chunk;
  b.parallel_ranges(chunks, n, [&](std::size_t cb, std::size_t ce) {
    alignas(64) T valid[chunk];
    for (std::size_t c = cb; c < ce; ++c) {
      const std::size_t begin = c * chunk, len = std::min(chunk, n - begin);
      const mask_type* __restrict m = mask.data + begin;
      for (std::size_t i = 0; i < len; ++i) valid[i] = m[i] != 0 ? T(1) : T(0);
      const auto k = static_cast<Eigen::Index>(len);
      const Eigen::Map<const array_t> xv(x.data + begin, k), vv(valid, k);
      Eigen::Map<array_t>(out.data + begin, k) = (vv != T(0)).select(((xv - mu) - corr) * sc + add, T(0));
    }
  });
}

}  // namespace rlhf::backends
