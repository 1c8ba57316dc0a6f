// rlhf/backends/online_logsumexp.hpp: the online logsumexp state folded element by element, merged across
// any split of a row in any tree order (what the CUDA kernel does), and its edge cases.
#include "test_support.hpp"

#include <limits>

#include "rlhf/backends/bfloat16.hpp"
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

TEST_CASE("logp_strided_partial: the CUDA forward's per-thread float runs, merged in its tree, match the double pass",
          "[backends][online_logsumexp]") {
  // rlhf/backends/cuda/token_logprobs.cuh: thread k of W folds elements k, k + W, ... with logp_strided_partial
  // (float and bfloat16 logits in float runs of 64, each merged into double), then a tree of double merges.
  // Replayed here for widths 1 to 256 against the sequential double pass of the same (widened) logits; a
  // double row takes the double path, and so equals the sequential pass to merge rounding.
  using detail::logp_online_state;
  auto g = rng(402);
  for (std::size_t v : {1u, 33u, 1000u, 32000u}) {
    for (double t : {1.0, 0.7}) {
      auto z = normal<double>(g, v, 0.0, 3.0);
      if (v > 3) {
        z[1] = -inf;      // filtered
        z[v - 1] = 25.0;  // a late dominant maximum: every run rescales
      }
      std::vector<float> zf(v);
      std::vector<bfloat16> zb(v);
      std::vector<double> zd_of_f(v), zd_of_b(v);
      for (std::size_t j = 0; j < v; ++j) {
        zf[j] = static_cast<float>(z[j]);
        zb[j] = bfloat16(zf[j]);
        zd_of_f[j] = static_cast<double>(zf[j]);
        zd_of_b[j] = static_cast<double>(static_cast<float>(zb[j]));
      }
      const auto sequential = [&](const std::vector<double>& row) {
        logp_online_state seq;
        for (double x : row) seq.add(x, 1.0 / t);
        std::vector<double> out(3);
        seq.finish(row[0], 1.0 / t, out[0], out[1], out[2]);
        return out;
      };
      const auto replay = [&](const auto* row, std::size_t width) {
        std::vector<logp_online_state> part(width);
        for (std::size_t k = 0; k < width; ++k) part[k] = detail::logp_strided_partial(row, v, k, width, 1.0 / t);
        for (std::size_t stride = 1; stride < width; stride *= 2) {
          for (std::size_t k = 0; k + stride < width; k += 2 * stride) part[k].merge(part[k + stride], 1.0 / t);
        }
        std::vector<double> out(3);
        part[0].finish(static_cast<double>(detail::logit_as_float(row[0])), 1.0 / t, out[0], out[1], out[2]);
        return out;
      };
      const auto replay_double = [&](std::size_t width) {
        std::vector<logp_online_state> part(width);
        for (std::size_t k = 0; k < width; ++k) part[k] = detail::logp_strided_partial(z.data(), v, k, width, 1.0 / t);
        for (std::size_t stride = 1; stride < width; stride *= 2) {
          for (std::size_t k = 0; k + stride < width; k += 2 * stride) part[k].merge(part[k + stride], 1.0 / t);
        }
        std::vector<double> out(3);
        part[0].finish(z[0], 1.0 / t, out[0], out[1], out[2]);
        return out;
      };
      for (std::size_t width : {1u, 32u, 256u}) {
        INFO("v " << v << " t " << t << " width " << width);
        // Float sums of at most 64 terms, polynomial_exp within 1.5e-7: a few 1e-7 of the double results.
        CHECK_THAT(replay(zf.data(), width), close_to<double>(sequential(zd_of_f), 2e-6, 2e-6));
        CHECK_THAT(replay(zb.data(), width), close_to<double>(sequential(zd_of_b), 2e-6, 2e-6));
        CHECK_THAT(replay_double(width), close_to<double>(sequential(z), 1e-12, 1e-12));
      }
    }
  }
  // Why the float runs are short: one float sum over a long row drifts. 2^20 equal terms e^-1 (all logits 0
  // but one 1) summed in float one by one are off by about 1e-2; in runs of 64 merged into double, by ~1e-7.
  {
    std::vector<float> row(std::size_t{1} << 20, 0.0f);
    row[0] = 1.0f;
    const logp_online_state st = detail::logp_strided_partial(row.data(), row.size(), 0, 1, 1.0);
    const double want_s = 1.0 + static_cast<double>(row.size() - 1) * std::exp(-1.0);
    CHECK(st.s == Approx(want_s).epsilon(1e-6));
  }
  // The documented edge cases survive the float runs: an all -inf row and a +inf logit give NaN, a NaN
  // logit poisons the row.
  const float finf = std::numeric_limits<float>::infinity();
  for (const std::vector<float>& row : {std::vector<float>{-finf, -finf, -finf}, std::vector<float>{0.5f, finf, 1.0f},
                                        std::vector<float>{0.5f, std::numeric_limits<float>::quiet_NaN(), 1.0f}}) {
    logp_online_state st = detail::logp_strided_partial(row.data(), row.size(), 0, 1, 1.0);
    double lp = 0, lse = 0, h = 0;
    st.finish(static_cast<double>(row[0]), 1.0, lp, lse, h);
    CHECK(std::isnan(h));
  }
}

TEST_CASE("logp_backward_float: the float gradient element against logp_backward_element in double",
          "[backends][online_logsumexp]") {
  // Hand-checkable case: z = (0, ln 3), t = 1, lse = ln 4, H as in the first case; g = 0.5, gh = -0.25. The
  // non-token column (j = 1): -g p - gh p (log p + H), p = 3/4.
  const double lse = std::log(4.0), h = -(0.25 * std::log(0.25) + 0.75 * std::log(0.75));
  const auto element = detail::logp_backward_float::of(lse, 0.5, -0.25, h, 1.0);
  const double p = 0.75, want = -0.5 * p + 0.25 * p * (std::log(p) + h);
  CHECK(static_cast<double>(element(static_cast<float>(std::log(3.0)))) == Approx(want).epsilon(1e-6));
  CHECK(detail::logp_backward_element(std::log(3.0), false, lse, 0.5, -0.25, h, 1.0) == Approx(want).epsilon(1e-14));
  // Large logits (1e4) with a temperature: the float element keeps its precision through z - c.
  auto g = rng(403);
  for (double t : {1.0, 0.7}) {
    const auto z = normal<double>(g, 200, 1.0e4, 2.0);
    detail::logp_online_state st;
    for (double x : z) st.add(static_cast<double>(static_cast<float>(x)), 1.0 / t);
    double lp = 0, l = 0, hh = 0;
    st.finish(static_cast<double>(static_cast<float>(z[0])), 1.0 / t, lp, l, hh);
    const auto e = detail::logp_backward_float::of(l, 0.7, 0.3, hh, 1.0 / t);
    for (double x : z) {
      const double zf = static_cast<double>(static_cast<float>(x));
      const double exact = detail::logp_backward_element(zf, false, l, 0.7, 0.3, hh, 1.0 / t);
      CHECK(static_cast<double>(e(static_cast<float>(zf))) == Approx(exact).epsilon(1e-5).margin(1e-7));
    }
  }
}
