/// @file ptx_loss.hpp
/// @brief The PPO-ptx pretraining term (Ouyang et al. 2022, InstructGPT, eq. 2): gamma times the language
///        modelling loss on pretraining data, mixed into the policy update.
#pragma once

#include <cmath>
#include <string_view>
#include <type_traits>

#include "rlhf/backends/concepts.hpp"
#include "rlhf/backends/view.hpp"
#include "rlhf/error.hpp"
#include "rlhf/losses/loss_aggregation.hpp"
#include "rlhf/losses/sft_loss.hpp"

namespace rlhf {

/// Options of rlhf::ptx_loss.
struct ptx_options {
  /// gamma of InstructGPT eq. 2 (27.8 for the PPO-ptx models). Finite and >= 0.
  double coefficient = 27.8;

  /// InstructGPT (gamma = 27.8).
  static ptx_options instructgpt() { return {}; }
  /// DeepSpeed-Chat `--unsup_coef 27.8`.
  static ptx_options dsc() { return {27.8}; }
  /// OpenRLHF up to v0.7.0 `--ptx_coef 0.05` (removed in v0.7.1).
  static ptx_options orl() { return {0.05}; }
};

/// PPO-ptx loss: the pretraining log-likelihood term of InstructGPT eq. 2 as a loss to minimise,
///
///     loss = -gamma * aggregate(logp_pretrain, mask) = gamma * sft_loss
///     d loss / d logp_rt = -gamma * w_r * m_rt
///
/// The statistics are those of rlhf::sft_loss, with `loss` scaled by gamma (`nll` and `perplexity`
/// unscaled). Allocates two [B] scratch vectors.
/// @tparam B backend (rlhf::reduce_backend)
/// @tparam TX element type of logp: float or double, const or not
/// @param b backend handle
/// @param logp_pretrain log-probs of pretraining tokens under the current policy [B, T]
/// @param mask valid-token mask [B, T]
/// @param d_logp gradient output [B, T], or an empty view for the forward pass only
/// @param options gamma
/// @param aggregation how per-token losses are reduced (default token mean)
/// @return the scaled loss and the SFT statistics
template <class B, class TX>
sft_loss_stats ptx_loss(const B& b, matrix_view<TX, detail::space_of<B>> logp_pretrain,
                        backend_matrix<B, const mask_type> mask,
                        std::type_identity_t<backend_matrix<B, std::remove_const_t<TX>>> d_logp,
                        const ptx_options& options = {}, const loss_aggregation& aggregation = {}) {
  using T = std::remove_const_t<TX>;
  static_assert(std::is_floating_point_v<T>, "rlhf::ptx_loss: logp must be float or double");
  detail::check_reduce_backend<B>();
  constexpr std::string_view fn = "rlhf::ptx_loss";
  detail::check_non_negative(fn, "options.coefficient", options.coefficient);
  return detail::sft_loss_scaled<B, T>(b, fn, "logp_pretrain", logp_pretrain, mask, d_logp, options.coefficient,
                                       aggregation);
}

}  // namespace rlhf
