/// @file llama_reward_model.hpp
/// @brief A reward model: a Llama trunk and a scalar head read at each sequence's last real token.
///
/// InstructGPT (Ouyang et al. 2022, §3.5) starts the reward model from the supervised policy "with the
/// final unembedding layer removed" and a projection to one scalar; the score of (prompt, response) is
/// that scalar at the response's last token. After training, a bias is added so the demonstrations'
/// mean reward is 0 (rlhf::demonstration_bias computes it; add_to_bias applies it).
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>

#include "rlhf/backends/checks.hpp"
#include "rlhf/backends/concepts.hpp"
#include "rlhf/backends/memory.hpp"
#include "rlhf/backends/view.hpp"
#include "rlhf/error.hpp"
#include "rlhf/models/concepts.hpp"
#include "rlhf/models/llama.hpp"
#include "rlhf/models/scalar_head.hpp"

namespace rlhf {

namespace detail {

// last(r, :) = hidden(r*T + lengths[r] - 1, :): the hidden state of each row's last real token.
template <class T, class S>
struct rm_gather_last_tokens {
  matrix_view<const T, S> hidden;  // [B*T, D]
  matrix_view<T, S> last;          // [B, D]
  vector_view<const std::int32_t, S> lengths;
  std::size_t seq = 0;
  RLHF_HOST_DEVICE void operator()(std::size_t n) const {
    const std::size_t r = n / last.cols, c = n % last.cols;
    last(r, c) = hidden(r * seq + llama_row_length(lengths, r, seq) - 1, c);
  }
};

// The reverse, for gradients: d_hidden row (r, lengths[r] - 1) = d_last(r, :), every other row 0.
template <class T, class S>
struct rm_scatter_last_tokens {
  matrix_view<T, S> d_hidden;         // [B*T, D]
  matrix_view<const T, S> d_last;     // [B, D]
  vector_view<const std::int32_t, S> lengths;
  std::size_t seq = 0;
  RLHF_HOST_DEVICE void operator()(std::size_t n) const {
    const std::size_t D = d_last.cols, row = n / D, c = n % D, r = row / seq, t = row % seq;
    d_hidden.data[n] = t + 1 == llama_row_length(lengths, r, seq) ? d_last(r, c) : T(0);
  }
};

// Counts lengths outside [1, T] (a score needs at least one token).
struct rm_count_bad_lengths {
  std::size_t seq = 0;
  RLHF_HOST_DEVICE std::size_t operator()(std::int32_t len) const {
    return (len < 1 || static_cast<std::size_t>(len) > seq) ? std::size_t(1) : std::size_t(0);
  }
};

}  // namespace detail

/// A Llama-architecture reward model: trunk (llama_model without classifier) + scalar head
/// ("score_head.weight" [1, D], "score_head.bias" [1, 1]). Models rlhf::reward_model.
/// @tparam B a complete backend
/// @tparam T float or double
template <class B, class T>
class llama_reward_model {
 public:
  using backend_type = B;
  using value_type = T;
  using space_type = typename B::memory_space;

  /// A reward model of configuration `config`: trunk as llama_model's constructor leaves it (zero
  /// matrices, unit norms), head zero.
  llama_reward_model(const B& b, const llama_config& config)
      : trunk_(b, config, false), head_(b, config.dim, "score_head.") {}

  /// A reward model whose trunk is a copy of a language model's (the SFT policy), in its attention memory
  /// mode (llama_model::set_attention_memory), and whose head is drawn from N(0, head_stddev^2) with `seed`
  /// (1/sqrt(D + 1) by default, a common value-head scale).
  static llama_reward_model from_language_model(const B& b, const llama_model<B, T>& lm, std::uint64_t seed = 0,
                                                double head_stddev = -1.0) {
    llama_reward_model rm(b, lm.config());
    rm.trunk_.copy_parameters_from(b, lm);
    rm.trunk_.set_attention_memory(lm.attention_memory_mode());
    rm.head_.init_random(b, seed, head_stddev >= 0.0 ? head_stddev : default_head_stddev(lm.config()));
    return rm;
  }

  /// A deep copy: the trunk as llama_model::clone copies it and the head's values; gradients zero, no
  /// gradient-ready callback. For keeping one round's reward model while the next round's trains
  /// (InstructGPT repeats steps 2 and 3).
  llama_reward_model clone(const B& b) const {
    llama_reward_model copy(b, trunk_.clone(b));
    copy.head_.copy_from(b, head_);
    return copy;
  }

  /// The configuration of the trunk.
  const llama_config& config() const { return trunk_.config(); }
  /// The trunk (for initialization and checkpoints).
  llama_model<B, T>& trunk() { return trunk_; }
  const llama_model<B, T>& trunk() const { return trunk_; }
  /// The score head.
  scalar_head<B, T>& head() { return head_; }
  const scalar_head<B, T>& head() const { return head_; }

  /// The trunk's parameters followed by "score_head.weight" and "score_head.bias".
  parameter_list<T, space_type> parameters() {
    auto list = trunk_.parameters();
    head_.append_parameters(list);
    return list;
  }
  void zero_grad(const B& b) {
    trunk_.zero_grad(b);
    head_.zero_grad(b);
  }

  /// Reports ready gradients (rlhf::reports_ready_gradients): the head's two tensors first, then the
  /// trunk's as llama_model::on_gradients_ready says. An empty function stops the reports.
  void on_gradients_ready(gradient_ready_callback f) {
    trunk_.on_gradients_ready(f);
    gradients_ready_ = std::move(f);
  }

  /// The score bias (a host copy).
  double bias(const B& b) const { return head_.bias(b); }
  /// Adds `delta` to every score from now on, e.g. `-mean` of the demonstrations' scores.
  void add_to_bias(const B& b, double delta) { head_.add_to_bias(b, delta); }

  /// Scores of a batch of sequences: `scores[r] = hidden(r, lengths[r] - 1) . w + c`.
  /// @param b the backend
  /// @param tokens [B, T] ids in [0, V); T <= seq_len
  /// @param lengths [B] real tokens per row, each in [1, T], or empty for all T (T >= 1)
  /// @param scores out [B]
  /// @param mode training records the pass for scores_backward
  /// @throws rlhf::invalid_argument on a shape mismatch, an id outside [0, V) or a length outside [1, T]
  void scores(const B& b, backend_matrix<B, const token_type> tokens, backend_vector<B, const std::int32_t> lengths,
              backend_vector<B, T> scores, forward_mode mode = forward_mode::inference) {
    constexpr std::string_view fn = "rlhf::llama_reward_model::scores";
    detail::check_size(fn, "scores", scores, tokens.rows, "(one per row of 'tokens')");
    const bool has_lengths = !lengths.empty() || lengths.data != nullptr;
    if (has_lengths) {
      detail::check_size(fn, "lengths", lengths, tokens.rows, "(one per row of 'tokens', or empty for all)");
      const std::size_t bad = b.transform_reduce(std::size_t(0), detail::add_sizes{},
                                                 detail::rm_count_bad_lengths{tokens.cols}, lengths);
      if (bad != 0) {
        detail::throw_argument_error(fn, "lengths", "lengths in [1, T = " + std::to_string(tokens.cols) + "]",
                                     std::to_string(bad) + " outside");
      }
    } else if (tokens.rows > 0 && tokens.cols == 0) {
      detail::throw_argument_error(fn, "tokens", "at least one column (a score is read at the last token)",
                                   shape_string(tokens));
    }
    const bool training = mode == forward_mode::training;
    llama_activations<B, T> inference_act;
    llama_activations<B, T>& act = training ? act_ : inference_act;
    if (training) recorded_ = false;
    trunk_.forward_hidden(b, tokens, lengths, act, mode, fn);
    auto local_last = allocate<T>(b, training ? 0 : tokens.rows, config().dim);
    if (training) last_ = allocate<T>(b, tokens.rows, config().dim);
    const backend_matrix<B, T> last = training ? last_.view() : local_last.view();
    if (tokens.rows > 0) {
      b.for_each_index(tokens.rows * config().dim,
                       detail::rm_gather_last_tokens<T, space_type>{act.hidden(), last, act.lengths(), tokens.cols});
    }
    head_.forward(b, as_const(last), scores);
    recorded_ = training;
  }

  /// Backward of a training-mode scores call: adds the gradients of every parameter given d(loss)/d(scores).
  /// @throws rlhf::invalid_argument without a recorded training forward or on a size mismatch
  void scores_backward(const B& b, backend_vector<B, const T> d_scores) {
    constexpr std::string_view fn = "rlhf::llama_reward_model::scores_backward";
    if (!recorded_) {
      detail::throw_argument_error(fn, "d_scores", "a preceding scores in forward_mode::training",
                                   "no recorded training forward");
    }
    const std::size_t rows = act_.batch(), seq = act_.seq(), D = config().dim;
    detail::check_size(fn, "d_scores", d_scores, rows, "(one per row of the recorded forward)");
    detail::check_finite(b, fn, "d_scores", d_scores);
    if (rows * seq == 0) return;
    auto d_last = allocate<T>(b, rows, D);
    head_.backward(b, as_const(last_.view()), d_scores, d_last.view());
    if (gradients_ready_) gradients_ready_(trunk_.tensor_count(), 2);
    auto d_hidden = allocate<T>(b, rows * seq, D);
    b.for_each_index(rows * seq * D, detail::rm_scatter_last_tokens<T, space_type>{d_hidden.view(), as_const(d_last.view()),
                                                                                  act_.lengths(), seq});
    trunk_.backward_hidden(b, act_, d_hidden.view(), fn);
  }

  /// The head scale used by from_language_model: 1 / sqrt(D + 1).
  static double default_head_stddev(const llama_config& c) { return 1.0 / std::sqrt(static_cast<double>(c.dim) + 1.0); }

 private:
  llama_reward_model(const B& b, llama_model<B, T>&& trunk)
      : trunk_(std::move(trunk)), head_(b, trunk_.config().dim, "score_head.") {}

  llama_model<B, T> trunk_;
  gradient_ready_callback gradients_ready_;
  scalar_head<B, T> head_;
  llama_activations<B, T> act_;
  buffer_t<B, T> last_;
  bool recorded_ = false;
};

}  // namespace rlhf
