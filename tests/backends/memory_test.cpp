// Generic memory helpers over any backend.
#include "test_support.hpp"

using namespace rlhf;
using namespace rlhf::test;

TEMPLATE_LIST_TEST_CASE("to_backend / to_host round trip and reject a wrong element count", "[backends][memory]",
                        all_configs) {
  using T = typename TestType::value;
  const auto b = TestType::make();
  const std::vector<T> host{1, 2, 3, 4, 5, 6};
  auto buf = to_backend(b, host, 2, 3);
  CHECK(to_host(b, buf.view()) == host);
  CHECK(to_host(b, vector_of(buf)) == host);
  CHECK_THROWS_WITH(to_backend(b, host, 4, 2),
                    "rlhf::to_backend: argument 'host': expected 8 elements (4 x 2), received 6 elements");
  auto filled = allocate_filled<T>(b, 2, 2, T(-1));
  CHECK(to_host(b, filled.view()) == std::vector<T>(4, T(-1)));
}
