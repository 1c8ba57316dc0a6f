/// @file global_statistics.hpp
/// @brief Statistics that must be global, not per rank: sums and maxima of host values, masked moments
///        for advantage whitening, and the token / sequence counts of loss aggregation.
///
/// Several peers whiten advantages per rank and normalize token-mean losses by per-rank counts
/// (rlhf-math §2.8: TRL0/TRL1 whiten per rank; micro-batch means of means), so N ranks do not train the
/// model one rank would train on the whole batch. Here each rank computes its partial values, the ranks
/// exchange them with all_gather, and every rank folds them in rank order: the result is the same on
/// every rank, bit for bit, and (up to summation order) what one process computes on the whole batch.
#pragma once

#include <algorithm>
#include <cstddef>
#include <initializer_list>
#include <span>
#include <vector>

#include "rlhf/dist/communicator.hpp"
#include "rlhf/losses/loss_aggregation.hpp"
#include "rlhf/ops/whitening.hpp"

namespace rlhf {

/// Element-wise sums over ranks of a few host values (statistics, counts), folded in rank order so every
/// rank gets the same doubles. With one rank, the values themselves.
template <class C>
std::vector<double> global_sums(const C& comm, std::span<const double> local) {
  if (comm.size() == 1) return {local.begin(), local.end()};
  const std::vector<double> all = comm.all_gather(local);
  std::vector<double> out(local.size(), 0.0);
  for (std::size_t r = 0; r < comm.size(); ++r)
    for (std::size_t i = 0; i < local.size(); ++i) out[i] += all[r * local.size() + i];
  return out;
}

/// Spelling for a braced list: `auto [a, b] = ...; global_sums(comm, {a, b})`.
template <class C>
std::vector<double> global_sums(const C& comm, std::initializer_list<double> local) {
  return global_sums(comm, std::span<const double>(local.begin(), local.size()));
}

/// The sum over ranks of one host value.
template <class C>
double global_sum(const C& comm, double local) {
  return global_sums(comm, {local})[0];
}

/// The maximum over ranks of one host value.
template <class C>
double global_max(const C& comm, double local) {
  if (comm.size() == 1) return local;
  const std::vector<double> all = comm.all_gather(std::span<const double>(&local, 1));
  return *std::max_element(all.begin(), all.end());
}

/// The masked moments of the union of every rank's values: each rank's {count, mean, m2} merged in rank
/// order with Chan et al.'s formula (rlhf::combine), so whitening with them (rlhf::whiten's `global`)
/// uses the whole batch's mean and variance on every rank.
template <class C>
masked_moments global_masked_moments(const C& comm, const masked_moments& local) {
  if (comm.size() == 1) return local;
  const double mine[3] = {local.count, local.mean, local.m2};
  const std::vector<double> all = comm.all_gather(std::span<const double>(mine, 3));
  masked_moments total{};
  for (std::size_t r = 0; r < comm.size(); ++r) total = combine(total, masked_moments{all[3 * r], all[3 * r + 1], all[3 * r + 2]});
  return total;
}

/// Valid tokens and non-empty rows of a host mask [rows, cols] (what rlhf::aggregation_row_weights counts).
inline aggregation_counts count_valid(std::span<const mask_type> mask, std::size_t rows, std::size_t cols) {
  aggregation_counts c;
  for (std::size_t r = 0; r < rows; ++r) {
    std::size_t n = 0;
    for (std::size_t t = 0; t < cols; ++t) n += mask[r * cols + t] ? 1 : 0;
    c.tokens += static_cast<double>(n);
    c.sequences += n > 0 ? 1.0 : 0.0;
  }
  return c;
}

/// `agg` with its global token and sequence counts set to `total` (the sums over every rank), unless the
/// caller set them (> 0, e.g. for micro-batches already spanning the ranks).
inline loss_aggregation with_global_counts(loss_aggregation agg, const aggregation_counts& total) {
  if (!(agg.global_token_count > 0)) agg.global_token_count = total.tokens;
  if (!(agg.global_sequence_count > 0)) agg.global_sequence_count = total.sequences;
  return agg;
}

/// `agg` with its global counts set to the sums of every rank's `local` counts (rlhf::with_global_counts),
/// so that each rank's loss (and gradient) is its share of the whole batch's: summing the ranks' gradients
/// then gives the gradient of the loss one process computes on the whole batch. With one rank, `agg`
/// unchanged (its own counts are the global ones).
template <class C>
loss_aggregation global_aggregation(const C& comm, const loss_aggregation& agg, const aggregation_counts& local) {
  if (comm.size() == 1) return agg;
  const std::vector<double> total = global_sums(comm, {local.tokens, local.sequences});
  return with_global_counts(agg, {total[0], total[1]});
}

}  // namespace rlhf
