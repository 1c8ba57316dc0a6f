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
