/// @file ordered_reduce.hpp
/// @brief The order-preserving block fold of the CUDA backend's `transform_reduce` and `reduce_rows`
///        (rlhf/backends/cuda/reduce.cuh), as host-and-device steps the CPU tests replay.
///
/// The Thrust backend folds a block of `reduce_block` elements on one thread, which on a GPU is one thread
/// walking 4096 elements (and `reduce_rows` one thread per row). The CUDA backend gives such a range to a
/// block of `ordered_reduce_threads` threads instead:
///
/// - thread t folds the contiguous slice [begin + t q, begin + (t + 1) q) of the range, q = ceil(n / threads),
///   left to right (`ordered_slice`, `ordered_slice_fold`);
/// - the threads' results are combined by `ordered_tree_step` for s = 1, 2, 4, ...: thread t (t a multiple
///   of 2s) takes op(own, that of t + s), the fold of two adjacent ranges in order.
///
/// So the result is the fold of the whole range in its order, grouped differently: any associative op gives
/// the left-to-right fold's value (a non-commutative one included, e.g. the composition of affine maps), up to
/// rounding for floating-point sums. The grouping depends only on the range's length and the constant thread
/// count, never on the launch, so results are reproducible. A thread whose slice is empty holds no value
/// (`has` false) and is skipped, so no identity element is needed: `init` is applied once, after the fold.
#pragma once

#include <cstddef>

#include "rlhf/config.hpp"

namespace rlhf::backends::detail {

/// Threads per block of the ordered reductions.
inline constexpr unsigned ordered_reduce_threads = 256;

/// Thread t's slice [first, last) of the range [begin, end) split across `threads` threads in order.
struct ordered_slice {
  std::size_t first, last;

  RLHF_HOST_DEVICE static ordered_slice of(std::size_t begin, std::size_t end, unsigned t, unsigned threads) {
    const std::size_t n = end - begin;
    const std::size_t per = (n + threads - 1) / threads;
    const std::size_t first = begin + t * per < end ? begin + t * per : end;
    const std::size_t last = first + per < end ? first + per : end;
    return {first, last};
  }
};

/// Folds element(i) for i in the slice, left to right, into `acc`; `has` tells whether acc holds a value.
template <class Acc, class Op, class Element>
RLHF_HOST_DEVICE RLHF_FORCE_INLINE void ordered_slice_fold(ordered_slice slice, Op op, const Element& element, Acc& acc,
                                                           bool& has) {
  has = slice.first < slice.last;
  if (!has) return;
  acc = element(slice.first);
  for (std::size_t i = slice.first + 1; i < slice.last; ++i) acc = op(acc, element(i));
}

/// Step s (1, 2, 4, ...) of the tree over `count` results: thread t, a multiple of 2s, folds in the result of
/// t + s. Within one step no thread reads a slot another writes, so the threads of a block may run it at
/// once (with a barrier between steps) and a host loop over t in any order gives the same result.
template <class Acc, class Op>
RLHF_HOST_DEVICE RLHF_FORCE_INLINE void ordered_tree_step(Acc* values, bool* has, unsigned t, unsigned s, unsigned count,
                                                          Op op) {
  if (t % (2 * s) != 0 || t + s >= count || !has[t + s]) return;
  values[t] = has[t] ? op(values[t], values[t + s]) : values[t + s];
  has[t] = true;
}

}  // namespace rlhf::backends::detail
