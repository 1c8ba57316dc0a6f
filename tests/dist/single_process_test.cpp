// The one-process communicator: every collective is the identity (a started all_reduce is complete), and a broadcast from a rank other
// than 0 is an error naming the argument.
#include "rlhf/dist/single_process.hpp"

#include <vector>

#include "test_support.hpp"

using namespace rlhf;
using namespace rlhf::test;

TEMPLATE_LIST_TEST_CASE("single_process: rank 0 of 1; collectives leave the data as it is", "[dist]", all_configs) {
  using B = typename TestType::backend;
  using T = typename TestType::value;
  const B b = TestType::make();
  const single_process comm;
  CHECK(comm.rank() == 0);
  CHECK(comm.size() == 1);
  const std::vector<T> host{1, -2, 3.5, 4};
  auto x = to_backend(b, std::span<const T>(host), 2, 2);
  comm.all_reduce(b, x.view(), reduce_op::sum);
  comm.all_reduce(b, x.view(), reduce_op::max);
  comm.broadcast(b, x.view(), 0);
  comm.barrier();
  static_assert(nonblocking_communicator<single_process, B>);
  auto started = comm.all_reduce_async(b, x.view(), reduce_op::sum);
  CHECK(started.test());
  started.wait();
  CHECK(to_host(b, x.view()) == host);
  const std::vector<double> v{1.5, -2};
  CHECK(comm.all_gather(v) == v);
  CHECK(comm.all_gather(std::span<const double>{}).empty());
  CHECK_THROWS_WITH(comm.broadcast(b, x.view(), 1),
                    "rlhf::single_process::broadcast: argument 'root': expected 0 (the only rank), received 1");
}
