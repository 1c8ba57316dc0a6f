// Learning-rate schedules at their boundary steps, against the transformers formulas written out by hand.
#include "rlhf/optim/lr_schedule.hpp"

#include "rlhf/optim/adamw.hpp"
#include "test_support.hpp"

#include <cmath>
#include <string>
#include <vector>

using namespace rlhf;
using namespace rlhf::test;

namespace {
bool same(double got, double want) { return std::abs(got - want) <= 1e-15 + 1e-13 * std::abs(want); }
const double pi = 3.14159265358979323846;
}  // namespace

TEST_CASE("constant_schedule: warm-up from 0, then the base rate forever", "[optim][lr_schedule]") {
  const constant_schedule flat(3e-4);
  CHECK(flat(0) == 3e-4);
  CHECK(flat(1000000) == 3e-4);
  // W = 4: 0, 0.25, 0.5, 0.75 of base, then base.
  const constant_schedule warm(2.0, 4);
  CHECK(warm(0) == 0.0);
  CHECK(warm(1) == 0.5);
  CHECK(warm(2) == 1.0);
  CHECK(warm(3) == 1.5);
  CHECK(warm(4) == 2.0);
  CHECK(warm(99) == 2.0);
  CHECK(warm.base_lr() == 2.0);
  CHECK(warm.warmup_steps() == 4);
}

TEST_CASE("linear_schedule: warm-up then linear decay to the floor", "[optim][lr_schedule]") {
  // base 1, W = 10, N = 110: warm-up 0 .. 0.9, peak at 10, half at 60, 0 at 110 and after.
  const linear_schedule s(1.0, 10, 110);
  CHECK(s(0) == 0.0);
  CHECK(same(s(5), 0.5));
  CHECK(same(s(9), 0.9));
  CHECK(s(10) == 1.0);
  CHECK(same(s(11), 0.99));
  CHECK(same(s(60), 0.5));
  CHECK(same(s(109), 0.01));
  CHECK(s(110) == 0.0);
  CHECK(s(500) == 0.0);
  // Floor 0.1: lr = 0.1 + 0.9 * (1 - p): 0.55 at 60, 0.1 at 110 and after.
  const linear_schedule f(1.0, 10, 110, 0.1);
  CHECK(same(f(60), 0.55));
  CHECK(same(f(110), 0.1));
  CHECK(same(f(1000), 0.1));
  CHECK(same(f(5), 0.5));  // the warm-up is not floored
  // ZGL: no warm-up, linear decay to 0 over the run: base at step 0.
  const auto z = linear_schedule::ziegler(1e-5, 100);
  CHECK(z(0) == 1e-5);
  CHECK(same(z(25), 0.75e-5));
  CHECK(z(100) == 0.0);
  CHECK(z.warmup_steps() == 0);
  CHECK(z.total_steps() == 100);
  // W == N: warm-up to the peak, then the floor at once (transformers' max(1, N - W)).
  const linear_schedule edge(1.0, 4, 4);
  CHECK(edge(3) == 0.75);
  CHECK(edge(4) == 0.0);
}

TEST_CASE("cosine_schedule: warm-up then half-cosine decay to the floor", "[optim][lr_schedule]") {
  const cosine_schedule s(1.0, 10, 110);
  CHECK(s(0) == 0.0);
  CHECK(same(s(5), 0.5));
  CHECK(s(10) == 1.0);
  // p = 0.25: 0.5 * (1 + cos(pi / 4)) = 0.853553390593...
  CHECK(same(s(35), 0.8535533905932737));
  CHECK(same(s(60), 0.5));
  CHECK(same(s(85), 0.5 * (1 + std::cos(0.75 * pi))));
  CHECK(std::abs(s(110)) < 1e-16);
  CHECK(std::abs(s(10000)) < 1e-16);  // stays at the floor (transformers' cosine would rise again)
  const cosine_schedule f(2.0, 0, 100, 0.1);
  CHECK(f(0) == 2.0);
  CHECK(same(f(50), 2.0 * (0.1 + 0.9 * 0.5)));
  CHECK(same(f(100), 0.2));
  CHECK(same(f(250), 0.2));
  const cosine_schedule edge(1.0, 4, 4, 0.25);
  CHECK(edge(3) == 0.75);
  CHECK(edge(4) == 0.25);
  // Monotone non-increasing after the warm-up.
  for (std::size_t t = 10; t < 120; ++t) CHECK(s(t + 1) <= s(t));
}

TEST_CASE("cosine_schedule::openrlhf: 3% warm-up, floor 0.1", "[optim][lr_schedule]") {
  CHECK(warmup_steps_for(100, 0.03) == 3);
  CHECK(warmup_steps_for(1000, 0.03) == 30);
  CHECK(warmup_steps_for(10, 0.03) == 1);  // ceil(0.3)
  CHECK(warmup_steps_for(10, 0.0) == 0);
  const auto s = cosine_schedule::openrlhf(1e-6, 100);
  CHECK(s.warmup_steps() == 3);
  CHECK(s.min_ratio() == 0.1);
  CHECK(same(s(1), 1e-6 / 3));
  CHECK(s(3) == 1e-6);
  CHECK(same(s(100), 1e-7));
}

TEST_CASE("schedules: invalid arguments are rejected", "[optim][lr_schedule][errors]") {
  CHECK_THROWS_WITH(constant_schedule(-1.0), Catch::Contains("rlhf::constant_schedule") && Catch::Contains("'base_lr'"));
  CHECK_THROWS_WITH(linear_schedule(std::nan(""), 0, 10), Catch::Contains("rlhf::linear_schedule") &&
                                                              Catch::Contains("'base_lr'"));
  CHECK_THROWS_WITH(linear_schedule(1.0, 11, 10), Catch::Contains("'warmup_steps'") &&
                                                      Catch::Contains("<= total_steps (10)") &&
                                                      Catch::Contains("received 11"));
  CHECK_THROWS_WITH(cosine_schedule(1.0, 0, 0), Catch::Contains("rlhf::cosine_schedule") &&
                                                    Catch::Contains("'total_steps'"));
  CHECK_THROWS_WITH(cosine_schedule(1.0, 0, 10, 1.5), Catch::Contains("'min_ratio'") && Catch::Contains("[0, 1]"));
  CHECK_THROWS_WITH(linear_schedule(1.0, 0, 10, -0.1), Catch::Contains("'min_ratio'"));
  CHECK_THROWS_WITH(warmup_steps_for(10, 1.5), Catch::Contains("rlhf::warmup_steps_for") && Catch::Contains("'ratio'"));
  STATIC_REQUIRE(lr_schedule<linear_schedule>);
  STATIC_REQUIRE_FALSE(lr_schedule<int>);
}

TEMPLATE_LIST_TEST_CASE("a schedule drives an optimizer step by step", "[optim][lr_schedule]", all_configs) {
  using B = typename TestType::backend;
  using T = typename TestType::value;
  const auto b = TestType::make();
  // SGD-like check through AdamW with a constant gradient (every update is lr * 1 / (1 + eps)):
  // warm-up W = 2, N = 4, base 0.1 linear: lrs 0, 0.05, 0.1, 0.05, 0 -> p = 1, 1, 0.95, 0.85, 0.8, 0.8.
  auto value = to_backend(b, std::vector<T>{T(1)}, 1, 1);
  auto grad = to_backend(b, std::vector<T>{T(1)}, 1, 1);
  parameter_list<T, typename B::memory_space> params = {{"w", value.view(), grad.view()}};
  adamw<B, T> opt;
  const linear_schedule schedule(0.1, 2, 4);
  const std::vector<double> want = {1.0, 0.95, 0.85, 0.8, 0.8};
  for (std::size_t s = 0; s < want.size(); ++s) {
    opt.set_learning_rate(schedule(opt.step_count()));
    opt.step(b, params);
    const double got = double(to_host(b, value.view())[0]);
    CHECK(std::abs(got - want[s]) < (std::is_same_v<T, float> ? 1e-6 : 1e-7));
  }
}
