// PPO-ptx loss (rlhf/losses/ptx_loss.hpp): -gamma * aggregate(logp_pretrain), InstructGPT eq. 2.
#include "test_support.hpp"

#include <cmath>
#include <limits>

#include "rlhf/losses/ptx_loss.hpp"

using namespace rlhf;
using namespace rlhf::test;

TEST_CASE("ptx_options presets", "[losses][ptx]") {
  CHECK(ptx_options{}.coefficient == 27.8);             // InstructGPT gamma
  CHECK(ptx_options::instructgpt().coefficient == 27.8);
  CHECK(ptx_options::dsc().coefficient == 27.8);        // --unsup_coef 27.8
  CHECK(ptx_options::orl().coefficient == 0.05);        // --ptx_coef 0.05 (<= v0.7.0)
}

TEMPLATE_LIST_TEST_CASE("ptx_loss: hand-computed, gamma times the SFT loss", "[losses][ptx]", all_configs) {
  using T = typename TestType::value;
  const auto b = TestType::make();
  // logp = [-1, -2, -3 | -4 masked]: token mean NLL 2 -> loss 27.8 * 2 = 55.6; d = -27.8 / 3 on valid tokens.
  auto blp = to_backend(b, std::vector<T>{-1, -2, -3, -4}, 1, 4);
  auto bm = to_backend(b, std::vector<mask_type>{1, 1, 1, 0}, 1, 4);
  auto d = allocate<T>(b, 1, 4);
  const sft_loss_stats s = ptx_loss(b, blp.view(), bm.view(), d.view());
  CHECK(s.loss == Approx(55.6).epsilon(1e-12));
  CHECK(s.nll == Approx(2.0).epsilon(1e-12));  // unscaled
  CHECK(s.token_count == 3);
  CHECK_THAT(to_host(b, d.view()), close_to<T>(std::vector<double>{-27.8 / 3, -27.8 / 3, -27.8 / 3, 0}));
  const sft_loss_stats o = ptx_loss(b, blp.view(), bm.view(), d.view(), ptx_options::orl());
  CHECK(o.loss == Approx(0.1).epsilon(1e-12));
  CHECK_THAT(to_host(b, d.view()), close_to<T>(std::vector<double>{-0.05 / 3, -0.05 / 3, -0.05 / 3, 0}));
}

TEMPLATE_LIST_TEST_CASE("ptx_loss equals gamma * sft_loss in every aggregation mode", "[losses][ptx]", all_configs) {
  using T = typename TestType::value;
  const auto b = TestType::make();
  auto g = rng(701);
  const std::size_t rows = 6, cols = 17;
  const auto lp = uniform<T>(g, rows * cols, -5, -0.1);
  const auto m = random_mask(g, rows * cols, 0.5);
  auto blp = to_backend(b, lp, rows, cols);
  auto bm = to_backend(b, m, rows, cols);
  auto d1 = allocate<T>(b, rows, cols), d2 = allocate<T>(b, rows, cols);
  for (const auto& agg : {loss_aggregation{}, loss_aggregation::seq_mean_token_mean(),
                          loss_aggregation::seq_mean_token_sum_norm()}) {
    const sft_loss_stats sft = sft_loss(b, blp.view(), bm.view(), d1.view(), agg);
    const sft_loss_stats ptx = ptx_loss(b, blp.view(), bm.view(), d2.view(), ptx_options{2.5}, agg);
    CHECK(near<T>(ptx.loss, 2.5 * sft.loss, 10));
    std::vector<double> want;
    for (auto v : to_host(b, d1.view())) want.push_back(2.5 * static_cast<double>(v));
    CHECK_THAT(to_host(b, d2.view()), close_to<T>(want));
  }
}

TEMPLATE_LIST_TEST_CASE("ptx_loss gradient matches finite differences", "[losses][ptx][gradient]", double_configs) {
  const auto b = TestType::make();
  auto g = rng(702);
  const std::size_t rows = 3, cols = 5;
  const auto lp = uniform<double>(g, rows * cols, -4, -0.1);
  const auto m = random_mask(g, rows * cols, 0.7);
  auto bm = to_backend(b, m, rows, cols);
  auto blp = to_backend(b, lp, rows, cols);
  auto d = allocate<double>(b, rows, cols);
  ptx_loss(b, blp.view(), bm.view(), d.view());
  const auto f = [&](const std::vector<double>& x) {
    auto bx = to_backend(b, x, rows, cols);
    return ptx_loss(b, bx.view(), bm.view(), backend_matrix<decltype(b), double>{}).loss;
  };
  CHECK_THAT(to_host(b, d.view()), close_to<double>(numeric_gradient(f, lp), fd_rtol, fd_atol));
}

TEMPLATE_LIST_TEST_CASE("ptx_loss rejects bad arguments with named errors", "[losses][ptx][errors]", all_configs) {
  using T = typename TestType::value;
  const auto b = TestType::make();
  auto lp = allocate_filled<T>(b, 2, 3, T(-1));
  auto m = allocate_filled<mask_type>(b, 2, 3, mask_type(1));
  auto bad_m = allocate_filled<mask_type>(b, 3, 3, mask_type(1));
  auto d = allocate<T>(b, 2, 3);
  CHECK_THROWS_WITH(ptx_loss(b, lp.view(), bad_m.view(), d.view()),
                    Catch::Contains("rlhf::ptx_loss") && Catch::Contains("'mask'") &&
                        Catch::Contains("(same as 'logp_pretrain')"));
  CHECK_THROWS_WITH(ptx_loss(b, lp.view(), m.view(), d.view(), ptx_options{-1}),
                    Catch::Contains("rlhf::ptx_loss") && Catch::Contains("'options.coefficient'"));
  CHECK_THROWS_WITH(ptx_loss(b, lp.view(), m.view(), d.view(), ptx_options{std::numeric_limits<double>::infinity()}),
                    Catch::Contains("'options.coefficient'"));
}
