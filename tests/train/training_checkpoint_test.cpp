// Training checkpoints: an SFT run interrupted after 3 of 6 steps and resumed from its checkpoint ends
// with the same parameters and optimizer state as the uninterrupted run (schedule and bias corrections
// depend on the restored step count); the caller's metadata round-trips; a user model without a Llama
// config uses a plain checkpoint; errors.
#include "rlhf/train/training_checkpoint.hpp"

#include <vector>

#include "models/model_test_support.hpp"
#include "rlhf/optim/adamw.hpp"
#include "rlhf/optim/lr_schedule.hpp"
#include "rlhf/train/sft_trainer.hpp"
#include "temp_files.hpp"
#include "test_support.hpp"

using namespace rlhf;
using namespace rlhf::test;

TEMPLATE_LIST_TEST_CASE("training checkpoint: an interrupted SFT run resumes to the uninterrupted result",
                        "[train][checkpoint]", backend_configs) {
  using B = typename TestType::backend;
  using T = typename TestType::value;
  const B b = TestType::make();
  temp_dir dir;
  const llama_config c = tiny_llama_config(false);
  std::vector<prompt_response> demos;
  for (token_type p = 2; p < 8; ++p) demos.push_back({{1, p}, {static_cast<token_type>(p + 1), 3}});
  sft_options so;
  so.schedule = cosine_schedule(1e-2, 2, 6);
  const auto batch = [&](int step) { return std::span<const prompt_response>(demos).subspan(static_cast<std::size_t>(step % 3) * 2, 2); };
  const auto make = [&](llama_model<B, T>& m) { m.init_random(b, 8, 0.2); };

  llama_model<B, T> straight(b, c);
  make(straight);
  adamw<B, T> opt_s;
  sft_trainer ts(straight, opt_s, so);
  for (int i = 0; i < 6; ++i) ts.step(b, batch(i));

  {
    llama_model<B, T> first(b, c);
    make(first);
    adamw<B, T> opt_f;
    sft_trainer tf(first, opt_f, so);
    for (int i = 0; i < 3; ++i) tf.step(b, batch(i));
    save_training_checkpoint(b, dir / "sft.safetensors", first, opt_f, {{"next_step", "3"}});
  }
  llama_model<B, T> resumed(b, c);  // fresh objects, as in a new process
  adamw<B, T> opt_r;
  const auto meta = load_training_checkpoint(b, dir / "sft.safetensors", resumed, opt_r);
  CHECK(meta.at("next_step") == "3");
  CHECK(opt_r.step_count() == 3);
  sft_trainer tr(resumed, opt_r, so);
  for (int i = std::stoi(meta.at("next_step")); i < 6; ++i) tr.step(b, batch(i));
  const auto ps = straight.parameters(), pr = resumed.parameters();
  for (std::size_t i = 0; i < ps.size(); ++i) CHECK(to_host(b, pr[i].value.flat()) == to_host(b, ps[i].value.flat()));
  const auto ss = opt_s.state(), sr = opt_r.state();
  for (std::size_t i = 0; i < ss.size(); ++i) CHECK(to_host(b, sr[i].value.flat()) == to_host(b, ss[i].value.flat()));
  CHECK_THROWS_WITH(save_training_checkpoint(b, dir / "x.safetensors", resumed, opt_r, {{"optimizer_steps", "1"}}),
                    Catch::Contains("rlhf::save_training_checkpoint") && Catch::Contains("'optimizer_steps'"));
  save_checkpoint(b, dir / "plain.safetensors", resumed.parameters());
  CHECK_THROWS(load_training_checkpoint(b, dir / "plain.safetensors", resumed, opt_r));
}
