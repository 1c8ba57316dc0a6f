// rlhf::swiglu_forward / swiglu_backward: hand-computed values at gate 0 and +-ln 3, a naive host oracle,
// saturation at large |gate|, in-place use, finite differences, and argument errors.
#include "test_support.hpp"

#include <limits>

#include <cmath>

#include "rlhf/models/layers/swiglu.hpp"

using namespace rlhf;
using namespace rlhf::test;
using Catch::Matchers::Contains;

namespace {

double sigmoid(double x) { return 1.0 / (1.0 + std::exp(-x)); }

}  // namespace

TEMPLATE_LIST_TEST_CASE("swiglu: hand-computed values", "[models][layers][swiglu]", all_configs) {
  using T = typename TestType::value;
  const auto b = TestType::make();
  const double l3 = std::log(3.0);
  // sigmoid(0) = 1/2, sigmoid(ln 3) = 3/4, sigmoid(-ln 3) = 1/4.
  // gate [0, ln 3, -ln 3], up [2, 2, 4]: out = gate * s * up = [0, 1.5 ln 3, -ln 3].
  auto gate = to_backend(b, std::vector<T>{0, static_cast<T>(l3), static_cast<T>(-l3)}, 1, 3);
  auto up = to_backend(b, std::vector<T>{2, 2, 4}, 1, 3);
  auto out = allocate<T>(b, 1, 3);
  swiglu_forward(b, gate.view(), up.view(), out.view());
  const double rt = std::is_same_v<T, float> ? 1e-6 : 1e-15, at = std::is_same_v<T, float> ? 1e-7 : 1e-16;
  CHECK_THAT(to_host(b, out.view()), close_to<T>(std::vector<double>{0, 1.5 * l3, -l3}, rt, at));
  // d_out = 1: d_gate = up * s * (1 + gate (1 - s)) = [2 * 1/2, 2 * 3/4 (1 + ln3 / 4), 4 * 1/4 (1 - 3 ln3 / 4)],
  //           d_up = gate * s = [0, 3/4 ln 3, -1/4 ln 3].
  auto d_out = allocate_filled<T>(b, 1, 3, T(1));
  auto d_gate = allocate<T>(b, 1, 3), d_up = allocate<T>(b, 1, 3);
  swiglu_backward(b, gate.view(), up.view(), d_out.view(), d_gate.view(), d_up.view());
  CHECK_THAT(to_host(b, d_gate.view()), close_to<T>(std::vector<double>{1, 1.5 + 0.375 * l3, 1 - 0.75 * l3}, rt, at));
  CHECK_THAT(to_host(b, d_up.view()), close_to<T>(std::vector<double>{0, 0.75 * l3, -0.25 * l3}, rt, at));
}

TEMPLATE_LIST_TEST_CASE("swiglu: random values match the oracle; saturation; in place", "[models][layers][swiglu]",
                        all_configs) {
  using T = typename TestType::value;
  const auto b = TestType::make();
  auto g = rng(351);
  const std::size_t n = 7, f = 13;
  auto gate = normal<T>(g, n * f, 0.0, 4.0);
  gate[0] = T(1000);  // silu -> gate, d silu -> 1
  gate[1] = T(-1000); // silu -> 0, d silu -> 0, no overflow on the way
  gate[2] = T(-80);
  const auto up = normal<T>(g, n * f), dout = normal<T>(g, n * f);
  std::vector<double> want(n * f), want_dg(n * f), want_du(n * f);
  for (std::size_t i = 0; i < n * f; ++i) {
    const double x = gate[i], s = sigmoid(x);
    want[i] = x * s * up[i];
    want_dg[i] = dout[i] * up[i] * (s + x * s * (1 - s));
    want_du[i] = dout[i] * x * s;
  }
  auto bg = to_backend(b, gate, n, f), bu = to_backend(b, up, n, f), bd = to_backend(b, dout, n, f);
  auto out = allocate<T>(b, n, f);
  swiglu_forward(b, bg.view(), bu.view(), out.view());
  const double rt = std::is_same_v<T, float> ? 2e-6 : 1e-14, at = std::is_same_v<T, float> ? 1e-6 : 1e-15;
  CHECK_THAT(to_host(b, out.view()), close_to<T>(want, rt, at));
  auto dg = allocate<T>(b, n, f), du = allocate<T>(b, n, f);
  swiglu_backward(b, bg.view(), bu.view(), bd.view(), dg.view(), du.view());
  CHECK_THAT(to_host(b, dg.view()), close_to<T>(want_dg, rt, at));
  CHECK_THAT(to_host(b, du.view()), close_to<T>(want_du, rt, at));
  for (T v : to_host(b, dg.view())) CHECK(std::isfinite(static_cast<double>(v)));
  // In place: the backward's d_gate over gate and d_up over up (both read before either is written).
  swiglu_backward(b, bg.view(), bu.view(), bd.view(), bg.view(), bu.view());
  CHECK_THAT(to_host(b, bg.view()), close_to<T>(want_dg, rt, at));
  CHECK_THAT(to_host(b, bu.view()), close_to<T>(want_du, rt, at));
  // Forward in place over up.
  auto bg2 = to_backend(b, gate, n, f), bu2 = to_backend(b, up, n, f);
  swiglu_forward(b, bg2.view(), bu2.view(), bu2.view());
  CHECK_THAT(to_host(b, bu2.view()), close_to<T>(want, rt, at));
}

TEMPLATE_LIST_TEST_CASE("swiglu: backward matches finite differences", "[models][layers][swiglu][gradient]",
                        double_configs) {
  const auto b = TestType::make();
  auto g = rng(352);
  const std::size_t n = 5, f = 6;
  const auto gate0 = normal<double>(g, n * f, 0.0, 2.0), up0 = normal<double>(g, n * f), gout = uniform<double>(g, n * f);
  const auto loss = [&](const std::vector<double>& gate, const std::vector<double>& up) {
    auto bg = to_backend(b, gate, n, f), bu = to_backend(b, up, n, f);
    auto out = allocate<double>(b, n, f);
    swiglu_forward(b, bg.view(), bu.view(), out.view());
    const auto o = to_host(b, out.view());
    double s = 0;
    for (std::size_t i = 0; i < o.size(); ++i) s += o[i] * gout[i];
    return s;
  };
  auto bg = to_backend(b, gate0, n, f), bu = to_backend(b, up0, n, f), bd = to_backend(b, gout, n, f);
  auto dg = allocate<double>(b, n, f), du = allocate<double>(b, n, f);
  swiglu_backward(b, bg.view(), bu.view(), bd.view(), dg.view(), du.view());
  CHECK_THAT(to_host(b, dg.view()),
             close_to<double>(numeric_gradient([&](const std::vector<double>& x) { return loss(x, up0); }, gate0),
                              fd_rtol, fd_atol));
  CHECK_THAT(to_host(b, du.view()),
             close_to<double>(numeric_gradient([&](const std::vector<double>& x) { return loss(gate0, x); }, up0),
                              fd_rtol, fd_atol));
}

TEMPLATE_LIST_TEST_CASE("swiglu: argument errors name the function and the argument", "[models][layers][swiglu][errors]",
                        all_configs) {
  using T = typename TestType::value;
  const auto b = TestType::make();
  auto a = allocate_filled<T>(b, 2, 3, T(1));
  auto c = allocate_filled<T>(b, 2, 3, T(1));
  auto bad = allocate_filled<T>(b, 3, 2, T(1));
  CHECK_THROWS_WITH(swiglu_forward(b, a.view(), bad.view(), c.view()),
                    Contains("rlhf::swiglu_forward") && Contains("'up'") && Contains("[2, 3]") &&
                        Contains("received [3, 2]"));
  CHECK_THROWS_WITH(swiglu_forward(b, a.view(), c.view(), bad.view()), Contains("'out'"));
  CHECK_THROWS_WITH(swiglu_backward(b, a.view(), c.view(), bad.view(), a.view(), c.view()),
                    Contains("rlhf::swiglu_backward") && Contains("'d_out'"));
  CHECK_THROWS_WITH(swiglu_backward(b, a.view(), c.view(), a.view(), bad.view(), c.view()), Contains("'d_gate'"));
  CHECK_THROWS_WITH(swiglu_backward(b, a.view(), c.view(), a.view(), c.view(), bad.view()), Contains("'d_up'"));
  CHECK_THROWS_WITH(swiglu_backward(b, a.view(), bad.view(), a.view(), c.view(), c.view()), Contains("'up'"));
  auto nan_up = allocate_filled<T>(b, 2, 3, std::numeric_limits<T>::quiet_NaN());
  set_finite_checks(true);
  CHECK_THROWS_WITH(swiglu_forward(b, a.view(), nan_up.view(), c.view()),
                    Contains("rlhf::swiglu_forward") && Contains("'up'") && Contains("NaN"));
  CHECK_THROWS_AS(swiglu_backward(b, a.view(), c.view(), nan_up.view(), a.view(), c.view()), non_finite_error);
  set_finite_checks(false);
}
