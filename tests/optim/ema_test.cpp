// rlhf::weight_ema against its closed form, on every backend.
#include "rlhf/optim/ema.hpp"

#include "test_support.hpp"

#include "optim/optim_test_support.hpp"

#include <cmath>
#include <string>
#include <type_traits>
#include <vector>

using namespace rlhf;
using namespace rlhf::test;


TEMPLATE_LIST_TEST_CASE("weight_ema: hand-computed updates", "[optim][ema]", all_configs) {
  using B = typename TestType::backend;
  using T = typename TestType::value;
  const auto b = TestType::make();
  // d = 0.5, w0 = 0, then values 2, 4: shadow 0 -> 0.5 * 0 + 0.5 * 2 = 1 -> 0.5 * 1 + 0.5 * 4 = 2.5.
  auto model = make_params<T>(b, {{"w", 1, 1}}, {{T(0)}}, {{T(0)}});
  weight_ema<B, T> ema(weight_ema_options{0.5});
  CHECK_FALSE(ema.initialized());
  CHECK(ema.state().empty());
  ema.reset(b, model.list);
  CHECK(ema.initialized());
  b.fill(model.list[0].value.flat(), T(2));
  ema.update(b, model.list);
  CHECK(to_host(b, ema.state()[0].value) == std::vector<T>{T(1)});
  b.fill(model.list[0].value.flat(), T(4));
  ema.update(b, model.list);
  CHECK(to_host(b, ema.state()[0].value) == std::vector<T>{T(2.5)});
  CHECK(ema.update_count() == 2);
  CHECK(ema.state()[0].name == "ema.w");
  // copy_to writes the average into the values.
  ema.copy_to(b, model.list);
  CHECK(to_host(b, model.list[0].value) == std::vector<T>{T(2.5)});
}

TEMPLATE_LIST_TEST_CASE("weight_ema: n updates equal the closed form", "[optim][ema]", all_configs) {
  using B = typename TestType::backend;
  using T = typename TestType::value;
  const auto b = TestType::make();
  auto g = rng(61);
  // shadow_n = d^n w_0 + (1 - d) sum_{k=1..n} d^(n-k) w_k, InstructGPT's d = 0.992 (the default).
  const std::size_t n = 25;
  std::vector<std::vector<std::vector<T>>> w;
  for (std::size_t k = 0; k <= n; ++k) w.push_back(random_tensors<T>(g, small_model));
  auto model = make_params<T>(b, small_model, w[0], w[0]);
  weight_ema<B, T> ema;
  CHECK(ema.decay() == 0.992);
  ema.reset(b, model.list);
  for (std::size_t k = 1; k <= n; ++k) {
    for (std::size_t t = 0; t < small_model.size(); ++t) {
      b.copy(vector_view<const T, host_space>{w[k][t].data(), w[k][t].size()}, model.list[t].value.flat());
    }
    ema.update(b, model.list);
  }
  const double d = 0.992;
  auto st = ema.state();
  REQUIRE(st.size() == small_model.size());
  for (std::size_t t = 0; t < small_model.size(); ++t) {
    CHECK(st[t].name == "ema." + small_model[t].name);
    std::vector<double> want(w[0][t].size());
    for (std::size_t i = 0; i < want.size(); ++i) {
      double acc = std::pow(d, double(n)) * double(w[0][t][i]);
      for (std::size_t k = 1; k <= n; ++k) acc += (1 - d) * std::pow(d, double(n - k)) * double(w[k][t][i]);
      want[i] = acc;
    }
    CHECK_THAT(to_host(b, st[t].value), close_to<T>(want, std::is_same_v<T, float> ? 1e-5 : 1e-12,
                                                    std::is_same_v<T, float> ? 1e-6 : 1e-14));
  }
}

TEMPLATE_LIST_TEST_CASE("weight_ema: the first update without reset copies; decay 0 and 1", "[optim][ema]",
                        all_configs) {
  using B = typename TestType::backend;
  using T = typename TestType::value;
  const auto b = TestType::make();
  auto model = make_params<T>(b, {{"a", 1, 2}, {"b", 2, 1}}, {{T(1), T(2)}, {T(3), T(4)}}, {{T(0), T(0)}, {T(0), T(0)}});
  weight_ema<B, T> lazy;
  lazy.update(b, model.list);
  CHECK(lazy.initialized());
  CHECK(lazy.update_count() == 0);
  CHECK(to_host(b, lazy.state()[1].value) == std::vector<T>{T(3), T(4)});
  CHECK(lazy.state()[1].value.rows == 2);

  weight_ema<B, T> copy(weight_ema_options{0.0}), frozen(weight_ema_options{1.0});
  copy.reset(b, model.list);
  frozen.reset(b, model.list);
  b.fill(model.list[0].value.flat(), T(9));
  copy.update(b, model.list);
  frozen.update(b, model.list);
  CHECK(to_host(b, copy.state()[0].value) == std::vector<T>{T(9), T(9)});
  CHECK(to_host(b, frozen.state()[0].value) == std::vector<T>{T(1), T(2)});
  // reset restarts from the current values.
  frozen.reset(b, model.list);
  CHECK(to_host(b, frozen.state()[0].value) == std::vector<T>{T(9), T(9)});
  CHECK(frozen.update_count() == 0);
}

TEMPLATE_LIST_TEST_CASE("weight_ema: invalid decay, use before reset, changed lists", "[optim][ema][errors]",
                        all_configs) {
  using B = typename TestType::backend;
  using T = typename TestType::value;
  const auto b = TestType::make();
  using ema_t = weight_ema<B, T>;
  for (double bad : {-0.1, 1.5, std::nan("")}) {
    CHECK_THROWS_WITH(ema_t(weight_ema_options{bad}),
                      Catch::Contains("rlhf::weight_ema") && Catch::Contains("'options.decay'") &&
                          Catch::Contains("[0, 1]"));
  }
  auto g = rng(62);
  auto model = make_params<T>(b, small_model, random_tensors<T>(g, small_model), random_tensors<T>(g, small_model));
  ema_t ema;
  CHECK_THROWS_WITH(ema.copy_to(b, model.list), Catch::Contains("rlhf::weight_ema::copy_to") && Catch::Contains("reset"));
  ema.reset(b, model.list);
  auto renamed = model.list;
  renamed[2].name = "lm_head";
  CHECK_THROWS_WITH(ema.update(b, renamed), Catch::Contains("rlhf::weight_ema::update") &&
                                                Catch::Contains("'params[2]'") && Catch::Contains("'lm_head'"));
  CHECK_THROWS_WITH(ema.copy_to(b, renamed), Catch::Contains("rlhf::weight_ema::copy_to") && Catch::Contains("'head'"));
  CHECK_THROWS_WITH(ema.reset(b, renamed), Catch::Contains("rlhf::weight_ema::reset"));
  auto fewer = model.list;
  fewer.pop_back();
  CHECK_THROWS_WITH(ema.update(b, fewer), Catch::Contains("'params'") && Catch::Contains("received 2 tensors"));
  CHECK(ema.update_count() == 0);
}
