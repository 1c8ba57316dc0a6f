// Clipped value loss (rlhf/losses/value_loss.hpp): hand-computed clip active/inactive, naive oracle,
// finite differences, micro-batch invariance, errors.
#include "test_support.hpp"

#include "losses/aggregation_oracle.hpp"

#include <cmath>
#include <limits>

#include "rlhf/losses/value_loss.hpp"

using namespace rlhf;
using namespace rlhf::test;

namespace {

// l = 1/2 max((V' - R)^2, (V + clip(V' - V, -e, e) - R)^2), gradient by cases.
template <class T>
std::pair<value_loss_stats, std::vector<double>> naive_value(const std::vector<T>& v, const std::vector<T>& vo,
                                                             const std::vector<T>& ret, const std::vector<mask_type>& m,
                                                             std::size_t rows, std::size_t cols, double eps,
                                                             const loss_aggregation& agg) {
  const auto w = naive_weights(m, rows, cols, agg);
  value_loss_stats s;
  std::vector<double> grad(v.size(), 0.0);
  for (std::size_t i = 0; i < v.size(); ++i) {
    if (!m[i]) continue;
    const double vn = v[i], vold = vo[i], r = ret[i];
    const double d1 = vn - r;
    double loss = 0.5 * d1 * d1, g = d1;
    if (eps > 0 && std::abs(vn - vold) > eps) {
      const double d2 = vold + std::clamp(vn - vold, -eps, eps) - r;
      if (d2 * d2 > d1 * d1) loss = 0.5 * d2 * d2, g = 0, s.clip_fraction += 1;
    }
    s.loss += w[i / cols] * loss;
    grad[i] = w[i / cols] * g;
    s.token_count += 1;
    s.mean_value += vn;
    s.mean_return += r;
    s.mean_squared_error += d1 * d1;
  }
  if (s.token_count > 0) {
    s.clip_fraction /= s.token_count;
    s.mean_value /= s.token_count;
    s.mean_return /= s.token_count;
    s.mean_squared_error /= s.token_count;
  }
  return {s, grad};
}
}  // namespace

TEMPLATE_LIST_TEST_CASE("clipped_value_loss: hand-computed clip active and inactive", "[losses][value]", all_configs) {
  using T = typename TestType::value;
  const auto b = TestType::make();
  // eps_v = 0.2, V = 1 everywhere, token mean over 3:
  //  t0: V' = 1.1, R = 2: inside the clip, d1 = -0.9 -> 0.405, grad -0.9
  //  t1: V' = 1.5, R = 2: d1 = -0.5 (0.125), clipped V = 1.2, d2 = -0.8 (0.32) -> clipped 0.32, grad 0
  //  t2: V' = 1.5, R = 0: d1 = 1.5 (1.125), d2 = 1.2 (0.72) -> unclipped 1.125, grad 1.5
  // loss = (0.405 + 0.32 + 1.125) / 3 = 1.85 / 3; d_values = [-0.9, 0, 1.5] / 3; clip fraction 1/3.
  auto bv = to_backend(b, std::vector<T>{T(1.1), T(1.5), T(1.5)}, 1, 3);
  auto bo = allocate_filled<T>(b, 1, 3, T(1));
  auto br = to_backend(b, std::vector<T>{2, 2, 0}, 1, 3);
  auto bm = allocate_filled<mask_type>(b, 1, 3, mask_type(1));
  auto d = allocate<T>(b, 1, 3);
  const value_loss_stats s = clipped_value_loss(b, bv.view(), bo.view(), br.view(), bm.view(), d.view());
  CHECK(s.loss == Approx(1.85 / 3).epsilon(1e-6));
  CHECK(s.clip_fraction == Approx(1.0 / 3));
  CHECK(s.mean_value == Approx(4.1 / 3).epsilon(1e-6));
  CHECK(s.mean_return == Approx(4.0 / 3));
  CHECK(s.mean_squared_error == Approx(3.31 / 3).epsilon(1e-6));
  CHECK(s.token_count == 3);
  CHECK_THAT(to_host(b, d.view()), close_to<T>(std::vector<double>{-0.3, 0, 0.5}, 1e-6, 1e-7));
  // Unclipped (NEMO loss_clip_val <= 0): (0.405 + 0.125 + 1.125) / 3, grads [-0.9, -0.5, 1.5] / 3.
  const value_loss_stats u =
      clipped_value_loss(b, bv.view(), bo.view(), br.view(), bm.view(), d.view(), value_loss_options::unclipped());
  CHECK(u.loss == Approx(1.655 / 3).epsilon(1e-6));
  CHECK(u.clip_fraction == 0);
  CHECK_THAT(to_host(b, d.view()), close_to<T>(std::vector<double>{-0.3, -0.5 / 3, 0.5}, 1e-6, 1e-7));
  // ORL/VERL eps_v = 0.5: t1 and t2 are inside the clip: (0.405 + 0.125 + 1.125) / 3 as well.
  CHECK(clipped_value_loss(b, bv.view(), bo.view(), br.view(), bm.view(), d.view(), value_loss_options::verl()).loss ==
        Approx(1.655 / 3).epsilon(1e-6));
}

TEMPLATE_LIST_TEST_CASE("clipped_value_loss matches the naive oracle", "[losses][value]", all_configs) {
  using T = typename TestType::value;
  const auto b = TestType::make();
  auto g = rng(401);
  const std::size_t rows = 10, cols = 21;
  for (int trial = 0; trial < 2; ++trial) {
    const auto vo = normal<T>(g, rows * cols);
    auto v = vo;
    const auto step = normal<double>(g, rows * cols, 0, 0.4);
    for (std::size_t i = 0; i < v.size(); ++i) v[i] = static_cast<T>(vo[i] + step[i]);
    const auto ret = normal<T>(g, rows * cols);
    const auto m = trial ? random_mask(g, rows * cols) : mask_from_lengths(random_lengths(g, rows, cols), cols);
    auto bv = to_backend(b, v, rows, cols), bo = to_backend(b, vo, rows, cols), br = to_backend(b, ret, rows, cols);
    auto bm = to_backend(b, m, rows, cols);
    auto d = allocate<T>(b, rows, cols);
    for (const auto& o : {value_loss_options{}, value_loss_options::orl(), value_loss_options::unclipped()}) {
      for (const auto& agg : {loss_aggregation{}, loss_aggregation::seq_mean_token_sum()}) {
        const auto [want, grad] = naive_value(v, vo, ret, m, rows, cols, o.clip, agg);
        const value_loss_stats got = clipped_value_loss(b, bv.view(), bo.view(), br.view(), bm.view(), d.view(), o, agg);
        CHECK(near<T>(got.loss, want.loss, 100));
        CHECK(got.clip_fraction == Approx(want.clip_fraction).margin(1e-12));
        CHECK(near<T>(got.mean_value, want.mean_value, 100));
        CHECK(near<T>(got.mean_return, want.mean_return, 100));
        CHECK(near<T>(got.mean_squared_error, want.mean_squared_error, 100));
        CHECK_THAT(to_host(b, d.view()), close_to<T>(grad, 10 * tolerance<T>::rtol, tolerance<T>::atol));
        if (o.clip == 0.2) CHECK(want.clip_fraction > 0);
      }
    }
  }
}

TEMPLATE_LIST_TEST_CASE("clipped_value_loss gradient matches finite differences", "[losses][value][gradient]",
                        double_configs) {
  const auto b = TestType::make();
  auto g = rng(402);
  const std::size_t rows = 3, cols = 8;
  const auto vo = normal<double>(g, rows * cols);
  const auto ret = normal<double>(g, rows * cols);
  const auto m = random_mask(g, rows * cols, 0.8);
  // V' - V away from +-eps and from the tie d1^2 = d2^2.
  const double steps[] = {-0.7, -0.35, -0.1, 0.05, 0.15, 0.33, 0.9, -0.27};
  std::vector<double> v(rows * cols);
  for (std::size_t i = 0; i < v.size(); ++i) v[i] = vo[i] + steps[i % 8];
  auto bo = to_backend(b, vo, rows, cols), br = to_backend(b, ret, rows, cols);
  auto bm = to_backend(b, m, rows, cols);
  for (const auto& o : {value_loss_options{}, value_loss_options::verl(), value_loss_options::unclipped()}) {
    for (const auto& agg : {loss_aggregation{}, loss_aggregation::seq_mean_token_mean()}) {
      auto bv = to_backend(b, v, rows, cols);
      auto d = allocate<double>(b, rows, cols);
      clipped_value_loss(b, bv.view(), bo.view(), br.view(), bm.view(), d.view(), o, agg);
      const auto f = [&](const std::vector<double>& x) {
        auto bx = to_backend(b, x, rows, cols);
        return clipped_value_loss(b, bx.view(), bo.view(), br.view(), bm.view(), backend_matrix<decltype(b), double>{},
                                  o, agg)
            .loss;
      };
      CHECK_THAT(to_host(b, d.view()), close_to<double>(numeric_gradient(f, v), fd_rtol, fd_atol));
    }
  }
}

TEMPLATE_LIST_TEST_CASE("clipped_value_loss with a global token count is micro-batch invariant", "[losses][value]",
                        all_configs) {
  using T = typename TestType::value;
  const auto b = TestType::make();
  auto g = rng(403);
  const std::size_t rows = 5, cols = 16;
  const auto v = normal<T>(g, rows * cols), vo = normal<T>(g, rows * cols), ret = normal<T>(g, rows * cols);
  const auto m = mask_from_lengths({2, 16, 0, 9, 16}, cols);
  auto bv = to_backend(b, v, rows, cols), bo = to_backend(b, vo, rows, cols), br = to_backend(b, ret, rows, cols);
  auto bm = to_backend(b, m, rows, cols);
  auto d_full = allocate<T>(b, rows, cols), d_mb = allocate<T>(b, rows, cols);
  const double full = clipped_value_loss(b, bv.view(), bo.view(), br.view(), bm.view(), d_full.view()).loss;
  const auto agg = loss_aggregation::token_mean_global(43);
  double sum = 0;
  for (auto [first, count] : {std::pair<std::size_t, std::size_t>{0, 1}, {1, 4}}) {
    sum += clipped_value_loss(b, bv.view().row_block(first, count), bo.view().row_block(first, count),
                              br.view().row_block(first, count), bm.view().row_block(first, count),
                              d_mb.view().row_block(first, count), value_loss_options{}, agg)
               .loss;
  }
  CHECK(near<T>(sum, full, 100));
  CHECK_THAT(to_host(b, d_mb.view()), close_to<T>(to_host(b, d_full.view())));
}

TEMPLATE_LIST_TEST_CASE("clipped_value_loss rejects bad arguments with named errors", "[losses][value][errors]",
                        all_configs) {
  using T = typename TestType::value;
  const auto b = TestType::make();
  auto x = allocate_filled<T>(b, 2, 3, T(0));
  auto bad = allocate_filled<T>(b, 3, 3, T(0));
  auto m = allocate_filled<mask_type>(b, 2, 3, mask_type(1));
  auto bad_m = allocate_filled<mask_type>(b, 2, 2, mask_type(1));
  auto d = allocate<T>(b, 2, 3);
  CHECK_THROWS_WITH(clipped_value_loss(b, x.view(), bad.view(), x.view(), m.view(), d.view()),
                    Catch::Contains("rlhf::clipped_value_loss") && Catch::Contains("'old_values'") &&
                        Catch::Contains("[3, 3]"));
  CHECK_THROWS_WITH(clipped_value_loss(b, x.view(), x.view(), bad.view(), m.view(), d.view()),
                    Catch::Contains("'returns'"));
  CHECK_THROWS_WITH(clipped_value_loss(b, x.view(), x.view(), x.view(), bad_m.view(), d.view()),
                    Catch::Contains("'mask'"));
  CHECK_THROWS_WITH(clipped_value_loss(b, x.view(), x.view(), x.view(), m.view(), bad.view()),
                    Catch::Contains("'d_values'"));
  CHECK_THROWS_WITH(clipped_value_loss(b, x.view(), x.view(), x.view(), m.view(), d.view(), value_loss_options{-0.1}),
                    Catch::Contains("rlhf::clipped_value_loss") && Catch::Contains("'options.clip'"));
  CHECK_THROWS_WITH(clipped_value_loss(b, x.view(), x.view(), x.view(), m.view(), d.view(),
                                       value_loss_options{std::numeric_limits<double>::infinity()}),
                    Catch::Contains("'options.clip'"));
}
