// rlhf/backends/ordered_reduce.hpp: the CUDA backend's transform_reduce / reduce_rows fold (cuda/reduce.cuh)
// replayed on the host: the slices cover the range in order, and the tree of ordered_tree_step gives the
// left-to-right fold for a non-commutative associative op, for every length around the thread count.
#include "test_support.hpp"

#include <memory>
#include <vector>

#include "rlhf/backends/ordered_reduce.hpp"

using namespace rlhf;
using namespace rlhf::test;

namespace {

// The affine map y -> a y + b; `then` composes in order (first f, then g): associative, not commutative.
// With a in {1, -1} and small integer b every composition is exact in double.
struct affine {
  double a = 1, b = 0;
  bool operator==(const affine&) const = default;
};
struct then {
  affine operator()(const affine& f, const affine& g) const { return {f.a * g.a, f.b * g.a + g.b}; }
};

// The kernel's fold of [begin, end) on `threads` threads: slices, then the tree steps (a barrier between
// steps; within a step the order over t does not matter, reversed here to show it).
template <class Acc, class Op, class Element>
bool replay_block_fold(std::size_t begin, std::size_t end, unsigned threads, Op op, const Element& element, Acc& out) {
  std::vector<Acc> values(threads);
  const std::unique_ptr<bool[]> has_storage(new bool[threads]);  // bool*, as the kernel's shared flags
  bool* has = has_storage.get();
  for (unsigned t = 0; t < threads; ++t) {
    bool h = false;
    backends::detail::ordered_slice_fold(backends::detail::ordered_slice::of(begin, end, t, threads), op, element,
                                         values[t], h);
    has[t] = h;
  }
  for (unsigned s = 1; s < threads; s *= 2) {
    for (unsigned t = threads; t-- > 0;) backends::detail::ordered_tree_step(values.data(), has, t, s, threads, op);
  }
  if (has[0]) out = values[0];
  return has[0];
}

}  // namespace

TEST_CASE("ordered_slice: the threads' slices tile the range in thread order", "[backends][ordered_reduce]") {
  for (unsigned threads : {1u, 4u, 32u, 256u}) {
    for (std::size_t n : {0u, 1u, 3u, 31u, 255u, 256u, 257u, 1000u, 4096u, 4097u}) {
      const std::size_t begin = 17;
      std::size_t next = begin;
      for (unsigned t = 0; t < threads; ++t) {
        const auto s = backends::detail::ordered_slice::of(begin, begin + n, t, threads);
        INFO("threads " << threads << " n " << n << " t " << t);
        CHECK(s.first == next);  // contiguous, no gap or overlap
        CHECK(s.last >= s.first);
        CHECK(s.last - s.first <= (n + threads - 1) / threads);
        next = s.last;
      }
      CHECK(next == begin + n);
    }
  }
}

TEST_CASE("ordered_tree_step: the block fold equals the left-to-right fold of a non-commutative op",
          "[backends][ordered_reduce]") {
  auto g = rng(77);
  for (unsigned threads : {1u, 4u, 32u, 256u}) {
    for (std::size_t n : {1u, 2u, 5u, 255u, 256u, 257u, 1000u, 4096u}) {
      std::vector<affine> maps(n);
      for (auto& m : maps) m = {g() % 2 ? 1.0 : -1.0, static_cast<double>(static_cast<int>(g() % 7) - 3)};
      affine want = maps[0];
      for (std::size_t i = 1; i < n; ++i) want = then{}(want, maps[i]);
      affine got;
      const bool has = replay_block_fold(0, n, threads, then{}, [&](std::size_t i) { return maps[i]; }, got);
      INFO("threads " << threads << " n " << n);
      CHECK(has);
      CHECK(got == want);
      // The same maps folded in any other order would differ: a commuted tree (t with t + s swapped) does.
      if (n >= 2 && threads >= 2) {
        affine swapped;
        replay_block_fold(0, n, threads, [](const affine& f, const affine& h) { return then{}(h, f); },
                          [&](std::size_t i) { return maps[i]; }, swapped);
        affine reversed = maps[n - 1];
        for (std::size_t i = n - 1; i-- > 0;) reversed = then{}(reversed, maps[i]);
        CHECK(swapped == reversed);  // the swapped op folds the reversed sequence: the order is kept exactly
      }
    }
  }
  // An empty range holds no value (init alone is the result), and sums come out as the sequential sum.
  double unused = 0;
  CHECK_FALSE(replay_block_fold(5, 5, 256, [](double a, double b) { return a + b; }, [](std::size_t) { return 1.0; },
                                unused));
  double total = 0;
  REQUIRE(replay_block_fold(0, 4096, 256, [](double a, double b) { return a + b; },
                            [](std::size_t i) { return static_cast<double>(i); }, total));
  CHECK(total == 4096.0 * 4095.0 / 2.0);
}
