/// @file shard.hpp
/// @brief Which rows of a global batch a rank takes: contiguous blocks in rank order.
///
/// Rank r of n takes rows [r * N / n, (r + 1) * N / n) of a global batch of N rows: the blocks differ in
/// size by at most one, and concatenated in rank order they are the global batch. Contiguity is what
/// lets sampling stay invariant to the number of ranks: row i of the global batch draws from its own
/// random stream whichever rank samples it (rlhf::sampling_options::first_row).
#pragma once

#include <cstddef>
#include <span>

namespace rlhf {

/// Rows [first, first + count) of a global batch.
struct shard_range {
  std::size_t first = 0;
  std::size_t count = 0;
};

/// Rank `rank` of `ranks`'s block of a global batch of `rows` rows (ranks > 0, rank < ranks).
constexpr shard_range shard_of(std::size_t rows, std::size_t rank, std::size_t ranks) {
  const std::size_t first = rank * rows / ranks, last = (rank + 1) * rows / ranks;
  return {first, last - first};
}

/// This rank's block of `items` (rlhf::shard_of with the communicator's rank and size).
template <class Item, class C>
std::span<Item> shard(std::span<Item> items, const C& comm) {
  const shard_range s = shard_of(items.size(), comm.rank(), comm.size());
  return items.subspan(s.first, s.count);
}

}  // namespace rlhf
