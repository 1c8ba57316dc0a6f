// Bucketed gradient all-reduce: whatever the bucket size, every gradient element is reduced exactly once
// (against replicas holding the same gradient, a sum over 3 ranks triples each element; an element
// reduced twice or never shows), small gradients share collectives, large ones go in place; broadcast
// of parameters visits every tensor; one rank does nothing; a zero bucket is an error.
#include "rlhf/dist/gradient_all_reduce.hpp"

#include <random>
#include <vector>

#include "dist/simulated_ranks.hpp"
#include "rlhf/dist/single_process.hpp"
#include "test_support.hpp"

using namespace rlhf;
using namespace rlhf::test;

TEMPLATE_LIST_TEST_CASE("all_reduce_gradients: every element reduced exactly once, whatever the bucket size",
                        "[dist][gradients]", all_configs) {
  using B = typename TestType::backend;
  using T = typename TestType::value;
  using S = typename B::memory_space;
  const B b = TestType::make();
  std::mt19937_64 g(5);
  std::uniform_int_distribution<std::size_t> dim(0, 9);
  for (int trial = 0; trial < 12; ++trial) {
    // Tensors of random shapes (some empty), gradients 1, 2, 3, ...
    std::vector<typename B::template buffer<T>> values, grads;
    std::vector<std::vector<T>> expected;
    parameter_list<T, S> params;
    T next = 1;
    for (int p = 0; p < 7; ++p) {
      const std::size_t rows = 1 + dim(g) % 3, cols = dim(g);
      std::vector<T> host(rows * cols);
      for (auto& v : host) v = next++;
      values.push_back(allocate<T>(b, rows, cols));
      grads.push_back(to_backend(b, std::span<const T>(host), rows, cols));
      std::vector<T> tripled = host;
      for (auto& v : tripled) v *= T(3);
      expected.push_back(tripled);
      params.push_back({"p" + std::to_string(p), values.back().view(), grads.back().view()});
    }
    simulated_ranks comm;
    comm.size_ = 3;
    const std::size_t bucket_bytes = sizeof(T) * (1 + static_cast<std::size_t>(trial) * 3);
    const gradient_all_reduce_stats st = all_reduce_gradients(comm, b, params, {bucket_bytes});
    INFO("trial " << trial << ", bucket of " << bucket_bytes / sizeof(T) << " elements");
    std::size_t total = 0;
    for (std::size_t p = 0; p < params.size(); ++p) {
      CHECK(to_host(b, params[p].grad.flat()) == expected[p]);
      total += expected[p].size();
    }
    CHECK(st.elements == total);
    CHECK(comm.log->all_reduced_elements == total);
    CHECK(st.collectives == comm.log->all_reduces);
    CHECK(st.collectives <= params.size());
  }
}

TEMPLATE_LIST_TEST_CASE("all_reduce_gradients: small tensors share one collective; one rank and broadcast",
                        "[dist][gradients]", all_configs) {
  using B = typename TestType::backend;
  using T = typename TestType::value;
  using S = typename B::memory_space;
  const B b = TestType::make();
  auto v1 = allocate<T>(b, 1, 3), g1 = allocate<T>(b, 1, 3), v2 = allocate<T>(b, 2, 2), g2 = allocate<T>(b, 2, 2);
  b.fill(g1.view().flat(), T(1));
  b.fill(g2.view().flat(), T(2));
  const parameter_list<T, S> params{{"a", v1.view(), g1.view()}, {"b", v2.view(), g2.view()}};
  simulated_ranks two;
  CHECK(all_reduce_gradients(two, b, params).collectives == 1);  // 7 elements fit the default 4 MiB bucket
  CHECK(to_host(b, g1.view().flat()) == std::vector<T>(3, T(2)));
  CHECK(to_host(b, g2.view().flat()) == std::vector<T>(4, T(4)));
  simulated_ranks small;
  CHECK(all_reduce_gradients(small, b, params, {3 * sizeof(T)}).collectives == 2);  // both in place
  CHECK(all_reduce_gradients(single_process{}, b, params).collectives == 0);
  CHECK(to_host(b, g2.view().flat()) == std::vector<T>(4, T(8)));
  broadcast_parameters(small, b, params);
  CHECK(small.log->broadcasts == 2);
  CHECK_THROWS_WITH(all_reduce_gradients(two, b, params, {0}),
                    "rlhf::all_reduce_gradients: argument 'options.bucket_bytes': expected > 0, received 0");
}
