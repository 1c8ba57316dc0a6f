// Error types, the uniform message format, range checks and the opt-in finite check switch.
#include "test_support.hpp"

#include "rlhf/error.hpp"

TEST_CASE("argument errors name function, argument, expected and received", "[error]") {
  try {
    rlhf::detail::throw_argument_error("rlhf::gae", "values", "shape [4, 16]", "[4, 15]");
    FAIL("no exception");
  } catch (const std::invalid_argument& e) {
    CHECK(std::string(e.what()) == "rlhf::gae: argument 'values': expected shape [4, 16], received [4, 15]");
  }
  CHECK_THROWS_WITH(rlhf::detail::check_in_range("rlhf::gae", "gamma", 1.5, 0.0, 1.0),
                    Catch::Contains("rlhf::gae") && Catch::Contains("'gamma'") && Catch::Contains("[0, 1]") &&
                        Catch::Contains("1.5"));
  CHECK_THROWS_AS(rlhf::detail::check_in_range("f", "x", std::nan(""), 0.0, 1.0), rlhf::invalid_argument);
  CHECK_THROWS_AS(rlhf::detail::check_non_negative("f", "beta", -0.1), rlhf::invalid_argument);
  CHECK_THROWS_AS(rlhf::detail::check_non_negative("f", "beta", INFINITY), rlhf::invalid_argument);
  CHECK_THROWS_AS(rlhf::detail::check_positive("f", "temperature", 0.0), rlhf::invalid_argument);
  CHECK_NOTHROW(rlhf::detail::check_positive("f", "temperature", 0.7));
  CHECK_NOTHROW(rlhf::detail::check_in_range("f", "lambda", 1.0, 0.0, 1.0));
}

TEST_CASE("the finite check is opt-in and switchable", "[error]") {
  const bool before = rlhf::finite_checks_enabled();
  rlhf::set_finite_checks(true);
  CHECK(rlhf::finite_checks_enabled());
  rlhf::set_finite_checks(false);
  CHECK_FALSE(rlhf::finite_checks_enabled());
  rlhf::set_finite_checks(before);
  static_assert(std::is_base_of_v<std::invalid_argument, rlhf::non_finite_error>);
  static_assert(std::is_base_of_v<rlhf::invalid_argument, rlhf::non_finite_error>);
}
