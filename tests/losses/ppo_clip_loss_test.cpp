// PPO-clip loss (rlhf/losses/ppo_clip_loss.hpp): naive oracle of Schulman et al. 2017 eq. 7, hand-computed
// clip / dual-clip / clamp cases, finite-difference gradients, micro-batch invariance, errors.
#include "test_support.hpp"

#include "losses/aggregation_oracle.hpp"

#include <cmath>
#include <limits>

#include "rlhf/losses/ppo_clip_loss.hpp"

using namespace rlhf;
using namespace rlhf::test;

namespace {

struct ppo_oracle {
  ppo_clip_stats stats;
  std::vector<double> grad;
};

// Straight from the formula, one token at a time.
template <class T>
ppo_oracle naive_ppo(const std::vector<T>& lp, const std::vector<T>& old, const std::vector<T>& adv,
                     const std::vector<mask_type>& m, std::size_t rows, std::size_t cols, const ppo_clip_options& o,
                     const loss_aggregation& agg) {
  const auto w = naive_weights(m, rows, cols, agg);
  ppo_oracle out;
  out.grad.assign(rows * cols, 0.0);
  double n = 0;
  for (std::size_t r = 0; r < rows; ++r) {
    for (std::size_t c = 0; c < cols; ++c) {
      const std::size_t i = r * cols + c;
      if (!m[i]) continue;
      const double a = adv[i], raw = static_cast<double>(lp[i]) - static_cast<double>(old[i]);
      const bool clamped = o.log_ratio_clamp > 0 && std::abs(raw) > o.log_ratio_clamp;
      const double lr = clamped ? std::copysign(o.log_ratio_clamp, raw) : raw;
      const double rho = std::exp(lr);
      const double rho_c = std::min(std::max(rho, 1 - o.eps_low), 1 + o.eps_high);
      double loss = std::max(-a * rho, -a * rho_c);
      const bool clipped = -a * rho_c > -a * rho;
      double g = (clipped || clamped) ? 0.0 : -a * rho;
      bool dual = false;
      if (o.dual_clip > 0 && a < 0 && loss > -o.dual_clip * a) loss = -o.dual_clip * a, g = 0, dual = true;
      out.stats.loss += w[r] * loss;
      out.grad[i] = w[r] * g;
      n += 1;
      out.stats.clip_fraction += clipped;
      out.stats.dual_clip_fraction += dual;
      out.stats.approx_kl += 0.5 * raw * raw;
      out.stats.policy_kl += -raw;
      out.stats.mean_ratio += rho;
    }
  }
  out.stats.token_count = n;
  if (n > 0) {
    out.stats.clip_fraction /= n;
    out.stats.dual_clip_fraction /= n;
    out.stats.approx_kl /= n;
    out.stats.policy_kl /= n;
    out.stats.mean_ratio /= n;
  }
  return out;
}

template <class T>
void check_stats(const ppo_clip_stats& got, const ppo_clip_stats& want, double scale = 100) {
  CHECK(near<T>(got.loss, want.loss, scale));
  CHECK(got.clip_fraction == Approx(want.clip_fraction).margin(1e-12));
  CHECK(got.dual_clip_fraction == Approx(want.dual_clip_fraction).margin(1e-12));
  CHECK(near<T>(got.approx_kl, want.approx_kl, scale));
  CHECK(near<T>(got.policy_kl, want.policy_kl, scale));
  CHECK(near<T>(got.mean_ratio, want.mean_ratio, scale));
  CHECK(got.token_count == want.token_count);
}
}  // namespace

TEMPLATE_LIST_TEST_CASE("ppo_clip_loss: hand-computed ratios inside and outside the clip, A > 0 and A < 0",
                        "[losses][ppo]", all_configs) {
  using T = typename TestType::value;
  const auto b = TestType::make();
  // One row, 4 valid tokens (token mean: weight 1/4), eps = 0.2:
  //  t0: A = +1, rho = 1.5: -1.5 vs -1.2 -> clipped -1.2, grad 0
  //  t1: A = -1, rho = 1.5:  1.5 vs  1.2 -> unclipped 1.5, grad -A rho = 1.5
  //  t2: A = -2, rho = 0.5:  1.0 vs  1.6 -> clipped 1.6, grad 0
  //  t3: A = +2, rho = 0.5: -1.0 vs -1.6 -> unclipped -1.0, grad -1.0
  // loss = (-1.2 + 1.5 + 1.6 - 1.0) / 4 = 0.225; d_logp = [0, 1.5, 0, -1.0] / 4; clip fraction 2/4.
  const std::vector<double> lr{std::log(1.5), std::log(1.5), std::log(0.5), std::log(0.5)};
  std::vector<T> lp(4), old(4, T(-1));
  for (int i = 0; i < 4; ++i) lp[i] = static_cast<T>(-1 + lr[i]);
  auto blp = to_backend(b, lp, 1, 4), bold = to_backend(b, old, 1, 4);
  auto badv = to_backend(b, std::vector<T>{1, -1, -2, 2}, 1, 4);
  auto bm = to_backend(b, std::vector<mask_type>{1, 1, 1, 1}, 1, 4);
  auto d = allocate<T>(b, 1, 4);
  const ppo_clip_stats s = ppo_clip_loss(b, blp.view(), bold.view(), badv.view(), bm.view(), d.view());
  const double tol = std::is_same_v<T, float> ? 1e-6 : 1e-12;  // log-probs stored in T
  CHECK(s.loss == Approx(0.225).margin(tol));
  CHECK(s.clip_fraction == 0.5);
  CHECK(s.dual_clip_fraction == 0);
  CHECK(s.mean_ratio == Approx(1.0).margin(tol));  // (1.5 + 1.5 + .5 + .5) / 4
  // policy KL = mean(old - new) = -(2 log 1.5 + 2 log .5) / 4 = -log(0.75) / 2;
  // approx KL = mean(0.5 lr^2) = (log(1.5)^2 + log(0.5)^2) / 4.
  CHECK(s.policy_kl == Approx(-std::log(0.75) / 2).margin(tol));
  CHECK(s.approx_kl == Approx((std::log(1.5) * std::log(1.5) + std::log(0.5) * std::log(0.5)) / 4).margin(tol));
  CHECK(s.token_count == 4);
  CHECK_THAT(to_host(b, d.view()), close_to<T>(std::vector<double>{0, 0.375, 0, -0.25}, 1e-6, 1e-7));
}

TEMPLATE_LIST_TEST_CASE("ppo_clip_loss: dual clip and log-ratio clamp, hand-computed", "[losses][ppo]", all_configs) {
  using T = typename TestType::value;
  const auto b = TestType::make();
  // verl: c = 3. t0: A = -1, rho = 5: max(5, 1.2) = 5 > -cA = 3 -> 3, dual, grad 0.
  //              t1: A = -1, rho = 2: max(2, 1.2) = 2 < 3 -> 2, grad -A rho = 2.
  //              t2: A = +1, rho = 5: clipped -1.2 (dual clip only for A < 0), grad 0.
  // token mean over 3: loss = (3 + 2 - 1.2) / 3 = 3.8 / 3; grad [0, 2/3, 0].
  std::vector<T> lp{static_cast<T>(std::log(5.0)), static_cast<T>(std::log(2.0)), static_cast<T>(std::log(5.0))};
  auto blp = to_backend(b, lp, 1, 3);
  auto bold = allocate_filled<T>(b, 1, 3, T(0));
  auto badv = to_backend(b, std::vector<T>{-1, -1, 1}, 1, 3);
  auto bm = allocate_filled<mask_type>(b, 1, 3, mask_type(1));
  auto d = allocate<T>(b, 1, 3);
  const ppo_clip_stats s =
      ppo_clip_loss(b, blp.view(), bold.view(), badv.view(), bm.view(), d.view(), ppo_clip_options::verl());
  CHECK(s.loss == Approx(3.8 / 3).epsilon(1e-6));
  CHECK(s.dual_clip_fraction == Approx(1.0 / 3));
  CHECK(s.clip_fraction == Approx(1.0 / 3));  // t2 only: for t0 the unclipped term (5) is the larger
  CHECK_THAT(to_host(b, d.view()), close_to<T>(std::vector<double>{0, 2.0 / 3, 0}, 1e-6, 1e-7));

  // Log-ratio clamp: logp - old = 25 > 20, A = -1: rho = e^20, loss e^20 (no dual clip), gradient 0.
  auto blp2 = allocate_filled<T>(b, 1, 1, T(25));
  auto bold2 = allocate_filled<T>(b, 1, 1, T(0));
  auto badv2 = allocate_filled<T>(b, 1, 1, T(-1));
  auto bm2 = allocate_filled<mask_type>(b, 1, 1, mask_type(1));
  auto d2 = allocate<T>(b, 1, 1);
  const ppo_clip_stats s2 = ppo_clip_loss(b, blp2.view(), bold2.view(), badv2.view(), bm2.view(), d2.view());
  CHECK(s2.loss == Approx(std::exp(20.0)).epsilon(1e-12));
  CHECK(s2.mean_ratio == Approx(std::exp(20.0)).epsilon(1e-12));
  CHECK(s2.approx_kl == Approx(312.5));  // 0.5 * 25^2 on the raw log-ratio
  CHECK(to_host(b, d2.view()) == std::vector<T>{T(0)});
  // Without the clamp the gradient is -A rho = e^25.
  ppo_clip_loss(b, blp2.view(), bold2.view(), badv2.view(), bm2.view(), d2.view(), ppo_clip_options::trl0());
  CHECK(static_cast<double>(to_host(b, d2.view())[0]) == Approx(std::exp(25.0)).epsilon(1e-6));
}

TEMPLATE_LIST_TEST_CASE("ppo_clip_loss matches the naive oracle (presets x aggregation modes)", "[losses][ppo]",
                        all_configs) {
  using T = typename TestType::value;
  const auto b = TestType::make();
  auto g = rng(301);
  const std::size_t rows = 9, cols = 23;
  const ppo_clip_options presets[] = {ppo_clip_options::instructgpt(), ppo_clip_options::verl(),
                                      ppo_clip_options::orl(0.1, 0.28, 2.0), ppo_clip_options::trl1()};
  const loss_aggregation aggs[] = {loss_aggregation::token_mean(), loss_aggregation::seq_mean_token_mean(),
                                   loss_aggregation::seq_mean_token_sum_norm()};
  for (int trial = 0; trial < 2; ++trial) {
    const auto old = uniform<T>(g, rows * cols, -4, -0.1);
    auto lp = old;
    const auto noise = normal<double>(g, rows * cols, 0, 0.4);
    for (std::size_t i = 0; i < lp.size(); ++i) lp[i] = static_cast<T>(old[i] + noise[i]);
    const auto adv = normal<T>(g, rows * cols);
    const auto m = trial ? random_mask(g, rows * cols) : mask_from_lengths(random_lengths(g, rows, cols), cols);
    auto blp = to_backend(b, lp, rows, cols), bold = to_backend(b, old, rows, cols), badv = to_backend(b, adv, rows, cols);
    auto bm = to_backend(b, m, rows, cols);
    auto d = allocate<T>(b, rows, cols);
    for (const auto& o : presets) {
      for (const auto& agg : aggs) {
        const auto want = naive_ppo(lp, old, adv, m, rows, cols, o, agg);
        const ppo_clip_stats got = ppo_clip_loss(b, blp.view(), bold.view(), badv.view(), bm.view(), d.view(), o, agg);
        check_stats<T>(got, want.stats);
        CHECK_THAT(to_host(b, d.view()), close_to<T>(want.grad, 10 * tolerance<T>::rtol, tolerance<T>::atol));
        // Forward only: same loss, no gradient written.
        const ppo_clip_stats fwd =
            ppo_clip_loss(b, blp.view(), bold.view(), badv.view(), bm.view(), backend_matrix<decltype(b), T>{}, o, agg);
        CHECK(fwd.loss == got.loss);
      }
    }
    CHECK(naive_ppo(lp, old, adv, m, rows, cols, ppo_clip_options{}, loss_aggregation{}).stats.clip_fraction > 0);
  }
}

TEMPLATE_LIST_TEST_CASE("ppo_clip_loss matches the oracle on a batch large enough for parallel loops", "[losses][ppo]",
                        all_configs) {
  using T = typename TestType::value;
  const auto b = TestType::make();
  auto g = rng(304);
  const std::size_t rows = 64, cols = 600;  // 38400 elements: above the Eigen backend's parallel threshold
  const auto old = uniform<T>(g, rows * cols, -4, -0.1);
  auto lp = old;
  const auto noise = normal<double>(g, rows * cols, 0, 0.3);
  for (std::size_t i = 0; i < lp.size(); ++i) lp[i] = static_cast<T>(old[i] + noise[i]);
  const auto adv = normal<T>(g, rows * cols);
  const auto m = mask_from_lengths(random_lengths(g, rows, cols), cols);
  auto blp = to_backend(b, lp, rows, cols), bold = to_backend(b, old, rows, cols), badv = to_backend(b, adv, rows, cols);
  auto bm = to_backend(b, m, rows, cols);
  auto d = allocate<T>(b, rows, cols);
  for (const auto& agg : {loss_aggregation{}, loss_aggregation::seq_mean_token_mean()}) {
    const auto want = naive_ppo(lp, old, adv, m, rows, cols, ppo_clip_options::verl(), agg);
    const ppo_clip_stats got =
        ppo_clip_loss(b, blp.view(), bold.view(), badv.view(), bm.view(), d.view(), ppo_clip_options::verl(), agg);
    check_stats<T>(got, want.stats, 1e4);
    CHECK_THAT(to_host(b, d.view()), close_to<T>(want.grad, 10 * tolerance<T>::rtol, tolerance<T>::atol));
  }
}

TEMPLATE_LIST_TEST_CASE("ppo_clip_loss gradient matches finite differences", "[losses][ppo][gradient]", double_configs) {
  const auto b = TestType::make();
  auto g = rng(302);
  const std::size_t rows = 4, cols = 7;
  const auto old = uniform<double>(g, rows * cols, -3, -0.5);
  auto adv = normal<double>(g, rows * cols);
  const auto m = random_mask(g, rows * cols, 0.8);
  // Log-ratios drawn away from every kink: |rho - (1 +- eps)| and |L_clip + cA| > 1e-3.
  std::vector<double> lp(rows * cols);
  const double picks[] = {-0.6, -0.35, -0.1, 0.05, 0.12, 0.3, 0.7, 1.6};
  for (std::size_t i = 0; i < lp.size(); ++i) lp[i] = old[i] + picks[i % 8];
  for (auto& a : adv)
    if (std::abs(a) < 0.05) a = 0.3;
  auto bold = to_backend(b, old, rows, cols), badv = to_backend(b, adv, rows, cols);
  auto bm = to_backend(b, m, rows, cols);
  for (const auto& o : {ppo_clip_options{}, ppo_clip_options::verl(), ppo_clip_options::orl(0.15, 0.3, 4.0)}) {
    for (const auto& agg : {loss_aggregation{}, loss_aggregation::seq_mean_token_mean()}) {
      auto blp = to_backend(b, lp, rows, cols);
      auto d = allocate<double>(b, rows, cols);
      ppo_clip_loss(b, blp.view(), bold.view(), badv.view(), bm.view(), d.view(), o, agg);
      const auto f = [&](const std::vector<double>& x) {
        auto bx = to_backend(b, x, rows, cols);
        return ppo_clip_loss(b, bx.view(), bold.view(), badv.view(), bm.view(), backend_matrix<decltype(b), double>{},
                             o, agg)
            .loss;
      };
      CHECK_THAT(to_host(b, d.view()), close_to<double>(numeric_gradient(f, lp), fd_rtol, fd_atol));
    }
  }
}

TEMPLATE_LIST_TEST_CASE("ppo_clip_loss with a global token count is micro-batch invariant", "[losses][ppo]",
                        all_configs) {
  using T = typename TestType::value;
  const auto b = TestType::make();
  auto g = rng(303);
  const std::size_t rows = 6, cols = 30;
  const auto old = uniform<T>(g, rows * cols, -3, -0.5);
  auto lp = old;
  for (auto& x : lp) x = static_cast<T>(x + 0.2);
  const auto adv = normal<T>(g, rows * cols);
  const auto m = mask_from_lengths({3, 30, 1, 25, 28, 30}, cols);
  auto blp = to_backend(b, lp, rows, cols), bold = to_backend(b, old, rows, cols), badv = to_backend(b, adv, rows, cols);
  auto bm = to_backend(b, m, rows, cols);
  auto d_full = allocate<T>(b, rows, cols), d_mb = allocate<T>(b, rows, cols);
  const double full = ppo_clip_loss(b, blp.view(), bold.view(), badv.view(), bm.view(), d_full.view()).loss;
  const auto agg = loss_aggregation::token_mean_global(3 + 30 + 1 + 25 + 28 + 30);
  double sum = 0;
  for (auto [first, count] : {std::pair<std::size_t, std::size_t>{0, 2}, {2, 4}}) {
    sum += ppo_clip_loss(b, blp.view().row_block(first, count), bold.view().row_block(first, count),
                         badv.view().row_block(first, count), bm.view().row_block(first, count),
                         d_mb.view().row_block(first, count), ppo_clip_options{}, agg)
               .loss;
  }
  CHECK(near<T>(sum, full, 100));
  CHECK_THAT(to_host(b, d_mb.view()), close_to<T>(to_host(b, d_full.view())));
}

TEMPLATE_LIST_TEST_CASE("ppo_clip_loss ignores masked positions and handles an empty mask", "[losses][ppo]",
                        all_configs) {
  using T = typename TestType::value;
  const auto b = TestType::make();
  const T nan = std::numeric_limits<T>::quiet_NaN();
  auto blp = to_backend(b, std::vector<T>{nan, -1, nan, nan}, 2, 2);
  auto bold = to_backend(b, std::vector<T>{nan, -1, 3, nan}, 2, 2);
  auto badv = to_backend(b, std::vector<T>{nan, 2, nan, 1e30f}, 2, 2);
  auto bm = to_backend(b, std::vector<mask_type>{0, 1, 0, 0}, 2, 2);
  auto d = allocate_filled<T>(b, 2, 2, T(7));
  const ppo_clip_stats s = ppo_clip_loss(b, blp.view(), bold.view(), badv.view(), bm.view(), d.view());
  CHECK(s.loss == -2.0);  // rho = 1, -A rho
  CHECK(to_host(b, d.view()) == std::vector<T>{0, -2, 0, 0});
  auto none = allocate_filled<mask_type>(b, 2, 2, mask_type(0));
  const ppo_clip_stats e = ppo_clip_loss(b, blp.view(), bold.view(), badv.view(), none.view(), d.view());
  CHECK(e.loss == 0);
  CHECK(e.clip_fraction == 0);
  CHECK(e.token_count == 0);
  CHECK(to_host(b, d.view()) == std::vector<T>{0, 0, 0, 0});
}

TEMPLATE_LIST_TEST_CASE("ppo_clip_loss rejects bad arguments with named errors", "[losses][ppo][errors]", all_configs) {
  using T = typename TestType::value;
  const auto b = TestType::make();
  auto x = allocate_filled<T>(b, 2, 3, T(-1));
  auto bad = allocate_filled<T>(b, 2, 4, T(-1));
  auto m = allocate_filled<mask_type>(b, 2, 3, mask_type(1));
  auto d = allocate<T>(b, 2, 3);
  CHECK_THROWS_WITH(ppo_clip_loss(b, x.view(), bad.view(), x.view(), m.view(), d.view()),
                    Catch::Contains("rlhf::ppo_clip_loss") && Catch::Contains("'old_logp'") &&
                        Catch::Contains("[2, 3]") && Catch::Contains("[2, 4]"));
  CHECK_THROWS_WITH(ppo_clip_loss(b, x.view(), x.view(), bad.view(), m.view(), d.view()),
                    Catch::Contains("rlhf::ppo_clip_loss") && Catch::Contains("'advantages'"));
  CHECK_THROWS_WITH(ppo_clip_loss(b, x.view(), x.view(), x.view(), m.view(), bad.view()),
                    Catch::Contains("rlhf::ppo_clip_loss") && Catch::Contains("'d_logp'"));
  CHECK_THROWS_WITH(ppo_clip_loss(b, x.view(), x.view(), x.view(), m.view(), d.view(), ppo_clip_options{1.0, 0.2, 0, 20}),
                    Catch::Contains("rlhf::ppo_clip_loss") && Catch::Contains("'options.eps_low'"));
  CHECK_THROWS_WITH(ppo_clip_loss(b, x.view(), x.view(), x.view(), m.view(), d.view(), ppo_clip_options{0.2, -0.1, 0, 20}),
                    Catch::Contains("'options.eps_high'"));
  CHECK_THROWS_WITH(ppo_clip_loss(b, x.view(), x.view(), x.view(), m.view(), d.view(), ppo_clip_options{0.2, 0.2, 0.5, 20}),
                    Catch::Contains("'options.dual_clip'"));
  CHECK_THROWS_WITH(ppo_clip_loss(b, x.view(), x.view(), x.view(), m.view(), d.view(), ppo_clip_options{0.2, 0.2, 0, -1}),
                    Catch::Contains("'options.log_ratio_clamp'"));
  CHECK_THROWS_WITH(ppo_clip_loss(b, x.view(), x.view(), x.view(), m.view(), d.view(), ppo_clip_options{},
                                  loss_aggregation{aggregation_mode::token_mean, -2, 0, 0}),
                    Catch::Contains("'aggregation.global_token_count'"));
  auto nan = allocate_filled<T>(b, 2, 3, std::numeric_limits<T>::quiet_NaN());
  set_finite_checks(true);
  CHECK_THROWS_AS(ppo_clip_loss(b, x.view(), x.view(), nan.view(), m.view(), d.view()), rlhf::non_finite_error);
  set_finite_checks(false);
}
