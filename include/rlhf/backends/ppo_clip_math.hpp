/// @file ppo_clip_math.hpp
/// @brief The per-token arithmetic of the PPO-clip loss (Schulman et al. 2017, PPO, eq. 7) and its row sums,
/// shared by the generic path (rlhf/losses/ppo_clip_loss.hpp) and the device kernels
/// (rlhf/backends/cuda/ppo_clip_loss.cuh), so that every path computes the same expression per token.
/// Host-and-device code, in double.
#pragma once

#include <cmath>

#include "rlhf/config.hpp"

namespace rlhf::detail {

/// Per-token PPO-clip terms in double; shared by the gradient pass and the statistics pass.
struct ppo_token {
  double loss, grad, ratio, log_ratio;
  bool clipped, dual;
};
struct ppo_clip_math {
  double eps_low, eps_high, dual_clip, clamp;
  RLHF_HOST_DEVICE ppo_token operator()(double logp, double old_logp, double adv) const {
    const double raw = logp - old_logp;
    double lr = raw;
    bool clamped = false;
    if (clamp > 0) {
      if (raw > clamp) lr = clamp, clamped = true;
      else if (raw < -clamp) lr = -clamp, clamped = true;
    }
    const double ratio = exp(lr);
    const double clipped_ratio = fmin(fmax(ratio, 1.0 - eps_low), 1.0 + eps_high);
    const double l1 = -adv * ratio, l2 = -adv * clipped_ratio;
    // Schulman et al. 2017, eq. 7 (as a loss): max(-A rho, -A clip(rho)). The clipped term is active only
    // when strictly larger, which implies rho lies outside the clip range, so its gradient is 0.
    const bool clipped = l2 > l1;
    double loss = clipped ? l2 : l1;
    double grad = clipped || clamped ? 0.0 : l1;  // d(-A rho)/d logp = -A rho
    bool dual = false;
    if (dual_clip > 0 && adv < 0) {
      const double l3 = -dual_clip * adv;
      if (loss > l3) loss = l3, grad = 0.0, dual = true;
    }
    return {loss, grad, ratio, raw, clipped, dual};
  }
};

struct ppo_row_sums {
  double loss = 0, tokens = 0, clipped = 0, approx_kl = 0, policy_kl = 0, ratio = 0, dual = 0;
  RLHF_HOST_DEVICE ppo_row_sums operator+(const ppo_row_sums& o) const {
    return {loss + o.loss, tokens + o.tokens, clipped + o.clipped, approx_kl + o.approx_kl,
            policy_kl + o.policy_kl, ratio + o.ratio, dual + o.dual};
  }
};

/// One valid token's contribution to the row sums: the loss, the token, whether clipped, the approximate KL
/// 1/2 log(rho)^2, the policy KL estimate -log(rho), the ratio, whether the dual clip is active.
RLHF_HOST_DEVICE inline ppo_row_sums ppo_token_sums_of(const ppo_token& k) {
  return {k.loss, 1.0, k.clipped ? 1.0 : 0.0, 0.5 * k.log_ratio * k.log_ratio, -k.log_ratio, k.ratio, k.dual ? 1.0 : 0.0};
}

}  // namespace rlhf::detail
