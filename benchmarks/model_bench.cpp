// Throughput and memory of the Llama reference model on the Eigen backend: training tokens/s (policy
// log-probs forward + backward, the PPO / SFT inner loop) and sampling tokens/s (KV-cache decoding,
// batch 1, as the llama2.c reference program runs), and the process's peak resident memory.
//
// One configuration and thread count per run, so the peak memory belongs to that run alone:
//
//     model_bench <stories260K|10M> <threads> [checkpoint of stories260K] [--recompute-attention |
//                 --logsumexp-attention]
//
// --recompute-attention trains with rlhf::attention_memory::shared_softmax: one attention softmax for all
// layers, recomputed per layer in the backward (less memory, one more attention forward per layer);
// --logsumexp-attention with attention_memory::logsumexp: no softmax kept, the backward recomputes the
// probabilities from each layer's row logsumexps (one more score product per layer).
//
// benchmarks/run_model_bench.sh runs every combination and the PyTorch side of the comparison
// (benchmarks/peers/llama_torch.py, same architecture and shapes).
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "bench_support.hpp"
#include "rlhf/backends/eigen.hpp"
#include "rlhf/models/llama.hpp"

namespace {

using rlhf::bench::clock_type;
using rlhf::bench::seconds_since;

using rlhf::bench::peak_rss_mib;

// ~10M parameters: 12 layers of width 256, grouped-query attention (8 query, 4 kv heads), SwiGLU 688,
// vocabulary 4096 with a tied classifier (9.7M parameters).
rlhf::llama_config ten_million() {
  rlhf::llama_config c;
  c.dim = 256;
  c.hidden_dim = 688;
  c.n_layers = 12;
  c.n_heads = 8;
  c.n_kv_heads = 4;
  c.vocab_size = 4096;
  c.seq_len = 256;
  return c;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr,
                 "usage: %s <stories260K|10M> <threads> [stories260K.bin] [--recompute-attention | "
                 "--logsumexp-attention]\n",
                 argv[0]);
    return 2;
  }
  rlhf::attention_memory memory = rlhf::attention_memory::per_layer_softmax;
  std::vector<std::string> rest;
  for (int i = 3; i < argc; ++i) {
    if (std::string(argv[i]) == "--recompute-attention")
      memory = rlhf::attention_memory::shared_softmax;
    else if (std::string(argv[i]) == "--logsumexp-attention")
      memory = rlhf::attention_memory::logsumexp;
    else
      rest.emplace_back(argv[i]);
  }
  const std::string which = argv[1];
  const int threads = std::atoi(argv[2]);
  const rlhf::eigen_backend b{threads};
  using model_type = rlhf::llama_model<rlhf::eigen_backend, float>;
#ifdef RLHF_BENCH_DATA_DIR
  const std::string default_path = RLHF_BENCH_DATA_DIR "/stories260K.bin";
#else
  const std::string default_path = "examples/data/stories260K.bin";
#endif
  const std::string path = rest.empty() ? default_path : rest.front();
  model_type model = which == "10M" ? model_type(b, ten_million()) : rlhf::load_llama2c(b, path);
  if (which == "10M") model.init_random(b, 1, 0.02);
  model.set_attention_memory(memory);
  const rlhf::llama_config& c = model.config();

  // Training: batch 8 x 256 tokens, loss = sum of the log-probs (gradient 1 everywhere).
  const std::size_t rows = 8, cols = std::min<std::size_t>(256, c.seq_len), n = rows * cols;
  std::vector<rlhf::token_type> tokens_host(n);
  for (std::size_t i = 0; i < n; ++i) tokens_host[i] = static_cast<rlhf::token_type>((i * 7919 + 13) % c.vocab_size);
  const auto tokens = rlhf::to_backend(b, std::span<const rlhf::token_type>(tokens_host), rows, cols);
  auto lp = rlhf::allocate<float>(b, rows, cols);
  const auto d_lp = rlhf::allocate_filled<float>(b, rows, cols, 1.0f);
  const auto train_step = [&] {
    model.zero_grad(b);
    model.log_probs(b, as_const(tokens.view()), {}, lp.view(), {}, rlhf::forward_mode::training);
    model.log_probs_backward(b, as_const(d_lp.view()));
  };
  train_step();  // warm-up: allocations, caches
  int steps = 0;
  auto t0 = clock_type::now();
  while (steps < 3 || seconds_since(t0) < 3.0) {
    train_step();
    ++steps;
  }
  const double train_tps = static_cast<double>(steps * n) / seconds_since(t0);

  // Forward only (inference log-probs, e.g. the reference policy's in PPO).
  int fwd = 0;
  t0 = clock_type::now();
  while (fwd < 3 || seconds_since(t0) < 2.0) {
    model.log_probs(b, as_const(tokens.view()), {}, lp.view());
    ++fwd;
  }
  const double fwd_tps = static_cast<double>(fwd * n) / seconds_since(t0);

  // Sampling: batch 1 from BOS, temperature 1, up to seq_len tokens (KV cache).
  const std::size_t new_tokens = std::min<std::size_t>(256, c.seq_len);
  std::size_t sampled = 0;
  int runs = 0;
  t0 = clock_type::now();
  while (runs < 3 || seconds_since(t0) < 2.0) {
    rlhf::sampling_options o;
    o.seed = static_cast<std::uint64_t>(runs + 1);
    sampled += model.generate(b, std::vector<rlhf::token_type>{1}, new_tokens, o).size() - 1;
    ++runs;
  }
  const double sample_tps = static_cast<double>(sampled) / seconds_since(t0);

  std::printf("| rlhf (eigen%s) | %s | %zu | %d | %zu x %zu | %.0f | %.0f | %.0f | %.0f |\n",
              memory == rlhf::attention_memory::shared_softmax ? ", recomputed attention"
              : memory == rlhf::attention_memory::logsumexp    ? ", logsumexp attention"
                                                               : "",
              which.c_str(),
              c.parameter_count(), threads, rows, cols, train_tps, fwd_tps, sample_tps, peak_rss_mib());
  return 0;
}
