// rlhf/backends/online_logsumexp.hpp: the online logsumexp state folded element by element, merged across
// any split of a row in any tree order (what the CUDA kernel does), and its edge cases.
#include "test_support.hpp"

#include <limits>

#include "rlhf/backends/online_logsumexp.hpp"

using namespace rlhf;
using namespace rlhf::test;

namespace {
constexpr double inf = std::numeric_limits<double>::infinity();
}  // namespace

TEST_CASE("logp_online_state::add: hand-computed row", "[backends][online_logsumexp]") {
  // z = (0, ln 3), t = 1: p = (1/4, 3/4), logsumexp = ln 4, H = -(1/4 ln 1/4 + 3/4 ln 3/4).
  detail::logp_online_state st;
  st.add(0.0, 1.0);
  st.add(std::log(3.0), 1.0);
  st.add(-inf, 1.0);  // a filtered entry changes nothing
  double lp = 0, lse = 0, h = 0;
  st.finish(0.0, 1.0, lp, lse, h);
  CHECK(lse == Approx(std::log(4.0)).epsilon(1e-14));
  CHECK(lp == Approx(std::log(0.25)).epsilon(1e-14));
  CHECK(h == Approx(-(0.25 * std::log(0.25) + 0.75 * std::log(0.75))).epsilon(1e-14));
}

TEST_CASE("logp_online_state::merge: any split of a row, merged in a tree, equals one sequential pass",
          "[backends][online_logsumexp]") {
  // What a parallel kernel does (rlhf/backends/cuda/token_logprobs.cuh): thread k of W folds elements
  // k, k + W, k + 2W, ... of the row, then the W states are merged pairwise in a tree (a warp shuffle
  // reduction, then the warps' states). Replayed here on the host for widths from 1 to more than the row.
  using detail::logp_online_state;
  auto g = rng(401);
  for (std::size_t v : {1u, 2u, 7u, 32u, 33u, 1000u}) {
    for (double t : {1.0, 0.7}) {
      auto z = normal<double>(g, v, 0.0, 4.0);
      if (v > 3) {
        z[1] = -inf;  // filtered entries carry probability 0
        z[v - 1] = 40.0;  // a dominant maximum late in the row
      }
      logp_online_state seq;
      for (double x : z) seq.add(x, 1.0 / t);
      double want_lp = 0, want_lse = 0, want_h = 0;
      seq.finish(z[0], 1.0 / t, want_lp, want_lse, want_h);
      for (std::size_t width : {1u, 2u, 3u, 32u, 256u, 2048u}) {
        std::vector<logp_online_state> part(width);
        for (std::size_t j = 0; j < v; ++j) part[j % width].add(z[j], 1.0 / t);
        for (std::size_t stride = 1; stride < width; stride *= 2) {  // tree, as __shfl_down does
          for (std::size_t k = 0; k + stride < width; k += 2 * stride) part[k].merge(part[k + stride], 1.0 / t);
        }
        double lp = 0, lse = 0, h = 0;
        part[0].finish(z[0], 1.0 / t, lp, lse, h);
        INFO("v " << v << " t " << t << " width " << width);
        CHECK_THAT(std::vector<double>({lp, lse, h}),
                   close_to<double>(std::vector<double>{want_lp, want_lse, want_h}, 1e-12, 1e-12));
        // Merging in the opposite order (later parts first) gives the same state up to rounding.
        logp_online_state rev;
        for (std::size_t k = width; k-- > 0;) {
          logp_online_state p;
          for (std::size_t j = k; j < v; j += width) p.add(z[j], 1.0 / t);
          rev.merge(p, 1.0 / t);
        }
        double lp2 = 0, lse2 = 0, h2 = 0;
        rev.finish(z[0], 1.0 / t, lp2, lse2, h2);
        CHECK_THAT(std::vector<double>({lp2, lse2, h2}),
                   close_to<double>(std::vector<double>{want_lp, want_lse, want_h}, 1e-12, 1e-12));
      }
    }
  }
  // Empty parts change nothing; an all -inf row has no distribution (NaN), a NaN logit poisons the row.
  logp_online_state a, empty;
  a.add(1.0, 1.0);
  a.merge(empty, 1.0);
  empty.merge(a, 1.0);
  CHECK(empty.m == 1.0);
  CHECK(empty.s == 1.0);
  logp_online_state all_inf, other_inf;
  all_inf.add(-inf, 1.0);
  other_inf.add(-inf, 1.0);
  all_inf.merge(other_inf, 1.0);
  double lp = 0, lse = 0, h = 0;
  all_inf.finish(-inf, 1.0, lp, lse, h);
  CHECK(std::isnan(lp));
  CHECK(std::isnan(h));
  logp_online_state with_nan;
  with_nan.add(0.5, 1.0);
  with_nan.add(std::numeric_limits<double>::quiet_NaN(), 1.0);
  a.merge(with_nan, 1.0);
  CHECK(std::isnan(a.s));
}
