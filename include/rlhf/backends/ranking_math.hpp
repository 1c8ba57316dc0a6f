/// @file ranking_math.hpp
/// @brief The per-pair and per-response arithmetic of the pairwise ranking loss (Ouyang et al. 2022,
/// InstructGPT, eq. 1, with TRL's optional margin and centering), shared by the generic path
/// (rlhf/losses/ranking_loss.hpp) and the CUDA kernel (rlhf/backends/cuda/ranking_loss.cuh), so that every
/// path computes the same expressions. Host-and-device code, in double.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>

#include "rlhf/config.hpp"

namespace rlhf::detail {

/// -log sigma(x) = softplus(-x) with softplus(z) = max(z, 0) + log1p(exp(-|z|)): finite for any finite x
/// (never log(sigmoid(x)), which is -inf once sigmoid underflows; DeepSpeedExamples #316).
RLHF_HOST_DEVICE inline double ranking_neg_log_sigmoid(double x) {
  const double z = -x;
  return fmax(z, 0.0) + log1p(exp(-fabs(z)));
}

/// sigma(-x) = 1 - sigma(x), evaluated without overflow.
RLHF_HOST_DEVICE inline double ranking_sigmoid_of_negative(double x) {
  if (x >= 0) {
    const double e = exp(-x);
    return e / (1.0 + e);
  }
  return 1.0 / (1.0 + exp(x));
}

/// The centering penalty of one prompt's k rewards (Eisenstein et al. 2023): c * mean_i r_i^2, or (pair_sums)
/// c * mean over the C(k, 2) pairs of (r_i + r_j)^2.
template <class T>
RLHF_HOST_DEVICE double ranking_center_penalty(const T* r, std::size_t k, double center, bool pair_sums) {
  double s = 0;
  if (pair_sums) {
    for (std::size_t i = 0; i < k; ++i)
      for (std::size_t j = i + 1; j < k; ++j) {
        const double t = static_cast<double>(r[i]) + static_cast<double>(r[j]);
        s += t * t;
      }
    return center * s / static_cast<double>(k * (k - 1) / 2);
  }
  for (std::size_t i = 0; i < k; ++i) s += static_cast<double>(r[i]) * static_cast<double>(r[i]);
  return center * s / static_cast<double>(k);
}

/// d/dr_i of the centering penalty (see ranking_center_penalty): 2c r_i / k, or (pair_sums)
/// d/dr_i of c/C(k,2) sum_{i<j} (r_i + r_j)^2 = 2c ((k - 2) r_i + sum_j r_j) / C(k,2), `row_sum` = sum_j r_j.
RLHF_HOST_DEVICE inline double ranking_center_gradient(double ri, std::size_t k, double center, bool pair_sums,
                                                       double row_sum) {
  const double all = static_cast<double>(k * (k - 1) / 2);
  return pair_sums ? center * 2.0 * (static_cast<double>(k - 2) * ri + row_sum) / all
                   : center * 2.0 * ri / static_cast<double>(k);
}

/// d loss_p / d r_i of one prompt (before the 1/P of the mean over prompts): -w sum over the responses j that
/// i beats of sigma(-(r_i - r_j - m)), plus w sum over those that beat i of sigma(-(r_j - r_i - m)), with
/// w = 1 / (the prompt's pair count), plus the centering penalty's derivative (`row_sum` = sum_j r_j, used by
/// the pair_sums form).
template <class T>
RLHF_HOST_DEVICE double ranking_response_gradient(const T* r, const std::int32_t* ranks, std::size_t i, std::size_t k,
                                                  double margin, double w, double center, bool pair_sums,
                                                  double row_sum) {
  // d/dx softplus(-x) = -sigma(-x) with x = r_better - r_worse - m: pushes r_better up, r_worse down.
  const double ri = static_cast<double>(r[i]);
  double g = 0;
  for (std::size_t j = 0; j < k; ++j) {
    const double rj = static_cast<double>(r[j]);
    if (ranks[i] < ranks[j]) g -= ranking_sigmoid_of_negative(ri - rj - margin);
    else if (ranks[j] < ranks[i]) g += ranking_sigmoid_of_negative(rj - ri - margin);
  }
  g *= w;
  if (center > 0) g += ranking_center_gradient(ri, k, center, pair_sums, row_sum);
  return g;
}

}  // namespace rlhf::detail
