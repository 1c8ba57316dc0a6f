// rlhf/backends/gae_step_map.hpp: one GAE step as an affine map of the carried (next value, next advantage)
// state; compositions in any grouping (what the CUDA kernel's warp scan does) equal the sequential sweep.
#include "test_support.hpp"

#include <functional>
#include <limits>

#include "rlhf/backends/gae_step_map.hpp"

using namespace rlhf;
using namespace rlhf::test;

namespace {

// The sequential reverse sweep (the Eigen kernel's loop): advantages of one row.
std::vector<double> sweep(const std::vector<double>& r, const std::vector<double>& v, const std::vector<mask_type>& m,
                          double gamma, double lambda) {
  std::vector<double> a(r.size(), 0.0);
  double next_v = 0, next_a = 0;
  for (std::size_t t = r.size(); t-- > 0;) {
    if (!m[t]) continue;
    next_a = r[t] + gamma * next_v - v[t] + gamma * lambda * next_a;
    next_v = v[t];
    a[t] = next_a;
  }
  return a;
}

}  // namespace

TEST_CASE("gae_step_map: hand-computed steps and the identity", "[backends][gae_step_map]") {
  using map = detail::gae_step_map<double>;
  // gamma = 0.5, lambda = 1: one valid step with r = 1, V = 0.25 from the state (v, a) = (2, 4):
  // a' = 1 - 0.25 + 0.5 * 2 + 0.5 * 4 = 3.75, v' = 0.25.
  double v = 2, a = 4;
  map::step(1.0, 0.25, true, 0.5, 0.5).apply(v, a);
  CHECK(v == 0.25);
  CHECK(a == 3.75);
  // A masked step is the identity and ignores NaN in its reward and value.
  const double nan = std::numeric_limits<double>::quiet_NaN();
  map::step(nan, nan, false, 0.5, 0.5).apply(v, a);
  CHECK(v == 0.25);
  CHECK(a == 3.75);
  const map id;
  const map f = map::step(1.0, 0.25, true, 0.5, 0.5);
  const map left = id.after(f), right = f.after(id);
  CHECK((left.p == f.p && left.q == f.q && left.s == f.s && left.cv == f.cv && left.ca == f.ca));
  CHECK((right.p == f.p && right.q == f.q && right.s == f.s && right.cv == f.cv && right.ca == f.ca));
}

TEST_CASE("gae_step_map: every grouping of a row's composition equals the sequential sweep",
          "[backends][gae_step_map]") {
  using map = detail::gae_step_map<double>;
  auto g = rng(501);
  for (std::size_t n : {1u, 2u, 31u, 128u, 1000u}) {
    for (auto [gamma, lambda] : {std::pair{1.0, 0.95}, std::pair{0.99, 1.0}, std::pair{0.9, 0.0}}) {
      const auto r = normal<double>(g, n), v = normal<double>(g, n);
      auto m = random_mask(g, n);  // interior holes and padding
      const auto want = sweep(r, v, m, gamma, lambda);
      std::vector<map> steps(n);
      for (std::size_t t = 0; t < n; ++t) steps[t] = map::step(r[t], v[t], m[t] != 0, gamma, gamma * lambda);
      // (1) The suffix composite of [t, n) applied to the zero state gives A_t (at valid t), for a balanced
      // tree grouping (the shape of a parallel scan).
      const std::function<map(std::size_t, std::size_t)> tree = [&](std::size_t lo, std::size_t hi) -> map {
        if (hi - lo == 1) return steps[lo];
        const std::size_t mid = lo + (hi - lo) / 2;
        return tree(lo, mid).after(tree(mid, hi));
      };
      for (std::size_t t = 0; t < n; t += 7) {
        if (!m[t]) continue;
        double sv = 0, sa = 0;
        tree(t, n).apply(sv, sa);
        INFO("n " << n << " t " << t);
        CHECK_THAT(std::vector<double>{sa}, close_to<double>(std::vector<double>{want[t]}, 1e-12, 1e-12));
      }
      // (2) The CUDA kernel's grouping: runs of `items` steps per lane, lanes scanned in a warp of 32, tiles
      // from the end of the row, the state entering each tile from the later one.
      for (std::size_t items : {1u, 4u}) {
        const std::size_t tile = 32 * items;
        std::vector<double> got(n, 0.0);
        double carry_v = 0, carry_a = 0;
        for (std::size_t tile_end = n; tile_end > 0;) {
          const std::size_t tile_begin = tile_end > tile ? tile_end - tile : 0;
          std::vector<map> lane(32);
          for (std::size_t l = 0; l < 32; ++l) {
            for (std::size_t k = items; k-- > 0;) {  // compose the lane's run, later steps first
              const std::size_t t = tile_end - tile + l * items + k;
              if (tile_end < tile && l * items + k < tile - tile_end) continue;  // before the row's start
              lane[l] = steps[t].after(lane[l]);
            }
          }
          // Inclusive suffix scan by doubling (what __shfl_down does), then exclusive by one shift.
          for (std::size_t off = 1; off < 32; off *= 2) {
            std::vector<map> next = lane;
            for (std::size_t l = 0; l + off < 32; ++l) next[l] = lane[l].after(lane[l + off]);
            lane = next;
          }
          for (std::size_t l = 0; l < 32; ++l) {
            const map exclusive = l + 1 < 32 ? lane[l + 1] : map{};
            double sv = carry_v, sa = carry_a;
            exclusive.apply(sv, sa);
            for (std::size_t k = items; k-- > 0;) {
              if (tile_end < tile && l * items + k < tile - tile_end) continue;
              const std::size_t t = tile_end - tile + l * items + k;
              steps[t].apply(sv, sa);
              got[t] = m[t] ? sa : 0.0;
            }
          }
          lane[0].apply(carry_v, carry_a);  // the state at the tile's first step
          tile_end = tile_begin;
        }
        INFO("n " << n << " items " << items);
        CHECK_THAT(got, close_to<double>(want, 1e-12, 1e-12));
      }
    }
  }
}
