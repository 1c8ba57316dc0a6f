/// @file checks.hpp
/// @brief Argument checks shared by every algorithm: shapes, sizes, and the opt-in NaN/Inf check.
///
/// All of them throw rlhf::invalid_argument (rlhf::non_finite_error for the finite check) with the
/// uniform message "FUNCTION: argument 'ARG': expected ..., received ...".
#pragma once

#include <cmath>
#include <cstddef>
#include <sstream>
#include <string>
#include <string_view>
#include <type_traits>

#include "rlhf/backends/concepts.hpp"
#include "rlhf/backends/view.hpp"
#include "rlhf/error.hpp"

namespace rlhf::detail {

/// `got` must be rows x cols. `why` explains where the expectation comes from, e.g. "(same as 'rewards')".
template <class T, class S>
void check_shape(std::string_view function, std::string_view argument, matrix_view<T, S> got, std::size_t rows,
                 std::size_t cols, std::string_view why = {}) {
  if (got.rows != rows || got.cols != cols) {
    std::ostringstream expected;
    expected << "shape [" << rows << ", " << cols << ']';
    if (!why.empty()) expected << ' ' << why;
    throw_argument_error(function, argument, expected.str(), shape_string(got));
  }
}

/// `got` must have the shape of `reference` (named `reference_name` in the message).
template <class T, class U, class S>
void check_same_shape(std::string_view function, std::string_view argument, matrix_view<T, S> got,
                      std::string_view reference_name, matrix_view<U, S> reference) {
  std::ostringstream why;
  why << "(same as '" << reference_name << "')";
  check_shape(function, argument, got, reference.rows, reference.cols, why.str());
}

/// `got` must hold n elements.
template <class T, class S>
void check_size(std::string_view function, std::string_view argument, vector_view<T, S> got, std::size_t n,
                std::string_view why = {}) {
  if (got.size != n) {
    std::ostringstream expected;
    expected << "size " << n;
    if (!why.empty()) expected << ' ' << why;
    throw_argument_error(function, argument, expected.str(), shape_string(got));
  }
}

/// Functor counting non-finite elements (device-callable).
struct count_non_finite {
  template <class T>
  RLHF_HOST_DEVICE std::size_t operator()(T x) const {
    if constexpr (std::is_floating_point_v<T>) {
      return (x - x == x - x) ? 0 : 1;  // NaN or Inf make x - x NaN; no <cmath> needed on device.
    } else {
      return 0;
    }
  }
};
struct add_sizes {
  RLHF_HOST_DEVICE std::size_t operator()(std::size_t a, std::size_t b) const { return a + b; }
};

/// When finite checks are enabled (rlhf::set_finite_checks, RLHF_CHECK_FINITE=1), throws
/// rlhf::non_finite_error if `v` holds NaN or Inf. One extra read of `v`; nothing otherwise.
template <class B, class T, class S>
void check_finite(const B& b, std::string_view function, std::string_view argument, vector_view<T, S> v) {
  if (!finite_checks_enabled()) return;
  const std::size_t bad = b.transform_reduce(std::size_t(0), add_sizes{}, count_non_finite{}, v);
  if (bad != 0) {
    throw non_finite_error(argument_message(function, argument, "finite values (the opt-in finite check is on)",
                                            std::to_string(bad) + " NaN/Inf element(s)"));
  }
}
template <class B, class T, class S>
void check_finite(const B& b, std::string_view function, std::string_view argument, matrix_view<T, S> m) {
  check_finite(b, function, argument, m.flat());
}

/// Counts non-finite elements of x at valid (mask != 0) positions (device-callable).
struct count_non_finite_where_valid {
  template <class T, class M>
  RLHF_HOST_DEVICE std::size_t operator()(T x, M m) const {
    return (m != 0 && !(x - x == x - x)) ? 1 : 0;
  }
};

/// The opt-in finite check restricted to valid positions. Algorithms that never read masked positions
/// use it, so NaN padding there stays legitimate.
template <class B, class T, class S>
void check_finite_where_valid(const B& b, std::string_view function, std::string_view argument, matrix_view<T, S> v,
                              matrix_view<const mask_type, S> mask) {
  if (!finite_checks_enabled()) return;
  const std::size_t bad =
      b.transform_reduce(std::size_t(0), add_sizes{}, count_non_finite_where_valid{}, v.flat(), mask.flat());
  if (bad != 0) {
    throw non_finite_error(argument_message(function, argument,
                                            "finite values at valid positions (the opt-in finite check is on)",
                                            std::to_string(bad) + " NaN/Inf element(s)"));
  }
}

}  // namespace rlhf::detail
