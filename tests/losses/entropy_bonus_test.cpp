// Entropy bonus (rlhf/losses/entropy_bonus.hpp): loss = -c * aggregate(H) and its gradient w.r.t. H.
#include "test_support.hpp"

#include <limits>

#include "rlhf/losses/entropy_bonus.hpp"

using namespace rlhf;
using namespace rlhf::test;

TEMPLATE_LIST_TEST_CASE("entropy_bonus: hand-computed", "[losses][entropy]", all_configs) {
  using T = typename TestType::value;
  const auto b = TestType::make();
  // H = [[1, 2, x], [3, x, x]] with rows of 2 and 1 valid tokens, c = 0.01.
  // token mean: (1 + 2 + 3) / 3 = 2 -> loss -0.02; d_H = -0.01 / 3 on valid tokens.
  // seq-mean-token-mean: (1.5 + 3) / 2 = 2.25 -> loss -0.0225; d_H = -0.01 / 4, -0.01 / 4, -0.01 / 2.
  const T x = std::numeric_limits<T>::quiet_NaN();
  auto bh = to_backend(b, std::vector<T>{1, 2, x, 3, x, x}, 2, 3);
  auto bm = to_backend(b, std::vector<mask_type>{1, 1, 0, 1, 0, 0}, 2, 3);
  auto d = allocate<T>(b, 2, 3);
  const entropy_bonus_stats s = entropy_bonus(b, bh.view(), bm.view(), d.view(), 0.01);
  CHECK(s.loss == Approx(-0.02).epsilon(1e-12));
  CHECK(s.mean_entropy == 2.0);
  CHECK(s.token_count == 3);
  CHECK_THAT(to_host(b, d.view()), close_to<T>(std::vector<double>{-0.01 / 3, -0.01 / 3, 0, -0.01 / 3, 0, 0}));
  const entropy_bonus_stats q =
      entropy_bonus(b, bh.view(), bm.view(), d.view(), 0.01, loss_aggregation::seq_mean_token_mean());
  CHECK(q.loss == Approx(-0.0225).epsilon(1e-12));
  CHECK(q.mean_entropy == 2.0);  // the logged mean is always the token mean
  CHECK_THAT(to_host(b, d.view()), close_to<T>(std::vector<double>{-0.0025, -0.0025, 0, -0.005, 0, 0}));
  // Coefficient 0 (InstructGPT, TRL, VERL defaults): logged only, zero loss and gradient.
  const entropy_bonus_stats z = entropy_bonus(b, bh.view(), bm.view(), d.view(), 0.0);
  CHECK(z.loss == 0.0);
  CHECK(z.mean_entropy == 2.0);
  CHECK(to_host(b, d.view()) == std::vector<T>(6, T(0)));
}

TEMPLATE_LIST_TEST_CASE("entropy_bonus matches the oracle on random masks", "[losses][entropy]", all_configs) {
  using T = typename TestType::value;
  const auto b = TestType::make();
  auto g = rng(501);
  const std::size_t rows = 7, cols = 19;
  const auto h = uniform<T>(g, rows * cols, 0, 5);
  const auto m = random_mask(g, rows * cols, 0.6);
  auto bh = to_backend(b, h, rows, cols);
  auto bm = to_backend(b, m, rows, cols);
  auto d = allocate<T>(b, rows, cols);
  double sum = 0, n = 0;
  for (std::size_t i = 0; i < h.size(); ++i)
    if (m[i]) sum += h[i], n += 1;
  const entropy_bonus_stats s = entropy_bonus(b, bh.view(), bm.view(), d.view(), 0.05);
  CHECK(near<T>(s.loss, -0.05 * sum / n, 100));
  CHECK(near<T>(s.mean_entropy, sum / n, 100));
  std::vector<double> want(h.size());
  for (std::size_t i = 0; i < h.size(); ++i) want[i] = m[i] ? -0.05 / n : 0.0;
  CHECK_THAT(to_host(b, d.view()), close_to<T>(want));
}

TEMPLATE_LIST_TEST_CASE("entropy_bonus gradient matches finite differences", "[losses][entropy][gradient]",
                        double_configs) {
  const auto b = TestType::make();
  auto g = rng(502);
  const std::size_t rows = 4, cols = 6;
  const auto h = uniform<double>(g, rows * cols, 0, 3);
  const auto m = mask_from_lengths({6, 2, 0, 4}, cols);
  auto bm = to_backend(b, m, rows, cols);
  for (const auto& agg : {loss_aggregation{}, loss_aggregation::seq_mean_token_mean(),
                          loss_aggregation::seq_mean_token_sum_norm(8)}) {
    auto bh = to_backend(b, h, rows, cols);
    auto d = allocate<double>(b, rows, cols);
    entropy_bonus(b, bh.view(), bm.view(), d.view(), 0.3, agg);
    const auto f = [&](const std::vector<double>& x) {
      auto bx = to_backend(b, x, rows, cols);
      return entropy_bonus(b, bx.view(), bm.view(), backend_matrix<decltype(b), double>{}, 0.3, agg).loss;
    };
    CHECK_THAT(to_host(b, d.view()), close_to<double>(numeric_gradient(f, h), fd_rtol, fd_atol));
  }
}

TEMPLATE_LIST_TEST_CASE("entropy_bonus rejects bad arguments with named errors", "[losses][entropy][errors]",
                        all_configs) {
  using T = typename TestType::value;
  const auto b = TestType::make();
  auto h = allocate_filled<T>(b, 2, 3, T(1));
  auto m = allocate_filled<mask_type>(b, 2, 3, mask_type(1));
  auto bad_m = allocate_filled<mask_type>(b, 1, 3, mask_type(1));
  auto d = allocate<T>(b, 2, 3), bad_d = allocate<T>(b, 2, 2);
  CHECK_THROWS_WITH(entropy_bonus(b, h.view(), bad_m.view(), d.view(), 0.1),
                    Catch::Contains("rlhf::entropy_bonus") && Catch::Contains("'mask'") && Catch::Contains("[1, 3]"));
  CHECK_THROWS_WITH(entropy_bonus(b, h.view(), m.view(), bad_d.view(), 0.1),
                    Catch::Contains("rlhf::entropy_bonus") && Catch::Contains("'d_entropy'"));
  CHECK_THROWS_WITH(entropy_bonus(b, h.view(), m.view(), d.view(), -0.1),
                    Catch::Contains("rlhf::entropy_bonus") && Catch::Contains("'coefficient'"));
  CHECK_THROWS_WITH(entropy_bonus(b, h.view(), m.view(), d.view(), std::numeric_limits<double>::quiet_NaN()),
                    Catch::Contains("'coefficient'"));
}
