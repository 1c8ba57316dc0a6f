// Shared by the optimizer tests: a parameter list over backend buffers, as a model owns them.
#pragma once

#include <random>
#include <string>
#include <vector>

#include "rlhf/models/parameters.hpp"
#include "test_support.hpp"

namespace rlhf::test {

// One tensor of a test model: name and shape.
struct tensor_spec {
  std::string name;
  std::size_t rows, cols;
};

// A parameter list over buffers allocated with rlhf::allocate in the backend's memory, as a model owns them.
template <class B, class T>
struct owned_params {
  std::vector<rlhf::buffer_t<B, T>> values, grads;
  rlhf::parameter_list<T, typename B::memory_space> list;

  std::vector<std::vector<T>> host_values(const B& b) const {
    std::vector<std::vector<T>> out;
    for (const auto& p : list) out.push_back(rlhf::to_host(b, p.value));
    return out;
  }
  std::vector<std::vector<T>> host_grads(const B& b) const {
    std::vector<std::vector<T>> out;
    for (const auto& p : list) out.push_back(rlhf::to_host(b, p.grad));
    return out;
  }
  void set_grads(const B& b, const std::vector<std::vector<T>>& g) {
    for (std::size_t i = 0; i < list.size(); ++i) {
      b.copy(rlhf::vector_view<const T, rlhf::host_space>{g[i].data(), g[i].size()}, list[i].grad.flat());
    }
  }
};

template <class T, class B>
owned_params<B, T> make_params(const B& b, const std::vector<tensor_spec>& specs,
                               const std::vector<std::vector<T>>& values, const std::vector<std::vector<T>>& grads) {
  owned_params<B, T> m;
  for (std::size_t i = 0; i < specs.size(); ++i) {
    m.values.push_back(rlhf::to_backend(b, values[i], specs[i].rows, specs[i].cols));
    m.grads.push_back(rlhf::to_backend(b, grads[i], specs[i].rows, specs[i].cols));
  }
  for (std::size_t i = 0; i < specs.size(); ++i) {
    m.list.push_back({specs[i].name, m.values[i].view(), m.grads[i].view()});
  }
  return m;
}

// Random values for every tensor of `specs`.
template <class T>
std::vector<std::vector<T>> random_tensors(std::mt19937_64& g, const std::vector<tensor_spec>& specs, double lo = -1.0,
                                           double hi = 1.0) {
  std::vector<std::vector<T>> out;
  for (const auto& s : specs) out.push_back(rlhf::test::uniform<T>(g, s.rows * s.cols, lo, hi));
  return out;
}

/// The small model most optimizer tests use: an embedding, a norm vector and a head.
inline const std::vector<tensor_spec> small_model = {{"embed", 3, 4}, {"norm.weight", 1, 4}, {"head", 2, 4}};

}  // namespace rlhf::test
