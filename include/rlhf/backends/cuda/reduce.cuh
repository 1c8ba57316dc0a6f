/// @file reduce.cuh
/// @brief The CUDA backend's `transform_reduce` and `reduce_rows` kernels: a block of 256 threads per range,
///        each thread folding a contiguous slice, the slices combined by an order-preserving tree.
///
/// The Thrust backend folds each block of 4096 elements (`transform_reduce`) or each row (`reduce_rows`) on
/// one thread: right on a CPU, but on a GPU one thread walking thousands of elements is the whole call's
/// latency (the aggregation weights, token counts, finite checks and statistics of every loss go through
/// these primitives). Here a block of `ordered_reduce_threads` threads takes the range: thread t folds the
/// t-th contiguous slice, and `ordered_tree_step` combines adjacent slices in order (the steps and their
/// proof of order are in rlhf/backends/ordered_reduce.hpp, which the CPU tests replay with a
/// non-commutative op). `transform_reduce` keeps Thrust's ranges of `reduce_block` elements, one block each,
/// and folds their results on the host in order after one copy.
///
/// CPU reference: the reference backend's left-to-right folds; equal for any associative op up to the
/// rounding of regrouped floating-point sums. The conformance suite's transform_reduce and reduce_rows
/// checks hold the GPU to it.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>

#include "rlhf/backends/ordered_reduce.hpp"
#include "rlhf/backends/thrust.hpp"

namespace rlhf::backends::cuda_kernels {

/// The largest accumulator folded by these kernels (one per thread in shared memory: 32 KiB at 256
/// threads); larger ones take the Thrust backend's fold.
inline constexpr std::size_t ordered_reduce_max_bytes = 128;

/// Combines the block's per-thread results in order; every thread returns whether the block holds a value,
/// and thread 0's `acc` is the block's fold. Called once per kernel by every thread of the block.
template <class Acc, unsigned Threads, class Op>
__device__ bool ordered_block_fold(Acc& acc, bool has, Op op) {
  // Raw storage: a __shared__ variable cannot have a constructor; Acc is trivially copyable.
  __shared__ alignas(Acc) unsigned char storage[Threads * sizeof(Acc)];
  __shared__ bool flags[Threads];
  Acc* values = reinterpret_cast<Acc*>(storage);
  const unsigned t = threadIdx.x;
  if (has) values[t] = acc;
  flags[t] = has;
  __syncthreads();
  for (unsigned s = 1; s < Threads; s *= 2) {
    rlhf::backends::detail::ordered_tree_step(values, flags, t, s, Threads, op);
    __syncthreads();
  }
  if (t == 0 && flags[0]) acc = values[0];
  return flags[0];
}

/// Block k folds elements [k block, min(n, (k + 1) block)) of f(in...) into partial[k] (never empty).
template <class Acc, unsigned Threads, class Op, class F, class... In>
__global__ void __launch_bounds__(Threads)
    ordered_transform_reduce_blocks(Acc* partial, Acc init, Op op, F f, rlhf::backends::detail::pointer_pack<In...> in,
                                    std::size_t n, std::size_t block) {
  const std::size_t begin = static_cast<std::size_t>(blockIdx.x) * block;
  const std::size_t end = begin + block < n ? begin + block : n;
  Acc acc = init;
  bool has = false;
  rlhf::backends::detail::ordered_slice_fold(
      rlhf::backends::detail::ordered_slice::of(begin, end, threadIdx.x, Threads), op,
      [&](std::size_t i) { return rlhf::backends::detail::call_at(f, in, i); }, acc, has);
  ordered_block_fold<Acc, Threads>(acc, has, op);
  if (threadIdx.x == 0) partial[blockIdx.x] = acc;
}

/// Block r writes out[r] = init op f(0, in(r, 0)...) op f(1, in(r, 1)...) ... (init alone for no columns).
template <class Acc, unsigned Threads, class Op, class F, class... In>
__global__ void __launch_bounds__(Threads)
    ordered_reduce_rows(Acc* out, Acc init, Op op, F f, rlhf::backends::detail::pointer_pack<In...> in, std::size_t cols) {
  const std::size_t r = blockIdx.x;
  const std::size_t base = r * cols;
  Acc acc = init;
  bool has = false;
  rlhf::backends::detail::ordered_slice_fold(
      rlhf::backends::detail::ordered_slice::of(0, cols, threadIdx.x, Threads), op,
      [&](std::size_t c) { return rlhf::backends::detail::call_at(f, in, base + c, c); }, acc, has);
  has = ordered_block_fold<Acc, Threads>(acc, has, op);
  if (threadIdx.x == 0) out[r] = has ? op(init, acc) : init;
}

}  // namespace rlhf::backends::cuda_kernels
