/// @file gradient_all_reduce.hpp
/// @brief Data-parallel gradients: every rank's gradients summed (in buckets), and every rank's
///        parameters made equal to one rank's.
///
/// With the losses normalized by global counts (rlhf::global_aggregation), each rank's gradient is its
/// share of the whole batch's, so the sum over ranks is the whole batch's gradient; after the all-reduce
/// every rank holds it, clips it to the same norm and takes the same optimizer step, and the replicas
/// stay equal. Gradients adjacent in memory (a model that keeps all its gradients in one buffer, as
/// rlhf::llama_model does) are reduced in place as one region, without copies; other gradients smaller
/// than a bucket are packed into buckets of `bucket_bytes`, so a model of many separate small tensors
/// (norm weights, biases) costs a few collectives, not one per tensor; a separate gradient at least as
/// large as a bucket is reduced in place.
#pragma once

#include <algorithm>
#include <cstddef>
#include <utility>
#include <vector>

#include "rlhf/backends/concepts.hpp"
#include "rlhf/dist/communicator.hpp"
#include "rlhf/error.hpp"
#include "rlhf/models/parameters.hpp"

namespace rlhf {

/// Options of rlhf::all_reduce_gradients.
struct gradient_all_reduce_options {
  /// Bytes per bucket (> 0): gradients smaller than this are packed together into one collective.
  /// 4 MiB keeps per-call latency small next to the transfer on MPI and NCCL alike.
  std::size_t bucket_bytes = std::size_t(4) << 20;
};

/// What rlhf::all_reduce_gradients did (for tests and logs).
struct gradient_all_reduce_stats {
  std::size_t collectives = 0;  ///< all_reduce calls made
  std::size_t elements = 0;     ///< gradient elements reduced
  std::size_t packed_elements = 0;  ///< of which copied through a bucket (the rest were reduced in place)
};

/// Sums every parameter's gradient over the ranks, in place (reduce_op::sum), in the order of `params`
/// (which every rank must list identically, as a model of the same configuration does, with the same
/// layout in memory). One rank: no-op.
/// @tparam C an rlhf::communicator for B
/// @throws rlhf::invalid_argument when options.bucket_bytes is 0
template <class C, class B, class T>
gradient_all_reduce_stats all_reduce_gradients(const C& comm, const B& b,
                                               const parameter_list<T, typename B::memory_space>& params,
                                               const gradient_all_reduce_options& options = {}) {
  detail::check_communicator<C, B>();
  if (options.bucket_bytes == 0) {
    detail::throw_argument_error("rlhf::all_reduce_gradients", "options.bucket_bytes", "> 0", "0");
  }
  gradient_all_reduce_stats stats;
  if (comm.size() == 1) return stats;
  using S = typename B::memory_space;
  const std::size_t capacity = std::max<std::size_t>(1, options.bucket_bytes / sizeof(T));
  typename B::template buffer<T> bucket = b.template allocate<T>(1, 0);
  bool allocated = false;
  std::vector<std::pair<matrix_view<T, S>, std::size_t>> packed;  // gradient, offset in the bucket
  std::size_t used = 0;
  const auto flush = [&] {
    if (used == 0) return;
    const matrix_view<T, S> whole = bucket.view();
    comm.all_reduce(b, matrix_view<T, S>{whole.data, 1, used}, reduce_op::sum);
    ++stats.collectives;
    for (const auto& [grad, offset] : packed) {
      b.copy(vector_view<const T, S>{whole.data + offset, grad.size()}, grad.flat());
    }
    packed.clear();
    used = 0;
  };
  // A run of gradients adjacent in memory (a model that keeps its gradients in one buffer, as
  // rlhf::llama_model does) is one region, reduced in place without copies; a lone gradient smaller than
  // a bucket is packed with others.
  for (std::size_t i = 0; i < params.size();) {
    T* const start = params[i].grad.data;
    std::size_t n = params[i].grad.size(), j = i + 1, tensors = 1;
    for (; j < params.size(); ++j) {
      const std::size_t m = params[j].grad.size();
      if (m == 0) continue;
      if (n == 0 || start + n != params[j].grad.data) break;
      n += m;
      ++tensors;
    }
    i = j;
    if (n == 0) continue;
    stats.elements += n;
    if (tensors > 1 || n >= capacity) {  // in place, no copies
      comm.all_reduce(b, matrix_view<T, S>{start, 1, n}, reduce_op::sum);
      ++stats.collectives;
      continue;
    }
    if (used + n > capacity) flush();
    if (!allocated) {
      bucket = b.template allocate<T>(1, capacity);
      allocated = true;
    }
    const matrix_view<T, S> whole = bucket.view();
    b.copy(vector_view<const T, S>{start, n}, vector_view<T, S>{whole.data + used, n});
    packed.emplace_back(matrix_view<T, S>{start, 1, n}, used);
    used += n;
    stats.packed_elements += n;
  }
  flush();
  return stats;
}

/// Makes every rank's parameter values equal to rank `root`'s (e.g. after each rank built or randomly
/// initialized its replica). One rank: no-op.
/// @tparam C an rlhf::communicator for B
template <class C, class B, class T>
void broadcast_parameters(const C& comm, const B& b, const parameter_list<T, typename B::memory_space>& params,
                          std::size_t root = 0) {
  detail::check_communicator<C, B>();
  if (comm.size() == 1) return;
  for (const auto& p : params) {
    if (p.value.size() != 0) comm.broadcast(b, p.value, root);
  }
}

}  // namespace rlhf
