// A backend with memory primitives but no element map: the diagnostic names `transform` and the docs.
// expect: lacks the element map `transform.*docs/backends.md#elementwise_backend
#include "rlhf/backends/concepts.hpp"
#include "rlhf/backends/host_buffer.hpp"

struct memory_only_backend {
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
  template <class F>
  void for_each_index(std::size_t, F) const {}
};

static_assert(rlhf::backend<memory_only_backend>, "the memory half is complete");
int main() { rlhf::detail::check_elementwise_backend<memory_only_backend>(); }
