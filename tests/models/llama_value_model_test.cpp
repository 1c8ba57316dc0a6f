// The value model: per-token values (against the trunk's hidden states), zero on padding, the backward
// against finite differences (own trunk and a trunk shared with the policy), the one-line
// initialization from a reward model, and errors.
#include "rlhf/models/llama_value_model.hpp"

#include <cmath>
#include <vector>

#include "models/model_test_support.hpp"
#include "test_support.hpp"

using namespace rlhf;
using namespace rlhf::test;

TEMPLATE_LIST_TEST_CASE("llama_value_model: value_model_from(rm) gives each action's state the reward model's score of that prefix",
                        "[models][value_model]", all_configs) {
  using B = typename TestType::backend;
  using T = typename TestType::value;
  const B b = TestType::make();
  const llama_config c = tiny_llama_config(false);
  llama_model<B, T> lm(b, c);
  lm.init_random(b, 3, 0.4, 0.1);
  lm.set_attention_memory(attention_memory::logsumexp);  // training passes only: the values below are inference
  auto rm = llama_reward_model<B, T>::from_language_model(b, lm, 5);
  rm.add_to_bias(b, -0.5);
  auto critic = value_model_from(b, rm);  // InstructGPT: the value function starts from the RM
  // Both copies train the way the source model was set to (a user who chose logsumexp for the policy keeps it).
  CHECK(rm.trunk().attention_memory_mode() == attention_memory::logsumexp);
  CHECK(critic.trunk().attention_memory_mode() == attention_memory::logsumexp);
  CHECK(critic.parameters().size() == rm.parameters().size());
  CHECK(critic.parameters().back().name == "value_head.bias");
  std::mt19937_64 g(1);
  const std::size_t rows = 2, cols = 5;
  const auto tokens_host = random_tokens(g, rows * cols, c.vocab_size);
  const std::vector<std::int32_t> lengths_host{5, 3};
  const auto tokens = to_backend(b, std::span<const token_type>(tokens_host), rows, cols);
  const auto lengths = to_backend(b, lengths_host);
  auto values = allocate_filled<T>(b, rows, cols, T(7));
  critic.values(b, as_const(tokens.view()), as_const(lengths.view().flat()), values.view());
  const auto v = to_host(b, values.view());
  // Value at (r, t) = the RM's score of the prefix tokens(r, 0..t-1), the state in which token t is chosen
  // (causal attention: later tokens unseen); 0 at t = 0 and on padding.
  for (std::size_t r = 0; r < rows; ++r) {
    for (std::size_t t = 0; t < cols; ++t) {
      INFO("row " << r << ", column " << t);
      if (t == 0 || t >= static_cast<std::size_t>(lengths_host[r])) {
        CHECK(v[r * cols + t] == T(0));
        continue;
      }
      const auto one = to_backend(b, std::span<const token_type>(tokens_host.data() + r * cols, t), 1, t);
      auto s = allocate<T>(b, 1);
      rm.scores(b, as_const(one.view()), {}, s.view().flat());
      CHECK(static_cast<double>(v[r * cols + t]) ==
            Approx(static_cast<double>(to_host(b, s.view().flat())[0])).epsilon(tolerance<T>::rtol * 10).margin(1e-5));
    }
  }
  // clone: an own trunk is copied (same values, separate storage); a shared trunk stays shared, the head copied.
  const auto values_of = [&](llama_value_model<B, T>& m) {
    auto out = allocate<T>(b, rows, cols);
    m.values(b, as_const(tokens.view()), as_const(lengths.view().flat()), out.view());
    return to_host(b, out.view());
  };
  auto critic_copy = critic.clone(b);
  CHECK_FALSE(critic_copy.shares_trunk());
  CHECK(&critic_copy.trunk() != &critic.trunk());
  CHECK(critic_copy.trunk().attention_memory_mode() == attention_memory::logsumexp);
  CHECK(values_of(critic_copy) == v);
  auto on_policy = llama_value_model<B, T>::sharing_trunk(b, lm, 9);
  auto on_policy_copy = on_policy.clone(b);
  CHECK(on_policy_copy.shares_trunk());
  CHECK(&on_policy_copy.trunk() == &lm);
  CHECK(values_of(on_policy_copy) == values_of(on_policy));
  CHECK(on_policy_copy.parameters().size() == 2);  // the head only: the trunk's belong to the policy
}

TEMPLATE_LIST_TEST_CASE("llama_value_model::values_backward: gradients match finite differences, own or shared trunk; ready reports",
                        "[models][value_model][gradient]", double_configs) {
  using B = typename TestType::backend;
  using T = typename TestType::value;
  const B b = TestType::make();
  const llama_config c = tiny_llama_config(true);
  std::mt19937_64 g(3);
  const std::size_t rows = 2, cols = 6;
  const auto tokens_host = random_tokens(g, rows * cols, c.vocab_size);
  const auto tokens = to_backend(b, std::span<const token_type>(tokens_host), rows, cols);
  const auto lengths = to_backend(b, std::vector<std::int32_t>{6, 4});
  const auto weights = normal<T>(g, rows * cols);  // includes padding entries, which must be ignored
  const auto d_values = to_backend(b, std::span<const T>(weights), rows, cols);
  auto values = allocate<T>(b, rows, cols);
  const auto run = [&](llama_value_model<B, T>& critic, parameter_list<T, typename B::memory_space> params) {
    const auto loss = [&] {
      critic.values(b, as_const(tokens.view()), as_const(lengths.view().flat()), values.view());
      const auto v = to_host(b, values.view());
      double l = 0;
      for (std::size_t i = 0; i < v.size(); ++i) l += weights[i] * v[i];
      return l;
    };
    const auto backward = [&] {
      critic.values(b, as_const(tokens.view()), as_const(lengths.view().flat()), values.view(), forward_mode::training);
      critic.values_backward(b, as_const(d_values.view()));
    };
    check_parameter_gradients<B, T>(b, params, loss, backward);
  };
  SECTION("own trunk") {
    llama_value_model<B, T> critic(b, c);
    llama_model<B, T> lm(b, c);
    lm.init_random(b, 4, 0.5, 0.2);
    critic.trunk().copy_parameters_from(b, lm);
    critic.head().init_random(b, 6, 0.5);
    run(critic, critic.parameters());
    // Ready reports: the head first, then the trunk from the top.
    std::vector<std::size_t> expected{critic.trunk().tensor_count(), critic.trunk().tensor_count() + 1};
    for (const std::size_t k : llama_backward_report_order(c)) expected.push_back(k);
    CHECK(check_gradient_reports(b, critic, [&] {
            critic.values(b, as_const(tokens.view()), as_const(lengths.view().flat()), values.view(), forward_mode::training);
            critic.values_backward(b, as_const(d_values.view()));
          }) == expected);
  }
  SECTION("trunk shared with the policy: the trunk gradient lands in the policy's buffers") {
    llama_model<B, T> policy(b, c);
    policy.init_random(b, 4, 0.5, 0.2);
    auto critic = llama_value_model<B, T>::sharing_trunk(b, policy, 6, 0.5);
    CHECK(critic.shares_trunk());
    CHECK(critic.parameters().size() == 2);
    auto all = policy.parameters();
    for (const auto& p : critic.parameters()) all.push_back(p);
    run(critic, all);
    // Ready reports: only the head's (the shared trunk is the policy's, and the policy is not armed).
    CHECK(check_gradient_reports(b, critic, [&] {
            critic.values(b, as_const(tokens.view()), as_const(lengths.view().flat()), values.view(), forward_mode::training);
            critic.values_backward(b, as_const(d_values.view()));
          }) == std::vector<std::size_t>{0, 1});
  }
}

TEMPLATE_LIST_TEST_CASE("llama_value_model: errors name the function and the argument", "[models][value_model][errors]",
                        all_configs) {
  using B = typename TestType::backend;
  using T = typename TestType::value;
  const B b = TestType::make();
  llama_value_model<B, T> critic(b, tiny_llama_config());
  const auto tokens = allocate_filled<token_type>(b, 2, 4, 1);
  auto values = allocate<T>(b, 2, 4), wrong = allocate<T>(b, 2, 5);
  CHECK_THROWS_WITH(critic.values_backward(b, as_const(values.view())),
                    Catch::Contains("rlhf::llama_value_model::values_backward") && Catch::Contains("no recorded"));
  CHECK_THROWS_WITH(critic.values(b, as_const(tokens.view()), {}, wrong.view()),
                    Catch::Contains("rlhf::llama_value_model::values") && Catch::Contains("'values'"));
  critic.values(b, as_const(tokens.view()), {}, values.view(), forward_mode::training);
  CHECK_THROWS_WITH(critic.values_backward(b, as_const(wrong.view())), Catch::Contains("'d_values'"));
}
