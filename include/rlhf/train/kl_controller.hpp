/// @file kl_controller.hpp
/// @brief KL coefficient controllers (Ziegler et al. 2019, sec. 2.2) with the KL's unit in the type.
///
/// Peers feed their adaptive controllers different quantities under the same name: ZGL and TRL0 the mean
/// over sequences of the summed per-token KL (nats per sequence, target 6), ORL and VERL the mean per-token
/// KL (nats per token, target 0.1). A target in one unit is meaningless in the other, so here the unit is a
/// type: `kl_per_sequence` or `kl_per_token`. A controller is declared for one unit, `measure_kl<Unit>`
/// produces that unit from per-token KL values, and passing the other unit does not compile.
#pragma once

#include <cmath>
#include <concepts>
#include <cstddef>
#include <string>
#include <type_traits>

#include "rlhf/backends/checks.hpp"
#include "rlhf/backends/concepts.hpp"
#include "rlhf/backends/memory.hpp"
#include "rlhf/backends/view.hpp"
#include "rlhf/config.hpp"
#include "rlhf/error.hpp"

namespace rlhf {

/// KL in nats per sequence: the mean over sequences of the sum of the per-token KL over the sequence's
/// valid tokens (ZGL, TRL0 controller input).
struct kl_per_sequence {
  /// The value, in nats.
  double nats = 0.0;
};

/// KL in nats per token: the mean of the per-token KL over all valid tokens of the batch (ORL, VERL
/// controller input).
struct kl_per_token {
  /// The value, in nats.
  double nats = 0.0;
};

/// \concept kl_unit
/// One of the two KL units, `kl_per_sequence` or `kl_per_token`.
template <class U>
concept kl_unit = std::same_as<U, kl_per_sequence> || std::same_as<U, kl_per_token>;

/// \concept kl_controller
/// What a trainer needs from a KL controller: its unit (`unit_type`, a kl_unit), the current coefficient
/// `beta()` (the weight of the KL penalty in the reward, InstructGPT eq. 2), and `update(observed, n_steps)`
/// called after each rollout batch with the measured KL in that unit and the number of episodes it held.
template <class C>
concept kl_controller = requires { typename C::unit_type; } && kl_unit<typename C::unit_type> &&
                        requires(C& c, const C& cc, typename C::unit_type u, std::size_t n) {
                          { cc.beta() } -> std::convertible_to<double>;
                          c.update(u, n);
                        };

namespace detail {
inline void kl_check_beta(const char* function, double beta) { check_non_negative(function, "beta", beta); }

struct kl_sum_count {
  double sum = 0, count = 0, bad = 0;
};
struct kl_sum_count_op {
  RLHF_HOST_DEVICE kl_sum_count operator()(kl_sum_count a, kl_sum_count b) const {
    return {a.sum + b.sum, a.count + b.count, a.bad + b.bad};
  }
};
// Selects rather than multiplies by the mask, so NaN/Inf in padded positions cannot leak (0 * NaN = NaN;
// verl PR #6361).
struct kl_sum_count_map {
  template <class T>
  RLHF_HOST_DEVICE kl_sum_count operator()(T x, mask_type m) const {
    if (m == 0) return {};
    const double v = static_cast<double>(x);
    return {v, 1.0, (v - v == v - v) ? 0.0 : 1.0};
  }
  template <class T>
  RLHF_HOST_DEVICE kl_sum_count operator()(T x) const {
    const double v = static_cast<double>(x);
    return {v, 1.0, (v - v == v - v) ? 0.0 : 1.0};
  }
};
struct kl_row_has_valid {
  RLHF_HOST_DEVICE double operator()(std::size_t, mask_type m) const { return m != 0 ? 1.0 : 0.0; }
};
struct kl_max_op {
  RLHF_HOST_DEVICE double operator()(double a, double b) const { return a > b ? a : b; }
};
struct kl_plus {
  RLHF_HOST_DEVICE double operator()(double a, double b) const { return a + b; }
};
struct kl_identity {
  RLHF_HOST_DEVICE double operator()(double a) const { return a; }
};
}  // namespace detail

/// Measures the batch KL in the requested unit from per-token KL values (e.g. k1 = log pi - log pi_ref).
///
/// - `kl_per_token`: sum of kl over valid tokens / number of valid tokens.
/// - `kl_per_sequence`: mean over the sequences that hold at least one valid token of the per-sequence sum
///   of kl over its valid tokens (rows with no valid token are excluded from the mean).
/// Masked-out entries are never read into a sum (NaN there is harmless). Accumulates in double.
///
/// @tparam Unit kl_per_sequence or kl_per_token.
/// @tparam B a reduce backend.
/// @tparam T float or double.
/// @param b the backend.
/// @param kl [B, T] per-token KL.
/// @param mask [B, T] validity mask (non-zero = valid); an empty view means every token is valid.
/// @return the KL in the requested unit.
/// @note kl_per_sequence with a mask allocates one B-element double buffer on the backend.
template <kl_unit Unit, class B, class T>
Unit measure_kl(const B& b, backend_matrix<B, const T> kl, backend_matrix<B, const mask_type> mask = {}) {
  detail::check_reduce_backend<B>();
  constexpr const char* fn = "rlhf::measure_kl";
  if (kl.rows == 0 || kl.cols == 0) {
    detail::throw_argument_error(fn, "kl", "shape [B, T] with B >= 1 and T >= 1", shape_string(kl));
  }
  const bool masked = !(mask.data == nullptr && mask.size() == 0);
  if (masked) detail::check_same_shape(fn, "mask", mask, "kl", kl);
  const detail::kl_sum_count s =
      masked ? b.transform_reduce(detail::kl_sum_count{}, detail::kl_sum_count_op{}, detail::kl_sum_count_map{},
                                  kl.flat(), mask.flat())
             : b.transform_reduce(detail::kl_sum_count{}, detail::kl_sum_count_op{}, detail::kl_sum_count_map{},
                                  kl.flat());
  if (s.count < 1) detail::throw_argument_error(fn, "mask", "at least one valid token", "none");
  if (s.bad > 0 && finite_checks_enabled()) {
    throw non_finite_error(detail::argument_message(fn, "kl", "finite values at valid tokens (the opt-in finite check is on)",
                                                    detail::to_display_string(s.bad) + " NaN/Inf element(s)"));
  }
  if constexpr (std::same_as<Unit, kl_per_token>) {
    return Unit{s.sum / s.count};
  } else {
    double rows = static_cast<double>(kl.rows);
    if (masked) {
      auto flags = b.template allocate<double>(1, kl.rows);
      b.reduce_rows(flags.view().flat(), 0.0, detail::kl_max_op{}, detail::kl_row_has_valid{}, mask);
      rows = b.transform_reduce(0.0, detail::kl_plus{}, detail::kl_identity{},
                                backend_vector<B, const double>(flags.view().flat()));
    }
    return Unit{s.sum / rows};
  }
}

/// A constant KL coefficient (InstructGPT's beta = 0.02 and most peers' defaults). `update` is a no-op but
/// still takes the declared unit, so swapping in an adaptive controller needs no other change.
/// @tparam Unit the KL unit the trainer reports (kl_per_sequence or kl_per_token).
template <kl_unit Unit>
class fixed_kl_controller {
 public:
  /// The unit `update` accepts.
  using unit_type = Unit;

  /// @param beta the coefficient, finite and >= 0.
  explicit fixed_kl_controller(double beta) : beta_(beta) { detail::kl_check_beta("rlhf::fixed_kl_controller", beta); }

  /// The coefficient.
  double beta() const { return beta_; }
  /// Ignores the observation (the coefficient is fixed).
  void update(Unit /*observed*/, std::size_t /*n_steps*/) {}

  /// IGPT (Ouyang et al. 2022): beta = 0.02.
  static fixed_kl_controller instructgpt() { return fixed_kl_controller(0.02); }
  /// VERL `kl_ctrl.type: fixed`, kl_coef 0.001 (also TRLX's default).
  static fixed_kl_controller verl() { return fixed_kl_controller(0.001); }
  /// TRL1: 0.05.
  static fixed_kl_controller trl1() { return fixed_kl_controller(0.05); }
  /// DSC: 0.1.
  static fixed_kl_controller dsc() { return fixed_kl_controller(0.1); }
  /// ORL: 0.01 (`--init_kl_coef`); NEMO also uses 0.01.
  static fixed_kl_controller orl() { return fixed_kl_controller(0.01); }

 private:
  double beta_;
};

/// The adaptive controller of Ziegler et al. 2019, sec. 2.2: a proportional controller on log beta,
///
///     e     = clip(observed / target - 1, -0.2, 0.2)
///     beta <- beta * (1 + e * n_steps / horizon)
///
/// where n_steps is the number of episodes in the update. The target is in the controller's unit.
/// @tparam Unit kl_per_sequence (ZGL, TRL0) or kl_per_token (VERL, ORL).
template <kl_unit Unit>
class adaptive_kl_controller {
 public:
  /// The unit `update` accepts and `target()` returns.
  using unit_type = Unit;
  /// Bound of the proportional error (Ziegler et al. 2019).
  static constexpr double error_clip = 0.2;

  /// @param initial_beta finite, >= 0.
  /// @param target the KL to steer towards, finite and > 0.
  /// @param horizon episodes over which the error acts, finite and > 0.
  adaptive_kl_controller(double initial_beta, Unit target, double horizon)
      : beta_(initial_beta), target_(target), horizon_(horizon) {
    constexpr const char* fn = "rlhf::adaptive_kl_controller";
    detail::check_non_negative(fn, "initial_beta", initial_beta);
    detail::check_positive(fn, "target", target.nats);
    detail::check_positive(fn, "horizon", horizon);
  }

  /// The current coefficient.
  double beta() const { return beta_; }
  /// The target KL.
  Unit target() const { return target_; }
  /// The horizon.
  double horizon() const { return horizon_; }

  /// One control step after a rollout batch of `n_steps` episodes whose measured KL is `observed`.
  /// @param observed finite measured KL (may be negative with the k1 estimator; the error is clipped).
  /// @param n_steps episodes in the batch; must satisfy 0.2 * n_steps < horizon so beta stays positive
  ///        (peers do not guard this; beyond it a low KL would flip beta's sign).
  void update(Unit observed, std::size_t n_steps) {
    constexpr const char* fn = "rlhf::adaptive_kl_controller::update";
    if (!std::isfinite(observed.nats)) {
      detail::throw_argument_error(fn, "observed", "a finite KL", detail::to_display_string(observed.nats));
    }
    const double steps = static_cast<double>(n_steps);
    if (!(error_clip * steps < horizon_)) {
      detail::throw_argument_error(fn, "n_steps",
                                   "n_steps < horizon / 0.2 = " + detail::to_display_string(horizon_ / error_clip) +
                                       " (so beta stays positive)",
                                   std::to_string(n_steps));
    }
    double e = observed.nats / target_.nats - 1.0;
    e = e < -error_clip ? -error_clip : (e > error_clip ? error_clip : e);
    beta_ *= 1.0 + e * steps / horizon_;
  }

  /// ZGL (Ziegler et al. 2019, sentiment/descriptiveness): initial 0.2, target 6 nats per sequence,
  /// horizon 10000.
  static adaptive_kl_controller zgl()
    requires std::same_as<Unit, kl_per_sequence>
  {
    return adaptive_kl_controller(0.2, Unit{6.0}, 10000.0);
  }
  /// TRL0 (v0.11 `adap_kl_ctrl=True`): init_kl_coef 0.2, target 6 nats per sequence, horizon 10000.
  static adaptive_kl_controller trl0()
    requires std::same_as<Unit, kl_per_sequence>
  {
    return adaptive_kl_controller(0.2, Unit{6.0}, 10000.0);
  }
  /// VERL `kl_ctrl.type: adaptive`: kl_coef 0.001, target_kl 0.1 nats per token, horizon 10000.
  static adaptive_kl_controller verl()
    requires std::same_as<Unit, kl_per_token>
  {
    return adaptive_kl_controller(0.001, Unit{0.1}, 10000.0);
  }

 private:
  double beta_;
  Unit target_;
  double horizon_;
};

static_assert(kl_controller<fixed_kl_controller<kl_per_token>>);
static_assert(kl_controller<adaptive_kl_controller<kl_per_sequence>>);

/// Overload for a non-const view (forwards to the read-only one).
template <kl_unit Unit, class B, class T>
  requires(!std::is_const_v<T>)
Unit measure_kl(const B& b, backend_matrix<B, T> kl, backend_matrix<B, const mask_type> mask = {}) {
  return measure_kl<Unit, B, T>(b, backend_matrix<B, const T>(kl), mask);
}

}  // namespace rlhf
