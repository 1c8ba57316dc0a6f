// Masked moments and whitening (rlhf/ops/whitening.hpp) against a two-pass host oracle, hand-computed
// cases, and the peer bugs of rlhf-math.md section 3 (NeMo-RL #4158, ROLL #475, pytorch-cpp-rl bug 12).
#include "test_support.hpp"

#include <cmath>
#include <limits>

#include "rlhf/ops/whitening.hpp"

using namespace rlhf;
using namespace rlhf::test;

namespace {
struct oracle_moments {
  double count = 0, mean = 0, m2 = 0;
};

// Two-pass masked statistics in long double: the textbook definition.
template <class T>
oracle_moments naive_moments(const std::vector<T>& x, const std::vector<mask_type>& m) {
  long double n = 0, sum = 0;
  for (std::size_t i = 0; i < x.size(); ++i)
    if (m[i]) n += 1, sum += static_cast<long double>(x[i]);
  const long double mean = n > 0 ? sum / n : 0;
  long double m2 = 0;
  for (std::size_t i = 0; i < x.size(); ++i)
    if (m[i]) m2 += (static_cast<long double>(x[i]) - mean) * (static_cast<long double>(x[i]) - mean);
  return {static_cast<double>(n), static_cast<double>(mean), static_cast<double>(m2)};
}

// out = (x - mu) / sqrt(var + eps) (+ mu), masked -> 0, no scaling when count < 2.
template <class T>
std::vector<double> naive_whiten(const std::vector<T>& x, const std::vector<mask_type>& m, const whiten_options& o,
                                 const oracle_moments& mo) {
  double var = 0;
  if (mo.count >= 2) var = mo.m2 / (o.variance == variance_kind::bessel ? mo.count - 1 : mo.count);
  const double scale = mo.count >= 2 ? 1.0 / std::sqrt(var + o.eps) : 1.0;
  std::vector<double> out(x.size());
  for (std::size_t i = 0; i < x.size(); ++i)
    out[i] = m[i] ? (static_cast<double>(x[i]) - mo.mean) * scale + (o.shift_mean ? 0.0 : mo.mean) : 0.0;
  return out;
}

template <class T>
using hmat = matrix_view<T, host_space>;
}  // namespace

TEMPLATE_LIST_TEST_CASE("whiten matches the two-pass oracle on ragged and interior masks", "[ops][whitening]",
                        all_configs) {
  using T = typename TestType::value;
  const auto b = TestType::make();
  auto g = rng(101);
  const std::size_t rows = 13, cols = 37;
  for (int trial = 0; trial < 4; ++trial) {
    const auto x = normal<T>(g, rows * cols, 0.3, 2.0);
    const auto m = trial % 2 == 0 ? mask_from_lengths(random_lengths(g, rows, cols), cols)
                                  : random_mask(g, rows * cols, 0.6);
    auto bx = to_backend(b, x, rows, cols);
    auto bm = to_backend(b, m, rows, cols);
    const auto want_m = naive_moments(x, m);
    const masked_moments got_m = compute_masked_moments(b, bx.view(), bm.view());
    CHECK(got_m.count == want_m.count);
    CHECK(near<double>(got_m.mean, want_m.mean, 10));
    CHECK(near<double>(got_m.m2, want_m.m2, 100));
    for (const auto& o : {whiten_options{}, whiten_options::trl0(), whiten_options::zgl_rewards(),
                          whiten_options{false, variance_kind::bessel, 1e-3}}) {
      auto out = allocate<T>(b, rows, cols);
      const masked_moments used = whiten(b, bx.view(), bm.view(), out.view(), o);
      CHECK(used.count == want_m.count);
      CHECK_THAT(to_host(b, out.view()), close_to<T>(naive_whiten(x, m, o, want_m), 1e-10 + tolerance<T>::rtol,
                                                     tolerance<T>::atol + 1e-12));
    }
  }
}

TEMPLATE_LIST_TEST_CASE("whiten: hand-computed [1, 2, 3, 4]", "[ops][whitening]", all_configs) {
  using T = typename TestType::value;
  const auto b = TestType::make();
  // mean 2.5; deviations -1.5 -.5 .5 1.5; m2 = 2.25 + .25 + .25 + 2.25 = 5.
  // biased var 5/4 = 1.25 -> out = dev / sqrt(1.25 + 1e-8); Bessel var 5/3.
  auto bx = to_backend(b, std::vector<T>{1, 2, 3, 4, 99}, 1, 5);
  auto bm = to_backend(b, std::vector<mask_type>{1, 1, 1, 1, 0}, 1, 5);
  auto out = allocate<T>(b, 1, 5);
  const masked_moments mo = whiten(b, bx.view(), bm.view(), out.view());
  CHECK(mo.count == 4);
  CHECK(mo.mean == 2.5);
  CHECK(mo.m2 == 5.0);
  CHECK(mo.variance(variance_kind::biased) == 1.25);
  CHECK(mo.variance(variance_kind::bessel) == Approx(5.0 / 3.0).epsilon(1e-15));
  const double s = std::sqrt(1.25 + 1e-8);
  CHECK_THAT(to_host(b, out.view()), close_to<T>(std::vector<double>{-1.5 / s, -0.5 / s, 0.5 / s, 1.5 / s, 0.0}));
  // Rescale only (ZGL rewards): dev / s + 2.5.
  whiten(b, bx.view(), bm.view(), out.view(), whiten_options::zgl_rewards());
  CHECK_THAT(to_host(b, out.view()),
             close_to<T>(std::vector<double>{2.5 - 1.5 / s, 2.5 - 0.5 / s, 2.5 + 0.5 / s, 2.5 + 1.5 / s, 0.0}));
  // Bessel: s = sqrt(5/3 + 1e-8).
  whiten(b, bx.view(), bm.view(), out.view(), whiten_options::verl());
  const double sb = std::sqrt(5.0 / 3.0 + 1e-8);
  CHECK_THAT(to_host(b, out.view()), close_to<T>(std::vector<double>{-1.5 / sb, -0.5 / sb, 0.5 / sb, 1.5 / sb, 0.0}));
}

TEMPLATE_LIST_TEST_CASE("whiten works in place", "[ops][whitening]", all_configs) {
  using T = typename TestType::value;
  const auto b = TestType::make();
  auto g = rng(102);
  const auto x = normal<T>(g, 6 * 9);
  const auto m = random_mask(g, 6 * 9);
  auto bx = to_backend(b, x, 6, 9);
  auto bm = to_backend(b, m, 6, 9);
  whiten(b, bx.view(), bm.view(), bx.view());
  CHECK_THAT(to_host(b, bx.view()), close_to<T>(naive_whiten(x, m, whiten_options{}, naive_moments(x, m)),
                                                1e-10 + tolerance<T>::rtol, tolerance<T>::atol + 1e-12));
}

TEMPLATE_LIST_TEST_CASE("regression: NeMo-RL #4158: no catastrophic cancellation in the masked variance",
                        "[ops][whitening][regression]", all_configs) {
  // https://github.com/NVIDIA-NeMo/RL/pull/4158 : E[x^2] - E[x]^2 gave std 4.6e-4 instead of 0 for
  // constant groups and normalized advantages near -2075.
  using T = typename TestType::value;
  const auto b = TestType::make();
  {
    // [0, .95 x 7]: mean = 7 * .95 / 8 = 0.83125; m2 = 0.83125^2 + 7 * 0.11875^2 = 0.7896875;
    // Bessel var = 0.7896875 / 7 = 0.112812...; std = 0.335875...; biased std = sqrt(0.0987109375) = 0.314183...
    std::vector<T> x{T(0)};
    for (int i = 0; i < 7; ++i) x.push_back(T(0.95));
    const double v95 = static_cast<double>(T(0.95));  // 0.95 as stored in T
    const double mean = 7 * v95 / 8, m2 = mean * mean + 7 * (v95 - mean) * (v95 - mean);
    auto bx = to_backend(b, x, 1, 8);
    auto bm = to_backend(b, std::vector<mask_type>(8, 1), 1, 8);
    const masked_moments mo = compute_masked_moments(b, bx.view(), bm.view());
    CHECK(mo.mean == Approx(mean).epsilon(1e-14));
    CHECK(mo.m2 == Approx(m2).epsilon(1e-13));
    CHECK(mo.stddev(variance_kind::bessel) == Approx(0.3358757211).epsilon(typeid(T) == typeid(float) ? 1e-7 : 1e-9));
    CHECK(mo.stddev(variance_kind::biased) == Approx(0.3141829681).epsilon(typeid(T) == typeid(float) ? 1e-7 : 1e-9));
    auto out = allocate<T>(b, 1, 8);
    whiten(b, bx.view(), bm.view(), out.view(), whiten_options::verl());
    const auto got = to_host(b, out.view());
    // (0 - 0.83125) / 0.335875 = -2.4748..., (0.95 - 0.83125) / 0.335875 = 0.35355...
    CHECK(static_cast<double>(got[0]) == Approx(-mean / std::sqrt(m2 / 7 + 1e-8)).epsilon(1e-6));
    CHECK(static_cast<double>(got[1]) == Approx((v95 - mean) / std::sqrt(m2 / 7 + 1e-8)).epsilon(1e-6));
  }
  {
    // A constant group: the spread is exactly 0 and whitened values exactly 0 (not -2075).
    auto bx = allocate_filled<T>(b, 1, 8, T(0.95));
    auto bm = to_backend(b, std::vector<mask_type>(8, 1), 1, 8);
    auto out = allocate<T>(b, 1, 8);
    const masked_moments mo = whiten(b, bx.view(), bm.view(), out.view(), whiten_options::trl0());
    CHECK(mo.m2 == 0.0);
    CHECK(mo.stddev(variance_kind::bessel) == 0.0);
    CHECK(to_host(b, out.view()) == std::vector<T>(8, T(0)));
  }
}

TEMPLATE_LIST_TEST_CASE("masked moments survive a large offset (1e8 + noise in double, 1e4 + noise in float)",
                        "[ops][whitening][regression]", all_configs) {
  using T = typename TestType::value;
  const auto b = TestType::make();
  auto g = rng(103);
  const double offset = std::is_same_v<T, double> ? 1e8 : 1e4;
  const double sd = std::is_same_v<T, double> ? 1.0 : 0.1;
  const std::size_t rows = 5, cols = 4001;  // > one reduction block of the Eigen backend
  const auto x = normal<T>(g, rows * cols, offset, sd);
  const auto m = random_mask(g, rows * cols, 0.8);
  auto bx = to_backend(b, x, rows, cols);
  auto bm = to_backend(b, m, rows, cols);
  const auto want = naive_moments(x, m);
  const masked_moments got = compute_masked_moments(b, bx.view(), bm.view());
  CHECK(got.count == want.count);
  CHECK(std::abs(got.mean - want.mean) <= 1e-12 * offset);
  CHECK(std::abs(got.m2 - want.m2) <= 1e-12 * want.m2);
  // The one-pass formula E[x^2] - E[x]^2 (in double) fails the same check by orders of magnitude: its
  // relative error is ~ 1e-16 * offset^2 / sd^2 (about 1 for 1e8 + N(0, 1)).
  double n = 0, s1 = 0, s2 = 0;
  for (std::size_t i = 0; i < x.size(); ++i)
    if (m[i]) n += 1, s1 += static_cast<double>(x[i]), s2 += static_cast<double>(x[i]) * static_cast<double>(x[i]);
  const double naive_m2 = (s2 / n - (s1 / n) * (s1 / n)) * n;
  CHECK(std::abs(naive_m2 - want.m2) > 1e-9 * want.m2);
}

TEMPLATE_LIST_TEST_CASE("regression: ROLL #475: fewer than two valid values give no NaN", "[ops][whitening][regression]",
                        all_configs) {
  // https://github.com/alibaba/ROLL/issues/475 (fix https://github.com/alibaba/ROLL/pull/476): the
  // Bessel variance of one value divides by zero. Rule here: count < 2 -> no scaling.
  using T = typename TestType::value;
  const auto b = TestType::make();
  auto bx = to_backend(b, std::vector<T>{3, 7, -2, 5}, 2, 2);
  auto out = allocate<T>(b, 2, 2);
  {
    auto bm = to_backend(b, std::vector<mask_type>{0, 1, 0, 0}, 2, 2);
    for (const auto& o : {whiten_options::trl0(), whiten_options::verl(), whiten_options{}}) {
      const masked_moments mo = whiten(b, bx.view(), bm.view(), out.view(), o);
      CHECK(mo.count == 1);
      CHECK(mo.mean == 7);
      CHECK(mo.variance(o.variance) == 0);
      CHECK(to_host(b, out.view()) == std::vector<T>{0, 0, 0, 0});  // 7 - 7, masked 0
    }
    whiten(b, bx.view(), bm.view(), out.view(), whiten_options{false, variance_kind::bessel, 1e-8});
    CHECK(to_host(b, out.view()) == std::vector<T>{0, 7, 0, 0});  // rescale-only keeps x
  }
  {
    auto bm = to_backend(b, std::vector<mask_type>{0, 0, 0, 0}, 2, 2);
    const masked_moments mo = whiten(b, bx.view(), bm.view(), out.view(), whiten_options::verl());
    CHECK(mo.count == 0);
    CHECK(mo.mean == 0);
    CHECK(to_host(b, out.view()) == std::vector<T>{0, 0, 0, 0});
  }
  {
    // Global moments with a single value: x - mean, unscaled.
    auto bm = to_backend(b, std::vector<mask_type>{1, 1, 0, 1}, 2, 2);
    const masked_moments global{1, 4, 0};
    whiten(b, bx.view(), bm.view(), out.view(), whiten_options::verl(), &global);
    CHECK(to_host(b, out.view()) == std::vector<T>{-1, 3, 0, 1});
  }
  // Empty matrices are fine too.
  auto e = allocate<T>(b, 0, 3);
  auto em = allocate<mask_type>(b, 0, 3);
  CHECK(compute_masked_moments(b, e.view(), em.view()).count == 0);
}

TEMPLATE_LIST_TEST_CASE("regression: pytorch-cpp-rl bug 12: whitened advantages have mean 0 and std 1",
                        "[ops][whitening][regression]", all_configs) {
  // Omegastick/pytorch-cpp-rl src/algorithms/ppo.cpp computes A - mean(A) / std(A) (operator precedence);
  // the right result is (A - mean) / std: masked mean 0 and masked std 1.
  using T = typename TestType::value;
  const auto b = TestType::make();
  auto g = rng(104);
  const std::size_t rows = 8, cols = 50;
  const auto x = normal<T>(g, rows * cols, 3.0, 2.5);
  const auto m = random_mask(g, rows * cols, 0.7);
  auto bx = to_backend(b, x, rows, cols);
  auto bm = to_backend(b, m, rows, cols);
  auto out = allocate<T>(b, rows, cols);
  for (const auto& o : {whiten_options::orl(), whiten_options::trl1()}) {
    const masked_moments mo = whiten(b, bx.view(), bm.view(), out.view(), o);
    auto bo = to_backend(b, to_host(b, out.view()), rows, cols);
    const masked_moments after = compute_masked_moments(b, bo.view(), bm.view());
    CHECK(std::abs(after.mean) < 1e-6);
    CHECK(after.stddev(o.variance) == Approx(1.0).epsilon(1e-6));
    // The mis-parenthesised A - mean / std keeps the data's mean (about 3 - 3 / 2.5 = 1.8), not 0, and is
    // not what whiten returns.
    const auto got = to_host(b, out.view());
    double wrong_sum = 0, max_gap = 0;
    for (std::size_t i = 0; i < x.size(); ++i) {
      if (!m[i]) continue;
      const double wrong = x[i] - mo.mean / mo.stddev(o.variance);
      wrong_sum += wrong;
      max_gap = std::max(max_gap, std::abs(static_cast<double>(got[i]) - wrong));
    }
    CHECK(wrong_sum / mo.count > 0.5);
    CHECK(max_gap > 0.5);
  }
}

TEMPLATE_LIST_TEST_CASE("regression: TRL/ORL masked whitening: masked garbage does not change the statistics",
                        "[ops][whitening][regression]", all_configs) {
  // TRL `masked_whiten` / ORL `masked_mean`: padded positions must not enter mean or variance (TRLX and ZGL
  // whiten unmasked, so padded zeros shift them; rlhf-math.md 2.6).
  using T = typename TestType::value;
  const auto b = TestType::make();
  auto g = rng(105);
  const std::size_t rows = 6, cols = 20;
  auto x = normal<T>(g, rows * cols);
  const auto m = mask_from_lengths(random_lengths(g, rows, cols, 2), cols);
  auto clean = x, dirty = x;
  for (std::size_t i = 0; i < x.size(); ++i) {
    if (!m[i]) {
      clean[i] = 0;
      dirty[i] = (i % 3 == 0) ? std::numeric_limits<T>::quiet_NaN() : (i % 3 == 1 ? T(1e30) : T(-7));
    }
  }
  auto bc = to_backend(b, clean, rows, cols), bd = to_backend(b, dirty, rows, cols);
  auto bm = to_backend(b, m, rows, cols);
  auto oc = allocate<T>(b, rows, cols), od = allocate<T>(b, rows, cols);
  const masked_moments mc = whiten(b, bc.view(), bm.view(), oc.view());
  const masked_moments md = whiten(b, bd.view(), bm.view(), od.view());
  CHECK(mc.count == md.count);
  CHECK(mc.mean == md.mean);
  CHECK(mc.m2 == md.m2);
  CHECK(to_host(b, oc.view()) == to_host(b, od.view()));
}

TEMPLATE_LIST_TEST_CASE("moments combine across ranks: global whitening equals whole-batch whitening",
                        "[ops][whitening]", all_configs) {
  using T = typename TestType::value;
  const auto b = TestType::make();
  auto g = rng(106);
  const std::size_t rows = 10, cols = 33;
  const auto x = normal<T>(g, rows * cols, -1.0, 3.0);
  const auto m = random_mask(g, rows * cols, 0.5);
  auto bx = to_backend(b, x, rows, cols);
  auto bm = to_backend(b, m, rows, cols);
  // "rank 0" holds rows 0..3, "rank 1" rows 4..9.
  const auto x0 = bx.view().row_block(0, 4), x1 = bx.view().row_block(4, 6);
  const auto m0 = bm.view().row_block(0, 4), m1 = bm.view().row_block(4, 6);
  const masked_moments a = compute_masked_moments(b, x0, m0), c = compute_masked_moments(b, x1, m1);
  const masked_moments global = combine(a, c);
  const masked_moments whole = compute_masked_moments(b, bx.view(), bm.view());
  CHECK(global.count == whole.count);
  CHECK(near<double>(global.mean, whole.mean, 10));
  CHECK(near<double>(global.m2, whole.m2, 100));
  // Identity element and symmetry.
  CHECK(combine(masked_moments{}, a).m2 == a.m2);
  CHECK(combine(a, masked_moments{}).mean == a.mean);
  CHECK(near<double>(combine(c, a).m2, global.m2, 10));

  auto out = allocate<T>(b, rows, cols), want = allocate<T>(b, rows, cols);
  whiten(b, bx.view(), bm.view(), want.view(), whiten_options::nemo());
  whiten(b, x0, m0, out.view().row_block(0, 4), whiten_options::nemo(), &global);
  whiten(b, x1, m1, out.view().row_block(4, 6), whiten_options::nemo(), &global);
  CHECK_THAT(to_host(b, out.view()), close_to<T>(to_host(b, want.view()), 1e-10 + tolerance<T>::rtol,
                                                 tolerance<T>::atol + 1e-12));
}

TEMPLATE_LIST_TEST_CASE("whiten rejects bad arguments with named errors", "[ops][whitening][errors]", all_configs) {
  using T = typename TestType::value;
  const auto b = TestType::make();
  auto x = allocate_filled<T>(b, 3, 4, T(1));
  auto m = allocate_filled<mask_type>(b, 3, 4, mask_type(1));
  auto bad_m = allocate_filled<mask_type>(b, 3, 5, mask_type(1));
  auto out = allocate<T>(b, 3, 4), bad_out = allocate<T>(b, 4, 4);
  CHECK_THROWS_WITH(whiten(b, x.view(), bad_m.view(), out.view()),
                    Catch::Contains("rlhf::whiten") && Catch::Contains("'mask'") && Catch::Contains("[3, 5]"));
  CHECK_THROWS_WITH(whiten(b, x.view(), m.view(), bad_out.view()),
                    Catch::Contains("rlhf::whiten") && Catch::Contains("'out'"));
  CHECK_THROWS_WITH(whiten(b, x.view(), m.view(), out.view(), whiten_options{true, variance_kind::biased, 0.0}),
                    Catch::Contains("rlhf::whiten") && Catch::Contains("'options.eps'"));
  const masked_moments broken{2, std::numeric_limits<double>::quiet_NaN(), 1};
  CHECK_THROWS_WITH(whiten(b, x.view(), m.view(), out.view(), whiten_options{}, &broken),
                    Catch::Contains("rlhf::whiten") && Catch::Contains("'global'"));
  CHECK_THROWS_WITH(compute_masked_moments(b, x.view(), bad_m.view()),
                    Catch::Contains("rlhf::compute_masked_moments") && Catch::Contains("'mask'"));
  // Opt-in finite check.
  auto nan = allocate_filled<T>(b, 3, 4, std::numeric_limits<T>::quiet_NaN());
  set_finite_checks(true);
  CHECK_THROWS_AS(whiten(b, nan.view(), m.view(), out.view()), rlhf::non_finite_error);
  set_finite_checks(false);
  CHECK_NOTHROW(whiten(b, nan.view(), m.view(), out.view()));
}
