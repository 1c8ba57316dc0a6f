/// @file sampling.hpp
/// @brief How a policy picks each new token: sampling options and the host-side sampler (temperature,
///        top-k, nucleus), following the llama2.c reference program's sampler step by step.
///
/// The sampler runs on the host over one row of next-token logits: logits / temperature, a float
/// softmax, optional top-k truncation, then nucleus (top-p) or multinomial sampling driven by llama2.c's
/// xorshift* generator, so a seeded batch of one draws exactly what the reference program draws.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <utility>
#include <vector>

#include "rlhf/backends/view.hpp"

namespace rlhf {

/// How generate() picks each new token.
///
/// Order of operations (llama2.c's sampler, plus top-k): logits / temperature, softmax, keep the top_k
/// most probable tokens (if top_k > 0), then nucleus (top-p) sampling (if 0 < top_p < 1), else sampling
/// from the whole (kept) distribution. The defaults sample from the model's distribution unchanged,
/// as InstructGPT's PPO rollouts do (Ouyang et al. 2022, §3.5; temperature 1, no truncation).
struct sampling_options {
  double temperature = 1.0;     ///< 0 picks the most probable token (greedy, first on ties); else > 0
  std::size_t top_k = 0;        ///< keep the k most probable tokens; 0 keeps all
  double top_p = 1.0;           ///< nucleus mass in (0, 1); values <= 0 or >= 1 turn it off (as llama2.c)
  token_type stop_token = -1;   ///< a row stops after producing it (it is kept in the output); -1: none
  std::uint64_t seed = 1;       ///< seeds the generators: row r starts from splitmix64(seed, first_row + r)
  /// Index of this batch's first row in a larger batch: a rank sampling rows [first_row, first_row + R)
  /// of a global batch draws exactly what one process sampling the whole batch draws for them.
  std::uint64_t first_row = 0;

  /// Greedy decoding (temperature 0).
  static sampling_options greedy() {
    sampling_options o;
    o.temperature = 0.0;
    return o;
  }
  /// The llama2.c reference program's defaults: temperature 1, top-p 0.9 (and it stops on BOS).
  static sampling_options llama2c() {
    sampling_options o;
    o.top_p = 0.9;
    o.stop_token = 1;
    return o;
  }
};

namespace detail {

// llama2.c's xorshift* generator (run.c random_u32 / random_f32), so sampling with a seed reproduces
// the reference program's draws.
inline std::uint32_t llama2c_random_u32(std::uint64_t& state) {
  state ^= state >> 12;
  state ^= state << 25;
  state ^= state >> 27;
  return static_cast<std::uint32_t>((state * 0x2545F4914F6CDD1Dull) >> 32);
}
inline float llama2c_random_f32(std::uint64_t& state) {
  return static_cast<float>(llama2c_random_u32(state) >> 8) / 16777216.0f;
}

// The start state of row r's generator: the (r+1)-th output of splitmix64 (Steele et al. 2014) from
// `seed`, so neighbouring rows and seeds get unrelated streams (xorshift started from nearby small
// states gives correlated first draws). Never zero (xorshift's fixed point).
inline std::uint64_t llama_row_state(std::uint64_t seed, std::uint64_t row) {
  std::uint64_t z = seed + (row + 1) * 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  z ^= z >> 31;
  return z == 0 ? 0x9E3779B97F4A7C15ull : z;
}

// Picks one token from a row of logits (host memory) following sampling_options (see its comment).
// Probabilities in float, as the reference program computes them.
template <class T>
token_type sample_token(const T* logits, std::size_t vocab, const sampling_options& o, std::uint64_t& state,
                        std::vector<float>& probs, std::vector<std::pair<float, token_type>>& order) {
  if (o.temperature == 0.0) {
    std::size_t best = 0;
    for (std::size_t i = 1; i < vocab; ++i)
      if (logits[i] > logits[best]) best = i;
    return static_cast<token_type>(best);
  }
  probs.resize(vocab);
  const float temperature = static_cast<float>(o.temperature);
  float mx = static_cast<float>(logits[0]) / temperature;
  for (std::size_t i = 0; i < vocab; ++i) {
    probs[i] = static_cast<float>(logits[i]) / temperature;
    mx = std::max(mx, probs[i]);
  }
  float sum = 0.0f;
  for (std::size_t i = 0; i < vocab; ++i) {
    probs[i] = std::exp(probs[i] - mx);
    sum += probs[i];
  }
  for (std::size_t i = 0; i < vocab; ++i) probs[i] /= sum;
  const bool top_k = o.top_k > 0 && o.top_k < vocab;
  if (top_k) {
    // Keep the k most probable (ties broken by the smaller id); the others get probability 0.
    order.clear();
    for (std::size_t i = 0; i < vocab; ++i) order.emplace_back(probs[i], static_cast<token_type>(i));
    std::nth_element(order.begin(), order.begin() + static_cast<std::ptrdiff_t>(o.top_k) - 1, order.end(),
                     [](const auto& a, const auto& b) { return a.first > b.first || (a.first == b.first && a.second < b.second); });
    for (std::size_t j = o.top_k; j < vocab; ++j) probs[static_cast<std::size_t>(order[j].second)] = 0.0f;
  }
  const float coin = llama2c_random_f32(state);
  if (o.top_p > 0.0 && o.top_p < 1.0) {
    // llama2.c sample_topp: drop tokens below (1 - p) / (n - 1) (they cannot be in the nucleus), sort
    // descending, cut after the cumulative mass exceeds p, sample within the nucleus.
    const float topp = static_cast<float>(o.top_p);
    const float cutoff = (1.0f - topp) / static_cast<float>(vocab - 1);
    order.clear();
    for (std::size_t i = 0; i < vocab; ++i)
      if (probs[i] >= cutoff && probs[i] > 0.0f) order.emplace_back(probs[i], static_cast<token_type>(i));
    if (order.empty()) {  // only with top-k removing every token above the cutoff
      for (std::size_t i = 0; i < vocab; ++i)
        if (probs[i] > 0.0f) order.emplace_back(probs[i], static_cast<token_type>(i));
    }
    std::stable_sort(order.begin(), order.end(), [](const auto& a, const auto& b) { return a.first > b.first; });
    float cumulative = 0.0f;
    std::size_t last = order.size() - 1;
    for (std::size_t i = 0; i < order.size(); ++i) {
      cumulative += order[i].first;
      if (cumulative > topp) {
        last = i;
        break;
      }
    }
    const float r = coin * cumulative;
    float cdf = 0.0f;
    for (std::size_t i = 0; i <= last; ++i) {
      cdf += order[i].first;
      if (r < cdf) return order[i].second;
    }
    return order[last].second;
  }
  // llama2.c sample_mult (over the kept mass when top-k removed some).
  float total = 1.0f;
  if (top_k) {
    total = 0.0f;
    for (std::size_t i = 0; i < vocab; ++i) total += probs[i];
  }
  const float r = coin * total;
  float cdf = 0.0f;
  std::size_t last_kept = 0;
  for (std::size_t i = 0; i < vocab; ++i) {
    if (probs[i] > 0.0f) last_kept = i;
    cdf += probs[i];
    if (r < cdf) return static_cast<token_type>(i);
  }
  return static_cast<token_type>(top_k ? last_kept : vocab - 1);
}

}  // namespace detail

}  // namespace rlhf
