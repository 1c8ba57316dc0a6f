/// @file adamw.hpp
/// @brief AdamW: Adam with decoupled weight decay (Loshchilov & Hutter 2019), over any backend.
///
/// Per parameter element, at step t = 1, 2, ... (Kingma & Ba 2015, Algorithm 1; Loshchilov & Hutter 2019,
/// Algorithm 2, decoupled decay), with g the gradient:
///
///     p   <- p * (1 - lr * weight_decay)            decay, not added to g (decoupled)
///     m   <- beta1 * m + (1 - beta1) * g
///     v   <- beta2 * v + (1 - beta2) * g^2
///     m^  =  m / (1 - beta1^t),   v^ = v / (1 - beta2^t)
///     p   <- p - lr * m^ / (sqrt(v^) + eps)
///
/// This is PyTorch's `torch.optim.AdamW` update (eps outside the square root, decay applied first), so
/// a run can be compared with a PyTorch one step by step. The state (m, v) is allocated in the backend's
/// memory on the first step (or by `prepare`) and tied to the names and shapes of that parameter list.
#pragma once

#include <cmath>
#include <cstddef>
#include <string>
#include <utility>
#include <vector>

#include "rlhf/backends/checks.hpp"
#include "rlhf/backends/concepts.hpp"
#include "rlhf/backends/memory.hpp"
#include "rlhf/backends/view.hpp"
#include "rlhf/config.hpp"
#include "rlhf/error.hpp"
#include "rlhf/models/parameters.hpp"
#include "rlhf/optim/optimizer.hpp"

namespace rlhf {

/// Hyper-parameters of rlhf::adamw. The defaults are InstructGPT-style fine-tuning settings: Adam with
/// beta1 = 0.9, beta2 = 0.95 (the GPT-3 family's pre-training betas, kept by DSC and ORL for RLHF),
/// eps = 1e-8 and no weight decay; the learning rate is a conventional fine-tuning value (set it per model).
struct adamw_options {
  double learning_rate = 1e-5;  ///< lr, >= 0 (a schedule usually overrides it each step)
  double beta1 = 0.9;           ///< decay of the first-moment estimate, in [0, 1)
  double beta2 = 0.95;          ///< decay of the second-moment estimate, in [0, 1)
  double eps = 1e-8;            ///< added to sqrt(v^) in the denominator, > 0
  double weight_decay = 0.0;    ///< decoupled decay coefficient, >= 0 (p <- p * (1 - lr * weight_decay))

  /// PyTorch `torch.optim.AdamW` defaults: lr 1e-3, betas (0.9, 0.999), eps 1e-8, weight_decay 0.01.
  static adamw_options pytorch() { return {1e-3, 0.9, 0.999, 1e-8, 0.01}; }
  /// DeepSpeed-Chat actor (DSC step-3 defaults): lr 9.65e-6, betas (0.9, 0.95), no weight decay.
  static adamw_options deepspeed_chat_actor() { return {9.65e-6, 0.9, 0.95, 1e-8, 0.0}; }
  /// DeepSpeed-Chat critic (DSC step-3 defaults): lr 5e-6, betas (0.9, 0.95), no weight decay.
  static adamw_options deepspeed_chat_critic() { return {5e-6, 0.9, 0.95, 1e-8, 0.0}; }
  /// OpenRLHF actor (ORL `train_ppo_ray` defaults): lr 1e-6, betas (0.9, 0.95), l2 0.
  static adamw_options openrlhf_actor() { return {1e-6, 0.9, 0.95, 1e-8, 0.0}; }
  /// OpenRLHF critic (ORL `train_ppo_ray` defaults): lr 9e-6, betas (0.9, 0.95), l2 0.
  static adamw_options openrlhf_critic() { return {9e-6, 0.9, 0.95, 1e-8, 0.0}; }
};

namespace detail {
inline void check_unit_interval_open(const char* function, const char* argument, double x) {
  if (!(std::isfinite(x) && x >= 0.0 && x < 1.0)) {
    throw_argument_error(function, argument, "a finite value in [0, 1)", to_display_string(x));
  }
}

inline void check_adamw_options(const char* function, const adamw_options& o) {
  check_non_negative(function, "options.learning_rate", o.learning_rate);
  check_unit_interval_open(function, "options.beta1", o.beta1);
  check_unit_interval_open(function, "options.beta2", o.beta2);
  check_positive(function, "options.eps", o.eps);
  check_non_negative(function, "options.weight_decay", o.weight_decay);
}

/// One AdamW update of element i (device-callable). Coefficients are precomputed on the host.
template <class T, class S>
struct adamw_update_fn {
  vector_view<T, S> value;
  vector_view<const T, S> grad;
  vector_view<T, S> m, v;
  T lr, beta1, beta2, eps, decay, inv_bias1, inv_bias2;

  RLHF_HOST_DEVICE void operator()(std::size_t i) const {
    const T g = grad[i];
    const T mi = beta1 * m[i] + (T(1) - beta1) * g;
    const T vi = beta2 * v[i] + (T(1) - beta2) * g * g;
    m[i] = mi;
    v[i] = vi;
    // Loshchilov & Hutter 2019, Alg. 2: decay multiplies the old weight, the Adam step is added after.
    value[i] = value[i] * decay - lr * (mi * inv_bias1) / (std::sqrt(vi * inv_bias2) + eps);
  }
};

template <class B, class T, class S>
void adamw_update_generic(const B& b, vector_view<T, S> value, vector_view<const T, S> grad, vector_view<T, S> m,
                          vector_view<T, S> v, T lr, T beta1, T beta2, T eps, T decay, T inv_bias1, T inv_bias2) {
  b.for_each_index(value.size, adamw_update_fn<T, S>{value, grad, m, v, lr, beta1, beta2, eps, decay, inv_bias1,
                                                     inv_bias2});
}
}  // namespace detail

/// AdamW over backend B for parameters of element type T. Satisfies rlhf::restorable_optimizer.
///
/// Backends may provide the per-tensor kernel hook
/// `rlhf_specialized_adamw_update(const Backend&, vector value, vector<const T> grad, vector m, vector v,
/// T lr, T beta1, T beta2, T eps, T decay, T inv_bias1, T inv_bias2)` (decay = 1 - lr * weight_decay,
/// inv_bias_k = 1 / (1 - beta_k^t)).
///
/// @tparam B a reduce backend (elementwise updates; transform_reduce for the opt-in finite check).
/// @tparam T float or double.
template <class B, class T>
class adamw {
 public:
  using backend_type = B;                           ///< the backend the state lives in
  using value_type = T;                             ///< parameter element type
  using space_type = typename B::memory_space;      ///< memory space of parameters and state
  using params_type = parameter_list<T, space_type>;  ///< the parameter list type `step` takes

  /// @param options hyper-parameters; validated (rlhf::invalid_argument names the bad field).
  explicit adamw(const adamw_options& options = {}) : options_(options) {
    detail::check_adamw_options("rlhf::adamw", options_);
  }

  /// One AdamW step over every parameter (frozen parameters, whose grad is the empty view, are skipped:
  /// neither decayed nor moved). Allocates the state on the first call.
  /// @param b the backend.
  /// @param params the model's parameters; on later calls the same names and shapes in the same order.
  /// @throws rlhf::invalid_argument for a malformed or changed list; rlhf::non_finite_error when the
  ///         opt-in finite check is on and a gradient holds NaN/Inf (nothing is updated then).
  void step(const B& b, const params_type& params) {
    detail::check_reduce_backend<B>();
    constexpr const char* fn = "rlhf::adamw::step";
    prepare_impl(b, params, fn);
    if (finite_checks_enabled()) detail::check_finite_gradients(b, fn, params);
    ++steps_;
    const double t = static_cast<double>(steps_);
    const T lr = static_cast<T>(options_.learning_rate);
    const T beta1 = static_cast<T>(options_.beta1), beta2 = static_cast<T>(options_.beta2);
    const T eps = static_cast<T>(options_.eps);
    const T decay = static_cast<T>(1.0 - options_.learning_rate * options_.weight_decay);
    // Bias corrections (Kingma & Ba 2015, Alg. 1), in double: beta^t underflows gracefully to 0.
    const T inv_bias1 = static_cast<T>(1.0 / (1.0 - std::pow(options_.beta1, t)));
    const T inv_bias2 = static_cast<T>(1.0 / (1.0 - std::pow(options_.beta2, t)));
    for (std::size_t i = 0; i < params.size(); ++i) {
      const auto& p = params[i];
      if (detail::is_frozen(p) || p.value.size() == 0) continue;
      const vector_view<T, space_type> value = p.value.flat();
      const vector_view<const T, space_type> grad = as_const(p.grad.flat());
      const vector_view<T, space_type> m = m_[i].view().flat(), v = v_[i].view().flat();
      if constexpr (requires {
                      rlhf_specialized_adamw_update(b, value, grad, m, v, lr, beta1, beta2, eps, decay, inv_bias1,
                                                    inv_bias2);
                    }) {
        rlhf_specialized_adamw_update(b, value, grad, m, v, lr, beta1, beta2, eps, decay, inv_bias1, inv_bias2);
      } else {
        detail::adamw_update_generic(b, value, grad, m, v, lr, beta1, beta2, eps, decay, inv_bias1, inv_bias2);
      }
    }
  }

  /// Allocates zeroed state for `params` without stepping (for restoring a checkpoint: prepare, then fill
  /// the views of state() and call set_step_count). A no-op when the state already matches `params`.
  void prepare(const B& b, const params_type& params) {
    detail::check_reduce_backend<B>();
    prepare_impl(b, params, "rlhf::adamw::prepare");
  }

  /// Drops the state and the step count (the next step starts from m = v = 0, t = 1).
  void reset() {
    m_.clear();
    v_.clear();
    signature_ = {};
    prepared_ = false;
    steps_ = 0;
  }

  /// The learning rate of the next step.
  double learning_rate() const { return options_.learning_rate; }
  /// Sets the learning rate of the next steps. @param lr finite, >= 0.
  void set_learning_rate(double lr) {
    detail::check_non_negative("rlhf::adamw::set_learning_rate", "lr", lr);
    options_.learning_rate = lr;
  }
  /// The hyper-parameters in use.
  const adamw_options& options() const { return options_; }

  /// Number of steps taken (t of the bias corrections).
  std::size_t step_count() const { return steps_; }
  /// Restores the step count (from a checkpoint).
  void set_step_count(std::size_t n) { steps_ = n; }

  /// The state as named tensors: for each parameter in order, "adamw.m.<name>" then "adamw.v.<name>".
  /// Empty before the first step / prepare. The views stay valid until reset() or destruction.
  state_tensor_list<T, space_type> state() {
    state_tensor_list<T, space_type> out;
    out.reserve(2 * m_.size());
    for (std::size_t i = 0; i < m_.size(); ++i) {
      out.push_back({"adamw.m." + signature_.entries[i].name, m_[i].view()});
      out.push_back({"adamw.v." + signature_.entries[i].name, v_[i].view()});
    }
    return out;
  }

 private:
  void prepare_impl(const B& b, const params_type& params, const char* fn) {
    detail::check_parameter_list(fn, params, /*allow_frozen=*/true);
    if (prepared_) {
      signature_.check_matches(fn, params);
      return;
    }
    m_ = detail::allocate_zeroed_like<T>(b, params);
    v_ = detail::allocate_zeroed_like<T>(b, params);
    signature_ = detail::parameter_signature::of(params);
    prepared_ = true;
  }

  adamw_options options_;
  std::vector<buffer_t<B, T>> m_, v_;
  detail::parameter_signature signature_;
  bool prepared_ = false;
  std::size_t steps_ = 0;
};

}  // namespace rlhf
