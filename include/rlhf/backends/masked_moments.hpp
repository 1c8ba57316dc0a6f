/// @file masked_moments.hpp
/// @brief Mergeable count, mean and sum of squared deviations of a set of values (Chan, Golub, LeVeque 1979):
/// the statistics of masked whitening (rlhf/ops/whitening.hpp) and of the kernels that produce them on the way
/// (rlhf::kl_penalized_advantages). Host-and-device code, so a kernel merges its partial statistics with the
/// same function the CPU paths use.
#pragma once

#include <cmath>

#include "rlhf/config.hpp"

namespace rlhf {

/// Which variance estimator to use: divide the sum of squared deviations by n (`biased`, population
/// variance: ZGL, ORL, NEMO) or by n - 1 (`bessel`, unbiased sample variance: TRL0, TRL1, VERL).
enum class variance_kind : unsigned char { biased, bessel };

/// Mergeable partial statistics of a set of values: how many, their mean, and the sum of squared
/// deviations from that mean (m2). All in double, whatever the element type of the data.
///
/// An empty set is {0, 0, 0}. Two sets merge with `combine` (Chan et al.'s parallel formula), so
/// ranks or micro-batches can each compute theirs and merge them before whitening.
struct masked_moments {
  double count = 0;  ///< number of values (valid positions)
  double mean = 0;   ///< their mean (0 when count == 0)
  double m2 = 0;     ///< sum over the values of (x - mean)^2

  /// Merges two partial statistics (Chan, Golub, LeVeque 1979): exact in exact arithmetic, and free
  /// of cancellation because it only ever adds non-negative terms to m2.
  RLHF_HOST_DEVICE static masked_moments combine(const masked_moments& a, const masked_moments& b) {
    if (a.count == 0) return b;
    if (b.count == 0) return a;
    const double n = a.count + b.count;
    const double delta = b.mean - a.mean;
    const double fb = b.count / n;
    return {n, a.mean + delta * fb, a.m2 + b.m2 + delta * delta * a.count * fb};
  }

  /// The variance of the values: m2 / count (`biased`) or m2 / (count - 1) (`bessel`).
  /// @return 0 when count < 2: one value has no spread to estimate (and Bessel's n - 1 would be 0);
  ///         never NaN (ROLL issue #475).
  RLHF_HOST_DEVICE double variance(variance_kind kind) const {
    if (count < 2) return 0.0;
    return m2 / (kind == variance_kind::bessel ? count - 1.0 : count);
  }

  /// sqrt(variance(kind)).
  RLHF_HOST_DEVICE double stddev(variance_kind kind) const { return sqrt(variance(kind)); }
};

/// Free-function spelling of masked_moments::combine.
RLHF_HOST_DEVICE inline masked_moments combine(const masked_moments& a, const masked_moments& b) {
  return masked_moments::combine(a, b);
}

}  // namespace rlhf
