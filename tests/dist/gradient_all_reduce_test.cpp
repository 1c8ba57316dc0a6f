// Bucketed gradient all-reduce: whatever the bucket size, every gradient element is reduced exactly once
// (against replicas holding the same gradient, a sum over 3 ranks triples each element; an element
// reduced twice or never shows), small gradients share collectives, large ones go in place; broadcast
// of parameters visits every tensor; gradients adjacent in one buffer (a llama_model's) are one in-place
// region; one rank does nothing; a zero bucket is an error.
#include "rlhf/dist/gradient_all_reduce.hpp"

#include <algorithm>
#include <random>
#include <string>
#include <vector>

#include "dist/simulated_ranks.hpp"
#include "models/model_test_support.hpp"
#include "rlhf/models/llama.hpp"
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

TEMPLATE_LIST_TEST_CASE("all_reduce_gradients: gradients adjacent in one buffer are reduced in place as one region",
                        "[dist][gradients]", all_configs) {
  using B = typename TestType::backend;
  using T = typename TestType::value;
  using S = typename B::memory_space;
  const B b = TestType::make();
  std::mt19937_64 g(9);
  std::uniform_int_distribution<std::size_t> dim(0, 6);
  for (int trial = 0; trial < 10; ++trial) {
    // An arena holding tensors 0..4 back to back (some empty), then a separate tensor, then 2 more in a
    // second arena: 3 regions.
    std::vector<std::size_t> sizes;
    for (int p = 0; p < 7; ++p) sizes.push_back(dim(g) * (p == 2 ? 0 : 1));
    sizes[5] = 1 + sizes[5];  // the separate tensor is never empty
    std::vector<T> first_host, second_host;
    for (int p = 0; p < 5; ++p)
      for (std::size_t k = 0; k < sizes[p]; ++k) first_host.push_back(static_cast<T>(first_host.size() + 1));
    for (int p = 6; p < 7; ++p)
      for (std::size_t k = 0; k < sizes[p] + 3; ++k) second_host.push_back(static_cast<T>(100 + second_host.size()));
    auto first = to_backend(b, std::span<const T>(first_host), 1, first_host.size());
    auto second = to_backend(b, std::span<const T>(second_host), 1, second_host.size());
    std::vector<T> lone_host(sizes[5], T(7));
    auto lone = to_backend(b, std::span<const T>(lone_host), 1, lone_host.size());
    auto values = allocate<T>(b, 1, 1);
    parameter_list<T, S> params;
    std::size_t offset = 0;
    for (int p = 0; p < 5; ++p) {
      params.push_back({"a" + std::to_string(p), values.view(), matrix_view<T, S>{first.view().data + offset, 1, sizes[p]}});
      offset += sizes[p];
    }
    params.push_back({"lone", values.view(), lone.view()});
    const std::size_t half = second_host.size() / 2;
    params.push_back({"b0", values.view(), matrix_view<T, S>{second.view().data, 1, half}});
    params.push_back({"b1", values.view(), matrix_view<T, S>{second.view().data + half, 1, second_host.size() - half}});
    simulated_ranks comm;
    const gradient_all_reduce_stats st = all_reduce_gradients(comm, b, params);
    INFO("trial " << trial << ", first arena " << first_host.size() << " elements");
    for (auto& v : first_host) v *= T(2);
    for (auto& v : second_host) v *= T(2);
    for (auto& v : lone_host) v *= T(2);
    CHECK(to_host(b, first.view().flat()) == first_host);
    CHECK(to_host(b, second.view().flat()) == second_host);
    CHECK(to_host(b, lone.view().flat()) == lone_host);
    CHECK(st.elements == first_host.size() + second_host.size() + lone_host.size());
    CHECK(st.packed_elements == lone_host.size() + (std::count_if(sizes.begin(), sizes.begin() + 5, [](std::size_t n) { return n > 0; }) == 1
                                                        ? first_host.size()
                                                        : 0));  // a run of one tensor is a lone tensor
    CHECK(st.collectives == comm.log->all_reduces);
  }
}

TEMPLATE_LIST_TEST_CASE("all_reduce_gradients: a llama_model's gradients are one region (no copies)",
                        "[dist][gradients]", all_configs) {
  using B = typename TestType::backend;
  using T = typename TestType::value;
  const B b = TestType::make();
  llama_model<B, T> model(b, tiny_llama_config(false));
  for (const auto& p : model.parameters()) b.fill(p.grad.flat(), T(1.5));
  simulated_ranks comm;
  const gradient_all_reduce_stats st = all_reduce_gradients(comm, b, model.parameters());
  CHECK(st.collectives == 1);
  CHECK(st.packed_elements == 0);
  CHECK(st.elements == parameter_count(model.parameters()));
  for (const auto& p : model.parameters()) CHECK(to_host(b, p.grad.flat()) == std::vector<T>(p.grad.size(), T(3)));
  model.zero_grad(b);
  for (const auto& p : model.parameters()) CHECK(to_host(b, p.grad.flat()) == std::vector<T>(p.grad.size(), T(0)));
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
