/// @file llama_value_model.hpp
/// @brief A value model (the PPO critic): a Llama trunk and a per-token scalar head.
///
/// InstructGPT initializes the value function from the reward model (Ouyang et al. 2022, §3.5):
/// `auto critic = rlhf::value_model_from(b, reward_model);` is that one line. A value head can also
/// share its trunk with the policy (one body, two heads): sharing_trunk(b, policy).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string_view>
#include <utility>

#include "rlhf/backends/checks.hpp"
#include "rlhf/backends/concepts.hpp"
#include "rlhf/backends/memory.hpp"
#include "rlhf/backends/view.hpp"
#include "rlhf/error.hpp"
#include "rlhf/models/concepts.hpp"
#include "rlhf/models/llama.hpp"
#include "rlhf/models/llama_reward_model.hpp"
#include "rlhf/models/scalar_head.hpp"

namespace rlhf {

namespace detail {

// Copies v(r, t) to out, zeroing t >= lengths[r] (padding).
template <class T, class S>
struct vm_copy_valid {
  matrix_view<const T, S> v;
  matrix_view<T, S> out;
  vector_view<const std::int32_t, S> lengths;
  RLHF_HOST_DEVICE void operator()(std::size_t n) const {
    const std::size_t seq = v.cols;
    out.data[n] = n % seq < llama_row_length(lengths, n / seq, seq) ? v.data[n] : T(0);
  }
};

}  // namespace detail

/// A Llama-architecture value model: trunk + scalar head ("value_head.weight" [1, D],
/// "value_head.bias" [1, 1]) applied at every token, reported in the policy's log-prob layout (the value
/// beside each action is that of the state the action was taken in). Models rlhf::value_model.
///
/// Either it owns its trunk (constructor, from_reward_model), or it shares a policy's trunk
/// (sharing_trunk): then parameters() lists only the head, backward adds the trunk's gradient to the
/// policy's gradient buffers, and the policy must outlive the value model.
/// @tparam B a complete backend
/// @tparam T float or double
template <class B, class T>
class llama_value_model {
 public:
  using backend_type = B;
  using value_type = T;
  using space_type = typename B::memory_space;

  /// A value model with its own trunk of configuration `config` (zero matrices, unit norms, zero head).
  llama_value_model(const B& b, const llama_config& config)
      : own_trunk_(std::make_unique<llama_model<B, T>>(b, config, false)),
        trunk_(own_trunk_.get()),
        head_(b, config.dim, "value_head.") {}

  /// InstructGPT's initialization: a copy of a reward model's trunk (in its attention memory mode,
  /// llama_model::set_attention_memory) and head.
  static llama_value_model from_reward_model(const B& b, const llama_reward_model<B, T>& rm) {
    llama_value_model v(b, rm.config());
    v.trunk_->copy_parameters_from(b, rm.trunk());
    v.trunk_->set_attention_memory(rm.trunk().attention_memory_mode());
    v.head_.copy_from(b, rm.head());
    return v;
  }

  /// A copy: with its own trunk, a deep copy (the trunk as llama_model::clone copies it, the head's values);
  /// sharing a policy's trunk, a value model on the same trunk with a copy of the head (the trunk belongs to
  /// the policy). Gradients zero, no gradient-ready callback.
  llama_value_model clone(const B& b) const {
    if (shares_trunk()) {
      llama_value_model copy(b, *trunk_, 0.0, 0);
      copy.head_.copy_from(b, head_);
      return copy;
    }
    llama_value_model copy(b, std::make_unique<llama_model<B, T>>(trunk_->clone(b)));
    copy.head_.copy_from(b, head_);
    return copy;
  }

  /// A value head on the policy's own trunk (shared body), drawn from N(0, head_stddev^2) (default
  /// 1/sqrt(D + 1)). `policy` must outlive the returned model.
  static llama_value_model sharing_trunk(const B& b, llama_model<B, T>& policy, std::uint64_t seed = 0,
                                         double head_stddev = -1.0) {
    llama_value_model v(b, policy, head_stddev >= 0.0 ? head_stddev
                                                      : llama_reward_model<B, T>::default_head_stddev(policy.config()),
                        seed);
    return v;
  }

  /// Whether the trunk belongs to another model (sharing_trunk).
  bool shares_trunk() const { return own_trunk_ == nullptr; }
  const llama_config& config() const { return trunk_->config(); }
  llama_model<B, T>& trunk() { return *trunk_; }
  scalar_head<B, T>& head() { return head_; }

  /// The trunk's parameters (unless shared) followed by "value_head.weight" and "value_head.bias".
  parameter_list<T, space_type> parameters() {
    auto list = shares_trunk() ? parameter_list<T, space_type>{} : trunk_->parameters();
    head_.append_parameters(list);
    return list;
  }
  /// Reports ready gradients (rlhf::reports_ready_gradients): the head's two tensors first, then the
  /// trunk's as llama_model::on_gradients_ready says (not a shared trunk's: it is not among this model's
  /// parameters). An empty function stops the reports.
  void on_gradients_ready(gradient_ready_callback f) {
    if (!shares_trunk()) trunk_->on_gradients_ready(f);
    gradients_ready_ = std::move(f);
  }

  /// Zeroes the head's gradients, and the trunk's unless shared (the policy zeroes its own).
  void zero_grad(const B& b) {
    if (!shares_trunk()) trunk_->zero_grad(b);
    head_.zero_grad(b);
  }

  /// State values in the layout of the policy's log-probs: `values(r, t) = hidden(r, t - 1) . w + c`, the
  /// value of the state tokens(r, < t) in which token t is chosen, for 1 <= t < lengths[r]; 0 at t = 0
  /// and on padding.
  /// @param b the backend
  /// @param tokens [B, T] ids in [0, V); T <= seq_len
  /// @param lengths [B] real tokens per row in [0, T], or empty for all T
  /// @param values out [B, T]
  /// @param mode training records the pass for values_backward
  /// @throws rlhf::invalid_argument on a shape mismatch, an id outside [0, V) or a bad length
  void values(const B& b, backend_matrix<B, const token_type> tokens, backend_vector<B, const std::int32_t> lengths,
              backend_matrix<B, T> values, forward_mode mode = forward_mode::inference) {
    constexpr std::string_view fn = "rlhf::llama_value_model::values";
    detail::check_same_shape(fn, "values", values, "tokens", tokens);
    const bool training = mode == forward_mode::training;
    llama_activations<B, T> inference_act;
    llama_activations<B, T>& act = training ? act_ : inference_act;
    trunk_->forward_hidden(b, tokens, lengths, act, mode, fn);
    if (values.empty()) return;
    // The head at hidden row t scores the state after tokens 0..t, which is the state in which token t + 1
    // is chosen: shift by one so values(r, t) sits beside logprobs(r, t) (the action's state value).
    auto per_row = allocate<T>(b, values.size());
    head_.forward(b, act.hidden(), per_row.view().flat());
    b.for_each_index(values.size(), detail::llama_shift_to_tokens<T, space_type>{as_const(per_row.view().flat()), values});
    b.for_each_index(values.size(), detail::vm_copy_valid<T, space_type>{as_const(values), values, act.lengths()});
  }

  /// Backward of a training-mode values call: adds the gradients given d(loss)/d(values) [B, T]
  /// (entries on padding are ignored).
  /// @throws rlhf::invalid_argument without a recorded training forward or on a shape mismatch
  void values_backward(const B& b, backend_matrix<B, const T> d_values) {
    constexpr std::string_view fn = "rlhf::llama_value_model::values_backward";
    if (!act_.recorded()) {
      detail::throw_argument_error(fn, "d_values", "a preceding values in forward_mode::training",
                                   "no recorded training forward");
    }
    const std::size_t rows = act_.batch(), seq = act_.seq();
    detail::check_shape(fn, "d_values", d_values, rows, seq, "([B, T] of the recorded forward)");
    detail::check_finite(b, fn, "d_values", d_values.flat());
    if (rows * seq == 0) return;
    auto d_valid = allocate<T>(b, rows, seq), d_per_row = allocate<T>(b, rows * seq);
    b.for_each_index(rows * seq, detail::vm_copy_valid<T, space_type>{d_values, d_valid.view(), act_.lengths()});
    b.for_each_index(rows * seq, detail::llama_shift_from_tokens<T, space_type>{as_const(d_valid.view()),
                                                                               d_per_row.view().flat()});
    auto d_hidden = allocate<T>(b, rows * seq, config().dim);
    head_.backward(b, act_.hidden(), as_const(d_per_row.view().flat()), d_hidden.view());
    if (gradients_ready_) gradients_ready_(shares_trunk() ? 0 : trunk_->tensor_count(), 2);
    trunk_->backward_hidden(b, act_, d_hidden.view(), fn);
  }

 private:
  llama_value_model(const B& b, std::unique_ptr<llama_model<B, T>> own)
      : own_trunk_(std::move(own)), trunk_(own_trunk_.get()), head_(b, trunk_->config().dim, "value_head.") {}
  llama_value_model(const B& b, llama_model<B, T>& shared, double head_stddev, std::uint64_t seed)
      : trunk_(&shared), head_(b, shared.config().dim, "value_head.") {
    head_.init_random(b, seed, head_stddev);
  }

  std::unique_ptr<llama_model<B, T>> own_trunk_;  // null when the trunk is shared
  llama_model<B, T>* trunk_;
  gradient_ready_callback gradients_ready_;
  scalar_head<B, T> head_;
  llama_activations<B, T> act_;
};

/// InstructGPT's value-model initialization in one call: a value model that starts as a copy of the
/// reward model (Ouyang et al. 2022, §3.5).
template <class B, class T>
llama_value_model<B, T> value_model_from(const B& b, const llama_reward_model<B, T>& rm) {
  return llama_value_model<B, T>::from_reward_model(b, rm);
}

}  // namespace rlhf
