/// @file embedding.hpp
/// @brief Token embedding lookup (forward) and its scatter-add gradient (backward).
///
/// The first layer of a Llama-architecture decoder (Touvron et al. 2023, "LLaMA", §2): row n of the
/// output is the row of the [V, D] table selected by token n. The backward adds each output-row
/// gradient into the table row of its token; tokens that repeat accumulate. To keep the backward
/// deterministic and free of racing additions, the generic path loops over the D columns in parallel
/// and, within a column, over the N tokens in order: every table element is written by one index only.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>
#include <type_traits>

#include "rlhf/backends/checks.hpp"
#include "rlhf/backends/concepts.hpp"
#include "rlhf/backends/view.hpp"
#include "rlhf/config.hpp"
#include "rlhf/error.hpp"

namespace rlhf {

namespace detail {

/// Counts token ids outside [0, vocab) (device-callable).
struct embedding_count_bad_tokens {
  std::size_t vocab = 0;
  RLHF_HOST_DEVICE std::size_t operator()(token_type y) const {
    return (y < 0 || static_cast<std::size_t>(y) >= vocab) ? std::size_t(1) : std::size_t(0);
  }
};

/// Throws when a token id lies outside the table (one reduction over the N ids).
template <class B, class S>
void embedding_check_tokens(const B& b, std::string_view function, vector_view<const token_type, S> tokens,
                            std::size_t vocab) {
  if (tokens.size == 0) return;
  const std::size_t bad = b.transform_reduce(std::size_t(0), add_sizes{}, embedding_count_bad_tokens{vocab}, tokens);
  if (bad != 0) {
    throw_argument_error(function, "tokens",
                         "ids in [0, " + std::to_string(vocab) + ") (the rows of the embedding table)",
                         std::to_string(bad) + " id(s) out of range");
  }
}

/// Forward, element i = n * D + c: out(n, c) = table(tokens[n], c).
template <class T, class S>
struct embedding_forward_element {
  matrix_view<const T, S> table;
  vector_view<const token_type, S> tokens;
  matrix_view<T, S> out;

  RLHF_HOST_DEVICE void operator()(std::size_t i) const {
    const std::size_t d = out.cols;
    const std::size_t n = i / d, c = i - n * d;
    out.data[i] = table(static_cast<std::size_t>(tokens[n]), c);
  }
};

/// Backward, column c: d_table(tokens[n], c) += d_out(n, c) for n = 0..N-1 in order (one writer per column).
template <class T, class S>
struct embedding_backward_column {
  vector_view<const token_type, S> tokens;
  matrix_view<const T, S> d_out;
  matrix_view<T, S> d_table;

  RLHF_HOST_DEVICE void operator()(std::size_t c) const {
    for (std::size_t n = 0; n < d_out.rows; ++n) d_table(static_cast<std::size_t>(tokens[n]), c) += d_out(n, c);
  }
};

template <class B, class T>
void embedding_forward_generic(const B& b, backend_matrix<B, const T> table, backend_vector<B, const token_type> tokens,
                               backend_matrix<B, T> out) {
  b.for_each_index(out.size(), embedding_forward_element<T, typename B::memory_space>{table, tokens, out});
}

template <class B, class T>
void embedding_backward_generic(const B& b, backend_vector<B, const token_type> tokens,
                                backend_matrix<B, const T> d_out, backend_matrix<B, T> d_table) {
  for_each_weighted_index(b, d_out.cols, d_out.rows,
                          embedding_backward_column<T, typename B::memory_space>{tokens, d_out, d_table});
}

}  // namespace detail

/// Token embedding: `out(n, :) = table(tokens[n], :)`.
///
/// @tparam B a reduce_backend (for_each_index, and transform_reduce to validate the ids).
/// @tparam T float or double, deduced from `out`.
/// @param b the backend.
/// @param table [V, D] embedding table (llama2.c `token_embedding_table`).
/// @param tokens [N] token ids, each in [0, V) (checked with one reduction over the ids).
/// @param out out [N, D].
/// @note Throws rlhf::invalid_argument on a shape mismatch or an id outside [0, V).
template <class B, class T>
void embedding_forward(const B& b, std::type_identity_t<backend_matrix<B, const T>> table,
                       backend_vector<B, const token_type> tokens, backend_matrix<B, T> out) {
  detail::check_reduce_backend<B>();
  constexpr std::string_view fn = "rlhf::embedding_forward";
  static_assert(std::is_floating_point_v<T>, "rlhf::embedding_forward: T must be float or double");
  detail::check_shape(fn, "out", out, tokens.size, table.cols, "(one row per token of 'tokens', columns of 'table')");
  detail::embedding_check_tokens(b, fn, tokens, table.rows);
  detail::check_finite(b, fn, "table", table);
  if (out.empty()) return;
  if constexpr (requires { rlhf_specialized_embedding_forward(b, table, tokens, out); })
    rlhf_specialized_embedding_forward(b, table, tokens, out);
  else
    detail::embedding_forward_generic<B, T>(b, table, tokens, out);
}

/// Backward of rlhf::embedding_forward: `d_table(tokens[n], :) += d_out(n, :)` for every n (scatter-add;
/// the table gradient accumulates, so zero it before the first backward of a step).
///
/// Deterministic: each column's additions happen in token order on one index of the loop.
///
/// @tparam B a reduce_backend.
/// @tparam T float or double, deduced from `d_table`.
/// @param b the backend.
/// @param tokens [N] the ids given to the forward (checked again).
/// @param d_out [N, D] gradient of the loss w.r.t. the forward's output.
/// @param d_table in/out [V, D]: the gradient is added to it.
/// @note Throws rlhf::invalid_argument on a shape mismatch or an id outside [0, V).
template <class B, class T>
void embedding_backward(const B& b, backend_vector<B, const token_type> tokens,
                        std::type_identity_t<backend_matrix<B, const T>> d_out, backend_matrix<B, T> d_table) {
  detail::check_reduce_backend<B>();
  constexpr std::string_view fn = "rlhf::embedding_backward";
  static_assert(std::is_floating_point_v<T>, "rlhf::embedding_backward: T must be float or double");
  detail::check_shape(fn, "d_out", d_out, tokens.size, d_table.cols,
                      "(one row per token of 'tokens', columns of 'd_table')");
  detail::embedding_check_tokens(b, fn, tokens, d_table.rows);
  detail::check_finite(b, fn, "d_out", d_out);
  if (d_out.empty()) return;
  if constexpr (requires { rlhf_specialized_embedding_backward(b, tokens, d_out, d_table); })
    rlhf_specialized_embedding_backward(b, tokens, d_out, d_table);
  else
    detail::embedding_backward_generic<B, T>(b, tokens, d_out, d_table);
}

}  // namespace rlhf
