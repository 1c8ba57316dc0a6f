// A host replay of the CUDA backend's split-row kernels (rlhf/backends/cuda/row_groups.cuh), for the CPU tests
// of their logic: G threads share a row, thread t takes elements t, t + G, ... through the row functor's parts,
// and the partial results are combined as the kernels combine them (a butterfly of shuffles within each warp of
// 32 lanes, then, for a block, the warps' results in warp order). The replay also checks the kernels' claim that
// every lane of a butterfly ends with the same bits.
#pragma once

#include <array>
#include <cmath>
#include <cstddef>
#include <cstring>
#include <vector>

#include "test_support.hpp"

namespace rlhf::test {

inline constexpr std::size_t replay_warp = 32;

// group_reduce of row_groups.cuh (group_sum, group_max) over the values of G threads.
template <class Combine>
double replay_group_reduce(std::vector<double> v, Combine combine) {
  const std::size_t g = v.size();
  REQUIRE(g % replay_warp == 0);
  for (std::size_t w0 = 0; w0 < g; w0 += replay_warp) {
    for (std::size_t offset = replay_warp / 2; offset > 0; offset /= 2) {
      std::array<double, replay_warp> next{};
      for (std::size_t lane = 0; lane < replay_warp; ++lane)
        next[lane] = combine(v[w0 + lane], v[w0 + (lane ^ offset)]);
      for (std::size_t lane = 0; lane < replay_warp; ++lane) v[w0 + lane] = next[lane];
    }
    bool same_bits = true;  // every lane ends with the same bits
    for (std::size_t lane = 1; lane < replay_warp; ++lane)
      same_bits = same_bits && std::memcmp(&v[w0 + lane], &v[w0], sizeof(double)) == 0;
    REQUIRE(same_bits);
  }
  double total = v[0];
  for (std::size_t w0 = replay_warp; w0 < g; w0 += replay_warp) total = combine(total, v[w0]);
  return total;
}

inline double replay_group_sum(std::vector<double> v) {
  return replay_group_reduce(std::move(v), [](double a, double b) { return a + b; });
}
inline double replay_group_max(std::vector<double> v) {
  return replay_group_reduce(std::move(v), [](double a, double b) { return std::fmax(a, b); });
}

// sum_then_write_rows with G threads per row: every thread's partial sum first, then every thread's writes.
template <class Row>
void replay_sum_then_write(const Row& row, std::size_t count, std::size_t g) {
  for (std::size_t r = 0; r < count; ++r) {
    std::vector<double> partial(g);
    for (std::size_t t = 0; t < g; ++t) partial[t] = row.partial_sum(r, t, g);
    const double total = replay_group_sum(partial);
    for (std::size_t t = 0; t < g; ++t) row.write(r, total, t, g);
  }
}

// max_sum_then_write_rows with G threads per row.
template <class Row>
void replay_max_sum_then_write(const Row& row, std::size_t count, std::size_t g) {
  for (std::size_t r = 0; r < count; ++r) {
    std::vector<double> part(g);
    for (std::size_t t = 0; t < g; ++t) part[t] = row.partial_max(r, t, g);
    const double m = replay_group_max(part);
    for (std::size_t t = 0; t < g; ++t) part[t] = row.partial_sum(r, m, t, g);
    const double sum = replay_group_sum(part);
    for (std::size_t t = 0; t < g; ++t) row.write(r, m, sum, t, g);
  }
}

}  // namespace rlhf::test
