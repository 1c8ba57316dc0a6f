/// @file optimizer.hpp
/// @brief The optimizer concept: what a trainer needs from an optimizer, and the helpers optimizers share.
///
/// A trainer owns an optimizer and, after each backward pass, calls `step(b, params)` with the model's
/// parameter list (rlhf/models/parameters.hpp): every parameter's `grad` holds the gradient of the loss,
/// and the optimizer updates `value` in place. A learning-rate schedule drives `set_learning_rate`, a
/// checkpoint saves `state()` (the per-parameter buffers, as named tensors) and `step_count()`.
/// The library ships `rlhf::adamw` and `rlhf::sgd`; any type that satisfies `rlhf::optimizer` plugs into
/// every trainer. `rlhf::restorable_optimizer` adds what loading a checkpoint needs.
#pragma once

#include <algorithm>
#include <concepts>
#include <cstddef>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "rlhf/backends/checks.hpp"
#include "rlhf/backends/concepts.hpp"
#include "rlhf/backends/memory.hpp"
#include "rlhf/backends/view.hpp"
#include "rlhf/error.hpp"
#include "rlhf/models/parameters.hpp"

namespace rlhf {

/// One tensor of an optimizer's (or an EMA's) state, lent out for checkpoints: a stable name and a
/// writable view of the buffer in the backend's memory. Names are "<kind>.<buffer>.<parameter name>",
/// e.g. "adamw.m.layers.0.attention.wq". The same type as a checkpoint's extra tensors, so `o.state()`
/// can be passed to rlhf::save_checkpoint as it is.
template <class T, class Space = host_space>
using state_tensor = named_tensor<T, Space>;

/// An optimizer's whole state as named tensors, in a fixed order.
template <class T, class Space = host_space>
using state_tensor_list = named_tensor_list<T, Space>;

namespace detail {
template <class B, class T>
using parameter_list_of = parameter_list<T, typename B::memory_space>;

// Requirement groups of rlhf::optimizer, kept apart so each can be named in a diagnostic.
template <class O, class B, class T>
concept optimizer_has_step = requires(O& o, const B& b, parameter_list_of<B, T>& params) { o.step(b, params); };

template <class O>
concept optimizer_has_learning_rate = requires(O& o, const O& co, double lr) {
  { co.learning_rate() } -> std::convertible_to<double>;
  o.set_learning_rate(lr);
};

template <class O, class B, class T>
concept optimizer_has_state = requires(O& o) {
  { o.state() } -> std::convertible_to<state_tensor_list<T, typename B::memory_space>>;
};

template <class O>
concept optimizer_has_step_count = requires(const O& co) {
  { co.step_count() } -> std::convertible_to<std::size_t>;
};

template <class O, class B, class T>
concept optimizer_has_prepare = requires(O& o, const B& b, const parameter_list_of<B, T>& params) {
  o.prepare(b, params);
};

template <class O>
concept optimizer_has_set_step_count = requires(O& o, std::size_t n) { o.set_step_count(n); };
}  // namespace detail

/// \concept optimizer
/// What a trainer needs from an optimizer O for backend B and element type T:
///
/// - `o.step(b, params)`: one update of every parameter's `value` from its `grad`
///   (`params` is an `rlhf::parameter_list<T, B::memory_space>&`). The gradients are read, not cleared
///   (see rlhf::zero_gradients). Increments the step count.
/// - `co.learning_rate()` (convertible to double) and `o.set_learning_rate(double)`: the learning rate
///   of the next step; schedules (rlhf/optim/lr_schedule.hpp) set it before each step.
/// - `o.state()`: the per-parameter state buffers as `rlhf::state_tensor_list<T, B::memory_space>`
///   (writable views, so a checkpoint loader can fill them; empty for a stateless optimizer or before the
///   first step of one that allocates lazily).
/// - `co.step_count()` (convertible to std::size_t): the number of steps taken.
///
/// Use `detail::check_optimizer<O, B, T>()` for one diagnostic per missing member.
template <class O, class B, class T>
concept optimizer = backend<B> && detail::optimizer_has_step<O, B, T> && detail::optimizer_has_learning_rate<O> &&
                    detail::optimizer_has_state<O, B, T> && detail::optimizer_has_step_count<O>;

/// \concept restorable_optimizer
/// An optimizer whose state a checkpoint can restore: `o.prepare(b, params)` allocates (zeroed) state for
/// `params` without updating anything, so that `state()` lists every buffer to fill, and
/// `o.set_step_count(n)` restores the step counter (bias corrections depend on it).
template <class O, class B, class T>
concept restorable_optimizer =
    optimizer<O, B, T> && detail::optimizer_has_prepare<O, B, T> && detail::optimizer_has_set_step_count<O>;

namespace detail {
/// The static_assert diagnostics for rlhf::optimizer: one message per missing member.
template <class O, class B, class T>
constexpr void check_optimizer() {
  check_backend<B>();
#if RLHF_CONCEPT_CHECKS
  static_assert(optimizer_has_step<O, B, T>,
                "rlhf: the optimizer lacks `void step(const B& b, rlhf::parameter_list<T, B::memory_space>& params)` "
                "(one update of every parameter from its gradient). See docs/models.md#optimizers");
  static_assert(optimizer_has_learning_rate<O>,
                "rlhf: the optimizer lacks `double learning_rate() const` and/or `void set_learning_rate(double)`. "
                "See docs/models.md#optimizers");
  static_assert(optimizer_has_state<O, B, T>,
                "rlhf: the optimizer lacks `rlhf::state_tensor_list<T, B::memory_space> state()` (its state buffers "
                "as named tensors, for checkpoints; return an empty list if it has none). See docs/models.md#optimizers");
  static_assert(optimizer_has_step_count<O>,
                "rlhf: the optimizer lacks `std::size_t step_count() const`. See docs/models.md#optimizers");
#endif
}

/// The static_assert diagnostics for rlhf::restorable_optimizer.
template <class O, class B, class T>
constexpr void check_restorable_optimizer() {
  check_optimizer<O, B, T>();
#if RLHF_CONCEPT_CHECKS
  static_assert(optimizer_has_prepare<O, B, T>,
                "rlhf: the optimizer lacks `void prepare(const B& b, const rlhf::parameter_list<T, B::memory_space>& "
                "params)` (allocate zeroed state without stepping). See docs/models.md#optimizers");
  static_assert(optimizer_has_set_step_count<O>,
                "rlhf: the optimizer lacks `void set_step_count(std::size_t)`. See docs/models.md#optimizers");
#endif
}

/// Whether a view is the "empty" view (no data, no elements).
template <class V>
constexpr bool is_empty_view(const V& v) {
  if constexpr (is_matrix_view<V>::value) {
    return v.data == nullptr && v.size() == 0;
  } else {
    return v.data == nullptr && v.size == 0;
  }
}

/// Whether a parameter is frozen: its value has elements but its grad is the empty view.
template <class T, class S>
constexpr bool is_frozen(const parameter_view<T, S>& p) {
  return is_empty_view(p.grad) && p.value.size() != 0;
}

/// Validates a parameter list before an update: each value non-null when non-empty, each grad either of
/// the value's shape or empty (frozen, only when `allow_frozen`), names non-empty and unique.
template <class T, class S>
void check_parameter_list(std::string_view function, const parameter_list<T, S>& params, bool allow_frozen) {
  std::vector<std::string_view> names;
  names.reserve(params.size());
  for (std::size_t i = 0; i < params.size(); ++i) {
    const auto& p = params[i];
    // Named only when something is wrong: this runs on every optimizer step.
    const auto arg_name = [&] {
      return "params[" + std::to_string(i) + "]" + (p.name.empty() ? "" : " ('" + p.name + "')");
    };
    if (p.name.empty()) throw_argument_error(function, arg_name(), "a non-empty parameter name", "\"\"");
    if (p.value.size() != 0 && p.value.data == nullptr) {
      throw_argument_error(function, arg_name() + ".value", "a view with data for shape " + shape_string(p.value),
                           "a null pointer");
    }
    if (is_frozen(p)) {
      if (!allow_frozen) {
        throw_argument_error(function, arg_name() + ".grad", "shape " + shape_string(p.value) + " (same as 'value')",
                             "an empty view");
      }
    } else {
      check_same_shape(function, arg_name() + ".grad", p.grad, "value", p.value);
      if (p.grad.size() != 0 && p.grad.data == nullptr) {
        throw_argument_error(function, arg_name() + ".grad", "a view with data for shape " + shape_string(p.grad),
                             "a null pointer");
      }
    }
    names.push_back(p.name);
  }
  std::sort(names.begin(), names.end());
  const auto dup = std::adjacent_find(names.begin(), names.end());
  if (dup != names.end()) {
    throw_argument_error(function, "params", "unique parameter names", "'" + std::string(*dup) + "' twice");
  }
}

/// The names and shapes of a parameter list, remembered by stateful optimizers so that a later step with a
/// different list (another model, a reordered or resized list) fails loudly instead of mixing state.
struct parameter_signature {
  struct entry {
    std::string name;
    std::size_t rows = 0, cols = 0;
  };
  std::vector<entry> entries;

  template <class T, class S>
  static parameter_signature of(const parameter_list<T, S>& params) {
    parameter_signature s;
    s.entries.reserve(params.size());
    for (const auto& p : params) s.entries.push_back({p.name, p.value.rows, p.value.cols});
    return s;
  }

  /// Throws rlhf::invalid_argument naming the first difference between this signature and `params`.
  template <class T, class S>
  void check_matches(std::string_view function, const parameter_list<T, S>& params) const {
    if (params.size() != entries.size()) {
      throw_argument_error(function, "params",
                           "the parameter list the state was built for (" + std::to_string(entries.size()) +
                               " tensors)",
                           std::to_string(params.size()) + " tensors");
    }
    for (std::size_t i = 0; i < entries.size(); ++i) {
      const auto& e = entries[i];
      const auto& p = params[i];
      if (p.name != e.name || p.value.rows != e.rows || p.value.cols != e.cols) {
        throw_argument_error(function, "params[" + std::to_string(i) + "]",
                             "'" + e.name + "' of shape [" + std::to_string(e.rows) + ", " + std::to_string(e.cols) +
                                 "] (the parameter list the state was built for)",
                             "'" + p.name + "' of shape " + shape_string(p.value));
      }
    }
  }
};

/// The optimizers' opt-in finite check (rlhf::set_finite_checks): throws rlhf::non_finite_error naming
/// `params[i].grad ('name')` for the first trainable parameter whose gradient holds NaN or Inf, before
/// anything is updated. Callers test finite_checks_enabled() first, so no name is built when it is off.
template <class B, class T, class S>
void check_finite_gradients(const B& b, std::string_view function, const parameter_list<T, S>& params) {
  for (std::size_t i = 0; i < params.size(); ++i) {
    if (!is_frozen(params[i])) {
      check_finite(b, function, "params[" + std::to_string(i) + "].grad ('" + params[i].name + "')", params[i].grad);
    }
  }
}

/// Allocates one zero-filled buffer per parameter, of the parameter's shape, in the backend's memory.
template <class T, class B, class S>
std::vector<buffer_t<B, T>> allocate_zeroed_like(const B& b, const parameter_list<T, S>& params) {
  std::vector<buffer_t<B, T>> out;
  out.reserve(params.size());
  for (const auto& p : params) {
    out.push_back(allocate<T>(b, p.value.rows, p.value.cols));
    if (p.value.size() != 0) b.fill(out.back().view().flat(), T(0));
  }
  return out;
}
}  // namespace detail

}  // namespace rlhf
