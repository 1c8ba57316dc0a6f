// The reward-model trainer: it learns a planted preference from K-way rankings (held-out pairwise
// accuracy), one forward per response, the demonstration bias centers the demonstrations' rewards, and
// malformed rankings are rejected with the argument named.
#include "rlhf/train/reward_trainer.hpp"

#include <cmath>
#include <random>
#include <utility>
#include <vector>

#include "models/model_test_support.hpp"
#include "rlhf/models/llama_reward_model.hpp"
#include "rlhf/optim/adamw.hpp"
#include "temp_files.hpp"
#include "test_support.hpp"
#include "train/train_test_support.hpp"

using namespace rlhf;
using namespace rlhf::test;

namespace {
std::vector<ranked_responses> planted(std::mt19937_64& g, std::size_t prompts, std::size_t k) {
  return planted_rankings(g, prompts, k, k);
}
}  // namespace

TEMPLATE_LIST_TEST_CASE("reward_trainer: learns a planted preference from K = 4 rankings (held-out accuracy)",
                        "[train][reward]", backend_configs) {
  using B = typename TestType::backend;
  using T = typename TestType::value;
  const B b = TestType::make();
  const llama_config c = tiny_llama_config();
  llama_model<B, T> lm(b, c);
  lm.init_random(b, 3, 0.2);
  auto rm = llama_reward_model<B, T>::from_language_model(b, lm, 1, 0.1);
  adamw_options ao;
  ao.learning_rate = 0.01;
  adamw<B, T> opt(ao);
  reward_trainer trainer(rm, opt);
  std::mt19937_64 g(5);
  const auto train = planted(g, 48, 4), valid = planted(g, 24, 4);
  const reward_step_stats before = trainer.evaluate(b, valid);
  for (int epoch = 0; epoch < 6; ++epoch) {
    for (std::size_t i = 0; i < train.size(); i += 8) trainer.step(b, std::span(train).subspan(i, 8));
  }
  const reward_step_stats after = trainer.evaluate(b, valid);
  INFO("accuracy before " << before.accuracy << ", after " << after.accuracy);
  CHECK(after.compared_pairs > 60);
  CHECK(after.accuracy > 0.85);
  CHECK(after.loss < before.loss);
  // The demonstration bias: afterwards the demonstrations' mean score is 0.
  std::vector<prompt_response> demos;
  for (const auto& e : valid) demos.push_back({e.prompt, e.responses[0]});
  const double bias_before = rm.bias(b);
  const double bias = trainer.normalize_to_demonstrations(b, demos);
  double mean = 0;
  for (const double s : trainer.score(b, demos)) mean += s / static_cast<double>(demos.size());
  CHECK(mean == Approx(0.0).margin(std::is_same_v<T, float> ? 1e-5 : 1e-12));
  CHECK(rm.bias(b) == Approx(bias_before + bias).margin(1e-5));
}

TEMPLATE_LIST_TEST_CASE("reward_trainer: malformed rankings are rejected, naming the prompt", "[train][reward][errors]",
                        backend_configs) {
  using B = typename TestType::backend;
  using T = typename TestType::value;
  const B b = TestType::make();
  llama_reward_model<B, T> rm(b, tiny_llama_config());
  adamw<B, T> opt;
  reward_trainer trainer(rm, opt);
  std::vector<ranked_responses> one{{{1}, {{2, 3}}, {0}}};
  CHECK_THROWS_WITH(trainer.step(b, one), Catch::Contains("rlhf::reward_trainer::step") &&
                                              Catch::Contains("'batch[0].responses'") && Catch::Contains("K >= 2"));
  std::vector<ranked_responses> mismatch{{{1}, {{2}, {3}, {4}}, {0, 1}}};
  CHECK_THROWS_WITH(trainer.step(b, mismatch), Catch::Contains("'batch[0].ranks'") && Catch::Contains("(3)"));
  CHECK_THROWS_WITH(trainer.step(b, std::span<const ranked_responses>{}), Catch::Contains("'batch'"));
  CHECK(opt.step_count() == 0);
}

TEMPLATE_LIST_TEST_CASE("reward_trainer::fit: validation accuracy in the metrics; an interrupted run resumes to the "
                        "same weights and metrics file",
                        "[train][reward][checkpoint]", backend_configs) {
  using B = typename TestType::backend;
  using T = typename TestType::value;
  const B b = TestType::make();
  temp_dir dir;
  std::mt19937_64 g(9);
  const auto train = planted(g, 10, 4), valid = planted(g, 4, 4);
  run_options run;
  run.epochs = 2;
  run.batch_size = 4;  // 3 steps per epoch (4, 4, 2 prompts)
  run.show_progress = false;
  const auto fit = [&](run_options r, std::size_t stop_after, bool save_at_end) {
    llama_model<B, T> lm(b, tiny_llama_config());
    lm.init_random(b, 3, 0.2);
    auto rm = llama_reward_model<B, T>::from_language_model(b, lm, 1, 0.1);
    adamw<B, T> opt(adamw_options{0.01});
    reward_trainer trainer(rm, opt);
    r.stop_after = stop_after;
    r.checkpoint_at_end = save_at_end;
    const run_result result = trainer.fit(b, train, r, valid);
    std::vector<std::vector<T>> weights;
    for (const auto& p : rm.parameters()) weights.push_back(to_host(b, p.value.flat()));
    return std::pair{result, weights};
  };
  run.metrics_path = dir / "straight.jsonl";
  const auto [whole, whole_weights] = fit(run, 0, true);
  REQUIRE(whole.history.size() == 6);
  CHECK(whole.history[2][5].first == "pairs");
  CHECK(whole.history[2][5].second <= 12.0);  // the epoch's last batch: 2 prompts x C(4,2) pairs, less ties
  CHECK(whole.history[1][5].second > 12.0);   // 4 prompts
  CHECK(std::isfinite(whole.last("validation_accuracy")));
  CHECK(std::isnan(whole.history[0].back().second));  // validation only at the end
  run.metrics_path = dir / "resumed.jsonl";
  run.checkpoint_dir = dir / "ckpt";
  run.checkpoint_every = 2;
  fit(run, 3, false);  // killed after step 3: the checkpoint of step 2 survives
  const auto [rest, resumed_weights] = fit(run, 0, true);
  CHECK(rest.resumed_from == 2);
  CHECK(resumed_weights == whole_weights);
  CHECK(read_bytes(dir / "resumed.jsonl") == read_bytes(dir / "straight.jsonl"));
}
