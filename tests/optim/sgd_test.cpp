// rlhf::sgd (momentum, Nesterov, decoupled weight decay) against closed-form steps, on every backend.
#include "rlhf/optim/sgd.hpp"

#include "test_support.hpp"

#include "optim/optim_test_support.hpp"

#include <cmath>
#include <limits>
#include <string>
#include <type_traits>
#include <vector>

using namespace rlhf;
using namespace rlhf::test;


namespace {
template <class T>
double rtol_for() {
  return std::is_same_v<T, float> ? 2e-6 : 1e-13;
}
template <class T>
double atol_for() {
  return std::is_same_v<T, float> ? 1e-6 : 1e-14;
}

// Naive SGD oracle in double: decoupled decay, heavy-ball buffer from 0, optional Nesterov.
struct sgd_oracle {
  sgd_options o;
  std::vector<std::vector<double>> p, buf;
  template <class T>
  sgd_oracle(sgd_options opts, const std::vector<std::vector<T>>& values) : o(opts) {
    for (const auto& x : values) {
      p.emplace_back(x.begin(), x.end());
      buf.emplace_back(x.size(), 0.0);
    }
  }
  template <class T>
  void step(const std::vector<std::vector<T>>& grads) {
    for (std::size_t k = 0; k < p.size(); ++k) {
      for (std::size_t i = 0; i < p[k].size(); ++i) {
        const double g = double(grads[k][i]);
        buf[k][i] = o.momentum * buf[k][i] + g;
        const double d = o.nesterov ? g + o.momentum * buf[k][i] : (o.momentum > 0 ? buf[k][i] : g);
        p[k][i] = p[k][i] * (1 - o.learning_rate * o.weight_decay) - o.learning_rate * d;
      }
    }
  }
};
}  // namespace

TEMPLATE_LIST_TEST_CASE("sgd: heavy-ball momentum over three steps, closed form", "[optim][sgd]", all_configs) {
  using B = typename TestType::backend;
  using T = typename TestType::value;
  const auto b = TestType::make();
  // lr = 0.1, mu = 0.9, p0 = 1, g = 1 every step:
  //   buf1 = 1     p1 = 1    - 0.1        = 0.9
  //   buf2 = 1.9   p2 = 0.9  - 0.19       = 0.71
  //   buf3 = 2.71  p3 = 0.71 - 0.271      = 0.439
  // and a second weight p0 = -2 with g = -0.5 (all terms scaled by -0.5): -1.95, -1.855, -1.7195.
  auto model = make_params<T>(b, {{"w", 1, 2}}, {{T(1), T(-2)}}, {{T(1), T(-0.5)}});
  sgd<B, T> opt(sgd_options{0.1, 0.9, false, 0.0});
  const std::vector<std::vector<double>> want = {{0.9, -1.95}, {0.71, -1.855}, {0.439, -1.7195}};
  for (int s = 0; s < 3; ++s) {
    opt.step(b, model.list);
    CHECK_THAT(to_host(b, model.list[0].value), close_to<T>(want[s], rtol_for<T>(), atol_for<T>()));
  }
  CHECK(opt.step_count() == 3);
  auto st = opt.state();
  REQUIRE(st.size() == 1);
  CHECK(st[0].name == "sgd.momentum.w");
  CHECK_THAT(to_host(b, st[0].value), close_to<T>(std::vector<double>{2.71, -1.355}, rtol_for<T>(), atol_for<T>()));
}

TEMPLATE_LIST_TEST_CASE("sgd: Nesterov momentum over three steps, closed form", "[optim][sgd]", all_configs) {
  using B = typename TestType::backend;
  using T = typename TestType::value;
  const auto b = TestType::make();
  // lr = 0.1, mu = 0.9, p0 = 1, g = 1; d = g + mu * buf:
  //   buf1 = 1     d1 = 1.9     p1 = 0.81
  //   buf2 = 1.9   d2 = 2.71    p2 = 0.539
  //   buf3 = 2.71  d3 = 3.439   p3 = 0.1951
  auto model = make_params<T>(b, {{"w", 1, 1}}, {{T(1)}}, {{T(1)}});
  sgd<B, T> opt(sgd_options{0.1, 0.9, true, 0.0});
  for (double want : {0.81, 0.539, 0.1951}) {
    opt.step(b, model.list);
    CHECK_THAT(to_host(b, model.list[0].value), close_to<T>(std::vector<double>{want}, rtol_for<T>(), atol_for<T>()));
  }
}

TEMPLATE_LIST_TEST_CASE("sgd: plain SGD keeps no state; weight decay is decoupled", "[optim][sgd]", all_configs) {
  using B = typename TestType::backend;
  using T = typename TestType::value;
  const auto b = TestType::make();
  // momentum 0, lr = 0.5, weight_decay = 0.2: p <- p * 0.9 - 0.5 g. p = 2, g = 1 -> 1.3; p = -1, g = 0 -> -0.9.
  // Coupled (L2 added to g) would give 2 - 0.5 * (1 + 0.4) = 1.3 as well for the first, so the second
  // step tells them apart with momentum below.
  auto model = make_params<T>(b, {{"w", 1, 2}}, {{T(2), T(-1)}}, {{T(1), T(0)}});
  sgd<B, T> opt(sgd_options{0.5, 0.0, false, 0.2});
  opt.step(b, model.list);
  CHECK(opt.state().empty());
  CHECK_THAT(to_host(b, model.list[0].value), close_to<T>(std::vector<double>{1.3, -0.9}, rtol_for<T>(), atol_for<T>()));

  // With momentum 0.5 and a zero gradient, decoupled decay never enters the momentum buffer:
  // p stays p * (1 - lr wd) each step and the buffer stays 0. lr = 0.1, wd = 1: 1 -> 0.9 -> 0.81.
  // (Coupled: buf1 = 1, p1 = 0.9; buf2 = 0.5 + 0.9 = 1.4, p2 = 0.76.)
  auto m2 = make_params<T>(b, {{"w", 1, 1}}, {{T(1)}}, {{T(0)}});
  sgd<B, T> opt2(sgd_options{0.1, 0.5, false, 1.0});
  opt2.step(b, m2.list);
  opt2.step(b, m2.list);
  CHECK_THAT(to_host(b, m2.list[0].value), close_to<T>(std::vector<double>{0.81}, rtol_for<T>(), atol_for<T>()));
  CHECK(to_host(b, opt2.state()[0].value) == std::vector<T>{T(0)});
}

TEMPLATE_LIST_TEST_CASE("sgd: random steps match the naive oracle", "[optim][sgd]", all_configs) {
  using B = typename TestType::backend;
  using T = typename TestType::value;
  const auto b = TestType::make();
  auto g = rng(41);
  for (const auto& opts : {sgd_options{}, sgd_options::plain(), sgd_options{0.05, 0.8, true, 0.1},
                           sgd_options{0.2, 0.3, false, 0.01}}) {
    const auto values = random_tensors<T>(g, small_model);
    auto model = make_params<T>(b, small_model, values, random_tensors<T>(g, small_model));
    sgd<B, T> opt(opts);
    sgd_oracle oracle(opts, values);
    for (int s = 0; s < 5; ++s) {
      const auto grads = random_tensors<T>(g, small_model);
      model.set_grads(b, grads);
      opt.step(b, model.list);
      oracle.step(grads);
    }
    const auto got = model.host_values(b);
    for (std::size_t k = 0; k < got.size(); ++k) {
      CHECK_THAT(got[k], close_to<T>(oracle.p[k], std::is_same_v<T, float> ? 1e-5 : 1e-12, atol_for<T>()));
    }
  }
}

TEMPLATE_LIST_TEST_CASE("sgd: frozen parameters, prepare and restore", "[optim][sgd]", all_configs) {
  using B = typename TestType::backend;
  using T = typename TestType::value;
  const auto b = TestType::make();
  auto model = make_params<T>(b, {{"a", 1, 1}, {"b", 1, 1}}, {{T(1)}, {T(5)}}, {{T(1)}, {T(1)}});
  model.list[1].grad = {};
  sgd<B, T> opt(sgd_options{0.1, 0.9, false, 0.0});
  opt.step(b, model.list);
  opt.step(b, model.list);  // a: 1 - 0.1 - 0.19 = 0.71
  CHECK(to_host(b, model.list[1].value) == std::vector<T>{T(5)});
  CHECK_THAT(to_host(b, model.list[0].value), close_to<T>(std::vector<double>{0.71}, rtol_for<T>(), atol_for<T>()));

  sgd<B, T> restored(sgd_options{0.1, 0.9, false, 0.0});
  restored.prepare(b, model.list);
  auto to = restored.state();
  auto from = opt.state();
  REQUIRE(to.size() == 2);
  for (std::size_t i = 0; i < to.size(); ++i) b.copy(as_const(from[i].value.flat()), to[i].value.flat());
  restored.set_step_count(opt.step_count());
  auto copy = make_params<T>(b, {{"a", 1, 1}, {"b", 1, 1}}, model.host_values(b), {{T(1)}, {T(1)}});
  copy.list[1].grad = {};
  opt.step(b, model.list);
  restored.step(b, copy.list);
  CHECK(model.host_values(b) == copy.host_values(b));  // both 0.71 - 0.271 = 0.439
  CHECK_THAT(to_host(b, copy.list[0].value), close_to<T>(std::vector<double>{0.439}, rtol_for<T>(), atol_for<T>()));
  CHECK(restored.step_count() == 3);
}

TEMPLATE_LIST_TEST_CASE("sgd: invalid options and changed parameter lists are rejected", "[optim][sgd][errors]",
                        all_configs) {
  using B = typename TestType::backend;
  using T = typename TestType::value;
  using opt_t = sgd<B, T>;
  const auto b = TestType::make();
  CHECK_THROWS_WITH(opt_t(sgd_options{-0.1, 0.9, false, 0.0}),
                    Catch::Contains("rlhf::sgd") && Catch::Contains("'options.learning_rate'"));
  CHECK_THROWS_WITH(opt_t(sgd_options{0.1, 1.0, false, 0.0}),
                    Catch::Contains("'options.momentum'") && Catch::Contains("[0, 1)"));
  CHECK_THROWS_WITH(opt_t(sgd_options{0.1, -0.5, false, 0.0}), Catch::Contains("'options.momentum'"));
  CHECK_THROWS_WITH(opt_t(sgd_options{0.1, 0.0, true, 0.0}),
                    Catch::Contains("'options.nesterov'") && Catch::Contains("momentum"));
  CHECK_THROWS_WITH(opt_t(sgd_options{0.1, 0.9, false, std::nan("")}), Catch::Contains("'options.weight_decay'"));
  opt_t opt;
  CHECK_THROWS_WITH(opt.set_learning_rate(std::nan("")), Catch::Contains("rlhf::sgd::set_learning_rate"));

  auto g = rng(42);
  auto model = make_params<T>(b, small_model, random_tensors<T>(g, small_model), random_tensors<T>(g, small_model));
  opt.step(b, model.list);
  const std::vector<tensor_spec> bigger_head = {{"embed", 3, 4}, {"norm.weight", 1, 4}, {"head", 3, 4}};
  auto other = make_params<T>(b, bigger_head, random_tensors<T>(g, bigger_head), random_tensors<T>(g, bigger_head));
  CHECK_THROWS_WITH(opt.step(b, other.list), Catch::Contains("rlhf::sgd::step") && Catch::Contains("'params[2]'") &&
                                                 Catch::Contains("'head' of shape [2, 4]") &&
                                                 Catch::Contains("received 'head' of shape [3, 4]"));
  // Plain SGD has no state but still remembers the list it was used with.
  opt_t plain(sgd_options::plain());
  plain.step(b, model.list);
  auto reordered = model.list;
  std::swap(reordered[0], reordered[1]);
  CHECK_THROWS_WITH(plain.step(b, reordered), Catch::Contains("'params[0]'") && Catch::Contains("'embed'"));

  set_finite_checks(true);
  model.list[0].grad = {};  // frozen: not checked
  auto nan_model = make_params<T>(b, {{"w", 1, 1}}, {{T(1)}}, {{std::numeric_limits<T>::infinity()}});
  opt_t fresh;
  CHECK_THROWS_WITH(fresh.step(b, nan_model.list),
                    Catch::Contains("rlhf::sgd::step") && Catch::Contains("'params[0].grad ('w')'"));
  set_finite_checks(false);
  CHECK(to_host(b, nan_model.list[0].value) == std::vector<T>{T(1)});
}

TEMPLATE_LIST_TEST_CASE("sgd satisfies the optimizer concepts", "[optim][sgd][concepts]", all_configs) {
  using B = typename TestType::backend;
  using T = typename TestType::value;
  STATIC_REQUIRE(rlhf::optimizer<sgd<B, T>, B, T>);
  STATIC_REQUIRE(rlhf::restorable_optimizer<sgd<B, T>, B, T>);
}
