// Reward-model normalization: the InstructGPT demonstration bias and the Ziegler et al. gain/bias, with a
// two-pass std (regression for the E[r^2] - E[r]^2 cancellation) and the affine application.
#include "test_support.hpp"

#include <cstdint>
#include <limits>

#include "rlhf/advantages/reward_normalization.hpp"

using namespace rlhf;
using namespace rlhf::test;

namespace {
// Two-pass population mean/std in long double: the oracle.
std::pair<double, double> mean_std(const std::vector<double>& x) {
  long double s = 0;
  for (double v : x) s += v;
  const long double m = s / static_cast<long double>(x.size());
  long double q = 0;
  for (double v : x) q += (v - m) * (v - m);
  return {static_cast<double>(m), static_cast<double>(std::sqrt(q / static_cast<long double>(x.size())))};
}

template <class TestType>
reward_gain_bias run_normalization_to(const std::vector<double>& x, double mean, double std_) {
  using T = typename TestType::value;
  const auto b = TestType::make();
  auto r = to_backend(b, cast<T>(x));
  return normalization_to(b, as_const(r.view().flat()), mean, std_);
}
}  // namespace

TEMPLATE_LIST_TEST_CASE("demonstration_bias: minus the mean of the valid demonstrations",
                        "[advantages][reward_normalization]", all_configs) {
  using T = typename TestType::value;
  const auto b = TestType::make();
  // [1, 2, 3, 6]: mean 12 / 4 = 3 -> bias -3. With mask [1, 0, 1, 0]: mean of {1, 3} = 2 -> bias -2.
  auto r = to_backend(b, std::vector<T>{1, 2, 3, 6});
  auto m = to_backend(b, std::vector<mask_type>{1, 0, 1, 0});
  CHECK(demonstration_bias(b, as_const(r.view().flat())) == -3.0);
  CHECK(demonstration_bias(b, as_const(r.view().flat()), as_const(m.view().flat())) == -2.0);
  // Masked-out entries are never summed: NaN there does not leak.
  auto rn = to_backend(b, std::vector<T>{1, std::numeric_limits<T>::quiet_NaN(), 3, 6});
  CHECK(demonstration_bias(b, as_const(rn.view().flat()), as_const(m.view().flat())) == -2.0);
  CHECK_THROWS_AS(demonstration_bias(b, as_const(rn.view().flat())), non_finite_error);

  // Property: random data, interior masks; the bias makes the valid rewards average 0.
  auto g = rng(21);
  for (std::size_t n : {1u, 7u, 100u, 5000u}) {
    const auto x = cast<double>(normal<T>(g, n, 4.0, 2.0));
    auto mask = random_mask(g, n);
    mask[0] = 1;
    double s = 0, c = 0;
    for (std::size_t i = 0; i < n; ++i)
      if (mask[i]) s += x[i], c += 1;
    auto bx = to_backend(b, cast<T>(x));
    auto bm = to_backend(b, mask);
    CHECK(near<double>(demonstration_bias(b, as_const(bx.view().flat()), as_const(bm.view().flat())), -s / c, 100));
  }

  auto none = to_backend(b, std::vector<mask_type>{0, 0, 0, 0});
  auto short_mask = to_backend(b, std::vector<mask_type>{1, 1});
  CHECK_THROWS_WITH(demonstration_bias(b, as_const(r.view().flat()), as_const(none.view().flat())),
                    Catch::Contains("rlhf::demonstration_bias") && Catch::Contains("'mask'") &&
                        Catch::Contains("at least one valid"));
  CHECK_THROWS_WITH(demonstration_bias(b, as_const(r.view().flat()), as_const(short_mask.view().flat())),
                    Catch::Contains("'mask'") && Catch::Contains("size 4"));
  CHECK_THROWS_WITH(demonstration_bias(b, as_const(r.view().flat()).subview(0, 0)),
                    Catch::Contains("'rewards'") && Catch::Contains("at least one valid"));
}

TEMPLATE_LIST_TEST_CASE("normalization_to: hand-computed gain and bias", "[advantages][reward_normalization]",
                        all_configs) {
  // [1, 3]: mean 2, population std 1 -> to N(0, 1): gain 1, bias -2.
  const auto gb = run_normalization_to<TestType>({1, 3}, 0, 1);
  CHECK(gb.gain == 1.0);
  CHECK(gb.bias == -2.0);
  // To mean 0.5, std 2: gain 2, bias 0.5 - 2 * 2 = -3.5.
  const auto gb2 = run_normalization_to<TestType>({1, 3}, 0.5, 2);
  CHECK(gb2.gain == 2.0);
  CHECK(gb2.bias == -3.5);
  // [0, 0, 0, 4]: mean 1, var (1 + 1 + 1 + 9) / 4 = 3 -> gain 1 / sqrt(3), bias -1 / sqrt(3).
  const auto gb3 = run_normalization_to<TestType>({0, 0, 0, 4}, 0, 1);
  CHECK(near<double>(gb3.gain, 1 / std::sqrt(3.0)));
  CHECK(near<double>(gb3.bias, -1 / std::sqrt(3.0)));
}

TEMPLATE_LIST_TEST_CASE("normalization_to + apply_reward_normalization hit the target moments",
                        "[advantages][reward_normalization][property]", all_configs) {
  using T = typename TestType::value;
  const auto b = TestType::make();
  auto g = rng(22);
  for (std::size_t n : {2u, 3u, 256u, 9000u}) {
    for (double offset : {0.0, -40.0, 300.0}) {
      const auto x = cast<double>(cast<T>(normal<double>(g, n, offset, 3.0)));
      const auto [m, s] = mean_std(x);
      auto bx = to_backend(b, cast<T>(x));
      const auto gb = normalization_to(b, as_const(bx.view().flat()), 0.25, 1.5);
      CHECK(std::abs(gb.gain - 1.5 / s) <= 1e-10 * (1.5 / s));
      CHECK(std::abs(gb.bias - (0.25 - gb.gain * m)) <= 1e-10 * (1 + std::abs(gb.gain * m)));
      // In place (in == out is allowed).
      apply_reward_normalization(b, as_const(bx.view().flat()), bx.view().flat(), gb);
      const auto y = cast<double>(to_host(b, bx.view()));
      std::vector<double> want(n);
      for (std::size_t i = 0; i < n; ++i) want[i] = gb.gain * x[i] + gb.bias;
      CHECK_THAT(cast<T>(y), close_to<T>(want));
      const auto [m2, s2] = mean_std(y);
      const double tol = std::is_same_v<T, float> ? 1e-4 : 1e-9;
      CHECK(std::abs(m2 - 0.25) <= tol * (1 + std::abs(offset) / 3.0));
      CHECK(std::abs(s2 - 1.5) <= tol);
    }
  }
}

TEMPLATE_LIST_TEST_CASE("reward_moments_of + normalization_from: moments of parts merged (as ranks do) give the "
                        "whole set's gain and bias",
                        "[advantages][reward_normalization][property]", all_configs) {
  using T = typename TestType::value;
  const auto b = TestType::make();
  auto g = rng(23);
  for (std::size_t n : {4u, 7u, 300u}) {
    const auto x = cast<double>(cast<T>(normal<double>(g, n, 50.0, 2.0)));
    auto whole = to_backend(b, cast<T>(x));
    const reward_gain_bias want = normalization_to(b, as_const(whole.view().flat()), 0.5, 2.0);
    // Three parts, merged in order with Chan's formula (as rlhf::global_masked_moments merges ranks').
    masked_moments merged{};
    const std::size_t cut1 = 1, cut2 = 1 + (n - 1) / 2;  // a part of one reward has no spread of its own
    for (const auto& [first, last] : {std::pair<std::size_t, std::size_t>{0, cut1}, {cut1, cut2}, {cut2, n}}) {
      const std::vector<double> part(x.begin() + static_cast<std::ptrdiff_t>(first), x.begin() + static_cast<std::ptrdiff_t>(last));
      auto bp = to_backend(b, cast<T>(part));
      merged = combine(merged, reward_moments_of(b, as_const(bp.view().flat())));
    }
    const reward_gain_bias got = normalization_from(merged, 0.5, 2.0);
    INFO("n " << n);
    CHECK(got.gain == Approx(want.gain).epsilon(1e-10));
    CHECK(got.bias == Approx(want.bias).epsilon(1e-10));
  }
  CHECK(reward_moments_of(b, as_const(allocate<T>(b, 0).view().flat())).count == 0);  // a rank without rewards
  auto same = to_backend(b, std::vector<T>{T(0.1), T(0.1), T(0.1)});
  CHECK(reward_moments_of(b, as_const(same.view().flat())).m2 == 0);  // exactly: no spread
  CHECK_THROWS_WITH(normalization_from(masked_moments{1, 2.0, 0.0}),
                    Catch::Contains("rlhf::normalization_from") && Catch::Contains("'rewards'"));
  CHECK_THROWS_WITH(normalization_from(masked_moments{3, 2.0, 0.0}), Catch::Contains("non-zero std"));
  CHECK_THROWS_WITH(normalization_from(masked_moments{3, 2.0, 1.0}, 0.0, -1.0), Catch::Contains("'target_std'"));
}

TEMPLATE_LIST_TEST_CASE("regression: NeMo-RL #4158: one-pass E[r^2] - E[r]^2 std cancels at a large offset",
                        "[advantages][reward_normalization][regression]", all_configs) {
  // https://github.com/NVIDIA-NeMo/RL/pull/4158 : E[x^2] - E[x]^2 loses every digit when |mean| >> std (ZGL's
  // `set_reward_norm` uses it). Rewards 1e7 + {0, 0.95 x 7} (in float: 1e7 + {0, 1 x 7}): population std
  // d * sqrt(7) / 8. The two-pass std must match the long-double oracle; the one-pass formula in double does not.
  using T = typename TestType::value;
  std::vector<double> x(8, 1e7 + 0.95);
  x[0] = 1e7;
  x = cast<double>(cast<T>(x));
  const auto [m, s] = mean_std(x);
  const double d = x[1] - x[0];
  CHECK(near<double>(s, d * std::sqrt(7.0) / 8.0, 1e3));
  const auto gb = run_normalization_to<TestType>(x, 0, 1);
  CHECK(std::abs(gb.gain * s - 1.0) <= 1e-9);
  CHECK(std::abs(gb.bias + gb.gain * m) <= 1e-9 * gb.gain * m);
  // The peers' one-pass formula on the same data in the element type (ZGL runs it in float32), for
  // contrast: visibly wrong.
  T s1 = 0, s2 = 0;
  for (double v : x) s1 += static_cast<T>(v), s2 += static_cast<T>(v) * static_cast<T>(v);
  const T one_pass_var = s2 / T(8) - (s1 / T(8)) * (s1 / T(8));
  CHECK(std::abs(std::sqrt(std::max(static_cast<double>(one_pass_var), 0.0)) - s) > 1e-3 * s);
}

TEMPLATE_LIST_TEST_CASE("reward normalization: argument errors", "[advantages][reward_normalization][errors]",
                        all_configs) {
  using T = typename TestType::value;
  const auto b = TestType::make();
  auto constant = to_backend(b, std::vector<T>{T(0.1), T(0.1), T(0.1), T(0.1), T(0.1)});
  auto one = to_backend(b, std::vector<T>{1});
  auto ok = to_backend(b, std::vector<T>{1, 2, 3});
  auto out_short = allocate<T>(b, 2);
  const auto C = as_const(constant.view().flat());
  CHECK_THROWS_WITH(normalization_to(b, C), Catch::Contains("rlhf::normalization_to") && Catch::Contains("'rewards'") &&
                                                Catch::Contains("std 0"));
  CHECK_THROWS_WITH(normalization_to(b, as_const(one.view().flat())),
                    Catch::Contains("'rewards'") && Catch::Contains("at least 2") && Catch::Contains("[1]"));
  CHECK_THROWS_WITH(normalization_to(b, as_const(ok.view().flat()), 0.0, 0.0),
                    Catch::Contains("'target_std'") && Catch::Contains("> 0"));
  CHECK_THROWS_WITH(normalization_to(b, as_const(ok.view().flat()), std::numeric_limits<double>::quiet_NaN(), 1.0),
                    Catch::Contains("'target_mean'"));
  auto with_inf = to_backend(b, std::vector<T>{1, std::numeric_limits<T>::infinity(), 3});
  CHECK_THROWS_AS(normalization_to(b, as_const(with_inf.view().flat())), non_finite_error);

  const auto O = as_const(ok.view().flat());
  CHECK_THROWS_WITH(apply_reward_normalization(b, O, out_short.view().flat(), reward_gain_bias{}),
                    Catch::Contains("rlhf::apply_reward_normalization") && Catch::Contains("'out'") &&
                        Catch::Contains("size 3"));
  auto out = allocate<T>(b, 3);
  CHECK_THROWS_WITH(apply_reward_normalization(b, O, out.view().flat(), reward_gain_bias{0.0, 1.0}),
                    Catch::Contains("'gain_bias.gain'"));
  CHECK_THROWS_WITH(apply_reward_normalization(b, O, out.view().flat(), reward_gain_bias{-2.0, 1.0}),
                    Catch::Contains("'gain_bias.gain'"));
  CHECK_THROWS_WITH(
      apply_reward_normalization(b, O, out.view().flat(), reward_gain_bias{1.0, std::numeric_limits<double>::infinity()}),
      Catch::Contains("'gain_bias.bias'"));
  apply_reward_normalization(b, O, out.view().flat(), reward_gain_bias{2.0, -1.0});
  CHECK(to_host(b, out.view()) == std::vector<T>{1, 3, 5});
}
