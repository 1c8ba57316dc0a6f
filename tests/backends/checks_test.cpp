// Shared argument checks: shapes, sizes and the opt-in finite check over every backend.
#include "test_support.hpp"

#include <limits>

#include "rlhf/backends/checks.hpp"

using namespace rlhf;
using namespace rlhf::test;

TEMPLATE_LIST_TEST_CASE("shape and size checks produce the uniform message", "[backends][checks]", all_configs) {
  using T = typename TestType::value;
  const auto b = TestType::make();
  auto x = allocate<T>(b, 4, 15), y = allocate<T>(b, 4, 16);
  CHECK_THROWS_WITH(detail::check_same_shape("rlhf::gae", "values", x.view(), "rewards", y.view()),
                    "rlhf::gae: argument 'values': expected shape [4, 16] (same as 'rewards'), received [4, 15]");
  CHECK_NOTHROW(detail::check_same_shape("rlhf::gae", "values", y.view(), "rewards", y.view()));
  CHECK_THROWS_WITH(detail::check_size("rlhf::f", "scores", x.view().row(0), 4, "(one per row of 'rewards')"),
                    "rlhf::f: argument 'scores': expected size 4 (one per row of 'rewards'), received [15]");
}

TEMPLATE_LIST_TEST_CASE("the finite check finds NaN and Inf only when enabled", "[backends][checks]", all_configs) {
  using T = typename TestType::value;
  const auto b = TestType::make();
  std::vector<T> host(10000, T(1));
  host[7777] = std::numeric_limits<T>::quiet_NaN();
  host[3] = -std::numeric_limits<T>::infinity();
  auto x = to_backend(b, host);
  const bool before = finite_checks_enabled();
  set_finite_checks(false);
  CHECK_NOTHROW(detail::check_finite(b, "rlhf::f", "x", x.view()));
  set_finite_checks(true);
  CHECK_THROWS_AS(detail::check_finite(b, "rlhf::f", "x", x.view()), non_finite_error);
  CHECK_THROWS_WITH(detail::check_finite(b, "rlhf::f", "x", x.view()),
                    Catch::Contains("'x'") && Catch::Contains("2 NaN/Inf"));
  auto ok = allocate_filled<T>(b, 3, 3, T(0.5));
  CHECK_NOTHROW(detail::check_finite(b, "rlhf::f", "ok", ok.view()));
  set_finite_checks(before);
}
