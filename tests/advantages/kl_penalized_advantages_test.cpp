// rlhf::kl_penalized_advantages: the KL, the rewards, GAE and the advantages' moments in one call, on every
// backend and on the generic path: a hand-computed case, the equality with the separate calls (bit for bit),
// a one-pass hook (a CPU model of the CUDA kernel) against them, NaN at masked positions, empty rows, and
// named errors.
#include "test_support.hpp"

#include <algorithm>
#include <limits>

#include "rlhf/advantages/gae.hpp"
#include "rlhf/advantages/kl_penalized_advantages.hpp"
#include "rlhf/advantages/kl_penalized_rewards.hpp"
#include "rlhf/ops/kl_estimators.hpp"
#include "rlhf/ops/whitening.hpp"

using namespace rlhf;
using namespace rlhf::test;

namespace one_pass_ns {

// A CPU model of the CUDA backend's one-pass kernel (rlhf/backends/cuda/kl_penalized_advantages.cuh), as a
// hook on the reference backend: per row, the last valid column from the row's end, then one reverse sweep
// that computes each step's k1 KL and reward as it reads them, runs GAE on them and merges each valid advantage
// into the row's moments one value at a time (Chan's formula); rows merged in order. It is what one lane of
// the kernel computes; the warp's regrouping of the sweep is replayed in tests/backends/gae_step_map_test.cpp.
struct one_pass_backend : reference_backend {};

template <class T>
void rlhf_specialized_k1_kl_penalized_advantages(
    const one_pass_backend&, matrix_view<const T, host_space> logp, matrix_view<const T, host_space> ref_logp,
    matrix_view<const T, host_space> values, matrix_view<const mask_type, host_space> mask,
    vector_view<const T, host_space> shaped_scores, matrix_view<T, host_space> kl, matrix_view<T, host_space> rewards,
    matrix_view<T, host_space> advantages, matrix_view<T, host_space> returns, T beta, int placement, T gamma,
    T lambda, double& kl_total, std::size_t& valid_tokens, double& scored_sum, std::size_t& scored_rows,
    masked_moments& moments) {
  const std::size_t cols = logp.cols;
  kl_total = scored_sum = 0;
  valid_tokens = scored_rows = 0;
  moments = {};
  for (std::size_t r = 0; r < logp.rows; ++r) {
    long last = -1;
    for (std::size_t t = cols; t-- > 0;) {
      if (mask(r, t)) {
        last = static_cast<long>(t);
        break;
      }
    }
    long target = -1;
    if (last >= 0) {
      const long c = static_cast<long>(cols);
      target = placement == 1 ? c - 1 : placement == 2 ? std::min(last + 1, c - 1) : last;
      scored_sum += static_cast<double>(shaped_scores[r]);
      ++scored_rows;
    }
    T next_value = T(0), next_advantage = T(0);
    masked_moments row;
    for (std::size_t t = cols; t-- > 0;) {
      const bool valid = mask(r, t) != 0;
      const T k = valid ? logp(r, t) - ref_logp(r, t) : T(0);
      T reward = valid ? k * -beta : T(0);
      if (static_cast<long>(t) == target) reward += shaped_scores[r];
      kl(r, t) = k;
      rewards(r, t) = reward;
      T a = T(0), ret = T(0);
      if (valid) {
        kl_total += static_cast<double>(k);
        ++valid_tokens;
        const T v = values(r, t);
        next_advantage = reward + gamma * next_value - v + gamma * lambda * next_advantage;
        next_value = v;
        a = next_advantage;
        ret = next_advantage + v;
        row = combine(row, masked_moments{1.0, static_cast<double>(a), 0.0});
      }
      advantages(r, t) = a;
      if (!returns.empty()) returns(r, t) = ret;
    }
    moments = combine(moments, row);
  }
}

}  // namespace one_pass_ns

// The hook is what the dispatch finds: the one-pass case below would otherwise hold the four calls to
// themselves.
static_assert(detail::k1_kl_advantages_backend<one_pass_ns::one_pass_backend, float> &&
              detail::k1_kl_advantages_backend<one_pass_ns::one_pass_backend, double>);
static_assert(!detail::k1_kl_advantages_backend<reference_backend, double>);

// A random rollout [rows, cols]: log-probs, reference log-probs, values, scores, ended flags, and a ragged mask
// with interior holes (kept with probability `keep`) and row 1 empty; NaN at the masked log-probs and values,
// which no path may read.
template <class T>
struct random_rollout {
  std::vector<T> logp, ref_logp, values, scores;
  std::vector<mask_type> eos, mask;
  random_rollout(std::mt19937_64& g, std::size_t rows, std::size_t cols, double keep)
      : logp(uniform<T>(g, rows * cols, -3, 0)), ref_logp(uniform<T>(g, rows * cols, -3, 0)),
        values(normal<T>(g, rows * cols)), scores(normal<T>(g, rows, 0.5, 2.0)), eos(random_mask(g, rows, 0.6)),
        mask(mask_from_lengths(random_lengths(g, rows, cols, 0), cols)) {
    const auto holes = random_mask(g, rows * cols, keep);
    for (std::size_t i = 0; i < mask.size(); ++i) {
      mask[i] = static_cast<mask_type>(mask[i] & holes[i]);
      if (rows > 1 && i / cols == 1) mask[i] = 0;
      if (!mask[i]) logp[i] = values[i] = std::numeric_limits<T>::quiet_NaN();
    }
  }
};

TEMPLATE_LIST_TEST_CASE("kl_penalized_advantages: hand-computed KL, rewards, advantages, returns and moments",
                        "[advantages][kl_penalized_advantages]", all_configs) {
  using T = typename TestType::value;
  using B = typename TestType::backend;
  const auto b = TestType::make();
  const T nan = std::numeric_limits<T>::quiet_NaN();
  // Row 0, mask [1, 1, 1, 0]: logp [-1, -2, -1.5, NaN], ref [-1.5, -2.25, -1, 0] -> k1 [0.5, 0.25, -0.5, 0].
  // beta 0.1, score 1 on the last valid token: rewards [-0.05, -0.025, 0.05 + 1 = 1.05, 0].
  // values [0.5, 0.2, 0.1, 7 (masked)], gamma 1, lambda 0.5:
  //   t = 2: delta = 1.05 - 0.1 = 0.95                    A = 0.95              R = 1.05
  //   t = 1: delta = -0.025 + 0.1 - 0.2 = -0.125          A = -0.125 + 0.475 = 0.35      R = 0.55
  //   t = 0: delta = -0.05 + 0.2 - 0.5 = -0.35            A = -0.35 + 0.175 = -0.175     R = 0.325
  // Row 1: nothing valid (score 5 not placed): all 0.
  // Moments of A: count 3, mean 1.125 / 3 = 0.375, m2 = 0.575^2 + 0.025^2 + 0.55^2 = 0.63375.
  // Rewards' statistics: 3 valid tokens, KL total 0.25: mean_kl 0.25 / 3, mean_kl_sum 0.25 / 2; one scored
  // row (mean score 1), mean raw score (1 + 5) / 2 = 3.
  auto logp = to_backend(b, std::vector<T>{-1, -2, T(-1.5), nan, 0, 0, 0, 0}, 2, 4);
  auto ref = to_backend(b, std::vector<T>{T(-1.5), T(-2.25), -1, 0, 0, 0, 0, 0}, 2, 4);
  auto values = to_backend(b, std::vector<T>{T(0.5), T(0.2), T(0.1), 7, nan, nan, nan, nan}, 2, 4);
  auto scores = to_backend(b, std::vector<T>{1, 5}, 1, 2);
  auto mask = to_backend(b, std::vector<mask_type>{1, 1, 1, 0, 0, 0, 0, 0}, 2, 4);
  auto kl = allocate_filled<T>(b, 2, 4, T(9)), rw = allocate_filled<T>(b, 2, 4, T(9)),
       adv = allocate_filled<T>(b, 2, 4, T(9)), ret = allocate_filled<T>(b, 2, 4, T(9));
  kl_penalized_advantages_options o;
  o.rewards.beta = 0.1;
  o.gae = {1.0, 0.5};
  const auto s = kl_penalized_advantages(b, logp.view(), ref.view(), scores.view().flat(), values.view(), mask.view(),
                                         backend_vector<B, const mask_type>{}, kl.view(), rw.view(), adv.view(),
                                         ret.view(), o);
  const double rt = 10 * tolerance<T>::rtol, at = 10 * tolerance<T>::atol;
  CHECK_THAT(to_host(b, kl.view()), close_to<T>(std::vector<double>{0.5, 0.25, -0.5, 0, 0, 0, 0, 0}, rt, at));
  CHECK_THAT(to_host(b, rw.view()), close_to<T>(std::vector<double>{-0.05, -0.025, 1.05, 0, 0, 0, 0, 0}, rt, at));
  CHECK_THAT(to_host(b, adv.view()), close_to<T>(std::vector<double>{-0.175, 0.35, 0.95, 0, 0, 0, 0, 0}, rt, at));
  CHECK_THAT(to_host(b, ret.view()), close_to<T>(std::vector<double>{0.325, 0.55, 1.05, 0, 0, 0, 0, 0}, rt, at));
  const double tol = std::is_same_v<T, float> ? 1e-6 : 1e-12;
  CHECK(s.advantages.count == 3);
  CHECK(s.advantages.mean == Approx(0.375).epsilon(tol));
  CHECK(s.advantages.m2 == Approx(0.63375).epsilon(tol));
  CHECK(s.rewards.valid_tokens == 3);
  CHECK(s.rewards.scored_rows == 1);
  CHECK(s.rewards.mean_kl == Approx(0.25 / 3).epsilon(tol));
  CHECK(s.rewards.mean_kl_sum == Approx(0.125).epsilon(tol));
  CHECK(s.rewards.mean_score == Approx(1.0).epsilon(tol));
  CHECK(s.rewards.mean_raw_score == Approx(3.0).epsilon(tol));
  CHECK(s.rewards.mean_non_score_reward == Approx(-0.0125).epsilon(tol));
  // Whitening with the returned moments is whitening of the advantages.
  auto w1 = allocate<T>(b, 2, 4), w2 = allocate<T>(b, 2, 4);
  whiten(b, as_const(adv.view()), mask.view(), w1.view(), whiten_options{}, &s.advantages);
  whiten(b, as_const(adv.view()), mask.view(), w2.view());
  CHECK(to_host(b, w1.view()) == to_host(b, w2.view()));
}

TEMPLATE_LIST_TEST_CASE("kl_penalized_advantages: equals kl_penalized_rewards + gae + compute_masked_moments bit for bit",
                        "[advantages][kl_penalized_advantages][property]", all_configs) {
  // Every estimator (a one-pass kernel takes k1 and k1_straight_through without a clamp), every placement,
  // ragged rows with interior holes and NaN at masked positions, an empty row, rows longer than a vector, with
  // and without returns and has_eos, with the finite checks off and on.
  using T = typename TestType::value;
  using B = typename TestType::backend;
  const auto b = TestType::make();
  auto g = rng(41);
  for (auto [rows, cols] : {std::pair<std::size_t, std::size_t>{1, 1}, {6, 10}, {9, 300}}) {
    const random_rollout<T> in(g, rows, cols, 0.85);
    auto bp = to_backend(b, in.logp, rows, cols), br = to_backend(b, in.ref_logp, rows, cols);
    auto bv = to_backend(b, in.values, rows, cols);
    auto bs = to_backend(b, in.scores, 1, rows);
    auto bm = to_backend(b, in.mask, rows, cols);
    auto be = to_backend(b, in.eos, 1, rows);
    auto kl = allocate<T>(b, rows, cols), rw = allocate<T>(b, rows, cols), adv = allocate<T>(b, rows, cols),
         ret = allocate<T>(b, rows, cols);
    auto kl2 = allocate<T>(b, rows, cols), rw2 = allocate<T>(b, rows, cols), adv2 = allocate<T>(b, rows, cols),
         ret2 = allocate<T>(b, rows, cols);
    for (const bool finite_checks : {false, true}) {
      set_finite_checks(finite_checks);
      for (const auto& ko : {kl_estimator_options::instructgpt(), kl_estimator_options{kl_estimator::k1_straight_through, 0, 20},
                             kl_estimator_options::orl(), kl_estimator_options::verl_low_var(), kl_estimator_options::nemo()}) {
        for (auto p : {score_placement::last_valid_token, score_placement::last_position, score_placement::one_past_last_valid}) {
          for (const bool with_eos : {false, true}) {
            for (const bool with_returns : {true, false}) {
              INFO("rows " << rows << " cols " << cols << " estimator " << static_cast<int>(ko.estimator) << " clamp "
                           << ko.clamp << " placement " << static_cast<int>(p) << " eos " << with_eos << " returns "
                           << with_returns << " finite checks " << finite_checks);
              kl_penalized_advantages_options o{ko, kl_penalized_rewards_options{0.05, 3.0, 0.5, p}, gae_options{0.99, 0.9}};
              const backend_vector<B, const mask_type> e =
                  with_eos ? as_const(be.view().flat()) : backend_vector<B, const mask_type>{};
              const backend_matrix<B, T> r1 = with_returns ? ret.view() : backend_matrix<B, T>{};
              const backend_matrix<B, T> r2 = with_returns ? ret2.view() : backend_matrix<B, T>{};
              const auto s = kl_penalized_advantages(b, bp.view(), br.view(), bs.view().flat(), bv.view(), bm.view(), e,
                                                     kl.view(), rw.view(), adv.view(), r1, o);
              const auto rs = kl_penalized_rewards(b, bp.view(), br.view(), bs.view().flat(), bm.view(), e, kl2.view(),
                                                   rw2.view(), o.kl, o.rewards);
              gae(b, as_const(rw2.view()), bv.view(), bm.view(), adv2.view(), r2, o.gae);
              const masked_moments mm = compute_masked_moments(b, as_const(adv2.view()), bm.view());
              CHECK(to_host(b, kl.view()) == to_host(b, kl2.view()));
              CHECK(to_host(b, rw.view()) == to_host(b, rw2.view()));
              CHECK(to_host(b, adv.view()) == to_host(b, adv2.view()));
              if (with_returns) CHECK(to_host(b, ret.view()) == to_host(b, ret2.view()));
              CHECK(s.advantages.count == mm.count);
              CHECK(s.advantages.mean == mm.mean);
              CHECK(s.advantages.m2 == mm.m2);
              CHECK(s.rewards.valid_tokens == rs.valid_tokens);
              CHECK(s.rewards.scored_rows == rs.scored_rows);
              CHECK(s.rewards.mean_kl == rs.mean_kl);
              CHECK(s.rewards.mean_kl_sum == rs.mean_kl_sum);
              CHECK(s.rewards.mean_score == rs.mean_score);
              CHECK(s.rewards.mean_raw_score == rs.mean_raw_score);
              CHECK(s.rewards.mean_non_score_reward == rs.mean_non_score_reward);
            }
          }
        }
      }
    }
    set_finite_checks(false);
  }
}

TEMPLATE_LIST_TEST_CASE("kl_penalized_advantages: no rows, and rows without a valid token",
                        "[advantages][kl_penalized_advantages]", all_configs) {
  using T = typename TestType::value;
  using B = typename TestType::backend;
  const auto b = TestType::make();
  const backend_matrix<B, const T> none{};
  const auto s0 = kl_penalized_advantages(b, none, none, backend_vector<B, const T>{}, none,
                                          backend_matrix<B, const mask_type>{}, backend_vector<B, const mask_type>{},
                                          backend_matrix<B, T>{}, backend_matrix<B, T>{}, backend_matrix<B, T>{},
                                          backend_matrix<B, T>{});
  CHECK(s0.advantages.count == 0);
  CHECK(s0.rewards.valid_tokens == 0);
  // Three rows, none valid, NaN everywhere they are not read: outputs all +0, no score placed.
  const T nan = std::numeric_limits<T>::quiet_NaN();
  auto logp = allocate_filled<T>(b, 3, 5, nan), values = allocate_filled<T>(b, 3, 5, nan);
  auto ref = allocate_filled<T>(b, 3, 5, T(0));
  auto scores = to_backend(b, std::vector<T>{1, 2, 3}, 1, 3);
  auto mask = allocate_filled<mask_type>(b, 3, 5, mask_type(0));
  auto kl = allocate_filled<T>(b, 3, 5, T(9)), rw = allocate_filled<T>(b, 3, 5, T(9)),
       adv = allocate_filled<T>(b, 3, 5, T(9)), ret = allocate_filled<T>(b, 3, 5, T(9));
  const auto s = kl_penalized_advantages(b, logp.view(), ref.view(), scores.view().flat(), values.view(), mask.view(),
                                         backend_vector<B, const mask_type>{}, kl.view(), rw.view(), adv.view(),
                                         ret.view());
  for (const auto& out : {to_host(b, kl.view()), to_host(b, rw.view()), to_host(b, adv.view()), to_host(b, ret.view())}) {
    for (const T x : out) CHECK((x == T(0) && !std::signbit(x)));
  }
  CHECK(s.advantages.count == 0);
  CHECK(s.rewards.scored_rows == 0);
  CHECK(s.rewards.mean_raw_score == Approx(2.0));
}

TEMPLATE_LIST_TEST_CASE("kl_penalized_advantages rejects bad arguments with named errors",
                        "[advantages][kl_penalized_advantages][errors]", all_configs) {
  using T = typename TestType::value;
  using B = typename TestType::backend;
  const auto b = TestType::make();
  auto x = allocate_filled<T>(b, 2, 3, T(0)), other = allocate_filled<T>(b, 3, 2, T(0));
  auto scores = allocate_filled<T>(b, 1, 2, T(0)), short_scores = allocate_filled<T>(b, 1, 1, T(0));
  auto mask = allocate_filled<mask_type>(b, 2, 3, mask_type(1));
  auto kl = allocate<T>(b, 2, 3), rw = allocate<T>(b, 2, 3), adv = allocate<T>(b, 2, 3), ret = allocate<T>(b, 2, 3);
  const auto call = [&](backend_matrix<B, const T> values, backend_vector<B, const T> sc, backend_matrix<B, T> a,
                        const kl_penalized_advantages_options& o) {
    kl_penalized_advantages(b, x.view(), x.view(), sc, values, mask.view(), backend_vector<B, const mask_type>{},
                            kl.view(), rw.view(), a, ret.view(), o);
  };
  const auto expect_error = [&](auto&& f, const std::string& argument, const std::string& received) {
    try {
      f();
      FAIL("no error for " << argument);
    } catch (const rlhf::invalid_argument& e) {
      const std::string what = e.what();
      CHECK_THAT(what, Catch::Contains("rlhf::kl_penalized_advantages") && Catch::Contains(argument) &&
                           Catch::Contains(received));
    }
  };
  const kl_penalized_advantages_options ok{};
  expect_error([&] { call(other.view(), scores.view().flat(), adv.view(), ok); }, "values", "[3, 2]");
  expect_error([&] { call(x.view(), short_scores.view().flat(), adv.view(), ok); }, "scores", "1");
  expect_error([&] { call(x.view(), scores.view().flat(), other.view(), ok); }, "advantages", "[3, 2]");
  kl_penalized_advantages_options bad_gamma;
  bad_gamma.gae.gamma = 1.5;
  expect_error([&] { call(x.view(), scores.view().flat(), adv.view(), bad_gamma); }, "options.gae.gamma", "1.5");
  kl_penalized_advantages_options bad_beta;
  bad_beta.rewards.beta = -1;
  expect_error([&] { call(x.view(), scores.view().flat(), adv.view(), bad_beta); }, "options.rewards.beta", "-1");
  kl_penalized_advantages_options bad_clamp;
  bad_clamp.kl.clamp = -2;
  expect_error([&] { call(x.view(), scores.view().flat(), adv.view(), bad_clamp); }, "options.kl.clamp", "-2");
  // Nothing was written before the errors: the outputs still hold what they held.
  auto before = allocate_filled<T>(b, 2, 3, T(4));
  expect_error([&] {
    kl_penalized_advantages(b, x.view(), x.view(), scores.view().flat(), other.view(), mask.view(),
                            backend_vector<B, const mask_type>{}, before.view(), rw.view(), adv.view(), ret.view());
  }, "values", "[3, 2]");
  CHECK(to_host(b, before.view()) == std::vector<T>(6, T(4)));
}

TEMPLATE_TEST_CASE("kl_penalized_advantages: a one-pass hook (the CUDA kernel's algorithm, on the CPU) agrees with "
                   "the four calls", "[advantages][kl_penalized_advantages][property]", float, double) {
  // k1 and k1_straight_through take the hook; its KL and rewards are the four calls' to the bit, its GAE sweep
  // and per-value moments agree to rounding. Ragged rows with holes, NaN where masked, an empty row, every
  // placement, has_eos, with and without returns. A non-k1 estimator and the finite checks take the four calls.
  using T = TestType;
  const one_pass_ns::one_pass_backend hook;
  const reference_backend ref;
  auto g = rng(43);
  for (auto [rows, cols] : {std::pair<std::size_t, std::size_t>{1, 1}, {7, 33}, {12, 500}}) {
    const random_rollout<T> in(g, rows, cols, 0.8);
    for (const auto& ko : {kl_estimator_options::instructgpt(), kl_estimator_options{kl_estimator::k1_straight_through, 0, 20},
                           kl_estimator_options::trl1_k3()}) {
      for (auto p : {score_placement::last_valid_token, score_placement::last_position, score_placement::one_past_last_valid}) {
        for (const bool with_returns : {true, false}) {
          INFO("rows " << rows << " cols " << cols << " estimator " << static_cast<int>(ko.estimator) << " placement "
                       << static_cast<int>(p) << " returns " << with_returns);
          const kl_penalized_advantages_options o{ko, kl_penalized_rewards_options{0.05, 3.0, 0.5, p}, gae_options{0.99, 0.9}};
          const auto run = [&](const auto& b) {
            std::vector<T> kl(rows * cols, T(7)), rw(rows * cols, T(7)), adv(rows * cols, T(7)), ret(rows * cols, T(7));
            const auto st = kl_penalized_advantages<std::decay_t<decltype(b)>, T>(
                b, make_matrix_view(in.logp.data(), rows, cols), make_matrix_view(in.ref_logp.data(), rows, cols),
                make_vector_view(in.scores.data(), rows), make_matrix_view(in.values.data(), rows, cols),
                make_matrix_view(in.mask.data(), rows, cols), make_vector_view(in.eos.data(), rows),
                make_matrix_view(kl.data(), rows, cols), make_matrix_view(rw.data(), rows, cols),
                make_matrix_view(adv.data(), rows, cols),
                with_returns ? make_matrix_view(ret.data(), rows, cols) : matrix_view<T, host_space>{}, o);
            return std::tuple{kl, rw, adv, ret, st};
          };
          const auto [kl1, rw1, adv1, ret1, s1] = run(hook);
          const auto [kl2, rw2, adv2, ret2, s2] = run(ref);
          CHECK(kl1 == kl2);
          CHECK(rw1 == rw2);
          const double tol = std::is_same_v<T, float> ? 1e-5 : 1e-12;
          CHECK_THAT(adv1, close_to<T>(std::vector<double>(adv2.begin(), adv2.end()), tol, tol));
          if (with_returns) CHECK_THAT(ret1, close_to<T>(std::vector<double>(ret2.begin(), ret2.end()), tol, tol));
          CHECK(s1.advantages.count == s2.advantages.count);
          CHECK(s1.advantages.mean == Approx(s2.advantages.mean).epsilon(tol).margin(tol));
          CHECK(s1.advantages.m2 == Approx(s2.advantages.m2).epsilon(tol).margin(tol));
          CHECK(s1.rewards.valid_tokens == s2.rewards.valid_tokens);
          CHECK(s1.rewards.scored_rows == s2.rewards.scored_rows);
          CHECK(s1.rewards.mean_kl == Approx(s2.rewards.mean_kl).epsilon(1e-12).margin(1e-12));
          CHECK(s1.rewards.mean_score == Approx(s2.rewards.mean_score).epsilon(1e-12).margin(1e-12));
          CHECK(s1.rewards.mean_raw_score == s2.rewards.mean_raw_score);
        }
      }
    }
  }
}
