// rlhf::rope_forward / rope_backward: a hand-computed rotation, a naive host oracle in double, llama2.c's
// float formula, in-place use, the inverse property, finite differences, and argument errors.
#include "test_support.hpp"

#include <limits>

#include <cmath>

#include "rlhf/models/layers/rope.hpp"

using namespace rlhf;
using namespace rlhf::test;
using Catch::Matchers::Contains;

namespace {

/// Rotates every head's pairs (2i, 2i+1) of row n by positions[n] * theta^(-2i / hd), in double.
std::vector<double> oracle_rope(const std::vector<double>& x, std::size_t n, std::size_t cols,
                                const std::vector<std::int32_t>& pos, std::size_t hd, double theta, double sign = 1) {
  std::vector<double> out(x);
  for (std::size_t r = 0; r < n; ++r)
    for (std::size_t h = 0; h < cols / hd; ++h)
      for (std::size_t i = 0; i < hd / 2; ++i) {
        const double a = sign * pos[r] * std::pow(theta, -2.0 * static_cast<double>(i) / static_cast<double>(hd));
        const std::size_t c = r * cols + h * hd + 2 * i;
        out[c] = x[c] * std::cos(a) - x[c + 1] * std::sin(a);
        out[c + 1] = x[c] * std::sin(a) + x[c + 1] * std::cos(a);
      }
  return out;
}

/// llama2.c run.c's loop, in float, for one row of `dim` elements at position `pos`.
std::vector<float> llama2c_rope_row(std::vector<float> vec, int pos, int head_size) {
  const int dim = static_cast<int>(vec.size());
  for (int i = 0; i < dim; i += 2) {
    const int head_dim = i % head_size;
    const float freq = 1.0f / powf(10000.0f, static_cast<float>(head_dim) / static_cast<float>(head_size));
    const float val = static_cast<float>(pos) * freq;
    const float fcr = cosf(val), fci = sinf(val);
    const float v0 = vec[static_cast<std::size_t>(i)], v1 = vec[static_cast<std::size_t>(i) + 1];
    vec[static_cast<std::size_t>(i)] = v0 * fcr - v1 * fci;
    vec[static_cast<std::size_t>(i) + 1] = v0 * fci + v1 * fcr;
  }
  return vec;
}

}  // namespace

TEMPLATE_LIST_TEST_CASE("rope: hand-computed rotation of two pairs", "[models][layers][rope]", all_configs) {
  using T = typename TestType::value;
  const auto b = TestType::make();
  // head_dim 4, theta 100: pair 0 turns by pos * 1, pair 1 by pos * 100^(-2/4) = pos / 10.
  // Row 0 at pos 2: [1, 0] -> [cos 2, sin 2]; [0, 1] -> [-sin 0.2, cos 0.2].
  // Row 1 at pos 0: unchanged.
  auto x = to_backend(b, std::vector<T>{1, 0, 0, 1, T(0.5), T(-0.25), 3, 4}, 2, 4);
  auto pos = to_backend(b, std::vector<std::int32_t>{2, 0});
  auto out = allocate<T>(b, 2, 4);
  rope_forward(b, x.view(), pos.view().flat(), 4, out.view(), 100.0);
  CHECK_THAT(to_host(b, out.view()),
             close_to<T>(std::vector<double>{std::cos(2.0), std::sin(2.0), -std::sin(0.2), std::cos(0.2), 0.5, -0.25, 3, 4},
                         std::is_same_v<T, float> ? 1e-6 : 1e-15, std::is_same_v<T, float> ? 1e-7 : 1e-16));
  // The backward turns back: d_x = rotation by -angle of d_out.
  auto dx = allocate<T>(b, 2, 4);
  rope_backward(b, out.view(), pos.view().flat(), 4, dx.view(), 100.0);
  CHECK_THAT(to_host(b, dx.view()), close_to<T>(std::vector<double>{1, 0, 0, 1, 0.5, -0.25, 3, 4},
                                                std::is_same_v<T, float> ? 1e-6 : 1e-15, 1e-7));
}

TEMPLATE_LIST_TEST_CASE("rope: random rows match the oracle; in place; backward inverts forward",
                        "[models][layers][rope]", all_configs) {
  using T = typename TestType::value;
  const auto b = TestType::make();
  auto g = rng(341);
  for (const auto& [n, heads, hd] : std::vector<std::tuple<std::size_t, std::size_t, std::size_t>>{
           {5, 4, 6}, {3, 1, 2}, {8, 8, 8}, {0, 2, 4}}) {
    const std::size_t cols = heads * hd;
    const auto x = uniform<T>(g, n * cols);
    std::vector<std::int32_t> pos(n);
    std::uniform_int_distribution<int> dp(0, 40);
    for (auto& p : pos) p = dp(g);
    const auto want = oracle_rope(cast<double>(x), n, cols, pos, hd, 10000.0);
    auto bx = to_backend(b, x, n, cols);
    auto bp = to_backend(b, pos);
    auto out = allocate<T>(b, n, cols);
    rope_forward(b, bx.view(), bp.view().flat(), hd, out.view());
    // Float computes the angle pos * freq in float (llama2.c's order): ~1e-7 relative of up to 40 rad.
    const double rt = std::is_same_v<T, float> ? 2e-5 : 1e-13, at = std::is_same_v<T, float> ? 1e-5 : 1e-14;
    CHECK_THAT(to_host(b, out.view()), close_to<T>(want, rt, at));
    // In place, then back: the rotation is orthogonal, its inverse is the backward.
    rope_forward(b, bx.view(), bp.view().flat(), hd, bx.view());
    CHECK_THAT(to_host(b, bx.view()), close_to<T>(want, rt, at));
    rope_backward(b, bx.view(), bp.view().flat(), hd, bx.view());
    CHECK_THAT(to_host(b, bx.view()), close_to<T>(cast<double>(x), rt, at));
  }
}

TEMPLATE_LIST_TEST_CASE("rope: float follows llama2.c's float formula at long positions", "[models][layers][rope]",
                        all_configs) {
  using T = typename TestType::value;
  if constexpr (std::is_same_v<T, float>) {
    const auto b = TestType::make();
    auto g = rng(342);
    const std::size_t hd = 8, heads = 8, cols = hd * heads;  // stories260K: dim 64, 8 heads
    const std::vector<std::int32_t> pos{0, 1, 17, 255, 511};
    const auto x = uniform<float>(g, pos.size() * cols);
    std::vector<double> want;
    for (std::size_t r = 0; r < pos.size(); ++r) {
      const auto row = llama2c_rope_row(std::vector<float>(x.begin() + static_cast<std::ptrdiff_t>(r * cols),
                                                           x.begin() + static_cast<std::ptrdiff_t>((r + 1) * cols)),
                                        pos[r], static_cast<int>(hd));
      want.insert(want.end(), row.begin(), row.end());
    }
    auto bx = to_backend(b, x, pos.size(), cols);
    auto bp = to_backend(b, pos);
    auto out = allocate<float>(b, pos.size(), cols);
    rope_forward(b, bx.view(), bp.view().flat(), hd, out.view());
    // Same float operations in the same order: equal up to a possible fused multiply-add.
    CHECK_THAT(to_host(b, out.view()), close_to<float>(want, 1e-6, 1e-7));
  }
}

TEMPLATE_LIST_TEST_CASE("rope: backward matches finite differences", "[models][layers][rope][gradient]", double_configs) {
  const auto b = TestType::make();
  auto g = rng(343);
  const std::size_t n = 5, hd = 6, cols = 4 * hd;
  const std::vector<std::int32_t> pos{0, 3, 1, 4, 100};
  const auto x0 = uniform<double>(g, n * cols), gout = uniform<double>(g, n * cols);
  auto bp = to_backend(b, pos);
  const auto loss = [&](const std::vector<double>& x) {
    auto bx = to_backend(b, x, n, cols);
    auto out = allocate<double>(b, n, cols);
    rope_forward(b, bx.view(), bp.view().flat(), hd, out.view(), 500.0);
    const auto o = to_host(b, out.view());
    double s = 0;
    for (std::size_t i = 0; i < o.size(); ++i) s += o[i] * gout[i];
    return s;
  };
  auto bg = to_backend(b, gout, n, cols);
  auto dx = allocate<double>(b, n, cols);
  rope_backward(b, bg.view(), bp.view().flat(), hd, dx.view(), 500.0);
  CHECK_THAT(to_host(b, dx.view()), close_to<double>(numeric_gradient(loss, x0), fd_rtol, fd_atol));
  CHECK_THAT(to_host(b, dx.view()), close_to<double>(oracle_rope(gout, n, cols, pos, hd, 500.0, -1.0), 1e-13, 1e-14));
}

TEMPLATE_LIST_TEST_CASE("rope: argument errors name the function and the argument", "[models][layers][rope][errors]",
                        all_configs) {
  using T = typename TestType::value;
  const auto b = TestType::make();
  auto x = allocate_filled<T>(b, 2, 12, T(1));
  auto out = allocate<T>(b, 2, 12);
  auto pos = to_backend(b, std::vector<std::int32_t>{0, 1});
  CHECK_THROWS_WITH(rope_forward(b, x.view(), pos.view().flat(), 3, out.view()),
                    Contains("rlhf::rope_forward") && Contains("'head_dim'") && Contains("even") &&
                        Contains("received 3"));
  CHECK_THROWS_WITH(rope_forward(b, x.view(), pos.view().flat(), 0, out.view()), Contains("'head_dim'"));
  CHECK_THROWS_WITH(rope_forward(b, x.view(), pos.view().flat(), 8, out.view()),
                    Contains("rlhf::rope_forward") && Contains("'x'") && Contains("multiple of 'head_dim' (8)"));
  auto pos_bad = to_backend(b, std::vector<std::int32_t>{0, 1, 2});
  CHECK_THROWS_WITH(rope_forward(b, x.view(), pos_bad.view().flat(), 4, out.view()),
                    Contains("'positions'") && Contains("size 2"));
  auto out_bad = allocate<T>(b, 2, 8);
  CHECK_THROWS_WITH(rope_forward(b, x.view(), pos.view().flat(), 4, out_bad.view()),
                    Contains("rlhf::rope_forward") && Contains("'out'"));
  CHECK_THROWS_WITH(rope_forward(b, x.view(), pos.view().flat(), 4, out.view(), 0.0), Contains("'theta'"));
  {
    auto nan_x = allocate_filled<T>(b, 2, 12, std::numeric_limits<T>::quiet_NaN());
    set_finite_checks(true);
    CHECK_THROWS_AS(rope_forward(b, nan_x.view(), pos.view().flat(), 4, out.view()), non_finite_error);
    CHECK_THROWS_WITH(rope_backward(b, nan_x.view(), pos.view().flat(), 4, out.view()), Contains("'d_out'"));
    set_finite_checks(false);
  }
  CHECK_THROWS_WITH(rope_backward(b, x.view(), pos.view().flat(), 5, out.view()),
                    Contains("rlhf::rope_backward") && Contains("'head_dim'"));
  CHECK_THROWS_WITH(rope_backward(b, x.view(), pos.view().flat(), 4, out_bad.view()),
                    Contains("rlhf::rope_backward") && Contains("'d_x'"));
}
