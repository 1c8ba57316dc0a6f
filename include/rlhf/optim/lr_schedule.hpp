/// @file lr_schedule.hpp
/// @brief Learning-rate schedules: constant, linear warm-up then linear or cosine decay to a floor.
///
/// A schedule is a small value type: `double operator()(std::size_t step) const` returns the learning
/// rate to use for the update with 0-based index `step` (the number of optimizer steps already taken), so
/// a trainer writes `opt.set_learning_rate(schedule(opt.step_count())); opt.step(b, params);`.
///
/// The formulas follow the Hugging Face `transformers` schedulers that the peers use (ORL, DSC, TRL), so
/// a peer's learning-rate curve is reproduced step for step:
///
///     warm-up (step < W):  lr(step) = base_lr * step / W                  (0 at step 0, as transformers)
///     progress             p = min(1, (step - W) / max(1, N - W)), and p = 1 from step N on
///     linear decay:        lr = base_lr * (r + (1 - r) * (1 - p))
///     cosine decay:        lr = base_lr * (r + (1 - r) * 0.5 * (1 + cos(pi * p)))   (Loshchilov & Hutter 2017, SGDR eq. 5, one cycle)
///
/// with W warm-up steps, N total steps and r the floor ratio (min_lr / base_lr). Past N the rate stays
/// at the floor (transformers' cosine would rise again; a run that overshoots its budget should not).
#pragma once

#include <cmath>
#include <concepts>
#include <cstddef>
#include <string>

#include "rlhf/error.hpp"

namespace rlhf {

/// \concept lr_schedule
/// A callable `double(std::size_t step) const`: the learning rate of the update with 0-based index step.
template <class S>
concept lr_schedule = std::copy_constructible<S> && requires(const S& s, std::size_t step) {
  { s(step) } -> std::convertible_to<double>;
};

/// Number of warm-up steps for a warm-up ratio of the run, rounded up as transformers does
/// (`ceil(total_steps * ratio)`; ORL's default ratio is 0.03).
/// @param total_steps optimizer steps of the whole run.
/// @param ratio fraction of the run spent warming up, in [0, 1].
inline std::size_t warmup_steps_for(std::size_t total_steps, double ratio) {
  detail::check_in_range("rlhf::warmup_steps_for", "ratio", ratio, 0.0, 1.0);
  return static_cast<std::size_t>(std::ceil(static_cast<double>(total_steps) * ratio));
}

namespace detail {
inline void check_schedule(const char* function, double base_lr, std::size_t warmup_steps, std::size_t total_steps,
                           double min_ratio, bool needs_total) {
  check_non_negative(function, "base_lr", base_lr);
  check_in_range(function, "min_ratio", min_ratio, 0.0, 1.0);
  if (needs_total && total_steps == 0) throw_argument_error(function, "total_steps", "a value >= 1", "0");
  if (needs_total && warmup_steps > total_steps) {
    throw_argument_error(function, "warmup_steps",
                         "a value <= total_steps (" + std::to_string(total_steps) + ")", std::to_string(warmup_steps));
  }
}

// Linear warm-up factor step / W, or 1 after it.
inline double warmup_factor(std::size_t step, std::size_t warmup_steps) {
  return step < warmup_steps ? static_cast<double>(step) / static_cast<double>(warmup_steps) : 1.0;
}

// Decay progress in [0, 1] after the warm-up.
inline double decay_progress(std::size_t step, std::size_t warmup_steps, std::size_t total_steps) {
  if (step >= total_steps) return 1.0;  // the floor from step N on, even when W == N
  // max(1, N - W), as transformers.
  const double span = static_cast<double>(total_steps > warmup_steps ? total_steps - warmup_steps : 1);
  const double p = static_cast<double>(step - warmup_steps) / span;
  return p < 1.0 ? p : 1.0;
}
}  // namespace detail

/// A constant learning rate, optionally after a linear warm-up (transformers' `constant_with_warmup`).
class constant_schedule {
 public:
  /// @param base_lr the learning rate, finite and >= 0.
  /// @param warmup_steps linear warm-up length W (0: none); lr(step) = base_lr * step / W while step < W.
  explicit constant_schedule(double base_lr, std::size_t warmup_steps = 0)
      : base_lr_(base_lr), warmup_steps_(warmup_steps) {
    detail::check_schedule("rlhf::constant_schedule", base_lr, warmup_steps, 0, 0.0, false);
  }
  /// The learning rate of the update with 0-based index `step`.
  double operator()(std::size_t step) const { return base_lr_ * detail::warmup_factor(step, warmup_steps_); }
  /// The peak learning rate.
  double base_lr() const { return base_lr_; }
  /// The warm-up length.
  std::size_t warmup_steps() const { return warmup_steps_; }

 private:
  double base_lr_;
  std::size_t warmup_steps_;
};

/// Linear warm-up then linear decay to min_ratio * base_lr at total_steps (transformers' `linear`
/// when min_ratio = 0).
class linear_schedule {
 public:
  /// @param base_lr peak learning rate, finite and >= 0.
  /// @param warmup_steps warm-up length W, <= total_steps.
  /// @param total_steps N >= 1, the step at which the floor is reached.
  /// @param min_ratio floor as a fraction of base_lr, in [0, 1].
  linear_schedule(double base_lr, std::size_t warmup_steps, std::size_t total_steps, double min_ratio = 0.0)
      : base_lr_(base_lr), warmup_steps_(warmup_steps), total_steps_(total_steps), min_ratio_(min_ratio) {
    detail::check_schedule("rlhf::linear_schedule", base_lr, warmup_steps, total_steps, min_ratio, true);
  }
  /// ZGL's policy and reward-model schedule: no warm-up, linear decay to 0 over the run.
  static linear_schedule ziegler(double base_lr, std::size_t total_steps) {
    return linear_schedule(base_lr, 0, total_steps, 0.0);
  }
  /// The learning rate of the update with 0-based index `step`.
  double operator()(std::size_t step) const {
    if (step < warmup_steps_) return base_lr_ * detail::warmup_factor(step, warmup_steps_);
    const double p = detail::decay_progress(step, warmup_steps_, total_steps_);
    return base_lr_ * (min_ratio_ + (1.0 - min_ratio_) * (1.0 - p));
  }
  /// The peak learning rate.
  double base_lr() const { return base_lr_; }
  /// The warm-up length.
  std::size_t warmup_steps() const { return warmup_steps_; }
  /// The step at which the floor is reached.
  std::size_t total_steps() const { return total_steps_; }
  /// The floor as a fraction of base_lr.
  double min_ratio() const { return min_ratio_; }

 private:
  double base_lr_;
  std::size_t warmup_steps_, total_steps_;
  double min_ratio_;
};

/// Linear warm-up then half-cosine decay to min_ratio * base_lr at total_steps (transformers'
/// `cosine_with_min_lr`; `cosine` when min_ratio = 0).
class cosine_schedule {
 public:
  /// @param base_lr peak learning rate, finite and >= 0.
  /// @param warmup_steps warm-up length W, <= total_steps.
  /// @param total_steps N >= 1, the step at which the floor is reached.
  /// @param min_ratio floor as a fraction of base_lr, in [0, 1].
  cosine_schedule(double base_lr, std::size_t warmup_steps, std::size_t total_steps, double min_ratio = 0.0)
      : base_lr_(base_lr), warmup_steps_(warmup_steps), total_steps_(total_steps), min_ratio_(min_ratio) {
    detail::check_schedule("rlhf::cosine_schedule", base_lr, warmup_steps, total_steps, min_ratio, true);
  }
  /// ORL's schedule: `cosine_with_min_lr`, warm-up over 3% of the run, floor 0.1 * base_lr.
  static cosine_schedule openrlhf(double base_lr, std::size_t total_steps) {
    return cosine_schedule(base_lr, warmup_steps_for(total_steps, 0.03), total_steps, 0.1);
  }
  /// The learning rate of the update with 0-based index `step`.
  double operator()(std::size_t step) const {
    if (step < warmup_steps_) return base_lr_ * detail::warmup_factor(step, warmup_steps_);
    const double p = detail::decay_progress(step, warmup_steps_, total_steps_);
    const double pi = 3.14159265358979323846;
    return base_lr_ * (min_ratio_ + (1.0 - min_ratio_) * 0.5 * (1.0 + std::cos(pi * p)));
  }
  /// The peak learning rate.
  double base_lr() const { return base_lr_; }
  /// The warm-up length.
  std::size_t warmup_steps() const { return warmup_steps_; }
  /// The step at which the floor is reached.
  std::size_t total_steps() const { return total_steps_; }
  /// The floor as a fraction of base_lr.
  double min_ratio() const { return min_ratio_; }

 private:
  double base_lr_;
  std::size_t warmup_steps_, total_steps_;
  double min_ratio_;
};

static_assert(lr_schedule<constant_schedule> && lr_schedule<linear_schedule> && lr_schedule<cosine_schedule>);

}  // namespace rlhf
