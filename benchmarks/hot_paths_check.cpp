// The agreement half of the peer comparison (benchmarks/peers/compare_hot_paths.py): reads the inputs the
// driver wrote with PyTorch, runs each hot path of hot_paths_bench.cpp on them with the Eigen backend, and
// writes the outputs for the driver to hold against the peers' forms. Raw little-endian arrays, one file
// per array (float32 `.f32`, int32 `.i32`, uint8 `.u8`), in one directory:
//
//   inputs:  shapes.txt ("rows cols logits_rows vocab prompts k4 k9"), rewards values x mask (GAE, whitening;
//            [rows, cols]), logp ref scores old adv old_v ret (KL rewards, PPO-clip, value loss), logits
//            tokens (log-probs, entropy), rank4 rank9 ([prompts, k] rewards listed best first)
//   outputs: gae_adv gae_ret whiten kl_rewards logp_ours entropy_ours dlogits_ours ppo_loss ppo_grad value_loss
//            value_grad ranking4_loss ranking4_grad ranking9_loss ranking9_grad
//
//     hot_paths_check <directory>
//
// The options are the peers' forms': GAE gamma 1 lambda 0.95; whitening with the Bessel-corrected masked
// variance; k1 rewards with beta 0.05 and the score at the last valid token; PPO-clip epsilon 0.2 and the
// clipped value loss 0.2 as masked token means; the ranking loss over all pairs.
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "rlhf/advantages/gae.hpp"
#include "rlhf/advantages/kl_penalized_rewards.hpp"
#include "rlhf/backends/eigen.hpp"
#include "rlhf/backends/memory.hpp"
#include "rlhf/losses/ppo_clip_loss.hpp"
#include "rlhf/losses/ranking_loss.hpp"
#include "rlhf/losses/value_loss.hpp"
#include "rlhf/ops/token_logprobs.hpp"
#include "rlhf/ops/whitening.hpp"

namespace {

template <class T>
std::vector<T> read_array(const std::string& path, std::size_t n) {
  std::ifstream in(path, std::ios::binary);
  std::vector<T> v(n);
  if (!in.read(reinterpret_cast<char*>(v.data()), static_cast<std::streamsize>(n * sizeof(T)))) {
    throw std::runtime_error("hot_paths_check: cannot read " + std::to_string(n) + " elements from " + path);
  }
  return v;
}

template <class T>
void write_array(const std::string& path, const std::vector<T>& v) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(v.data()), static_cast<std::streamsize>(v.size() * sizeof(T)));
  if (!out) throw std::runtime_error("hot_paths_check: cannot write " + path);
}

}  // namespace

int main(int argc, char** argv) try {
  if (argc != 2) {
    std::fprintf(stderr, "usage: hot_paths_check <directory>\n");
    return 2;
  }
  const std::string dir = std::string(argv[1]) + "/";
  std::size_t rows = 0, cols = 0, lrows = 0, vocab = 0, prompts = 0, k4 = 0, k9 = 0;
  {
    std::ifstream s(dir + "shapes.txt");
    if (!(s >> rows >> cols >> lrows >> vocab >> prompts >> k4 >> k9)) throw std::runtime_error("hot_paths_check: bad shapes.txt");
  }
  const rlhf::eigen_backend b{1};
  const std::size_t n = rows * cols;
  const auto f32 = [&](const char* name, std::size_t r, std::size_t c) {
    return rlhf::to_backend(b, read_array<float>(dir + name + ".f32", r * c), r, c);
  };
  const auto mask = rlhf::to_backend(b, read_array<rlhf::mask_type>(dir + "mask.u8", n), rows, cols);
  const auto out = [&](const char* name, const auto& view) { write_array(dir + name + ".f32", rlhf::to_host(b, view)); };

  // GAE (gamma 1, lambda 0.95).
  {
    const auto rewards = f32("rewards", rows, cols), values = f32("values", rows, cols);
    auto adv = rlhf::allocate<float>(b, rows, cols), ret = rlhf::allocate<float>(b, rows, cols);
    rlhf::gae(b, rewards.view(), values.view(), mask.view(), adv.view(), ret.view());
    out("gae_adv", adv.view());
    out("gae_ret", ret.view());
  }
  // Masked whitening, Bessel-corrected variance, the mean removed.
  {
    const auto x = f32("x", rows, cols);
    auto w = rlhf::allocate<float>(b, rows, cols);
    rlhf::whiten_options o;
    o.variance = rlhf::variance_kind::bessel;
    rlhf::whiten(b, x.view(), mask.view(), w.view(), o);
    out("whiten", w.view());
  }
  // k1 KL-penalized rewards, beta 0.05, score at the last valid token.
  const auto logp = f32("logp", rows, cols);
  {
    const auto ref = f32("ref", rows, cols), scores = f32("scores", 1, rows);
    auto kl = rlhf::allocate<float>(b, rows, cols), rewards = rlhf::allocate<float>(b, rows, cols);
    rlhf::kl_penalized_rewards_options o;
    o.beta = 0.05;
    rlhf::kl_penalized_rewards<rlhf::eigen_backend, float>(b, logp.view(), ref.view(), scores.view().flat(), mask.view(), {},
                                                           kl.view(), rewards.view(), rlhf::kl_estimator_options{}, o);
    out("kl_rewards", rewards.view());
  }
  // PPO-clip (epsilon 0.2) and the clipped value loss (0.2), masked token means, with their gradients.
  {
    const auto old = f32("old", rows, cols), adv = f32("adv", rows, cols);
    auto grad = rlhf::allocate<float>(b, rows, cols);
    const auto s = rlhf::ppo_clip_loss(b, logp.view(), old.view(), adv.view(), mask.view(), grad.view());
    write_array(dir + "ppo_loss.f32", std::vector<float>{static_cast<float>(s.loss)});
    out("ppo_grad", grad.view());
    const auto v = f32("values", rows, cols), old_v = f32("old_v", rows, cols), ret = f32("ret", rows, cols);
    const auto vs = rlhf::clipped_value_loss(b, v.view(), old_v.view(), ret.view(), mask.view(), grad.view());
    write_array(dir + "value_loss.f32", std::vector<float>{static_cast<float>(vs.loss)});
    out("value_grad", grad.view());
  }
  // Token log-probs and entropy from logits.
  {
    const auto logits = f32("logits", lrows, vocab);
    const auto tokens = rlhf::to_backend(b, read_array<rlhf::token_type>(dir + "tokens.i32", lrows));
    auto lp = rlhf::allocate<float>(b, lrows), lse = rlhf::allocate<float>(b, lrows), ent = rlhf::allocate<float>(b, lrows);
    rlhf::token_logprobs(b, logits.view(), tokens.view().flat(), {}, lp.view().flat(), lse.view().flat(), ent.view().flat());
    out("logp_ours", lp.view());
    out("entropy_ours", ent.view());
    // The gradient of sum(logp) w.r.t. the logits.
    const auto ones = rlhf::to_backend(b, std::vector<float>(lrows, 1.0f));
    auto dlogits = rlhf::allocate<float>(b, lrows, vocab);
    rlhf::token_logprobs_backward<rlhf::eigen_backend, float>(b, logits.view(), tokens.view().flat(), {}, lse.view().flat(),
                                                              ones.view().flat(), {}, {}, dlogits.view());
    out("dlogits_ours", dlogits.view());
  }
  // The ranking loss over all C(K, 2) pairs of each prompt, responses listed best first.
  for (const std::size_t k : {k4, k9}) {
    const std::string name = "rank" + std::to_string(k);
    const auto rewards = f32(name.c_str(), prompts, k);
    std::vector<std::int32_t> ranks(prompts * k), counts(prompts, static_cast<std::int32_t>(k));
    for (std::size_t i = 0; i < ranks.size(); ++i) ranks[i] = static_cast<std::int32_t>(i % k);
    const auto rank_buf = rlhf::to_backend(b, ranks, prompts, k);
    const auto count_buf = rlhf::to_backend(b, counts);
    auto grad = rlhf::allocate<float>(b, prompts, k);
    const auto s = rlhf::ranking_loss<rlhf::eigen_backend, float>(b, rewards.view(), rank_buf.view(), count_buf.view().flat(),
                                                                  grad.view());
    const std::string stem = "ranking" + std::to_string(k);
    write_array(dir + stem + "_loss.f32", std::vector<float>{static_cast<float>(s.loss)});
    out((stem + "_grad").c_str(), grad.view());
  }
  std::printf("hot_paths_check: outputs written to %s\n", argv[1]);
  return 0;
} catch (const std::exception& e) {
  std::fprintf(stderr, "%s\n", e.what());
  return 1;
}
