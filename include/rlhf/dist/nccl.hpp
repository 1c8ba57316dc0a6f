/// @file nccl.hpp
/// @brief The NCCL communicator (CMake component `nccl`; NCCL from the CUDA install): data-parallel
///        training of the CUDA backend, one rank per GPU.
///
/// NCCL needs every rank to agree on a unique id made by rank 0. Two ways to share it:
/// - `nccl_communicator::from_bootstrap(comm, device)`: through another communicator (rlhf::mpi_communicator
///   across nodes), the usual way under `mpirun`;
/// - `nccl_communicator::from_file(path, rank, size, device)`: rank 0 writes the id to a file (atomically:
///   a temporary file renamed) that the other ranks wait for, for jobs started without MPI on one machine
///   or on a shared file system.
/// The collectives run on the backend's stream (`b.stream()`, the CUDA backend's): ordered after the work
/// queued there, and complete when the call returns (the stream is synchronized), as the communicator
/// contract asks. all_reduce_async (an rlhf::nonblocking_communicator) runs on the communicator's own
/// stream instead, after an event on the backend's, so gradient sums overlap the backward pass. Compiles
/// with a host compiler (it uses the CUDA runtime's C API only).
#pragma once

#include <cuda_runtime_api.h>
#include <nccl.h>

#include <array>
#include <chrono>
#include <cstddef>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <thread>
#include <type_traits>
#include <vector>

#include "rlhf/dist/communicator.hpp"
#include "rlhf/error.hpp"

namespace rlhf {

namespace detail {
inline void check_nccl(std::string_view function, std::string_view call, ncclResult_t status) {
  if (status != ncclSuccess) {
    throw distributed_error(std::string(function) + ": " + std::string(call) + " failed: " + ncclGetErrorString(status));
  }
}
inline void check_cuda_for_nccl(std::string_view function, std::string_view call, cudaError_t status) {
  if (status != cudaSuccess) {
    throw distributed_error(std::string(function) + ": " + std::string(call) + " failed: " + cudaGetErrorString(status));
  }
}
template <class T>
ncclDataType_t nccl_type_of() {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>, "rlhf::nccl_communicator: elements must be float or double");
  if constexpr (std::is_same_v<T, float>) return ncclFloat32;
  else return ncclFloat64;
}
// A backend whose collectives NCCL can run: it names its CUDA stream.
template <class B>
concept has_cuda_stream = requires(const B& b) {
  { b.stream() } -> std::convertible_to<cudaStream_t>;
};
}  // namespace detail

/// A started NCCL all-reduce (rlhf::nccl_communicator::all_reduce_async): the event recorded on the
/// communicator's stream after it. `test()` queries the event; `wait()` makes the backend's stream wait
/// for it (stream-ordered: the host does not block; a later host read through the backend synchronizes).
/// Move-only; destroyed before its wait(), it synchronizes the event (errors ignored then).
class nccl_pending_collective {
 public:
  nccl_pending_collective() = default;
  nccl_pending_collective(cudaEvent_t done, cudaStream_t waiting) : done_(done), waiting_(waiting) {}
  nccl_pending_collective(nccl_pending_collective&& o) noexcept : done_(o.done_), waiting_(o.waiting_) { o.done_ = nullptr; }
  nccl_pending_collective& operator=(nccl_pending_collective&& o) noexcept {
    if (this != &o) {
      release();
      done_ = o.done_;
      waiting_ = o.waiting_;
      o.done_ = nullptr;
    }
    return *this;
  }
  nccl_pending_collective(const nccl_pending_collective&) = delete;
  nccl_pending_collective& operator=(const nccl_pending_collective&) = delete;
  ~nccl_pending_collective() { release(); }

  /// @throws rlhf::distributed_error when CUDA reports an error
  bool test() {
    if (done_ == nullptr) return true;
    const cudaError_t status = cudaEventQuery(done_);
    if (status == cudaErrorNotReady) return false;
    detail::check_cuda_for_nccl("rlhf::nccl_pending_collective::test", "cudaEventQuery", status);
    return true;
  }
  /// Orders the backend's stream after the collective.
  /// @throws rlhf::distributed_error when CUDA reports an error
  void wait() {
    if (done_ == nullptr) return;
    const cudaEvent_t e = done_;
    done_ = nullptr;
    const cudaError_t status = cudaStreamWaitEvent(waiting_, e, 0);
    cudaEventDestroy(e);
    detail::check_cuda_for_nccl("rlhf::nccl_pending_collective::wait", "cudaStreamWaitEvent", status);
  }

 private:
  void release() noexcept {
    if (done_ == nullptr) return;
    cudaEventSynchronize(done_);
    cudaEventDestroy(done_);
    done_ = nullptr;
  }
  cudaEvent_t done_ = nullptr;
  cudaStream_t waiting_ = nullptr;
};

/// An rlhf::communicator over NCCL for backends with a CUDA stream (`b.stream()`, as rlhf::cuda_backend).
/// all_reduce and broadcast run in place on the backend's device memory; all_gather of small host values
/// and barrier go through a small device buffer on the communicator's own stream. Copies share the NCCL
/// communicator; the last one destroys it.
class nccl_communicator {
 public:
  /// The id every rank must pass to the constructor (made once, by rank 0).
  using unique_id = ncclUniqueId;

  /// Makes a new unique id (rank 0 does this and shares it).
  static unique_id make_unique_id() {
    unique_id id{};
    detail::check_nccl("rlhf::nccl_communicator::make_unique_id", "ncclGetUniqueId", ncclGetUniqueId(&id));
    return id;
  }

  /// Joins the ranks sharing `id` as rank `rank` of `size`, on CUDA device `device`.
  /// @throws rlhf::invalid_argument when rank >= size; rlhf::distributed_error when CUDA or NCCL fails
  nccl_communicator(const unique_id& id, std::size_t rank, std::size_t size, int device) {
    constexpr std::string_view fn = "rlhf::nccl_communicator";
    if (size == 0 || rank >= size) {
      detail::throw_argument_error(fn, "rank", "a rank below size = " + std::to_string(size), std::to_string(rank));
    }
    auto s = std::make_shared<state>();
    s->rank = rank;
    s->size = size;
    s->device = device;
    detail::check_cuda_for_nccl(fn, "cudaSetDevice", cudaSetDevice(device));
    detail::check_nccl(fn, "ncclCommInitRank",
                       ncclCommInitRank(&s->comm, static_cast<int>(size), id, static_cast<int>(rank)));
    detail::check_cuda_for_nccl(fn, "cudaStreamCreateWithFlags", cudaStreamCreateWithFlags(&s->stream, cudaStreamNonBlocking));
    state_ = std::move(s);
  }

  /// Rank 0 makes the id and `bootstrap` (any rlhf::communicator, e.g. rlhf::mpi_communicator) carries it
  /// to every rank; this rank joins with the bootstrap's rank and size.
  template <class C>
  static nccl_communicator from_bootstrap(const C& bootstrap, int device) {
    unique_id id{};
    if (bootstrap.rank() == 0) id = make_unique_id();
    // The id's bytes travel as doubles (all_gather copies them bit for bit; nothing adds them).
    constexpr std::size_t words = (sizeof(unique_id) + sizeof(double) - 1) / sizeof(double);
    std::array<double, words> packed{};
    std::memcpy(packed.data(), &id, sizeof(unique_id));
    const std::vector<double> all = bootstrap.all_gather(std::span<const double>(packed.data(), words));
    std::memcpy(&id, all.data(), sizeof(unique_id));  // rank 0's
    return nccl_communicator(id, bootstrap.rank(), bootstrap.size(), device);
  }

  /// Rank 0 writes the id to `path` (a temporary file renamed into place); the other ranks wait for the
  /// file up to `timeout` and read it. Remove the file before the next job uses the same path.
  /// @throws rlhf::distributed_error when the file does not appear in time or cannot be written
  static nccl_communicator from_file(const std::filesystem::path& path, std::size_t rank, std::size_t size, int device,
                                     std::chrono::seconds timeout = std::chrono::seconds(60)) {
    constexpr std::string_view fn = "rlhf::nccl_communicator::from_file";
    unique_id id{};
    if (rank == 0) {
      id = make_unique_id();
      const std::filesystem::path partial = path.string() + ".partial";
      {
        std::ofstream out(partial, std::ios::binary | std::ios::trunc);
        out.write(reinterpret_cast<const char*>(&id), sizeof(unique_id));
        if (!out) throw distributed_error(std::string(fn) + ": cannot write " + partial.string());
      }
      std::filesystem::rename(partial, path);
    } else {
      const auto deadline = std::chrono::steady_clock::now() + timeout;
      while (!std::filesystem::exists(path)) {
        if (std::chrono::steady_clock::now() > deadline) {
          throw distributed_error(std::string(fn) + ": rank " + std::to_string(rank) + " waited " +
                                  std::to_string(timeout.count()) + " s for " + path.string() + " (rank 0 writes it)");
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
      }
      std::ifstream in(path, std::ios::binary);
      in.read(reinterpret_cast<char*>(&id), sizeof(unique_id));
      if (!in) throw distributed_error(std::string(fn) + ": cannot read " + path.string());
    }
    return nccl_communicator(id, rank, size, device);
  }

  std::size_t rank() const { return state_->rank; }
  std::size_t size() const { return state_->size; }
  /// The CUDA device this rank runs on.
  int device() const { return state_->device; }
  /// The NCCL communicator (for the caller's own NCCL calls).
  ncclComm_t native() const { return state_->comm; }

  /// In place on the backend's stream: x becomes the element-wise sum (or max) over ranks.
  template <class B, class T, class S>
  void all_reduce(const B& b, matrix_view<T, S> x, reduce_op op) const {
    static_assert(detail::has_cuda_stream<B>, "rlhf::nccl_communicator: the backend must name its CUDA stream (`stream()`)");
    constexpr std::string_view fn = "rlhf::nccl_communicator::all_reduce";
    detail::check_nccl(fn, "ncclAllReduce",
                       ncclAllReduce(x.data, x.data, x.size(), detail::nccl_type_of<T>(), op == reduce_op::sum ? ncclSum : ncclMax,
                                     state_->comm, b.stream()));
    detail::check_cuda_for_nccl(fn, "cudaStreamSynchronize", cudaStreamSynchronize(b.stream()));
  }

  /// Starts the in-place all_reduce of x on the communicator's own stream, after the work queued on the
  /// backend's stream so far, and returns at once (an rlhf::nonblocking_communicator): the backward pass
  /// goes on on the backend's stream while NCCL sums. Nothing may touch x until the handle's wait().
  template <class B, class T, class S>
  nccl_pending_collective all_reduce_async(const B& b, matrix_view<T, S> x, reduce_op op) const {
    static_assert(detail::has_cuda_stream<B>, "rlhf::nccl_communicator: the backend must name its CUDA stream (`stream()`)");
    constexpr std::string_view fn = "rlhf::nccl_communicator::all_reduce_async";
    const cudaStream_t main = b.stream(), side = state_->stream;
    cudaEvent_t ready = nullptr, done = nullptr;
    detail::check_cuda_for_nccl(fn, "cudaEventCreateWithFlags", cudaEventCreateWithFlags(&ready, cudaEventDisableTiming));
    const std::unique_ptr<CUevent_st, void (*)(cudaEvent_t)> ready_owner(ready, [](cudaEvent_t e) { cudaEventDestroy(e); });
    detail::check_cuda_for_nccl(fn, "cudaEventRecord", cudaEventRecord(ready, main));
    detail::check_cuda_for_nccl(fn, "cudaStreamWaitEvent", cudaStreamWaitEvent(side, ready, 0));
    detail::check_nccl(fn, "ncclAllReduce",
                       ncclAllReduce(x.data, x.data, x.size(), detail::nccl_type_of<T>(), op == reduce_op::sum ? ncclSum : ncclMax,
                                     state_->comm, side));
    detail::check_cuda_for_nccl(fn, "cudaEventCreateWithFlags", cudaEventCreateWithFlags(&done, cudaEventDisableTiming));
    nccl_pending_collective pending(done, main);
    detail::check_cuda_for_nccl(fn, "cudaEventRecord", cudaEventRecord(done, side));
    return pending;
  }

  /// In place on the backend's stream: x becomes rank `root`'s x.
  template <class B, class T, class S>
  void broadcast(const B& b, matrix_view<T, S> x, std::size_t root) const {
    static_assert(detail::has_cuda_stream<B>, "rlhf::nccl_communicator: the backend must name its CUDA stream (`stream()`)");
    constexpr std::string_view fn = "rlhf::nccl_communicator::broadcast";
    if (root >= size()) detail::throw_argument_error(fn, "root", "a rank below " + std::to_string(size()), std::to_string(root));
    detail::check_nccl(fn, "ncclBroadcast",
                       ncclBroadcast(x.data, x.data, x.size(), detail::nccl_type_of<T>(), static_cast<int>(root),
                                     state_->comm, b.stream()));
    detail::check_cuda_for_nccl(fn, "cudaStreamSynchronize", cudaStreamSynchronize(b.stream()));
  }

  /// Every rank's `values` (the same count on every rank), in rank order, through device memory.
  std::vector<double> all_gather(std::span<const double> values) const {
    constexpr std::string_view fn = "rlhf::nccl_communicator::all_gather";
    const std::size_t n = values.size();
    std::vector<double> out(n * size());
    if (n == 0) return out;
    double* dev = nullptr;
    detail::check_cuda_for_nccl(fn, "cudaMalloc", cudaMalloc(reinterpret_cast<void**>(&dev), out.size() * sizeof(double)));
    const std::unique_ptr<double, void (*)(double*)> owner(dev, [](double* p) { cudaFree(p); });
    cudaStream_t s = state_->stream;
    detail::check_cuda_for_nccl(fn, "cudaMemcpyAsync", cudaMemcpyAsync(dev + rank() * n, values.data(), n * sizeof(double),
                                                                       cudaMemcpyHostToDevice, s));
    detail::check_nccl(fn, "ncclAllGather", ncclAllGather(dev + rank() * n, dev, n, ncclFloat64, state_->comm, s));
    detail::check_cuda_for_nccl(fn, "cudaMemcpyAsync",
                                cudaMemcpyAsync(out.data(), dev, out.size() * sizeof(double), cudaMemcpyDeviceToHost, s));
    detail::check_cuda_for_nccl(fn, "cudaStreamSynchronize", cudaStreamSynchronize(s));
    return out;
  }

  /// Returns once every rank has called it (an all_gather of one value on the communicator's stream).
  void barrier() const {
    const double one = 1.0;
    (void)all_gather(std::span<const double>(&one, 1));
  }

 private:
  struct state {
    ncclComm_t comm = nullptr;
    cudaStream_t stream = nullptr;
    std::size_t rank = 0, size = 1;
    int device = 0;
    state() = default;
    state(const state&) = delete;
    state& operator=(const state&) = delete;
    ~state() {
      if (comm != nullptr) ncclCommDestroy(comm);
      if (stream != nullptr) cudaStreamDestroy(stream);
    }
  };
  std::shared_ptr<state> state_;
};

}  // namespace rlhf
