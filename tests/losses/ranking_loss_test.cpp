// Reward-model losses: the InstructGPT pairwise ranking loss (eq. 1) and the Ziegler et al. best-of-K
// softmax loss, against naive host oracles, hand-computed cases, finite differences and peer-bug regressions.
#include "test_support.hpp"

#include <cstdint>
#include <limits>
#include <numeric>

#include "rlhf/losses/ranking_loss.hpp"

using namespace rlhf;
using namespace rlhf::test;

namespace {

// A batch of ranked prompts in the library's layout (row-major [P, K]).
struct ranked_batch {
  std::size_t P = 0, K = 0;
  std::vector<double> rewards;
  std::vector<std::int32_t> ranks;  // pairwise labels
  std::vector<std::int32_t> best;   // best-of-K labels
  std::vector<std::int32_t> counts;
};

struct oracle_result {
  double loss = 0, pair_loss = 0, center_loss = 0, accuracy = 0, mean_margin = 0, compared = 0;
  std::vector<double> grad;
};

// Naive host oracle of the pairwise loss straight from the formula, pair by pair (i < j).
oracle_result pairwise_oracle(const ranked_batch& c, const ranking_loss_options& o) {
  oracle_result r;
  r.grad.assign(c.P * c.K, 0.0);
  double correct = 0, margin_sum = 0;
  for (std::size_t p = 0; p < c.P; ++p) {
    const std::size_t k = static_cast<std::size_t>(c.counts[p]);
    const double* x = &c.rewards[p * c.K];
    const std::int32_t* rk = &c.ranks[p * c.K];
    double* g = &r.grad[p * c.K];
    double n_cmp = 0;
    for (std::size_t i = 0; i < k; ++i)
      for (std::size_t j = i + 1; j < k; ++j) n_cmp += rk[i] != rk[j] ? 1 : 0;
    const double all = static_cast<double>(k * (k - 1) / 2);
    const double d = o.normalization == pair_normalization::all_pairs ? all : n_cmp;
    const double w = d > 0 ? 1.0 / d : 0.0;
    double pair = 0;
    for (std::size_t i = 0; i < k; ++i) {
      for (std::size_t j = i + 1; j < k; ++j) {
        if (rk[i] == rk[j]) continue;
        const std::size_t hi = rk[i] < rk[j] ? i : j, lo = rk[i] < rk[j] ? j : i;
        const double gap = x[hi] - x[lo];
        const double z = gap - o.margin;
        const double sig = 1.0 / (1.0 + std::exp(-z));
        pair += -std::log(sig);
        g[hi] += -w * (1 - sig) / static_cast<double>(c.P);
        g[lo] += w * (1 - sig) / static_cast<double>(c.P);
        correct += gap > 0 ? 1 : 0;
        margin_sum += gap;
        r.compared += 1;
      }
    }
    double center = 0;
    if (o.center_coefficient > 0) {
      if (o.centering == centering_form::squared_rewards) {
        for (std::size_t i = 0; i < k; ++i) {
          center += x[i] * x[i] / static_cast<double>(k);
          g[i] += o.center_coefficient * 2 * x[i] / static_cast<double>(k) / static_cast<double>(c.P);
        }
      } else {
        for (std::size_t i = 0; i < k; ++i)
          for (std::size_t j = i + 1; j < k; ++j) {
            center += (x[i] + x[j]) * (x[i] + x[j]) / all;
            g[i] += o.center_coefficient * 2 * (x[i] + x[j]) / all / static_cast<double>(c.P);
            g[j] += o.center_coefficient * 2 * (x[i] + x[j]) / all / static_cast<double>(c.P);
          }
      }
      center *= o.center_coefficient;
    }
    r.pair_loss += w * pair / static_cast<double>(c.P);
    r.center_loss += center / static_cast<double>(c.P);
  }
  r.loss = r.pair_loss + r.center_loss;
  r.accuracy = r.compared > 0 ? correct / r.compared : 0;
  r.mean_margin = r.compared > 0 ? margin_sum / r.compared : 0;
  return r;
}

// Naive host oracle of the best-of-K loss: -log(exp(r_best) / sum_i exp(r_i)).
oracle_result best_of_k_oracle(const ranked_batch& c, double center_coefficient) {
  oracle_result r;
  r.grad.assign(c.P * c.K, 0.0);
  for (std::size_t p = 0; p < c.P; ++p) {
    const std::size_t k = static_cast<std::size_t>(c.counts[p]);
    const double* x = &c.rewards[p * c.K];
    double z = 0;
    for (std::size_t i = 0; i < k; ++i) z += std::exp(x[i]);
    const std::size_t b = static_cast<std::size_t>(c.best[p]);
    r.loss += -std::log(std::exp(x[b]) / z) / static_cast<double>(c.P);
    std::size_t arg = 0;
    for (std::size_t i = 0; i < k; ++i) {
      if (x[i] > x[arg]) arg = i;
      r.grad[p * c.K + i] = (std::exp(x[i]) / z - (i == b ? 1.0 : 0.0)) / static_cast<double>(c.P);
      if (center_coefficient > 0) {
        r.center_loss += center_coefficient * x[i] * x[i] / static_cast<double>(k) / static_cast<double>(c.P);
        r.grad[p * c.K + i] += center_coefficient * 2 * x[i] / static_cast<double>(k) / static_cast<double>(c.P);
      }
    }
    r.accuracy += (arg == b ? 1.0 : 0.0) / static_cast<double>(c.P);
  }
  r.loss += r.center_loss;
  return r;
}

template <class TestType>
std::pair<ranking_loss_stats, std::vector<double>> run_pairwise(const ranked_batch& c, const ranking_loss_options& o,
                                                                bool want_grad = true) {
  using T = typename TestType::value;
  using B = typename TestType::backend;
  const auto b = TestType::make();
  auto r = to_backend(b, cast<T>(c.rewards), c.P, c.K);
  auto rk = to_backend(b, c.ranks, c.P, c.K);
  auto cn = to_backend(b, c.counts);
  auto g = allocate_filled<T>(b, c.P, c.K, T(7));  // 7: proves every gradient entry is written
  const ranking_loss_stats st = ranking_loss(b, as_const(r.view()), as_const(rk.view()), as_const(cn.view().flat()),
                                             want_grad ? g.view() : backend_matrix<B, T>{}, o);
  return {st, cast<double>(to_host(b, g.view()))};
}

template <class TestType>
std::pair<best_of_k_stats, std::vector<double>> run_best_of_k(const ranked_batch& c, const best_of_k_options& o = {}) {
  using T = typename TestType::value;
  const auto b = TestType::make();
  auto r = to_backend(b, cast<T>(c.rewards), c.P, c.K);
  auto bs = to_backend(b, c.best);
  auto cn = to_backend(b, c.counts);
  auto g = allocate_filled<T>(b, c.P, c.K, T(7));
  const best_of_k_stats st =
      best_of_k_loss(b, as_const(r.view()), as_const(bs.view().flat()), as_const(cn.view().flat()), g.view(), o);
  return {st, cast<double>(to_host(b, g.view()))};
}

// Random ragged batch: K_p in [2, K], rewards in [-3, 3], ranks in [0, K_p) (ties likely), a best index,
// and garbage (NaN rewards, out-of-range ranks) beyond K_p that must be ignored.
template <class T>
ranked_batch random_batch(std::mt19937_64& g, std::size_t P, std::size_t K, bool nan_padding = true) {
  ranked_batch c;
  c.P = P, c.K = K;
  c.rewards = cast<double>(cast<T>(uniform<double>(g, P * K, -3, 3)));  // exactly representable in T
  c.ranks.assign(P * K, 0);
  c.best.assign(P, 0);
  c.counts.assign(P, 0);
  for (std::size_t p = 0; p < P; ++p) {
    const auto k = static_cast<std::int32_t>(std::uniform_int_distribution<std::size_t>(2, K)(g));
    c.counts[p] = k;
    c.best[p] = std::uniform_int_distribution<std::int32_t>(0, k - 1)(g);
    for (std::size_t i = 0; i < K; ++i) {
      if (static_cast<std::int32_t>(i) < k) {
        c.ranks[p * K + i] = std::uniform_int_distribution<std::int32_t>(0, k - 1)(g);
      } else {
        c.ranks[p * K + i] = 1000 + static_cast<std::int32_t>(i);
        c.rewards[p * K + i] = nan_padding ? std::numeric_limits<double>::quiet_NaN() : 123.0;
      }
    }
  }
  return c;
}

template <class T>
void check_stats(const ranking_loss_stats& st, const oracle_result& o) {
  CHECK(near<T>(st.loss, o.loss, 10));
  CHECK(near<T>(st.pair_loss, o.pair_loss, 10));
  CHECK(near<T>(st.center_loss, o.center_loss, 10));
  CHECK(near<T>(st.accuracy, o.accuracy, 10));
  CHECK(near<T>(st.mean_margin, o.mean_margin, 10));
  CHECK(st.compared_pairs == o.compared);
}

}  // namespace

TEMPLATE_LIST_TEST_CASE("ranking_loss: hand-computed K = 3 with one tie", "[losses][ranking_loss]", all_configs) {
  using T = typename TestType::value;
  // r = [1, 0, 0.5], ranks = [0, 1, 1]: response 0 is best, responses 1 and 2 tie (the pair (1,2) is skipped).
  //   pair (0,1): gap 1.0 -> softplus(-1.0) = log(1 + e^-1.0) = 0.31326168751822286
  //   pair (0,2): gap 0.5 -> softplus(-0.5) = log(1 + e^-0.5) = 0.4740769841801067
  //   all_pairs:      (0.31326168751822286 + 0.4740769841801067) / C(3,2)=3 = 0.26244622389944317
  //   compared_pairs: same sum / 2                                           = 0.39366933584916475
  // Gradient (P = 1, all_pairs): d/dr0 = -(sigma(-1) + sigma(-0.5)) / 3 = -(0.2689414213699951 + 0.3775406687981454) / 3
  //   = -0.21549403005604684, d/dr1 = sigma(-1) / 3 = 0.08964714045666504, d/dr2 = sigma(-0.5) / 3 = 0.1258468895993818.
  // Column 3 is padding (K_max = 4): gradient 0. Accuracy 2/2, mean margin (1 + 0.5) / 2 = 0.75.
  ranked_batch c;
  c.P = 1, c.K = 4;
  c.rewards = {1.0, 0.0, 0.5, -9.0};
  c.ranks = {0, 1, 1, 77};
  c.counts = {3};
  auto [st, g] = run_pairwise<TestType>(c, {});
  CHECK(near<T>(st.loss, 0.26244622389944317, 4));
  CHECK(near<T>(st.pair_loss, 0.26244622389944317, 4));
  CHECK(st.center_loss == 0.0);
  CHECK(st.accuracy == 1.0);
  CHECK(near<T>(st.mean_margin, 0.75));
  CHECK(st.compared_pairs == 2.0);
  CHECK_THAT(cast<T>(g), close_to<T>(std::vector<double>{-0.21549403005604684, 0.08964714045666504, 0.1258468895993818, 0.0}));

  ranking_loss_options o;
  o.normalization = pair_normalization::compared_pairs;
  auto [st2, g2] = run_pairwise<TestType>(c, o);
  CHECK(near<T>(st2.loss, 0.39366933584916475, 4));
  CHECK_THAT(cast<T>(g2), close_to<T>(std::vector<double>{-0.21549403005604684 * 1.5, 0.08964714045666504 * 1.5,
                                                          0.1258468895993818 * 1.5, 0.0}));
  CHECK(ranking_loss_options::nemo().normalization == pair_normalization::compared_pairs);
}

TEMPLATE_LIST_TEST_CASE("ranking_loss: K = 2 is the single-pair -log sigmoid, margin inside", "[losses][ranking_loss]",
                        all_configs) {
  using T = typename TestType::value;
  ranked_batch c;
  c.P = 2, c.K = 2;
  c.rewards = {0.25, 1.0, 2.0, -0.5};  // prompt 0: response 1 is better; prompt 1: response 0 is better
  c.ranks = {1, 0, 0, 1};
  c.counts = {2, 2};
  for (double m : {0.0, 0.5}) {
    ranking_loss_options o = ranking_loss_options::trl(m);
    auto [st, g] = run_pairwise<TestType>(c, o);
    const double l0 = -std::log(1.0 / (1.0 + std::exp(-(0.75 - m))));
    const double l1 = -std::log(1.0 / (1.0 + std::exp(-(2.5 - m))));
    CHECK(near<T>(st.loss, (l0 + l1) / 2, 4));
    const double s0 = 1.0 / (1.0 + std::exp(0.75 - m)), s1 = 1.0 / (1.0 + std::exp(2.5 - m));
    CHECK_THAT(cast<T>(g), close_to<T>(std::vector<double>{s0 / 2, -s0 / 2, -s1 / 2, s1 / 2}));
    CHECK(st.accuracy == 1.0);
    CHECK(near<T>(st.mean_margin, (0.75 + 2.5) / 2));
  }
  // TRL centering for K = 2: c * (r_c + r_r)^2 per pair, mean over prompts.
  auto [st, g] = run_pairwise<TestType>(c, ranking_loss_options::trl(0.0, 0.01));
  CHECK(near<T>(st.center_loss, 0.01 * (1.25 * 1.25 + 1.5 * 1.5) / 2, 4));
}

TEMPLATE_LIST_TEST_CASE("ranking_loss: ragged K in [2, 9] against the naive oracle", "[losses][ranking_loss][property]",
                        all_configs) {
  using T = typename TestType::value;
  auto g = rng(11);
  std::vector<ranking_loss_options> opts(4);
  opts[1].margin = 0.3;
  opts[1].center_coefficient = 0.05;
  opts[2] = ranking_loss_options::trl(0.2, 0.01);
  opts[3].normalization = pair_normalization::compared_pairs;
  opts[3].center_coefficient = 0.1;
  for (int rep = 0; rep < 4; ++rep) {
    const auto c = random_batch<T>(g, 1 + static_cast<std::size_t>(rep) * 13, 9);
    for (const auto& o : opts) {
      const auto want = pairwise_oracle(c, o);
      auto [st, grad] = run_pairwise<TestType>(c, o);
      check_stats<T>(st, want);
      CHECK_THAT(cast<T>(grad), close_to<T>(want.grad, tolerance<T>::rtol * 10, tolerance<T>::atol * 10));
      auto [st_fwd, unused] = run_pairwise<TestType>(c, o, false);  // forward only: same statistics
      CHECK(st_fwd.loss == st.loss);
      CHECK(unused == std::vector<double>(c.P * c.K, 7.0));
    }
  }
}

TEMPLATE_LIST_TEST_CASE("ranking_loss: permuting a row's responses and ranks leaves the loss unchanged",
                        "[losses][ranking_loss][property]", all_configs) {
  using T = typename TestType::value;
  auto g = rng(12);
  auto c = random_batch<T>(g, 9, 7, false);
  ranking_loss_options o;
  o.margin = 0.1;
  o.center_coefficient = 0.02;
  auto [st, grad] = run_pairwise<TestType>(c, o);
  ranked_batch d = c;
  std::vector<std::vector<std::size_t>> perms(c.P);
  for (std::size_t p = 0; p < c.P; ++p) {
    const auto k = static_cast<std::size_t>(c.counts[p]);
    perms[p].resize(k);
    std::iota(perms[p].begin(), perms[p].end(), std::size_t(0));
    std::shuffle(perms[p].begin(), perms[p].end(), g);
    for (std::size_t i = 0; i < k; ++i) {
      d.rewards[p * c.K + i] = c.rewards[p * c.K + perms[p][i]];
      d.ranks[p * c.K + i] = c.ranks[p * c.K + perms[p][i]];
    }
  }
  auto [st2, grad2] = run_pairwise<TestType>(d, o);
  CHECK(near<T>(st2.loss, st.loss, 10));
  CHECK(st2.accuracy == st.accuracy);
  std::vector<double> permuted(grad.size(), 0.0);
  for (std::size_t p = 0; p < c.P; ++p)
    for (std::size_t i = 0; i < perms[p].size(); ++i) permuted[p * c.K + i] = grad[p * c.K + perms[p][i]];
  CHECK_THAT(cast<T>(grad2), close_to<T>(permuted, tolerance<T>::rtol * 10, tolerance<T>::atol * 10));
}

TEMPLATE_LIST_TEST_CASE("ranking_loss: gradient sums to 0 per prompt without centering",
                        "[losses][ranking_loss][property]", all_configs) {
  using T = typename TestType::value;
  auto g = rng(13);
  const auto c = random_batch<T>(g, 25, 9);
  for (auto norm : {pair_normalization::all_pairs, pair_normalization::compared_pairs}) {
    ranking_loss_options o;
    o.margin = 0.4;
    o.normalization = norm;
    auto [st, grad] = run_pairwise<TestType>(c, o);
    for (std::size_t p = 0; p < c.P; ++p) {
      double s = 0, mag = 0;
      for (std::size_t i = 0; i < c.K; ++i) s += grad[p * c.K + i], mag += std::abs(grad[p * c.K + i]);
      CHECK(std::abs(s) <= 1e-6 * (mag + 1e-30) + (std::is_same_v<T, float> ? 1e-7 : 1e-16));
    }
  }
}

TEMPLATE_LIST_TEST_CASE("ranking_loss: all-tie prompt contributes 0 under both normalizations",
                        "[losses][ranking_loss]", all_configs) {
  ranked_batch c;
  c.P = 1, c.K = 3;
  c.rewards = {0.3, -0.2, 1.0};
  c.ranks = {2, 2, 2};
  c.counts = {3};
  for (auto norm : {pair_normalization::all_pairs, pair_normalization::compared_pairs}) {
    ranking_loss_options o;
    o.normalization = norm;
    auto [st, grad] = run_pairwise<TestType>(c, o);
    CHECK(st.loss == 0.0);
    CHECK(st.compared_pairs == 0.0);
    CHECK(st.accuracy == 0.0);
    CHECK(grad == std::vector<double>(3, 0.0));
  }
}

TEMPLATE_LIST_TEST_CASE("ranking_loss: finite-difference gradient (margin, both centering forms)",
                        "[losses][ranking_loss][gradient]", double_configs) {
  auto g = rng(14);
  const auto c = random_batch<double>(g, 6, 5, false);
  std::vector<ranking_loss_options> opts(3);
  opts[0].margin = 0.25;
  opts[0].center_coefficient = 0.1;
  opts[1] = ranking_loss_options::trl(0.5, 0.05);
  opts[2].normalization = pair_normalization::compared_pairs;
  opts[2].center_coefficient = 0.3;
  for (const auto& o : opts) {
    auto [st, grad] = run_pairwise<TestType>(c, o);
    const auto fd = numeric_gradient(
        [&](const std::vector<double>& x) {
          ranked_batch d = c;
          d.rewards = x;
          return run_pairwise<TestType>(d, o, false).first.loss;
        },
        c.rewards);
    CHECK_THAT(grad, close_to<double>(fd, fd_rtol, fd_atol));
  }
}

TEMPLATE_LIST_TEST_CASE("regression: DeepSpeedExamples #316: -log(sigmoid) gives inf for a large reward gap",
                        "[losses][ranking_loss][regression]", all_configs) {
  // https://github.com/deepspeedai/DeepSpeedExamples/issues/316 : -log(sigmoid(gap)) is inf once sigmoid
  // underflows. softplus(-gap) stays finite: a gap of 1e4 the wrong way gives loss 1e4, the right way 0.
  using T = typename TestType::value;
  ranked_batch c;
  c.P = 2, c.K = 2;
  c.rewards = {-5000.0, 5000.0, 5000.0, -5000.0};
  c.ranks = {0, 1, 0, 1};  // prompt 0: the better response scored 1e4 lower; prompt 1: 1e4 higher
  c.counts = {2, 2};
  auto [st, grad] = run_pairwise<TestType>(c, {});
  REQUIRE(std::isfinite(st.loss));
  CHECK(near<T>(st.loss, 1e4 / 2));
  CHECK(st.accuracy == 0.5);
  CHECK_THAT(cast<T>(grad), close_to<T>(std::vector<double>{-0.5, 0.5, 0.0, 0.0}));
}

TEMPLATE_LIST_TEST_CASE("regression: OpenRLHF LogExpLoss: log(1 + exp(x)) overflows for a large gap",
                        "[losses][ranking_loss][regression]", all_configs) {
  // rlhf-math.md 2.1 (ORL `openrlhf/models/loss.py::LogExpLoss`, no issue number): log(1 + exp(r_r - r_c))
  // overflows to inf in float for a gap > 88 and in double for > 709. Same loss, stable form, margin too.
  using T = typename TestType::value;
  ranked_batch c;
  c.P = 1, c.K = 3;
  c.rewards = {-1000.0, 1000.0, 0.0};
  c.ranks = {0, 1, 2};
  c.counts = {3};
  ranking_loss_options o = ranking_loss_options::orl(1.0);
  auto [st, grad] = run_pairwise<TestType>(c, o);
  REQUIRE(std::isfinite(st.loss));
  // pairs: (0,1) gap -2000 -> 2001; (0,2) gap -1000 -> 1001; (1,2) gap 1000 -> softplus(-999) ~ 0. Sum / 3.
  CHECK(near<T>(st.loss, (2001.0 + 1001.0) / 3.0));
  for (double x : grad) CHECK(std::isfinite(x));
  CHECK_THAT(cast<T>(grad), close_to<T>(std::vector<double>{-2.0 / 3, 1.0 / 3, 1.0 / 3}));
}

TEMPLATE_LIST_TEST_CASE("ranking_loss: argument errors", "[losses][ranking_loss][errors]", all_configs) {
  using T = typename TestType::value;
  using B = typename TestType::backend;
  const auto b = TestType::make();
  auto r = to_backend(b, std::vector<T>{1, 2, 3, 4, 5, 6}, 2, 3);
  auto rk = to_backend(b, std::vector<std::int32_t>{0, 1, 2, 1, 0, 9}, 2, 3);
  auto bad_rk = to_backend(b, std::vector<std::int32_t>{0, 1, 2, 1, 3, 0}, 2, 3);
  auto cn = to_backend(b, std::vector<std::int32_t>{3, 2});
  auto cn_low = to_backend(b, std::vector<std::int32_t>{3, 1});
  auto cn_high = to_backend(b, std::vector<std::int32_t>{4, 2});
  auto cn_short = to_backend(b, std::vector<std::int32_t>{3});
  auto g = allocate<T>(b, 2, 3);
  auto g_bad = allocate<T>(b, 2, 2);
  const auto R = as_const(r.view());
  const backend_matrix<B, T> none{};
  CHECK_NOTHROW(ranking_loss(b, R, as_const(rk.view()), as_const(cn.view().flat()), g.view()));
  CHECK_THROWS_WITH(ranking_loss(b, R, as_const(rk.view()), as_const(cn_low.view().flat()), none),
                    Catch::Contains("rlhf::ranking_loss") && Catch::Contains("'counts'") &&
                        Catch::Contains("[2, 3]") && Catch::Contains("received 1 at prompt 1"));
  CHECK_THROWS_WITH(ranking_loss(b, R, as_const(rk.view()), as_const(cn_high.view().flat()), none),
                    Catch::Contains("'counts'") && Catch::Contains("received 4 at prompt 0"));
  CHECK_THROWS_WITH(ranking_loss(b, R, as_const(bad_rk.view()), as_const(cn.view().flat()), none),
                    Catch::Contains("rlhf::ranking_loss") && Catch::Contains("'ranks'") &&
                        Catch::Contains("received 3 at prompt 1, response 1"));
  CHECK_THROWS_WITH(ranking_loss(b, R, as_const(rk.view()), as_const(cn_short.view().flat()), none),
                    Catch::Contains("'counts'") && Catch::Contains("size 2"));
  CHECK_THROWS_WITH(ranking_loss(b, R, as_const(rk.view()), as_const(cn.view().flat()), g_bad.view()),
                    Catch::Contains("'d_rewards'") && Catch::Contains("[2, 3]") && Catch::Contains("received [2, 2]"));
  CHECK_THROWS_WITH(ranking_loss(b, R, as_const(rk.view()).row_block(0, 1), as_const(cn.view().flat()), none),
                    Catch::Contains("'ranks'") && Catch::Contains("received [1, 3]"));
  // The gradient written over the rewards (or part of them) would feed later entries with gradients.
  CHECK_THROWS_WITH(ranking_loss(b, R, as_const(rk.view()), as_const(cn.view().flat()), r.view()),
                    Catch::Contains("rlhf::ranking_loss") && Catch::Contains("'d_rewards'") &&
                        Catch::Contains("storage separate from 'rewards'") && Catch::Contains("overlapping"));
  CHECK_THROWS_WITH(ranking_loss(b, as_const(r.view()).row_block(0, 0), as_const(rk.view()).row_block(0, 0),
                                 as_const(cn.view().flat()).subview(0, 0), none),
                    Catch::Contains("'rewards'") && Catch::Contains("P >= 1"));
  ranking_loss_options o;
  o.margin = -1;
  CHECK_THROWS_WITH(ranking_loss(b, R, as_const(rk.view()), as_const(cn.view().flat()), none, o),
                    Catch::Contains("'options.margin'"));
  o.margin = std::numeric_limits<double>::quiet_NaN();
  CHECK_THROWS_WITH(ranking_loss(b, R, as_const(rk.view()), as_const(cn.view().flat()), none, o),
                    Catch::Contains("'options.margin'"));
  o = {};
  o.center_coefficient = -0.1;
  CHECK_THROWS_WITH(ranking_loss(b, R, as_const(rk.view()), as_const(cn.view().flat()), none, o),
                    Catch::Contains("'options.center_coefficient'"));

  // The opt-in finite check looks only at valid entries: NaN padding passes, NaN in a valid entry does not.
  auto nan_pad = to_backend(b, std::vector<T>{1, 2, 3, 4, 5, std::numeric_limits<T>::quiet_NaN()}, 2, 3);
  auto nan_valid = to_backend(b, std::vector<T>{1, 2, 3, std::numeric_limits<T>::infinity(), 5, 6}, 2, 3);
  set_finite_checks(true);
  CHECK_NOTHROW(ranking_loss(b, as_const(nan_pad.view()), as_const(rk.view()), as_const(cn.view().flat()), none));
  CHECK_THROWS_AS(ranking_loss(b, as_const(nan_valid.view()), as_const(rk.view()), as_const(cn.view().flat()), none),
                  non_finite_error);
  CHECK_THROWS_WITH(ranking_loss(b, as_const(nan_valid.view()), as_const(rk.view()), as_const(cn.view().flat()), none),
                    Catch::Contains("'rewards'") && Catch::Contains("prompt 1, response 0"));
  set_finite_checks(false);
}

TEMPLATE_LIST_TEST_CASE("best_of_k_loss: hand-computed case and ZGL best_of_4", "[losses][best_of_k]", all_configs) {
  using T = typename TestType::value;
  // r = [1, 2, 0], best = 1: loss = log(e^1 + e^2 + e^0) - 2 = log(11.107337927) - 2 = 0.40760596444438013.
  // Gradient softmax - onehot: [e/Z, e^2/Z - 1, 1/Z], Z = 11.107337927. Column 3 is padding.
  ranked_batch c;
  c.P = 1, c.K = 4;
  c.rewards = {1.0, 2.0, 0.0, 55.0};
  c.best = {1};
  c.counts = {3};
  auto [st, g] = run_best_of_k<TestType>(c, best_of_k_options::zgl());
  const double Z = std::exp(1.0) + std::exp(2.0) + 1.0;
  CHECK(near<T>(st.loss, 0.40760596444438013, 4));
  CHECK(st.accuracy == 1.0);
  CHECK(near<T>(st.mean_best_probability, std::exp(2.0) / Z, 4));
  CHECK_THAT(cast<T>(g), close_to<T>(std::vector<double>{std::exp(1.0) / Z, std::exp(2.0) / Z - 1, 1 / Z, 0.0}));
  c.best = {2};
  auto [st2, g2] = run_best_of_k<TestType>(c);
  CHECK(st2.accuracy == 0.0);
  CHECK(near<T>(st2.loss, std::log(Z), 4));
}

TEMPLATE_LIST_TEST_CASE("best_of_k_loss: ragged K against the oracle; large logits stay finite",
                        "[losses][best_of_k][property]", all_configs) {
  using T = typename TestType::value;
  auto g = rng(15);
  for (double center : {0.0, 0.05}) {
    const auto c = random_batch<T>(g, 23, 9);
    best_of_k_options o;
    o.center_coefficient = center;
    const auto want = best_of_k_oracle(c, center);
    auto [st, grad] = run_best_of_k<TestType>(c, o);
    CHECK(near<T>(st.loss, want.loss, 10));
    CHECK(near<T>(st.center_loss, want.center_loss, 10));
    CHECK(near<T>(st.accuracy, want.accuracy, 10));
    CHECK_THAT(cast<T>(grad), close_to<T>(want.grad, tolerance<T>::rtol * 10, tolerance<T>::atol * 10));
  }
  // exp(1e4) overflows; the logsumexp is shifted by the max: loss = 2e4 exactly (up to softplus(-2e4) = 0).
  ranked_batch c;
  c.P = 1, c.K = 2;
  c.rewards = {1e4, -1e4};
  c.best = {1};
  c.counts = {2};
  auto [st, grad] = run_best_of_k<TestType>(c);
  CHECK(near<T>(st.loss, 2e4));
  CHECK_THAT(cast<T>(grad), close_to<T>(std::vector<double>{1.0, -1.0}));
}

TEMPLATE_LIST_TEST_CASE("best_of_k_loss: finite-difference gradient", "[losses][best_of_k][gradient]", double_configs) {
  auto g = rng(16);
  const auto c = random_batch<double>(g, 7, 6, false);
  for (double center : {0.0, 0.2}) {
    best_of_k_options o;
    o.center_coefficient = center;
    auto [st, grad] = run_best_of_k<TestType>(c, o);
    const auto fd = numeric_gradient(
        [&](const std::vector<double>& x) {
          ranked_batch d = c;
          d.rewards = x;
          return run_best_of_k<TestType>(d, o).first.loss;
        },
        c.rewards);
    CHECK_THAT(grad, close_to<double>(fd, fd_rtol, fd_atol));
  }
}

TEMPLATE_LIST_TEST_CASE("best_of_k_loss: argument errors", "[losses][best_of_k][errors]", all_configs) {
  using T = typename TestType::value;
  using B = typename TestType::backend;
  const auto b = TestType::make();
  auto r = to_backend(b, std::vector<T>{1, 2, 3, 4, 5, 6}, 2, 3);
  auto cn = to_backend(b, std::vector<std::int32_t>{3, 2});
  auto best_ok = to_backend(b, std::vector<std::int32_t>{2, 1});
  auto best_bad = to_backend(b, std::vector<std::int32_t>{2, 2});
  auto best_short = to_backend(b, std::vector<std::int32_t>{0});
  auto cn_low = to_backend(b, std::vector<std::int32_t>{0, 2});
  const backend_matrix<B, T> none{};
  const auto R = as_const(r.view());
  CHECK_NOTHROW(best_of_k_loss(b, R, as_const(best_ok.view().flat()), as_const(cn.view().flat()), none));
  CHECK_THROWS_WITH(best_of_k_loss(b, R, as_const(best_bad.view().flat()), as_const(cn.view().flat()), none),
                    Catch::Contains("rlhf::best_of_k_loss") && Catch::Contains("'best'") &&
                        Catch::Contains("received 2 at prompt 1"));
  CHECK_THROWS_WITH(best_of_k_loss(b, R, as_const(best_short.view().flat()), as_const(cn.view().flat()), none),
                    Catch::Contains("'best'") && Catch::Contains("size 2"));
  CHECK_THROWS_WITH(best_of_k_loss(b, R, as_const(best_ok.view().flat()), as_const(cn_low.view().flat()), none),
                    Catch::Contains("'counts'") && Catch::Contains("received 0 at prompt 0"));
  CHECK_THROWS_WITH(best_of_k_loss(b, R, as_const(best_ok.view().flat()), as_const(cn.view().flat()), r.view()),
                    Catch::Contains("rlhf::best_of_k_loss") && Catch::Contains("'d_rewards'") &&
                        Catch::Contains("overlapping"));
  best_of_k_options o;
  o.center_coefficient = std::numeric_limits<double>::infinity();
  CHECK_THROWS_WITH(best_of_k_loss(b, R, as_const(best_ok.view().flat()), as_const(cn.view().flat()), none, o),
                    Catch::Contains("'options.center_coefficient'"));
}
