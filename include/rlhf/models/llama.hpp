/// @file llama.hpp
/// @brief A Llama-architecture decoder over any complete backend: weights, full-sequence forward,
///        KV-cache decoding and sampling (the llama2.c model family, e.g. stories260K).
///
/// Architecture (Touvron et al. 2023, "LLaMA"; llama2.c `run.c`), per token row:
///
///     x = tok_embeddings[token]
///     for each layer l:
///       h  = rms_norm(x) * attention_norm_l
///       q, k, v = h wq_l^T, h wk_l^T, h wv_l^T;  q, k = rope(q, pos), rope(k, pos)
///       x += causal_gqa_attention(q, k, v) wo_l^T
///       h  = rms_norm(x) * ffn_norm_l
///       x += (silu(h w1_l^T) * (h w3_l^T)) w2_l^T
///     logits = (rms_norm(x) * norm) output^T         (output = tok_embeddings when shared)
///
/// Every step is one of the layer functions of rlhf/models/layers/ (so a backend may specialize each),
/// except the single-query attention of KV-cache decoding, which is written here over
/// `for_each_index`. Sampling runs on the host over the [B, V] logits of each step (downloaded; V
/// floats per row), following the llama2.c sampler step by step (its xorshift* generator, float
/// softmax, multinomial and nucleus sampling), so a batch of one is sampled the way the reference
/// program samples.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <random>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include "rlhf/backends/checks.hpp"
#include "rlhf/backends/concepts.hpp"
#include "rlhf/backends/memory.hpp"
#include "rlhf/backends/view.hpp"
#include "rlhf/error.hpp"
#include "rlhf/models/layers/attention.hpp"
#include "rlhf/models/layers/embedding.hpp"
#include "rlhf/models/layers/linear.hpp"
#include "rlhf/models/layers/rms_norm.hpp"
#include "rlhf/models/layers/rope.hpp"
#include "rlhf/models/layers/swiglu.hpp"
#include "rlhf/models/llama2c_checkpoint.hpp"
#include "rlhf/models/llama_config.hpp"
#include "rlhf/models/parameters.hpp"

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
  std::uint64_t seed = 1;       ///< seeds the generators: row r starts from splitmix64(seed, r)

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

// x += y, element-wise (residual connections).
struct llama_add {
  template <class T>
  RLHF_HOST_DEVICE T operator()(T a, T b) const {
    return a + b;
  }
};

// Counts positions outside [0, limit).
struct llama_count_bad_positions {
  std::size_t limit = 0;
  RLHF_HOST_DEVICE std::size_t operator()(std::int32_t p) const {
    return (p < 0 || static_cast<std::size_t>(p) >= limit) ? std::size_t(1) : std::size_t(0);
  }
};

// Writes the new key and value of row r at its position: cache row r * seq_len + positions[r].
template <class T, class S>
struct llama_cache_store {
  matrix_view<const T, S> k, v;  // [B, kv_dim]
  vector_view<const std::int32_t, S> positions;
  matrix_view<T, S> k_cache, v_cache;  // [B * seq_len, kv_dim]
  std::size_t seq_len;
  RLHF_HOST_DEVICE void operator()(std::size_t i) const {
    const std::size_t r = i / k.cols, c = i - r * k.cols;
    const std::size_t row = r * seq_len + static_cast<std::size_t>(positions[r]);
    k_cache(row, c) = k(r, c);
    v_cache(row, c) = v(r, c);
  }
};

// Attention of one new query per row over the cached keys 0..positions[r] (Vaswani et al. 2017, eq. 1,
// with the causal mask implicit: only past and current keys are cached). One index per (row, head);
// the scores go to a [B * Hq, seq_len] scratch row; max-subtracted softmax; dot products and sums in
// double, as the full-sequence attention does.
template <class T, class S>
struct llama_decode_attention {
  matrix_view<const T, S> q;                    // [B, Hq * hd]
  matrix_view<const T, S> k_cache, v_cache;     // [B * seq_len, Hkv * hd]
  vector_view<const std::int32_t, S> positions; // [B]
  matrix_view<T, S> scores;                     // [B * Hq, seq_len] scratch
  matrix_view<T, S> out;                        // [B, Hq * hd]
  std::size_t seq_len, n_heads, group, head_dim;
  double scale;

  RLHF_HOST_DEVICE void operator()(std::size_t idx) const {
    const std::size_t r = idx / n_heads, h = idx - r * n_heads;
    const std::size_t qc = h * head_dim, kc = (h / group) * head_dim;
    const std::size_t n = static_cast<std::size_t>(positions[r]) + 1;
    const T* qrow = q.data + r * q.cols + qc;
    T* s = scores.data + idx * scores.cols;
    double mx = -1e300;
    for (std::size_t t = 0; t < n; ++t) {
      const T* krow = k_cache.data + (r * seq_len + t) * k_cache.cols + kc;
      double dot = 0.0;
      for (std::size_t i = 0; i < head_dim; ++i) dot += static_cast<double>(qrow[i]) * static_cast<double>(krow[i]);
      const double sc = dot * scale;
      s[t] = static_cast<T>(sc);
      mx = sc > mx ? sc : mx;
    }
    double sum = 0.0;
    for (std::size_t t = 0; t < n; ++t) {
      const double e = std::exp(static_cast<double>(s[t]) - mx);
      s[t] = static_cast<T>(e);
      sum += e;
    }
    T* orow = out.data + r * out.cols + qc;
    for (std::size_t i = 0; i < head_dim; ++i) {
      double acc = 0.0;
      for (std::size_t t = 0; t < n; ++t) {
        acc += static_cast<double>(s[t]) * static_cast<double>(v_cache.data[(r * seq_len + t) * v_cache.cols + kc + i]);
      }
      orow[i] = static_cast<T>(acc / sum);
    }
  }
};

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

/// Per-layer key and value cache for incremental decoding of `batch` rows, plus the scratch buffers of
/// one decode step. Layer l's keys are a [batch * seq_len, kv_dim] matrix: row r's position p lives at
/// row r * seq_len + p.
template <class B, class T>
class llama_kv_cache {
 public:
  /// Allocates the cache for `batch` rows of a model with configuration `c` (contents undefined until
  /// written by decode steps).
  /// @param b the backend whose memory holds the cache
  /// @param c the model's configuration
  /// @param batch number of rows decoded together (> 0)
  /// @throws rlhf::invalid_argument on an invalid configuration or batch 0
  llama_kv_cache(const B& b, const llama_config& c, std::size_t batch) : config_(c), batch_(batch) {
    c.validate("rlhf::llama_kv_cache");
    if (batch == 0) detail::throw_argument_error("rlhf::llama_kv_cache", "batch", "a value > 0", "0");
    for (std::size_t l = 0; l < c.n_layers; ++l) {
      keys_.push_back(allocate<T>(b, batch * c.seq_len, c.kv_dim()));
      values_.push_back(allocate<T>(b, batch * c.seq_len, c.kv_dim()));
    }
    x_ = allocate<T>(b, batch, c.dim);
    xb_ = allocate<T>(b, batch, c.dim);
    q_ = allocate<T>(b, batch, c.dim);
    att_ = allocate<T>(b, batch, c.dim);
    k_ = allocate<T>(b, batch, c.kv_dim());
    v_ = allocate<T>(b, batch, c.kv_dim());
    hb_ = allocate<T>(b, batch, c.hidden_dim);
    hb2_ = allocate<T>(b, batch, c.hidden_dim);
    scores_ = allocate<T>(b, batch * c.n_heads, c.seq_len);
  }

  std::size_t batch() const { return batch_; }                 ///< rows
  const llama_config& config() const { return config_; }      ///< the model configuration it was made for
  /// Layer l's keys [batch * seq_len, kv_dim].
  backend_matrix<B, T> keys(std::size_t layer) { return keys_.at(layer).view(); }
  /// Layer l's values [batch * seq_len, kv_dim].
  backend_matrix<B, T> values(std::size_t layer) { return values_.at(layer).view(); }

 private:
  template <class, class>
  friend class llama_model;
  llama_config config_;
  std::size_t batch_;
  std::vector<buffer_t<B, T>> keys_, values_;
  buffer_t<B, T> x_, xb_, q_, att_, k_, v_, hb_, hb2_, scores_;
};

/// A Llama-architecture decoder whose weights live in backend B's memory as T (float or double).
///
/// Parameters (stable names, in this order): "tok_embeddings" [V, D]; per layer i
/// "layers.i.attention_norm" [1, D], "layers.i.attention.wq" [D, D], ".wk" [kv_dim, D], ".wv"
/// [kv_dim, D], ".wo" [D, D], "layers.i.ffn_norm" [1, D], "layers.i.feed_forward.w1" [F, D], ".w2"
/// [D, F], ".w3" [F, D]; "norm" [1, D]; "output" [V, D] unless the classifier is shared. Every matrix
/// is [out, in] (y = x W^T), as llama2.c stores it.
///
/// @tparam B a complete backend (rlhf::complete_backend)
/// @tparam T float or double
template <class B, class T>
class llama_model {
  static_assert(std::is_floating_point_v<T>, "rlhf::llama_model: T must be float or double");

 public:
  using backend_type = B;
  using value_type = T;
  using space_type = typename B::memory_space;

  /// Names of the per-layer tensors, in parameter order.
  static constexpr const char* layer_tensor_names[9] = {"attention_norm", "attention.wq", "attention.wk",
                                                        "attention.wv",   "attention.wo", "ffn_norm",
                                                        "feed_forward.w1", "feed_forward.w2", "feed_forward.w3"};

  /// A model of configuration `config` with every weight matrix zero and every norm weight one (an
  /// identity RMSNorm), gradients zero. Fill it with init_random, a checkpoint or parameters().
  /// @throws rlhf::invalid_argument when the configuration is invalid
  llama_model(const B& b, const llama_config& config) : config_(config) {
    detail::check_scan_backend<B>();
    detail::check_blas_backend<B>();
    config.validate("rlhf::llama_model");
    const std::size_t D = config.dim, F = config.hidden_dim, V = config.vocab_size, kv = config.kv_dim();
    add(b, "tok_embeddings", V, D, T(0));
    for (std::size_t l = 0; l < config.n_layers; ++l) {
      const std::string p = "layers." + std::to_string(l) + ".";
      const std::size_t shapes[9][2] = {{1, D}, {D, D}, {kv, D}, {kv, D}, {D, D}, {1, D}, {F, D}, {D, F}, {F, D}};
      for (std::size_t k = 0; k < 9; ++k) {
        add(b, p + layer_tensor_names[k], shapes[k][0], shapes[k][1], (k == 0 || k == 5) ? T(1) : T(0));
      }
    }
    add(b, "norm", 1, D, T(1));
    if (!config.shared_classifier) add(b, "output", V, D, T(0));
  }

  /// The configuration.
  const llama_config& config() const { return config_; }

  /// Fills every weight matrix with N(0, stddev^2) draws from a generator seeded with `seed` (drawn on
  /// the host in parameter order, so every backend gets the same model) and every norm weight with
  /// 1 + N(0, norm_stddev^2).
  void init_random(const B& b, std::uint64_t seed, double stddev = 0.02, double norm_stddev = 0.0) {
    detail::check_non_negative("rlhf::llama_model::init_random", "stddev", stddev);
    detail::check_non_negative("rlhf::llama_model::init_random", "norm_stddev", norm_stddev);
    std::mt19937_64 g(seed);
    std::normal_distribution<double> d(0.0, 1.0);
    for (auto& t : tensors_) {
      const bool is_norm = t.value.rows() == 1 && t.name.find("norm") != std::string::npos;
      std::vector<T> host(t.value.size());
      for (auto& x : host) x = static_cast<T>(is_norm ? 1.0 + norm_stddev * d(g) : stddev * d(g));
      b.copy(vector_view<const T, host_space>{host.data(), host.size()}, t.value.view().flat());
    }
  }

  /// The parameters and their gradient buffers, in the fixed order of the class comment.
  parameter_list<T, space_type> parameters() {
    parameter_list<T, space_type> list;
    for (auto& t : tensors_) list.push_back({t.name, t.value.view(), t.grad.view()});
    return list;
  }

  /// Sets every gradient to zero.
  void zero_grad(const B& b) {
    for (auto& t : tensors_) b.fill(t.grad.view().flat(), T(0));
  }

  /// A parameter's value by name (for tests and checkpoints). @throws rlhf::invalid_argument if unknown.
  backend_matrix<B, T> parameter(std::string_view name) {
    for (auto& t : tensors_)
      if (t.name == name) return t.value.view();
    detail::throw_argument_error("rlhf::llama_model::parameter", "name", "the name of a parameter",
                                 "'" + std::string(name) + "'");
  }

  /// Logits of every position of a batch of sequences (teacher forcing): row b*T + t of `logits` holds
  /// the next-token logits after tokens[b, 0..t].
  /// @param b the backend
  /// @param tokens [B, T] token ids in [0, V); T <= seq_len (position t is t)
  /// @param lengths [B] valid tokens per row, each in [0, T] (keys beyond are masked; logits of padded
  ///        positions are computed but meaningless), or empty for all T
  /// @param logits out [B*T, V]
  /// @throws rlhf::invalid_argument on a shape mismatch, T > seq_len, an id outside [0, V) or a bad length
  void forward(const B& b, backend_matrix<B, const token_type> tokens, backend_vector<B, const std::int32_t> lengths,
               backend_matrix<B, T> logits) {
    constexpr std::string_view fn = "rlhf::llama_model::forward";
    const llama_config& c = config_;
    if (tokens.cols > c.seq_len) {
      detail::throw_argument_error(fn, "tokens", "at most seq_len = " + std::to_string(c.seq_len) + " columns",
                                   shape_string(tokens));
    }
    const std::size_t N = tokens.rows * tokens.cols, D = c.dim, kv = c.kv_dim(), F = c.hidden_dim;
    detail::check_shape(fn, "logits", logits, N, c.vocab_size, "([B*T, vocab_size])");
    if (!lengths.empty() || lengths.data != nullptr) {
      detail::check_size(fn, "lengths", lengths, tokens.rows, "(one per row of 'tokens', or empty for all)");
    }
    check_tokens(b, fn, tokens.flat());
    if (N == 0) return;
    std::vector<std::int32_t> pos_host(N);
    for (std::size_t i = 0; i < N; ++i) pos_host[i] = static_cast<std::int32_t>(i % tokens.cols);
    auto positions = to_backend(b, pos_host);
    const backend_vector<B, const std::int32_t> pos = positions.view().flat();
    auto x = allocate<T>(b, N, D), xb = allocate<T>(b, N, D), q = allocate<T>(b, N, D), att = allocate<T>(b, N, D);
    auto k = allocate<T>(b, N, kv), v = allocate<T>(b, N, kv), hb = allocate<T>(b, N, F), hb2 = allocate<T>(b, N, F);
    const backend_matrix<B, T> no_probs{};
    const backend_vector<B, T> no_inv_rms{};
    embedding_forward(b, cview(0), tokens.flat(), x.view());
    for (std::size_t l = 0; l < c.n_layers; ++l) {
      rms_norm_forward(b, ro(x), layer(l, 0).flat(), xb.view(), no_inv_rms, c.norm_eps);
      linear_forward(b, ro(xb), layer(l, 1), q.view());
      linear_forward(b, ro(xb), layer(l, 2), k.view());
      linear_forward(b, ro(xb), layer(l, 3), v.view());
      rope_forward(b, ro(q), pos, c.head_dim(), q.view(), c.rope_theta);
      rope_forward(b, ro(k), pos, c.head_dim(), k.view(), c.rope_theta);
      causal_attention_forward(b, ro(q), ro(k), ro(v), tokens.rows, c.n_heads, c.n_kv_heads, att.view(),
                               no_probs, lengths);
      linear_forward(b, ro(att), layer(l, 4), xb.view());
      b.transform(x.view().flat(), detail::llama_add{}, ro(x).flat(), ro(xb).flat());
      rms_norm_forward(b, ro(x), layer(l, 5).flat(), xb.view(), no_inv_rms, c.norm_eps);
      linear_forward(b, ro(xb), layer(l, 6), hb.view());
      linear_forward(b, ro(xb), layer(l, 8), hb2.view());
      swiglu_forward(b, ro(hb), ro(hb2), hb.view());
      linear_forward(b, ro(hb), layer(l, 7), xb.view());
      b.transform(x.view().flat(), detail::llama_add{}, ro(x).flat(), ro(xb).flat());
    }
    rms_norm_forward(b, ro(x), final_norm().flat(), xb.view(), no_inv_rms, c.norm_eps);
    linear_forward(b, ro(xb), classifier(), logits);
  }

  /// One incremental decoding step: feeds token tokens[r] at position positions[r] for every row r of
  /// the cache, stores its key and value there, and writes the next-token logits. Positions 0 ..
  /// positions[r] - 1 of row r must have been fed before (the cache holds their keys and values).
  /// @param b the backend
  /// @param cache the cache (its batch is B)
  /// @param tokens [B] token ids in [0, V)
  /// @param positions [B] positions in [0, seq_len)
  /// @param logits out [B, V]
  /// @throws rlhf::invalid_argument on a size mismatch, an id outside [0, V), a position outside
  ///         [0, seq_len) or a cache made for another configuration
  void decode_step(const B& b, llama_kv_cache<B, T>& cache, backend_vector<B, const token_type> tokens,
                   backend_vector<B, const std::int32_t> positions, backend_matrix<B, T> logits) {
    constexpr std::string_view fn = "rlhf::llama_model::decode_step";
    const llama_config& c = config_;
    const llama_config& cc = cache.config();
    if (cc.dim != c.dim || cc.n_layers != c.n_layers || cc.n_heads != c.n_heads || cc.n_kv_heads != c.n_kv_heads ||
        cc.seq_len != c.seq_len || cc.hidden_dim != c.hidden_dim) {
      detail::throw_argument_error(fn, "cache", "a cache made for this model's configuration",
                                   "a cache for another configuration");
    }
    const std::size_t R = cache.batch();
    detail::check_size(fn, "tokens", tokens, R, "(the cache's batch)");
    detail::check_size(fn, "positions", positions, R, "(the cache's batch)");
    detail::check_shape(fn, "logits", logits, R, c.vocab_size, "([batch, vocab_size])");
    check_tokens(b, fn, tokens);
    const std::size_t bad =
        b.transform_reduce(std::size_t(0), detail::add_sizes{}, detail::llama_count_bad_positions{c.seq_len}, positions);
    if (bad != 0) {
      detail::throw_argument_error(fn, "positions", "positions in [0, seq_len = " + std::to_string(c.seq_len) + ")",
                                   std::to_string(bad) + " outside");
    }
    auto x = cache.x_.view(), xb = cache.xb_.view(), q = cache.q_.view(), att = cache.att_.view();
    auto k = cache.k_.view(), v = cache.v_.view(), hb = cache.hb_.view(), hb2 = cache.hb2_.view();
    const backend_vector<B, T> no_inv_rms{};
    using S = space_type;
    embedding_forward(b, cview(0), tokens, x);
    for (std::size_t l = 0; l < c.n_layers; ++l) {
      rms_norm_forward(b, as_const(x), layer(l, 0).flat(), xb, no_inv_rms, c.norm_eps);
      linear_forward(b, as_const(xb), layer(l, 1), q);
      linear_forward(b, as_const(xb), layer(l, 2), k);
      linear_forward(b, as_const(xb), layer(l, 3), v);
      rope_forward(b, as_const(q), positions, c.head_dim(), q, c.rope_theta);
      rope_forward(b, as_const(k), positions, c.head_dim(), k, c.rope_theta);
      auto kc = cache.keys(l), vc = cache.values(l);
      b.for_each_index(R * c.kv_dim(), detail::llama_cache_store<T, S>{as_const(k), as_const(v), positions, kc, vc,
                                                                      c.seq_len});
      b.for_each_index(R * c.n_heads,
                       detail::llama_decode_attention<T, S>{as_const(q), as_const(kc), as_const(vc), positions,
                                                            cache.scores_.view(), att, c.seq_len, c.n_heads,
                                                            c.n_heads / c.n_kv_heads, c.head_dim(),
                                                            1.0 / std::sqrt(static_cast<double>(c.head_dim()))});
      linear_forward(b, as_const(att), layer(l, 4), xb);
      b.transform(x.flat(), detail::llama_add{}, as_const(x).flat(), as_const(xb).flat());
      rms_norm_forward(b, as_const(x), layer(l, 5).flat(), xb, no_inv_rms, c.norm_eps);
      linear_forward(b, as_const(xb), layer(l, 6), hb);
      linear_forward(b, as_const(xb), layer(l, 8), hb2);
      swiglu_forward(b, as_const(hb), as_const(hb2), hb);
      linear_forward(b, as_const(hb), layer(l, 7), xb);
      b.transform(x.flat(), detail::llama_add{}, as_const(x).flat(), as_const(xb).flat());
    }
    rms_norm_forward(b, as_const(x), final_norm().flat(), xb, no_inv_rms, c.norm_eps);
    linear_forward(b, as_const(xb), classifier(), logits);
  }

  /// Generates continuations of several prompts at once with the KV cache: the prompts are fed token by
  /// token (like the reference program), then up to `max_new_tokens` tokens per row are sampled (see
  /// sampling_options). Rows stop independently at the stop token.
  /// @param b the backend
  /// @param prompts non-empty prompts (token ids in [0, V)), e.g. {tokenizer::bos_id} to start a story
  /// @param max_new_tokens tokens to add per row (fewer if the stop token comes first); each prompt's
  ///        length + max_new_tokens - 1 must be <= seq_len (the last token is never fed)
  /// @param options temperature, top-k, top-p, stop token, seed
  /// @return each row's prompt followed by its new tokens (the stop token included when produced)
  /// @throws rlhf::invalid_argument on an empty prompt, an id outside [0, V), a too long request, or a
  ///         bad option
  std::vector<std::vector<token_type>> generate(const B& b, const std::vector<std::vector<token_type>>& prompts,
                                                std::size_t max_new_tokens, const sampling_options& options = {}) {
    constexpr std::string_view fn = "rlhf::llama_model::generate";
    const llama_config& c = config_;
    detail::check_non_negative(fn, "options.temperature", options.temperature);
    if (!std::isfinite(options.top_p)) detail::throw_argument_error(fn, "options.top_p", "a finite value", "non-finite");
    if (prompts.empty()) detail::throw_argument_error(fn, "prompts", "at least one prompt", "none");
    for (std::size_t r = 0; r < prompts.size(); ++r) {
      const auto& p = prompts[r];
      const std::string arg = "prompts[" + std::to_string(r) + "]";
      if (p.empty()) detail::throw_argument_error(fn, arg, "at least one token (e.g. BOS)", "an empty prompt");
      for (const token_type t : p) {
        if (t < 0 || static_cast<std::size_t>(t) >= c.vocab_size) {
          detail::throw_argument_error(fn, arg, "ids in [0, " + std::to_string(c.vocab_size) + ")", std::to_string(t));
        }
      }
      if (p.size() + max_new_tokens > c.seq_len + 1) {
        detail::throw_argument_error(fn, "max_new_tokens",
                                     "at most seq_len + 1 - prompt length = " +
                                         std::to_string(c.seq_len + 1 - std::min(p.size(), c.seq_len + 1)) + " for " + arg,
                                     std::to_string(max_new_tokens));
      }
    }
    std::vector<std::vector<token_type>> seqs = prompts;
    if (max_new_tokens == 0) return seqs;
    const std::size_t R = prompts.size(), V = c.vocab_size;
    llama_kv_cache<B, T> cache(b, c, R);
    auto tok_buf = allocate<token_type>(b, R), pos_buf = allocate<std::int32_t>(b, R);
    auto logits = allocate<T>(b, R, V);
    std::vector<token_type> tok_host(R);
    std::vector<std::int32_t> pos_host(R);
    std::vector<std::size_t> fed(R, 0);  // tokens of row r fed so far
    std::vector<bool> done(R, false);
    std::vector<std::uint64_t> state(R);
    for (std::size_t r = 0; r < R; ++r) state[r] = detail::llama_row_state(options.seed, r);
    std::vector<float> probs;
    std::vector<std::pair<float, token_type>> order;
    std::size_t active = R;
    while (active > 0) {
      for (std::size_t r = 0; r < R; ++r) {
        // A finished row re-feeds its last token at its last position: harmless, keeps the batch shape.
        const std::size_t i = done[r] ? fed[r] - 1 : fed[r];
        tok_host[r] = seqs[r][i];
        pos_host[r] = static_cast<std::int32_t>(i);
      }
      b.copy(vector_view<const token_type, host_space>{tok_host.data(), R}, tok_buf.view().flat());
      b.copy(vector_view<const std::int32_t, host_space>{pos_host.data(), R}, pos_buf.view().flat());
      decode_step(b, cache, tok_buf.view().flat(), pos_buf.view().flat(), logits.view());
      std::vector<T> host_logits;  // downloaded only when some row samples
      for (std::size_t r = 0; r < R; ++r) {
        if (done[r]) continue;
        ++fed[r];
        if (fed[r] < prompts[r].size()) continue;  // still reading the prompt
        if (host_logits.empty()) host_logits = to_host(b, logits.view());
        const token_type next = detail::sample_token(host_logits.data() + r * V, V, options, state[r], probs, order);
        seqs[r].push_back(next);
        if (next == options.stop_token || seqs[r].size() - prompts[r].size() == max_new_tokens) {
          done[r] = true;
          --active;
        }
      }
    }
    return seqs;
  }

  /// Generates a continuation of one prompt (see the batched overload).
  /// @return the prompt followed by the new tokens
  std::vector<token_type> generate(const B& b, const std::vector<token_type>& prompt, std::size_t max_new_tokens,
                                   const sampling_options& options = {}) {
    return generate(b, std::vector<std::vector<token_type>>{prompt}, max_new_tokens, options).front();
  }

 private:
  struct tensor {
    std::string name;
    buffer_t<B, T> value, grad;
  };
  llama_config config_;
  std::vector<tensor> tensors_;

  // Token ids must index the embedding (one reduction over the ids).
  void check_tokens(const B& b, std::string_view fn, backend_vector<B, const token_type> tokens) const {
    if (tokens.size == 0) return;
    const std::size_t bad = b.transform_reduce(std::size_t(0), detail::add_sizes{},
                                               detail::embedding_count_bad_tokens{config_.vocab_size}, tokens);
    if (bad != 0) {
      detail::throw_argument_error(fn, "tokens", "ids in [0, vocab_size = " + std::to_string(config_.vocab_size) + ")",
                                   std::to_string(bad) + " id(s) outside");
    }
  }

  void add(const B& b, std::string name, std::size_t rows, std::size_t cols, T init) {
    tensors_.push_back({std::move(name), allocate_filled<T>(b, rows, cols, init), allocate_filled<T>(b, rows, cols, T(0))});
  }

  template <class Buf>
  static auto ro(Buf& buf) {
    return as_const(buf.view());
  }
  backend_matrix<B, const T> cview(std::size_t index) { return as_const(tensors_[index].value.view()); }
  // Tensor k (0..8, layer_tensor_names order) of layer l.
  backend_matrix<B, const T> layer(std::size_t l, std::size_t k) { return cview(1 + 9 * l + k); }
  backend_matrix<B, const T> final_norm() { return cview(1 + 9 * config_.n_layers); }
  backend_matrix<B, const T> classifier() {
    return config_.shared_classifier ? cview(0) : cview(2 + 9 * config_.n_layers);
  }

};

/// Loads a llama2.c checkpoint (see rlhf/models/llama2c_checkpoint.hpp) into a model on backend b,
/// converting the fp32 weights to T.
/// @tparam T float (default) or double
/// @tparam B the backend type (deduced)
/// @param b the backend
/// @param path the checkpoint file, e.g. examples/data/stories260K.bin
/// @return the model; call as `load_llama2c(b, path)` or `load_llama2c<double>(b, path)`
/// @throws rlhf::invalid_argument naming the file when it is unreadable, malformed or truncated
template <class T = float, class B>
llama_model<B, T> load_llama2c(const B& b, const std::string& path) {
  const llama2c_weights w = read_llama2c(path);
  const llama_config& c = w.config;
  llama_model<B, T> model(b, c);
  const auto params = model.parameters();
  auto upload = [&](std::size_t index, const std::vector<float>& src, std::size_t offset) {
    const auto dst = params[index].value.flat();
    std::vector<T> host(src.begin() + static_cast<std::ptrdiff_t>(offset),
                        src.begin() + static_cast<std::ptrdiff_t>(offset + dst.size));
    b.copy(vector_view<const T, host_space>{host.data(), host.size()}, dst);
  };
  upload(0, w.token_embedding, 0);
  const std::vector<float>* per_layer[9] = {&w.rms_att, &w.wq, &w.wk, &w.wv, &w.wo, &w.rms_ffn, &w.w1, &w.w2, &w.w3};
  for (std::size_t l = 0; l < c.n_layers; ++l) {
    for (std::size_t k = 0; k < 9; ++k) {
      const std::size_t index = 1 + 9 * l + k;
      upload(index, *per_layer[k], l * params[index].value.size());
    }
  }
  upload(1 + 9 * c.n_layers, w.rms_final, 0);
  if (!c.shared_classifier) upload(2 + 9 * c.n_layers, w.wcls, 0);
  return model;
}

}  // namespace rlhf
