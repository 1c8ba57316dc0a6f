// What the trainer tests (tests/train/, tests/mpi/) share: a reward model without parameters that counts
// a planted token, and rankings whose labeler prefers more of that token.
#pragma once

#include <cstddef>
#include <cstdint>
#include <random>
#include <vector>

#include "rlhf/backends/memory.hpp"
#include "rlhf/models/concepts.hpp"
#include "rlhf/train/reward_trainer.hpp"

namespace rlhf::test {

/// A user-written reward model (no parameters): the number of `target` tokens in each row's real tokens.
template <class B, class T>
struct count_reward {
  using backend_type = B;
  using value_type = T;
  token_type target = 7;
  parameter_list<T, typename B::memory_space> parameters() { return {}; }
  void zero_grad(const B&) {}
  void scores(const B& b, backend_matrix<B, const token_type> tokens, backend_vector<B, const std::int32_t> lengths,
              backend_vector<B, T> out, forward_mode) {
    const auto t = to_host(b, tokens.flat());
    const auto l = to_host(b, lengths);
    std::vector<T> s(tokens.rows, T(0));
    for (std::size_t r = 0; r < tokens.rows; ++r)
      for (std::size_t c = 0; c < static_cast<std::size_t>(l[r]); ++c) s[r] += t[r * tokens.cols + c] == target ? T(1) : T(0);
    b.copy(vector_view<const T, host_space>{s.data(), s.size()}, out);
  }
  void scores_backward(const B&, backend_vector<B, const T>) {}
};

/// Prompts {1, x}; prompt p gets k_min + p % (k_max - k_min + 1) responses, response i of
/// length_min + i % (length_max - length_min + 1) random tokens (7 with probability 1/3); the labeler
/// prefers more 7s (equal counts tie).
inline std::vector<ranked_responses> planted_rankings(std::mt19937_64& g, std::size_t prompts, std::size_t k_min,
                                                      std::size_t k_max, std::size_t length_min = 4,
                                                      std::size_t length_max = 4) {
  std::uniform_int_distribution<int> tok(2, 10);
  std::vector<ranked_responses> out;
  for (std::size_t p = 0; p < prompts; ++p) {
    ranked_responses e;
    e.prompt = {1, tok(g)};
    const std::size_t k = k_min + p % (k_max - k_min + 1);
    std::vector<int> sevens;
    for (std::size_t i = 0; i < k; ++i) {
      std::vector<token_type> r(length_min + i % (length_max - length_min + 1));
      int n = 0;
      for (auto& t : r) {
        t = tok(g) <= 4 ? 7 : tok(g);
        n += t == 7;
      }
      e.responses.push_back(r);
      sevens.push_back(n);
    }
    for (std::size_t i = 0; i < k; ++i) {
      std::int32_t rank = 0;  // number of responses with strictly more sevens
      for (std::size_t j = 0; j < k; ++j) rank += sevens[j] > sevens[i];
      e.ranks.push_back(rank);
    }
    out.push_back(e);
  }
  return out;
}

}  // namespace rlhf::test
