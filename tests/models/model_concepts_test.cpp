// The model concepts: the bundled models satisfy them on every backend; a minimal user-written model
// (a bigram table policy) satisfies them too; incomplete types are rejected (the must-not-compile
// programs in tests/concepts/ check the messages users see).
#include "rlhf/models/concepts.hpp"

#include <vector>

#include "rlhf/models/llama.hpp"
#include "rlhf/models/llama_reward_model.hpp"
#include "rlhf/models/llama_value_model.hpp"
#include "test_support.hpp"

using namespace rlhf;

namespace {

// The smallest user model that plugs into the trainers: a policy whose log-probs do not depend on the
// input (uniform over a vocabulary), with one parameter. Written from the contract in docs/models.md.
struct uniform_policy {
  using backend_type = reference_backend;
  using value_type = double;
  host_buffer<double> w{1, 1}, g{1, 1};
  parameter_list<double> parameters() { return {{"w", w.view(), g.view()}}; }
  void zero_grad(const reference_backend& b) { b.fill(g.view().flat(), 0.0); }
  void log_probs(const reference_backend&, matrix_view<const token_type>, vector_view<const std::int32_t>,
                 matrix_view<double>, matrix_view<double>, forward_mode) {}
  void log_probs_backward(const reference_backend&, matrix_view<const double>, matrix_view<const double>) {}
  std::vector<std::vector<token_type>> generate(const reference_backend&, const std::vector<std::vector<token_type>>& p,
                                                std::size_t, const sampling_options&) {
    return p;
  }
};

struct scores_without_backward {
  using backend_type = reference_backend;
  using value_type = float;
  parameter_list<float> parameters() { return {}; }
  void zero_grad(const reference_backend&) {}
  void scores(const reference_backend&, matrix_view<const token_type>, vector_view<const std::int32_t>,
              vector_view<float>, forward_mode) {}
};

}  // namespace

TEMPLATE_LIST_TEST_CASE("model concepts: the bundled Llama models satisfy them on every backend", "[models][concepts]",
                        rlhf::test::all_configs) {
  using B = typename TestType::backend;
  using T = typename TestType::value;
  STATIC_REQUIRE(policy<llama_model<B, T>>);
  STATIC_REQUIRE(reward_model<llama_reward_model<B, T>>);
  STATIC_REQUIRE(value_model<llama_value_model<B, T>>);
  STATIC_REQUIRE_FALSE(reward_model<llama_model<B, T>>);
  STATIC_REQUIRE_FALSE(policy<llama_value_model<B, T>>);
}

TEST_CASE("model concepts: a user-written policy qualifies; a model without its backward does not", "[models][concepts]") {
  STATIC_REQUIRE(policy<uniform_policy>);
  STATIC_REQUIRE_FALSE(reward_model<scores_without_backward>);
  STATIC_REQUIRE_FALSE(value_model<uniform_policy>);
  uniform_policy p;
  const reference_backend b;
  p.g.view()(0, 0) = 3.0;
  p.zero_grad(b);
  CHECK(p.parameters().front().grad(0, 0) == 0.0);
}
