// Global-norm gradient clipping, the gradient norm and zero_gradients, on every backend.
#include "rlhf/optim/gradient_clipping.hpp"

#include "test_support.hpp"

#include "optim/optim_test_support.hpp"

#include <cmath>
#include <limits>
#include <string>
#include <type_traits>
#include <vector>

using namespace rlhf;
using namespace rlhf::test;


TEMPLATE_LIST_TEST_CASE("clip_gradient_norm: hand-computed norm and scaling", "[optim][clipping]", all_configs) {
  using T = typename TestType::value;
  const auto b = TestType::make();
  // Gradients [3, 4] and [12]: norm = sqrt(9 + 16 + 144) = 13. With max_norm 1 every gradient is scaled by
  // 1 / (13 + 1e-6): [0.230769213, 0.307692284] and [0.923076852].
  auto model = make_params<T>(b, {{"a", 1, 2}, {"b", 1, 1}}, {{T(0), T(0)}, {T(0)}}, {{T(3), T(4)}, {T(12)}});
  const auto r = clip_gradient_norm(b, model.list);
  CHECK(r.norm == 13.0);
  CHECK(r.finite);
  CHECK_FALSE(r.skip_step());
  CHECK(r.clipped);
  const double s = 1.0 / (13.0 + 1e-6);
  CHECK(r.scale == s);
  CHECK_THAT(to_host(b, model.list[0].grad), close_to<T>(std::vector<double>{3 * s, 4 * s}));
  CHECK_THAT(to_host(b, model.list[1].grad), close_to<T>(std::vector<double>{12 * s}));
  // The clipped norm is max_norm up to the 1e-6 guard.
  CHECK(std::abs(gradient_norm(b, model.list) - 13.0 / (13.0 + 1e-6)) < 1e-6);
  // Values are never touched.
  CHECK(to_host(b, model.list[0].value) == std::vector<T>{T(0), T(0)});

  // Below or at the threshold: nothing changes, scale 1.
  auto m2 = make_params<T>(b, {{"a", 1, 2}, {"b", 1, 1}}, {{T(0), T(0)}, {T(0)}}, {{T(3), T(4)}, {T(12)}});
  for (double max_norm : {13.0, 20.0}) {
    const auto r2 = clip_gradient_norm(b, m2.list, gradient_clip_options{max_norm, false});
    CHECK(r2.norm == 13.0);
    CHECK_FALSE(r2.clipped);
    CHECK(r2.scale == 1.0);
    CHECK(to_host(b, m2.list[0].grad) == std::vector<T>{T(3), T(4)});
    CHECK(to_host(b, m2.list[1].grad) == std::vector<T>{T(12)});
  }
  // max_norm 6.5: scale 6.5 / (13 + 1e-6), grads roughly halved.
  const auto r3 = clip_gradient_norm(b, m2.list, gradient_clip_options{6.5, false});
  CHECK(r3.clipped);
  CHECK_THAT(to_host(b, m2.list[1].grad), close_to<T>(std::vector<double>{12 * 6.5 / (13 + 1e-6)}));
}

TEMPLATE_LIST_TEST_CASE("clip_gradient_norm: random gradients match a naive oracle", "[optim][clipping]",
                        all_configs) {
  using T = typename TestType::value;
  const auto b = TestType::make();
  auto g = rng(51);
  for (int round = 0; round < 4; ++round) {
    const auto grads = random_tensors<T>(g, small_model, -3.0, 3.0);
    auto model = make_params<T>(b, small_model, grads, grads);
    double sum = 0;
    for (const auto& t : grads)
      for (T x : t) sum += double(x) * double(x);
    const double norm = std::sqrt(sum);
    const double max_norm = round % 2 == 0 ? norm / 3 : norm * 2;
    const auto r = clip_gradient_norm(b, model.list, gradient_clip_options{max_norm, false});
    CHECK(near<double>(r.norm, norm, 100.0));
    CHECK(r.clipped == (norm > max_norm));
    const double scale = norm > max_norm ? max_norm / (norm + 1e-6) : 1.0;
    const auto got = model.host_grads(b);
    for (std::size_t k = 0; k < got.size(); ++k) {
      std::vector<double> want;
      for (T x : grads[k]) want.push_back(double(T(double(x) * scale)));
      CHECK_THAT(got[k], close_to<T>(want));
    }
  }
}

TEMPLATE_LIST_TEST_CASE("clip_gradient_norm: float gradients accumulate in double", "[optim][clipping]", all_configs) {
  using T = typename TestType::value;
  const auto b = TestType::make();
  // 1e20^2 = 1e40 overflows float but not double: the norm of four 1e20 gradients is exactly 2e20.
  const T big = T(1e20);
  auto model = make_params<T>(b, {{"w", 2, 2}}, {{T(0), T(0), T(0), T(0)}}, {{big, big, -big, big}});
  const auto r = clip_gradient_norm(b, model.list, gradient_clip_options{1.0, false});
  CHECK(r.finite);
  CHECK(std::abs(r.norm - 2.0 * double(big)) <= 1e-12 * r.norm);
  CHECK_THAT(to_host(b, model.list[0].value), close_to<T>(std::vector<double>{0, 0, 0, 0}));
  CHECK_THAT(to_host(b, model.list[0].grad), close_to<T>(std::vector<double>{0.5, 0.5, -0.5, 0.5}, 1e-6, 1e-7));
}

TEMPLATE_LIST_TEST_CASE("clip_gradient_norm: a non-finite norm leaves gradients untouched and asks to skip the step",
                        "[optim][clipping]", all_configs) {
  using T = typename TestType::value;
  const auto b = TestType::make();
  for (T bad : {std::numeric_limits<T>::quiet_NaN(), std::numeric_limits<T>::infinity()}) {
    auto model = make_params<T>(b, {{"a", 1, 2}, {"b", 1, 2}}, {{T(0), T(0)}, {T(0), T(0)}},
                                {{T(30), T(40)}, {T(1), bad}});
    const auto r = clip_gradient_norm(b, model.list);
    CHECK_FALSE(r.finite);
    CHECK(r.skip_step());
    CHECK_FALSE(r.clipped);
    CHECK(r.scale == 1.0);
    CHECK((std::isnan(bad) ? std::isnan(r.norm) : std::isinf(r.norm)));
    CHECK(to_host(b, model.list[0].grad) == std::vector<T>{T(30), T(40)});
    CHECK(std::isnan(gradient_norm(b, model.list)) == std::isnan(bad));
    // Opt-in: throw, naming the first non-finite gradient.
    CHECK_THROWS_AS(clip_gradient_norm(b, model.list, gradient_clip_options::strict()), rlhf::non_finite_error);
    CHECK_THROWS_WITH(clip_gradient_norm(b, model.list, gradient_clip_options::strict()),
                      Catch::Contains("rlhf::clip_gradient_norm") && Catch::Contains("'params[1].grad ('b')'"));
    CHECK(to_host(b, model.list[0].grad) == std::vector<T>{T(30), T(40)});
  }
}

TEMPLATE_LIST_TEST_CASE("clip_gradient_norm and zero_gradients skip frozen parameters", "[optim][clipping]",
                        all_configs) {
  using T = typename TestType::value;
  const auto b = TestType::make();
  auto model = make_params<T>(b, {{"a", 1, 2}, {"frozen", 1, 1}, {"c", 0, 3}}, {{T(1), T(1)}, {T(7)}, {}},
                              {{T(6), T(8)}, {T(100)}, {}});
  const auto frozen_grad = model.list[1].grad;
  model.list[1].grad = {};
  const auto r = clip_gradient_norm(b, model.list, gradient_clip_options{5.0, false});
  CHECK(r.norm == 10.0);
  CHECK_THAT(to_host(b, model.list[0].grad), close_to<T>(std::vector<double>{6 * 5 / (10 + 1e-6), 8 * 5 / (10 + 1e-6)}));
  CHECK(to_host(b, frozen_grad) == std::vector<T>{T(100)});
  zero_gradients(b, model.list);
  CHECK(to_host(b, model.list[0].grad) == std::vector<T>{T(0), T(0)});
  CHECK(to_host(b, frozen_grad) == std::vector<T>{T(100)});
  CHECK(to_host(b, model.list[0].value) == std::vector<T>{T(1), T(1)});
  CHECK(gradient_norm(b, model.list) == 0.0);
  // An empty list has norm 0 and is never clipped.
  parameter_list<T, typename TestType::backend::memory_space> none;
  CHECK(clip_gradient_norm(b, none).norm == 0.0);
}

TEMPLATE_LIST_TEST_CASE("clip_gradient_norm: invalid arguments", "[optim][clipping][errors]", all_configs) {
  using T = typename TestType::value;
  const auto b = TestType::make();
  auto model = make_params<T>(b, {{"a", 1, 2}}, {{T(1), T(1)}}, {{T(6), T(8)}});
  for (double bad : {0.0, -1.0, std::nan(""), double(INFINITY)}) {
    CHECK_THROWS_WITH(clip_gradient_norm(b, model.list, gradient_clip_options{bad, false}),
                      Catch::Contains("rlhf::clip_gradient_norm") && Catch::Contains("'options.max_norm'") &&
                          Catch::Contains("> 0"));
  }
  auto bad_shape = model.list;
  bad_shape[0].grad.cols = 1;
  CHECK_THROWS_WITH(clip_gradient_norm(b, bad_shape), Catch::Contains("'params[0] ('a').grad'") &&
                                                          Catch::Contains("[1, 2]") && Catch::Contains("[1, 1]"));
  CHECK_THROWS_WITH(zero_gradients(b, bad_shape), Catch::Contains("rlhf::zero_gradients"));
  CHECK_THROWS_WITH(gradient_norm(b, bad_shape), Catch::Contains("rlhf::gradient_norm"));
  CHECK(to_host(b, model.list[0].grad) == std::vector<T>{T(6), T(8)});
}
