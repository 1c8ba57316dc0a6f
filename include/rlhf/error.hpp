/// @file error.hpp
/// @brief The library's exception types and the argument checks every public algorithm performs.
///
/// Every error message names the function, the argument, what was expected and what was received,
/// for example:
///
///     rlhf::gae: argument 'values': expected shape [4, 16] (same as 'rewards'), received [4, 15]
///
/// Non-finite inputs (NaN, Inf) are detected only when the opt-in check is enabled, either by
/// `rlhf::set_finite_checks(true)` or by setting the environment variable `RLHF_CHECK_FINITE=1`
/// before the first algorithm call. The check costs one extra read of each checked input.
#pragma once

#include <atomic>
#include <cmath>
#include <cstdlib>
#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>

#include "rlhf/config.hpp"

namespace rlhf {

/// Thrown for a bad argument: wrong shape, out-of-range hyper-parameter, inconsistent lengths.
class invalid_argument : public std::invalid_argument {
 public:
  using std::invalid_argument::invalid_argument;
};

/// Thrown by the opt-in finite check when an input holds NaN or Inf.
class non_finite_error : public invalid_argument {
 public:
  using invalid_argument::invalid_argument;
};

/// Thrown when a CUDA runtime or cuBLAS call made by a CUDA backend fails; the message names the library
/// function, the call and the status. (Declared here, without CUDA headers, so host code can catch it.)
class cuda_error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/// Thrown when a communicator's transport (MPI, NCCL) reports a failure, or when the ranks disagree on a
/// collective (different sizes); the message names the library function, the call and the status.
class distributed_error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

namespace detail {
inline std::atomic<int>& finite_checks_state() {
  // -1: not decided yet (read the environment on first use), 0: off, 1: on.
  static std::atomic<int> state{-1};
  return state;
}

template <class T>
std::string to_display_string(const T& value) {
  std::ostringstream os;
  os.precision(9);
  os << value;
  return os.str();
}

/// Builds the uniform message "FUNCTION: argument 'ARG': expected EXPECTED, received RECEIVED".
inline std::string argument_message(std::string_view function, std::string_view argument,
                                    std::string_view expected, std::string_view received) {
  // A stream rather than std::string::append: GCC 12 emits a false -Wrestrict for the latter at -O2.
  std::ostringstream os;
  os << function << ": argument '" << argument << "': expected " << expected << ", received " << received;
  return os.str();
}

/// Throws rlhf::invalid_argument with the uniform message.
[[noreturn]] inline void throw_argument_error(std::string_view function, std::string_view argument,
                                              std::string_view expected, std::string_view received) {
  throw invalid_argument(argument_message(function, argument, expected, received));
}

/// Checks that a hyper-parameter is finite and within [low, high]; names it in the error otherwise.
template <class T>
void check_in_range(std::string_view function, std::string_view argument, T value, T low, T high) {
  if (!(std::isfinite(static_cast<double>(value)) && value >= low && value <= high)) {
    throw_argument_error(function, argument,
                         "a finite value in [" + to_display_string(low) + ", " + to_display_string(high) + "]",
                         to_display_string(value));
  }
}

/// Checks that a hyper-parameter is finite and >= 0.
template <class T>
void check_non_negative(std::string_view function, std::string_view argument, T value) {
  if (!(std::isfinite(static_cast<double>(value)) && value >= T(0))) {
    throw_argument_error(function, argument, "a finite value >= 0", to_display_string(value));
  }
}

/// Checks that a hyper-parameter is finite and > 0.
template <class T>
void check_positive(std::string_view function, std::string_view argument, T value) {
  if (!(std::isfinite(static_cast<double>(value)) && value > T(0))) {
    throw_argument_error(function, argument, "a finite value > 0", to_display_string(value));
  }
}
}  // namespace detail

/// Turns the opt-in NaN/Inf check of algorithm inputs on or off (process-wide, thread-safe).
inline void set_finite_checks(bool enabled) { detail::finite_checks_state().store(enabled ? 1 : 0); }

/// Whether inputs are checked for NaN/Inf. Defaults to the environment variable RLHF_CHECK_FINITE
/// ("1", "on", "true" enable it), read once.
inline bool finite_checks_enabled() {
  int state = detail::finite_checks_state().load(std::memory_order_relaxed);
  if (state < 0) {
    const char* env = std::getenv("RLHF_CHECK_FINITE");
    const std::string_view v = env ? std::string_view(env) : std::string_view();
    state = (v == "1" || v == "on" || v == "true" || v == "ON" || v == "TRUE") ? 1 : 0;
    int expected = -1;
    detail::finite_checks_state().compare_exchange_strong(expected, state);
    state = detail::finite_checks_state().load();
  }
  return state == 1;
}

}  // namespace rlhf
