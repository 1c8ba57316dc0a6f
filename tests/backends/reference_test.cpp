// Reference backend specifics: it is the oracle, so its primitives follow an exact, documented order.
#include "test_support.hpp"

#include "rlhf/backends/reference.hpp"

using namespace rlhf;

TEST_CASE("reference transform_reduce folds strictly left to right", "[backends][reference]") {
  const reference_backend b;
  // In float, 1e8 + 1 + 1 ... folded left to right stays 1e8 (each +1 is lost); a pairwise or blocked
  // fold would differ. The oracle's order is part of its contract.
  std::vector<float> x(1000, 1.0f);
  x[0] = 1e8f;
  const float s = b.transform_reduce(0.0f, [](float a, float c) { return a + c; }, [](float v) { return v; },
                                     make_vector_view(x.data(), x.size()));
  CHECK(s == 1e8f);
}

TEST_CASE("reference copy handles overlapping ranges", "[backends][reference]") {
  const reference_backend b;
  std::vector<int> x{1, 2, 3, 4, 5};
  b.copy(vector_view<const int>{x.data(), 4}, vector_view<int>{x.data() + 1, 4});
  CHECK(x == std::vector<int>{1, 1, 2, 3, 4});
}

TEST_CASE("reference backend satisfies every concept", "[backends][reference]") {
  STATIC_REQUIRE(complete_backend<reference_backend>);
  STATIC_REQUIRE(std::is_same_v<reference_backend::memory_space, host_space>);
}
