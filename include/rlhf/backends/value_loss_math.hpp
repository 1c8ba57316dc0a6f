/// @file value_loss_math.hpp
/// @brief The per-token arithmetic of the clipped value loss (the critic objective of PPO for language models,
/// Ziegler et al. 2019's code and its descendants) and its row sums, shared by the generic path
/// (rlhf/losses/value_loss.hpp) and the CUDA kernel (rlhf/backends/cuda/value_loss.cuh), so that every path
/// makes the same clip decision per token. Host-and-device code, in double.
#pragma once

#include <cmath>

#include "rlhf/config.hpp"

namespace rlhf::detail {

struct value_token {
  double loss, grad;
  bool clipped;
};

/// l = 1/2 max((V' - R)^2, (V + clip(V' - V, -eps_v, eps_v) - R)^2) and d l / d V' for one token.
struct value_loss_math {
  double clip;
  RLHF_HOST_DEVICE value_token operator()(double v, double v_old, double ret) const {
    const double d1 = v - ret;
    if (!(clip > 0)) return {0.5 * d1 * d1, d1, false};
    const double diff = v - v_old;
    const double clipped_diff = fmin(fmax(diff, -clip), clip);
    const double d2 = v_old + clipped_diff - ret;
    // 1/2 max(d1^2, d2^2). Inside [-eps, eps] the two terms are equal (up to the rounding of
    // V + (V' - V)), so the clipped term counts only where V' - V is clipped; there it does not depend
    // on V': gradient 0.
    const bool outside = diff > clip || diff < -clip;
    if (outside && d2 * d2 > d1 * d1) return {0.5 * d2 * d2, 0.0, true};
    return {0.5 * d1 * d1, d1, false};
  }
};

/// A row's (or a call's) sums: the loss, the valid tokens, the clipped tokens, and the sums of V', R and
/// (V' - R)^2 for the diagnostics.
struct value_row_sums {
  double loss = 0, tokens = 0, clipped = 0, value = 0, ret = 0, sq = 0;
  RLHF_HOST_DEVICE value_row_sums operator+(const value_row_sums& o) const {
    return {loss + o.loss, tokens + o.tokens, clipped + o.clipped, value + o.value, ret + o.ret, sq + o.sq};
  }
};

/// One valid token's contribution to the row sums.
RLHF_HOST_DEVICE inline value_row_sums value_token_sums_of(const value_token& k, double v, double ret) {
  return {k.loss, 1.0, k.clipped ? 1.0 : 0.0, v, ret, (v - ret) * (v - ret)};
}

}  // namespace rlhf::detail
