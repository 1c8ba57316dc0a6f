/// @file value_loss.hpp
/// @brief The clipped value (critic) loss of PPO for language models and its gradient w.r.t. the new values.
#pragma once

#include <cmath>
#include <cstddef>
#include <string_view>
#include <type_traits>

#include "rlhf/backends/checks.hpp"
#include "rlhf/backends/concepts.hpp"
#include "rlhf/backends/value_loss_math.hpp"
#include "rlhf/backends/view.hpp"
#include "rlhf/config.hpp"
#include "rlhf/error.hpp"
#include "rlhf/losses/loss_aggregation.hpp"

namespace rlhf {

/// Options of rlhf::clipped_value_loss. Default: eps_v = 0.2 (ZGL, TRL0/TRL1, DSC, NEMO).
struct value_loss_options {
  /// Clip range eps_v of the new value around the old one. 0 = unclipped loss 1/2 (V' - R)^2
  /// (NEMO `loss_clip_val <= 0`, ORL `clip_eps=None`). Finite and >= 0.
  double clip = 0.2;

  /// InstructGPT lineage (ZGL `cliprange_value 0.2`).
  static value_loss_options instructgpt() { return {}; }
  static value_loss_options zgl() { return {0.2}; }
  static value_loss_options trl0() { return {0.2}; }
  static value_loss_options trl1() { return {0.2}; }
  static value_loss_options dsc() { return {0.2}; }
  /// OpenRLHF CLI `--critic.value_clip 0.5` (the ValueLoss class default is 0.2).
  static value_loss_options orl() { return {0.5}; }
  /// verl `critic.cliprange_value 0.5`.
  static value_loss_options verl() { return {0.5}; }
  /// NeMo-Aligner `loss_clip_val 0.2`.
  static value_loss_options nemo() { return {0.2}; }
  /// No clipping.
  static value_loss_options unclipped() { return {0.0}; }
};

/// Scalars returned by rlhf::clipped_value_loss (means over the valid tokens of this call).
struct value_loss_stats {
  double loss = 0;           ///< the aggregated loss
  double clip_fraction = 0;  ///< fraction of valid tokens where the clipped term is strictly the larger
  double mean_value = 0;     ///< mean of the new values V'
  double mean_return = 0;    ///< mean of the returns R
  double mean_squared_error = 0;  ///< mean of (V' - R)^2 (unclipped, for logging)
  double token_count = 0;    ///< valid tokens in this call
};

namespace detail {
template <class T>
struct value_token_sums {
  value_loss_math math;
  RLHF_HOST_DEVICE value_row_sums operator()(std::size_t, T v, T v_old, T ret, mask_type m) const {
    if (!m) return {};
    const double dv = static_cast<double>(v), dr = static_cast<double>(ret);
    return value_token_sums_of(math(dv, static_cast<double>(v_old), dr), dv, dr);
  }
};

template <class B, class T>
value_row_sums value_loss_generic(const B& b, backend_matrix<B, const T> values, backend_matrix<B, const T> old_values,
                                  backend_matrix<B, const T> returns, backend_matrix<B, const mask_type> mask,
                                  backend_vector<B, const double> w, backend_matrix<B, T> d_values,
                                  value_loss_math math) {
  return clipped_token_loss_generic<value_row_sums>(b, values, old_values, returns, mask, w, d_values, math,
                                                    value_token_sums<T>{math});
}
}  // namespace detail

/// Clipped value loss (the critic objective of PPO as implemented by ZGL and its descendants):
///
///     l_t  = 1/2 max((V'_t - R_t)^2, (V_t + clip(V'_t - V_t, -eps_v, eps_v) - R_t)^2)
///     loss = aggregate(l, mask)
///
/// Gradient w.r.t. V' (written to `d_values` when not empty): w_r (V' - R) where the unclipped term is
/// active, 0 where the clipped term is strictly active; 0 on masked positions. With clip = 0 the loss is
/// the plain 1/2 (V' - R)^2. Allocates two [B] scratch vectors.
/// @tparam B backend (rlhf::reduce_backend)
/// @tparam TX element type of values: float or double, const or not
/// @param b backend handle
/// @param values new value predictions V' [B, T]
/// @param old_values value predictions at rollout time V [B, T]
/// @param returns returns R = A + V [B, T]
/// @param mask action mask [B, T]
/// @param d_values gradient output [B, T], or an empty view for the forward pass only
/// @param options clip range
/// @param aggregation how per-token losses are reduced
/// @return the loss and diagnostics
template <class B, class TX>
value_loss_stats clipped_value_loss(const B& b, matrix_view<TX, detail::space_of<B>> values,
                                    std::type_identity_t<backend_matrix<B, const std::remove_const_t<TX>>> old_values,
                                    std::type_identity_t<backend_matrix<B, const std::remove_const_t<TX>>> returns,
                                    backend_matrix<B, const mask_type> mask,
                                    std::type_identity_t<backend_matrix<B, std::remove_const_t<TX>>> d_values,
                                    const value_loss_options& options = {},
                                    const loss_aggregation& aggregation = {}) {
  using T = std::remove_const_t<TX>;
  static_assert(std::is_floating_point_v<T>, "rlhf::clipped_value_loss: values must be float or double");
  detail::check_reduce_backend<B>();
  constexpr std::string_view fn = "rlhf::clipped_value_loss";
  const backend_matrix<B, const T> v = values;
  detail::check_same_shape(fn, "old_values", old_values, "values", v);
  detail::check_same_shape(fn, "returns", returns, "values", v);
  detail::check_same_shape(fn, "mask", mask, "values", v);
  detail::agg_check_optional_output(fn, "d_values", d_values, "mask", mask);
  detail::check_non_negative(fn, "options.clip", options.clip);
  detail::check_aggregation(fn, aggregation);
  detail::check_finite(b, fn, "values", v);
  detail::check_finite(b, fn, "old_values", old_values);
  detail::check_finite(b, fn, "returns", returns);

  auto wbuf = detail::allocate_row_weights(b, v.rows);
  detail::row_weights_unchecked(b, mask, aggregation, wbuf.view().flat());
  const backend_vector<B, const double> w = wbuf.view().flat();

  detail::value_row_sums s{};
  if constexpr (requires(double& x) {
                  rlhf_specialized_clipped_value_loss(b, v, old_values, returns, mask, w, d_values, options.clip, x, x,
                                                      x, x, x, x);
                }) {
    rlhf_specialized_clipped_value_loss(b, v, old_values, returns, mask, w, d_values, options.clip, s.loss, s.tokens,
                                        s.clipped, s.value, s.ret, s.sq);
  } else {
    s = detail::value_loss_generic(b, v, old_values, returns, mask, w, d_values, detail::value_loss_math{options.clip});
  }
  value_loss_stats out{};
  out.loss = s.loss;
  out.token_count = s.tokens;
  if (s.tokens > 0) {
    out.clip_fraction = s.clipped / s.tokens;
    out.mean_value = s.value / s.tokens;
    out.mean_return = s.ret / s.tokens;
    out.mean_squared_error = s.sq / s.tokens;
  }
  return out;
}

}  // namespace rlhf
