// The concept chain: which backends satisfy which concept (the must-not-compile cases with their
// diagnostics are in tests/concepts/ and run as ctest compile tests).
#include "test_support.hpp"

#include "rlhf/backends/concepts.hpp"

namespace {
struct only_memory {
  using memory_space = rlhf::host_space;
  template <class T>
  using buffer = rlhf::host_buffer<T>;
  template <class T>
  buffer<T> allocate(std::size_t r, std::size_t c) const { return buffer<T>(r, c); }
  template <class T>
  void copy(std::type_identity_t<rlhf::vector_view<const T>>, rlhf::vector_view<T>) const {}
  template <class T, class U>
  void fill(rlhf::vector_view<T>, U) const {}
  void synchronize() const {}
};
// Records which for_each_index form rlhf::for_each_weighted_index called, and the hint it passed.
struct hint_recorder : rlhf::reference_backend {
  std::size_t* hint = nullptr;
  template <class F>
  void for_each_index(std::size_t n, F f, std::size_t work_per_index) const {
    *hint = work_per_index;
    rlhf::reference_backend::for_each_index(n, f);
  }
  using rlhf::reference_backend::for_each_index;
};
struct no_gemm : rlhf::reference_backend {
  template <class... A>
  void gemm(A...) const = delete;
};
}  // namespace

TEST_CASE("the concept chain refines step by step", "[backends][concepts]") {
  STATIC_REQUIRE(rlhf::backend<only_memory>);
  STATIC_REQUIRE_FALSE(rlhf::elementwise_backend<only_memory>);
  STATIC_REQUIRE_FALSE(rlhf::backend<int>);
  STATIC_REQUIRE(rlhf::scan_backend<no_gemm>);
  STATIC_REQUIRE_FALSE(rlhf::blas_backend<no_gemm>);
  STATIC_REQUIRE_FALSE(rlhf::complete_backend<no_gemm>);
  STATIC_REQUIRE(rlhf::complete_backend<rlhf::reference_backend>);
}

TEST_CASE("for_each_weighted_index passes the work hint to a backend that takes it, and only then",
          "[backends][concepts][for_each_index]") {
  STATIC_REQUIRE(rlhf::detail::has_weighted_for_each_index<hint_recorder>);
  STATIC_REQUIRE_FALSE(rlhf::detail::has_weighted_for_each_index<rlhf::reference_backend>);
  STATIC_REQUIRE(rlhf::elementwise_backend<hint_recorder>);
  std::size_t hint = 0;
  hint_recorder b;
  b.hint = &hint;
  std::vector<int> seen(5, 0);
  int* s = seen.data();
  rlhf::for_each_weighted_index(b, seen.size(), 777, [s](std::size_t i) { ++s[i]; });
  CHECK(hint == 777);
  CHECK(seen == std::vector<int>(5, 1));
  // Without the overload the two-argument form runs the same loop.
  rlhf::for_each_weighted_index(rlhf::reference_backend{}, seen.size(), 777, [s](std::size_t i) { ++s[i]; });
  CHECK(seen == std::vector<int>(5, 2));
}
