// The token embedding's gradient by token-sorted runs (rlhf/backends/thrust/embedding_backward.hpp, the CUDA
// backend's algorithm) on Thrust's host systems: a hand-computed case, and the same bits as the generic path
// for repeated, all-equal, all-distinct and single tokens, one column and many; the table gradient
// accumulates onto what it holds.
#include "test_support.hpp"

#if RLHF_TEST_HAS_THRUST
#include <cstring>
#include <numeric>
#include <random>

#include "rlhf/backends/thrust/embedding_backward.hpp"
#include "rlhf/models/layers/embedding.hpp"

using namespace rlhf;
using namespace rlhf::test;

TEMPLATE_LIST_TEST_CASE("thrust embedding_backward_by_runs: hand-computed", "[backends][thrust][embedding]",
                        thrust_configs) {
  using T = typename TestType::value;
  const auto b = TestType::make();
  // Tokens [2, 0, 2, 2] into a [3, 2] table of ones: row 0 gets d_out row 1 (1 + [10, 20]), row 1 nothing, row 2
  // rows 0, 2 and 3 (1 + [1 + 100 + 1000, 2 + 200 + 2000]).
  const std::vector<token_type> tokens{2, 0, 2, 2};
  const std::vector<T> d_out{1, 2, 10, 20, 100, 200, 1000, 2000};
  auto bt = to_backend(b, tokens);
  auto bd = to_backend(b, d_out, 4, 2);
  auto table = allocate_filled<T>(b, 3, 2, T(1));
  detail::embedding_backward_by_runs(b, as_const(bt.view().flat()), as_const(bd.view()), table.view());
  CHECK(to_host(b, table.view()) == std::vector<T>{11, 21, 1, 1, 1102, 2203});
}

TEMPLATE_LIST_TEST_CASE("thrust embedding_backward_by_runs: the generic path's bits, repeated and distinct tokens",
                        "[backends][thrust][embedding][property]", thrust_configs) {
  using T = typename TestType::value;
  const auto b = TestType::make();
  auto g = rng(77);
  struct shape {
    std::size_t tokens, vocab, dim;
  };
  for (const shape s : {shape{1, 5, 3}, shape{50, 7, 9}, shape{64, 1, 4}, shape{40, 200, 1}, shape{300, 31, 33}}) {
    std::vector<token_type> tokens(s.tokens);
    std::uniform_int_distribution<int> pick(0, static_cast<int>(s.vocab) - 1);
    for (auto& t : tokens) t = static_cast<token_type>(pick(g));
    if (s.vocab >= s.tokens) std::iota(tokens.begin(), tokens.end(), 0);  // all distinct
    const auto d_out = normal<T>(g, s.tokens * s.dim), start = normal<T>(g, s.vocab * s.dim);
    INFO("N " << s.tokens << " V " << s.vocab << " D " << s.dim);
    auto bt = to_backend(b, tokens);
    auto bd = to_backend(b, d_out, s.tokens, s.dim);
    auto want = to_backend(b, start, s.vocab, s.dim), got = to_backend(b, start, s.vocab, s.dim);
    detail::embedding_backward_generic<decltype(b), T>(b, as_const(bt.view().flat()), as_const(bd.view()),
                                                       want.view());
    detail::embedding_backward_by_runs(b, as_const(bt.view().flat()), as_const(bd.view()), got.view());
    const auto w = to_host(b, want.view()), h = to_host(b, got.view());
    REQUIRE(w.size() == h.size());
    CHECK(std::memcmp(w.data(), h.data(), w.size() * sizeof(T)) == 0);
  }
}
#endif
