/// @file mpi.hpp
/// @brief The MPI communicator (CMake component `mpi`, Debian `libopenmpi-dev openmpi-bin`): data-parallel
///        training of CPU backends across processes and nodes, and the start-up/failure handling of an
///        MPI program.
///
///     int main(int argc, char** argv) {
///       return rlhf::mpi_main(argc, argv, [&](const rlhf::mpi_communicator& comm) {
///         ...  // build models, rlhf::ppo_trainer trainer(..., options, comm); trainer.fit(...)
///         return 0;
///       });
///     }
///
/// Run with `mpirun -np 2 ./program`. A rank that throws prints "rlhf: rank R of N failed: <what>" and
/// aborts the whole job (MPI_Abort), so the other ranks never wait forever in a collective.
#pragma once

// The library uses MPI's C API only: keep the deprecated C++ bindings out (OpenMPI, MPICH).
#ifndef OMPI_SKIP_MPICXX
#define OMPI_SKIP_MPICXX 1
#endif
#ifndef MPICH_SKIP_MPICXX
#define MPICH_SKIP_MPICXX 1
#endif
#include <mpi.h>

#include <algorithm>
#include <climits>
#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include "rlhf/dist/communicator.hpp"
#include "rlhf/error.hpp"

namespace rlhf {

namespace detail {
[[noreturn]] inline void throw_mpi_error(std::string_view function, std::string_view call, int code) {
  char text[MPI_MAX_ERROR_STRING] = {};
  int length = 0;
  MPI_Error_string(code, text, &length);
  throw distributed_error(std::string(function) + ": " + std::string(call) + " failed: " + std::string(text, static_cast<std::size_t>(length)));
}
inline void check_mpi(std::string_view function, std::string_view call, int code) {
  if (code != MPI_SUCCESS) throw_mpi_error(function, call, code);
}
template <class T>
MPI_Datatype mpi_type_of() {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>, "rlhf::mpi_communicator: elements must be float or double");
  if constexpr (std::is_same_v<T, float>) return MPI_FLOAT;
  else return MPI_DOUBLE;
}
template <class S>
constexpr void check_mpi_space() {
  static_assert(S::host_accessible,
                "rlhf::mpi_communicator: the views must be host-accessible (a CPU backend); the CUDA backend's "
                "collectives are rlhf::nccl_communicator's");
}
inline MPI_Op mpi_op_of(reduce_op op) { return op == reduce_op::sum ? MPI_SUM : MPI_MAX; }
// MPI counts are int: large views go in chunks.
constexpr std::size_t mpi_max_count = static_cast<std::size_t>(INT_MAX);
}  // namespace detail

/// A started MPI all-reduce (rlhf::mpi_communicator::all_reduce_async): its requests, one per chunk.
/// `test()` (MPI_Testall) also drives progress, which most MPI libraries make only inside MPI calls;
/// `wait()` is MPI_Waitall. Move-only; destroyed before its wait(), it waits (errors ignored then).
class mpi_pending_collective {
 public:
  mpi_pending_collective() = default;
  explicit mpi_pending_collective(std::vector<MPI_Request> requests) : requests_(std::move(requests)) {}
  mpi_pending_collective(mpi_pending_collective&& o) noexcept : requests_(std::move(o.requests_)) { o.requests_.clear(); }
  mpi_pending_collective& operator=(mpi_pending_collective&& o) noexcept {
    if (this != &o) {
      finish_quietly();
      requests_ = std::move(o.requests_);
      o.requests_.clear();
    }
    return *this;
  }
  mpi_pending_collective(const mpi_pending_collective&) = delete;
  mpi_pending_collective& operator=(const mpi_pending_collective&) = delete;
  ~mpi_pending_collective() { finish_quietly(); }

  /// Whether the collective completed (then the data holds the result).
  /// @throws rlhf::distributed_error when MPI reports an error
  bool test() {
    if (requests_.empty()) return true;
    int done = 0;
    detail::check_mpi("rlhf::mpi_pending_collective::test", "MPI_Testall",
                      MPI_Testall(static_cast<int>(requests_.size()), requests_.data(), &done, MPI_STATUSES_IGNORE));
    if (done) requests_.clear();
    return done != 0;
  }
  /// Returns once the collective completed.
  /// @throws rlhf::distributed_error when MPI reports an error
  void wait() {
    if (requests_.empty()) return;
    std::vector<MPI_Request> r = std::move(requests_);
    requests_.clear();
    detail::check_mpi("rlhf::mpi_pending_collective::wait", "MPI_Waitall",
                      MPI_Waitall(static_cast<int>(r.size()), r.data(), MPI_STATUSES_IGNORE));
  }

 private:
  void finish_quietly() noexcept {
    if (requests_.empty()) return;
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (!finalized) MPI_Waitall(static_cast<int>(requests_.size()), requests_.data(), MPI_STATUSES_IGNORE);
    requests_.clear();
  }
  std::vector<MPI_Request> requests_;
};

/// An rlhf::communicator over an MPI communicator, for backends whose memory is host-accessible (the
/// reference, Eigen, xtensor and CPU Thrust backends). The collectives are MPI_Allreduce (in place),
/// MPI_Bcast, MPI_Allgather and MPI_Barrier; they synchronize the backend first. It is an
/// rlhf::nonblocking_communicator (all_reduce_async is MPI_Iallreduce), but by default it says that
/// started collectives do not overlap computation (`overlaps_computation()` false), so gradients are
/// summed after the backward with MPI_Allreduce: most MPI libraries progress a nonblocking collective
/// only inside MPI calls, and Open MPI's MPI_Iallreduce over shared memory runs a slower algorithm than
/// its MPI_Allreduce (docs/benchmarks.md: overlapping lost time on the CPU). Pass
/// `overlap_gradients = true` for an MPI with asynchronous progress (every rank the same). The communicator is
/// duplicated (MPI_Comm_dup) so the library's messages never mix with the caller's, and its error handler
/// returns codes, which become rlhf::distributed_error. Copies share the duplicate; the last one frees it
/// (unless MPI is already finalized).
class mpi_communicator {
 public:
  /// @param comm the processes to span (default: all of them). MPI must be initialized (rlhf::mpi_session
  ///        or rlhf::mpi_main do it).
  /// @throws rlhf::distributed_error when MPI is not initialized or the duplication fails
  /// @param overlap_gradients whether gradient sums should start during the backward (MPI_Iallreduce);
  ///        every rank must pass the same value
  explicit mpi_communicator(MPI_Comm comm = MPI_COMM_WORLD, bool overlap_gradients = false) {
    constexpr std::string_view fn = "rlhf::mpi_communicator";
    int initialized = 0;
    MPI_Initialized(&initialized);
    if (!initialized) throw distributed_error(std::string(fn) + ": MPI is not initialized (use rlhf::mpi_session or rlhf::mpi_main)");
    auto s = std::make_shared<state>();
    detail::check_mpi(fn, "MPI_Comm_dup", MPI_Comm_dup(comm, &s->comm));
    detail::check_mpi(fn, "MPI_Comm_set_errhandler", MPI_Comm_set_errhandler(s->comm, MPI_ERRORS_RETURN));
    int r = 0, n = 0;
    detail::check_mpi(fn, "MPI_Comm_rank", MPI_Comm_rank(s->comm, &r));
    detail::check_mpi(fn, "MPI_Comm_size", MPI_Comm_size(s->comm, &n));
    s->rank = static_cast<std::size_t>(r);
    s->size = static_cast<std::size_t>(n);
    s->overlap = overlap_gradients;
    state_ = std::move(s);
  }

  std::size_t rank() const { return state_->rank; }
  std::size_t size() const { return state_->size; }
  /// Whether gradient sums start during the backward (the constructor's `overlap_gradients`).
  bool overlaps_computation() const { return state_->overlap; }
  /// The duplicated MPI communicator (for the caller's own MPI calls alongside the library's).
  MPI_Comm native() const { return state_->comm; }

  /// In place: x becomes the element-wise sum (or max) over ranks. Every rank passes the same shape.
  template <class B, class T, class S>
  void all_reduce(const B& b, matrix_view<T, S> x, reduce_op op) const {
    detail::check_mpi_space<S>();
    b.synchronize();
    const MPI_Op mop = detail::mpi_op_of(op);
    for (std::size_t first = 0; first < x.size(); first += detail::mpi_max_count) {
      const int n = static_cast<int>(std::min(detail::mpi_max_count, x.size() - first));
      detail::check_mpi("rlhf::mpi_communicator::all_reduce", "MPI_Allreduce",
                        MPI_Allreduce(MPI_IN_PLACE, x.data + first, n, detail::mpi_type_of<T>(), mop, state_->comm));
    }
  }

  /// Starts the in-place all_reduce of x (MPI_Iallreduce) and returns its handle; x must stay untouched
  /// until the handle's wait() returns.
  template <class B, class T, class S>
  mpi_pending_collective all_reduce_async(const B& b, matrix_view<T, S> x, reduce_op op) const {
    detail::check_mpi_space<S>();
    b.synchronize();
    const MPI_Op mop = detail::mpi_op_of(op);
    std::vector<MPI_Request> requests;
    mpi_pending_collective pending;  // completes the requests already started if a later chunk fails
    for (std::size_t first = 0; first < x.size(); first += detail::mpi_max_count) {
      const int n = static_cast<int>(std::min(detail::mpi_max_count, x.size() - first));
      MPI_Request r = MPI_REQUEST_NULL;
      const int code = MPI_Iallreduce(MPI_IN_PLACE, x.data + first, n, detail::mpi_type_of<T>(), mop, state_->comm, &r);
      if (code != MPI_SUCCESS) {
        pending = mpi_pending_collective(std::move(requests));
        detail::throw_mpi_error("rlhf::mpi_communicator::all_reduce_async", "MPI_Iallreduce", code);
      }
      requests.push_back(r);
    }
    return mpi_pending_collective(std::move(requests));
  }

  /// In place: x becomes rank `root`'s x. Every rank passes the same shape.
  /// @throws rlhf::invalid_argument when root >= size()
  template <class B, class T, class S>
  void broadcast(const B& b, matrix_view<T, S> x, std::size_t root) const {
    detail::check_mpi_space<S>();
    constexpr std::string_view fn = "rlhf::mpi_communicator::broadcast";
    if (root >= size()) {
      detail::throw_argument_error(fn, "root", "a rank below " + std::to_string(size()), std::to_string(root));
    }
    b.synchronize();
    for (std::size_t first = 0; first < x.size(); first += detail::mpi_max_count) {
      const int n = static_cast<int>(std::min(detail::mpi_max_count, x.size() - first));
      detail::check_mpi(fn, "MPI_Bcast",
                        MPI_Bcast(x.data + first, n, detail::mpi_type_of<T>(), static_cast<int>(root), state_->comm));
    }
  }

  /// Every rank's `values`, in rank order. The ranks must pass the same count: a mismatch throws
  /// rlhf::distributed_error on every rank (the counts are exchanged first).
  std::vector<double> all_gather(std::span<const double> values) const {
    constexpr std::string_view fn = "rlhf::mpi_communicator::all_gather";
    const unsigned long long mine = values.size();
    std::vector<unsigned long long> counts(size());
    detail::check_mpi(fn, "MPI_Allgather", MPI_Allgather(&mine, 1, MPI_UNSIGNED_LONG_LONG, counts.data(), 1,
                                                         MPI_UNSIGNED_LONG_LONG, state_->comm));
    for (std::size_t r = 0; r < counts.size(); ++r) {
      if (counts[r] != counts[0]) {
        throw distributed_error(std::string(fn) + ": the ranks passed different counts (rank 0: " + std::to_string(counts[0]) +
                                ", rank " + std::to_string(r) + ": " + std::to_string(counts[r]) + ")");
      }
    }
    if (values.size() * size() > detail::mpi_max_count) {
      throw distributed_error(std::string(fn) + ": " + std::to_string(values.size()) + " values per rank is more than a small gather holds");
    }
    std::vector<double> out(values.size() * size());
    detail::check_mpi(fn, "MPI_Allgather",
                      MPI_Allgather(values.data(), static_cast<int>(values.size()), MPI_DOUBLE, out.data(),
                                    static_cast<int>(values.size()), MPI_DOUBLE, state_->comm));
    return out;
  }

  void barrier() const { detail::check_mpi("rlhf::mpi_communicator::barrier", "MPI_Barrier", MPI_Barrier(state_->comm)); }

  /// Ends the whole job (every rank) with `code`: what a rank does when it cannot go on, so that the
  /// others do not wait in a collective forever.
  [[noreturn]] void abort(int code) const {
    MPI_Abort(state_->comm, code);
    std::abort();  // MPI_Abort does not return; this satisfies [[noreturn]] if an implementation does
  }

 private:
  struct state {
    MPI_Comm comm = MPI_COMM_NULL;
    std::size_t rank = 0, size = 1;
    bool overlap = false;
    state() = default;
    state(const state&) = delete;
    state& operator=(const state&) = delete;
    ~state() {
      int finalized = 0;
      MPI_Finalized(&finalized);
      if (!finalized && comm != MPI_COMM_NULL) MPI_Comm_free(&comm);
    }
  };
  std::shared_ptr<state> state_;
};

/// Initializes MPI for its lifetime (MPI_Init_thread, funneled: only the thread that created it calls
/// MPI, which is how the library uses it beside OpenMP) and finalizes it at the end, unless MPI was
/// already initialized by the caller.
class mpi_session {
 public:
  mpi_session(int& argc, char**& argv) {
    int initialized = 0;
    MPI_Initialized(&initialized);
    if (initialized) return;
    int provided = 0;
    detail::check_mpi("rlhf::mpi_session", "MPI_Init_thread", MPI_Init_thread(&argc, &argv, MPI_THREAD_FUNNELED, &provided));
    owns_ = true;
  }
  mpi_session(const mpi_session&) = delete;
  mpi_session& operator=(const mpi_session&) = delete;
  ~mpi_session() {
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (owns_ && !finalized) MPI_Finalize();
  }

 private:
  bool owns_ = false;
};

/// Runs `body` on this rank and returns its exit code; an exception escaping it is printed as
/// "rlhf: rank R of N failed: <what>" on stderr and ends every rank of the job (MPI_Abort with code 1),
/// so a failure on one rank never leaves the others waiting in a collective.
/// @tparam F callable as int(const mpi_communicator&)
template <class F>
int run_on_every_rank(const mpi_communicator& comm, F&& body) {
  try {
    return body(comm);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "rlhf: rank %zu of %zu failed: %s\n", comm.rank(), comm.size(), e.what());
  } catch (...) {
    std::fprintf(stderr, "rlhf: rank %zu of %zu failed: an exception not derived from std::exception\n", comm.rank(),
                 comm.size());
  }
  std::fflush(stderr);
  comm.abort(1);
}

/// The whole main() of an MPI program: initializes MPI, runs `body` with the communicator of all
/// processes under rlhf::run_on_every_rank, finalizes MPI, and returns body's exit code. An MPI start-up
/// failure is printed and returns 1.
/// @tparam F callable as int(const mpi_communicator&)
template <class F>
int mpi_main(int argc, char** argv, F&& body) {
  std::unique_ptr<mpi_session> session;
  std::unique_ptr<mpi_communicator> world;
  try {
    session = std::make_unique<mpi_session>(argc, argv);
    world = std::make_unique<mpi_communicator>();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "rlhf: %s\n", e.what());
    return 1;
  }
  const int code = run_on_every_rank(*world, std::forward<F>(body));
  world.reset();
  return code;
}

}  // namespace rlhf
