// One full PPO iteration of the reference model on the Eigen backend, the step that
// benchmarks/peers/ppo_torch.py writes the way the Python stacks run it (eager PyTorch, TRL's loops):
//
//   rollout: 32 prompts of 4 tokens, 24 sampled tokens each (temperature 1, KV cache, no stop token, so
//            both sides sample exactly the same number of tokens whatever they draw);
//   learn:   old policy, reference and value passes, the reward model's scores, k1 KL-penalized rewards
//            (beta 0.02), GAE (gamma 1, lambda 0.95), whitened advantages, then 4 epochs x 4 minibatches
//            of 8 rows: a PPO-clip policy update and a clipped value-loss update (AdamW, global-norm clip 1).
//
// Models: the stories260K policy and its frozen copy (the reference); a reward model made from the policy
// (trunk + a scalar head) and a value model made from the reward model (InstructGPT's initialization):
// four 260K-parameter networks, as in the peers. One thread count per run:
//
//     ppo_iteration_bench <threads> [checkpoint of stories260K]
//
// Prints one markdown table row (benchmarks/run_ppo_iteration.sh runs both sides and prints the table).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "bench_support.hpp"
#include "rlhf/backends/eigen.hpp"
#include "rlhf/rlhf.hpp"

#ifndef RLHF_BENCH_DATA_DIR
#define RLHF_BENCH_DATA_DIR "examples/data"
#endif

namespace {

using rlhf::bench::clock_type;
using rlhf::bench::seconds_since;
using backend = rlhf::eigen_backend;
using T = float;

using rlhf::bench::peak_rss_mib;

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: ppo_iteration_bench <threads> [stories260K.bin]\n");
    return 2;
  }
  const int threads = std::atoi(argv[1]);
  const std::string checkpoint = argc > 2 ? argv[2] : std::string(RLHF_BENCH_DATA_DIR) + "/stories260K.bin";
  const backend b{threads};
  constexpr std::size_t batch = 32, prompt_tokens = 4, new_tokens = 24, iterations = 3;

  auto policy = rlhf::load_llama2c(b, checkpoint);
  auto reference = rlhf::load_llama2c(b, checkpoint);
  auto rm = rlhf::llama_reward_model<backend, T>::from_language_model(b, policy, 1);
  auto critic = rlhf::value_model_from(b, rm);
  rlhf::adamw<backend, T> policy_opt(rlhf::adamw_options{1e-5}), value_opt(rlhf::adamw_options{1e-5});
  rlhf::ppo_options o;
  o.max_new_tokens = new_tokens;
  o.sampling.stop_token = -1;  // every row samples new_tokens tokens
  o.sampling.seed = 7;
  o.ppo_epochs = 4;
  o.minibatches = 4;
  rlhf::ppo_trainer ppo(policy, reference, critic, rm, policy_opt, value_opt, o);

  // The same prompts as ppo_torch.py: BOS, then three ids from a fixed formula.
  const std::size_t vocab = policy.config().vocab_size;
  std::vector<std::vector<rlhf::token_type>> prompts(batch);
  for (std::size_t r = 0; r < batch; ++r) {
    prompts[r].push_back(rlhf::tokenizer::bos_id);
    for (std::size_t j = 1; j < prompt_tokens; ++j)
      prompts[r].push_back(static_cast<rlhf::token_type>((r * 7919 + j * 31 + 13) % vocab));
  }

  std::vector<double> rollout_s, learn_s;
  for (std::size_t it = 0; it <= iterations; ++it) {  // iteration 0 warms up
    const auto t0 = clock_type::now();
    const rlhf::ppo_rollout r = ppo.rollout(b, prompts);
    const double sampled = seconds_since(t0);
    const auto t1 = clock_type::now();
    const rlhf::ppo_iteration_stats s = ppo.learn(b, r);
    const double learned = seconds_since(t1);
    if (s.mean_response_length != static_cast<double>(new_tokens)) {
      std::fprintf(stderr, "ppo_iteration_bench: responses of %.2f tokens, expected %zu\n", s.mean_response_length, new_tokens);
      return 1;
    }
    if (it == 0) continue;
    rollout_s.push_back(sampled);
    learn_s.push_back(learned);
  }
  const double roll = median(rollout_s), learn = median(learn_s);
  std::printf("| rlhf (eigen) | %d | %zu x (%zu + %zu) | %.3f | %.3f | %.3f | %.0f |\n", threads, batch, prompt_tokens, new_tokens,
              roll, learn, roll + learn, peak_rss_mib());
  return 0;
}
