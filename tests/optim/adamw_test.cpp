// rlhf::adamw against closed-form steps and a naive host oracle, on every backend.
#include "rlhf/optim/adamw.hpp"

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
// Naive AdamW oracle in double (Loshchilov & Hutter 2019, Alg. 2, PyTorch form), over flat tensors.
struct adamw_oracle {
  adamw_options o;
  std::vector<std::vector<double>> p, m, v;
  std::size_t t = 0;

  template <class T>
  adamw_oracle(adamw_options opts, const std::vector<std::vector<T>>& values) : o(opts) {
    for (const auto& x : values) {
      p.emplace_back(x.begin(), x.end());
      m.emplace_back(x.size(), 0.0);
      v.emplace_back(x.size(), 0.0);
    }
  }
  template <class T>
  void step(const std::vector<std::vector<T>>& grads) {
    ++t;
    const double bc1 = 1 - std::pow(o.beta1, double(t)), bc2 = 1 - std::pow(o.beta2, double(t));
    for (std::size_t k = 0; k < p.size(); ++k) {
      for (std::size_t i = 0; i < p[k].size(); ++i) {
        const double g = double(grads[k][i]);
        m[k][i] = o.beta1 * m[k][i] + (1 - o.beta1) * g;
        v[k][i] = o.beta2 * v[k][i] + (1 - o.beta2) * g * g;
        p[k][i] = p[k][i] * (1 - o.learning_rate * o.weight_decay) -
                  o.learning_rate * (m[k][i] / bc1) / (std::sqrt(v[k][i] / bc2) + o.eps);
      }
    }
  }
};

template <class T>
double rtol_for() {
  return std::is_same_v<T, float> ? 2e-5 : 1e-12;
}
template <class T>
double atol_for() {
  return std::is_same_v<T, float> ? 2e-6 : 1e-14;
}
}  // namespace

TEMPLATE_LIST_TEST_CASE("adamw: the first step moves each weight by lr * g / (|g| + eps)", "[optim][adamw]",
                        all_configs) {
  using B = typename TestType::backend;
  using T = typename TestType::value;
  const auto b = TestType::make();
  // Step 1: m = (1 - b1) g, v = (1 - b2) g^2, so m^ = g and v^ = g^2 whatever the betas:
  // the update is lr * g / (|g| + eps), i.e. lr * sign(g) up to eps.
  // lr = 0.1, eps = 1e-8:  g = 0.5 -> 1 - 0.1 * 0.5 / (0.5 + 1e-8) = 0.900000002;  g = -2 -> 2.1 (to 5e-10);
  // g = 0 -> unchanged (0 / (0 + eps) = 0);  g = 1e-3 -> 4 - 0.1 * 1e-3 / (1e-3 + 1e-8) = 3.90000099999.
  auto model = make_params<T>(b, {{"w", 2, 2}}, {{T(1), T(2), T(3), T(4)}}, {{T(0.5), T(-2), T(0), T(1e-3)}});
  adamw_options o;
  o.learning_rate = 0.1;
  o.beta1 = 0.9;
  o.beta2 = 0.999;
  adamw<B, T> opt(o);
  opt.step(b, model.list);
  CHECK(opt.step_count() == 1);
  const std::vector<double> want = {1 - 0.1 * 0.5 / (0.5 + 1e-8), 2 + 0.1 * 2 / (2 + 1e-8), 3.0,
                                    4 - 0.1 * 1e-3 / (1e-3 + 1e-8)};
  CHECK(std::abs(want[0] - 0.900000002) < 1e-12);
  CHECK_THAT(to_host(b, model.list[0].value), close_to<T>(want, rtol_for<T>(), atol_for<T>()));

  // The state after one step: m = 0.1 g, v = 0.001 g^2, named per parameter.
  auto st = opt.state();
  REQUIRE(st.size() == 2);
  CHECK(st[0].name == "adamw.m.w");
  CHECK(st[1].name == "adamw.v.w");
  CHECK(st[0].value.rows == 2);
  CHECK(st[0].value.cols == 2);
  CHECK_THAT(to_host(b, st[0].value), close_to<T>(std::vector<double>{0.05, -0.2, 0, 1e-4}, rtol_for<T>(), 1e-12));
  CHECK_THAT(to_host(b, st[1].value),
             close_to<T>(std::vector<double>{0.00025, 0.004, 0, 1e-9}, rtol_for<T>(), 1e-15));
}

TEMPLATE_LIST_TEST_CASE("adamw: second step by hand", "[optim][adamw]", all_configs) {
  using B = typename TestType::backend;
  using T = typename TestType::value;
  const auto b = TestType::make();
  // One weight p0 = 1, lr = 0.01, betas (0.9, 0.95), eps = 1e-8, g1 = 1, g2 = -1.
  // Step 1: p1 = 1 - 0.01 * 1 / (1 + 1e-8) = 0.9900000001.
  // Step 2: m = 0.9 * 0.1 + 0.1 * (-1) = -0.01; v = 0.95 * 0.05 + 0.05 * 1 = 0.0975.
  //   m^ = -0.01 / (1 - 0.81) = -0.0526315789...; v^ = 0.0975 / (1 - 0.9025) = 1.
  //   p2 = p1 - 0.01 * (-0.0526315789) / (1 + 1e-8) = 0.9905263159...
  auto model = make_params<T>(b, {{"w", 1, 1}}, {{T(1)}}, {{T(1)}});
  adamw_options o;
  o.learning_rate = 0.01;
  adamw<B, T> opt(o);
  opt.step(b, model.list);
  model.set_grads(b, {{T(-1)}});
  opt.step(b, model.list);
  const double p1 = 1 - 0.01 / (1 + 1e-8);
  const double p2 = p1 + 0.01 * (0.01 / 0.19) / (1 + 1e-8);
  CHECK(std::abs(p2 - 0.99052631589) < 1e-10);
  CHECK_THAT(to_host(b, model.list[0].value), close_to<T>(std::vector<double>{p2}, rtol_for<T>(), atol_for<T>()));
  CHECK(opt.step_count() == 2);
}

TEMPLATE_LIST_TEST_CASE("adamw: weight decay is decoupled from the gradient", "[optim][adamw]", all_configs) {
  using B = typename TestType::backend;
  using T = typename TestType::value;
  const auto b = TestType::make();
  // lr = 0.01, weight_decay = 0.1, zero gradient: m = v = 0, the Adam term is 0 / (0 + eps) = 0, so
  // p <- p * (1 - 0.001): 2 -> 1.998, -3 -> -2.997. Adam with L2 (decay added to g) would instead move
  // each weight by the full lr * sign(p) = 0.01 (2 -> 1.99).
  adamw_options o;
  o.learning_rate = 0.01;
  o.weight_decay = 0.1;
  {
    auto model = make_params<T>(b, {{"w", 1, 2}}, {{T(2), T(-3)}}, {{T(0), T(0)}});
    adamw<B, T> opt(o);
    opt.step(b, model.list);
    const auto got = to_host(b, model.list[0].value);
    CHECK_THAT(got, close_to<T>(std::vector<double>{1.998, -2.997}, rtol_for<T>(), atol_for<T>()));
    CHECK(std::abs(double(got[0]) - 1.99) > 1e-3);
  }
  {
    // With a gradient: p1 = p0 (1 - lr wd) - lr g / (|g| + eps) = 2 * 0.999 - 0.01 * 0.5 / (0.5 + 1e-8).
    auto model = make_params<T>(b, {{"w", 1, 1}}, {{T(2)}}, {{T(0.5)}});
    adamw<B, T> opt(o);
    opt.step(b, model.list);
    CHECK_THAT(to_host(b, model.list[0].value),
               close_to<T>(std::vector<double>{2 * 0.999 - 0.01 * 0.5 / (0.5 + 1e-8)}, rtol_for<T>(), atol_for<T>()));
  }
}

TEMPLATE_LIST_TEST_CASE("adamw: many steps match the naive oracle", "[optim][adamw]", all_configs) {
  using B = typename TestType::backend;
  using T = typename TestType::value;
  const auto b = TestType::make();
  auto g = rng(31);
  const auto values = random_tensors<T>(g, small_model);
  for (const auto& opts : {adamw_options{}, adamw_options::pytorch(), adamw_options::openrlhf_critic(),
                           adamw_options{3e-3, 0.8, 0.9, 1e-6, 0.05}}) {
    auto m2 = make_params<T>(b, small_model, values, random_tensors<T>(g, small_model));
    adamw<B, T> opt(opts);
    adamw_oracle oracle(opts, values);
    for (int s = 0; s < 6; ++s) {
      const auto grads = random_tensors<T>(g, small_model, -2.0, 2.0);
      m2.set_grads(b, grads);
      opt.step(b, m2.list);
      oracle.step(grads);
    }
    const auto got = m2.host_values(b);
    for (std::size_t k = 0; k < got.size(); ++k) {
      CHECK_THAT(got[k], close_to<T>(oracle.p[k], std::is_same_v<T, float> ? 1e-5 : 1e-12, atol_for<T>()));
    }
  }
}

TEMPLATE_LIST_TEST_CASE("adamw: frozen parameters (empty grad) are not updated", "[optim][adamw]", all_configs) {
  using B = typename TestType::backend;
  using T = typename TestType::value;
  const auto b = TestType::make();
  auto model = make_params<T>(b, {{"a", 1, 2}, {"b", 1, 2}}, {{T(1), T(2)}, {T(3), T(4)}}, {{T(1), T(1)}, {T(1), T(1)}});
  model.list[1].grad = {};
  adamw_options o;
  o.learning_rate = 0.1;
  o.weight_decay = 0.5;
  adamw<B, T> opt(o);
  opt.step(b, model.list);
  CHECK(to_host(b, model.list[1].value) == std::vector<T>{T(3), T(4)});
  // "a": 1 * (1 - 0.05) - 0.1 * 1 / (1 + 1e-8) = 0.85; 2 * 0.95 - 0.1 = 1.8.
  CHECK_THAT(to_host(b, model.list[0].value), close_to<T>(std::vector<double>{0.95 - 0.1 / (1 + 1e-8), 1.9 - 0.1 / (1 + 1e-8)},
                                                          rtol_for<T>(), atol_for<T>()));
}

TEMPLATE_LIST_TEST_CASE("adamw: prepare + state restore continues a run exactly", "[optim][adamw]", all_configs) {
  using B = typename TestType::backend;
  using T = typename TestType::value;
  const auto b = TestType::make();
  auto g = rng(32);
  const auto values = random_tensors<T>(g, small_model);
  std::vector<std::vector<std::vector<T>>> grads;
  for (int s = 0; s < 5; ++s) grads.push_back(random_tensors<T>(g, small_model));
  const adamw_options o{1e-2, 0.9, 0.95, 1e-8, 0.01};

  auto run = make_params<T>(b, small_model, values, grads[0]);
  adamw<B, T> first(o);
  for (int s = 0; s < 3; ++s) {
    run.set_grads(b, grads[s]);
    first.step(b, run.list);
  }
  // A fresh optimizer restored from the first one's state and step count ("checkpoint").
  adamw<B, T> second(o);
  CHECK(second.state().empty());
  second.prepare(b, run.list);
  CHECK(second.step_count() == 0);
  auto from = first.state();
  auto to = second.state();
  REQUIRE(from.size() == to.size());
  REQUIRE(to.size() == 2 * small_model.size());
  for (std::size_t i = 0; i < from.size(); ++i) {
    CHECK(from[i].name == to[i].name);
    CHECK(to_host(b, to[i].value) == std::vector<T>(to[i].value.size(), T(0)));
    b.copy(as_const(from[i].value.flat()), to[i].value.flat());
  }
  CHECK(to[4].name == "adamw.m.head");
  second.set_step_count(first.step_count());
  auto copy = make_params<T>(b, small_model, run.host_values(b), grads[3]);
  for (int s = 3; s < 5; ++s) {
    run.set_grads(b, grads[s]);
    copy.set_grads(b, grads[s]);
    first.step(b, run.list);
    second.step(b, copy.list);
  }
  const auto a = run.host_values(b), c = copy.host_values(b);
  for (std::size_t k = 0; k < a.size(); ++k) CHECK(a[k] == c[k]);
  // reset() drops everything.
  second.reset();
  CHECK(second.state().empty());
  CHECK(second.step_count() == 0);
}

TEMPLATE_LIST_TEST_CASE("adamw: a schedule drives the learning rate of each step", "[optim][adamw]", all_configs) {
  using B = typename TestType::backend;
  using T = typename TestType::value;
  const auto b = TestType::make();
  auto model = make_params<T>(b, {{"w", 1, 1}}, {{T(1)}}, {{T(1)}});
  adamw<B, T> opt;
  opt.set_learning_rate(0.0);
  CHECK(opt.learning_rate() == 0.0);
  opt.step(b, model.list);  // lr 0 (the first warm-up step): nothing moves, but the moments do
  CHECK(to_host(b, model.list[0].value) == std::vector<T>{T(1)});
  CHECK(opt.step_count() == 1);
  opt.set_learning_rate(0.5);
  opt.step(b, model.list);  // constant g = 1: m^ = 1, v^ = 1 -> p = 1 - 0.5 / (1 + 1e-8)
  CHECK_THAT(to_host(b, model.list[0].value), close_to<T>(std::vector<double>{1 - 0.5 / (1 + 1e-8)}, rtol_for<T>(), atol_for<T>()));
}

TEMPLATE_LIST_TEST_CASE("adamw: invalid options and learning rates are rejected", "[optim][adamw][errors]",
                        all_configs) {
  using B = typename TestType::backend;
  using T = typename TestType::value;
  using opt_t = adamw<B, T>;
  adamw_options o;
  o.learning_rate = -1e-3;
  CHECK_THROWS_WITH(opt_t(o), Catch::Contains("rlhf::adamw") && Catch::Contains("'options.learning_rate'") &&
                                  Catch::Contains("-0.001"));
  o = {};
  o.beta1 = 1.0;
  CHECK_THROWS_WITH(opt_t(o), Catch::Contains("rlhf::adamw") && Catch::Contains("'options.beta1'") &&
                                  Catch::Contains("[0, 1)"));
  o = {};
  o.beta2 = -0.1;
  CHECK_THROWS_WITH(opt_t(o), Catch::Contains("'options.beta2'"));
  o = {};
  o.beta2 = std::nan("");
  CHECK_THROWS_WITH(opt_t(o), Catch::Contains("'options.beta2'"));
  o = {};
  o.eps = 0.0;
  CHECK_THROWS_WITH(opt_t(o), Catch::Contains("'options.eps'") && Catch::Contains("> 0"));
  o = {};
  o.weight_decay = -0.01;
  CHECK_THROWS_WITH(opt_t(o), Catch::Contains("'options.weight_decay'"));
  o = {};
  o.learning_rate = INFINITY;
  CHECK_THROWS_AS(opt_t(o), rlhf::invalid_argument);
  opt_t ok;
  CHECK_THROWS_WITH(ok.set_learning_rate(-1.0), Catch::Contains("rlhf::adamw::set_learning_rate") && Catch::Contains("'lr'"));
  CHECK_NOTHROW(ok.set_learning_rate(0.0));
}

TEMPLATE_LIST_TEST_CASE("adamw: a changed or malformed parameter list is rejected", "[optim][adamw][errors]",
                        all_configs) {
  using B = typename TestType::backend;
  using T = typename TestType::value;
  const auto b = TestType::make();
  auto g = rng(33);
  auto model = make_params<T>(b, small_model, random_tensors<T>(g, small_model), random_tensors<T>(g, small_model));
  adamw<B, T> opt;
  opt.step(b, model.list);
  const auto before = model.host_values(b);

  auto renamed = model.list;
  renamed[1].name = "other";
  CHECK_THROWS_WITH(opt.step(b, renamed), Catch::Contains("rlhf::adamw::step") && Catch::Contains("'params[1]'") &&
                                              Catch::Contains("'norm.weight'") && Catch::Contains("'other'"));
  auto fewer = model.list;
  fewer.pop_back();
  CHECK_THROWS_WITH(opt.step(b, fewer), Catch::Contains("'params'") && Catch::Contains("3 tensors") &&
                                            Catch::Contains("received 2 tensors"));
  auto reshaped = model.list;
  reshaped[0].value = reshaped[0].value.row_block(0, 2);
  reshaped[0].grad = reshaped[0].grad.row_block(0, 2);
  CHECK_THROWS_WITH(opt.step(b, reshaped), Catch::Contains("'params[0]'") && Catch::Contains("[3, 4]") &&
                                               Catch::Contains("[2, 4]"));
  auto bad_grad = model.list;
  bad_grad[2].grad = bad_grad[2].grad.row_block(0, 1);
  CHECK_THROWS_WITH(opt.step(b, bad_grad), Catch::Contains("'params[2] ('head').grad'") &&
                                               Catch::Contains("shape [2, 4]") && Catch::Contains("received [1, 4]"));
  auto dup = model.list;
  dup[2].name = "embed";
  adamw<B, T> fresh;
  CHECK_THROWS_WITH(fresh.step(b, dup), Catch::Contains("'params'") && Catch::Contains("unique") &&
                                            Catch::Contains("'embed' twice"));
  auto unnamed = model.list;
  unnamed[0].name = "";
  CHECK_THROWS_WITH(fresh.step(b, unnamed), Catch::Contains("'params[0]'") && Catch::Contains("non-empty"));
  // Nothing moved and the step count did not advance.
  CHECK(model.host_values(b) == before);
  CHECK(opt.step_count() == 1);
}

TEMPLATE_LIST_TEST_CASE("adamw: opt-in finite check rejects NaN gradients before updating", "[optim][adamw][errors]",
                        all_configs) {
  using B = typename TestType::backend;
  using T = typename TestType::value;
  const auto b = TestType::make();
  auto model = make_params<T>(b, {{"a", 1, 2}, {"b", 1, 2}}, {{T(1), T(2)}, {T(3), T(4)}},
                              {{T(1), T(1)}, {T(1), std::numeric_limits<T>::quiet_NaN()}});
  adamw<B, T> opt;
  set_finite_checks(true);
  CHECK_THROWS_AS(opt.step(b, model.list), rlhf::non_finite_error);
  set_finite_checks(false);
  CHECK(to_host(b, model.list[0].value) == std::vector<T>{T(1), T(2)});
  CHECK(opt.step_count() == 0);
}

TEMPLATE_LIST_TEST_CASE("adamw satisfies the optimizer concepts", "[optim][adamw][concepts]", all_configs) {
  using B = typename TestType::backend;
  using T = typename TestType::value;
  STATIC_REQUIRE(rlhf::optimizer<adamw<B, T>, B, T>);
  STATIC_REQUIRE(rlhf::restorable_optimizer<adamw<B, T>, B, T>);
  detail::check_restorable_optimizer<adamw<B, T>, B, T>();
}
