// The method's three steps on the CUDA backend against the reference backend, from the same initial
// parameters: SFT steps (response-only loss), greedy KV-cache generation, a reward-model step on K = 4 rankings (all C(4,2) pairs of a
// prompt), the reward model's bias normalization on demonstrations, and PPO iterations on a fixed rollout
// (KL-penalized rewards, GAE, whitening, PPO-clip, the clipped value loss, on the one-pass advantages
// kernel). Each step's statistics agree, and so does every parameter after it: the trainers, the Llama
// models and the optimizer run on the GPU end to end, with the hand-written kernels and cuBLAS under them.
// Built by nvcc whenever CUDA is found (so the whole pipeline compiles for the CUDA backend in CI); labelled
// `gpu`; exits 77 (ctest: skipped) when no GPU is present.
#include <cstdio>
#include <span>
#include <string>
#include <vector>

#include "cuda_test_support.hpp"
#include "rlhf/backends/cuda.cuh"
#include "rlhf/backends/memory.hpp"
#include "rlhf/backends/reference.hpp"
#include "rlhf/models/llama.hpp"
#include "rlhf/models/llama_reward_model.hpp"
#include "rlhf/models/llama_value_model.hpp"
#include "rlhf/optim/adamw.hpp"
#include "rlhf/train/ppo_trainer.hpp"
#include "rlhf/train/reward_trainer.hpp"
#include "rlhf/train/sft_trainer.hpp"

namespace {

using rlhf::test::check_close;
using rlhf::test::expect;
using rlhf::test::failures;

rlhf::llama_config tiny_config() {
  rlhf::llama_config c;
  c.dim = 16;
  c.hidden_dim = 24;
  c.n_layers = 2;
  c.n_heads = 4;
  c.n_kv_heads = 2;
  c.vocab_size = 13;
  c.seq_len = 12;
  c.shared_classifier = false;
  return c;
}

// Every parameter of a model on the CUDA backend against the same parameter of its reference-backend twin.
template <class GpuModel, class RefModel>
void same_parameters(const rlhf::cuda_backend& b, GpuModel& gpu, RefModel& ref, double tol,
                     const std::string& what) {
  const auto gp = gpu.parameters();
  const auto rp = ref.parameters();
  expect(gp.size() == rp.size(), what + ": parameter count");
  for (std::size_t k = 0; k < gp.size() && k < rp.size(); ++k) {
    const auto want = std::vector<typename RefModel::value_type>(rp[k].value.data,
                                                                  rp[k].value.data + rp[k].value.size());
    check_close(rlhf::to_host(b, gp[k].value.flat()), want, tol, tol, what + ": parameter " + std::to_string(k));
  }
}

void same_value(double got, double want, double tol, const std::string& what) {
  check_close(std::vector<double>{got}, std::vector<double>{want}, tol, tol, what);
}

template <class T>
void pipeline(const rlhf::cuda_backend& b) {
  using gpu_lm = rlhf::llama_model<rlhf::cuda_backend, T>;
  using ref_lm = rlhf::llama_model<rlhf::reference_backend, T>;
  const rlhf::reference_backend ref;
  const rlhf::llama_config c = tiny_config();
  const double tol = std::is_same_v<T, float> ? 2e-4 : 1e-9;
  const std::string type = std::is_same_v<T, float> ? " (float)" : " (double)";

  // 1. SFT: one step on two demonstrations of different lengths.
  gpu_lm policy(b, c);
  ref_lm ref_policy(ref, c);
  policy.init_random(b, 11, 0.3, 0.1);
  ref_policy.init_random(ref, 11, 0.3, 0.1);
  {
    rlhf::adamw<rlhf::cuda_backend, T> opt(rlhf::adamw_options{1e-2});
    rlhf::adamw<rlhf::reference_backend, T> ref_opt(rlhf::adamw_options{1e-2});
    rlhf::sft_trainer sft(policy, opt);
    rlhf::sft_trainer ref_sft(ref_policy, ref_opt);
    const std::vector<rlhf::prompt_response> demos{{{1, 2, 3}, {4, 5, 6, 7}}, {{1, 8}, {9, 2}}};
    for (int step = 0; step < 2; ++step) {
      const auto got = sft.step(b, demos);
      const auto want = ref_sft.step(ref, demos);
      same_value(got.loss, want.loss, tol, "sft loss, step " + std::to_string(step) + type);
      expect(got.tokens == want.tokens, "sft tokens" + type);
    }
    same_parameters(b, policy, ref_policy, 10 * tol, "sft" + type);
  }

  // Greedy generation with the key/value cache (the decode attention kernel) continues the prompts as the
  // reference backend does (a tie broken differently by rounding would show here; the logits of this model
  // are far from ties).
  {
    const std::vector<std::vector<rlhf::token_type>> prompts{{1, 2}, {1, 8, 9}, {1}};
    const auto got = policy.generate(b, prompts, 6, rlhf::sampling_options::greedy());
    const auto want = ref_policy.generate(ref, prompts, 6, rlhf::sampling_options::greedy());
    expect(got == want, "greedy generation with the KV cache" + type);
  }

  // 2. Reward model from the SFT policy: a step on K = 4 rankings (a tie included), then the bias that
  //    makes the demonstrations' mean reward 0.
  auto rm = rlhf::llama_reward_model<rlhf::cuda_backend, T>::from_language_model(b, policy, 5, 0.2);
  auto ref_rm = rlhf::llama_reward_model<rlhf::reference_backend, T>::from_language_model(ref, ref_policy, 5, 0.2);
  {
    rlhf::adamw<rlhf::cuda_backend, T> opt(rlhf::adamw_options{1e-2});
    rlhf::adamw<rlhf::reference_backend, T> ref_opt(rlhf::adamw_options{1e-2});
    rlhf::reward_trainer trainer(rm, opt);
    rlhf::reward_trainer ref_trainer(ref_rm, ref_opt);
    const std::vector<rlhf::ranked_responses> batch{
        {{1, 2}, {{3, 4}, {5}, {6, 7, 8}, {9, 10}}, {0, 1, 2, 3}},
        {{1, 11}, {{12}, {2, 2, 3}, {4, 5}, {7}}, {2, 0, 1, 1}},
    };
    const auto got = trainer.step(b, batch);
    const auto want = ref_trainer.step(ref, batch);
    same_value(got.loss, want.loss, tol, "reward loss" + type);
    same_value(got.accuracy, want.accuracy, 0.0, "reward accuracy" + type);
    same_value(got.compared_pairs, want.compared_pairs, 0.0, "reward compared pairs" + type);
    same_parameters(b, rm, ref_rm, 10 * tol, "reward model" + type);
    const std::vector<rlhf::prompt_response> demos{{{1, 2}, {3, 4}}, {{1, 11}, {2, 2, 3}}, {{1, 5}, {6}}};
    const double shift = trainer.normalize_to_demonstrations(b, demos);
    const double ref_shift = ref_trainer.normalize_to_demonstrations(ref, demos);
    same_value(shift, ref_shift, tol, "reward bias shift to the demonstrations' mean" + type);
    same_parameters(b, rm, ref_rm, 10 * tol, "reward model after the bias" + type);
  }

  // 3. PPO: the value model starts from the reward model, the reference is the SFT policy; two learn()
  //    iterations on a fixed rollout (fixed so that sampling, whose draws may differ with rounding, stays out).
  gpu_lm reference(b, c);
  ref_lm ref_reference(ref, c);
  reference.copy_parameters_from(b, policy);
  ref_reference.copy_parameters_from(ref, ref_policy);
  auto value = rlhf::llama_value_model<rlhf::cuda_backend, T>::from_reward_model(b, rm);
  auto ref_value = rlhf::llama_value_model<rlhf::reference_backend, T>::from_reward_model(ref, ref_rm);
  {
    rlhf::adamw<rlhf::cuda_backend, T> popt(rlhf::adamw_options{3e-3}), vopt(rlhf::adamw_options{1e-2});
    rlhf::adamw<rlhf::reference_backend, T> ref_popt(rlhf::adamw_options{3e-3}), ref_vopt(rlhf::adamw_options{1e-2});
    rlhf::ppo_options o;
    o.ppo_epochs = 2;
    o.minibatches = 2;
    rlhf::ppo_trainer trainer(policy, reference, value, rm, popt, vopt, o);
    rlhf::ppo_trainer ref_trainer(ref_policy, ref_reference, ref_value, ref_rm, ref_popt, ref_vopt, o);
    const rlhf::ppo_rollout rollout{{{1, 3}, {1, 4, 5}, {1, 6}, {1, 2}}, {{7, 4, 7}, {5}, {8, 9, 10, 2}, {3, 3}}};
    for (int it = 0; it < 2; ++it) {
      const auto got = trainer.learn(b, rollout);
      const auto want = ref_trainer.learn(ref, rollout);
      const std::string at = ", iteration " + std::to_string(it) + type;
      same_value(got.mean_score, want.mean_score, tol, "ppo mean score" + at);
      same_value(got.mean_kl, want.mean_kl, tol, "ppo mean KL" + at);
      same_value(got.mean_reward, want.mean_reward, tol, "ppo mean reward" + at);
      same_value(got.policy_loss, want.policy_loss, 10 * tol, "ppo policy loss" + at);
      same_value(got.value_loss, want.value_loss, 10 * tol, "ppo value loss" + at);
      same_value(got.clip_fraction, want.clip_fraction, tol, "ppo clip fraction" + at);
      expect(got.updates == want.updates, "ppo updates" + at);
    }
    same_parameters(b, policy, ref_policy, 20 * tol, "ppo policy" + type);
    same_parameters(b, value, ref_value, 20 * tol, "ppo value model" + type);
    same_parameters(b, reference, ref_reference, 0.0, "ppo reference (frozen)" + type);
  }
}

}  // namespace

int main() {
  if (rlhf::cuda_device_count() == 0) {
    std::printf("rlhf CUDA pipeline test: no CUDA device, skipped (this binary compiled: the trainers build)\n");
    return 77;  // ctest SKIP_RETURN_CODE
  }
  try {
    const rlhf::cuda_backend b;
    pipeline<float>(b);
    pipeline<double>(b);
  } catch (const std::exception& e) {
    std::printf("FAILED: %s\n", e.what());
    ++failures;
  }
  if (failures != 0) {
    std::printf("rlhf CUDA pipeline test: %d failure(s)\n", failures);
    return 1;
  }
  std::printf("rlhf CUDA pipeline test: OK (SFT, reward model, PPO on the GPU match the reference backend)\n");
  return 0;
}
