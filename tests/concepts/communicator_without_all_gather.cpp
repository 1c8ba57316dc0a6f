// expect: the communicator lacks `all_gather
// A communicator without all_gather handed to a trainer's collective helper: the diagnostic names it.
#include <cstddef>

#include "rlhf/backends/reference.hpp"
#include "rlhf/dist/gradient_all_reduce.hpp"

struct my_communicator {
  std::size_t rank() const { return 0; }
  std::size_t size() const { return 1; }
  template <class B, class T, class S>
  void all_reduce(const B&, rlhf::matrix_view<T, S>, rlhf::reduce_op) const {}
  template <class B, class T, class S>
  void broadcast(const B&, rlhf::matrix_view<T, S>, std::size_t) const {}
  void barrier() const {}
};

int main() {
  const rlhf::reference_backend b;
  rlhf::all_reduce_gradients(my_communicator{}, b, rlhf::parameter_list<float>{});
}
