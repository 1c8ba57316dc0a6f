// Model checkpoints: the configuration travels in the metadata, so a file alone rebuilds a policy,
// reward model or value model with identical outputs; optimizer state rides along; a checkpoint of
// another kind or configuration is refused without touching the model; the pretrained model round-trips.
#include "rlhf/models/llama_checkpoint.hpp"

#include <string>
#include <vector>

#include "models/model_test_support.hpp"
#include "rlhf/optim/adamw.hpp"
#include "temp_files.hpp"
#include "test_support.hpp"

using namespace rlhf;
using namespace rlhf::test;

TEST_CASE("llama_config JSON: round trip and field errors", "[models][checkpoint]") {
  llama_config c = tiny_llama_config(false);
  c.norm_eps = 1e-6;
  c.rope_theta = 500000.0;
  const llama_config back = llama_config_from_json(llama_config_to_json(c));
  CHECK(back.dim == c.dim);
  CHECK(back.hidden_dim == c.hidden_dim);
  CHECK(back.n_kv_heads == c.n_kv_heads);
  CHECK(back.seq_len == c.seq_len);
  CHECK(back.shared_classifier == false);
  CHECK(back.norm_eps == 1e-6);
  CHECK(back.rope_theta == 500000.0);
  CHECK_THROWS_WITH(llama_config_from_json(R"({"dim": 8})"), Catch::Contains("field 'hidden_dim'"));
  std::string text = llama_config_to_json(c);
  const auto at = text.find("\"n_heads\":4");
  REQUIRE(at != std::string::npos);
  text.replace(at, 11, "\"n_heads\":3");
  CHECK_THROWS_WITH(llama_config_from_json(text), Catch::Contains("'n_heads'") && Catch::Contains("divisor of dim = 8"));
  CHECK_THROWS_WITH(llama_config_from_json("[1]"), Catch::Contains("'config'") && Catch::Contains("a JSON object"));
}

TEMPLATE_LIST_TEST_CASE("save_model / load_llama_*: a file alone rebuilds each model with identical outputs",
                        "[models][checkpoint]", all_configs) {
  using B = typename TestType::backend;
  using T = typename TestType::value;
  const B b = TestType::make();
  temp_dir dir;
  const llama_config c = tiny_llama_config(false);
  std::mt19937_64 g(3);
  const std::size_t rows = 2, cols = 5;
  const auto tokens_host = random_tokens(g, rows * cols, c.vocab_size);
  const auto tokens = to_backend(b, std::span<const token_type>(tokens_host), rows, cols);

  llama_model<B, T> policy(b, c);
  policy.init_random(b, 1, 0.3, 0.1);
  save_model(b, dir / "policy.safetensors", policy, {}, {{"step", "12"}});
  auto policy2 = load_llama_policy<T>(b, dir / "policy.safetensors");
  auto lp1 = allocate<T>(b, rows, cols), lp2 = allocate<T>(b, rows, cols);
  policy.log_probs(b, as_const(tokens.view()), {}, lp1.view());
  policy2.log_probs(b, as_const(tokens.view()), {}, lp2.view());
  CHECK(to_host(b, lp1.view()) == to_host(b, lp2.view()));

  auto rm = llama_reward_model<B, T>::from_language_model(b, policy, 4);
  rm.add_to_bias(b, 0.5);
  save_model(b, dir / "rm.safetensors", rm);
  auto rm2 = load_llama_reward_model<T>(b, dir / "rm.safetensors");
  CHECK(rm2.bias(b) == rm.bias(b));
  auto s1 = allocate<T>(b, rows), s2 = allocate<T>(b, rows);
  rm.scores(b, as_const(tokens.view()), {}, s1.view().flat());
  rm2.scores(b, as_const(tokens.view()), {}, s2.view().flat());
  CHECK(to_host(b, s1.view()) == to_host(b, s2.view()));

  auto critic = value_model_from(b, rm);
  save_model(b, dir / "critic.safetensors", critic);
  auto critic2 = load_llama_value_model<T>(b, dir / "critic.safetensors");
  auto v1 = allocate<T>(b, rows, cols), v2 = allocate<T>(b, rows, cols);
  critic.values(b, as_const(tokens.view()), {}, v1.view());
  critic2.values(b, as_const(tokens.view()), {}, v2.view());
  CHECK(to_host(b, v1.view()) == to_host(b, v2.view()));

  const auto meta = read_safetensors(dir / "policy.safetensors").metadata;
  CHECK(meta.at("format") == "rlhf");
  CHECK(meta.at("model") == "llama_policy");
  CHECK(meta.at("step") == "12");
  CHECK(llama_config_from_json(meta.at("config")).vocab_size == c.vocab_size);
  CHECK(dir.count() == 3);  // no temporary files left behind
}

TEMPLATE_LIST_TEST_CASE("save_model / load_model_into: optimizer state rides along; mismatches change nothing",
                        "[models][checkpoint][errors]", all_configs) {
  using B = typename TestType::backend;
  using T = typename TestType::value;
  const B b = TestType::make();
  temp_dir dir;
  const llama_config c = tiny_llama_config(true);
  llama_model<B, T> policy(b, c);
  policy.init_random(b, 2, 0.3);
  const auto tokens = allocate_filled<token_type>(b, 1, 4, 3);
  auto lp = allocate<T>(b, 1, 4);
  const auto ones = allocate_filled<T>(b, 1, 4, T(1));
  adamw<B, T> opt;
  policy.log_probs(b, as_const(tokens.view()), {}, lp.view(), {}, forward_mode::training);
  policy.log_probs_backward(b, as_const(ones.view()));
  opt.step(b, policy.parameters());
  const auto path = dir / "step1.safetensors";
  save_model(b, path, policy, opt.state());

  llama_model<B, T> other(b, c);
  adamw<B, T> opt2;
  opt2.prepare(b, other.parameters());
  load_model_into(b, path, other, opt2.state());
  const auto p1 = policy.parameters(), p2 = other.parameters();
  for (std::size_t i = 0; i < p1.size(); ++i) CHECK(to_host(b, p1[i].value.flat()) == to_host(b, p2[i].value.flat()));
  const auto st1 = opt.state(), st2 = opt2.state();
  REQUIRE(st1.size() == st2.size());
  for (std::size_t i = 0; i < st1.size(); ++i) CHECK(to_host(b, st1[i].value.flat()) == to_host(b, st2[i].value.flat()));

  // Another configuration: refused, the model untouched.
  llama_config wider = c;
  wider.hidden_dim = 16;
  llama_model<B, T> mismatched(b, wider);
  CHECK_THROWS_WITH(load_model_into(b, path, mismatched, {}, checkpoint_load_options{false}),
                    Catch::Contains("rlhf::load_model_into") && Catch::Contains("'model'") &&
                        Catch::Contains("\"hidden_dim\":12") && Catch::Contains("\"hidden_dim\":16"));
  CHECK(to_host(b, mismatched.parameters()[1].value.flat()) == std::vector<T>(c.dim, T(1)));
  // Another kind.
  CHECK_THROWS_WITH(load_llama_reward_model<T>(b, path),
                    Catch::Contains("rlhf::load_llama_reward_model") && Catch::Contains("llama_reward_model") &&
                        Catch::Contains("llama_policy"));
  // Reserved metadata keys.
  CHECK_THROWS_WITH(save_model(b, dir / "x.safetensors", policy, {}, {{"config", "{}"}}),
                    Catch::Contains("rlhf::save_model") && Catch::Contains("'config'"));
  // A plain checkpoint without model metadata.
  save_checkpoint(b, dir / "plain.safetensors", policy.parameters());
  CHECK_THROWS_WITH(load_llama_policy<T>(b, dir / "plain.safetensors"), Catch::Contains("metadata 'model'"));
}

TEST_CASE("save_model: stories260K round-trips through a checkpoint and still tells the golden story", "[models][checkpoint]") {
  const reference_backend b;
  temp_dir dir;
  auto model = load_llama2c(b, std::string(RLHF_TEST_DATA_DIR) + "/stories260K.bin");
  save_model(b, dir / "stories.safetensors", model);
  auto back = load_llama_policy(b, dir / "stories.safetensors");
  const std::vector<token_type> bos{1};
  CHECK(back.generate(b, bos, 40, sampling_options::greedy()) == model.generate(b, bos, 40, sampling_options::greedy()));
}
