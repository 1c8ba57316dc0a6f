// The hot-path benchmark bodies, generic over the backend (Google Benchmark functions templated on it):
// GAE, token log-probs (forward, forward + backward, with entropy; float and bfloat16 logits), KL-penalized
// rewards, the one-call KL-penalized advantages, whitening, the PPO-clip and clipped value losses forward +
// backward, the ranking loss, and the model's RMSNorm forward and backward, KV-cache decode attention and
// training attention (saved softmax or row log-sum-exps).
// Registered for the CPU backends
// by hot_paths_bench.cpp and for the CUDA backend by hot_paths_cuda_bench.cu. Each iteration ends with
// b.synchronize() (a no-op on the CPU backends; the CUDA backend's stream), so the time is the work's.
// Bytes per element: the minimum a fused implementation must move, stated at each benchmark.
#pragma once

#include <benchmark/benchmark.h>

#include <cstddef>
#include <cstdint>
#include <random>
#include <type_traits>
#include <utility>
#include <vector>

#include "rlhf/advantages/gae.hpp"
#include "rlhf/advantages/kl_penalized_advantages.hpp"
#include "rlhf/advantages/kl_penalized_rewards.hpp"
#include "rlhf/backends/bfloat16.hpp"
#include "rlhf/backends/memory.hpp"
#include "rlhf/losses/ppo_clip_loss.hpp"
#include "rlhf/losses/ranking_loss.hpp"
#include "rlhf/losses/value_loss.hpp"
#include "rlhf/models/layers/attention.hpp"
#include "rlhf/models/layers/rms_norm.hpp"
#include "rlhf/ops/token_logprobs.hpp"
#include "rlhf/ops/whitening.hpp"

namespace rlhf::bench {

/// The backend of a benchmark; a backend with a thread count specializes it (hot_paths_bench.cpp).
template <class Backend>
struct backend_maker {
  static Backend make(const benchmark::State&, int) { return Backend{}; }
};
template <class Backend>
Backend make_backend(const benchmark::State& state, int arg) {
  return backend_maker<Backend>::make(state, arg);
}

template <class T>
std::vector<T> random_vector(std::size_t n, double lo, double hi, unsigned seed) {
  std::mt19937 g(seed);
  std::uniform_real_distribution<double> d(lo, hi);
  std::vector<T> v(n);
  for (auto& x : v) x = static_cast<T>(d(g));
  return v;
}

// A [rows, cols] float matrix uniform in [lo, hi), on the backend.
template <class Backend>
auto random_matrix(const Backend& b, std::size_t rows, std::size_t cols, double lo, double hi, unsigned seed) {
  return rlhf::to_backend(b, random_vector<float>(rows * cols, lo, hi, seed), rows, cols);
}

// Logits [rows, vocab] uniform in [-8, 8] and one token id per row (a fixed formula), on the backend.
template <class Backend>
auto random_logits(const Backend& b, std::size_t rows, std::size_t vocab, unsigned seed) {
  return random_matrix(b, rows, vocab, -8, 8, seed);
}
template <class Backend>
auto row_tokens(const Backend& b, std::size_t rows, std::size_t vocab) {
  std::vector<rlhf::token_type> ids(rows);
  for (std::size_t r = 0; r < rows; ++r) ids[r] = static_cast<rlhf::token_type>((r * 7919) % vocab);
  return rlhf::to_backend(b, ids);
}

// The first two benchmark arguments: rows and columns (or vocabulary).
inline std::pair<std::size_t, std::size_t> shape_of(const benchmark::State& state) {
  return {static_cast<std::size_t>(state.range(0)), static_cast<std::size_t>(state.range(1))};
}

// Runs step() once per iteration, keeps its result from the optimizer and synchronizes the backend after it
// (the time is the work's, also on a device); reports `items` elements and `bytes_per_item` bytes per
// iteration (0: no byte count).
template <class Backend, class Step>
void time_steps(benchmark::State& state, const Backend& b, std::size_t items, std::int64_t bytes_per_item, Step step) {
  for (auto _ : state) {
    auto result = step();
    benchmark::DoNotOptimize(result);
    b.synchronize();
  }
  const auto n = static_cast<std::int64_t>(items);
  state.SetItemsProcessed(state.iterations() * n);
  if (bytes_per_item > 0) state.SetBytesProcessed(state.iterations() * n * bytes_per_item);
}

inline std::vector<rlhf::mask_type> ragged_mask(std::size_t rows, std::size_t cols, unsigned seed) {
  std::mt19937 g(seed);
  std::uniform_int_distribution<std::size_t> len(cols / 2, cols);
  std::vector<rlhf::mask_type> m(rows * cols, 0);
  for (std::size_t r = 0; r < rows; ++r) {
    const std::size_t l = len(g);
    for (std::size_t c = 0; c < l; ++c) m[r * cols + c] = 1;
  }
  return m;
}

template <class Backend>
void gae(benchmark::State& state) {
  const Backend b = make_backend<Backend>(state, 2);
  const auto [rows, cols] = shape_of(state);
  auto rewards = random_matrix(b, rows, cols, -1, 1, 1), values = random_matrix(b, rows, cols, -1, 1, 2);
  auto mask = rlhf::to_backend(b, ragged_mask(rows, cols, 3), rows, cols);
  auto adv = rlhf::allocate<float>(b, rows, cols), ret = rlhf::allocate<float>(b, rows, cols);
  time_steps(state, b, rows * cols, 17, [&] {
    rlhf::gae(b, rewards.view(), values.view(), mask.view(), adv.view(), ret.view());
    return adv.view().data;
  });
}

// Token log-probs forward (with logsumexp saved): one read of the fp32 logits, 4 B per vocabulary element.
template <class Backend>
void token_logprobs(benchmark::State& state) {
  const Backend b = make_backend<Backend>(state, 2);
  const auto [rows, vocab] = shape_of(state);
  auto logits = random_logits(b, rows, vocab, 4);
  auto tokens = row_tokens(b, rows, vocab);
  auto logp = rlhf::allocate<float>(b, rows), lse = rlhf::allocate<float>(b, rows);
  time_steps(state, b, rows * vocab, 4, [&] {
    rlhf::token_logprobs(b, logits.view(), tokens.view().flat(), {}, logp.view().flat(), lse.view().flat());
    return logp.view().data;
  });
}

// Token log-probs forward + backward (the policy's loss gradient w.r.t. the logits, d_logprobs = 1 per row):
// the forward reads the logits (4 B/elem), the backward reads them again and writes d logits (8 B/elem), in
// place over the logits' gradient buffer: 12 B per vocabulary element.
template <class Backend>
void token_logprobs_fwd_bwd(benchmark::State& state) {
  const Backend b = make_backend<Backend>(state, 2);
  const auto [rows, vocab] = shape_of(state);
  auto logits = random_logits(b, rows, vocab, 4);
  auto tokens = row_tokens(b, rows, vocab);
  auto logp = rlhf::allocate<float>(b, rows), lse = rlhf::allocate<float>(b, rows);
  auto d_logp = rlhf::to_backend(b, std::vector<float>(rows, 1.0f));
  auto dlogits = rlhf::allocate<float>(b, rows, vocab);
  b.fill(dlogits.view().flat(), 0.0f);  // fault its pages in before timing (the first iteration would pay them)
  time_steps(state, b, rows * vocab, 12, [&] {
    rlhf::token_logprobs(b, logits.view(), tokens.view().flat(), {}, logp.view().flat(), lse.view().flat());
    rlhf::token_logprobs_backward<Backend, float>(b, logits.view(), tokens.view().flat(), {}, lse.view().flat(),
                                                  d_logp.view().flat(), {}, {}, dlogits.view());
    return dlogits.view().data;
  });
}

// PPO-clip forward+backward: reads logp, old logp, advantages (4 B each) and mask (1 B), writes d_logp: 17 B/elem.
template <class Backend>
void ppo_clip_loss(benchmark::State& state) {
  const Backend b = make_backend<Backend>(state, 2);
  const auto [rows, cols] = shape_of(state);
  auto logp = random_matrix(b, rows, cols, -3, -1, 5), old_logp = random_matrix(b, rows, cols, -3, -1, 6);
  auto adv = random_matrix(b, rows, cols, -1, 1, 7);
  auto mask = rlhf::to_backend(b, ragged_mask(rows, cols, 8), rows, cols);
  auto d_logp = rlhf::allocate<float>(b, rows, cols);
  time_steps(state, b, rows * cols, 17, [&] {
    return rlhf::ppo_clip_loss(b, logp.view(), old_logp.view(), adv.view(), mask.view(), d_logp.view());
  });
}

// Ranking loss, 64 prompts of K responses (all C(K,2) pairs), forward+backward. Call overhead dominates.
template <class Backend>
void ranking_loss(benchmark::State& state) {
  const Backend b = make_backend<Backend>(state, 1);
  const std::size_t prompts = 64, k = static_cast<std::size_t>(state.range(0));
  auto rewards = random_matrix(b, prompts, k, -1, 1, 9);
  std::vector<std::int32_t> ranks(prompts * k), counts(prompts, static_cast<std::int32_t>(k));
  for (std::size_t i = 0; i < ranks.size(); ++i) ranks[i] = static_cast<std::int32_t>(i % k);
  auto rank_buf = rlhf::to_backend(b, ranks, prompts, k);
  auto count_buf = rlhf::to_backend(b, counts);
  auto grad = rlhf::allocate<float>(b, prompts, k);
  time_steps(state, b, prompts, 0, [&] {
    return rlhf::ranking_loss<Backend, float>(b, rewards.view(), rank_buf.view(), count_buf.view().flat(), grad.view());
  });
}

// Token log-probs with the entropy output: one read of the logits (4 B per vocabulary element); the
// entropy adds a weighted sum to the same pass.
template <class Backend>
void token_entropy(benchmark::State& state) {
  const Backend b = make_backend<Backend>(state, 2);
  const auto [rows, vocab] = shape_of(state);
  auto logits = random_logits(b, rows, vocab, 14);
  auto tokens = row_tokens(b, rows, vocab);
  auto logp = rlhf::allocate<float>(b, rows), lse = rlhf::allocate<float>(b, rows), ent = rlhf::allocate<float>(b, rows);
  time_steps(state, b, rows * vocab, 4, [&] {
    rlhf::token_logprobs(b, logits.view(), tokens.view().flat(), {}, logp.view().flat(), lse.view().flat(),
                         ent.view().flat());
    return ent.view().data;
  });
}

// KL-penalized rewards (k1 estimator, score at the last valid token): reads logp, ref logp (4 B each) and
// the mask (1 B), writes the KL and the rewards (4 B each): 17 B/elem.
template <class Backend>
void kl_rewards(benchmark::State& state) {
  const Backend b = make_backend<Backend>(state, 2);
  const auto [rows, cols] = shape_of(state);
  auto logp = random_matrix(b, rows, cols, -3, -1, 15), ref = random_matrix(b, rows, cols, -3, -1, 16);
  auto scores = rlhf::to_backend(b, random_vector<float>(rows, -1, 1, 17));
  auto mask = rlhf::to_backend(b, ragged_mask(rows, cols, 18), rows, cols);
  auto kl = rlhf::allocate<float>(b, rows, cols), rewards = rlhf::allocate<float>(b, rows, cols);
  time_steps(state, b, rows * cols, 17, [&] {
    return rlhf::kl_penalized_rewards<Backend, float>(b, logp.view(), ref.view(), scores.view().flat(), mask.view(),
                                                      {}, kl.view(), rewards.view(), rlhf::kl_estimator_options{});
  });
}

// KL-penalized advantages in one call (k1, score at the last valid token, GAE gamma 1 lambda 0.95, the
// advantages' moments): reads logp, ref logp, values (4 B each) and the mask (1 B), writes the KL, the
// rewards, the advantages and the returns (4 B each): 29 B/elem. The separate calls move 17 (kl_rewards) +
// 17 (gae) + 5 (the moments) = 39 B/elem.
template <class Backend>
void kl_advantages(benchmark::State& state) {
  const Backend b = make_backend<Backend>(state, 2);
  const auto [rows, cols] = shape_of(state);
  auto logp = random_matrix(b, rows, cols, -3, -1, 25), ref = random_matrix(b, rows, cols, -3, -1, 26);
  auto values = random_matrix(b, rows, cols, -1, 1, 27);
  auto scores = rlhf::to_backend(b, random_vector<float>(rows, -1, 1, 28));
  auto mask = rlhf::to_backend(b, ragged_mask(rows, cols, 29), rows, cols);
  auto kl = rlhf::allocate<float>(b, rows, cols), rewards = rlhf::allocate<float>(b, rows, cols);
  auto adv = rlhf::allocate<float>(b, rows, cols), ret = rlhf::allocate<float>(b, rows, cols);
  time_steps(state, b, rows * cols, 29, [&] {
    return rlhf::kl_penalized_advantages<Backend, float>(b, logp.view(), ref.view(), scores.view().flat(),
                                                         values.view(), mask.view(), {}, kl.view(), rewards.view(),
                                                         adv.view(), ret.view());
  });
}

// Token log-probs forward of bfloat16 logits (float outputs, logsumexp saved): 2 B per vocabulary element.
template <class Backend>
void token_logprobs_bf16(benchmark::State& state) {
  const Backend b = make_backend<Backend>(state, 2);
  const auto [rows, vocab] = shape_of(state);
  const std::vector<float> f = random_vector<float>(rows * vocab, -8, 8, 30);
  std::vector<rlhf::bfloat16> h(f.size());
  for (std::size_t i = 0; i < f.size(); ++i) h[i] = rlhf::bfloat16(f[i]);
  auto logits = rlhf::to_backend(b, h, rows, vocab);
  auto tokens = row_tokens(b, rows, vocab);
  auto logp = rlhf::allocate<float>(b, rows), lse = rlhf::allocate<float>(b, rows);
  time_steps(state, b, rows * vocab, 2, [&] {
    rlhf::token_logprobs(b, rlhf::as_const(logits.view()), tokens.view().flat(), {}, logp.view().flat(),
                         lse.view().flat());
    return logp.view().data;
  });
}

// Masked whitening (mean and variance over the valid entries, then (x - mean) / std): a statistics pass
// (4 + 1 B) and a normalize pass (4 + 1 read, 4 write): 14 B/elem.
template <class Backend>
void whitening(benchmark::State& state) {
  const Backend b = make_backend<Backend>(state, 2);
  const auto [rows, cols] = shape_of(state);
  auto x = random_matrix(b, rows, cols, -2, 3, 19);
  auto mask = rlhf::to_backend(b, ragged_mask(rows, cols, 20), rows, cols);
  auto out = rlhf::allocate<float>(b, rows, cols);
  time_steps(state, b, rows * cols, 14, [&] { return rlhf::whiten(b, x.view(), mask.view(), out.view()); });
}

// Clipped value loss forward+backward: reads values, old values, returns (4 B each) and the mask (1 B),
// writes d_values: 17 B/elem.
template <class Backend>
void value_loss(benchmark::State& state) {
  const Backend b = make_backend<Backend>(state, 2);
  const auto [rows, cols] = shape_of(state);
  auto v = random_matrix(b, rows, cols, -1, 1, 21), old = random_matrix(b, rows, cols, -1, 1, 22);
  auto ret = random_matrix(b, rows, cols, -1, 1, 23);
  auto mask = rlhf::to_backend(b, ragged_mask(rows, cols, 24), rows, cols);
  auto d = rlhf::allocate<float>(b, rows, cols);
  time_steps(state, b, rows * cols, 17, [&] {
    return rlhf::clipped_value_loss(b, v.view(), old.view(), ret.view(), mask.view(), d.view());
  });
}

// RMSNorm forward over [tokens, dim] activations: reads x, writes out and 1/rms per row: 8 B/elem.
template <class Backend>
void rms_norm_forward(benchmark::State& state) {
  const Backend b = make_backend<Backend>(state, 2);
  const auto [rows, cols] = shape_of(state);
  auto x = random_matrix(b, rows, cols, -2, 2, 25), w = random_matrix(b, 1, cols, 0.5, 1.5, 26);
  auto out = rlhf::allocate<float>(b, rows, cols), inv = rlhf::allocate<float>(b, 1, rows);
  time_steps(state, b, rows * cols, 8, [&] {
    rlhf::rms_norm_forward(b, rlhf::as_const(x.view()), rlhf::as_const(w.view().flat()), out.view(), inv.view().flat());
    return out.view().data;
  });
}

// RMSNorm backward (d_x and the accumulated weight gradient): reads x and d_out, writes d_x: 12 B/elem at
// least (the weight gradient's column sums read x and d_out a second time where they are a separate pass).
template <class Backend>
void rms_norm_backward(benchmark::State& state) {
  const Backend b = make_backend<Backend>(state, 2);
  const auto [rows, cols] = shape_of(state);
  auto x = random_matrix(b, rows, cols, -2, 2, 27), w = random_matrix(b, 1, cols, 0.5, 1.5, 28);
  auto g = random_matrix(b, rows, cols, -1, 1, 29), inv = random_matrix(b, 1, rows, 0.5, 2, 30);
  auto dx = rlhf::allocate<float>(b, rows, cols), dw = rlhf::allocate_filled<float>(b, 1, cols, 0.0f);
  time_steps(state, b, rows * cols, 12, [&] {
    rlhf::rms_norm_backward(b, rlhf::as_const(x.view()), rlhf::as_const(w.view().flat()),
                            rlhf::as_const(inv.view().flat()), rlhf::as_const(g.view()), dx.view(), dw.view().flat());
    return dx.view().data;
  });
}

// One decode step's attention over a key/value cache: `rows` sequences at position `cols` - 1 of a cache of
// `cols` positions, 32 query heads over 8 kv heads of 128 (a Llama-2-70B-like head layout). Reads every
// cached key and value once: 2 * 8 * 128 * 4 = 8 KiB per cached position of a row ("items" = positions).
template <class Backend>
void decode_attention(benchmark::State& state) {
  const Backend b = make_backend<Backend>(state, 2);
  const auto [rows, cache] = shape_of(state);
  constexpr std::size_t hq = 32, hkv = 8, hd = 128;
  auto q = random_matrix(b, rows, hq * hd, -1, 1, 31);
  auto k = random_matrix(b, rows * cache, hkv * hd, -1, 1, 32), v = random_matrix(b, rows * cache, hkv * hd, -1, 1, 33);
  auto positions = rlhf::to_backend(b, std::vector<std::int32_t>(rows, static_cast<std::int32_t>(cache - 1)));
  auto scores = rlhf::allocate<float>(b, rows * hq, cache), out = rlhf::allocate<float>(b, rows, hq * hd);
  time_steps(state, b, rows * cache, 2 * hkv * hd * 4, [&] {
    rlhf::causal_attention_decode(b, rlhf::as_const(q.view()), rlhf::as_const(k.view()), rlhf::as_const(v.view()),
                                  rlhf::as_const(positions.view().flat()), cache, hq, hkv, scores.view(), out.view());
    return out.view().data;
  });
}

// One training attention step, forward and backward, of one sequence of `cols` tokens: 16 query heads over 4
// kv heads of 64. The third argument picks what the forward keeps for the backward: 0 the softmax
// (causal_attention_forward / _backward, Hq * T * T values), 1 the row log-sum-exps
// (causal_attention_forward_logsumexp / _backward_recompute, Hq * T values; the backward recomputes the
// scores). "items" = visible (query, key) pairs per head summed over heads; the counter `kept_MiB` is what
// the forward keeps.
template <class Backend>
void training_attention(benchmark::State& state) {
  const Backend b = make_backend<Backend>(state, 2);
  const auto seq = static_cast<std::size_t>(state.range(0));
  const bool logsumexp = state.range(1) != 0;
  constexpr std::size_t hq = 16, hkv = 4, hd = 64;
  auto q = random_matrix(b, seq, hq * hd, -1, 1, 34);
  auto k = random_matrix(b, seq, hkv * hd, -1, 1, 35), v = random_matrix(b, seq, hkv * hd, -1, 1, 36);
  auto d_out = random_matrix(b, seq, hq * hd, -1, 1, 37);
  auto out = rlhf::allocate<float>(b, seq, hq * hd), d_q = rlhf::allocate<float>(b, seq, hq * hd);
  auto d_k = rlhf::allocate<float>(b, seq, hkv * hd), d_v = rlhf::allocate<float>(b, seq, hkv * hd);
  auto probs = rlhf::allocate<float>(b, logsumexp ? 0 : hq * seq, seq);
  auto lse = rlhf::allocate<float>(b, logsumexp ? hq * seq : 0, 1);
  const auto cq = rlhf::as_const(q.view()), ck = rlhf::as_const(k.view()), cv = rlhf::as_const(v.view());
  time_steps(state, b, hq * seq * (seq + 1) / 2, 0, [&] {
    if (logsumexp) {
      rlhf::causal_attention_forward_logsumexp(b, cq, ck, cv, 1, hq, hkv, out.view(), lse.view().flat());
      rlhf::causal_attention_backward_recompute(b, cq, ck, cv, rlhf::as_const(lse.view().flat()),
                                                rlhf::as_const(d_out.view()), 1, hq, hkv, d_q.view(), d_k.view(),
                                                d_v.view());
    } else {
      rlhf::causal_attention_forward(b, cq, ck, cv, 1, hq, hkv, out.view(), probs.view());
      rlhf::causal_attention_backward(b, cq, ck, cv, rlhf::as_const(probs.view()), rlhf::as_const(d_out.view()), 1,
                                      hq, hkv, d_q.view(), d_k.view(), d_v.view());
    }
    return d_q.view().data;
  });
  state.counters["kept_MiB"] =
      static_cast<double>((logsumexp ? hq * seq : hq * seq * seq) * sizeof(float)) / (1024.0 * 1024.0);
}

}  // namespace rlhf::bench
