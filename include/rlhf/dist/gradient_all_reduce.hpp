/// @file gradient_all_reduce.hpp
/// @brief Data-parallel gradients: every rank's gradients summed (in buckets), and every rank's
///        parameters made equal to one rank's.
///
/// With the losses normalized by global counts (rlhf::global_aggregation), each rank's gradient is its
/// share of the whole batch's, so the sum over ranks is the whole batch's gradient; after the all-reduce
/// every rank holds it, clips it to the same norm and takes the same optimizer step, and the replicas
/// stay equal. rlhf::gradient_all_reducer plans the buckets (gradients adjacent in memory reduced in
/// place, lone small ones packed) and starts each as soon as the backward pass reports its gradients
/// final, so that with a nonblocking communicator the sums overlap the rest of the backward pass;
/// rlhf::overlapped_gradient_all_reduce binds it to a model that reports (rlhf::reports_ready_gradients);
/// rlhf::all_reduce_gradients sums everything after the backward.
#pragma once

#include <algorithm>
#include <cstddef>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "rlhf/backends/concepts.hpp"
#include "rlhf/dist/communicator.hpp"
#include "rlhf/error.hpp"
#include "rlhf/models/concepts.hpp"
#include "rlhf/models/parameters.hpp"

namespace rlhf {

/// Options of rlhf::all_reduce_gradients and rlhf::gradient_all_reducer.
struct gradient_all_reduce_options {
  /// Bytes per bucket (> 0): gradients smaller than this are packed together into one collective, and
  /// with overlap a region of adjacent gradients is cut into pieces of about this size. 4 MiB keeps
  /// per-call latency small next to the transfer on MPI and NCCL alike.
  std::size_t bucket_bytes = std::size_t(4) << 20;
  /// With a nonblocking communicator: start each bucket's sum as soon as the backward pass reports its
  /// gradients final, while the backward goes on (false: every bucket at finish()).
  bool overlap = true;
};

/// What rlhf::all_reduce_gradients did (for tests and logs).
struct gradient_all_reduce_stats {
  std::size_t collectives = 0;  ///< all_reduce calls made
  std::size_t elements = 0;     ///< gradient elements reduced
  std::size_t packed_elements = 0;  ///< of which copied through a bucket (the rest were reduced in place)
  std::size_t started_early = 0;    ///< collectives started before finish(), during the backward pass
};

/// The buffers rlhf::gradient_all_reducer packs separate small gradients into, kept from one step to
/// the next by whoever owns it (the trainers keep one per model). Allocating them afresh every step costs
/// more than the copies: new memory is faulted in page by page and MPI registers it again (stories260K's
/// 47 separate tensors: 0.83 ms per sum with a fresh 1 MB buffer, 0.17 ms with a kept one, 2 ranks).
template <class B, class T>
class gradient_all_reduce_workspace {
 public:
  /// Buffer i, grown to at least n elements; its data pointer.
  T* reserve(const B& b, std::size_t i, std::size_t n) {
    if (buffers_.size() <= i) buffers_.resize(i + 1);
    if (!buffers_[i] || buffers_[i]->view().size() < n) buffers_[i].emplace(b.template allocate<T>(1, n));
    return buffers_[i]->view().data;
  }
  /// Buffer i's data (after reserve).
  T* data(std::size_t i) { return buffers_[i]->view().data; }
  /// Elements held, over every buffer.
  std::size_t capacity() const {
    std::size_t n = 0;
    for (const auto& buf : buffers_) n += buf ? buf->view().size() : 0;
    return n;
  }

 private:
  std::vector<std::optional<typename B::template buffer<T>>> buffers_;
};

/// Sums gradients over the ranks bucket by bucket, each bucket started as soon as its gradients are
/// final: the backward pass reports them (`ready`, e.g. from a model's rlhf::gradient_ready_callback),
/// and with an rlhf::nonblocking_communicator the sum runs while the backward goes on (what Li et al.
/// 2020, "PyTorch Distributed", call gradient bucketing with overlap). `finish()` starts the buckets no
/// one reported and waits for all.
///
/// The buckets are planned from `params` alone, in reverse parameter order (the order in which a
/// backward pass finishes gradients), and are started strictly in that order whatever order the reports
/// come in: every rank makes the same collective calls in the same order, including a rank with no
/// rows, which reports nothing and starts every bucket at finish(). Plan:
/// - gradients adjacent in memory (a model that keeps its gradients in one buffer, as rlhf::llama_model
///   does) are reduced in place, without copies: a run of them is one bucket, or with overlap pieces of
///   about `bucket_bytes` cut at tensor boundaries;
/// - a lone gradient of at least `bucket_bytes` is reduced in place too;
/// - consecutive lone smaller gradients (biases, scalar heads) are packed into one copied bucket.
///
/// One rank: no-op. Every rank must list identical parameters (names, shapes, layout in memory), as
/// models of the same configuration do. Nothing may write a reported gradient until finish() returns.
/// @tparam C an rlhf::communicator for B
template <class C, class B, class T>
class gradient_all_reducer {
  using S = typename B::memory_space;
  static constexpr bool nonblocking = nonblocking_communicator<C, B>;
  template <class CC, bool>
  struct handle_of {
    using type = completed_collective;
  };
  template <class CC>
  struct handle_of<CC, true> {
    using type = decltype(std::declval<const CC&>().all_reduce_async(std::declval<const B&>(), std::declval<matrix_view<T, S>>(),
                                                                     reduce_op::sum));
  };
  using handle = typename handle_of<C, nonblocking>::type;
  static constexpr std::size_t no_bucket = static_cast<std::size_t>(-1);

  struct bucket {
    std::vector<std::size_t> members;  // parameter indices, in reverse parameter order
    T* region = nullptr;               // in place: the lowest address of the adjacent gradients
    std::size_t elements = 0;
    bool in_place = true;
    std::size_t pack = 0;     // packed: its buffer in the workspace
    std::size_t waiting = 0;  // members not reported yet
    std::optional<handle> pending;
  };

 public:
  /// Plans the buckets of `params` (nothing is reduced yet).
  /// @throws rlhf::invalid_argument when options.bucket_bytes is 0
  /// @param workspace where separate small gradients are packed (kept by the caller from step to step),
  ///        or null for buffers of this reducer's own
  gradient_all_reducer(const C& comm, const B& b, parameter_list<T, S> params, const gradient_all_reduce_options& options = {},
                       gradient_all_reduce_workspace<B, T>* workspace = nullptr)
      : comm_(comm),
        ws_(workspace != nullptr ? workspace : &own_workspace_),
        b_(b),
        params_(std::move(params)),
        options_(options),
        started_async_(nonblocking && options.overlap && detail::overlaps_computation(comm)) {
    detail::check_communicator<C, B>();
    if (options.bucket_bytes == 0) {
      detail::throw_argument_error("rlhf::gradient_all_reducer", "options.bucket_bytes", "> 0", "0");
    }
    if (comm_.size() > 1) plan();
  }
  gradient_all_reducer(const gradient_all_reducer&) = delete;
  gradient_all_reducer& operator=(const gradient_all_reducer&) = delete;

  /// Whether there is anything to reduce (more than one rank).
  bool active() const { return comm_.size() > 1; }
  /// Whether buckets are started as they complete (a nonblocking communicator whose started collectives
  /// progress while the caller computes, and options.overlap); otherwise every bucket is summed with
  /// blocking calls in finish().
  bool overlapping() const { return started_async_; }

  /// The gradients of parameters [first, first + count) are final for this step: starts every bucket
  /// that is now complete and not preceded by an incomplete one, and drives the progress of those
  /// already started.
  /// @throws rlhf::invalid_argument when the range leaves the parameter list, a parameter is reported
  ///         twice, or after finish()
  void ready(std::size_t first, std::size_t count) {
    constexpr std::string_view fn = "rlhf::gradient_all_reducer::ready";
    if (!active()) return;
    if (finished_) detail::throw_argument_error(fn, "first", "a report before finish()", "a report after finish()");
    if (first > params_.size() || count > params_.size() - first) {
      detail::throw_argument_error(fn, "first, count", "a range within the " + std::to_string(params_.size()) + " parameters",
                                   "[" + std::to_string(first) + ", " + std::to_string(first + count) + ")");
    }
    for (std::size_t k = first; k < first + count; ++k) {
      if (reported_[k]) {
        detail::throw_argument_error(fn, "first, count", "parameters not reported yet this step",
                                     "parameter " + std::to_string(k) + " ('" + params_[k].name + "') again");
      }
      reported_[k] = true;
      if (bucket_of_[k] != no_bucket) --buckets_[bucket_of_[k]].waiting;
    }
    if (!started_async_) return;
    while (next_ < buckets_.size() && buckets_[next_].waiting == 0) {
      start(next_++);
      ++stats_.started_early;
    }
    for (std::size_t k = 0; k < next_; ++k) {
      if (buckets_[k].pending) (void)buckets_[k].pending->test();
    }
  }

  /// Starts the buckets not started yet (in order) and waits for every one: afterwards every gradient
  /// holds the sum over the ranks. Call it after the step's last backward pass. A second call returns
  /// the same statistics.
  gradient_all_reduce_stats finish() {
    if (!active() || finished_) return stats_;
    finished_ = true;
    while (next_ < buckets_.size()) start(next_++);
    for (bucket& bk : buckets_) {
      if (!bk.pending) continue;
      bk.pending->wait();
      bk.pending.reset();
      if (!bk.in_place) copy_out(bk);
    }
    return stats_;
  }

  /// The number of buckets planned (0 with one rank).
  std::size_t bucket_count() const { return buckets_.size(); }

 private:
  void plan() {
    const std::size_t capacity = std::max<std::size_t>(1, options_.bucket_bytes / sizeof(T));
    const bool cut_runs = started_async_;
    bucket_of_.assign(params_.size(), no_bucket);
    reported_.assign(params_.size(), false);
    // Runs of gradients adjacent in memory, walked backwards (each next member ends where the run starts).
    std::vector<std::vector<std::size_t>> runs;
    T* run_start = nullptr;
    for (std::size_t k = params_.size(); k-- > 0;) {
      const auto g = params_[k].grad;
      if (g.size() == 0) continue;
      if (runs.empty() || g.data + g.size() != run_start) runs.emplace_back();
      runs.back().push_back(k);
      run_start = g.data;
    }
    std::size_t open_pack = no_bucket, packs = 0;
    for (const auto& run : runs) {
      std::size_t n = 0;
      for (std::size_t k : run) n += params_[k].grad.size();
      if (run.size() == 1 && n < capacity) {  // a lone small gradient: packed
        if (open_pack == no_bucket || buckets_[open_pack].elements + n > capacity) {
          open_pack = buckets_.size();
          buckets_.emplace_back();
          buckets_.back().in_place = false;
          buckets_.back().pack = packs++;
        }
        add(open_pack, run.front());
        continue;
      }
      open_pack = no_bucket;
      std::size_t current = no_bucket;
      for (std::size_t k : run) {
        const std::size_t m = params_[k].grad.size();
        if (current == no_bucket || (cut_runs && buckets_[current].elements + m > capacity)) {
          current = buckets_.size();
          buckets_.emplace_back();
        }
        add(current, k);
        buckets_[current].region = params_[k].grad.data;  // walking backwards: the lowest address so far
      }
    }
  }
  void add(std::size_t index, std::size_t k) {
    bucket& bk = buckets_[index];
    bk.members.push_back(k);
    bk.elements += params_[k].grad.size();
    ++bk.waiting;
    bucket_of_[k] = index;
  }
  void start(std::size_t index) {
    bucket& bk = buckets_[index];
    matrix_view<T, S> x{bk.region, 1, bk.elements};
    if (!bk.in_place) {
      x = matrix_view<T, S>{ws_->reserve(b_, bk.pack, bk.elements), 1, bk.elements};
      std::size_t offset = 0;
      for (std::size_t k : bk.members) {
        const std::size_t m = params_[k].grad.size();
        b_.copy(vector_view<const T, S>{params_[k].grad.data, m}, vector_view<T, S>{x.data + offset, m});
        offset += m;
      }
      stats_.packed_elements += bk.elements;
    }
    ++stats_.collectives;
    stats_.elements += bk.elements;
    if constexpr (nonblocking) {
      if (started_async_) {
        bk.pending.emplace(comm_.all_reduce_async(b_, x, reduce_op::sum));
        return;
      }
    }
    comm_.all_reduce(b_, x, reduce_op::sum);
    if (!bk.in_place) copy_out(bk);
  }
  void copy_out(const bucket& bk) {
    const T* from = ws_->data(bk.pack);
    for (std::size_t k : bk.members) {
      const std::size_t m = params_[k].grad.size();
      b_.copy(vector_view<const T, S>{from, m}, params_[k].grad.flat());
      from += m;
    }
  }

  C comm_;
  gradient_all_reduce_workspace<B, T> own_workspace_;
  gradient_all_reduce_workspace<B, T>* ws_;
  const B& b_;
  parameter_list<T, S> params_;
  gradient_all_reduce_options options_;
  std::vector<bucket> buckets_;
  std::vector<std::size_t> bucket_of_;
  std::vector<bool> reported_;
  std::size_t next_ = 0;  // the first bucket not started
  bool finished_ = false;
  bool started_async_;  // buckets start as collectives complete (all_reduce_async), not at finish()
  gradient_all_reduce_stats stats_;
};

/// Sums every parameter's gradient over the ranks, in place (reduce_op::sum), in buckets planned as
/// rlhf::gradient_all_reducer plans them (all started at once here: the backward pass is over). Pass a
/// workspace kept from call to call when the gradients are separate tensors.
/// Every rank must list identical parameters. One rank: no-op.
/// @tparam C an rlhf::communicator for B
/// @throws rlhf::invalid_argument when options.bucket_bytes is 0
template <class C, class B, class T>
gradient_all_reduce_stats all_reduce_gradients(const C& comm, const B& b,
                                               const parameter_list<T, typename B::memory_space>& params,
                                               const gradient_all_reduce_options& options = {},
                                               gradient_all_reduce_workspace<B, T>* workspace = nullptr) {
  if (options.bucket_bytes == 0) {
    detail::throw_argument_error("rlhf::all_reduce_gradients", "options.bucket_bytes", "> 0", "0");
  }
  gradient_all_reducer<C, B, T> reducer(comm, b, params, options, workspace);
  return reducer.finish();
}

/// A model's gradients summed over the ranks during its backward pass: plans an
/// rlhf::gradient_all_reducer over `model.parameters()`; `arm()` (before the step's last backward,
/// whose gradients are final) makes a model that reports ready gradients (rlhf::reports_ready_gradients)
/// feed the reducer while it runs; `finish()` disarms and completes the sum. A model that does not
/// report gets every bucket at finish(). Between arm() and finish() the step must make no other
/// collective call (the buckets' starts are collective calls, in the same order on every rank).
/// @tparam C an rlhf::communicator for the model's backend
/// @tparam M a model with `parameters()` (rlhf::policy, rlhf::reward_model, rlhf::value_model)
template <class C, class M>
class overlapped_gradient_all_reduce {
  using B = typename M::backend_type;
  using T = typename M::value_type;

 public:
  /// @param workspace packing buffers kept from step to step (rlhf::gradient_all_reduce_workspace), or null
  overlapped_gradient_all_reduce(const C& comm, const B& b, M& model, const gradient_all_reduce_options& options = {},
                                 gradient_all_reduce_workspace<B, T>* workspace = nullptr)
      // One rank sums nothing: the parameter list (names and views) is not even built.
      : model_(model),
        reducer_(comm, b, comm.size() > 1 ? model.parameters() : parameter_list<T, typename B::memory_space>{}, options,
                 workspace) {}
  overlapped_gradient_all_reduce(const overlapped_gradient_all_reduce&) = delete;
  overlapped_gradient_all_reduce& operator=(const overlapped_gradient_all_reduce&) = delete;
  ~overlapped_gradient_all_reduce() { disarm(); }

  /// From now until finish(), the model's backward passes report final gradients to the reducer.
  void arm() {
    if constexpr (reports_ready_gradients<M>) {
      if (reducer_.active()) {
        model_.on_gradients_ready([this](std::size_t first, std::size_t count) { reducer_.ready(first, count); });
        armed_ = true;
      }
    }
  }
  /// Disarms the model, starts what is left and waits: every gradient holds the sum over the ranks.
  gradient_all_reduce_stats finish() {
    disarm();
    return reducer_.finish();
  }

 private:
  void disarm() noexcept {
    if constexpr (reports_ready_gradients<M>) {
      if (armed_) model_.on_gradients_ready(gradient_ready_callback{});
    }
    armed_ = false;
  }
  M& model_;
  gradient_all_reducer<C, B, T> reducer_;
  bool armed_ = false;
};

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
