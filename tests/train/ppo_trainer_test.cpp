// The PPO trainer: a step on a fixed rollout moves the policy toward the higher-advantage response and
// leaves the reference untouched; iterations raise the reward of a planted preference while the KL to
// the reference grows from 0; PPO-ptx, the entropy bonus, the adaptive KL controller, early stopping and
// the EMA take effect; a user-written reward model plugs in; bad input is rejected.
#include "rlhf/train/ppo_trainer.hpp"

#include <vector>

#include "models/model_test_support.hpp"
#include "rlhf/models/llama_value_model.hpp"
#include "rlhf/optim/adamw.hpp"
#include "temp_files.hpp"
#include "test_support.hpp"

using namespace rlhf;
using namespace rlhf::test;

namespace {

// A user-written reward model (no parameters): the number of `target` tokens in each row's real tokens.
template <class B, class T>
struct count_reward {
  using backend_type = B;
  using value_type = T;
  token_type target = 7;
  parameter_list<T, typename B::memory_space> parameters() { return {}; }
  void zero_grad(const B&) {}
  void scores(const B& b, backend_matrix<B, const token_type> tokens, backend_vector<B, const std::int32_t> lengths,
              backend_vector<B, T> out, forward_mode) {
    const auto t = to_host(b, tokens.flat());
    const auto l = to_host(b, lengths);
    std::vector<T> s(tokens.rows, T(0));
    for (std::size_t r = 0; r < tokens.rows; ++r)
      for (std::size_t c = 0; c < static_cast<std::size_t>(l[r]); ++c) s[r] += t[r * tokens.cols + c] == target ? T(1) : T(0);
    b.copy(vector_view<const T, host_space>{s.data(), s.size()}, out);
  }
  void scores_backward(const B&, backend_vector<B, const T>) {}
};

template <class B, class T>
struct fixture {
  B b{};
  llama_config c = tiny_llama_config(false);
  llama_model<B, T> policy{b, c}, reference{b, c};
  llama_value_model<B, T> value{b, c};
  count_reward<B, T> reward{};
  adamw<B, T> policy_opt{adamw_options{3e-3}}, value_opt{adamw_options{1e-2}};
  fixture() {
    policy.init_random(b, 4, 0.2);
    reference.copy_parameters_from(b, policy);
    llama_model<B, T> body(b, c);
    body.init_random(b, 5, 0.2);
    value.trunk().copy_parameters_from(b, body);
  }
  std::vector<T> log_probs_of(const std::vector<token_type>& seq) {
    const auto t = to_backend(b, std::span<const token_type>(seq), 1, seq.size());
    auto lp = allocate<T>(b, 1, seq.size());
    policy.log_probs(b, as_const(t.view()), {}, lp.view());
    return to_host(b, lp.view());
  }
};

template <class T>
double sum_after(const std::vector<T>& v, std::size_t from) {
  double s = 0;
  for (std::size_t i = from; i < v.size(); ++i) s += static_cast<double>(v[i]);
  return s;
}

}  // namespace

static_assert(reward_model<count_reward<reference_backend, float>>, "a user-written reward model qualifies");

TEMPLATE_LIST_TEST_CASE("ppo_trainer::learn: a step on a fixed rollout favours the higher-reward response",
                        "[train][ppo]", all_configs) {
  using B = typename TestType::backend;
  using T = typename TestType::value;
  fixture<B, T> f;
  ppo_options o;
  o.ppo_epochs = 2;
  ppo_trainer trainer(f.policy, f.reference, f.value, f.reward, f.policy_opt, f.value_opt, o);
  // Same prompt twice; the response with two 7s scores 2, the other 0.
  const std::vector<token_type> prompt{1, 3}, good{7, 4, 7}, bad{5, 4, 6};
  ppo_rollout r{{prompt, prompt}, {good, bad}};
  const auto seq = [&](const std::vector<token_type>& resp) {
    auto s = prompt;
    s.insert(s.end(), resp.begin(), resp.end());
    return s;
  };
  const double good0 = sum_after(f.log_probs_of(seq(good)), 2), bad0 = sum_after(f.log_probs_of(seq(bad)), 2);
  const auto ref0 = to_host(f.b, f.reference.parameters()[1].value.flat());
  const ppo_iteration_stats s = trainer.learn(f.b, r);
  const double good1 = sum_after(f.log_probs_of(seq(good)), 2), bad1 = sum_after(f.log_probs_of(seq(bad)), 2);
  INFO("good " << good0 << " -> " << good1 << ", bad " << bad0 << " -> " << bad1);
  CHECK(good1 > good0);
  CHECK(bad1 < bad0);
  CHECK(s.mean_score == Approx(1.0));
  CHECK(s.mean_kl == Approx(0.0).margin(1e-5));  // policy == reference at rollout
  CHECK(s.updates == 2);
  CHECK(s.mean_response_length == 3);
  CHECK(to_host(f.b, f.reference.parameters()[1].value.flat()) == ref0);
  CHECK(trainer.iterations() == 1);
}

TEMPLATE_LIST_TEST_CASE("ppo_trainer::step: iterations raise a planted reward; the KL to the reference grows",
                        "[train][ppo]", all_configs) {
  using B = typename TestType::backend;
  using T = typename TestType::value;
  fixture<B, T> f;
  ppo_options o;
  o.max_new_tokens = 4;
  o.minibatches = 2;
  o.beta = 0.01;
  o.sampling.seed = 3;
  ppo_trainer trainer(f.policy, f.reference, f.value, f.reward, f.policy_opt, f.value_opt, o);
  std::vector<std::vector<token_type>> prompts;
  for (token_type p = 2; p < 10; ++p) prompts.push_back({1, p});
  double first = 0, last = 0, kl = 0;
  const int iterations = 25;
  for (int i = 0; i < iterations; ++i) {
    const ppo_iteration_stats s = trainer.step(f.b, prompts);
    if (i < 3) first += s.mean_score / 3;
    if (i >= iterations - 3) last += s.mean_score / 3;
    kl = s.mean_kl;
  }
  INFO("mean score of the first 3 iterations " << first << ", of the last 3 " << last << "; KL " << kl);
  CHECK(last > first + 0.8);
  CHECK(kl > 0.05);
}

TEMPLATE_LIST_TEST_CASE("ppo_trainer: ptx, entropy bonus, adaptive beta, early stop and EMA take effect",
                        "[train][ppo]", all_configs) {
  using B = typename TestType::backend;
  using T = typename TestType::value;
  fixture<B, T> f;
  ppo_options o;
  o.max_new_tokens = 3;
  o.ptx = true;
  o.entropy_coefficient = 0.01;
  o.control = kl_control::adaptive;
  o.kl_target = 0.001;
  o.kl_horizon = 100;
  o.ema_decay = 0.9;
  o.ppo_epochs = 3;
  ppo_trainer trainer(f.policy, f.reference, f.value, f.reward, f.policy_opt, f.value_opt, o);
  const std::vector<std::vector<token_type>> prompts{{1, 2}, {1, 3}, {1, 4}};
  const std::vector<prompt_response> pretraining{{{1}, {2, 3, 4, 5}}, {{1}, {6, 7, 8}}};
  const double beta0 = trainer.beta();
  ppo_iteration_stats s = trainer.step(f.b, prompts, pretraining);
  CHECK(s.ptx_loss > 0);
  CHECK(s.entropy > 0);
  // Ziegler's controller, 3 episodes, horizon 100: the first rollout has KL 0 (policy == reference), an
  // error clipped to -0.2, so beta *= 1 - 0.2 * 3 / 100; the second is far above the tiny target: +0.2.
  CHECK(trainer.beta() == Approx(beta0 * (1 - 0.006)));
  s = trainer.step(f.b, prompts, pretraining);
  CHECK(s.mean_kl > 0.001);
  CHECK(trainer.beta() == Approx(beta0 * (1 - 0.006) * (1 + 0.006)));
  // EMA: the shadow differs from the current weights after two updates.
  auto shadow = trainer.ema().state();
  REQUIRE(!shadow.empty());
  CHECK(to_host(f.b, shadow[0].value.flat()) != to_host(f.b, f.policy.parameters()[0].value.flat()));
  // Early stop on the first minibatch whose policy KL exceeds a tiny threshold.
  ppo_options early = o;
  early.early_stop_kl = 1e-12;
  early.ptx = false;
  ppo_trainer stopper(f.policy, f.reference, f.value, f.reward, f.policy_opt, f.value_opt, early);
  stopper.step(f.b, prompts);  // the first update moves the policy away from its rollout self
  const ppo_iteration_stats e = stopper.step(f.b, prompts);
  CHECK(e.updates <= 3);
}

TEMPLATE_LIST_TEST_CASE("ppo_trainer: errors name the function and the argument", "[train][ppo][errors]", all_configs) {
  using B = typename TestType::backend;
  using T = typename TestType::value;
  fixture<B, T> f;
  ppo_options bad;
  bad.ppo_epochs = 0;
  CHECK_THROWS_WITH((ppo_trainer(f.policy, f.reference, f.value, f.reward, f.policy_opt, f.value_opt, bad)),
                    Catch::Contains("rlhf::ppo_trainer") && Catch::Contains("'options.ppo_epochs'"));
  ppo_options o;
  o.ptx = true;
  ppo_trainer trainer(f.policy, f.reference, f.value, f.reward, f.policy_opt, f.value_opt, o);
  CHECK_THROWS_WITH(trainer.step(f.b, {}), Catch::Contains("rlhf::ppo_trainer::step") && Catch::Contains("'prompts'"));
  CHECK_THROWS_WITH(trainer.step(f.b, {{1, 2}}), Catch::Contains("'pretraining'"));
  CHECK_THROWS_WITH(trainer.learn(f.b, ppo_rollout{{{1}}, {}}), Catch::Contains("'rollout'"));
}

TEMPLATE_LIST_TEST_CASE("ppo_trainer: save_state + load_state resume a run with results identical to an uninterrupted one",
                        "[train][ppo][checkpoint]", all_configs) {
  using B = typename TestType::backend;
  using T = typename TestType::value;
  temp_dir dir;
  ppo_options o;
  o.max_new_tokens = 3;
  o.minibatches = 2;
  o.control = kl_control::adaptive;
  o.kl_target = 0.5;
  o.ema_decay = 0.8;
  const std::vector<std::vector<token_type>> prompts{{1, 2}, {1, 3}, {1, 4}, {1, 5}};
  const auto params_of = [](fixture<B, T>& f) {
    std::vector<std::vector<T>> all;
    for (const auto& p : f.policy.parameters()) all.push_back(to_host(f.b, p.value.flat()));
    for (const auto& p : f.value.parameters()) all.push_back(to_host(f.b, p.value.flat()));
    return all;
  };
  fixture<B, T> straight;
  ppo_trainer a(straight.policy, straight.reference, straight.value, straight.reward, straight.policy_opt,
                straight.value_opt, o);
  for (int i = 0; i < 4; ++i) a.step(straight.b, prompts);

  {
    fixture<B, T> first;
    ppo_trainer t(first.policy, first.reference, first.value, first.reward, first.policy_opt, first.value_opt, o);
    for (int i = 0; i < 2; ++i) t.step(first.b, prompts);
    t.save_state(first.b, dir.path / "run");
  }  // the "interrupted" process ends here
  fixture<B, T> resumed;
  ppo_trainer t(resumed.policy, resumed.reference, resumed.value, resumed.reward, resumed.policy_opt, resumed.value_opt, o);
  t.load_state(resumed.b, dir.path / "run");
  CHECK(t.iterations() == 2);
  for (int i = 0; i < 2; ++i) t.step(resumed.b, prompts);
  CHECK(params_of(resumed) == params_of(straight));
  CHECK(t.beta() == a.beta());
  CHECK(to_host(resumed.b, t.ema().state()[0].value.flat()) == to_host(straight.b, a.ema().state()[0].value.flat()));
  CHECK_THROWS_WITH(t.load_state(resumed.b, dir.path / "nowhere"), Catch::Contains("rlhf::ppo_trainer::load_state"));
}
