/// @file training_checkpoint.hpp
/// @brief Checkpoints of a model with its optimizer, so an interrupted training run resumes with results
///        identical to an uninterrupted one.
///
/// A training checkpoint is a model checkpoint (rlhf::save_model for the bundled Llama models, which
/// records the configuration; rlhf::save_checkpoint of parameters() for any other model) whose extra
/// tensors are the optimizer's state and whose metadata holds the optimizer's step count (the learning-rate
/// schedules and AdamW's bias corrections depend on it) plus the caller's own entries (e.g. the epoch and
/// batch position of its data loop). The write is atomic: an interruption during a save leaves the
/// previous checkpoint.
#pragma once

#include <filesystem>
#include <map>
#include <string>

#include "rlhf/error.hpp"
#include "rlhf/models/checkpoint.hpp"
#include "rlhf/models/llama_checkpoint.hpp"
#include "rlhf/optim/optimizer.hpp"

namespace rlhf {

namespace detail {
template <class B, class M>
concept has_llama_checkpoint = requires(const B& b, M& m) { save_model(b, std::filesystem::path{}, m); };
}  // namespace detail

/// Saves a model, its optimizer's state and step count, and `metadata` (keys "optimizer_steps",
/// "format", "model" and "config" are reserved).
/// @tparam M a model with parameters() (an rlhf::policy, reward_model or value_model)
/// @tparam O an rlhf::restorable_optimizer
/// @param extra further tensors saved beside (e.g. an EMA's state)
template <class B, class M, class O>
void save_training_checkpoint(const B& b, const std::filesystem::path& path, M& model, O& optimizer,
                              std::map<std::string, std::string> metadata = {},
                              const named_tensor_list<typename M::value_type, typename B::memory_space>& extra = {}) {
  using T = typename M::value_type;
  detail::check_restorable_optimizer<O, B, T>();
  if (metadata.count("optimizer_steps") != 0) {
    detail::throw_argument_error("rlhf::save_training_checkpoint", "metadata", "no reserved key 'optimizer_steps'",
                                 "the key 'optimizer_steps'");
  }
  optimizer.prepare(b, model.parameters());  // state exists (zero) even before the first step
  metadata["optimizer_steps"] = std::to_string(optimizer.step_count());
  auto tensors = optimizer.state();
  tensors.insert(tensors.end(), extra.begin(), extra.end());
  if constexpr (detail::has_llama_checkpoint<B, M>) {
    save_model(b, path, model, tensors, std::move(metadata));
  } else {
    save_checkpoint(b, path, model.parameters(), tensors, metadata);
  }
}

/// Restores a model and its optimizer from save_training_checkpoint; returns the metadata (the caller's
/// entries included). Nothing is changed when the file does not match the model.
/// @param extra further tensors to restore (as saved)
template <class B, class M, class O>
std::map<std::string, std::string> load_training_checkpoint(
    const B& b, const std::filesystem::path& path, M& model, O& optimizer,
    const named_tensor_list<typename M::value_type, typename B::memory_space>& extra = {}) {
  using T = typename M::value_type;
  detail::check_restorable_optimizer<O, B, T>();
  optimizer.prepare(b, model.parameters());
  auto tensors = optimizer.state();
  tensors.insert(tensors.end(), extra.begin(), extra.end());
  std::map<std::string, std::string> meta;
  if constexpr (detail::has_llama_checkpoint<B, M>) {
    meta = load_model_into(b, path, model, tensors);
  } else {
    meta = load_checkpoint(b, path, model.parameters(), tensors);
  }
  const auto it = meta.find("optimizer_steps");
  if (it == meta.end()) {
    detail::throw_argument_error("rlhf::load_training_checkpoint", "path",
                                 "a training checkpoint with metadata 'optimizer_steps' (" + path.string() + ")",
                                 "a file without it");
  }
  optimizer.set_step_count(static_cast<std::size_t>(std::stoull(it->second)));
  return meta;
}

}  // namespace rlhf
