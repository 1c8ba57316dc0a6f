/// @file kl_rewards_rows.hpp
/// @brief One row of rlhf::kl_penalized_rewards as one pass (Ouyang et al. 2022, InstructGPT, eq. 2, per token),
///        written so that a group of threads can share the row: the CUDA backend's kernel
///        (rlhf/backends/cuda/kl_penalized_rewards.cuh) runs a warp per row, and the CPU tests replay it on the
///        host (tests/backends/kl_rewards_rows_test.cpp) against the generic path.
///
/// For row r with mask m, per-token KL k and shaped score s (clipped and penalized by the caller):
///
///     rewards_t = (m_t ? -beta * k_t : +0) + (t == target ? s : 0)
///
/// where target is the score placement's column given the row's last valid column (no column when the row
/// has no valid token: then the row gets no score). The KL is read (`ref_logp` empty) or is InstructGPT's k1,
/// logp - ref_logp, computed on the way and written (+0 where masked, as rlhf::kl_penalty writes it). The
/// statistics are the KL summed over valid tokens and their count, and whether and what score the row got.
///
/// A row comes in two steps: its last valid column (`last_valid`: one thread, from the row's end; the CUDA
/// kernel takes it with warp ballots over 32 mask bytes at a time), then `write(r, target, first, step)` over
/// the row's elements first, first + step, ..., which returns the part's sums for the group to add; `finish`
/// stores the row's. `operator()(r)` is the whole row on one thread. Masked values are selected away, never
/// multiplied by the mask, so NaN there never reaches the rewards (verl PR #6361). `kl_rewards_by_rows` runs
/// the rows on a backend and folds their statistics into what the rewards hooks return.
#pragma once

#include <cstddef>

#include "rlhf/backends/memory.hpp"
#include "rlhf/backends/view.hpp"
#include "rlhf/config.hpp"

namespace rlhf::detail {

/// The column of a row of `cols` that receives the row's score, given its last valid column `last` (-1: the
/// row has none, and neither has the score a column: -1), for rlhf::score_placement as an int: 0 the last
/// valid token, 1 the last column, 2 one past the last valid token (the last column when that is the last).
RLHF_HOST_DEVICE inline long long kl_rewards_score_column(long long last, long long cols, int placement) {
  if (last < 0) return -1;
  if (placement == 1) return cols - 1;
  if (placement == 2) return last + 1 < cols ? last + 1 : cols - 1;
  return last;
}

/// A row's statistics (or a part's: kl and valid only): the KL summed over its valid tokens, their count,
/// 1 when the row received its score, and that score. All doubles, so a warp adds them field by field.
struct kl_rewards_row_sums {
  double kl = 0;
  double valid = 0;
  double scored = 0;
  double score = 0;

  RLHF_HOST_DEVICE kl_rewards_row_sums operator+(const kl_rewards_row_sums& o) const {
    return {kl + o.kl, valid + o.valid, scored + o.scored, score + o.score};
  }
};

/// transform_reduce's operations over the rows' statistics.
struct add_kl_rewards_row_sums {
  RLHF_HOST_DEVICE kl_rewards_row_sums operator()(const kl_rewards_row_sums& a, const kl_rewards_row_sums& b) const {
    return a + b;
  }
};
struct same_kl_rewards_row_sums {
  RLHF_HOST_DEVICE kl_rewards_row_sums operator()(const kl_rewards_row_sums& s) const { return s; }
};

/// The rows of the pass (see the file comment).
template <class T, class S>
struct kl_rewards_rows {
  matrix_view<const T, S> kl_or_logp;     ///< [B, T]: the KL, or the log-probs when ref_logp is given
  matrix_view<const T, S> ref_logp;       ///< [B, T], or empty: the KL is read from kl_or_logp
  matrix_view<T, S> kl_out;               ///< [B, T] with ref_logp: the k1 KL written; else unused
  matrix_view<const mask_type, S> mask;   ///< [B, T]
  vector_view<const T, S> shaped_scores;  ///< [B]
  matrix_view<T, S> rewards;              ///< [B, T] output
  T neg_beta;                             ///< -beta
  int placement;                          ///< rlhf::score_placement as an int
  kl_rewards_row_sums* row_sums;          ///< [B] output: each row's statistics

  /// The row's last valid column, -1 when it has none (from the row's end: padding is usually short).
  RLHF_HOST_DEVICE long long last_valid(std::size_t r) const {
    const mask_type* m = mask.data + r * mask.cols;
    for (std::size_t t = mask.cols; t > 0; --t)
      if (m[t - 1] != 0) return static_cast<long long>(t - 1);
    return -1;
  }

  /// The column that receives row r's score given its last valid column (-1: none).
  RLHF_HOST_DEVICE long long target(long long last) const {
    return kl_rewards_score_column(last, static_cast<long long>(mask.cols), placement);
  }

  /// Writes the rewards (and the k1 KL) of row r's elements first, first + step, ..., the score added at
  /// column `target`; returns the part's KL sum and valid count.
  RLHF_HOST_DEVICE kl_rewards_row_sums write(std::size_t r, long long target, std::size_t first,
                                             std::size_t step) const {
    const std::size_t cols = mask.cols, base = r * cols;
    const bool k1 = !ref_logp.empty();
    const T score = target >= 0 ? shaped_scores.data[r] : T(0);
    kl_rewards_row_sums part;
    for (std::size_t t = first; t < cols; t += step) {
      const std::size_t i = base + t;
      const bool valid = mask.data[i] != 0;
      const T k = valid ? (k1 ? kl_or_logp.data[i] - ref_logp.data[i] : kl_or_logp.data[i]) : T(0);
      if (k1) kl_out.data[i] = k;
      T reward = valid ? k * neg_beta : T(0);
      if (static_cast<long long>(t) == target) reward += score;
      rewards.data[i] = reward;
      if (valid) {
        part.kl += static_cast<double>(k);
        part.valid += 1.0;
      }
    }
    return part;
  }

  /// Stores row r's statistics: its parts' sums, and its score when it had a column.
  RLHF_HOST_DEVICE void finish(std::size_t r, long long target, kl_rewards_row_sums sums) const {
    sums.scored = target >= 0 ? 1.0 : 0.0;
    sums.score = target >= 0 ? static_cast<double>(shaped_scores.data[r]) : 0.0;
    row_sums[r] = sums;
  }

  /// The whole row on one thread.
  RLHF_HOST_DEVICE void operator()(std::size_t r) const {
    const long long column = target(last_valid(r));
    finish(r, column, write(r, column, 0, 1));
  }
};

/// The pass on backend `b`: `run_rows(rows, count)` runs the rows (one thread each: `b.for_each_index(count,
/// rows)`; a CUDA warp each), into a [count] buffer of row statistics allocated here; then the rows'
/// statistics are folded by the backend's transform_reduce (a fixed order) into the outputs of the rewards
/// hooks (rlhf_specialized_kl_penalized_rewards): the KL summed over valid tokens, the valid count, and the
/// sum and count of the scores placed.
template <class B, class T, class RunRows>
void kl_rewards_by_rows(const B& b, kl_rewards_rows<T, typename B::memory_space> rows, const RunRows& run_rows,
                        double& kl_total, std::size_t& valid_tokens, double& scored_sum, std::size_t& scored_rows) {
  kl_total = scored_sum = 0;
  valid_tokens = scored_rows = 0;
  const std::size_t count = rows.mask.rows;
  if (count == 0) return;
  auto row_sums = allocate<kl_rewards_row_sums>(b, count);
  rows.row_sums = row_sums.view().data;
  run_rows(rows, count);
  const kl_rewards_row_sums s = b.transform_reduce(kl_rewards_row_sums{}, add_kl_rewards_row_sums{},
                                                   same_kl_rewards_row_sums{}, as_const(row_sums.view().flat()));
  kl_total = s.kl;
  valid_tokens = static_cast<std::size_t>(s.valid);
  scored_sum = s.score;
  scored_rows = static_cast<std::size_t>(s.scored);
}

}  // namespace rlhf::detail
