/// @file sgd.hpp
/// @brief Stochastic gradient descent with (optionally Nesterov) momentum and decoupled weight decay.
///
/// Per parameter element, with g the gradient, mu the momentum and lr the learning rate:
///
///     p   <- p * (1 - lr * weight_decay)        decoupled decay (Loshchilov & Hutter 2019, Alg. 1)
///     buf <- mu * buf + g                       heavy-ball momentum, dampening 0, buf starts at 0
///     d   =  g + mu * buf   (Nesterov momentum, Sutskever et al. 2013, sec. 2.1, in its look-ahead form)
///            buf            (otherwise)
///     p   <- p - lr * d
///
/// With buf starting at 0 the first step's buf is g, as in PyTorch's `torch.optim.SGD` (dampening 0);
/// the weight decay is decoupled (PyTorch's SGD adds it to g instead). With mu = 0 there is no state.
#pragma once

#include <cmath>
#include <cstddef>
#include <string>
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

/// Hyper-parameters of rlhf::sgd. No InstructGPT peer trains with SGD; the defaults are the conventional
/// lr 0.01 with heavy-ball momentum 0.9 and no weight decay.
struct sgd_options {
  double learning_rate = 1e-2;  ///< lr, >= 0
  double momentum = 0.9;        ///< mu, in [0, 1); 0 disables momentum (and the state)
  bool nesterov = false;        ///< Nesterov momentum (needs momentum > 0)
  double weight_decay = 0.0;    ///< decoupled decay coefficient, >= 0 (p <- p * (1 - lr * weight_decay))

  /// Plain SGD: PyTorch `torch.optim.SGD` defaults (lr 1e-3, no momentum, no decay).
  static sgd_options plain() { return {1e-3, 0.0, false, 0.0}; }
};

namespace detail {
inline void check_sgd_options(const char* function, const sgd_options& o) {
  check_non_negative(function, "options.learning_rate", o.learning_rate);
  if (!(std::isfinite(o.momentum) && o.momentum >= 0.0 && o.momentum < 1.0)) {
    throw_argument_error(function, "options.momentum", "a finite value in [0, 1)", to_display_string(o.momentum));
  }
  if (o.nesterov && o.momentum == 0.0) {
    throw_argument_error(function, "options.nesterov", "false when momentum is 0 (Nesterov needs momentum > 0)",
                         "true");
  }
  check_non_negative(function, "options.weight_decay", o.weight_decay);
}

/// One SGD-with-momentum update of element i (device-callable).
template <class T, class S>
struct sgd_momentum_fn {
  vector_view<T, S> value;
  vector_view<const T, S> grad;
  vector_view<T, S> buf;
  T lr, momentum, decay;
  bool nesterov;

  RLHF_HOST_DEVICE void operator()(std::size_t i) const {
    const T g = grad[i];
    const T bi = momentum * buf[i] + g;
    buf[i] = bi;
    const T d = nesterov ? g + momentum * bi : bi;
    value[i] = value[i] * decay - lr * d;
  }
};

/// Plain SGD (no momentum) as an element map: p <- p * decay - lr * g.
template <class T>
struct sgd_plain_fn {
  T lr, decay;
  RLHF_HOST_DEVICE T operator()(T p, T g) const { return p * decay - lr * g; }
};

template <class B, class T, class S>
void sgd_update_generic(const B& b, vector_view<T, S> value, vector_view<const T, S> grad, vector_view<T, S> buf,
                        T lr, T momentum, T decay, bool nesterov) {
  if (buf.size == 0) {
    b.transform(value, sgd_plain_fn<T>{lr, decay}, as_const(value), grad);
  } else {
    b.for_each_index(value.size, sgd_momentum_fn<T, S>{value, grad, buf, lr, momentum, decay, nesterov});
  }
}
}  // namespace detail

/// SGD with momentum over backend B for parameters of element type T. Satisfies rlhf::restorable_optimizer.
///
/// Backends may provide the per-tensor hook `rlhf_specialized_sgd_update(const Backend&, vector value,
/// vector<const T> grad, vector buf (empty without momentum), T lr, T momentum, T decay, bool nesterov)`.
///
/// @tparam B a reduce backend (elementwise updates; transform_reduce for the opt-in finite check).
/// @tparam T float or double.
template <class B, class T>
class sgd {
 public:
  using backend_type = B;                             ///< the backend the state lives in
  using value_type = T;                               ///< parameter element type
  using space_type = typename B::memory_space;        ///< memory space of parameters and state
  using params_type = parameter_list<T, space_type>;  ///< the parameter list type `step` takes

  /// @param options hyper-parameters; validated (rlhf::invalid_argument names the bad field).
  explicit sgd(const sgd_options& options = {}) : options_(options) {
    detail::check_sgd_options("rlhf::sgd", options_);
  }

  /// One step over every parameter (frozen parameters, whose grad is the empty view, are skipped).
  /// Allocates the momentum buffers on the first call when momentum > 0.
  /// @throws rlhf::invalid_argument for a malformed or changed list; rlhf::non_finite_error when the
  ///         opt-in finite check is on and a gradient holds NaN/Inf (nothing is updated then).
  void step(const B& b, const params_type& params) {
    detail::check_reduce_backend<B>();
    constexpr const char* fn = "rlhf::sgd::step";
    prepare_impl(b, params, fn);
    if (finite_checks_enabled()) detail::check_finite_gradients(b, fn, params);
    ++steps_;
    const T lr = static_cast<T>(options_.learning_rate);
    const T mu = static_cast<T>(options_.momentum);
    const T decay = static_cast<T>(1.0 - options_.learning_rate * options_.weight_decay);
    const bool nesterov = options_.nesterov;
    for (std::size_t i = 0; i < params.size(); ++i) {
      const auto& p = params[i];
      if (detail::is_frozen(p) || p.value.size() == 0) continue;
      const vector_view<T, space_type> value = p.value.flat();
      const vector_view<const T, space_type> grad = as_const(p.grad.flat());
      const vector_view<T, space_type> buf = bufs_.empty() ? vector_view<T, space_type>{} : bufs_[i].view().flat();
      if constexpr (requires { rlhf_specialized_sgd_update(b, value, grad, buf, lr, mu, decay, nesterov); }) {
        rlhf_specialized_sgd_update(b, value, grad, buf, lr, mu, decay, nesterov);
      } else {
        detail::sgd_update_generic(b, value, grad, buf, lr, mu, decay, nesterov);
      }
    }
  }

  /// Allocates zeroed momentum buffers for `params` (when momentum > 0) without stepping.
  void prepare(const B& b, const params_type& params) {
    detail::check_reduce_backend<B>();
    prepare_impl(b, params, "rlhf::sgd::prepare");
  }

  /// Drops the momentum buffers and the step count.
  void reset() {
    bufs_.clear();
    signature_ = {};
    prepared_ = false;
    steps_ = 0;
  }

  /// The learning rate of the next step.
  double learning_rate() const { return options_.learning_rate; }
  /// Sets the learning rate of the next steps. @param lr finite, >= 0.
  void set_learning_rate(double lr) {
    detail::check_non_negative("rlhf::sgd::set_learning_rate", "lr", lr);
    options_.learning_rate = lr;
  }
  /// The hyper-parameters in use.
  const sgd_options& options() const { return options_; }

  /// Number of steps taken.
  std::size_t step_count() const { return steps_; }
  /// Restores the step count (from a checkpoint).
  void set_step_count(std::size_t n) { steps_ = n; }

  /// The state as named tensors: "sgd.momentum.<name>" per parameter, in order; empty without momentum
  /// or before the first step / prepare.
  state_tensor_list<T, space_type> state() {
    state_tensor_list<T, space_type> out;
    out.reserve(bufs_.size());
    for (std::size_t i = 0; i < bufs_.size(); ++i) {
      out.push_back({"sgd.momentum." + signature_.entries[i].name, bufs_[i].view()});
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
    if (options_.momentum != 0.0) bufs_ = detail::allocate_zeroed_like<T>(b, params);
    signature_ = detail::parameter_signature::of(params);
    prepared_ = true;
  }

  sgd_options options_;
  std::vector<buffer_t<B, T>> bufs_;
  detail::parameter_signature signature_;
  bool prepared_ = false;
  std::size_t steps_ = 0;
};

}  // namespace rlhf
