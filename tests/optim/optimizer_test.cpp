// The optimizer concept: a user-defined optimizer plugs in; each missing member is detected; the
// helpers stateful optimizers share (list validation, signatures, zeroed state).
#include "rlhf/optim/optimizer.hpp"

#include "rlhf/optim/adamw.hpp"
#include "rlhf/optim/gradient_clipping.hpp"
#include "rlhf/optim/lr_schedule.hpp"
#include "rlhf/optim/sgd.hpp"
#include "test_support.hpp"

#include "optim/optim_test_support.hpp"

#include <cmath>
#include <string>
#include <type_traits>
#include <vector>

using namespace rlhf;
using namespace rlhf::test;


namespace {
// p <- p - lr * sign(g): a user's optimizer with one state tensor per parameter (the last update), written
// only against the public concept, the views and the backend primitives.
template <class T>
struct sign_update_fn {
  T lr;
  RLHF_HOST_DEVICE T operator()(T g) const { return g > T(0) ? -lr : (g < T(0) ? lr : T(0)); }
};
template <class T>
struct add_fn {
  RLHF_HOST_DEVICE T operator()(T a, T b) const { return a + b; }
};

template <class B, class T>
class sign_descent {
 public:
  using space = typename B::memory_space;
  void step(const B& b, parameter_list<T, space>& params) {
    if (last_.empty()) {
      for (const auto& p : params) last_.push_back(allocate<T>(b, p.value.rows, p.value.cols));
      for (const auto& p : params) names_.push_back("sign.last." + p.name);
    }
    for (std::size_t i = 0; i < params.size(); ++i) {
      b.transform(last_[i].view().flat(), sign_update_fn<T>{T(lr_)}, as_const(params[i].grad.flat()));
      b.transform(params[i].value.flat(), add_fn<T>{}, as_const(params[i].value.flat()),
                  as_const(last_[i].view().flat()));
    }
    ++steps_;
  }
  double learning_rate() const { return lr_; }
  void set_learning_rate(double lr) { lr_ = lr; }
  state_tensor_list<T, space> state() {
    state_tensor_list<T, space> out;
    for (std::size_t i = 0; i < last_.size(); ++i) out.push_back({names_[i], last_[i].view()});
    return out;
  }
  std::size_t step_count() const { return steps_; }

 private:
  double lr_ = 0.1;
  std::size_t steps_ = 0;
  std::vector<buffer_t<B, T>> last_;
  std::vector<std::string> names_;
};

// A trainer's inner loop, written against the concept only.
template <class B, class T, rlhf::optimizer<B, T> O, rlhf::lr_schedule S>
void train_steps(const B& b, O& opt, parameter_list<T, typename B::memory_space>& params, const S& schedule,
                 std::size_t n) {
  detail::check_optimizer<O, B, T>();
  for (std::size_t s = 0; s < n; ++s) {
    opt.set_learning_rate(schedule(opt.step_count()));
    clip_gradient_norm(b, params);
    opt.step(b, params);
  }
}

// Types each missing one requirement.
template <class B, class T>
struct no_step {
  double learning_rate() const { return 0; }
  void set_learning_rate(double) {}
  state_tensor_list<T, typename B::memory_space> state() { return {}; }
  std::size_t step_count() const { return 0; }
};
template <class B, class T>
struct no_set_lr {
  void step(const B&, parameter_list<T, typename B::memory_space>&) {}
  double learning_rate() const { return 0; }
  state_tensor_list<T, typename B::memory_space> state() { return {}; }
  std::size_t step_count() const { return 0; }
};
template <class B, class T>
struct wrong_state {
  void step(const B&, parameter_list<T, typename B::memory_space>&) {}
  double learning_rate() const { return 0; }
  void set_learning_rate(double) {}
  std::vector<int> state() { return {}; }
  std::size_t step_count() const { return 0; }
};
template <class B, class T>
struct no_step_count {
  void step(const B&, parameter_list<T, typename B::memory_space>&) {}
  double learning_rate() const { return 0; }
  void set_learning_rate(double) {}
  state_tensor_list<T, typename B::memory_space> state() { return {}; }
};
}  // namespace

TEMPLATE_LIST_TEST_CASE("optimizer concept: a user-defined optimizer plugs into a generic loop", "[optim][concepts]",
                        all_configs) {
  using B = typename TestType::backend;
  using T = typename TestType::value;
  const auto b = TestType::make();
  STATIC_REQUIRE(rlhf::optimizer<sign_descent<B, T>, B, T>);
  STATIC_REQUIRE_FALSE(rlhf::restorable_optimizer<sign_descent<B, T>, B, T>);
  STATIC_REQUIRE(rlhf::restorable_optimizer<adamw<B, T>, B, T>);
  STATIC_REQUIRE(rlhf::restorable_optimizer<sgd<B, T>, B, T>);
  STATIC_REQUIRE_FALSE(rlhf::optimizer<no_step<B, T>, B, T>);
  STATIC_REQUIRE_FALSE(rlhf::optimizer<no_set_lr<B, T>, B, T>);
  STATIC_REQUIRE_FALSE(rlhf::optimizer<wrong_state<B, T>, B, T>);
  STATIC_REQUIRE_FALSE(rlhf::optimizer<no_step_count<B, T>, B, T>);
  // A wrong element type or backend does not satisfy it either.
  using other_t = std::conditional_t<std::is_same_v<T, float>, double, float>;
  STATIC_REQUIRE_FALSE(rlhf::optimizer<adamw<B, T>, B, other_t>);

  // sign descent, constant schedule 0.25, gradients [0.3, -5, 0] (norm > 1, clipped, signs unchanged):
  // three steps move the weights by -0.75, +0.75, 0.
  auto model = make_params<T>(b, {{"w", 1, 3}}, {{T(1), T(1), T(1)}}, {{T(0.3), T(-5), T(0)}});
  sign_descent<B, T> opt;
  train_steps(b, opt, model.list, constant_schedule(0.25), 3);
  CHECK(to_host(b, model.list[0].value) == std::vector<T>{T(0.25), T(1.75), T(1)});
  CHECK(opt.step_count() == 3);
  CHECK(opt.learning_rate() == 0.25);
  auto st = opt.state();
  REQUIRE(st.size() == 1);
  CHECK(st[0].name == "sign.last.w");
  CHECK(to_host(b, st[0].value) == std::vector<T>{T(-0.25), T(0.25), T(0)});

  // The library's optimizers run in the same loop.
  auto m2 = make_params<T>(b, {{"w", 1, 1}}, {{T(1)}}, {{T(1)}});
  sgd<B, T> plain(sgd_options::plain());
  train_steps(b, plain, m2.list, constant_schedule(0.5), 2);  // 1 - 0.5 - 0.5 = 0
  CHECK(to_host(b, m2.list[0].value) == std::vector<T>{T(0)});
}

TEMPLATE_LIST_TEST_CASE("parameter list checks and signatures", "[optim][errors]", all_configs) {
  using T = typename TestType::value;
  const auto b = TestType::make();
  auto g = rng(71);
  auto model = make_params<T>(b, small_model, random_tensors<T>(g, small_model), random_tensors<T>(g, small_model));
  CHECK_NOTHROW(detail::check_parameter_list("f", model.list, false));
  CHECK(parameter_count(model.list) == 24);

  auto frozen = model.list;
  frozen[1].grad = {};
  CHECK(detail::is_frozen(frozen[1]));
  CHECK_FALSE(detail::is_frozen(frozen[0]));
  CHECK_NOTHROW(detail::check_parameter_list("f", frozen, true));
  CHECK_THROWS_WITH(detail::check_parameter_list("f", frozen, false),
                    Catch::Contains("f: argument 'params[1] ('norm.weight').grad'") && Catch::Contains("an empty view"));
  auto null_value = model.list;
  null_value[0].value.data = nullptr;
  CHECK_THROWS_WITH(detail::check_parameter_list("f", null_value, true),
                    Catch::Contains("'params[0] ('embed').value'") && Catch::Contains("null pointer"));

  const auto sig = detail::parameter_signature::of(model.list);
  REQUIRE(sig.entries.size() == 3);
  CHECK(sig.entries[2].name == "head");
  CHECK(sig.entries[2].rows == 2);
  CHECK_NOTHROW(sig.check_matches("f", model.list));
  auto transposed = model.list;
  transposed[2].value.rows = 4;
  transposed[2].value.cols = 2;
  CHECK_THROWS_WITH(sig.check_matches("f", transposed), Catch::Contains("'params[2]'") &&
                                                            Catch::Contains("'head' of shape [2, 4]") &&
                                                            Catch::Contains("received 'head' of shape [4, 2]"));

  auto zeros = detail::allocate_zeroed_like<T>(b, model.list);
  REQUIRE(zeros.size() == 3);
  for (std::size_t i = 0; i < zeros.size(); ++i) {
    CHECK(zeros[i].view().rows == model.list[i].value.rows);
    CHECK(to_host(b, zeros[i].view()) == std::vector<T>(model.list[i].value.size(), T(0)));
  }
}
