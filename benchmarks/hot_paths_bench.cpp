// Hot paths of a PPO step on the CPU backends: GAE, token log-probs from logits, the PPO-clip loss
// forward+backward and the ranking loss. Google Benchmark reports time, items/s and bytes/s; the bytes
// counted per element are the minimum a fused implementation must move (stated at each benchmark).
//
//   cmake --preset benchmarks && cmake --build --preset benchmarks --target hot_paths_bench
//   ./build/benchmarks/benchmarks/hot_paths_bench
#include <benchmark/benchmark.h>

#include <cstdint>
#include <random>
#include <vector>

#include "rlhf/rlhf.hpp"

namespace {

template <class T>
std::vector<T> random_vector(std::size_t n, double lo, double hi, unsigned seed) {
  std::mt19937 g(seed);
  std::uniform_real_distribution<double> d(lo, hi);
  std::vector<T> v(n);
  for (auto& x : v) x = static_cast<T>(d(g));
  return v;
}

std::vector<rlhf::mask_type> ragged_mask(std::size_t rows, std::size_t cols, unsigned seed) {
  std::mt19937 g(seed);
  std::uniform_int_distribution<std::size_t> len(cols / 2, cols);
  std::vector<rlhf::mask_type> m(rows * cols, 0);
  for (std::size_t r = 0; r < rows; ++r) {
    const std::size_t l = len(g);
    for (std::size_t c = 0; c < l; ++c) m[r * cols + c] = 1;
  }
  return m;
}

// GAE + returns: reads rewards, values (4 B each), mask (1 B); writes advantages, returns (4 B each): 17 B/elem.
template <class Backend>
void gae(benchmark::State& state) {
  const Backend b{};
  const auto rows = static_cast<std::size_t>(state.range(0)), cols = static_cast<std::size_t>(state.range(1));
  auto rewards = rlhf::to_backend(b, random_vector<float>(rows * cols, -1, 1, 1), rows, cols);
  auto values = rlhf::to_backend(b, random_vector<float>(rows * cols, -1, 1, 2), rows, cols);
  auto mask = rlhf::to_backend(b, ragged_mask(rows, cols, 3), rows, cols);
  auto adv = rlhf::allocate<float>(b, rows, cols), ret = rlhf::allocate<float>(b, rows, cols);
  for (auto _ : state) {
    rlhf::gae(b, rewards.view(), values.view(), mask.view(), adv.view(), ret.view());
    benchmark::DoNotOptimize(adv.data());
  }
  const auto n = static_cast<std::int64_t>(rows * cols);
  state.SetItemsProcessed(state.iterations() * n);
  state.SetBytesProcessed(state.iterations() * n * 17);
}

// Token log-probs forward (with logsumexp saved): one read of the fp32 logits, 4 B per vocabulary element.
template <class Backend>
void token_logprobs(benchmark::State& state) {
  const Backend b{};
  const auto rows = static_cast<std::size_t>(state.range(0)), vocab = static_cast<std::size_t>(state.range(1));
  auto logits = rlhf::to_backend(b, random_vector<float>(rows * vocab, -8, 8, 4), rows, vocab);
  std::vector<rlhf::token_type> ids(rows);
  for (std::size_t r = 0; r < rows; ++r) ids[r] = static_cast<rlhf::token_type>((r * 7919) % vocab);
  auto tokens = rlhf::to_backend(b, ids);
  auto logp = rlhf::allocate<float>(b, rows), lse = rlhf::allocate<float>(b, rows);
  for (auto _ : state) {
    rlhf::token_logprobs(b, logits.view(), tokens.view().flat(), {}, logp.view().flat(), lse.view().flat());
    benchmark::DoNotOptimize(logp.data());
  }
  const auto n = static_cast<std::int64_t>(rows * vocab);
  state.SetItemsProcessed(state.iterations() * n);
  state.SetBytesProcessed(state.iterations() * n * 4);
}

// PPO-clip forward+backward: reads logp, old logp, advantages (4 B each) and mask (1 B), writes d_logp: 17 B/elem.
template <class Backend>
void ppo_clip_loss(benchmark::State& state) {
  const Backend b{};
  const auto rows = static_cast<std::size_t>(state.range(0)), cols = static_cast<std::size_t>(state.range(1));
  auto logp = rlhf::to_backend(b, random_vector<float>(rows * cols, -3, -1, 5), rows, cols);
  auto old_logp = rlhf::to_backend(b, random_vector<float>(rows * cols, -3, -1, 6), rows, cols);
  auto adv = rlhf::to_backend(b, random_vector<float>(rows * cols, -1, 1, 7), rows, cols);
  auto mask = rlhf::to_backend(b, ragged_mask(rows, cols, 8), rows, cols);
  auto d_logp = rlhf::allocate<float>(b, rows, cols);
  for (auto _ : state) {
    auto stats = rlhf::ppo_clip_loss(b, logp.view(), old_logp.view(), adv.view(), mask.view(), d_logp.view());
    benchmark::DoNotOptimize(stats);
  }
  const auto n = static_cast<std::int64_t>(rows * cols);
  state.SetItemsProcessed(state.iterations() * n);
  state.SetBytesProcessed(state.iterations() * n * 17);
}

// Ranking loss, 64 prompts of K responses (all C(K,2) pairs), forward+backward. Call overhead dominates.
template <class Backend>
void ranking_loss(benchmark::State& state) {
  const Backend b{};
  const std::size_t prompts = 64, k = static_cast<std::size_t>(state.range(0));
  auto rewards = rlhf::to_backend(b, random_vector<float>(prompts * k, -1, 1, 9), prompts, k);
  std::vector<std::int32_t> ranks(prompts * k), counts(prompts, static_cast<std::int32_t>(k));
  for (std::size_t i = 0; i < ranks.size(); ++i) ranks[i] = static_cast<std::int32_t>(i % k);
  auto rank_buf = rlhf::to_backend(b, ranks, prompts, k);
  auto count_buf = rlhf::to_backend(b, counts);
  auto grad = rlhf::allocate<float>(b, prompts, k);
  for (auto _ : state) {
    auto stats = rlhf::ranking_loss(b, rewards.view(), rank_buf.view(), count_buf.view().flat(), grad.view());
    benchmark::DoNotOptimize(stats);
  }
  state.SetItemsProcessed(state.iterations() * static_cast<std::int64_t>(prompts));
}

}  // namespace

#define RLHF_SHAPES_2D ->Args({64, 512})->Args({256, 1024})->Args({1024, 8192})
BENCHMARK(gae<rlhf::reference_backend>) RLHF_SHAPES_2D;
BENCHMARK(gae<rlhf::eigen_backend>) RLHF_SHAPES_2D;
BENCHMARK(gae<rlhf::generic_only<rlhf::eigen_backend>>) RLHF_SHAPES_2D;
BENCHMARK(token_logprobs<rlhf::reference_backend>)->Args({4096, 32000})->Unit(benchmark::kMillisecond);
BENCHMARK(token_logprobs<rlhf::eigen_backend>)->Args({4096, 32000})->Args({512, 151936})->Unit(benchmark::kMillisecond);
BENCHMARK(ppo_clip_loss<rlhf::reference_backend>)->Args({64, 512})->Args({256, 1024});
BENCHMARK(ppo_clip_loss<rlhf::eigen_backend>)->Args({64, 512})->Args({256, 1024});
BENCHMARK(ranking_loss<rlhf::reference_backend>)->Arg(4)->Arg(9);
BENCHMARK(ranking_loss<rlhf::eigen_backend>)->Arg(4)->Arg(9);

BENCHMARK_MAIN();
