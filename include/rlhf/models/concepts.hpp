/// @file concepts.hpp
/// @brief What the trainers need from a policy, a reward model and a value model (docs/models.md).
///
/// The three InstructGPT models (Ouyang et al. 2022, §3.5) are used by the trainers only through these
/// contracts, so a user can plug in their own model, for example a wrapper over an inference engine:
///
/// | concept          | forward (batch of token rows [B, T] + lengths [B])  | backward from          |
/// |------------------|------------------------------------------------------|------------------------|
/// | `policy`         | `log_probs`: log pi(token t | tokens < t), entropy    | d log-probs, d entropy |
/// | `reward_model`   | `scores`: one scalar per row, at its last real token  | d scores               |
/// | `value_model`    | `values`: V(tokens < t), beside each log-prob        | d values               |
///
/// Shared contract:
/// - `typename M::backend_type` (the tensor backend, a rlhf::complete_backend for the bundled models)
///   and `typename M::value_type` (float or double); every tensor argument is a view in that backend's
///   memory.
/// - Tokens are `[B, T]` int32 ids; `lengths` holds each row's number of real tokens (the rest is
///   padding), or is empty when every row is full.
/// - A forward in `forward_mode::training` records what its backward needs; the next backward uses the
///   most recent training forward. A forward in `forward_mode::inference` records nothing and leaves
///   a recorded training forward intact (so reference log-probs or values can be computed between a
///   training forward and its backward).
/// - Backward calls add to the gradients of `parameters()`; `zero_grad(b)` clears them.
/// - `parameters()` lists the trainable tensors (rlhf::parameter_list) for optimizers and checkpoints.
///
/// Optional (rlhf::reports_ready_gradients): `on_gradients_ready(callback)` makes the model call
/// `callback(first, count)` during its backward passes as soon as the gradients of parameters
/// [first, first + count) are final (no later write in that pass), so data-parallel training can start
/// summing them over ranks while the backward goes on (rlhf::gradient_all_reducer).
#pragma once

#include <concepts>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <utility>
#include <vector>

#include "rlhf/backends/concepts.hpp"
#include "rlhf/backends/view.hpp"
#include "rlhf/models/parameters.hpp"
#include "rlhf/models/sampling.hpp"

namespace rlhf {

/// Whether a forward pass records what its backward needs.
enum class forward_mode {
  inference,  ///< nothing recorded (rollouts, reference log-probs, evaluation)
  training,   ///< activations recorded for the next backward
};

/// Called by a model's backward pass with a range [first, first + count) of `parameters()` whose
/// gradients are final for that pass. An empty function: nobody listens.
using gradient_ready_callback = std::function<void(std::size_t first, std::size_t count)>;

/// A model that reports gradients as its backward pass finishes them (optional; see the file comment):
/// after `m.on_gradients_ready(f)`, every backward pass calls `f(first, count)` once for each parameter
/// whose gradient it touches, right after its last write to it, in the order the pass finishes them;
/// `m.on_gradients_ready({})` stops the reports. The data-parallel trainers set it only around a step's
/// last backward pass, whose gradients are final.
template <class M>
concept reports_ready_gradients = requires(M& m, gradient_ready_callback f) { m.on_gradients_ready(std::move(f)); };

namespace detail {

template <class M>
using model_backend_t = typename M::backend_type;
template <class M>
using model_value_t = typename M::value_type;

template <class M>
concept has_model_types = requires {
  typename M::backend_type;
  typename M::value_type;
};

template <class M>
concept has_trainable_parameters = has_model_types<M> && requires(M& m, const model_backend_t<M>& b) {
  { m.parameters() } -> std::convertible_to<parameter_list<model_value_t<M>, typename model_backend_t<M>::memory_space>>;
  m.zero_grad(b);
};

template <class M>
concept has_log_probs = has_model_types<M> && requires(M& m, const model_backend_t<M>& b,
                                                       backend_matrix<model_backend_t<M>, const token_type> tokens,
                                                       backend_vector<model_backend_t<M>, const std::int32_t> lengths,
                                                       backend_matrix<model_backend_t<M>, model_value_t<M>> out,
                                                       backend_matrix<model_backend_t<M>, const model_value_t<M>> d) {
  m.log_probs(b, tokens, lengths, out, out, forward_mode::training);
  m.log_probs_backward(b, d, d);
};

template <class M>
concept has_generate = has_model_types<M> && requires(M& m, const model_backend_t<M>& b,
                                                      const std::vector<std::vector<token_type>>& prompts,
                                                      const sampling_options& o) {
  { m.generate(b, prompts, std::size_t{1}, o) } -> std::convertible_to<std::vector<std::vector<token_type>>>;
};

template <class M>
concept has_scores = has_model_types<M> && requires(M& m, const model_backend_t<M>& b,
                                                    backend_matrix<model_backend_t<M>, const token_type> tokens,
                                                    backend_vector<model_backend_t<M>, const std::int32_t> lengths,
                                                    backend_vector<model_backend_t<M>, model_value_t<M>> out,
                                                    backend_vector<model_backend_t<M>, const model_value_t<M>> d) {
  m.scores(b, tokens, lengths, out, forward_mode::training);
  m.scores_backward(b, d);
};

template <class M>
concept has_values = has_model_types<M> && requires(M& m, const model_backend_t<M>& b,
                                                    backend_matrix<model_backend_t<M>, const token_type> tokens,
                                                    backend_vector<model_backend_t<M>, const std::int32_t> lengths,
                                                    backend_matrix<model_backend_t<M>, model_value_t<M>> out,
                                                    backend_matrix<model_backend_t<M>, const model_value_t<M>> d) {
  m.values(b, tokens, lengths, out, forward_mode::training);
  m.values_backward(b, d);
};

}  // namespace detail

/// A language-model policy pi(token | prefix) that can be trained and sampled.
///
/// Requirements, for `M& m`, backend `b` (`M::backend_type`), `T = M::value_type`:
/// - `m.log_probs(b, tokens [B,Tn], lengths [B] or empty, logprobs [B,Tn], entropy [B,Tn] or empty, mode)`:
///   `logprobs(r, t) = log pi(tokens(r, t) | tokens(r, < t))` for 1 <= t < lengths[r], 0 elsewhere
///   (column 0 has no prediction; padding is 0), and the entropy of the same distribution. The
///   response mask of the tokens is therefore also the mask of the log-probs. Implementations must
///   not hold more than a bounded chunk of [B*Tn, V] logits at a time.
/// - `m.log_probs_backward(b, d_logprobs [B,Tn], d_entropy [B,Tn] or empty)`: adds the gradients of the
///   most recent training forward's parameters.
/// - `m.generate(b, prompts, max_new_tokens, sampling_options)` -> each prompt followed by its
///   continuation (a KV cache is expected; rows stop at the stop token).
/// - `m.parameters()`, `m.zero_grad(b)`.
template <class M>
concept policy = detail::has_trainable_parameters<M> && detail::has_log_probs<M> && detail::has_generate<M>;

/// A reward model: one scalar per sequence, read at its last real token (Ouyang et al. 2022, §3.5).
///
/// - `m.scores(b, tokens [B,Tn], lengths [B] (each >= 1) or empty, scores [B], mode)`.
/// - `m.scores_backward(b, d_scores [B])` after a training forward.
/// - `m.parameters()`, `m.zero_grad(b)`.
template <class M>
concept reward_model = detail::has_trainable_parameters<M> && detail::has_scores<M>;

/// A value model (the PPO critic): one scalar per token in the layout of the policy's log-probs:
/// `values(r, t) = V(tokens(r, < t))`, the value of the state in which token t is chosen, for
/// 1 <= t < lengths[r]; 0 at t = 0 and on padding. An action's log-prob, reward and value then share
/// their position.
///
/// - `m.values(b, tokens [B,Tn], lengths [B] or empty, values [B,Tn], mode)`.
/// - `m.values_backward(b, d_values [B,Tn])` after a training forward (padding entries are ignored).
/// - `m.parameters()`, `m.zero_grad(b)`.
template <class M>
concept value_model = detail::has_trainable_parameters<M> && detail::has_values<M>;

namespace detail {

/// Static checks with messages that say what a user's policy type lacks.
template <class M>
constexpr void check_policy() {
  static_assert(has_model_types<M>,
                "rlhf: a policy needs member types `backend_type` (its tensor backend) and `value_type` "
                "(float or double). See docs/models.md#policy");
  if constexpr (has_model_types<M>) {
    static_assert(has_trainable_parameters<M>,
                  "rlhf: a policy needs `parameters()` returning a parameter_list and `zero_grad(const backend_type&)`. "
                  "See docs/models.md#policy");
    static_assert(has_log_probs<M>,
                  "rlhf: a policy needs `log_probs(b, tokens, lengths, logprobs, entropy, forward_mode)` and "
                  "`log_probs_backward(b, d_logprobs, d_entropy)`. See docs/models.md#policy");
    static_assert(has_generate<M>,
                  "rlhf: a policy needs `generate(b, prompts, max_new_tokens, sampling_options)` returning "
                  "std::vector<std::vector<rlhf::token_type>>. See docs/models.md#policy");
  }
}

/// Static checks with messages that say what a user's reward model type lacks.
template <class M>
constexpr void check_reward_model() {
  static_assert(has_model_types<M>,
                "rlhf: a reward model needs member types `backend_type` and `value_type`. "
                "See docs/models.md#reward-model");
  if constexpr (has_model_types<M>) {
    static_assert(has_trainable_parameters<M>,
                  "rlhf: a reward model needs `parameters()` and `zero_grad(const backend_type&)`. "
                  "See docs/models.md#reward-model");
    static_assert(has_scores<M>,
                  "rlhf: a reward model needs `scores(b, tokens, lengths, scores, forward_mode)` and "
                  "`scores_backward(b, d_scores)`. See docs/models.md#reward-model");
  }
}

/// Static checks with messages that say what a user's value model type lacks.
template <class M>
constexpr void check_value_model() {
  static_assert(has_model_types<M>,
                "rlhf: a value model needs member types `backend_type` and `value_type`. "
                "See docs/models.md#value-model");
  if constexpr (has_model_types<M>) {
    static_assert(has_trainable_parameters<M>,
                  "rlhf: a value model needs `parameters()` and `zero_grad(const backend_type&)`. "
                  "See docs/models.md#value-model");
    static_assert(has_values<M>,
                  "rlhf: a value model needs `values(b, tokens, lengths, values, forward_mode)` and "
                  "`values_backward(b, d_values)`. See docs/models.md#value-model");
  }
}

}  // namespace detail
}  // namespace rlhf
