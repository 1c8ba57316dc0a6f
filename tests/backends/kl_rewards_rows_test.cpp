// The one-pass rewards rows (rlhf/backends/kl_rewards_rows.hpp): the CUDA kernel's split of a row across a warp
// (lane l takes elements l, l + 32, ...; the lanes' sums added by the kernel's shuffle-down tree) and the whole
// row on one thread, replayed on the host against the generic path of rlhf::kl_penalized_rewards. Rows narrower
// and wider than a warp, interior holes, a row without a valid token, a valid last column, NaN where masked,
// every placement, the KL read and the k1 KL computed on the way; hand-computed score columns.
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
          std::vector<detail::kl_rewards_row_sums> row_sums(rows, {nan, nan, nan, nan});
          const detail::kl_rewards_rows<T, S> pass{
              make_matrix_view(k1 ? std::as_const(logp_nan).data() : std::as_const(kl_nan).data(), rows, cols),
              k1 ? make_matrix_view(ref_logp.data(), rows, cols) : matrix_view<const T, S>{},
              k1 ? make_matrix_view(kl.data(), rows, cols) : matrix_view<T, S>{},
              make_matrix_view(std::as_const(mask).data(), rows, cols),
              make_vector_view(std::as_const(shaped).data(), rows),
              make_matrix_view(rewards.data(), rows, cols),
              static_cast<T>(-o.beta),
              static_cast<int>(placement),
              row_sums.data()};
          replay_rows(pass, rows, threads);
          // Element by element the same arithmetic as the generic path: the same bits.
          CHECK(same_bits(rewards, want_rewards));
          if (k1) CHECK(same_bits(kl, want_kl));
          detail::kl_rewards_row_sums total;
          for (const auto& s : row_sums) total = total + s;  // in row order, as the backend's fold
          CHECK(total.valid == Approx(static_cast<double>(want.valid_tokens)));
          CHECK(total.scored == Approx(static_cast<double>(want.scored_rows)));
          CHECK(total.kl / static_cast<double>(rows) == Approx(want.mean_kl_sum).epsilon(1e-12).margin(1e-12));
          const double mean_score = total.scored > 0 ? total.score / total.scored : 0.0;
          CHECK(mean_score == Approx(want.mean_score).epsilon(1e-12).margin(1e-12));
        }
      }
    }
  }
}
