/// @file llama_config.hpp
/// @brief The hyper-parameters of a Llama-architecture decoder (the llama2.c model family).
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

#include "rlhf/error.hpp"

namespace rlhf {

/// Shape of a Llama-architecture decoder: token embedding, `n_layers` blocks of RMSNorm + rotary
/// grouped-query attention + RMSNorm + SwiGLU MLP, final RMSNorm, classifier (Touvron et al. 2023).
struct llama_config {
  std::size_t dim = 0;         ///< model width D
  std::size_t hidden_dim = 0;  ///< SwiGLU inner width F
  std::size_t n_layers = 0;    ///< number of transformer blocks L
  std::size_t n_heads = 0;     ///< query heads Hq
  std::size_t n_kv_heads = 0;  ///< key/value heads Hkv (grouped-query attention; Hq % Hkv == 0)
  std::size_t vocab_size = 0;  ///< V
  std::size_t seq_len = 0;     ///< longest sequence (KV cache length, largest position + 1)
  bool shared_classifier = true;  ///< the classifier reuses the token embedding (tied weights)
  double norm_eps = 1e-5;         ///< RMSNorm epsilon (llama2.c: 1e-5)
  double rope_theta = 10000.0;    ///< RoPE base (llama2.c: 10000)

  /// Per-head width D / Hq.
  std::size_t head_dim() const { return n_heads == 0 ? 0 : dim / n_heads; }
  /// Width of the key and value projections: Hkv * head_dim.
  std::size_t kv_dim() const { return n_kv_heads * head_dim(); }

  /// Number of scalar parameters (the classifier counted once when shared).
  std::size_t parameter_count() const {
    const std::size_t per_layer = 2 * dim + 2 * dim * dim + 2 * dim * kv_dim() + 3 * dim * hidden_dim;
    return vocab_size * dim + n_layers * per_layer + dim + (shared_classifier ? 0 : vocab_size * dim);
  }

  /// Checks that the configuration describes a valid model.
  /// @param function the name used in error messages
  /// @throws rlhf::invalid_argument naming the offending field
  void validate(std::string_view function = "rlhf::llama_config") const {
    const auto positive = [&](const char* name, std::size_t v) {
      if (v == 0) detail::throw_argument_error(function, name, "a value > 0", "0");
    };
    positive("dim", dim);
    positive("hidden_dim", hidden_dim);
    positive("n_layers", n_layers);
    positive("n_heads", n_heads);
    positive("n_kv_heads", n_kv_heads);
    positive("vocab_size", vocab_size);
    positive("seq_len", seq_len);
    if (dim % n_heads != 0) {
      detail::throw_argument_error(function, "n_heads", "a divisor of dim = " + std::to_string(dim),
                                   std::to_string(n_heads));
    }
    if (n_heads % n_kv_heads != 0) {
      detail::throw_argument_error(function, "n_kv_heads", "a divisor of n_heads = " + std::to_string(n_heads),
                                   std::to_string(n_kv_heads));
    }
    if (head_dim() % 2 != 0) {
      detail::throw_argument_error(function, "n_heads", "a head width dim / n_heads that is even (RoPE rotates pairs)",
                                   "head width " + std::to_string(head_dim()));
    }
    if (vocab_size > 2147483647u) {
      detail::throw_argument_error(function, "vocab_size", "at most 2^31 - 1 (token ids are int32)",
                                   std::to_string(vocab_size));
    }
    if (seq_len > 2147483647u) {
      detail::throw_argument_error(function, "seq_len", "at most 2^31 - 1 (positions are int32)",
                                   std::to_string(seq_len));
    }
    detail::check_positive(function, "norm_eps", norm_eps);
    detail::check_positive(function, "rope_theta", rope_theta);
  }
};

}  // namespace rlhf
