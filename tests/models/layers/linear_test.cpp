// rlhf::linear_forward / linear_backward: a hand-computed product, a naive host oracle, accumulation of
// d_w, optional outputs, finite differences, and argument errors.
#include "test_support.hpp"

#include <limits>

#include "rlhf/models/layers/linear.hpp"

using namespace rlhf;
using namespace rlhf::test;
using Catch::Matchers::Contains;

namespace {

/// y = x w^T, summed in the obvious order.
std::vector<double> oracle_linear(const std::vector<double>& x, const std::vector<double>& w, std::size_t n,
                                  std::size_t in, std::size_t out) {
  std::vector<double> y(n * out, 0.0);
  for (std::size_t r = 0; r < n; ++r)
    for (std::size_t o = 0; o < out; ++o)
      for (std::size_t i = 0; i < in; ++i) y[r * out + o] += x[r * in + i] * w[o * in + i];
  return y;
}

template <class T>
constexpr double lin_rtol = std::is_same_v<T, float> ? 1e-5 : 1e-12;
template <class T>
constexpr double lin_atol = std::is_same_v<T, float> ? 1e-5 : 1e-12;

}  // namespace

TEMPLATE_LIST_TEST_CASE("linear: hand-computed forward and backward", "[models][layers][linear]", all_configs) {
  using T = typename TestType::value;
  const auto b = TestType::make();
  // x = [1, 2], w = [[1, 0], [0, 1], [1, 1]] ([out 3, in 2]): y = x w^T = [1, 2, 3].
  auto x = to_backend(b, std::vector<T>{1, 2}, 1, 2);
  auto w = to_backend(b, std::vector<T>{1, 0, 0, 1, 1, 1}, 3, 2);
  auto y = allocate<T>(b, 1, 3);
  linear_forward(b, x.view(), w.view(), y.view());
  CHECK(to_host(b, y.view()) == std::vector<T>{1, 2, 3});
  // d_y = [1, 1, 1]: d_x = d_y w = [2, 2]; d_w += d_y^T x = [[1, 2], [1, 2], [1, 2]] on top of 0.5.
  auto dy = to_backend(b, std::vector<T>{1, 1, 1}, 1, 3);
  auto dx = allocate<T>(b, 1, 2);
  auto dw = allocate_filled<T>(b, 3, 2, T(0.5));
  linear_backward(b, x.view(), w.view(), dy.view(), dx.view(), dw.view());
  CHECK(to_host(b, dx.view()) == std::vector<T>{2, 2});
  CHECK(to_host(b, dw.view()) == std::vector<T>{T(1.5), T(2.5), T(1.5), T(2.5), T(1.5), T(2.5)});
}

TEMPLATE_LIST_TEST_CASE("linear: random shapes match the naive oracle; d_w accumulates; optional outputs",
                        "[models][layers][linear]", all_configs) {
  using T = typename TestType::value;
  const auto b = TestType::make();
  auto g = rng(331);
  for (const auto& [n, in, out] : std::vector<std::tuple<std::size_t, std::size_t, std::size_t>>{
           {5, 6, 4}, {1, 64, 172}, {17, 3, 1}, {0, 4, 3}}) {
    const auto x = uniform<T>(g, n * in), w = uniform<T>(g, out * in), dy = uniform<T>(g, n * out);
    auto bx = to_backend(b, x, n, in), bw = to_backend(b, w, out, in), bdy = to_backend(b, dy, n, out);
    auto y = allocate_filled<T>(b, n, out, T(42));
    linear_forward(b, bx.view(), bw.view(), y.view());
    CHECK_THAT(to_host(b, y.view()), close_to<T>(oracle_linear(cast<double>(x), cast<double>(w), n, in, out),
                                                 lin_rtol<T>, lin_atol<T>));
    // d_x = d_y w: the oracle with w^T as the weight.
    std::vector<double> wt(in * out);
    for (std::size_t o = 0; o < out; ++o)
      for (std::size_t i = 0; i < in; ++i) wt[i * out + o] = static_cast<double>(w[o * in + i]);
    const auto want_dx = oracle_linear(cast<double>(dy), wt, n, out, in);
    // d_w = d_y^T x, added to the initial 1.
    std::vector<double> want_dw(out * in, 1.0);
    for (std::size_t r = 0; r < n; ++r)
      for (std::size_t o = 0; o < out; ++o)
        for (std::size_t i = 0; i < in; ++i)
          want_dw[o * in + i] += static_cast<double>(dy[r * out + o]) * static_cast<double>(x[r * in + i]);
    auto dx = allocate_filled<T>(b, n, in, T(42));
    auto dw = allocate_filled<T>(b, out, in, T(1));
    linear_backward(b, bx.view(), bw.view(), bdy.view(), dx.view(), dw.view());
    CHECK_THAT(to_host(b, dx.view()), close_to<T>(want_dx, lin_rtol<T>, lin_atol<T>));
    CHECK_THAT(to_host(b, dw.view()), close_to<T>(want_dw, lin_rtol<T>, lin_atol<T>));
    // d_x not wanted: d_w accumulates a second time, nothing else is touched.
    linear_backward(b, bx.view(), bw.view(), bdy.view(), {}, dw.view());
    for (auto& v : want_dw) v = 2 * v - 1;
    CHECK_THAT(to_host(b, dw.view()), close_to<T>(want_dw, lin_rtol<T>, lin_atol<T>));
    // d_w not wanted (a frozen weight): only d_x.
    auto dx2 = allocate<T>(b, n, in);
    linear_backward(b, bx.view(), bw.view(), bdy.view(), dx2.view(), backend_matrix<decltype(b), T>{});
    CHECK_THAT(to_host(b, dx2.view()), close_to<T>(want_dx, lin_rtol<T>, lin_atol<T>));
  }
}

TEMPLATE_LIST_TEST_CASE("linear: backward matches finite differences", "[models][layers][linear][gradient]",
                        double_configs) {
  const auto b = TestType::make();
  auto g = rng(332);
  const std::size_t n = 5, in = 6, out = 4;
  const auto x0 = uniform<double>(g, n * in), w0 = uniform<double>(g, out * in), gout = uniform<double>(g, n * out);
  const auto loss = [&](const std::vector<double>& x, const std::vector<double>& w) {
    auto bx = to_backend(b, x, n, in), bw = to_backend(b, w, out, in);
    auto y = allocate<double>(b, n, out);
    linear_forward(b, bx.view(), bw.view(), y.view());
    const auto o = to_host(b, y.view());
    double s = 0;
    for (std::size_t i = 0; i < o.size(); ++i) s += o[i] * gout[i];
    return s;
  };
  auto bx = to_backend(b, x0, n, in), bw = to_backend(b, w0, out, in), bg = to_backend(b, gout, n, out);
  auto dx = allocate<double>(b, n, in);
  auto dw = allocate_filled<double>(b, out, in, 0.0);
  linear_backward(b, bx.view(), bw.view(), bg.view(), dx.view(), dw.view());
  CHECK_THAT(to_host(b, dx.view()),
             close_to<double>(numeric_gradient([&](const std::vector<double>& x) { return loss(x, w0); }, x0), fd_rtol,
                              fd_atol));
  CHECK_THAT(to_host(b, dw.view()),
             close_to<double>(numeric_gradient([&](const std::vector<double>& w) { return loss(x0, w); }, w0), fd_rtol,
                              fd_atol));
}

TEMPLATE_LIST_TEST_CASE("linear: argument errors name the function and the argument", "[models][layers][linear][errors]",
                        all_configs) {
  using T = typename TestType::value;
  const auto b = TestType::make();
  auto x = allocate_filled<T>(b, 2, 3, T(1));
  auto w = allocate_filled<T>(b, 4, 3, T(1));
  auto w_bad = allocate_filled<T>(b, 4, 2, T(1));
  auto y = allocate<T>(b, 2, 4);
  auto y_bad = allocate<T>(b, 2, 3);
  CHECK_THROWS_WITH(linear_forward(b, x.view(), w_bad.view(), y.view()),
                    Contains("rlhf::linear_forward") && Contains("'w'") && Contains("[4, 3]") &&
                        Contains("received [4, 2]"));
  CHECK_THROWS_WITH(linear_forward(b, x.view(), w.view(), y_bad.view()),
                    Contains("rlhf::linear_forward") && Contains("'y'") && Contains("[2, 4]"));
  {
    auto nan_w = allocate_filled<T>(b, 4, 3, std::numeric_limits<T>::quiet_NaN());
    set_finite_checks(true);
    CHECK_THROWS_WITH(linear_forward(b, x.view(), nan_w.view(), y.view()),
                      Contains("rlhf::linear_forward") && Contains("'w'") && Contains("NaN"));
    set_finite_checks(false);
  }
  auto dx = allocate<T>(b, 2, 3);
  auto dw = allocate<T>(b, 4, 3);
  CHECK_THROWS_WITH(linear_backward(b, x.view(), w.view(), y_bad.view(), dx.view(), dw.view()),
                    Contains("rlhf::linear_backward") && Contains("'d_y'"));
  CHECK_THROWS_WITH(linear_backward(b, x.view(), w.view(), y.view(), w.view(), dw.view()), Contains("'d_x'"));
  CHECK_THROWS_WITH(linear_backward(b, x.view(), w.view(), y.view(), dx.view(), x.view()), Contains("'d_w'"));
  CHECK_THROWS_WITH(linear_backward(b, x.view(), w_bad.view(), y.view(), dx.view(), dw.view()), Contains("'w'"));
}
