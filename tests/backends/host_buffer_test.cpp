// host_buffer: alignment, shape, move semantics.
#include "test_support.hpp"

#include <cstdint>

#include "rlhf/backends/host_buffer.hpp"

TEST_CASE("host_buffer is 64-byte aligned, shaped and move-only", "[backends][host_buffer]") {
  static_assert(!std::is_copy_constructible_v<rlhf::host_buffer<float>>);
  static_assert(std::is_nothrow_move_constructible_v<rlhf::host_buffer<float>>);
  rlhf::host_buffer<float> a(3, 7);
  CHECK(reinterpret_cast<std::uintptr_t>(a.data()) % 64 == 0);
  CHECK(a.size() == 21);
  CHECK(a.view().rows == 3);
  CHECK(a.vector().size == 21);
  a.view()(2, 6) = 4.0f;
  rlhf::host_buffer<float> b = std::move(a);
  CHECK(b.view()(2, 6) == 4.0f);
  rlhf::host_buffer<double> empty(0, 5);
  CHECK(empty.data() == nullptr);
  CHECK(empty.size() == 0);
}
