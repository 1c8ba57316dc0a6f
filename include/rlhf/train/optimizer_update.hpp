/// @file optimizer_update.hpp
/// @brief The end of every training step, shared by the trainers: global-norm gradient clipping, the
///        learning rate of this step from a schedule, and the optimizer's update; a step whose gradient
///        norm is not finite is skipped (the parameters stay as they were).
#pragma once

#include <cmath>
#include <cstddef>
#include <functional>

#include "rlhf/backends/concepts.hpp"
#include "rlhf/models/parameters.hpp"
#include "rlhf/optim/gradient_clipping.hpp"
#include "rlhf/optim/optimizer.hpp"

namespace rlhf {

/// A learning-rate schedule as the trainers take it: the rate of the update with 0-based index step.
/// Empty: the optimizer's own rate is left as it is. Any rlhf::lr_schedule converts to it.
using lr_schedule_fn = std::function<double(std::size_t step)>;

/// What one optimizer update did.
struct optimizer_update_stats {
  double grad_norm = 0;  ///< global L2 norm of the gradients before clipping
  double learning_rate = 0;  ///< the rate the update used
  bool clipped = false;  ///< the gradients were scaled down to the clip norm
  bool skipped = false;  ///< the norm was not finite: no update
};

/// Clips the gradients of `params` to `clip.max_norm` (global norm; max_norm <= 0 turns clipping off),
/// sets the optimizer's learning rate from `schedule` at index `opt.step_count()`, and steps.
/// @tparam O an rlhf::optimizer for backend B and element type T
template <class B, class O, class T>
optimizer_update_stats optimizer_update(const B& b, O& opt, const parameter_list<T, typename B::memory_space>& params,
                                        double max_grad_norm, const lr_schedule_fn& schedule) {
  detail::check_optimizer<O, B, T>();
  optimizer_update_stats s;
  if (max_grad_norm > 0) {
    const gradient_clip_result c = clip_gradient_norm(b, params, gradient_clip_options{max_grad_norm, false});
    s.grad_norm = c.norm;
    s.clipped = c.clipped;
    s.skipped = !c.finite;
  } else {
    s.grad_norm = gradient_norm(b, params);
    s.skipped = !std::isfinite(s.grad_norm);
  }
  if (schedule) opt.set_learning_rate(schedule(opt.step_count()));
  s.learning_rate = opt.learning_rate();
  if (!s.skipped) opt.step(b, params);
  return s;
}

}  // namespace rlhf
