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
#include "rlhf/models/llama_reward_model.hpp"
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
    const std::size_t first_part = second_host.size() / 2;
    params.push_back({"b0", values.view(), matrix_view<T, S>{second.view().data, 1, first_part}});
    params.push_back(
        {"b1", values.view(), matrix_view<T, S>{second.view().data + first_part, 1, second_host.size() - first_part}});
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

namespace {
// Fills every gradient of `params` with distinct values (1, 2, 3, ...).
template <class B, class T, class S>
std::vector<std::vector<T>> fill_distinct(const B& b, const parameter_list<T, S>& params) {
  std::vector<std::vector<T>> host;
  T next = 1;
  for (const auto& p : params) {
    std::vector<T> h(p.grad.size());
    for (auto& v : h) v = next++;
    b.copy(vector_view<const T, host_space>{h.data(), h.size()}, p.grad.flat());
    host.push_back(h);
  }
  return host;
}
// Checks that every gradient holds its `host` values times `factor`.
template <class B, class T, class S>
void check_scaled(const B& b, const parameter_list<T, S>& params, const std::vector<std::vector<T>>& host, T factor) {
  for (std::size_t k = 0; k < params.size(); ++k) {
    std::vector<T> scaled = host[k];
    for (auto& x : scaled) x *= factor;
    INFO(params[k].name);
    CHECK(to_host(b, params[k].grad.flat()) == scaled);
  }
}
}  // namespace

TEMPLATE_LIST_TEST_CASE("gradient_all_reducer: every rank makes the same collectives in the same order, whatever it reports",
                        "[dist][gradients][overlap]", all_configs) {
  using B = typename TestType::backend;
  using T = typename TestType::value;
  const B b = TestType::make();
  // A reward model: the trunk's gradients in one buffer, the head's two separate (lone) tensors.
  auto rm = llama_reward_model<B, T>(b, tiny_llama_config(true));
  const auto params = rm.parameters();
  std::mt19937_64 g(11);
  for (const std::size_t bucket_elements : {std::size_t(1), std::size_t(40), std::size_t(150), std::size_t(1) << 20}) {
    INFO("bucket of " << bucket_elements << " elements");
    const gradient_all_reduce_options options{bucket_elements * sizeof(T)};
    // The silent rank (no rows: no backward, no reports) starts every bucket at finish().
    const auto host = fill_distinct(b, params);
    simulated_ranks silent;
    gradient_all_reducer<simulated_ranks, B, T> quiet(silent, b, params, options);
    const gradient_all_reduce_stats qs = quiet.finish();
    CHECK(qs.started_early == 0);
    CHECK(silent.log->in_flight == 0);
    check_scaled(b, params, host, T(2));
    // Reporting ranks: the backward order (head, then trunk from the top) in random groups, or a random
    // order; the collectives are the silent rank's, in its order.
    for (const bool scrambled : {false, true}) {
      INFO("scrambled " << scrambled);
      std::vector<std::size_t> order{params.size() - 2, params.size() - 1};
      for (const std::size_t k : llama_backward_report_order(rm.config())) order.push_back(k);
      if (scrambled) std::shuffle(order.begin(), order.end(), g);
      fill_distinct(b, params);
      simulated_ranks loud;
      gradient_all_reducer<simulated_ranks, B, T> reducer(loud, b, params, options);
      CHECK(reducer.bucket_count() == quiet.bucket_count());
      for (const std::size_t k : order) reducer.ready(k, 1);
      const gradient_all_reduce_stats st = reducer.finish();
      CHECK(loud.log->all_reduce_sizes == silent.log->all_reduce_sizes);
      CHECK(st.collectives == qs.collectives);
      CHECK(st.elements == parameter_count(params));
      CHECK(st.packed_elements == qs.packed_elements);
      CHECK(st.started_early == st.collectives);  // every parameter was reported before finish()
      CHECK(loud.log->in_flight == 0);
      check_scaled(b, params, host, T(2));
    }
    // The head's two lone tensors share one copied bucket (with a bucket of one element, each is as large
    // as a bucket and goes in place); the trunk is cut into in-place buckets at tensor boundaries.
    if (bucket_elements == 1) {
      CHECK(qs.packed_elements == 0);
      CHECK(qs.collectives == 2 + rm.trunk().tensor_count());
    } else {
      CHECK(qs.packed_elements == rm.config().dim + 1);
    }
    if (bucket_elements == (std::size_t(1) << 20)) CHECK(qs.collectives == 2);
  }
}

TEMPLATE_LIST_TEST_CASE("gradient_all_reduce_workspace: packing buffers are kept from one sum to the next",
                        "[dist][gradients]", all_configs) {
  using B = typename TestType::backend;
  using T = typename TestType::value;
  using S = typename B::memory_space;
  const B b = TestType::make();
  auto v = allocate<T>(b, 1, 1), g0 = allocate_filled<T>(b, 1, 3, T(1)), g1 = allocate_filled<T>(b, 2, 2, T(2)),
       g2 = allocate_filled<T>(b, 1, 5, T(3));
  const parameter_list<T, S> params{{"a", v.view(), g0.view()}, {"b", v.view(), g1.view()}, {"c", v.view(), g2.view()}};
  gradient_all_reduce_workspace<B, T> workspace;
  simulated_ranks comm;
  // Buckets of 9 elements: [c, b] packed (9), [a] packed (3): two buffers.
  CHECK(all_reduce_gradients(comm, b, params, {9 * sizeof(T)}, &workspace).packed_elements == 12);
  CHECK(workspace.capacity() == 12);
  const T* first = workspace.data(0);
  CHECK(all_reduce_gradients(comm, b, params, {9 * sizeof(T)}, &workspace).collectives == 2);
  CHECK(workspace.data(0) == first);  // reused, not reallocated
  CHECK(workspace.capacity() == 12);
  CHECK(to_host(b, g0.view().flat()) == std::vector<T>(3, T(4)));
  CHECK(to_host(b, g1.view().flat()) == std::vector<T>(4, T(8)));
  CHECK(to_host(b, g2.view().flat()) == std::vector<T>(5, T(12)));
}

TEMPLATE_LIST_TEST_CASE("gradient_all_reducer: a bucket starts once it and every bucket before it are complete",
                        "[dist][gradients][overlap]", all_configs) {
  using B = typename TestType::backend;
  using T = typename TestType::value;
  using S = typename B::memory_space;
  const B b = TestType::make();
  // Three separate tensors of a bucket each: buckets [p2], [p1], [p0] in that order.
  auto v = allocate<T>(b, 1, 1), g0 = allocate_filled<T>(b, 1, 4, T(1)), g1 = allocate_filled<T>(b, 1, 4, T(2)),
       g2 = allocate_filled<T>(b, 1, 4, T(3));
  const parameter_list<T, S> params{{"p0", v.view(), g0.view()}, {"p1", v.view(), g1.view()}, {"p2", v.view(), g2.view()}};
  simulated_ranks comm;
  gradient_all_reducer<simulated_ranks, B, T> reducer(comm, b, params, {4 * sizeof(T)});
  REQUIRE(reducer.bucket_count() == 3);
  reducer.ready(0, 1);  // the last bucket: waits for the two before it
  CHECK(comm.log->all_reduces == 0);
  reducer.ready(2, 1);
  CHECK(comm.log->all_reduces == 1);
  CHECK(comm.log->in_flight == 1);
  reducer.ready(1, 1);  // completes the second, which releases the third
  CHECK(comm.log->all_reduces == 3);
  CHECK(comm.log->in_flight == 3);
  const gradient_all_reduce_stats st = reducer.finish();
  CHECK(st.started_early == 3);
  CHECK(comm.log->in_flight == 0);
  CHECK(to_host(b, g0.view().flat()) == std::vector<T>(4, T(2)));
  CHECK(to_host(b, g1.view().flat()) == std::vector<T>(4, T(4)));
  CHECK(to_host(b, g2.view().flat()) == std::vector<T>(4, T(6)));
  CHECK(reducer.finish().collectives == 3);  // a second finish only returns the statistics
  CHECK(to_host(b, g2.view().flat()) == std::vector<T>(4, T(6)));
}

TEMPLATE_LIST_TEST_CASE("gradient_all_reducer: a blocking communicator, one without progress, or overlap off sums at finish()",
                        "[dist][gradients][overlap]", all_configs) {
  using B = typename TestType::backend;
  using T = typename TestType::value;
  const B b = TestType::make();
  llama_model<B, T> model(b, tiny_llama_config(false));
  const auto params = model.parameters();
  const auto host = fill_distinct(b, params);
  const gradient_all_reduce_options small{16 * sizeof(T)};
  simulated_blocking_ranks blocking;
  static_assert(communicator<simulated_blocking_ranks, B> && !nonblocking_communicator<simulated_blocking_ranks, B>);
  static_assert(nonblocking_communicator<simulated_ranks, B> && nonblocking_communicator<single_process, B>);
  gradient_all_reducer<simulated_blocking_ranks, B, T> reducer(blocking, b, params, small);
  for (std::size_t k = params.size(); k-- > 0;) reducer.ready(k, 1);
  CHECK(blocking.ranks.log->all_reduces == 0);  // nothing to gain from starting a blocking sum early
  const gradient_all_reduce_stats st = reducer.finish();
  CHECK(st.collectives == 1);  // the adjacent gradients stay one region
  CHECK(st.started_early == 0);
  check_scaled(b, params, host, T(2));
  simulated_ranks off;
  gradient_all_reduce_options no_overlap = small;
  no_overlap.overlap = false;
  gradient_all_reducer<simulated_ranks, B, T> late(off, b, params, no_overlap);
  for (std::size_t k = params.size(); k-- > 0;) late.ready(k, 1);
  CHECK(off.log->all_reduces == 0);
  CHECK(late.finish().collectives == 1);
  CHECK(off.log->completed_async == 0);
  // A communicator whose started collectives would not progress during the backward (MPI by default).
  simulated_ranks no_progress;
  no_progress.overlaps = false;
  gradient_all_reducer<simulated_ranks, B, T> after(no_progress, b, params, small);
  CHECK_FALSE(after.overlapping());
  for (std::size_t k = params.size(); k-- > 0;) after.ready(k, 1);
  CHECK(no_progress.log->all_reduces == 0);
  CHECK(after.finish().collectives == 1);
  CHECK(no_progress.log->completed_async == 0);
}

TEMPLATE_LIST_TEST_CASE("gradient_all_reducer: reports outside the list, twice or after finish() are errors",
                        "[dist][gradients][overlap][errors]", all_configs) {
  using B = typename TestType::backend;
  using T = typename TestType::value;
  const B b = TestType::make();
  llama_model<B, T> model(b, tiny_llama_config(true));
  const auto params = model.parameters();
  simulated_ranks comm;
  gradient_all_reducer<simulated_ranks, B, T> reducer(comm, b, params);
  CHECK_THROWS_WITH(reducer.ready(params.size() - 1, 2),
                    Catch::Contains("rlhf::gradient_all_reducer::ready") && Catch::Contains("a range within the " + std::to_string(params.size())));
  reducer.ready(0, 1);
  CHECK_THROWS_WITH(reducer.ready(0, 1), Catch::Contains("parameter 0 ('tok_embeddings') again"));
  reducer.finish();
  CHECK_THROWS_WITH(reducer.ready(1, 1), Catch::Contains("a report after finish()"));
  CHECK_THROWS_WITH((gradient_all_reducer<simulated_ranks, B, T>(comm, b, params, {0})),
                    "rlhf::gradient_all_reducer: argument 'options.bucket_bytes': expected > 0, received 0");
  // One rank: nothing planned, reports ignored.
  gradient_all_reducer<single_process, B, T> alone(single_process{}, b, params);
  CHECK_FALSE(alone.active());
  alone.ready(0, 1);
  alone.ready(0, 1);
  CHECK(alone.finish().collectives == 0);
}

TEMPLATE_LIST_TEST_CASE("overlapped_gradient_all_reduce: a llama_model's backward starts every sum before it returns",
                        "[dist][gradients][overlap]", all_configs) {
  using B = typename TestType::backend;
  using T = typename TestType::value;
  const B b = TestType::make();
  for (const bool shared : {true, false}) {
    INFO("shared classifier " << shared);
    const llama_config c = tiny_llama_config(shared);
    llama_model<B, T> model(b, c);
    model.init_random(b, 3, 0.3, 0.1);
    std::mt19937_64 g(5);
    const auto tokens_host = random_tokens(g, 2 * 6, c.vocab_size);
    const auto tokens = to_backend(b, std::span<const token_type>(tokens_host), 2, 6);
    const auto lengths = to_backend(b, std::vector<std::int32_t>{6, 3});
    auto lp = allocate<T>(b, 2, 6);
    const auto d_lp = allocate_filled<T>(b, 2, 6, T(0.5));
    const auto backward = [&] {
      model.log_probs(b, as_const(tokens.view()), as_const(lengths.view().flat()), lp.view(), backend_matrix<B, T>{},
                      forward_mode::training);
      model.log_probs_backward(b, as_const(d_lp.view()));
    };
    model.zero_grad(b);
    backward();
    std::vector<std::vector<T>> expected;
    for (const auto& p : model.parameters()) {
      std::vector<T> h = to_host(b, p.grad.flat());
      for (auto& x : h) x *= T(2);
      expected.push_back(h);
    }
    model.zero_grad(b);
    simulated_ranks comm;
    overlapped_gradient_all_reduce sum(comm, b, model, {64 * sizeof(T)});
    sum.arm();
    backward();  // the simulated collectives throw at wait() if anything wrote a gradient after its report
    CHECK(comm.log->all_reduces > 1);
    const gradient_all_reduce_stats st = sum.finish();
    CHECK(st.started_early == st.collectives);
    CHECK(st.packed_elements == 0);
    const auto params = model.parameters();
    for (std::size_t k = 0; k < params.size(); ++k) {
      INFO(params[k].name);
      CHECK(to_host(b, params[k].grad.flat()) == expected[k]);
    }
    // Disarmed after finish(): another backward reports to no one.
    backward();
  }
}
