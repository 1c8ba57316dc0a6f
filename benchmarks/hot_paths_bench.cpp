// Hot paths of a PPO step on the CPU backends: GAE, token log-probs (and entropy) from logits, KL-penalized
// rewards, whitening, the PPO-clip and clipped value losses forward+backward and the ranking loss, plus a
// STREAM-style triad that measures this machine's memory bandwidth in the same run. Google Benchmark
// reports time, items/s and bytes/s; the bytes counted per element are the minimum a fused
// implementation must move (stated at each benchmark), so bytes/s divided by the triad's bytes/s is the
// fraction of the bandwidth limit. Benchmarks of parallel kernels run at 1 and 2 threads
// (eigen_backend{threads}; the last argument of the benchmark name). Where built with them, the xtensor
// backend and Thrust's serial and OpenMP host systems run every hot path too (their generic forms).
//
//   cmake --preset benchmarks && cmake --build --preset benchmarks --target hot_paths_bench
//   ./build/benchmarks/benchmarks/hot_paths_bench
// or without CMake:
//   g++ -std=c++20 -O3 -march=native -fopenmp -DNDEBUG -Iinclude -isystem /usr/include/eigen3
//       benchmarks/hot_paths_bench.cpp -o hot_paths_bench -lbenchmark -lpthread
#include <benchmark/benchmark.h>

#include <cstddef>
#include <cstdint>
#include <random>
#include <type_traits>
#include <vector>

#include "rlhf/advantages/gae.hpp"
#include "rlhf/advantages/kl_penalized_rewards.hpp"
#include "rlhf/backends/eigen.hpp"
#include "rlhf/backends/generic_only.hpp"
#include "rlhf/backends/memory.hpp"
#include "rlhf/backends/reference.hpp"
#include "rlhf/losses/ppo_clip_loss.hpp"
#include "rlhf/losses/ranking_loss.hpp"
#include "rlhf/losses/value_loss.hpp"
#include "rlhf/ops/token_logprobs.hpp"
#include "rlhf/ops/whitening.hpp"
#if RLHF_HAS_XTENSOR
#include "rlhf/backends/xtensor.hpp"
#endif
#if RLHF_HAS_THRUST
#include "rlhf/backends/thrust.hpp"
#endif
#if defined(_OPENMP)
#include <omp.h>
#endif

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

// Backend for a benchmark: eigen_backend takes its thread count from the benchmark's `threads` argument.
// Thrust's OpenMP system runs on omp_get_max_threads() threads: the benchmark sets it from the same argument.
template <class Backend>
Backend make_backend(const benchmark::State& state, int arg) {
  if constexpr (std::is_same_v<Backend, rlhf::eigen_backend>) {
    return Backend(static_cast<int>(state.range(arg)));
  } else {
#if RLHF_HAS_THRUST && defined(_OPENMP)
    if constexpr (std::is_same_v<Backend, rlhf::thrust_omp_backend>) omp_set_num_threads(static_cast<int>(state.range(arg)));
#endif
    return Backend{};
  }
}

// STREAM triad a[i] = b[i] + s c[i] on doubles, 3 x 64 MiB (far beyond L3): 24 B per element (STREAM
// counting; write-allocate traffic not counted). Its bytes/s is the bandwidth every other figure is
// compared with. Arguments: elements, threads.
void triad(benchmark::State& state) {
  const auto n = static_cast<std::size_t>(state.range(0));
  const int threads = static_cast<int>(state.range(1));
  std::vector<double> a(n, 0.0), b(n, 1.0), c(n, 2.0);
  const double s = 3.0;
  for (auto _ : state) {
    double* __restrict pa = a.data();
    const double* __restrict pb = b.data();
    const double* __restrict pc = c.data();
    const auto len = static_cast<std::ptrdiff_t>(n);
#if defined(_OPENMP)
#pragma omp parallel for simd schedule(static) num_threads(threads)
#endif
    for (std::ptrdiff_t i = 0; i < len; ++i) pa[i] = pb[i] + s * pc[i];
    benchmark::DoNotOptimize(a.data());
    benchmark::ClobberMemory();
  }
  (void)threads;
  state.SetItemsProcessed(state.iterations() * static_cast<std::int64_t>(n));
  state.SetBytesProcessed(state.iterations() * static_cast<std::int64_t>(n) * 24);
}

// GAE + returns: reads rewards, values (4 B each), mask (1 B); writes advantages, returns (4 B each): 17 B/elem.
template <class Backend>
void gae(benchmark::State& state) {
  const Backend b = make_backend<Backend>(state, 2);
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
  const Backend b = make_backend<Backend>(state, 2);
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
// Token log-probs forward + backward (the policy's loss gradient w.r.t. the logits, d_logprobs = 1 per row):
// the forward reads the logits (4 B/elem), the backward reads them again and writes d logits (8 B/elem), in
// place over the logits' gradient buffer: 12 B per vocabulary element.
template <class Backend>
void token_logprobs_fwd_bwd(benchmark::State& state) {
  const Backend b = make_backend<Backend>(state, 2);
  const auto rows = static_cast<std::size_t>(state.range(0)), vocab = static_cast<std::size_t>(state.range(1));
  auto logits = rlhf::to_backend(b, random_vector<float>(rows * vocab, -8, 8, 4), rows, vocab);
  std::vector<rlhf::token_type> ids(rows);
  for (std::size_t r = 0; r < rows; ++r) ids[r] = static_cast<rlhf::token_type>((r * 7919) % vocab);
  auto tokens = rlhf::to_backend(b, ids);
  auto logp = rlhf::allocate<float>(b, rows), lse = rlhf::allocate<float>(b, rows);
  auto d_logp = rlhf::to_backend(b, std::vector<float>(rows, 1.0f));
  auto dlogits = rlhf::allocate<float>(b, rows, vocab);
  b.fill(dlogits.view().flat(), 0.0f);  // fault its pages in before timing (the first iteration would pay them)
  for (auto _ : state) {
    rlhf::token_logprobs(b, logits.view(), tokens.view().flat(), {}, logp.view().flat(), lse.view().flat());
    rlhf::token_logprobs_backward<Backend, float>(b, logits.view(), tokens.view().flat(), {}, lse.view().flat(),
                                                  d_logp.view().flat(), {}, {}, dlogits.view());
    benchmark::DoNotOptimize(dlogits.view().data);
  }
  const auto n = static_cast<std::int64_t>(rows * vocab);
  state.SetItemsProcessed(state.iterations() * n);
  state.SetBytesProcessed(state.iterations() * n * 12);
}

template <class Backend>
void ppo_clip_loss(benchmark::State& state) {
  const Backend b = make_backend<Backend>(state, 2);
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
  const Backend b = make_backend<Backend>(state, 1);
  const std::size_t prompts = 64, k = static_cast<std::size_t>(state.range(0));
  auto rewards = rlhf::to_backend(b, random_vector<float>(prompts * k, -1, 1, 9), prompts, k);
  std::vector<std::int32_t> ranks(prompts * k), counts(prompts, static_cast<std::int32_t>(k));
  for (std::size_t i = 0; i < ranks.size(); ++i) ranks[i] = static_cast<std::int32_t>(i % k);
  auto rank_buf = rlhf::to_backend(b, ranks, prompts, k);
  auto count_buf = rlhf::to_backend(b, counts);
  auto grad = rlhf::allocate<float>(b, prompts, k);
  for (auto _ : state) {
    auto stats = rlhf::ranking_loss<Backend, float>(b, rewards.view(), rank_buf.view(), count_buf.view().flat(), grad.view());
    benchmark::DoNotOptimize(stats);
  }
  state.SetItemsProcessed(state.iterations() * static_cast<std::int64_t>(prompts));
}

// Token log-probs with the entropy output: one read of the logits (4 B per vocabulary element); the
// entropy adds a weighted sum to the same pass.
template <class Backend>
void token_entropy(benchmark::State& state) {
  const Backend b = make_backend<Backend>(state, 2);
  const auto rows = static_cast<std::size_t>(state.range(0)), vocab = static_cast<std::size_t>(state.range(1));
  auto logits = rlhf::to_backend(b, random_vector<float>(rows * vocab, -8, 8, 14), rows, vocab);
  std::vector<rlhf::token_type> ids(rows);
  for (std::size_t r = 0; r < rows; ++r) ids[r] = static_cast<rlhf::token_type>((r * 7919) % vocab);
  auto tokens = rlhf::to_backend(b, ids);
  auto logp = rlhf::allocate<float>(b, rows), lse = rlhf::allocate<float>(b, rows), ent = rlhf::allocate<float>(b, rows);
  for (auto _ : state) {
    rlhf::token_logprobs(b, logits.view(), tokens.view().flat(), {}, logp.view().flat(), lse.view().flat(),
                         ent.view().flat());
    benchmark::DoNotOptimize(ent.data());
  }
  const auto n = static_cast<std::int64_t>(rows * vocab);
  state.SetItemsProcessed(state.iterations() * n);
  state.SetBytesProcessed(state.iterations() * n * 4);
}

// KL-penalized rewards (k1 estimator, score at the last valid token): reads logp, ref logp (4 B each) and
// the mask (1 B), writes the KL and the rewards (4 B each): 17 B/elem.
template <class Backend>
void kl_rewards(benchmark::State& state) {
  const Backend b = make_backend<Backend>(state, 2);
  const auto rows = static_cast<std::size_t>(state.range(0)), cols = static_cast<std::size_t>(state.range(1));
  auto logp = rlhf::to_backend(b, random_vector<float>(rows * cols, -3, -1, 15), rows, cols);
  auto ref = rlhf::to_backend(b, random_vector<float>(rows * cols, -3, -1, 16), rows, cols);
  auto scores = rlhf::to_backend(b, random_vector<float>(rows, -1, 1, 17));
  auto mask = rlhf::to_backend(b, ragged_mask(rows, cols, 18), rows, cols);
  auto kl = rlhf::allocate<float>(b, rows, cols), rewards = rlhf::allocate<float>(b, rows, cols);
  for (auto _ : state) {
    auto stats = rlhf::kl_penalized_rewards<Backend, float>(b, logp.view(), ref.view(), scores.view().flat(),
                                                            mask.view(), {}, kl.view(), rewards.view(),
                                                            rlhf::kl_estimator_options{});
    benchmark::DoNotOptimize(stats);
  }
  const auto n = static_cast<std::int64_t>(rows * cols);
  state.SetItemsProcessed(state.iterations() * n);
  state.SetBytesProcessed(state.iterations() * n * 17);
}

// Masked whitening (mean and variance over the valid entries, then (x - mean) / std): a statistics pass
// (4 + 1 B) and a normalize pass (4 + 1 read, 4 write): 14 B/elem.
template <class Backend>
void whitening(benchmark::State& state) {
  const Backend b = make_backend<Backend>(state, 2);
  const auto rows = static_cast<std::size_t>(state.range(0)), cols = static_cast<std::size_t>(state.range(1));
  auto x = rlhf::to_backend(b, random_vector<float>(rows * cols, -2, 3, 19), rows, cols);
  auto mask = rlhf::to_backend(b, ragged_mask(rows, cols, 20), rows, cols);
  auto out = rlhf::allocate<float>(b, rows, cols);
  for (auto _ : state) {
    auto m = rlhf::whiten(b, x.view(), mask.view(), out.view());
    benchmark::DoNotOptimize(m);
  }
  const auto n = static_cast<std::int64_t>(rows * cols);
  state.SetItemsProcessed(state.iterations() * n);
  state.SetBytesProcessed(state.iterations() * n * 14);
}

// Clipped value loss forward+backward: reads values, old values, returns (4 B each) and the mask (1 B),
// writes d_values: 17 B/elem.
template <class Backend>
void value_loss(benchmark::State& state) {
  const Backend b = make_backend<Backend>(state, 2);
  const auto rows = static_cast<std::size_t>(state.range(0)), cols = static_cast<std::size_t>(state.range(1));
  auto v = rlhf::to_backend(b, random_vector<float>(rows * cols, -1, 1, 21), rows, cols);
  auto old = rlhf::to_backend(b, random_vector<float>(rows * cols, -1, 1, 22), rows, cols);
  auto ret = rlhf::to_backend(b, random_vector<float>(rows * cols, -1, 1, 23), rows, cols);
  auto mask = rlhf::to_backend(b, ragged_mask(rows, cols, 24), rows, cols);
  auto d = rlhf::allocate<float>(b, rows, cols);
  for (auto _ : state) {
    auto stats = rlhf::clipped_value_loss(b, v.view(), old.view(), ret.view(), mask.view(), d.view());
    benchmark::DoNotOptimize(stats);
  }
  const auto n = static_cast<std::int64_t>(rows * cols);
  state.SetItemsProcessed(state.iterations() * n);
  state.SetBytesProcessed(state.iterations() * n * 17);
}

}  // namespace

// Shapes [rows, cols, threads]; the reference and generic-only backends ignore the thread argument
// (they run on one thread), so they are registered with threads = 1 only.
#define RLHF_SHAPES_2D_1T ->Args({64, 512, 1})->Args({256, 1024, 1})->Args({1024, 8192, 1})
#define RLHF_SHAPES_2D_12T                                                                              \
  ->Args({64, 512, 1})->Args({64, 512, 2})->Args({256, 1024, 1})->Args({256, 1024, 2})->Args({1024, 8192, 1}) \
      ->Args({1024, 8192, 2})
#define RLHF_LOSS_SHAPES_12T ->Args({64, 512, 1})->Args({64, 512, 2})->Args({256, 1024, 1})->Args({256, 1024, 2})
BENCHMARK(triad)->Args({8 << 20, 1})->Args({8 << 20, 2})->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(gae<rlhf::reference_backend>) RLHF_SHAPES_2D_1T;
BENCHMARK(gae<rlhf::eigen_backend>) RLHF_SHAPES_2D_12T->UseRealTime();
BENCHMARK(gae<rlhf::generic_only<rlhf::eigen_backend>>)->Args({64, 512, 1});
BENCHMARK(token_logprobs<rlhf::reference_backend>)->Args({4096, 32000, 1})->Unit(benchmark::kMillisecond);
BENCHMARK(token_logprobs<rlhf::eigen_backend>)
    ->Args({4096, 32000, 1})->Args({4096, 32000, 2})->Args({512, 151936, 1})->Args({512, 151936, 2})
    ->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(token_logprobs_fwd_bwd<rlhf::eigen_backend>)
    ->Args({4096, 32000, 1})->Args({4096, 32000, 2})->Args({512, 151936, 1})->Args({512, 151936, 2})
    ->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(token_entropy<rlhf::eigen_backend>)
    ->Args({4096, 32000, 1})->Args({4096, 32000, 2})->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(kl_rewards<rlhf::eigen_backend>) RLHF_LOSS_SHAPES_12T->UseRealTime();
BENCHMARK(whitening<rlhf::eigen_backend>) RLHF_LOSS_SHAPES_12T->UseRealTime();
BENCHMARK(ppo_clip_loss<rlhf::reference_backend>)->Args({64, 512, 1})->Args({256, 1024, 1});
BENCHMARK(ppo_clip_loss<rlhf::generic_only<rlhf::eigen_backend>>)->Args({64, 512, 1});
BENCHMARK(ppo_clip_loss<rlhf::eigen_backend>) RLHF_LOSS_SHAPES_12T->UseRealTime();
BENCHMARK(value_loss<rlhf::eigen_backend>) RLHF_LOSS_SHAPES_12T->UseRealTime();
BENCHMARK(ranking_loss<rlhf::reference_backend>)->Args({4, 1})->Args({9, 1});
BENCHMARK(ranking_loss<rlhf::generic_only<rlhf::eigen_backend>>)->Args({9, 1});
BENCHMARK(ranking_loss<rlhf::eigen_backend>)->Args({4, 1})->Args({9, 1});

// The other CPU backends (no specializations: every hot path runs its generic form over the backend's
// primitives). xtensor: one thread; Thrust's serial (cpp) system: one thread; Thrust's OpenMP system: 1 and 2.
#define RLHF_OTHER_BACKEND(B, SHAPES, LOGITS)                                                        \
  BENCHMARK(gae<B>) SHAPES->UseRealTime();                                                            \
  BENCHMARK(token_logprobs<B>) LOGITS->Unit(benchmark::kMillisecond)->UseRealTime();                  \
  BENCHMARK(token_entropy<B>) LOGITS->Unit(benchmark::kMillisecond)->UseRealTime();                   \
  BENCHMARK(kl_rewards<B>) SHAPES->UseRealTime();                                                     \
  BENCHMARK(whitening<B>) SHAPES->UseRealTime();                                                      \
  BENCHMARK(ppo_clip_loss<B>) SHAPES->UseRealTime();                                                  \
  BENCHMARK(value_loss<B>) SHAPES->UseRealTime();                                                     \
  BENCHMARK(ranking_loss<B>)->Args({4, 1})->Args({9, 1})
#define RLHF_LOSS_SHAPES_1T ->Args({64, 512, 1})->Args({256, 1024, 1})
#define RLHF_LOGITS_1T ->Args({4096, 32000, 1})
#define RLHF_LOGITS_12T ->Args({4096, 32000, 1})->Args({4096, 32000, 2})
#if RLHF_HAS_XTENSOR
RLHF_OTHER_BACKEND(rlhf::xtensor_backend, RLHF_LOSS_SHAPES_1T, RLHF_LOGITS_1T);
#endif
#if RLHF_HAS_THRUST
RLHF_OTHER_BACKEND(rlhf::thrust_cpp_backend, RLHF_LOSS_SHAPES_1T, RLHF_LOGITS_1T);
#if defined(_OPENMP)
RLHF_OTHER_BACKEND(rlhf::thrust_omp_backend, RLHF_LOSS_SHAPES_12T, RLHF_LOGITS_12T);
#endif
#endif

BENCHMARK_MAIN();
