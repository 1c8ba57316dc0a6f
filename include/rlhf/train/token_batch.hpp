/// @file token_batch.hpp
/// @brief Padded token batches for the trainers: prompt + response rows, their lengths and the mask of
///        the response tokens, on the host and uploaded to a backend.
///
/// Layout (the policy's, see docs/models.md#policy): row r holds prompt_r followed by response_r,
/// right-padded with token 0 to the batch width; `lengths[r]` counts the real tokens; `mask(r, t)` is 1
/// exactly at response tokens, which is also where the policy's log-probs of those tokens sit
/// (logprobs(r, t) = log pi(token t | tokens < t)). So the SFT loss is computed "on the response tokens
/// only" (Ouyang et al. 2022, §3.5) and PPO's action mask is the same matrix.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "rlhf/backends/memory.hpp"
#include "rlhf/backends/view.hpp"
#include "rlhf/error.hpp"

namespace rlhf {

/// A demonstration (or any prompt + response pair), as token ids.
struct prompt_response {
  std::vector<token_type> prompt;    ///< at least one token (e.g. BOS + the prompt's pieces)
  std::vector<token_type> response;  ///< the tokens whose log-likelihood is trained
};

/// A host-side padded batch (see the file comment).
struct token_batch {
  std::size_t rows = 0;               ///< sequences
  std::size_t cols = 0;               ///< width (longest row)
  std::vector<token_type> tokens;     ///< [rows, cols], padding 0
  std::vector<std::int32_t> lengths;  ///< [rows] real tokens per row
  std::vector<mask_type> mask;        ///< [rows, cols] 1 at response tokens
  std::vector<std::int32_t> prompt_lengths;  ///< [rows] tokens of each row's prompt
};

/// Builds a padded batch from prompt + response pairs.
/// @param pairs the rows; every prompt must have at least one token
/// @param max_length the longest row allowed (e.g. the model's seq_len); longer rows lose the end of
///        their response (the prompt is kept whole); 0 means no limit
/// @throws rlhf::invalid_argument naming the row when a prompt is empty or alone reaches max_length
inline token_batch make_token_batch(std::span<const prompt_response> pairs, std::size_t max_length = 0,
                                    std::string_view function = "rlhf::make_token_batch") {
  token_batch out;
  out.rows = pairs.size();
  std::vector<std::size_t> len(pairs.size());
  for (std::size_t r = 0; r < pairs.size(); ++r) {
    const auto& p = pairs[r];
    if (p.prompt.empty()) {
      detail::throw_argument_error(function, "pairs[" + std::to_string(r) + "].prompt", "at least one token (e.g. BOS)",
                                   "an empty prompt");
    }
    if (max_length != 0 && p.prompt.size() >= max_length) {
      detail::throw_argument_error(function, "pairs[" + std::to_string(r) + "].prompt",
                                   "fewer than max_length = " + std::to_string(max_length) + " tokens",
                                   std::to_string(p.prompt.size()));
    }
    len[r] = p.prompt.size() + p.response.size();
    if (max_length != 0) len[r] = std::min(len[r], max_length);
    out.cols = std::max(out.cols, len[r]);
  }
  out.tokens.assign(out.rows * out.cols, 0);
  out.mask.assign(out.rows * out.cols, 0);
  out.lengths.resize(out.rows);
  out.prompt_lengths.resize(out.rows);
  for (std::size_t r = 0; r < pairs.size(); ++r) {
    const auto& p = pairs[r];
    token_type* row = out.tokens.data() + r * out.cols;
    std::copy(p.prompt.begin(), p.prompt.end(), row);
    const std::size_t n_resp = len[r] - p.prompt.size();
    std::copy(p.response.begin(), p.response.begin() + static_cast<std::ptrdiff_t>(n_resp), row + p.prompt.size());
    for (std::size_t t = p.prompt.size(); t < len[r]; ++t) out.mask[r * out.cols + t] = 1;
    out.lengths[r] = static_cast<std::int32_t>(len[r]);
    out.prompt_lengths[r] = static_cast<std::int32_t>(p.prompt.size());
  }
  return out;
}

/// A token_batch in a backend's memory.
template <class B>
struct device_token_batch {
  buffer_t<B, token_type> tokens;     ///< [rows, cols]
  buffer_t<B, std::int32_t> lengths;  ///< [1, rows]
  buffer_t<B, mask_type> mask;        ///< [rows, cols]

  backend_matrix<B, const token_type> tokens_view() const { return tokens.view(); }
  backend_vector<B, const std::int32_t> lengths_view() const { return lengths.view().flat(); }
  backend_matrix<B, const mask_type> mask_view() const { return mask.view(); }
};

/// Uploads a host batch.
template <class B>
device_token_batch<B> upload(const B& b, const token_batch& batch) {
  return {to_backend(b, std::span<const token_type>(batch.tokens), batch.rows, batch.cols),
          to_backend(b, std::span<const std::int32_t>(batch.lengths), 1, batch.rows),
          to_backend(b, std::span<const mask_type>(batch.mask), batch.rows, batch.cols)};
}

}  // namespace rlhf
