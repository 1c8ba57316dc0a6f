// SFT loss (rlhf/losses/sft_loss.hpp): response-token cross-entropy from per-token log-probs.
#include "test_support.hpp"

#include <cmath>
#include <limits>

#include "rlhf/losses/sft_loss.hpp"

using namespace rlhf;
using namespace rlhf::test;

TEMPLATE_LIST_TEST_CASE("sft_loss: hand-computed, prompt tokens masked out", "[losses][sft]", all_configs) {
  using T = typename TestType::value;
  const auto b = TestType::make();
  // Row 0: prompt (2 tokens) + response log-probs -1, -2; row 1: prompt (1) + response -0.5, -1.5, -1.
  // token mean: -(-1 - 2 - 0.5 - 1.5 - 1) / 5 = 6 / 5 = 1.2; d_logp = -1/5 on response tokens.
  // seq-mean-token-mean: (1.5 + 1) / 2 = 1.25; d_logp = -1/4 (row 0), -1/6 (row 1).
  auto blp = to_backend(b, std::vector<T>{-9, -9, -1, -2, -9, T(-0.5), T(-1.5), -1}, 2, 4);
  auto bm = to_backend(b, std::vector<mask_type>{0, 0, 1, 1, 0, 1, 1, 1}, 2, 4);
  auto d = allocate<T>(b, 2, 4);
  const sft_loss_stats s = sft_loss(b, blp.view(), bm.view(), d.view());
  CHECK(s.loss == Approx(1.2).epsilon(1e-12));
  CHECK(s.nll == Approx(1.2).epsilon(1e-12));
  CHECK(s.perplexity == Approx(std::exp(1.2)).epsilon(1e-12));
  CHECK(s.token_count == 5);
  CHECK_THAT(to_host(b, d.view()), close_to<T>(std::vector<double>{0, 0, -0.2, -0.2, 0, -0.2, -0.2, -0.2}));
  const sft_loss_stats q = sft_loss(b, blp.view(), bm.view(), d.view(), loss_aggregation::seq_mean_token_mean());
  CHECK(q.loss == Approx(1.25).epsilon(1e-12));
  CHECK(q.nll == Approx(1.2).epsilon(1e-12));
  CHECK_THAT(to_host(b, d.view()),
             close_to<T>(std::vector<double>{0, 0, -0.25, -0.25, 0, -1.0 / 6, -1.0 / 6, -1.0 / 6}));
  // Nothing valid: loss 0, perplexity 1, no NaN.
  auto none = allocate_filled<mask_type>(b, 2, 4, mask_type(0));
  const sft_loss_stats e = sft_loss(b, blp.view(), none.view(), d.view());
  CHECK(e.loss == 0);
  CHECK(e.perplexity == 1);
}

TEMPLATE_LIST_TEST_CASE("sft_loss matches -sum m logp / sum m and is micro-batch invariant", "[losses][sft]",
                        all_configs) {
  using T = typename TestType::value;
  const auto b = TestType::make();
  auto g = rng(601);
  const std::size_t rows = 8, cols = 25;
  const auto lp = uniform<T>(g, rows * cols, -6, -0.01);
  const auto m = mask_from_lengths(random_lengths(g, rows, cols, 1), cols);
  auto blp = to_backend(b, lp, rows, cols);
  auto bm = to_backend(b, m, rows, cols);
  double sum = 0, n = 0;
  for (std::size_t i = 0; i < lp.size(); ++i)
    if (m[i]) sum += lp[i], n += 1;
  auto d = allocate<T>(b, rows, cols), d_mb = allocate<T>(b, rows, cols);
  const double full = sft_loss(b, blp.view(), bm.view(), d.view()).loss;
  CHECK(near<T>(full, -sum / n, 100));
  double parts = 0;
  for (auto [first, count] : {std::pair<std::size_t, std::size_t>{0, 3}, {3, 5}}) {
    parts += sft_loss(b, blp.view().row_block(first, count), bm.view().row_block(first, count),
                      d_mb.view().row_block(first, count), loss_aggregation::token_mean_global(n))
                 .loss;
  }
  CHECK(near<T>(parts, full, 100));
  CHECK_THAT(to_host(b, d_mb.view()), close_to<T>(to_host(b, d.view())));
}

TEMPLATE_LIST_TEST_CASE("sft_loss gradient matches finite differences", "[losses][sft][gradient]", double_configs) {
  const auto b = TestType::make();
  auto g = rng(602);
  const std::size_t rows = 3, cols = 7;
  const auto lp = uniform<double>(g, rows * cols, -4, -0.1);
  const auto m = random_mask(g, rows * cols, 0.7);
  auto bm = to_backend(b, m, rows, cols);
  for (const auto& agg : {loss_aggregation{}, loss_aggregation::seq_mean_token_sum()}) {
    auto blp = to_backend(b, lp, rows, cols);
    auto d = allocate<double>(b, rows, cols);
    sft_loss(b, blp.view(), bm.view(), d.view(), agg);
    const auto f = [&](const std::vector<double>& x) {
      auto bx = to_backend(b, x, rows, cols);
      return sft_loss(b, bx.view(), bm.view(), backend_matrix<decltype(b), double>{}, agg).loss;
    };
    CHECK_THAT(to_host(b, d.view()), close_to<double>(numeric_gradient(f, lp), fd_rtol, fd_atol));
  }
}

TEMPLATE_LIST_TEST_CASE("sft_loss rejects bad arguments with named errors", "[losses][sft][errors]", all_configs) {
  using T = typename TestType::value;
  const auto b = TestType::make();
  auto lp = allocate_filled<T>(b, 2, 3, T(-1));
  auto m = allocate_filled<mask_type>(b, 2, 3, mask_type(1));
  auto bad_m = allocate_filled<mask_type>(b, 2, 4, mask_type(1));
  auto bad_d = allocate<T>(b, 1, 3);
  auto d = allocate<T>(b, 2, 3);
  CHECK_THROWS_WITH(sft_loss(b, lp.view(), bad_m.view(), d.view()),
                    Catch::Contains("rlhf::sft_loss") && Catch::Contains("'mask'") && Catch::Contains("[2, 4]"));
  CHECK_THROWS_WITH(sft_loss(b, lp.view(), m.view(), bad_d.view()),
                    Catch::Contains("rlhf::sft_loss") && Catch::Contains("'d_logp'"));
  CHECK_THROWS_WITH(sft_loss(b, lp.view(), m.view(), d.view(), loss_aggregation{aggregation_mode::token_mean, -1, 0, 0}),
                    Catch::Contains("rlhf::sft_loss") && Catch::Contains("'aggregation.global_token_count'"));
  auto nan = allocate_filled<T>(b, 2, 3, std::numeric_limits<T>::quiet_NaN());
  set_finite_checks(true);
  CHECK_THROWS_WITH(sft_loss(b, nan.view(), m.view(), d.view()), Catch::Contains("'logp'"));
  set_finite_checks(false);
}
