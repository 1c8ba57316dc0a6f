/// @file embedding_backward.hpp
/// @brief The token embedding's scatter-add gradient by token-sorted segments, on any Thrust system: the
///        CUDA backend's embedding backward (rlhf/backends/cuda/embedding_backward.cuh), written over a
///        Thrust backend so that the CPU test suite runs the same code on Thrust's host systems.
///
/// Same contract as rlhf::embedding_backward (rlhf/models/layers/embedding.hpp):
/// `d_table(tokens[n], :) += d_out(n, :)` for every n. The generic path gives each of the D columns one
/// index that walks all N tokens in order, which keeps the additions deterministic without atomics; on a
/// GPU that is D threads (a few dozen warps) each making N dependent read-modify-writes. Here:
///
/// 1. the token ids are sorted with their positions (`stable_sort_by_key`: equal ids keep their positions in
///    increasing order), and the starts of the runs of equal ids are gathered (`copy_if`): U distinct
///    tokens, U <= N;
/// 2. one index per (run, column), U * D of them, adds the run's rows of d_out into its table element,
///    positions in increasing order, starting from the element's value.
///
/// Each table element therefore receives the generic path's terms in the generic path's order, in T: the
/// result is the same bits as the generic path. The sorted ids, their positions and the run starts are the
/// scratch (N ids and 2 N sizes);
/// d_out is read once, each touched table row written once. The run count is read back to the host (one
/// synchronization of the backend's stream).
#pragma once

#include <thrust/copy.h>
#include <thrust/iterator/counting_iterator.h>
#include <thrust/sequence.h>
#include <thrust/sort.h>

#include <cstddef>

#include "rlhf/backends/thrust.hpp"
#include "rlhf/backends/view.hpp"
#include "rlhf/config.hpp"

namespace rlhf::detail {

/// True at position k of the sorted ids where a run of equal ids starts.
struct embedding_run_start {
  const token_type* sorted;
  RLHF_HOST_DEVICE bool operator()(std::size_t k) const { return k == 0 || sorted[k] != sorted[k - 1]; }
};

/// Index i = u * D + c: d_table(id of run u, c) += d_out(n, c) over the run's positions n, in order.
template <class T, class S>
struct embedding_backward_run_column {
  const token_type* sorted;     // [N] ids, sorted
  const std::size_t* position;  // [N] their positions in `tokens`
  const std::size_t* start;     // [U] where each run starts in `sorted`
  std::size_t runs;
  matrix_view<const T, S> d_out;
  matrix_view<T, S> d_table;

  RLHF_HOST_DEVICE void operator()(std::size_t i) const {
    const std::size_t d = d_out.cols;
    const std::size_t u = i / d, c = i - u * d;
    const std::size_t first = start[u], last = u + 1 < runs ? start[u + 1] : d_out.rows;
    T* element = d_table.data + static_cast<std::size_t>(sorted[first]) * d + c;
    T acc = *element;
    for (std::size_t k = first; k < last; ++k) acc += d_out.data[static_cast<std::size_t>(position[k]) * d + c];
    *element = acc;
  }
};

/// rlhf::embedding_backward by token-sorted runs on the Thrust backend `b` (see the file comment); the
/// arguments are validated by the caller.
template <class System, class Space, class T>
void embedding_backward_by_runs(const backends::thrust_backend<System, Space>& b,
                                vector_view<const token_type, Space> tokens, matrix_view<const T, Space> d_out,
                                matrix_view<T, Space> d_table) {
  const std::size_t n = tokens.size, d = d_out.cols;
  if (n == 0 || d == 0) return;
  auto sorted = b.template allocate<token_type>(1, n);
  auto position = b.template allocate<std::size_t>(1, n);
  auto start = b.template allocate<std::size_t>(1, n);
  ::thrust::copy_n(b.policy, tokens.data, n, sorted.data());
  ::thrust::sequence(b.policy, position.data(), position.data() + n);
  ::thrust::stable_sort_by_key(b.policy, sorted.data(), sorted.data() + n, position.data());
  const auto end = ::thrust::copy_if(b.policy, ::thrust::counting_iterator<std::size_t>(0),
                                     ::thrust::counting_iterator<std::size_t>(n), start.data(),
                                     embedding_run_start{sorted.data()});
  const auto runs = static_cast<std::size_t>(end - start.data());
  b.for_each_index(runs * d, embedding_backward_run_column<T, Space>{sorted.data(), position.data(), start.data(),
                                                                     runs, d_out, d_table});
}

}  // namespace rlhf::detail
