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
#include <stdexcept>
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
#include "rlhf/ops/token_logprobs.hpp"
#include "rlhf/models/concepts.hpp"
#include "rlhf/models/layers/attention.hpp"
#include "rlhf/models/layers/embedding.hpp"
#include "rlhf/models/layers/linear.hpp"
#include "rlhf/models/layers/rms_norm.hpp"
#include "rlhf/models/layers/rope.hpp"
#include "rlhf/models/layers/swiglu.hpp"
#include "rlhf/models/llama2c_checkpoint.hpp"
#include "rlhf/models/llama_config.hpp"
#include "rlhf/models/parameters.hpp"
#include "rlhf/models/sampling.hpp"

namespace rlhf {

namespace detail {

// x += y, element-wise (residual connections).
struct llama_add {
  template <class T>
  RLHF_HOST_DEVICE T operator()(T a, T b) const {
    return a + b;
  }
};

// Length of row r: lengths[r], or T when no lengths are given.
template <class S>
RLHF_HOST_DEVICE inline std::size_t llama_row_length(vector_view<const std::int32_t, S> lengths, std::size_t r,
                                                     std::size_t seq) {
  return lengths.data == nullptr ? seq : static_cast<std::size_t>(lengths[r]);
}

// Row n = (r, t) of the flattened batch predicts token t + 1 of row r: its target and whether it is
// valid (t + 1 < length of row r). Invalid rows get target 0 (never read by the log-prob functions).
template <class S>
struct llama_next_token_targets {
  matrix_view<const token_type, S> tokens;
  vector_view<const std::int32_t, S> lengths;
  vector_view<token_type, S> targets;
  vector_view<mask_type, S> valid;
  RLHF_HOST_DEVICE void operator()(std::size_t n) const {
    const std::size_t seq = tokens.cols, r = n / seq, t = n % seq;
    const bool ok = t + 1 < llama_row_length(lengths, r, seq);
    targets[n] = ok ? tokens(r, t + 1) : token_type(0);
    valid[n] = ok ? mask_type(1) : mask_type(0);
  }
};

// out(r, t) = per_row[r*T + t - 1] (the prediction of token t), 0 at t = 0: per-position results in the
// layout of the tokens.
template <class T, class S>
struct llama_shift_to_tokens {
  vector_view<const T, S> per_row;
  matrix_view<T, S> out;
  RLHF_HOST_DEVICE void operator()(std::size_t n) const {
    const std::size_t t = n % out.cols;
    out.data[n] = t == 0 ? T(0) : per_row[n - 1];
  }
};

// per_row[r*T + t] = d_out(r, t + 1), 0 for the last column: the inverse layout change, for gradients.
template <class T, class S>
struct llama_shift_from_tokens {
  matrix_view<const T, S> d_out;
  vector_view<T, S> per_row;
  RLHF_HOST_DEVICE void operator()(std::size_t n) const {
    const std::size_t t = n % d_out.cols;
    per_row[n] = t + 1 == d_out.cols ? T(0) : d_out.data[n + 1];
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

/// Options of llama_model::log_probs.
struct log_prob_options {
  /// Softmax temperature of the log-probs (the policy's sampling temperature; InstructGPT: 1).
  double temperature = 1.0;
  /// At most this many logits exist at once: rows are processed max_logits_elements / V at a time
  /// (at least one). 2^24 floats = 64 MiB.
  std::size_t max_logits_elements = std::size_t(1) << 24;
};

template <class B, class T>
class llama_model;

/// What a training pass keeps of each layer's attention for the backward (llama_model::set_attention_memory);
/// the gradients agree to rounding in every mode.
enum class attention_memory {
  /// Each layer's softmax, [B*Hq*T, T], which the backward reads (T times a layer's q in memory, per layer).
  per_layer_softmax,
  /// One softmax for all layers; the backward recomputes each layer's with one more attention forward: the
  /// same gradients bit for bit as per_layer_softmax.
  shared_softmax,
  /// Each layer's row logsumexps, [B*Hq*T] (rlhf::causal_attention_forward_logsumexp); the backward
  /// recomputes the probabilities from the scores (rlhf::causal_attention_backward_recompute): no T x T
  /// buffer at all, for one more score product per layer in the backward.
  logsumexp,
};

/// The intermediate results of a forward pass of llama_model's trunk (the transformer without its
/// head), owned by the caller of the pass so that several heads (a policy, a value head sharing its
/// trunk) can each keep their own. A training pass stores, per layer, the inputs of every layer
/// function's backward (RMSNorm inputs and 1/rms, q, k, v after rotation, the attention softmax, the
/// SwiGLU gate and up projections, ...): about `(8 D + 2 kv_dim + 3 F + 2 + Hq T) * B * T` values per
/// layer with attention_memory::per_layer_softmax, `(8 D + 2 kv_dim + 3 F + 2) * B * T` per layer plus one
/// `Hq T * B * T` softmax for all layers with shared_softmax, and `(8 D + 2 kv_dim + 3 F + 2 + Hq) * B * T`
/// per layer with logsumexp (llama_model::set_attention_memory). An inference pass reuses one layer's
/// buffers for every layer and stores no softmax.
/// Buffers are kept between passes of the same shape.
template <class B, class T>
class llama_activations {
 public:
  llama_activations() = default;
  /// Whether the latest pass recorded what a backward needs (a training pass).
  bool recorded() const { return recorded_; }
  /// Rows B and columns T of the latest pass.
  std::size_t batch() const { return batch_; }
  std::size_t seq() const { return seq_; }
  /// The trunk's output of the latest pass: [B*T, D] hidden states after the final RMSNorm.
  backend_matrix<B, const T> hidden() const { return as_const(hidden_.view()); }
  /// The lengths given to the latest pass ([B]), or an empty view when none were given.
  backend_vector<B, const std::int32_t> lengths() const {
    return has_lengths_ ? as_const(lengths_.view().flat()) : backend_vector<B, const std::int32_t>{};
  }
  /// The T values held for the latest pass, all buffers together (memory planning: times sizeof(T)).
  std::size_t stored_values() const {
    std::size_t n = shared_probs_.view().size() + x_final_.view().size() + inv_rms_final_.view().size() +
                    hidden_.view().size() + proj_.view().size();
    for (const auto& s : layers_) {
      for (const auto* buf : {&s.x_in, &s.inv_rms_att, &s.xb_att, &s.q, &s.k, &s.v, &s.probs, &s.logsumexp, &s.att,
                              &s.x_mid, &s.inv_rms_ffn, &s.xb_ffn, &s.gate, &s.up, &s.act})
        n += buf->view().size();
    }
    return n;
  }

 private:
  friend class llama_model<B, T>;
  struct layer_buffers {
    buffer_t<B, T> x_in, inv_rms_att, xb_att, q, k, v, probs, logsumexp, att, x_mid, inv_rms_ffn, xb_ffn, gate, up,
        act;
  };
  std::vector<layer_buffers> layers_;
  buffer_t<B, T> shared_probs_;  // the one attention softmax of an attention_memory::shared_softmax pass
  attention_memory attention_memory_ = attention_memory::per_layer_softmax;  // the mode of the latest prepare
  buffer_t<B, token_type> tokens_;
  buffer_t<B, std::int32_t> positions_, lengths_;
  bool has_lengths_ = false;
  buffer_t<B, T> x_final_, inv_rms_final_, hidden_, proj_;
  std::size_t batch_ = 0, seq_ = 0, slots_ = 0;
  bool recorded_ = false;
};

namespace detail {

// The per-row results of the language-model head that its backward needs: targets (next tokens), their
// validity, log-probs, logsumexp and entropy of each row of the flattened batch.
template <class B, class T>
struct llama_lm_head_state {
  buffer_t<B, token_type> targets;
  buffer_t<B, mask_type> valid;
  buffer_t<B, T> logprob, logsumexp, entropy;
  log_prob_options options;
  bool recorded = false;

  void prepare(const B& b, std::size_t n) {
    if (targets.view().size() == n && n != 0) return;
    targets = allocate<token_type>(b, n);
    valid = allocate<mask_type>(b, n);
    logprob = allocate<T>(b, n);
    logsumexp = allocate<T>(b, n);
    entropy = allocate<T>(b, n);
  }
  backend_vector<B, const token_type> target_rows(std::size_t first, std::size_t n) {
    return as_const(targets.view().flat().subview(first, n));
  }
  backend_vector<B, const mask_type> valid_rows(std::size_t first, std::size_t n) {
    return as_const(valid.view().flat().subview(first, n));
  }
  static backend_vector<B, T> rows(buffer_t<B, T>& buf, std::size_t first, std::size_t n) {
    return buf.view().flat().subview(first, n);
  }
};

}  // namespace detail

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
  /// @param b the backend
  /// @param config the shape
  /// @param with_classifier false makes a trunk without the "output" classifier (a reward or value
  ///        model's body); with a shared classifier the embedding is always kept
  llama_model(const B& b, const llama_config& config, bool with_classifier = true)
      : config_(validated(config)),
        grad_arena_(allocate_filled<T>(b, 1, parameter_elements(config, with_classifier), T(0))),
        has_classifier_(with_classifier) {
    detail::check_scan_backend<B>();
    detail::check_blas_backend<B>();
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
    if (!config.shared_classifier && with_classifier) add(b, "output", V, D, T(0));
    if (grad_elements_ != parameter_elements(config, with_classifier)) {
      throw std::logic_error("rlhf::llama_model: parameter_elements disagrees with the tensors added");
    }
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
    for (std::size_t i = 0; i < tensors_.size(); ++i) list.push_back({tensors_[i].name, tensors_[i].value.view(), grad(i)});
    return list;
  }

  /// The number of tensors parameters() lists.
  std::size_t tensor_count() const { return tensors_.size(); }

  /// Sets every gradient to zero.
  void zero_grad(const B& b) {
    b.fill(grad_arena_.view().flat(), T(0));
  }

  /// Copies every parameter of `source` that this model also has (same name; the shapes must agree),
  /// e.g. a reward model's trunk from a supervised policy (Ouyang et al. 2022, §3.5: the RM starts from
  /// the SFT model with its unembedding removed). Parameters only this model has are left as they are.
  /// @return the number of parameters copied
  /// @throws rlhf::invalid_argument when a shared name has another shape (nothing is copied then)
  std::size_t copy_parameters_from(const B& b, const llama_model& source) {
    constexpr std::string_view fn = "rlhf::llama_model::copy_parameters_from";
    std::vector<std::pair<std::size_t, std::size_t>> pairs;
    for (std::size_t i = 0; i < tensors_.size(); ++i) {
      for (std::size_t j = 0; j < source.tensors_.size(); ++j) {
        if (source.tensors_[j].name != tensors_[i].name) continue;
        const auto dst = tensors_[i].value.view();
        const auto src = source.tensors_[j].value.view();
        if (dst.rows != src.rows || dst.cols != src.cols) {
          detail::throw_argument_error(fn, "source", "tensor '" + tensors_[i].name + "' of shape " + shape_string(dst),
                                       shape_string(src));
        }
        pairs.emplace_back(i, j);
      }
    }
    for (const auto& [i, j] : pairs) b.copy(source.tensors_[j].value.view().flat(), tensors_[i].value.view().flat());
    return pairs.size();
  }

  /// A deep copy on backend `b`: the same configuration, classifier and parameter values, and the same
  /// attention memory mode; gradients zero, no gradient-ready callback, no recorded pass. InstructGPT's
  /// frozen reference of the KL penalty is the policy cloned when PPO starts (Ouyang et al. 2022, §3.5,
  /// pi_SFT in eq. 2). The model itself is move-only (its buffers live on the backend): this is its copy.
  llama_model clone(const B& b) const {
    llama_model copy(b, config_, has_classifier_);
    copy.copy_parameters_from(b, *this);
    copy.attention_memory_ = attention_memory_;
    return copy;
  }

  /// Reports ready gradients (rlhf::reports_ready_gradients): during backward passes, `f(first, count)`
  /// for the classifier (unless shared with the embedding) once the logits' backward is done, the final
  /// norm, each layer's nine tensors from the last layer down, and the embedding last. An empty function
  /// stops the reports.
  void on_gradients_ready(gradient_ready_callback f) { gradients_ready_ = std::move(f); }

  /// Whether the model has its language-model classifier (false for a reward or value model's trunk).
  bool has_classifier() const { return has_classifier_; }

  /// Memory for time in training passes: what a training forward keeps of each layer's attention for the
  /// backward (rlhf::attention_memory). The softmax, `[B*Hq*T, T]`, is the largest activation (T times the
  /// size of a layer's q): attention_memory::per_layer_softmax (the default) keeps one per layer,
  /// shared_softmax one for all layers (the backward recomputes each layer's with one more attention
  /// forward; the same gradients bit for bit, the attention being deterministic), logsumexp none (each layer
  /// keeps `[B*Hq*T]` row logsumexps and the backward recomputes the probabilities from the scores; the
  /// gradients agree with the other modes to rounding). Takes effect at the next training forward; a
  /// recorded pass is backpropagated the way it was recorded.
  void set_attention_memory(attention_memory mode) { attention_memory_ = mode; }
  /// What training passes keep of the attention (set_attention_memory).
  attention_memory attention_memory_mode() const { return attention_memory_; }

  /// A parameter's value by name (for tests and checkpoints). @throws rlhf::invalid_argument if unknown.
  backend_matrix<B, T> parameter(std::string_view name) {
    for (auto& t : tensors_)
      if (t.name == name) return t.value.view();
    detail::throw_argument_error("rlhf::llama_model::parameter", "name", "the name of a parameter",
                                 "'" + std::string(name) + "'");
  }

  /// Logits of every position of a batch of sequences (teacher forcing): row b*T + t of `logits` holds
  /// the next-token logits after tokens[b, 0..t]. Materializes all [B*T, V] logits: for training and
  /// scoring use log_probs, which never holds more than a chunk of them.
  /// @param b the backend
  /// @param tokens [B, T] token ids in [0, V); T <= seq_len (position t is t)
  /// @param lengths [B] valid tokens per row, each in [0, T] (keys beyond are masked; logits of padded
  ///        positions are computed but meaningless), or empty for all T
  /// @param logits out [B*T, V]
  /// @throws rlhf::invalid_argument on a shape mismatch, T > seq_len, an id outside [0, V), a bad length,
  ///         or a model without a classifier
  void forward(const B& b, backend_matrix<B, const token_type> tokens, backend_vector<B, const std::int32_t> lengths,
               backend_matrix<B, T> logits) {
    constexpr std::string_view fn = "rlhf::llama_model::forward";
    check_has_classifier(fn);
    detail::check_shape(fn, "logits", logits, tokens.rows * tokens.cols, config_.vocab_size, "([B*T, vocab_size])");
    llama_activations<B, T> act;
    forward_hidden(b, tokens, lengths, act, forward_mode::inference, fn);
    if (logits.rows == 0) return;
    linear_forward(b, act.hidden(), classifier(), logits);
  }

  /// Runs the trunk (embedding, every block, final RMSNorm) over a batch of sequences and leaves the
  /// hidden states in `act.hidden()` ([B*T, D]); the input of every head. In training mode `act`
  /// records what backward_hidden needs. Heads built on this model (a value head sharing the trunk)
  /// keep their own `act`.
  /// @param b the backend
  /// @param tokens [B, T] token ids in [0, V); T <= seq_len
  /// @param lengths [B] real tokens per row in [0, T] (later keys are masked), or empty for all T
  /// @param act the activations to fill (resized as needed)
  /// @param mode training records for the backward
  /// @param function the name used in error messages
  /// @throws rlhf::invalid_argument on T > seq_len, an id outside [0, V) or a bad length
  void forward_hidden(const B& b, backend_matrix<B, const token_type> tokens,
                      backend_vector<B, const std::int32_t> lengths, llama_activations<B, T>& act, forward_mode mode,
                      std::string_view function = "rlhf::llama_model::forward_hidden") {
    const llama_config& c = config_;
    if (tokens.cols > c.seq_len) {
      detail::throw_argument_error(function, "tokens",
                                   "at most seq_len = " + std::to_string(c.seq_len) + " columns", shape_string(tokens));
    }
    const bool has_lengths = !lengths.empty() || lengths.data != nullptr;
    if (has_lengths) detail::check_size(function, "lengths", lengths, tokens.rows, "(one per row of 'tokens', or empty for all)");
    check_tokens(b, function, tokens.flat());
    const bool training = mode == forward_mode::training;
    prepare(b, act, tokens.rows, tokens.cols, training ? c.n_layers : 1);
    act.recorded_ = false;
    const std::size_t N = tokens.rows * tokens.cols;
    if (N == 0) {
      act.recorded_ = training;
      return;
    }
    b.copy(tokens.flat(), act.tokens_.view().flat());
    act.has_lengths_ = has_lengths;
    if (has_lengths) b.copy(lengths, act.lengths_.view().flat());
    const backend_vector<B, const std::int32_t> len = stored_lengths(act);
    const backend_vector<B, const std::int32_t> pos = as_const(act.positions_.view().flat());
    const backend_matrix<B, T> proj = act.proj_.view();
    const backend_vector<B, T> none{};
    embedding_forward(b, cview(0), as_const(act.tokens_.view().flat()), act.layers_[0].x_in.view());
    for (std::size_t l = 0; l < c.n_layers; ++l) {
      auto& s = act.layers_[training ? l : 0];
      const backend_matrix<B, T> x_in = s.x_in.view();
      // Inference updates the residual stream in place; training keeps each layer's input.
      const backend_matrix<B, T> x_mid = training ? s.x_mid.view() : x_in;
      const backend_matrix<B, T> x_out = !training ? x_in : l + 1 < c.n_layers ? act.layers_[l + 1].x_in.view()
                                                                                : act.x_final_.view();
      rms_norm_forward(b, as_const(x_in), layer(l, 0).flat(), s.xb_att.view(), training ? s.inv_rms_att.view().flat() : none,
                       c.norm_eps);
      linear_forward(b, as_const(s.xb_att.view()), layer(l, 1), s.q.view());
      linear_forward(b, as_const(s.xb_att.view()), layer(l, 2), s.k.view());
      linear_forward(b, as_const(s.xb_att.view()), layer(l, 3), s.v.view());
      rope_forward(b, as_const(s.q.view()), pos, c.head_dim(), s.q.view(), c.rope_theta);
      rope_forward(b, as_const(s.k.view()), pos, c.head_dim(), s.k.view(), c.rope_theta);
      if (training && act.attention_memory_ == attention_memory::logsumexp) {
        causal_attention_forward_logsumexp(b, as_const(s.q.view()), as_const(s.k.view()), as_const(s.v.view()),
                                           tokens.rows, c.n_heads, c.n_kv_heads, s.att.view(),
                                           s.logsumexp.view().flat(), len);
      } else {
        causal_attention_forward(b, as_const(s.q.view()), as_const(s.k.view()), as_const(s.v.view()), tokens.rows,
                                 c.n_heads, c.n_kv_heads, s.att.view(),
                                 training ? saved_probs(act, l) : backend_matrix<B, T>{}, len);
      }
      linear_forward(b, as_const(s.att.view()), layer(l, 4), proj);
      b.transform(x_mid.flat(), detail::llama_add{}, as_const(x_in).flat(), as_const(proj).flat());
      rms_norm_forward(b, as_const(x_mid), layer(l, 5).flat(), s.xb_ffn.view(),
                       training ? s.inv_rms_ffn.view().flat() : none, c.norm_eps);
      linear_forward(b, as_const(s.xb_ffn.view()), layer(l, 6), s.gate.view());
      linear_forward(b, as_const(s.xb_ffn.view()), layer(l, 8), s.up.view());
      const backend_matrix<B, T> act_out = training ? s.act.view() : s.gate.view();
      swiglu_forward(b, as_const(s.gate.view()), as_const(s.up.view()), act_out);
      linear_forward(b, as_const(act_out), layer(l, 7), proj);
      b.transform(x_out.flat(), detail::llama_add{}, as_const(x_mid).flat(), as_const(proj).flat());
    }
    const backend_matrix<B, T> x_final = training ? act.x_final_.view() : act.layers_[0].x_in.view();
    rms_norm_forward(b, as_const(x_final), final_norm().flat(), act.hidden_.view(),
                     training ? act.inv_rms_final_.view().flat() : none, c.norm_eps);
    act.recorded_ = training;
  }

  /// Backward of forward_hidden: from d(loss)/d(hidden) [B*T, D] of a training pass recorded in `act`,
  /// adds the gradient of every trunk parameter (embedding, blocks, final norm) to its gradient buffer.
  /// `d_hidden` is consumed (used as scratch).
  /// @throws rlhf::invalid_argument when `act` holds no training pass or `d_hidden` has the wrong shape
  void backward_hidden(const B& b, llama_activations<B, T>& act, backend_matrix<B, T> d_hidden,
                       std::string_view function = "rlhf::llama_model::backward_hidden") {
    const llama_config& c = config_;
    if (!act.recorded()) {
      detail::throw_argument_error(function, "activations", "those of a forward in forward_mode::training",
                                   "no recorded training forward");
    }
    const std::size_t N = act.batch_ * act.seq_, D = c.dim, kv = c.kv_dim(), F = c.hidden_dim;
    detail::check_shape(function, "d_hidden", d_hidden, N, D, "([B*T, dim] of the recorded forward)");
    if (N == 0) return;
    auto d_x = allocate<T>(b, N, D), d_xb = allocate<T>(b, N, D), d_tmp = allocate<T>(b, N, D);
    auto d_q = allocate<T>(b, N, D), d_k = allocate<T>(b, N, kv), d_v = allocate<T>(b, N, kv);
    auto d_act = allocate<T>(b, N, F), d_gate = allocate<T>(b, N, F), d_up = allocate<T>(b, N, F);
    const auto dx = d_x.view(), dxb = d_xb.view(), dtmp = d_tmp.view();
    const auto accumulate = [&](backend_matrix<B, T> into, backend_matrix<B, T> from) {
      b.transform(into.flat(), detail::llama_add{}, as_const(into).flat(), as_const(from).flat());
    };
    const backend_vector<B, const std::int32_t> len = stored_lengths(act);
    const backend_vector<B, const std::int32_t> pos = as_const(act.positions_.view().flat());
    rms_norm_backward(b, as_const(act.x_final_.view()), final_norm().flat(), as_const(act.inv_rms_final_.view().flat()),
                      as_const(d_hidden), dx, grad(final_norm_index()).flat());
    report_ready(final_norm_index(), 1);
    for (std::size_t l = c.n_layers; l-- > 0;) {
      auto& s = act.layers_[l];
      // Feed-forward block: x_out = x_mid + w2 (silu(w1 h) * (w3 h)), h = rms_norm(x_mid) * ffn_norm.
      linear_backward(b, as_const(s.act.view()), layer(l, 7), as_const(dx), d_act.view(), layer_grad(l, 7));
      swiglu_backward(b, as_const(s.gate.view()), as_const(s.up.view()), as_const(d_act.view()), d_gate.view(),
                      d_up.view());
      linear_backward(b, as_const(s.xb_ffn.view()), layer(l, 6), as_const(d_gate.view()), dxb, layer_grad(l, 6));
      linear_backward(b, as_const(s.xb_ffn.view()), layer(l, 8), as_const(d_up.view()), dtmp, layer_grad(l, 8));
      accumulate(dxb, dtmp);
      rms_norm_backward(b, as_const(s.x_mid.view()), layer(l, 5).flat(), as_const(s.inv_rms_ffn.view().flat()),
                        as_const(dxb), dtmp, layer_grad(l, 5).flat());
      accumulate(dx, dtmp);  // d x_mid: the residual path plus the normalized branch
      // Attention block: x_mid = x_in + wo attention(rope(wq h), rope(wk h), wv h), h = rms_norm(x_in) * attention_norm.
      linear_backward(b, as_const(s.att.view()), layer(l, 4), as_const(dx), dxb, layer_grad(l, 4));
      if (act.attention_memory_ == attention_memory::logsumexp) {
        causal_attention_backward_recompute(b, as_const(s.q.view()), as_const(s.k.view()), as_const(s.v.view()),
                                            as_const(s.logsumexp.view().flat()), as_const(dxb), act.batch_,
                                            c.n_heads, c.n_kv_heads, d_q.view(), d_k.view(), d_v.view(), len);
      } else {
        if (act.attention_memory_ == attention_memory::shared_softmax) {
          // The forward kept no softmax of this layer: recompute it from the saved q, k, v (the same
          // deterministic call as the forward's, so the same bits); its output lands in dtmp, unused.
          causal_attention_forward(b, as_const(s.q.view()), as_const(s.k.view()), as_const(s.v.view()), act.batch_,
                                   c.n_heads, c.n_kv_heads, dtmp, saved_probs(act, l), len);
        }
        causal_attention_backward(b, as_const(s.q.view()), as_const(s.k.view()), as_const(s.v.view()),
                                  as_const(saved_probs(act, l)), as_const(dxb), act.batch_, c.n_heads, c.n_kv_heads,
                                  d_q.view(), d_k.view(), d_v.view(), len);
      }
      rope_backward(b, as_const(d_q.view()), pos, c.head_dim(), d_q.view(), c.rope_theta);
      rope_backward(b, as_const(d_k.view()), pos, c.head_dim(), d_k.view(), c.rope_theta);
      linear_backward(b, as_const(s.xb_att.view()), layer(l, 1), as_const(d_q.view()), dxb, layer_grad(l, 1));
      linear_backward(b, as_const(s.xb_att.view()), layer(l, 2), as_const(d_k.view()), dtmp, layer_grad(l, 2));
      accumulate(dxb, dtmp);
      linear_backward(b, as_const(s.xb_att.view()), layer(l, 3), as_const(d_v.view()), dtmp, layer_grad(l, 3));
      accumulate(dxb, dtmp);
      rms_norm_backward(b, as_const(s.x_in.view()), layer(l, 0).flat(), as_const(s.inv_rms_att.view().flat()),
                        as_const(dxb), dtmp, layer_grad(l, 0).flat());
      accumulate(dx, dtmp);  // d x_in
      report_ready(1 + 9 * l, 9);
    }
    embedding_backward(b, as_const(act.tokens_.view().flat()), as_const(dx), grad(0));
    report_ready(0, 1);  // with a shared classifier, also the classifier's gradient
  }

  /// Log-probabilities of the given tokens under the model (teacher forcing), and optionally the
  /// entropy of each predicted distribution: `logprobs(r, t) = log pi(tokens(r, t) | tokens(r, < t))`
  /// for 1 <= t < lengths[r], 0 at t = 0 and on padding (so the tokens' response mask is also the
  /// log-probs' mask). The logits are formed `options.max_logits_elements / V` rows at a time and
  /// reduced by rlhf::token_logprobs: no [B*T, V] buffer. In training mode the pass is recorded for
  /// log_probs_backward (a later inference call does not disturb it).
  /// InstructGPT's policy log-probs log pi(y|x) (Ouyang et al. 2022, eq. 2) are the sums over the
  /// response tokens.
  /// @param b the backend
  /// @param tokens [B, T] ids in [0, V); T <= seq_len
  /// @param lengths [B] real tokens per row in [0, T], or empty for all T
  /// @param logprobs out [B, T]
  /// @param entropy optional out [B, T] (empty view: not wanted), in nats
  /// @param mode training records the pass for log_probs_backward
  /// @param options the temperature and the logits chunk size
  /// @throws rlhf::invalid_argument on a shape mismatch, an id outside [0, V), a bad length or option,
  ///         or a model without a classifier
  void log_probs(const B& b, backend_matrix<B, const token_type> tokens, backend_vector<B, const std::int32_t> lengths,
                 backend_matrix<B, T> logprobs, backend_matrix<B, T> entropy = {},
                 forward_mode mode = forward_mode::inference, const log_prob_options& options = {}) {
    constexpr std::string_view fn = "rlhf::llama_model::log_probs";
    check_has_classifier(fn);
    detail::check_same_shape(fn, "logprobs", logprobs, "tokens", tokens);
    if (!entropy.empty() || entropy.data != nullptr) detail::check_same_shape(fn, "entropy", entropy, "tokens", tokens);
    detail::check_positive(fn, "options.temperature", options.temperature);
    detail::check_positive(fn, "options.max_logits_elements", static_cast<double>(options.max_logits_elements));
    const bool training = mode == forward_mode::training;
    detail::llama_lm_head_state<B, T> scratch;
    detail::llama_lm_head_state<B, T>& head = training ? lm_head_ : scratch;
    llama_activations<B, T> inference_act;
    llama_activations<B, T>& act = training ? lm_act_ : inference_act;
    if (training) head.recorded = false;
    forward_hidden(b, tokens, lengths, act, mode, fn);
    const std::size_t N = tokens.rows * tokens.cols, V = config_.vocab_size;
    head.prepare(b, N);
    head.options = options;
    if (N == 0) {
      head.recorded = training;
      return;
    }
    b.for_each_index(N, detail::llama_next_token_targets<space_type>{tokens, stored_lengths(act), head.targets.view().flat(),
                                                                     head.valid.view().flat()});
    const std::size_t chunk = std::max<std::size_t>(1, std::min(N, options.max_logits_elements / V));
    auto logits = allocate<T>(b, chunk, V);
    const bool want_entropy = !entropy.empty();
    for (std::size_t r0 = 0; r0 < N; r0 += chunk) {
      const std::size_t n = std::min(chunk, N - r0);
      const backend_matrix<B, T> z = logits.view().row_block(0, n);
      linear_forward(b, act.hidden().row_block(r0, n), classifier(), z);
      token_logprobs(b, as_const(z), head.target_rows(r0, n), head.valid_rows(r0, n), head.rows(head.logprob, r0, n),
                     head.rows(head.logsumexp, r0, n), want_entropy || training ? head.rows(head.entropy, r0, n)
                                                                                 : backend_vector<B, T>{},
                     token_logprob_options{options.temperature});
    }
    b.for_each_index(N, detail::llama_shift_to_tokens<T, space_type>{as_const(head.logprob.view().flat()), logprobs});
    if (want_entropy) {
      b.for_each_index(N, detail::llama_shift_to_tokens<T, space_type>{as_const(head.entropy.view().flat()), entropy});
    }
    head.recorded = training;
  }

  /// Backward of a training-mode log_probs: adds d(loss)/d(parameters) given d(loss)/d(logprobs) and,
  /// optionally, d(loss)/d(entropy), both [B, T] in the layout of the forward's outputs (entries at
  /// column 0 and on padding are ignored). The chunked logits are recomputed (one more GEMM per chunk)
  /// rather than stored.
  /// @throws rlhf::invalid_argument without a recorded training forward or on a shape mismatch
  void log_probs_backward(const B& b, backend_matrix<B, const T> d_logprobs, backend_matrix<B, const T> d_entropy = {}) {
    constexpr std::string_view fn = "rlhf::llama_model::log_probs_backward";
    detail::llama_lm_head_state<B, T>& head = lm_head_;
    if (!head.recorded) {
      detail::throw_argument_error(fn, "d_logprobs", "a preceding log_probs in forward_mode::training",
                                   "no recorded training forward");
    }
    const std::size_t Bn = lm_act_.batch_, Tn = lm_act_.seq_, N = Bn * Tn, V = config_.vocab_size;
    detail::check_shape(fn, "d_logprobs", d_logprobs, Bn, Tn, "([B, T] of the recorded forward)");
    const bool has_d_entropy = !d_entropy.empty() || d_entropy.data != nullptr;
    if (has_d_entropy) detail::check_shape(fn, "d_entropy", d_entropy, Bn, Tn, "([B, T] of the recorded forward)");
    detail::check_finite(b, fn, "d_logprobs", d_logprobs.flat());
    if (N == 0) return;
    auto d_rows = allocate<T>(b, N), d_ent_rows = allocate<T>(b, has_d_entropy ? N : 0);
    b.for_each_index(N, detail::llama_shift_from_tokens<T, space_type>{d_logprobs, d_rows.view().flat()});
    if (has_d_entropy) {
      b.for_each_index(N, detail::llama_shift_from_tokens<T, space_type>{d_entropy, d_ent_rows.view().flat()});
    }
    auto d_hidden = allocate<T>(b, N, config_.dim);
    const std::size_t chunk = std::max<std::size_t>(1, std::min(N, head.options.max_logits_elements / V));
    auto logits = allocate<T>(b, chunk, V);
    const backend_matrix<B, T> d_classifier = grad(classifier_index());
    for (std::size_t r0 = 0; r0 < N; r0 += chunk) {
      const std::size_t n = std::min(chunk, N - r0);
      const backend_matrix<B, T> z = logits.view().row_block(0, n);
      const backend_matrix<B, const T> h = lm_act_.hidden().row_block(r0, n);
      linear_forward(b, h, classifier(), z);
      token_logprobs_backward(b, as_const(z), head.target_rows(r0, n), head.valid_rows(r0, n),
                              as_const(head.rows(head.logsumexp, r0, n)), as_const(d_rows.view().flat().subview(r0, n)),
                              has_d_entropy ? as_const(head.rows(head.entropy, r0, n)) : backend_vector<B, const T>{},
                              has_d_entropy ? as_const(d_ent_rows.view().flat().subview(r0, n))
                                            : backend_vector<B, const T>{},
                              z, token_logprob_options{head.options.temperature});
      linear_backward(b, h, classifier(), as_const(z), d_hidden.view().row_block(r0, n), d_classifier);
    }
    if (!config_.shared_classifier) report_ready(classifier_index(), 1);
    backward_hidden(b, lm_act_, d_hidden.view(), fn);
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
    check_has_classifier(fn);
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
        b.transform_reduce(std::size_t(0), detail::add_sizes{}, detail::decode_count_bad_positions{c.seq_len}, positions);
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
      // positions were checked once above, for every layer.
      detail::causal_attention_decode_dispatch<B, T>(b, as_const(q), as_const(kc), as_const(vc), positions, c.seq_len,
                                                     c.n_heads, c.n_kv_heads, cache.scores_.view(), att);
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
    for (std::size_t r = 0; r < R; ++r) state[r] = detail::llama_row_state(options.seed, options.first_row + r);
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
    buffer_t<B, T> value;
    std::size_t grad_offset = 0;  // where its gradient starts in grad_arena_ (an offset, not a pointer:
                                  // copies and moves of the model stay valid)
  };
  llama_config config_;
  std::vector<tensor> tensors_;
  // Every gradient in one buffer, in parameter order: zero_grad is one fill, and a data-parallel
  // all-reduce finds the gradients adjacent and reduces them in place (rlhf::all_reduce_gradients).
  buffer_t<B, T> grad_arena_;
  std::size_t grad_elements_ = 0;  // assigned so far by add()

  bool has_classifier_ = true;
  attention_memory attention_memory_ = attention_memory::per_layer_softmax;  // see set_attention_memory
  gradient_ready_callback gradients_ready_;  // set around a data-parallel step's last backward
  llama_activations<B, T> lm_act_;            // the latest training pass of log_probs
  detail::llama_lm_head_state<B, T> lm_head_;  // and its head's per-row results

  // Where a training pass keeps layer l's attention softmax: its own buffer, or the one all layers share.
  static backend_matrix<B, T> saved_probs(llama_activations<B, T>& act, std::size_t l) {
    return act.attention_memory_ == attention_memory::shared_softmax ? act.shared_probs_.view()
                                                                      : act.layers_[l].probs.view();
  }

  void report_ready(std::size_t first, std::size_t count) const {
    if (gradients_ready_) gradients_ready_(first, count);
  }
  void check_has_classifier(std::string_view fn) const {
    if (!has_classifier_) {
      detail::throw_argument_error(fn, "this", "a model with a classifier (language-model head)",
                                   "a trunk made without one (llama_model(b, config, false))");
    }
  }

  // (Re)allocates the activation buffers for B x T tokens and `slots` layers of storage.
  void prepare(const B& b, llama_activations<B, T>& act, std::size_t rows, std::size_t cols, std::size_t slots) {
    const llama_config& c = config_;
    const std::size_t N = rows * cols, D = c.dim, kv = c.kv_dim(), F = c.hidden_dim;
    const bool training = slots == c.n_layers;
    const attention_memory mode = training ? attention_memory_ : attention_memory::per_layer_softmax;
    const bool same_shape = act.batch_ == rows && act.seq_ == cols && act.layers_.size() >= slots &&
                            (!training || (act.slots_ == slots && act.attention_memory_ == mode));
    act.batch_ = rows;
    act.seq_ = cols;
    if (same_shape) return;
    act.slots_ = slots;
    act.attention_memory_ = mode;
    const std::size_t softmax_rows = rows * c.n_heads * cols;
    act.shared_probs_ = allocate<T>(b, mode == attention_memory::shared_softmax ? softmax_rows : 0, cols);
    act.layers_.clear();
    act.layers_.resize(slots);
    for (auto& s : act.layers_) {
      s.x_in = allocate<T>(b, N, D);
      s.xb_att = allocate<T>(b, N, D);
      s.q = allocate<T>(b, N, D);
      s.k = allocate<T>(b, N, kv);
      s.v = allocate<T>(b, N, kv);
      s.att = allocate<T>(b, N, D);
      s.xb_ffn = allocate<T>(b, N, D);
      s.gate = allocate<T>(b, N, F);
      s.up = allocate<T>(b, N, F);
      if (training) {
        s.inv_rms_att = allocate<T>(b, N);
        if (mode == attention_memory::per_layer_softmax) s.probs = allocate<T>(b, softmax_rows, cols);
        if (mode == attention_memory::logsumexp) s.logsumexp = allocate<T>(b, softmax_rows, 1);
        s.x_mid = allocate<T>(b, N, D);
        s.inv_rms_ffn = allocate<T>(b, N);
        s.act = allocate<T>(b, N, F);
      }
    }
    act.tokens_ = allocate<token_type>(b, N);
    act.lengths_ = allocate<std::int32_t>(b, rows);
    std::vector<std::int32_t> pos_host(N);
    for (std::size_t i = 0; i < N; ++i) pos_host[i] = static_cast<std::int32_t>(i % cols);
    act.positions_ = to_backend(b, pos_host);
    act.x_final_ = allocate<T>(b, training ? N : 0, D);
    act.inv_rms_final_ = allocate<T>(b, training ? N : 0);
    act.hidden_ = allocate<T>(b, N, D);
    act.proj_ = allocate<T>(b, N, D);
  }

  static backend_vector<B, const std::int32_t> stored_lengths(const llama_activations<B, T>& act) { return act.lengths(); }

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

  static const llama_config& validated(const llama_config& c) {
    c.validate("rlhf::llama_model");
    return c;
  }
  // Elements of every parameter of a model of configuration c (the tensors the constructor adds).
  static std::size_t parameter_elements(const llama_config& c, bool with_classifier) {
    const std::size_t D = c.dim, F = c.hidden_dim, V = c.vocab_size, kv = c.kv_dim();
    const std::size_t per_layer = 2 * D + 2 * D * D + 2 * kv * D + 3 * F * D;
    return V * D + c.n_layers * per_layer + D + (!c.shared_classifier && with_classifier ? V * D : 0);
  }

  void add(const B& b, std::string name, std::size_t rows, std::size_t cols, T init) {
    tensors_.push_back({std::move(name), allocate_filled<T>(b, rows, cols, init), grad_elements_});
    grad_elements_ += rows * cols;
  }

  template <class Buf>
  static auto ro(Buf& buf) {
    return as_const(buf.view());
  }
  backend_matrix<B, const T> cview(std::size_t index) { return as_const(tensors_[index].value.view()); }
  // Tensor k (0..8, layer_tensor_names order) of layer l.
  backend_matrix<B, const T> layer(std::size_t l, std::size_t k) { return cview(1 + 9 * l + k); }
  std::size_t final_norm_index() const { return 1 + 9 * config_.n_layers; }
  std::size_t classifier_index() const { return config_.shared_classifier ? 0 : 2 + 9 * config_.n_layers; }
  backend_matrix<B, const T> final_norm() { return cview(final_norm_index()); }
  backend_matrix<B, const T> classifier() { return cview(classifier_index()); }
  backend_matrix<B, T> grad(std::size_t index) {
    const backend_matrix<B, T> v = tensors_[index].value.view();
    return {grad_arena_.view().data + tensors_[index].grad_offset, v.rows, v.cols};
  }
  backend_matrix<B, T> layer_grad(std::size_t l, std::size_t k) { return grad(1 + 9 * l + k); }

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
