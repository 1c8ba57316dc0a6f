// rlhf/backends/polynomial_exp.hpp: the float exp of the generic token log-probs, held to std::exp in double
// over its whole range, and its edge cases (underflow to 0, NaN, the clamps that keep the integer conversion
// defined).
#include "test_support.hpp"

#include <cmath>
#include <limits>

#include "rlhf/backends/polynomial_exp.hpp"

using namespace rlhf;

TEST_CASE("polynomial_exp: within 1.5e-7 relative of exp on [-87, 88]", "[backends][polynomial_exp]") {
  double worst = 0;
  float worst_x = 0;
  // Every 2^-10 step over the range, plus points next to the reduction's boundaries (x / ln 2 = k + 1/2).
  for (int i = -87 * 1024; i <= 88 * 1024; ++i) {
    for (const float x : {static_cast<float>(i) / 1024.0f,
                          std::nextafter(static_cast<float>((i / 1024) + 0.5) * 0.69314718f, 0.0f)}) {
      const double want = std::exp(static_cast<double>(x));
      const double rel = std::abs(static_cast<double>(detail::polynomial_exp(x)) - want) / want;
      if (rel > worst) worst = rel, worst_x = x;
    }
  }
  INFO("worst at x = " << worst_x);
  CHECK(worst < 1.5e-7);
  CHECK(detail::polynomial_exp(0.0f) == 1.0f);  // n = 0, r = 0: the polynomial's constant term
}

TEST_CASE("polynomial_exp: 0 below -87.3, NaN for NaN, finite at the top", "[backends][polynomial_exp]") {
  constexpr float inf = std::numeric_limits<float>::infinity();
  CHECK(detail::polynomial_exp(-inf) == 0.0f);
  CHECK(detail::polynomial_exp(-87.4f) == 0.0f);
  CHECK(detail::polynomial_exp(-1e30f) == 0.0f);
  CHECK(detail::polynomial_exp(-87.2f) > 0.0f);  // still a normal float (1.3e-38)
  CHECK(std::isnormal(detail::polynomial_exp(-87.2f)));
  CHECK(std::isnan(detail::polynomial_exp(std::numeric_limits<float>::quiet_NaN())));
  CHECK(std::isfinite(detail::polynomial_exp(88.0f)));
  CHECK(static_cast<double>(detail::polynomial_exp(88.0f)) == Approx(std::exp(88.0)).epsilon(1.5e-7));
}
