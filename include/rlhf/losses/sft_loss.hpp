/// @file sft_loss.hpp
/// @brief Supervised fine-tuning loss: cross-entropy of the demonstration (response) tokens, from their
///        per-token log-probs, and its gradient w.r.t. those log-probs.
#pragma once

#include <cmath>
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

/// Scalars returned by rlhf::sft_loss (and rlhf::ptx_loss).
struct sft_loss_stats {
  double loss = 0;          ///< the aggregated (and, for PTX, scaled) loss
  double nll = 0;           ///< mean negative log-likelihood per valid token (unscaled, token mean)
  double perplexity = 1;    ///< exp(nll)
  double token_count = 0;   ///< valid tokens in this call
};

namespace detail {
// scale * aggregate(-logp): SFT with scale 1, PTX with scale gamma.
template <class B, class T>
sft_loss_stats sft_loss_scaled(const B& b, std::string_view fn, std::string_view logp_name,
                               backend_matrix<B, const T> logp, backend_matrix<B, const mask_type> mask,
                               backend_matrix<B, T> d_logp, double scale, const loss_aggregation& aggregation) {
  check_same_shape(fn, "mask", mask, logp_name, logp);
  agg_check_optional_output(fn, "d_logp", d_logp, "mask", mask);
  check_aggregation(fn, aggregation);
  check_finite(b, fn, logp_name, logp);
  const linear_row_sums s = linear_loss_dispatch(b, logp, mask, d_logp, -scale, aggregation);
  sft_loss_stats out{};
  out.loss = s.loss;
  out.token_count = s.tokens;
  if (s.tokens > 0) {
    out.nll = -s.value / s.tokens;
    out.perplexity = std::exp(out.nll);
  }
  return out;
}
}  // namespace detail

/// SFT loss (InstructGPT section 3.5): the cross-entropy of the demonstration tokens,
///
///     loss = aggregate(-logp, mask)     (token_mean: -sum m logp / sum m)
///     d loss / d logp_rt = -w_r m_rt
///
/// from the log-probs of the demonstration tokens (rlhf token log-prob op); the caller's mask selects
/// the response tokens (prompt tokens masked out). Allocates two [B] scratch vectors.
/// @tparam B backend (rlhf::reduce_backend)
/// @tparam TX element type of logp: float or double, const or not
/// @param b backend handle
/// @param logp log pi(y_t | x, y_<t) of the demonstration tokens [B, T]
/// @param mask response mask [B, T]
/// @param d_logp gradient output [B, T], or an empty view for the forward pass only
/// @param aggregation how per-token losses are reduced (default token mean)
/// @return the loss, mean NLL, perplexity and token count
template <class B, class TX>
sft_loss_stats sft_loss(const B& b, matrix_view<TX, detail::space_of<B>> logp, backend_matrix<B, const mask_type> mask,
                        std::type_identity_t<backend_matrix<B, std::remove_const_t<TX>>> d_logp,
                        const loss_aggregation& aggregation = {}) {
  using T = std::remove_const_t<TX>;
  static_assert(std::is_floating_point_v<T>, "rlhf::sft_loss: logp must be float or double");
  detail::check_reduce_backend<B>();
  return detail::sft_loss_scaled<B, T>(b, "rlhf::sft_loss", "logp", logp, mask, d_logp, 1.0, aggregation);
}

}  // namespace rlhf
