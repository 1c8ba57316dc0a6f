// A tour of every rlhf algorithm on one small synthetic batch: the numbers of one PPO step and one
// reward-model step, computed on the backend chosen on the command line.
//
//   algorithm_tour [--backend eigen|reference] [--seed N]
//
// The batch: B = 4 responses of up to T = 8 tokens over a vocabulary of V = 32, ragged lengths, random
// policy and reference logits. The full InstructGPT pipeline (real model, trainers) builds on exactly
// these calls.
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "rlhf/rlhf.hpp"

namespace {

template <class B>
std::vector<float> host(const B& b, rlhf::matrix_view<float> v) {
  return rlhf::to_host(b, v);
}

void print_row(const char* name, const std::vector<float>& v, std::size_t T, std::size_t row) {
  std::printf("  %-12s", name);
  for (std::size_t t = 0; t < T; ++t) std::printf(" %8.4f", v[row * T + t]);
  std::printf("\n");
}

template <class B>
int tour(const B& b, unsigned seed) {
  using T = float;
  constexpr std::size_t batch = 4, steps = 8, vocab = 32;
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  const auto random_vector = [&](std::size_t n, float scale) {
    std::vector<float> v(n);
    for (auto& x : v) x = scale * normal(rng);
    return v;
  };

  // Response tokens and their mask (ragged lengths, right padding).
  std::vector<std::int32_t> lengths{8, 5, 3, 6};
  auto lengths_buf = rlhf::to_backend(b, lengths);
  auto mask = rlhf::allocate<rlhf::mask_type>(b, batch, steps);
  rlhf::mask_from_lengths(b, lengths_buf.view().flat(), mask.view());
  // Policy and reference logits; the policy drifted a little from the reference.
  const auto ref_host = random_vector(batch * steps * vocab, 2.0f);
  auto policy_host = ref_host;
  for (auto& x : policy_host) x += 0.3f * normal(rng);
  // The responses are samples of the policy, as in a PPO rollout (so the KL estimates are meaningful).
  std::vector<rlhf::token_type> token_ids(batch * steps);
  for (std::size_t row = 0; row < batch * steps; ++row) {
    std::vector<double> p(policy_host.begin() + long(row * vocab), policy_host.begin() + long((row + 1) * vocab));
    for (auto& x : p) x = std::exp(x);
    token_ids[row] = static_cast<rlhf::token_type>(std::discrete_distribution<int>(p.begin(), p.end())(rng));
  }
  auto tokens = rlhf::to_backend(b, token_ids);
  auto logits = rlhf::to_backend(b, policy_host, batch * steps, vocab);
  auto ref_logits = rlhf::to_backend(b, ref_host, batch * steps, vocab);

  std::printf("\n1. Token log-probabilities (fused log-softmax + gather, one pass, temperature 1)\n");
  auto logp = rlhf::allocate<T>(b, batch, steps), ref_logp = rlhf::allocate<T>(b, batch, steps);
  auto lse = rlhf::allocate<T>(b, batch, steps), entropy = rlhf::allocate<T>(b, batch, steps);
  rlhf::token_logprobs(b, logits.view(), tokens.view().flat(), mask.view().flat(), logp.view().flat(),
                       lse.view().flat(), entropy.view().flat());
  rlhf::token_logprobs(b, ref_logits.view(), tokens.view().flat(), mask.view().flat(), ref_logp.view().flat());
  print_row("logp[0]", host(b, logp.view()), steps, 0);
  print_row("entropy[0]", host(b, entropy.view()), steps, 0);
  auto full = rlhf::allocate<T>(b, batch, steps);
  rlhf::full_kl(b, logits.view(), ref_logits.view(), mask.view().flat(), full.view().flat());
  print_row("full KL[0]", host(b, full.view()), steps, 0);

  std::printf("\n2. KL-penalized rewards (k1, beta = 0.02, score on the last real token)\n");
  const std::vector<float> scores_host{1.5f, -0.5f, 0.25f, 2.0f};
  auto scores = rlhf::to_backend(b, scores_host);
  auto kl = rlhf::allocate<T>(b, batch, steps), rewards = rlhf::allocate<T>(b, batch, steps);
  const auto reward_stats =
      rlhf::kl_penalized_rewards(b, logp.view(), ref_logp.view(), scores.view().flat(), mask.view(), {}, kl.view(),
                                 rewards.view(), rlhf::kl_estimator_options{}, rlhf::kl_penalized_rewards_options{});
  print_row("rewards[1]", host(b, rewards.view()), steps, 1);
  std::printf("  mean score %.4f, mean KL per token %.5f, mean KL per response %.5f\n", reward_stats.mean_score,
              reward_stats.mean_kl, reward_stats.mean_kl_sum);

  std::printf("\n3. GAE (gamma 1, lambda 0.95; masked steps skipped) and whitening\n");
  auto values = rlhf::to_backend(b, random_vector(batch * steps, 0.5f), batch, steps);
  auto advantages = rlhf::allocate<T>(b, batch, steps), returns = rlhf::allocate<T>(b, batch, steps);
  rlhf::gae(b, rewards.view(), values.view(), mask.view(), advantages.view(), returns.view());
  print_row("advantage[1]", host(b, advantages.view()), steps, 1);
  print_row("return[1]", host(b, returns.view()), steps, 1);
  const auto moments = rlhf::whiten(b, advantages.view(), mask.view(), advantages.view());
  std::printf("  advantages before whitening: mean %.4f, std %.4f over %.0f tokens\n", moments.mean,
              moments.stddev(rlhf::variance_kind::biased), moments.count);

  std::printf("\n4. PPO losses with gradients (one pass each)\n");
  auto old_logp = rlhf::to_backend(b, host(b, logp.view()), batch, steps);
  {
    auto drift = random_vector(batch * steps, 0.15f);
    auto old_host = host(b, old_logp.view());
    for (std::size_t i = 0; i < old_host.size(); ++i) old_host[i] += drift[i];
    old_logp = rlhf::to_backend(b, old_host, batch, steps);
  }
  auto d_logp = rlhf::allocate<T>(b, batch, steps);
  const auto ppo = rlhf::ppo_clip_loss(b, logp.view(), old_logp.view(), advantages.view(), mask.view(), d_logp.view());
  std::printf("  PPO-clip   loss %+.5f  clip fraction %.3f  approx KL %.5f  mean ratio %.4f\n", ppo.loss,
              ppo.clip_fraction, ppo.approx_kl, ppo.mean_ratio);
  auto new_values = rlhf::to_backend(b, random_vector(batch * steps, 0.5f), batch, steps);
  auto d_values = rlhf::allocate<T>(b, batch, steps);
  const auto vf =
      rlhf::clipped_value_loss(b, new_values.view(), values.view(), returns.view(), mask.view(), d_values.view());
  std::printf("  value      loss %+.5f  clip fraction %.3f\n", vf.loss, vf.clip_fraction);
  auto d_entropy = rlhf::allocate<T>(b, batch, steps);
  const auto ent = rlhf::entropy_bonus(b, entropy.view(), mask.view(), d_entropy.view(), 0.01);
  std::printf("  entropy    loss %+.5f  (coefficient 0.01)\n", ent.loss);
  auto d_ptx = rlhf::allocate<T>(b, batch, steps);
  const auto ptx = rlhf::ptx_loss(b, ref_logp.view(), mask.view(), d_ptx.view());
  std::printf("  PPO-ptx    loss %+.5f  (gamma 27.8 x NLL %.4f; the reference log-probs stand in for a pretraining batch)\n",
              ptx.loss, ptx.nll);
  auto d_sft = rlhf::allocate<T>(b, batch, steps);
  const auto sft = rlhf::sft_loss(b, logp.view(), mask.view(), d_sft.view());
  std::printf("  SFT        loss %+.5f  perplexity %.3f\n", sft.loss, sft.perplexity);

  // Back to the logits: one pass over [rows, V] with the PPO and entropy gradients.
  auto dlogits = rlhf::allocate<T>(b, batch * steps, vocab);
  rlhf::token_logprobs_backward(b, logits.view(), tokens.view().flat(), mask.view().flat(), lse.view().flat(),
                                d_logp.view().flat(), entropy.view().flat(), d_entropy.view().flat(),
                                dlogits.view());
  const auto g = rlhf::to_host(b, dlogits.view());
  double norm = 0;
  for (float x : g) norm += double(x) * x;
  std::printf("  |d loss / d logits| = %.6f over [%zu, %zu]\n", std::sqrt(norm), batch * steps, vocab);

  std::printf("\n5. KL controller (adaptive, per-token unit, target 0.1 nats/token, horizon 10000)\n");
  auto controller = rlhf::adaptive_kl_controller<rlhf::kl_per_token>(0.02, rlhf::kl_per_token{0.1}, 10000);
  const auto measured = rlhf::measure_kl<rlhf::kl_per_token>(b, kl.view(), mask.view());
  controller.update(measured, batch);
  std::printf("  measured %.5f nats/token -> beta %.6f\n", measured.nats, controller.beta());

  std::printf("\n6. Reward model: InstructGPT pairwise loss over all C(K,2) pairs of each prompt\n");
  // Three prompts with K = 4, 6 and 9 ranked responses (rank 0 is best; prompt 1 has a tie).
  constexpr std::size_t prompts = 3, k_max = 9;
  std::vector<float> rm_scores(prompts * k_max, 0.0f);
  std::vector<std::int32_t> ranks(prompts * k_max, 0);
  const std::vector<std::int32_t> counts_host{4, 6, 9};
  for (std::size_t p = 0; p < prompts; ++p)
    for (std::int32_t k = 0; k < counts_host[p]; ++k) {
      ranks[p * k_max + k] = (p == 1 && k == 5) ? 4 : k;
      rm_scores[p * k_max + k] = 1.0f - 0.4f * float(k) + 0.3f * normal(rng);
    }
  auto rm = rlhf::to_backend(b, rm_scores, prompts, k_max);
  auto rank_buf = rlhf::to_backend(b, ranks, prompts, k_max);
  auto counts = rlhf::to_backend(b, counts_host);
  auto d_rm = rlhf::allocate<T>(b, prompts, k_max);
  const auto rank_stats = rlhf::ranking_loss(b, rm.view(), rank_buf.view(), counts.view().flat(), d_rm.view());
  std::printf("  loss %.5f  pair accuracy %.3f  over %.0f compared pairs\n", rank_stats.loss, rank_stats.accuracy,
              rank_stats.compared_pairs);
  auto demos = rlhf::to_backend(b, std::vector<float>{0.8f, 1.1f, 0.4f, 1.7f});
  std::printf("  bias making the demonstrations' mean reward 0: %+.4f\n",
              rlhf::demonstration_bias(b, demos.view().flat()));
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  std::string backend = "eigen";
  unsigned seed = 7;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--backend") == 0 && i + 1 < argc) backend = argv[++i];
    else if (std::strcmp(argv[i], "--seed") == 0 && i + 1 < argc) seed = static_cast<unsigned>(std::stoul(argv[++i]));
    else {
      std::fprintf(stderr, "usage: %s [--backend eigen|reference] [--seed N]\n", argv[0]);
      return 2;
    }
  }
  std::printf("rlhf %s algorithm tour on the %s backend\n", rlhf::version_string, backend.c_str());
  try {
    if (backend == "reference") return tour(rlhf::reference_backend{}, seed);
#if defined(RLHF_HAS_EIGEN)
    if (backend == "eigen") return tour(rlhf::eigen_backend{}, seed);
#endif
    std::fprintf(stderr, "unknown or unavailable backend '%s'\n", backend.c_str());
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
}
