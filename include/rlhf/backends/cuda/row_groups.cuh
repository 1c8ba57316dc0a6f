/// @file row_groups.cuh
/// @brief Rows shared by groups of threads: the CUDA backend's kernels for the row steps of RMSNorm
///        (rlhf/backends/rms_norm_rows.hpp) and of the attention softmax (rlhf/backends/attention_products.hpp).
///
/// The generic path runs such a row on one thread (a Thrust for_each over rows): on a GPU each thread then
/// walks a row of its own, so neighbouring threads read addresses a row apart and nothing is coalesced. Here
/// a group of threads shares a row: thread t of the group takes the row's elements t, t + G, t + 2G, ...
/// (neighbouring threads, neighbouring addresses), the group adds its partial sums (`group_sum`), and every
/// thread writes its elements from the total. A row of at most `split_row_warp_limit` elements takes one
/// warp (G = 32, eight rows per block of 256); a longer one a whole block (G = 256).
///
/// The row functors provide the parts (see rms_norm_rows.hpp): `partial_sum(r, first, step)` and
/// `write(r, total, first, step)`; the softmax also `partial_max(r, first, step)` and `partial_sum(r, m, ...)`
/// / `write(r, m, sum, ...)`. The arithmetic is theirs, so the CPU tests replay these kernels on the host
/// with the same functions and the same order of sums (tests/backends/row_groups_test.cpp).
#pragma once

#include <cmath>
#include <cstddef>
#include <cstring>
#include <type_traits>

#include "rlhf/backends/cuda.cuh"

namespace rlhf::backends {

namespace cuda_kernels {

/// Rows of up to this many elements take one warp each; longer rows a block each.
inline constexpr std::size_t split_row_warp_limit = 1024;

/// The warp's sum of a struct of doubles, field by field (lane 0 ends with it).
template <class Sums>
__device__ inline Sums warp_sum_fields(Sums s) {
  static_assert(std::is_trivially_copyable_v<Sums> && sizeof(Sums) % sizeof(double) == 0,
                "warp_sum_fields: a struct of doubles");
  constexpr unsigned n = sizeof(Sums) / sizeof(double);
  double f[n];
  std::memcpy(f, &s, sizeof s);
  for (unsigned offset = warp_size / 2; offset > 0; offset /= 2) {
#pragma unroll
    for (unsigned k = 0; k < n; ++k) f[k] += __shfl_down_sync(full_warp, f[k], offset);
  }
  std::memcpy(&s, f, sizeof s);
  return s;
}

/// combine() over a group of threads, returned to every thread of the group. Within a warp, a butterfly:
/// in each round a lane combines its value with the value of the lane `offset` away, so the two lanes form
/// the same result (both operations used here are commutative) and after five rounds every lane holds the
/// same bits. A block group then stores each warp's result and every thread combines them in warp order.
/// Either way the call is also a barrier of the group: what its threads wrote to memory before it, every
/// thread of the group sees after it (`__syncwarp` / `__syncthreads`), which the decode attention's output
/// pass relies on (it reads every key's exponential).
template <unsigned Group, unsigned Block, class Combine>
__device__ inline double group_reduce(double v, Combine combine) {
  static_assert(Group == warp_size || (Group == Block && Block % warp_size == 0 && Block <= warp_size * warp_size),
                "group_reduce: a warp, or a block of whole warps (at most 32)");
  for (unsigned offset = warp_size / 2; offset > 0; offset /= 2) v = combine(v, __shfl_xor_sync(full_warp, v, offset));
  if constexpr (Group == warp_size) {
    __syncwarp();  // memory written by the lanes before the call is visible to every lane after it
    return v;
  } else {
    constexpr unsigned warps = Block / warp_size;
    __shared__ double warp_results[warps];  // one array per instantiation
    if (threadIdx.x % warp_size == 0) warp_results[threadIdx.x / warp_size] = v;
    __syncthreads();
    double total = warp_results[0];
    for (unsigned w = 1; w < warps; ++w) total = combine(total, warp_results[w]);
    __syncthreads();  // the next call may overwrite warp_results
    return total;
  }
}

struct add_doubles {
  __device__ double operator()(double a, double b) const { return a + b; }
};
/// fmax: exact in any order; a NaN is passed over (the row's sum that follows carries it).
struct max_doubles {
  __device__ double operator()(double a, double b) const { return fmax(a, b); }
};

/// The sum over a group of threads (see group_reduce), returned to every thread.
template <unsigned Group, unsigned Block>
__device__ inline double group_sum(double v) {
  return group_reduce<Group, Block>(v, add_doubles{});
}

/// The maximum over a group of threads (see group_reduce), returned to every thread.
template <unsigned Group, unsigned Block>
__device__ inline double group_max(double v) {
  return group_reduce<Group, Block>(v, max_doubles{});
}

/// Row r = the block's row `threadIdx.x / Group` (Block / Group rows per block): one sum, then the writes.
template <unsigned Group, unsigned Block, class Row>
__global__ void __launch_bounds__(Block) sum_then_write_rows(Row row, std::size_t count) {
  const std::size_t r = static_cast<std::size_t>(blockIdx.x) * (Block / Group) + threadIdx.x / Group;
  const unsigned t = threadIdx.x % Group;
  const bool live = r < count;  // every thread reaches the group's shuffles and barriers
  const double total = group_sum<Group, Block>(live ? row.partial_sum(r, t, Group) : 0.0);
  if (live) row.write(r, total, t, Group);
}

/// As sum_then_write_rows for a softmax: the row's maximum, the sum of exponentials, then the writes.
template <unsigned Group, unsigned Block, class Row>
__global__ void __launch_bounds__(Block) max_sum_then_write_rows(Row row, std::size_t count) {
  const std::size_t r = static_cast<std::size_t>(blockIdx.x) * (Block / Group) + threadIdx.x / Group;
  const unsigned t = threadIdx.x % Group;
  const bool live = r < count;
  const double m = group_max<Group, Block>(live ? row.partial_max(r, t, Group) : -HUGE_VAL);
  const double sum = group_sum<Group, Block>(live ? row.partial_sum(r, m, t, Group) : 0.0);
  if (live) row.write(r, m, sum, t, Group);
}

/// Which of the two kernels a row functor takes.
enum class split_row_kernel { sum_then_write, max_sum_then_write };

/// Runs `count` rows of `row_length` elements on b's stream, a warp or a block per row (see the file
/// comment); `what` names the algorithm in errors.
template <split_row_kernel Kernel, class Row>
void run_split_rows(const cuda_backend& b, std::size_t count, std::size_t row_length, const Row& row,
                    const char* what) {
  if (count == 0) return;
  constexpr unsigned block = cuda_backend::row_block_threads;
  constexpr unsigned rows_per_warp_block = block / warp_size;
  const bool by_block = row_length > split_row_warp_limit;
  const std::size_t grid = by_block ? count : (count + rows_per_warp_block - 1) / rows_per_warp_block;
  const unsigned blocks = detail::grid_blocks(grid, what);
  if constexpr (Kernel == split_row_kernel::sum_then_write) {
    if (by_block)
      sum_then_write_rows<block, block, Row><<<blocks, block, 0, b.stream()>>>(row, count);
    else
      sum_then_write_rows<warp_size, block, Row><<<blocks, block, 0, b.stream()>>>(row, count);
    detail::cuda_check(cudaGetLastError(), what, "sum_then_write_rows<<<>>>");
  } else {
    if (by_block)
      max_sum_then_write_rows<block, block, Row><<<blocks, block, 0, b.stream()>>>(row, count);
    else
      max_sum_then_write_rows<warp_size, block, Row><<<blocks, block, 0, b.stream()>>>(row, count);
    detail::cuda_check(cudaGetLastError(), what, "max_sum_then_write_rows<<<>>>");
  }
}

}  // namespace cuda_kernels

}  // namespace rlhf::backends
