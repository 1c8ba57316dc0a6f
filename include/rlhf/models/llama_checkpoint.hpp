/// @file llama_checkpoint.hpp
/// @brief Saving and loading the Llama policy, reward and value models as safetensors checkpoints that
///        carry their configuration, so a checkpoint alone rebuilds its model.
///
/// A model checkpoint is a rlhf::save_checkpoint file (atomic write, validated read) whose metadata
/// holds `"format": "rlhf"`, `"model"` (`"llama_policy"`, `"llama_reward_model"`, `"llama_value_model"`,
/// or `"llama_value_head"` for a value head that shares its policy's trunk), and `"config"`: the
/// llama_config as JSON, e.g.
///
///     {"dim":64,"hidden_dim":172,"n_layers":5,"n_heads":8,"n_kv_heads":4,"vocab_size":512,
///      "seq_len":512,"shared_classifier":true,"norm_eps":1e-05,"rope_theta":10000}
///
/// Optimizer state and other tensors travel as `extra` tensors beside the parameters (see
/// rlhf::checkpoint_tensor); callers' own metadata entries are kept as given.
#pragma once

#include <cstddef>
#include <filesystem>
#include <map>
#include <string>
#include <string_view>

#include "rlhf/data/json.hpp"
#include "rlhf/data/safetensors.hpp"
#include "rlhf/error.hpp"
#include "rlhf/models/checkpoint.hpp"
#include "rlhf/models/llama.hpp"
#include "rlhf/models/llama_config.hpp"
#include "rlhf/models/llama_reward_model.hpp"
#include "rlhf/models/llama_value_model.hpp"

namespace rlhf {

/// The configuration as a JSON object (the "config" metadata entry of a model checkpoint).
inline std::string llama_config_to_json(const llama_config& c) {
  json_value o = json_value::object();
  o.set("dim", c.dim);
  o.set("hidden_dim", c.hidden_dim);
  o.set("n_layers", c.n_layers);
  o.set("n_heads", c.n_heads);
  o.set("n_kv_heads", c.n_kv_heads);
  o.set("vocab_size", c.vocab_size);
  o.set("seq_len", c.seq_len);
  o.set("shared_classifier", c.shared_classifier);
  o.set("norm_eps", c.norm_eps);
  o.set("rope_theta", c.rope_theta);
  return serialize_json(o);
}

/// Parses and validates a configuration written by llama_config_to_json.
/// @param text the JSON object
/// @param function the name used in error messages
/// @throws rlhf::invalid_argument naming the missing or malformed field, or the invalid value
inline llama_config llama_config_from_json(std::string_view text, std::string_view function = "rlhf::llama_config_from_json") {
  const json_value o = parse_json(text);
  if (!o.is_object()) detail::throw_argument_error(function, "config", "a JSON object", json_kind_name(o.kind()));
  const auto field = [&](const char* name) -> const json_value& {
    for (const auto& [k, v] : o.as_object())
      if (k == name) return v;
    detail::throw_argument_error(function, "config", std::string("a field '") + name + "'", "none");
  };
  const auto count = [&](const char* name) {
    const json_value& v = field(name);
    if (!v.is_integer() || v.number_text()[0] == '-') {
      detail::throw_argument_error(function, std::string("config.") + name, "a non-negative integer", serialize_json(v));
    }
    return static_cast<std::size_t>(v.as_uint64());
  };
  const auto number = [&](const char* name) {
    const json_value& v = field(name);
    if (!v.is_number()) detail::throw_argument_error(function, std::string("config.") + name, "a number", serialize_json(v));
    return v.as_double();
  };
  llama_config c;
  c.dim = count("dim");
  c.hidden_dim = count("hidden_dim");
  c.n_layers = count("n_layers");
  c.n_heads = count("n_heads");
  c.n_kv_heads = count("n_kv_heads");
  c.vocab_size = count("vocab_size");
  c.seq_len = count("seq_len");
  const json_value& shared = field("shared_classifier");
  if (!shared.is_bool()) {
    detail::throw_argument_error(function, "config.shared_classifier", "true or false", serialize_json(shared));
  }
  c.shared_classifier = shared.as_bool();
  c.norm_eps = number("norm_eps");
  c.rope_theta = number("rope_theta");
  c.validate(function);
  return c;
}

namespace detail {

template <class B, class T>
std::string llama_model_kind(const llama_model<B, T>&) {
  return "llama_policy";
}
template <class B, class T>
std::string llama_model_kind(const llama_reward_model<B, T>&) {
  return "llama_reward_model";
}
template <class B, class T>
std::string llama_model_kind(const llama_value_model<B, T>& v) {
  return v.shares_trunk() ? "llama_value_head" : "llama_value_model";
}

// The metadata entry `key`, or a clear error naming the file.
inline const std::string& llama_checkpoint_entry(std::string_view function, const std::filesystem::path& path,
                                                 const std::map<std::string, std::string>& metadata,
                                                 const std::string& key) {
  const auto it = metadata.find(key);
  if (it == metadata.end()) {
    detail::throw_argument_error(function, "path", "a model checkpoint with metadata '" + key + "' (" + path.string() + ")",
                                 "a file without it");
  }
  return it->second;
}

// Checks the metadata's model kind and returns its configuration.
inline llama_config llama_checkpoint_config(std::string_view function, const std::filesystem::path& path,
                                            const std::map<std::string, std::string>& metadata,
                                            const std::string& kind) {
  const std::string& got = llama_checkpoint_entry(function, path, metadata, "model");
  if (got != kind) {
    detail::throw_argument_error(function, "path", "a checkpoint of a " + kind + " (" + path.string() + ")",
                                 "one of a " + got);
  }
  return llama_config_from_json(llama_checkpoint_entry(function, path, metadata, "config"), function);
}

inline bool llama_config_equal(const llama_config& a, const llama_config& b) {
  return a.dim == b.dim && a.hidden_dim == b.hidden_dim && a.n_layers == b.n_layers && a.n_heads == b.n_heads &&
         a.n_kv_heads == b.n_kv_heads && a.vocab_size == b.vocab_size && a.seq_len == b.seq_len &&
         a.shared_classifier == b.shared_classifier && a.norm_eps == b.norm_eps && a.rope_theta == b.rope_theta;
}

}  // namespace detail

/// Saves a Llama policy, reward model or value model (its parameters(), plus `extra` tensors such as
/// optimizer state) with its kind and configuration in the metadata. Atomic: a crash leaves the
/// previous file intact.
/// @param b the backend owning the model
/// @param path the file (its directory must exist)
/// @param model a llama_model, llama_reward_model or llama_value_model
/// @param extra further named tensors
/// @param metadata further metadata entries (the keys "format", "model" and "config" are reserved)
/// @throws rlhf::invalid_argument on a reserved metadata key or an I/O error
template <class B, class Model, class T = typename Model::value_type>
void save_model(const B& b, const std::filesystem::path& path, Model& model,
                const checkpoint_tensor_list<T, typename B::memory_space>& extra = {},
                std::map<std::string, std::string> metadata = {}) {
  constexpr std::string_view fn = "rlhf::save_model";
  for (const char* key : {"format", "model", "config"}) {
    if (metadata.count(key) != 0) {
      detail::throw_argument_error(fn, "metadata", "no reserved key ('format', 'model', 'config')",
                                   std::string("the key '") + key + "'");
    }
  }
  metadata["format"] = "rlhf";
  metadata["model"] = detail::llama_model_kind(model);
  metadata["config"] = llama_config_to_json(model.config());
  save_checkpoint(b, path, model.parameters(), extra, metadata);
}

/// Loads a checkpoint written by save_model into an existing model of the same kind and configuration
/// (nothing is changed on any mismatch).
/// @return the file's metadata
/// @throws rlhf::invalid_argument on another kind or configuration, or any checkpoint error
template <class B, class Model, class T = typename Model::value_type>
std::map<std::string, std::string> load_model_into(const B& b, const std::filesystem::path& path, Model& model,
                                                   const checkpoint_tensor_list<T, typename B::memory_space>& extra = {},
                                                   const checkpoint_load_options& options = {}) {
  constexpr std::string_view fn = "rlhf::load_model_into";
  const auto metadata = read_safetensors(path).metadata;
  const llama_config c = detail::llama_checkpoint_config(fn, path, metadata, detail::llama_model_kind(model));
  if (!detail::llama_config_equal(c, model.config())) {
    detail::throw_argument_error(fn, "model", "the configuration of " + path.string() + ": " + llama_config_to_json(c),
                                 llama_config_to_json(model.config()));
  }
  return load_checkpoint(b, path, model.parameters(), extra, options);
}

/// Rebuilds a policy from a save_model checkpoint: `auto policy = rlhf::load_llama_policy(b, path);`
template <class T = float, class B>
llama_model<B, T> load_llama_policy(const B& b, const std::filesystem::path& path) {
  const auto metadata = read_safetensors(path).metadata;
  llama_model<B, T> m(b, detail::llama_checkpoint_config("rlhf::load_llama_policy", path, metadata, "llama_policy"));
  load_checkpoint(b, path, m.parameters());
  return m;
}

/// Rebuilds a reward model from a save_model checkpoint.
template <class T = float, class B>
llama_reward_model<B, T> load_llama_reward_model(const B& b, const std::filesystem::path& path) {
  const auto metadata = read_safetensors(path).metadata;
  llama_reward_model<B, T> m(
      b, detail::llama_checkpoint_config("rlhf::load_llama_reward_model", path, metadata, "llama_reward_model"));
  load_checkpoint(b, path, m.parameters());
  return m;
}

/// Rebuilds a value model (with its own trunk) from a save_model checkpoint.
template <class T = float, class B>
llama_value_model<B, T> load_llama_value_model(const B& b, const std::filesystem::path& path) {
  const auto metadata = read_safetensors(path).metadata;
  llama_value_model<B, T> m(
      b, detail::llama_checkpoint_config("rlhf::load_llama_value_model", path, metadata, "llama_value_model"));
  load_checkpoint(b, path, m.parameters());
  return m;
}

}  // namespace rlhf
