// Eigen backend specifics: results are independent of the thread count, and it is a complete backend.
#include "test_support.hpp"

#if RLHF_TEST_HAS_EIGEN
#include "rlhf/backends/eigen.hpp"
#include "rlhf/losses/ppo_clip_loss.hpp"
#include "rlhf/losses/ranking_loss.hpp"

#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

using namespace rlhf;
using namespace rlhf::test;

TEMPLATE_TEST_CASE("eigen reductions give identical bits on 1 and 2 threads", "[backends][eigen]", float, double) {
  using T = TestType;
  auto g = rng(11);
  const std::size_t n = 300001;
  const auto x = uniform<T>(g, n);
  const eigen_backend one(1), two(2);
  auto bx = to_backend(one, x);
  const auto sum = [&](const eigen_backend& b) {
    return b.transform_reduce(T(0), [](T a, T c) { return a + c; }, [](T v) { return v * v; }, bx.view().flat());
  };
  CHECK(sum(one) == sum(two));
  CHECK(one.threads() == 1);
}

TEMPLATE_TEST_CASE("eigen_select and eigen_keep_if pick whole values, bit for bit", "[backends][eigen]", float,
                   double) {
  // The kernels' selects by bit masks: the chosen arm's bits exactly (NaN, -0 and infinities included), the
  // other arm never leaking in, and eigen_keep_if giving +0 when not kept.
  using T = TestType;
  using backends::detail::eigen_keep_if;
  using backends::detail::eigen_select;
  const T nan = std::numeric_limits<T>::quiet_NaN(), inf = std::numeric_limits<T>::infinity();
  const std::vector<T> values = {T(1.5), T(-0.0), T(0.0), nan, inf, -inf, std::numeric_limits<T>::denorm_min()};
  const auto bits = [](T x) { return std::bit_cast<backends::detail::eigen_bits<T>>(x); };
  for (const T a : values)
    for (const T b : values) {
      CHECK(bits(eigen_select(true, a, b)) == bits(a));
      CHECK(bits(eigen_select(false, a, b)) == bits(b));
    }
  for (const T a : values) {
    CHECK(bits(eigen_keep_if(a, true)) == bits(a));
    CHECK(bits(eigen_keep_if(a, false)) == bits(T(0)));
  }
}

TEST_CASE("eigen backend satisfies every concept", "[backends][eigen]") {
  STATIC_REQUIRE(complete_backend<eigen_backend>);
  STATIC_REQUIRE(complete_backend<generic_only<eigen_backend>>);
}
TEST_CASE("eigen for_each_index splits a loop by its work hint, not by its index count", "[backends][eigen]") {
  // 64 indices: far below the parallel threshold as elements, far above it at 2^15 work each. Which
  // thread ran each index tells whether the loop was split; every index runs once either way.
  const eigen_backend two(2);
  REQUIRE(two.parallel_threshold == (std::size_t(1) << 17));
  const std::size_t n = 64;
  const auto threads_used = [&](std::size_t work) {
    std::vector<int> thread(n, -1);
    int* t = thread.data();
    const auto record = [t](std::size_t i) {
#if defined(_OPENMP)
      t[i] = omp_get_thread_num();
#else
      t[i] = 0;
#endif
    };
    if (work == 0)
      two.for_each_index(n, record);
    else
      two.for_each_index(n, record, work);
    for (int v : thread) REQUIRE(v >= 0);
    return thread;
  };
  CHECK(threads_used(0) == std::vector<int>(n, 0));  // the two-argument form counts indices
  CHECK(threads_used(1) == std::vector<int>(n, 0));
  CHECK(threads_used(std::numeric_limits<std::size_t>::max()).front() == 0);  // n * work saturates
#if defined(_OPENMP)
  const auto split = threads_used(std::size_t(1) << 15);
  CHECK(split.front() == 0);
  CHECK(split.back() == 1);  // static schedule: the second half on the second thread
  CHECK(threads_used(std::numeric_limits<std::size_t>::max()).back() == 1);
#endif
}

// ---------------------------------------------------------------------------------------------------
// The fused PPO-clip kernel (backends/eigen/ppo_clip_loss.hpp) against the generic path, which computes
// every term in double: random masked inputs covering the unclipped, clipped, dual-clip and clamped
// regions, every aggregation mode, forward and backward, float and double.

namespace {

// Log-ratios whose region is decided by rounding alone (the float kernel and the double generic path
// could disagree on it) are moved away from every boundary: the clip bounds, the dual-clip constant and
// the clamp.
double away_from_boundaries(double raw, const ppo_clip_options& o) {
  std::vector<double> edges = {std::log(1 - o.eps_low), std::log1p(o.eps_high)};
  if (o.dual_clip > 0) edges.push_back(std::log(o.dual_clip));
  if (o.log_ratio_clamp > 0) edges.push_back(o.log_ratio_clamp), edges.push_back(-o.log_ratio_clamp);
  for (int pass = 0; pass < 3; ++pass)
    for (double e : edges)
      if (std::abs(raw - e) < 1e-3) raw = e + 2e-3;
  return raw;
}

struct ppo_case {
  std::vector<double> logp, old_logp, adv;
  std::vector<mask_type> mask;
};

ppo_case make_ppo_case(std::mt19937_64& g, std::size_t rows, std::size_t cols, const ppo_clip_options& o) {
  ppo_case c;
  const std::size_t n = rows * cols;
  c.old_logp = uniform<double>(g, n, -4, -0.1);
  const auto raw = normal<double>(g, n, 0.0, 0.8);  // ratios from ~0.1 to ~10: every region is hit
  c.adv = normal<double>(g, n, 0.0, 1.0);
  c.logp.resize(n);
  for (std::size_t i = 0; i < n; ++i) c.logp[i] = c.old_logp[i] + away_from_boundaries(raw[i], o);
  // Ragged lengths and interior holes; one fully masked row.
  const auto lengths = random_lengths(g, rows, cols, 1);
  c.mask = mask_from_lengths(lengths, cols);
  const auto holes = random_mask(g, n, 0.8);
  for (std::size_t i = 0; i < n; ++i) c.mask[i] = static_cast<mask_type>(c.mask[i] & holes[i]);
  for (std::size_t j = 0; j < cols; ++j) c.mask[(rows / 2) * cols + j] = 0;
  // Masked positions may hold anything: NaN must not leak into the loss or the gradient.
  for (std::size_t i = 0; i < n; i += 7)
    if (!c.mask[i]) c.logp[i] = std::numeric_limits<double>::quiet_NaN();
  return c;
}

template <class T>
struct ppo_run {
  ppo_clip_stats stats;
  std::vector<T> grad;
};

template <class B, class T>
ppo_run<T> run_ppo(const B& b, const ppo_case& c, std::size_t rows, std::size_t cols, const ppo_clip_options& o,
                   const loss_aggregation& agg, bool want_grad) {
  auto lp = to_backend(b, cast<T>(c.logp), rows, cols);
  auto old = to_backend(b, cast<T>(c.old_logp), rows, cols);
  auto adv = to_backend(b, cast<T>(c.adv), rows, cols);
  auto m = to_backend(b, c.mask, rows, cols);
  auto d = allocate<T>(b, rows, cols);
  ppo_run<T> out;
  out.stats = ppo_clip_loss(b, lp.view(), old.view(), adv.view(), m.view(),
                            want_grad ? d.view() : backend_matrix<B, T>{}, o, agg);
  if (want_grad) out.grad = std::vector<T>(d.data(), d.data() + rows * cols);
  return out;
}

template <class T>
void check_same_stats(const ppo_clip_stats& got, const ppo_clip_stats& want) {
  // float: per-element terms in float (~1e-7 relative), sums in double.
  const double rtol = std::is_same_v<T, float> ? 1e-6 : 1e-12;
  const double atol = std::is_same_v<T, float> ? 1e-7 : 1e-14;
  const auto close = [&](double a, double w) { return std::abs(a - w) <= atol + rtol * std::abs(w); };
  CHECK(close(got.loss, want.loss));
  CHECK(close(got.approx_kl, want.approx_kl));
  CHECK(close(got.policy_kl, want.policy_kl));
  CHECK(close(got.mean_ratio, want.mean_ratio));
  CHECK(got.clip_fraction == want.clip_fraction);
  CHECK(got.dual_clip_fraction == want.dual_clip_fraction);
  CHECK(got.token_count == want.token_count);
}

}  // namespace

TEMPLATE_TEST_CASE("eigen ppo_clip_loss kernel matches the generic path", "[backends][eigen][ppo]", float, double) {
  using T = TestType;
  auto g = rng(21);
  const std::size_t rows = 9, cols = 1100;  // two full chunks and a partial one per row
  ppo_clip_options clamp_bites = ppo_clip_options::verl();
  clamp_bites.log_ratio_clamp = 1.0;  // ~20 % of the log-ratios are clamped
  clamp_bites.dual_clip = 2.0;        // below e^1, so clamped ratios can still be dual-clipped
  const std::vector<ppo_clip_options> presets = {ppo_clip_options::instructgpt(), ppo_clip_options::verl(),
                                                 ppo_clip_options::zgl(), ppo_clip_options::orl(0.2, 0.28, 3.0),
                                                 clamp_bites};
  const std::vector<loss_aggregation> modes = {
      loss_aggregation::token_mean(), loss_aggregation::token_mean_global(12345.0),
      loss_aggregation::seq_mean_token_mean(), loss_aggregation::seq_mean_token_sum(),
      loss_aggregation::seq_mean_token_sum_norm(), loss_aggregation::seq_mean_token_sum_norm(4096)};
  const eigen_backend fused(1);
  const generic_only<eigen_backend> generic{};
  for (const auto& o : presets) {
    const ppo_case c = make_ppo_case(g, rows, cols, o);
    for (const auto& agg : modes) {
      const auto want = run_ppo<decltype(generic), T>(generic, c, rows, cols, o, agg, true);
      const auto got = run_ppo<eigen_backend, T>(fused, c, rows, cols, o, agg, true);
      check_same_stats<T>(got.stats, want.stats);
      // float: w_r * (-A rho) with rho from a float exp: a few ulp.
      CHECK_THAT(got.grad, close_to<T>(want.grad, std::is_same_v<T, float> ? 2e-6 : 1e-12, 1e-30));
      const auto fwd = run_ppo<eigen_backend, T>(fused, c, rows, cols, o, agg, false);
      CHECK(fwd.stats.loss == got.stats.loss);
      CHECK(fwd.stats.clip_fraction == got.stats.clip_fraction);
    }
    // The inputs really cover every region.
    const auto s = run_ppo<eigen_backend, T>(fused, c, rows, cols, o, {}, false).stats;
    CHECK(s.clip_fraction > 0.1);
    if (o.dual_clip > 0) CHECK(s.dual_clip_fraction > 0.005);
  }
}

TEMPLATE_TEST_CASE("eigen ppo_clip_loss kernel: gradient 0 where clipped, dual-clipped, clamped or masked",
                   "[backends][eigen][ppo]", float, double) {
  using T = TestType;
  // One row, token_mean over 5 valid tokens (w = 1/5); eps 0.2, dual clip c = 2, clamp 1.
  //   t0: rho = e^0.1 = 1.105171, A = 1: unclipped, loss -1.105171, grad -1.105171 / 5 = -0.221034
  //   t1: rho = e^0.5 = 1.648721, A = 1: clipped (-1.2 > -1.6487), loss -1.2, grad 0
  //   t2: log-ratio 1.5 clamped to 1, rho = 2.718282, A = -1: 2.718 > c|A| = 2: dual, loss 2, grad 0
  //   t3: rho = e^0.9 = 2.459603, A = -2: 4.919 > c|A| = 4: dual, loss 4, grad 0
  //   t4: masked
  //   t5: rho = e^-0.9 = 0.406570, A = -4: l1 = 1.626, l2 = 4 * 0.8 = 3.2: clipped, 3.2 < 8: loss 3.2
  // loss = (-1.105171 - 1.2 + 2 + 4 + 3.2) / 5 = 1.378966
  const std::vector<double> raw = {0.1, 0.5, 1.5, 0.9, 1.2, -0.9};
  const std::vector<double> adv = {1, 1, -1, -2, -0.5, -4};
  const std::vector<mask_type> mask = {1, 1, 1, 1, 0, 1};
  std::vector<double> old(6, -1.0), lp(6);
  for (std::size_t i = 0; i < 6; ++i) lp[i] = old[i] + raw[i];
  ppo_clip_options o{0.2, 0.2, 2.0, 1.0};
  const eigen_backend b(1);
  auto blp = to_backend(b, cast<T>(lp), 1, 6), bold = to_backend(b, cast<T>(old), 1, 6);
  auto badv = to_backend(b, cast<T>(adv), 1, 6);
  auto bm = to_backend(b, mask, 1, 6);
  auto d = allocate<T>(b, 1, 6);
  const auto s = ppo_clip_loss(b, blp.view(), bold.view(), badv.view(), bm.view(), d.view(), o);
  const std::vector<T> grad(d.data(), d.data() + 6);
  CHECK_THAT(grad, close_to<T>(std::vector<double>{-std::exp(0.1) / 5, 0, 0, 0, 0, 0}));
  CHECK(near<T>(s.loss, (-std::exp(0.1) - 1.2 + 2 + 4 + 3.2) / 5));
  CHECK(std::abs(s.loss - 1.378966) < 1e-6);
  CHECK(s.clip_fraction == 2.0 / 5);       // t1 and t5
  CHECK(s.dual_clip_fraction == 2.0 / 5);  // t2 and t3
  CHECK(s.token_count == 5);
}

TEST_CASE("eigen ppo_clip_loss kernel: identical bits on 1 and 2 threads", "[backends][eigen][ppo]") {
  auto g = rng(22);
  const std::size_t rows = 64, cols = 700;  // parallel: eigen_backend(2, 1) splits any work
  const auto o = ppo_clip_options::verl();
  const ppo_case c = make_ppo_case(g, rows, cols, o);
  const auto one = run_ppo<eigen_backend, float>(eigen_backend(1), c, rows, cols, o, {}, true);
  const auto two = run_ppo<eigen_backend, float>(eigen_backend(2, 1), c, rows, cols, o, {}, true);
  CHECK(one.stats.loss == two.stats.loss);
  CHECK(one.stats.approx_kl == two.stats.approx_kl);
  CHECK(one.grad == two.grad);
}

// ---------------------------------------------------------------------------------------------------
// The ranking-loss kernel (backends/eigen/ranking_loss.hpp) against the generic path: ragged K, ties,
// NaN beyond the counts, margins, both centering forms, both normalizations, forward and backward.

namespace {

struct ranking_case {
  std::vector<double> rewards;
  std::vector<std::int32_t> ranks, counts;
};

ranking_case make_ranking_case(std::mt19937_64& g, std::size_t prompts, std::size_t kmax, double scale) {
  ranking_case c;
  c.rewards = normal<double>(g, prompts * kmax, 0.0, scale);
  c.ranks.assign(prompts * kmax, 0);
  c.counts.assign(prompts, 0);
  std::uniform_int_distribution<std::int32_t> kd(2, static_cast<std::int32_t>(kmax));
  for (std::size_t p = 0; p < prompts; ++p) {
    const std::int32_t k = p == 0 ? static_cast<std::int32_t>(kmax) : kd(g);  // prompt 0 uses every column
    c.counts[p] = k;
    std::uniform_int_distribution<std::int32_t> rd(0, k - 1);  // repeats make ties
    for (std::size_t i = 0; i < kmax; ++i) {
      if (i < static_cast<std::size_t>(k)) c.ranks[p * kmax + i] = rd(g);
      else c.ranks[p * kmax + i] = -7, c.rewards[p * kmax + i] = std::numeric_limits<double>::quiet_NaN();
    }
  }
  return c;
}

template <class T, class B>
std::pair<ranking_loss_stats, std::vector<T>> run_ranking(const B& b, const ranking_case& c, std::size_t prompts,
                                                          std::size_t kmax, const ranking_loss_options& o,
                                                          bool want_grad) {
  auto r = to_backend(b, cast<T>(c.rewards), prompts, kmax);
  auto rk = to_backend(b, c.ranks, prompts, kmax);
  auto n = to_backend(b, c.counts);
  auto d = allocate<T>(b, prompts, kmax);
  const auto s = ranking_loss<B, T>(b, r.view(), rk.view(), n.view().flat(),
                                    want_grad ? d.view() : backend_matrix<B, T>{}, o);
  std::vector<T> grad;
  if (want_grad) grad.assign(d.data(), d.data() + prompts * kmax);
  return {s, grad};
}

}  // namespace

TEMPLATE_TEST_CASE("eigen ranking_loss kernel matches the generic path", "[backends][eigen][ranking]", float, double) {
  using T = TestType;
  auto g = rng(23);
  const std::vector<ranking_loss_options> presets = {
      ranking_loss_options::instructgpt(), ranking_loss_options::trl(0.3, 0.01), ranking_loss_options::orl(0.5),
      ranking_loss_options::nemo(),
      ranking_loss_options{0.1, 0.05, centering_form::squared_rewards, pair_normalization::compared_pairs}};
  const eigen_backend fused(1);
  const generic_only<eigen_backend> generic{};
  // (prompts, K_max, reward scale): small K, the benchmark's K = 9, many pairs, and gaps of +-100
  // (softplus far in both tails).
  const std::vector<std::tuple<std::size_t, std::size_t, double>> shapes = {
      {13, 4, 1.0}, {17, 9, 1.0}, {5, 40, 2.0}, {11, 6, 100.0}};
  for (const auto& [prompts, kmax, scale] : shapes) {
    const ranking_case c = make_ranking_case(g, prompts, kmax, scale);
    for (const auto& o : presets) {
      const auto want = run_ranking<T>(generic, c, prompts, kmax, o, true);
      const auto got = run_ranking<T>(fused, c, prompts, kmax, o, true);
      CHECK(near<T>(got.first.loss, want.first.loss));
      CHECK(near<T>(got.first.pair_loss, want.first.pair_loss));
      CHECK(near<T>(got.first.center_loss, want.first.center_loss));
      CHECK(near<T>(got.first.mean_margin, want.first.mean_margin));
      CHECK(got.first.accuracy == want.first.accuracy);
      CHECK(got.first.compared_pairs == want.first.compared_pairs);
      CHECK(std::isfinite(got.first.loss));
      CHECK_THAT(got.second, close_to<T>(want.second));
      const auto fwd = run_ranking<T>(fused, c, prompts, kmax, o, false);
      CHECK(fwd.first.loss == got.first.loss);
    }
  }
}

TEST_CASE("eigen ranking_loss kernel: hand-computed K = 3 and identical bits on 1 and 2 threads",
          "[backends][eigen][ranking]") {
  // One prompt, rewards (1, 0, 0.5), ranks (0, 2, 1): pairs (0>1) gap 1, (0>2) gap 0.5, (2>1) gap 0.5.
  // loss = [softplus(-1) + 2 softplus(-0.5)] / 3 = [0.3132617 + 2 * 0.4740770] / 3 = 0.4204719
  // d r0 = -(sigma(-1) + sigma(-0.5)) / 3 = -(0.2689414 + 0.3775407) / 3 = -0.2154940
  // d r1 = (sigma(-1) + sigma(-0.5)) / 3 = 0.2154940, d r2 = (sigma(-0.5) - sigma(-0.5)) / 3 = 0
  const eigen_backend b(1);
  auto r = to_backend(b, std::vector<double>{1.0, 0.0, 0.5}, 1, 3);
  auto rk = to_backend(b, std::vector<std::int32_t>{0, 2, 1}, 1, 3);
  auto n = to_backend(b, std::vector<std::int32_t>{3});
  auto d = allocate<double>(b, 1, 3);
  const auto s = ranking_loss<eigen_backend, double>(b, r.view(), rk.view(), n.view().flat(), d.view());
  const auto sp = [](double x) { return std::log1p(std::exp(-x)); };
  const auto sg = [](double x) { return 1.0 / (1.0 + std::exp(x)); };
  CHECK(near<double>(s.loss, (sp(1.0) + 2 * sp(0.5)) / 3));
  CHECK(std::abs(s.loss - 0.4204719) < 1e-7);
  const std::vector<double> grad(d.data(), d.data() + 3);
  CHECK_THAT(grad, close_to<double>(std::vector<double>{-(sg(1) + sg(0.5)) / 3, (sg(1) + sg(0.5)) / 3, 0.0}));

  auto g = rng(24);
  const std::size_t prompts = 1000, kmax = 9;  // P * K^2 above the parallel threshold
  const ranking_case c = make_ranking_case(g, prompts, kmax, 1.0);
  const auto one = run_ranking<float>(eigen_backend(1), c, prompts, kmax, ranking_loss_options::trl(0.1, 0.01), true);
  const auto two = run_ranking<float>(eigen_backend(2, 1), c, prompts, kmax, ranking_loss_options::trl(0.1, 0.01), true);
  CHECK(one.first.loss == two.first.loss);
  CHECK(one.second == two.second);
}

TEST_CASE("eigen ranking_loss kernel: a prompt's result does not depend on its lane or block",
          "[backends][eigen][ranking]") {
  // The kernel runs 8 prompts per block, one per SIMD lane. Prompt 0 alone, then copied to every position of a
  // 19-prompt batch (all lanes, three blocks, the last one partial) beside random prompts: the same loss
  // terms and gradient bits wherever it sits.
  auto g = rng(25);
  const std::size_t kmax = 7, prompts = 19;
  const ranking_case base = make_ranking_case(g, prompts, kmax, 3.0);
  const ranking_loss_options o = ranking_loss_options::trl(0.2, 0.0);
  ranking_case alone;
  alone.rewards.assign(base.rewards.begin(), base.rewards.begin() + kmax);
  alone.ranks.assign(base.ranks.begin(), base.ranks.begin() + kmax);
  alone.counts = {base.counts[0]};
  const eigen_backend b(1);
  const auto want = run_ranking<double>(b, alone, 1, kmax, o, true);
  for (std::size_t at = 0; at < prompts; ++at) {
    ranking_case c = base;
    std::copy(alone.rewards.begin(), alone.rewards.end(), c.rewards.begin() + at * kmax);
    std::copy(alone.ranks.begin(), alone.ranks.end(), c.ranks.begin() + at * kmax);
    c.counts[at] = alone.counts[0];
    const auto got = run_ranking<double>(b, c, prompts, kmax, o, true);
    INFO("position " << at);
    // The gradient is of the mean over prompts, P times smaller in the batch: scaled back, equal up to the
    // rounding of that scaling.
    for (std::size_t i = 0; i < kmax; ++i) {
      const double scaled = got.second[at * kmax + i] * static_cast<double>(prompts);
      CHECK(scaled == Approx(want.second[i]).epsilon(1e-15).margin(1e-300));
    }
    // The prompt's accuracy statistics are exact counts.
    ranking_case other = c;
    other.counts[at] = 2, other.ranks[at * kmax] = 0, other.ranks[at * kmax + 1] = 0;  // one tie: no compared pair
    const auto without = run_ranking<double>(b, other, prompts, kmax, o, false);
    CHECK(got.first.compared_pairs - without.first.compared_pairs == want.first.compared_pairs);
  }
}
#endif

#if RLHF_TEST_HAS_EIGEN
// ---------------------------------------------------------------------------------------------------
// The KL-penalized rewards kernel (backends/eigen/kl_penalized_rewards.hpp) and the masked-moments kernel
// (backends/eigen/whitening.hpp) against the generic path: every placement, NaN at masked positions, empty
// rows, clipped and penalized scores; identical bits on 1 and 2 threads.
#include "rlhf/advantages/kl_penalized_rewards.hpp"
#include "rlhf/ops/whitening.hpp"

TEMPLATE_TEST_CASE("eigen kl_penalized_rewards kernel matches the generic path", "[backends][eigen][rewards]", float,
                   double) {
  using T = TestType;
  auto g = rng(31);
  for (auto [rows, cols] : {std::pair<std::size_t, std::size_t>{1, 1}, {7, 13}, {64, 512}, {3, 1000}}) {
    auto kl = normal<T>(g, rows * cols, 0.0, 0.5);
    auto mask = mask_from_lengths(random_lengths(g, rows, cols, 0), cols);  // some rows empty
    const auto holes = random_mask(g, rows * cols, 0.8);
    for (std::size_t i = 0; i < kl.size(); ++i) {
      mask[i] = static_cast<mask_type>(mask[i] & holes[i]);
      if (!mask[i]) kl[i] = std::numeric_limits<T>::quiet_NaN();
    }
    const auto scores = normal<T>(g, rows, 0.0, 3.0);
    auto eos = random_mask(g, rows, 0.7);
    for (int placement = 0; placement < 3; ++placement) {
      kl_penalized_rewards_options o;
      o.beta = 0.05;
      o.score_clip = 2.0;
      o.missing_eos_penalty = 0.5;
      o.placement = static_cast<score_placement>(placement);
      const auto run = [&](const auto& b) {
        auto bk = to_backend(b, kl, rows, cols);
        auto bs = to_backend(b, scores);
        auto bm = to_backend(b, mask, rows, cols);
        auto be = to_backend(b, eos);
        auto out = allocate<T>(b, rows, cols);
        const auto st = kl_penalized_rewards<std::decay_t<decltype(b)>, T>(b, bk.view(), bs.view().flat(), bm.view(),
                                                                          be.view().flat(), out.view(), o);
        return std::pair{st, to_host(b, out.view())};
      };
      const auto [fast, fast_r] = run(eigen_backend(1));
      const auto [two, two_r] = run(eigen_backend(2, 1));
      const auto [gen, gen_r] = run(generic_only<eigen_backend>{});
      INFO("rows " << rows << " cols " << cols << " placement " << placement);
      CHECK_THAT(fast_r, close_to<T>(gen_r));
      CHECK(fast_r == two_r);
      // Masked positions without the score hold +0, as in the generic path (the kernel masks by bits after the
      // multiply by -beta, which would give -0).
      std::size_t negative_zeros = 0;
      for (std::size_t i = 0; i < fast_r.size(); ++i) negative_zeros += fast_r[i] == T(0) && std::signbit(fast_r[i]);
      CHECK(negative_zeros == 0);
      CHECK(fast.valid_tokens == gen.valid_tokens);
      CHECK(fast.scored_rows == gen.scored_rows);
      CHECK(fast.mean_kl == Approx(gen.mean_kl).epsilon(1e-12).margin(1e-15));
      CHECK(fast.mean_kl_sum == Approx(gen.mean_kl_sum).epsilon(1e-12).margin(1e-15));
      CHECK(fast.mean_score == Approx(gen.mean_score).epsilon(1e-12).margin(1e-15));
      CHECK(fast.mean_kl == two.mean_kl);
    }
  }
}

TEMPLATE_TEST_CASE("eigen masked-moments kernel matches the generic path", "[backends][eigen][whitening]", float, double) {
  using T = TestType;
  auto g = rng(32);
  for (auto [rows, cols] : {std::pair<std::size_t, std::size_t>{1, 1}, {5, 17}, {64, 512}, {3, 5000}}) {
    auto x = normal<T>(g, rows * cols, 1000.0, 2.0);  // a large mean: the corrected two-pass keeps m2 exact
    const auto mask = random_mask(g, rows * cols, 0.7);
    for (std::size_t i = 0; i < x.size(); ++i)
      if (!mask[i]) x[i] = std::numeric_limits<T>::quiet_NaN();
    const auto run = [&](const auto& b) {
      auto bx = to_backend(b, x, rows, cols);
      auto bm = to_backend(b, mask, rows, cols);
      auto out = allocate<T>(b, rows, cols);
      const masked_moments m = whiten(b, bx.view(), bm.view(), out.view());
      return std::pair{m, to_host(b, out.view())};
    };
    const auto [fast, fast_w] = run(eigen_backend(1));
    const auto [two, two_w] = run(eigen_backend(2, 1));
    const auto [gen, gen_w] = run(generic_only<eigen_backend>{});
    INFO("rows " << rows << " cols " << cols);
    CHECK(fast.count == gen.count);
    CHECK(fast.mean == Approx(gen.mean).epsilon(1e-13));
    CHECK(fast.m2 == Approx(gen.m2).epsilon(1e-9).margin(1e-12));
    CHECK((fast.count == two.count && fast.mean == two.mean && fast.m2 == two.m2));
    CHECK_THAT(fast_w, close_to<T>(gen_w, std::is_same_v<T, float> ? 1e-5 : 1e-9, 1e-6));
  }
  // Nothing valid: the empty moments.
  const eigen_backend b;
  auto x = allocate_filled<T>(b, 2, 3, T(1));
  auto m = allocate_filled<mask_type>(b, 2, 3, mask_type(0));
  const masked_moments e = compute_masked_moments(b, x.view(), m.view());
  CHECK((e.count == 0 && e.mean == 0 && e.m2 == 0));
}
#endif

#if RLHF_TEST_HAS_EIGEN
// The clipped value-loss kernel (backends/eigen/value_loss.hpp) and the valid-count hook
// (backends/eigen/loss_aggregation.hpp) against the generic path: clip on and off, every aggregation mode,
// NaN at masked positions, an empty row; identical bits on 1 and 2 threads.
#include "rlhf/losses/value_loss.hpp"

TEMPLATE_TEST_CASE("eigen clipped_value_loss kernel matches the generic path", "[backends][eigen][value]", float, double) {
  using T = TestType;
  auto g = rng(33);
  const std::size_t rows = 9, cols = 300;
  auto v = normal<T>(g, rows * cols, 0.0, 1.0), old = normal<T>(g, rows * cols, 0.0, 1.0);
  const auto ret = normal<T>(g, rows * cols, 0.0, 1.0);
  auto mask = mask_from_lengths(random_lengths(g, rows, cols, 1), cols);
  for (std::size_t j = 0; j < cols; ++j) mask[4 * cols + j] = 0;  // an empty row
  for (std::size_t i = 0; i < v.size(); i += 3)
    if (!mask[i]) v[i] = std::numeric_limits<T>::quiet_NaN();
  for (double clip : {0.0, 0.2}) {
    for (int mode = 0; mode < 4; ++mode) {
      loss_aggregation agg;
      agg.mode = static_cast<aggregation_mode>(mode);
      const value_loss_options o{clip};
      const auto run = [&](const auto& b) {
        auto bv = to_backend(b, v, rows, cols), bo = to_backend(b, old, rows, cols), br = to_backend(b, ret, rows, cols);
        auto bm = to_backend(b, mask, rows, cols);
        auto d = allocate<T>(b, rows, cols);
        const auto st = clipped_value_loss(b, bv.view(), bo.view(), br.view(), bm.view(), d.view(), o, agg);
        return std::pair{st, to_host(b, d.view())};
      };
      const auto [fast, fast_d] = run(eigen_backend(1));
      const auto [two, two_d] = run(eigen_backend(2, 1));
      const auto [gen, gen_d] = run(generic_only<eigen_backend>{});
      INFO("clip " << clip << " mode " << mode);
      CHECK(fast.loss == Approx(gen.loss).epsilon(1e-12));
      CHECK(fast.clip_fraction == gen.clip_fraction);  // the same double arithmetic decides every clip
      CHECK(fast.token_count == gen.token_count);
      CHECK(fast.mean_value == Approx(gen.mean_value).epsilon(1e-12).margin(1e-15));
      CHECK(fast.mean_return == Approx(gen.mean_return).epsilon(1e-12).margin(1e-15));
      CHECK(fast.mean_squared_error == Approx(gen.mean_squared_error).epsilon(1e-12));
      CHECK(fast_d == gen_d);  // per element the same double expression, rounded once to T
      CHECK(fast.loss == two.loss);
      CHECK(fast_d == two_d);
    }
  }
}
#endif

#if RLHF_TEST_HAS_EIGEN
#include "rlhf/ops/token_logprobs.hpp"

TEST_CASE("eigen token_logprobs kernels take bfloat16 logits: the generic path's results, the same bits on 1 and 2 "
          "threads", "[backends][eigen][bfloat16]") {
  // The kernel widens each chunk to float and runs the float kernel; the gradient is rounded once (the token's
  // column gets its + g/t before the rounding). Against generic_only (the row functor's two float passes):
  // forward to float rounding, gradient to one bf16 ulp; -inf entries, masked rows, V across chunk edges.
  static_assert(requires(const eigen_backend& b, matrix_view<const bfloat16, host_space> l, matrix_view<bfloat16, host_space> dl,
                         vector_view<const token_type, host_space> tok, vector_view<const mask_type, host_space> m,
                         vector_view<float, host_space> v, vector_view<const float, host_space> cv) {
    rlhf_specialized_token_logprobs(b, l, tok, m, v, v, v, 1.0);
    rlhf_specialized_token_logprobs_backward(b, l, tok, m, cv, cv, cv, cv, dl, 1.0);
  });
  auto g = rng(91);
  for (const std::size_t v : {5u, 2048u, 5000u}) {
    const std::size_t rows = 9;
    const auto f = normal<float>(g, rows * v, 0.0, 4.0);
    std::vector<bfloat16> z(f.size());
    for (std::size_t i = 0; i < f.size(); ++i) z[i] = bfloat16(f[i]);
    z[3] = bfloat16(-std::numeric_limits<float>::infinity());
    std::vector<token_type> tokens(rows);
    std::vector<mask_type> mask(rows, 1);
    for (std::size_t r = 0; r < rows; ++r) tokens[r] = static_cast<token_type>((r * 977) % v);
    // Rows whose token dominates (p_y near 1): its gradient g (1 - p_y) is small, and rounding -g p_y to bf16
    // before adding g would show.
    for (std::size_t r = 0; r < rows; r += 3) z[r * v + static_cast<std::size_t>(tokens[r])] = bfloat16(24.0f);
    mask[4] = 0;
    tokens[4] = -100;
    const std::vector<float> gl(rows, -0.7f), gh(rows, 0.3f);
    const auto run = [&](const auto& b) {
      auto lp = std::vector<float>(rows), lse = lp, h = lp;
      const auto zv = make_matrix_view(std::as_const(z).data(), rows, v);
      const auto tv = make_vector_view(std::as_const(tokens).data(), rows);
      const auto mv = make_vector_view(std::as_const(mask).data(), rows);
      token_logprobs(b, zv, tv, mv, make_vector_view(lp.data(), rows), make_vector_view(lse.data(), rows),
                     make_vector_view(h.data(), rows));
      std::vector<bfloat16> d(rows * v);
      token_logprobs_backward(b, zv, tv, mv, make_vector_view(std::as_const(lse).data(), rows),
                              make_vector_view(gl.data(), rows), make_vector_view(std::as_const(h).data(), rows),
                              make_vector_view(gh.data(), rows), make_matrix_view(d.data(), rows, v));
      return std::tuple{lp, lse, h, d};
    };
    const auto [lp1, lse1, h1, d1] = run(eigen_backend(1));
    const auto [lp2, lse2, h2, d2] = run(eigen_backend(2, 1));
    const auto [lpg, lseg, hg, dg] = run(generic_only<eigen_backend>{});
    INFO("V " << v);
    CHECK(lp1 == lp2);
    CHECK(d1 == d2);
    CHECK_THAT(lp1, close_to<float>(std::vector<double>(lpg.begin(), lpg.end()), 2e-6, 2e-6));
    CHECK_THAT(lse1, close_to<float>(std::vector<double>(lseg.begin(), lseg.end()), 2e-6, 2e-6));
    CHECK_THAT(h1, close_to<float>(std::vector<double>(hg.begin(), hg.end()), 2e-6, 2e-6));
    std::size_t off = 0;
    for (std::size_t i = 0; i < d1.size(); ++i) {
      const double x = static_cast<double>(d1[i]), w = static_cast<double>(dg[i]);
      // One bf16 ulp, plus float's absolute precision of g (1 - p_y) where p_y is near 1 (both paths).
      if (!(std::abs(x - w) <= 0x1p-7 * std::abs(w) + 1e-6)) ++off;
    }
    CHECK(off == 0);
  }
}
#endif

#if RLHF_TEST_HAS_EIGEN
#include "rlhf/models/layers/attention.hpp"

TEMPLATE_TEST_CASE("eigen causal attention kernels match the generic path, the same bits on 1 and 2 threads",
                   "[backends][eigen][attention]", float, double) {
  // The blocked GEMMs against the generic per-query loops: T across block edges (1, 64, 70, 130), grouped
  // heads, ragged lengths with an empty and a full sequence, with saved probs, with the online path, and the
  // logsumexp forward with its recomputing backward.
  using T = TestType;
  static_assert(requires(const eigen_backend& b, matrix_view<const T, host_space> c, matrix_view<T, host_space> m,
                         vector_view<T, host_space> lse, vector_view<const T, host_space> clse,
                         vector_view<const std::int32_t, host_space> l) {
    rlhf_specialized_causal_attention_forward(b, c, c, c, 1, 1, 1, m, m, l);
    rlhf_specialized_causal_attention_backward(b, c, c, c, c, c, 1, 1, 1, m, m, m, l);
    rlhf_specialized_causal_attention_forward_logsumexp(b, c, c, c, 1, 1, 1, m, lse, l);
    rlhf_specialized_causal_attention_backward_recompute(b, c, c, c, clse, c, 1, 1, 1, m, m, m, l);
  });
  const double rtol = std::is_same_v<T, float> ? 2e-4 : 1e-11, atol = std::is_same_v<T, float> ? 2e-5 : 1e-12;
  auto g = rng(92);
  struct shape {
    std::size_t batch, seq, n_heads, n_kv_heads, head_dim;
  };
  for (const shape s : {shape{3, 70, 4, 2, 8}, shape{2, 130, 2, 1, 5}, shape{4, 64, 3, 3, 4}, shape{2, 1, 2, 2, 2}}) {
    const std::size_t rows = s.batch * s.seq, qc = s.n_heads * s.head_dim, kc = s.n_kv_heads * s.head_dim;
    auto [q, k, v, d_out, lengths] =
        random_attention_inputs<T>(g, s.batch, s.seq, s.n_heads, s.n_kv_heads, s.head_dim);
    lengths[s.batch - 1] = static_cast<std::int32_t>(s.seq);
    for (int with_lengths = 0; with_lengths < 2; ++with_lengths) {
      const auto run = [&](const auto& b) {
        auto bq = to_backend(b, q, rows, qc), bk = to_backend(b, k, rows, kc), bv = to_backend(b, v, rows, kc);
        auto bd = to_backend(b, d_out, rows, qc);
        auto bl = to_backend(b, lengths);
        const vector_view<const std::int32_t, host_space> lv =
            with_lengths ? bl.view().flat() : vector_view<const std::int32_t, host_space>{};
        auto out = allocate_filled<T>(b, rows, qc, T(99)), online = allocate_filled<T>(b, rows, qc, T(99));
        auto probs = allocate_filled<T>(b, s.batch * s.n_heads * s.seq, s.seq, T(99));
        causal_attention_forward(b, bq.view(), bk.view(), bv.view(), s.batch, s.n_heads, s.n_kv_heads, out.view(),
                                 probs.view(), lv);
        causal_attention_forward(b, bq.view(), bk.view(), bv.view(), s.batch, s.n_heads, s.n_kv_heads, online.view(),
                                 {}, lv);
        auto dq = allocate_filled<T>(b, rows, qc, T(7)), dk = allocate_filled<T>(b, rows, kc, T(7)),
             dv = allocate_filled<T>(b, rows, kc, T(7));
        causal_attention_backward(b, bq.view(), bk.view(), bv.view(), probs.view(), bd.view(), s.batch, s.n_heads,
                                  s.n_kv_heads, dq.view(), dk.view(), dv.view(), lv);
        auto out2 = allocate_filled<T>(b, rows, qc, T(99));
        auto lse = allocate_filled<T>(b, s.batch * s.n_heads * s.seq, 1, T(99));
        causal_attention_forward_logsumexp(b, bq.view(), bk.view(), bv.view(), s.batch, s.n_heads, s.n_kv_heads,
                                           out2.view(), lse.view().flat(), lv);
        auto dq2 = allocate_filled<T>(b, rows, qc, T(7)), dk2 = allocate_filled<T>(b, rows, kc, T(7)),
             dv2 = allocate_filled<T>(b, rows, kc, T(7));
        causal_attention_backward_recompute(b, bq.view(), bk.view(), bv.view(), lse.view().flat(), bd.view(), s.batch,
                                            s.n_heads, s.n_kv_heads, dq2.view(), dk2.view(), dv2.view(), lv);
        return std::vector<std::vector<T>>{to_host(b, out.view()),  to_host(b, online.view()), to_host(b, probs.view()),
                                           to_host(b, dq.view()),   to_host(b, dk.view()),     to_host(b, dv.view()),
                                           to_host(b, out2.view()), to_host(b, lse.view()),    to_host(b, dq2.view()),
                                           to_host(b, dk2.view()),  to_host(b, dv2.view())};
      };
      const auto fast = run(eigen_backend(1)), two = run(eigen_backend(2, 1)), gen = run(generic_only<eigen_backend>{});
      INFO("B " << s.batch << " T " << s.seq << " Hq " << s.n_heads << " Hkv " << s.n_kv_heads << " hd " << s.head_dim
                << " lengths " << with_lengths);
      for (std::size_t i = 0; i < fast.size(); ++i) {
        INFO("output " << i << " (out, online out, probs, d_q, d_k, d_v; logsumexp: out, lse, d_q, d_k, d_v)");
        CHECK_THAT(fast[i], close_to<T>(gen[i], rtol, atol));
        CHECK(two[i] == fast[i]);
      }
    }
  }
}
#endif

#if RLHF_TEST_HAS_EIGEN
#include "rlhf/models/layers/rope.hpp"
#include "rlhf/models/layers/swiglu.hpp"

TEMPLATE_TEST_CASE("eigen swiglu kernels match the generic path, in place too, the same bits on 1 and 2 threads",
                   "[backends][eigen][swiglu]", float, double) {
  // The packet-exp sigmoid in T against the generic double arithmetic: gates from -90 to 90 (exp(-|g|)
  // underflows at the ends), sizes across block edges, outputs written over their inputs.
  using T = TestType;
  static_assert(requires(const eigen_backend& b, matrix_view<const T, host_space> c, matrix_view<T, host_space> m) {
    rlhf_specialized_swiglu_forward(b, c, c, m);
    rlhf_specialized_swiglu_backward(b, c, c, c, m, m);
  });
  const double rtol = std::is_same_v<T, float> ? 1e-5 : 1e-13, atol = std::is_same_v<T, float> ? 1e-6 : 1e-15;
  auto g = rng(93);
  for (const std::size_t n : {1u, 1023u, 1025u, 70001u}) {
    auto gate = normal<T>(g, n, 0.0, 4.0);
    gate[0] = T(-90);
    if (n > 1) gate[1] = T(90);
    const auto up = normal<T>(g, n), d_out = normal<T>(g, n);
    const auto run = [&](const auto& b, bool in_place) {
      auto bg = to_backend(b, gate, 1, n), bu = to_backend(b, up, 1, n), bd = to_backend(b, d_out, 1, n);
      auto out = allocate<T>(b, 1, n), dg = allocate<T>(b, 1, n), du = allocate<T>(b, 1, n);
      if (in_place) {
        // out over up; then d_gate over gate and d_up over d_out (with the forward's gate and up restored).
        swiglu_forward(b, bg.view(), bu.view(), bu.view());
        b.copy(bu.view().flat(), out.view().flat());
        bu = to_backend(b, up, 1, n);
        swiglu_backward(b, bg.view(), bu.view(), bd.view(), bg.view(), bd.view());
        b.copy(bg.view().flat(), dg.view().flat());
        b.copy(bd.view().flat(), du.view().flat());
      } else {
        swiglu_forward(b, bg.view(), bu.view(), out.view());
        swiglu_backward(b, bg.view(), bu.view(), bd.view(), dg.view(), du.view());
      }
      return std::vector<std::vector<T>>{to_host(b, out.view()), to_host(b, dg.view()), to_host(b, du.view())};
    };
    const auto gen = run(generic_only<eigen_backend>{}, false);
    for (const bool in_place : {false, true}) {
      const auto fast = run(eigen_backend(1), in_place), two = run(eigen_backend(2, 1), in_place);
      INFO("n " << n << " in place " << in_place);
      for (std::size_t i = 0; i < gen.size(); ++i) {
        INFO("output " << i << " (out, d_gate, d_up)");
        CHECK_THAT(fast[i], close_to<T>(gen[i], rtol, atol));
        CHECK(two[i] == fast[i]);
      }
    }
  }
}

TEMPLATE_TEST_CASE("eigen rope kernels match the generic path, in place too, the same bits on 1 and 2 threads",
                   "[backends][eigen][rope]", float, double) {
  // The same angles as the generic functor; the rotation may differ by FMA contraction only (a few ulps).
  using T = TestType;
  static_assert(requires(const eigen_backend& b, matrix_view<const T, host_space> c, matrix_view<T, host_space> m,
                         vector_view<const std::int32_t, host_space> p) {
    rlhf_specialized_rope_forward(b, c, p, 2, m, 1e4);
    rlhf_specialized_rope_backward(b, c, p, 2, m, 1e4);
  });
  const double rtol = std::is_same_v<T, float> ? 1e-6 : 1e-14, atol = std::is_same_v<T, float> ? 1e-6 : 1e-14;
  auto g = rng(94);
  struct shape {
    std::size_t rows, cols, head_dim;
  };
  for (const shape s : {shape{5, 8, 8}, shape{37, 48, 6}, shape{300, 64, 8}, shape{3, 4, 2}}) {
    const auto x = normal<T>(g, s.rows * s.cols);
    std::vector<std::int32_t> positions(s.rows);
    for (std::size_t r = 0; r < s.rows; ++r) positions[r] = static_cast<std::int32_t>((r * 37) % 500) - 3;
    for (const bool inverse : {false, true}) {
      const auto run = [&](const auto& b, bool in_place) {
        auto bx = to_backend(b, x, s.rows, s.cols);
        auto bp = to_backend(b, positions);
        auto out = allocate<T>(b, s.rows, s.cols);
        const auto dst = in_place ? bx.view() : out.view();
        if (inverse)
          rope_backward(b, bx.view(), bp.view().flat(), s.head_dim, dst, 500.0);
        else
          rope_forward(b, bx.view(), bp.view().flat(), s.head_dim, dst, 500.0);
        return to_host(b, dst);
      };
      const auto gen = run(generic_only<eigen_backend>{}, false);
      for (const bool in_place : {false, true}) {
        const auto fast = run(eigen_backend(1), in_place), two = run(eigen_backend(2, 1), in_place);
        INFO("rows " << s.rows << " cols " << s.cols << " head_dim " << s.head_dim << " inverse " << inverse
                     << " in place " << in_place);
        CHECK_THAT(fast, close_to<T>(gen, rtol, atol));
        CHECK(two == fast);
      }
    }
  }
}
#endif

#if RLHF_TEST_HAS_EIGEN
#include "rlhf/models/layers/rms_norm.hpp"

TEMPLATE_TEST_CASE("eigen rms_norm kernels match the generic path, in place too, the same bits on 1 and 2 threads",
                   "[backends][eigen][rms_norm]", float, double) {
  // Vectorized double sums against the generic chains: the row sums reassociate, so inv_rms may differ in
  // its last bit, which the 2048-term weight-gradient sums (with cancellation, and summed in chunks of 64
  // rows here) carry to about 1e-13 in double. d_weight accumulates onto what it holds. 2048 rows: 32
  // chunks split across the threads.
  using T = TestType;
  static_assert(requires(const eigen_backend& b, matrix_view<const T, host_space> c, matrix_view<T, host_space> m,
                         vector_view<const T, host_space> cv, vector_view<T, host_space> v) {
    rlhf_specialized_rms_norm_forward(b, c, cv, m, v, 1e-5);
    rlhf_specialized_rms_norm_backward(b, c, cv, cv, c, m, v);
  });
  const double rtol = std::is_same_v<T, float> ? 2e-6 : 1e-13, atol = std::is_same_v<T, float> ? 1e-6 : 1e-12;
  auto g = rng(95);
  struct shape {
    std::size_t rows, cols;
  };
  for (const shape s : {shape{1, 1}, shape{7, 64}, shape{300, 37}, shape{2048, 256}}) {
    const std::size_t rows = s.rows, cols = s.cols;
    const auto x = normal<T>(g, rows * cols, 0.5, 2.0), w = normal<T>(g, cols), d_out = normal<T>(g, rows * cols);
    const auto dw0 = normal<T>(g, cols);
    for (const bool in_place : {false, true}) {
      const auto run = [&](const auto& b) {
        auto bx = to_backend(b, x, rows, cols), bw = to_backend(b, w, 1, cols), bd = to_backend(b, d_out, rows, cols);
        auto out = allocate<T>(b, rows, cols), inv = allocate<T>(b, 1, rows), dx = allocate<T>(b, rows, cols);
        auto dw = to_backend(b, dw0, 1, cols);
        auto fwd_in = to_backend(b, x, rows, cols);
        const auto fwd_out = in_place ? fwd_in.view() : out.view();
        rms_norm_forward(b, fwd_in.view(), bw.view().flat(), fwd_out, inv.view().flat());
        const auto dx_out = in_place ? bd.view() : dx.view();  // d_x over d_out
        rms_norm_backward(b, bx.view(), bw.view().flat(), inv.view().flat(), bd.view(), dx_out, dw.view().flat());
        return std::vector<std::vector<T>>{to_host(b, fwd_out), to_host(b, inv.view()), to_host(b, dx_out),
                                           to_host(b, dw.view())};
      };
      const auto gen = run(generic_only<eigen_backend>{}), fast = run(eigen_backend(1)), two = run(eigen_backend(2, 1));
      INFO("rows " << rows << " cols " << cols << " in place " << in_place);
      for (std::size_t i = 0; i < gen.size(); ++i) {
        INFO("output " << i << " (out, inv_rms, d_x, d_weight)");
        CHECK_THAT(fast[i], close_to<T>(gen[i], rtol, atol));
        CHECK(two[i] == fast[i]);
      }
      // Either gradient alone (the other not wanted) is the same bits as with both.
      const eigen_backend b(2, 1);
      auto bx = to_backend(b, x, rows, cols), bw = to_backend(b, w, 1, cols), bd = to_backend(b, d_out, rows, cols);
      auto inv = to_backend(b, fast[1], 1, rows), dx = allocate<T>(b, rows, cols), dw = to_backend(b, dw0, 1, cols);
      rms_norm_backward(b, bx.view(), bw.view().flat(), inv.view().flat(), bd.view(), dx.view(),
                        vector_view<T, host_space>{});
      rms_norm_backward(b, bx.view(), bw.view().flat(), inv.view().flat(), bd.view(), matrix_view<T, host_space>{},
                        dw.view().flat());
      CHECK(to_host(b, dx.view()) == fast[2]);
      CHECK(to_host(b, dw.view()) == fast[3]);
    }
  }
}

TEMPLATE_TEST_CASE("eigen decode attention matches the generic path, the same bits on 1 and 2 threads",
                   "[backends][eigen][attention][decode]", float, double) {
  // Matrix-vector products in T against the generic path's double dot products and sums.
  using T = TestType;
  static_assert(requires(const eigen_backend& b, const detail::decode_attention_rows<T, host_space>& rows) {
    rlhf_specialized_causal_attention_decode(b, rows);
  });
  const double rtol = std::is_same_v<T, float> ? 1e-4 : 1e-11, atol = std::is_same_v<T, float> ? 1e-5 : 1e-12;
  auto g = rng(97);
  struct shape {
    std::size_t rows, seq, n_heads, n_kv_heads, head_dim;
  };
  for (const shape s : {shape{1, 1, 2, 1, 3}, shape{3, 40, 4, 2, 5}, shape{2, 300, 8, 2, 64}, shape{4, 70, 4, 4, 128}}) {
    const std::size_t qc = s.n_heads * s.head_dim, kvc = s.n_kv_heads * s.head_dim;
    std::vector<std::int32_t> positions(s.rows);
    for (std::size_t r = 0; r < s.rows; ++r) positions[r] = static_cast<std::int32_t>((r * 37 + s.seq - 1) % s.seq);
    const auto q = normal<T>(g, s.rows * qc, 0.0, 2.0), k = normal<T>(g, s.rows * s.seq * kvc);
    const auto v = normal<T>(g, s.rows * s.seq * kvc);
    const auto run = [&](const auto& b) {
      auto bq = to_backend(b, q, s.rows, qc), bk = to_backend(b, k, s.rows * s.seq, kvc);
      auto bv = to_backend(b, v, s.rows * s.seq, kvc);
      auto bp = to_backend(b, positions);
      auto scores = allocate<T>(b, s.rows * s.n_heads, s.seq), out = allocate<T>(b, s.rows, qc);
      causal_attention_decode(b, as_const(bq.view()), as_const(bk.view()), as_const(bv.view()),
                              as_const(bp.view().flat()), s.seq, s.n_heads, s.n_kv_heads, scores.view(), out.view());
      return to_host(b, out.view());
    };
    const auto gen = run(generic_only<eigen_backend>{}), fast = run(eigen_backend(1)), two = run(eigen_backend(2, 1));
    INFO("rows " << s.rows << " T " << s.seq << " Hq " << s.n_heads << " Hkv " << s.n_kv_heads << " hd " << s.head_dim);
    CHECK_THAT(fast, close_to<T>(gen, rtol, atol));
    CHECK(two == fast);
  }
}
#endif
