// Data-parallel PPO under MPI: the demo's PPO step (stories260K policy, KL penalty to the pretrained
// policy, GAE, PPO-clip, clipped value loss, adaptive beta) on every rank of an MPI job, each rank sampling
// and learning from its block of each batch of prompts.
//
//   mpirun -np 2 ./distributed_ppo [--iterations 20] [--batch 16] [--tokens 16] [--seed 1]
//
// The reward is the demo's labeler (the AFINN-165 sentiment of the continuation) wrapped as a reward
// model, so the example needs no trained RM. Every rank loads the same pretrained model; the trainer
// normalizes the losses by the whole batch's token counts, sums the gradients over the ranks, whitens the
// advantages and steers beta with the whole batch's statistics, so the replicas stay equal: the example
// checks it at the end (every parameter, bit for bit) and fails otherwise. Rank 0 prints and writes.
#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "../instructgpt/labeler.hpp"
#include "../instructgpt/story_prompts.hpp"
#include "rlhf/dist/mpi.hpp"
#include "rlhf/rlhf.hpp"

#ifndef RLHF_EXAMPLE_DATA_DIR
#define RLHF_EXAMPLE_DATA_DIR "examples/data"
#endif

namespace {

using backend = rlhf::eigen_backend;
using T = float;

// The labeler's sentiment score of each row's response tokens, as an rlhf::reward_model (no parameters,
// nothing to train: PPO only calls scores()).
struct labeler_reward {
  using backend_type = backend;
  using value_type = T;
  const rlhf::tokenizer* tok = nullptr;
  const demo::sentiment_labeler* labeler = nullptr;

  rlhf::parameter_list<T> parameters() { return {}; }
  void zero_grad(const backend&) {}
  void scores(const backend& b, rlhf::backend_matrix<backend, const rlhf::token_type> tokens,
              rlhf::backend_vector<backend, const std::int32_t> lengths, rlhf::backend_vector<backend, T> out,
              rlhf::forward_mode) const {
    const auto t = rlhf::to_host(b, tokens.flat());
    const auto len = rlhf::to_host(b, lengths);
    std::vector<T> s(tokens.rows);
    for (std::size_t r = 0; r < tokens.rows; ++r) {
      // The whole row (prompt + response) decoded: the labeler scores the story so far (the prompt's
      // part is the same for every response to it, so only the continuation moves the reward).
      std::string text;
      rlhf::token_type prev = rlhf::tokenizer::bos_id;
      for (std::size_t c = 1; c < static_cast<std::size_t>(len[r]); ++c) {
        const rlhf::token_type x = t[r * tokens.cols + c];
        const std::string_view piece = tok->decode(prev, x);
        if (rlhf::tokenizer::printable(piece)) text.append(piece);
        prev = x;
      }
      s[r] = static_cast<T>(labeler->score(text));
    }
    b.copy(rlhf::vector_view<const T, rlhf::host_space>{s.data(), s.size()}, out);
  }
  void scores_backward(const backend&, rlhf::backend_vector<backend, const T>) {}
};

// The largest difference of any parameter between this rank and rank 0 (0: equal replicas).
template <class P>
double difference_to_rank0(const rlhf::mpi_communicator& comm, const backend& b, P& model) {
  double worst = 0;
  for (const auto& p : model.parameters()) {
    std::vector<double> mine;
    for (const T v : rlhf::to_host(b, p.value.flat())) mine.push_back(static_cast<double>(v));
    const std::vector<double> all = comm.all_gather(mine);
    for (std::size_t r = 1; r < comm.size(); ++r)
      for (std::size_t i = 0; i < mine.size(); ++i) worst = std::max(worst, std::abs(all[r * mine.size() + i] - all[i]));
  }
  return worst;
}

}  // namespace

int main(int argc, char** argv) {
  std::size_t iterations = 20, batch = 16, tokens = 16;
  std::uint64_t seed = 1;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string flag = argv[i];
    if (flag == "--iterations") iterations = std::stoul(argv[i + 1]);
    else if (flag == "--batch") batch = std::stoul(argv[i + 1]);
    else if (flag == "--tokens") tokens = std::stoul(argv[i + 1]);
    else if (flag == "--seed") seed = std::stoull(argv[i + 1]);
  }
  return rlhf::mpi_main(argc, argv, [&](const rlhf::mpi_communicator& comm) {
    const bool root = comm.rank() == 0;
    const backend b{1};
    const std::string data = RLHF_EXAMPLE_DATA_DIR;
    const auto tok = rlhf::tokenizer::load(data + "/tok512.bin");
    const demo::sentiment_labeler labeler(data, seed);
    // The prompts (the same list on every rank; each batch is split by rank inside fit()).
    std::vector<std::vector<rlhf::token_type>> prompts;
    for (const char* name : {"Tom", "Lily", "Ben", "Mia", "Sam", "Lucy"})
      for (const std::string& text : demo::openings(name, "Max")) prompts.push_back(tok.encode(text, true));
    auto policy = rlhf::load_llama2c(b, data + "/stories260K.bin");
    auto reference = rlhf::load_llama2c(b, data + "/stories260K.bin");
    rlhf::llama_value_model<backend, T> critic(b, policy.config());
    critic.trunk().copy_parameters_from(b, policy);
    labeler_reward reward{&tok, &labeler};
    rlhf::adamw<backend, T> policy_opt(rlhf::adamw_options{2e-4, 0.9, 0.95, 1e-8, 0.0});
    rlhf::adamw<backend, T> value_opt(rlhf::adamw_options{5e-4, 0.9, 0.95, 1e-8, 0.0});
    rlhf::ppo_options po;
    po.max_new_tokens = tokens;
    po.sampling.stop_token = rlhf::tokenizer::bos_id;
    po.sampling.seed = seed + 31;
    po.beta = 0.2;
    po.control = rlhf::kl_control::adaptive;
    po.kl_target = 6.0;
    po.kl_horizon = 200;
    po.seed = seed;
    rlhf::ppo_trainer ppo(policy, reference, critic, reward, policy_opt, value_opt, po, comm);
    rlhf::run_options run;
    run.iterations = iterations;
    run.batch_size = batch;
    run.seed = seed;
    run.show_progress = false;
    if (root) {
      std::printf("distributed PPO: %zu ranks, %zu iterations of %zu prompts (%zu per rank), %zu new tokens\n",
                  comm.size(), iterations, batch, batch / comm.size(), tokens);
    }
    const auto start = std::chrono::steady_clock::now();
    const rlhf::run_result result = ppo.fit(b, prompts, run);
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    if (root) {
      for (const auto& row : result.history) {
        const auto at = [&](const char* key) {
          for (const auto& [k, v] : row)
            if (k == key) return v;
          return 0.0;
        };
        std::printf("  iteration %3.0f  score %+.3f  KL %.3f nats  beta %.3f  policy loss %+.4f  value loss %.4f\n",
                    at("iteration"), at("rm_score"), at("kl"), at("beta"), at("policy_loss"), at("value_loss"));
      }
      std::printf("%.2f s per iteration\n", seconds / static_cast<double>(iterations));
    }
    // The replicas must be equal: every rank took the same updates from the same summed gradients.
    const double policy_gap = difference_to_rank0(comm, b, policy), value_gap = difference_to_rank0(comm, b, critic);
    if (root) {
      std::printf("replicas: largest parameter difference to rank 0: policy %g, value model %g\n", policy_gap, value_gap);
    }
    if (policy_gap != 0 || value_gap != 0) {
      if (root) std::fprintf(stderr, "distributed_ppo: the replicas diverged\n");
      return 1;
    }
    if (root) std::printf("distributed PPO OK: the replicas are equal on all %zu ranks\n", comm.size());
    return 0;
  });
}
