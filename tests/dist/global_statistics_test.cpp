// Global statistics from per-rank partial values: sums and maxima in rank order; masked moments merged
// from ragged per-rank shards equal the moments of the union (a property test against the two-pass
// formula on the concatenated data), whitening with them equals whitening the union; the aggregation
// counts of every rank make each rank's loss its share of the union's; counts the caller set are kept.
#include "rlhf/dist/global_statistics.hpp"

#include <cmath>
#include <random>
#include <vector>

#include "dist/simulated_ranks.hpp"
#include "rlhf/dist/single_process.hpp"
#include "rlhf/losses/sft_loss.hpp"
#include "test_support.hpp"

using namespace rlhf;
using namespace rlhf::test;

TEST_CASE("global_sums, global_sum, global_max: folded in rank order over every rank", "[dist][statistics]") {
  simulated_ranks comm;
  comm.rank_ = 1;
  comm.size_ = 3;
  comm.log->gathers.push_back({{1, 10}, {100, 1000}});  // ranks 0 and 2
  CHECK(global_sums(comm, {2.0, 20.0}) == std::vector<double>{103, 1030});
  comm.log->gathers.push_back({{-4}, {7}});
  CHECK(global_sum(comm, 0.5) == 3.5);
  comm.log->gathers.push_back({{-4}, {7}});
  CHECK(global_max(comm, 0.5) == 7);
  const single_process one;
  CHECK(global_sums(one, {2.0, 3.0}) == std::vector<double>{2, 3});
  CHECK(global_max(one, -1.0) == -1);
}

TEMPLATE_LIST_TEST_CASE("global_masked_moments: per-rank shards merge into the union's moments; whitening with "
                        "them equals whitening the union",
                        "[dist][statistics]", all_configs) {
  using B = typename TestType::backend;
  using T = typename TestType::value;
  const B b = TestType::make();
  std::mt19937_64 g(17);
  for (int trial = 0; trial < 20; ++trial) {
    const std::size_t ranks = 2 + static_cast<std::size_t>(trial % 3), cols = 1 + static_cast<std::size_t>(trial % 5);
    std::normal_distribution<double> value(3.0 + trial, 2.0);
    std::bernoulli_distribution valid(0.6);
    std::uniform_int_distribution<std::size_t> rows_of(0, 4);
    // Each rank's [rows_r, cols] shard (possibly empty), and the union's values.
    std::vector<std::vector<T>> xs(ranks);
    std::vector<std::vector<mask_type>> ms(ranks);
    std::vector<double> all;
    std::vector<masked_moments> parts;
    for (std::size_t r = 0; r < ranks; ++r) {
      const std::size_t rows = rows_of(g);
      for (std::size_t i = 0; i < rows * cols; ++i) {
        xs[r].push_back(static_cast<T>(value(g)));
        ms[r].push_back(valid(g) ? 1 : 0);
        if (ms[r].back()) all.push_back(static_cast<double>(xs[r].back()));
      }
      if (rows == 0) {
        parts.push_back({});
        continue;
      }
      const auto x = to_backend(b, std::span<const T>(xs[r]), rows, cols);
      const auto m = to_backend(b, std::span<const mask_type>(ms[r]), rows, cols);
      parts.push_back(compute_masked_moments(b, as_const(x.view()), as_const(m.view())));
    }
    simulated_ranks comm;
    comm.size_ = ranks;
    comm.rank_ = static_cast<std::size_t>(trial) % ranks;
    std::vector<std::vector<double>> others;
    for (std::size_t r = 0; r < ranks; ++r)
      if (r != comm.rank_) others.push_back({parts[r].count, parts[r].mean, parts[r].m2});
    comm.log->gathers.push_back(others);
    const masked_moments got = global_masked_moments(comm, parts[comm.rank_]);
    double mean = 0, m2 = 0;
    for (const double v : all) mean += v;
    mean = all.empty() ? 0.0 : mean / static_cast<double>(all.size());
    for (const double v : all) m2 += (v - mean) * (v - mean);
    INFO("trial " << trial << ", " << all.size() << " valid values over " << ranks << " ranks");
    CHECK(got.count == static_cast<double>(all.size()));
    CHECK(got.mean == Approx(mean).epsilon(1e-12).margin(1e-12));
    CHECK(got.m2 == Approx(m2).epsilon(1e-10).margin(1e-10));
  }
}

TEMPLATE_LIST_TEST_CASE("global_aggregation: each rank's loss is its share of the union's token mean; caller counts "
                        "are kept",
                        "[dist][statistics]", all_configs) {
  using B = typename TestType::backend;
  using T = typename TestType::value;
  const B b = TestType::make();
  // The union: 3 rows; rank 0 holds row 0, rank 1 rows 1 and 2 (ragged masks, one empty row).
  const std::vector<T> logp{-1, -2, -3, -0.5, -0.25, -4, -8, -16, -32};
  const std::vector<mask_type> mask{1, 1, 0, 1, 0, 0, 0, 0, 0};
  const auto whole_x = to_backend(b, std::span<const T>(logp), 3, 3);
  const auto whole_m = to_backend(b, std::span<const mask_type>(mask), 3, 3);
  const sft_loss_stats whole = sft_loss(b, as_const(whole_x.view()), as_const(whole_m.view()), backend_matrix<B, T>{});
  double sum_of_shares = 0;
  for (std::size_t r = 0; r < 2; ++r) {
    const std::size_t first = r == 0 ? 0 : 1, rows = r == 0 ? 1 : 2;
    const std::span<const T> xr(logp.data() + first * 3, rows * 3);
    const std::span<const mask_type> mr(mask.data() + first * 3, rows * 3);
    const aggregation_counts local = count_valid(mr, rows, 3);
    CHECK(local.tokens == (r == 0 ? 2 : 1));
    CHECK(local.sequences == 1);
    simulated_ranks comm;
    comm.rank_ = r;
    comm.log->gathers.push_back({{r == 0 ? 1.0 : 2.0, 1.0}});  // the other rank's tokens and sequences
    const loss_aggregation agg = global_aggregation(comm, loss_aggregation{}, local);
    CHECK(agg.global_token_count == 3);
    CHECK(agg.global_sequence_count == 2);
    const auto x = to_backend(b, xr, rows, 3);
    const auto m = to_backend(b, mr, rows, 3);
    sum_of_shares += sft_loss(b, as_const(x.view()), as_const(m.view()), backend_matrix<B, T>{}, agg).loss;
  }
  CHECK(sum_of_shares == Approx(whole.loss).epsilon(1e-6));
  // Counts the caller set are kept; one rank leaves the aggregation as it is.
  simulated_ranks comm;
  loss_aggregation mine;
  mine.global_token_count = 50;
  const loss_aggregation kept = global_aggregation(comm, mine, aggregation_counts{3, 1});
  CHECK(kept.global_token_count == 50);
  CHECK(kept.global_sequence_count == 2);  // 1 here + 1 on the replica
  CHECK(global_aggregation(single_process{}, loss_aggregation{}, aggregation_counts{3, 1}).global_token_count == 0);
}
