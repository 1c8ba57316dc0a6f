// rlhf::rms_norm_forward / rms_norm_backward: a hand-computed row, a naive host oracle, in-place use,
// finite differences of both gradients, and argument errors.
#include "test_support.hpp"

#include <limits>

#include <cmath>

#include "rlhf/models/layers/rms_norm.hpp"

using namespace rlhf;
using namespace rlhf::test;
using Catch::Matchers::Contains;

namespace {

struct rms_oracle {
  std::vector<double> out, inv;
};

rms_oracle oracle_rms_norm(const std::vector<double>& x, const std::vector<double>& w, std::size_t n, std::size_t d,
                           double eps) {
  rms_oracle o{std::vector<double>(n * d), std::vector<double>(n)};
  for (std::size_t r = 0; r < n; ++r) {
    double ss = 0;
    for (std::size_t j = 0; j < d; ++j) ss += x[r * d + j] * x[r * d + j];
    o.inv[r] = 1.0 / std::sqrt(ss / static_cast<double>(d) + eps);
    for (std::size_t j = 0; j < d; ++j) o.out[r * d + j] = w[j] * o.inv[r] * x[r * d + j];
  }
  return o;
}

}  // namespace

TEMPLATE_LIST_TEST_CASE("rms_norm: hand-computed row, forward and backward", "[models][layers][rms_norm]", all_configs) {
  using T = typename TestType::value;
  const auto b = TestType::make();
  // x = [2, -2, 2, -2]: mean(x^2) = 4; with eps = 5, inv_rms = 1/sqrt(9) = 1/3.
  // out = w * x / 3 with w = [3, 1.5, 0, -3] -> [2, -1, 0, 2].
  auto x = to_backend(b, std::vector<T>{2, -2, 2, -2}, 1, 4);
  auto w = to_backend(b, std::vector<T>{3, T(1.5), 0, -3});
  auto out = allocate<T>(b, 1, 4);
  auto inv = allocate<T>(b, 1);
  rms_norm_forward(b, x.view(), w.view().flat(), out.view(), inv.view().flat(), 5.0);
  CHECK_THAT(to_host(b, out.view()), close_to<T>(std::vector<double>{2, -1, 0, 2}));
  CHECK_THAT(to_host(b, inv.view()), close_to<T>(std::vector<double>{1.0 / 3}));

  // g = [1, 0, 0, 0]: sum_j g_j w_j x_j = 6, c = inv^2 * 6 / D = 1/6,
  // d_x = inv * (w g - x c) = [(3 - 1/3)/3, (0 + 1/3)/3, (0 - 1/3)/3, (0 + 1/3)/3] = [8/9, 1/9, -1/9, 1/9];
  // d_w += g * inv * x = [2/3, 0, 0, 0] on top of 1.
  auto gout = to_backend(b, std::vector<T>{1, 0, 0, 0}, 1, 4);
  auto dx = allocate<T>(b, 1, 4);
  auto dw = allocate_filled<T>(b, 1, 4, T(1));
  rms_norm_backward(b, x.view(), w.view().flat(), inv.view().flat(), gout.view(), dx.view(), dw.view().flat());
  CHECK_THAT(to_host(b, dx.view()), close_to<T>(std::vector<double>{8.0 / 9, 1.0 / 9, -1.0 / 9, 1.0 / 9}));
  CHECK_THAT(to_host(b, dw.view()), close_to<T>(std::vector<double>{1 + 2.0 / 3, 1, 1, 1}));
}

TEMPLATE_LIST_TEST_CASE("rms_norm: random rows match the naive oracle; in place; inv_rms optional",
                        "[models][layers][rms_norm]", all_configs) {
  using T = typename TestType::value;
  const auto b = TestType::make();
  auto g = rng(311);
  for (const auto& [n, d] : std::vector<std::pair<std::size_t, std::size_t>>{{1, 1}, {7, 5}, {3, 64}, {0, 4}}) {
    const auto x = normal<T>(g, n * d, 0.0, 3.0);
    const auto w = uniform<T>(g, d, 0.5, 1.5);
    const auto want = oracle_rms_norm(cast<double>(x), cast<double>(w), n, d, 1e-5);
    auto bx = to_backend(b, x, n, d);
    auto bw = to_backend(b, w);
    auto out = allocate<T>(b, n, d);
    auto inv = allocate<T>(b, 1, n);
    rms_norm_forward(b, bx.view(), bw.view().flat(), out.view(), inv.view().flat());
    CHECK_THAT(to_host(b, out.view()), close_to<T>(want.out));
    CHECK_THAT(to_host(b, inv.view()), close_to<T>(want.inv));
    // Not wanted: no inv_rms; in place: out is x.
    rms_norm_forward(b, bx.view(), bw.view().flat(), bx.view(), {});
    CHECK_THAT(to_host(b, bx.view()), close_to<T>(want.out));
  }
}

TEMPLATE_LIST_TEST_CASE("rms_norm: eps keeps a zero row finite", "[models][layers][rms_norm]", all_configs) {
  using T = typename TestType::value;
  const auto b = TestType::make();
  auto x = allocate_filled<T>(b, 2, 3, T(0));
  auto w = allocate_filled<T>(b, 1, 3, T(1));
  auto out = allocate<T>(b, 2, 3);
  auto inv = allocate<T>(b, 1, 2);
  rms_norm_forward(b, x.view(), w.view().flat(), out.view(), inv.view().flat());
  CHECK(to_host(b, out.view()) == std::vector<T>(6, T(0)));
  CHECK_THAT(to_host(b, inv.view()), close_to<T>(std::vector<double>(2, 1.0 / std::sqrt(1e-5))));
}

TEMPLATE_LIST_TEST_CASE("rms_norm: backward matches finite differences for x and weight",
                        "[models][layers][rms_norm][gradient]", double_configs) {
  const auto b = TestType::make();
  auto g = rng(312);
  const std::size_t n = 5, d = 6;
  const double eps = 1e-3;
  const auto x0 = normal<double>(g, n * d);
  const auto w0 = uniform<double>(g, d, 0.5, 1.5);
  const auto gout = uniform<double>(g, n * d);
  const auto loss_of = [&](const std::vector<double>& x, const std::vector<double>& w) {
    auto bx = to_backend(b, x, n, d);
    auto bw = to_backend(b, w);
    auto out = allocate<double>(b, n, d);
    rms_norm_forward(b, bx.view(), bw.view().flat(), out.view(), {}, eps);
    const auto o = to_host(b, out.view());
    double s = 0;
    for (std::size_t i = 0; i < o.size(); ++i) s += o[i] * gout[i];
    return s;
  };
  auto bx = to_backend(b, x0, n, d);
  auto bw = to_backend(b, w0);
  auto out = allocate<double>(b, n, d);
  auto inv = allocate<double>(b, 1, n);
  rms_norm_forward(b, bx.view(), bw.view().flat(), out.view(), inv.view().flat(), eps);
  auto bg = to_backend(b, gout, n, d);
  auto dx = allocate<double>(b, n, d);
  auto dw = allocate_filled<double>(b, 1, d, 0.0);
  rms_norm_backward(b, bx.view(), bw.view().flat(), inv.view().flat(), bg.view(), dx.view(), dw.view().flat());
  const auto fd_x = numeric_gradient([&](const std::vector<double>& x) { return loss_of(x, w0); }, x0);
  const auto fd_w = numeric_gradient([&](const std::vector<double>& w) { return loss_of(x0, w); }, w0);
  CHECK_THAT(to_host(b, dx.view()), close_to<double>(fd_x, fd_rtol, fd_atol));
  CHECK_THAT(to_host(b, dw.view()), close_to<double>(fd_w, fd_rtol, fd_atol));

  // d_x in place over d_out, d_weight not wanted: same d_x.
  rms_norm_backward(b, bx.view(), bw.view().flat(), inv.view().flat(), bg.view(), bg.view(), {});
  CHECK_THAT(to_host(b, bg.view()), close_to<double>(fd_x, fd_rtol, fd_atol));
  // d_weight accumulates: a second call with d_x not wanted doubles it.
  auto bg2 = to_backend(b, gout, n, d);
  rms_norm_backward(b, bx.view(), bw.view().flat(), inv.view().flat(), bg2.view(), matrix_view<double>{},
                    dw.view().flat());
  std::vector<double> twice(fd_w);
  for (auto& v : twice) v *= 2;
  CHECK_THAT(to_host(b, dw.view()), close_to<double>(twice, fd_rtol, fd_atol));
}

TEMPLATE_LIST_TEST_CASE("rms_norm: argument errors name the function and the argument", "[models][layers][rms_norm][errors]",
                        all_configs) {
  using T = typename TestType::value;
  const auto b = TestType::make();
  auto x = allocate_filled<T>(b, 2, 3, T(1));
  auto w = allocate_filled<T>(b, 1, 3, T(1));
  auto w_bad = allocate_filled<T>(b, 1, 4, T(1));
  auto out = allocate<T>(b, 2, 3);
  auto out_bad = allocate<T>(b, 3, 2);
  auto inv = allocate<T>(b, 1, 2);
  auto inv_bad = allocate<T>(b, 1, 3);
  CHECK_THROWS_WITH(rms_norm_forward(b, x.view(), w_bad.view().flat(), out.view(), inv.view().flat()),
                    Contains("rlhf::rms_norm_forward") && Contains("'weight'") && Contains("size 3"));
  CHECK_THROWS_WITH(rms_norm_forward(b, x.view(), w.view().flat(), out_bad.view(), inv.view().flat()),
                    Contains("rlhf::rms_norm_forward") && Contains("'out'") && Contains("received [3, 2]"));
  CHECK_THROWS_WITH(rms_norm_forward(b, x.view(), w.view().flat(), out.view(), inv_bad.view().flat()),
                    Contains("'inv_rms'"));
  CHECK_THROWS_WITH(rms_norm_forward(b, x.view(), w.view().flat(), out.view(), inv.view().flat(), 0.0),
                    Contains("rlhf::rms_norm_forward") && Contains("'eps'"));
  CHECK_THROWS_WITH(rms_norm_forward(b, x.view(), w.view().flat(), out.view(), inv.view().flat(), -1.0),
                    Contains("'eps'"));
  {
    auto nan_x = allocate_filled<T>(b, 2, 3, std::numeric_limits<T>::infinity());
    set_finite_checks(true);
    CHECK_THROWS_AS(rms_norm_forward(b, nan_x.view(), w.view().flat(), out.view(), inv.view().flat()), non_finite_error);
    CHECK_THROWS_WITH(rms_norm_forward(b, nan_x.view(), w.view().flat(), out.view(), inv.view().flat()),
                      Contains("rlhf::rms_norm_forward") && Contains("'x'"));
    set_finite_checks(false);
  }
  auto dx = allocate<T>(b, 2, 3);
  auto dw = allocate<T>(b, 1, 3);
  CHECK_THROWS_WITH(rms_norm_backward(b, x.view(), w.view().flat(), inv_bad.view().flat(), x.view(), dx.view(),
                                      dw.view().flat()),
                    Contains("rlhf::rms_norm_backward") && Contains("'inv_rms'"));
  CHECK_THROWS_WITH(rms_norm_backward(b, x.view(), w.view().flat(), inv.view().flat(), out_bad.view(), dx.view(),
                                      dw.view().flat()),
                    Contains("rlhf::rms_norm_backward") && Contains("'d_out'"));
  CHECK_THROWS_WITH(rms_norm_backward(b, x.view(), w.view().flat(), inv.view().flat(), x.view(), out_bad.view(),
                                      dw.view().flat()),
                    Contains("'d_x'"));
  CHECK_THROWS_WITH(rms_norm_backward(b, x.view(), w.view().flat(), inv.view().flat(), x.view(), dx.view(),
                                      w_bad.view().flat()),
                    Contains("'d_weight'"));
}
