/// @file data_parallel.hpp
/// @brief What the trainers share to run data-parallel over an rlhf::communicator: the run loop's rank
///        role, and the one-time broadcast that makes every rank's replicas equal.
///
/// A trainer given a communicator of N ranks trains the model one process would train on the union of
/// the ranks' batches: losses are normalized by global counts (rlhf::global_aggregation), gradients are
/// summed over ranks (rlhf::all_reduce_gradients) before the same clipping and optimizer step on every
/// rank, and the statistics that decide anything (whitening moments, the KL of the adaptive controller
/// and of the early stop) are global. docs/distributed.md has the whole picture.
#pragma once

#include <functional>

#include "rlhf/dist/communicator.hpp"
#include "rlhf/dist/gradient_all_reduce.hpp"
#include "rlhf/train/training_run.hpp"

namespace rlhf::detail {

/// The run loop's role of this rank: rank 0 writes; with more than one rank, a barrier after each
/// checkpoint.
template <class C>
run_rank run_rank_of(const C& comm) {
  run_rank r;
  r.writer = comm.rank() == 0;
  if (comm.size() > 1) r.barrier = [comm] { comm.barrier(); };
  return r;
}

/// Makes every rank's models equal to rank 0's (parameter values) once, at a trainer's first step:
/// replicas built from the same checkpoint are already equal, replicas initialized at random are not.
class replicas_in_sync {
 public:
  template <class C, class B, class... M>
  void ensure(const C& comm, const B& b, M&... models) {
    if (done_) return;
    (broadcast_parameters(comm, b, models.parameters()), ...);
    done_ = true;
  }
  /// Every rank loaded the same weights (a checkpoint): nothing to broadcast.
  void mark_equal() { done_ = true; }

 private:
  bool done_ = false;
};

}  // namespace rlhf::detail
