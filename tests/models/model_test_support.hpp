// Shared machinery of the trainable-model tests: tiny configurations, random token batches, and a
// finite-difference check of every parameter tensor of a model against its backward.
#pragma once

#include <cmath>
#include <cstdint>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "rlhf/models/llama.hpp"
#include "test_support.hpp"

namespace rlhf::test {

/// A small grouped-query configuration (2 query heads per kv head) that exercises every layer.
inline llama_config tiny_llama_config(bool shared_classifier = true) {
  llama_config c;
  c.dim = 8;
  c.hidden_dim = 12;
  c.n_layers = 2;
  c.n_heads = 4;
  c.n_kv_heads = 2;
  c.vocab_size = 11;
  c.seq_len = 9;
  c.shared_classifier = shared_classifier;
  return c;
}

/// Uniform random token ids [rows * cols] in [0, vocab).
inline std::vector<token_type> random_tokens(std::mt19937_64& g, std::size_t n, std::size_t vocab) {
  std::uniform_int_distribution<int> d(0, static_cast<int>(vocab) - 1);
  std::vector<token_type> t(n);
  for (auto& x : t) x = d(g);
  return t;
}

/// Compares the gradient that `backward` accumulates for every parameter with central differences of
/// `loss` (evaluated in inference mode), at `samples` random entries per tensor. `loss` and `backward`
/// read the model's current parameter values; `backward` runs after a zero_grad.
template <class B, class T>
void check_parameter_gradients(const B& b, parameter_list<T, typename B::memory_space> params,
                               const std::function<double()>& loss, const std::function<void()>& backward,
                               std::size_t samples = 3, std::uint64_t seed = 7, double eps = 1e-5) {
  for (auto& p : params) b.fill(p.grad.flat(), T(0));
  backward();
  std::mt19937_64 g(seed);
  for (auto& p : params) {
    const std::vector<T> grad = to_host(b, p.grad.flat());
    std::vector<T> value = to_host(b, p.value.flat());
    std::uniform_int_distribution<std::size_t> pick(0, value.size() - 1);
    for (std::size_t s = 0; s < std::min(samples, value.size()); ++s) {
      const std::size_t i = pick(g);
      const T keep = value[i];
      const auto eval = [&](double delta) {
        value[i] = static_cast<T>(static_cast<double>(keep) + delta);
        b.copy(vector_view<const T, host_space>{value.data(), value.size()}, p.value.flat());
        return loss();
      };
      const double numeric = (eval(eps) - eval(-eps)) / (2 * eps);
      value[i] = keep;
      b.copy(vector_view<const T, host_space>{value.data(), value.size()}, p.value.flat());
      INFO("parameter " << p.name << " [" << i << "]");
      CHECK(static_cast<double>(grad[i]) == Approx(numeric).epsilon(1e-5).margin(1e-7));
    }
  }
}

}  // namespace rlhf::test
