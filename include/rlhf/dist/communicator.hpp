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
}  // namespace detail

/// A communicator for backend B (see the file comment for the contract).
template <class C, class B>
concept communicator = backend<B> && std::copy_constructible<C> && detail::has_rank_and_size<C> &&
                       detail::has_all_reduce<C, B> && detail::has_broadcast<C, B> && detail::has_all_gather<C> &&
                       detail::has_barrier<C>;

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
