// The PPO trainer: a step on a fixed rollout moves the policy toward the higher-advantage response and
// leaves the reference untouched; iterations raise the reward of a planted preference while the KL to
// the reference grows from 0; PPO-ptx, the entropy bonus, the adaptive KL controller, early stopping and
// the EMA take effect; a user-written reward model plugs in; bad input is rejected; fit() resumes
// exactly; the peers' presets hold their documented defaults; rollouts must come from the policy itself.
#include "rlhf/train/ppo_trainer.hpp"

#include <tuple>
#include <utility>
#include <vector>

#include "models/model_test_support.hpp"
#include "rlhf/models/llama_value_model.hpp"
#include "rlhf/optim/adamw.hpp"
#include "temp_files.hpp"
#include "test_support.hpp"
#include "train/train_test_support.hpp"

using namespace rlhf;
using namespace rlhf::test;

namespace {

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
                        "[train][ppo]", backend_configs) {
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
                        "[train][ppo]", backend_configs) {
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
                        "[train][ppo]", backend_configs) {
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

TEMPLATE_LIST_TEST_CASE("ppo_trainer: errors name the function and the argument", "[train][ppo][errors]", backend_configs) {
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
                        "[train][ppo][checkpoint]", backend_configs) {
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

TEMPLATE_LIST_TEST_CASE("ppo_trainer::fit: prompt batches from the seeded order, metrics, and a resumed run equal to the "
                        "uninterrupted one",
                        "[train][ppo][checkpoint]", backend_configs) {
  using B = typename TestType::backend;
  using T = typename TestType::value;
  temp_dir dir;
  ppo_options o;
  o.max_new_tokens = 3;
  o.minibatches = 2;
  o.ppo_epochs = 2;
  o.control = kl_control::adaptive;
  o.kl_target = 0.5;
  o.ptx = true;
  const std::vector<std::vector<token_type>> prompts{{1, 2}, {1, 3}, {1, 4}, {1, 5}, {1, 6}};
  const std::vector<prompt_response> pretraining{{{1}, {2, 3, 4}}, {{1}, {5, 6}}, {{1}, {7, 8, 9}}};
  run_options run;
  run.iterations = 5;
  run.batch_size = 3;
  run.ptx_batch_size = 2;
  run.show_progress = false;
  const auto fit = [&](run_options r, std::size_t stop_after, bool save_at_end) {
    fixture<B, T> f;
    ppo_trainer t(f.policy, f.reference, f.value, f.reward, f.policy_opt, f.value_opt, o);
    r.stop_after = stop_after;
    r.checkpoint_at_end = save_at_end;
    const run_result result = t.fit(f.b, prompts, r, pretraining);
    std::vector<std::vector<T>> weights;
    for (const auto& p : f.policy.parameters()) weights.push_back(to_host(f.b, p.value.flat()));
    for (const auto& p : f.value.parameters()) weights.push_back(to_host(f.b, p.value.flat()));
    return std::tuple{result, weights, t.beta()};
  };
  run.metrics_path = dir / "straight.csv";
  const auto [whole, whole_weights, whole_beta] = fit(run, 0, true);
  REQUIRE(whole.history.size() == 5);
  CHECK(whole.history[4][1] == std::pair<std::string, double>{"iteration", 5.0});
  CHECK(whole.last("updates") == 4);
  CHECK(whole.last("ptx_loss") > 0);
  CHECK(whole.last("response_length") == 3);  // no stop token: every response has max_new_tokens
  run.metrics_path = dir / "resumed.csv";
  run.checkpoint_dir = dir / "ckpt";
  run.checkpoint_every = 2;
  fit(run, 3, false);  // killed after iteration 3: the checkpoint of iteration 2 survives
  const auto [rest, resumed_weights, resumed_beta] = fit(run, 0, true);
  CHECK(rest.resumed_from == 2);
  CHECK(resumed_weights == whole_weights);
  CHECK(resumed_beta == whole_beta);
  CHECK(read_bytes(dir / "resumed.csv") == read_bytes(dir / "straight.csv"));

  fixture<B, T> f;
  ppo_trainer t(f.policy, f.reference, f.value, f.reward, f.policy_opt, f.value_opt, o);
  run_options no_iterations;
  CHECK_THROWS_WITH(t.fit(f.b, prompts, no_iterations, pretraining),
                    Catch::Contains("rlhf::ppo_trainer::fit") && Catch::Contains("'run.iterations'"));
  CHECK_THROWS_WITH(t.fit(f.b, prompts, run), Catch::Contains("rlhf::ppo_trainer::fit") && Catch::Contains("'pretraining'"));
}

// TRL #925 / #1857: generation settings that sample from anything but the policy itself (top-k, top-p,
// a temperature) made the KL estimate negative and the policy collapse. The trainer refuses them.
TEMPLATE_LIST_TEST_CASE("ppo_trainer: rollouts must sample the policy's own distribution (regression: TRL #925)",
                        "[train][ppo][errors][peer-bug]", backend_configs) {
  using B = typename TestType::backend;
  using T = typename TestType::value;
  fixture<B, T> f;
  const auto make = [&](const ppo_options& o) {
    ppo_trainer t(f.policy, f.reference, f.value, f.reward, f.policy_opt, f.value_opt, o);
    return t.beta();
  };
  ppo_options top_k;
  top_k.sampling.top_k = 5;
  CHECK_THROWS_WITH(make(top_k), Catch::Contains("rlhf::ppo_trainer") && Catch::Contains("'options.sampling.top_k'") &&
                                     Catch::Contains("own distribution"));
  ppo_options top_p;
  top_p.sampling.top_p = 0.9;
  CHECK_THROWS_WITH(make(top_p), Catch::Contains("'options.sampling.top_p'"));
  ppo_options tempered;
  tempered.sampling.temperature = 0.7;
  CHECK_THROWS_WITH(make(tempered), Catch::Contains("'options.sampling.temperature'"));
  ppo_options fine;
  fine.sampling.top_p = 1.0;  // off, as is any value >= 1 or <= 0
  fine.sampling.stop_token = 3;
  fine.max_new_tokens = 4;
  CHECK(make(fine) == 0.02);
  // Sampled from the policy itself, the per-sequence KL to an identical reference is exactly 0 and the
  // mean k1 estimate over iterations can never go negative for lack of matching distributions.
  ppo_trainer t(f.policy, f.reference, f.value, f.reward, f.policy_opt, f.value_opt, fine);
  const ppo_iteration_stats first = t.step(f.b, {{1, 2}, {1, 3}});
  CHECK(first.mean_kl == 0.0);
}

TEST_CASE("ppo_options presets: each peer's documented defaults", "[train][ppo][presets]") {
  const ppo_options igpt = ppo_options::instructgpt();
  CHECK(igpt.beta == 0.02);
  CHECK(igpt.control == kl_control::fixed);
  CHECK(igpt.clip.eps_low == 0.2);
  CHECK(igpt.clip.eps_high == 0.2);
  CHECK(igpt.value.clip == 0.2);
  CHECK(igpt.gae.gamma == 1.0);
  CHECK(igpt.gae.lambda == 0.95);
  CHECK(igpt.ptx_loss.coefficient == 27.8);
  CHECK(igpt.ema_decay == 0.992);
  const ppo_options zgl = ppo_options::zgl();
  CHECK(zgl.beta == 0.2);
  CHECK(zgl.control == kl_control::adaptive);
  CHECK(zgl.kl_target == 6.0);
  CHECK(zgl.kl_horizon == 10000.0);
  CHECK(zgl.rewards.placement == score_placement::last_position);
  CHECK(zgl.ppo_epochs == 4);
  const ppo_options trl0 = ppo_options::trl0();
  CHECK(trl0.beta == 0.2);
  CHECK(trl0.control == kl_control::adaptive);
  CHECK(trl0.whitening.variance == variance_kind::bessel);
  const ppo_options trl1 = ppo_options::trl1();
  CHECK(trl1.beta == 0.05);
  CHECK(trl1.control == kl_control::fixed);
  CHECK(trl1.rewards.placement == score_placement::one_past_last_valid);
  const ppo_options dsc = ppo_options::dsc();
  CHECK(dsc.beta == 0.1);
  CHECK(dsc.rewards.score_clip == 5);
  CHECK_FALSE(dsc.whiten_advantages);
  CHECK(dsc.ppo_epochs == 1);
  CHECK(dsc.ptx_loss.coefficient == 27.8);
  const ppo_options orl = ppo_options::orl();
  CHECK(orl.beta == 0.01);
  CHECK(orl.gae.lambda == 1.0);
  CHECK(orl.value.clip == 0.5);
  CHECK(orl.kl.clamp == 10);
  CHECK(orl.ptx_loss.coefficient == 0.05);
  const ppo_options verl = ppo_options::verl();
  CHECK(verl.beta == 0.001);
  CHECK(verl.clip.dual_clip == 3.0);
  CHECK(verl.value.clip == 0.5);
  const ppo_options nemo = ppo_options::nemo();
  CHECK(nemo.beta == 0.01);
  CHECK(nemo.kl.estimator == kl_estimator::abs);
  CHECK(nemo.ppo_epochs == 1);
}
