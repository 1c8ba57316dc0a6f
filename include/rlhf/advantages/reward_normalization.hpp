/// @file reward_normalization.hpp
/// @brief Post-hoc affine normalization of a trained reward model: the InstructGPT demonstration bias and
///        the Ziegler et al. gain/bias that maps reference-policy rewards to a target mean and std.
///
/// The pairwise ranking loss is invariant to adding a constant to every reward, so a trained reward model
/// has an arbitrary offset. InstructGPT (Ouyang et al. 2022, sec. 3.5) fixes it with a bias that makes the
/// labelers' demonstrations score 0 on average; Ziegler et al. 2019 (sec. 2.2) rescale so that samples of
/// the reference policy have mean 0 and std 1, which keeps the KL coefficient beta meaningful.
#pragma once

#include <cmath>
#include <cstddef>
#include <type_traits>
#include <limits>
#include <string_view>

#include "rlhf/backends/checks.hpp"
#include "rlhf/backends/concepts.hpp"
#include "rlhf/backends/view.hpp"
#include "rlhf/config.hpp"
#include "rlhf/error.hpp"
#include "rlhf/ops/whitening.hpp"

namespace rlhf {

/// An affine reward transform r' = gain * r + bias.
struct reward_gain_bias {
  /// Multiplicative factor (> 0).
  double gain = 1.0;
  /// Additive offset.
  double bias = 0.0;
};

namespace detail {
struct reward_moments {
  double sum = 0, count = 0, min = std::numeric_limits<double>::infinity(),
         max = -std::numeric_limits<double>::infinity();
};
struct reward_moments_op {
  RLHF_HOST_DEVICE reward_moments operator()(reward_moments a, reward_moments b) const {
    return {a.sum + b.sum, a.count + b.count, a.min < b.min ? a.min : b.min, a.max > b.max ? a.max : b.max};
  }
};
struct reward_moments_map {
  template <class T>
  RLHF_HOST_DEVICE reward_moments operator()(T x) const {
    const double v = static_cast<double>(x);
    return {v, 1.0, v, v};
  }
  template <class T>
  RLHF_HOST_DEVICE reward_moments operator()(T x, mask_type m) const {
    if (m == 0) return {};
    const double v = static_cast<double>(x);
    return {v, 1.0, v, v};
  }
};
struct reward_deviation_sums {
  double sum = 0, sum_sq = 0;
};
struct reward_deviation_sums_op {
  RLHF_HOST_DEVICE reward_deviation_sums operator()(reward_deviation_sums a, reward_deviation_sums b) const {
    return {a.sum + b.sum, a.sum_sq + b.sum_sq};
  }
};
struct reward_deviation_map {
  double mean;
  template <class T>
  RLHF_HOST_DEVICE reward_deviation_sums operator()(T x) const {
    const double d = static_cast<double>(x) - mean;
    return {d, d * d};
  }
};
template <class T>
struct reward_affine_map {
  double gain, bias;
  RLHF_HOST_DEVICE T operator()(T x) const { return static_cast<T>(gain * static_cast<double>(x) + bias); }
};
}  // namespace detail

/// InstructGPT's post-training bias (Ouyang et al. 2022, sec. 3.5): the b that makes the demonstrations'
/// rewards average 0, i.e. b = -mean(rewards) over the valid entries.
///
/// @tparam B a reduce backend.
/// @tparam T float or double.
/// @param b the backend.
/// @param rewards [N] the reward model's scores of the labelers' demonstrations.
/// @param mask [N] optional validity mask (non-zero = valid); an empty view means every entry is valid.
/// @return -mean of the valid rewards (accumulated in double); add it to every reward.
template <class B, class T>
double demonstration_bias(const B& b, backend_vector<B, const T> rewards, backend_vector<B, const mask_type> mask = {}) {
  detail::check_reduce_backend<B>();
  constexpr const char* fn = "rlhf::demonstration_bias";
  const bool masked = !(mask.data == nullptr && mask.size == 0);
  if (masked) detail::check_size(fn, "mask", mask, rewards.size, "(same as 'rewards', or empty)");
  detail::reward_moments m;
  if (masked) {
    m = b.transform_reduce(detail::reward_moments{}, detail::reward_moments_op{}, detail::reward_moments_map{}, rewards, mask);
  } else {
    m = b.transform_reduce(detail::reward_moments{}, detail::reward_moments_op{}, detail::reward_moments_map{}, rewards);
  }
  if (m.count < 1) {
    detail::throw_argument_error(fn, masked ? "mask" : "rewards", "at least one valid reward", "none");
  }
  if (!std::isfinite(m.sum)) {
    // Always checked: one non-finite valid reward makes the result meaningless.
    throw non_finite_error(detail::argument_message(fn, "rewards", "finite valid rewards", "a NaN/Inf (sum " +
                                                                                              detail::to_display_string(m.sum) + ")"));
  }
  return -(m.sum / m.count);
}

/// The statistics of N >= 0 rewards: count, mean and m2 (the sum of squared deviations), two passes in
/// double with the corrected second pass (Chan, Golub & LeVeque 1983), never E[r^2] - E[r]^2; m2 is
/// exactly 0 when every reward is equal. Any N (a rank may hold one reward, or none): merge several ranks'
/// with rlhf::global_masked_moments, then rlhf::normalization_from checks that there is a spread.
/// @throws rlhf::non_finite_error on NaN/Inf
template <class B, class T>
masked_moments reward_moments_of(const B& b, backend_vector<B, const T> rewards,
                                 std::string_view fn = "rlhf::reward_moments_of") {
  detail::check_reduce_backend<B>();
  detail::check_finite(b, fn, "rewards", rewards);
  if (rewards.size == 0) return {};
  const detail::reward_moments m =
      b.transform_reduce(detail::reward_moments{}, detail::reward_moments_op{}, detail::reward_moments_map{}, rewards);
  if (!std::isfinite(m.sum)) {
    throw non_finite_error(detail::argument_message(fn, "rewards", "finite rewards",
                                                    "a NaN/Inf (sum " + detail::to_display_string(m.sum) + ")"));
  }
  const double n = m.count;
  if (m.min == m.max) return {n, m.min, 0.0};  // no spread, exactly
  const double mean0 = m.sum / n;
  const detail::reward_deviation_sums d =
      b.transform_reduce(detail::reward_deviation_sums{}, detail::reward_deviation_sums_op{}, detail::reward_deviation_map{mean0}, rewards);
  // Corrected two-pass: the second term removes the rounding error of mean0.
  return {n, mean0 + d.sum / n, d.sum_sq - d.sum * d.sum / n};
}

/// The gain and bias of rlhf::normalization_to from the rewards' statistics (count, mean and m2, the sum
/// of squared deviations), e.g. the moments of every rank's rewards merged by rlhf::global_masked_moments.
/// @throws rlhf::invalid_argument when count < 2 or m2 is not > 0, or a target is out of range
inline reward_gain_bias normalization_from(const masked_moments& moments, double target_mean = 0.0,
                                           double target_std = 1.0,
                                           std::string_view fn = "rlhf::normalization_from") {
  if (!std::isfinite(target_mean)) {
    detail::throw_argument_error(fn, "target_mean", "a finite value", detail::to_display_string(target_mean));
  }
  detail::check_positive(fn, "target_std", target_std);
  if (!(moments.count >= 2)) {
    detail::throw_argument_error(fn, "rewards", "at least 2 rewards", detail::to_display_string(moments.count));
  }
  const double var = moments.m2 / moments.count;
  if (!(var > 0) || !std::isfinite(moments.mean)) {
    detail::throw_argument_error(fn, "rewards", "rewards with a non-zero std", "std " + detail::to_display_string(var));
  }
  const double gain = target_std / std::sqrt(var);
  return {gain, target_mean - gain * moments.mean};
}

/// The gain and bias of Ziegler et al. 2019 (sec. 2.2, ZGL `set_reward_norm`): for rewards r with mean mu and
/// population std sigma, gain = target_std / sigma and bias = target_mean - gain * mu, so that gain * r + bias
/// has mean target_mean and std target_std (ZGL: 0 and 1 over reference-policy samples).
///
/// sigma is computed in two passes in double (mean, then the corrected sum of squared deviations); ZGL's
/// sqrt(E[r^2] - E[r]^2) cancels catastrophically when |mean| >> std (NeMo-RL PR #4158).
///
/// @tparam B a reduce backend.
/// @tparam T float or double.
/// @param b the backend.
/// @param rewards [N] scores, N >= 2, not all equal.
/// @param target_mean finite target mean.
/// @param target_std finite target std, > 0.
/// @return {gain, bias}.
template <class B, class T>
reward_gain_bias normalization_to(const B& b, backend_vector<B, const T> rewards, double target_mean = 0.0,
                                  double target_std = 1.0) {
  constexpr const char* fn = "rlhf::normalization_to";
  if (!std::isfinite(target_mean)) {
    detail::throw_argument_error(fn, "target_mean", "a finite value", detail::to_display_string(target_mean));
  }
  detail::check_positive(fn, "target_std", target_std);
  if (rewards.size < 2) detail::throw_argument_error(fn, "rewards", "at least 2 rewards", shape_string(rewards));
  const masked_moments m = reward_moments_of(b, rewards, fn);
  if (m.m2 == 0) {
    detail::throw_argument_error(fn, "rewards", "rewards with a non-zero std (not all equal)",
                                 "std 0 (every reward equals " + detail::to_display_string(m.mean) + ")");
  }
  return normalization_from(m, target_mean, target_std, fn);
}

/// Applies r' = gain * r + bias element-wise (computed in double, stored as T). `in` and `out` may be the
/// same view.
///
/// @tparam B an elementwise backend.
/// @tparam T float or double.
/// @param b the backend.
/// @param in [N] rewards.
/// @param out [N] output (may alias `in` exactly).
/// @param gain_bias the transform; gain must be finite and > 0, bias finite.
template <class B, class T>
void apply_reward_normalization(const B& b, std::type_identity_t<backend_vector<B, const T>> in, backend_vector<B, T> out,
                                const reward_gain_bias& gain_bias) {
  detail::check_elementwise_backend<B>();
  constexpr const char* fn = "rlhf::apply_reward_normalization";
  detail::check_size(fn, "out", out, in.size, "(same as 'in')");
  detail::check_positive(fn, "gain_bias.gain", gain_bias.gain);
  if (!std::isfinite(gain_bias.bias)) {
    detail::throw_argument_error(fn, "gain_bias.bias", "a finite value", detail::to_display_string(gain_bias.bias));
  }
  detail::check_finite(b, fn, "in", in);
  b.transform(out, detail::reward_affine_map<T>{gain_bias.gain, gain_bias.bias}, in);
}

/// Overload for a non-const view (forwards to the read-only one).
template <class B, class T>
  requires(!std::is_const_v<T>)
double demonstration_bias(const B& b, backend_vector<B, T> rewards, backend_vector<B, const mask_type> mask = {}) {
  return demonstration_bias<B, T>(b, backend_vector<B, const T>(rewards), mask);
}

/// Overload for a non-const view (forwards to the read-only one).
template <class B, class T>
  requires(!std::is_const_v<T>)
reward_gain_bias normalization_to(const B& b, backend_vector<B, T> rewards, double target_mean = 0.0,
                                  double target_std = 1.0) {
  return normalization_to<B, T>(b, backend_vector<B, const T>(rewards), target_mean, target_std);
}

}  // namespace rlhf
