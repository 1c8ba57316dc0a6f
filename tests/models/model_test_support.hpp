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

/// Runs `backward` (after zero_grad) with `model.on_gradients_ready` armed and checks the reports:
/// ranges inside parameters(), no parameter twice, and each reported gradient already final when reported
/// (equal then to its value after the whole backward). Returns the parameter indices in report order.
template <class B, class M>
std::vector<std::size_t> check_gradient_reports(const B& b, M& model, const std::function<void()>& backward) {
  using T = typename M::value_type;
  auto params = model.parameters();
  std::vector<std::vector<T>> at_report(params.size());
  std::vector<bool> seen(params.size(), false);
  std::vector<std::size_t> order;
  model.zero_grad(b);
  model.on_gradients_ready([&](std::size_t first, std::size_t count) {
    REQUIRE(first + count <= params.size());
    for (std::size_t k = first; k < first + count; ++k) {
      INFO("parameter " << params[k].name);
      CHECK_FALSE(seen[k]);
      seen[k] = true;
      order.push_back(k);
      at_report[k] = to_host(b, params[k].grad.flat());
    }
  });
  backward();
  model.on_gradients_ready({});
  for (const std::size_t k : order) {
    INFO("parameter " << params[k].name << " changed after it was reported ready");
    CHECK(to_host(b, params[k].grad.flat()) == at_report[k]);
  }
  return order;
}

/// The report order of a llama_model trunk's backward: final norm, each layer's nine tensors from the
/// last layer down, the embedding; `offset` shifts every index (a trunk inside a larger model).
inline std::vector<std::size_t> llama_backward_report_order(const llama_config& c, std::size_t offset = 0) {
  std::vector<std::size_t> order{offset + 1 + 9 * c.n_layers};
  for (std::size_t l = c.n_layers; l-- > 0;)
    for (std::size_t k = 0; k < 9; ++k) order.push_back(offset + 1 + 9 * l + k);
  order.push_back(offset);
  return order;
}

}  // namespace rlhf::test
