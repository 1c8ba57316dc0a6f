// The one-pass rewards rows (rlhf/backends/kl_rewards_rows.hpp): the CUDA kernel's split of a row across a warp
// (lane l takes elements l, l + 32, ...; the lanes' sums added by the kernel's shuffle-down tree) and the whole
// row on one thread, replayed on the host against the generic path of rlhf::kl_penalized_rewards. Rows narrower
// and wider than a warp, interior holes, a row without a valid token, a valid last column, NaN where masked,
// every placement, the KL read and the k1 KL computed on the way; hand-computed score columns; and the public
// rlhf::kl_penalized_rewards through the CUDA backend's two hooks, their kernel replayed on the host.
#include "rlhf/backends/kl_rewards_rows.hpp"

#include <algorithm>
#include <cstring>
#include <limits>
#include <utility>
#include <vector>

#include "rlhf/advantages/kl_penalized_rewards.hpp"
#include "test_support.hpp"

using namespace rlhf;
using namespace rlhf::test;

namespace {

constexpr std::size_t warp = 32;

// warp_sum_fields of cuda/row_groups.cuh for lane 0: in each round lane l < offset adds lane l + offset's sums.
detail::kl_rewards_row_sums replay_warp_sum(std::vector<detail::kl_rewards_row_sums> lanes) {
  for (std::size_t offset = warp / 2; offset > 0; offset /= 2) {
    for (std::size_t lane = 0; lane < offset; ++lane) lanes[lane] = lanes[lane] + lanes[lane + offset];
  }
  return lanes[0];
}

// The kernel of cuda/kl_penalized_rewards.cuh for every row, with `threads` per row (1: operator()).
template <class T, class S>
void replay_rows(const detail::kl_rewards_rows<T, S>& rows, std::size_t count, std::size_t threads) {
  for (std::size_t r = 0; r < count; ++r) {
    if (threads == 1) {
      rows(r);
      continue;
    }
    const long long target = rows.target(rows.last_valid(r));
    std::vector<detail::kl_rewards_row_sums> lanes(threads);
    for (std::size_t lane = 0; lane < threads; ++lane) lanes[lane] = rows.write(r, target, lane, threads);
    rows.finish(r, target, replay_warp_sum(lanes));
  }
}

// Bit for bit (+0 and -0 differ: masked rewards are +0, as the generic path writes them).
template <class T>
bool same_bits(const std::vector<T>& a, const std::vector<T>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0;
}

}  // namespace

// The reference backend with the CUDA backend's two rewards hooks (cuda/kl_penalized_rewards.cuh), their warp
// kernel replayed on the host: rlhf::kl_penalized_rewards dispatches to them as it does on the GPU.
namespace kl_rewards_replay {

struct warp_replay_backend : reference_backend {};

template <class T>
void rlhf_specialized_kl_penalized_rewards(const warp_replay_backend& b, matrix_view<const T, host_space> kl,
                                           matrix_view<const mask_type, host_space> mask,
                                           vector_view<const T, host_space> shaped_scores,
                                           matrix_view<T, host_space> rewards, T beta, int placement, double& kl_total,
                                           std::size_t& valid_tokens, double& scored_sum, std::size_t& scored_rows) {
  detail::kl_rewards_by_rows<warp_replay_backend, T>(
      b, {kl, {}, {}, mask, shaped_scores, rewards, static_cast<T>(-beta), placement, nullptr},
      [](const auto& rows, std::size_t count) { replay_rows(rows, count, warp); }, kl_total, valid_tokens,
      scored_sum, scored_rows);
}

template <class T>
void rlhf_specialized_k1_kl_penalized_rewards(const warp_replay_backend& b, matrix_view<const T, host_space> logp,
                                              matrix_view<const T, host_space> ref_logp, matrix_view<T, host_space> kl,
                                              matrix_view<const mask_type, host_space> mask,
                                              vector_view<const T, host_space> shaped_scores,
                                              matrix_view<T, host_space> rewards, T beta, int placement,
                                              double& kl_total, std::size_t& valid_tokens, double& scored_sum,
                                              std::size_t& scored_rows) {
  detail::kl_rewards_by_rows<warp_replay_backend, T>(
      b, {logp, ref_logp, kl, mask, shaped_scores, rewards, static_cast<T>(-beta), placement, nullptr},
      [](const auto& rows, std::size_t count) { replay_rows(rows, count, warp); }, kl_total, valid_tokens,
      scored_sum, scored_rows);
}

}  // namespace kl_rewards_replay

TEST_CASE("kl_rewards_score_column: each placement's column, hand-computed", "[advantages][rewards]") {
  CHECK(detail::kl_rewards_score_column(-1, 5, 0) == -1);  // no valid token: no score, whatever the placement
  CHECK(detail::kl_rewards_score_column(-1, 5, 1) == -1);
  CHECK(detail::kl_rewards_score_column(-1, 5, 2) == -1);
  CHECK(detail::kl_rewards_score_column(2, 5, 0) == 2);  // the last valid token
  CHECK(detail::kl_rewards_score_column(2, 5, 1) == 4);  // the last column
  CHECK(detail::kl_rewards_score_column(2, 5, 2) == 3);  // one past the last valid token
  CHECK(detail::kl_rewards_score_column(4, 5, 2) == 4);  // ... which stays in the row
}

TEMPLATE_TEST_CASE("kl_rewards_rows: rows split across a warp and on one thread match the generic path",
                   "[advantages][rewards][property]", float, double) {
  using T = TestType;
  using S = host_space;
  const reference_backend b;
  auto g = rng(1207);
  const T nan = std::numeric_limits<T>::quiet_NaN();
  for (const auto& [rows, cols] : std::vector<std::pair<std::size_t, std::size_t>>{{1, 1}, {5, 7}, {4, 32}, {6, 100}}) {
    const std::size_t n = rows * cols;
    const auto logp = normal<T>(g, n, -1.0, 0.3), ref_logp = normal<T>(g, n, -1.0, 0.3);
    const auto scores = normal<T>(g, rows, 0.0, 3.0);
    auto mask = random_mask(g, n, 0.8);
    std::vector<mask_type> eos(rows);
    for (std::size_t r = 0; r < rows; ++r) {
      eos[r] = static_cast<mask_type>(g() % 3 != 0);
      const std::size_t pad = r == 1 ? cols : g() % (cols / 2 + 1);  // row 1 (when there is one) has no valid token
      for (std::size_t t = cols - pad; t < cols; ++t) mask[r * cols + t] = 0;
    }
    if (rows > 2) mask[2 * cols + cols - 1] = 1;  // row 2 ends valid: one past its last valid token is the last column
    std::vector<T> logp_nan = logp, kl_nan(n);
    for (std::size_t i = 0; i < n; ++i) {
      if (!mask[i]) logp_nan[i] = nan;  // never read
    }
    for (const auto placement : {score_placement::last_valid_token, score_placement::last_position,
                                 score_placement::one_past_last_valid}) {
      const kl_penalized_rewards_options o{0.05, 2.0, 0.5, placement};
      // The generic path: the k1 KL (kl_penalty), the rewards and the statistics.
      std::vector<T> want_kl(n), want_rewards(n);
      const auto want = kl_penalized_rewards<reference_backend, T>(
          b, make_matrix_view(logp_nan.data(), rows, cols), make_matrix_view(ref_logp.data(), rows, cols),
          make_vector_view(scores.data(), rows), make_matrix_view(std::as_const(mask).data(), rows, cols),
          make_vector_view(std::as_const(eos).data(), rows), make_matrix_view(want_kl.data(), rows, cols),
          make_matrix_view(want_rewards.data(), rows, cols), kl_estimator_options::instructgpt(), o);
      for (std::size_t i = 0; i < n; ++i) kl_nan[i] = mask[i] ? want_kl[i] : nan;  // the read KL: NaN where masked
      // The shaped scores, as the caller passes them.
      std::vector<T> shaped(rows);
      for (std::size_t r = 0; r < rows; ++r) {
        T s = std::min(std::max(scores[r], T(-2)), T(2));
        if (!eos[r]) s -= T(0.5);
        shaped[r] = s;
      }
      for (const bool k1 : {false, true}) {
        for (const std::size_t threads : {std::size_t{1}, warp}) {
          INFO("[" << rows << ", " << cols << "] placement " << static_cast<int>(placement) << " k1 " << k1
                   << " threads per row " << threads);
          std::vector<T> kl(n, nan), rewards(n, nan);
          const detail::kl_rewards_rows<T, S> pass{
              make_matrix_view(k1 ? std::as_const(logp_nan).data() : std::as_const(kl_nan).data(), rows, cols),
              k1 ? make_matrix_view(ref_logp.data(), rows, cols) : matrix_view<const T, S>{},
              k1 ? make_matrix_view(kl.data(), rows, cols) : matrix_view<T, S>{},
              make_matrix_view(std::as_const(mask).data(), rows, cols),
              make_vector_view(std::as_const(shaped).data(), rows),
              make_matrix_view(rewards.data(), rows, cols),
              static_cast<T>(-o.beta),
              static_cast<int>(placement),
              nullptr};  // kl_rewards_by_rows provides the row statistics' buffer
          double kl_total = nan, scored_sum = nan;
          std::size_t valid_tokens = 1234, scored_rows = 1234;
          detail::kl_rewards_by_rows<reference_backend, T>(
              b, pass, [threads](const auto& r, std::size_t count) { replay_rows(r, count, threads); }, kl_total,
              valid_tokens, scored_sum, scored_rows);
          // Element by element the same arithmetic as the generic path: the same bits.
          CHECK(same_bits(rewards, want_rewards));
          if (k1) CHECK(same_bits(kl, want_kl));
          CHECK(valid_tokens == want.valid_tokens);
          CHECK(scored_rows == want.scored_rows);
          CHECK(kl_total / static_cast<double>(rows) == Approx(want.mean_kl_sum).epsilon(1e-12).margin(1e-12));
          const double mean_score = scored_rows > 0 ? scored_sum / static_cast<double>(scored_rows) : 0.0;
          CHECK(mean_score == Approx(want.mean_score).epsilon(1e-12).margin(1e-12));
        }
      }
    }
  }
}

TEMPLATE_TEST_CASE("kl_penalized_rewards through the warp kernel's hooks matches the reference backend",
                   "[advantages][rewards]", float, double) {
  using T = TestType;
  using B = kl_rewards_replay::warp_replay_backend;
  STATIC_REQUIRE(detail::k1_kl_rewards_backend<B, T>);
  const reference_backend ref;
  const B b;
  auto g = rng(1208);
  const std::size_t rows = 6, cols = 70, n = rows * cols;
  const auto logp = normal<T>(g, n, -1.0, 0.3), ref_logp = normal<T>(g, n, -1.0, 0.3);
  const auto scores = normal<T>(g, rows, 0.0, 3.0);
  auto mask = random_mask(g, n, 0.8);
  for (std::size_t r = 0; r < rows; ++r) {  // padding of 0, 5 or 10 columns after each response
    for (std::size_t t = cols - 5 * (r % 3); t < cols; ++t) mask[r * cols + t] = 0;
  }
  for (std::size_t t = 0; t < cols; ++t) mask[3 * cols + t] = 0;  // a row without a valid token
  std::vector<mask_type> eos{1, 0, 1, 1, 0, 1};
  const auto stats = [](const kl_penalized_rewards_stats& s) {
    return std::vector<double>{static_cast<double>(s.valid_tokens), static_cast<double>(s.scored_rows), s.mean_kl,
                               s.mean_kl_sum, s.mean_score, s.mean_raw_score, s.mean_non_score_reward};
  };
  for (const auto placement : {score_placement::last_valid_token, score_placement::one_past_last_valid}) {
    INFO("placement " << static_cast<int>(placement));
    const kl_penalized_rewards_options o{0.1, 0.0, 1.0, placement};
    std::vector<T> want_kl(n), want_rewards(n), kl(n), rewards(n), rewards_from_kl(n);
    const auto run = [&](const auto& backend, std::vector<T>& kl_out, std::vector<T>& rewards_out) {
      return kl_penalized_rewards<std::remove_cvref_t<decltype(backend)>, T>(
          backend, make_matrix_view(logp.data(), rows, cols), make_matrix_view(ref_logp.data(), rows, cols),
          make_vector_view(scores.data(), rows), make_matrix_view(std::as_const(mask).data(), rows, cols),
          make_vector_view(std::as_const(eos).data(), rows), make_matrix_view(kl_out.data(), rows, cols),
          make_matrix_view(rewards_out.data(), rows, cols), kl_estimator_options::instructgpt(), o);
    };
    const auto want = run(ref, want_kl, want_rewards);
    const auto got = run(b, kl, rewards);  // the k1 hook
    CHECK(same_bits(kl, want_kl));
    CHECK(same_bits(rewards, want_rewards));
    CHECK_THAT(stats(got), close_to<double>(stats(want), 1e-12, 1e-12));
    const auto got_from_kl = kl_penalized_rewards<B, T>(  // the hook that reads the KL
        b, make_matrix_view(std::as_const(kl).data(), rows, cols), make_vector_view(scores.data(), rows),
        make_matrix_view(std::as_const(mask).data(), rows, cols), make_vector_view(std::as_const(eos).data(), rows),
        make_matrix_view(rewards_from_kl.data(), rows, cols), o);
    CHECK(same_bits(rewards_from_kl, want_rewards));
    CHECK_THAT(stats(got_from_kl), close_to<double>(stats(want), 1e-12, 1e-12));
  }
}
