// Eigen backend specifics: results are independent of the thread count, and it is a complete backend.
#include "test_support.hpp"

#if RLHF_TEST_HAS_EIGEN
#include "rlhf/backends/eigen.hpp"

using namespace rlhf;
using namespace rlhf::test;

TEMPLATE_TEST_CASE("eigen reductions give identical bits on 1 and 2 threads", "[backends][eigen]", float, double) {
  using T = TestType;
  auto g = rng(11);
  const std::size_t n = 300001;
  const auto x = uniform<T>(g, n);
  const eigen_backend one(1), two(2);
  auto bx = to_backend(one, x);
  const auto sum = [&](const eigen_backend& b) {
    return b.transform_reduce(T(0), [](T a, T c) { return a + c; }, [](T v) { return v * v; }, bx.view().flat());
  };
  CHECK(sum(one) == sum(two));
  CHECK(one.threads() == 1);
}

TEST_CASE("eigen backend satisfies every concept", "[backends][eigen]") {
  STATIC_REQUIRE(complete_backend<eigen_backend>);
  STATIC_REQUIRE(complete_backend<generic_only<eigen_backend>>);
}
#endif
