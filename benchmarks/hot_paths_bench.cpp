// Hot paths of a PPO step on the CPU backends: GAE, token log-probs (and entropy) from logits, KL-penalized
// rewards, whitening, the PPO-clip and clipped value losses forward+backward and the ranking loss, plus a
// STREAM-style triad that measures this machine's memory bandwidth in the same run. Google Benchmark
// reports time, items/s and bytes/s; the bytes counted per element are the minimum a fused
// implementation must move (stated at each benchmark), so bytes/s divided by the triad's bytes/s is the
// fraction of the bandwidth limit. Benchmarks of parallel kernels run at 1 and 2 threads
// (eigen_backend{threads}; the last argument of the benchmark name). Where built with them, the xtensor
// backend and Thrust's serial and OpenMP host systems run every hot path too (their generic forms). The
// benchmark bodies are in hot_paths.hpp (shared with hot_paths_cuda_bench.cu); this file registers them.
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

#include "hot_paths.hpp"
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

namespace rlhf::bench {
// eigen_backend takes its thread count from the benchmark's `threads` argument; Thrust's OpenMP system runs
// on omp_get_max_threads() threads, set from the same argument.
template <>
struct backend_maker<rlhf::eigen_backend> {
  static rlhf::eigen_backend make(const benchmark::State& state, int arg) {
    return rlhf::eigen_backend(static_cast<int>(state.range(arg)));
  }
};
#if RLHF_HAS_THRUST && defined(_OPENMP)
template <>
struct backend_maker<rlhf::thrust_omp_backend> {
  static rlhf::thrust_omp_backend make(const benchmark::State& state, int arg) {
    omp_set_num_threads(static_cast<int>(state.range(arg)));
    return {};
  }
};
#endif
}  // namespace rlhf::bench

namespace {

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
}  // namespace

using namespace rlhf::bench;

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
BENCHMARK(token_logprobs_bf16<rlhf::eigen_backend>)
    ->Args({4096, 32000, 1})->Args({4096, 32000, 2})->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(kl_rewards<rlhf::eigen_backend>) RLHF_LOSS_SHAPES_12T->UseRealTime();
BENCHMARK(kl_advantages<rlhf::eigen_backend>) RLHF_SHAPES_2D_12T->UseRealTime();
BENCHMARK(kl_advantages<rlhf::generic_only<rlhf::eigen_backend>>)->Args({256, 1024, 1});
BENCHMARK(whitening<rlhf::eigen_backend>) RLHF_LOSS_SHAPES_12T->UseRealTime();
BENCHMARK(ppo_clip_loss<rlhf::reference_backend>)->Args({64, 512, 1})->Args({256, 1024, 1});
BENCHMARK(ppo_clip_loss<rlhf::generic_only<rlhf::eigen_backend>>)->Args({64, 512, 1});
BENCHMARK(ppo_clip_loss<rlhf::eigen_backend>) RLHF_LOSS_SHAPES_12T->UseRealTime();
BENCHMARK(value_loss<rlhf::eigen_backend>) RLHF_LOSS_SHAPES_12T->UseRealTime();
BENCHMARK(ranking_loss<rlhf::reference_backend>)->Args({4, 1})->Args({9, 1});
BENCHMARK(ranking_loss<rlhf::generic_only<rlhf::eigen_backend>>)->Args({9, 1});
BENCHMARK(ranking_loss<rlhf::eigen_backend>)->Args({4, 1})->Args({9, 1});
// [tokens, dim]: stories15M's 288 and Llama-7B's 4096.
#define RLHF_ACTIVATIONS_12T ->Args({8192, 288, 1})->Args({8192, 288, 2})->Args({2048, 4096, 1})->Args({2048, 4096, 2})
BENCHMARK(rms_norm_forward<rlhf::eigen_backend>) RLHF_ACTIVATIONS_12T->UseRealTime();
BENCHMARK(rms_norm_backward<rlhf::eigen_backend>) RLHF_ACTIVATIONS_12T->UseRealTime();
// [sequences, cached positions] (the generic path: one loop index per (sequence, head)).
BENCHMARK(decode_attention<rlhf::eigen_backend>)->Args({8, 1024, 1})->Args({8, 1024, 2})->UseRealTime();
// [T, logsumexp, threads]: the training attention keeping its softmax (0) or row log-sum-exps (1).
BENCHMARK(training_attention<rlhf::eigen_backend>)
    ->Args({512, 0, 1})->Args({512, 1, 1})->Args({2048, 0, 2})->Args({2048, 1, 2})
    ->Unit(benchmark::kMillisecond)->UseRealTime();

// The other CPU backends (no specializations: every hot path runs its generic form over the backend's
// primitives). xtensor: one thread; Thrust's serial (cpp) system: one thread; Thrust's OpenMP system: 1 and 2.
#define RLHF_OTHER_BACKEND(B, SHAPES, LOGITS)                                                        \
  BENCHMARK(gae<B>) SHAPES->UseRealTime();                                                            \
  BENCHMARK(token_logprobs<B>) LOGITS->Unit(benchmark::kMillisecond)->UseRealTime();                  \
  BENCHMARK(token_logprobs_fwd_bwd<B>) LOGITS->Unit(benchmark::kMillisecond)->UseRealTime();          \
  BENCHMARK(token_entropy<B>) LOGITS->Unit(benchmark::kMillisecond)->UseRealTime();                   \
  BENCHMARK(token_logprobs_bf16<B>) LOGITS->Unit(benchmark::kMillisecond)->UseRealTime();             \
  BENCHMARK(kl_rewards<B>) SHAPES->UseRealTime();                                                     \
  BENCHMARK(kl_advantages<B>) SHAPES->UseRealTime();                                                  \
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
