// Loss aggregation (rlhf/losses/loss_aggregation.hpp): row weights by hand, a naive oracle for every mode,
// and micro-batch invariance with global counts.
#include "test_support.hpp"

#include <limits>

#include "rlhf/losses/loss_aggregation.hpp"

using namespace rlhf;
using namespace rlhf::test;

namespace {
// Direct transcription of the four modes.
template <class T>
double naive_aggregate(const std::vector<T>& l, const std::vector<mask_type>& m, std::size_t rows, std::size_t cols,
                       const loss_aggregation& agg) {
  double tokens = 0, seqs = 0, token_sum = 0, seq_mean_sum = 0, seq_sum = 0;
  for (std::size_t r = 0; r < rows; ++r) {
    double n = 0, s = 0;
    for (std::size_t c = 0; c < cols; ++c)
      if (m[r * cols + c]) n += 1, s += static_cast<double>(l[r * cols + c]);
    tokens += n;
    token_sum += s;
    if (n > 0) seqs += 1, seq_mean_sum += s / n, seq_sum += s;
  }
  const double N = agg.global_token_count > 0 ? agg.global_token_count : tokens;
  const double S = agg.global_sequence_count > 0 ? agg.global_sequence_count : seqs;
  const double L = agg.norm_length > 0 ? agg.norm_length : static_cast<double>(cols);
  switch (agg.mode) {
    case aggregation_mode::token_mean: return N > 0 ? token_sum / N : 0.0;
    case aggregation_mode::seq_mean_token_mean: return S > 0 ? seq_mean_sum / S : 0.0;
    case aggregation_mode::seq_mean_token_sum: return S > 0 ? seq_sum / S : 0.0;
    case aggregation_mode::seq_mean_token_sum_norm: return S > 0 ? seq_sum / (S * L) : 0.0;
  }
  return 0.0;
}

const loss_aggregation all_modes[] = {loss_aggregation::token_mean(), loss_aggregation::seq_mean_token_mean(),
                                      loss_aggregation::seq_mean_token_sum(), loss_aggregation::seq_mean_token_sum_norm(),
                                      loss_aggregation::seq_mean_token_sum_norm(10)};
}  // namespace

TEMPLATE_LIST_TEST_CASE("aggregation row weights, hand-computed", "[losses][aggregation]", all_configs) {
  using T = typename TestType::value;
  const auto b = TestType::make();
  // Row lengths 3, 1, 0 (T = 4): N = 4 tokens, S = 2 non-empty sequences.
  auto bm = to_backend(b, std::vector<mask_type>{1, 1, 1, 0, 1, 0, 0, 0, 0, 0, 0, 0}, 3, 4);
  auto w = allocate<double>(b, 3);
  const std::vector<std::pair<loss_aggregation, std::vector<double>>> cases = {
      {loss_aggregation::token_mean(), {0.25, 0.25, 0}},                // 1/N
      {loss_aggregation::seq_mean_token_mean(), {1.0 / 6, 0.5, 0}},     // 1/(n_r S)
      {loss_aggregation::seq_mean_token_sum(), {0.5, 0.5, 0}},          // 1/S
      {loss_aggregation::seq_mean_token_sum_norm(), {0.125, 0.125, 0}}, // 1/(S T)
      {loss_aggregation::seq_mean_token_sum_norm(10), {0.05, 0.05, 0}}, // 1/(S L)
      {loss_aggregation::token_mean_global(16), {1.0 / 16, 1.0 / 16, 0}},
      {loss_aggregation{aggregation_mode::seq_mean_token_sum, 0, 8, 0}, {0.125, 0.125, 0}},
  };
  for (const auto& [agg, want] : cases) {
    const aggregation_counts n = aggregation_row_weights(b, bm.view(), agg, w.view().flat());
    CHECK(n.tokens == 4);
    CHECK(n.sequences == 2);
    CHECK_THAT(to_host(b, w.view()), close_to<double>(want));
  }
  // l = [[1, 2, 3, x], [4, x, x, x], [x, x, x, x]] (x = masked garbage):
  // token mean 10/4 = 2.5; seq-mean-token-mean (2 + 4)/2 = 3; seq-mean-token-sum (6 + 4)/2 = 5;
  // seq-mean-token-sum-norm 10 / (2 * 4) = 1.25.
  const T x = std::numeric_limits<T>::quiet_NaN();
  auto bl = to_backend(b, std::vector<T>{1, 2, 3, x, 4, x, x, x, x, x, x, x}, 3, 4);
  CHECK(aggregate(b, bl.view(), bm.view()) == 2.5);
  CHECK(aggregate(b, bl.view(), bm.view(), loss_aggregation::seq_mean_token_mean()) == 3.0);
  CHECK(aggregate(b, bl.view(), bm.view(), loss_aggregation::seq_mean_token_sum()) == 5.0);
  CHECK(aggregate(b, bl.view(), bm.view(), loss_aggregation::seq_mean_token_sum_norm()) == 1.25);
  // Nothing valid: 0, not NaN.
  auto none = allocate_filled<mask_type>(b, 3, 4, mask_type(0));
  for (const auto& agg : all_modes) CHECK(aggregate(b, bl.view(), none.view(), agg) == 0.0);
}

TEMPLATE_LIST_TEST_CASE("aggregate matches the naive oracle in every mode", "[losses][aggregation]", all_configs) {
  using T = typename TestType::value;
  const auto b = TestType::make();
  auto g = rng(201);
  const std::size_t rows = 11, cols = 29;
  for (int trial = 0; trial < 4; ++trial) {
    const auto l = uniform<T>(g, rows * cols, -2, 3);
    const auto m = trial % 2 ? random_mask(g, rows * cols, 0.4) : mask_from_lengths(random_lengths(g, rows, cols), cols);
    auto bl = to_backend(b, l, rows, cols);
    auto bm = to_backend(b, m, rows, cols);
    for (const auto& agg : all_modes) {
      const double want = naive_aggregate(l, m, rows, cols, agg);
      CHECK(near<double>(aggregate(b, bl.view(), bm.view(), agg), want, 100));
    }
  }
}

TEMPLATE_LIST_TEST_CASE("aggregation with global counts is micro-batch invariant", "[losses][aggregation]",
                        all_configs) {
  using T = typename TestType::value;
  const auto b = TestType::make();
  auto g = rng(202);
  const std::size_t rows = 8, cols = 40;
  auto l = uniform<T>(g, rows * cols, 0, 1);
  for (std::size_t i = 3 * cols; i < l.size(); ++i) l[i] = static_cast<T>(l[i] + 2);  // second micro-batch: larger losses
  // Very different token counts in the two micro-batches (rows 0-2 short, rows 3-7 long).
  std::vector<std::size_t> len{2, 3, 0, 40, 35, 38, 33, 40};
  const auto m = mask_from_lengths(len, cols);
  auto bl = to_backend(b, l, rows, cols);
  auto bm = to_backend(b, m, rows, cols);
  auto w = allocate<double>(b, rows);
  const aggregation_counts total = aggregation_row_weights(b, bm.view(), loss_aggregation{}, w.view().flat());
  CHECK(total.tokens == 191);
  CHECK(total.sequences == 7);
  for (const auto& base : all_modes) {
    const double full = aggregate(b, bl.view(), bm.view(), base);
    loss_aggregation global = base;
    global.global_token_count = total.tokens;
    global.global_sequence_count = total.sequences;
    const double part0 = aggregate(b, bl.view().row_block(0, 3), bm.view().row_block(0, 3), global);
    const double part1 = aggregate(b, bl.view().row_block(3, 5), bm.view().row_block(3, 5), global);
    CHECK(near<double>(part0 + part1, full, 100));
    // The per-micro-batch mean of means (what TRL/DSC/NEMO accumulate) differs.
    const double naive = 0.5 * (aggregate(b, bl.view().row_block(0, 3), bm.view().row_block(0, 3), base) +
                                aggregate(b, bl.view().row_block(3, 5), bm.view().row_block(3, 5), base));
    // 2 vs 5 sequences and 5 vs 186 tokens: the unweighted average of the two micro-batch results is off.
    CHECK(std::abs(naive - full) > 1e-3 * std::abs(full));
  }
}

TEMPLATE_LIST_TEST_CASE("aggregation rejects bad arguments with named errors", "[losses][aggregation][errors]",
                        all_configs) {
  using T = typename TestType::value;
  const auto b = TestType::make();
  auto l = allocate_filled<T>(b, 2, 3, T(1));
  auto m = allocate_filled<mask_type>(b, 2, 3, mask_type(1));
  auto bad_m = allocate_filled<mask_type>(b, 3, 3, mask_type(1));
  auto w = allocate<double>(b, 3);
  CHECK_THROWS_WITH(aggregate(b, l.view(), bad_m.view()),
                    Catch::Contains("rlhf::aggregate") && Catch::Contains("'mask'") && Catch::Contains("[3, 3]"));
  CHECK_THROWS_WITH(aggregation_row_weights(b, m.view(), loss_aggregation{}, w.view().flat()),
                    Catch::Contains("rlhf::aggregation_row_weights") && Catch::Contains("'weights'"));
  CHECK_THROWS_WITH(aggregate(b, l.view(), m.view(), loss_aggregation{aggregation_mode::token_mean, -1, 0, 0}),
                    Catch::Contains("rlhf::aggregate") && Catch::Contains("'aggregation.global_token_count'"));
  CHECK_THROWS_WITH(
      aggregate(b, l.view(), m.view(),
                loss_aggregation{aggregation_mode::seq_mean_token_sum, 0, std::numeric_limits<double>::infinity(), 0}),
      Catch::Contains("'aggregation.global_sequence_count'"));
  CHECK_THROWS_WITH(aggregate(b, l.view(), m.view(), loss_aggregation{aggregation_mode::token_mean, 0, 0, -3}),
                    Catch::Contains("'aggregation.norm_length'"));
  CHECK_THROWS_WITH(aggregate(b, l.view(), m.view(), loss_aggregation{static_cast<aggregation_mode>(9), 0, 0, 0}),
                    Catch::Contains("'aggregation.mode'"));
}
