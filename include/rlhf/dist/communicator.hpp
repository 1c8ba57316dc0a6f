/// @file communicator.hpp
/// @brief The communicator concept: the collectives data-parallel training needs, over a backend's views.
///
/// A communicator connects `size()` processes (ranks), each running the same program on its own share
/// of the data. Data-parallel training needs only these collectives:
///
/// | member                                   | meaning                                                          |
/// |------------------------------------------|------------------------------------------------------------------|
/// | `rank() const -> std::size_t`            | this process, 0 <= rank < size                                   |
/// | `size() const -> std::size_t`            | the number of ranks (1: a single process)                        |
/// | `all_reduce(b, matrix_view<T> x, op)`    | in place: every rank's x becomes the element-wise sum (or max) of all ranks' x, T = float, double |
/// | `broadcast(b, matrix_view<T> x, root)`   | in place: every rank's x becomes rank `root`'s x, T = float, double |
/// | `all_gather(std::span<const double> v) -> std::vector<double>` | small host values: rank r's v at [r * v.size(), (r + 1) * v.size()), the same on every rank |
/// | `barrier()`                              | returns once every rank has called it                             |
///
/// The views live in the backend's memory space (`backend_matrix<B, T>`), and a communicator that
/// runs on a stream takes it from the backend `b` (the CUDA backend's stream for NCCL): the call is
/// ordered after the work already queued there and completes before it returns. Every rank must make
/// the same collective calls in the same order with the same shapes (MPI's and NCCL's rule): the
/// trainers keep every control-flow decision (early stop, skipped updates, minibatch counts) global so
/// that ranks never diverge. A communicator is a cheap copyable handle; copies share the connection.
///
/// Optional, for overlapping gradient sums with the backward pass (rlhf::nonblocking_communicator):
///
/// | member                                   | meaning                                                          |
/// |------------------------------------------|------------------------------------------------------------------|
/// | `all_reduce_async(b, matrix_view<T> x, op) -> H` | starts the in-place all_reduce of x and returns at once; `H` is a movable handle with `test() -> bool` (completed? also makes progress) and `wait()` (returns once x holds the result; on a stream backend, once work queued after it on b's stream is ordered after the collective) |
///
/// | `overlaps_computation() const -> bool` (optional) | whether started collectives progress while the caller computes; false makes rlhf::gradient_all_reducer sum after the backward with blocking calls (absent: true) |
///
/// Until `wait()` returns nothing may read or write x. Started collectives count in the order of
/// collective calls like blocking ones (the same order on every rank); a handle destroyed before its
/// `wait()` waits.
///
/// Statistics are combined from `all_gather`ed partial values folded in rank order, so every rank
/// computes bit-identical global values (rlhf/dist/global_statistics.hpp).
///
/// Implementations: rlhf::single_process (no dependency, the trainers' default), rlhf::mpi_communicator
/// (rlhf/dist/mpi.hpp, CMake component `mpi`), rlhf::nccl_communicator (rlhf/dist/nccl.hpp, component
/// `nccl`). docs/distributed.md has the full contract.
#pragma once

#include <concepts>
#include <cstddef>
#include <span>
#include <vector>

#include "rlhf/backends/concepts.hpp"
#include "rlhf/backends/view.hpp"
#include "rlhf/config.hpp"

namespace rlhf {

/// The reduction of rlhf::communicator's all_reduce.
enum class reduce_op : unsigned char {
  sum,  ///< element-wise sum over ranks
  max,  ///< element-wise maximum over ranks
};

namespace detail {
// Requirement groups, one per member, so each can be named in a diagnostic.
template <class C>
concept has_rank_and_size = requires(const C& c) {
  { c.rank() } -> std::same_as<std::size_t>;
  { c.size() } -> std::same_as<std::size_t>;
};
template <class C, class B>
concept has_all_reduce = requires(const C& c, const B& b, mat_of<float, B> f, mat_of<double, B> d) {
  c.all_reduce(b, f, reduce_op::sum);
  c.all_reduce(b, d, reduce_op::max);
};
template <class C, class B>
concept has_broadcast = requires(const C& c, const B& b, mat_of<float, B> f, mat_of<double, B> d, std::size_t root) {
  c.broadcast(b, f, root);
  c.broadcast(b, d, root);
};
template <class C>
concept has_all_gather = requires(const C& c, std::span<const double> v) {
  { c.all_gather(v) } -> std::same_as<std::vector<double>>;
};
template <class C>
concept has_barrier = requires(const C& c) { c.barrier(); };
/// A started collective: `test()` says whether it completed (and drives its progress), `wait()`
/// completes it.
template <class H>
concept collective_handle = std::movable<H> && requires(H& h) {
  { h.test() } -> std::same_as<bool>;
  h.wait();
};
template <class C, class B>
concept has_all_reduce_async = requires(const C& c, const B& b, mat_of<float, B> f, mat_of<double, B> d) {
  { c.all_reduce_async(b, f, reduce_op::sum) } -> collective_handle;
  { c.all_reduce_async(b, d, reduce_op::sum) } -> collective_handle;
};
}  // namespace detail

/// A communicator for backend B (see the file comment for the contract).
template <class C, class B>
concept communicator = backend<B> && std::copy_constructible<C> && detail::has_rank_and_size<C> &&
                       detail::has_all_reduce<C, B> && detail::has_broadcast<C, B> && detail::has_all_gather<C> &&
                       detail::has_barrier<C>;

/// A communicator that can also start an all_reduce and return before it completes
/// (`all_reduce_async`, see the file comment), so gradients can be summed while the backward pass goes
/// on (rlhf::gradient_all_reducer). rlhf::mpi_communicator (MPI_Iallreduce) and
/// rlhf::nccl_communicator (a side stream) are; a plain communicator still works, its collectives
/// blocking.
template <class C, class B>
concept nonblocking_communicator = communicator<C, B> && detail::has_all_reduce_async<C, B>;

namespace detail {
/// A communicator's `overlaps_computation()`, true where it has none.
template <class C>
bool overlaps_computation(const C& c) {
  if constexpr (requires { { c.overlaps_computation() } -> std::convertible_to<bool>; }) {
    return static_cast<bool>(c.overlaps_computation());
  } else {
    return true;
  }
}
}  // namespace detail

/// The handle of a collective that completed when it was started (one process, or a blocking fallback).
struct completed_collective {
  bool test() const { return true; }
  void wait() const {}
};

namespace detail {
/// Names the first member C lacks as a communicator for B.
template <class C, class B>
constexpr void check_communicator() {
  check_backend<B>();
#if RLHF_CONCEPT_CHECKS
  static_assert(std::copy_constructible<C>,
                "rlhf: the communicator must be copyable (a handle; copies share the connection). "
                "See docs/distributed.md#the-communicator-concept");
  static_assert(has_rank_and_size<C>,
                "rlhf: the communicator lacks `rank() const -> std::size_t` or `size() const -> std::size_t`. "
                "See docs/distributed.md#the-communicator-concept");
  static_assert(has_all_reduce<C, B>,
                "rlhf: the communicator lacks `all_reduce(const B&, matrix_view<T, B::memory_space>, rlhf::reduce_op) "
                "const` for T = float and double. See docs/distributed.md#the-communicator-concept");
  static_assert(has_broadcast<C, B>,
                "rlhf: the communicator lacks `broadcast(const B&, matrix_view<T, B::memory_space>, std::size_t root) "
                "const` for T = float and double. See docs/distributed.md#the-communicator-concept");
  static_assert(has_all_gather<C>,
                "rlhf: the communicator lacks `all_gather(std::span<const double>) const -> std::vector<double>`. "
                "See docs/distributed.md#the-communicator-concept");
  static_assert(has_barrier<C>,
                "rlhf: the communicator lacks `barrier() const`. See docs/distributed.md#the-communicator-concept");
#endif
}
}  // namespace detail

}  // namespace rlhf
