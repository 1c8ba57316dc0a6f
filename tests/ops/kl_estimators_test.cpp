// rlhf::kl_penalty / rlhf::kl_penalty_backward: per-token KL estimators k1, abs, k2, k3 and the straight-through
// variants, their clamps and gradients, on every backend and on the generic path.
#include "test_support.hpp"

#include <array>
#include <limits>

#include "rlhf/ops/kl_estimators.hpp"

using namespace rlhf;
using namespace rlhf::test;

namespace {

constexpr std::array<kl_estimator, 6> all_estimators{kl_estimator::k1, kl_estimator::abs, kl_estimator::k2,
                                                     kl_estimator::k3, kl_estimator::k1_straight_through,
                                                     kl_estimator::k3_straight_through};

// Oracle: the estimator formulas written out in double, with the clamps as documented.
double oracle_value(double logr, const kl_estimator_options& o) {
  double v = 0;
  const double lrc = o.log_ratio_clamp;
  const double c = lrc > 0 ? std::min(std::max(logr, -lrc), lrc) : logr;
  switch (o.estimator) {
    case kl_estimator::k1:
    case kl_estimator::k1_straight_through: v = logr; break;
    case kl_estimator::abs: v = std::abs(logr); break;
    case kl_estimator::k2: v = 0.5 * logr * logr; break;
    case kl_estimator::k3:
    case kl_estimator::k3_straight_through: v = std::exp(-c) - 1 + c; break;
  }
  return o.clamp > 0 ? std::min(std::max(v, -o.clamp), o.clamp) : v;
}

bool straight_through(kl_estimator e) {
  return e == kl_estimator::k1_straight_through || e == kl_estimator::k3_straight_through;
}

template <class TestType>
std::vector<typename TestType::value> run_kl(const typename TestType::backend& b,
                                             const std::vector<typename TestType::value>& logp,
                                             const std::vector<typename TestType::value>& ref,
                                             const std::vector<mask_type>& m, std::size_t rows, std::size_t cols,
                                             const kl_estimator_options& o) {
  using T = typename TestType::value;
  auto bp = to_backend(b, logp, rows, cols), br = to_backend(b, ref, rows, cols);
  auto bm = to_backend(b, m, rows, cols);
  auto out = allocate_filled<T>(b, rows, cols, T(-7));
  kl_penalty(b, bp.view(), br.view(), bm.view(), out.view(), o);
  return to_host(b, out.view());
}

template <class TestType>
std::vector<typename TestType::value> run_kl_backward(const typename TestType::backend& b,
                                                      const std::vector<typename TestType::value>& logp,
                                                      const std::vector<typename TestType::value>& ref,
                                                      const std::vector<mask_type>& m,
                                                      const std::vector<typename TestType::value>& d_kl,
                                                      std::size_t rows, std::size_t cols, const kl_estimator_options& o) {
  using T = typename TestType::value;
  auto bp = to_backend(b, logp, rows, cols), br = to_backend(b, ref, rows, cols);
  auto bd = to_backend(b, d_kl, rows, cols);
  auto bm = to_backend(b, m, rows, cols);
  auto out = allocate_filled<T>(b, rows, cols, T(-7));
  kl_penalty_backward(b, bp.view(), br.view(), bm.view(), bd.view(), out.view(), o);
  return to_host(b, out.view());
}

}  // namespace

TEMPLATE_LIST_TEST_CASE("kl_penalty: hand-computed values at logr = +-ln 2", "[ops][kl]", all_configs) {
  using T = typename TestType::value;
  const auto b = TestType::make();
  const double ln2 = std::log(2.0);
  // logp = ln(0.5), ref = ln(0.25): logr = ln 2.   logp = ln(0.25), ref = ln(0.5): logr = -ln 2.
  // Third column masked, holding NaN: must give 0.
  const T nan = std::numeric_limits<T>::quiet_NaN();
  const std::vector<T> logp{T(std::log(0.5)), T(std::log(0.25)), nan};
  const std::vector<T> ref{T(std::log(0.25)), T(std::log(0.5)), T(0)};
  const std::vector<mask_type> m{1, 1, 0};
  struct expected {
    kl_estimator e;
    double plus, minus;
  };
  // k1  = logr                         =  0.6931471805599453 / -0.6931471805599453
  // abs = |logr|                       =  0.6931471805599453 /  0.6931471805599453
  // k2  = logr^2 / 2                   =  0.2402265069591007 (both signs)
  // k3  = exp(-logr) - 1 + logr        =  0.5 - 1 + 0.6931.. = 0.1931471805599453 / 2 - 1 - 0.6931.. = 0.3068528194400547
  for (const auto& [e, plus, minus] : {expected{kl_estimator::k1, 0.6931471805599453, -0.6931471805599453},
                                       expected{kl_estimator::abs, 0.6931471805599453, 0.6931471805599453},
                                       expected{kl_estimator::k2, 0.2402265069591007, 0.2402265069591007},
                                       expected{kl_estimator::k3, 0.1931471805599453, 0.3068528194400547},
                                       expected{kl_estimator::k1_straight_through, 0.6931471805599453, -0.6931471805599453},
                                       expected{kl_estimator::k3_straight_through, 0.1931471805599453, 0.3068528194400547}}) {
    CAPTURE(to_string(e));
    const auto got = run_kl<TestType>(b, logp, ref, m, 1, 3, kl_estimator_options{e, 0, 20});
    CHECK_THAT(got, close_to<T>(std::vector<double>{plus, minus, 0.0}, 20 * tolerance<T>::rtol, 20 * tolerance<T>::atol));
  }
  CHECK(std::abs(0.5 * ln2 * ln2 - 0.2402265069591007) < 1e-15);
}

TEMPLATE_LIST_TEST_CASE("kl_penalty: every estimator matches the formula on ragged and interior masks",
                        "[ops][kl][property]", all_configs) {
  using T = typename TestType::value;
  const auto b = TestType::make();
  auto g = rng(21);
  for (auto [rows, cols] : {std::pair<std::size_t, std::size_t>{1, 1}, {5, 19}, {40, 900}}) {
    const auto logp = uniform<T>(g, rows * cols, -6, 0), ref = uniform<T>(g, rows * cols, -6, 0);
    const auto ragged = mask_from_lengths(random_lengths(g, rows, cols), cols);
    const auto holes = random_mask(g, rows * cols, 0.6);
    for (const auto& m : {ragged, holes}) {
      for (kl_estimator e : all_estimators) {
        for (const auto& o : {kl_estimator_options{e, 0, 20}, kl_estimator_options{e, 1.5, 3}, kl_estimator_options{e, 0, 0}}) {
          CAPTURE(to_string(e), o.clamp, o.log_ratio_clamp);
          const auto got = run_kl<TestType>(b, logp, ref, m, rows, cols, o);
          std::vector<double> want(rows * cols, 0.0);
          for (std::size_t i = 0; i < want.size(); ++i)
            if (m[i]) want[i] = oracle_value(double(logp[i]) - double(ref[i]), o);
          // float: logr itself carries the rounding of the subtraction, k3 amplifies it by exp(-logr).
          CHECK_THAT(got, close_to<T>(want, std::is_same_v<T, float> ? 1e-4 : 1e-12,
                                      std::is_same_v<T, float> ? 1e-5 : 1e-13));
        }
      }
    }
  }
}

TEMPLATE_LIST_TEST_CASE("kl_penalty: k3, k2 and abs are non-negative and stay finite under the log-ratio clamp",
                        "[ops][kl][property]", all_configs) {
  using T = typename TestType::value;
  const auto b = TestType::make();
  auto g = rng(22);
  const std::size_t n = 5000;
  auto logp = uniform<T>(g, n, -40, 0);
  const auto ref = uniform<T>(g, n, -40, 0);
  // Tiny log-ratios too, where exp(-logr) - 1 rounds to 0 and a naive k3 returns logr itself (< 0 for logr < 0).
  const std::array<double, 8> tiny{-1e-3, -1e-5, -1e-7, -1e-9, 1e-9, 1e-7, -3e-8, -6e-8};
  for (std::size_t i = 0; i < 1000; ++i) logp[i] = static_cast<T>(double(ref[i]) + tiny[i % tiny.size()]);
  const std::vector<mask_type> m(n, 1);
  for (kl_estimator e : {kl_estimator::k3, kl_estimator::k2, kl_estimator::abs, kl_estimator::k3_straight_through}) {
    const auto got = run_kl<TestType>(b, logp, ref, m, 1, n, kl_estimator_options{e, 0, 20});
    std::size_t negative = 0, non_finite = 0;
    for (std::size_t i = 0; i < n; ++i) {
      negative += got[i] < T(0);
      non_finite += !std::isfinite(double(got[i]));
    }
    CAPTURE(to_string(e));
    CHECK(negative == 0);
    CHECK(non_finite == 0);
  }
  // k3 is zero exactly when logr = 0 (identical models).
  const auto zero = run_kl<TestType>(b, logp, logp, m, 1, n, kl_estimator_options{kl_estimator::k3, 0, 20});
  CHECK(zero == std::vector<T>(n, T(0)));
}

TEMPLATE_LIST_TEST_CASE("kl_penalty: clamps (ORL +-10, verl log-ratio +-20) and NaN at valid positions propagates",
                        "[ops][kl]", all_configs) {
  using T = typename TestType::value;
  const auto b = TestType::make();
  const T nan = std::numeric_limits<T>::quiet_NaN();
  // logr = 30, -50, 25, 0.5, NaN.
  const std::vector<T> logp{30, -50, 25, T(0.5), nan};
  const std::vector<T> ref(5, T(0));
  const std::vector<mask_type> m(5, 1);
  // k1 clamped to 10 (ORL): 10, -10, 10, 0.5, NaN.
  auto got = run_kl<TestType>(b, logp, ref, m, 1, 5, kl_estimator_options::orl());
  CHECK_THAT(got, close_to<T>(std::vector<double>{10, -10, 10, 0.5, std::nan("")}));
  // verl low_var_kl: logr clamped to +-20 inside k3, then the value to +-10:
  //   logr = 30 -> c = 20: exp(-20) - 1 + 20 = 19.000000002 -> 10;  logr = -50 -> c = -20: exp(20) - 21 -> 10;
  //   logr = 0.5: exp(-0.5) - 0.5 = 0.1065306597126334.
  got = run_kl<TestType>(b, logp, ref, m, 1, 5, kl_estimator_options::verl_low_var());
  CHECK_THAT(got, close_to<T>(std::vector<double>{10, 10, 10, 0.1065306597126334, std::nan("")},
                              10 * tolerance<T>::rtol, 10 * tolerance<T>::atol));
  // k3 with only the log-ratio clamp: logr = -50 -> exp(20) - 21 = 485165174.4097903; logr = 25 -> 19.000000002061153.
  got = run_kl<TestType>(b, logp, ref, m, 1, 5, kl_estimator_options{kl_estimator::k3, 0, 20});
  CHECK_THAT(got, close_to<T>(std::vector<double>{19.000000002061153, 485165174.4097903, 19.000000002061153,
                                                  0.1065306597126334, std::nan("")},
                              10 * tolerance<T>::rtol, 10 * tolerance<T>::atol));
  // Gradients are zero where a clamp is active (except the straight-through estimators: logr, always).
  const std::vector<T> ones(5, T(1));
  auto d = run_kl_backward<TestType>(b, logp, ref, m, ones, 1, 5, kl_estimator_options::orl());
  CHECK_THAT(d, close_to<T>(std::vector<double>{0, 0, 0, 1, std::nan("")}));
  d = run_kl_backward<TestType>(b, logp, ref, m, ones, 1, 5, kl_estimator_options::verl_low_var());
  CHECK_THAT(d, close_to<T>(std::vector<double>{0, 0, 0, 1 - std::exp(-0.5), std::nan("")}, 10 * tolerance<T>::rtol,
                            10 * tolerance<T>::atol));
  d = run_kl_backward<TestType>(b, logp, ref, m, ones, 1, 5, kl_estimator_options::verl_low_var_straight_through());
  CHECK_THAT(d, close_to<T>(std::vector<double>{30, -50, 25, 0.5, std::nan("")}));
}

TEMPLATE_LIST_TEST_CASE("kl_penalty_backward: finite differences for every estimator and clamp",
                        "[ops][kl][gradient]", double_configs) {
  using T = typename TestType::value;
  const auto b = TestType::make();
  auto g = rng(23);
  const std::size_t rows = 4, cols = 11, n = rows * cols;
  const auto ref = uniform<T>(g, n, -4, -1);
  const auto d_kl = uniform<T>(g, n, -1, 1);
  const auto m = random_mask(g, n, 0.7);
  for (kl_estimator e : all_estimators) {
    for (const auto& o : {kl_estimator_options{e, 0, 20}, kl_estimator_options{e, 1.0, 2.0}}) {
      CAPTURE(to_string(e), o.clamp, o.log_ratio_clamp);
      // logr in [-3, 3], kept 1e-2 away from every kink (0 for abs, the log-ratio clamp, the value clamp).
      auto logr = uniform<double>(g, n, -3, 3);
      for (auto& x : logr) {
        auto near_kink = [&](double y) {
          const double unclamped = oracle_value(y, kl_estimator_options{e, 0, o.log_ratio_clamp});
          return std::abs(y) < 1e-2 || std::abs(std::abs(y) - o.log_ratio_clamp) < 1e-2 ||
                 (o.clamp > 0 && std::abs(std::abs(unclamped) - o.clamp) < 1e-2);
        };
        while (near_kink(x)) x += 0.037;
      }
      std::vector<double> logp(n);
      for (std::size_t i = 0; i < n; ++i) logp[i] = logr[i] + ref[i];
      const auto got = run_kl_backward<TestType>(b, cast<T>(logp), ref, m, d_kl, rows, cols, o);
      if (straight_through(e)) {
        // The gradient of k2 whatever the value: d_kl * logr.
        std::vector<double> want(n, 0.0);
        for (std::size_t i = 0; i < n; ++i)
          if (m[i]) want[i] = d_kl[i] * logr[i];
        CHECK_THAT(got, close_to<T>(want, 1e-12, 1e-12));
        continue;
      }
      const auto loss = [&](const std::vector<double>& x) {
        const auto kl = run_kl<TestType>(b, cast<T>(x), ref, m, rows, cols, o);
        double s = 0;
        for (std::size_t i = 0; i < n; ++i) s += d_kl[i] * kl[i];
        return s;
      };
      CHECK_THAT(got, close_to<T>(numeric_gradient(loss, logp), fd_rtol, fd_atol));
    }
  }
}

TEMPLATE_LIST_TEST_CASE("regression: verl #2953: k3 as a loss follows the forward KL's gradient; straight-through "
                        "and k2 follow the reverse KL's (https://github.com/verl-project/verl/pull/2953)",
                        "[ops][kl][regression]", double_configs) {
  using T = typename TestType::value;
  const auto b = TestType::make();
  // A categorical policy p = softmax(theta) over 4 tokens and a reference q. The expected gradient of a
  // per-token estimator used as a loss, w.r.t. the logits, is sum_v p_v k'(logr_v) (delta_vj - p_j).
  const std::vector<double> p{0.5, 0.25, 0.15, 0.10}, q{0.2, 0.3, 0.3, 0.2};
  std::vector<double> logp(4), logq(4);
  for (int v = 0; v < 4; ++v) logp[v] = std::log(p[v]), logq[v] = std::log(q[v]);
  const std::vector<mask_type> m(4, 1);
  const std::vector<T> ones(4, T(1));
  const auto expected_logit_gradient = [&](const std::vector<T>& dk) {
    std::vector<double> grad(4, 0.0);
    for (int j = 0; j < 4; ++j)
      for (int v = 0; v < 4; ++v) grad[j] += p[v] * dk[v] * ((v == j ? 1.0 : 0.0) - p[j]);
    return grad;
  };
  // True gradients: reverse KL(p||q): sum_v p_v logr_v (delta_vj - p_j); forward KL(q||p): p_j - q_j.
  std::vector<double> reverse(4, 0.0), forward(4, 0.0);
  for (int j = 0; j < 4; ++j) {
    for (int v = 0; v < 4; ++v) reverse[j] += p[v] * (logp[v] - logq[v]) * ((v == j ? 1.0 : 0.0) - p[j]);
    forward[j] = p[j] - q[j];
  }
  auto grad_of = [&](kl_estimator e) {
    return expected_logit_gradient(
        run_kl_backward<TestType>(b, cast<T>(logp), cast<T>(logq), m, ones, 1, 4, kl_estimator_options{e, 0, 20}));
  };
  CHECK_THAT(grad_of(kl_estimator::k1), close_to<double>(std::vector<double>(4, 0.0), 1e-12, 1e-12));  // zero mean
  CHECK_THAT(grad_of(kl_estimator::k2), close_to<double>(reverse, 1e-12, 1e-12));
  CHECK_THAT(grad_of(kl_estimator::k1_straight_through), close_to<double>(reverse, 1e-12, 1e-12));
  CHECK_THAT(grad_of(kl_estimator::k3_straight_through), close_to<double>(reverse, 1e-12, 1e-12));
  const auto k3 = grad_of(kl_estimator::k3);
  CHECK_THAT(k3, close_to<double>(forward, 1e-12, 1e-12));
  CHECK_FALSE(close_to<double>(reverse, 1e-3, 1e-3).match(k3));  // biased for the reverse KL it estimates
}

TEMPLATE_LIST_TEST_CASE("kl_penalty: presets reproduce the peers' estimators", "[ops][kl]", all_configs) {
  CHECK(kl_estimator_options{}.estimator == kl_estimator::k1);
  CHECK(kl_estimator_options::instructgpt().clamp == 0);
  CHECK(kl_estimator_options::orl().clamp == 10);
  CHECK(kl_estimator_options::orl_k3().estimator == kl_estimator::k3);
  CHECK(kl_estimator_options::trl1_k3().estimator == kl_estimator::k3);
  CHECK(kl_estimator_options::trl0_abs().estimator == kl_estimator::abs);
  CHECK(kl_estimator_options::trl0_mse().estimator == kl_estimator::k2);
  CHECK(kl_estimator_options::verl_low_var().estimator == kl_estimator::k3);
  CHECK(kl_estimator_options::verl_low_var().clamp == 10);
  CHECK(kl_estimator_options::verl_low_var().log_ratio_clamp == 20);
  CHECK(kl_estimator_options::verl_low_var_straight_through().estimator == kl_estimator::k3_straight_through);
  CHECK(kl_estimator_options::nemo().estimator == kl_estimator::abs);
  CHECK(std::string(to_string(kl_estimator::k3_straight_through)) == "k3+");
  // The device functor is usable directly: k3 at logr = ln 2.
  using T = typename TestType::value;
  CHECK(double(detail::kl_value<T>(T(std::log(2.0)), kl_estimator::k3, T(0), T(20))) ==
        Approx(0.1931471805599453).epsilon(1e-6));
}

TEMPLATE_LIST_TEST_CASE("kl_penalty: argument errors name the function and the argument", "[ops][kl][errors]",
                        all_configs) {
  using T = typename TestType::value;
  const auto b = TestType::make();
  auto p = allocate_filled<T>(b, 2, 5, T(-1)), r = allocate_filled<T>(b, 2, 5, T(-1)), bad = allocate<T>(b, 2, 4);
  auto m = allocate_filled<mask_type>(b, 2, 5, mask_type(1)), m_bad = allocate_filled<mask_type>(b, 5, 2, mask_type(1));
  auto out = allocate<T>(b, 2, 5);
  CHECK_THROWS_WITH(kl_penalty(b, p.view(), bad.view(), m.view(), out.view()),
                    Catch::Contains("rlhf::kl_penalty") && Catch::Contains("'ref_logp'") &&
                        Catch::Contains("expected shape [2, 5] (same as 'logp'), received [2, 4]"));
  CHECK_THROWS_WITH(kl_penalty(b, p.view(), r.view(), m_bad.view(), out.view()),
                    Catch::Contains("rlhf::kl_penalty") && Catch::Contains("'mask'"));
  CHECK_THROWS_WITH(kl_penalty(b, p.view(), r.view(), m.view(), bad.view()),
                    Catch::Contains("rlhf::kl_penalty") && Catch::Contains("'kl'"));
  CHECK_THROWS_WITH(kl_penalty(b, p.view(), r.view(), m.view(), out.view(), kl_estimator_options{kl_estimator::k1, -1, 20}),
                    Catch::Contains("rlhf::kl_penalty") && Catch::Contains("'options.clamp'"));
  CHECK_THROWS_WITH(kl_penalty(b, p.view(), r.view(), m.view(), out.view(),
                               kl_estimator_options{kl_estimator::k3, 0, std::numeric_limits<double>::quiet_NaN()}),
                    Catch::Contains("rlhf::kl_penalty") && Catch::Contains("'options.log_ratio_clamp'"));
  CHECK_THROWS_WITH(kl_penalty(b, p.view(), r.view(), m.view(), out.view(),
                               kl_estimator_options{static_cast<kl_estimator>(42), 0, 20}),
                    Catch::Contains("rlhf::kl_penalty") && Catch::Contains("'options.estimator'"));
  CHECK_THROWS_WITH(kl_penalty_backward(b, p.view(), r.view(), m.view(), bad.view(), out.view()),
                    Catch::Contains("rlhf::kl_penalty_backward") && Catch::Contains("'d_kl'"));
  CHECK_THROWS_WITH(kl_penalty_backward(b, p.view(), r.view(), m.view(), r.view(), bad.view()),
                    Catch::Contains("rlhf::kl_penalty_backward") && Catch::Contains("'d_logp'"));
  // Opt-in finite check: NaN at a masked position is fine, at a valid one it is reported.
  const T nan = std::numeric_limits<T>::quiet_NaN();
  auto pn = to_backend(b, std::vector<T>{nan, -1, -1, -1, -1, -1, -1, -1, -1, -1}, 2, 5);
  auto mh = to_backend(b, std::vector<mask_type>{0, 1, 1, 1, 1, 1, 1, 1, 1, 1}, 2, 5);
  set_finite_checks(true);
  CHECK_NOTHROW(kl_penalty(b, pn.view(), r.view(), mh.view(), out.view()));
  CHECK_THROWS_WITH(kl_penalty(b, pn.view(), r.view(), m.view(), out.view()),
                    Catch::Contains("rlhf::kl_penalty") && Catch::Contains("'logp'"));
  CHECK_THROWS_AS(kl_penalty_backward(b, r.view(), pn.view(), m.view(), r.view(), out.view()), rlhf::non_finite_error);
  set_finite_checks(false);
  CHECK_NOTHROW(kl_penalty(b, pn.view(), r.view(), m.view(), out.view()));
}

TEMPLATE_LIST_TEST_CASE("kl_penalty_backward: d_logp may alias d_kl; masked positions get 0", "[ops][kl][gradient]",
                        all_configs) {
  using T = typename TestType::value;
  const auto b = TestType::make();
  const std::vector<T> logp{T(-0.5), T(-1.0), T(-2.0)}, ref{T(-1.0), T(-0.5), T(-2.0)};
  const std::vector<mask_type> m{1, 1, 0};
  auto bp = to_backend(b, logp, 1, 3), br = to_backend(b, ref, 1, 3);
  auto bm = to_backend(b, m, 1, 3);
  auto d = to_backend(b, std::vector<T>{2, 2, 2}, 1, 3);
  // k2: d_logp = d_kl * logr = 2 * 0.5, 2 * -0.5, 0.
  kl_penalty_backward(b, bp.view(), br.view(), bm.view(), d.view(), d.view(), kl_estimator_options{kl_estimator::k2, 0, 20});
  CHECK(to_host(b, d.view()) == std::vector<T>{1, -1, 0});
}
