/// @file ema.hpp
/// @brief Exponential moving average of a model's weights (InstructGPT's EMA, decay 0.992).
///
/// A shadow copy of every parameter value, kept in the backend's memory and updated after each
/// optimizer step (Polyak & Juditsky 1992 averaging, in its exponential form):
///
///     shadow <- d * shadow + (1 - d) * value
///
/// After n updates from a shadow initialized to w_0 with values w_1 ... w_n:
///
///     shadow_n = d^n * w_0 + (1 - d) * sum_{k=1..n} d^(n-k) * w_k
///
/// InstructGPT keeps an EMA of its PPO policy with decay 0.992 (IGPT); DSC offers it as `--enable_ema`
/// with beta 0.992, ORL as an option.
/// There is no bias correction (as in DSC): call `reset(b, params)` before training so the average
/// starts from the initial weights, as those peers' copy of the initial model does.
#pragma once

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

/// Options of rlhf::weight_ema. The default decay 0.992 is InstructGPT's (also DSC's).
struct weight_ema_options {
  double decay = 0.992;  ///< d in [0, 1]: weight of the old average (1 freezes it, 0 copies the weights)
};

namespace detail {
/// shadow <- d * shadow + (1 - d) * value (device-callable element map).
template <class T>
struct ema_update_fn {
  T decay;
  RLHF_HOST_DEVICE T operator()(T shadow, T value) const { return decay * shadow + (T(1) - decay) * value; }
};
}  // namespace detail

/// An exponential moving average of the values of a parameter list, over backend B, element type T.
///
/// Backends may provide the per-tensor hook `rlhf_specialized_ema_update(const Backend&, vector shadow,
/// vector<const T> value, T decay)`.
///
/// @tparam B an elementwise backend.
/// @tparam T float or double.
template <class B, class T>
class weight_ema {
 public:
  using backend_type = B;                             ///< the backend the shadow lives in
  using value_type = T;                               ///< parameter element type
  using space_type = typename B::memory_space;        ///< memory space of parameters and shadow
  using params_type = parameter_list<T, space_type>;  ///< the parameter list type taken

  /// @param options the decay, validated to lie in [0, 1].
  explicit weight_ema(const weight_ema_options& options = {}) : options_(options) {
    detail::check_in_range("rlhf::weight_ema", "options.decay", options_.decay, 0.0, 1.0);
  }

  /// Sets the shadow to the current values of `params` (allocating it on the first call; later calls
  /// need the same names and shapes). Call it before training.
  void reset(const B& b, const params_type& params) {
    detail::check_elementwise_backend<B>();
    constexpr const char* fn = "rlhf::weight_ema::reset";
    prepare(b, params, fn);
    for (std::size_t i = 0; i < params.size(); ++i) {
      if (params[i].value.size() == 0) continue;
      b.copy(as_const(params[i].value.flat()), shadow_[i].view().flat());
    }
    updates_ = 0;
  }

  /// One averaging step: shadow <- d * shadow + (1 - d) * value for every parameter. When the shadow was
  /// never set, this first call copies the values instead (as reset would).
  /// @param b the backend.
  /// @param params the parameters (same names and shapes as at reset).
  void update(const B& b, const params_type& params) {
    detail::check_elementwise_backend<B>();
    constexpr const char* fn = "rlhf::weight_ema::update";
    if (!initialized()) {
      reset(b, params);
      return;
    }
    detail::check_parameter_list(fn, params, /*allow_frozen=*/true);
    signature_.check_matches(fn, params);
    const T d = static_cast<T>(options_.decay);
    for (std::size_t i = 0; i < params.size(); ++i) {
      if (params[i].value.size() == 0) continue;
      const vector_view<T, space_type> shadow = shadow_[i].view().flat();
      const vector_view<const T, space_type> value = as_const(params[i].value.flat());
      if constexpr (requires { rlhf_specialized_ema_update(b, shadow, value, d); }) {
        rlhf_specialized_ema_update(b, shadow, value, d);
      } else {
        b.transform(shadow, detail::ema_update_fn<T>{d}, as_const(shadow), value);
      }
    }
    ++updates_;
  }

  /// Writes the averaged weights into the values of `params` (e.g. to evaluate or save the EMA model;
  /// keep a copy of the training weights first if training continues).
  /// @throws rlhf::invalid_argument if the shadow was never set or `params` differs from it.
  void copy_to(const B& b, const params_type& params) const {
    detail::check_backend<B>();
    constexpr const char* fn = "rlhf::weight_ema::copy_to";
    if (!initialized()) {
      detail::throw_argument_error(fn, "this", "an average set by reset() or update()", "an empty average");
    }
    detail::check_parameter_list(fn, params, /*allow_frozen=*/true);
    signature_.check_matches(fn, params);
    for (std::size_t i = 0; i < params.size(); ++i) {
      if (params[i].value.size() == 0) continue;
      b.copy(shadow_[i].view().flat(), params[i].value.flat());
    }
  }

  /// Whether the shadow holds an average (after reset or the first update).
  bool initialized() const { return initialized_; }
  /// Number of averaging steps since the last reset.
  std::size_t update_count() const { return updates_; }
  /// The decay d.
  double decay() const { return options_.decay; }

  /// The shadow as named tensors "ema.<name>", one per parameter in order (empty before reset/update).
  /// Writable, so a checkpoint can restore it after reset().
  state_tensor_list<T, space_type> state() {
    state_tensor_list<T, space_type> out;
    out.reserve(shadow_.size());
    for (std::size_t i = 0; i < shadow_.size(); ++i) {
      out.push_back({"ema." + signature_.entries[i].name, shadow_[i].view()});
    }
    return out;
  }

 private:
  void prepare(const B& b, const params_type& params, const char* fn) {
    detail::check_parameter_list(fn, params, /*allow_frozen=*/true);
    if (initialized_) {
      signature_.check_matches(fn, params);
      return;
    }
    shadow_.clear();
    shadow_.reserve(params.size());
    for (const auto& p : params) shadow_.push_back(allocate<T>(b, p.value.rows, p.value.cols));
    signature_ = detail::parameter_signature::of(params);
    initialized_ = true;
  }

  weight_ema_options options_;
  std::vector<buffer_t<B, T>> shadow_;
  detail::parameter_signature signature_;
  bool initialized_ = false;
  std::size_t updates_ = 0;
};

}  // namespace rlhf
