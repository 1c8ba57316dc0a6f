/// @file ranking_loss.hpp
/// @brief The Eigen backend's pairwise ranking loss kernel (Ouyang et al. 2022, InstructGPT, eq. 1): eight
///        prompts at a time, one per SIMD lane, one vectorized `exp` per compared pair.
///
/// Same contract as the generic path of rlhf/losses/ranking_loss.hpp (found by argument-dependent lookup
/// as `rlhf_specialized_ranking_loss`; arguments are validated and the per-prompt scratch columns are
/// summed by rlhf::ranking_loss). The generic kernel evaluates a scalar softplus (exp + log1p) per pair
/// and then a scalar sigmoid (one more exp) per pair and side: three transcendentals per pair and side.
///
/// Here a block of 8 prompts is transposed into lanes (`ranking_lane_block`: rewards, ranks and gradients
/// stored [K_max][8]), and every pair slot (i, j), i < j, is evaluated for the 8 prompts at once in one loop
/// body on Eigen's packets (`ranking_lane_pairs`):
///
/// 1. x = r_b - r_w - m for the better b and worse w of the pair (a select on the ranks, no branch), with
///    a 0/1 factor for the compared pairs (j below the prompt's count, ranks not tied);
/// 2. e = exp(-|x|) (Eigen's packet exp);
/// 3. softplus(-x) = max(-x, 0) + log1p(e), and the log1p terms merged into one per 128 slots and lane:
///    sum_k log1p(e_k) = log1p(q) with q = prod_k (1 + e_k) - 1, accumulated as q <- q + e + q e (all
///    terms positive: no cancellation, relative error O(pairs * eps)); 128 factors in [1, 2] are far from
///    overflow;
/// 4. sigma(-x) = e / (1 + e) for x >= 0, 1 / (1 + e) otherwise (the same e: no second exp), added to
///    the worse response's gradient lane and subtracted from the better one's (row i's pushes on i gather
///    in registers).
///
/// Every load and store is a whole packet of lanes, and a prompt's gradient stays in its lane (no scatter
/// through pair indices, no scalar stores for packet loads to wait on, no pair list). A lane's arithmetic
/// never depends on the other lanes: each prompt's result is the same whichever block (and thread) it falls
/// in. Lanes past the last prompt and pairs past a prompt's count are masked (at most 7 idle lanes per call,
/// and the pairs that a prompt with fewer than K_max responses lacks).
///
/// All arithmetic is in double, as in the generic path; results differ from it by rounding only.
/// 64 prompts, one thread, forward + backward, previous kernel -> this one (docs/benchmarks.md):
/// K = 9: 12.2 -> 7.6 us with -march=native (AVX-512), 13.1 -> 10.3 us for AVX2, 24.5 -> 25.7 us for SSE2;
/// K = 4: 5.6 -> 3.0 us native. The previous kernel listed each prompt's pairs with scalar stores, ran
/// Eigen's exp over the list and scattered the gradient through pair indices.
#pragma once

#include <Eigen/Core>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "rlhf/backends/eigen.hpp"
#include "rlhf/backends/ranking_math.hpp"
#include "rlhf/backends/view.hpp"
#include "rlhf/config.hpp"

namespace rlhf::backends {

namespace detail {

/// Prompts per block, one per lane: 8 doubles are one AVX-512 vector (two AVX2 vectors).
inline constexpr std::size_t ranking_lanes = 8;

/// Pair slots per log1p product: a lane's product has at most 128 factors in [1, 2], far from overflow.
inline constexpr std::size_t ranking_chunk = 128;

/// One block of up to 8 prompts in lanes (per thread, reused block after block).
struct ranking_lane_block {
  std::size_t kmax;
  // [K_max][8] rewards (0 past a prompt's count), ranks and gradients; ranks and counts as doubles (exact), so
  // that they compare as double packets, whose masks select doubles.
  std::vector<double> r, rank, g;
  double count[ranking_lanes] = {};  // K_p per lane, 0 for lanes past the last prompt

  explicit ranking_lane_block(std::size_t k_max)
      : kmax(k_max), r(k_max * ranking_lanes), rank(k_max * ranking_lanes), g(k_max * ranking_lanes) {}

  /// Loads prompts [p0, p0 + lanes) into the lanes; the other lanes get count 0 (no compared pair).
  template <class T>
  void load(const T* rewards, const std::int32_t* ranks, const std::int32_t* counts, std::size_t p0,
            std::size_t lanes) {
    for (std::size_t l = 0; l < ranking_lanes; ++l) {
      const std::size_t k = l < lanes ? static_cast<std::size_t>(counts[p0 + l]) : 0;
      count[l] = static_cast<double>(k);
      const T* pr = rewards + (p0 + l) * kmax;
      const std::int32_t* pk = ranks + (p0 + l) * kmax;
      // Entries past the count are never compared, but the masked lanes compute with them: 0 keeps a NaN
      // there out of the arithmetic.
      for (std::size_t i = 0; i < kmax; ++i) {
        r[i * ranking_lanes + l] = i < k ? static_cast<double>(pr[i]) : 0.0;
        rank[i * ranking_lanes + l] = i < k ? static_cast<double>(pk[i]) : 0.0;
      }
    }
    std::fill(g.begin(), g.end(), 0.0);
  }
};

/// What the pair pass found, per lane.
struct ranking_lane_sums {
  double hinge[ranking_lanes] = {};  // sum of max(-x, 0)
  double logs[ranking_lanes] = {};   // sum of log1p(e)
  double gaps[ranking_lanes] = {};   // sum of r_better - r_worse over compared pairs
  double right[ranking_lanes] = {};  // compared pairs with r_better > r_worse
  double compared[ranking_lanes] = {};
};

/// Every pair slot of the block's prompts in one vectorized pass: the loss terms and statistics into `s`, the
/// unweighted pair gradient into the block's `g`.
///
/// Written on Eigen's packet functions (the widest double packet of the build: 2 lanes on SSE2, 4 on AVX, 8 on
/// AVX-512), not left to the compiler: GCC vectorizes no loop of selects on doubles for SSE2, and for AVX2
/// only when no select's arm holds arithmetic (under its default -ftrapping-math), so a plain loop was 2.4x
/// slower than the previous kernel in a default (SSE2) build.
inline void ranking_lane_pairs(ranking_lane_block& blk, double margin, ranking_lane_sums& s) {
  namespace ei = Eigen::internal;
  using Packet = ei::packet_traits<double>::type;
  constexpr std::size_t L = ranking_lanes, W = ei::packet_traits<double>::size, N = L / W;
  static_assert(L % W == 0, "the lanes of a block fill whole packets");
  const std::size_t kmax = blk.kmax;
  const double* r = blk.r.data();
  const double* rank = blk.rank.data();
  double* g = blk.g.data();
  const Packet one = ei::pset1<Packet>(1.0), minus_one = ei::pset1<Packet>(-1.0), zero = ei::pzero(one);
  const Packet margin_p = ei::pset1<Packet>(margin);
  Packet count[N], hinge[N], logs[N], gaps[N], right[N], compared_pairs[N], q[N];
  for (std::size_t n = 0; n < N; ++n) {
    count[n] = ei::ploadu<Packet>(blk.count + n * W);
    hinge[n] = logs[n] = gaps[n] = right[n] = compared_pairs[n] = q[n] = zero;
  }
  // sum of the log1p terms so far = log1p(q), per lane (std::log1p: once per prompt up to K = 16; Eigen's
  // packet log draws GCC 12's false -Wuninitialized from its AVX-512 intrinsics, GCC bug 105593).
  const auto merge_products = [&] {
    for (std::size_t n = 0; n < N; ++n) {
      alignas(64) double lanes[W];
      ei::pstoreu(lanes, q[n]);
      for (std::size_t w = 0; w < W; ++w) lanes[w] = std::log1p(lanes[w]);
      logs[n] = ei::padd(logs[n], ei::ploadu<Packet>(lanes));
      q[n] = zero;
    }
  };
  std::size_t factors = 0;  // in q
  // Row i of the upper triangle: its pushes on response i gather in registers (`acc`), those on the j's go
  // to memory, each address once per row.
  for (std::size_t i = 0; i + 1 < kmax; ++i) {
    Packet acc[N];
    for (std::size_t n = 0; n < N; ++n) acc[n] = zero;
    for (std::size_t j = i + 1; j < kmax; ++j) {
      const Packet jd = ei::pset1<Packet>(static_cast<double>(j));
      for (std::size_t n = 0; n < N; ++n) {
        const std::size_t at_i = i * L + n * W, at_j = j * L + n * W;
        const Packet ki = ei::ploadu<Packet>(rank + at_i), kj = ei::ploadu<Packet>(rank + at_j);
        // 1 for a compared pair (i < j < K_p, not tied), else 0.
        const Packet compared = ei::pand(ei::pcmp_lt(jd, count[n]), ei::pandnot(one, ei::pcmp_eq(ki, kj)));
        const Packet sg = ei::pselect(ei::pcmp_lt(ki, kj), one, minus_one);  // +1: i is the better response
        // r_better - r_worse (finite: see load)
        const Packet gap = ei::pmul(sg, ei::psub(ei::ploadu<Packet>(r + at_i), ei::ploadu<Packet>(r + at_j)));
        gaps[n] = ei::padd(gaps[n], ei::pmul(compared, gap));
        right[n] = ei::padd(right[n], ei::pand(ei::pcmp_lt(zero, gap), compared));
        compared_pairs[n] = ei::padd(compared_pairs[n], compared);
        // -log sigma(x) = softplus(-x) = max(-x, 0) + log1p(exp(-|x|)), finite for every finite x
        // (DeepSpeedExamples #316: never log(sigmoid(x))); d softplus(-x)/dx = -sigma(-x), from the same e:
        // sigma(-x) = e / (1 + e) for x >= 0, 1 / (1 + e) otherwise. A masked slot: no hinge, factor 1, no push.
        const Packet x = ei::psub(gap, margin_p);
        const Packet negative = ei::pcmp_lt(x, zero);
        const Packet e = ei::pmul(compared, ei::pexp(ei::pnegate(ei::pabs(x))));
        hinge[n] = ei::padd(hinge[n], ei::pand(negative, ei::pnegate(ei::pmul(compared, x))));
        q[n] = ei::padd(q[n], ei::padd(e, ei::pmul(q[n], e)));  // log1p terms merge: prod (1 + e) - 1
        // The pair pushes the better response up, the worse one down.
        const Packet sigma = ei::pdiv(ei::pselect(negative, one, e), ei::padd(one, e));
        const Packet u = ei::pnegate(ei::pmul(ei::pmul(sg, compared), sigma));
        acc[n] = ei::padd(acc[n], u);
        ei::pstoreu(g + at_j, ei::psub(ei::ploadu<Packet>(g + at_j), u));
      }
      if (++factors == ranking_chunk) merge_products(), factors = 0;
    }
    for (std::size_t n = 0; n < N; ++n) {
      const std::size_t at_i = i * L + n * W;
      ei::pstoreu(g + at_i, ei::padd(ei::ploadu<Packet>(g + at_i), acc[n]));
    }
  }
  merge_products();
  for (std::size_t n = 0; n < N; ++n) {
    ei::pstoreu(s.hinge + n * W, hinge[n]);
    ei::pstoreu(s.logs + n * W, logs[n]);
    ei::pstoreu(s.gaps + n * W, gaps[n]);
    ei::pstoreu(s.right + n * W, right[n]);
    ei::pstoreu(s.compared + n * W, compared_pairs[n]);
  }
}

}  // namespace detail

/// rlhf::ranking_loss's specialization for rlhf::eigen_backend (found by argument-dependent lookup).
/// Arguments are validated by rlhf::ranking_loss, which sums the scratch columns written here.
///
/// @tparam T float or double
/// @param b the backend (thread count)
/// @param rewards [P, K_max]
/// @param ranks [P, K_max], 0 = best, equal = tie
/// @param counts [P], K_p in [2, K_max]
/// @param d_rewards [P, K_max] gradient of the mean over prompts, or empty (forward only)
/// @param scratch [5, P]: per prompt the weighted pair loss, correct pairs, compared pairs, the sum of
///        reward gaps and the centering term
/// @param margin margin m inside the sigmoid
/// @param center centering coefficient c (0 = off)
/// @param pair_sums centering over pair sums (r_i + r_j)^2 instead of squared rewards
/// @param compared_only normalize by the compared pairs instead of C(K_p, 2)
template <class T>
void rlhf_specialized_ranking_loss(const eigen_backend& b, matrix_view<const T, host_space> rewards,
                                   matrix_view<const std::int32_t, host_space> ranks,
                                   vector_view<const std::int32_t, host_space> counts, matrix_view<T, host_space> d_rewards,
                                   matrix_view<double, host_space> scratch, double margin, double center, bool pair_sums,
                                   bool compared_only) {
  constexpr std::size_t L = detail::ranking_lanes;
  const std::size_t P = rewards.rows, kmax = rewards.cols;
  const double inv_p = 1.0 / static_cast<double>(P);
  const bool grad = d_rewards.data != nullptr;
  // Threads take whole blocks of 8 prompts; work ~ pairs per prompt: parallel only when there are many.
  const std::size_t blocks = (P + L - 1) / L;
  b.parallel_ranges(blocks, P * kmax * kmax, [&](std::size_t bb, std::size_t be) {
    detail::ranking_lane_block blk(kmax);
    for (std::size_t block = bb; block < be; ++block) {
      const std::size_t p0 = block * L, lanes = std::min(L, P - p0);
      blk.load(rewards.data, ranks.data, counts.data, p0, lanes);
      detail::ranking_lane_sums s;
      detail::ranking_lane_pairs(blk, margin, s);
      for (std::size_t l = 0; l < lanes; ++l) {
        const std::size_t p = p0 + l;
        const std::size_t k = static_cast<std::size_t>(counts.data[p]);
        const T* r = rewards.data + p * kmax;
        const double all = static_cast<double>(k * (k - 1) / 2);
        const double denom = compared_only ? s.compared[l] : all;
        const double w = denom > 0 ? 1.0 / denom : 0.0;
        double center_term = 0, row_sum = 0;
        if (center > 0) {
          // Centering penalty (Eisenstein et al. 2023), the generic path's functions (backends/ranking_math.hpp).
          for (std::size_t i = 0; i < k; ++i) row_sum += static_cast<double>(r[i]);
          center_term = rlhf::detail::ranking_center_penalty(r, k, center, pair_sums);
        }
        scratch(0, p) = w * (s.hinge[l] + s.logs[l]);
        scratch(1, p) = s.right[l];
        scratch(2, p) = s.compared[l];
        scratch(3, p) = s.gaps[l];
        scratch(4, p) = center_term;
        if (!grad) continue;
        T* d = d_rewards.data + p * kmax;
        for (std::size_t i = 0; i < k; ++i) {
          double gi = blk.g[i * L + l] * w;
          if (center > 0) {
            gi += rlhf::detail::ranking_center_gradient(static_cast<double>(r[i]), k, center, pair_sums, row_sum);
          }
          d[i] = static_cast<T>(gi * inv_p);
        }
        for (std::size_t i = k; i < kmax; ++i) d[i] = T(0);
      }
    }
  });
}

}  // namespace rlhf::backends
