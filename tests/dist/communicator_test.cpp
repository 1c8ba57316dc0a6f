// The communicator concept: the library's communicators satisfy it for every backend, and a type that
// lacks a member does not (tests/concepts/communicator_without_all_gather.cpp checks the diagnostic).
#include "rlhf/dist/communicator.hpp"

#include <cstddef>
#include <span>
#include <vector>

#include "dist/simulated_ranks.hpp"
#include "rlhf/dist/single_process.hpp"
#include "test_support.hpp"

using namespace rlhf;
using namespace rlhf::test;

namespace {
// Everything but all_gather.
struct without_all_gather {
  std::size_t rank() const { return 0; }
  std::size_t size() const { return 1; }
  template <class B, class T, class S>
  void all_reduce(const B&, matrix_view<T, S>, reduce_op) const {}
  template <class B, class T, class S>
  void broadcast(const B&, matrix_view<T, S>, std::size_t) const {}
  void barrier() const {}
};
// rank() returning int: the contract says std::size_t.
struct int_rank : single_process {
  int rank() const { return 0; }
};
// all_reduce for float only.
struct float_only {
  std::size_t rank() const { return 0; }
  std::size_t size() const { return 1; }
  template <class B, class S>
  void all_reduce(const B&, matrix_view<float, S>, reduce_op) const {}
  template <class B, class T, class S>
  void broadcast(const B&, matrix_view<T, S>, std::size_t) const {}
  std::vector<double> all_gather(std::span<const double> v) const { return {v.begin(), v.end()}; }
  void barrier() const {}
};
}  // namespace

TEMPLATE_LIST_TEST_CASE("communicator: single_process and the simulated ranks qualify for every backend; "
                        "incomplete types do not",
                        "[dist][concepts]", all_configs) {
  using B = typename TestType::backend;
  STATIC_REQUIRE(communicator<single_process, B>);
  STATIC_REQUIRE(communicator<simulated_ranks, B>);
  STATIC_REQUIRE_FALSE(communicator<without_all_gather, B>);
  STATIC_REQUIRE_FALSE(communicator<int_rank, B>);
  STATIC_REQUIRE_FALSE(communicator<float_only, B>);
  STATIC_REQUIRE(detail::has_rank_and_size<float_only>);
  STATIC_REQUIRE_FALSE(detail::has_all_reduce<float_only, B>);
  STATIC_REQUIRE(detail::has_broadcast<without_all_gather, B>);
  STATIC_REQUIRE_FALSE(detail::has_all_gather<without_all_gather>);
}
