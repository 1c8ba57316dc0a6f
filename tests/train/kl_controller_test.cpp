// KL controllers (Ziegler et al. 2019, sec. 2.2) and measure_kl: closed-form update sequences, clipping, the
// unit checked at compile time, and both KL units on ragged / interior-masked batches.
#include "test_support.hpp"

#include <cstdint>
#include <limits>
#include <type_traits>

#include "rlhf/train/kl_controller.hpp"

using namespace rlhf;
using namespace rlhf::test;

namespace {
template <class C, class U>
concept can_update = requires(C& c, U u) { c.update(u, std::size_t{1}); };
template <class U>
concept can_measure = requires(const reference_backend& b, matrix_view<const double> m) { measure_kl<U>(b, m); };
template <class C>
concept has_zgl = requires { C::zgl(); };
template <class C>
concept has_verl = requires { C::verl(); };

using seq_ctl = adaptive_kl_controller<kl_per_sequence>;
using tok_ctl = adaptive_kl_controller<kl_per_token>;

// The unit is part of the type: a per-token KL cannot be fed to a per-sequence controller, nor a bare double.
static_assert(can_update<seq_ctl, kl_per_sequence>);
static_assert(!can_update<seq_ctl, kl_per_token>);
static_assert(!can_update<seq_ctl, double>);
static_assert(!can_update<tok_ctl, kl_per_sequence>);
static_assert(!can_update<fixed_kl_controller<kl_per_token>, kl_per_sequence>);
static_assert(!std::is_invocable_v<decltype(&seq_ctl::update), seq_ctl&, kl_per_token, std::size_t>);
static_assert(!std::is_convertible_v<kl_per_token, kl_per_sequence> && !std::is_convertible_v<double, kl_per_token>);
static_assert(can_measure<kl_per_token> && can_measure<kl_per_sequence> && !can_measure<double>);
// Presets exist only in their peer's unit.
static_assert(has_zgl<seq_ctl> && !has_zgl<tok_ctl>);
static_assert(has_verl<tok_ctl> && !has_verl<seq_ctl>);
static_assert(kl_controller<seq_ctl> && kl_controller<tok_ctl> && kl_controller<fixed_kl_controller<kl_per_sequence>>);
static_assert(!kl_controller<double>);
static_assert(std::is_same_v<seq_ctl::unit_type, kl_per_sequence>);

// Oracle: sum / count over valid tokens, and the mean over non-empty rows of the row sums.
std::pair<double, double> kl_oracle(const std::vector<double>& kl, const std::vector<mask_type>& m, std::size_t rows,
                                    std::size_t cols) {
  double total = 0, tokens = 0, seq_sum = 0, seqs = 0;
  for (std::size_t r = 0; r < rows; ++r) {
    double s = 0, c = 0;
    for (std::size_t t = 0; t < cols; ++t)
      if (m[r * cols + t]) s += kl[r * cols + t], c += 1;
    total += s, tokens += c;
    if (c > 0) seq_sum += s, seqs += 1;
  }
  return {total / tokens, seq_sum / seqs};
}
}  // namespace

TEST_CASE("adaptive_kl_controller: closed-form update sequence with clipping on both sides", "[train][kl_controller]") {
  // ZGL: beta 0.2, target 6 nats/sequence, horizon 10000, n_steps 256 episodes per batch.
  auto c = seq_ctl::zgl();
  CHECK(c.beta() == 0.2);
  CHECK(c.target().nats == 6.0);
  CHECK(c.horizon() == 10000.0);
  // observed 9: e = clip(9/6 - 1 = 0.5) = 0.2 -> beta = 0.2 * (1 + 0.2 * 256 / 10000) = 0.2 * 1.00512 = 0.201024
  c.update(kl_per_sequence{9.0}, 256);
  CHECK(c.beta() == Approx(0.201024).epsilon(1e-14));
  // observed 6.6: e = 0.1 (inside the clip) -> beta *= 1.00256 -> 0.20153862144
  c.update(kl_per_sequence{6.6}, 256);
  CHECK(c.beta() == Approx(0.20153862144).epsilon(1e-14));
  // observed 3: e = clip(-0.5) = -0.2 -> beta *= 0.99488 -> 0.20050674369822719
  c.update(kl_per_sequence{3.0}, 256);
  CHECK(c.beta() == Approx(0.20050674369822719).epsilon(1e-14));
  // observed = target: e = 0, unchanged.
  c.update(kl_per_sequence{6.0}, 256);
  CHECK(c.beta() == Approx(0.20050674369822719).epsilon(1e-14));
  // Negative k1 KL: e = clip(-1.5) = -0.2 -> 0.19948014917049225
  c.update(kl_per_sequence{-3.0}, 256);
  CHECK(c.beta() == Approx(0.19948014917049225).epsilon(1e-14));
  // n_steps = 0 changes nothing.
  c.update(kl_per_sequence{100.0}, 0);
  CHECK(c.beta() == Approx(0.19948014917049225).epsilon(1e-14));

  // VERL: per-token target 0.1, initial 0.001; observed 0.11 -> e = 0.1 -> beta = 0.001 * (1 + 0.1 * 1024 / 10000)
  auto v = tok_ctl::verl();
  CHECK(v.target().nats == 0.1);
  v.update(kl_per_token{0.11}, 1024);
  CHECK(v.beta() == Approx(0.001 * 1.01024).epsilon(1e-12));

  // TRL0 has ZGL's numbers.
  const auto t = seq_ctl::trl0();
  CHECK(t.beta() == 0.2);
  CHECK(t.target().nats == 6.0);
  CHECK(t.horizon() == 10000.0);
}

TEST_CASE("fixed_kl_controller: update leaves beta unchanged; presets", "[train][kl_controller]") {
  auto f = fixed_kl_controller<kl_per_token>::instructgpt();
  CHECK(f.beta() == 0.02);
  f.update(kl_per_token{50.0}, 100000);
  f.update(kl_per_token{-1.0}, 1);
  CHECK(f.beta() == 0.02);
  CHECK(fixed_kl_controller<kl_per_token>::verl().beta() == 0.001);
  CHECK(fixed_kl_controller<kl_per_sequence>::trl1().beta() == 0.05);
  CHECK(fixed_kl_controller<kl_per_sequence>::dsc().beta() == 0.1);
  CHECK(fixed_kl_controller<kl_per_token>::orl().beta() == 0.01);
  CHECK(fixed_kl_controller<kl_per_token>(0.0).beta() == 0.0);
}

TEST_CASE("kl controllers: argument errors", "[train][kl_controller][errors]") {
  const double nan = std::numeric_limits<double>::quiet_NaN();
  CHECK_THROWS_WITH(fixed_kl_controller<kl_per_token>(-0.1),
                    Catch::Contains("rlhf::fixed_kl_controller") && Catch::Contains("'beta'") && Catch::Contains("-0.1"));
  CHECK_THROWS_WITH(fixed_kl_controller<kl_per_token>(nan), Catch::Contains("'beta'"));
  CHECK_THROWS_WITH(seq_ctl(-1.0, kl_per_sequence{6}, 10000),
                    Catch::Contains("rlhf::adaptive_kl_controller") && Catch::Contains("'initial_beta'"));
  CHECK_THROWS_WITH(seq_ctl(0.1, kl_per_sequence{0}, 10000), Catch::Contains("'target'") && Catch::Contains("> 0"));
  CHECK_THROWS_WITH(seq_ctl(0.1, kl_per_sequence{nan}, 10000), Catch::Contains("'target'"));
  CHECK_THROWS_WITH(seq_ctl(0.1, kl_per_sequence{6}, 0), Catch::Contains("'horizon'"));
  CHECK_THROWS_WITH(seq_ctl(0.1, kl_per_sequence{6}, std::numeric_limits<double>::infinity()),
                    Catch::Contains("'horizon'"));
  auto c = seq_ctl::zgl();
  CHECK_THROWS_WITH(c.update(kl_per_sequence{nan}, 10),
                    Catch::Contains("rlhf::adaptive_kl_controller::update") && Catch::Contains("'observed'"));
  // 0.2 * n_steps >= horizon would let beta turn negative (1 - 0.2 * 50000 / 10000 = 0).
  CHECK_THROWS_WITH(c.update(kl_per_sequence{0.0}, 50000), Catch::Contains("'n_steps'") && Catch::Contains("50000"));
  CHECK(c.beta() == 0.2);
  CHECK_NOTHROW(c.update(kl_per_sequence{0.0}, 49999));
  CHECK(c.beta() > 0.0);
}

TEMPLATE_LIST_TEST_CASE("measure_kl: both units on a hand-computed ragged batch", "[train][measure_kl]", all_configs) {
  using T = typename TestType::value;
  const auto b = TestType::make();
  const T nan = std::numeric_limits<T>::quiet_NaN();
  // row 0: 0.1 + 0.2 + 0.3 (pad NaN)          -> 0.6 over 3 tokens
  // row 1: 0.5 + 0.5 (interior holes hold 9)  -> 1.0 over 2 tokens
  // row 2: no valid token                      -> excluded from the per-sequence mean
  // per token: 1.6 / 5 = 0.32; per sequence: 1.6 / 2 = 0.8.
  auto kl = to_backend(b, std::vector<T>{T(0.1), T(0.2), T(0.3), nan, T(0.5), 9, T(0.5), 9, 7, 7, 7, 7}, 3, 4);
  auto m = to_backend(b, std::vector<mask_type>{1, 1, 1, 0, 1, 0, 1, 0, 0, 0, 0, 0}, 3, 4);
  const kl_per_token tok = measure_kl<kl_per_token>(b, as_const(kl.view()), as_const(m.view()));
  const kl_per_sequence seq = measure_kl<kl_per_sequence>(b, as_const(kl.view()), as_const(m.view()));
  const double s = static_cast<double>(T(0.1)) + static_cast<double>(T(0.2)) + static_cast<double>(T(0.3)) +
                   2 * static_cast<double>(T(0.5));
  CHECK(near<double>(tok.nats, s / 5));
  CHECK(near<double>(seq.nats, s / 2));
  CHECK(near<T>(tok.nats, 0.32));
  CHECK(near<T>(seq.nats, 0.8));
  // No mask: every token valid. [[1, 2], [3, -2]]: per token 4 / 4 = 1, per sequence (3 + 1) / 2 = 2.
  auto k2 = to_backend(b, std::vector<T>{1, 2, 3, -2}, 2, 2);
  CHECK(measure_kl<kl_per_token>(b, as_const(k2.view())).nats == 1.0);
  CHECK(measure_kl<kl_per_sequence>(b, as_const(k2.view())).nats == 2.0);
  // The measured unit feeds the matching controller.
  auto c = seq_ctl::zgl();
  c.update(seq, 10);
  CHECK(c.beta() < 0.2);
}

TEMPLATE_LIST_TEST_CASE("measure_kl: random ragged lengths and interior masks against the oracle",
                        "[train][measure_kl][property]", all_configs) {
  using T = typename TestType::value;
  const auto b = TestType::make();
  auto g = rng(31);
  for (std::size_t rows : {1u, 5u, 64u}) {
    for (std::size_t cols : {1u, 7u, 300u}) {
      const auto kl = cast<double>(uniform<T>(g, rows * cols, -0.5, 2.0));
      auto mask = (rows + cols) % 2 == 0 ? mask_from_lengths(random_lengths(g, rows, cols), cols)
                                         : random_mask(g, rows * cols, 0.6);
      mask[0] = 1;
      const auto [tok, seq] = kl_oracle(kl, mask, rows, cols);
      auto bk = to_backend(b, cast<T>(kl), rows, cols);
      auto bm = to_backend(b, mask, rows, cols);
      CHECK(near<T>(measure_kl<kl_per_token>(b, as_const(bk.view()), as_const(bm.view())).nats, tok, 100));
      CHECK(near<T>(measure_kl<kl_per_sequence>(b, as_const(bk.view()), as_const(bm.view())).nats, seq, 100));
    }
  }
}

TEMPLATE_LIST_TEST_CASE("regression: verl #6361: NaN in masked-out KL positions does not leak into the mean",
                        "[train][measure_kl][regression]", all_configs) {
  // https://github.com/verl-project/verl/pull/6361 : masked sums written as sum(kl * mask) turn a NaN/Inf in a
  // padded position into a NaN mean (0 * NaN = NaN). measure_kl selects instead of multiplying.
  using T = typename TestType::value;
  const auto b = TestType::make();
  auto kl = to_backend(b, std::vector<T>{T(0.25), std::numeric_limits<T>::quiet_NaN(), T(0.75),
                                         std::numeric_limits<T>::infinity()},
                       2, 2);
  auto m = to_backend(b, std::vector<mask_type>{1, 0, 1, 0}, 2, 2);
  CHECK(measure_kl<kl_per_token>(b, as_const(kl.view()), as_const(m.view())).nats == 0.5);
  CHECK(measure_kl<kl_per_sequence>(b, as_const(kl.view()), as_const(m.view())).nats == 0.5);
}

TEMPLATE_LIST_TEST_CASE("measure_kl: argument errors", "[train][measure_kl][errors]", all_configs) {
  using T = typename TestType::value;
  const auto b = TestType::make();
  auto kl = to_backend(b, std::vector<T>{1, 2, 3, 4}, 2, 2);
  auto m_bad = to_backend(b, std::vector<mask_type>{1, 1, 1}, 1, 3);
  auto m_none = to_backend(b, std::vector<mask_type>{0, 0, 0, 0}, 2, 2);
  const auto K = as_const(kl.view());
  CHECK_THROWS_WITH(measure_kl<kl_per_token>(b, K, as_const(m_bad.view())),
                    Catch::Contains("rlhf::measure_kl") && Catch::Contains("'mask'") && Catch::Contains("[2, 2]") &&
                        Catch::Contains("received [1, 3]"));
  CHECK_THROWS_WITH(measure_kl<kl_per_sequence>(b, K, as_const(m_none.view())),
                    Catch::Contains("'mask'") && Catch::Contains("at least one valid token"));
  CHECK_THROWS_WITH(measure_kl<kl_per_token>(b, K.row_block(0, 0)), Catch::Contains("'kl'") && Catch::Contains("[0, 2]"));
  auto kl_nan = to_backend(b, std::vector<T>{1, std::numeric_limits<T>::quiet_NaN(), 3, 4}, 2, 2);
  auto m_pad = to_backend(b, std::vector<mask_type>{1, 0, 1, 1}, 2, 2);
  set_finite_checks(true);
  CHECK_NOTHROW(measure_kl<kl_per_token>(b, as_const(kl_nan.view()), as_const(m_pad.view())));
  CHECK_THROWS_AS(measure_kl<kl_per_token>(b, as_const(kl_nan.view())), non_finite_error);
  set_finite_checks(false);
}
