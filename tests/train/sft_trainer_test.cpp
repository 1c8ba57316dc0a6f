// The SFT trainer: the loss is on response tokens only (prompt tokens never receive gradient), the
// validation loss falls as the policy learns the demonstrations, and bad batches are rejected.
#include "rlhf/train/sft_trainer.hpp"

#include <cmath>
#include <utility>
#include <vector>

#include "models/model_test_support.hpp"
#include "rlhf/optim/adamw.hpp"
#include "rlhf/optim/lr_schedule.hpp"
#include "rlhf/optim/sgd.hpp"
#include "temp_files.hpp"
#include "test_support.hpp"

using namespace rlhf;
using namespace rlhf::test;

TEST_CASE("make_token_batch: prompt + response rows, response mask, truncation", "[train][sft]") {
  const std::vector<prompt_response> pairs{{{1, 5}, {6, 7, 8}}, {{1}, {9}}};
  const token_batch t = make_token_batch(pairs);
  CHECK(t.rows == 2);
  CHECK(t.cols == 5);
  CHECK(t.tokens == std::vector<token_type>{1, 5, 6, 7, 8, 1, 9, 0, 0, 0});
  CHECK(t.mask == std::vector<mask_type>{0, 0, 1, 1, 1, 0, 1, 0, 0, 0});
  CHECK(t.lengths == std::vector<std::int32_t>{5, 2});
  CHECK(t.prompt_lengths == std::vector<std::int32_t>{2, 1});
  const token_batch cut = make_token_batch(pairs, 3);
  CHECK(cut.cols == 3);
  CHECK(cut.tokens == std::vector<token_type>{1, 5, 6, 1, 9, 0});
  CHECK(cut.mask == std::vector<mask_type>{0, 0, 1, 0, 1, 0});
  const std::vector<prompt_response> empty_prompt{{{}, {3}}};
  CHECK_THROWS_WITH(make_token_batch(empty_prompt), Catch::Contains("'pairs[0].prompt'") && Catch::Contains("empty"));
  CHECK_THROWS_WITH(make_token_batch(pairs, 2), Catch::Contains("'pairs[0].prompt'") && Catch::Contains("max_length = 2"));
}

TEMPLATE_LIST_TEST_CASE("sft_trainer: training on demonstrations lowers their loss; prompts get no gradient",
                        "[train][sft]", backend_configs) {
  using B = typename TestType::backend;
  using T = typename TestType::value;
  const B b = TestType::make();
  llama_model<B, T> policy(b, tiny_llama_config(false));
  policy.init_random(b, 2, 0.1);
  adamw_options ao;
  ao.learning_rate = 0.02;
  adamw<B, T> opt(ao);
  sft_options so;
  so.schedule = constant_schedule(0.02);
  sft_trainer trainer(policy, opt, so);
  // Demonstrations: after prompt {1, p}, respond p+1, p+2.
  std::vector<prompt_response> demos;
  for (token_type p = 2; p < 6; ++p) demos.push_back({{1, p}, {static_cast<token_type>(p + 1), static_cast<token_type>(p + 2)}});
  const sft_eval_stats before = trainer.evaluate(b, demos);
  CHECK(before.tokens == 8);
  sft_step_stats last{};
  for (int i = 0; i < 60; ++i) last = trainer.step(b, demos);
  const sft_eval_stats after = trainer.evaluate(b, demos);
  INFO("nll before " << before.nll << ", after " << after.nll);
  CHECK(before.nll > 2.0);
  CHECK(after.nll < 0.1);
  CHECK(last.tokens == 8);
  CHECK(last.update.learning_rate == Approx(0.02));
  CHECK(opt.step_count() == 60);
}

TEMPLATE_LIST_TEST_CASE("sft_trainer: the loss ignores prompt tokens (changing them alone leaves the gradient at zero)",
                        "[train][sft]", backend_configs) {
  using B = typename TestType::backend;
  using T = typename TestType::value;
  const B b = TestType::make();
  llama_model<B, T> policy(b, tiny_llama_config());
  policy.init_random(b, 2, 0.3);
  sgd<B, T> opt(sgd_options{});
  sft_trainer trainer(policy, opt, sft_options{});
  // A "demonstration" with an empty response: nothing to learn, every gradient exactly zero.
  const std::vector<prompt_response> no_response{{{1, 4, 5, 6}, {}}};
  const sft_step_stats s = trainer.step(b, no_response);
  CHECK(s.tokens == 0);
  CHECK(s.update.grad_norm == 0.0);
  CHECK_THROWS_WITH(trainer.step(b, std::span<const prompt_response>{}),
                    Catch::Contains("rlhf::sft_trainer::step") && Catch::Contains("'batch'"));
}

TEMPLATE_LIST_TEST_CASE("sft_trainer::fit: epochs with validation and metrics; an interrupted run resumes to the same "
                        "weights and metrics file",
                        "[train][sft][checkpoint]", backend_configs) {
  using B = typename TestType::backend;
  using T = typename TestType::value;
  const B b = TestType::make();
  temp_dir dir;
  std::vector<prompt_response> demos, valid;
  for (token_type p = 2; p < 9; ++p) demos.push_back({{1, p}, {static_cast<token_type>(p + 1), static_cast<token_type>(p + 2)}});
  valid.push_back({{1, 9}, {10, 2}});
  run_options run;
  run.epochs = 3;
  run.batch_size = 3;  // 3 steps per epoch (3, 3, 1 rows)
  run.show_progress = false;
  run.eval_every = 4;
  const auto train = [&](run_options r, std::size_t stop_after, bool save_at_end) {
    llama_model<B, T> policy(b, tiny_llama_config(false));
    policy.init_random(b, 2, 0.1);
    adamw<B, T> opt(adamw_options{0.02});
    sft_trainer trainer(policy, opt);
    r.stop_after = stop_after;
    r.checkpoint_at_end = save_at_end;
    const run_result result = trainer.fit(b, demos, r, valid);
    std::vector<std::vector<T>> weights;
    for (const auto& p : policy.parameters()) weights.push_back(to_host(b, p.value.flat()));
    return std::pair{result, weights};
  };
  run.metrics_path = dir / "straight.csv";
  const auto [whole, whole_weights] = train(run, 0, true);
  CHECK(whole.total_steps == 9);
  CHECK(whole.finished);
  REQUIRE(whole.history.size() == 9);
  // Validation after steps 4, 8 and 9 only.
  std::vector<bool> evaluated;
  for (const auto& row : whole.history) evaluated.push_back(std::isfinite(row.back().second));
  CHECK(evaluated == std::vector<bool>{false, false, false, true, false, false, false, true, true});
  CHECK(whole.history.back().back().first == "validation_nll");
  CHECK(whole.history[2][1] == std::pair<std::string, double>{"epoch", 1.0});
  CHECK(whole.history[3][1] == std::pair<std::string, double>{"epoch", 2.0});
  CHECK(whole.history.back()[4].second == 2);  // "tokens": the last batch of an epoch holds one row
  CHECK(whole.last("nll") < whole.history.front()[3].second);

  run.metrics_path = dir / "resumed.csv";
  run.checkpoint_dir = dir / "ckpt";
  run.checkpoint_every = 3;
  train(run, 5, false);  // killed after step 5: the checkpoint of step 3 survives
  const auto [rest, resumed_weights] = train(run, 0, true);
  CHECK(rest.resumed_from == 3);
  CHECK(rest.history.size() == 6);
  CHECK(resumed_weights == whole_weights);
  CHECK(read_bytes(dir / "resumed.csv") == read_bytes(dir / "straight.csv"));

  llama_model<B, T> policy(b, tiny_llama_config(false));
  adamw<B, T> opt(adamw_options{0.02});
  sft_trainer trainer(policy, opt);
  CHECK_THROWS_WITH(trainer.fit(b, std::span<const prompt_response>{}, run),
                    Catch::Contains("rlhf::sft_trainer::fit") && Catch::Contains("'train'"));
  run_options zero;
  zero.batch_size = 0;
  CHECK_THROWS_WITH(trainer.fit(b, demos, zero), Catch::Contains("rlhf::sft_trainer::fit") && Catch::Contains("'run.batch_size'"));
}
