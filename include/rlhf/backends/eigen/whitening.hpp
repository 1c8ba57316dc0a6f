/// @file whitening.hpp
/// @brief The Eigen backend's kernels for rlhf::whiten: the masked moments (also rlhf::compute_masked_moments)
/// and the normalize pass.
///
/// The moments use the same corrected two-pass algorithm as the generic path (Chan, Golub, LeVeque 1983: the
/// masked mean over all the data, then the deviations d from it, m2 = sum d^2 - (sum d)^2 / n), which keeps m2
/// exact to rounding even for data like 1e8 + N(0, 1) in double. Per-block statistics merged by the pairwise
/// formula would read the data once, but each block's mean carries an absolute error of an ulp of the offset,
/// which the merge's delta^2 term turns into a relative error of 1e-10 in m2 there (the large-offset
/// regression test in tests/ops/whitening_test.cpp). Each pass runs over fixed blocks of
/// `detail::eigen_moments_block` elements in parallel, folded in block order (the result does not depend on
/// the thread count); inside a block the mask becomes bit masks as wide as T once, and the sums are vectorized
/// (RLHF_SIMD_LOOP) over the masked values: NaN at masked positions never enters them.
#pragma once

#include <algorithm>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <utility>
#include <vector>

#include "rlhf/backends/eigen.hpp"
#include "rlhf/backends/view.hpp"
#include "rlhf/config.hpp"

namespace rlhf::backends {

namespace detail {

/// Elements per block of the moments' passes: the block's masked values and bit masks (scratch on the stack)
/// stay in L1 between the loops of a pass, for double too.
inline constexpr std::size_t eigen_moments_block = 2048;

/// The masked values of one block (+0 at masked positions) and the bit masks that select them, as wide as T:
/// the loops that sum them then read T-wide data only (widening the uint8 mask to 64-bit lanes in each sum
/// is what bounded those loops). `load` fills both and returns the number of valid positions.
template <class T>
struct eigen_masked_block {
  alignas(64) T kept[eigen_moments_block];
  alignas(64) eigen_bits<T> keep[eigen_moments_block];

  std::uint32_t load(const T* __restrict x, const mask_type* __restrict m, std::size_t n) {
    std::uint32_t count = 0;
    RLHF_SIMD_LOOP(reduction(+ : count))
    for (std::size_t i = 0; i < n; ++i) {
      const bool valid = m[i] != 0;
      count += valid ? 1u : 0u;
      keep[i] = eigen_keep_mask<T>(valid);
      kept[i] = std::bit_cast<T>(std::bit_cast<eigen_bits<T>>(x[i]) & keep[i]);
    }
    return count;
  }
};

/// Pass 1 over a block: the number of valid values and their sum.
template <class T>
void eigen_masked_block_count_sum(const T* x, const mask_type* m, std::size_t n, double& count, double& sum) {
  eigen_masked_block<T> block;
  count = block.load(x, m, n);
  double s = 0;
  RLHF_SIMD_LOOP(reduction(+ : s))
  for (std::size_t i = 0; i < n; ++i) s += static_cast<double>(block.kept[i]);
  sum = s;
}

/// Pass 2 over a block: the sums of d and d^2, d = x - mu over the valid values. The masked positions get T(mu)
/// (one bit select), so each contributes the same tiny e = T(mu) - mu (0 for double), taken out after the loop.
template <class T>
void eigen_masked_block_deviations(const T* x, const mask_type* m, std::size_t n, double mu, double& sum_d,
                                   double& sum_d2) {
  using bits = eigen_bits<T>;
  eigen_masked_block<T> block;
  const double masked = static_cast<double>(n) - block.load(x, m, n);
  const T mu_t = static_cast<T>(mu);
  const bits mu_bits = std::bit_cast<bits>(mu_t);
  double s1 = 0, s2 = 0;
  RLHF_SIMD_LOOP(reduction(+ : s1, s2))
  for (std::size_t i = 0; i < n; ++i) {
    const T value_or_mu = std::bit_cast<T>(std::bit_cast<bits>(block.kept[i]) | (mu_bits & ~block.keep[i]));
    const double d = static_cast<double>(value_or_mu) - mu;
    s1 += d;
    s2 += d * d;
  }
  const double e = static_cast<double>(mu_t) - mu;
  sum_d = s1 - masked * e;
  sum_d2 = s2 - masked * e * e;
}

}  // namespace detail

/// The masked moments' specialization for rlhf::eigen_backend (found by argument-dependent lookup; arguments
/// validated by the caller): count, mean and m2 of x over the valid positions.
template <class T>
void rlhf_specialized_masked_moments(const eigen_backend& b, matrix_view<const T, host_space> x,
                                     matrix_view<const mask_type, host_space> mask, double& count, double& mean,
                                     double& m2) {
  const std::size_t n = x.rows * x.cols;
  const std::size_t block = detail::eigen_moments_block;
  const std::size_t blocks = (n + block - 1) / block;
  count = mean = m2 = 0;
  if (n == 0) return;
  std::vector<double> pa(blocks), pb(blocks);
  // Runs f(begin, length, a, b) over the blocks in parallel, then folds the a's and b's in block order.
  const auto pass = [&](auto f) {
    b.parallel_ranges(blocks, n / eigen_backend::light_elements_per_work, [&](std::size_t kb, std::size_t ke) {
      for (std::size_t k = kb; k < ke; ++k) f(k * block, std::min(block, n - k * block), pa[k], pb[k]);
    });
    double a = 0, c = 0;
    for (std::size_t k = 0; k < blocks; ++k) {
      a += pa[k];
      c += pb[k];
    }
    return std::pair<double, double>{a, c};
  };
  const auto [cnt, sum] = pass([&](std::size_t begin, std::size_t len, double& c, double& s) {
    detail::eigen_masked_block_count_sum(x.data + begin, mask.data + begin, len, c, s);
  });
  if (cnt == 0) return;
  const double mu = sum / cnt;
  const auto [sum_d, sum_d2] = pass([&](std::size_t begin, std::size_t len, double& s1, double& s2) {
    detail::eigen_masked_block_deviations(x.data + begin, mask.data + begin, len, mu, s1, s2);
  });
  const double correction = sum_d / cnt;
  const double ss = sum_d2 - sum_d * correction;
  count = cnt;
  mean = mu + correction;
  m2 = ss > 0 ? ss : 0.0;
}

/// rlhf::whiten's normalize pass for rlhf::eigen_backend: out = valid ? (x - mean) scale + add_back : +0, in T
/// with the mean split into T(mean) and a correction (the generic path rounds a double result to T: the two
/// differ by a few ulps of the result); one vectorized loop, the mask applied by bits (detail::eigen_keep_if),
/// ranges in parallel. `out` may be `x`.
template <class T>
void rlhf_specialized_whiten(const eigen_backend& b, matrix_view<const T, host_space> x,
                             matrix_view<const mask_type, host_space> mask, matrix_view<T, host_space> out, double mean,
                             double scale, double add_back) {
  const std::size_t n = x.rows * x.cols;
  // mean = mu + corr with mu = T(mean): x - mu is exact in T when x is within a factor of 2 of mu (Sterbenz),
  // so (x - mu) - corr keeps the precision of the double path even for data like 1000 + N(0, 1) in float.
  const T mu = static_cast<T>(mean), corr = static_cast<T>(mean - static_cast<double>(mu));
  const T sc = static_cast<T>(scale), add = static_cast<T>(add_back);
  const T* in = x.data;  // not __restrict: out may be x
  T* dst = out.data;
  const mask_type* m = mask.data;
  b.parallel_ranges(n, n / eigen_backend::light_elements_per_work, [=](std::size_t begin, std::size_t end) {
    for (std::size_t i = begin; i < end; ++i) {
      dst[i] = detail::eigen_keep_if(((in[i] - mu) - corr) * sc + add, m[i] != 0);
    }
  });
}

}  // namespace rlhf::backends
