// rlhf::kl_penalized_rewards: -beta * KL on every valid token plus the reward-model score on one token, on every
// backend and on the generic path; the score-placement regressions run the rewards through rlhf::gae.
#include "test_support.hpp"

#include <limits>

#include "rlhf/advantages/gae.hpp"
#include "rlhf/advantages/kl_penalized_rewards.hpp"
#include "rlhf/ops/kl_estimators.hpp"
#if RLHF_TEST_HAS_EIGEN
#include "rlhf/backends/eigen/gae.hpp"
#endif

using namespace rlhf;
using namespace rlhf::test;

namespace {

struct rewards_out {
  std::vector<double> rewards;
  kl_penalized_rewards_stats stats;
};

// Oracle: the formula as a host loop.
rewards_out oracle(const std::vector<double>& kl, const std::vector<double>& scores, const std::vector<mask_type>& m,
                   const std::vector<mask_type>& has_eos, std::size_t rows, std::size_t cols,
                   const kl_penalized_rewards_options& o) {
  rewards_out out{std::vector<double>(rows * cols, 0.0), {}};
  double kl_total = 0, score_sum = 0, raw = 0;
  for (std::size_t r = 0; r < rows; ++r) {
    long last = -1;
    for (std::size_t c = 0; c < cols; ++c) {
      const std::size_t i = r * cols + c;
      if (m[i]) {
        out.rewards[i] = -o.beta * kl[i];
        kl_total += kl[i];
        ++out.stats.valid_tokens;
        last = static_cast<long>(c);
      }
    }
    raw += scores[r];
    if (last < 0) continue;
    double s = scores[r];
    if (o.score_clip > 0) s = std::min(std::max(s, -o.score_clip), o.score_clip);
    if (!has_eos.empty() && !has_eos[r]) s -= o.missing_eos_penalty;
    std::size_t target = static_cast<std::size_t>(last);
    if (o.placement == score_placement::last_position) target = cols - 1;
    if (o.placement == score_placement::one_past_last_valid) target = std::min(target + 1, cols - 1);
    out.rewards[r * cols + target] += s;
    score_sum += s;
    ++out.stats.scored_rows;
  }
  out.stats.mean_score = out.stats.scored_rows ? score_sum / double(out.stats.scored_rows) : 0.0;
  out.stats.mean_raw_score = rows ? raw / double(rows) : 0.0;
  out.stats.mean_kl = out.stats.valid_tokens ? kl_total / double(out.stats.valid_tokens) : 0.0;
  out.stats.mean_kl_sum = rows ? kl_total / double(rows) : 0.0;
  out.stats.mean_non_score_reward = -o.beta * out.stats.mean_kl_sum;
  return out;
}

template <class TestType>
std::pair<std::vector<typename TestType::value>, kl_penalized_rewards_stats> run_rewards(
    const typename TestType::backend& b, const std::vector<typename TestType::value>& kl,
    const std::vector<typename TestType::value>& scores, const std::vector<mask_type>& m,
    const std::vector<mask_type>& has_eos, std::size_t rows, std::size_t cols, const kl_penalized_rewards_options& o) {
  using T = typename TestType::value;
  using B = typename TestType::backend;
  auto bk = to_backend(b, kl, rows, cols);
  auto bs = to_backend(b, scores, 1, rows);
  auto bm = to_backend(b, m, rows, cols);
  auto be = to_backend(b, has_eos, 1, has_eos.size());
  auto out = allocate_filled<T>(b, rows, cols, T(-7));
  const backend_vector<B, const mask_type> eos =
      has_eos.empty() ? backend_vector<B, const mask_type>{} : as_const(be.view().flat());
  const auto stats = kl_penalized_rewards(b, bk.view(), bs.view().flat(), bm.view(), eos, out.view(), o);
  return {to_host(b, out.view()), stats};
}

template <class T>
void check_stats(const kl_penalized_rewards_stats& got, const kl_penalized_rewards_stats& want) {
  const double tol = std::is_same_v<T, float> ? 1e-5 : 1e-12;
  CHECK(got.valid_tokens == want.valid_tokens);
  CHECK(got.scored_rows == want.scored_rows);
  CHECK(got.mean_score == Approx(want.mean_score).epsilon(tol).margin(tol));
  CHECK(got.mean_raw_score == Approx(want.mean_raw_score).epsilon(tol).margin(tol));
  CHECK(got.mean_kl == Approx(want.mean_kl).epsilon(tol).margin(tol));
  CHECK(got.mean_kl_sum == Approx(want.mean_kl_sum).epsilon(tol).margin(tol));
  CHECK(got.mean_non_score_reward == Approx(want.mean_non_score_reward).epsilon(tol).margin(tol));
}

template <class T>
std::vector<double> as_double(const std::vector<T>& x) {
  return std::vector<double>(x.begin(), x.end());
}

}  // namespace

TEMPLATE_LIST_TEST_CASE("kl_penalized_rewards: hand-computed rewards and statistics", "[advantages][rewards]",
                        all_configs) {
  using T = typename TestType::value;
  const auto b = TestType::make();
  const T nan = std::numeric_limits<T>::quiet_NaN();
  // beta = 0.1, scores [1, 2, -3].
  // row 0: kl [0.5, 1.0, -0.2, NaN (masked)] -> [-0.05, -0.1, 0.02 + 1 = 1.02, 0]
  // row 1: kl 0.1 everywhere, all valid     -> [-0.01, -0.01, -0.01, -0.01 + 2 = 1.99]
  // row 2: nothing valid                    -> all 0, no score
  // valid tokens 7, KL total 1.3 + 0.4 = 1.7: mean_kl = 1.7 / 7 = 0.24285714285714285, mean_kl_sum = 1.7 / 3;
  // mean_score over the 2 scored rows = 1.5; mean raw score over 3 rows = 0.
  const std::vector<T> kl{T(0.5), T(1.0), T(-0.2), nan, T(0.1), T(0.1), T(0.1), T(0.1), 9, 9, 9, 9};
  const std::vector<T> scores{1, 2, -3};
  const std::vector<mask_type> m{1, 1, 1, 0, 1, 1, 1, 1, 0, 0, 0, 0};
  const kl_penalized_rewards_options o{0.1, 0, 0, score_placement::last_valid_token};
  const auto [got, stats] = run_rewards<TestType>(b, kl, scores, m, {}, 3, 4, o);
  CHECK_THAT(got, close_to<T>(std::vector<double>{-0.05, -0.1, 1.02, 0, -0.01, -0.01, -0.01, 1.99, 0, 0, 0, 0},
                              10 * tolerance<T>::rtol, 10 * tolerance<T>::atol));
  kl_penalized_rewards_stats want;
  want.valid_tokens = 7;
  want.scored_rows = 2;
  want.mean_score = 1.5;
  want.mean_raw_score = 0;
  want.mean_kl = 1.7 / 7;
  want.mean_kl_sum = 1.7 / 3;
  want.mean_non_score_reward = -0.1 * 1.7 / 3;
  check_stats<T>(stats, want);

  // last_position: row 0's score goes to column 3 (padding): [-0.05, -0.1, 0.02, 1].
  // one_past_last_valid: the same for row 0; row 1 is full, so min(3 + 1, 3) = 3: unchanged.
  for (auto p : {score_placement::last_position, score_placement::one_past_last_valid}) {
    const auto [got2, stats2] = run_rewards<TestType>(b, kl, scores, m, {}, 3, 4, kl_penalized_rewards_options{0.1, 0, 0, p});
    CHECK_THAT(got2, close_to<T>(std::vector<double>{-0.05, -0.1, 0.02, 1, -0.01, -0.01, -0.01, 1.99, 0, 0, 0, 0},
                                 10 * tolerance<T>::rtol, 10 * tolerance<T>::atol));
  }

  // Score clip 1.5 and a missing-EOS penalty of 0.5 on row 1: scores become [1, 1.5 - 0.5 = 1, (row 2 unscored)].
  const auto [got3, stats3] =
      run_rewards<TestType>(b, kl, scores, m, {1, 0, 1}, 3, 4, kl_penalized_rewards_options{0.1, 1.5, 0.5});
  CHECK_THAT(got3, close_to<T>(std::vector<double>{-0.05, -0.1, 1.02, 0, -0.01, -0.01, -0.01, 0.99, 0, 0, 0, 0},
                               10 * tolerance<T>::rtol, 10 * tolerance<T>::atol));
  CHECK(stats3.mean_score == Approx(1.0).epsilon(1e-6));
}

TEMPLATE_LIST_TEST_CASE("kl_penalized_rewards: matches the oracle on ragged and interior masks, every placement",
                        "[advantages][rewards][property]", all_configs) {
  using T = typename TestType::value;
  const auto b = TestType::make();
  auto g = rng(31);
  for (auto [rows, cols] : {std::pair<std::size_t, std::size_t>{1, 1}, {9, 17}, {64, 700}}) {
    const auto kl = normal<T>(g, rows * cols, 0.1, 0.5);
    const auto scores = normal<T>(g, rows, 0.0, 4.0);
    const auto eos = random_mask(g, rows, 0.7);
    const auto ragged = mask_from_lengths(random_lengths(g, rows, cols), cols);
    const auto holes = random_mask(g, rows * cols, 0.5);
    for (const auto& m : {ragged, holes}) {
      for (auto p : {score_placement::last_valid_token, score_placement::last_position, score_placement::one_past_last_valid}) {
        for (const auto& o : {kl_penalized_rewards_options{0.05, 0, 0, p}, kl_penalized_rewards_options{0.2, 2.0, 1.0, p}}) {
          for (const auto& e : {std::vector<mask_type>{}, eos}) {
            const auto [got, stats] = run_rewards<TestType>(b, kl, scores, m, e, rows, cols, o);
            const auto want = oracle(as_double(kl), as_double(scores), m, e, rows, cols, o);
            CHECK_THAT(got, close_to<T>(want.rewards, 10 * tolerance<T>::rtol, 10 * tolerance<T>::atol));
            check_stats<T>(stats, want.stats);
          }
        }
      }
    }
  }
}

TEMPLATE_LIST_TEST_CASE("kl_penalized_rewards: the convenience overload computes the KL and reports the one it used",
                        "[advantages][rewards]", all_configs) {
  // The same results as kl_penalty then the rewards, bit for bit, also where a backend computes k1 inside the
  // rewards pass (the Eigen backend, for k1 and k1_straight_through without a clamp); NaN at masked positions,
  // interior holes, rows with no valid token, a row longer than a vector; with the finite checks on too.
  using T = typename TestType::value;
  using B = typename TestType::backend;
  const auto b = TestType::make();
  auto g = rng(32);
  for (auto [rows, cols] : {std::pair<std::size_t, std::size_t>{6, 10}, {7, 300}}) {
    auto logp = uniform<T>(g, rows * cols, -3, 0), ref = uniform<T>(g, rows * cols, -3, 0);
    const auto scores = normal<T>(g, rows);
    auto m = mask_from_lengths(random_lengths(g, rows, cols, 0), cols);
    const auto holes = random_mask(g, rows * cols, 0.9);
    for (std::size_t i = 0; i < m.size(); ++i) {
      m[i] = static_cast<mask_type>(m[i] & holes[i]);
      if (!m[i]) logp[i] = std::numeric_limits<T>::quiet_NaN();
    }
    auto bp = to_backend(b, logp, rows, cols), br = to_backend(b, ref, rows, cols);
    auto bs = to_backend(b, scores, 1, rows);
    auto bm = to_backend(b, m, rows, cols);
    auto kl = allocate<T>(b, rows, cols), rw = allocate<T>(b, rows, cols), kl2 = allocate<T>(b, rows, cols),
         rw2 = allocate<T>(b, rows, cols);
    for (const bool finite_checks : {false, true}) {
      set_finite_checks(finite_checks);
      for (const auto& ko : {kl_estimator_options::trl0(), kl_estimator_options::nemo(), kl_estimator_options::verl_low_var(),
                             kl_estimator_options{kl_estimator::k1_straight_through, 0, 20},
                             kl_estimator_options{kl_estimator::k1, 0.5, 20}}) {
        INFO("rows " << rows << " estimator " << static_cast<int>(ko.estimator) << " clamp " << ko.clamp
                     << " finite checks " << finite_checks);
        const auto stats = kl_penalized_rewards(b, bp.view(), br.view(), bs.view().flat(), bm.view(),
                                                backend_vector<B, const mask_type>{}, kl.view(), rw.view(), ko,
                                                kl_penalized_rewards_options::orl());
        kl_penalty(b, bp.view(), br.view(), bm.view(), kl2.view(), ko);
        const auto stats2 = kl_penalized_rewards(b, kl2.view(), bs.view().flat(), bm.view(), rw2.view(),
                                                 kl_penalized_rewards_options::orl());
        CHECK(to_host(b, kl.view()) == to_host(b, kl2.view()));
        CHECK(to_host(b, rw.view()) == to_host(b, rw2.view()));
        CHECK(stats.mean_kl == stats2.mean_kl);
        CHECK(stats.mean_kl_sum == stats2.mean_kl_sum);
        CHECK(stats.valid_tokens == stats2.valid_tokens);
        CHECK(stats.scored_rows == stats2.scored_rows);
        CHECK(stats.mean_score == stats2.mean_score);
      }
    }
    set_finite_checks(false);
    // With the checks on, NaN at a valid position is still reported (the one-pass path is skipped then).
    logp[0] = std::numeric_limits<T>::quiet_NaN();
    m[0] = 1;
    auto bp_bad = to_backend(b, logp, rows, cols);
    auto bm_bad = to_backend(b, m, rows, cols);
    set_finite_checks(true);
    CHECK_THROWS_AS(kl_penalized_rewards(b, bp_bad.view(), br.view(), bs.view().flat(), bm_bad.view(),
                                         backend_vector<B, const mask_type>{}, kl.view(), rw.view(),
                                         kl_estimator_options::trl0(), kl_penalized_rewards_options::orl()),
                    non_finite_error);
    set_finite_checks(false);
  }
}

TEMPLATE_LIST_TEST_CASE("regression: trl #1161: the reported KL is the KL in the reward, not k1 "
                        "(https://github.com/huggingface/trl/issues/1161, fix https://github.com/huggingface/trl/pull/1180)",
                        "[advantages][rewards][regression]", all_configs) {
  using T = typename TestType::value;
  using B = typename TestType::backend;
  const auto b = TestType::make();
  // logr = [-0.5, 0.25] on one row: k1 sum = -0.25 ("negative KL"), abs sum = 0.75. With the abs estimator the
  // rewards carry -beta * 0.75 and the statistics must say 0.75, not -0.25.
  auto bp = to_backend(b, std::vector<T>{T(-1.5), T(-0.75)}, 1, 2), br = to_backend(b, std::vector<T>{-1, -1}, 1, 2);
  auto bs = to_backend(b, std::vector<T>{0}, 1, 1);
  auto bm = to_backend(b, std::vector<mask_type>{1, 1}, 1, 2);
  auto kl = allocate<T>(b, 1, 2), rw = allocate<T>(b, 1, 2);
  const auto stats = kl_penalized_rewards(b, bp.view(), br.view(), bs.view().flat(), bm.view(),
                                          backend_vector<B, const mask_type>{}, kl.view(), rw.view(),
                                          kl_estimator_options::trl0_abs(), kl_penalized_rewards_options{0.2});
  CHECK(stats.mean_kl_sum == Approx(0.75));
  CHECK(stats.mean_kl == Approx(0.375));
  CHECK(stats.mean_non_score_reward == Approx(-0.15));
  const auto r = to_host(b, rw.view());
  CHECK(double(r[0]) + double(r[1]) == Approx(stats.mean_non_score_reward));
}

TEMPLATE_LIST_TEST_CASE("regression: verl #6361: NaN kl at masked positions does not reach the rewards or the statistics "
                        "(https://github.com/verl-project/verl/pull/6361)",
                        "[advantages][rewards][regression]", all_configs) {
  using T = typename TestType::value;
  const auto b = TestType::make();
  const T nan = std::numeric_limits<T>::quiet_NaN(), inf = std::numeric_limits<T>::infinity();
  const std::vector<T> kl{T(0.5), nan, inf, T(0.25), nan, -inf};
  const std::vector<mask_type> m{1, 0, 0, 1, 0, 0};
  const auto [got, stats] = run_rewards<TestType>(b, kl, {T(1), T(2)}, m, {}, 2, 3, kl_penalized_rewards_options{1.0});
  // row 0: [-0.5 + 1, 0, 0]; row 1: [-0.25 + 2, 0, 0].
  CHECK(got == std::vector<T>{T(0.5), 0, 0, T(1.75), 0, 0});
  CHECK(stats.mean_kl == Approx(0.375));
  CHECK(std::isfinite(stats.mean_kl_sum));
}

namespace {
// Per-row count of non-zero advantages after GAE(gamma = 1, lambda = 0.95) with V = 0 and KL = 0: the score
// propagates back to exactly the valid tokens up to (and including) the token that holds it.
template <class TestType>
std::vector<std::size_t> nonzero_advantages_per_row(const typename TestType::backend& b,
                                                    const std::vector<typename TestType::value>& rewards,
                                                    const std::vector<mask_type>& gae_mask, std::size_t rows,
                                                    std::size_t cols) {
  using T = typename TestType::value;
  auto br = to_backend(b, rewards, rows, cols);
  auto bv = allocate_filled<T>(b, rows, cols, T(0));
  auto bm = to_backend(b, gae_mask, rows, cols);
  auto adv = allocate<T>(b, rows, cols), ret = allocate<T>(b, rows, cols);
  gae(b, br.view(), bv.view(), bm.view(), adv.view(), ret.view(), gae_options::instructgpt());
  const auto a = to_host(b, adv.view());
  std::vector<std::size_t> count(rows, 0);
  for (std::size_t r = 0; r < rows; ++r)
    for (std::size_t c = 0; c < cols; ++c) count[r] += a[r * cols + c] != T(0);
  return count;
}
}  // namespace

TEMPLATE_LIST_TEST_CASE("regression: DeepSpeedExamples #672: the number of non-zero advantages equals each response's "
                        "length (https://github.com/deepspeedai/DeepSpeedExamples/pull/672)",
                        "[advantages][rewards][regression]", all_configs) {
  using T = typename TestType::value;
  const auto b = TestType::make();
  auto g = rng(33);
  const std::size_t rows = 12, cols = 20;
  auto lengths = random_lengths(g, rows, cols - 1, 1);  // room for the one-past slot
  const auto m = mask_from_lengths(lengths, cols);
  const auto scores = uniform<T>(g, rows, 0.5, 2.0);
  const std::vector<T> zero_kl(rows * cols, T(0));

  // Default placement (last valid token): exactly `length` non-zero advantages per row.
  const auto [rw, st] = run_rewards<TestType>(b, zero_kl, scores, m, {}, rows, cols, kl_penalized_rewards_options{});
  CHECK(nonzero_advantages_per_row<TestType>(b, rw, m, rows, cols) == lengths);

  // DeepSpeed-Chat's placement (score one past the last action, values and rewards kept up to `ends`, i.e. a
  // mask one longer than the response): length + 1 non-zero advantages, the check PR #672 reports failing.
  const auto [rw_dsc, st2] =
      run_rewards<TestType>(b, zero_kl, scores, m, {}, rows, cols, kl_penalized_rewards_options::dsc());
  std::vector<std::size_t> plus_one = lengths;
  for (auto& l : plus_one) ++l;
  const auto m_ends = mask_from_lengths(plus_one, cols);
  const auto dsc_counts = nonzero_advantages_per_row<TestType>(b, rw_dsc, m_ends, rows, cols);
  CHECK(dsc_counts == plus_one);
  CHECK(dsc_counts != lengths);
}

TEMPLATE_LIST_TEST_CASE("regression: trl #1893: the score sits on the last real token, not on the pad after EOS "
                        "(https://github.com/huggingface/trl/issues/1893, https://github.com/huggingface/trl/issues/3750)",
                        "[advantages][rewards][regression]", all_configs) {
  using T = typename TestType::value;
  const auto b = TestType::make();
  // One response of 3 tokens in 5 columns, score 1, no KL, V = 0, gamma = 1, lambda = 0.95.
  const std::vector<mask_type> m{1, 1, 1, 0, 0};
  const std::vector<T> zero_kl(5, T(0));
  const auto [rw, st] = run_rewards<TestType>(b, zero_kl, {T(1)}, m, {}, 1, 5, kl_penalized_rewards_options{});
  CHECK(rw == std::vector<T>{0, 0, 1, 0, 0});  // on the EOS token (t = 2)
  // TRL HEAD's placement puts it on t = 3, the first pad.
  const auto [rw1, st1] = run_rewards<TestType>(b, zero_kl, {T(1)}, m, {}, 1, 5, kl_penalized_rewards_options::trl1());
  CHECK(rw1 == std::vector<T>{0, 0, 0, 1, 0});
  // With GAE over the action mask, the default placement gives A = [0.95^2, 0.95, 1] ...
  auto run = [&](const std::vector<T>& rewards, const std::vector<mask_type>& gm) {
    auto br = to_backend(b, rewards, 1, 5);
    auto bv = allocate_filled<T>(b, 1, 5, T(0));
    auto bm = to_backend(b, gm, 1, 5);
    auto adv = allocate<T>(b, 1, 5), ret = allocate<T>(b, 1, 5);
    gae(b, br.view(), bv.view(), bm.view(), adv.view(), ret.view(), gae_options::trl1());
    return to_host(b, adv.view());
  };
  CHECK_THAT(run(rw, m), close_to<T>(std::vector<double>{0.9025, 0.95, 1, 0, 0}));
  // ... while TRL's placement with the action mask loses the score entirely (A = 0) and, with the mask extended by
  // the pad slot (`padding_mask_p1`), it arrives one step late and scaled by lambda: A_EOS = 0.95, not 1.
  CHECK(run(rw1, m) == std::vector<T>(5, T(0)));
  CHECK_THAT(run(rw1, {1, 1, 1, 1, 0}), close_to<T>(std::vector<double>{0.857375, 0.9025, 0.95, 1, 0}));
}

TEMPLATE_LIST_TEST_CASE("kl_penalized_rewards: presets reproduce the peers' defaults", "[advantages][rewards]",
                        all_configs) {
  (void)sizeof(TestType);
  CHECK(kl_penalized_rewards_options{}.beta == 0.02);
  CHECK(kl_penalized_rewards_options{}.placement == score_placement::last_valid_token);
  CHECK(kl_penalized_rewards_options::zgl().beta == 0.2);
  CHECK(kl_penalized_rewards_options::zgl().placement == score_placement::last_position);
  CHECK(kl_penalized_rewards_options::trl0().beta == 0.2);
  CHECK(kl_penalized_rewards_options::trl1().beta == 0.05);
  CHECK(kl_penalized_rewards_options::trl1().placement == score_placement::one_past_last_valid);
  CHECK(kl_penalized_rewards_options::dsc().beta == 0.1);
  CHECK(kl_penalized_rewards_options::dsc().score_clip == 5);
  CHECK(kl_penalized_rewards_options::orl().beta == 0.01);
  CHECK(kl_penalized_rewards_options::orl().score_clip == 10);
  CHECK(kl_penalized_rewards_options::verl().beta == 0.001);
  CHECK(kl_penalized_rewards_options::nemo().beta == 0.01);
}

TEMPLATE_LIST_TEST_CASE("kl_penalized_rewards: argument errors name the function and the argument",
                        "[advantages][rewards][errors]", all_configs) {
  using T = typename TestType::value;
  using B = typename TestType::backend;
  const auto b = TestType::make();
  auto kl = allocate_filled<T>(b, 3, 4, T(0)), bad = allocate<T>(b, 3, 5), rw = allocate<T>(b, 3, 4);
  auto s = allocate_filled<T>(b, 1, 3, T(0)), s_bad = allocate_filled<T>(b, 1, 2, T(0));
  auto m = allocate_filled<mask_type>(b, 3, 4, mask_type(1)), m_bad = allocate_filled<mask_type>(b, 4, 3, mask_type(1));
  auto eos_bad = allocate_filled<mask_type>(b, 1, 4, mask_type(1));
  const auto fn = Catch::Contains("rlhf::kl_penalized_rewards");
  CHECK_THROWS_WITH(kl_penalized_rewards(b, kl.view(), s_bad.view().flat(), m.view(), rw.view()),
                    fn && Catch::Contains("'scores'") && Catch::Contains("expected size 3"));
  CHECK_THROWS_WITH(kl_penalized_rewards(b, kl.view(), s.view().flat(), m_bad.view(), rw.view()),
                    fn && Catch::Contains("'mask'"));
  CHECK_THROWS_WITH(kl_penalized_rewards(b, kl.view(), s.view().flat(), m.view(), bad.view()),
                    fn && Catch::Contains("'rewards'"));
  CHECK_THROWS_WITH(kl_penalized_rewards(b, kl.view(), s.view().flat(), m.view(), as_const(eos_bad.view().flat()), rw.view()),
                    fn && Catch::Contains("'has_eos'"));
  CHECK_THROWS_WITH(kl_penalized_rewards(b, kl.view(), s.view().flat(), m.view(), rw.view(), kl_penalized_rewards_options{-0.1}),
                    fn && Catch::Contains("'options.beta'"));
  CHECK_THROWS_WITH(kl_penalized_rewards(b, kl.view(), s.view().flat(), m.view(), rw.view(),
                                         kl_penalized_rewards_options{0.1, std::numeric_limits<double>::infinity()}),
                    fn && Catch::Contains("'options.score_clip'"));
  CHECK_THROWS_WITH(kl_penalized_rewards(b, kl.view(), s.view().flat(), m.view(), rw.view(),
                                         kl_penalized_rewards_options{0.1, 0, -1}),
                    fn && Catch::Contains("'options.missing_eos_penalty'"));
  CHECK_THROWS_WITH(kl_penalized_rewards(b, kl.view(), s.view().flat(), m.view(), rw.view(),
                                         kl_penalized_rewards_options{0.1, 0, 0, static_cast<score_placement>(9)}),
                    fn && Catch::Contains("'options.placement'"));
  CHECK_THROWS_WITH(kl_penalized_rewards(b, kl.view(), kl.view(), s.view().flat(), m.view(),
                                         backend_vector<B, const mask_type>{}, bad.view(), rw.view(),
                                         kl_estimator_options{}),
                    fn && Catch::Contains("'kl'"));
  CHECK_THROWS_WITH(kl_penalized_rewards(b, kl.view(), kl.view(), s_bad.view().flat(), m.view(),
                                         backend_vector<B, const mask_type>{}, rw.view(), rw.view(),
                                         kl_estimator_options{}),
                    fn && Catch::Contains("'scores'"));
  CHECK_THROWS_WITH(kl_penalized_rewards(b, kl.view(), bad.view(), s.view().flat(), m.view(),
                                         backend_vector<B, const mask_type>{}, rw.view(), rw.view(),
                                         kl_estimator_options{}),
                    fn && Catch::Contains("'ref_logp'"));
  CHECK_THROWS_WITH(kl_penalized_rewards(b, kl.view(), kl.view(), s.view().flat(), m.view(),
                                         backend_vector<B, const mask_type>{}, rw.view(), rw.view(),
                                         kl_estimator_options{kl_estimator::k3, -2, 20}),
                    fn && Catch::Contains("'options.clamp'"));
  // Opt-in finite check: scores always, kl at valid positions only.
  auto s_nan = to_backend(b, std::vector<T>{0, std::numeric_limits<T>::quiet_NaN(), 0});
  auto kl_pad_nan = to_backend(b, std::vector<T>{0, 0, 0, std::numeric_limits<T>::quiet_NaN()}, 1, 4);
  auto m_pad = to_backend(b, std::vector<mask_type>{1, 1, 1, 0}, 1, 4);
  auto s1 = allocate_filled<T>(b, 1, 1, T(0));
  auto rw1 = allocate<T>(b, 1, 4);
  set_finite_checks(true);
  CHECK_THROWS_WITH(kl_penalized_rewards(b, kl.view(), s_nan.view().flat(), m.view(), rw.view()),
                    fn && Catch::Contains("'scores'"));
  CHECK_NOTHROW(kl_penalized_rewards(b, kl_pad_nan.view(), s1.view().flat(), m_pad.view(), rw1.view()));
  set_finite_checks(false);
}
