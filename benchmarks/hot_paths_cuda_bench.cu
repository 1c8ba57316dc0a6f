// The hot paths on the CUDA backend (its kernels: token log-probs and their backward, GAE, the one-pass
// advantages, PPO-clip, value and ranking losses, RMSNorm, the decode and training attention; the other hot
// paths through Thrust on the device), the bodies of benchmarks/hot_paths.hpp at the CPU benchmark's shapes
// and larger ones, plus a device triad that measures the GPU's memory bandwidth in the
// same run. Every iteration synchronizes the backend's stream, so the times are the device work's (plus a
// launch latency per kernel, which dominates the small shapes).
//
//   cmake --build --preset benchmarks --target hot_paths_cuda_bench && ./build/benchmarks/benchmarks/hot_paths_cuda_bench
//
// Built wherever the cuda component is (CI compiles it); exits 77 without a CUDA device.
#include <cstdio>

#include "hot_paths.hpp"
#include "rlhf/backends/cuda.cuh"

namespace {

// STREAM-style triad on the device, a[i] = b[i] + s c[i] over doubles (3 x 256 MiB, beyond any L2): 24 B
// per element. Its bytes/s is the bandwidth the other figures are compared with.
__global__ void device_triad(double* a, const double* b, const double* c, double s, std::size_t n) {
  for (std::size_t i = blockIdx.x * static_cast<std::size_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<std::size_t>(gridDim.x) * blockDim.x) {
    a[i] = b[i] + s * c[i];
  }
}

void triad(benchmark::State& state) {
  const rlhf::cuda_backend be;
  const auto n = static_cast<std::size_t>(state.range(0));
  auto a = rlhf::allocate_filled<double>(be, 1, n, 0.0), b = rlhf::allocate_filled<double>(be, 1, n, 1.0),
       c = rlhf::allocate_filled<double>(be, 1, n, 2.0);
  be.synchronize();
  for (auto _ : state) {
    device_triad<<<1024, 256, 0, be.stream()>>>(a.view().data, b.view().data, c.view().data, 3.0, n);
    be.synchronize();
  }
  state.SetItemsProcessed(state.iterations() * static_cast<std::int64_t>(n));
  state.SetBytesProcessed(state.iterations() * static_cast<std::int64_t>(n) * 24);
}

}  // namespace

using rlhf::cuda_backend;
using namespace rlhf::bench;

// Shapes [rows, cols, threads] (the threads argument is unused on the device: 1).
#define RLHF_CUDA_SHAPES ->Args({64, 512, 1})->Args({256, 1024, 1})->Args({1024, 8192, 1})->UseRealTime()
#define RLHF_CUDA_LOGITS ->Args({4096, 32000, 1})->Args({512, 151936, 1})->Args({16384, 32000, 1})->UseRealTime()
BENCHMARK(triad)->Args({32 << 20})->UseRealTime();
BENCHMARK(gae<cuda_backend>) RLHF_CUDA_SHAPES;
BENCHMARK(token_logprobs<cuda_backend>) RLHF_CUDA_LOGITS;
BENCHMARK(token_logprobs_fwd_bwd<cuda_backend>) RLHF_CUDA_LOGITS;
BENCHMARK(token_entropy<cuda_backend>) RLHF_CUDA_LOGITS;
BENCHMARK(token_logprobs_bf16<cuda_backend>) RLHF_CUDA_LOGITS;
BENCHMARK(kl_rewards<cuda_backend>) RLHF_CUDA_SHAPES;
BENCHMARK(kl_advantages<cuda_backend>) RLHF_CUDA_SHAPES;
BENCHMARK(whitening<cuda_backend>) RLHF_CUDA_SHAPES;
BENCHMARK(ppo_clip_loss<cuda_backend>) RLHF_CUDA_SHAPES;
BENCHMARK(value_loss<cuda_backend>) RLHF_CUDA_SHAPES;
BENCHMARK(ranking_loss<cuda_backend>)->Args({4, 1})->Args({9, 1})->UseRealTime();
// [tokens, dim]: stories15M's 288 (a warp per row), Llama-7B's 4096 (a block per row).
#define RLHF_CUDA_ACTIVATIONS ->Args({8192, 288, 1})->Args({8192, 4096, 1})->UseRealTime()
BENCHMARK(rms_norm_forward<cuda_backend>) RLHF_CUDA_ACTIVATIONS;
BENCHMARK(rms_norm_backward<cuda_backend>) RLHF_CUDA_ACTIVATIONS;
// [sequences, cached positions]: a rollout batch of 64 at 1024 and 4096 positions (a warp, then a block per pair).
BENCHMARK(decode_attention<cuda_backend>)->Args({64, 1024, 1})->Args({64, 4096, 1})->UseRealTime();
BENCHMARK(training_attention<cuda_backend>)
    ->Args({2048, 0, 1})->Args({2048, 1, 1})->Args({8192, 0, 1})->Args({8192, 1, 1})
    ->Unit(benchmark::kMillisecond)->UseRealTime();

int main(int argc, char** argv) {
  if (rlhf::cuda_device_count() == 0) {
    std::printf("hot_paths_cuda_bench: no CUDA device, nothing to measure (this binary compiled)\n");
    return 77;
  }
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
