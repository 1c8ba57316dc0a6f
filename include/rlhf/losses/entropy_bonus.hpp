/// @file entropy_bonus.hpp
/// @brief The entropy bonus: loss = -c_H * aggregate(H), and its gradient w.r.t. the per-token entropy.
///
/// The per-token entropy H_t = logsumexp(z_t) - sum_v softmax(z_t)_v z_tv comes from the token
/// log-prob/entropy op; this loss returns d loss / d H_t, which that op's backward turns into a gradient
/// w.r.t. the logits (its `d_entropy` input).
#pragma once

#include <cstddef>
#include <string_view>
#include <type_traits>

#include "rlhf/backends/checks.hpp"
#include "rlhf/backends/concepts.hpp"
#include "rlhf/backends/view.hpp"
#include "rlhf/config.hpp"
#include "rlhf/error.hpp"
#include "rlhf/losses/loss_aggregation.hpp"

namespace rlhf {

/// Scalars returned by rlhf::entropy_bonus.
struct entropy_bonus_stats {
  double loss = 0;          ///< -coefficient * aggregate(H)
  double mean_entropy = 0;  ///< mean of H over the valid tokens of this call (for logging)
  double token_count = 0;   ///< valid tokens in this call
};

/// Entropy bonus as a loss to minimise (added to the PPO loss; Schulman et al. 2017, PPO, eq. 9):
///
///     loss = -coefficient * aggregate(H, mask)      d loss / d H_rt = -coefficient * w_r * m_rt
///
/// Peer coefficients: 0 (InstructGPT, ZGL, TRL, DSC, NEMO, VERL `entropy_coeff: 0`: entropy logged only);
/// ORL `--actor.entropy_coef` (off by default). Allocates two [B] scratch vectors.
/// @tparam B backend (rlhf::reduce_backend)
/// @tparam TX element type of the entropy: float or double, const or not
/// @param b backend handle
/// @param entropy per-token entropy H [B, T]
/// @param mask action mask [B, T]
/// @param d_entropy gradient output [B, T], or an empty view for the forward pass only
/// @param coefficient c_H, finite and >= 0
/// @param aggregation how per-token values are reduced
/// @return the loss, the mean entropy and the token count
template <class B, class TX>
entropy_bonus_stats entropy_bonus(const B& b, matrix_view<TX, detail::space_of<B>> entropy,
                                  backend_matrix<B, const mask_type> mask,
                                  std::type_identity_t<backend_matrix<B, std::remove_const_t<TX>>> d_entropy,
                                  double coefficient, const loss_aggregation& aggregation = {}) {
  using T = std::remove_const_t<TX>;
  static_assert(std::is_floating_point_v<T>, "rlhf::entropy_bonus: entropy must be float or double");
  detail::check_reduce_backend<B>();
  constexpr std::string_view fn = "rlhf::entropy_bonus";
  const backend_matrix<B, const T> h = entropy;
  detail::check_same_shape(fn, "mask", mask, "entropy", h);
  detail::agg_check_optional_output(fn, "d_entropy", d_entropy, "mask", mask);
  detail::check_non_negative(fn, "coefficient", coefficient);
  detail::check_aggregation(fn, aggregation);
  detail::check_finite(b, fn, "entropy", h);
  const detail::linear_row_sums s = detail::linear_loss_dispatch(b, h, mask, d_entropy, -coefficient, aggregation);
  entropy_bonus_stats out{};
  out.loss = s.loss;
  out.token_count = s.tokens;
  if (s.tokens > 0) out.mean_entropy = s.value / s.tokens;
  return out;
}

}  // namespace rlhf
